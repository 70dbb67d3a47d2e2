"""routeConfigured and Istio's analyzer/admission verdicts with one real API server, one real istiod and one
real gateway Envoy (tests/integration/istio_harness.py), and `meshfed controller` as a subprocess.

The API server is both hub and member "m1" (MemberCluster spec.istiod.url = istiod's HTTP debug address).
Each case waits (bounded) for what the hub reports, and checks it against what the real components did:
the gateway Envoy's own /config_dump for the route, istiod for NACKs, the member object for analyzer status.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from federation.kube import KubeClient
from fleet import ClusterProc, free_port, register_member
from fleet.testing import ControllerProcess, condition, eventually, single_apiserver, wait_status
from tests.integration.istio_harness import Gateway, Istiod, gateway_workload, register_webhook

pytestmark = pytest.mark.integration

AP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
VS = "/apis/networking.istio.io/v1/namespaces/{ns}/virtualservices/{name}"
TELEMETRY = "/apis/telemetry.istio.io/v1/namespaces/istio-system/telemetries"


@dataclass
class World:
    api: ClusterProc
    client: KubeClient
    istiod: Istiod
    gateway: Gateway
    controller: ControllerProcess
    port: int  # the Gateway server port (a free one: the listener binds 0.0.0.0:<port>)


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    root = tmp_path_factory.mktemp("istio")
    api = await single_apiserver(root, "m1", istio_crds=True)
    client = await api.client()
    istiod = Istiod(root / "istiod", api.kubeconfig)
    gateway = Gateway(root / "gw", istiod)
    controller = ControllerProcess(api.kubeconfig, root / "controller.log",
                                   extra=["--istiod-interval", "2", "--route-settle", "5"])
    try:
        port = free_port()
        await gateway_workload(client, port)
        istiod.start(webhook=True)
        await istiod.wait_ready()
        await register_webhook(client, istiod)
        gateway.start()
        await register_member(client, "m1", api.kubeconfig.read_text(), "region-a", "zone-1", {})
        await client.merge_patch("/apis/meshfed.io/v1alpha1/memberclusters/m1",
                                 {"spec": {"istiod": {"url": istiod.url}}})
        controller.start()
        yield World(api, client, istiod, gateway, controller, port)
    finally:
        controller.stop()
        gateway.stop()
        istiod.stop()
        await client.close()
        api.stop()


def template(ns: str, port: int, vs_gateways: list[str] | None = None, uri_regex: str | None = None) -> list[Any]:
    match = [{"uri": {"regex": uri_regex}}] if uri_regex else [{"uri": {"prefix": "/"}}]
    return [
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "web-gw", "namespace": ns},
         "spec": {"selector": {"istio": "ingressgateway"},
                  "servers": [{"port": {"number": port, "name": "http", "protocol": "HTTP"},
                               "hosts": [f"{ns}.example"]}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
         "metadata": {"name": "web", "namespace": ns},
         "spec": {"hosts": [f"{ns}.example"], "gateways": vs_gateways or ["web-gw"],
                  "http": [{"match": match,
                            "route": [{"destination": {"host": f"backend.{ns}.internal",
                                                       "port": {"number": 9001}}}]}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
         "metadata": {"name": "backend", "namespace": ns},
         "spec": {"hosts": [f"backend.{ns}.internal"], "location": "MESH_INTERNAL", "resolution": "STATIC",
                  "ports": [{"number": 9001, "name": "http", "protocol": "HTTP"}],
                  "endpoints": [{"address": "127.0.0.9"}]}},
    ]


async def new_ap(w: World, **kw: Any) -> tuple[str, str]:
    ns = f"is-{uuid.uuid4().hex[:6]}"
    await w.client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
                          field_manager="test")
    body = {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": "web", "namespace": ns},
            "spec": {"template": template(ns, w.port, **kw), "placement": {"clusterNames": ["m1"]}}}
    await w.client.create(AP.format(ns=ns), body, field_manager="test")
    return ns, f"{AP.format(ns=ns)}/web"


def entry(st: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in st.get("clusters") or [] if c["name"] == "m1"), {})


def kubectl(w: World, *args: str) -> str:
    out = subprocess.run(["kubectl", "--kubeconfig", str(w.api.kubeconfig), *args], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def meshfed_status(w: World, ns: str) -> str:
    out = subprocess.run([".venv/bin/python", "-m", "cli.main", "status", "web", "-n", ns, "--kubeconfig",
                          str(w.api.kubeconfig)], capture_output=True, text=True, timeout=30,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    return out.stdout


async def envoy_has_route(w: World, ns: str) -> bool:
    dump = await w.gateway.config_dump()
    return f"/namespaces/{ns}/virtual-service/web" in yaml.safe_dump(dump)


async def test_routes_configured_then_gateway_stopped(world: World) -> None:
    w = world
    ns, path = await new_ap(w)
    st = await wait_status(w.client, path, lambda s: entry(s).get("routeConfigured") is True, timeout=90,
                           message="routeConfigured True", show=("clusters", "conditions"))
    assert entry(st)["gatewayProxies"] == "1/1" and entry(st)["routeMessage"] == "routes ACKed by 1/1 gateway proxies"
    assert condition(st, "Ready")["status"] == "True" and st["summary"]["routes"] == "1/1"
    assert await envoy_has_route(w, ns)  # the real gateway serves the route the hub reports configured
    table = kubectl(w, "get", "ap", "-n", ns)
    assert "ROUTES" in table.splitlines()[0] and " 1/1 " in table.splitlines()[1], table
    print(table)

    w.gateway.stop()
    try:
        st = await wait_status(w.client, path, lambda s: entry(s).get("routeConfigured") is False, timeout=60,
                               message="routeConfigured False after the gateway stopped")
        assert entry(st)["routeMessage"] == "gateway proxy gw-1.istio-system is not connected to istiod"
        ready = condition(st, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "RoutesNotConfigured")
        assert "m1: gateway proxy gw-1.istio-system is not connected to istiod" in ready["message"]
        assert st["summary"]["routes"] == "0/1"
        table = kubectl(w, "get", "ap", "-n", ns)
        assert " 0/1 " in table.splitlines()[1], table
        status = meshfed_status(w, ns)
        assert "m1: routes: gateway proxy gw-1.istio-system is not connected to istiod" in status, status
        print(table, status, sep="\n")
    finally:
        w.gateway.start()
    await wait_status(w.client, path, lambda s: entry(s).get("routeConfigured") is True, timeout=90,
                      message="routeConfigured True again after the gateway restarted")


async def test_nack_reports_envoys_message(world: World) -> None:
    w = world
    ns, path = await new_ap(w)
    await wait_status(w.client, path, lambda s: entry(s).get("routeConfigured") is True, timeout=90)
    # Upstream Envoy lacks Istio's stats filter: a metrics Telemetry makes it NACK the listeners (lab §5).
    tel = {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
           "metadata": {"name": "mesh-default", "namespace": "istio-system"},
           "spec": {"metrics": [{"providers": [{"name": "prometheus"}]}]}}
    await w.client.create(TELEMETRY, tel, field_manager="test")
    try:
        # the NACK concerns the listeners istiod pushes after the Telemetry, not an AccessPoint write:
        # the hub sees it on its next syncz of that istiod
        st = await wait_status(w.client, path, lambda s: "NACK" in (entry(s).get("routeMessage") or ""), timeout=60,
                               message="a NACK reported")
        assert entry(st)["routeConfigured"] is False
        assert "gateway proxy gw-1.istio-system rejected (NACK) the LDS (listeners) push:" in entry(st)["routeMessage"]
        assert "istio.stats" in entry(st)["routeMessage"]  # Envoy's own message
        print(meshfed_status(w, ns))
    finally:
        await w.client.request("DELETE", f"{TELEMETRY}/mesh-default")
    await wait_status(w.client, path, lambda s: entry(s).get("routeConfigured") is True, timeout=90,
                      message="routeConfigured True once the Telemetry is gone")


async def test_analyzer_message_then_stale_after_fix_in_place(world: World) -> None:
    w = world
    ns, path = await new_ap(w, vs_gateways=["web-gw", "istio-system/no-such-gateway"])

    def flagged(s: dict[str, Any]) -> bool:
        return any(m["code"] == "IST0101" and m["object"] == f"VirtualService {ns}/web"
                   for m in entry(s).get("istioMessages") or [])

    st = await wait_status(w.client, path, flagged, timeout=90, message="IST0101 on the VirtualService")
    msg = next(m for m in entry(st)["istioMessages"] if m["code"] == "IST0101")
    assert msg["level"] == "ERROR" and msg["documentationUrl"].endswith("/ist0101/")
    analysis = condition(st, "IstioAnalysis")
    assert (analysis["status"], analysis["reason"]) == ("False", "IstioError")
    assert f"m1: VirtualService {ns}/web: IST0101 ERROR" in analysis["message"]
    status = meshfed_status(w, ns)
    assert f"m1: VirtualService {ns}/web: IST0101 ERROR" in status, status
    print(status)

    # Fix the VirtualService in place: Istio keeps its old message (observedGeneration < generation).
    ap = await w.client.get(path)
    assert ap is not None
    ap["spec"]["template"][1]["spec"]["gateways"] = ["web-gw"]
    await w.client.request("PUT", path, body={k: v for k, v in ap.items() if k != "status"})

    async def member_vs() -> dict[str, Any]:
        obj = await w.client.get(VS.format(ns=ns, name="web")) or {}
        return obj if obj.get("spec", {}).get("gateways") == ["web-gw"] else {}

    vs = await eventually(member_vs, 30, message="the fix reached the member")
    st = await wait_status(w.client, path, lambda s: not flagged(s), timeout=60, message="the stale code not reported")
    vs = await w.client.get(VS.format(ns=ns, name="web")) or {}
    status_vs = vs.get("status") or {}
    if status_vs.get("validationMessages"):  # Istio's stale-verdict behaviour (lab §4b.2)
        assert int(status_vs["observedGeneration"]) < int(vs["metadata"]["generation"])
        assert entry(st).get("noCurrentVerdict") == [f"VirtualService {ns}/web"]
        assert condition(st, "IstioAnalysis")["reason"] == "NoCurrentVerdict"
        status = meshfed_status(w, ns)
        assert "no current verdict" in status and "IST0101" not in status, status
        print(status)


async def test_admission_refusal_fails_the_cluster_with_istios_message(world: World) -> None:
    w = world
    _, path = await new_ap(w, uri_regex="(unclosed")
    st = await wait_status(w.client, path, lambda s: entry(s).get("state") == "Failed", timeout=60,
                           message="cluster Failed by Istio's admission")
    err = entry(st)["lastError"]
    assert 'admission webhook "validation.istio.io" denied the request' in err and "(unclosed" in err, err
    assert condition(st, "Ready")["reason"] == "ApplyFailed"


async def test_istiod_unreachable_is_unknown(world: World) -> None:
    w = world
    _, path = await new_ap(w)
    await wait_status(w.client, path, lambda s: entry(s).get("routeConfigured") is True, timeout=90)
    w.istiod.stop()
    try:
        st = await wait_status(w.client, path, lambda s: "cannot be asked" in (entry(s).get("routeMessage") or ""),
                               timeout=60, message="routes Unknown while istiod is down")
        assert entry(st).get("routeConfigured") is None
        ready = condition(st, "Ready")
        assert (ready["status"], ready["reason"]) == ("Unknown", "RoutesUnknown"), ready
    finally:
        w.istiod.start(webhook=True)
        await w.istiod.wait_ready()
    await wait_status(w.client, path, lambda s: entry(s).get("routeConfigured") is True, timeout=120,
                      message="routeConfigured True once istiod is back")
    await asyncio.sleep(0)
