"""Locality traffic policy (`spec.traffic`) and its pure compiler to DestinationRule settings.

Owns the TrafficPolicy model (locality modes Weighted / Failover / Drain / Disabled, outlier
detection, visibility), its validation (errors and warnings naming the field) and the per-cluster
compilation into a DestinationRule `trafficPolicy` fragment (`loadBalancer.localityLbSetting` plus
`outlierDetection`). Also a checker of an Istio `localityLbSetting` against the rules Istio's own
validation enforces, used on every compiled result.

Imports accesspoint.meta, accesspoint.visibility and placement.models only. Pure: no I/O, no clock.

Istio rules obeyed (REFERENCE.md, "Istio rules the traffic compiler must respect"):
  * `distribute` and `failover` are mutually exclusive;
  * every `to` weight is 1..100 and each `from` entry totals exactly 100 (an explicit weight 0 is an
    error wherever it is written, naming the field);
  * wildcards only at the end of a locality; localities in a list must not overlap;
  * a locality missing from `to` gets no traffic at all -> warning for a region with endpoints;
  * `failover` is region-only and needs `outlierDetection`; `maxEjectionPercent` is set to 100 so
    a whole locality can be ejected.

Compilation, for a member cluster in region R, given the regions that have endpoints (P):
  * Weighted: `from: R/*`, `to: {R/*: localWeight, <remote>/*: ...}`. Remotes are the named
    `remotes` (minus R) or, when none are named, every other region in P. Without localWeight
    every remote gets its weight or 1 and local the rest (99/1 for two regions, 98/1/1 for three).
    With localWeight set, unweighted remotes share the remainder equally; a remainder that does not
    divide evenly gives +1 to the first remotes in the order listed (sorted by name when taken from
    P). With one region only, local gets 100.
  * Drain: Weighted with the drained regions removed from every `to`; a cluster in a drained region
    sends everything to `drain.to` (or every non-drained region), so one change moves traffic away.
  * Failover: `failover` rules (region -> region) as given, `enabled: true`.
  * Disabled: `localityLbSetting.enabled: false` and nothing else.
  * `weighted.rules` (advanced) are Istio `distribute` entries used verbatim, after validation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from accesspoint.meta import ApiModel, Condition, Duration, json_copy
from accesspoint.visibility import VisibilityPolicy
from placement.models import ClusterFacts

LocalityMode = Literal["Weighted", "Failover", "Drain", "Disabled"]
_REGION = r"^[^/*\s]+$"
P = "spec.traffic.locality"


class RegionWeight(ApiModel):
    region: str = Field(min_length=1, max_length=253, pattern=_REGION)
    weight: int | None = Field(
        default=None, ge=0, le=100, description="Share of 100; unset shares the remainder equally."
    )


class DistributeRule(ApiModel):
    """An Istio `localityLbSetting.distribute` entry, used verbatim (advanced)."""

    from_: str = Field(alias="from", min_length=1)
    to: dict[str, int] = Field(min_length=1)


class RegionWeighted(ApiModel):
    """Weights for clients in one region (overrides localWeight/remotes there)."""

    region: str = Field(min_length=1, max_length=253, pattern=_REGION)
    local_weight: int | None = Field(
        default=None,
        ge=0,
        le=100,
        alias="localWeight",
        description="Share kept in the client's region; default 1 per remote, the rest local (99/1, 98/1/1).",
    )
    remotes: list[RegionWeight] = Field(default_factory=list)


class WeightedLocality(ApiModel):
    local_weight: int | None = Field(
        default=None,
        ge=0,
        le=100,
        alias="localWeight",
        description="Share kept in the client's region; default 1 per remote, the rest local (99/1, 98/1/1).",
    )
    remotes: list[RegionWeight] = Field(
        default_factory=list, description="Remote regions for the remainder; default: every other region."
    )
    rules: list[DistributeRule] = Field(
        default_factory=list, description="Verbatim Istio distribute rules; replace localWeight/remotes."
    )
    by_region: list[RegionWeighted] = Field(
        default_factory=list,
        alias="byRegion",
        description="Per client region localWeight/remotes, e.g. explicit weights that differ by region.",
    )


class FailoverRule(ApiModel):
    from_: str = Field(alias="from", min_length=1)
    to: str = Field(min_length=1)


class FailoverLocality(ApiModel):
    rules: list[FailoverRule] = Field(
        default_factory=list, description="region -> region; empty: Istio's proximity order."
    )


class DrainLocality(ApiModel):
    regions: list[str] = Field(min_length=1, description="Regions that get no traffic.")
    to: list[RegionWeight] = Field(
        default_factory=list, description="Where a drained region sends its traffic; default: all others."
    )


class OutlierDetection(ApiModel):
    consecutive_5xx_errors: int = Field(default=5, ge=1, alias="consecutive5xxErrors")
    consecutive_gateway_errors: int | None = Field(default=None, ge=1, alias="consecutiveGatewayErrors")
    interval: Duration = "5s"
    base_ejection_time: Duration = Field(default="30s", alias="baseEjectionTime")
    max_ejection_percent: int = Field(default=100, ge=0, le=100, alias="maxEjectionPercent")
    min_health_percent: int | None = Field(default=None, ge=0, le=100, alias="minHealthPercent")

    def istio(self) -> dict[str, Any]:
        return self.wire()


class LocalityPolicy(ApiModel):
    mode: LocalityMode = "Weighted"
    weighted: WeightedLocality | None = None
    failover: FailoverLocality | None = None
    drain: DrainLocality | None = None
    outlier_detection: OutlierDetection | None = Field(default=None, alias="outlierDetection")


class TrafficPolicy(ApiModel):
    """`spec.traffic`: locality load balancing and visibility of the generated Istio objects."""

    locality: LocalityPolicy | None = None
    visibility: VisibilityPolicy | None = None


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, other: Report) -> None:
        self.errors.extend(e for e in other.errors if e not in self.errors)
        self.warnings.extend(w for w in other.warnings if w not in self.warnings)

    @property
    def ok(self) -> bool:
        return not self.errors


class TrafficPolicyError(ValueError):
    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = list(errors)


# ---- Istio's rules on localityLbSetting ---------------------------------------------------------


def _parts(locality: str) -> list[str] | None:
    parts = locality.split("/", 2)
    return None if any(p == "" for p in parts) else parts


def _overlap(a: list[str], b: list[str]) -> bool:
    for x, y in zip(a, b, strict=False):
        if x == "*" or y == "*":
            return True
        if x != y:
            return False
    return True  # one is a prefix of the other (a shorter locality covers the longer)


def check_localities(localities: Sequence[str], where: str) -> list[str]:
    """Wildcards only at the end (at most one), no empty parts, no two localities overlapping.

    Stricter than Istio where Istio is order-dependent: overlap is checked between every pair.
    """
    errors: list[str] = []
    parsed: list[tuple[str, list[str]]] = []
    for loc in localities:
        stars = loc.count("*")
        if stars > 1 or (stars == 1 and loc != "*" and not loc.endswith("/*")):
            errors.append(f"{where}: locality {loc!r}: a wildcard '*' may appear once, only at the end")
            continue
        parts = _parts(loc)
        if parts is None:
            errors.append(f"{where}: locality {loc!r} must not contain an empty region/zone/subzone")
            continue
        for other, other_parts in parsed:
            if _overlap(parts, other_parts):
                errors.append(f"{where}: localities {other!r} and {loc!r} overlap")
        parsed.append((loc, parts))
    return errors


def check_locality_lb_setting(
    lb: Mapping[str, Any], outlier: Mapping[str, Any] | None, where: str = "localityLbSetting"
) -> Report:
    """Check an Istio localityLbSetting (wire form) the way istiod's validation does."""
    report = Report()
    distribute = lb.get("distribute") or []
    failover = lb.get("failover") or []
    if distribute and failover:
        report.errors.append(f"{where}: distribute and failover are mutually exclusive")
        return report
    for i, rule in enumerate(distribute):
        to = rule.get("to") or {}
        for loc, weight in sorted(to.items()):
            if not isinstance(weight, int) or not 1 <= weight <= 100:
                report.errors.append(f"{where}.distribute[{i}].to[{loc}]: weight {weight} is not in 1..100")
        total = sum(w for w in to.values() if isinstance(w, int))
        if total != 100:
            report.errors.append(f"{where}.distribute[{i}]: weights total {total}, not 100")
        report.errors.extend(check_localities(sorted(to), f"{where}.distribute[{i}].to"))
    report.errors.extend(
        check_localities([str(r.get("from", "")) for r in distribute], f"{where}.distribute.from")
    )
    if (failover or lb.get("failoverPriority")) and outlier is None:
        report.errors.append(f"{where}: failover needs outlierDetection to take effect")
    seen: set[tuple[str, str]] = set()
    for i, rule in enumerate(failover):
        src, dst = str(rule.get("from", "")), str(rule.get("to", ""))
        if src and src == dst:
            report.errors.append(f"{where}.failover[{i}]: from and to must be different regions ({src})")
        if "/" in src or "/" in dst:
            report.errors.append(f"{where}.failover[{i}]: failover is region-only ({src} -> {dst})")
        if "*" in src or "*" in dst:
            report.errors.append(f"{where}.failover[{i}]: failover regions must not contain '*'")
        if (src, dst) in seen:
            report.errors.append(f"{where}.failover[{i}]: duplicate rule {src} -> {dst}")
        seen.add((src, dst))
    return report


