"""The executor makes sure of a namespace once per member: creates going into a namespace the member
lacks wait for one namespace create instead of each failing with 404 and creating it themselves
(federation/executor.py `_namespace_ready`). Counted by the API server's own request metrics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from accesspoint.ownership import Owner
from accesspoint.plan import Plan
from federation.executor import execute
from federation.kube import KubeClient
from federation.members import OwnedCache
from fleet.testing import diff_breakdown, request_breakdown
from tests.integration.conftest import ApiServer

HUB = "hub-ns-test"


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
