"""Placement: selection rules, reasons, stability under outages, spread tie-breaking, determinism."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from accesspoint.meta import LabelSelector, LabelSelectorRequirement
from placement.models import (
    REJECTED_SHOWN,
    ClusterFacts,
    PlacementDecision,
    PlacementPolicy,
    PlacementSpec,
    Spread,
    Taint,
    Toleration,
    WorkloadFact,
    WorkloadRef,
    not_placed_beyond,
)
from placement.select import added_and_removed, decision_condition, select, summarize


def fleet() -> list[ClusterFacts]:
    """3 regions x 2 zones, two clusters per zone."""
    out = []
    for r in ("us-east", "us-west", "eu-west"):
        for z in ("a", "b"):
            for i in (1, 2):
                labels = {"env": "prod" if i == 1 else "staging"}
                out.append(
                    ClusterFacts(
                        name=f"{r}-{z}{i}",
                        region=r,
                        zone=f"{r}-{z}",
                        ready=True,
                        reachable=True,
                        labels=labels,
                    )
                )
    return out


def codes(decision: PlacementDecision) -> dict[str, str | None]:
    return {d.cluster: d.code for d in decision.selected + decision.rejected}


def test_empty_spec_selects_all_ready() -> None:
    d = select(PlacementSpec(), fleet())
    assert len(d.selected) == 12
    assert all(s.reason == "all clusters (no criteria)" for s in d.selected)
    assert d.names == sorted(d.names)


def test_each_rejection_has_a_reason() -> None:
    clusters = fleet()
    clusters[0] = clusters[0].model_copy(update={"ready": False})
    clusters[1] = clusters[1].model_copy(update={"taints": [Taint(key="maintenance")]})
    spec = PlacementSpec(
        cluster_selector=LabelSelector(match_labels={"env": "prod"}),
        regions=["us-east", "us-west"],
        zones=["us-east-a", "us-west-b"],
        exclude_clusters=["us-west-b1"],
    )
    d = select(spec, clusters)
    c = codes(d)
    assert c["us-east-a1"] == "NotReady"
    assert c["us-east-a2"] == "SelectorMismatch"
    assert c["us-east-b1"] == "WrongZone"
    assert c["eu-west-a1"] == "WrongRegion"
    assert c["us-west-b1"] == "Excluded"
    assert d.selected == []
    cond = decision_condition(d)
    assert cond.status == "False" and cond.reason == "NoMatchingClusters"
    assert "NotReady" in cond.message and "WrongZone" in cond.message


def test_tainted_and_tolerated() -> None:
    c = ClusterFacts(
        name="x",
        region="r",
        zone="z",
        ready=True,
        reachable=True,
        taints=[Taint(key="dedicated", value="payments", effect="NoSchedule")],
    )
    assert codes(select(PlacementSpec(), [c]))["x"] == "Tainted"
    for tol in (
        Toleration(key="dedicated", value="payments"),
        Toleration(key="dedicated", operator="Exists"),
        Toleration(operator="Exists"),
        Toleration(key="dedicated", value="payments", effect="NoSchedule"),
    ):
        assert select(PlacementSpec(tolerations=[tol]), [c]).names == ["x"], tol
    for tol in (
        Toleration(key="dedicated", value="other"),
        Toleration(key="dedicated", operator="Exists", effect="NoExecute"),
    ):
        assert select(PlacementSpec(tolerations=[tol]), [c]).names == [], tol


def test_noschedule_keeps_existing_noexecute_evicts() -> None:
    c = ClusterFacts(name="x", region="r", zone="z", ready=True, reachable=True)
    prev = select(PlacementSpec(), [c])
    soft = c.model_copy(update={"taints": [Taint(key="k", effect="NoSchedule")]})
    d = select(PlacementSpec(), [soft], prev)
    assert d.names == ["x"] and d.selected[0].code == "Kept"
    hard = c.model_copy(update={"taints": [Taint(key="k", effect="NoExecute")]})
    assert select(PlacementSpec(), [hard], prev).names == []


def test_unreachable_previously_selected_stays() -> None:
    clusters = fleet()
    spec = PlacementSpec(regions=["us-east"])
    prev = select(spec, clusters)
    assert len(prev.names) == 4
    down = [
        c.model_copy(update={"ready": False, "reachable": False}) if c.name == "us-east-a1" else c
        for c in clusters
    ]
    d = select(spec, down, prev)
    assert d.names == prev.names
    kept = next(s for s in d.selected if s.cluster == "us-east-a1")
    assert kept.code == "Kept" and "unreachable" in kept.reason
    # never selected + not ready -> not newly chosen
    assert codes(select(spec, down))["us-east-a1"] == "NotReady"
    assert added_and_removed(prev, d) == ([], [])


def test_new_matching_cluster_is_added_relabel_prunes() -> None:
    spec = PlacementSpec(cluster_selector=LabelSelector(match_labels={"env": "prod"}))
    clusters = fleet()
    prev = select(spec, clusters)
    new = ClusterFacts(
        name="ap-south-a1",
        region="ap-south",
        zone="ap-south-a",
        ready=True,
        reachable=True,
        labels={"env": "prod"},
    )
    d = select(spec, [*clusters, new], prev)
    assert added_and_removed(prev, d) == (["ap-south-a1"], [])
    relabeled = [
        c.model_copy(update={"labels": {"env": "staging"}}) if c.name == "us-east-a1" else c for c in clusters
    ]
    d2 = select(spec, relabeled, prev)
    assert added_and_removed(prev, d2) == ([], ["us-east-a1"])


def test_relabel_of_unreachable_cluster_still_prunes_hub_side_fact() -> None:
    spec = PlacementSpec(cluster_selector=LabelSelector(match_labels={"env": "prod"}))
    c = ClusterFacts(name="x", region="r", zone="z", ready=True, reachable=True, labels={"env": "prod"})
    prev = select(spec, [c])
    down = c.model_copy(update={"ready": False, "reachable": False})
    assert select(spec, [down], prev).names == ["x"]
    relabeled = down.model_copy(update={"labels": {}})
    assert select(spec, [relabeled], prev).names == []


def test_follow_workload_by_name_and_selector() -> None:
    deploy = WorkloadFact(namespace="shop", name="checkout", labels={"app": "checkout"})
    have = ClusterFacts(name="have", region="r", zone="z", ready=True, reachable=True, workloads=[deploy])
    lack = ClusterFacts(
        name="lack",
        region="r",
        zone="z",
        ready=True,
        reachable=True,
        workloads=[WorkloadFact(namespace="other", name="checkout")],
    )
    unknown = ClusterFacts(name="unknown", region="r", zone="z", ready=True, reachable=True)
    for ref in (
        WorkloadRef(namespace="shop", name="checkout"),
        WorkloadRef(namespace="shop", selector=LabelSelector(match_labels={"app": "checkout"})),
    ):
        d = select(PlacementSpec(follow_workload=ref), [have, lack, unknown])
        assert d.names == ["have"]
        assert codes(d) == {"have": "Matched", "lack": "NoWorkload", "unknown": "WorkloadUnknown"}
    with pytest.raises(ValidationError):
        WorkloadRef(namespace="shop")


def test_follow_workload_unreachable_keeps() -> None:
    ref = WorkloadRef(namespace="shop", name="checkout")
    c = ClusterFacts(
        name="x",
        region="r",
        zone="z",
        ready=True,
        reachable=True,
        workloads=[WorkloadFact(namespace="shop", name="checkout")],
    )
    prev = select(PlacementSpec(follow_workload=ref), [c])
    assert prev.names == ["x"]
    down = c.model_copy(update={"ready": False, "reachable": False, "workloads": None})
    assert select(PlacementSpec(follow_workload=ref), [down], prev).names == ["x"]
    gone = c.model_copy(update={"workloads": []})
    assert select(PlacementSpec(follow_workload=ref), [gone], prev).names == []


def test_spread_per_zone_and_max() -> None:
    d = select(PlacementSpec(spread=Spread(per_zone=1)), fleet())
    assert d.names == sorted(f"{r}-{z}1" for r in ("us-east", "us-west", "eu-west") for z in "ab")
    over = [x for x in d.rejected if x.code == "SpreadLimit"]
    assert len(over) == 6 and "perZone 1" in over[0].reason
    d = select(PlacementSpec(spread=Spread(max_clusters=3)), fleet())
    # round-robin over zones ordered by (region, zone): eu-west-a, eu-west-b, us-east-a
    assert d.names == ["eu-west-a1", "eu-west-b1", "us-east-a1"]
    assert "maxClusters 3" in next(x for x in d.rejected if x.code == "SpreadLimit").reason


def test_spread_is_sticky() -> None:
    spec = PlacementSpec(spread=Spread(max_clusters=2, per_zone=1))
    clusters = fleet()
    prev = select(spec, clusters)
    new = ClusterFacts(name="aa-first", region="aa", zone="aa-a", ready=True, reachable=True)
    d = select(spec, [new, *clusters], prev)
    assert d.names == prev.names
    assert codes(d)["aa-first"] == "SpreadLimit"


def test_unknown_names_reported() -> None:
    d = select(PlacementSpec(cluster_names=["us-east-a1", "nope"], exclude_clusters=["ghost"]), fleet())
    assert d.names == ["us-east-a1"]
    assert d.unknown_clusters == ["ghost", "nope"]
    assert "nope" in decision_condition(d).message
    assert summarize(d).selected == "1/12"


def test_match_expressions_on_region_label() -> None:
    sel = LabelSelector(
        match_expressions=[
            LabelSelectorRequirement(key="topology.kubernetes.io/region", operator="In", values=["eu-west"])
        ]
    )
    assert len(select(PlacementSpec(cluster_selector=sel), fleet()).names) == 4


def test_placement_policy_resource_roundtrip() -> None:
    pp = PlacementPolicy.model_validate(
        {
            "apiVersion": "meshfed.io/v1alpha1",
            "kind": "PlacementPolicy",
            "metadata": {"name": "prod", "namespace": "shop"},
            "spec": {
                "clusterSelector": {"matchLabels": {"env": "prod"}},
                "regions": ["us-east"],
                "spread": {"perZone": 1, "maxClusters": 3},
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                "excludeClusters": ["x"],
                "followWorkload": {"namespace": "shop", "name": "checkout"},
            },
        }
    )
    assert pp.spec.spread == Spread(per_zone=1, max_clusters=3)
    assert PlacementPolicy.crd.short_names == ("pp",)
    with pytest.raises(ValidationError):
        PlacementSpec.model_validate({"spread": {"perZone": 0}})
    with pytest.raises(ValidationError):
        PlacementSpec.model_validate({"regionz": ["x"]})


# ---- properties -------------------------------------------------------------------------------

names = st.sampled_from([f"c{i}" for i in range(12)])
cluster_st = st.builds(
    ClusterFacts,
    name=names,
    region=st.sampled_from(["r1", "r2", "r3"]),
    zone=st.sampled_from(["z1", "z2"]),
    labels=st.dictionaries(st.sampled_from(["env", "tier"]), st.sampled_from(["prod", "dev"]), max_size=2),
    taints=st.lists(
        st.builds(
            Taint, key=st.sampled_from(["k1", "k2"]), effect=st.sampled_from(["NoSchedule", "NoExecute"])
        ),
        max_size=1,
    ),
    ready=st.booleans(),
    reachable=st.sampled_from([True, False, None]),
)
clusters_st = st.lists(cluster_st, max_size=10, unique_by=lambda c: c.name)
spec_st = st.builds(
    PlacementSpec,
    regions=st.lists(st.sampled_from(["r1", "r2", "r3"]), max_size=2, unique=True),
    cluster_selector=st.one_of(
        st.none(),
        st.builds(
            LabelSelector,
            match_labels=st.dictionaries(st.just("env"), st.sampled_from(["prod", "dev"]), max_size=1),
        ),
    ),
    tolerations=st.lists(st.builds(Toleration, key=st.just("k1"), operator=st.just("Exists")), max_size=1),
    spread=st.one_of(
        st.none(),
        st.builds(
            Spread,
            per_zone=st.one_of(st.none(), st.integers(1, 3)),
            max_clusters=st.one_of(st.none(), st.integers(1, 5)),
        ),
    ),
)


@settings(max_examples=200, deadline=None)
@given(spec=spec_st, clusters=clusters_st, prev_names=st.lists(names, unique=True), data=st.data())
def test_properties(
    spec: PlacementSpec, clusters: list[ClusterFacts], prev_names: list[str], data: st.DataObject
) -> None:
    prev = select(
        PlacementSpec(cluster_names=prev_names), [c.model_copy(update={"ready": True}) for c in clusters]
    )
    d = select(spec, clusters, prev)
    shuffled = data.draw(st.permutations(clusters))
    assert select(spec, shuffled, prev) == d  # order-free and deterministic
    # every cluster decided exactly once
    decided = [x.cluster for x in d.selected + d.rejected]
    assert sorted(decided) == sorted(c.name for c in clusters)
    # never newly select a not-ready cluster
    by = {c.name: c for c in clusters}
    for s in d.selected:
        assert by[s.cluster].ready or s.cluster in prev.names
    if spec.spread and spec.spread.max_clusters:
        assert len(d.selected) <= spec.spread.max_clusters
    # an outage alone never removes: same decision with every previously selected cluster down
    # still keeps each of them that is kept by hub-side facts
    down = [
        c.model_copy(update={"ready": False, "reachable": False}) if c.name in prev.names else c
        for c in clusters
    ]
    up = [
        c.model_copy(update={"ready": True, "reachable": True}) if c.name in prev.names else c
        for c in clusters
    ]
    assert set(select(spec, up, prev).names) & set(prev.names) == set(select(spec, down, prev).names) & set(
        prev.names
    )


def big_fleet(zones: int = 40, per_zone: int = 25) -> list[ClusterFacts]:
    """`zones` zones of `per_zone` clusters (1,000 by default), a few not ready, a few tainted."""
    return [ClusterFacts(name=f"c{z:02d}-{i:02d}", region=f"r{z % 4}", zone=f"z{z:02d}", ready=(z, i) != (3, 7),
                         reachable=True, taints=[Taint(key="maint", value="x", effect="NoSchedule")] if i == 24 else [])
            for z in range(zones) for i in range(per_zone)]


def test_a_status_lists_at_most_20_clusters_not_placed_the_telling_ones_first_and_counts_them_all() -> None:
    full = select(PlacementSpec(zones=["z03"]), big_fleet())
    assert len(full.names) == 23 and len(full.rejected) == 977, "the decision itself keeps every reason"
    shown = full.shortened()
    assert shown.selected == full.selected and len(shown.rejected) == REJECTED_SHOWN
    assert shown.rejected_total == 977
    assert shown.rejected_by_code == {"NotReady": 1, "Tainted": 1, "WrongZone": 975}
    listed = {d.cluster: d.code for d in shown.rejected}
    assert listed["c03-07"] == "NotReady" and listed["c03-24"] == "Tainted", "the state-kept ones come first"
    assert [d.cluster for d in shown.rejected] == sorted(listed), "listed by name"
    assert shown.model_dump_json() == select(PlacementSpec(zones=["z03"]), list(reversed(big_fleet()))).shortened()\
        .model_dump_json(), "the same list whatever the order of the clusters: a status written only on change"
    assert len(shown.model_dump_json(by_alias=True)) * 10 < len(full.model_dump_json(by_alias=True))
    assert not_placed_beyond(shown.wire()) == "and 957 more not placed (NotReady 1, Tainted 1, WrongZone 975)"


def test_a_decision_with_few_clusters_not_placed_is_shown_as_it_is() -> None:
    decision = select(PlacementSpec(regions=["us-east"]), fleet())
    assert decision.shortened() is decision and "rejectedTotal" not in decision.wire()
    assert not_placed_beyond(decision.wire()) == ""


# ---- hinges_on: which clusters' own state a decision turns on ---------------------------------------

def test_hinges_on_names_the_placed_and_those_kept_out_by_their_state() -> None:
    clusters = fleet()
    clusters[1] = clusters[1].model_copy(update={"ready": False})  # us-east-a2: NotReady
    spec = PlacementSpec(regions=["us-east"], cluster_selector=LabelSelector(match_labels={"env": "prod"}),
                         exclude_clusters=["us-east-b1"])
    d = select(spec, clusters)
    assert codes(d)["us-east-a1"] == "Matched" and codes(d)["us-east-b1"] == "Excluded"
    assert d.hinges_on() == {"us-east-a1"}  # a2 is a staging cluster: SelectorMismatch first
    d = select(PlacementSpec(regions=["us-east"], spread=Spread(per_zone=1)), clusters)
    assert codes(d) == {"us-east-a1": "Matched", "us-east-a2": "NotReady", "us-east-b1": "Matched",
                        "us-east-b2": "SpreadLimit", **{c.name: "WrongRegion" for c in clusters[4:]}}
    assert d.hinges_on() == {"us-east-a1", "us-east-a2", "us-east-b1", "us-east-b2"}


workload_st = st.one_of(st.none(), st.lists(st.builds(WorkloadFact, namespace=st.just("shop"),
                                                       name=st.sampled_from(["checkout", "cart"])), max_size=2))
mesh_cluster_st = st.builds(
    ClusterFacts, name=names, region=st.sampled_from(["r1", "r2"]), zone=st.sampled_from(["z1", "z2"]),
    labels=st.dictionaries(st.just("env"), st.sampled_from(["prod", "dev"]), max_size=1),
    taints=st.lists(st.builds(Taint, key=st.just("k1"), effect=st.sampled_from(["NoSchedule", "NoExecute"])),
                    max_size=1),
    ready=st.booleans(), reachable=st.sampled_from([True, False, None]), workloads=workload_st,
    mesh_primary=st.one_of(st.none(), names))
wide_spec_st = st.builds(
    PlacementSpec,
    cluster_names=st.lists(names, max_size=3, unique=True),
    regions=st.lists(st.sampled_from(["r1", "r2"]), max_size=1),
    zones=st.lists(st.sampled_from(["z1", "z2"]), max_size=1),
    exclude_clusters=st.lists(names, max_size=2, unique=True),
    cluster_selector=st.one_of(st.none(), st.builds(LabelSelector, match_labels=st.just({"env": "prod"}))),
    spread=st.one_of(st.none(), st.builds(Spread, per_zone=st.one_of(st.none(), st.integers(1, 2)),
                                          max_clusters=st.one_of(st.none(), st.integers(1, 3)))),
    follow_workload=st.one_of(st.none(), st.builds(WorkloadRef, namespace=st.just("shop"), name=st.just("checkout"))),
    target=st.sampled_from(["Cluster", "Zone"]),
)


@settings(max_examples=400, deadline=None)
@given(spec=wide_spec_st, clusters=st.lists(mesh_cluster_st, max_size=8, unique_by=lambda c: c.name),
       prev_names=st.lists(names, unique=True), data=st.data())
def test_a_cluster_the_decision_does_not_hinge_on_changes_nothing_by_its_own_state(
    spec: PlacementSpec, clusters: list[ClusterFacts], prev_names: list[str], data: st.DataObject
) -> None:
    """What lets the controller plan again only the AccessPoints whose placement hinges on a member whose
    own state moved (federation/controller.py MEMBER_SIDE_CAUSES): any other member may become ready,
    unreachable or run other Deployments, and the decision stays exactly as it was."""
    prev = select(PlacementSpec(cluster_names=prev_names), [c.model_copy(update={"ready": True}) for c in clusters])
    d = select(spec, clusters, prev)
    others = [c for c in clusters if c.name not in d.hinges_on()]
    if not others:
        return
    moved = data.draw(st.sampled_from(others))
    state = {"ready": data.draw(st.booleans()), "reachable": data.draw(st.sampled_from([True, False, None])),
             "workloads": data.draw(workload_st)}
    changed = [c.model_copy(update=state) if c.name == moved.name else c for c in clusters]
    assert select(spec, changed, prev) == d