# ---- per-region weights ------------------------------------------------------------------------


def _loc(region: str) -> str:
    return f"{region}/*"


def _share(
    total: int, remotes: Sequence[RegionWeight], where: str, report: Report, ctx: str = ""
) -> dict[str, int]:
    """Give each remote its explicit weight; unweighted ones share what is left, +1 to the first."""
    explicit = {r.region: r.weight for r in remotes if r.weight is not None}
    unset = [r.region for r in remotes if r.weight is None]
    out: dict[str, int] = {}
    for r in remotes:
        if r.weight is not None:
            if r.weight < 1:
                report.errors.append(
                    f"{where}[region={r.region}].weight: weight 0 is not allowed (1..100); omit the region "
                    "from the list to send it nothing"
                )
            out[r.region] = r.weight
    left = total - sum(w for w in explicit.values() if w is not None)
    if unset:
        if left < len(unset):
            report.errors.append(
                f"{where}: {left} left to share between {len(unset)} region(s) "
                f"({', '.join(unset)}){ctx}; each needs at least 1"
            )
            return out
        base, extra = divmod(left, len(unset))
        for i, region in enumerate(unset):
            out[region] = base + (1 if i < extra else 0)
    elif left != 0:
        report.errors.append(f"{where}: weights total {100 - left}, not 100{ctx}")
    return out


