"""Rollout benchmark on the local fleet: approval -> next wave applied, abort -> back on stable;
with --health (the Istio fleet), a bad revision -> stopped at the canary, and a good one's analysis window.

    .venv/bin/python e2e/bench/rollout.py [--members 9] [--rounds 10] [--json]
    .venv/bin/python e2e/bench/rollout.py --health [--rounds 5] [--json]

Starts its own fleet (hub + N members over 3 zones, real kube-apiservers) and the controller
process. Each round creates an AccessPoint with four waves (canary, zone 1, zone 2, zone 3; an
Approval after each of the first three), lets v1 settle, applies v2 (the canary updates, the
rollout pauses), then:
- approval -> next wave: the time from the API server accepting `spec.decision` on the waiting
  RolloutApproval to every cluster of the next wave serving v2 (read from the members' own API
  servers every 20 ms), twice per round (zone 1, zone 2);
- abort -> stable: the time from the abort annotation being accepted to every cluster that got
  v2 (canary, zone 1, zone 2) serving v1 again (the revert goes wave by wave, last first).
Targets: approval p95 <= 2 s, abort p95 <= 5 s. The approver is the fleet's admin user (the
`approve` check passes for system:masters); the plugin's own process start is not counted.

--health starts the Istio fleet of e2e/test_rollout_health.py (3 members, istiod + a gateway Envoy
each, echo backends; m3's backend answers 503 for the `bad` host) and, per round, three AccessPoints
(canary m1, then the rest):
- probe (healthChecks.http every 1 s, failureThreshold 2, onFailure Pause): the time from the API
  server accepting a revision that routes to the 503 backend to status.rollout Degraded/HealthFailed;
- analysis (Analysis gate, window 8 s, minRequests 20, max5xxRatio 0.05, onFailure Abort; a load of
  request loops through every member's VIP): the same revision to status.rollout Aborted/AnalysisFailed;
- good (probe + the same gate, under the same load): the time status.rollout spends in
  Progressing/Analyzing for a good revision (the window is 8 s of figures; the rest is reading cadence).
Status is read every 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from accesspoint.rollout import ABORT_ANNOTATION, approval_name
from federation.kube import KubeClient
from federation.testing import ControllerProcess, eventually, start_fleet

AP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
RAP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/rolloutapprovals"
VS = "/apis/networking.istio.io/v1/namespaces/{ns}/virtualservices/app"
NS = "bench-rollout"


def template(version: str) -> list[dict[str, Any]]:
    host = f"{version}.${{region}}.example"
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gw"},
         "spec": {"type": "LoadBalancer", "selector": {"app": "gw"},
                  "ports": [{"name": "https", "port": 443, "targetPort": 8443}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw"},
         "spec": {"selector": {"app": "gw"}, "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                                                          "hosts": [host]}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "app"},
         "spec": {"hosts": [host], "gateways": ["gw"],
                  "http": [{"route": [{"destination": {"host": "app.svc.cluster.local"}}]}]}},
    ]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class Members:
    def __init__(self, clients: dict[str, KubeClient]) -> None:
        self.clients = clients

    async def version(self, name: str, ns: str) -> str | None:
        vs = await self.clients[name].get(VS.format(ns=ns))
        return str(vs["spec"]["hosts"][0].split(".")[0]) if vs else None

    async def until(self, ns: str, names: list[str], version: str, timeout: float = 60.0) -> float:
        """Poll until every cluster in `names` serves `version`; return the monotonic time it did."""
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending:
            got = await asyncio.gather(*(self.version(n, ns) for n in sorted(pending)))
            pending = {n for n, v in zip(sorted(pending), got, strict=True) if v != version}
            if not pending:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{sorted(pending)} not on {version} after {timeout}s")
            await asyncio.sleep(0.02)
        return time.monotonic()


async def rollout(hub: KubeClient, ns: str, name: str) -> dict[str, Any]:
    obj = await hub.get(f"{AP.format(ns=ns)}/{name}") or {}
    return dict((obj.get("status") or {}).get("rollout") or {})


async def wait_reason(hub: KubeClient, ns: str, name: str, wave: str, reason: str = "AwaitingApproval") -> str:
    async def check() -> str | None:
        ro = await rollout(hub, ns, name)
        return str(ro["revision"]) if ro.get("reason") == reason and ro.get("wave") == wave else None

    return await eventually(check, 60, interval=0.05, message=f"{name}: {reason} at {wave}")


async def run(members: int, rounds: int) -> dict[str, Any]:
    zones = [("region-a", "zone-1"), ("region-a", "zone-2"), ("region-b", "zone-3")]
    topology = [(f"m{i + 1}", *zones[i % 3]) for i in range(members)]
    by_zone = {z: [n for n, _, zz in topology if zz == z] for _, z in zones}
    canary = sorted(topology, key=lambda t: (t[1], t[2], t[0]))[0][0]
    waves = [
        {"name": "canary", "clusterSelector": {"matchLabels": {"meshfed.io/cluster-name": canary}},
         "after": [{"type": "Approval"}]},
        *({"name": z, "clusterSelector": {"matchLabels": {"topology.kubernetes.io/zone": z}},
           **({"after": [{"type": "Approval"}]} if z != "zone-3" else {})} for _, z in zones),
    ]
    root = Path(tempfile.mkdtemp(prefix="meshfed-bench-rollout-"))
    fleet = await start_fleet(root, topology=topology)
    assert fleet.state is not None
    ctl = ControllerProcess(fleet.state.hub.kubeconfig, root / "controller.log")
    ctl.start()
    hub = await fleet.state.hub.client()
    mem = Members({m.name: await m.client(attempts=1) for m in fleet.state.members})
    approve_s: list[float] = []
    abort_s: list[float] = []
    try:
        await hub.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": NS}}, field_manager="bench")
        everyone = [n for n, _, _ in topology]
        for r in range(rounds):
            name = f"ap-{r}"
            body = {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint",
                    "metadata": {"name": name, "namespace": NS},
                    "spec": {"template": template("v1"), "rollout": {"waves": waves}}}
            await hub.create(AP.format(ns=NS), body, field_manager="bench")
            await mem.until(NS, everyone, "v1")
            await hub.merge_patch(f"{AP.format(ns=NS)}/{name}", {"spec": {"template": template("v2")}})
            rev = await wait_reason(hub, NS, name, "1/4 canary")
            await mem.until(NS, [canary], "v2")
            touched = [canary]
            for number, zone in ((1, "zone-1"), (2, "zone-2")):
                if number == 2:
                    await wait_reason(hub, NS, name, "2/4 zone-1")
                target = [n for n in by_zone[zone] if n not in touched]
                rap = approval_name(name, rev, number, "After")
                await eventually(lambda rap=rap: hub.get(f"{RAP.format(ns=NS)}/{rap}"), 30, interval=0.05)
                await hub.merge_patch(f"{RAP.format(ns=NS)}/{rap}",
                                      {"spec": {"decision": "Approved", "approver": "meshfed-admin"}})
                t0 = time.monotonic()
                approve_s.append(await mem.until(NS, target, "v2") - t0)
                touched += target
            await wait_reason(hub, NS, name, "3/4 zone-2")
            await hub.merge_patch(f"{AP.format(ns=NS)}/{name}", {"metadata": {"annotations": {ABORT_ANNOTATION: rev}}})
            t0 = time.monotonic()
            abort_s.append(await mem.until(NS, touched, "v1") - t0)
            print(f"round {r + 1}/{rounds}: approvals {approve_s[-2]:.3f}s {approve_s[-1]:.3f}s, "
                  f"abort ({len(touched)} clusters) {abort_s[-1]:.3f}s", flush=True)
            await hub.delete(f"{AP.format(ns=NS)}/{name}")
    finally:
        for c in mem.clients.values():
            await c.close()
        await hub.close()
        ctl.stop()
        fleet.down()
    return {
        "members": members,
        "rounds": rounds,
        "approval_to_wave_applied_p50_s": round(pct(approve_s, 50), 3),
        "approval_to_wave_applied_p95_s": round(pct(approve_s, 95), 3),
        "approval_samples": len(approve_s),
        "abort_to_stable_p50_s": round(pct(abort_s, 50), 3),
        "abort_to_stable_p95_s": round(pct(abort_s, 95), 3),
        "abort_samples": len(abort_s),
    }


async def until_rollout(hub: KubeClient, ns: str, name: str, timeout: float = 120.0, **want: str) -> float:
    """Poll status.rollout every 50 ms until it matches `want`; return the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while True:
        ro = await rollout(hub, ns, name)
        if all(ro.get(k) == v for k, v in want.items()):
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: rollout {ro.get('phase')}/{ro.get('reason')} not {want} after {timeout}s")
        await asyncio.sleep(0.05)


