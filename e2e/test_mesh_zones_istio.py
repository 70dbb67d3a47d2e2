"""Zones as control domains with real istiods and gateways (issue 21): hub + 2 zones, each a primary (istiod +
gateway Envoy) and an Istio remote read by the primary's istiod through a remote secret; the echo backends live
only in the remotes (a Service + WorkloadEntries with their locality, fleet.istio.remote_backend_objects).

- an AccessPoint targeting zones: one bundle per zone on its primary; each zone's status from its istiod:
  routes ACKed, the remote Synced, the routed host's endpoints known per cluster (all in the remote), ENDPOINTS
  2/2, Ready; requests through each zone's gateway VIP are answered by that zone's remote backend;
- a routed host with endpoints only in zone b: Ready False naming zone a and the host (ENDPOINTS 1/2);
- the remote's API server stopped: that zone reports its istiod's view of the remote Stale (istiod itself keeps
  saying "synced", see accesspoint.istioverdict.remote_sync), and Synced again once it is back.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from federation.kube import KubeClient
from fleet import GATEWAY_SELECTOR, Fleet, apiserver_binary
from fleet.testing import ControllerProcess, condition, request_loop, running_controller, wait_status

pytestmark = pytest.mark.e2e

TOPOLOGY = [("zp-a", "region-a", "region-a-1"), ("zr-a", "region-a", "region-a-1"),
            ("zp-b", "region-b", "region-b-1"), ("zr-b", "region-b", "region-b-1")]
FLEET: dict[str, Any] = {"topology": TOPOLOGY, "istio": True, "remotes": {"zr-a": "zp-a", "zr-b": "zp-b"}}
AP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
MC = "/apis/meshfed.io/v1alpha1/memberclusters/{name}"


@pytest.fixture(scope="module")
def controller(fleet: Fleet, hub_setup: None) -> Iterator[ControllerProcess]:
    """istiod read every 2 s when idle (default 10 s): the zone's facts settle within the test's budget."""
    with running_controller(fleet, extra=["--istiod-interval", "2"]) as ctl:
        yield ctl


def template(echo: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "${name}"},
         "spec": {"type": "LoadBalancer", "selector": dict(GATEWAY_SELECTOR),
                  "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "${name}"},
         "spec": {"selector": dict(GATEWAY_SELECTOR),
                  "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                               "hosts": ["${name}.example"]}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "${name}"},
         "spec": {"hosts": ["${name}.example"], "gateways": ["${name}"],
                  "http": [{"route": [{"destination": {"host": echo, "port": {"number": 8080}}}]}]}},
    ]


async def zonal(hub: KubeClient, ns: str, name: str, echo: str) -> str:
    body = {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": name, "namespace": ns},
            "spec": {"template": template(echo), "placement": {"target": "Zone"},
                     "rollout": {"waves": [{"name": "all"}]}}}
    await hub.create(AP.format(ns=ns), body, field_manager="e2e")
    return f"{AP.format(ns=ns)}/{name}"


def entries(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in st.get("clusters") or []}


def remote_state(st: dict[str, Any], primary: str) -> str | None:
    remotes = entries(st).get(primary, {}).get("remotes") or []
    return remotes[0]["state"] if remotes else None


async def test_zone_status_from_each_zones_istiod_and_traffic_from_remotes(
    fleet: Fleet, hub: KubeClient, controller: ControllerProcess, namespace: str
) -> None:
    echo = f"echo.{namespace}.svc.cluster.local"
    await fleet.publish_remote_backends(namespace)
    path = await zonal(hub, namespace, "web", echo)

    def serving(st: dict[str, Any]) -> bool:
        got = entries(st)
        return condition(st, "Ready").get("status") == "True" and sorted(got) == ["zp-a", "zp-b"] \
            and (st.get("summary") or {}).get("endpoints") == "2/2" \
            and all(c.get("routeConfigured") is True and c.get("vip") for c in got.values())

    st = await wait_status(hub, path, serving, timeout=180, message="zones serving with endpoints",
                           show=("conditions", "clusters", "summary"))
    for primary, remote in (("zp-a", "zr-a"), ("zp-b", "zr-b")):
        c = entries(st)[primary]
        assert c["remotes"] == [{"cluster": remote, "state": "Synced", "message": ""}], c
        assert c["endpoints"] == [{"host": echo, "clusters": {remote: 1}}], c  # only in the remote
        # The zone's gateway sends the requests to its remote's backend (the echo answers with its cluster).
        tally = await request_loop(c["vip"], "web.example", 40, port=80, tls=False)
        assert tally.statuses == {200: 40} and tally.clusters == {remote: 40}, (primary, tally)


async def test_a_routed_host_without_endpoints_in_a_zone_is_not_ready(
    fleet: Fleet, hub: KubeClient, controller: ControllerProcess, namespace: str
) -> None:
    echo = f"lonely.{namespace}.svc.cluster.local"
    await fleet.publish_remote_backends(namespace, service="lonely", clusters=["zr-b"])
    path = await zonal(hub, namespace, "web", echo)

    def judged(st: dict[str, Any]) -> bool:
        return condition(st, "Ready").get("reason") == "NoEndpoints" and \
            (st.get("summary") or {}).get("endpoints") == "1/2"

    st = await wait_status(hub, path, judged, timeout=180, message="Ready False NoEndpoints for zone a",
                           show=("conditions", "clusters", "summary"))
    ready = condition(st, "Ready")
    assert ready["status"] == "False"
    assert f"zone region-a-1 (zp-a): its istiod knows no endpoint of {echo}" in ready["message"]
    assert "region-b-1" not in ready["message"]
    assert entries(st)["zp-a"]["endpointsMissing"] == [echo]
    assert entries(st)["zp-b"]["endpoints"] == [{"host": echo, "clusters": {"zr-b": 1}}]
    # What a person sees (pasted in docs/zones.md).
    assert fleet.state is not None
    env = {**os.environ, "KUBECONFIG": str(fleet.state.hub.kubeconfig),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    table = subprocess.run(["kubectl", "get", "ap", "-n", namespace], env=env, capture_output=True, text=True,
                           check=True).stdout
    header, row = table.splitlines()[:2]
    assert row[header.index("ENDPOINTS"):].split()[0] == "1/2", table  # (empty columns: split by position)
    report = subprocess.run(["kubectl", "meshfed", "status", "web", "-n", namespace], env=env, capture_output=True,
                            text=True, check=True).stdout
    assert f"zp-a (zone region-a-1): remotes zr-a Synced; endpoints {echo}: NO ENDPOINT" in report, report
    assert f"zp-b (zone region-b-1): remotes zr-b Synced; endpoints {echo}: zr-b=1" in report, report
    mcs = subprocess.run(["kubectl", "get", "mc"], env=env, capture_output=True, text=True, check=True).stdout
    print(f"$ kubectl get mc\n{mcs}\n$ kubectl get ap -n {namespace}\n{table}\n"
          f"$ kubectl meshfed status web -n {namespace}\n{report}")


async def test_a_stopped_remote_api_server_shows_in_its_zone_and_recovers(
    fleet: Fleet, hub: KubeClient, controller: ControllerProcess, namespace: str
) -> None:
    assert fleet.state is not None
    echo = f"echo.{namespace}.svc.cluster.local"
    await fleet.publish_remote_backends(namespace)
    path = await zonal(hub, namespace, "web", echo)
    await wait_status(hub, path, lambda st: remote_state(st, "zp-a") == "Synced" and
                      condition(st, "Ready").get("status") == "True", timeout=180, message="zone a synced")
    remote = fleet.state.member("zr-a")
    remote.stop()
    try:
        st = await wait_status(hub, path, lambda st: remote_state(st, "zp-a") == "Stale", timeout=60,
                               message="zone a's remote never reported Stale", show=("clusters",))
        c = entries(st)["zp-a"]["remotes"][0]
        assert "istiod reports zr-a synced, but its API server does not answer the hub" in c["message"]
        assert remote_state(st, "zp-b") == "Synced"
        mc = await wait_status(hub, MC.format(name="zr-a"), timeout=30, message="zr-a not Unreachable",
                               ok=lambda s: condition(s, "Reachable").get("status") == "False")
        assert mc["meshRole"] == "Remote(zp-a)"
    finally:
        remote.start(apiserver_binary(quiet=True))
        await remote.wait_ready()
    await wait_status(hub, path, lambda st: remote_state(st, "zp-a") == "Synced", timeout=60,
                      message="zone a's remote never back to Synced", show=("clusters",))
