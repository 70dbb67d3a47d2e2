"""Propagation benchmark: hub + N members (real kube-apiservers), M AccessPoints of 5 objects each.

Prints, all measured in one run on the same fleet:
  1. baseline: the same objects written by a minimal direct server-side-apply client with the same
     concurrency (W AccessPoints in flight, each writing its objects to every member in parallel);
  2. meshfed: time from the first AccessPoint created on the hub until all report Applied on
     every member; the ratio baseline/meshfed (target >= 0.8, issue 20), and the controller's hub writes
     per member object during it (target <= 0.1, Leases included);
  3. member and hub writes during a no-op resync and after a controller restart (target 0),
     counted by the API servers themselves (/metrics apiserver_request_total), each only with evidence
     that the controller looked: the restarted one reconciled every AccessPoint (`wait_caught_up`), the
     window's resync (--resync) reconciled every AccessPoint again;
  4. single-change propagation latency, hub edit -> the object updated on every member, p50/p99
     (target p99 <= 1 s; Karmada publishes p99 1.3 s in push mode);
  5. controller peak RSS (target <= 300 MB).

  6. with --pairs N: N-1 more pairs of bulks into fresh namespaces, in turn meshfed first, and the
     ratio balanced over the order (`balanced_ratio`: whichever bulk runs second meets fuller members).

Usage: python -m e2e.bench.propagation [--members 5] [--aps 500] [--workers 16] [--samples 50] [--pairs 2]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from accesspoint.models import AccessPoint
from accesspoint.ownership import HUB
from accesspoint.render import render
from federation.gcpolicy import tune_gc
from federation.kube import KubeClient
from fleet import Fleet
from fleet.testing import ControllerProcess, diff_breakdown, request_breakdown, wait_caught_up, write_breakdown

AP_PATH = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
PATHS = {
    "Service": "/api/v1/namespaces/{ns}/services/{name}",
    "Gateway": "/apis/networking.istio.io/v1/namespaces/{ns}/gateways/{name}",
    "VirtualService": "/apis/networking.istio.io/v1/namespaces/{ns}/virtualservices/{name}",
    "DestinationRule": "/apis/networking.istio.io/v1/namespaces/{ns}/destinationrules/{name}",
    "ServiceEntry": "/apis/networking.istio.io/v1/namespaces/{ns}/serviceentries/{name}",
}


def template(tag: str = "v0") -> list[dict[str, Any]]:
    host = "${name}.${region}.bench.example"
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "${name}"},
         "spec": {"selector": {"app": "${name}"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "${name}"},
         "spec": {"selector": {"istio": "ingressgateway"},
                  "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": [host]}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "${name}"},
         "spec": {"hosts": [host], "gateways": ["${name}"],
                  "http": [{"route": [{"destination": {"host": "${name}.svc.cluster.local"}}],
                            "headers": {"response": {"set": {"x-tag": tag, "x-cluster": "${cluster}"}}}}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "${name}"},
         "spec": {"host": "${name}.svc.cluster.local"}},
        {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "${name}-ext"},
         "spec": {"hosts": ["${name}.ext.example"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
                  "resolution": "DNS", "location": "MESH_EXTERNAL"}},
    ]


def accesspoint(ns: str, name: str, tag: str = "v0") -> dict[str, Any]:
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": name, "namespace": ns},
            # One wave, no gates: a change goes everywhere at once (gated rollouts: e2e/bench/rollout.py).
            "spec": {"template": template(tag), "rollout": {"waves": [{"name": "all"}]}}}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def ensure_ns(client: KubeClient, ns: str) -> None:
    from fleet import ensure_namespace

    await ensure_namespace(client, ns)


class DirectRun(NamedTuple):
    seconds: float  # the first apply sent -> the last answered
    slowest_apply_s: float  # one apply, sent -> answered (each is sent once: the clients' deadline bounds it)


async def baseline(fleet: Fleet, members: dict[str, KubeClient], aps: int, workers: int,
                   build: Callable[[str, str], dict[str, Any]] | None = None, ns: str = "bench-direct") -> DirectRun:
    """Direct SSA of the same rendered objects (into namespace `ns`), same concurrency; `build`
    makes the AccessPoint (namespace, name) whose rendering is written (default: `accesspoint`)."""
    build = build or accesspoint
    assert fleet.state is not None
    for client in members.values():
        await ensure_ns(client, ns)
    facts = {m.name: m for m in fleet.state.members}
    from placement.models import ClusterFacts

    rendered: list[dict[str, list[dict[str, Any]]]] = []
    for i in range(aps):
        ap = AccessPoint.model_validate(build(ns, f"ap-{i}"))
        per_cluster = {}
        for name, m in facts.items():
            cf = ClusterFacts(name=name, region=m.region, zone=m.zone, ready=True, reachable=True)
            per_cluster[name] = render(ap, cf, "bench-direct-hub").objects
        rendered.append(per_cluster)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(aps):
        queue.put_nowait(i)

    slowest = 0.0

    async def apply(client: KubeClient, obj: dict[str, Any]) -> None:
        nonlocal slowest
        sent = time.monotonic()
        await client.apply(PATHS[obj["kind"]].format(ns=ns, name=obj["metadata"]["name"]), obj,
                           field_manager="bench-direct")
        slowest = max(slowest, time.monotonic() - sent)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            await asyncio.gather(*(apply(members[c], o) for c, objs in rendered[i].items() for o in objs))

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return DirectRun(time.monotonic() - start, slowest)


# Hub writes during meshfed's bulk that are not the controller's: the bench's own AccessPoint creates and
# the hub API server's own endpoint reconciler (the `kubernetes` Service).
NOT_THE_CONTROLLERS = frozenset({"POST accesspoints", "POST endpoints", "PUT endpoints", "POST endpointslices",
                                 "PUT endpointslices"})
WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE")


def meshfed_hub_writes(hub_requests: dict[str, int]) -> dict[str, int]:
    """The controller's writes among the hub's requests (by "verb resource"), Leases included."""
    return {k: v for k, v in hub_requests.items() if k.startswith(WRITE_VERBS) and k not in NOT_THE_CONTROLLERS}


async def create_accesspoints(hub: KubeClient, ns: str, count: int, workers: int,
                              build: Callable[[str, str], dict[str, Any]] | None = None, prefix: str = "ap-") -> None:
    """Create AccessPoints <prefix>0 .. <prefix><count-1> in `ns` (`build(ns, name)`, default `accesspoint`),
    `workers` at a time."""
    build = build or accesspoint
    sem = asyncio.Semaphore(workers)

    async def create(i: int) -> None:
        async with sem:
            await hub.create(AP_PATH.format(ns=ns), build(ns, f"{prefix}{i}"), field_manager="bench")

    await asyncio.gather(*(create(i) for i in range(count)))


async def meshfed_bulk(hub: KubeClient, ns: str, aps: int, workers: int, members: int,
                       build: Callable[[str, str], dict[str, Any]] | None = None, *, prefix: str | None = None,
                       at_start: Callable[[], Awaitable[None]] | None = None, timeout: float = 900.0) -> float:
    """Seconds from the first of `aps` AccessPoints created in `ns` until all report Applied on every member
    (a running controller). Named `<prefix><i>`, by default `<ns>-<i>`: their hosts (from the name) are no
    other namespace's. `at_start` runs once the hub is watched, just before the clock starts: where a
    caller takes its counters from. TimeoutError after `timeout` seconds."""
    await ensure_ns(hub, ns)
    tracker = AppliedTracker(hub, ns, members)
    tracking = asyncio.create_task(tracker.run())
    await asyncio.sleep(0.5)
    try:
        if at_start is not None:
            await at_start()
        start = time.monotonic()
        await create_accesspoints(hub, ns, aps, workers, build=build, prefix=f"{ns}-" if prefix is None else prefix)
        await tracker.wait_for(aps, timeout)
        return time.monotonic() - start
    finally:
        tracking.cancel()


async def until_ready(ctl: ControllerProcess, timeout: float = 600) -> float:
    """Seconds until the controller's /readyz says ready (its member caches listed: the registry warm)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await asyncio.to_thread(ctl.ready):
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise SystemExit("controller not ready within 10 minutes:\n" + ctl.log_tail())