async def run_health(rounds: int) -> dict[str, Any]:
    from e2e import test_rollout_health as h
    from federation import pki
    from federation.fleet.istio import ISTIO_NAMESPACE
    from federation.testing import gateway_vip

    root = Path(tempfile.mkdtemp(prefix="meshfed-bench-rollout-health-"))
    fleet = await start_fleet(root, topology=h.TOPOLOGY, istio=True)
    assert fleet.state is not None
    ctl = ControllerProcess(fleet.state.hub.kubeconfig, root / "controller.log")
    ctl.start()
    hub = await fleet.state.hub.client()
    clients = {m.name: await m.client(attempts=1) for m in fleet.state.members}
    mem = Members(clients)
    probe_s: list[float] = []
    analysis_s: list[float] = []
    window_s: list[float] = []
    try:
        ca = pki.make_ca("bench-ca")
        leaf = pki.issue_leaf(ca, "*.example.com", dns=("*.example.com",))
        for client in clients.values():
            await client.apply(f"/api/v1/namespaces/{ISTIO_NAMESPACE}/secrets/{h.SECRET}",
                               {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                                "metadata": {"name": h.SECRET, "namespace": ISTIO_NAMESPACE},
                                "stringData": {"tls.crt": leaf.cert_pem.decode(), "tls.key": leaf.key_pem.decode()}},
                               field_manager="bench")
        await fleet.publish_backends(h.ECHO_NS, h.GOOD, service="good", clusters=["m1", "m2"])
        await fleet.publish_backends(h.ECHO_NS, h.BAD, service="bad", clusters=[h.BAD_BACKEND_CLUSTER])
        await fleet.set_echo_mode("fail", cluster=h.BAD_BACKEND_CLUSTER)
        everyone = list(clients)
        # kind -> (spec.rollout without healthChecks, with the HTTP probe)
        kinds: dict[str, tuple[dict[str, Any], bool]] = {
            "probe": ({"waves": h.waves(), "onFailure": "Pause"}, True),
            "analysis": ({"waves": h.waves(after=[h.ANALYSIS]), "onFailure": "Abort"}, False),
            "good": ({"waves": h.waves(after=[h.ANALYSIS])}, True),
        }

        async def vip_of(client: KubeClient, ns: str) -> str:
            return await eventually(lambda: gateway_vip(client, ns, "gw"), 60, message="no VIP")

        for r in range(rounds):
            for kind, (base, with_probe) in kinds.items():
                # A namespace per AccessPoint: their member objects share names (gw, app), and the previous
                # AccessPoint's objects may still be being pruned when the next one is created.
                ns, name, host = f"{NS}-{kind}-{r}", f"{kind}-{r}", f"{kind}-{r}.example.com"
                await hub.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                        "metadata": {"name": ns}}, field_manager="bench")
                spec = {**base, **({"healthChecks": h.probe(host)} if with_probe else {})}
                await h.create(hub, ns, name, host, spec)
                await until_rollout(hub, ns, name, phase="Succeeded", reason="InitialRevision")
                vips = {n: await vip_of(c, ns) for n, c in clients.items()}
                await until_vs_version(mem, everyone, ns, name, "v1")
                load = h.Load(vips, host, ca) if kind != "probe" else None
                if load is not None:
                    load.start()
                try:
                    dest = h.GOOD if kind == "good" else h.BAD
                    await h.set_version(hub, ns, name, host, dest, "v2")
                    t0 = time.monotonic()
                    if kind == "probe":
                        probe_s.append(await until_rollout(hub, ns, name, phase="Degraded", reason="HealthFailed")
                                       - t0)
                    elif kind == "analysis":
                        analysis_s.append(await until_rollout(hub, ns, name, phase="Aborted",
                                                              reason="AnalysisFailed") - t0)
                    else:
                        opened = await until_rollout(hub, ns, name, reason="Analyzing")
                        passed = await until_rollout(hub, ns, name, phase="Succeeded", reason="Completed")
                        window_s.append(passed - opened)
                finally:
                    if load is not None:
                        await load.stop()
                await hub.delete(f"{AP.format(ns=ns)}/{name}")
            print(f"round {r + 1}/{rounds}: probe 503 -> Degraded {probe_s[-1]:.2f}s, analysis 503 -> Aborted "
                  f"{analysis_s[-1]:.2f}s, good revision in the analysis window {window_s[-1]:.2f}s", flush=True)
    finally:
        for c in clients.values():
            await c.close()
        await hub.close()
        ctl.stop()
        fleet.down()
    return {
        "rounds": rounds,
        "bad_revision_probe_to_degraded_p50_s": round(pct(probe_s, 50), 3),
        "bad_revision_probe_to_degraded_p95_s": round(pct(probe_s, 95), 3),
        "bad_revision_analysis_to_aborted_p50_s": round(pct(analysis_s, 50), 3),
        "bad_revision_analysis_to_aborted_p95_s": round(pct(analysis_s, 95), 3),
        "good_revision_in_analysis_window_p50_s": round(pct(window_s, 50), 3),
        "good_revision_in_analysis_window_p95_s": round(pct(window_s, 95), 3),
    }


