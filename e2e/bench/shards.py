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
  3. controller RSS per replica after that load, with 1 vs 2 vs 3 replicas, and the member objects
     each replica caches (its /metrics: only its shards' objects);
  4. writes during a rolling restart of the 3 replicas and during a no-op resync afterwards (target
     0 for both), counted by the API servers themselves.
Every figure of 2 and 3 is also given as a ratio against the 1-replica run of the same invocation.
Each replica count runs under its own hub id (owner labels and Leases) and in its own namespace, and
its AccessPoints are deleted (by its replicas, so the members are cleaned too) before the next run:
every run's replicas see the same hub load. With --capture DIR, the 3-replica run also writes what
`kubectl get leases`, `kubectl meshfed shards` and each replica's /metrics showed (README examples).

Usage: python -m e2e.bench.shards [--members 5] [--aps 500] [--kills 10] [--capture DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from e2e.bench.propagation import cpu_seconds, create_accesspoints, ensure_ns, meshfed_bulk, pct, settle, writes
from e2e.bench.propagation import template as propagation_template
from federation.kube import KubeClient
from fleet import REPO, Fleet
from fleet.testing import (
    FAST_LEASES,
    ControllerProcess,
    delete_accesspoints,
    diff_breakdown,
    eventually,
    lease_holders,
    metric_value,
    running_replicas,
    wait_balanced,
)

AP_PATH = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
DEFAULT_LEASES = ("--lease-duration", "15", "--renew-deadline", "10", "--retry-period", "2")
OBJECTS_PER_AP = 5


def accesspoint(ns: str, name: str) -> dict[str, Any]:
    """The propagation benchmark's AccessPoint, its hosts made unique per namespace (tenancy: a host
    belongs to the first namespace that claims it, and every run has its own namespace)."""
    template = [_namespaced_hosts(obj) for obj in propagation_template()]
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": name, "namespace": ns},
            "spec": {"template": template, "rollout": {"waves": [{"name": "all"}]}}}


def _namespaced_hosts(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(".bench.example", ".${namespace}.bench.example").replace(
            ".ext.example", ".${namespace}.ext.example")
    if isinstance(value, list):
        return [_namespaced_hosts(v) for v in value]
    if isinstance(value, dict):
        return {k: _namespaced_hosts(v) for k, v in value.items()}
    return value


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MB."""
    cur = peak = float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            cur = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cur, peak


def pids(procs: list[ControllerProcess]) -> list[int]:
    out = []
    for p in procs:
        assert p.proc is not None and p.proc.poll() is None, f"{p.name} is not running:\n{p.log_tail()}"
        out.append(p.proc.pid)
    return out


async def takeovers(fleet: Fleet, hub: KubeClient, kills: int) -> list[float]:
    ns = "kills"
    await ensure_ns(hub, ns)
    out: list[float] = []
    with running_replicas(fleet, 3, hub_id="bench-kill", extra=FAST_LEASES) as procs:
        try:
            await create_accesspoints(hub, ns, 20, 16, build=accesspoint, prefix="k-")
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
            await wait_balanced(hub, procs, hub_id="bench-kill", timeout=120)
            await delete_accesspoints(hub, ns, timeout=120, strict=True)
        except BaseException:
            for p in procs:
                print(f"---- {p.name} log (tail) ----\n{p.log_tail(3000)}")
            raise
    return out


def capture(fleet: Fleet, procs: list[ControllerProcess], hub_id: str, into: Path) -> None:
    """What a user sees of a running 3-replica fleet: kubectl get leases, kubectl meshfed shards, /metrics."""
    assert fleet.state is not None
    into.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KUBECONFIG": str(fleet.state.hub.kubeconfig)}
    leases = subprocess.run(["kubectl", "get", "leases", "-n", "meshfed-system", "-l", f"meshfed.io/lease-of={hub_id}"],
                            capture_output=True, text=True, env=env, check=False)
    (into / "leases.txt").write_text(leases.stdout + leases.stderr)
    shards = subprocess.run([sys.executable, "-m", "cli.kubectl", "shards", "--hub-id", hub_id,
                             "--kubeconfig", str(fleet.state.hub.kubeconfig)],
                            capture_output=True, text=True, cwd=REPO, check=False)
    (into / "shards.txt").write_text(shards.stdout + shards.stderr)
    for p in procs:
        (into / f"metrics-{p.name}.txt").write_text(p.http("/metrics")[1])
    print(f"  captured kubectl get leases, kubectl meshfed shards and /metrics into {into}", flush=True)


async def bulk(fleet: Fleet, hub: KubeClient, members: dict[str, KubeClient], replicas: int, aps: int,
               resync: float, capture_into: Path | None) -> dict[str, Any]:
    assert fleet.state is not None
    hub_id = f"bench-r{replicas}"
    ns = f"bulk-{replicas}"
    await ensure_ns(hub, ns)
    extra = (*DEFAULT_LEASES, "--probe-interval", "5", "--resync", "600")
    apiservers = [fleet.state.hub.pid, *(m.pid for m in fleet.state.members)]
    with running_replicas(fleet, replicas, hub_id=hub_id, extra=extra) as procs:
        try:
            await wait_balanced(hub, procs, hub_id=hub_id, timeout=120)
            cpu0: dict[str, list[float]] = {}

            async def count_from_here() -> None:
                cpu0["replicas"] = [cpu_seconds(pid) for pid in pids(procs)]
                cpu0["apiservers"] = [cpu_seconds(pid) for pid in apiservers]

            took = await meshfed_bulk(hub, ns, aps, 16, len(members), build=accesspoint, prefix="ap-",
                                      at_start=count_from_here)
            cpu = [cpu_seconds(pid) - c for pid, c in zip(pids(procs), cpu0["replicas"], strict=True)]
            api_cpu = sum(cpu_seconds(pid) for pid in apiservers) - sum(cpu0["apiservers"])
            settled = await settle(hub, members)
            rss = [rss_mb(pid) for pid in pids(procs)]
            cached = [metric_value(p.http("/metrics")[1], "meshfed_member_cache_objects") for p in procs]
            result: dict[str, Any] = {"took": took, "cpu": cpu, "api_cpu": api_cpu, "rss": rss, "cached": cached,
                                      "settled": settled}
            if replicas == 3:
                if capture_into is not None:
                    capture(fleet, procs, hub_id, capture_into)
                # A rolling restart with nothing changed (each replica restarted with a short resync,
                # one at a time, as a RollingUpdate does), then a quiet window holding a resync of each.
                before = await writes(hub, members)
                for p in procs:
                    p.base_args += ["--resync", str(resync)]
                    p.stop()
                    p.start()
                    await eventually(functools.partial(_ready, p), 120, 0.5, message=f"{p.name} Ready")
                    await wait_balanced(hub, procs, hub_id=hub_id, timeout=120)
                await asyncio.sleep(5)
                result["restart"] = diff_breakdown(before, await writes(hub, members))
                before = await writes(hub, members)
                await asyncio.sleep(resync + 10)
                result["noop"] = diff_breakdown(before, await writes(hub, members))
                result["resyncs"] = sum(metric_value(p.http("/metrics")[1], "meshfed_reconciles_total",
                                                     kind="accesspoint") for p in procs)
            # Clean up with the replicas still running (their finalizers delete the member objects), so
            # the next run's replicas see only their own AccessPoints on the hub (the last run's go with
            # the fleet).
            cleanup = time.monotonic()
            if replicas < 3:
                await delete_accesspoints(hub, ns, timeout=600, strict=True)
            result["cleanup"] = time.monotonic() - cleanup
            return result
        except BaseException:
            for p in procs:
                print(f"---- {p.name} log (tail) ----\n{p.log_tail(3000)}")
            raise


async def _ready(p: ControllerProcess) -> bool:
    return p.ready()


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def report(args: argparse.Namespace, kills: list[float], runs: dict[int, dict[str, Any]]) -> None:
    objects = args.aps * OBJECTS_PER_AP * args.members
    print("\n==== shards benchmark ====")
    print(f"fleet: hub + {args.members} members (real kube-apiservers on one 2-core machine, shared); 32 shards; "
          f"{args.aps} AccessPoints x {OBJECTS_PER_AP} objects x {args.members} members = {objects} member objects "
          "per run")
    if kills:
        print(f"takeover after kill -9 of a replica of 3 (Leases: duration {FAST_LEASES[1]} s, renew deadline "
              f"{FAST_LEASES[3]} s, retry {FAST_LEASES[5]} s), {len(kills)} kills: p50 {statistics.median(kills):.2f}"
              f" s, p95 {pct(kills, 95):.2f} s, max {max(kills):.2f} s (all: {', '.join(f'{k:.2f}' for k in kills)})")
    base = runs[1]
    base_total = sum(base["cpu"])
    base_rss = base["rss"][0][0]
    base_cached = base["cached"][0]
    header = ("replicas", "bulk wall s", "vs 1", "CPU per replica s", "busiest vs 1", "CPU all replicas s", "vs 1",
              "ms CPU/object", "API servers CPU s", "RSS per replica MB (peak)", "mean RSS vs 1",
              "member objects cached per replica", "mean vs 1")
    rows = [header]
    for r, run in sorted(runs.items()):
        cpu, rss, cached = run["cpu"], run["rss"], run["cached"]
        total = sum(cpu)
        mean_rss = statistics.mean(c for c, _ in rss)
        rows.append((
            str(r), f"{run['took']:.1f}", ratio(run["took"], base["took"]),
            " / ".join(f"{c:.1f}" for c in cpu), ratio(max(cpu), base_total),
            f"{total:.1f}", ratio(total, base_total), f"{total / objects * 1000:.2f}", f"{run['api_cpu']:.1f}",
            " / ".join(f"{c:.0f} ({p:.0f})" for c, p in rss), ratio(mean_rss, base_rss),
            " / ".join(f"{c:.0f}" for c in cached), ratio(statistics.mean(cached), base_cached)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
    three = runs[3]
    restart, noop = three.get("restart") or {}, three.get("noop") or {}
    print(f"writes during a rolling restart of the 3 replicas (nothing changed): {sum(restart.values())} "
          f"(target 0) {restart or ''}")
    print(f"writes during a no-op resync with 3 replicas ({args.resync + 10:.0f} s window, resync every "
          f"{args.resync:.0f} s; {three.get('resyncs', 0):.0f} AccessPoint reconciles counted by the replicas since "
          f"their restart): {sum(noop.values())} (target 0) {noop or ''}")
    print("settling after Applied (s): " + ", ".join(f"{r}: {run['settled']:.0f}" for r, run in sorted(runs.items()))
          + "; clean-up before the next run (s): "
          + ", ".join(f"{r}: {run['cleanup']:.0f}" for r, run in sorted(runs.items()) if r < 3))


async def main(args: argparse.Namespace) -> None:
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="meshfed-bench-shards-"))
    fleet = Fleet(root)
    print(f"fleet: hub + {args.members} members ({root})", flush=True)
    await fleet.up(members=args.members, regions=2, zones=args.members, vip_allocator=False)
    assert fleet.state is not None
    hub = await fleet.state.hub.client()
    members = {m.name: await m.client() for m in fleet.state.members}
    try:
        print(f"takeover: {args.kills} kills of one of 3 replicas (Leases {' '.join(FAST_LEASES)}) ...", flush=True)
        kills = await takeovers(fleet, hub, args.kills) if args.kills else []
        if args.takeover_only:
            print(f"takeover p50 {statistics.median(kills):.2f} s, p95 {pct(kills, 95):.2f} s, max {max(kills):.2f} s")
            return
        runs = {}
        for r in (1, 2, 3):
            print(f"bulk: {args.aps} AccessPoints x {OBJECTS_PER_AP} objects x {args.members} members with {r} "
                  "replica(s) ...", flush=True)
            runs[r] = await bulk(fleet, hub, members, r, args.aps, args.resync, args.capture)
            print(f"  {r} replica(s): {runs[r]['took']:.1f} s, CPU {sum(runs[r]['cpu']):.1f} s", flush=True)
        report(args, kills, runs)
        print(f"bench wall time: {time.monotonic() - started:.0f} s")
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
    parser.add_argument("--takeover-only", action="store_true", help="only the kills (no bulk runs)")
    parser.add_argument("--capture", type=Path, default=None,
                        help="write kubectl get leases / kubectl meshfed shards / /metrics of the 3-replica run here")
    asyncio.run(main(parser.parse_args()))
