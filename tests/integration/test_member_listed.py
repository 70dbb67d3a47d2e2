"""A member's lists report the member changed when what planning reads changed, not at every list.

A member's change (`on_member_change`) makes the controller reconcile every AccessPoint whose placement
hinges on that member (every AccessPoint, before federation.controller.MEMBER_SIDE_CAUSES). The registry
reported one after every list of every kind: at a member's start once per kind it serves (15 with
Istio's CRDs), and again at each relist (410 Gone, a verification that found the cache disagreeing),
although a relist reports the owners it found changed by themselves. Against a real API server (the
member is the test's kube-apiserver with Istio's CRDs): the start reports `listed` once, and a relist
that finds an object of ours the cache lacked reports its owner, and no member change. The same for
followWorkload's Deployments: their relist reported the member changed even when it found them as they were.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from accesspoint.kinds import MANAGED_KINDS
from accesspoint.ownership import Owner
from federation.kube import KubeClient
from federation.members import Member, MemberRegistry
from federation.registration import ensure_namespace
from tests.integration.conftest import ApiServer

pytestmark = pytest.mark.integration

NS = "meshfed-system"
SECRET = "listed-m1-kubeconfig"
MEMBER = "listed-m1"
HUB_ID = "hub-listed"
OWNER = Owner(HUB_ID, "team-listed", "web")


async def register_the_apiserver(apiserver: ApiServer, hub: KubeClient, registry: MemberRegistry) -> Member:
    """The test's API server as member MEMBER of `registry` (its kubeconfig in a Secret on the same server)."""
    await ensure_namespace(hub, NS)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": NS},
              "data": {"kubeconfig": base64.b64encode(apiserver.kubeconfig.read_text().encode()).decode()}}
    await hub.apply(f"/api/v1/namespaces/{NS}/secrets/{SECRET}", secret, field_manager="test")
    await registry.upsert({
        "apiVersion": "meshfed.io/v1alpha1", "kind": "MemberCluster",
        "metadata": {"name": MEMBER, "resourceVersion": "1", "generation": 1},
        "spec": {"kubeconfigSecretRef": {"name": SECRET, "namespace": NS, "key": "kubeconfig"},
                 "region": "r1", "zone": "r1-a"}})
    return registry.members[MEMBER]


async def test_the_list_that_completes_the_cache_reports_the_member_and_a_relist_only_its_owners(
        apiserver: ApiServer) -> None:
    hub = await apiserver.admin_client()
    whys: list[str] = []
    synced = asyncio.Event()
    owner_reports: list[tuple[str, str]] = []
    relisted = asyncio.Event()

    def on_member_change(name: str, why: str) -> None:
        whys.append(why)
        if why == "listed":
            synced.set()

    def on_owner_change(name: str, owner_key: str, why: str) -> None:
        owner_reports.append((owner_key, why))
        if why == "relist" and owner_key == OWNER.key:
            relisted.set()

    registry = MemberRegistry(hub, HUB_ID, on_owner_change, on_member_change, probe_interval=3600.0,
                              verify_interval=0.5)
    try:
        await ensure_namespace(hub, "listed-apps")
        member = await register_the_apiserver(apiserver, hub, registry)
        await asyncio.wait_for(synced.wait(), timeout=60.0)
        for _ in range(1200):  # (the old registry reported the first list)
            if member.usable:
                break
            await asyncio.sleep(0.05)
        assert len(member.needed_kinds()) > 5  # Istio's kinds too: as many lists as kinds
        assert whys.count("listed") == 1, whys
        assert member.synced and member.usable

        # An AccessPoint plans a Service here (its watch runs: a kind nobody wants is parked) and the Service
        # appears on the member; the watch event reports its owner.
        service_kind = next(k for k in MANAGED_KINDS.values() if k.kind == "Service" and not k.group)
        if registry.want(member, OWNER.key, frozenset({service_kind.id})):
            for _ in range(600):
                if service_kind.id not in member.waking:
                    break
                await asyncio.sleep(0.05)
        service = {"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "web", "namespace": "listed-apps", "labels": OWNER.labels()},
                   "spec": {"ports": [{"port": 80}]}}
        client = member.client
        assert client is not None
        created = await client.create("/api/v1/namespaces/listed-apps/services", service, field_manager="test")
        for _ in range(600):
            if (OWNER.key, "member-object") in owner_reports:
                break
            await asyncio.sleep(0.05)
        assert (OWNER.key, "member-object") in owner_reports, owner_reports

        # The cache loses it (as a missed watch event would): the verification finds the cache disagreeing
        # and relists the kind, which reports the owner it found changed. No member change: the cache was
        # complete before the relist and is after it.
        assert member.cache.remove(created) == OWNER.key
        await asyncio.wait_for(relisted.wait(), timeout=30.0)
        assert any(k.kind == "Service" and k.name == "web" for k in member.cache.objects)
        assert whys.count("listed") == 1, whys
    finally:
        await registry.close()
        await hub.close()


async def test_a_relist_of_the_followed_workloads_that_finds_them_unchanged_reports_nothing(
        apiserver: ApiServer) -> None:
    hub = await apiserver.admin_client()
    workload_reports = 0
    reported = asyncio.Event()

    def on_member_change(name: str, why: str) -> None:
        nonlocal workload_reports
        if why == "workloads":
            workload_reports += 1
            reported.set()

    async def next_report() -> None:
        await asyncio.wait_for(reported.wait(), timeout=30.0)
        reported.clear()

    registry = MemberRegistry(hub, HUB_ID, lambda *_: None, on_member_change, probe_interval=3600.0, verify_interval=0)
    registry.follow_workloads_in(frozenset({"listed-wl"}))
    try:
        await ensure_namespace(hub, "listed-wl")
        member = await register_the_apiserver(apiserver, hub, registry)
        await next_report()  # the first list: the workloads are known
        assert member.workloads == {} and workload_reports == 1

        def deployment(name: str) -> dict[str, object]:
            return {"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": name, "namespace": "listed-wl", "labels": {"app": name}},
                    "spec": {"selector": {"matchLabels": {"app": name}},
                             "template": {"metadata": {"labels": {"app": name}},
                                          "spec": {"containers": [{"name": "c", "image": "x"}]}}}}

        path = "/apis/apps/v1/namespaces/listed-wl/deployments"
        await hub.create(path, deployment("one"), field_manager="test")
        await next_report()  # its watch event
        assert member.workloads == {("listed-wl", "one"): {"app": "one"}} and workload_reports == 2

        # The watch starts again from a list (as after 410 Gone) that finds what the cache had: no report,
        # once that list has answered.
        client = member.client
        assert client is not None
        list_deployments = client.list
        relisted = asyncio.Event()

        async def noting_the_list(path: str, *args: Any, **kwargs: Any) -> Any:
            answer = await list_deployments(path, *args, **kwargs)
            if path == "/apis/apps/v1/deployments":
                relisted.set()
            return answer

        client.list = noting_the_list  # type: ignore[method-assign]
        task = member.workloads_task
        assert task is not None
        task.cancel()
        member.workloads_task = None
        registry._ensure_watches(member)
        # The list answered; its handling ran on to the report (no await between them) before this resumed.
        await asyncio.wait_for(relisted.wait(), timeout=30.0)
        assert workload_reports == 2
        await hub.create(path, deployment("two"), field_manager="test")
        await next_report()  # the new watch runs
        assert member.workloads is not None and set(member.workloads) == {("listed-wl", "one"), ("listed-wl", "two")}
        assert workload_reports == 3
    finally:
        await registry.close()
        await hub.close()