async def until_vs_version(mem: Members, names: list[str], ns: str, ap: str, version: str,
                           timeout: float = 60.0) -> None:
    from e2e.test_rollout_health import VS as HEALTH_VS

    deadline = time.monotonic() + timeout
    while True:
        got = [((await mem.clients[n].get(HEALTH_VS.format(ns=ns))) or {}).get("metadata", {}).get("labels", {})
               .get("version") for n in names]
        if all(v == version for v in got):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ap}: members carry {got}, not {version}")
        await asyncio.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--health", action="store_true", help="probe/analysis timings on the Istio fleet")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.health:
        health = asyncio.run(run_health(args.rounds))
        if args.json:
            print(json.dumps(health, indent=2))
            return
        print(f"\nrollout health benchmark: Istio fleet of 3 members, {health['rounds']} rounds")
        print(f"  bad revision -> Degraded/HealthFailed (probe 1 s, failureThreshold 2):  "
              f"p50 {health['bad_revision_probe_to_degraded_p50_s']:.3f}s  "
              f"p95 {health['bad_revision_probe_to_degraded_p95_s']:.3f}s")
        print(f"  bad revision -> Aborted/AnalysisFailed (under load):                  "
              f"p50 {health['bad_revision_analysis_to_aborted_p50_s']:.3f}s  "
              f"p95 {health['bad_revision_analysis_to_aborted_p95_s']:.3f}s")
        print(f"  good revision in the analysis window (window 8 s):                    "
              f"p50 {health['good_revision_in_analysis_window_p50_s']:.3f}s  "
              f"p95 {health['good_revision_in_analysis_window_p95_s']:.3f}s")
        return
    figures = asyncio.run(run(args.members, args.rounds))
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"\nrollout benchmark: {figures['members']} members over 3 zones, {figures['rounds']} rounds")
    print(f"  approval -> next wave applied on all its clusters: p50 {figures['approval_to_wave_applied_p50_s']:.3f}s"
          f"  p95 {figures['approval_to_wave_applied_p95_s']:.3f}s  ({figures['approval_samples']} samples; "
          "target p95 <= 2 s)")
    print(f"  abort -> every touched cluster back on stable:     p50 {figures['abort_to_stable_p50_s']:.3f}s"
          f"  p95 {figures['abort_to_stable_p95_s']:.3f}s  ({figures['abort_samples']} samples; target p95 <= 5 s)")


if __name__ == "__main__":
    main()
