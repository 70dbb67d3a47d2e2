"""What a member's own state moving costs the controller, against a full pass measured in the same run.

A member's own state (a probe's verdict, a list of its cache, the Deployments it runs) can move only the
AccessPoints whose placement hinges on it (`PlacementDecision.hinges_on`: placed there, or kept out by its
state), those it holds objects of, and those never planned. Until this bench's commit every such change
planned every AccessPoint on every member, as a MemberCluster's change (labels, region, taints) and the
resync every 10 minutes still do: at 1,000 members a probe flipping somewhere every few seconds would
keep a replica planning all the time.

One fresh dense fleet (`fleet up --dense`, --members members in --zones zones), --aps AccessPoints of 3
objects each placed on one zone (round robin), and one more that follows a Deployment (`followWorkload`)
no member runs, so the controller watches the members' Deployments. Then, each --passes times, measured by
e2e.bench.scale.pass_cost (controller CPU less its idle CPU and the scrapes that watched; nothing may be
written):
  - baseline: a label edited on the last member's MemberCluster (no placement selects it): every
    AccessPoint planned again (`meshfed_reconcile_causes{cause="member-upsert"}`);
  - a Deployment created on the last member: `member-workloads`, which must plan again exactly the
    AccessPoints of that member's zone, no more (counted once nothing is queued and nothing was written
    for a second: the evidence that the controller looked and left the others alone).

Printed: reconciles and CPU of each, and their ratio. Usage:
  python -m e2e.bench.member_state [--members 10] [--zones 5] [--aps 500] [--passes 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path
from typing import Any

from e2e.bench.propagation import AP_PATH, ensure_ns, meshfed_bulk, until_ready
from e2e.bench.scale import (
    MC_PATH,
    MEMBER_READY_KINDS,
    WORKERS,
    accesspoint,
    idle_costs,
    idle_line,
    pass_cost,
    scrape_cpu_s,
    template,
    until_quiet,
)
from federation.gcpolicy import tune_gc
from federation.kube import KubeClient
from fleet import Fleet
from fleet.apiserver import MEMBERS_STARTED_APART
from fleet.testing import ControllerProcess, wait_status

NS = "member-state"
WORKLOADS_NS = "bench-workloads"


def deployment(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": WORKLOADS_NS},
            "spec": {"selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "app", "image": "registry.invalid/app"}]}}}}


async def settled_cause(ctl: ControllerProcess, cause: str) -> float:
    """meshfed_reconcile_causes{cause} once the controller is quiet (e2e.bench.scale.until_quiet)."""
    snap, _ = await until_quiet(ctl)
    return snap.get(f"cause_{cause}", 0.0)


async def run(n: int, zones: int, aps: int, passes: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"meshfed-member-state-{n}-"))
    fleet = Fleet(root)
    kinds = sorted({o["kind"] for o in template() if o["apiVersion"] != "v1"} | set(MEMBER_READY_KINDS))
    print(f"== fleet up --dense: {n} members in {zones} zones ({root}) ...", flush=True)
    await fleet.up(members=n, regions=2, zones=zones, vip_allocator=False, dense=True, member_crds=kinds,
                   start_interval=MEMBERS_STARTED_APART)
    assert fleet.state is not None
    hub = await fleet.state.hub.client()
    members: dict[str, KubeClient] = {m.name: await m.client() for m in fleet.state.members}
    zone_of = {m.name: m.zone for m in fleet.state.members}
    zone_names = sorted(set(zone_of.values()))
    last = sorted(members)[-1]
    ctl = ControllerProcess(fleet.state.hub.kubeconfig, root / "controller.log",
                            extra=["--workers", str(WORKERS), "--probe-interval", "5", "--resync", "6000"])
    out: dict[str, Any] = {"members": n, "zones": len(zone_names), "aps": aps}
    try:
        await ensure_ns(hub, NS)
        ctl.start()
        await until_ready(ctl)

        def on_one_zone(ns: str, name: str) -> dict[str, Any]:
            body = accesspoint(ns, name)
            body["spec"]["placement"] = {"zones": [zone_names[int(name.rsplit("-", 1)[1]) % len(zone_names)]]}
            return body

        print(f"  {aps} AccessPoints, each on one zone ({n // len(zone_names)} members) ...", flush=True)
        took = await meshfed_bulk(hub, NS, aps, WORKERS, n // len(zone_names), build=on_one_zone, prefix="ap-",
                                  timeout=1800)
        print(f"    all Applied in {took:.1f} s", flush=True)
        follower = {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint",
                    "metadata": {"name": "follower", "namespace": NS},
                    "spec": {"template": template(),
                             "placement": {"zones": [zone_of[sorted(members)[0]]],
                                           "followWorkload": {"namespace": WORKLOADS_NS, "name": "checkout"}}}}
        await hub.create(AP_PATH.format(ns=NS), follower, field_manager="bench")
        await wait_status(hub, f"{AP_PATH.format(ns=NS)}/follower", lambda s: s.get("observedGeneration") == 1
                          and bool((s.get("placement") or {}).get("rejected")), timeout=120)
        await ensure_ns(members[last], WORKLOADS_NS)
        total = aps + 1
        in_zone = sum(1 for i in range(aps) if zone_names[i % len(zone_names)] == zone_of[last]) + \
            (1 if zone_of[last] == zone_of[sorted(members)[0]] else 0)
        idle = await idle_costs(fleet, ctl, members)
        print("    " + idle_line("idle, loaded", idle), flush=True)
        idle_cores = idle["controller_cores"]
        scrape_s = await scrape_cpu_s(ctl)

        full, scoped = [], []
        for i in range(passes):
            async def touch(i: int = i) -> None:
                await hub.merge_patch(MC_PATH.format(name=last),
                                      {"metadata": {"labels": {"bench.meshfed.io/pass": str(i)}}})

            full.append(await pass_cost(ctl, members, touch, "member-upsert", total, idle_cores, scrape_s))
            print(f"    full pass {i + 1}: {full[-1]['reconciles']:.0f} reconciles, controller CPU "
                  f"{full[-1]['cpu_s']:.2f} s in {full[-1]['wall_s']:.1f} s", flush=True)

            async def deploy(i: int = i) -> None:
                await members[last].create(f"/apis/apps/v1/namespaces/{WORKLOADS_NS}/deployments",
                                           deployment(f"w-{i}"), field_manager="bench")

            before = await settled_cause(ctl, "member-workloads")
            scoped.append(await pass_cost(ctl, members, deploy, "member-workloads", in_zone, idle_cores, scrape_s))
            asked = await settled_cause(ctl, "member-workloads") - before
            scoped[-1]["asked"] = asked
            print(f"    a Deployment on {last} ({zone_of[last]}): {asked:.0f} reconciles asked for "
                  f"(expected {in_zone} of {total}), controller CPU {scoped[-1]['cpu_s']:.2f} s in "
                  f"{scoped[-1]['wall_s']:.1f} s", flush=True)
            if asked != in_zone:
                raise SystemExit(f"a member's own state planned {asked:.0f} AccessPoints again, not the "
                                 f"{in_zone} of its zone")
        # The bench's own Deployment creates are the members' only writes allowed (the trigger).
        writes = sum(sum(p["hub_writes"].values()) + sum(v for k, v in p["member_writes"].items()
                                                        if not k.endswith(" deployments")) for p in full + scoped)
        full_cpu = statistics.median(p["cpu_s"] for p in full)
        scoped_cpu = statistics.median(p["cpu_s"] for p in scoped)
        out.update(full_reconciles=total, full_cpu_s=full_cpu, scoped_reconciles=in_zone, scoped_cpu_s=scoped_cpu,
                   writes=writes)
        print(f"\n| change | AccessPoints planned again | controller CPU (median of {passes}) | ratio |\n"
              "|---|---|---|---|\n"
              f"| a MemberCluster's label (baseline: every AccessPoint) | {total} | {full_cpu:.2f} s | 1.00 |\n"
              f"| a member's own state (a Deployment there) | {in_zone} | {scoped_cpu:.2f} s | "
              f"**{scoped_cpu / full_cpu if full_cpu else float('nan'):.2f}** |\n"
              f"writes meanwhile: {writes or 'none'}", flush=True)
        return out
    finally:
        ctl.stop()
        await hub.close()
        for c in members.values():
            await c.close()
        fleet.down(purge=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--zones", type=int, default=5)
    parser.add_argument("--aps", type=int, default=500)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    tune_gc()
    asyncio.run(run(args.members, args.zones, args.aps, args.passes))


if __name__ == "__main__":
    main()
