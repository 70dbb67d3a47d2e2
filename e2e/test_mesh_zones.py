"""Zones as control domains on real API servers (no Istio processes: the API side of issue 21).

Hub + 4 members: two zones, each a primary and a cluster that the test declares an Istio remote of it
(`spec.mesh`, as an operator would). Covers: the MeshRole verdicts (condition, Warning Event naming
spec.mesh.primary, the MESH column of `kubectl get mc`) and their recovery; Istio kinds refused for a
remote with the cluster as target (the message names its primary; nothing is written there); the zone
as target (one bundle per zone on its primary, `${cluster}` = the primary, the namespace ensured there,
nothing on the remotes); followWorkload in zone mode picking the zone of a Deployment that exists only
in a remote, and moving when it moves.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest

from federation.kube import KubeClient
from fleet import Fleet
from fleet.testing import ControllerProcess, eventually, wait_status
from fleet.testing import condition as cond

pytestmark = pytest.mark.e2e

TOPOLOGY = [("zp-a", "region-a", "region-a-1"), ("zr-a", "region-a", "region-a-1"),
            ("zp-b", "region-b", "region-b-1"), ("zr-b", "region-b", "region-b-1")]
FLEET: dict[str, Any] = {"topology": TOPOLOGY}
MC = "/apis/meshfed.io/v1alpha1/memberclusters/{name}"
AP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
VS = "/apis/networking.istio.io/v1/namespaces/{ns}/virtualservices"
DEPLOY = "/apis/apps/v1/namespaces/{ns}/deployments"


def template() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gw"},
         "spec": {"selector": {"app": "gw"}, "ports": [{"name": "http", "port": 80}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "app"},
         "spec": {"hosts": ["app.${zone}.example"], "gateways": ["gw"],
                  "http": [{"route": [{"destination": {"host": "app.svc.cluster.local"}}],
                            "headers": {"response": {"set": {"x-cluster": "${cluster}", "x-region": "${region}"}}}}]}},
    ]


def accesspoint(ns: str, name: str, placement: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": name, "namespace": ns},
            "spec": {"template": template(), "placement": placement}}


async def set_mesh(hub: KubeClient, name: str, primary: str | None) -> None:
    mesh = {"role": "Remote", "primary": primary} if primary else None
    await hub.merge_patch(MC.format(name=name), {"spec": {"mesh": mesh}}, field_manager="operator")


async def mesh_status(hub: KubeClient, name: str, printed: str) -> dict[str, Any]:
    return await wait_status(hub, MC.format(name=name), lambda st: st.get("meshRole") == printed, timeout=30,
                             message=f"MemberCluster {name} never showed meshRole {printed}",
                             show=("meshRole", "conditions"))


async def events_for(hub: KubeClient, name: str, reason: str) -> list[dict[str, Any]]:
    items, _ = await hub.list("/api/v1/namespaces/default/events",
                              field_selector=f"involvedObject.name={name},reason={reason}")
    return items


@pytest.fixture(scope="module")
async def zones(hub: KubeClient, controller: ControllerProcess) -> None:
    """zr-a and zr-b are Istio remotes of their zone's primary (set once for the module)."""
    await set_mesh(hub, "zr-a", "zp-a")
    await set_mesh(hub, "zr-b", "zp-b")
    await mesh_status(hub, "zr-a", "Remote(zp-a)")
    await mesh_status(hub, "zr-b", "Remote(zp-b)")


