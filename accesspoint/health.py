"""Rollout health that is measured: the HTTP probe and the Analysis gate.

Owns: the `healthChecks.http` probe model (url template, expected status, timeout, period,
success/failure thresholds) and the accumulation of probe results into a verdict (`tally`: a few
consecutive successes before Healthy, failures before Unhealthy); the `Analysis` gate's thresholds
(`AnalysisSpec`), the figures the controller gathers from the gateways (`TrafficFigures`: requests,
5xx and the latency histogram over the window, per cluster) and the pure decision over them
(`decide`: Pass / Fail with the figures / Wait for enough requests); the route stat prefix meshfed
puts on an AccessPoint's VirtualService routes so that a gateway Envoy counts exactly this
AccessPoint's traffic (`stat_prefix`, `with_stat_prefix`).

Imports accesspoint.meta only. Pure: no I/O, no clock (times are passed in).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from accesspoint.meta import ApiModel, Duration, json_copy, parse_duration

# ---------------------------------------------------------------------------------------------
# The HTTP probe


class HttpProbe(ApiModel):
    """An HTTP(S) GET the controller sends to each cluster on the new revision, through that
    cluster's gateway: it connects to the cluster's VIP (never to what DNS answers) and sends the
    URL's host as SNI and Host, so the answer comes from that cluster."""

    url: str = Field(
        min_length=1,
        description="Template: ${cluster}, ${zone}, ${region}, ${vip}, ${fqdn} are replaced per cluster. "
        "http:// or https:// (the certificate is not verified: the probe checks the answer).",
    )
    expected_status: int = Field(default=200, ge=100, le=599, alias="expectedStatus")
    timeout_seconds: int = Field(default=5, ge=1, le=60, alias="timeoutSeconds")
    period_seconds: int = Field(
        default=5, ge=1, le=300, alias="periodSeconds",
        description="Time between two probes of a cluster while its wave waits on health.",
    )
    success_threshold: int = Field(
        default=3, ge=1, le=20, alias="successThreshold",
        description="Consecutive successes before the cluster counts as healthy on the new revision.",
    )
    failure_threshold: int = Field(
        default=3, ge=1, le=20, alias="failureThreshold",
        description="Consecutive failures (wrong status, timeout, connection error) before the cluster "
        "counts as failed (the rollout then pauses or aborts per onFailure).",
    )


ProbeOutcome = Literal["Passed", "Failed", "TimedOut", "Error"]
ProbeVerdict = Literal["Pending", "Healthy", "Unhealthy"]


class ProbeResult(ApiModel):
    """One probe as the controller performed it."""

    url: str
    via: str = Field(default="", description="the address connected to (VIP:port)")
    outcome: ProbeOutcome
    code: int | None = Field(default=None, description="the HTTP status answered")
    latency_ms: int = Field(default=0, alias="latencyMs")
    message: str = Field(default="", description="why the probe failed, when it did")
    at: str | None = Field(default=None, description="when it was sent (RFC 3339)")


class ProbeRecord(ApiModel):
    """The probe results of one cluster on one revision (shown in the cluster's status entry)."""

    revision: str
    verdict: ProbeVerdict = "Pending"
    successes: int = Field(default=0, description="consecutive successes")
    failures: int = Field(default=0, description="consecutive failures")
    last: ProbeResult | None = None


def probe_outcome(probe: HttpProbe, code: int | None, error: str | None = None,
                  timed_out: bool = False) -> ProbeOutcome:
    if timed_out:
        return "TimedOut"
    if error is not None or code is None:
        return "Error"
    return "Passed" if code == probe.expected_status else "Failed"


def tally(record: ProbeRecord | None, result: ProbeResult, probe: HttpProbe, revision: str) -> ProbeRecord:
    """Fold one probe result into the cluster's record for `revision` (a record of another
    revision starts over). The verdict changes only when a threshold is crossed: Pending until
    successThreshold consecutive successes (Healthy) or failureThreshold consecutive failures
    (Unhealthy); a Healthy cluster stays Healthy until failureThreshold failures in a row, an
    Unhealthy one until successThreshold successes in a row."""
    if record is None or record.revision != revision:
        record = ProbeRecord(revision=revision)
    if result.outcome == "Passed":
        successes, failures = record.successes + 1, 0
    else:
        successes, failures = 0, record.failures + 1
    verdict = record.verdict
    if successes >= probe.success_threshold:
        verdict = "Healthy"
    elif failures >= probe.failure_threshold:
        verdict = "Unhealthy"
    return ProbeRecord(revision=revision, verdict=verdict, successes=successes, failures=failures, last=result)