def _dedupe(remotes: Iterable[RegionWeight], where: str, report: Report) -> list[RegionWeight]:
    seen: set[str] = set()
    out: list[RegionWeight] = []
    for r in remotes:
        if r.region in seen:
            report.errors.append(f"{where}: region {r.region} listed twice (overlapping localities)")
            continue
        seen.add(r.region)
        out.append(r)
    return out


def _weights_for(
    policy: LocalityPolicy, region: str, present: Sequence[str], report: Report
) -> dict[str, int] | None:
    """Weights per target region for clients in `region` (Weighted/Drain), or None after errors."""
    weighted = policy.weighted or WeightedLocality()
    drained = set(policy.drain.regions) if policy.mode == "Drain" and policy.drain else set()
    others = [p for p in present if p != region]
    sub = Report()
    if region in drained:
        assert policy.drain is not None
        where = f"{P}.drain.to"
        named = _dedupe(policy.drain.to, where, sub)
        for r in named:
            if r.region in drained:
                sub.errors.append(f"{where}: {r.region} is drained and cannot receive drained traffic")
        targets = named or [RegionWeight(region=p) for p in others if p not in drained]
        if not targets:
            sub.errors.append(
                f"{P}.drain.regions: draining {', '.join(sorted(drained))} leaves no region to serve traffic"
            )
            report.add(sub)
            return None
        weights = _share(100, targets, where, sub)
    else:
        where = f"{P}.weighted"
        local, named_remotes = weighted.local_weight, weighted.remotes
        for i, entry in enumerate(weighted.by_region):
            if entry.region == region:
                where = f"{P}.weighted.byRegion[{i}]"
                local, named_remotes = entry.local_weight, entry.remotes
                break
        ctx = f" (clients in region {region})"
        named = _dedupe(named_remotes, f"{where}.remotes", sub)
        remotes = named if named_remotes else [RegionWeight(region=p) for p in others]
        # The client's own region and drained regions are no remotes: an explicit share they had goes
        # back to local, unweighted ones are re-shared (use byRegion for exact per-region weights).
        folded = sum(r.weight or 0 for r in remotes if r.region in drained or r.region == region)
        remotes = [r for r in remotes if r.region not in drained and r.region != region]
        if local is None:  # default: every remote gets its explicit weight or 1, local the rest
            local = max(100 - sum(r.weight if r.weight is not None else 1 for r in remotes), 0)
        else:
            local += folded
        if local < 1:
            sub.errors.append(
                f"{where}.localWeight: weight 0 is not allowed (1..100){ctx}; use mode Drain "
                "to move a region's traffic away"
            )
        if local >= 100 or not remotes:
            if local < 100 and named_remotes and not remotes and not drained:
                sub.warnings.append(f"{where}.remotes: no remote region{ctx}: all traffic stays local")
            weights = {region: 100}
        else:
            weights = {region: local, **_share(100 - local, remotes, f"{where}.remotes", sub, ctx)}
    report.add(sub)
    return None if sub.errors else weights


