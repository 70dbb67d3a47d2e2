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

Zones (the promised split whatever the zone count). istiod (pilot/pkg/networking/core/loadbalancer,
applyLocalityWeights) gives a `to` locality's weight to the endpoint groups (one per region/zone/subzone)
it matches: divided by their endpoint weights and rounded UP per group. `S/*: 1` over two zones of S
becomes 1 + 1, so `R/*: 99, S/*: 1` sends 99:2, i.e. 98.0 / 2.0. A `to` entry that matches exactly one
group keeps its weight exactly. So when the placement (`compile_zones`) puts a region's clusters in
several zones, that region's weight W is written per zone, `S/<zone>: w` with the w summing to W:
  * W >= the zone count: every zone, W apportioned by placed clusters per zone (each at least 1);
  * W < the zone count (1% to a region in two zones): W of its zones, 1 each, chosen by the client's
    zone so that the gateways of the client region together cover every zone; a zone not listed gets
    nothing from that gateway (Istio's rule), the region's share stays exactly W%;
  * a region with one zone, or with clusters of unknown zone, keeps `S/*` (one group, or no name for it).
Every compiled and every verbatim rule is then evaluated the way istiod does (`istio_locality_weights`)
over the placed zones; where the effective region split differs from the promised one (verbatim
wildcards, unknown zones) TrafficPolicyRisky names the gateways' locality and the split they get.
Subzones are not known to placement: a zone whose endpoints sit in several subzones is split by istiod
again (the same rounding); documented, not detected.
"""

from __future__ import annotations

import math
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
    # Warnings (also in `warnings`) that a gateway's effective split differs from the promised one.
    splits: list[str] = field(default_factory=list)

    def add(self, other: Report) -> None:
        self.errors.extend(e for e in other.errors if e not in self.errors)
        self.warnings.extend(w for w in other.warnings if w not in self.warnings)
        self.splits.extend(w for w in other.splits if w not in self.splits)

    def split(self, message: str) -> None:
        if message not in self.splits:
            self.splits.append(message)
        if message not in self.warnings:
            self.warnings.append(message)

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


# ---- zones: what istiod makes of a `to` --------------------------------------------------------

# region -> zone -> number of placed clusters there ("" : the zone is not known)
Zones = dict[str, dict[str, int]]
# What the compiler is told about the placement: regions only (zones unknown), or Zones.
Placed = Iterable[str] | Mapping[str, Mapping[str, int]]


def placed_zones(pairs: Iterable[tuple[str, str | None]]) -> Zones:
    """Zones from the (region, zone) of every placed cluster."""
    out: Zones = {}
    for region, zone in pairs:
        zones = out.setdefault(region, {})
        zones[zone or ""] = zones.get(zone or "", 0) + 1
    return {r: dict(sorted(z.items())) for r, z in sorted(out.items())}


def _topology(placed: Placed) -> Zones:
    if isinstance(placed, Mapping):
        return {r: dict(sorted((z, max(int(n), 1)) for z, n in zones.items())) or {"": 1}
                for r, zones in sorted(placed.items())}
    return {r: {"": 1} for r in sorted(set(placed))}


def _split_locality(locality: str) -> tuple[str, str, str]:
    parts = [*locality.split("/", 2), "", ""]
    return parts[0], parts[1], parts[2]


def locality_match(locality: str, rule: str) -> bool:
    """istiod's util.LocalityMatch: does `region/zone/subzone` (a proxy's or an endpoint group's) match the
    rule locality `rule` ('*' matches anything; a missing zone/subzone in the rule matches any)."""
    region, zone, subzone = _split_locality(locality)
    r, z, sz = _split_locality(rule)
    return (r == "*" or region == r) and (z in ("*", "") or zone == z) and (sz in ("*", "") or subzone == sz)


def istio_locality_weights(
    distribute: Sequence[Mapping[str, Any]], client: str, groups: Mapping[str, int]
) -> dict[str, int]:
    """The locality weights istiod's applyLocalityWeights gives a proxy at locality `client`, for endpoint
    groups `groups` (locality -> summed endpoint weight, an endpoint's weight being 1 unless set).

    The first rule whose `from` matches the client applies: each `to` locality's weight is divided over
    the groups it matches (not taken by an earlier `to`) in proportion to their weights, each share
    rounded UP; a group no `to` matches is emptied (absent here). No rule matching: the groups keep
    their own weights (endpoint counts). The result's keys are the groups that get traffic.
    """
    for rule in distribute:
        if not locality_match(client, str(rule.get("from", ""))):
            continue
        out: dict[str, int] = {}
        left = {g: w for g, w in groups.items() if w > 0}
        for loc, weight in (rule.get("to") or {}).items():
            matched = {g: w for g, w in left.items() if locality_match(g, loc)}
            total = sum(matched.values())
            for group, w in matched.items():
                del left[group]
                share = float(w * int(weight)) / float(total)  # as istiod: float64, then math.Ceil
                if share > 0:
                    out[group] = math.ceil(share)
        return out
    return {g: w for g, w in groups.items() if w > 0}


def region_weights(weights: Mapping[str, int]) -> dict[str, int]:
    """Locality weights summed per region."""
    out: dict[str, int] = {}
    for loc, w in weights.items():
        region = _split_locality(loc)[0]
        out[region] = out.get(region, 0) + w
    return out


def _apportion(total: int, clusters: Mapping[str, int]) -> dict[str, int]:
    """`total` over the zones, each at least 1, the rest one at a time to the zone with the least weight
    per placed cluster (ties: the first by name): as even per cluster as integers allow."""
    out = dict.fromkeys(sorted(clusters), 1)
    for _ in range(total - len(out)):
        zone = min(out, key=lambda z: (out[z] / clusters[z], z))
        out[zone] += 1
    return out


def _by_zone(weights: Mapping[str, int], client_region: str, client_zone: str, topo: Zones) -> dict[str, int]:
    """Region weights -> `to` localities that istiod turns into exactly these region weights (module
    docstring, Zones). Totals stay those of `weights`."""
    to: dict[str, int] = {}
    mine = sorted(z for z in topo.get(client_region, {}) if z)
    index = mine.index(client_zone) if client_zone in mine else 0
    for region, weight in weights.items():
        zones = topo.get(region, {"": 1})
        if len(zones) < 2 or "" in zones:  # one endpoint group, or zones without a name to write
            to[_loc(region)] = weight
            continue
        names = sorted(zones)
        if weight >= len(names):
            split = _apportion(weight, {z: zones[z] for z in names})
        else:  # W of the zones, 1 each; the client region's zones rotate over them
            start = index * weight % len(names)
            split = {names[(start + k) % len(names)]: 1 for k in range(weight)}
        to.update({f"{region}/{z}": w for z, w in split.items()})
    return dict(sorted(to.items()))


def _groups(topo: Zones) -> dict[str, int]:
    """One endpoint group per placed zone, weighted by its placed clusters (the estimate used where the
    split depends on endpoint counts: wildcards over several zones)."""
    return {(f"{r}/{z}" if z else r): n for r, zones in topo.items() for z, n in zones.items()}


def _pct(weights: Mapping[str, int]) -> str:
    total = sum(weights.values())
    order = sorted(weights, key=lambda r: (-weights[r], r))
    return " / ".join(f"{r} {f'{100 * weights[r] / total:.2f}'.rstrip('0').rstrip('.')}%" for r in order)


def _same_split(effective: Mapping[str, int], promised: Mapping[str, int]) -> bool:
    total_e, total_p = sum(effective.values()), sum(promised.values())
    return all(effective.get(r, 0) * total_p == promised.get(r, 0) * total_e for r in {*effective, *promised})


def _check_splits(
    outcomes: Mapping[tuple[str, str], tuple[dict[str, int] | None, dict[str, int], dict[str, int]]],
    topo: Zones,
    where: str,
    report: Report,
) -> None:
    """Report every client zone whose effective region split (istiod's arithmetic) is not the promised one.

    `outcomes`: (client region, zone) -> (promised region weights or None when no rule applies, effective
    locality weights, effective region weights). Zones of a region with the same outcome are named once.
    """
    by_region: dict[str, list[tuple[str, str]]] = {}
    for (region, zone), (promised, locs, eff) in sorted(outcomes.items()):
        if promised is not None and _same_split(eff, promised):
            continue
        weights = ", ".join(f"{loc}: {w}" for loc, w in sorted(locs.items()))
        if promised is None:
            msg = ("no distribute rule matches gateways in {who}: Istio weighs the localities by their "
                   f"endpoints, {_pct(eff)}")
        else:
            msg = ("gateways in {who} send " + f"{_pct(eff)} instead of {_pct(promised)} (Istio's locality "
                   f"weights {weights}: a wildcard's weight is divided over the zones it matches and each "
                   "share rounded up)")
        by_region.setdefault(region, []).append((zone, msg))
    for region, found in by_region.items():
        zones = [z for z in topo.get(region, {})]
        if len({m for _, m in found}) == 1 and len(found) == len(zones):
            report.split(f"{where}: " + found[0][1].replace("{who}", f"region {region}"))
            continue
        for zone, msg in found:
            who = f"region {region} zone {zone}" if zone else f"region {region}"
            report.split(f"{where}: " + msg.replace("{who}", who))


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


def validate_policy(policy: TrafficPolicy | None, regions: Placed) -> Report:
    """Errors (the policy must not be applied) and warnings (risky) for a policy over the regions that
    have endpoints (the regions of the placed clusters; with their zones when `regions` is a Zones
    mapping, and then also the effective split istiod makes of the compiled weights)."""
    topo = _topology(regions)
    if policy is None or policy.locality is None:
        return Report()
    # Every reconcile validates (Validator and status): the same policy over the same placement shape
    # is evaluated once (istiod's arithmetic per zone is O(zones^2)); callers get a fresh copy.
    key = (policy.model_dump_json(), _shape(topo))
    report = _VALIDATED.get(key)
    if report is None:
        report = _validate(policy.locality, topo)
        if len(_VALIDATED) >= _COMPILED_MAX:
            _VALIDATED.pop(next(iter(_VALIDATED)))
        _VALIDATED[key] = report
    return Report(errors=list(report.errors), warnings=list(report.warnings), splits=list(report.splits))


def _shape(topo: Zones) -> tuple[tuple[str, tuple[tuple[str, int], ...]], ...]:
    return tuple((r, tuple(zs.items())) for r, zs in topo.items())


def _validate(loc: LocalityPolicy, topo: Zones) -> Report:
    report = Report()
    present = list(topo)
    for region in present:
        if not re.match(_REGION, region):
            report.errors.append(f"region name {region!r} cannot be used in a locality")
    for region, zones in topo.items():
        for zone in zones:
            if zone and not re.match(_REGION, zone):
                report.errors.append(f"zone name {zone!r} (region {region}) cannot be used in a locality")
    report.add(_structure(loc))
    if report.errors:
        return report
    groups = _groups(topo)
    outcomes: dict[tuple[str, str], tuple[dict[str, int] | None, dict[str, int], dict[str, int]]] = {}
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
            verbatim = [rule.model_dump(by_alias=True) for rule in weighted.rules]
            report.add(check_locality_lb_setting({"distribute": verbatim}, None, f"{P}.weighted.rules"))
            if report.errors:
                return report
            for region, zones in topo.items():
                for zone in zones:
                    client = f"{region}/{zone}" if zone else region
                    rule = next((r for r in verbatim if locality_match(client, str(r["from"]))), None)
                    promised = None if rule is None else {
                        r: w for r, w in region_weights(rule["to"]).items() if r in topo or r == "*"}
                    if promised is not None and "*" in promised:
                        continue  # a '*' destination promises no region split to check against
                    locs = istio_locality_weights(verbatim, client, groups)
                    outcomes[(region, zone)] = (promised, locs, region_weights(locs))
            _check_splits(outcomes, topo, f"{P}.weighted.rules", report)
            return report
        for region, zones in topo.items():
            weights = _weights_for(loc, region, present, report)
            if weights is None:
                continue
            for zone in zones:
                to = _by_zone(weights, region, zone, topo)
                compiled = [{"from": _loc(region), "to": to}]
                report.add(check_locality_lb_setting({"distribute": compiled}, {}, P))
                client = f"{region}/{zone}" if zone else region
                locs = istio_locality_weights(compiled, client, groups)
                # A region without placed clusters (a named remote) is warned about above; it cannot get
                # its share, which is not the rounding this check is about.
                promised = {r: w for r, w in weights.items() if r in topo}
                outcomes[(region, zone)] = (promised, locs, region_weights(locs))
            report.warnings.extend(
                w for w in _left_out(region, weights, present, drained) if w not in report.warnings
            )
        _check_splits(outcomes, topo, P, report)
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


def _fragment(loc: LocalityPolicy, region: str, zone: str, topo: Zones) -> dict[str, Any]:
    """The fragment for clients in `region`/`zone`; the policy is already validated over `topo`."""
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
        weights = _weights_for(loc, region, list(topo), Report())
        assert weights is not None  # validated by the caller
        lb["distribute"] = [{"from": _loc(region), "to": _by_zone(weights, region, zone, topo)}]
    outlier = (loc.outlier_detection or OutlierDetection()).istio()
    return {"loadBalancer": {"localityLbSetting": lb}, "outlierDetection": outlier}


def compile_locality(
    policy: TrafficPolicy | None, cluster: ClusterFacts, regions: Placed
) -> dict[str, Any] | None:
    """The DestinationRule `trafficPolicy` fragment for `cluster`, or None when there is no policy.

    `regions` are the regions with endpoints (the placed clusters' regions), or their Zones; the
    cluster's own region is always included. Raises TrafficPolicyError (with every message) for an
    invalid policy.
    """
    if policy is None or policy.locality is None:
        return None
    topo = _topology(regions)
    if cluster.region not in topo:
        topo = _topology({**topo, cluster.region: {cluster.zone if isinstance(regions, Mapping) else "": 1}})
    report = validate_policy(policy, topo)
    if report.errors:
        raise TrafficPolicyError(report.errors)
    return _fragment(policy.locality, cluster.region, cluster.zone, topo)


def compile_zones(
    policy: TrafficPolicy | None, zones: Mapping[str, Mapping[str, int]]
) -> dict[tuple[str, str], dict[str, Any] | None]:
    """compile_locality for every placed zone at once (validates once): (region, zone) -> fragment.

    The clusters of one zone get the same fragment (also those of one region, unless a region's share
    is smaller than its zone count: then the client's zone picks the zones listed). Equal fragments are
    one object, so per-fragment memos share their work.
    """
    topo = _topology(zones)
    keys = [(r, z) for r, zs in topo.items() for z in zs]
    if policy is None or policy.locality is None:
        return dict.fromkeys(keys)
    # Many AccessPoints share a policy (and a placement shape): validated and compiled once. The key is
    # the policy's JSON, so an edited policy is a new entry; callers get fresh copies.
    key = (policy.model_dump_json(), _shape(topo))
    compiled = _COMPILED.get(key)
    if compiled is None:
        report = validate_policy(policy, topo)
        if report.errors:
            raise TrafficPolicyError(report.errors)
        compiled = {k: _fragment(policy.locality, k[0], k[1], topo) for k in keys}
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = compiled
    copies: dict[str, dict[str, Any]] = {}
    out: dict[tuple[str, str], dict[str, Any] | None] = {}
    for k, fragment in compiled.items():
        text = repr(fragment)
        if text not in copies:
            copies[text] = json_copy(fragment)
        out[k] = copies[text]
    return out


def compile_regions(policy: TrafficPolicy | None, regions: Iterable[str]) -> dict[str, dict[str, Any] | None]:
    """compile_locality for every region at once (validates once), zones not known: region -> fragment.

    Every cluster of a region gets the same fragment, so a controller compiles once per
    AccessPoint and looks the fragment up by the cluster's region.
    """
    topo = _topology(regions)
    compiled = compile_zones(policy, topo)
    return {region: compiled[(region, "")] for region in topo}


_COMPILED: dict[tuple[str, tuple[tuple[str, tuple[tuple[str, int], ...]], ...]],
                dict[tuple[str, str], dict[str, Any]]] = {}
_COMPILED_MAX = 4096
_VALIDATED: dict[tuple[str, tuple[tuple[str, tuple[tuple[str, int], ...]], ...]], Report] = {}


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
    """`TrafficPolicyValid` (False blocks the change) and `TrafficPolicyRisky` (warnings; reason
    SplitNotAsPromised when a gateway's effective split is not the promised one)."""
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
            reason="SplitNotAsPromised" if report.splits else "RegionsWithoutTraffic",
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
