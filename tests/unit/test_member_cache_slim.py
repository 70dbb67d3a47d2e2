"""What a member cache keeps (slim objects) and when a kind's watch may stop (watch on demand): the
bookkeeping of federation/members.py, without I/O. The watches themselves: e2e/test_watch_on_demand.py."""

from __future__ import annotations

import copy
import sys
from typing import Any

from accesspoint.ownership import Owner
from federation.members import Member, OwnedCache, slim
from placement.models import MemberCluster

HUB = "hub-1"
VS = ("networking.istio.io", "VirtualService")
SVC = ("", "Service")


def vs(name: str, owner: str = "shop", rv: str = "5") -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "payments", "uid": f"uid-{name}", "resourceVersion": rv,
                         "labels": Owner(HUB, "payments", owner).labels(),
                         "managedFields": [{"manager": "meshfed", "operation": "Apply",
                                            "fieldsV1": {"f:spec": {"f:hosts": {}}}}]},
            "spec": {"hosts": ["a.example"], "managedFields": "a spec field of that name is kept"}}


def member() -> Member:
    mc = MemberCluster.model_validate({"metadata": {"name": "m1"}, "spec": {
        "kubeconfigSecretRef": {"name": "k", "namespace": "meshfed-system"}, "region": "r", "zone": "z"}})
    return Member(name="m1", spec=mc, hub_id=HUB, cache=OwnedCache(HUB))


def test_slim_drops_managed_fields_only_and_interns_keys() -> None:
    obj = vs("a")
    before = copy.deepcopy(obj)
    kept = slim(obj)
    assert obj == before, "the caller's object is not changed"
    assert "managedFields" not in kept["metadata"]
    assert kept["spec"] == before["spec"]
    assert {k: v for k, v in kept["metadata"].items()} == \
        {k: v for k, v in before["metadata"].items() if k != "managedFields"}
    other = slim(vs("b"))
    for key in ("apiVersion", "metadata", "spec", "hosts"):
        mine = next(k for k in (*kept, *kept["spec"]) if k == key)
        theirs = next(k for k in (*other, *other["spec"]) if k == key)
        assert mine is theirs is sys.intern(key)


def test_the_cache_keeps_slim_objects_and_counts_them_by_kind() -> None:
    cache = OwnedCache(HUB)
    assert not cache.holds(VS)
    cache.put(vs("a"))
    cache.put(vs("b"))
    assert cache.holds(VS) and cache.per_kind[VS] == 2 and not cache.holds(SVC)
    assert all("managedFields" not in o["metadata"] for o in cache.objects.values())
    cache.put(vs("a", rv="6"))  # a newer version replaces, not adds
    assert cache.per_kind[VS] == 2
    cache.remove(vs("a"))
    cache.replace_kind(VS, [])
    assert cache.per_kind[VS] == 0 and not cache.holds(VS)


def test_a_kind_may_stop_being_watched_when_nobody_wants_it_and_nothing_is_cached() -> None:
    m = member()
    assert m.may_park(VS)
    m.set_wants("payments/shop", frozenset({VS, SVC}))
    m.set_wants("payments/cart", frozenset({VS}))
    assert not m.may_park(VS) and not m.may_park(SVC)
    m.set_wants("payments/shop", frozenset({SVC}))  # shop's template dropped its VirtualService
    assert not m.may_park(VS), "cart still wants it"
    m.set_wants("payments/cart", frozenset())
    assert m.may_park(VS)
    m.cache.put(vs("left"))
    assert not m.may_park(VS), "an object of ours is still cached: its deletion must be seen"
    assert m.wanted[SVC] == 1 and m.wants == {"payments/shop": frozenset({SVC})}


def test_plans_wait_for_parked_and_waking_kinds_only() -> None:
    m = member()
    m.parked.add(VS)
    assert m.waiting_for({VS, SVC}) == {VS}
    m.parked.discard(VS)
    m.waking.add(VS)
    assert m.waiting_for([SVC]) == set() and m.waiting_for([VS]) == {VS}