def _left_out(region: str, to_regions: Iterable[str], present: Sequence[str], drained: set[str]) -> list[str]:
    listed = set(to_regions)
    return [
        f"{P}: region {p} has endpoints but clients in region {region} send it no traffic, even when every "
        "listed region is down (a locality missing from `to` gets nothing)"
        for p in present
        if p not in listed and p not in drained
    ]


# ---- validation and compilation ----------------------------------------------------------------


def _zero_weights(policy: LocalityPolicy) -> list[str]:
    """Every explicit weight 0, wherever it is (also where it is not used for these regions): Istio
    accepts 1..100 only, and a share of 0 would otherwise be dropped silently (e.g. a remote next to
    localWeight 100, or a byRegion entry of a region without clusters yet)."""
    errors: list[str] = []
    lists: list[tuple[str, Sequence[RegionWeight]]] = []
    locals_: list[tuple[str, int | None]] = []
    if policy.weighted is not None:
        locals_.append((f"{P}.weighted.localWeight", policy.weighted.local_weight))
        lists.append((f"{P}.weighted.remotes", policy.weighted.remotes))
        for i, entry in enumerate(policy.weighted.by_region):
            locals_.append((f"{P}.weighted.byRegion[{i}].localWeight", entry.local_weight))
            lists.append((f"{P}.weighted.byRegion[{i}].remotes", entry.remotes))
    if policy.drain is not None:
        lists.append((f"{P}.drain.to", policy.drain.to))
    for where, weight in locals_:
        if weight == 0:
            errors.append(
                f"{where}: weight 0 is not allowed (1..100); use mode Drain to move a region's traffic away"
            )
    for where, weights in lists:
        errors += [
            f"{where}[{i}].weight: weight 0 is not allowed (1..100); omit region {r.region} from the list "
            "to send it nothing"
            for i, r in enumerate(weights)
            if r.weight == 0
        ]
    return errors


def _structure(policy: LocalityPolicy) -> Report:
    report = Report()
    report.errors.extend(_zero_weights(policy))
    distribute_like = policy.mode in ("Weighted", "Drain")
    if policy.failover is not None and distribute_like:
        report.errors.append(
            f"{P}: failover and distribute are mutually exclusive: mode {policy.mode} compiles "
            "to distribute, so remove locality.failover (or use mode Failover)"
        )
    if policy.weighted is not None and policy.mode == "Failover":
        report.errors.append(
            f"{P}: failover and distribute are mutually exclusive: remove locality.weighted "
            "with mode Failover"
        )
    if policy.mode == "Drain" and policy.drain is None:
        report.errors.append(f"{P}.drain: mode Drain needs drain.regions")
    if policy.drain is not None and policy.mode != "Drain":
        report.warnings.append(f"{P}.drain: ignored unless mode is Drain")
    if policy.mode == "Disabled" and (policy.weighted or policy.failover or policy.drain):
        report.warnings.append(f"{P}: mode Disabled ignores weighted/failover/drain")
    if policy.weighted is not None and policy.weighted.rules:
        if policy.mode == "Drain":
            report.errors.append(f"{P}.weighted.rules: verbatim rules cannot be combined with mode Drain")
        if policy.weighted.remotes or "localWeight" in policy.weighted.model_fields_set:
            report.errors.append(f"{P}.weighted.rules: set either rules or localWeight/remotes, not both")
    return report


def _regions(regions: Iterable[str]) -> list[str]:
    return sorted(set(regions))


