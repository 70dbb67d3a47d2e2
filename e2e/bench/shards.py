"""Many-replicas benchmark (issue 11): hub + N members (real kube-apiservers), controller replicas
sharing 32 Lease-held shards.

Prints, all measured in one run on one fleet:
  1. takeover time: kill -9 of a random replica (of 3, short Leases: 5 s / 3 s / 0.5 s) until every
     shard it held is held by another replica, p50/p95 over --kills kills (the killed replica is
     restarted and the shards rebalanced between kills);
  2. bulk propagation with 1, 2 and 3 replicas (deploy Lease defaults 15 s / 10 s / 2 s): M
     AccessPoints x 5 objects x N members, hub create -> Applied everywhere: wall time, CPU per
     replica, CPU per object (all replicas together; the 2 cores are shared by the fleet's API
     servers, the replicas and this process, so wall time does not shrink with replicas: CPU per
     object and per replica is the figure that scales);
  3. controller RSS per replica after that load, with 1 vs 2 vs 3 replicas (each replica's member
     caches hold only its shards' objects);
  4. writes during a no-op resync with 3 replicas (target 0), counted by the API servers themselves.
Each replica count runs under its own hub id (owner labels and Leases), so its caches see only its
own run's objects.

Usage: python -m e2e.bench.shards [--members 5] [--aps 500] [--kills 10]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

from e2e.bench.propagation import AppliedTracker, accesspoint, cpu_seconds, ensure_ns, pct, writes
from federation.fleet import Fleet
from federation.kube import KubeClient
from federation.testing import (
    FAST_LEASES,
    ControllerProcess,
    diff_breakdown,
    eventually,
    lease_holders,
    running_replicas,
    wait_balanced,
)

AP_PATH = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
DEFAULT_LEASES = ("--lease-duration", "15", "--renew-deadline", "10", "--retry-period", "2")


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MB."""
    cur = peak = float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            cur = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cur, peak


async def takeovers(fleet: Fleet, hub: KubeClient, kills: int) -> list[float]:
    ns = "kills"
    await ensure_ns(hub, ns)
    out: list[float] = []
    with running_replicas(fleet, 3, hub_id="bench-kill", extra=FAST_LEASES) as procs:
        await asyncio.gather(*(hub.create(AP_PATH.format(ns=ns), accesspoint(ns, f"k-{i}"), field_manager="bench")
                               for i in range(20)))
        for n in range(kills):
            await wait_balanced(hub, procs, hub_id="bench-kill", timeout=120)
            victim = random.choice(procs)
            mine = {k for k, h in (await lease_holders(hub, "bench-kill")).items() if h == victim.identity}
            dead = victim.identity
            start = time.monotonic()
            victim.kill()
            live = {p.identity for p in procs if p.alive}

            async def taken(mine: set[str] = mine, live: set[str] = live) -> bool:
                holders = await lease_holders(hub, "bench-kill")
                return all(holders.get(k) in live for k in mine)

            await eventually(taken, 60, 0.05, message=f"shards of {dead} should be taken over")
            took = time.monotonic() - start
            out.append(took)
            print(f"  kill {n + 1}/{kills}: {len(mine)} shards of {dead} taken over in {took:.2f} s", flush=True)
            victim.start()
    return out


