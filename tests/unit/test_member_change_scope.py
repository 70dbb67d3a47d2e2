"""A member's own state moving (a probe's verdict, a list, its Deployments) plans again only the
AccessPoints whose placement hinges on that member (PlacementDecision.hinges_on), those it holds objects
of, those of which it is the Istio remote's primary, and those never planned or refused; a change of its
MemberCluster (labels, region, taints, mesh role, kubeconfig) or its removal plans every AccessPoint.
No API server: the hub client is never contacted."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from federation.controller import MEMBER_SIDE_CAUSES, Controller


@pytest.fixture
def ctl(offline_controller: Controller) -> Controller:
    c = offline_controller
    for name in ("placed-on-m1", "placed-on-m2", "m1-not-ready-there", "never-planned", "held-by-m1",
                 "placed-on-primary-of-m1"):
        c.accesspoints[f"team/{name}"] = {"metadata": {"namespace": "team", "name": name}}
    c._hinges.update({"team/placed-on-m1": frozenset({"m1"}), "team/placed-on-m2": frozenset({"m2"}),
                      "team/m1-not-ready-there": frozenset({"m2", "m1"}),
                      "team/held-by-m1": frozenset({"m3"}),
                      "team/placed-on-primary-of-m1": frozenset({"p1"})})
    # m1 holds objects of held-by-m1 (placed elsewhere now: they are to be removed) and is p1's remote.
    c.registry.members["m1"] = SimpleNamespace(  # type: ignore[assignment]
        name="m1", wants={}, cache=SimpleNamespace(by_owner={"team/held-by-m1": set()}),
        spec=SimpleNamespace(spec=SimpleNamespace(mesh_primary="p1")))
    return c


def queued(ctl: Controller) -> set[str]:
    return {key.split("/")[1] for key in ctl.accesspoints if ctl.loop.is_queued(f"ap/{key}")}


@pytest.mark.parametrize("why", sorted(MEMBER_SIDE_CAUSES))
async def test_a_members_own_state_plans_only_what_hinges_on_it(ctl: Controller, why: str) -> None:
    ctl._member_changed("m1", why)
    assert queued(ctl) == {"placed-on-m1", "m1-not-ready-there", "never-planned", "held-by-m1",
                           "placed-on-primary-of-m1"}
    assert ctl.member_loop.is_queued("mc/m1")


@pytest.mark.parametrize("why", ["upsert", "mesh", "removed"])
async def test_a_membercluster_change_plans_every_accesspoint(ctl: Controller, why: str) -> None:
    ctl._member_changed("m2", why)
    assert queued(ctl) == {k.split("/")[1] for k in ctl.accesspoints}


async def test_a_refused_or_deleted_accesspoint_hinges_on_no_member_in_particular(ctl: Controller) -> None:
    ctl.on_accesspoint("DELETED", {"metadata": {"namespace": "team", "name": "placed-on-m2"}})
    assert "team/placed-on-m2" not in ctl._hinges
    ctl._member_changed("m9", "probe")
    assert queued(ctl) == {"never-planned"}


async def test_only_the_keys_of_shards_this_replica_holds_are_queued(ctl: Controller) -> None:
    """Another replica's AccessPoints would only be dropped at the Lease check (and taking a shard queues
    all of it): neither a member's change nor a full pass queues them here."""
    ctl.shards = SimpleNamespace(  # type: ignore[assignment]
        holding=lambda lease: lease == "lease-0",
        shard_key=lambda ns, name: "lease-0" if name.startswith("placed") else "lease-1")
    ctl._member_changed("m1", "probe")
    assert queued(ctl) == {"placed-on-m1", "placed-on-primary-of-m1"}
    ctl._member_changed("m2", "upsert")
    assert queued(ctl) == {"placed-on-m1", "placed-on-m2", "placed-on-primary-of-m1"}