def validate_policy(policy: TrafficPolicy | None, regions: Iterable[str]) -> Report:
    """Errors (the policy must not be applied) and warnings (risky) for a policy over the regions that
    have endpoints (the regions of the placed clusters)."""
    report = Report()
    present = _regions(regions)
    if policy is None or policy.locality is None:
        return report
    loc = policy.locality
    for region in present:
        if not re.match(_REGION, region):
            report.errors.append(f"region name {region!r} cannot be used in a locality")
    report.add(_structure(loc))
    if report.errors:
        return report
    if loc.mode in ("Weighted", "Drain"):
        weighted = loc.weighted or WeightedLocality()
        drained = set(loc.drain.regions) if loc.mode == "Drain" and loc.drain else set()
        for name in sorted(drained - set(present)):
            report.warnings.append(f"{P}.drain.regions: region {name} has no placed clusters")
        if drained and present and drained >= set(present):
            only = "the only region" if len(present) == 1 else "every region"
            report.errors.append(
                f"{P}.drain.regions: draining {only} ({', '.join(present)}) leaves no region to serve traffic"
            )
            return report
        for remote in weighted.remotes:
            if remote.region not in present:
                report.warnings.append(f"{P}.weighted.remotes: region {remote.region} has no placed clusters")
        if weighted.rules:
            lb = {"distribute": [rule.model_dump(by_alias=True) for rule in weighted.rules]}
            report.add(check_locality_lb_setting(lb, None, f"{P}.weighted.rules"))
            return report
        for region in present:
            weights = _weights_for(loc, region, present, report)
            if weights is None:
                continue
            lb = {"distribute": [{"from": _loc(region), "to": {_loc(k): v for k, v in weights.items()}}]}
            report.add(check_locality_lb_setting(lb, {}, P))
            report.warnings.extend(
                w for w in _left_out(region, weights, present, drained) if w not in report.warnings
            )
    elif loc.mode == "Failover":
        rules = loc.failover.rules if loc.failover else []
        lb = {"failover": [r.model_dump(by_alias=True) for r in rules]}
        report.add(check_locality_lb_setting(lb, {}, f"{P}.failover.rules"))
        for i, r in enumerate(rules):
            for end in (r.from_, r.to):
                if end not in present and "/" not in end and "*" not in end:
                    msg = f"{P}.failover.rules[{i}]: region {end} has no placed clusters"
                    if msg not in report.warnings:
                        report.warnings.append(msg)
    return report


def _fragment(loc: LocalityPolicy, region: str, present: Sequence[str]) -> dict[str, Any]:
    """The fragment for clients in `region`; the policy is already validated over `present`."""
    if loc.mode == "Disabled":
        return {"loadBalancer": {"localityLbSetting": {"enabled": False}}}
    lb: dict[str, Any] = {"enabled": True}
    if loc.mode == "Failover":
        rules = loc.failover.rules if loc.failover else []
        if rules:
            lb["failover"] = [{"from": r.from_, "to": r.to} for r in rules]
    elif loc.weighted is not None and loc.weighted.rules:
        lb["distribute"] = [{"from": r.from_, "to": dict(sorted(r.to.items()))} for r in loc.weighted.rules]
    else:
        weights = _weights_for(loc, region, present, Report())
        assert weights is not None  # validated by the caller
        lb["distribute"] = [{"from": _loc(region), "to": {_loc(k): weights[k] for k in sorted(weights)}}]
    outlier = (loc.outlier_detection or OutlierDetection()).istio()
    return {"loadBalancer": {"localityLbSetting": lb}, "outlierDetection": outlier}


def compile_locality(
    policy: TrafficPolicy | None, cluster: ClusterFacts, regions: Iterable[str]
) -> dict[str, Any] | None:
    """The DestinationRule `trafficPolicy` fragment for `cluster`, or None when there is no policy.

    `regions` are the regions with endpoints (the placed clusters' regions); the cluster's own region
    is always included. Raises TrafficPolicyError (with every message) for an invalid policy.
    """
    if policy is None or policy.locality is None:
        return None
    present = _regions([*regions, cluster.region])
    report = validate_policy(policy, present)
    if report.errors:
        raise TrafficPolicyError(report.errors)
    return _fragment(policy.locality, cluster.region, present)