async def settle(hub: KubeClient, members: dict[str, KubeClient], limit: float = 120.0) -> float:
    """Wait until two 3-second windows see no writes (the last status and Event writes after "Applied"
    belong to the bulk load, not to what comes next); seconds waited."""
    start = time.monotonic()
    quiet, last = 0, await writes(hub, members)
    while quiet < 2 and time.monotonic() - start < limit:
        await asyncio.sleep(3)
        now = await writes(hub, members)
        quiet = quiet + 1 if now == last else 0
        last = now
    return time.monotonic() - start


async def more_pairs(fleet: Fleet, hub: KubeClient, members: dict[str, KubeClient], args: argparse.Namespace,
                     first: tuple[float, float]) -> list[tuple[float, float]]:
    """`args.pairs` pairs of bulks in all, `first` (baseline, meshfed seconds) the one already run: each
    further pair writes the same objects again into fresh namespaces, in turn meshfed first, then the
    baseline first (the members hold more objects with each bulk: neither side always comes second)."""
    pairs = [first]
    for k in range(2, args.pairs + 1):
        meshfed_first = k % 2 == 0
        print(f"pair {k}/{args.pairs}: {'meshfed, then the baseline' if meshfed_first else 'baseline, then meshfed'} "
              "...", flush=True)
        async def direct(k: int = k) -> float:
            return (await baseline(fleet, members, args.aps, args.workers, ns=f"bench-direct-{k}")).seconds

        bulks: dict[str, Callable[[], Awaitable[float]]] = {
            "meshfed": functools.partial(meshfed_bulk, hub, f"bench-{k}", args.aps, args.workers, len(members)),
            "baseline": direct}
        took: dict[str, float] = {}
        for side in (("meshfed", "baseline") if meshfed_first else ("baseline", "meshfed")):
            await asyncio.sleep(PAUSE_BETWEEN_BULKS)
            took[side] = await bulks[side]()
        print(f"  baseline {took['baseline']:.1f} s, meshfed {took['meshfed']:.1f} s: ratio "
              f"{took['baseline'] / took['meshfed']:.2f}", flush=True)
        pairs.append((took["baseline"], took["meshfed"]))
    return pairs