def describe(result: ProbeResult, probe: HttpProbe) -> str:
    """`GET https://shop.example/healthz via 127.100.1.1:443: 503 (expected 200) in 12 ms`."""
    where = f"GET {result.url}" + (f" via {result.via}" if result.via else "")
    if result.outcome == "TimedOut":
        return f"{where}: timed out after {probe.timeout_seconds}s"
    if result.outcome == "Error":
        return f"{where}: {result.message or 'no answer'}"
    expected = "" if result.outcome == "Passed" else f" (expected {probe.expected_status})"
    return f"{where}: {result.code}{expected} in {result.latency_ms} ms"


def probe_message(record: ProbeRecord, probe: HttpProbe) -> str:
    """The health message of a cluster from its probe record."""
    if record.last is None:
        return "probe not sent yet"
    last = describe(record.last, probe)
    if record.verdict == "Unhealthy":
        return f"probe failed {record.failures}x in a row (failureThreshold {probe.failure_threshold}): {last}"
    if record.verdict == "Healthy":
        return f"probe passed: {last}"
    if record.last.outcome == "Passed":
        return f"probe passed {record.successes}/{probe.success_threshold}: {last}"
    return f"probe failed {record.failures}/{probe.failure_threshold}: {last}"


# ---------------------------------------------------------------------------------------------
# The Analysis gate


class AnalysisSpec(ApiModel):
    """Thresholds of an Analysis gate over the gateways' own traffic figures for this AccessPoint's
    routes, per cluster on the new revision ("canary"), compared with the clusters still on the
    stable revision. A breach fails the gate as soon as a canary cluster has minRequests; a pass
    needs the whole window with minRequests in every canary cluster."""

    window: Duration = Field(
        default="60s",
        description="Length of the observation window (figures are deltas of the gateways' counters "
        "over it).",
    )
    interval: Duration = Field(
        default="10s",
        description="How often the figures are read while the window is open.",
    )
    min_requests: int = Field(
        default=50, ge=1, alias="minRequests",
        description="Requests a canary cluster must have served in the window before it is judged.",
    )
    max_5xx_ratio: float | None = Field(
        default=0.05, ge=0, le=1, alias="max5xxRatio",
        description="Largest share of 5xx answers a canary cluster may have (0.05 = 5%). Null: no limit.",
    )
    max_5xx_ratio_over_stable: float | None = Field(
        default=None, ge=0, le=1, alias="max5xxRatioOverStable",
        description="Largest amount by which a canary cluster's 5xx share may exceed the stable "
        "clusters' (checked when the stable clusters served minRequests in the window).",
    )
    max_p95_latency_ms: int | None = Field(
        default=None, ge=1, alias="maxP95LatencyMs",
        description="Largest p95 upstream latency (ms) a canary cluster may have.",
    )
    max_p95_latency_over_stable: float | None = Field(
        default=None, ge=1, alias="maxP95LatencyOverStable",
        description="Largest factor by which a canary cluster's p95 latency may exceed the stable "
        "clusters' (e.g. 1.5; checked when the stable clusters served minRequests).",
    )
    max_wait: Duration = Field(
        default="10m", alias="maxWait",
        description="Longest the gate waits for minRequests; then it fails (not enough traffic to "
        "judge) and the rollout pauses or aborts per onFailure.",
    )

    @model_validator(mode="after")
    def _wait_covers_window(self) -> AnalysisSpec:
        if self.max_wait_seconds < self.window_seconds:
            raise ValueError(f"maxWait ({self.max_wait}) must be at least the window ({self.window})")
        return self

    @property
    def window_seconds(self) -> float:
        return parse_duration(self.window).total_seconds()

    @property
    def interval_seconds(self) -> float:
        return parse_duration(self.interval).total_seconds()

    @property
    def max_wait_seconds(self) -> float:
        return parse_duration(self.max_wait).total_seconds()


Bucket = tuple[float, int]  # (upper bound in ms, cumulative count)


class TrafficFigures(ApiModel):
    """One cluster's gateway traffic for this AccessPoint over the window (deltas)."""

    requests: int = Field(default=0, ge=0, description="completed requests")
    errors: int = Field(default=0, ge=0, description="5xx answers among them")
    latency: list[Bucket] = Field(
        default_factory=list, description="upstream time histogram: (upper bound ms, cumulative count)"
    )

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p95_ms(self) -> float | None:
        return quantile(self.latency, 0.95)

    def __add__(self, other: TrafficFigures) -> TrafficFigures:
        return TrafficFigures(requests=self.requests + other.requests, errors=self.errors + other.errors,
                              latency=add_buckets(self.latency, other.latency))

    def minus(self, baseline: TrafficFigures) -> TrafficFigures:
        """The delta since `baseline` (counters are cumulative; a counter that went down means the
        gateway restarted: the delta is then the current value)."""
        if self.requests < baseline.requests or self.errors < baseline.errors:
            return self
        base = dict(baseline.latency)
        latency = [(ub, count - base.get(ub, 0)) for ub, count in self.latency]
        if any(c < 0 for _, c in latency):
            latency = list(self.latency)
        return TrafficFigures(requests=self.requests - baseline.requests, errors=self.errors - baseline.errors,
                              latency=latency)


