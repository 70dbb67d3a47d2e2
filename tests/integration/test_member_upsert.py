"""When a MemberCluster event re-plans every AccessPoint: only when something planning reads changed.

`MemberRegistry.upsert` runs for every MemberCluster event and, at each resync, for every MemberCluster.
It reported the member changed each time (`on_member_change`: the controller reconciles every AccessPoint),
so a status write of ours (its MODIFIED event) re-planned everything, and a resync re-planned every
AccessPoint once per member (2,500 AccessPoint reconciles in a 30-s window with 500 AccessPoints on 5
members, e2e/bench/propagation.py). Against a real API server: the member's kubeconfig Secret is read
from it, and the client made from it probes it.
"""

from __future__ import annotations

import asyncio
import base64
import copy
from typing import Any

import pytest

from federation.members import MemberRegistry, Probe
from federation.registration import ensure_namespace
from tests.integration.conftest import ApiServer

pytestmark = pytest.mark.integration

NS = "meshfed-system"
SECRET = "upsert-m1-kubeconfig"


def _body() -> dict[str, Any]:
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "MemberCluster",
            "metadata": {"name": "upsert-m1", "resourceVersion": "1", "generation": 1},
            "spec": {"kubeconfigSecretRef": {"name": SECRET, "namespace": NS, "key": "kubeconfig"},
                     "region": "r1", "zone": "r1-a"}}


async def _put_kubeconfig(hub: Any, text: str) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": NS},
              "data": {"kubeconfig": base64.b64encode(text.encode()).decode()}}
    await hub.apply(f"/api/v1/namespaces/{NS}/secrets/{SECRET}", secret, field_manager="test")


async def test_only_what_planning_reads_reports_the_member_changed(apiserver: ApiServer) -> None:
    hub = await apiserver.admin_client()
    upserting = asyncio.current_task()
    reported: list[str] = []
    probe_reported = asyncio.Event()

    def on_member_change(name: str, why: str) -> None:
        # Counted only from upsert itself (this task): the probe loop it starts reports its own verdicts.
        if asyncio.current_task() is upserting:
            reported.append(name)
        else:
            probe_reported.set()

    registry = MemberRegistry(hub, "hub-upsert", lambda *_: None, on_member_change, probe_interval=3600.0,
                              verify_interval=0)
    try:
        await ensure_namespace(hub, NS)
        kubeconfig = apiserver.kubeconfig.read_text()
        await _put_kubeconfig(hub, kubeconfig)
        body = _body()
        await registry.upsert(body)
        assert reported == ["upsert-m1"]  # a new member
        member = registry.members["upsert-m1"]
        client = member.client
        assert client is not None

        # Our own status write comes back as an event; so does the resync's reading of every MemberCluster.
        status_only = copy.deepcopy(body)
        status_only["metadata"]["resourceVersion"] = "2"
        status_only["status"] = {"ready": "True", "probeLatencyMs": 500, "conditions": [
            {"type": "Ready", "status": "True", "reason": "Ready", "message": "", "lastTransitionTime":
             "2026-12-07T00:00:00Z"}]}
        for again in (status_only, status_only, body):
            await registry.upsert(again)
        assert reported == ["upsert-m1"]

        # A probe landing while an upsert reads the Secret (the probe loop runs meanwhile) is the probe
        # loop's to report, not the upsert's (a clean-clone CI run met this race). The loop's first probe
        # must have landed first: the next comes an hour later, so the one landing below is the test's
        # (a clean-clone CI run's first probe landed after it and overwrote it).
        await asyncio.wait_for(probe_reported.wait(), timeout=30.0)
        assert member.probe.reachable is True
        read_secret = hub.get

        async def probe_lands_meanwhile(path: str, *args: Any, **kwargs: Any) -> Any:
            member.probe = Probe(reachable=not member.probe.reachable, ready=not member.probe.ready,
                                 message="a probe landed", at=member.probe.at + 1)
            return await read_secret(path, *args, **kwargs)

        hub.get = probe_lands_meanwhile  # type: ignore[method-assign]
        try:
            await registry.upsert(status_only)
        finally:
            hub.get = read_secret  # type: ignore[method-assign]
        assert member.probe.message == "a probe landed"
        assert reported == ["upsert-m1"]
        assert member.client is client  # the same client: the Secret was read again, unchanged

        labelled = copy.deepcopy(status_only)
        labelled["metadata"]["labels"] = {"tier": "gold"}
        await registry.upsert(labelled)
        assert reported == ["upsert-m1"] * 2
        assert member.facts.labels == {"tier": "gold"}

        tainted = copy.deepcopy(labelled)
        tainted["metadata"]["generation"] = 2
        tainted["spec"]["taints"] = [{"key": "maintenance", "effect": "NoSchedule"}]
        await registry.upsert(tainted)
        assert reported == ["upsert-m1"] * 3
        assert [t.key for t in member.facts.taints] == ["maintenance"]

        # A new kubeconfig in the Secret (rotated credentials) makes a new client: a change.
        await _put_kubeconfig(hub, kubeconfig + "\n# rotated\n")
        await registry.upsert(tainted)
        assert reported == ["upsert-m1"] * 4
        assert member.client is not None and member.client is not client

        # A Secret that cannot be read: the error is a change once, not at every event.
        await hub.delete(f"/api/v1/namespaces/{NS}/secrets/{SECRET}")
        await registry.upsert(tainted)
        await registry.upsert(tainted)
        assert reported == ["upsert-m1"] * 5
        assert member.kubeconfig_error and "not found" in member.kubeconfig_error
    finally:
        await registry.close()
        await hub.close()