def balanced_ratio(pairs: list[tuple[float, float]]) -> float:
    """The ratio baseline/meshfed over pairs run in turn baseline first and meshfed first: the geometric
    mean over the largest even number of them. Each bulk leaves the members fuller and the next one slower
    (the baseline of 3 pairs took 31.9, 52.9, 60.9 s): whichever runs second in a pair pays for it, and
    pairs of both orders cancel that out (a lone first pair is returned as it is)."""
    even = pairs[: max(1, len(pairs) - len(pairs) % 2)]
    return math.exp(statistics.fmean(math.log(b / m) for b, m in even))


# Between two bulks of the extra pairs: the last Events and status writes of one land before the next starts.
PAUSE_BETWEEN_BULKS = 10.0


def applied(item: dict[str, Any], members: int) -> bool:
    st = item.get("status") or {}
    conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
    return conds.get("Applied") == "True" and (st.get("summary") or {}).get("clusters") == f"{members}/{members}" \
        and st.get("observedGeneration") == item["metadata"].get("generation")


class AppliedTracker:
    """Which AccessPoints report Applied on every member, kept by one watch on the hub (as a user's
    `kubectl get -w` would; polling a list of 500 large objects would load the hub's API server
    and slow down the very thing being measured)."""

    def __init__(self, hub: KubeClient, ns: str, members: int) -> None:
        self.hub, self.path, self.members = hub, AP_PATH.format(ns=ns), members
        self.done: set[str] = set()
        self.refused: dict[str, str] = {}  # name -> the Accepted condition's message, when False
        self.changed = asyncio.Event()

    async def run(self) -> None:
        items, rv = await self.hub.list(self.path)
        for item in items:
            self._see(item)
        while True:
            async for ev in self.hub.watch(self.path, rv):
                rv = ev.object.get("metadata", {}).get("resourceVersion", rv)
                if ev.type in ("ADDED", "MODIFIED"):
                    self._see(ev.object)

    def _see(self, item: dict[str, Any]) -> None:
        name = item["metadata"]["name"]
        accepted = next((c for c in (item.get("status") or {}).get("conditions") or [] if c.get("type") == "Accepted"),
                        None)
        if accepted is not None and accepted.get("status") == "False":
            self.refused[name] = str(accepted.get("message", ""))
        if applied(item, self.members):
            self.done.add(name)
        else:
            self.done.discard(name)
        self.changed.set()

    async def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.done) < count:
            if self.refused:
                name, message = next(iter(self.refused.items()))
                raise SystemExit(f"{len(self.refused)} AccessPoints refused, {name}: {message}")
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))


