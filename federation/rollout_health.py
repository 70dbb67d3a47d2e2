"""Measured rollout health in the controller: probe scheduling and Analysis figures (issue 15).

Owns the runtime between the pure rollout step and the gateways:
- probes: for the clusters `step` names in `RolloutActions.probes` (released, on the new revision,
  not healthy yet) one probe loop each, every `periodSeconds`, through `federation.probes` with at
  most `concurrency` probes in flight controller-wide; every result is folded into the cluster's
  `ProbeRecord` (`accesspoint.health.tally`) and enqueues the AccessPoint. A cluster no longer named
  (healthy, paused, aborted, done, a new revision) has its loop stopped: no probe traffic when no
  wave waits on health. Records are shown in the cluster's status entry (`probe`) and read back from
  there after a restart.
- observations: a cluster on the revision being rolled out is Healthy only when its probe record
  says so, Failed when it is Unhealthy (the message names URL, VIP and answer), else Progressing.
- Analysis: while `step` keeps an `AnalysisRequest` open, a baseline of each canary and stable
  cluster's gateway counters is taken when it opens, and the deltas since are passed to the next
  steps (`federation.gatewaystats`, at most once per `READ_EVERY` seconds).
- the route stat prefix: a context provider that gives the VirtualServices of an AccessPoint with an
  Analysis gate the stat prefix the gateway counts its traffic under.

Imports accesspoint.*, placement.models and federation's client modules; wired by federation.rollouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from accesspoint.health import (
    AnalysisFigures,
    HttpProbe,
    ProbeRecord,
    probe_message,
    stat_prefix,
    tally,
    with_stat_prefix,
)
from accesspoint.models import AccessPoint, ClusterStatus
from accesspoint.render import RenderContext
from accesspoint.rollout import AnalysisRequest, ClusterObservation, probe_url
from federation.gatewaystats import Reading, StatsReader
from federation.hubwriter import now_rfc3339
from federation.members import Member
from federation.probes import send_probe
from placement.models import ClusterFacts, PlacementDecision

if TYPE_CHECKING:
    from federation.controller import Controller

log = logging.getLogger("meshfed.rollouts.health")

READ_EVERY = 1.0  # seconds: the gateways are read at most this often per AccessPoint


def http_probe(ap: AccessPoint) -> HttpProbe | None:
    rollout = ap.spec.rollout
    return rollout.health_checks.http if rollout and rollout.health_checks else None


def has_analysis(ap: AccessPoint) -> bool:
    rollout = ap.spec.rollout
    if rollout is None:
        return False
    return any(g.type == "Analysis" for w in rollout.waves for g in (*w.before, *w.after))


def observation_with_probe(base: ClusterObservation, entry: ClusterStatus, probe: HttpProbe,
                           record: ProbeRecord | None) -> ClusterObservation:
    """Fold the probe verdict into a Healthy-so-far observation of the revision being rolled out."""
    if base.health != "Healthy":
        return base
    if record is None or record.revision != entry.revision or record.last is None:
        return base.model_copy(update={"health": "Progressing", "message": "waiting for the first probe"})
    message = probe_message(record, probe)
    if record.verdict == "Healthy":
        return base.model_copy(update={"message": message})
    if record.verdict == "Unhealthy":
        return base.model_copy(update={"health": "Failed", "message": message})
    return base.model_copy(update={"health": "Progressing", "message": message})


@dataclass
class _Target:
    probe: HttpProbe
    url: str
    vip: str | None
    revision: str


@dataclass
class _Track:
    """One open Analysis gate of one AccessPoint."""

    request: AnalysisRequest
    prefix: str
    baselines: dict[str, Reading] = field(default_factory=dict)
    figures: AnalysisFigures | None = None
    read_at: float = 0.0


class RolloutHealth:
    def __init__(self, controller: Controller, concurrency: int = 8) -> None:
        self.controller = controller
        self.records: dict[str, dict[str, ProbeRecord]] = {}   # AccessPoint uid -> cluster -> record
        self.targets: dict[tuple[str, str], _Target] = {}       # (uid, cluster) -> what to probe
        self.loops: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.keys: dict[str, str] = {}                          # uid -> "ns/name"
        self.tracks: dict[str, _Track] = {}                     # uid -> open Analysis gate
        self.limit = asyncio.Semaphore(concurrency)
        self.stats = StatsReader()
        self.probes_sent = 0

    async def close(self) -> None:
        for task in self.loops.values():
            task.cancel()
        for task in list(self.loops.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.loops.clear()
        await self.stats.close()

    # -- records and observations ----------------------------------------------------------------
    def seed(self, uid: str, entries: list[ClusterStatus]) -> None:
        """After a start: the probe records the status carries (so a restart does not re-probe)."""
        if uid in self.records:
            return
        self.records[uid] = {e.name: e.probe for e in entries if e.probe is not None}

    def observe(self, ap: AccessPoint, uid: str, entry: ClusterStatus, base: ClusterObservation,
                rolling: str | None) -> ClusterObservation:
        probe = http_probe(ap)
        if probe is None or rolling is None or entry.revision != rolling:
            return base
        return observation_with_probe(base, entry, probe, self.records.get(uid, {}).get(entry.name))

    def decorate(self, uid: str, entries: list[ClusterStatus]) -> list[ClusterStatus]:
        """Status entries with their cluster's probe record (for the revision the entry carries)."""
        records = self.records.get(uid, {})
        out = []
        for e in entries:
            record = records.get(e.name)
            keep = record if record is not None and record.revision == e.revision else None
            out.append(e if e.probe == keep else e.model_copy(update={"probe": keep}))
        return out

    # -- probes -----------------------------------------------------------------------------------
    def want_probes(self, ap: AccessPoint, uid: str, clusters: list[str], entries: Mapping[str, ClusterStatus],
                    facts: Mapping[str, ClusterFacts], fqdn: str) -> None:
        key = f"{ap.namespace}/{ap.name}"
        self.keys[uid] = key
        probe = http_probe(ap)
        wanted: set[tuple[str, str]] = set()
        for name in clusters if probe is not None else []:
            entry, fact = entries.get(name), facts.get(name)
            if entry is None or fact is None or entry.revision is None or entry.state != "Applied":
                continue
            assert probe is not None
            cluster_fqdn = entry.fqdn or fqdn
            target = _Target(probe, probe_url(probe, fact, vip=entry.vip or "", fqdn=cluster_fqdn), entry.vip,
                             entry.revision)
            pair = (uid, name)
            wanted.add(pair)
            self.targets[pair] = target
            loop = self.loops.get(pair)
            if loop is None or loop.done():
                self.loops[pair] = asyncio.create_task(self._loop(uid, name), name=f"probe {key} {name}")
        for pair in [p for p in self.loops if p[0] == uid and p not in wanted]:
            self.loops.pop(pair).cancel()
            self.targets.pop(pair, None)

    def forget(self, uid: str) -> None:
        for pair in [p for p in self.loops if p[0] == uid]:
            self.loops.pop(pair).cancel()
            self.targets.pop(pair, None)
        self.tracks.pop(uid, None)

    async def _loop(self, uid: str, cluster: str) -> None:
        pair = (uid, cluster)
        while True:
            target = self.targets.get(pair)
            if target is None or self.keys.get(uid) not in self.controller.accesspoints:
                self.targets.pop(pair, None)
                return
            async with self.limit:
                result = await send_probe(target.probe, target.url, target.vip, at=now_rfc3339())
            self.probes_sent += 1
            if self.targets.get(pair) is not target and self.targets.get(pair) is not None \
                    and self.targets[pair].revision != target.revision:
                continue  # retargeted to another revision meanwhile: this result is stale
            records = self.records.setdefault(uid, {})
            records[cluster] = tally(records.get(cluster), result, target.probe, target.revision)
            key = self.keys.get(uid)
            if key is not None:
                self.controller.enqueue(f"ap/{key}", cause="rollout")
            await asyncio.sleep(target.probe.period_seconds)

    # -- Analysis ---------------------------------------------------------------------------------
    async def figures(self, uid: str, members: Mapping[str, Member]) -> AnalysisFigures | None:
        """The deltas since the open gate's baseline (None when no gate is open)."""
        track = self.tracks.get(uid)
        if track is None:
            return None
        if track.figures is not None and time.monotonic() - track.read_at < READ_EVERY:
            return track.figures
        names = list(dict.fromkeys(track.request.canary + track.request.stable))
        readings = await asyncio.gather(*(self._read(members.get(n), n, track.prefix) for n in names))
        now = time.monotonic()
        clusters, unreadable, spans = {}, {}, []
        for name, reading in zip(names, readings, strict=True):
            if isinstance(reading, str):
                unreadable[name] = reading
                continue
            base = track.baselines.get(name)
            if base is None:  # no baseline yet (unreadable when the gate opened): this is it
                track.baselines[name] = reading
                unreadable[name] = "baseline taken now (the gateway could not be read when the gate opened)"
                continue
            clusters[name] = reading.minus(base)
            if name in track.request.canary:
                spans.append(reading.at - base.at)
        track.figures = AnalysisFigures(key=track.request.key, seconds=min(spans) if spans else 0.0,
                                        clusters=clusters, unreadable=unreadable)
        track.read_at = now
        return track.figures

    async def track(self, ap: AccessPoint, uid: str, request: AnalysisRequest | None,
                    members: Mapping[str, Member]) -> None:
        """Follow the step's AnalysisRequest: a new gate takes its baseline now; none closes it."""
        if request is None:
            self.tracks.pop(uid, None)
            return
        current = self.tracks.get(uid)
        if current is not None and current.request.key == request.key:
            current.request = request
            return
        track = _Track(request=request, prefix=stat_prefix(ap.namespace, ap.name))
        self.tracks[uid] = track
        names = list(dict.fromkeys(request.canary + request.stable))
        readings = await asyncio.gather(*(self._read(members.get(n), n, track.prefix) for n in names))
        for name, reading in zip(names, readings, strict=True):
            if isinstance(reading, Reading):
                track.baselines[name] = reading
        self.keys[uid] = f"{ap.namespace}/{ap.name}"

    async def _read(self, member: Member | None, name: str, prefix: str) -> Reading | str:
        if member is None:
            return "member cluster not registered"
        source = member.spec.spec.gateway_stats
        if source is None:
            return f"MemberCluster {name} has no spec.gatewayStats: its gateway's stats cannot be read"
        try:
            return await self.stats.read(source, member.client, prefix)
        except LookupError as err:
            return str(err)

    # -- the route stat prefix --------------------------------------------------------------------
    async def context(self, ap: AccessPoint, decision: PlacementDecision,
                      members: Mapping[str, Member]) -> RenderContext:
        if not has_analysis(ap):
            return RenderContext()
        prefix = stat_prefix(ap.namespace, ap.name)

        def transform(objects: list[dict[str, Any]], cluster: ClusterFacts) -> list[dict[str, Any]]:
            return with_stat_prefix(objects, prefix)

        return RenderContext(transforms=(transform,))