async def bulk(fleet: Fleet, hub: KubeClient, members: dict[str, KubeClient], replicas: int, aps: int,
               resync: float) -> dict[str, object]:
    hub_id = f"bench-r{replicas}"
    ns = f"bulk-{replicas}"
    await ensure_ns(hub, ns)
    extra = (*DEFAULT_LEASES, "--probe-interval", "5", "--resync", "600")
    with running_replicas(fleet, replicas, hub_id=hub_id, extra=extra) as procs:
        await wait_balanced(hub, procs, hub_id=hub_id, timeout=120)
        tracker = AppliedTracker(hub, ns, len(members))
        tracking = asyncio.create_task(tracker.run())
        await asyncio.sleep(0.5)
        pids = [p.proc.pid for p in procs if p.proc is not None]
        cpu0 = [cpu_seconds(pid) for pid in pids]
        start = time.monotonic()
        sem = asyncio.Semaphore(16)

        async def create(i: int) -> None:
            async with sem:
                await hub.create(AP_PATH.format(ns=ns), accesspoint(ns, f"ap-{i}"), field_manager="bench")

        # Owner labels carry the hub id, so each run's AccessPoints must be created for its replicas only:
        # the other runs' replicas are stopped (and their hub ids differ).
        await asyncio.gather(*(create(i) for i in range(aps)))
        await tracker.wait_for(aps, 900)
        took = time.monotonic() - start
        tracking.cancel()
        cpu = [cpu_seconds(pid) - c for pid, c in zip(pids, cpu0, strict=True)]
        await asyncio.sleep(5)
        rss = [rss_mb(pid) for pid in pids]
        result: dict[str, object] = {"took": took, "cpu": cpu, "rss": rss}
        if replicas == 3:
            # No-op resync: restart nothing, wait for each replica's resync (started with --resync 600:
            # restart them with a short one, one at a time, then measure a quiet window).
            for p in procs:
                p.base_args += ["--resync", str(resync)]
                p.stop()
                p.start()
                await eventually(lambda p=p: _ready(p), 120, 0.5, message=f"{p.name} Ready")
            await wait_balanced(hub, procs, hub_id=hub_id, timeout=120)
            await asyncio.sleep(5)
            before = await writes(hub, members)
            await asyncio.sleep(resync + 10)
            result["noop"] = diff_breakdown(before, await writes(hub, members))
        return result


async def _ready(p: ControllerProcess) -> bool:
    return p.ready()


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="meshfed-bench-shards-"))
    fleet = Fleet(root)
    print(f"fleet: hub + {args.members} members ({root})", flush=True)
    await fleet.up(members=args.members, regions=2, zones=args.members, vip_allocator=False)
    assert fleet.state is not None
    hub = await fleet.state.hub.client()
    members = {m.name: await m.client() for m in fleet.state.members}
    try:
        print(f"takeover: {args.kills} kills of one of 3 replicas (Leases {' '.join(FAST_LEASES)}) ...", flush=True)
        kills = await takeovers(fleet, hub, args.kills)
        runs = {}
        for r in (1, 2, 3):
            print(f"bulk: {args.aps} AccessPoints x 5 objects x {args.members} members with {r} replica(s) ...",
                  flush=True)
            runs[r] = await bulk(fleet, hub, members, r, args.aps, args.resync)
            print(f"  {r} replica(s): {runs[r]['took']:.1f} s", flush=True)
        objects = args.aps * 5 * args.members
        print("\n==== shards benchmark ====")
        print(f"fleet: hub + {args.members} members; 32 shards; {args.aps} AccessPoints x 5 objects = {objects} "
              "member objects per run")
        print(f"takeover after kill -9 (Leases: duration {FAST_LEASES[1]} s, renew deadline {FAST_LEASES[3]} s, "
              f"retry {FAST_LEASES[5]} s), {len(kills)} kills: p50 {statistics.median(kills):.2f} s, "
              f"p95 {pct(kills, 95):.2f} s, max {max(kills):.2f} s")
        for r, run in runs.items():
            cpu = run["cpu"]
            rss = run["rss"]
            assert isinstance(cpu, list) and isinstance(rss, list)
            total = sum(cpu)
            print(f"{r} replica(s): bulk {run['took']:6.1f} s wall; CPU per replica "
                  f"{', '.join(f'{c:.1f}' for c in cpu)} s (total {total:.1f} s, {total / objects * 1000:.2f} ms "
                  f"per object); RSS per replica {', '.join(f'{c:.0f}' for c, _ in rss)} MB "
                  f"(peak {', '.join(f'{p:.0f}' for _, p in rss)} MB)")
        noop = runs[3].get("noop") or {}
        assert isinstance(noop, dict)
        print(f"writes during a no-op resync with 3 replicas: {sum(noop.values())} (target 0) {noop or ''}")
    finally:
        await hub.close()
        for c in members.values():
            await c.close()
        fleet.down()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--aps", type=int, default=500)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--resync", type=float, default=20.0)
    asyncio.run(main(parser.parse_args()))
