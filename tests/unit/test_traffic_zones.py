"""The promised split whatever the zone count (issue 21): the compiled weights, evaluated the way istiod
evaluates them (accesspoint.traffic.istio_locality_weights mirrors applyLocalityWeights), give every
gateway exactly the promised region split, for any number of zones and clusters per region and any
endpoint count per zone; where they cannot (verbatim wildcards, zones without a name), TrafficPolicyRisky
says so with the effective split."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accesspoint.traffic import (
    TrafficPolicy,
    Zones,
    _weights_for,
    check_locality_lb_setting,
    compile_locality,
    compile_regions,
    compile_zones,
    istio_locality_weights,
    locality_match,
    placed_zones,
    region_weights,
    traffic_conditions,
    validate_policy,
)
from placement.models import ClusterFacts

TWO_BY_TWO: Zones = {"region-a": {"region-a-1": 1, "region-a-2": 1}, "region-b": {"region-b-1": 1, "region-b-2": 1}}


def tp(**locality: Any) -> TrafficPolicy:
    return TrafficPolicy.model_validate({"locality": locality})


def to_of(fragment: dict[str, Any] | None) -> dict[str, int]:
    assert fragment is not None
    (rule,) = fragment["loadBalancer"]["localityLbSetting"]["distribute"]
    return dict(rule["to"])


def effective(fragment: dict[str, Any] | None, client: str, groups: dict[str, int]) -> dict[str, int]:
    assert fragment is not None
    lb = fragment["loadBalancer"]["localityLbSetting"]
    return region_weights(istio_locality_weights(lb["distribute"], client, groups))


# ---- istiod's arithmetic --------------------------------------------------------------------------


@pytest.mark.parametrize(("client", "rule", "match"), [
    ("a/z1", "a/*", True), ("a/z1", "a", True), ("a/z1", "a/z1", True), ("a/z1", "a/z2", False),
    ("a/z1/s1", "a/z1", True), ("a/z1/s1", "a/z1/s2", False), ("b/z1", "a/*", False), ("b/z1", "*", True),
    ("a", "a/z1", False), ("a", "a/*", True),
])
def test_locality_match_is_istios(client: str, rule: str, match: bool) -> None:
    assert locality_match(client, rule) is match


def test_the_measured_98_2_is_what_istiod_computes_for_a_wildcard_over_two_zones() -> None:
    """REFERENCE.md: `region-b/*: 99, region-a/*: 1` with region-a in two zones sent 98.0 / 2.0."""
    rules = [{"from": "region-b/*", "to": {"region-b/*": 99, "region-a/*": 1}}]
    groups = {"region-a/region-a-1": 1, "region-a/region-a-2": 1, "region-b/region-b-1": 1}
    assert istio_locality_weights(rules, "region-b/region-b-1", groups) == {
        "region-a/region-a-1": 1, "region-a/region-a-2": 1, "region-b/region-b-1": 99}
    # Istio's own table (loadbalancer_test.go "distribution between subzones"): a locality matched by one
    # `to` entry keeps that weight; one matching two groups splits it by endpoint weight (80 -> 40 + 40).
    sub = [{"from": "region1/zone1/subzone1", "to": {"region1/zone1/subzone1": 80, "region1/zone1/subzone2": 15,
                                                      "region1/zone1/subzone3": 5}}]
    assert istio_locality_weights(sub, "region1/zone1/subzone1", {
        "region1/zone1/subzone1": 2, "region1/zone1/subzone2": 1, "region1/zone1/subzone3": 1, "region2/zone1": 1,
    }) == {"region1/zone1/subzone1": 80, "region1/zone1/subzone2": 15, "region1/zone1/subzone3": 5}
    # Rounded up per group, in proportion to the endpoints: 99 over 2 + 1 endpoints -> 66 + 33.
    assert istio_locality_weights([{"from": "a/*", "to": {"a/*": 99, "b/*": 1}}], "a/x",
                                  {"a/x": 2, "a/y": 1, "b/x": 1}) == {"a/x": 66, "a/y": 33, "b/x": 1}
    # No rule for the client: every group keeps its own weight (its endpoint count).
    assert istio_locality_weights(rules, "region-a/region-a-1", groups) == groups


# ---- the compiler: table -----------------------------------------------------------------------------


def test_99_1_in_two_regions_of_two_zones_is_exact_from_every_gateway() -> None:
    fragments = compile_zones(tp(mode="Weighted"), TWO_BY_TWO)
    assert to_of(fragments[("region-a", "region-a-1")]) == {
        "region-a/region-a-1": 50, "region-a/region-a-2": 49, "region-b/region-b-1": 1}
    # The other zone of region-a sends its 1% to the other zone of region-b: together every zone gets some.
    assert to_of(fragments[("region-a", "region-a-2")]) == {
        "region-a/region-a-1": 50, "region-a/region-a-2": 49, "region-b/region-b-2": 1}
    assert to_of(fragments[("region-b", "region-b-1")]) == {
        "region-a/region-a-1": 1, "region-b/region-b-1": 50, "region-b/region-b-2": 49}
    groups = {f"{r}/{z}": 1 for r, zones in TWO_BY_TWO.items() for z in zones}
    for (region, zone), fragment in fragments.items():
        other = "region-b" if region == "region-a" else "region-a"
        assert effective(fragment, f"{region}/{zone}", groups) == {region: 99, other: 1}
    report = validate_policy(tp(mode="Weighted"), TWO_BY_TWO)
    assert report.errors == [] and report.warnings == [] and report.splits == []


def test_98_1_1_over_zones_and_clusters_per_zone() -> None:
    zones: Zones = {"a": {"a1": 2, "a2": 1}, "b": {"b1": 1, "b2": 1, "b3": 1}, "c": {"c1": 1}}
    fragments = compile_zones(tp(mode="Weighted"), zones)
    # Local 98 by placed clusters (2:1), b's 1 to one of three zones (by the client's zone), c keeps c/*.
    assert to_of(fragments[("a", "a1")]) == {"a/a1": 65, "a/a2": 33, "b/b1": 1, "c/*": 1}
    assert to_of(fragments[("a", "a2")]) == {"a/a1": 65, "a/a2": 33, "b/b2": 1, "c/*": 1}
    assert to_of(fragments[("c", "c1")]) == {"a/a1": 1, "b/b1": 1, "c/*": 98}
    assert to_of(fragments[("b", "b3")]) == {"a/a1": 1, "b/b1": 33, "b/b2": 33, "b/b3": 32, "c/*": 1}


def test_one_zone_per_region_compiles_as_before() -> None:
    """No churn for today's fleets: a region in one zone keeps its `R/*`, byte for byte what compile_regions
    wrote before zones were known."""
    zones: Zones = {"a": {"a1": 3}, "b": {"b1": 1}, "c": {"c1": 2}}
    by_zone = compile_zones(tp(mode="Weighted"), zones)
    by_region = compile_regions(tp(mode="Weighted"), ["a", "b", "c"])
    for (region, _), fragment in by_zone.items():
        assert fragment == by_region[region]
    facts = ClusterFacts(name="x", region="b", zone="b1", ready=True)
    assert compile_locality(tp(mode="Weighted"), facts, zones) == by_region["b"]


def test_drain_over_zones() -> None:
    policy = tp(mode="Drain", drain={"regions": ["c"]})
    zones: Zones = {"a": {"a1": 1, "a2": 1}, "b": {"b1": 1, "b2": 1}, "c": {"c1": 1, "c2": 1}}
    fragments = compile_zones(policy, zones)
    assert to_of(fragments[("c", "c1")]) == {"a/a1": 25, "a/a2": 25, "b/b1": 25, "b/b2": 25}
    assert to_of(fragments[("a", "a2")]) == {"a/a1": 50, "a/a2": 49, "b/b2": 1}
    assert validate_policy(policy, zones).splits == []


# ---- where it cannot be exact: said, with the split ---------------------------------------------------


def test_verbatim_wildcards_over_two_zones_are_risky_with_the_effective_split() -> None:
    rules = [{"from": "region-a/*", "to": {"region-a/*": 99, "region-b/*": 1}},
             {"from": "region-b/*", "to": {"region-b/*": 99, "region-a/*": 1}}]
    policy = tp(mode="Weighted", weighted={"rules": rules})
    report = validate_policy(policy, TWO_BY_TWO)
    assert report.errors == []
    assert report.splits == [
        "spec.traffic.locality.weighted.rules: gateways in region region-a send region-a 98.04% / region-b 1.96% "
        "instead of region-a 99% / region-b 1% (Istio's locality weights region-a/region-a-1: 50, "
        "region-a/region-a-2: 50, region-b/region-b-1: 1, region-b/region-b-2: 1: a wildcard's weight is divided "
        "over the zones it matches and each share rounded up)",
        "spec.traffic.locality.weighted.rules: gateways in region region-b send region-b 98.04% / region-a 1.96% "
        "instead of region-b 99% / region-a 1% (Istio's locality weights region-a/region-a-1: 1, "
        "region-a/region-a-2: 1, region-b/region-b-1: 50, region-b/region-b-2: 50: a wildcard's weight is divided "
        "over the zones it matches and each share rounded up)",
    ]
    risky = traffic_conditions(report)[1]
    assert (risky.status, risky.reason) == ("True", "SplitNotAsPromised")
    assert "98.04%" in (risky.message or "")
    # The same rules with one zone per region are exact: nothing to say.
    one_zone: Zones = {"region-a": {"region-a-1": 1}, "region-b": {"region-b-1": 1}}
    assert validate_policy(policy, one_zone).warnings == []
    # A verbatim rule that matches no gateway: Istio falls back to endpoint counts; said too.
    only_a = tp(mode="Weighted", weighted={"rules": rules[:1]})
    msg = validate_policy(only_a, TWO_BY_TWO).splits[-1]
    assert msg.startswith("spec.traffic.locality.weighted.rules: no distribute rule matches gateways in region "
                          "region-b: Istio weighs the localities by their endpoints, region-a 50% / region-b 50%")


def test_a_region_with_clusters_of_unknown_zone_keeps_the_wildcard_and_says_what_it_gets() -> None:
    zones: Zones = {"a": {"a1": 1}, "b": {"": 1, "b1": 1}}
    report = validate_policy(tp(mode="Weighted"), zones)
    assert report.errors == []
    assert report.splits == [
        "spec.traffic.locality: gateways in region a send a 98.02% / b 1.98% instead of a 99% / b 1% (Istio's "
        "locality weights a/a1: 99, b: 1, b/b1: 1: a wildcard's weight is divided over the zones it matches and "
        "each share rounded up)",
        "spec.traffic.locality: gateways in region b send b 99.01% / a 0.99% instead of b 99% / a 1% (Istio's "
        "locality weights a/a1: 1, b: 50, b/b1: 50: a wildcard's weight is divided over the zones it matches and "
        "each share rounded up)"]
    assert to_of(compile_zones(tp(mode="Weighted"), zones)[("a", "a1")]) == {"a/*": 99, "b/*": 1}


def test_placed_zones_counts_clusters() -> None:
    assert placed_zones([("b", "b1"), ("a", "a2"), ("a", "a1"), ("a", "a2"), ("c", None)]) == {
        "a": {"a1": 1, "a2": 2}, "b": {"b1": 1}, "c": {"": 1}}


# ---- properties: any zone count, any clusters and endpoints per zone ------------------------------------

REGIONS = ["r0", "r1", "r2", "r3"]


@st.composite
def zoned_cases(draw: st.DrawFn) -> tuple[TrafficPolicy, Zones, dict[str, int]]:
    regions = draw(st.lists(st.sampled_from(REGIONS), min_size=1, max_size=4, unique=True))
    zones: Zones = {r: {f"{r}-z{k}": draw(st.integers(1, 3)) for k in range(draw(st.integers(1, 4)))}
                    for r in regions}
    mode = draw(st.sampled_from(["Weighted", "Drain"]))
    local = draw(st.one_of(st.none(), st.integers(1, 100)))
    remotes = draw(st.lists(st.sampled_from(REGIONS), max_size=3, unique=True))
    weighted: dict[str, Any] = {"remotes": [{"region": r} for r in remotes]}
    if local is not None:
        weighted["localWeight"] = local
    locality: dict[str, Any] = {"mode": mode, "weighted": weighted}
    if mode == "Drain":
        locality["drain"] = {"regions": draw(st.lists(st.sampled_from(regions), min_size=1, unique=True))}
    # Endpoints per zone as the gateways' istiod sees them (any count, any weight sum): must not matter.
    endpoints = {f"{r}/{z}": draw(st.integers(1, 7)) for r, zs in zones.items() for z in zs}
    return TrafficPolicy.model_validate({"locality": locality}), zones, endpoints


@settings(max_examples=400, deadline=None)
@given(case=zoned_cases())
def test_every_gateway_gets_exactly_the_promised_split(case: tuple[TrafficPolicy, Zones, dict[str, int]]) -> None:
    policy, zones, endpoints = case
    report = validate_policy(policy, zones)
    if not report.ok:
        return
    assert report.splits == []
    assert policy.locality is not None
    fragments = compile_zones(policy, zones)
    for (region, zone), fragment in fragments.items():
        assert fragment is not None
        lb = fragment["loadBalancer"]["localityLbSetting"]
        assert check_locality_lb_setting(lb, fragment["outlierDetection"]).ok
        (rule,) = lb["distribute"]
        assert rule["from"] == f"{region}/*" and sum(rule["to"].values()) == 100
        promised = _weights_for(policy.locality, region, sorted(zones), type(report)())
        assert promised is not None
        promised = {r: w for r, w in promised.items() if r in zones}  # a named remote without clusters: warned
        got = region_weights(istio_locality_weights(lb["distribute"], f"{region}/{zone}", endpoints))
        total = sum(promised.values())
        assert {r: w * total for r, w in got.items()} == {r: w * sum(got.values()) for r, w in promised.items()}, \
            (region, zone, rule["to"], endpoints)
    # Together, a region's gateways send to every zone of every region they send to, as far as the
    # weights allow (each zone listed needs at least 1).
    for region, zs in zones.items():
        listed = {loc for z in zs for loc in to_of(fragments[(region, z)])}
        promised = _weights_for(policy.locality, region, sorted(zones), type(report)())
        assert promised is not None
        for target, weight in promised.items():
            targets = zones.get(target, {})
            if len(targets) > 1 and weight * len(zs) >= len(targets):
                assert {f"{target}/{z}" for z in targets} <= listed


# ---- the controller's lookup (federation/traffic.py) ------------------------------------------------------


def test_the_controller_gives_each_cluster_its_zones_fragment() -> None:
    from federation.traffic import decision_zones, fragment_for
    from placement.models import ClusterDecision, PlacementDecision

    decision = PlacementDecision(selected=[
        ClusterDecision(cluster=m, reason="selected", region=r, zone=z)
        for m, r, z in (("m-a1", "region-a", "region-a-1"), ("m-a2", "region-a", "region-a-2"),
                        ("m-b1", "region-b", "region-b-1"), ("m-b2", "region-b", "region-b-2"))])
    zones = decision_zones(decision)
    assert zones == TWO_BY_TWO
    fragments = compile_zones(tp(mode="Weighted"), zones)

    def facts(region: str, zone: str) -> ClusterFacts:
        return ClusterFacts(name="x", region=region, zone=zone, ready=True)

    assert fragment_for(fragments, facts("region-b", "region-b-2")) is fragments[("region-b", "region-b-2")]
    assert to_of(fragment_for(fragments, facts("region-b", "region-b-2")))["region-a/region-a-2"] == 1
    # A cluster whose zone the decision does not know (a relabel in flight) gets its region's first zone's
    # fragment: still exactly 99/1, never no policy at all.
    assert fragment_for(fragments, facts("region-b", "region-b-9")) is fragments[("region-b", "region-b-1")]
    assert fragment_for(fragments, facts("region-c", "region-c-1")) is None
