"""AccessPoint status size at fleet scale (pure, in-process, one core): what an AccessPoint placed on one
zone costs the hub and every replica when the fleet has 50, 200 or 1,000 members, with the clusters it
is not placed on listed in full (the baseline, as status.placement.rejected was written up to
2026-12-07) against the status as written now (at most REJECTED_SHOWN of them listed, the rest counted:
`PlacementDecision.shortened`).

    .venv/bin/python -m e2e.bench.status_size [--members 50,200,1000] [--zone-size 30] [--aps 2000]

Per member count, for one AccessPoint on one zone of `--zone-size` clusters, each cluster Applied:
  - bytes of the status as the hub stores it and every watch sends it (JSON);
  - bytes of Python objects the controller keeps of it (the AccessPoint body of the hub's watch event,
    `federation.members.slim`: every replica keeps every AccessPoint), and that times --aps;
  - CPU of the status part of a reconcile that changes nothing: the previous status parsed
    (`AccessPointStatus.model_validate`), `placement.select` and `accesspoint.status.summarize` run, the
    result put on the wire and compared with the previous (`wire()`), median of 60 rounds, the baseline's
    and the status's in turn.
Every figure of the status as written now is printed as a ratio to the baseline's, measured in the same
run. Target (issue 20): 1,000 members x 2,000 AccessPoints on <= 10 replicas, each under 2 GiB.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from accesspoint.models import AccessPointStatus, ClusterStatus
from accesspoint.status import summarize
from federation.members import slim
from placement.models import REJECTED_SHOWN, ClusterFacts, PlacementSpec
from placement.select import select

REVISION = "4a3d9909d7"
NOW = "2026-12-07T12:00:00Z"


def fleet(members: int, zone_size: int) -> list[ClusterFacts]:
    """`members` clusters, `zone_size` to a zone, zones spread over 4 regions."""
    return [ClusterFacts(name=f"member-{i:04d}", region=f"region-{(i // zone_size) % 4}",
                         zone=f"zone-{i // zone_size:03d}", ready=True, reachable=True) for i in range(members)]


def body_of(status: dict[str, Any]) -> dict[str, Any]:
    """The AccessPoint as the hub's watch event brings it, status included."""
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint",
            "metadata": {"name": "web", "namespace": "shop", "uid": "0d8c6a1e", "generation": 1,
                         "resourceVersion": "123456"},
            "spec": {"template": []}, "status": status}


def held_bytes(payload: str, copies: int = 50) -> float:
    """Python bytes the controller keeps per AccessPoint body decoded from `payload` (slim, as it holds it)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [slim(json.loads(payload)) for _ in range(copies)]
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return (after - before) / copies


def cpu_ms(steps: dict[str, Callable[[], object]], rounds: int = 60) -> dict[str, float]:
    """Median process CPU milliseconds of each step, the steps taken in turn round after round (so that
    whatever else the machine does weighs on each alike)."""
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(rounds):
        for label, step in steps.items():
            started = time.process_time()
            step()
            times[label].append((time.process_time() - started) * 1000)
    return {label: statistics.median(t) for label, t in times.items()}


def measure(members: int, zone_size: int, aps: int) -> dict[str, dict[str, float]]:
    facts = fleet(members, zone_size)
    spec = PlacementSpec(zones=["zone-000"])
    decision = select(spec, facts)
    entries = [ClusterStatus(name=n, state="Applied", revision=REVISION, objects=3, vip=f"10.0.0.{i % 250}")
               for i, n in enumerate(decision.names)]
    now_status = summarize(1, REVISION, decision, entries, NOW, None)
    before_status = now_status.model_copy(update={"placement": decision})  # every cluster not placed listed
    out: dict[str, dict[str, float]] = {}
    steps: dict[str, Callable[[], object]] = {}
    for label, status in (("baseline", before_status), ("now", now_status)):
        wire = status.wire()
        payload = json.dumps(body_of(wire))
        held = held_bytes(payload)

        def reconcile_status(wire: dict[str, Any] = wire, listed_in_full: bool = label == "baseline") -> object:
            previous = AccessPointStatus.model_validate(wire)
            current = select(spec, facts, previous.placement)
            fresh = summarize(1, REVISION, current, entries, NOW, previous)
            if listed_in_full:
                fresh = fresh.model_copy(update={"placement": current})
            return fresh.wire() == wire

        steps[label] = reconcile_status
        out[label] = {"status_bytes": len(json.dumps(wire)), "held_bytes": held, "held_mib_all": held * aps / 2**20,
                      "rejected_listed": len(status.placement.rejected) if status.placement else 0}
    for label, ms in cpu_ms(steps).items():
        out[label]["cpu_ms"] = ms
    return out


def main(args: argparse.Namespace) -> None:
    print(f"AccessPoint status, placed on one zone of {args.zone_size} clusters (each Applied); baseline: every "
          f"cluster not placed listed; now: at most {REJECTED_SHOWN} listed, the rest counted")
    print("| members | clusters not placed, listed | status JSON | held per AccessPoint (slim body) "
          f"| held for {args.aps:,} AccessPoints | CPU of the status part of a no-op reconcile |")
    print("|---|---|---|---|---|---|")
    for members in args.members:
        m = measure(members, args.zone_size, args.aps)
        b, n = m["baseline"], m["now"]
        print(f"| {members:,} | {b['rejected_listed']:.0f} -> {n['rejected_listed']:.0f} | "
              f"{b['status_bytes'] / 1024:.1f} -> {n['status_bytes'] / 1024:.1f} KiB "
              f"(**{n['status_bytes'] / b['status_bytes']:.2f}**) | "
              f"{b['held_bytes'] / 1024:.1f} -> {n['held_bytes'] / 1024:.1f} KiB "
              f"(**{n['held_bytes'] / b['held_bytes']:.2f}**) | "
              f"{b['held_mib_all']:.0f} -> {n['held_mib_all']:.0f} MiB per replica | "
              f"{b['cpu_ms']:.2f} -> {n['cpu_ms']:.2f} ms (**{n['cpu_ms'] / b['cpu_ms']:.2f}**) |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=lambda s: [int(x) for x in s.split(",")], default=[50, 200, 1000])
    parser.add_argument("--zone-size", type=int, default=30)
    parser.add_argument("--aps", type=int, default=2000)
    main(parser.parse_args())