async def test_mesh_roles_conditions_events_and_column(fleet: Fleet, hub: KubeClient, zones: None) -> None:
    st = await mesh_status(hub, "zp-a", "Primary")
    assert cond(st, "MeshRole")["reason"] == "OwnControlPlane"
    st = await mesh_status(hub, "zr-a", "Remote(zp-a)")
    assert (cond(st, "MeshRole")["status"], cond(st, "MeshRole")["reason"]) == ("True", "RemoteOf")
    assert fleet.state is not None
    out = subprocess.run(["kubectl", "get", "mc"], capture_output=True, text=True, check=True,
                         env={**os.environ, "KUBECONFIG": str(fleet.state.hub.kubeconfig)}).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert out.splitlines()[0].split()[:4] == ["NAME", "REGION", "ZONE", "MESH"]
    assert {n: r[3] for n, r in rows.items()} == {"zp-a": "Primary", "zr-a": "Remote(zp-a)", "zp-b": "Primary",
                                                  "zr-b": "Remote(zp-b)"}
    try:
        # A remote of a member that does not exist: refused, condition and Event name the field.
        await set_mesh(hub, "zr-b", "ghost")
        st = await mesh_status(hub, "zr-b", "Invalid(PrimaryNotFound)")
        mesh = cond(st, "MeshRole")
        assert mesh["status"] == "False" and mesh["message"].startswith("spec.mesh.primary: MemberCluster 'ghost'")
        events = await eventually(lambda: events_for(hub, "zr-b", "PrimaryNotFound"), timeout=20)
        assert events[0]["type"] == "Warning" and "spec.mesh.primary" in events[0]["message"]
        # A remote whose primary is itself a remote.
        await set_mesh(hub, "zr-b", "zr-a")
        st = await mesh_status(hub, "zr-b", "Invalid(PrimaryIsRemote)")
        assert "zr-a is itself an Istio remote (of zp-a)" in cond(st, "MeshRole")["message"]
        # A primary in another zone: accepted with a warning (placement.mesh says why).
        await set_mesh(hub, "zr-b", "zp-a")
        st = await mesh_status(hub, "zr-b", "Remote(zp-a)")
        assert (cond(st, "MeshRole")["status"], cond(st, "MeshRole")["reason"]) == ("True", "PrimaryInOtherZone")
        await eventually(lambda: events_for(hub, "zr-b", "PrimaryInOtherZone"), timeout=20)
    finally:
        await set_mesh(hub, "zr-b", "zp-b")
        await mesh_status(hub, "zr-b", "Remote(zp-b)")


async def test_cluster_target_on_a_remote_is_refused_naming_its_primary(
    hub: KubeClient, members: dict[str, KubeClient], namespace: str, zones: None
) -> None:
    await hub.create(AP.format(ns=namespace), accesspoint(namespace, "direct", {"clusterNames": ["zp-a", "zr-a"]}),
                     field_manager="e2e")

    def judged(st: dict[str, Any]) -> bool:
        by = {c["name"]: c for c in st.get("clusters") or []}
        return st.get("observedGeneration") == 1 and by.get("zr-a", {}).get("state") == "Failed" \
            and by.get("zp-a", {}).get("state") == "Applied"

    st = await wait_status(hub, f"{AP.format(ns=namespace)}/direct", judged, timeout=60,
                           message="zr-a never refused / zp-a never applied", show=("clusters", "conditions"))
    err = next(c for c in st["clusters"] if c["name"] == "zr-a")["lastError"]
    assert err.startswith("zr-a is an Istio remote of zp-a (spec.mesh): networking.istio.io objects are not written")
    assert "Istio reads config only from its primary zp-a" in err and "nothing was changed" in err
    assert cond(st, "Ready")["status"] == "False"
    # Nothing written there, not even the namespace; the primary holds the bundle.
    assert await members["zr-a"].get(f"/api/v1/namespaces/{namespace}") is None
    assert await members["zp-a"].get(f"{VS.format(ns=namespace)}/app") is not None
    events = await eventually(lambda: events_for_ns(hub, namespace, "direct", "ClusterFailed"), timeout=20)
    assert "zr-a is an Istio remote of zp-a" in events[0]["message"]


