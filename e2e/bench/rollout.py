"""Rollout benchmark on the local fleet: approval -> next wave applied, abort -> back on stable.

    .venv/bin/python e2e/bench/rollout.py [--members 9] [--rounds 10] [--json]

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
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
