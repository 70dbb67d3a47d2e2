"""What the members themselves pay for one edit's fan-out, with and without the dense members' tuning.

The scale bench's 50-member edits (one hub edit -> the VirtualService changed on every member) run on a
machine whose 2 cores 50 member API servers share: an edit's last member waits for the members' CPU. This
bench leaves meshfed out and measures the members alone: N dense members (`fleet up --dense`, the scale
bench's 5 Istio CRDs) with `--objects` VirtualServices each; then `--edits` times the same VirtualService
server-side applied on every member at once (as meshfed's lanes send an edit), each after the last.

Per fleet: the members' idle CPU (millicores each), the fan-out's p50/p99 (first write sent -> last member
answered) and the members' CPU per write beyond idle. Two fleets in the same run: the baseline with Go's
default GOMAXPROCS (one scheduler per core), the other as `fleet up --dense` starts members
(fleet.apiserver.DENSE_GOMAXPROCS); printed as ratios. `--rounds 2` runs the pair again in the other order.

    python -m e2e.bench.fanout [--members 50] [--objects 200] [--edits 60] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest.mock import patch

from accesspoint.models import AccessPoint
from accesspoint.render import render
from e2e.bench.propagation import cpu_seconds, ensure_ns, pct
from e2e.bench.scale import MEMBER_READY_KINDS, accesspoint
from federation.gcpolicy import tune_gc
from federation.kube import KubeClient
from fleet import Fleet
from fleet.apiserver import DENSE_GOMAXPROCS
from placement.models import ClusterFacts

NS = "fanout"
VS_PATH = f"/apis/networking.istio.io/v1/namespaces/{NS}/virtualservices"
IDLE_WINDOW = 10.0  # seconds
SETTLE = 20.0  # seconds after the objects are written, before anything is measured
WORKERS = 16


def virtualservice(name: str, tag: str, member: str) -> dict[str, Any]:
    """The scale bench's VirtualService as meshfed renders it for `member` (accesspoint.render)."""
    ap = AccessPoint.model_validate(accesspoint(NS, name, tag))
    facts = ClusterFacts(name=member, region="r1", zone=member, ready=True, reachable=True)
    return next(o for o in render(ap, facts, "bench-fanout-hub").objects if o["kind"] == "VirtualService")


async def one_fleet(members: int, objects: int, edits: int, gomaxprocs: str | None) -> dict[str, float]:
    """A fresh dense fleet with GOMAXPROCS `gomaxprocs` (None: as the fleet starts dense members); its figures."""
    fleet = Fleet(Path(tempfile.mkdtemp(prefix="meshfed-fanout-")))
    clients: dict[str, KubeClient] = {}
    try:
        with patch.dict(os.environ):  # the members inherit it; restored after
            os.environ.pop("GOMAXPROCS", None)
            if gomaxprocs is not None:
                os.environ["GOMAXPROCS"] = gomaxprocs
            await fleet.up(members=members, regions=1, zones=members, vip_allocator=False, dense=True,
                           member_crds=MEMBER_READY_KINDS, start_interval=2.0)
        assert fleet.state is not None
        procs = fleet.state.members
        clients.update({m.name: await m.client() for m in procs})
        for client in clients.values():
            await ensure_ns(client, NS)
        sem = asyncio.Semaphore(WORKERS)

        async def write(member: str, i: int) -> None:
            async with sem:
                await clients[member].apply(f"{VS_PATH}/vs-{i}", virtualservice(f"vs-{i}", "v0", member),
                                            field_manager="meshfed")

        await asyncio.gather(*(write(m, i) for m in clients for i in range(objects)))
        await asyncio.sleep(SETTLE)

        def members_cpu() -> float:
            return sum(cpu_seconds(p.pid) for p in procs)

        before = members_cpu()
        await asyncio.sleep(IDLE_WINDOW)
        idle = (members_cpu() - before) / IDLE_WINDOW  # cores
        took: list[float] = []
        per_write: list[float] = []
        for k in range(edits):
            name = f"vs-{(k * 7) % objects}"
            bodies = {m: virtualservice(name, f"e{k}", m) for m in clients}  # rendered before the clock starts
            before, started = members_cpu(), time.monotonic()
            await asyncio.gather(*(c.apply(f"{VS_PATH}/{name}", bodies[m], field_manager="meshfed")
                                   for m, c in clients.items()))
            wall = time.monotonic() - started
            took.append(wall)
            per_write.append((members_cpu() - before - idle * wall) / members)
            await asyncio.sleep(0.3)
        return {"idle_millicores": idle * 1000 / members, "write_ms": statistics.median(per_write) * 1000,
                "p50_ms": statistics.median(took) * 1000, "p99_ms": pct(took, 99) * 1000}
    finally:
        for client in clients.values():
            await client.close()
        fleet.down()


def line(name: str, r: dict[str, float]) -> str:
    return (f"{name:34s} idle {r['idle_millicores']:5.1f} millicores a member, {r['write_ms']:4.1f} ms of member "
            f"CPU a write, fan-out p50 {r['p50_ms']:4.0f} ms, p99 {r['p99_ms']:4.0f} ms")


async def main(args: argparse.Namespace) -> None:
    default = str(os.cpu_count() or 1)  # Go's own default: one scheduler per core
    configs = {f"baseline (GOMAXPROCS={default}, Go's default)": default,
               f"dense (GOMAXPROCS={os.environ.get('GOMAXPROCS', DENSE_GOMAXPROCS)})": None}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    for round_ in range(args.rounds):
        order = list(configs) if round_ % 2 == 0 else list(reversed(configs))
        for name in order:
            print(f"round {round_ + 1}/{args.rounds}: {name}, {args.members} dense members x {args.objects} "
                  f"VirtualServices ...", flush=True)
            results[name].append(await one_fleet(args.members, args.objects, args.edits, configs[name]))
            print("  " + line(name, results[name][-1]), flush=True)
    base, tuned = (results[name] for name in configs)

    def ratio(key: str) -> str:  # geometric mean over the rounds
        pairs = list(zip(base, tuned, strict=True))
        if any(b[key] <= 0 or t[key] <= 0 for b, t in pairs):  # a CPU within idle's scatter (a small fleet)
            return "- (a figure at or below 0)"
        return f"{math.exp(statistics.fmean(math.log(t[key] / b[key]) for b, t in pairs)):.2f}x"

    print(f"\n==== fan-out of one edit to {args.members} dense members ({args.edits} edits, {args.rounds} "
          "round(s)) ====")
    for name, runs in results.items():
        for r in runs:
            print(line(name, r))
    print("dense / baseline: " + ", ".join(f"{label} {ratio(key)}" for label, key in
                                           (("idle", "idle_millicores"), ("CPU a write", "write_ms"),
                                            ("p50", "p50_ms"), ("p99", "p99_ms"))))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--edits", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=1)
    tune_gc()
    asyncio.run(main(parser.parse_args()))
