"""Status from Istio's own verdict on the Istio fleet (issue 10, part 2): hub + 3 members, each with a real istiod
and a real gateway Envoy; the controller asks each istiod (MemberCluster spec.istiod.url, set by the fleet).

- an AccessPoint on every member: ROUTES 3/3 and Ready once every gateway proxy ACKed its routes (checked against
  each gateway Envoy's own /config_dump); one member's gateway stopped: ROUTES 2/3, Ready False naming that
  cluster and why, `kubectl get ap` / `kubectl meshfed status` show it; the gateway back: 3/3 again;
- Istio flags an object (IST0101: a VirtualService naming a Gateway that does not exist): the code, level and
  documentation URL reach the hub per cluster, and an IstioAnalysis condition names cluster, object and code;
  the VirtualService fixed in place: Istio keeps its old message for the old generation, the hub says
  "no current verdict" and never reports the stale code.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from federation.kube import KubeClient
from fleet import GATEWAY_SELECTOR, ISTIO_NAMESPACE, Fleet
from fleet.istio import GATEWAY_POD, http_get
from fleet.testing import ControllerProcess, condition, eventually, wait_status

pytestmark = pytest.mark.e2e

FLEET = {"members": 3, "regions": 2, "zones": 2, "istio": True}
AP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
PROXY = f"{GATEWAY_POD}.{ISTIO_NAMESPACE}"


class Kubectl:
    def __init__(self, kubeconfig: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig),
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    async def ok(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec("kubectl", *args, env=self.env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        assert proc.returncode == 0, f"kubectl {' '.join(args)} failed: {out.decode()}"
        return out.decode()


@pytest.fixture(scope="module")
def kubectl(fleet: Fleet) -> Kubectl:
    assert fleet.state is not None
    return Kubectl(fleet.state.hub.kubeconfig)


def template(ns: str, gateways: list[str] | None = None) -> list[dict[str, Any]]:
    host = f"{ns}.example"
    echo = f"echo.{ns}.svc.cluster.local"
    return [
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "web", "namespace": ns},
         "spec": {"selector": dict(GATEWAY_SELECTOR),
                  "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": [host]}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "web", "namespace": ns},
         "spec": {"hosts": [host], "gateways": gateways or ["web"],
                  "http": [{"route": [{"destination": {"host": echo, "port": {"number": 8080}}}]}]}},
    ]


async def new_accesspoint(hub: KubeClient, fleet: Fleet, ns: str, **kw: Any) -> str:
    await fleet.publish_backends(ns, f"echo.{ns}.svc.cluster.local")
    body = {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": "web", "namespace": ns},
            "spec": {"template": template(ns, **kw), "rollout": {"waves": [{"name": "all"}]}}}
    await hub.create(AP.format(ns=ns), body, field_manager="e2e")
    return f"{AP.format(ns=ns)}/web"


def entries(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in st.get("clusters") or []}


async def gateway_serves(fleet: Fleet, member: str, ns: str) -> bool:
    """The member's gateway Envoy itself (its admin API) holds the VirtualService's route."""
    assert fleet.state is not None
    istio = fleet.state.member(member).istio
    assert istio is not None
    status, body = await http_get(f"{istio.gateway_admin_url}/config_dump")
    return status == 200 and f"/namespaces/{ns}/virtual-service/web" in body.decode(errors="replace")


async def test_routes_column_and_a_stopped_gateway(fleet: Fleet, hub: KubeClient, controller: ControllerProcess,
                                                   namespace: str, kubectl: Kubectl) -> None:
    assert fleet.state is not None
    names = [m.name for m in fleet.state.members]
    path = await new_accesspoint(hub, fleet, namespace)
    st = await wait_status(hub, path, lambda s: (s.get("summary") or {}).get("routes") == "3/3", timeout=180,
                           message="ROUTES 3/3")
    assert condition(st, "Ready")["status"] == "True"
    for name, c in entries(st).items():
        assert (c["routeConfigured"], c["gatewayProxies"]) == (True, "1/1"), (name, c)
        assert await gateway_serves(fleet, name, namespace), name  # what the hub reports, the gateway holds
    table = await kubectl.ok("get", "ap", "-n", namespace)
    print(table)
    header, row = table.splitlines()[:2]
    assert header.split()[header.split().index("ROUTES")] == "ROUTES" and " 3/3 " in row

    stopped = names[1]
    fleet.stop_gateway(stopped)
    try:
        st = await wait_status(hub, path, lambda s: (s.get("summary") or {}).get("routes") == "2/3", timeout=120,
                               message=f"ROUTES 2/3 with the gateway of {stopped} stopped")
        c = entries(st)[stopped]
        assert (c["routeConfigured"], c["gatewayProxies"]) == (False, "0/1")
        assert c["routeMessage"] == f"gateway proxy {PROXY} is not connected to istiod"
        ready = condition(st, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "RoutesNotConfigured")
        assert f"routes not configured in {stopped}: gateway proxy {PROXY} is not connected to istiod" \
            in ready["message"]
        assert all(entries(st)[n]["routeConfigured"] is True for n in names if n != stopped)
        table = await kubectl.ok("get", "ap", "-n", namespace)
        status = await kubectl.ok("meshfed", "status", "web", "-n", namespace)
        print(table, status, sep="\n")
        assert " 2/3 " in table.splitlines()[1]
        assert f"{stopped}: routes: gateway proxy {PROXY} is not connected to istiod" in status
        assert "0/1 synced" in status and "1/1 synced" in status
    finally:
        await fleet.start_gateway(stopped)
    await wait_status(hub, path, lambda s: (s.get("summary") or {}).get("routes") == "3/3", timeout=180,
                      message="ROUTES 3/3 once the gateway is back")
    assert await gateway_serves(fleet, stopped, namespace)


async def test_istio_flags_an_object_then_no_current_verdict(fleet: Fleet, hub: KubeClient,
                                                             members: dict[str, KubeClient],
                                                             controller: ControllerProcess, namespace: str,
                                                             kubectl: Kubectl) -> None:
    ns = namespace
    path = await new_accesspoint(hub, fleet, ns, gateways=["web", f"{ISTIO_NAMESPACE}/no-such-gateway"])

    def flagged_everywhere(s: dict[str, Any]) -> bool:
        return len(entries(s)) == 3 and all(
            any(m["code"] == "IST0101" for m in c.get("istioMessages") or []) for c in entries(s).values())

    st = await wait_status(hub, path, flagged_everywhere, timeout=180, message="IST0101 reported by every member")
    for name, c in entries(st).items():
        msg = next(m for m in c["istioMessages"] if m["code"] == "IST0101")
        assert msg["object"] == f"VirtualService {ns}/web" and msg["level"] == "ERROR", (name, msg)
        assert msg["documentationUrl"].endswith("/ist0101/")
    analysis = condition(st, "IstioAnalysis")
    assert (analysis["status"], analysis["reason"]) == ("False", "IstioError")
    for name in entries(st):
        assert f"{name}: VirtualService {ns}/web: IST0101 ERROR" in analysis["message"]
    # Istio's ERROR is its verdict that the route is not served as written: not configured, not Ready.
    st = await wait_status(hub, path, lambda s: (s.get("summary") or {}).get("routes") == "0/3", timeout=60,
                           message="ROUTES 0/3 while Istio reports IST0101")
    for name, c in entries(st).items():
        assert c["routeConfigured"] is False and f"IST0101 on VirtualService {ns}/web" in c["routeMessage"], (name, c)
    assert condition(st, "Ready")["status"] == "False" and "IST0101" in condition(st, "Ready")["message"]
    status = await kubectl.ok("meshfed", "status", "web", "-n", ns)
    print(await kubectl.ok("get", "ap", "-n", ns), status, sep="\n")
    assert f"VirtualService {ns}/web: IST0101 ERROR" in status

    # Fix the VirtualService in place (the hub edit reaches every member as an update of the same object).
    ap = await hub.get(path)
    assert ap is not None
    ap["spec"]["template"][1]["spec"]["gateways"] = ["web"]
    await hub.request("PUT", path, body={k: v for k, v in ap.items() if k != "status"},
                      query={"fieldManager": "e2e"})
    vs_path = f"/apis/networking.istio.io/v1/namespaces/{ns}/virtualservices/web"

    async def fixed_on_members() -> dict[str, dict[str, Any]]:
        objs = {n: await c.get(vs_path) or {} for n, c in members.items()}
        return objs if all((o.get("spec") or {}).get("gateways") == ["web"] for o in objs.values()) else {}

    await eventually(fixed_on_members, 60, message="the fix reached every member")
    await asyncio.sleep(3)  # give istiod's analyzer (interval 2 s in the fleet) time to (not) rewrite its verdict
    objs = {n: await c.get(vs_path) or {} for n, c in members.items()}
    await wait_status(hub, path, lambda s: all(not c.get("istioMessages") for c in entries(s).values()),
                      timeout=30, message="no stale code reported")
    stale = [n for n, o in objs.items() if (o.get("status") or {}).get("validationMessages")]
    print(json.dumps({n: {"generation": o["metadata"]["generation"], "status": o.get("status")}
                      for n, o in objs.items()}, indent=1))
    for name in stale:  # Istio kept its old verdict: it is for an older generation
        o = objs[name]
        assert int(o["status"]["observedGeneration"]) < int(o["metadata"]["generation"])
    st = await wait_status(hub, path, lambda s: sorted(n for n, c in entries(s).items() if c.get("noCurrentVerdict"))
                           == sorted(stale), timeout=60, message="no current verdict where Istio's is stale")
    status = await kubectl.ok("meshfed", "status", "web", "-n", ns)
    print(status)
    assert "IST0101" not in status
    if stale:
        assert condition(st, "IstioAnalysis")["reason"] == "NoCurrentVerdict"
        assert f"VirtualService {ns}/web: no current verdict" in status
