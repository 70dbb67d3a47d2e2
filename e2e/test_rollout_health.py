"""Measured rollout health on the Istio fleet (issue 15): real istiod + gateway Envoy per member, VIPs that
reach each member's gateway, echo backends that answer 503 or hang when told to, the controller process.

Covers: a revision whose route sends the canary's traffic to a backend answering 503 is stopped at the
canary by the HTTP probe, sent through that cluster's VIP with the URL's host as SNI/Host (Degraded/
HealthFailed with onFailure: Pause, Aborted with Abort), and nothing reaches the next wave (the other
members' objects keep the old revision all along); a probe that times out (backend hangs) is reported as
such; the probe results are in the cluster's status entry and in `kubectl meshfed status`; no probe
traffic once no wave waits on health; the Analysis gate, reading each gateway's own per-route stats under
a bounded load through the VIPs, stops a bad canary with the figures in the reason; a good revision
passes the probe and the analysis window and completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from accesspoint.health import stat_prefix
from federation.kube import KubeClient
from fleet import GATEWAY_SELECTOR, ISTIO_NAMESPACE, Fleet, pki
from fleet.istio import http_get
from fleet.testing import (
    ControllerProcess,
    accesspoint_status,
    events_until,
    eventually,
    gateway_vip,
    request_loop,
    wait_status,
)

pytestmark = pytest.mark.e2e

TOPOLOGY = [("m1", "region-a", "zone-a"), ("m2", "region-a", "zone-b"), ("m3", "region-b", "zone-c")]
FLEET = {"topology": TOPOLOGY, "istio": True}
CANARY, OTHERS = "m1", ["m2", "m3"]
AP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
VS = "/apis/networking.istio.io/v1/namespaces/{ns}/virtualservices/app"
ECHO_NS = "echo"
GOOD, BAD = f"good.{ECHO_NS}.internal", f"bad.{ECHO_NS}.internal"
SECRET = "wildcard-example-tls"
BAD_BACKEND_CLUSTER = "m3"  # its echo backend serves the "bad" host; the others serve "good"


def template(host: str, dest: str, version: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gw"},
         "spec": {"type": "LoadBalancer", "selector": dict(GATEWAY_SELECTOR),
                  "ports": [{"name": "https", "port": 443, "targetPort": 8443}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw"},
         "spec": {"selector": dict(GATEWAY_SELECTOR),
                  "servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": [host],
                               "tls": {"mode": "SIMPLE", "credentialName": SECRET}}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
         "metadata": {"name": "app", "labels": {"version": version}},
         "spec": {"hosts": [host], "gateways": ["gw"],
                  "http": [{"route": [{"destination": {"host": dest, "port": {"number": 8080}}}],
                            "headers": {"response": {"set": {"x-version": version}}}}]}},
    ]


def probe(host: str, **kw: Any) -> dict[str, Any]:
    return {"http": {"url": f"https://{host}/healthz?cluster=${{cluster}}", "expectedStatus": 200,
                     "timeoutSeconds": 2, "periodSeconds": 1, "successThreshold": 2, "failureThreshold": 2, **kw}}


def waves(after: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [{"name": "canary", "clusterSelector": {"matchLabels": {"meshfed.io/cluster-name": CANARY}},
             "after": after or []},
            {"name": "rest"}]


ANALYSIS = {"type": "Analysis", "analysis": {"window": "8s", "interval": "1s", "minRequests": 20,
                                             "max5xxRatio": 0.05, "maxWait": "90s"}}


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
async def tls_ca(fleet: Fleet, members: dict[str, KubeClient]) -> pki.KeyPair:
    """A wildcard certificate for *.example.com in every member's istio-system (the gateways' credential),
    and the echo services: `good` (backends of m1, m2) and `bad` (m3's backend)."""
    assert fleet.state is not None
    ca = pki.make_ca("rollout-health-ca")
    leaf = pki.issue_leaf(ca, "*.example.com", dns=("*.example.com",))
    for client in members.values():
        await client.apply(f"/api/v1/namespaces/{ISTIO_NAMESPACE}/secrets/{SECRET}",
                           {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                            "metadata": {"name": SECRET, "namespace": ISTIO_NAMESPACE},
                            "stringData": {"tls.crt": leaf.cert_pem.decode(), "tls.key": leaf.key_pem.decode()}},
                           field_manager="e2e")
    good = [m for m, _, _ in TOPOLOGY if m != BAD_BACKEND_CLUSTER]
    await fleet.publish_backends(ECHO_NS, GOOD, service="good", clusters=good)
    await fleet.publish_backends(ECHO_NS, BAD, service="bad", clusters=[BAD_BACKEND_CLUSTER])
    return ca


@pytest.fixture
async def bad_backend(fleet: Fleet, tls_ca: pki.KeyPair) -> AsyncIterator[Any]:
    """Switch the `bad` host's backend to a mode for one test; back to ok afterwards."""

    async def switch(mode: str) -> None:
        await fleet.set_echo_mode(mode, cluster=BAD_BACKEND_CLUSTER)

    yield switch
    await fleet.set_echo_mode("ok", cluster=BAD_BACKEND_CLUSTER)


class Versions:
    """Every member's VirtualService version, sampled all along: nothing may reach the next wave."""

    def __init__(self, members: dict[str, KubeClient], ns: str) -> None:
        self.members, self.ns = members, ns
        self.seen: dict[str, set[str]] = {m: set() for m in members}
        self._task: asyncio.Task[None] | None = None

    async def snapshot(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for name, client in self.members.items():
            vs = await client.get(VS.format(ns=self.ns))
            out[name] = ((vs or {}).get("metadata") or {}).get("labels", {}).get("version")
            if out[name]:
                self.seen[name].add(str(out[name]))
        return out

    async def _run(self) -> None:
        while True:
            await self.snapshot()
            await asyncio.sleep(0.2)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def wait(self, expected: dict[str, str], timeout: float = 90) -> None:
        async def match() -> bool:
            snap = await self.snapshot()
            return all(snap[k] == v for k, v in expected.items())

        await eventually(match, timeout, interval=0.2, message=f"members should carry {expected}")


async def create(hub: KubeClient, ns: str, name: str, host: str, rollout: dict[str, Any]) -> None:
    body = {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": name, "namespace": ns},
            "spec": {"template": template(host, GOOD, "v1"), "rollout": rollout}}
    await hub.create(AP.format(ns=ns), body, field_manager="e2e")


async def set_version(hub: KubeClient, ns: str, name: str, host: str, dest: str, version: str) -> None:
    await hub.merge_patch(f"{AP.format(ns=ns)}/{name}", {"spec": {"template": template(host, dest, version)}})


async def wait_rollout(hub: KubeClient, ns: str, name: str, timeout: float = 120, **want: Any) -> dict[str, Any]:
    def ok(st: dict[str, Any]) -> bool:
        ro = st.get("rollout") or {}
        return all(ro.get(k) == v for k, v in want.items())

    st = await wait_status(hub, f"{AP.format(ns=ns)}/{name}", ok, timeout=timeout, show=("rollout",),
                           message=f"rollout of {ns}/{name} should reach {want}")
    return dict(st.get("rollout") or {})


async def entry(hub: KubeClient, ns: str, name: str, cluster: str) -> dict[str, Any]:
    st = await accesspoint_status(hub, ns, name)
    return next(c for c in st.get("clusters") or [] if c["name"] == cluster)


async def echo_counts(fleet: Fleet) -> dict[str, int]:
    """Requests each echo backend answered (ok or failed), from the echo control API."""
    import json

    assert fleet.state is not None
    status, body = await http_get(f"http://127.0.0.1:{fleet.state.echo_control}/backends")
    assert status == 200
    return {b["cluster"]: int(b["served"]) + int(b["failed"]) for b in json.loads(body)}


async def plugin(fleet: Fleet, *args: str) -> str:
    assert fleet.state is not None
    env = {**os.environ, "KUBECONFIG": str(fleet.state.hub.kubeconfig),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = await asyncio.create_subprocess_exec("kubectl", "meshfed", *args, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode()


class Load:
    """A bounded load through VIPs: request loops of `batch` requests, one after the other, until stopped."""

    def __init__(self, targets: dict[str, str], host: str, ca: pki.KeyPair, batch: int = 20) -> None:
        self.targets, self.host, self.ca, self.batch = targets, host, ca, batch
        self.sent: dict[str, int] = dict.fromkeys(targets, 0)
        self.statuses: dict[str, dict[int, int]] = {k: {} for k in targets}
        self._tasks: list[asyncio.Task[None]] = []

    async def _run(self, cluster: str, vip: str) -> None:
        while True:
            tally = await request_loop(vip, self.host, self.batch, ca_pem=self.ca.cert_pem, connections=1, timeout=3)
            self.sent[cluster] += tally.total
            for code, n in tally.statuses.items():
                self.statuses[cluster][code] = self.statuses[cluster].get(code, 0) + n
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(c, v)) for c, v in self.targets.items()]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def vips(members: dict[str, KubeClient], ns: str) -> dict[str, str]:
    out = {}
    for name, client in members.items():
        out[name] = await eventually(lambda c=client: gateway_vip(c, ns, "gw"), 60, message=f"{name}: no VIP")
    return out


async def settle_v1(hub: KubeClient, versions: Versions, ns: str, name: str) -> str:
    await versions.wait(dict.fromkeys(versions.members, "v1"))
    ro = await wait_rollout(hub, ns, name, phase="Succeeded", reason="InitialRevision")
    return str(ro["stable"])


# ---------------------------------------------------------------------------------------------
# the HTTP probe


@pytest.mark.parametrize("on_failure", ["Pause", "Abort"])
async def test_a_probe_answered_503_stops_the_revision_at_the_canary(
    fleet: Fleet, controller: ControllerProcess, hub: KubeClient, members: dict[str, KubeClient], namespace: str,
    tls_ca: pki.KeyPair, bad_backend: Any, on_failure: str,
) -> None:
    ns, name, host = namespace, f"probe-{on_failure.lower()}", f"probe-{on_failure.lower()}.example.com"
    versions = Versions(members, ns)
    versions.start()
    try:
        await create(hub, ns, name, host, {"waves": waves(), "healthChecks": probe(host), "onFailure": on_failure})
        v1 = await settle_v1(hub, versions, ns, name)
        vip = (await vips(members, ns))[CANARY]
        await bad_backend("fail")
        t0 = time.monotonic()
        await set_version(hub, ns, name, host, BAD, "v2")
        if on_failure == "Pause":
            ro = await wait_rollout(hub, ns, name, phase="Degraded", reason="HealthFailed")
        else:
            ro = await wait_rollout(hub, ns, name, phase="Aborted", reason="HealthFailed")
        stopped = time.monotonic() - t0
        assert ro["stable"] == v1
        url = f"https://{host}/healthz?cluster={CANARY}"
        assert f"health check failed on {CANARY} (probe failed 2x in a row (failureThreshold 2): " \
               f"GET {url} via {vip}:443: 503 (expected 200)" in ro["message"], ro["message"]
        if on_failure == "Pause":
            await asyncio.sleep(3)  # it stays stopped: nothing reaches the next wave
            snap = await versions.snapshot()
            assert snap == {CANARY: "v2", "m2": "v1", "m3": "v1"}, snap
            e = await entry(hub, ns, name, CANARY)
            assert e["probe"]["verdict"] == "Unhealthy" and e["probe"]["last"]["code"] == 503, e
            assert e["probe"]["last"]["url"] == url and e["probe"]["last"]["via"] == f"{vip}:443"
            out = await plugin(fleet, "status", name, "-n", ns)
            assert "Unhealthy 503" in out and f"GET {url} via {vip}:443 -> 503" in out, out
            # abort: the canary returns to v1, and the probes stop (no wave waits on health any more)
            await plugin(fleet, "abort", name, "-n", ns)
            await versions.wait(dict.fromkeys(members, "v1"))
            await wait_rollout(hub, ns, name, phase="Aborted", reason="Aborted")
        else:
            await versions.wait(dict.fromkeys(members, "v1"))
        await asyncio.sleep(2)
        before = await echo_counts(fleet)
        await asyncio.sleep(4)
        assert await echo_counts(fleet) == before, "probe traffic with no rollout in flight"
    finally:
        await versions.stop()
    print(f"\n[figure] probe 503 -> {on_failure}: {stopped:.2f}s after the v2 patch")
    for other in OTHERS:
        assert versions.seen[other] == {"v1"}, f"{other} carried {versions.seen[other]}: v2 reached the next wave"


async def test_a_probe_that_times_out_is_reported_as_such(
    controller: ControllerProcess, hub: KubeClient, members: dict[str, KubeClient], namespace: str,
    tls_ca: pki.KeyPair, bad_backend: Any,
) -> None:
    ns, name, host = namespace, "probe-hang", "probe-hang.example.com"
    versions = Versions(members, ns)
    versions.start()
    try:
        await create(hub, ns, name, host, {"waves": waves(), "healthChecks": probe(host), "onFailure": "Pause"})
        await settle_v1(hub, versions, ns, name)
        await bad_backend("hang")
        await set_version(hub, ns, name, host, BAD, "v2")
        ro = await wait_rollout(hub, ns, name, phase="Degraded", reason="HealthFailed")
        assert f"GET https://{host}/healthz?cluster={CANARY} via " in ro["message"]
        assert ": timed out after 2s" in ro["message"], ro["message"]
        e = await entry(hub, ns, name, CANARY)
        assert e["probe"]["last"]["outcome"] == "TimedOut" and "code" not in e["probe"]["last"], e
        assert e["probe"]["last"]["latencyMs"] >= 2000
    finally:
        await versions.stop()
    for other in OTHERS:
        assert versions.seen[other] == {"v1"}, versions.seen


# ---------------------------------------------------------------------------------------------
# the Analysis gate


async def test_the_analysis_gate_stops_a_bad_canary_under_load_with_the_figures(
    fleet: Fleet, controller: ControllerProcess, hub: KubeClient, members: dict[str, KubeClient], namespace: str,
    tls_ca: pki.KeyPair, bad_backend: Any,
) -> None:
    ns, name, host = namespace, "analysis-bad", "analysis-bad.example.com"
    versions = Versions(members, ns)
    versions.start()
    try:
        await create(hub, ns, name, host, {"waves": waves(after=[ANALYSIS]), "onFailure": "Pause"})
        await settle_v1(hub, versions, ns, name)
        targets = await vips(members, ns)
        # The VirtualService carries the route stat prefix: the gateway counts this AccessPoint's traffic.
        vs = await members[CANARY].get(VS.format(ns=ns))
        assert vs is not None
        assert vs["spec"]["http"][0]["match"] == [{"uri": {"prefix": "/"}, "statPrefix": stat_prefix(ns, name)}]
        await bad_backend("fail")
        load = Load(targets, host, tls_ca)
        load.start()
        try:
            await set_version(hub, ns, name, host, BAD, "v2")
            ro = await wait_rollout(hub, ns, name, phase="Paused", reason="AnalysisFailed")
        finally:
            await load.stop()
        message = ro["message"]
        assert message.startswith("wave 1/2 canary: analysis failed: m1: "), message
        # The canary's figures from its gateway's stats: its 5xx share (the window opens when m1 reports v2
        # applied; its gateway may serve v1 for a moment more, so not every request of the window is a 503).
        m = re.search(r"m1: (\d+)/(\d+) 5xx \((\d+\.\d)%\), p95 [^:]+: 5xx \3% > max5xxRatio 5\.0% "
                      r"\(vs stable m2,m3: 0/(\d+) 5xx \(0\.0%\)", message)
        assert m is not None, message
        errors, requests, stable_requests = int(m.group(1)), int(m.group(2)), int(m.group(4))
        assert requests >= 20 and errors / requests > 0.05 and stable_requests > 0, message
        assert load.statuses[CANARY].get(503, 0) > 0 and load.statuses["m2"].get(200, 0) > 0, load.statuses
        await asyncio.sleep(2)
        snap = await versions.snapshot()
        assert snap == {CANARY: "v2", "m2": "v1", "m3": "v1"}, snap
    finally:
        await versions.stop()
    for other in OTHERS:
        assert versions.seen[other] == {"v1"}, versions.seen


async def test_a_good_revision_passes_probe_and_analysis_and_completes(
    fleet: Fleet, controller: ControllerProcess, hub: KubeClient, members: dict[str, KubeClient], namespace: str,
    tls_ca: pki.KeyPair,
) -> None:
    ns, name, host = namespace, "good", "good.example.com"
    versions = Versions(members, ns)
    versions.start()
    try:
        await create(hub, ns, name, host, {"waves": waves(after=[ANALYSIS]), "healthChecks": probe(host)})
        await settle_v1(hub, versions, ns, name)
        load = Load(await vips(members, ns), host, tls_ca)
        load.start()
        try:
            await set_version(hub, ns, name, host, GOOD, "v2")
            await wait_rollout(hub, ns, name, reason="Analyzing")
            t0 = time.monotonic()
            ro = await wait_rollout(hub, ns, name, phase="Succeeded", reason="Completed")
            window = time.monotonic() - t0
        finally:
            await load.stop()
        await versions.wait(dict.fromkeys(members, "v2"))
        assert ro["stable"] == ro["revision"]
        e = await entry(hub, ns, name, CANARY)
        assert e["probe"]["verdict"] == "Healthy" and e["probe"]["last"]["code"] == 200, e
    finally:
        await versions.stop()
    def analysis_passed(events: list[dict[str, Any]]) -> None:
        assert any(ev["reason"] == "AnalysisPassed" and ev["involvedObject"]["name"] == name for ev in events)

    events = await events_until(hub, ns, analysis_passed)
    passed = [ev["message"] for ev in events
              if ev["involvedObject"]["name"] == name and ev["reason"] == "AnalysisPassed"]
    assert "m1: 0/" in passed[0] and "over " in passed[0], passed
    assert 8 <= window < 40, window
    print(f"\n[figure] good revision: {window:.1f}s from Analyzing to Completed (window 8s): {passed[0]}")
