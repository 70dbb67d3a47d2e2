"""Prometheus metrics of the controller, and its HTTP endpoint (/metrics, /healthz, /readyz).

Owns the prometheus-client registry and every metric the controller exports (names, help texts,
labels); modules record through these objects (or through federation.telemetry.count, which feeds
both OpenTelemetry and these). The endpoint is served with aiohttp on `--http-address`. Queue depth
and member reachability are read when scraped (callbacks registered by the controller). Imports
prometheus_client and aiohttp only.

Example queries (README "Metrics"):
  rate(meshfed_reconciles_total[5m])                                      reconciles per second, by kind
  histogram_quantile(0.95, sum by (le) (rate(meshfed_reconcile_duration_seconds_bucket[5m])))
  sum by (cluster, verb) (rate(meshfed_member_writes_total[5m]))          member writes by verb and cluster
  meshfed_queue_depth                                                     keys waiting, per queue
  meshfed_queue_longest_running_seconds > 300                             a reconcile that does not end
  min by (cluster) (meshfed_member_reachable) == 0                        unreachable members
  sum(meshfed_shards_held) != scalar(max(meshfed_shards_total))           shards nobody holds
  increase(meshfed_lease_transitions_total{transition="lost"}[15m]) > 0   replicas losing Leases
  sum by (reason) (rate(meshfed_sds_refusals_total[5m]))                  SDS clients refused (`meshfed sds`)
  histogram_quantile(0.99, rate(meshfed_event_loop_lag_seconds_bucket[5m]))  a busy or blocked event loop
  histogram_quantile(0.99, sum by (le) (rate(meshfed_queue_wait_seconds_bucket{level="urgent"}[5m])))
                                                                          how long an edit waits for a worker
  rate(meshfed_gc_pause_seconds_sum[5m])                                  share of time in the garbage collector
  sum by (phase) (rate(meshfed_reconcile_phase_seconds_sum[5m]))          where AccessPoint reconciles spend their time
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("meshfed.metrics")

registry = CollectorRegistry(auto_describe=True)
LAG_PERIOD = 0.25  # seconds between event-loop lag samples

reconciles = Counter("meshfed_reconciles", "Reconciles run, by kind (accesspoint, membercluster, nameservice, "
                     "dnsprovider, certificate, issuer)", ["kind"], registry=registry)
reconcile_causes = Counter("meshfed_reconcile_causes", "Reconciles run, by kind and what asked for them (the "
                           "first ask while queued): hub-object, member-object, relist, waking, landed, "
                           "lane-room, member-<why> (a member changed: federation.members), resync, retry, "
                           "timer, warming, deleting, shard, policy, istiod, rollout, tenancy, certificate, "
                           "nameservice, fenced, other (direct: run_one called without one)",
                           ["kind", "cause"], registry=registry)
reconcile_duration = Histogram("meshfed_reconcile_duration_seconds", "Duration of one reconcile, by kind", ["kind"],
                               buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                               registry=registry)
reconcile_errors = Counter("meshfed_reconcile_errors", "Reconciles that failed (retried), by kind", ["kind"],
                           registry=registry)
member_writes = Counter("meshfed_member_writes", "Writes sent to member API servers, by cluster and verb "
                        "(create, apply, patch: an object we created handed to our applies, delete)",
                        ["cluster", "verb"], registry=registry)
member_watches = Gauge("meshfed_member_watches", "Watches open on each member (a kind is watched while an "
                       "AccessPoint plans it there or objects of ours of it exist)", ["cluster"], registry=registry)
member_errors = Counter("meshfed_member_errors", "Failed member calls, by cluster", ["cluster"], registry=registry)
member_cache_repairs = Counter("meshfed_member_cache_repairs", "Member caches dropped or relisted because they "
                               "disagreed with the member (identity, resourceVersions, verification list)",
                               ["cluster"], registry=registry)
member_not_answering = Counter("meshfed_member_not_answering", "Times a member's circuit breaker opened (a request "
                               "timed out or a probe failed)", ["cluster"], registry=registry)
hub_writes = Counter("meshfed_hub_writes", "Writes to the hub, by kind (status, finalizer, event, ...)", ["kind"],
                     registry=registry)
dns_updates = Counter("meshfed_dns_updates", "DNS change sets sent to providers", registry=registry)
certificates_issued = Counter("meshfed_certificates_issued", "Certificates issued or renewed", registry=registry)
shards_held = Gauge("meshfed_shards_held", "Shards this replica holds", registry=registry)
shards_total = Gauge("meshfed_shards_total", "Configured number of shards", registry=registry)
replicas_live = Gauge("meshfed_replicas_live", "Live replicas this replica sees (replica Leases)", registry=registry)
lease_transitions = Counter("meshfed_lease_transitions", "Lease transitions of this replica, by Lease kind "
                            "(shard, singleton) and transition (acquired, released, lost)", ["kind", "transition"],
                            registry=registry)
sds_refusals = Counter("meshfed_sds_refusals", "Clients `meshfed sds` refused, by reason (Unauthenticated: no "
                       "verified client certificate / mapped peer uid; PermissionDenied: a secret not granted to "
                       "the client's identity)", ["reason"], registry=registry)
gc_pauses = Histogram("meshfed_gc_pause_seconds", "Pauses of the controller's garbage collector, by generation "
                      "(0 and 1 are young; 2 scans every tracked object)", ["generation"],
                      buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=registry)
loop_lag = Histogram("meshfed_event_loop_lag_seconds", "How late the event loop ran a timer due now, sampled every "
                     f"{LAG_PERIOD} s: every reconcile, probe and Lease renewal waits that long", registry=registry,
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
queue_wait = Histogram("meshfed_queue_wait_seconds", "How long a key waited in a work queue before a worker took "
                       "it, by queue and level (urgent: a hub edit or event; bulk: resyncs, timers, retries); "
                       "client-go's workqueue_queue_duration_seconds", ["queue", "level"], registry=registry,
                       buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
reconcile_phase = Histogram("meshfed_reconcile_phase_seconds", "Where an AccessPoint reconcile's time goes, by phase: "
                            "admit (finalizer, validation, placement, context), rollout (revision history and rollout "
                            "step, hub writes included), plan (rendering and planning every member), members "
                            "(waiting for the members' writes), status (the hub status write and Events)",
                            ["phase"], registry=registry,
                            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
fenced_writes = Counter("meshfed_fenced_writes", "Writes refused because their Lease was not held (fencing)",
                        ["lease"], registry=registry)


class _Callbacks(Collector):
    """Gauges computed at scrape time: queue depth per queue, reachability per member."""

    def __init__(self) -> None:
        self.queues: dict[str, Callable[[], int]] = {}
        # per queue: (keys being handled, seconds the longest-running of them has run)
        self.in_progress: dict[str, Callable[[], tuple[int, float]]] = {}
        self.reachability: Callable[[], Mapping[str, bool | None]] | None = None
        self.cache_objects: Callable[[], Mapping[str, int]] | None = None
        # /debug/caches: per member, objects cached, how many whole (not compared yet), bytes held.
        self.cache_footprint: Callable[[], Mapping[str, Mapping[str, int]]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("meshfed_queue_depth", "Keys waiting in a work queue", labels=["queue"])
        for name, fn in sorted(self.queues.items()):
            try:
                depth.add_metric([name], fn())
            except Exception:  # a queue being torn down: skip it
                continue
        yield depth
        active = GaugeMetricFamily("meshfed_queue_in_progress", "Keys a worker is handling now, per queue",
                                   labels=["queue"])
        longest = GaugeMetricFamily("meshfed_queue_longest_running_seconds", "How long the longest-running "
                                    "handling of a key has run (0: none), per queue; client-go's "
                                    "workqueue_longest_running_processor_seconds", labels=["queue"])
        for name, running in sorted(self.in_progress.items()):
            try:
                count, seconds = running()
            except Exception:  # a queue being torn down: skip it
                continue
            active.add_metric([name], float(count))
            longest.add_metric([name], seconds)
        yield active
        yield longest
        reach = GaugeMetricFamily("meshfed_member_reachable", "1 when the member's API server answers its probe, "
                                  "0 when not (absent: not probed yet)", labels=["cluster"])
        if self.reachability is not None:
            for name, ok in sorted(self.reachability().items()):
                if ok is not None:
                    reach.add_metric([name], 1.0 if ok else 0.0)
        yield reach
        cached = GaugeMetricFamily("meshfed_member_cache_objects", "Member objects this replica caches (only its "
                                   "shards' objects), by cluster", labels=["cluster"])
        if self.cache_objects is not None:
            for name, n in sorted(self.cache_objects().items()):
                cached.add_metric([name], float(n))
        yield cached


callbacks = _Callbacks()
registry.register(callbacks)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time one phase of an AccessPoint reconcile into meshfed_reconcile_phase_seconds (also when it raises)."""
    started = time.monotonic()
    try:
        yield
    finally:
        reconcile_phase.labels(phase=name).observe(time.monotonic() - started)


