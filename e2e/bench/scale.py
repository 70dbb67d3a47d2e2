"""Scale benchmark: hub + 10, 25 and 50 members (real kube-apiservers tuned for density), AccessPoints of
3 objects placed on every member; then a cost model fitted to the smaller runs, checked against the
largest, and projected to 200 and 1,000 members x 2,000 AccessPoints on 1, 3 and 10 replicas.

Per run, on one fresh fleet (`fleet up --dense`), all measured in the same run:
  - fleet: seconds until every API server answered, RSS per member API server;
  - cold start: controller start -> /readyz (every member probed and its caches listed), idle RSS;
  - watches and connections per member: the members' own apiserver_longrunning_requests{verb="WATCH"}
    and the controller's TCP connections to them;
  - baseline: direct server-side apply of the same rendered objects to the same members (16 AccessPoints
    in flight, each writing to every member in parallel); meshfed: hub create -> every AccessPoint
    Applied on every member; the ratio baseline/meshfed (target >= 0.8); at the end the pair again the
    other way round (meshfed first, into fresh namespaces) and the ratio over both orders (each bulk
    leaves the members fuller: the second of a pair pays for it);
  - controller CPU per member object during the bulk, RSS per member and per cached member object (3 s
    after the bulk, and settled: after the idle window, the bulk's pooled connections closed), and the
    member caches' own bytes per object (the controller's /debug/caches: records, keys and indexes,
    parts shared between members counted once);
  - hub writes per member object during the bulk, by kind (the controller's meshfed_hub_writes; target
    <= 0.1), and the hub API server's own count of mutating requests;
  - an idle fleet for 20 s, empty (after the cold start) and loaded (after the bulk): CPU of the
    controller and of the hub's and members' API servers, requests per member per minute (probes,
    watches, the API servers' own loops), load average: the background every edit competes with;
  - one hub edit -> the VirtualService changed on every member, p50/p99 over --samples edits (target
    p99 <= 1 s; Karmada's 100-cluster p99 1,298 ms), and from the hub's answer to the patch (the edit
    committed) to the last member: what the controller and members add; for the slowest edits, when
    the hub answered the patch, the first, median and last member, and the controller's queue waits,
    reconciles, GC pauses and event-loop lag meanwhile;
  - a staged rollout over 10 zone waves (no gates: each wave starts when the last is healthy), wall time;
  - a full pass (a MemberCluster's label edited: every AccessPoint rendered and planned again with nothing
    to write, as a resync or a member's change asks for), 3 times: controller CPU per AccessPoint (idle
    and the bench's scrapes taken off) and the writes meanwhile (none); then --aps AccessPoints placed
    on one member, each edited once: what a member an AccessPoint is not on costs a pass. The cost
    model projects a pass from them (CPU per replica, 1,000 members x 2,000 AccessPoints).

Usage: python -m e2e.bench.scale [--members 10,25,50] [--aps 200] [--samples 50] [--json FILE]
With PYTHONTRACEMALLOC=1 in the environment the controller traces its allocations (slower) and the
bench prints its /debug/memory after each bulk.
It needs about 330 MiB per member (50 members: 17 GiB) and takes about 45 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from accesspoint.kinds import ISTIO_NET, MANAGED_KINDS
from e2e.bench.costmodel import CONNECTION_KIB, PoolShare, Run, check, check_pass, fit, project
from e2e.bench.propagation import (
    AP_PATH,
    WRITE_VERBS,
    CpuMeter,
    EditTrace,
    all_requests,
    balanced_ratio,
    baseline,
    cpu_seconds,
    ensure_ns,
    latency,
    meshfed_bulk,
    pct,
    rss_mib,
    until_ready,
)
from federation.gcpolicy import tune_gc
from federation.kube import (
    MEMBER_CONNECTIONS,
    MEMBER_REQUEST_BUDGET,
    MEMBER_REQUESTS_MIN,
    ApiError,
    Deadlines,
    KubeClient,
    member_request_slots,
)
from federation.members import ISTIO_RESOURCES
from fleet import Fleet
from fleet.apiserver import MEMBERS_STARTED_APART
from fleet.testing import ControllerProcess, diff_breakdown, open_watches, request_breakdown

OBJECTS_PER_AP = 3
ZONE_WAVES = 10
ZONE_SPREAD = 30  # the projection's other placement: each AccessPoint on one zone of ~30 clusters
WORKERS = 16
# The bench's own member clients (the direct SSA, the reads that watch meshfed's progress): kubectl
# apply waits for its answer without a deadline. With 30 s (the clients' default) the 50-member direct
# SSA, 16 AccessPoints x 150 applies in flight on 2 cores, got no answer from a member within 30 s twice
# on 2026-12-06 and the bench stopped with no figure. Not a retry: each apply is still sent once, a late
# answer counts in the baseline's time, and the slowest apply is printed beside it.
BENCH_MEMBER_DEADLINES = Deadlines(connect=30.0, first_byte=180.0, total=180.0)


def template(tag: str = "v0") -> list[dict[str, Any]]:
    host = "${name}.${region}.scale.example"
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "${name}"},
         "spec": {"selector": {"app": "${name}"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "${name}"},
         "spec": {"hosts": [host], "gateways": ["mesh"],
                  "http": [{"route": [{"destination": {"host": "${name}.svc.cluster.local"}}],
                            "headers": {"response": {"set": {"x-tag": tag, "x-cluster": "${cluster}"}}}}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "${name}"},
         "spec": {"host": "${name}.svc.cluster.local"}},
    ]


def accesspoint(ns: str, name: str, tag: str = "v0", waves: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": name, "namespace": ns},
            "spec": {"template": template(tag), "rollout": {"waves": waves or [{"name": "all"}]}}}


def connections_to(pid: int, ports: set[int]) -> int:
    """Established TCP connections of process `pid` to 127.0.0.1 on any of `ports`."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in lines:
            cols = row.split()
            remote_port = int(cols[2].rsplit(":", 1)[1], 16)
            if cols[3] == "01" and cols[9] in inodes and remote_port in ports:
                count += 1
    return count


async def watches(client: KubeClient) -> int:
    """WATCH requests the API server is serving now."""
    return sum((await open_watches(client)).values())


async def controller_metrics(ctl: ControllerProcess, *names: str) -> dict[str, dict[str, float]]:
    """Metrics of one scrape of the controller's /metrics: by name, by label set."""
    code, text = await asyncio.to_thread(ctl.http, "/metrics")
    assert code == 200, text[:200]
    out: dict[str, dict[str, float]] = {name: {} for name in names}
    for line in text.splitlines():
        for name in names:
            if line.startswith(name + "{") or line.startswith(name + " "):
                labels, value = line[len(name):].rsplit(" ", 1)
                out[name][labels] = float(value)
    return out


