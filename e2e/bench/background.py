"""Background benchmark: what meshfed's periodic work costs each member API server when nothing changes.

One fleet as the scale bench's (hub + N dense members: no watch cache), 200 AccessPoints x 3 objects on
every member, and beside meshfed's copies as many objects of the same kinds written by someone else (the
scale bench's direct-SSA baseline, left in place): a member holds 400 objects of each kind. Then, with
nothing written, the member API servers' CPU over the same window for:
  1. no controller: the API servers' own loops (the baseline of the ratios);
  2. the controller as it runs by default (a probe every 5 s, a cache verification every 10 minutes);
  3. the controller with the cache verification every 60 s (the default until 2026-12-06).
For each: millicores per member, the ratio to the baseline, and the requests the members served per
minute (by verb and resource), LISTs of populated kinds counted apart. The verification's rounds come
at random points of their period, so a window sees its average cost, counted by its LISTs.
A LIST's own cost is also measured: one metadata-only LIST of a kind with 400 objects (200 of ours).

Usage: python -m e2e.bench.background [--members 10] [--aps 200] [--window 180] [--normal]
  --normal: members with their watch cache (as production API servers run) instead of dense ones.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from accesspoint.ownership import HUB
from e2e.bench.propagation import (
    CpuMeter,
    all_requests,
    baseline,
    cpu_seconds,
    ensure_ns,
    meshfed_bulk,
    until_ready,
)
from e2e.bench.scale import MEMBER_READY_KINDS, WORKERS, accesspoint, template
from federation.gcpolicy import tune_gc
from federation.kube import KubeClient
from federation.members import VERIFY_INTERVAL
from fleet import Fleet
from fleet.apiserver import MEMBERS_STARTED_APART
from fleet.testing import ControllerProcess, diff_breakdown

POPULATED = ("LIST services", "LIST virtualservices", "LIST destinationrules")
SETTLE = 15.0  # seconds after a (re)started controller is ready: its cold-start lists are not the background


async def window(fleet: Fleet, ctl: ControllerProcess, members: dict[str, KubeClient],
                 seconds: float) -> dict[str, Any]:
    """The member API servers' CPU (millicores each) and requests per minute each over `seconds`."""
    meter = CpuMeter(fleet, ctl)
    requests0, cpu0 = await all_requests(members), meter.sample()
    await asyncio.sleep(seconds)
    members_s = meter.sample()[2] - cpu0[2]
    by_kind = {k: v for k, v in diff_breakdown(requests0, await all_requests(members)).items()
               if not k.endswith(" /metrics")}
    n = len(members)
    return {"millicores": members_s * 1000 / seconds / n,
            "per_min": {k: v * 60 / seconds / n for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "populated_lists": sum(by_kind.get(k, 0) for k in POPULATED)}


async def list_cost(client: KubeClient, pid: int, repeats: int = 20) -> float:
    """Member CPU of one metadata-only LIST of VirtualServices with meshfed's label selector, ms."""
    selector = f"{HUB}=meshfed-hub"
    start = cpu_seconds(pid)
    for _ in range(repeats):
        await client.list("/apis/networking.istio.io/v1/virtualservices", label_selector=selector,
                          metadata_only=True)
    return (cpu_seconds(pid) - start) * 1000 / repeats


def line(name: str, w: dict[str, Any], base: dict[str, Any] | None) -> str:
    ratio = f"{w['millicores'] / base['millicores']:.2f}x" if base else "baseline"
    top = ", ".join(f"{k} {v:.1f}" for k, v in list(w["per_min"].items())[:6])
    return (f"{name:<44} {w['millicores']:6.1f} millicores each ({ratio}); "
            f"LISTs of populated kinds {w['populated_lists']}; per member per minute: {top}")


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="meshfed-background-"))
    fleet = Fleet(root)
    kinds = sorted({o["kind"] for o in template() if o["apiVersion"] != "v1"} | set(MEMBER_READY_KINDS))
    dense = not args.normal
    print(f"fleet: hub + {args.members} {'dense ' if dense else ''}members ({root}) ...", flush=True)
    try:
        await fleet.up(members=args.members, regions=2, zones=min(args.members, 10), vip_allocator=False,
                       dense=dense, member_crds=kinds, start_interval=MEMBERS_STARTED_APART)
    except BaseException:
        fleet.down(purge=True)
        raise
    assert fleet.state is not None
    hub = await fleet.state.hub.client()
    members = {m.name: await m.client() for m in fleet.state.members}
    ctl = ControllerProcess(fleet.state.hub.kubeconfig, root / "controller.log",
                            extra=["--workers", str(WORKERS), "--probe-interval", "5"])
    try:
        print(f"someone else's objects: {args.aps} x 3 on every member (direct SSA) ...", flush=True)
        await baseline(fleet, members, args.aps, WORKERS, build=accesspoint)
        ns = "background"
        await ensure_ns(hub, ns)
        ctl.start()
        await until_ready(ctl)
        print(f"meshfed's objects: {args.aps} AccessPoints x 3 objects on every member ...", flush=True)
        await meshfed_bulk(hub, ns, args.aps, WORKERS, args.members, build=accesspoint, prefix="ap-")
        first = fleet.state.members[0]
        cost_ms = await list_cost(members[first.name], first.pid)

        results: list[tuple[str, dict[str, Any]]] = []
        ctl.stop()
        await asyncio.sleep(SETTLE)
        print(f"window 1/3: no controller, {args.window:.0f} s ...", flush=True)
        results.append(("no controller", await window(fleet, ctl, members, args.window)))
        default_args = list(ctl.base_args)
        for label, extra in ((f"meshfed, verification every {VERIFY_INTERVAL:.0f} s (default)", []),
                             ("meshfed, verification every 60 s (before)", ["--verify-interval", "60"])):
            ctl.base_args = default_args + extra
            ctl.start()
            await until_ready(ctl)
            await asyncio.sleep(SETTLE)
            print(f"window {len(results) + 1}/3: {label}, {args.window:.0f} s ...", flush=True)
            results.append((label, await window(fleet, ctl, members, args.window)))
            ctl.stop()

        base = results[0][1]
        print("\n==== background benchmark ====")
        print(f"hub + {args.members} {'dense members (no watch cache)' if dense else 'members (watch cache on)'}, "
              f"each holding {args.aps} objects of ours and {args.aps} of someone else's per kind "
              f"(Service, VirtualService, DestinationRule); nothing written; windows of {args.window:.0f} s")
        print(f"one metadata-only LIST of the {2 * args.aps} VirtualServices (ours selected) costs the member "
              f"{cost_ms:.1f} ms of CPU")
        for name, w in results:
            print(line(name, w, None if w is base else base))
        for name, w in results[1:]:
            print(f"  meshfed's periodic work per member, {name}: {w['millicores'] - base['millicores']:.1f} "
                  f"millicores")
    except BaseException:
        print("---- controller log (tail) ----\n" + ctl.log_tail(4000))
        raise
    finally:
        ctl.stop()
        await hub.close()
        for c in members.values():
            await c.close()
        fleet.down()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--aps", type=int, default=200)
    parser.add_argument("--window", type=float, default=180.0)
    parser.add_argument("--normal", action="store_true")
    tune_gc()
    started = time.monotonic()
    asyncio.run(main(parser.parse_args()))
    print(f"({time.monotonic() - started:.0f} s)")