def compile_regions(policy: TrafficPolicy | None, regions: Iterable[str]) -> dict[str, dict[str, Any] | None]:
    """compile_locality for every region at once (validates once): region -> fragment.

    Every cluster of a region gets the same fragment, so a controller compiles once per
    AccessPoint and looks the fragment up by the cluster's region.
    """
    present = _regions(regions)
    if policy is None or policy.locality is None:
        return dict.fromkeys(present)
    # Many AccessPoints share a policy (and a set of regions): validated and compiled once. The
    # key is the policy's JSON, so an edited policy is a new entry; callers get fresh copies.
    key = (policy.model_dump_json(), tuple(present))
    compiled = _COMPILED.get(key)
    if compiled is None:
        report = validate_policy(policy, present)
        if report.errors:
            raise TrafficPolicyError(report.errors)
        compiled = {region: _fragment(policy.locality, region, present) for region in present}
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = compiled
    return {region: json_copy(fragment) for region, fragment in compiled.items()}


_COMPILED: dict[tuple[str, tuple[str, ...]], dict[str, dict[str, Any]]] = {}
_COMPILED_MAX = 4096


# (id(object), id(fragment)) -> (that object, that fragment, the object with the fragment set)
TrafficMemo = dict[tuple[int, int], tuple[Mapping[str, Any], Mapping[str, Any], dict[str, Any]]]


def apply_traffic(
    objects: Iterable[Mapping[str, Any]],
    fragment: Mapping[str, Any] | None,
    hosts: Iterable[str] | None = None,
    *,
    memo: TrafficMemo | None = None,
) -> list[dict[str, Any]]:
    """`objects` with the compiled fragment set on DestinationRules' trafficPolicy.

    Replaces `loadBalancer.localityLbSetting` and `outlierDetection`; keeps every other field the
    template set (e.g. `loadBalancer.simple`, `connectionPool`). `hosts` limits which rules change.
    Inputs are never mutated: changed objects are new along the changed path (other values are
    shared), unchanged objects are returned as they are.

    `memo` (one AccessPoint's objects over many clusters, e.g. the controller's render context): the
    same input object with the same fragment gives the same, shared, result object (the memo holds
    both, so their ids stay unique). Not used with `hosts`.
    """
    only = set(hosts) if hosts is not None else None
    if only is not None:
        memo = None
    out: list[dict[str, Any]] = []
    for obj in objects:
        spec = obj.get("spec")
        if (
            not fragment
            or obj.get("kind") != "DestinationRule"
            or not isinstance(spec, Mapping)
            or (only is not None and spec.get("host") not in only)
        ):
            out.append(obj if isinstance(obj, dict) else dict(obj))
            continue
        if memo is not None:
            hit = memo.get((id(obj), id(fragment)))
            if hit is not None and hit[0] is obj and hit[1] is fragment:
                out.append(hit[2])
                continue
        tp = dict(spec.get("trafficPolicy") or {})
        lb = dict(tp.get("loadBalancer") or {})
        lb["localityLbSetting"] = json_copy(fragment["loadBalancer"]["localityLbSetting"])
        tp["loadBalancer"] = lb
        if "outlierDetection" in fragment:
            tp["outlierDetection"] = json_copy(fragment["outlierDetection"])
        new = {**obj, "spec": {**spec, "trafficPolicy": tp}}
        if memo is not None:
            memo[(id(obj), id(fragment))] = (obj, fragment, new)
        out.append(new)
    return out


def traffic_conditions(report: Report, observed_generation: int | None = None) -> list[Condition]:
    """`TrafficPolicyValid` (False blocks the change) and `TrafficPolicyRisky` (warnings)."""
    if report.errors:
        valid = Condition(
            type="TrafficPolicyValid",
            status="False",
            reason="InvalidTrafficPolicy",
            message="; ".join(report.errors),
            observed_generation=observed_generation,
        )
    else:
        valid = Condition(
            type="TrafficPolicyValid", status="True", reason="Valid", observed_generation=observed_generation
        )
    if report.warnings:
        risky = Condition(
            type="TrafficPolicyRisky",
            status="True",
            reason="RegionsWithoutTraffic",
            message="; ".join(report.warnings),
            observed_generation=observed_generation,
        )
    else:
        risky = Condition(
            type="TrafficPolicyRisky",
            status="False",
            reason="NoRisk",
            observed_generation=observed_generation,
        )
    return [valid, risky]