async def controller_metric(ctl: ControllerProcess, name: str) -> dict[str, float]:
    """One metric of the controller's /metrics, by its label set."""
    return (await controller_metrics(ctl, name))[name]


def machine_busy_s() -> float:
    """CPU seconds all cores together spent not idle since boot (/proc/stat; iowait counts as idle)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(fleet: Fleet, ctl: ControllerProcess) -> dict[str, float]:
    """Cumulative CPU seconds of the controller, the hub's API server, each member's, this process (the
    bench's own watches and clients) and the whole machine: an edit's window shows who had the cores."""
    assert fleet.state is not None
    out = {"cpu_controller": cpu_seconds(ctl.proc.pid) if ctl.proc is not None else 0.0,
           "cpu_hub": cpu_seconds(fleet.state.hub.pid), "cpu_bench": time.process_time(),
           "cpu_machine": machine_busy_s(), "cpu_wall": time.monotonic()}
    for member in fleet.state.members:
        out[f"cpu_member:{member.name}"] = cpu_seconds(member.pid)
    return out


def cpu_meanwhile(c: dict[str, float]) -> str:
    """`cpu_snapshot`'s differences over an edit's window: the machine's load in cores, and by whom."""
    members = {k.split(":", 1)[1]: v for k, v in c.items() if k.startswith("cpu_member:")}
    busiest = max(members, key=lambda m: members[m]) if members else ""
    cores = os.cpu_count() or 1
    others = c.get("cpu_machine", 0) - sum(members.values()) - sum(
        c.get(k, 0) for k in ("cpu_controller", "cpu_hub", "cpu_bench"))
    return (f"CPU meanwhile {c.get('cpu_machine', 0) / max(c.get('cpu_wall', 0), 1e-3):.2f} of {cores} cores busy: "
            f"controller {c.get('cpu_controller', 0):.2f} s, hub {c.get('cpu_hub', 0):.2f} s, members "
            f"{sum(members.values()):.2f} s (busiest {busiest} {members.get(busiest, 0):.2f} s), bench "
            f"{c.get('cpu_bench', 0):.2f} s, anything else {others:.2f} s")


async def edit_snapshot(ctl: ControllerProcess, fleet: Fleet | None = None) -> dict[str, float]:
    """The controller's cumulative counters an edit's time can go to: the AccessPoint queue's waits
    (urgent and bulk: seconds, keys), reconciles (seconds, count), GC pause seconds, event-loop lag
    samples over 0.1 s, the reconciles' seconds by phase (meshfed_reconcile_phase_seconds) and their count
    by what asked for them (meshfed_reconcile_causes); with `fleet`, the CPU seconds of every process
    (`cpu_snapshot`)."""
    m = await controller_metrics(ctl, "meshfed_queue_wait_seconds_sum", "meshfed_queue_wait_seconds_count",
                                 "meshfed_reconcile_duration_seconds_sum", "meshfed_reconcile_duration_seconds_count",
                                 "meshfed_gc_pause_seconds_sum", "meshfed_event_loop_lag_seconds_bucket",
                                 "meshfed_reconcile_phase_seconds_sum", "meshfed_reconcile_causes_total")
    out = {"gc_s": sum(m["meshfed_gc_pause_seconds_sum"].values())}
    for labels, value in m["meshfed_reconcile_phase_seconds_sum"].items():
        out["phase_" + labels.split('"')[1]] = value
    for labels, value in m["meshfed_reconcile_causes_total"].items():
        if 'kind="accesspoint"' in labels:
            out["cause_" + labels.split('cause="')[1].split('"')[0]] = value
    for level in ("urgent", "bulk"):
        labels = f'{{level="{level}",queue="accesspoints"}}'
        out[f"{level}_wait_s"] = m["meshfed_queue_wait_seconds_sum"].get(labels, 0.0)
        out[f"{level}_keys"] = m["meshfed_queue_wait_seconds_count"].get(labels, 0.0)
    out["reconcile_s"] = m["meshfed_reconcile_duration_seconds_sum"].get('{kind="accesspoint"}', 0.0)
    out["reconciles"] = m["meshfed_reconcile_duration_seconds_count"].get('{kind="accesspoint"}', 0.0)
    lag = m["meshfed_event_loop_lag_seconds_bucket"]
    out["lag_over_0.1s"] = lag.get('{le="+Inf"}', 0.0) - lag.get('{le="0.1"}', 0.0)
    if fleet is not None:
        out.update(cpu_snapshot(fleet, ctl))
    return out


async def stalls(ctl: ControllerProcess) -> dict[str, float]:
    """The controller's stalls so far (cumulative): garbage-collector pauses by generation (count, seconds)
    and those over 0.1 s; event-loop lag samples over 0.1, 0.5 and 1 s; shard Leases lost (a renewal
    late: the single replica starved) and members judged not answering."""
    m = await controller_metrics(ctl, "meshfed_gc_pause_seconds_bucket", "meshfed_gc_pause_seconds_sum",
                                 "meshfed_event_loop_lag_seconds_bucket", "meshfed_lease_transitions_total",
                                 "meshfed_member_not_answering_total")
    out: dict[str, float] = {
        "shard_leases_lost": sum(v for k, v in m["meshfed_lease_transitions_total"].items()
                                 if 'kind="shard"' in k and 'transition="lost"' in k),
        "members_not_answering": sum(m["meshfed_member_not_answering_total"].values()),
    }
    gc_buckets = m["meshfed_gc_pause_seconds_bucket"]
    for gen in ("0", "1", "2"):
        total = gc_buckets.get(f'{{generation="{gen}",le="+Inf"}}', 0.0)
        out[f"gc{gen}_pauses"] = total
        out[f"gc{gen}_pauses_over_0.1s"] = total - gc_buckets.get(f'{{generation="{gen}",le="0.1"}}', 0.0)
    for labels, value in m["meshfed_gc_pause_seconds_sum"].items():
        out["gc" + labels.split('"')[1] + "_seconds"] = value
    lag = m["meshfed_event_loop_lag_seconds_bucket"]
    total = lag.get('{le="+Inf"}', 0.0)
    for bound in ("0.1", "0.5", "1.0"):
        out[f"lag_over_{bound}s"] = total - lag.get(f'{{le="{bound}"}}', 0.0)
    return out


def causes_text(c: dict[str, float]) -> str:
    """The AccessPoint reconciles of a snapshot difference by what asked for them, e.g. "hub-object 1,
    landed 2" (meshfed_reconcile_causes)."""
    return ", ".join(f"{k[len('cause_'):]} {v:.0f}" for k, v in sorted(c.items(), key=lambda kv: -kv[1])
                     if k.startswith("cause_") and v > 0)


def slowest_edits(lat: list[float], traces: list[EditTrace], k: int = 3) -> list[str]:
    """The k slowest edits: total, when the hub answered the patch, the first and median member, the
    last member and when it had it, and where the controller's time went meanwhile."""
    lines = []
    for i in sorted(range(len(lat)), key=lambda i: -lat[i])[:k]:
        trace = traces[i]
        got = trace.arrivals
        if not got:
            continue
        order = sorted(got, key=lambda m: got[m])
        first, median, last = got[order[0]], statistics.median(got.values()), got[order[-1]]
        c = trace.controller
        lines.append(f"edit {i + 1} of {len(lat)}, {lat[i] * 1000:.0f} ms: hub answered the patch "
                     f"{trace.patched * 1000:.0f} ms, first member "
                     f"{first * 1000:.0f} ms, median {median * 1000:.0f} ms, last {order[-1]} {last * 1000:.0f} ms; "
                     f"controller meanwhile: {c.get('urgent_keys', 0):.0f} urgent keys waited "
                     f"{c.get('urgent_wait_s', 0) * 1000:.0f} ms in all, {c.get('bulk_keys', 0):.0f} bulk "
                     f"{c.get('bulk_wait_s', 0) * 1000:.0f} ms, {c.get('reconciles', 0):.0f} reconciles "
                     f"{c.get('reconcile_s', 0) * 1000:.0f} ms, GC {c.get('gc_s', 0) * 1000:.0f} ms, "
                     f"{c.get('lag_over_0.1s', 0):.0f} loop-lag samples over 0.1 s; reconciles asked for by "
                     + (causes_text(c) or "-") + "; reconcile phases "
                     + ", ".join(f"{k[6:]} {v * 1000:.0f} ms" for k, v in sorted(c.items())
                                 if k.startswith("phase_") and v >= 0.0005)
                     + ("; " + cpu_meanwhile(c) if "cpu_machine" in c else ""))
    return lines


IDLE_WINDOW = 20.0  # seconds of an idle fleet measured


async def idle_costs(fleet: Fleet, ctl: ControllerProcess, members: dict[str, KubeClient],
                     seconds: float = IDLE_WINDOW) -> dict[str, Any]:
    """What an idle fleet costs over `seconds` (nothing written): the CPU of the controller, the hub's and
    the members' API servers (cores; millicores per member), the members' requests per minute each
    (all clients: meshfed's probes and watches and the API servers' own loops; /metrics scrapes left
    out) and the load average after: the background every edit competes with."""
    assert fleet.state is not None
    meter = CpuMeter(fleet, ctl)
    requests0, cpu0 = await all_requests(members), meter.sample()
    await asyncio.sleep(seconds)
    controller_s, hub_s, members_s, _ = (b - a for a, b in zip(cpu0, meter.sample(), strict=True))
    by_kind = {k: v for k, v in diff_breakdown(requests0, await all_requests(members)).items()
               if not k.endswith(" /metrics")}
    n = max(len(members), 1)
    return {"controller_cores": controller_s / seconds, "hub_cores": hub_s / seconds,
            "members_cores": members_s / seconds, "member_millicores": members_s * 1000 / seconds / n,
            "member_requests_per_min": sum(by_kind.values()) * 60 / seconds / n,
            "member_requests_top": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])[:6]),
            "load1": os.getloadavg()[0]}