async def events_for_ns(hub: KubeClient, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    items, _ = await hub.list(f"/api/v1/namespaces/{ns}/events",
                              field_selector=f"involvedObject.name={name},reason={reason}")
    return items


async def test_zone_target_writes_one_bundle_per_zone_to_its_primary(
    hub: KubeClient, members: dict[str, KubeClient], namespace: str, zones: None
) -> None:
    await hub.create(AP.format(ns=namespace), accesspoint(namespace, "zonal", {"target": "Zone"}), field_manager="e2e")

    def ready(st: dict[str, Any]) -> bool:
        return cond(st, "Ready").get("status") == "True" and (st.get("summary") or {}).get("clusters") == "2/2"

    st = await wait_status(hub, f"{AP.format(ns=namespace)}/zonal", ready, timeout=60,
                           message="zone-targeted AccessPoint not Ready on 2 zones", show=("clusters", "conditions"))
    assert {(c["name"], c["zone"], c["state"]) for c in st["clusters"]} == {
        ("zp-a", "region-a-1", "Applied"), ("zp-b", "region-b-1", "Applied")}
    selected = {s["cluster"]: s for s in st["placement"]["selected"]}
    assert selected["zp-a"]["remotes"] == ["zr-a"] and selected["zp-b"]["remotes"] == ["zr-b"]
    for primary, zone, region in (("zp-a", "region-a-1", "region-a"), ("zp-b", "region-b-1", "region-b")):
        vs = await members[primary].get(f"{VS.format(ns=namespace)}/app")
        assert vs is not None and vs["spec"]["hosts"] == [f"app.{zone}.example"]
        assert vs["spec"]["http"][0]["headers"]["response"]["set"] == {"x-cluster": primary, "x-region": region}
    for remote in ("zr-a", "zr-b"):
        assert await members[remote].get(f"/api/v1/namespaces/{namespace}") is None


async def test_follow_workload_in_zone_mode_picks_the_zone_of_a_remote_deployment(
    hub: KubeClient, members: dict[str, KubeClient], namespace: str, zones: None
) -> None:
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "checkout"},
                  "spec": {"selector": {"matchLabels": {"app": "checkout"}},
                           "template": {"metadata": {"labels": {"app": "checkout"}},
                                        "spec": {"containers": [{"name": "c", "image": "checkout"}]}}}}
    for client in (members["zr-b"],):
        await client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                   "metadata": {"name": namespace}}, field_manager="e2e")
        await client.create(DEPLOY.format(ns=namespace), deployment, field_manager="e2e")
    placement = {"target": "Zone", "followWorkload": {"namespace": namespace, "name": "checkout"}}
    await hub.create(AP.format(ns=namespace), accesspoint(namespace, "follow", placement), field_manager="e2e")
    path = f"{AP.format(ns=namespace)}/follow"

    def placed_on(names: set[str]) -> Any:
        def ok(st: dict[str, Any]) -> bool:
            return {c["name"] for c in st.get("clusters") or [] if c.get("state") == "Applied"} == names \
                and {s["cluster"] for s in (st.get("placement") or {}).get("selected") or []} == names
        return ok

    st = await wait_status(hub, path, placed_on({"zp-b"}), timeout=60,
                           message="followWorkload (zone) did not place on zp-b", show=("placement", "clusters"))
    reason = st["placement"]["selected"][0]["reason"]
    assert reason.startswith("zone region-b-1 (primary zp-b, remotes zr-b)") and reason.endswith("(in zr-b)")
    assert await members["zp-b"].get(f"{VS.format(ns=namespace)}/app") is not None
    assert await members["zr-b"].get(f"{VS.format(ns=namespace)}/app") is None
    # The Deployment moves to zone a's remote: the placement follows (and leaves zone b).
    await members["zr-a"].create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                        "metadata": {"name": namespace}}, field_manager="e2e")
    await members["zr-a"].create(DEPLOY.format(ns=namespace), deployment, field_manager="e2e")
    await members["zr-b"].delete(f"{DEPLOY.format(ns=namespace)}/checkout")
    await wait_status(hub, path, placed_on({"zp-a"}), timeout=60,
                      message="followWorkload (zone) did not move to zp-a", show=("placement", "clusters"))

    async def pruned() -> bool:
        return await members["zp-b"].get(f"{VS.format(ns=namespace)}/app") is None

    await eventually(pruned, timeout=30)
