"""The local fleet with Istio (issue 10, part 1): every member runs a real istiod and a real gateway
Envoy (in the member's own network namespace), VIPs reach that gateway, echo backends answer behind it.

Covers, with no controller (the fleet itself, as meshstatus and the traffic tests build on it):
each istiod ready with the gateway proxy connected over mutual TLS and ACKing every xDS type;
the placeholder Pod/Service and the validation webhook registered on each member; the webhook
refusing config Istio rejects with Istio's own message; an HTTPS Gateway whose credentialName
Secret istiod serves to the gateway over SDS, reached through the VIP the fleet gave a LoadBalancer
Service, answered by an echo backend (locally) with the cluster named; echo backends switched to
503 and back; and `Fleet.down` leaving no process and no namespace behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from federation.kube import ApiError, KubeClient
from fleet import GATEWAY_SELECTOR, ISTIO_NAMESPACE, Fleet, pki
from fleet import netns as fleet_netns
from fleet.istio import GATEWAY_POD, GATEWAY_SERVICE, WEBHOOK_NAME, http_get
from fleet.testing import eventually, gateway_vip, request_loop, served_certificate, start_fleet

pytestmark = pytest.mark.e2e

FLEET = {"members": 2, "regions": 2, "zones": 2, "istio": True}
NS = "smoke"
HOST = "smoke.example.com"
ECHO_HOST = f"echo.{NS}.svc.cluster.local"


async def apply(client: KubeClient, obj: dict[str, Any]) -> None:
    api = obj["apiVersion"]
    kind = obj["kind"].lower() + ("es" if obj["kind"].endswith("s") else "s")
    meta = obj["metadata"]
    base = f"/api/{api}" if "/" not in api else f"/apis/{api}"
    await client.apply(f"{base}/namespaces/{meta['namespace']}/{kind}/{meta['name']}", obj, field_manager="e2e")


def https_objects(secret: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "smoke-gw", "namespace": NS},
         "spec": {"type": "LoadBalancer", "selector": dict(GATEWAY_SELECTOR),
                  "ports": [{"name": "https", "port": 443, "targetPort": 8443}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
         "metadata": {"name": "smoke", "namespace": ISTIO_NAMESPACE},
         "spec": {"selector": dict(GATEWAY_SELECTOR),
                  "servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": [HOST],
                               "tls": {"mode": "SIMPLE", "credentialName": secret}}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
         "metadata": {"name": "smoke", "namespace": NS},
         "spec": {"hosts": [HOST], "gateways": [f"{ISTIO_NAMESPACE}/smoke"],
                  "http": [{"route": [{"destination": {"host": ECHO_HOST, "port": {"number": 8080}}}]}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
         "metadata": {"name": "echo", "namespace": NS},
         "spec": {"host": ECHO_HOST,
                  "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN", "localityLbSetting": {"enabled": True}},
                                    "outlierDetection": {"consecutive5xxErrors": 3, "interval": "1s",
                                                         "baseEjectionTime": "30s", "maxEjectionPercent": 100}}}},
    ]


async def test_every_member_runs_istiod_and_a_gateway_connected_over_mtls(fleet: Fleet,
                                                                         members: dict[str, KubeClient]) -> None:
    assert fleet.state is not None
    for m in fleet.state.members:
        istio = m.istio
        assert istio is not None
        status, _ = await http_get(f"{istio.istiod_url}/ready")
        assert status == 200, m.name
        status, body = await http_get(f"{istio.istiod_url}/debug/syncz")
        (proxy,) = json.loads(body)
        assert proxy["proxy"] == f"{GATEWAY_POD}.{ISTIO_NAMESPACE}" and proxy["cluster_id"] == m.name
        for xds in ("cluster", "listener", "endpoint"):
            assert proxy[f"{xds}_sent"] == proxy[f"{xds}_acked"], (m.name, xds, proxy)
        status, body = await http_get(f"{istio.gateway_admin_url}/server_info")
        info = json.loads(body)
        assert info["state"] == "LIVE"
        locality = info["node"]["locality"]
        assert (locality["region"], locality["zone"]) == (m.region, m.zone), locality
        client = members[m.name]
        pod = await client.get(f"/api/v1/namespaces/{ISTIO_NAMESPACE}/pods/{GATEWAY_POD}")
        svc = await client.get(f"/api/v1/namespaces/{ISTIO_NAMESPACE}/services/{GATEWAY_SERVICE}")
        assert pod and pod["metadata"]["labels"]["istio"] == "ingressgateway"
        assert svc and {p["port"]: p["targetPort"] for p in svc["spec"]["ports"]} == {80: 8080, 443: 8443}
        hook = await client.get(f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{WEBHOOK_NAME}")
        assert hook and hook["webhooks"][0]["clientConfig"]["url"] == f"https://127.0.0.1:{istio.webhook_port}/validate"
        assert fleet_netns.exists(istio.netns)
    raw = json.loads(fleet.state_file.read_text())
    for m in raw["members"]:
        assert {"istiod_url", "gateway_admin_url", "netns", "backends"} <= set(m["istio"]), m["istio"].keys()


async def test_the_validation_webhook_refuses_what_istio_rejects(members: dict[str, KubeClient]) -> None:
    bad = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "bad-regex", "namespace": "default"},
           "spec": {"hosts": ["bad.example"],
                    "http": [{"match": [{"uri": {"regex": "(unclosed"}}],
                              "route": [{"destination": {"host": "x.default.svc.cluster.local"}}]}]}}
    for name, client in members.items():
        with pytest.raises(ApiError) as err:
            await apply(client, bad)
        assert 'admission webhook "validation.istio.io" denied the request' in str(err.value), name
        assert "error parsing regexp" in str(err.value)
        assert await client.get("/apis/networking.istio.io/v1/namespaces/default/virtualservices/bad-regex") is None


async def test_a_vip_reaches_the_members_gateway_which_serves_the_secret_and_routes_to_echo(
        fleet: Fleet, members: dict[str, KubeClient]) -> None:
    assert fleet.state is not None
    ca = pki.make_ca("smoke-ca")
    leaf = pki.issue_leaf(ca, HOST, dns=(HOST,))
    await fleet.publish_backends(NS, ECHO_HOST)
    for m in fleet.state.members:
        client = members[m.name]
        secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                  "metadata": {"name": "smoke-tls", "namespace": ISTIO_NAMESPACE},
                  "stringData": {"tls.crt": leaf.cert_pem.decode(), "tls.key": leaf.key_pem.decode()}}
        await apply(client, secret)
        for obj in https_objects("smoke-tls"):
            await apply(client, obj)
    for m in fleet.state.members:
        client = members[m.name]
        vip = await eventually(lambda c=client: gateway_vip(c, NS, "smoke-gw"), 30, message=f"{m.name}: no VIP")

        async def answers(vip: str = vip) -> Any:
            tally = await request_loop(vip, HOST, 20, ca_pem=ca.cert_pem, connections=1, timeout=3)
            assert tally.ok == 20, str(tally)
            return tally

        tally = await eventually(answers, 60, interval=0.5, message=f"{m.name}: no answers through {vip}")
        # locality failover without distribute: every answer from the gateway's own region (its own cluster here)
        assert dict(tally.clusters) == {m.name: 20}, str(tally)
        cert = await served_certificate(vip, HOST)
        served = cert.serial_number
        assert served == pki_serial(leaf.cert_pem)
    # a cluster's backends failing: its gateway fails over to the other region once they are ejected
    first = fleet.state.members[0]
    assert first.istio is not None
    vip = await gateway_vip(members[first.name], NS, "smoke-gw")
    await fleet.set_echo_mode("fail", cluster=first.name)
    try:
        tally = await request_loop(vip, HOST, 200, ca_pem=ca.cert_pem, connections=1)
        assert tally.statuses[503] <= 5, str(tally)  # consecutive5xxErrors 3: ejected after 3
        assert tally.clusters[fleet.state.members[1].name] >= 195, str(tally)
    finally:
        await fleet.set_echo_mode("ok", cluster=first.name)


def pki_serial(cert_pem: bytes) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert_pem).serial_number


async def test_down_leaves_no_process_and_no_namespace(tmp_path: Path) -> None:
    fleet = await start_fleet(tmp_path / "small", members=1, regions=1, zones=1, istio=True)
    assert fleet.state is not None
    (member,) = fleet.state.members
    assert member.istio is not None
    pids = [member.istio.istiod_pid, member.istio.agent_pid, *fleet.state.aux_pids.values(),
            *(c.pid for c in fleet.state.clusters())]
    envoys = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == member.istio.agent_pid]
    assert envoys, "the gateway's Envoy runs under pilot-agent"
    name = member.istio.netns
    fleet.down()
    for pid in [*pids, *envoys]:
        assert _gone(pid), f"process {pid} still running"
    assert not fleet_netns.exists(name)


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
