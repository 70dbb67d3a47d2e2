"""An AccessPoint's status with more clusters not placed than it lists, as the real API server keeps it.

`PlacementDecision.shortened` (placement/models.py) lists at most 20 clusters not placed and counts them
all in `rejectedTotal` and `rejectedByCode`. The pure tests cover the decision; this one runs the real
controller (`meshfed controller`, a subprocess) against one real kube-apiserver carrying the generated
CRDs, with more than 20 MemberClusters, and reads the status back from the server: the structural schema
keeps both counts (a field missing from the CRD would be pruned silently), the clusters the criteria
would take but for their state come first, and `meshfed status` prints what the list leaves out.

The placed member is the API server itself (its admin kubeconfig); two more match the AccessPoint's
selector but are unreachable (NotReady: never placed); the rest, and any MemberCluster other tests of
the session registered, do not match the selector (SelectorMismatch).
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from federation.kube import KubeClient
from federation.registration import ensure_namespace
from fleet.testing import ControllerProcess, wait_status
from placement.models import REJECTED_SHOWN
from tests.integration.conftest import ApiServer
from tests.integration.test_cli import closed_port, meshfed

pytestmark = pytest.mark.integration

NS_SYSTEM = "meshfed-system"
MC = "/apis/meshfed.io/v1alpha1/memberclusters"
AP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
MISMATCHED = 22  # with the placed one and the two not ready: 25 of ours, more than REJECTED_SHOWN + 1


def unreachable_kubeconfig() -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{closed_port()}",
                                               "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]})


async def register(hub: KubeClient, name: str, kubeconfig: str, labels: dict[str, str]) -> None:
    secret = f"{name}-kubeconfig"
    await hub.apply(f"/api/v1/namespaces/{NS_SYSTEM}/secrets/{secret}", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret, "namespace": NS_SYSTEM},
        "data": {"kubeconfig": base64.b64encode(kubeconfig.encode()).decode()}}, field_manager="test")
    await hub.create(MC, {
        "apiVersion": "meshfed.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": name, "labels": labels},
        "spec": {"kubeconfigSecretRef": {"name": secret, "namespace": NS_SYSTEM, "key": "kubeconfig"},
                 "region": "r1", "zone": "r1-a"}}, field_manager="test")


async def test_a_status_lists_20_not_placed_and_counts_them_all(apiserver: ApiServer, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:6]
    ns = f"short-{run}"
    hub = await apiserver.admin_client()
    ctl = ControllerProcess(apiserver.kubeconfig, tmp_path / "controller.log", hub_id=f"short-{run}",
                            extra=("--shards", "0"))
    ours = [f"sh-{run}-placed", f"sh-{run}-down-1", f"sh-{run}-down-2",
            *(f"sh-{run}-other-{i:02d}" for i in range(MISMATCHED))]
    try:
        await ensure_namespace(hub, NS_SYSTEM)
        await ensure_namespace(hub, ns)
        selected = {"shortened": run}
        await register(hub, ours[0], apiserver.kubeconfig.read_text(), selected)
        for name in ours[1:3]:
            await register(hub, name, unreachable_kubeconfig(), selected)
        for name in ours[3:]:
            await register(hub, name, unreachable_kubeconfig(), {})
        await hub.create(AP.format(ns=ns), {
            "apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": "checkout"},
            "spec": {"placement": {"clusterSelector": {"matchLabels": selected}},
                     "template": [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "checkout"},
                                   "spec": {"ports": [{"port": 80}]}}]}}, field_manager="test")
        ctl.start()

        def settled(status: dict[str, Any]) -> bool:
            placement = status.get("placement") or {}
            return (status.get("observedGeneration") == 1
                    and [d["cluster"] for d in placement.get("selected") or []] == [ours[0]]
                    and (placement.get("rejectedByCode") or {}).get("NotReady") == 2)

        status = await wait_status(hub, f"{AP.format(ns=ns)}/checkout", settled, timeout=90)
        # Every MemberCluster the controller could know (ours and those of other tests) but the placed one.
        items, _ = await hub.list(MC)
        others = len(items) - len(ours)
        placement = status["placement"]
        assert placement["rejectedTotal"] == len(items) - 1
        assert placement["rejectedByCode"] == {"NotReady": 2, "SelectorMismatch": MISMATCHED + others}
        listed = placement["rejected"]
        assert len(listed) == REJECTED_SHOWN
        names = [d["cluster"] for d in listed]
        assert names == sorted(names)
        # The two the selector takes but their state keeps out are listed, whatever their names sort to.
        assert {d["cluster"]: d["code"] for d in listed if d["code"] == "NotReady"} == {
            ours[1]: "NotReady", ours[2]: "NotReady"}
        # The member placed holds the object the status reports applied.
        assert await hub.get(f"/api/v1/namespaces/{ns}/services/checkout") is not None

        proc = await asyncio.to_thread(meshfed, "status", "checkout", "-n", ns,
                                       "--kubeconfig", str(apiserver.kubeconfig))
        assert proc.returncode == 0, proc.stderr
        more = len(items) - 1 - REJECTED_SHOWN
        assert (f"and {more} more not placed (NotReady 2, SelectorMismatch {MISMATCHED + others})"
                in proc.stdout), proc.stdout
    finally:
        ctl.stop()
        for name in ours:
            await hub.delete(f"{MC}/{name}")
        await hub.close()
