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
each, echo backends; m3's backend answers 503 for the `bad` host) and, per round, five AccessPoints
(each in a namespace of its own; canary m1, then the rest), each settled on v1 and then given a v2:
- probe-pause / probe-abort (healthChecks.http every 1 s, failureThreshold 2, onFailure Pause / Abort):
  the time from the API server accepting a revision that routes to the 503 backend to status.rollout
  Degraded/HealthFailed / Aborted/HealthFailed (with Abort also until m1's VirtualService is back on v1);
- analysis-pause / analysis-abort (Analysis gate, window 8 s, minRequests 20, max5xxRatio 0.05; a load of
  request loops through every member's VIP): the same revision to Paused/AnalysisFailed /
  Aborted/AnalysisFailed;
- good (probe + the same gate, under the same load): the time status.rollout spends in
  Progressing/Analyzing for a good revision (the window is 8 s of figures; the rest is reading cadence).
For every bad revision the bench also checks that m2 and m3 still carry v1 (nothing reached the next wave).
Status is read every 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from accesspoint.rollout import ABORT_ANNOTATION, approval_name
from federation.kube import KubeClient
from fleet.testing import ControllerProcess, eventually, start_fleet

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
    from fleet import pki
    from fleet.istio import ISTIO_NAMESPACE
    from fleet.testing import gateway_vip

    root = Path(tempfile.mkdtemp(prefix="meshfed-bench-rollout-health-"))
    fleet = await start_fleet(root, topology=h.TOPOLOGY, istio=True)
    assert fleet.state is not None
    ctl = ControllerProcess(fleet.state.hub.kubeconfig, root / "controller.log")
    ctl.start()
    hub = await fleet.state.hub.client()
    clients = {m.name: await m.client(attempts=1) for m in fleet.state.members}
    mem = Members(clients)
    # case -> seconds per round: bad revision -> stopped (or, for `good`, the time in the analysis window)
    times: dict[str, list[float]] = {c.name: [] for c in HEALTH_CASES}
    back_s: dict[str, list[float]] = {c.name: [] for c in HEALTH_CASES if c.on_failure == "Abort"}
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

        async def vip_of(client: KubeClient, ns: str) -> str:
            return await eventually(lambda: gateway_vip(client, ns, "gw"), 60, message="no VIP")

        for r in range(rounds):
            for case in HEALTH_CASES:
                # A namespace per AccessPoint: their member objects share names (gw, app), and the previous
                # AccessPoint's objects may still be being pruned when the next one is created.
                ns, name, host = f"{NS}-{case.name}-{r}", f"{case.name}-{r}", f"{case.name}-{r}.example.com"
                await hub.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                        "metadata": {"name": ns}}, field_manager="bench")
                spec: dict[str, Any] = {"waves": h.waves(after=[h.ANALYSIS] if case.analysis else None)}
                if case.on_failure:
                    spec["onFailure"] = case.on_failure
                if case.probe:
                    spec["healthChecks"] = h.probe(host)
                await h.create(hub, ns, name, host, spec)
                await until_rollout(hub, ns, name, phase="Succeeded", reason="InitialRevision")
                vips = {n: await vip_of(c, ns) for n, c in clients.items()}
                await until_vs_version(mem, everyone, ns, name, "v1")
                load = h.Load(vips, host, ca) if case.analysis else None
                if load is not None:
                    load.start()
                try:
                    await h.set_version(hub, ns, name, host, h.BAD if case.stopped else h.GOOD, "v2")
                    t0 = time.monotonic()
                    if case.stopped:
                        phase, reason = case.stopped
                        stopped = await until_rollout(hub, ns, name, phase=phase, reason=reason)
                        times[case.name].append(stopped - t0)
                        if case.on_failure == "Abort":  # the canary back on the stable revision
                            await until_vs_version(mem, [h.CANARY], ns, name, "v1")
                            back_s[case.name].append(time.monotonic() - t0)
                        # nothing reached the next wave
                        await until_vs_version(mem, h.OTHERS, ns, name, "v1", timeout=1)
                    else:
                        opened = await until_rollout(hub, ns, name, reason="Analyzing")
                        passed = await until_rollout(hub, ns, name, phase="Succeeded", reason="Completed")
                        times[case.name].append(passed - opened)
                finally:
                    if load is not None:
                        await load.stop()
                await hub.delete(f"{AP.format(ns=ns)}/{name}")
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{c.name} {times[c.name][-1]:.2f}s" for c in HEALTH_CASES)
                  + "".join(f", {k} canary back on v1 {v[-1]:.2f}s" for k, v in back_s.items()), flush=True)
    finally:
        for c in clients.values():
            await c.close()
        await hub.close()
        ctl.stop()
        fleet.down()
    out: dict[str, Any] = {"rounds": rounds}
    for case in HEALTH_CASES:
        out[case.name] = {"what": case.what, "p50_s": round(pct(times[case.name], 50), 3),
                          "p95_s": round(pct(times[case.name], 95), 3), "samples": times[case.name]}
        if case.name in back_s:
            out[case.name]["canary_back_on_stable_p95_s"] = round(pct(back_s[case.name], 95), 3)
    return out


@dataclasses.dataclass(frozen=True)
class HealthCase:
    name: str
    what: str
    probe: bool  # healthChecks.http (every 1 s, failureThreshold 2)
    analysis: bool  # an Analysis gate after the canary (window 8 s, minRequests 20), under load
    on_failure: str | None  # spec.rollout.onFailure
    stopped: tuple[str, str] | None  # (phase, reason) a bad revision must reach; None: a good revision


HEALTH_CASES = (
    HealthCase("probe-pause", "bad revision -> Degraded/HealthFailed (probe, onFailure Pause)",
               True, False, "Pause", ("Degraded", "HealthFailed")),
    HealthCase("probe-abort", "bad revision -> Aborted/HealthFailed (probe, onFailure Abort)",
               True, False, "Abort", ("Aborted", "HealthFailed")),
    HealthCase("analysis-pause", "bad revision -> Paused/AnalysisFailed (Analysis gate under load, onFailure Pause)",
               False, True, "Pause", ("Paused", "AnalysisFailed")),
    HealthCase("analysis-abort", "bad revision -> Aborted/AnalysisFailed (Analysis gate under load, onFailure Abort)",
               False, True, "Abort", ("Aborted", "AnalysisFailed")),
    HealthCase("good", "good revision: Progressing/Analyzing -> Succeeded/Completed (probe + Analysis gate, "
               "window 8 s)", True, True, None, None),
)


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
        print(f"\nrollout health benchmark: Istio fleet of 3 members (canary m1), {health['rounds']} rounds")
        for case in HEALTH_CASES:
            f = health[case.name]
            back = (f"; canary back on stable p95 {f['canary_back_on_stable_p95_s']:.2f}s"
                    if "canary_back_on_stable_p95_s" in f else "")
            print(f"  {case.what}: p50 {f['p50_s']:.2f}s  p95 {f['p95_s']:.2f}s{back}")
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