def add_buckets(a: Sequence[Bucket], b: Sequence[Bucket]) -> list[Bucket]:
    """Sum of two cumulative histograms (a bound missing in one takes that one's count at the
    next lower bound)."""
    if not a:
        return list(b)
    if not b:
        return list(a)
    bounds = sorted({ub for ub, _ in a} | {ub for ub, _ in b})

    def at(h: Sequence[Bucket], bound: float) -> int:
        count = 0
        for ub, c in h:
            if ub <= bound:
                count = c
        return count

    return [(ub, at(a, ub) + at(b, ub)) for ub in bounds]


def quantile(buckets: Sequence[Bucket], q: float) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated linearly inside its bucket (as
    Prometheus' histogram_quantile); None without samples."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0
    for ub, count in ordered:
        if count >= rank:
            if math.isinf(ub):
                return lower_bound
            inside = count - lower_count
            if inside <= 0:
                return ub
            return lower_bound + (ub - lower_bound) * (rank - lower_count) / inside
        lower_bound, lower_count = ub, count
    return ordered[-1][0]


class AnalysisFigures(ApiModel):
    """What the controller gathered for one Analysis gate: per cluster, the delta of its gateway's
    counters since the gate opened, over `seconds`; clusters whose gateway could not be read are
    in `unreadable` with the reason."""

    key: str = Field(description="the gate instance they were gathered for (AnalysisRequest.key)")
    seconds: float = Field(default=0.0, ge=0, description="time covered by the figures")
    clusters: dict[str, TrafficFigures] = Field(default_factory=dict)
    unreadable: dict[str, str] = Field(default_factory=dict)


Decision = Literal["Pass", "Fail", "Wait"]


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    message: str


def _pct(ratio: float) -> str:
    return f"{100 * ratio:.1f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def figures_text(name: str, f: TrafficFigures) -> str:
    """`m-a1: 60/120 5xx (50.0%), p95 12 ms`."""
    return f"{name}: {f.errors}/{f.requests} 5xx ({_pct(f.error_ratio)}), p95 {_ms(f.p95_ms)}"


def _limits(spec: AnalysisSpec) -> str:
    parts = []
    if spec.max_5xx_ratio is not None:
        parts.append(f"max5xxRatio {spec.max_5xx_ratio:g}")
    if spec.max_5xx_ratio_over_stable is not None:
        parts.append(f"max5xxRatioOverStable {spec.max_5xx_ratio_over_stable:g}")
    if spec.max_p95_latency_ms is not None:
        parts.append(f"maxP95LatencyMs {spec.max_p95_latency_ms}")
    if spec.max_p95_latency_over_stable is not None:
        parts.append(f"maxP95LatencyOverStable {spec.max_p95_latency_over_stable:g}")
    return ", ".join(parts) or "no thresholds"


def breaches(spec: AnalysisSpec, canary: TrafficFigures, stable: TrafficFigures | None) -> list[str]:
    """The thresholds a canary cluster's figures break (`stable`: the stable clusters' figures when
    they are enough to compare with, else None)."""
    out: list[str] = []
    ratio, p95 = canary.error_ratio, canary.p95_ms
    if spec.max_5xx_ratio is not None and ratio > spec.max_5xx_ratio:
        out.append(f"5xx {_pct(ratio)} > max5xxRatio {_pct(spec.max_5xx_ratio)}")
    if spec.max_p95_latency_ms is not None and p95 is not None and p95 > spec.max_p95_latency_ms:
        out.append(f"p95 {_ms(p95)} > maxP95LatencyMs {spec.max_p95_latency_ms}")
    if stable is not None:
        base = stable.error_ratio
        if spec.max_5xx_ratio_over_stable is not None and ratio - base > spec.max_5xx_ratio_over_stable:
            out.append(f"5xx {_pct(ratio)} exceeds stable {_pct(base)} by more than "
                       f"{_pct(spec.max_5xx_ratio_over_stable)}")
        base_p95 = stable.p95_ms
        if spec.max_p95_latency_over_stable is not None and p95 is not None and base_p95 is not None \
                and p95 > base_p95 * spec.max_p95_latency_over_stable:
            out.append(f"p95 {_ms(p95)} > {spec.max_p95_latency_over_stable:g} x stable p95 {_ms(base_p95)}")
    return out


def decide(spec: AnalysisSpec, canary: Sequence[str], stable: Sequence[str], figures: AnalysisFigures | None,
           waited_seconds: float) -> Verdict:
    """The Analysis gate's decision over the gathered figures.

    Fail at once when a canary cluster that served minRequests breaks a threshold (the reason names
    it, its figures, the stable figures and the limit); Pass when the figures cover the whole
    window and every canary cluster served minRequests without a breach; Fail when the gate has
    waited maxWait without that (not enough traffic, or a gateway that cannot be read); else Wait.
    """
    if not canary:
        return Verdict("Pass", "no cluster on the new revision to analyse")
    got = figures.clusters if figures is not None else {}
    unreadable = figures.unreadable if figures is not None else {}
    stable_named = [c for c in stable if c in got]
    stable_sum = sum((got[c] for c in stable_named), TrafficFigures())
    comparable = stable_sum if stable_sum.requests >= spec.min_requests else None
    stable_text = (
        figures_text("stable " + ",".join(stable_named), stable_sum) if stable_named else "no stable cluster"
    )
    for name in canary:
        f = got.get(name)
        if f is None or f.requests < spec.min_requests:
            continue
        broken = breaches(spec, f, comparable)
        if broken:
            return Verdict("Fail", f"{figures_text(name, f)}: {'; '.join(broken)} (vs {stable_text}; "
                                   f"over {figures.seconds if figures else 0:.0f}s)")
    seconds = figures.seconds if figures is not None else 0.0
    short = [n for n in canary if n not in got or got[n].requests < spec.min_requests]
    canary_text = "; ".join(figures_text(n, got[n]) for n in canary if n in got)
    if not short and seconds >= spec.window_seconds:
        return Verdict("Pass", f"{canary_text}; {stable_text}; over {seconds:.0f}s within {_limits(spec)}")
    missing = [f"{n}: {unreadable[n]}" if n in unreadable else
               f"{n}: {got[n].requests if n in got else 0}/{spec.min_requests} requests" for n in short]
    if short and waited_seconds >= spec.max_wait_seconds:
        why = "not enough traffic to judge" if not any(n in unreadable for n in short) else "figures unavailable"
        return Verdict("Fail", f"{why} after {waited_seconds:.0f}s (maxWait {spec.max_wait}): " + "; ".join(missing))
    left = max(0.0, spec.window_seconds - seconds)
    detail = "; ".join(missing) if missing else canary_text
    return Verdict("Wait", f"{detail}; window {seconds:.0f}/{spec.window_seconds:.0f}s"
                           + (f" ({left:.0f}s left)" if left else ""))


# ---------------------------------------------------------------------------------------------
# Which gateway stats are this AccessPoint's


def stat_prefix(namespace: str, name: str) -> str:
    """The route stat prefix meshfed gives this AccessPoint's VirtualService routes: a gateway Envoy
    then counts their traffic under `vhost.<host:port>.route.<prefix>.upstream_rq_*` (stats Istio's
    bootstrap keeps by default). Namespaces and names are DNS labels, so `_` cannot be ambiguous."""
    return f"meshfed_{namespace}_{name}"


def with_stat_prefix(objects: Iterable[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """The objects with `statPrefix: prefix` on every match of every VirtualService http route (a
    route without match gets `match: [{uri: {prefix: /}}]`, which is what Istio does for it anyway).
    A route where the user set a statPrefix is left alone (its traffic is then not counted for the
    Analysis gate). Never mutates its input."""
    out: list[dict[str, Any]] = []
    for obj in objects:
        if obj.get("kind") != "VirtualService" or not (obj.get("spec") or {}).get("http"):
            out.append(obj)
            continue
        copy = json_copy(obj)
        for route in copy["spec"]["http"]:
            if not isinstance(route, dict):
                continue
            matches = route.get("match") or [{"uri": {"prefix": "/"}}]
            if any(isinstance(m, dict) and m.get("statPrefix") for m in matches):
                continue
            route["match"] = [{**m, "statPrefix": prefix} if isinstance(m, dict) else m for m in matches]
        out.append(copy)
    return out


__all__ = [
    "AnalysisFigures",
    "AnalysisSpec",
    "HttpProbe",
    "ProbeRecord",
    "ProbeResult",
    "TrafficFigures",
    "Verdict",
    "decide",
    "describe",
    "probe_message",
    "probe_outcome",
    "quantile",
    "stat_prefix",
    "tally",
    "with_stat_prefix",
]
