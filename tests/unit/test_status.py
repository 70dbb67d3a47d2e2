"""accesspoint.status.summarize: conditions and columns per situation, transition times, no-op equality."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from accesspoint.meta import Condition, condition
from accesspoint.models import AccessPointStatus, AccessPointSummary, ClusterStatus
from accesspoint.status import applied_message, summarize
from placement.models import ClusterDecision, PlacementDecision

T1, T2, T3 = "2025-01-01T00:00:00Z", "2025-01-01T00:01:00Z", "2025-01-01T00:02:00Z"
REV = "4a3d9909d7"


def placed(*names: str) -> PlacementDecision:
    return PlacementDecision(selected=[ClusterDecision(cluster=n, reason="selected") for n in names])


def applied(name: str, vip: str | None = None, **kw: Any) -> ClusterStatus:
    return ClusterStatus(name=name, state="Applied", revision=REV, objects=4, vip=vip or f"10.0.0.{name[-1]}", **kw)


def state(name: str, s: Any, error: str | None = None) -> ClusterStatus:
    return ClusterStatus(name=name, state=s, last_error=error)


def conds(status: AccessPointStatus) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in status.conditions}


def test_ready_everywhere() -> None:
    st_ = summarize(3, REV, placed("m2", "m1", "m3"), [applied("m3"), applied("m1"), applied("m2")], T1, None)
    assert conds(st_) == {
        "Accepted": ("True", "Valid", "the spec is valid"),
        "Placed": ("True", "ClustersSelected", "3 cluster(s): m1, m2, m3"),
        "Applied": ("True", "Applied", f"revision {REV} applied in 3 cluster(s)"),
        "Ready": ("True", "Ready", "ready in 3/3 cluster(s)"),
    }
    assert [c.type for c in st_.conditions] == ["Accepted", "Placed", "Applied", "Ready"]
    assert all(c.observed_generation == 3 and c.last_transition_time == T1 for c in st_.conditions)
    assert st_.summary == AccessPointSummary(clusters="3/3", vips="10.0.0.1,10.0.0.2,10.0.0.3", phase="Ready")
    assert [c.name for c in st_.clusters] == ["m1", "m2", "m3"]  # sorted by name
    assert st_.observed_generation == 3 and st_.revision == REV
    assert st_.placement == placed("m2", "m1", "m3")


def test_invalid_spec() -> None:
    before = summarize(1, REV, placed("m1"), [applied("m1")], T1, None)
    before.fqdn = "checkout.example"
    st_ = summarize(2, "", PlacementDecision(), [], T2, before,
                    invalid=["spec.template[1].spec.hosts[0]: unknown variable ${regoin}", "second problem"])
    assert conds(st_) == {
        "Accepted": ("False", "InvalidSpec",
                     "spec.template[1].spec.hosts[0]: unknown variable ${regoin}; second problem"),
        "Applied": ("Unknown", "InvalidSpec", "nothing is written while the spec is invalid"),
        "Ready": ("False", "InvalidSpec", "the spec is invalid"),
    }
    assert st_.observed_generation == 2
    # what is on the members is unchanged: the previous entries, revision and columns stay
    assert st_.clusters == before.clusters and st_.revision == REV and st_.fqdn == "checkout.example"
    assert st_.summary == AccessPointSummary(clusters="1/1", vips="10.0.0.1", phase="Invalid")
    assert all(c.observed_generation == 2 for c in st_.conditions)
    times = {c.type: c.last_transition_time for c in st_.conditions}
    assert times == {"Accepted": T2, "Applied": T2, "Ready": T2}  # every status flipped


def test_invalid_without_previous_status() -> None:
    st_ = summarize(1, "", PlacementDecision(), [], T1, None, invalid=["bad"])
    assert st_.summary == AccessPointSummary(clusters="0/0", vips="", phase="Invalid")
    assert conds(st_)["Accepted"] == ("False", "InvalidSpec", "bad")
    assert st_.clusters == [] and st_.revision is None


def test_no_placement() -> None:
    st_ = summarize(1, REV, PlacementDecision(), [], T1, None)
    assert conds(st_) == {
        "Accepted": ("True", "Valid", "the spec is valid"),
        "Placed": ("False", "NoClusterSelected", "the placement selects no member cluster"),
        "Applied": ("False", "NoClusterSelected", "nothing to apply"),
        "Ready": ("False", "NotReady", "ready in 0/0 cluster(s)"),
    }
    assert st_.summary == AccessPointSummary(clusters="0/0", vips="", phase="Unplaced")


def test_no_placement_while_objects_are_still_being_removed() -> None:
    st_ = summarize(1, REV, PlacementDecision(), [state("m1", "Removing")], T1, None)
    assert conds(st_)["Applied"] == ("False", "Progressing", "in progress: m1")
    assert conds(st_)["Ready"][0] == "False"
    assert st_.summary is not None and st_.summary.phase == "Unplaced"


def test_failed_cluster() -> None:
    clusters = [applied("m1"), state("m2", "Failed", 'Gateway payments/checkout: spec.servers: Required value')]
    st_ = summarize(1, REV, placed("m1", "m2"), clusters, T1, None)
    assert conds(st_)["Applied"] == ("False", "ApplyFailed",
                                     "m2: Gateway payments/checkout: spec.servers: Required value")
    assert conds(st_)["Ready"] == ("False", "ApplyFailed", "failed in: m2")
    assert st_.summary == AccessPointSummary(clusters="1/2", vips="10.0.0.1", phase="Degraded")


def test_conflict_is_a_failure_and_wins_over_unknown() -> None:
    clusters = [state("m1", "Conflict", "Service payments/gw exists and is not managed by meshfed"),
                state("m2", "Unknown", "unreachable"), state("m3", "Failed", "boom")]
    st_ = summarize(1, REV, placed("m1", "m2", "m3"), clusters, T1, None)
    assert conds(st_)["Applied"] == (
        "False", "ApplyFailed", "m1: Service payments/gw exists and is not managed by meshfed; m3: boom")
    assert conds(st_)["Ready"] == ("False", "ApplyFailed", "failed in: m1, m3")
    assert st_.summary is not None and st_.summary.phase == "Degraded"


def test_unknown_cluster() -> None:
    clusters = [applied("m1"), state("m2", "Unknown", "connection refused")]
    st_ = summarize(1, REV, placed("m1", "m2"), clusters, T1, None)
    assert conds(st_)["Applied"] == ("Unknown", "ClusterUnreachable", "state unknown in: m2")
    assert conds(st_)["Ready"] == ("Unknown", "ClusterUnreachable", "state unknown in: m2")
    assert st_.summary == AccessPointSummary(clusters="1/2", vips="10.0.0.1", phase="Unknown")


def test_progressing() -> None:
    clusters = [applied("m1"), state("m2", "Progressing"), applied("m3")]
    st_ = summarize(1, REV, placed("m1", "m2", "m3"), clusters, T1, None)
    assert conds(st_)["Applied"] == ("False", "Progressing", "in progress: m2")
    assert conds(st_)["Ready"] == ("False", "NotReady", "ready in 2/3 cluster(s)")
    assert st_.summary == AccessPointSummary(clusters="2/3", vips="10.0.0.1,10.0.0.3", phase="Progressing")


def test_a_cluster_left_by_placement_is_progress_until_removed() -> None:
    clusters = [applied("m1"), state("m9", "Removing")]
    st_ = summarize(1, REV, placed("m1"), clusters, T1, None)
    assert conds(st_)["Applied"] == ("False", "Progressing", "in progress: m9")
    assert conds(st_)["Ready"] == ("False", "NotReady", "ready in 1/1 cluster(s)")
    assert st_.summary == AccessPointSummary(clusters="1/1", vips="10.0.0.1", phase="Progressing")
    assert [c.name for c in st_.clusters] == ["m1", "m9"]


def test_applied_without_load_balancer_address_and_route_is_not_ready() -> None:
    clusters = [applied("m1"), ClusterStatus(name="m2", state="Applied", revision=REV, route_configured=False)]
    st_ = summarize(1, REV, placed("m1", "m2"), clusters, T1, None)
    assert conds(st_)["Applied"][0] == "True"
    assert conds(st_)["Ready"] == ("False", "NotReady", "ready in 1/2 cluster(s)")
    assert st_.summary == AccessPointSummary(clusters="1/2", vips="10.0.0.1", phase="Progressing")
    # no VIP but the route is configured (e.g. a ClusterIP gateway): ready
    ok = ClusterStatus(name="m2", state="Applied", revision=REV, route_configured=True)
    assert conds(summarize(1, REV, placed("m1", "m2"), [applied("m1"), ok], T1, None))["Ready"][0] == "True"


def test_fqdn_and_certificate_are_carried_over() -> None:
    prev = summarize(1, REV, placed("m1"), [applied("m1")], T1, None)
    prev.fqdn, prev.certificate = "checkout.shop.example", "serial 0a"
    st_ = summarize(1, REV, placed("m1"), [applied("m1")], T2, prev)
    assert (st_.fqdn, st_.certificate) == ("checkout.shop.example", "serial 0a")


def test_unchanged_world_yields_an_equal_status() -> None:
    decision, clusters = placed("m1", "m2"), [applied("m1"), state("m2", "Progressing")]
    first = summarize(2, REV, decision, clusters, T1, None)
    second = summarize(2, REV, decision, clusters, T2, first)
    assert second == first
    assert second.wire() == first.wire()
    invalid = summarize(2, "", PlacementDecision(), [], T2, first, invalid=["bad"])
    assert summarize(2, "", PlacementDecision(), [], T3, invalid, invalid=["bad"]) == invalid


def test_transition_time_moves_only_for_conditions_that_flip() -> None:
    first = summarize(1, REV, placed("m1", "m2"), [applied("m1"), state("m2", "Progressing")], T1, None)
    second = summarize(2, REV, placed("m1", "m2"), [applied("m1"), applied("m2")], T2, first)
    times = {c.type: c.last_transition_time for c in second.conditions}
    assert times == {"Accepted": T1, "Placed": T1, "Applied": T2, "Ready": T2}
    # message and generation change without a flip keep the time
    third = summarize(3, REV, placed("m1", "m2", "m3"), [applied("m1"), applied("m2"), applied("m3")], T3, second)
    assert {c.type: c.last_transition_time for c in third.conditions} == times
    placed_cond = condition(third.conditions, "Placed")
    assert placed_cond is not None and placed_cond.message == "3 cluster(s): m1, m2, m3"
    assert placed_cond.observed_generation == 3


def test_conditions_only_summarize_owns_are_dropped() -> None:
    prev = summarize(1, REV, placed("m1"), [applied("m1")], T1, None)
    prev.conditions.append(Condition(type="Stale", status="True", reason="Old", last_transition_time=T1))
    st_ = summarize(1, REV, placed("m1"), [applied("m1")], T2, prev)
    assert [c.type for c in st_.conditions] == ["Accepted", "Placed", "Applied", "Ready"]


STATES = st.sampled_from(["Applied", "Progressing", "Failed", "Conflict", "Unknown", "Removing"])
NAMES = ["m1", "m2", "m3", "m4", "m5"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NAMES), STATES, st.booleans()), max_size=5, unique_by=lambda t: t[0]),
       st.sets(st.sampled_from(NAMES)), st.booleans())
def test_summary_properties(entries: list[tuple[str, str, bool]], names: set[str], invalid: bool) -> None:
    clusters = [ClusterStatus(name=n, state=s, vip="10.0.0.1" if vip else None,
                              route_configured=vip, last_error=None if s == "Applied" else "x")
                for n, s, vip in entries]
    decision = placed(*sorted(names))
    problems = ["bad"] if invalid else []
    first = summarize(1, REV, decision, clusters, T1, None, invalid=problems)
    again = summarize(1, REV, decision, list(reversed(clusters)), T2, first, invalid=problems)
    assert again == first  # no-op, whatever the input order
    c = conds(first)
    if invalid:
        assert c["Accepted"][0] == "False" and first.summary is not None and first.summary.phase == "Invalid"
        return
    by_name = {n: (s, vip) for n, s, vip in entries}
    all_ready = bool(names) and all(by_name.get(n) == ("Applied", True) for n in names) and not (
        set(by_name) - names)
    assert (c["Ready"][0] == "True") is all_ready
    assert (first.summary is not None and first.summary.phase == "Ready") is all_ready
    states = {by_name[n][0] if n in by_name else "Unknown" for n in names}
    if states & {"Failed", "Conflict"}:
        assert c["Applied"][:2] == ("False", "ApplyFailed")
        assert first.summary is not None and first.summary.phase == "Degraded"
    elif "Unknown" in states:
        assert c["Applied"][0] == "Unknown" and c["Ready"][0] == "Unknown"  # never a guessed False
    ready_count = sum(1 for n in names if by_name.get(n) == ("Applied", True))
    assert first.summary is not None and first.summary.clusters == f"{ready_count}/{len(names)}"


def test_a_placed_cluster_nobody_reported_on_is_unknown_not_ready() -> None:
    st_ = summarize(1, REV, placed("m1", "m2"), [applied("m1")], T1, None)
    assert conds(st_)["Applied"] == ("Unknown", "ClusterUnreachable", "state unknown in: m2")
    assert conds(st_)["Ready"] == ("Unknown", "ClusterUnreachable", "state unknown in: m2")
    assert st_.summary == AccessPointSummary(clusters="1/2", vips="10.0.0.1", phase="Unknown")
    assert [c.name for c in st_.clusters] == ["m1"]  # entries are reported, not invented
    alone = summarize(1, REV, placed("m1"), [], T1, None)
    assert conds(alone)["Ready"][0] == "Unknown" and alone.summary is not None and alone.summary.clusters == "0/1"


def test_applied_message_one_event_for_many_clusters() -> None:
    entries = [ClusterStatus(name=n, state="Applied", revision="abc", objects=5) for n in ("m3", "m1", "m2")]
    assert applied_message(entries) == "revision abc applied on m1, m2, m3 (5 objects each)"
    mixed = [ClusterStatus(name="m2", state="Applied", revision="abc", objects=4),
             ClusterStatus(name="m1", state="Applied", revision="abc", objects=5),
             ClusterStatus(name="m9", state="Applied", revision="old", objects=5)]
    assert applied_message(mixed) == ("revision abc applied on m1 (5 objects), m2 (4 objects); "
                                      "revision old applied on m9 (5 objects each)")


def test_the_placement_in_a_status_lists_at_most_20_clusters_not_placed() -> None:
    rejected = [ClusterDecision(cluster=f"m{i:03d}", reason="not in clusterNames", code="NotNamed") for i in range(100)]
    decision = PlacementDecision(selected=placed("m1").selected, rejected=rejected)
    st_ = summarize(1, REV, decision, [applied("m1")], T1, None)
    assert st_.placement is not None and len(st_.placement.rejected) == 20
    assert st_.placement.rejected_total == 100 and st_.placement.rejected_by_code == {"NotNamed": 100}
    assert len(st_.wire()["placement"]["rejected"]) == 20