async def writes(hub: KubeClient, members: dict[str, KubeClient]) -> dict[str, int]:
    clients = {"hub": hub, **members}
    counts = await asyncio.gather(*(write_breakdown(c) for c in clients.values()))
    return {f"{n}: {k}": v for n, bd in zip(clients, counts, strict=True) for k, v in bd.items()}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its reaped children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent by the controller, the hub's and the members' API servers, and this
    process (the baseline's client) between two points."""

    def __init__(self, fleet: Fleet, ctl: ControllerProcess) -> None:
        assert fleet.state is not None
        self.hub = fleet.state.hub.pid
        self.members = [m.pid for m in fleet.state.members]
        self.ctl = ctl

    def sample(self) -> tuple[float, ...]:
        pid = self.ctl.proc.pid if self.ctl.proc is not None else 0
        return (cpu_seconds(pid) if pid else 0.0, cpu_seconds(self.hub),
                sum(cpu_seconds(p) for p in self.members), time.process_time())

    @staticmethod
    def since(start: tuple[float, ...], end: tuple[float, ...]) -> str:
        d = [b - a for a, b in zip(start, end, strict=True)]
        return (f"controller {d[0]:5.1f} s, hub API server {d[1]:5.1f} s, member API servers {d[2]:5.1f} s, "
                f"bench process {d[3]:5.1f} s")


async def all_requests(members: dict[str, KubeClient]) -> dict[str, int]:
    """Every request the members served, summed over members, by verb and resource."""
    total: dict[str, int] = {}
    for bd in await asyncio.gather(*(request_breakdown(c) for c in members.values())):
        for k, v in bd.items():
            total[k] = total.get(k, 0) + v
    return total


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of process `pid` from /proc/<pid>/status (VmRSS now, VmHWM its peak), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb(pid: int) -> float:
    return rss_mib(pid, "VmHWM")


@dataclass
class EditTrace:
    """Where one edit's time went (seconds after the patch was sent): when the hub answered the patch,
    when each member's watch delivered the change, and what `snapshot` (e.g. the controller's counters)
    said changed between this edit's start and its end."""

    patched: float
    arrivals: dict[str, float]
    controller: dict[str, float] = field(default_factory=dict)


async def latency(hub: KubeClient, members: dict[str, KubeClient], ns: str, samples: int, aps: int,
                  make_template: Callable[[str], list[dict[str, Any]]] | None = None,
                  traces: list[EditTrace] | None = None,
                  snapshot: Callable[[], Awaitable[dict[str, float]]] | None = None) -> list[float]:
    """Patch one AccessPoint's template; time until every member's VirtualService carries the change
    (`make_template(tag)`: the template with the VirtualService's x-tag header set to tag). With
    `traces`, each edit appends its EditTrace (`snapshot` taken before the first edit and after each)."""
    make_template = make_template or template
    seen: dict[tuple[str, str], str] = {}
    arrived: dict[str, float] = {}
    current: list[str] = [""]
    changed = asyncio.Event()

    async def watch(member: str, client: KubeClient) -> None:
        path = f"/apis/networking.istio.io/v1/namespaces/{ns}/virtualservices"
        items, rv = await client.list(path, label_selector=f"{HUB}=meshfed-hub")
        for it in items:
            seen[(member, it["metadata"]["name"])] = it["spec"]["http"][0]["headers"]["response"]["set"]["x-tag"]
        while True:
            async for ev in client.watch(path, rv, label_selector=f"{HUB}=meshfed-hub"):
                rv = ev.object["metadata"].get("resourceVersion", rv)
                if ev.type in ("ADDED", "MODIFIED"):
                    spec = ev.object["spec"]
                    tag_now = spec["http"][0]["headers"]["response"]["set"]["x-tag"]
                    seen[(member, ev.object["metadata"]["name"])] = tag_now
                    if tag_now == current[0]:
                        arrived.setdefault(member, time.monotonic())
                    changed.set()

    tasks = [asyncio.create_task(watch(n, c)) for n, c in members.items()]
    await asyncio.sleep(1.0)
    out: list[float] = []
    before = await snapshot() if snapshot is not None else {}
    try:
        for k in range(samples):
            name = f"ap-{(k * 7) % aps}"
            tag = f"lat-{k}"
            current[0] = tag
            arrived.clear()
            start = time.monotonic()
            await hub.merge_patch(f"{AP_PATH.format(ns=ns)}/{name}", {"spec": {"template": make_template(tag)}})
            patched = time.monotonic() - start
            while not all(seen.get((m, name)) == tag for m in members):
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(), 10)
                except TimeoutError:
                    raise AssertionError(f"change {tag} of {name} not propagated in 10 s") from None
            out.append(time.monotonic() - start)
            if traces is not None:
                after = await snapshot() if snapshot is not None else {}
                traces.append(EditTrace(patched, {m: at - start for m, at in arrived.items()},
                                        {k: v - before.get(k, 0.0) for k, v in after.items()}))
                before = after
            await asyncio.sleep(0.05)
    finally:
        for t in tasks:
            t.cancel()
    return out


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="meshfed-bench-"))
    fleet = Fleet(root)
    print(f"fleet: hub + {args.members} members ({root})", flush=True)
    await fleet.up(members=args.members, regions=2, zones=args.members, vip_allocator=False)
    assert fleet.state is not None
    hub = await fleet.state.hub.client()
    members = {m.name: await m.client() for m in fleet.state.members}
    # The bulk load and the latency run with the controller's defaults (probe every 5 s, resync every
    # 10 min), as users run it; the restart brings --resync short so that the no-op window sees one.
    production = ["--workers", str(args.workers), "--probe-interval", "5", "--resync", "600"]
    ctl = ControllerProcess(fleet.state.hub.kubeconfig, root / "controller.log", extra=production)
    with_production = list(ctl.base_args)
    try:
        total_objects = args.aps * 5 * args.members
        print(f"baseline: direct SSA of {total_objects} objects, {args.workers} AccessPoints in flight ...",
              flush=True)
        meter = CpuMeter(fleet, ctl)
        cpu0 = meter.sample()
        base = (await baseline(fleet, members, args.aps, args.workers)).seconds
        base_cpu = CpuMeter.since(cpu0, meter.sample())
        print(f"  baseline: {base:.1f} s ({total_objects / base:.0f} objects/s)", flush=True)

        ns = "bench"
        await ensure_ns(hub, ns)
        ctl.start()
        # The bulk begins once the controller is ready (every member probed and listed), as in the scale
        # bench: begun 3 s after the start, it overlapped the controller's warm-up, and a member's change
        # then reconciled every AccessPoint created so far (218 more reconciles in one run, none in the next).
        await until_ready(ctl)
        print(f"meshfed: {args.aps} AccessPoints x 5 objects x {args.members} members ...", flush=True)
        counters: dict[str, Any] = {}

        async def count_from_here() -> None:
            counters["cpu"] = meter.sample()
            counters["hub"] = await request_breakdown(hub)
            counters["members"] = await all_requests(members)
            counters["causes"] = await asyncio.to_thread(ctl.metric_by, "meshfed_reconcile_causes_total", "cause",
                                                         kind="accesspoint")

        try:  # named ap-<i>: the latency edits below patch them
            took = await meshfed_bulk(hub, ns, args.aps, args.workers, args.members, prefix="ap-",
                                      at_start=count_from_here)
        except TimeoutError:
            raise SystemExit("not all AccessPoints applied within 15 minutes:\n" + ctl.log_tail()) from None
        bulk_cpu = CpuMeter.since(counters["cpu"], meter.sample())
        bulk_hub_writes = diff_breakdown(counters["hub"], await request_breakdown(hub))
        bulk_member_requests = diff_breakdown(counters["members"], await all_requests(members))
        causes = await asyncio.to_thread(ctl.metric_by, "meshfed_reconcile_causes_total", "cause", kind="accesspoint")
        causes = {k: v - counters["causes"].get(k, 0.0) for k, v in causes.items()}
        print(f"  meshfed: {took:.1f} s ({total_objects / took:.0f} objects/s); {sum(causes.values()):.0f} AccessPoint "
              f"reconciles ({sum(causes.values()) / args.aps:.2f} each), asked for by "
              + ", ".join(f"{k} {v:.0f}" for k, v in sorted(causes.items(), key=lambda kv: -kv[1]) if v > 0),
              flush=True)

        # Settle: the last reconciles after "Applied" (rollout phase Succeeded, events) are part of
        # the bulk load, not of a no-op resync.
        settled = await settle(hub, members)
        # The bulk's hub writes: until settled (Events are posted from a queue, some after "Applied").
        settled_hub_writes = diff_breakdown(counters["hub"], await request_breakdown(hub))

        # A restart with a short resync: its writes once it has looked at every AccessPoint, then the
        # writes of a window in which it reconciled every AccessPoint again (both counted only with that
        # evidence: a window that saw no resync would say 0 whatever a resync writes).
        before = await writes(hub, members)
        ctl.base_args = [*with_production, "--resync", str(args.resync)]  # the last --resync counts
        ctl.restart()
        await wait_caught_up(ctl, hub)
        restart = diff_breakdown(before, await writes(hub, members))

        before = await writes(hub, members)
        reconciled0 = await asyncio.to_thread(ctl.metric, "meshfed_reconciles_total", kind="accesspoint")
        print(f"no-op resync: waiting {args.resync + 10:.0f} s (resync every {args.resync:.0f} s) ...", flush=True)
        await asyncio.sleep(args.resync + 10)
        noop = diff_breakdown(before, await writes(hub, members))
        resynced = await asyncio.to_thread(ctl.metric, "meshfed_reconciles_total", kind="accesspoint") - reconciled0
        if resynced < args.aps:
            raise SystemExit(f"no resync in the no-op window: {resynced:.0f} AccessPoint reconciles for {args.aps} "
                             f"AccessPoints\n{ctl.log_tail()}")

        # The edits with the controller's defaults again, as users run it.
        ctl.base_args = list(with_production)
        ctl.restart()
        await wait_caught_up(ctl, hub)
        print(f"latency: {args.samples} single changes, hub edit -> all {args.members} members updated ...",
              flush=True)
        lat = await latency(hub, members, ns, args.samples, args.aps)
        assert ctl.proc is not None
        rss_after_restart = peak_rss_mb(ctl.proc.pid)

        # Peak RSS over the full bulk load: a fresh controller takes over all AccessPoints again.
        print("\n==== propagation benchmark ====")
        print(f"fleet: hub + {args.members} members, {args.aps} AccessPoints x 5 objects = {total_objects} objects")
        print(f"controller flags: {' '.join(production)} (for the no-op window --resync {args.resync:.0f})")
        print(f"baseline (direct SSA, {args.workers} in flight):  {base:7.1f} s   {total_objects / base:6.0f} obj/s")
        print(f"meshfed (hub create -> Applied everywhere):   {took:7.1f} s   {total_objects / took:6.0f} obj/s")
        print(f"settling after Applied (until 6 s without writes): {settled:4.1f} s")
        print(f"  CPU during the baseline: {base_cpu} CPU")
        print(f"  CPU during meshfed:      {bulk_cpu} CPU")
        print(f"  hub requests during meshfed's bulk (incl. the bench's {args.aps} creates and its watch): "
              f"{bulk_hub_writes}")
        print(f"  member requests during meshfed's bulk (all members): {bulk_member_requests}")
        print(f"ratio baseline/meshfed:                       {base / took:7.2f}     "
              + ("(the first pair, meshfed second; balanced over the order below)" if args.pairs > 1
                 else "(target >= 0.80; one pair, meshfed second: --pairs 2 or more balances the order)"))
        controller_writes = meshfed_hub_writes(settled_hub_writes)
        print(f"hub writes per member object, bulk + settling: {sum(controller_writes.values()) / total_objects:6.3f}"
              f"     (target <= 0.100) {controller_writes}")
        print(f"writes during a no-op resync:                 {sum(noop.values()):7d}     (target 0; "
              f"{resynced:.0f} AccessPoint reconciles in the window) {noop or ''}")
        print(f"writes after a controller restart:            {sum(restart.values()):7d}     (target 0) "
              f"{restart or ''}")
        print(f"single change hub -> all members: p50 {statistics.median(lat) * 1000:6.0f} ms, "
              f"p99 {pct(lat, 99) * 1000:6.0f} ms, max {max(lat) * 1000:6.0f} ms   (target p99 <= 1000 ms; "
              f"Karmada p99 1298 ms)")
        print(f"controller peak RSS (restarted controller, all {args.aps} AccessPoints): "
              f"{rss_after_restart:6.0f} MB   (target <= 300 MB)")
        if args.pairs > 1:
            pairs = await more_pairs(fleet, hub, members, args, (base, took))
            print(f"ratio baseline/meshfed over {len(pairs)} pairs, order-balanced: {balanced_ratio(pairs):.2f} "
                  f"(target >= 0.80); each (baseline / meshfed s, the odd pairs baseline first): "
                  + ", ".join(f"{b / m:.2f} ({b:.1f} / {m:.1f})" for b, m in pairs))
    except BaseException:
        print("---- controller log (tail) ----\n" + ctl.log_tail(6000))
        raise
    finally:
        ctl.stop()
        await hub.close()
        for c in members.values():
            await c.close()
        fleet.down()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--aps", type=int, default=500)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--resync", type=float, default=20.0)
    parser.add_argument("--pairs", type=int, default=2,
                        help="bulk pairs (baseline, meshfed) in all, in turn baseline first and meshfed first: the "
                             "ratio order-balanced over them (an even number; issue 20's figure: 4)")
    # The baseline client gets the controller's garbage-collector policy, so the comparison is
    # between the two programs, not between GC settings.
    tune_gc()
    asyncio.run(main(parser.parse_args()))
