"""accesspoint.health: probe accumulation, the Analysis decision over figures, quantiles, deltas and the
route stat prefix: tables and properties (pure code, no I/O)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from accesspoint.health import (
    AnalysisFigures,
    AnalysisSpec,
    HttpProbe,
    ProbeRecord,
    ProbeResult,
    TrafficFigures,
    add_buckets,
    decide,
    describe,
    probe_message,
    probe_outcome,
    quantile,
    stat_prefix,
    tally,
    with_stat_prefix,
)
from accesspoint.rollout import Gate

PROBE = HttpProbe(url="https://${fqdn}/healthz", success_threshold=3, failure_threshold=2, timeout_seconds=2)
URL = "https://shop.example/healthz"


def result(outcome: str, code: int | None = None) -> ProbeResult:
    return ProbeResult(url=URL, via="127.100.1.1:443", outcome=outcome, code=code, latency_ms=7)  # type: ignore[arg-type]


def run(outcomes: str, probe: HttpProbe = PROBE, revision: str = "r1") -> ProbeRecord:
    record: ProbeRecord | None = None
    for ch in outcomes:
        record = tally(record, result("Passed" if ch == "+" else "Failed"), probe, revision)
    assert record is not None
    return record


# ---------------------------------------------------------------------------------------------
# probes


@pytest.mark.parametrize(
    ("outcomes", "verdict", "successes", "failures"),
    [
        ("+", "Pending", 1, 0),
        ("++", "Pending", 2, 0),
        ("+++", "Healthy", 3, 0),
        ("-", "Pending", 0, 1),
        ("--", "Unhealthy", 0, 2),
        ("++-", "Pending", 0, 1),           # a failure resets the successes
        ("++-+++", "Healthy", 3, 0),
        ("+++-", "Healthy", 0, 1),          # healthy until failureThreshold failures in a row
        ("+++--", "Unhealthy", 0, 2),
        ("--++", "Unhealthy", 2, 0),        # unhealthy until successThreshold successes in a row
        ("--+++", "Healthy", 3, 0),
        ("-+-+-+", "Pending", 1, 0),        # flapping never decides
    ],
)
def test_tally_table(outcomes: str, verdict: str, successes: int, failures: int) -> None:
    record = run(outcomes)
    assert (record.verdict, record.successes, record.failures) == (verdict, successes, failures)


def test_tally_starts_over_on_another_revision() -> None:
    record = run("+++")
    again = tally(record, result("Passed", 200), PROBE, "r2")
    assert (again.revision, again.verdict, again.successes) == ("r2", "Pending", 1)


@given(st.text(alphabet="+-", max_size=40), st.integers(1, 5), st.integers(1, 5))
def test_tally_properties(outcomes: str, s: int, f: int) -> None:
    probe = PROBE.model_copy(update={"success_threshold": s, "failure_threshold": f})
    record: ProbeRecord | None = None
    previous = "Pending"
    for i, ch in enumerate(outcomes):
        record = tally(record, result("Passed" if ch == "+" else "Failed"), probe, "r")
        tail = outcomes[: i + 1]
        run_of = len(tail) - len(tail.rstrip(ch))
        # The verdict changes only when a threshold is reached, to the side of that run.
        if record.verdict != previous:
            assert (ch, record.verdict) in (("+", "Healthy"), ("-", "Unhealthy"))
            assert run_of == (s if ch == "+" else f)
        # A run reaching its threshold always decides.
        if ch == "+" and run_of >= s:
            assert record.verdict == "Healthy"
        if ch == "-" and run_of >= f:
            assert record.verdict == "Unhealthy"
        assert (record.successes, record.failures) == ((run_of, 0) if ch == "+" else (0, run_of))
        previous = record.verdict


@pytest.mark.parametrize(
    ("code", "error", "timed_out", "outcome"),
    [(200, None, False, "Passed"), (503, None, False, "Failed"), (None, None, True, "TimedOut"),
     (None, "connection refused", False, "Error")],
)
def test_probe_outcome(code: int | None, error: str | None, timed_out: bool, outcome: str) -> None:
    assert probe_outcome(PROBE, code, error, timed_out) == outcome


def test_probe_messages_name_url_answer_and_timeout() -> None:
    bad = tally(tally(None, result("Failed", 503), PROBE, "r"), result("Failed", 503), PROBE, "r")
    assert probe_message(bad, PROBE) == (
        "probe failed 2x in a row (failureThreshold 2): GET https://shop.example/healthz via 127.100.1.1:443: "
        "503 (expected 200) in 7 ms")
    hung = ProbeResult(url=URL, via="127.100.1.1:443", outcome="TimedOut", latency_ms=2000)
    assert describe(hung, PROBE) == "GET https://shop.example/healthz via 127.100.1.1:443: timed out after 2s"
    refused = ProbeResult(url=URL, outcome="Error", message="connection refused")
    assert describe(refused, PROBE) == "GET https://shop.example/healthz: connection refused"
    assert probe_message(run("+"), PROBE).startswith("probe passed 1/3: ")


def test_probe_defaults_and_bounds() -> None:
    probe = HttpProbe(url="http://x/")
    assert (probe.period_seconds, probe.success_threshold, probe.failure_threshold) == (5, 3, 3)
    with pytest.raises(ValidationError):
        HttpProbe(url="http://x/", successThreshold=0)  # type: ignore[call-arg]


# ---------------------------------------------------------------------------------------------
# histograms

BOUNDS = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000]


def hist(samples: list[float]) -> list[tuple[float, int]]:
    return [(float(b), sum(1 for x in samples if x <= b)) for b in BOUNDS]


@pytest.mark.parametrize(
    ("buckets", "q", "expected"),
    [
        ([], 0.95, None),
        ([(1.0, 0), (5.0, 0)], 0.95, None),
        ([(10.0, 100)], 0.5, 5.0),                       # inside the first bucket from 0
        ([(10.0, 50), (20.0, 100)], 0.95, 19.0),        # 95th of 100: 45/50 through (10, 20]
        ([(10.0, 100), (float("inf"), 100)], 0.95, 9.5),
        ([(10.0, 90), (float("inf"), 100)], 0.95, 10.0),  # in +Inf: the highest finite bound
    ],
)
def test_quantile_table(buckets: list[tuple[float, int]], q: float, expected: float | None) -> None:
    got = quantile(buckets, q)
    assert got == expected if expected is None else got == pytest.approx(expected)


@given(st.lists(st.floats(0.01, 4000), min_size=1, max_size=200), st.floats(0.01, 0.99), st.floats(0.01, 0.99))
def test_quantile_properties(samples: list[float], q1: float, q2: float) -> None:
    h = hist(samples)
    lo, hi = sorted((q1, q2))
    a, b = quantile(h, lo), quantile(h, hi)
    assert a is not None and b is not None and a <= b + 1e-9
    # The estimate lies in the bucket holding the true quantile.
    true = sorted(samples)[max(0, int(-(-hi * len(samples) // 1)) - 1)]
    upper = next(bound for bound in BOUNDS if true <= bound)
    lower = max([0.0] + [bound for bound in BOUNDS if bound < upper])
    assert lower - 1e-9 <= b <= upper + 1e-9


@given(st.lists(st.floats(0.01, 4000), max_size=50), st.lists(st.floats(0.01, 4000), max_size=50))
def test_buckets_add_and_subtract(first: list[float], second: list[float]) -> None:
    a = TrafficFigures(requests=len(first), errors=0, latency=hist(first))
    both = TrafficFigures(requests=len(first) + len(second), errors=0, latency=hist(first + second))
    assert add_buckets(hist(first), hist(second)) == hist(first + second)
    assert both.minus(a) == TrafficFigures(requests=len(second), errors=0, latency=hist(second))


def test_minus_after_a_gateway_restart_is_the_current_value() -> None:
    before = TrafficFigures(requests=100, errors=5, latency=[(10.0, 100)])
    now = TrafficFigures(requests=20, errors=1, latency=[(10.0, 20)])
    assert now.minus(before) == now


# ---------------------------------------------------------------------------------------------
# the Analysis decision

SPEC = AnalysisSpec(window="60s", min_requests=50, max_5xx_ratio=0.05, max_p95_latency_ms=200, max_wait="5m")


def tf(requests: int, errors: int = 0, ms: float = 10.0) -> TrafficFigures:
    return TrafficFigures(requests=requests, errors=errors, latency=hist([ms] * requests))


def figures(seconds: float, **clusters: TrafficFigures) -> AnalysisFigures:
    return AnalysisFigures(key="k", seconds=seconds, clusters=clusters)


CASES: list[tuple[str, AnalysisSpec, AnalysisFigures | None, float, str, list[str]]] = [
    ("nothing read yet", SPEC, None, 0, "Wait", ["c1: 0/50 requests", "window 0/60s"]),
    ("not enough requests", SPEC, figures(61, c1=tf(20), s1=tf(500)), 61, "Wait", ["c1: 20/50 requests"]),
    ("enough requests, window open", SPEC, figures(30, c1=tf(80), s1=tf(500)), 30, "Wait", ["30s left"]),
    ("good over the window", SPEC, figures(60, c1=tf(80, 2), s1=tf(500)), 60, "Pass",
     ["c1: 2/80 5xx (2.5%), p95 10 ms", "stable s1: 0/500 5xx (0.0%)", "over 60s"]),
    ("5xx breach fails at once", SPEC, figures(10, c1=tf(60, 30), s1=tf(500)), 10, "Fail",
     ["c1: 30/60 5xx (50.0%), p95 10 ms: 5xx 50.0% > max5xxRatio 5.0% (vs stable s1: 0/500 5xx (0.0%)"]),
    ("breach below minRequests waits", SPEC, figures(10, c1=tf(40, 40), s1=tf(500)), 10, "Wait",
     ["c1: 40/50 requests"]),
    ("latency breach", SPEC, figures(60, c1=tf(80, 0, 400), s1=tf(500)), 60, "Fail",
     ["p95 488 ms > maxP95LatencyMs 200"]),  # 400 ms samples: interpolated in (250, 500]
    ("maxWait without traffic", SPEC, figures(300, c1=tf(3), s1=tf(500)), 300, "Fail",
     ["not enough traffic to judge after 300s (maxWait 5m): c1: 3/50 requests"]),
    ("every canary cluster must be judged", SPEC, figures(60, c1=tf(80), c2=tf(10), s1=tf(500)), 60, "Wait",
     ["c2: 10/50 requests"]),
    ("a bad second canary fails", SPEC, figures(20, c1=tf(80), c2=tf(80, 80), s1=tf(500)), 20, "Fail",
     ["c2: 80/80 5xx (100.0%)"]),
]


@pytest.mark.parametrize(("name", "spec", "figs", "waited", "decision", "texts"), CASES, ids=[c[0] for c in CASES])
def test_decide_table(name: str, spec: AnalysisSpec, figs: AnalysisFigures | None, waited: float, decision: str,
                      texts: list[str]) -> None:
    canary = [c for c in ("c1", "c2") if figs is None or c in figs.clusters or c == "c1"]
    verdict = decide(spec, canary, ["s1"], figs, waited)
    assert verdict.decision == decision, verdict.message
    for text in texts:
        assert text in verdict.message, verdict.message


def test_decide_relative_to_stable() -> None:
    spec = AnalysisSpec(window="10s", min_requests=50, max_5xx_ratio=None, max_5xx_ratio_over_stable=0.02,
                        max_p95_latency_over_stable=2.0)
    # The stable clusters have 10% 5xx themselves: a canary at 11% is not worse by more than 2 points.
    ok = decide(spec, ["c1"], ["s1", "s2"], figures(10, c1=tf(100, 11), s1=tf(100, 10), s2=tf(100, 10)), 10)
    assert ok.decision == "Pass", ok.message
    bad = decide(spec, ["c1"], ["s1", "s2"], figures(10, c1=tf(100, 20), s1=tf(100, 10), s2=tf(100, 10)), 10)
    assert bad.decision == "Fail" and "5xx 20.0% exceeds stable 10.0% by more than 2.0%" in bad.message
    slow = decide(spec, ["c1"], ["s1"], figures(10, c1=tf(100, 0, 400), s1=tf(100, 0, 40)), 10)
    assert slow.decision == "Fail" and "> 2 x stable p95" in slow.message, slow.message
    # Too little stable traffic to compare with: only the absolute limits apply (none here).
    thin = decide(spec, ["c1"], ["s1"], figures(10, c1=tf(100, 20), s1=tf(5, 0)), 10)
    assert thin.decision == "Pass", thin.message


def test_decide_unreadable_gateway() -> None:
    figs = AnalysisFigures(key="k", seconds=60, clusters={"s1": tf(500)}, unreadable={"c1": "connection refused"})
    assert decide(SPEC, ["c1"], ["s1"], figs, 30).decision == "Wait"
    late = decide(SPEC, ["c1"], ["s1"], figs, 300)
    assert late.decision == "Fail" and "figures unavailable" in late.message
    assert "c1: connection refused" in late.message


@given(
    requests=st.integers(0, 400), errors=st.integers(0, 400), seconds=st.floats(0, 120), waited=st.floats(0, 400),
    ratio=st.floats(0, 1),
)
def test_decide_properties(requests: int, errors: int, seconds: float, waited: float, ratio: float) -> None:
    errors = min(errors, requests)
    spec = AnalysisSpec(window="60s", min_requests=50, max_5xx_ratio=ratio, max_wait="5m")
    verdict = decide(spec, ["c1"], [], figures(seconds, c1=tf(requests, errors)), waited)
    judged = requests >= 50
    if verdict.decision == "Pass":  # only with the whole window, enough requests, within the limit
        assert judged and seconds >= 60 and errors / requests <= ratio
    if judged and errors / requests > ratio:
        assert verdict.decision == "Fail"  # a breach never passes, never waits
    if verdict.decision == "Fail" and not (judged and errors / requests > ratio):
        assert waited >= 300 and not judged  # otherwise only for want of traffic after maxWait
    if not judged and waited >= 300:
        assert verdict.decision == "Fail"  # never waits past maxWait


def test_analysis_gate_model() -> None:
    g = Gate.model_validate({"type": "Analysis", "analysis": {"window": "30s", "max5xxRatio": 0.01}})
    assert g.thresholds.window_seconds == 30 and g.thresholds.max_5xx_ratio == 0.01
    assert Gate(type="Analysis").thresholds == AnalysisSpec()
    with pytest.raises(ValidationError, match="analysis is only allowed on an Analysis gate"):
        Gate.model_validate({"type": "Approval", "analysis": {}})
    with pytest.raises(ValidationError, match="takes no duration"):
        Gate.model_validate({"type": "Analysis", "duration": "1m"})
    with pytest.raises(ValidationError):
        Gate.model_validate({"type": "Analysis", "analysis": {"window": "soon"}})
    with pytest.raises(ValidationError, match="maxWait"):
        AnalysisSpec.model_validate({"window": "10m", "maxWait": "5m"})


# ---------------------------------------------------------------------------------------------
# the route stat prefix


def vs(http: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "app"},
            "spec": {"hosts": ["shop.example"], "gateways": ["gw"], "http": http}}


def test_with_stat_prefix() -> None:
    prefix = stat_prefix("shop-ns", "shop")
    assert prefix == "meshfed_shop-ns_shop"
    route = {"destination": {"host": "app"}}
    objects = [
        vs([{"route": [route]},
            {"match": [{"uri": {"prefix": "/a"}}, {"headers": {"x": {"exact": "1"}}}], "route": [route]},
            {"match": [{"uri": {"prefix": "/mine"}, "statPrefix": "users"}], "route": [route]}]),
        {"kind": "Service", "metadata": {"name": "gw"}, "spec": {}},
    ]
    before = repr(objects)
    out = with_stat_prefix(objects, prefix)
    assert repr(objects) == before  # not mutated
    http = out[0]["spec"]["http"]
    assert http[0]["match"] == [{"uri": {"prefix": "/"}, "statPrefix": prefix}]
    assert [m["statPrefix"] for m in http[1]["match"]] == [prefix, prefix]
    assert http[1]["match"][0]["uri"] == {"prefix": "/a"}
    assert http[2]["match"] == [{"uri": {"prefix": "/mine"}, "statPrefix": "users"}]  # the user's is kept
    assert out[1] is objects[1]
