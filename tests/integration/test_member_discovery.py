"""A member's probe against a real kube-apiserver: API discovery is asked only to change, through the
probe's own connection.

Each probe (every 5 s per member) read the aggregated discovery document (~40 KB of JSON with Istio's
CRDs, ~3 ms of CPU to parse). The probe now sends the ETag of the last answer (If-None-Match): the API
server answers 304 without a body while the served APIs are unchanged, and a new CRD brings a new
document at the next probe. Counted by the API server itself (its /metrics, by response code).
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from federation.members import Member, MemberRegistry, OwnedCache
from fleet import load_member_crds
from fleet.testing import request_breakdown
from placement.models import MemberCluster
from tests.integration.conftest import ApiServer

pytestmark = pytest.mark.integration


def _member() -> Member:
    mc = MemberCluster.model_validate({
        "metadata": {"name": "m1"},
        "spec": {"kubeconfigSecretRef": {"name": "m1-kubeconfig", "namespace": "meshfed-system",
                                         "key": "kubeconfig"}, "region": "r1", "zone": "r1-a"}})
    return Member(name="m1", spec=mc, hub_id="hub-1", cache=OwnedCache("hub-1"))


async def _discovery_answers(apiserver: ApiServer) -> dict[str, int]:
    """The API server's answers to GET /apis so far, by response code (its /metrics)."""
    client = await apiserver.admin_client()
    try:
        return {code: (await request_breakdown(client, ["GET"], code=code)).get("GET /apis", 0)
                for code in ("200", "304")}
    finally:
        await client.close()


async def test_probe_asks_discovery_only_to_change(apiserver: ApiServer) -> None:
    client = await apiserver.admin_client()
    registry = MemberRegistry(client, "hub-1", lambda *_: None, lambda *_: None)
    member = _member()
    member.client = probed = await apiserver.admin_client()
    crd_name = ""
    try:
        first = await registry.probe_once(member)
        assert first.reachable and first.istio and member.discovery_etag
        before = await _discovery_answers(apiserver)
        again = [await registry.probe_once(member) for _ in range(3)]
        after = await _discovery_answers(apiserver)
        assert all(p.reachable and p.served is first.served for p in again)  # the same set, not a copy
        # Asked three times, answered "unchanged" three times and never with the document.
        assert (after["304"] - before["304"], after["200"] - before["200"]) == (3, 0), (before, after)
        # Probes go through a connection of their own: the requests' pool was never opened.
        assert probed._session is None and probed._probe_session is not None
        # A new CRD changes the document: the next probe brings the new one (a new ETag).
        crd: dict[str, Any] = copy.deepcopy(next(c for c in load_member_crds()
                                                 if c["metadata"]["name"].startswith("gateways.networking.istio")))
        crd["metadata"] = {"name": "probetests.discovery.meshfed.test"}
        crd["spec"]["group"] = "discovery.meshfed.test"
        crd["spec"]["names"] = {"plural": "probetests", "singular": "probetest", "kind": "ProbeTest",
                                "listKind": "ProbeTestList"}
        crd_name = crd["metadata"]["name"]
        await client.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd, field_manager="test")
        etag = member.discovery_etag
        for _ in range(100):
            await registry.probe_once(member)
            if member.discovery_etag != etag:
                break
            await asyncio.sleep(0.1)
        assert member.discovery_etag != etag
        assert registry._discoveries[member.discovery_etag].resources.get(("discovery.meshfed.test", "v1"))
    finally:
        if crd_name:
            await client.delete(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd_name}")
        await client.close()
        await probed.close()