async def sample_loop_lag(period: float = LAG_PERIOD) -> None:
    """Observe meshfed_event_loop_lag_seconds for ever: sleep `period`, record how late the wake-up came."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + period
        await asyncio.sleep(period)
        loop_lag.observe(max(0.0, loop.time() - due))


def render() -> bytes:
    return generate_latest(registry)


class HttpServer:
    """/metrics, /healthz (the event loop answers and the Lease loop is not stuck), /readyz."""

    def __init__(self, address: str, healthy: Callable[[], tuple[bool, str]],
                 ready: Callable[[], tuple[bool, str]]) -> None:
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]") or "0.0.0.0"
        self.port = int(port)
        self.healthy = healthy
        self.ready = ready
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._check(lambda: self.healthy()))
        app.router.add_get("/readyz", self._check(lambda: self.ready()))
        app.router.add_get("/debug/memory", self._memory)
        app.router.add_get("/debug/caches", self._caches)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.info("serving /metrics, /healthz and /readyz on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await asyncio.shield(self._runner.cleanup())
            self._runner = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    @staticmethod
    async def _memory(request: web.Request) -> web.Response:
        """Where the controller's Python memory is, by allocating line (`?top=N`, `?by=traceback`), when
        started with PYTHONTRACEMALLOC=<frames> (Python's own switch; tracing costs CPU and memory, so it
        is off unless asked for). Sizes and source lines only, never object contents."""
        if not tracemalloc.is_tracing():
            return web.Response(status=404, text="tracemalloc is off: start the controller with "
                                                 "PYTHONTRACEMALLOC=1 (or more frames) to see /debug/memory\n")
        top = int(request.query.get("top", "30"))
        by = "traceback" if request.query.get("by") == "traceback" else "lineno"
        snapshot = await asyncio.to_thread(tracemalloc.take_snapshot)
        stats = await asyncio.to_thread(snapshot.statistics, by)
        current, peak = tracemalloc.get_traced_memory()
        lines = [f"traced: {current / 2**20:.1f} MiB now, {peak / 2**20:.1f} MiB peak; top {top} by {by}"]
        for stat in stats[:top]:
            lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:9d} blocks  {stat.traceback.format()[0].strip()}")
            if by == "traceback":
                lines += ["        " + f.strip() for f in stat.traceback.format()[1:]]
        return web.Response(text="\n".join(lines) + "\n")

    @staticmethod
    async def _caches(_request: web.Request) -> web.Response:
        """What the member caches hold, per member and in all: objects, objects cached whole (a version
        not compared yet with what it should be), and bytes of Python objects (parts shared between
        members counted once). Walks every cached record in the event loop: a debug page, not a metric.
        Counts only, never object contents."""
        footprint = callbacks.cache_footprint
        if footprint is None:
            return web.Response(status=404, text="no member caches in this process\n")
        per_member = footprint()
        total = {k: sum(m[k] for m in per_member.values()) for k in ("objects", "whole", "bytes")}
        return web.json_response({"members": per_member, "total": total})

    @staticmethod
    def _check(fn: Callable[[], tuple[bool, str]]) -> Callable[[web.Request], asyncio.Future[web.Response]]:
        async def handler(_request: web.Request) -> web.Response:
            ok, why = fn()
            return web.Response(status=200 if ok else 503, text=(why or ("ok" if ok else "not ready")) + "\n")

        return handler  # type: ignore[return-value]