def idle_line(name: str, c: dict[str, Any]) -> str:
    return (f"{name}: controller {c['controller_cores'] * 100:.1f} % of a core, hub API server "
            f"{c['hub_cores'] * 100:.1f} %, member API servers {c['members_cores'] * 100:.0f} % in all "
            f"({c['member_millicores']:.1f} millicores each, {c['member_requests_per_min']:.0f} requests/min each: "
            f"{c['member_requests_top']}); load average {c['load1']:.1f}")


async def rollout(hub: KubeClient, members: dict[str, KubeClient], zones: list[str], ns: str) -> float:
    """One AccessPoint with a wave per zone; v0 settled, then v1: seconds until every member has v1."""
    waves = [{"name": f"z{i}", "clusterSelector": {"matchLabels": {"topology.kubernetes.io/zone": z}}}
             for i, z in enumerate(zones)]
    name = "staged"
    await hub.create(AP_PATH.format(ns=ns), accesspoint(ns, name, "v0", waves), field_manager="bench")
    path = "/apis/networking.istio.io/v1/namespaces/{ns}/virtualservices/{name}"

    async def tags() -> list[str | None]:
        out = []
        for client in members.values():
            vs = await client.get(path.format(ns=ns, name=name)) or {}
            http = (vs.get("spec") or {}).get("http") or [{}]
            out.append(((http[0].get("headers") or {}).get("response") or {}).get("set", {}).get("x-tag"))
        return out

    async def until(tag: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not all(t == tag for t in await tags()):
            if time.monotonic() > deadline:
                raise SystemExit(f"staged rollout: not every member has {tag} after {timeout:.0f} s")
            await asyncio.sleep(0.2)

    await until("v0")
    started = time.monotonic()
    await hub.merge_patch(f"{AP_PATH.format(ns=ns)}/{name}", {"spec": {"template": template("v1")}})
    await until("v1")
    return time.monotonic() - started


MC_PATH = "/apis/meshfed.io/v1alpha1/memberclusters/{name}"
PASSES = 3  # full passes measured per run (their median)
PASS_POLL = 1.0  # seconds between the controller's /metrics scrapes while a pass runs


async def scrape_cpu_s(ctl: ControllerProcess) -> float:
    """Controller CPU seconds one /metrics scrape costs (the median of 3): what polling a pass adds."""
    assert ctl.proc is not None
    costs = []
    for _ in range(3):
        before = cpu_seconds(ctl.proc.pid)
        await controller_metric(ctl, "meshfed_reconciles_total")
        costs.append(cpu_seconds(ctl.proc.pid) - before)
    return statistics.median(costs)


async def until_quiet(ctl: ControllerProcess, timeout: float = 600) -> tuple[dict[str, float], dict[str, float]]:
    """The controller's edit_snapshot and hub writes once no reconcile and no hub write (an Event goes out
    after its status) happened between two scrapes PASS_POLL apart (or after `timeout` seconds)."""
    snap0, writes0 = await edit_snapshot(ctl), await controller_metric(ctl, "meshfed_hub_writes_total")
    for _ in range(int(timeout / PASS_POLL)):
        await asyncio.sleep(PASS_POLL)
        snap, writes = await edit_snapshot(ctl), await controller_metric(ctl, "meshfed_hub_writes_total")
        if snap["reconciles"] == snap0["reconciles"] and writes == writes0:
            break
        snap0, writes0 = snap, writes
    return snap0, writes0


async def pass_cost(ctl: ControllerProcess, members: dict[str, KubeClient], trigger: Callable[[], Awaitable[None]],
                    cause: str, expect: int, idle_cores: float, scrape_s: float,
                    timeout: float = 600) -> dict[str, Any]:
    """What the controller spends when `trigger()` makes it reconcile `expect` AccessPoints (counted by
    meshfed_reconcile_causes{cause}) that have nothing to change: its CPU seconds, less what it spends idle
    over the same time (`idle_cores`) and the scrapes that watched for the end (`scrape_s` each); the
    wall seconds (to within PASS_POLL); and the writes meanwhile, which must be none: the controller's hub
    writes (Leases apart) and the members' mutating requests (their API servers' own Leases apart). The
    reconciles counted are the positive evidence that it looked."""
    assert ctl.proc is not None
    pid = ctl.proc.pid
    # Begun once what came before is done.
    snap0, writes0 = await until_quiet(ctl, timeout)
    requests0 = await all_requests(members)
    cpu0, started = cpu_seconds(pid), time.monotonic()
    await trigger()
    scrapes = 0
    while True:
        await asyncio.sleep(PASS_POLL)
        snap, scrapes = await edit_snapshot(ctl), scrapes + 1
        if snap.get(f"cause_{cause}", 0.0) - snap0.get(f"cause_{cause}", 0.0) >= expect and \
                snap["reconciles"] - snap0["reconciles"] >= expect:
            break
        if time.monotonic() - started > timeout:
            raise SystemExit(f"a pass: {snap.get(f'cause_{cause}', 0.0) - snap0.get(f'cause_{cause}', 0.0):.0f} "
                             f"of {expect} reconciles asked for by {cause} after {timeout:.0f} s")
    cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - started
    hub_writes = {k: int(v) for k, v in diff_breakdown(
        {k: int(v) for k, v in writes0.items()},
        {k: int(v) for k, v in (await controller_metric(ctl, "meshfed_hub_writes_total")).items()}).items()
        if "lease" not in k.lower()}
    member_writes = {k: v for k, v in diff_breakdown(requests0, await all_requests(members)).items()
                     if k.startswith(WRITE_VERBS) and not k.endswith(" leases")}
    return {"reconciles": snap["reconciles"] - snap0["reconciles"], "wall_s": wall,
            "cpu_s": max(0.0, cpu - idle_cores * wall - scrapes * scrape_s),
            "hub_writes": hub_writes, "member_writes": member_writes}


async def full_passes(hub: KubeClient, ctl: ControllerProcess, members: dict[str, KubeClient], aps: int,
                      idle_cores: float, repeat: int = PASSES) -> dict[str, Any]:
    """`repeat` full passes, each asked for by a label edited on one MemberCluster (a label no placement
    selects: `meshfed_reconcile_causes{cause="member-upsert"}`, as a resync or a member's change asks for
    one): every AccessPoint rendered and planned on every member again, nothing to write. The median's
    figures, and every pass's CPU."""
    scrape_s = await scrape_cpu_s(ctl)
    names = sorted(members)
    runs = []
    for i in range(repeat):
        path = MC_PATH.format(name=names[i % len(names)])

        async def touch(path: str = path, i: int = i) -> None:
            await hub.merge_patch(path, {"metadata": {"labels": {"bench.meshfed.io/pass": str(i)}}})

        runs.append(await pass_cost(ctl, members, touch, "member-upsert", aps, idle_cores, scrape_s))
    median = sorted(runs, key=lambda r: r["cpu_s"])[len(runs) // 2]
    return {**median, "aps": aps, "cpu_s_each": [r["cpu_s"] for r in runs], "scrape_s": scrape_s,
            "writes": sum(sum(r["hub_writes"].values()) + sum(r["member_writes"].values()) for r in runs)}


async def one_member_pass(hub: KubeClient, ctl: ControllerProcess, members: dict[str, KubeClient], aps: int,
                          idle_cores: float) -> dict[str, Any]:
    """`aps` AccessPoints placed on one member each (the first), then each edited once (an annotation: no
    new generation, nothing to write): their reconciles' CPU per AccessPoint less the all-member passes'
    gives what a member an AccessPoint is not placed on costs it (the cost model's unplaced term)."""
    ns, member = "scale-one", sorted(members)[0]

    def build(ns: str, name: str) -> dict[str, Any]:
        body = accesspoint(ns, name)
        body["spec"]["placement"] = {"clusterNames": [member]}
        return body

    await meshfed_bulk(hub, ns, aps, WORKERS, 1, build=build, prefix="one-", timeout=600)
    sem = asyncio.Semaphore(WORKERS)

    async def annotate(i: int) -> None:
        async with sem:
            await hub.merge_patch(f"{AP_PATH.format(ns=ns)}/one-{i}",
                                  {"metadata": {"annotations": {"bench.meshfed.io/pass": "1"}}})

    async def edit_all() -> None:
        await asyncio.gather(*(annotate(i) for i in range(aps)))

    return await pass_cost(ctl, members, edit_all, "hub-object", aps, idle_cores, await scrape_cpu_s(ctl))


def pass_line(p: dict[str, Any], placed_on: int) -> str:
    """A pass's figures in one line."""
    each = f" (each: {', '.join(f'{c:.2f}' for c in p['cpu_s_each'])} s)" if "cpu_s_each" in p else ""
    writes = {**p["hub_writes"], **{f"member {k}": v for k, v in p["member_writes"].items()}}
    return (f"{p['reconciles']:.0f} reconciles in {p['wall_s']:.1f} s, controller CPU {p['cpu_s']:.2f} s{each}: "
            f"{p['cpu_s'] * 1000 / p['reconciles']:.2f} ms per AccessPoint placed on {placed_on} member(s); "
            f"writes {writes or 'none'}")


# The Istio networking kinds a member must serve to be Ready (federation.members.ISTIO_RESOURCES).
MEMBER_READY_KINDS = tuple(sorted(k.kind for k in MANAGED_KINDS.values()
                                  if k.group == ISTIO_NET and k.plural in ISTIO_RESOURCES))


async def one_run(n: int, aps: int, samples: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"meshfed-scale-{n}-"))
    fleet = Fleet(root)
    # Members get only the CRDs the run needs (every CRD costs each member an OpenAPI rebuild at every
    # 5-minute resync of its CRD informer: fleet/apiserver.select_member_crds): the template's kinds and
    # MEMBER_READY_KINDS. Started apart: members started together burst together at every resync.
    kinds = sorted({o["kind"] for o in template() if o["apiVersion"] != "v1"} | set(MEMBER_READY_KINDS))
    print(f"\n== {n} members: fleet up --dense --member-crds {','.join(kinds)} --start-interval "
          f"{MEMBERS_STARTED_APART:g} ({root}) ...", flush=True)
    started = time.monotonic()
    try:
        await fleet.up(members=n, regions=2, zones=ZONE_WAVES, vip_allocator=False, dense=True, member_crds=kinds,
                       start_interval=MEMBERS_STARTED_APART)
    except BaseException:
        fleet.down(purge=True)  # no API servers left behind to load the next run
        raise
    up_s = time.monotonic() - started
    assert fleet.state is not None
    member_rss = [rss for name, _, rss in fleet.costs() if name != "hub" and rss is not None]
    ready = [s for name, s, _ in fleet.costs() if name != "hub" and s is not None]
    hub = await fleet.state.hub.client()
    members = {m.name: await m.client(deadlines=BENCH_MEMBER_DEADLINES) for m in fleet.state.members}
    ports = {m.port for m in fleet.state.members}
    zones = sorted({m.zone for m in fleet.state.members})
    ctl = ControllerProcess(fleet.state.hub.kubeconfig, root / "controller.log",
                            extra=["--workers", str(WORKERS), "--probe-interval", "5", "--resync", "600"])
    out: dict[str, Any] = {"members": n, "aps": aps, "member_objects": aps * OBJECTS_PER_AP * n,
                           "fleet_up_s": up_s, "apiserver_ready_s_max": max(ready, default=0.0),
                           "member_apiserver_rss_mib_mean": statistics.mean(member_rss) if member_rss else 0.0}
    try:
        watches0 = await asyncio.gather(*(watches(c) for c in members.values()))
        print(f"  baseline: direct SSA of {out['member_objects']} objects ...", flush=True)
        meter = CpuMeter(fleet, ctl)
        cpu0 = meter.sample()
        direct = await baseline(fleet, members, aps, WORKERS, build=accesspoint)
        out["baseline_s"], out["baseline_slowest_apply_s"] = direct
        print(f"    direct SSA {direct.seconds:.1f} s, the slowest apply {direct.slowest_apply_s:.1f} s", flush=True)
        cpu1 = meter.sample()
        out["baseline_client_cpu_s"] = cpu1[3] - cpu0[3]
        out["baseline_members_cpu_s"] = cpu1[2] - cpu0[2]

        ns = "scale"
        await ensure_ns(hub, ns)
        ctl.start()
        out["cold_start_s"] = await until_ready(ctl)
        assert ctl.proc is not None
        pid = ctl.proc.pid
        await asyncio.sleep(2)
        out["idle_rss_mib"] = rss_mib(pid)
        counts = await asyncio.gather(*(watches(c) for c in members.values()))
        out["idle_watches_per_member"] = statistics.mean(a - b for a, b in zip(counts, watches0, strict=True))
        out["idle_empty"] = await idle_costs(fleet, ctl, members)
        print("    " + idle_line("idle, no AccessPoint", out["idle_empty"]), flush=True)

        print(f"  meshfed: {aps} AccessPoints x {OBJECTS_PER_AP} objects x {n} members ...", flush=True)
        hub_pid = fleet.state.hub.pid
        at: dict[str, Any] = {}

        async def count_from_here() -> None:
            at["writes"] = await controller_metric(ctl, "meshfed_hub_writes_total")
            at["hub"] = await request_breakdown(hub, ("POST", "PUT", "PATCH", "APPLY", "DELETE"))
            at["ctl_cpu"], at["hub_cpu"], at["members_cpu"] = cpu_seconds(pid), cpu_seconds(hub_pid), \
                meter.sample()[2]
            at["member_requests"] = await all_requests(members)
            at["stalls"] = await stalls(ctl)
            at["snapshot"] = await edit_snapshot(ctl)

        try:  # named ap-<i>: the edits below patch them
            out["meshfed_s"] = await meshfed_bulk(hub, ns, aps, WORKERS, n, build=accesspoint, prefix="ap-",
                                                  at_start=count_from_here, timeout=1800)
        except TimeoutError:
            raise SystemExit("not all AccessPoints applied within 30 minutes:\n" + ctl.log_tail()) from None
        out["bulk_controller_cpu_s"] = cpu_seconds(pid) - at["ctl_cpu"]
        bulk_stalls1 = await stalls(ctl)
        bulk_snapshot1 = await edit_snapshot(ctl)
        out["bulk_reconciles"] = bulk_snapshot1["reconciles"] - at["snapshot"]["reconciles"]
        phases = {k[len("phase_"):]: bulk_snapshot1[k] - at["snapshot"].get(k, 0.0)
                  for k in bulk_snapshot1 if k.startswith("phase_")}
        out["bulk_reconcile_causes"] = {k[len("cause_"):]: v - at["snapshot"].get(k, 0.0)
                                        for k, v in bulk_snapshot1.items() if k.startswith("cause_")}
        print(f"    reconciles during the bulk: {out['bulk_reconciles']:.0f} ({out['bulk_reconciles'] / aps:.1f} per "
              f"AccessPoint), their phases {', '.join(f'{k} {v:.1f} s' for k, v in sorted(phases.items()))}; "
              f"asked for by {causes_text({'cause_' + k: v for k, v in out['bulk_reconcile_causes'].items()})}",
              flush=True)
        out["bulk_stalls"] = {k: bulk_stalls1[k] - at["stalls"].get(k, 0.0) for k in bulk_stalls1}
        print(f"    controller stalls during the bulk: {out['bulk_stalls']}", flush=True)
        out["bulk_hub_apiserver_cpu_s"] = cpu_seconds(fleet.state.hub.pid) - at["hub_cpu"]
        out["bulk_members_cpu_s"] = meter.sample()[2] - at["members_cpu"]
        # The same objects written to the same members: what meshfed's way of writing them costs the
        # members beyond direct SSA (its watches, reads, retries) shows here.
        print(f"    CPU, direct SSA: members {out['baseline_members_cpu_s']:.1f} s, bench client "
              f"{out['baseline_client_cpu_s']:.1f} s; meshfed: members {out['bulk_members_cpu_s']:.1f} s, "
              f"controller {out['bulk_controller_cpu_s']:.1f} s, hub API server "
              f"{out['bulk_hub_apiserver_cpu_s']:.1f} s", flush=True)
        requests = {k: v for k, v in diff_breakdown(at["member_requests"], await all_requests(members)).items()
                    if not k.endswith(" /metrics")}
        # The top 8, and every list and watch (each list of a kind reads all its objects on a member
        # without watch cache, the bench's direct-SSA objects too).
        out["bulk_member_requests_top"] = {k: v for i, (k, v) in
                                           enumerate(sorted(requests.items(), key=lambda kv: -kv[1]))
                                           if i < 8 or k.startswith(("LIST ", "WATCH "))}
        print(f"    member requests during the bulk: {out['bulk_member_requests_top']}", flush=True)
        writes = diff_breakdown({k: int(v) for k, v in at["writes"].items()},
                                {k: int(v) for k, v in (await controller_metric(ctl, "meshfed_hub_writes_total"))
                                 .items()})
        out["bulk_hub_writes_by_kind"] = writes
        out["bulk_hub_writes"] = sum(v for k, v in writes.items() if "lease" not in k.lower())
        hub_requests = diff_breakdown(at["hub"], await request_breakdown(hub, ("POST", "PUT", "PATCH", "APPLY",
                                                                            "DELETE")))
        out["bulk_hub_apiserver_mutations"] = hub_requests
        counts = await asyncio.gather(*(watches(c) for c in members.values()))
        out["watches_per_member"] = statistics.mean(a - b for a, b in zip(counts, watches0, strict=True))
        out["connections_per_member"] = connections_to(pid, ports) / n
        out["request_slots_per_member"] = member_request_slots(n)
        await asyncio.sleep(3)
        out["loaded_rss_mib"] = rss_mib(pid)
        out["peak_rss_mib"] = rss_mib(pid, "VmHWM")
        code, text = await asyncio.to_thread(ctl.http, "/debug/caches", 60.0)
        if code == 200:  # the member caches' own bytes (Python objects, shared parts once)
            out["cache"] = json.loads(text)["total"]
        if os.environ.get("PYTHONTRACEMALLOC"):
            # PYTHONTRACEMALLOC=N > 1 keeps N frames: then where each allocation was made from, too.
            by = "&by=traceback" if os.environ["PYTHONTRACEMALLOC"] not in ("1", "") else ""
            _, text = await asyncio.to_thread(ctl.http, f"/debug/memory?top=25{by}", 120.0)
            print(text, flush=True)

        out["idle_loaded"] = await idle_costs(fleet, ctl, members)
        out["settled_rss_mib"] = rss_mib(pid)  # after the idle window: the bulk's pooled connections closed
        print("    " + idle_line("idle, loaded", out["idle_loaded"]), flush=True)

        # A phase that fails is reported as failed (with what the controller says of its Leases), and the
        # figures of the others are kept.
        print(f"  latency: {samples} single edits, hub -> all {n} members ...", flush=True)
        stalls0 = await stalls(ctl)
        edit_requests0 = await all_requests(members)
        try:
            traces: list[EditTrace] = []
            lat = await latency(hub, members, ns, samples, aps, make_template=template, traces=traces,
                                snapshot=functools.partial(edit_snapshot, ctl, fleet))
            out["edit_p50_ms"] = statistics.median(lat) * 1000
            out["edit_p99_ms"] = pct(lat, 99) * 1000
            out["edit_max_ms"] = max(lat) * 1000
            # From the hub's answer to the patch (the edit committed) to the last member: what the
            # controller and the members add; the rest is the hub API server accepting the write.
            committed = [t - trace.patched for t, trace in zip(lat, traces, strict=True)]
            out["edit_committed_p50_ms"] = statistics.median(committed) * 1000
            out["edit_committed_p99_ms"] = pct(committed, 99) * 1000
            out["edit_patch_p99_ms"] = pct([trace.patched for trace in traces], 99) * 1000
            print(f"    from the hub's answer to the patch: p50 {out['edit_committed_p50_ms']:.0f} ms, p99 "
                  f"{out['edit_committed_p99_ms']:.0f} ms; the hub answered the patches p99 "
                  f"{out['edit_patch_p99_ms']:.0f} ms", flush=True)
            out["edit_slowest"] = slowest_edits(lat, traces)
            for line in out["edit_slowest"]:
                print(f"    slow edit: {line}", flush=True)
        except AssertionError as err:
            out["edit_error"] = str(err)
            print(f"    edits failed: {err}", flush=True)
        try:
            stalls1 = await stalls(ctl)
        except TimeoutError:  # the controller's /metrics did not answer in 5 s: say how long it took
            started = time.monotonic()
            await asyncio.to_thread(ctl.http, "/metrics", 120.0)
            out["edit_metrics_stall_s"] = time.monotonic() - started + 5.0
            print(f"    the controller's /metrics answered only after {out['edit_metrics_stall_s']:.0f} s",
                  flush=True)
            stalls1 = await stalls(ctl)
        out["edit_stalls"] = {k: stalls1[k] - stalls0.get(k, 0.0) for k in stalls1}
        print(f"    controller stalls during the edits: {out['edit_stalls']}", flush=True)
        # Besides the edits' own writes: re-watches, relists and verification lists that came due meanwhile.
        edit_requests = {k: v for k, v in diff_breakdown(edit_requests0, await all_requests(members)).items()
                         if not k.endswith(" /metrics")}
        out["edit_member_requests_top"] = dict(sorted(edit_requests.items(), key=lambda kv: -kv[1])[:10])
        print(f"    member requests during the edits: {out['edit_member_requests_top']}", flush=True)
        print(f"  staged rollout over {len(zones)} zone waves ...", flush=True)
        out["rollout_waves"] = len(zones)
        try:
            out["rollout_s"] = await rollout(hub, members, zones, ns)
        except SystemExit as err:
            out["rollout_error"] = str(err)
        # The pair again in the other order (meshfed first, then direct SSA, into fresh namespaces): each
        # bulk leaves the members fuller and the next one slower, so the first pair's ratio is the one
        # with meshfed second; balanced over both orders it is not (propagation.balanced_ratio).
        print("  the pair reversed: meshfed first, then direct SSA ...", flush=True)
        try:
            out["meshfed_2_s"] = await meshfed_bulk(hub, f"{ns}-2", aps, WORKERS, n, build=accesspoint)
            out["baseline_2_s"], out["baseline_2_slowest_apply_s"] = await baseline(
                fleet, members, aps, WORKERS, build=accesspoint, ns="bench-direct-2")
            out["ratio_balanced"] = balanced_ratio([(out["baseline_s"], out["meshfed_s"]),
                                                    (out["baseline_2_s"], out["meshfed_2_s"])])
            print(f"    meshfed {out['meshfed_2_s']:.1f} s, direct SSA {out['baseline_2_s']:.1f} s (the slowest "
                  f"apply {out['baseline_2_slowest_apply_s']:.1f} s): ratio "
                  f"{out['baseline_2_s'] / out['meshfed_2_s']:.2f}; both orders {out['ratio_balanced']:.2f}",
                  flush=True)
        except (SystemExit, TimeoutError, ApiError) as err:  # reported; the run's other figures are kept
            out["reversed_error"] = str(err)[:500]
            print(f"    the reversed pair failed: {out['reversed_error']}", flush=True)
        # What a pass over every AccessPoint costs when nothing changed (a resync; a member's change asks
        # for one too): over the AccessPoints so far, each on every member (both bulks' and the rollout's),
        # then with `aps` more on one member.
        idle_cores = out["idle_loaded"]["controller_cores"]
        everywhere = len((await hub.list("/apis/meshfed.io/v1alpha1/accesspoints"))[0])
        print(f"  full passes: a MemberCluster label edited, {everywhere} AccessPoints on every member planned "
              "again ...", flush=True)
        try:
            out["full_pass"] = await full_passes(hub, ctl, members, everywhere, idle_cores)
            print("    " + pass_line(out["full_pass"], n), flush=True)
            print(f"  {aps} AccessPoints on one member, each edited once ...", flush=True)
            out["one_member_pass"] = await one_member_pass(hub, ctl, members, aps, idle_cores)
            print("    " + pass_line(out["one_member_pass"], 1), flush=True)
        except (SystemExit, TimeoutError, ApiError) as err:  # reported; the run's other figures are kept
            out["pass_error"] = str(err)[:500]
            print(f"    the passes failed: {out['pass_error']}", flush=True)
        lost = await controller_metric(ctl, "meshfed_lease_transitions_total")
        out["lease_losses"] = int(sum(v for k, v in lost.items() if 'transition="lost"' in k))
        assert ctl.proc is not None and ctl.proc.poll() is None, ctl.log_tail()
        return out
    except BaseException:
        print("---- controller log (tail) ----\n" + ctl.log_tail(4000))
        raise
    finally:
        if "edit_error" in out or "rollout_error" in out or "pass_error" in out:
            kept = Path(tempfile.gettempdir()) / f"meshfed-scale-{n}-controller.log"
            with contextlib.suppress(OSError):
                shutil.copy(root / "controller.log", kept)
            print(f"  a phase failed: the controller's log is kept in {kept}", flush=True)
        ctl.stop()
        await hub.close()
        for c in members.values():
            await c.close()
        fleet.down(purge=True)


def as_run(r: dict[str, Any]) -> Run:
    return Run(members=r["members"], aps=r["aps"], member_objects=r["member_objects"],
               idle_rss_mib=r["idle_rss_mib"], loaded_rss_mib=r["loaded_rss_mib"],
               bulk_cpu_s=r["bulk_controller_cpu_s"], hub_writes=r["bulk_hub_writes"],
               connections_per_member=r.get("connections_per_member", 0.0),
               # Runs from before the request budget: every member had a pool of MEMBER_CONNECTIONS.
               pooled_per_member=r.get("request_slots_per_member", MEMBER_CONNECTIONS),
               pass_ms_per_ap=per_ap_ms(r.get("full_pass")),
               one_member_pass_ms_per_ap=per_ap_ms(r.get("one_member_pass")))


def per_ap_ms(p: dict[str, Any] | None) -> float:
    """A pass's controller CPU milliseconds per AccessPoint reconciled (0.0: not measured)."""
    return p["cpu_s"] * 1000 / p["reconciles"] if p and p.get("reconciles") else 0.0


POOL = PoolShare(budget=MEMBER_REQUEST_BUDGET, least=MEMBER_REQUESTS_MIN, most=MEMBER_CONNECTIONS)


def report(runs: list[dict[str, Any]]) -> str:
    lines = ["", "==== scale benchmark ====",
             f"AccessPoints of {OBJECTS_PER_AP} objects (Service, VirtualService, DestinationRule) on every member; "
             "member API servers dense (watch cache, APF and endpoint reconciler off, GOGC=50, collections spread "
             f"apart, only the CRDs of Istio's 5 core networking kinds, started {MEMBERS_STARTED_APART:g} s apart: "
             f"fleet up includes that); controller --workers {WORKERS}",
             "",
             "| members | member objects | fleet up | member API server RSS | cold start to ready "
             "| watches / member, idle / loaded | connections / member, loaded | direct SSA | meshfed | ratio "
             "| controller CPU / member object "
             "| RSS idle / loaded / settled | RSS per member object, loaded / settled | cache per member object "
             "| hub writes / member object | edit p50 / p99 | 10-wave rollout |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        per_object_kib = max(0.0, r["loaded_rss_mib"] - r["idle_rss_mib"]) * 1024 / r["member_objects"]
        settled = r.get("settled_rss_mib")
        settled_kib = max(0.0, settled - r["idle_rss_mib"]) * 1024 / r["member_objects"] if settled else None
        cache = r.get("cache")
        lines.append(
            f"| {r['members']} | {r['member_objects']:,} | {r['fleet_up_s']:.0f} s | "
            f"{r['member_apiserver_rss_mib_mean']:.0f} MiB | {r['cold_start_s']:.1f} s | "
            f"{r['idle_watches_per_member']:.1f} / {r['watches_per_member']:.1f} | "
            f"{r['connections_per_member']:.1f} | {r['baseline_s']:.1f} s"
            + (f" (slowest apply {r['baseline_slowest_apply_s']:.1f} s) | "
               if "baseline_slowest_apply_s" in r else " | ")
            + f"{r['meshfed_s']:.1f} s | **{r['baseline_s'] / r['meshfed_s']:.2f}**"
            + (f" (both orders **{r['ratio_balanced']:.2f}**: {r['baseline_2_s']:.1f} / {r['meshfed_2_s']:.1f} s "
               "meshfed first) | " if "ratio_balanced" in r else " | ")
            + f"{r['bulk_controller_cpu_s'] * 1000 / r['member_objects']:.2f} ms | "
            f"{r['idle_rss_mib']:.0f} / {r['loaded_rss_mib']:.0f} / "
            + (f"{settled:.0f} MiB | " if settled else "- MiB | ")
            + f"{per_object_kib:.2f} / " + (f"{settled_kib:.2f} KiB | " if settled_kib is not None else "- KiB | ")
            + (f"{cache['bytes'] / max(1, cache['objects']):.0f} B ({cache['whole']} whole) | " if cache else "- | ")
            + f"{r['bulk_hub_writes'] / r['member_objects']:.3f} | "
            + (f"{r['edit_p50_ms']:.0f} / **{r['edit_p99_ms']:.0f} ms** (committed: {r['edit_committed_p50_ms']:.0f} "
               f"/ {r['edit_committed_p99_ms']:.0f} ms) | " if "edit_committed_p50_ms" in r else
               f"{r['edit_p50_ms']:.0f} / **{r['edit_p99_ms']:.0f} ms** | " if "edit_p50_ms" in r else "failed | ")
            + (f"{r['rollout_s']:.1f} s |" if "rollout_s" in r else "failed |"))
    for r in runs:
        for phase in ("edit_error", "rollout_error", "reversed_error"):
            if phase in r:
                lines.append(f"  {r['members']} members, {phase.split('_')[0]} failed: {r[phase]} "
                             f"(Leases lost by the controller in the run: {r.get('lease_losses', '?')})")
        lines.append(f"  {r['members']} members: controller hub writes during the bulk {r['bulk_hub_writes_by_kind']}; "
                     f"hub API server mutations {r['bulk_hub_apiserver_mutations']}")
        for phase, label in (("idle_empty", "idle, no AccessPoint"), ("idle_loaded", "idle, loaded")):
            if phase in r:
                lines.append(f"  {r['members']} members, " + idle_line(label, r[phase]))
        if "full_pass" in r:
            lines.append(f"  {r['members']} members, a full pass (median of {len(r['full_pass']['cpu_s_each'])}): "
                         + pass_line(r["full_pass"], r["members"]) + "; "
                         f"{per_ap_ms(r['full_pass']) / r['members']:.3f} ms per (AccessPoint, member)")
        if "one_member_pass" in r:
            lines.append(f"  {r['members']} members, AccessPoints on one member each, edited: "
                         + pass_line(r["one_member_pass"], 1))
        if "pass_error" in r:
            lines.append(f"  {r['members']} members, the passes failed: {r['pass_error']}")
    if len(runs) >= 2:
        model = fit([as_run(r) for r in runs[:-1]], POOL)
        last = runs[-1]
        lines += ["", f"cost model, fitted to the {', '.join(str(r['members']) for r in runs[:-1])}-member runs: "
                      f"base {model.base_mib:.0f} MiB + {model.per_member_mib:.2f} MiB per member + "
                      f"({model.connections_per_member:.1f} connections + the pooled share: "
                      f"{POOL.budget} over the members, {POOL.least} to {POOL.most} each) per member x "
                      f"{CONNECTION_KIB:.0f} KiB + "
                      f"{model.per_object_kib:.2f} KiB per member object; {model.cpu_ms_per_object:.3f} ms CPU per "
                      f"member object; {model.hub_writes_per_ap:.1f} hub writes per AccessPoint",
                  f"a full pass (every AccessPoint rendered and planned again, nothing to write): "
                  f"{model.pass_ms_fixed:.3f} ms CPU per AccessPoint + {model.pass_ms_per_placed:.3f} ms per member "
                  f"it is on + {model.pass_ms_per_unplaced:.4f} ms per member it is not on",
                  f"check against the {last['members']}-member run: predicted RSS "
                  f"{model.rss_mib(last['members'], last['member_objects']):.0f} MiB, measured "
                  f"{last['loaded_rss_mib']:.0f} MiB (ratio {check(model, as_run(last)):.2f})"
                  + (f"; a full pass {model.pass_ms_per_ap(last['members'], last['members']):.1f} ms per "
                     f"AccessPoint predicted, {per_ap_ms(last.get('full_pass')):.1f} ms measured (ratio {ratio:.2f})"
                     if (ratio := check_pass(model, as_run(last))) is not None else ""),
                  "", f"projection, 2,000 AccessPoints of {OBJECTS_PER_AP} objects, shards split over the replicas "
                      "(every replica watches every member):",
                  "| members | each AccessPoint on | replicas | member objects per replica | RSS per replica "
                  "| CPU to write its share once | CPU of a full pass (resync, a MemberCluster's change) "
                  "| CPU of a member's own state moving (a probe, a relist) | hub writes per replica |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for members in (200, 1000):
            for spread, label in ((None, "every member"), (ZONE_SPREAD, f"{ZONE_SPREAD} members (a zone)")):
                for replicas in (1, 3, 10):
                    p = project(model, members, 2000, OBJECTS_PER_AP, replicas, spread)
                    lines.append(f"| {members} | {label} | {replicas} | {p.objects_per_replica:,} | "
                                 f"{p.rss_mib_per_replica / 1024:.2f} GiB | {p.bulk_cpu_s_per_replica / 60:.0f} min | "
                                 f"{p.pass_cpu_s_per_replica:.0f} s | {p.member_change_cpu_s_per_replica:.2f} s | "
                                 f"{p.hub_writes_per_replica:,.0f} |")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    if args.report:  # the report of runs saved with --json, again (after a change to the model or the table)
        print(report(json.loads(await asyncio.to_thread(Path(args.report).read_text))))
        return
    runs = []
    for n in args.members:
        runs.append(await one_run(n, args.aps, args.samples))
        if args.json:  # after each run: a later one that fails keeps the figures of the earlier ones
            await asyncio.to_thread(Path(args.json).write_text, json.dumps(runs, indent=2))
    print(report(runs))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=lambda s: [int(x) for x in s.split(",")], default=[10, 25, 50])
    parser.add_argument("--aps", type=int, default=200)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--json", default="", help="also write the runs' figures to this file")
    parser.add_argument("--report", default="", help="print the report of the runs in this --json file; run nothing")
    tune_gc()
    asyncio.run(main(parser.parse_args()))
