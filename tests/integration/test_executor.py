"""The executor on a real API server: what it sends, counted by the server's own request metrics.

- Namespaces: made sure of once per member; creates going into a namespace the member lacks wait for
  one namespace create instead of each failing with 404 and creating it themselves
  (federation/executor.py `_namespace_ready`).
- Updates remove what the template no longer has, on objects it created with POST too. A POST create
  leaves meshfed's fields owned through an Update entry of managedFields, and server-side apply removes
  only fields its Apply entry owned: without handing them over first (`_own_by_apply`), an annotation or
  spec key dropped from the template stayed on the member, and a changed Service port was refused (the
  old port kept beside the new one, "Duplicate value").
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from accesspoint.ownership import FIELD_MANAGER, Owner
from accesspoint.plan import Plan
from federation.executor import _namespace_ready, execute
from federation.kube import KubeClient
from federation.members import OwnedCache
from fleet import ensure_namespace
from fleet.testing import diff_breakdown, request_breakdown
from tests.integration.conftest import ApiServer

pytestmark = pytest.mark.integration

HUB = "hub-executor-test"


@pytest.fixture
async def client(apiserver: ApiServer) -> AsyncIterator[KubeClient]:
    c = await apiserver.admin_client()
    try:
        yield c
    finally:
        await c.close()


def service(owner: Owner, ns: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": owner.labels()},
            "spec": {"ports": [{"name": "http", "port": 80}]}}


def virtual_service(owner: Owner, ns: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": ns, "labels": owner.labels()},
            "spec": {"hosts": [f"{name}.example"], "http": [{"route": [{"destination": {"host": name}}]}]}}


async def creates(client: KubeClient) -> dict[str, int]:
    return await request_breakdown(client, ["POST"], ["namespaces", "services", "virtualservices"])


async def by_code(client: KubeClient, code: str) -> dict[str, int]:
    return await request_breakdown(client, ["POST"], ["namespaces", "services", "virtualservices"], code=code)


async def test_creates_into_a_missing_namespace_wait_for_one_namespace_create(client: KubeClient) -> None:
    ns = f"exec-{uuid.uuid4().hex[:8]}"
    cache = OwnedCache(HUB)
    owners = [Owner(HUB, "apps", f"ap-{i}") for i in range(4)]
    plans = [Plan(create=[f(o, ns, f"{o.name}-{j}") for j in range(5) for f in (service, virtual_service)])
             for o in owners]
    before, created0, missing0 = await creates(client), await by_code(client, "201"), await by_code(client, "404")
    # Four AccessPoints' plans at once, 40 creates into a namespace the member lacks.
    outcomes = await asyncio.gather(*(execute(client, p, o, cache) for p, o in zip(plans, owners, strict=True)))
    assert all(o.ok for o in outcomes), [o.errors for o in outcomes]
    assert sum(o.writes for o in outcomes) == 40
    sent = diff_breakdown(before, await creates(client))
    assert sent == {"POST namespaces": 1, "POST services": 20, "POST virtualservices": 20}, sent
    assert diff_breakdown(missing0, await by_code(client, "404")) == {}, "a create found the namespace missing"
    assert diff_breakdown(created0, await by_code(client, "201"))["POST namespaces"] == 1
    namespace = await client.get(f"/api/v1/namespaces/{ns}")
    assert namespace is not None and namespace["metadata"]["labels"]["meshfed.io/hub"] == HUB

    # Made sure of once: the next plan's creates send no namespace create at all.
    before = await creates(client)
    more = Owner(HUB, "apps", "ap-more")
    outcome = await execute(client, Plan(create=[service(more, ns, "more")]), more, cache)
    assert outcome.ok and outcome.writes == 1
    assert diff_breakdown(before, await creates(client)) == {"POST services": 1}


async def test_an_existing_namespace_costs_one_refused_create_per_member_cache(client: KubeClient) -> None:
    ns = f"exec-{uuid.uuid4().hex[:8]}"
    await client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
                        field_manager="someone-else")
    owner = Owner(HUB, "apps", "ap-existing")
    conflicts0, before = await by_code(client, "409"), await creates(client)
    outcome = await execute(client, Plan(create=[service(owner, ns, f"s-{i}") for i in range(6)]), owner,
                            OwnedCache(HUB))
    assert outcome.ok and outcome.writes == 6, outcome.errors
    assert diff_breakdown(before, await creates(client)) == {"POST namespaces": 1, "POST services": 6}
    assert diff_breakdown(conflicts0, await by_code(client, "409")) == {"POST namespaces": 1}
    namespace = await client.get(f"/api/v1/namespaces/{ns}")
    assert namespace is not None
    assert "meshfed.io/hub" not in (namespace["metadata"].get("labels") or {}), "a namespace not ours was changed"


async def test_a_namespace_gone_since_it_was_made_sure_of_is_created_again(client: KubeClient) -> None:
    ns = f"exec-{uuid.uuid4().hex[:8]}"
    cache = OwnedCache(HUB)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    cache.namespaces[ns] = done  # as after a create into it, the namespace since deleted by someone
    owner = Owner(HUB, "apps", "ap-gone")
    missing0, before = await by_code(client, "404"), await creates(client)
    outcome = await execute(client, Plan(create=[service(owner, ns, f"s-{i}") for i in range(3)]), owner, cache)
    assert outcome.ok and outcome.writes == 3, outcome.errors
    # The creates sent before it was there found it missing (at least the first), one namespace create
    # for all of them, then each of those creates again.
    missing = diff_breakdown(missing0, await by_code(client, "404"))
    assert set(missing) == {"POST services"} and 1 <= missing["POST services"] <= 3, missing
    assert diff_breakdown(before, await creates(client)) == {"POST namespaces": 1,
                                                             "POST services": 3 + missing["POST services"]}
    assert await client.get(f"/api/v1/namespaces/{ns}/services/s-0") is not None


async def test_creates_finding_the_namespace_missing_one_after_another_create_it_once(client: KubeClient) -> None:
    # The order CI once met: of a bulk's creates that waited for the same (stale) making-sure, the second
    # found the namespace missing only after the first had created it again. It used to create it twice.
    ns = f"exec-{uuid.uuid4().hex[:8]}"
    cache = OwnedCache(HUB)
    stale: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    stale.set_result(None)
    cache.namespaces[ns] = stale
    owner = Owner(HUB, "apps", "ap-gone")
    before = await creates(client)
    first = await _namespace_ready(client, ns, owner, cache, missing_since=stale)
    second = await _namespace_ready(client, ns, owner, cache, missing_since=stale)
    assert first is second is cache.namespaces[ns] and first is not stale
    assert diff_breakdown(before, await creates(client)) == {"POST namespaces": 1}
    # A create that waited for the new making-sure and still finds it missing makes sure again.
    await client.delete(f"/api/v1/namespaces/{ns}")
    before = await creates(client)
    third = await _namespace_ready(client, ns, owner, cache, missing_since=first)
    assert third is not first
    assert diff_breakdown(before, await creates(client)) == {"POST namespaces": 1}


def vs_with_extras(owner: Owner, ns: str) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "vs", "namespace": ns, "labels": owner.labels(), "annotations": {"a": "1", "b": "2"}},
            "spec": {"hosts": ["vs.example"], "exportTo": ["."],
                     "http": [{"route": [{"destination": {"host": "vs"}}]}]}}


def service_on(owner: Owner, ns: str, port: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "svc", "namespace": ns, "labels": owner.labels()},
            "spec": {"ports": [{"name": "http", "port": port}]}}


def managers(obj: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["manager"], e["operation"]) for e in obj["metadata"].get("managedFields") or []
            if not e.get("subresource")]


async def setup(client: KubeClient) -> tuple[str, Owner, OwnedCache]:
    ns = f"apply-{uuid.uuid4().hex[:8]}"
    await ensure_namespace(client, ns)
    return ns, Owner(HUB, "apps", "ap"), OwnedCache(HUB)


async def created_vs(client: KubeClient) -> tuple[Owner, OwnedCache, dict[str, Any], str]:
    """A VirtualService with extras created with POST by the executor: its owner, the cache, what was
    created and its path."""
    ns, owner, cache = await setup(client)
    created = vs_with_extras(owner, ns)
    outcome = await execute(client, Plan(create=[created]), owner, cache)
    assert outcome.ok, outcome.errors
    return owner, cache, created, f"/apis/networking.istio.io/v1/namespaces/{ns}/virtualservices/vs"


async def test_fields_dropped_from_the_template_leave_an_object_created_with_post(client: KubeClient) -> None:
    ns, owner, cache = await setup(client)
    created = vs_with_extras(owner, ns)
    svc = service_on(owner, ns, 80)
    outcome = await execute(client, Plan(create=[created, svc]), owner, cache)
    assert outcome.ok, outcome.errors
    path = f"/apis/networking.istio.io/v1/namespaces/{ns}/virtualservices/vs"
    assert managers(await client.get(path) or {}) == [(FIELD_MANAGER, "Update")]

    edited = copy.deepcopy(created)
    del edited["spec"]["exportTo"], edited["metadata"]["annotations"]["b"]
    writes0 = await request_breakdown(client, ("PATCH", "APPLY"), ("virtualservices", "services"))
    outcome = await execute(client, Plan(update=[edited, service_on(owner, ns, 8080)]), owner, cache)
    assert outcome.ok, outcome.errors
    vs = await client.get(path) or {}
    assert "exportTo" not in vs["spec"] and vs["metadata"]["annotations"] == {"a": "1"}, vs
    assert managers(vs) == [(FIELD_MANAGER, "Apply")]
    ports = ((await client.get(f"/api/v1/namespaces/{ns}/services/svc") or {})["spec"]["ports"])
    assert [p["port"] for p in ports] == [8080], ports
    # One JSON patch each (the entry renamed in place), then the apply.
    sent = diff_breakdown(writes0, await request_breakdown(client, ("PATCH", "APPLY"), ("virtualservices", "services")))
    assert sent == {"APPLY services": 1, "APPLY virtualservices": 1, "PATCH services": 1,
                    "PATCH virtualservices": 1}, sent

    # Handed over once: the next update is one apply, and still removes what it drops.
    again = copy.deepcopy(edited)
    del again["metadata"]["annotations"]["a"]
    writes0 = await request_breakdown(client, ("PATCH", "APPLY"), ("virtualservices",))
    outcome = await execute(client, Plan(update=[again]), owner, cache)
    assert outcome.ok, outcome.errors
    assert "a" not in ((await client.get(path) or {})["metadata"].get("annotations") or {})
    assert diff_breakdown(writes0, await request_breakdown(client, ("PATCH", "APPLY"), ("virtualservices",))) == {
        "APPLY virtualservices": 1}


async def test_an_update_that_sets_every_field_the_post_owns_is_one_apply(client: KubeClient) -> None:
    """A changed value (the common edit: a header, a host, a route's weight) sets every field the POST's
    Update entry owns: the apply owns them too and takes over the changed ones, nothing is handed over
    first. A later update dropping a field still removes it (the entries are read and merged first)."""
    owner, cache, created, path = await created_vs(client)
    key = next(iter(cache.objects))
    assert cache.update_owned[key] == (0, (("metadata", "annotations"), ("metadata", "annotations", "a"),
                                           ("metadata", "annotations", "b"), ("metadata", "labels"),
                                           *(("metadata", "labels", k) for k in sorted(owner.labels())),
                                           ("spec",), ("spec", "exportTo"), ("spec", "hosts"), ("spec", "http"))), \
        cache.update_owned[key]

    edited = copy.deepcopy(created)
    edited["spec"]["hosts"] = ["vs2.example"]
    edited["metadata"]["annotations"]["a"] = "2"
    writes0 = await request_breakdown(client, ("PATCH", "APPLY", "GET"), ("virtualservices",))
    outcome = await execute(client, Plan(update=[edited]), owner, cache)
    assert outcome.ok, outcome.errors
    assert diff_breakdown(writes0, await request_breakdown(client, ("PATCH", "APPLY", "GET"), ("virtualservices",))) \
        == {"APPLY virtualservices": 1}
    vs = await client.get(path) or {}
    assert vs["spec"]["hosts"] == ["vs2.example"] and vs["metadata"]["annotations"] == {"a": "2", "b": "2"}, vs
    assert sorted(managers(vs)) == [(FIELD_MANAGER, "Apply"), (FIELD_MANAGER, "Update")]
    assert cache.update_owned[key][0] == -1  # both entries now: a later hand-over merges them

    dropped = copy.deepcopy(edited)
    del dropped["spec"]["exportTo"], dropped["metadata"]["annotations"]["b"]
    writes0 = await request_breakdown(client, ("PATCH", "APPLY", "GET"), ("virtualservices",))
    outcome = await execute(client, Plan(update=[dropped]), owner, cache)
    assert outcome.ok, outcome.errors
    vs = await client.get(path) or {}
    assert "exportTo" not in vs["spec"] and vs["metadata"]["annotations"] == {"a": "2"}, vs
    assert managers(vs) == [(FIELD_MANAGER, "Apply")] and key not in cache.update_owned
    assert diff_breakdown(writes0, await request_breakdown(client, ("PATCH", "APPLY", "GET"), ("virtualservices",))) \
        == {"GET virtualservices": 2, "PATCH virtualservices": 1, "APPLY virtualservices": 1}


async def test_an_update_entry_beside_an_apply_entry_is_merged_into_it(client: KubeClient) -> None:
    """Objects an earlier meshfed created with POST and applied since carry both entries (and kept the
    fields dropped meanwhile): the entries are read and merged, then the apply removes what it drops."""
    owner, cache, created, path = await created_vs(client)
    earlier = copy.deepcopy(created)
    earlier["spec"]["hosts"] = ["vs.example", "vs2.example"]
    cache.put(await client.apply(path, earlier, field_manager=FIELD_MANAGER))  # as an earlier version did
    vs = await client.get(path) or {}
    assert sorted(managers(vs)) == [(FIELD_MANAGER, "Apply"), (FIELD_MANAGER, "Update")]
    assert cache.update_owned[next(iter(cache.objects))][0] == -1

    edited = copy.deepcopy(earlier)
    del edited["spec"]["exportTo"], edited["metadata"]["annotations"]["b"]
    outcome = await execute(client, Plan(update=[edited]), owner, cache)
    assert outcome.ok, outcome.errors
    vs = await client.get(path) or {}
    assert "exportTo" not in vs["spec"] and vs["metadata"]["annotations"] == {"a": "1"}, vs
    assert vs["spec"]["hosts"] == ["vs.example", "vs2.example"]
    assert managers(vs) == [(FIELD_MANAGER, "Apply")]
    assert not cache.update_owned


async def test_entries_moved_since_the_cache_saw_them_are_read_again(client: KubeClient) -> None:
    """The index the cache holds is checked by the JSON patch's tests; entries moved since (another
    manager's Apply entry sorts first) make it fail with 422, and the object is read and merged instead."""
    owner, cache, created, path = await created_vs(client)
    key = next(iter(cache.objects))
    assert cache.update_owned[key][0] == 0
    # Someone else applies a label (the cache does not see it: no watch here); Apply entries sort first.
    await client.apply(path, {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                              "metadata": {"name": "vs", "namespace": created["metadata"]["namespace"],
                                           "labels": {"team": "edge"}}},
                       field_manager="someone-else")
    assert managers(await client.get(path) or {}) == [("someone-else", "Apply"), (FIELD_MANAGER, "Update")]
    refused0 = await request_breakdown(client, ("PATCH",), ("virtualservices",), code="422")
    edited = copy.deepcopy(created)
    del edited["spec"]["exportTo"]
    outcome = await execute(client, Plan(update=[edited]), owner, cache)
    assert outcome.ok, outcome.errors
    assert diff_breakdown(refused0, await request_breakdown(client, ("PATCH",), ("virtualservices",), code="422")) \
        == {"PATCH virtualservices": 1}
    vs = await client.get(path) or {}
    assert "exportTo" not in vs["spec"] and vs["metadata"]["labels"]["team"] == "edge", vs
    assert sorted(managers(vs)) == [(FIELD_MANAGER, "Apply"), ("someone-else", "Apply")]
