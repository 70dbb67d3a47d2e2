"""Foundation e2e: hub + 3 members (real kube-apiservers with Istio's CRDs) and the controller process.

Covers propagation with owner labels, status and `kubectl get` columns, drift correction, foreign
objects (conflict, adoption), bad input (CRD validation and Accepted=False), a member rejecting
an object, a member outage (nothing deleted, convergence on return), deletion policies and
zero writes after a controller restart.
"""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
from typing import Any

import pytest

from accesspoint.ownership import HUB, OWNER_NAME, OWNER_NAMESPACE
from federation.kube import ApiError, KubeClient
from fleet import Fleet, apiserver_binary
from fleet.testing import (
    ControllerProcess,
    diff_breakdown,
    eventually,
    wait_caught_up,
    wait_status,
    write_breakdown,
)
from fleet.testing import accesspoint_status as status
from fleet.testing import condition as cond

pytestmark = pytest.mark.e2e

AP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
VS = "/apis/networking.istio.io/v1/namespaces/{ns}/virtualservices"
SVC = "/api/v1/namespaces/{ns}/services"


def template(host: str = "app.${region}.example", prefix: str = "") -> list[dict[str, Any]]:
    objects = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gw"},
         "spec": {"type": "LoadBalancer", "selector": {"app": "gw"},
                  "ports": [{"name": "https", "port": 443, "targetPort": 8443}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw"},
         "spec": {"selector": {"app": "gw"},
                  "servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                               "hosts": [host], "tls": {"mode": "SIMPLE", "credentialName": "gw-tls"}}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "app"},
         "spec": {"hosts": [host], "gateways": ["gw"],
                  "http": [{"route": [{"destination": {"host": "app.svc.cluster.local"}}],
                            "headers": {"response": {"set": {"x-cluster": "${cluster}"}}}}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "app"},
         "spec": {"host": "app.svc.cluster.local"}},
    ]
    for obj in objects:
        obj["metadata"]["name"] = prefix + obj["metadata"]["name"]
    return objects


def accesspoint(ns: str, name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("template", template())
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


async def wait_ready(hub: KubeClient, ns: str, name: str, clusters: int = 3, timeout: float = 60) -> dict[str, Any]:
    def ok(st: dict[str, Any]) -> bool:
        summary = st.get("summary") or {}
        return cond(st, "Ready").get("status") == "True" and summary.get("clusters") == f"{clusters}/{clusters}"

    return await wait_status(hub, f"{AP.format(ns=ns)}/{name}", ok, timeout=timeout,
                             message=f"AccessPoint {ns}/{name} not Ready on {clusters} clusters",
                             show=("summary", "conditions", "clusters"))


async def reconcile_causes(controller: ControllerProcess) -> dict[str, float]:
    """meshfed_reconcile_causes of AccessPoints by cause, once the controller is ready (serving /metrics)."""
    async def ready() -> bool:
        return controller.ready()

    await eventually(ready, 60, message="the controller is not ready")
    return controller.metric_by("meshfed_reconcile_causes_total", "cause", kind="accesspoint")


async def test_propagates_with_owner_labels_status_and_columns(
    fleet: Fleet, controller: ControllerProcess, hub: KubeClient, members: dict[str, KubeClient], namespace: str
) -> None:
    causes_before = await reconcile_causes(controller)
    await hub.create(AP.format(ns=namespace), accesspoint(namespace, "shop"), field_manager="e2e")
    st = await wait_ready(hub, namespace, "shop")
    causes = await reconcile_causes(controller)
    assert causes.get("hub-object", 0) > causes_before.get("hub-object", 0), (causes_before, causes)
    assert {c["name"] for c in st["clusters"]} == set(members)
    vips = set()
    for name, client in members.items():
        vs = await client.get(f"{VS.format(ns=namespace)}/app")
        assert vs is not None, f"VirtualService missing on {name}"
        labels = vs["metadata"]["labels"]
        assert labels[HUB] == "meshfed-hub" and labels[OWNER_NAMESPACE] == namespace and labels[OWNER_NAME] == "shop"
        assert vs["spec"]["http"][0]["headers"]["response"]["set"]["x-cluster"] == name
        region = next(m.region for m in fleet.state.members if m.name == name)  # type: ignore[union-attr]
        assert vs["spec"]["hosts"] == [f"app.{region}.example"]
        entry = next(c for c in st["clusters"] if c["name"] == name)
        assert entry["state"] == "Applied" and entry["objects"] == 4 and entry["revision"] == st["revision"]
        svc = await client.get(f"{SVC.format(ns=namespace)}/gw")
        assert svc is not None
        assert entry["vip"] == svc["status"]["loadBalancer"]["ingress"][0]["ip"]
        vips.add(entry["vip"])
    assert len(vips) == 3
    assert st["observedGeneration"] == 1
    # kubectl is the user's dashboard: check the printed columns.
    assert fleet.state is not None
    out = subprocess.run(["kubectl", "get", "accesspoints", "-n", namespace], capture_output=True, text=True,
                         env={**os.environ, "KUBECONFIG": str(fleet.state.hub.kubeconfig)}, check=True).stdout
    header, row = out.splitlines()[:2]
    columns = header.split()
    assert columns[:4] == ["NAME", "CLUSTERS", "PHASE", "VIPS"]
    assert columns.index("ROUTES") == columns.index("REVISION") + 1  # ROUTES (issue 10) follows REVISION
    assert row.split()[:3] == ["shop", "3/3", "Ready"]
    assert all(v in row for v in vips)
    out = subprocess.run(["kubectl", "get", "memberclusters"], capture_output=True, text=True,
                         env={**os.environ, "KUBECONFIG": str(fleet.state.hub.kubeconfig)}, check=True).stdout
    assert out.splitlines()[0].split()[:6] == ["NAME", "REGION", "ZONE", "MESH", "READY", "VERSION"]
    assert all(" Primary " in line and " True " in line and "v1.34" in line for line in out.splitlines()[1:])


async def test_drift_on_a_member_is_reverted_by_the_watch(
    controller: ControllerProcess, hub: KubeClient, members: dict[str, KubeClient], namespace: str
) -> None:
    await hub.create(AP.format(ns=namespace), accesspoint(namespace, "drift"), field_manager="e2e")
    await wait_ready(hub, namespace, "drift")
    causes_before = await reconcile_causes(controller)
    member = members["member-2"]
    path = f"{VS.format(ns=namespace)}/app"
    await member.merge_patch(path, {"spec": {"hosts": ["hijacked.example"]}}, field_manager="someone")

    async def reverted() -> bool:
        vs = await member.get(path) or {}
        return bool(vs["spec"]["hosts"] == ["app.region-b.example"])

    loop = asyncio.get_running_loop()
    start = loop.time()
    await eventually(reverted, 10, interval=0.05, message="drift not reverted")
    assert loop.time() - start < 5, "drift correction must be watch-driven, not wait for a resync"
    # ... and meshfed_reconcile_causes says so: the reconcile that reverted it was asked for by the
    # member's watch event (the hub's object did not change).
    causes = await reconcile_causes(controller)
    assert causes.get("member-object", 0) > causes_before.get("member-object", 0), (causes_before, causes)


async def test_foreign_object_is_never_overwritten_unless_adoption_is_asked(
    controller: ControllerProcess, hub: KubeClient, members: dict[str, KubeClient], namespace: str
) -> None:
    member = members["member-1"]
    await member.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": namespace}}, field_manager="e2e")
    foreign = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
               "metadata": {"name": "app", "namespace": namespace, "labels": {"team": "other"}},
               "spec": {"host": "someone-elses.svc.cluster.local"}}
    await member.create(VS.format(ns=namespace).replace("virtualservices", "destinationrules"), foreign,
                        field_manager="other-team")
    await hub.create(AP.format(ns=namespace), accesspoint(namespace, "clash"), field_manager="e2e")

    async def conflicted() -> dict[str, Any] | None:
        st = await status(hub, namespace, "clash")
        entries = {c["name"]: c for c in st.get("clusters") or []}
        if entries.get("member-1", {}).get("state") == "Conflict" and \
                all(entries.get(m, {}).get("state") == "Applied" for m in ("member-2", "member-3")):
            return st
        return None

    st = await eventually(conflicted, 30, message="member-1 should report a conflict, the others apply")
    entry = next(c for c in st["clusters"] if c["name"] == "member-1")
    assert "DestinationRule" in entry["lastError"] and "adoptExisting" in entry["lastError"]
    assert cond(st, "Applied")["status"] == "False"
    dr_path = f"{VS.format(ns=namespace).replace('virtualservices', 'destinationrules')}/app"
    dr = await member.get(dr_path) or {}
    assert dr["spec"]["host"] == "someone-elses.svc.cluster.local" and HUB not in dr["metadata"]["labels"]

    # Adoption, only when asked: the object gets our labels and our spec.
    await hub.merge_patch(f"{AP.format(ns=namespace)}/clash", {"spec": {"adoptExisting": True}})
    await wait_ready(hub, namespace, "clash")
    dr = await member.get(dr_path) or {}
    assert dr["spec"]["host"] == "app.svc.cluster.local" and dr["metadata"]["labels"][OWNER_NAME] == "clash"


async def test_unknown_kind_is_rejected_by_crd_validation(hub: KubeClient, namespace: str) -> None:
    bad = accesspoint(namespace, "badkind",
                      template=[{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}])
    with pytest.raises(ApiError) as err:
        await hub.create(AP.format(ns=namespace), bad, field_manager="e2e")
    assert err.value.status == 422
    assert "spec.template[0].kind" in err.value.message and "Deployment" in err.value.message
    missing = accesspoint(namespace, "noname", template=[{"apiVersion": "v1", "kind": "Service", "metadata": {}}])
    with pytest.raises(ApiError) as err:
        await hub.create(AP.format(ns=namespace), missing, field_manager="e2e")
    assert "spec.template[0].metadata.name" in err.value.message


async def test_malformed_variable_gets_accepted_false_and_writes_nothing(
    controller: ControllerProcess, hub: KubeClient, members: dict[str, KubeClient], namespace: str
) -> None:
    bad = accesspoint(namespace, "badvar", template=template(host="app.${regoin}.example"))
    await hub.create(AP.format(ns=namespace), bad, field_manager="e2e")

    async def rejected() -> dict[str, Any] | None:
        st = await status(hub, namespace, "badvar")
        return st if cond(st, "Accepted").get("status") == "False" else None

    st = await eventually(rejected, 30, message="Accepted=False expected")
    message = cond(st, "Accepted")["message"]
    assert "spec.template[1].spec.servers[0].hosts[0]" in message and "${regoin}" in message
    assert st["summary"]["phase"] == "Invalid"
    async def invalid_event() -> bool:  # posted right after the status write
        events = await hub.request("GET", f"/api/v1/namespaces/{namespace}/events")
        return any(e["reason"] == "InvalidSpec" and "${regoin}" in e["message"] for e in events["items"])

    await eventually(invalid_event, 10, message="an InvalidSpec Event naming the variable")
    for client in members.values():
        assert await client.get(f"{SVC.format(ns=namespace)}/gw") is None


async def test_member_rejection_fails_that_cluster_only(
    controller: ControllerProcess, hub: KubeClient, members: dict[str, KubeClient], namespace: str
) -> None:
    # An override makes member-3's VirtualService violate Istio's schema (timeout must be a duration).
    bad_override = {"clusters": ["member-3"], "target": {"kind": "VirtualService", "name": "app"},
                    "jsonPatch": [{"op": "add", "path": "/spec/http/0/timeout", "value": "soon"}]}
    await hub.create(AP.format(ns=namespace), accesspoint(namespace, "partial", overrides=[bad_override]),
                     field_manager="e2e")

    async def partial() -> dict[str, Any] | None:
        st = await status(hub, namespace, "partial")
        entries = {c["name"]: c for c in st.get("clusters") or []}
        if entries.get("member-3", {}).get("state") == "Failed" and \
                all(entries.get(m, {}).get("state") == "Applied" for m in ("member-1", "member-2")):
            return st
        return None

    st = await eventually(partial, 30, message="member-3 should fail alone")
    err = next(c for c in st["clusters"] if c["name"] == "member-3")["lastError"]
    assert "VirtualService" in err and "timeout" in err  # the member API server's own message
    assert await members["member-3"].get(f"{VS.format(ns=namespace)}/app") is None
    assert await members["member-3"].get(f"{SVC.format(ns=namespace)}/gw") is not None
    assert cond(st, "Ready")["status"] == "False" and st["summary"]["phase"] == "Degraded"


async def test_member_outage_deletes_nothing_and_converges_on_return(
    fleet: Fleet, controller: ControllerProcess, hub: KubeClient, members: dict[str, KubeClient], namespace: str
) -> None:
    assert fleet.state is not None
    # One wave with no gate: the change below goes to every cluster at once (without spec.rollout a
    # change is staged: one cluster, then a pause awaiting approval; see docs/rollout.md).
    all_at_once = {"waves": [{"name": "all"}]}
    await hub.create(AP.format(ns=namespace), accesspoint(namespace, "outage", rollout=all_at_once),
                     field_manager="e2e")
    await wait_ready(hub, namespace, "outage")
    down = fleet.state.member("member-3")
    down.stop()
    try:
        async def unknown() -> dict[str, Any] | None:
            mc = await hub.get("/apis/meshfed.io/v1alpha1/memberclusters/member-3") or {}
            reach = cond(mc.get("status") or {}, "Reachable").get("status")
            st = await status(hub, namespace, "outage")
            entry = next((c for c in st.get("clusters") or [] if c["name"] == "member-3"), {})
            return st if reach == "False" and entry.get("state") == "Unknown" else None

        st = await eventually(unknown, 30, message="member-3 should be Reachable=False and Unknown")
        assert {c["name"] for c in st["clusters"]} == {"member-1", "member-2", "member-3"}
        assert cond(st, "Ready")["status"] == "Unknown"
        # A change made during the outage reaches the live members.
        changed = template(host="v2.${region}.example")
        await hub.merge_patch(f"{AP.format(ns=namespace)}/outage", {"spec": {"template": changed}})

        async def live_updated() -> bool:
            for m in ("member-1", "member-2"):
                vs = await members[m].get(f"{VS.format(ns=namespace)}/app") or {}
                if not vs["spec"]["hosts"][0].startswith("v2."):
                    return False
            return True

        await eventually(live_updated, 30, message="live members should get the new revision")
    finally:
        down.start(apiserver_binary(quiet=True))
        await down.wait_ready()
    client = await down.client()
    try:
        # Nothing was deleted on the member that was down, and it converges by itself.
        async def converged() -> bool:
            vs = await client.get(f"{VS.format(ns=namespace)}/app") or {}
            return bool(vs and vs["spec"]["hosts"] == ["v2.region-a.example"])

        await eventually(converged, 60, message="member-3 should converge after it returns")
        await wait_ready(hub, namespace, "outage")
    finally:
        await client.close()


async def test_deletion_policy_delete_and_orphan(
    controller: ControllerProcess, hub: KubeClient, members: dict[str, KubeClient], namespace: str
) -> None:
    await hub.create(AP.format(ns=namespace), accesspoint(namespace, "gone"), field_manager="e2e")
    kept_dr = copy.deepcopy(template()[3])
    kept_dr["metadata"]["name"] = "kept"
    await hub.create(AP.format(ns=namespace), accesspoint(namespace, "kept", deletionPolicy="Orphan",
                                                           template=[kept_dr]),
                     field_manager="e2e")
    await wait_ready(hub, namespace, "gone")
    await wait_ready(hub, namespace, "kept")
    await hub.delete(f"{AP.format(ns=namespace)}/gone")
    await hub.delete(f"{AP.format(ns=namespace)}/kept")

    async def cleaned() -> bool:
        for client in members.values():
            if await client.get(f"{VS.format(ns=namespace)}/app") is not None:
                return False
        return await hub.get(f"{AP.format(ns=namespace)}/gone") is None

    await eventually(cleaned, 30, message="Delete policy should remove member objects, then the finalizer")
    await eventually(lambda: _absent(hub, f"{AP.format(ns=namespace)}/kept"), 30, message="Orphan AP not deleted")
    for client in members.values():
        dr = await client.get(f"{VS.format(ns=namespace).replace('virtualservices', 'destinationrules')}/kept")
        assert dr is not None, "Orphan policy must leave member objects in place"


async def _absent(hub: KubeClient, path: str) -> bool:
    return await hub.get(path) is None


async def test_controller_restart_and_noop_resync_cause_no_writes(
    fleet: Fleet, controller: ControllerProcess, hub: KubeClient, members: dict[str, KubeClient], namespace: str
) -> None:
    for i in range(5):
        body = accesspoint(namespace, f"quiet-{i}", template=template(prefix="${name}-"))
        await hub.create(AP.format(ns=namespace), body, field_manager="e2e")
    for i in range(5):
        await wait_ready(hub, namespace, f"quiet-{i}")
    await asyncio.sleep(3)  # let trailing events settle

    async def writes() -> dict[str, int]:
        clients = {"hub": hub, **members}
        counts = await asyncio.gather(*(write_breakdown(c) for c in clients.values()))
        return {f"{name}: {k}": v for name, bd in zip(clients, counts, strict=True) for k, v in bd.items()}

    before = await writes()
    controller.restart()
    await wait_caught_up(controller, hub)  # every AccessPoint reconciled, queues empty: then count
    assert controller.proc is not None and controller.proc.poll() is None, controller.log_tail()
    after = await writes()
    changed = diff_breakdown(before, after)
    assert not changed, f"writes after a restart with nothing changed: {changed}"
    for i in range(5):
        st = await status(hub, namespace, f"quiet-{i}")
        assert cond(st, "Ready")["status"] == "True"
