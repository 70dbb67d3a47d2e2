"""The hub controller: reconciles AccessPoints and MemberCluster status, each in a keyed work loop
(federation/workloop.py: `loop` for AccessPoints, `member_loop` for MemberCluster status).

Owns the reconcile loop: gather facts (hub objects from kopf events, member caches and probes)
→ pure functions (validate, place, render, plan, summarize) → member writes through the executor
→ one status write on change. Handlers feeding it stay thin (federation/operator.py). Imports the
pure packages and federation's client modules.

With several replicas (`self.shards`, federation/shards.py) a worker runs a key only while this
replica holds the key's Lease (an AccessPoint's shard; the MEMBERS singleton for MemberCluster
status), inside `shards.working_on` so every write it causes is fenced; member objects carry the
shard label and the member caches hold only the held shards' objects. Without `shards` (None) the
controller holds everything, as a single process always did.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from accesspoint.istioverdict import (
    RouteVerdict,
    ZoneVerdict,
    analyzer_messages,
    moves_routes,
    route_verdict,
    zone_verdict,
)
from accesspoint.kinds import ISTIO_NET, group_of
from accesspoint.models import AccessPoint, AccessPointStatus, ClusterStatus
from accesspoint.ownership import Owner
from accesspoint.plan import Plan, plan
from accesspoint.render import EMPTY_CONTEXT, RenderContext, Rendered, Renderer, key_of, validate
from accesspoint.revisions import revision_hash
from accesspoint.status import applied_message, held_entry, pending_text, summarize
from federation import metrics, shards, telemetry
from federation.executor import Outcome, execute
from federation.hubwriter import FINALIZER, HubWriter, now_rfc3339
from federation.kube import ApiError, KubeClient
from federation.lanes import Flight, MemberLane, wait_flights
from federation.members import DEGRADED_AFTER, VERIFY_INTERVAL, Member, MemberRegistry, slim
from federation.workloop import WorkLoop
from placement.models import ClusterFacts, MemberClusterStatus, PlacementDecision, PlacementPolicy, PlacementSpec
from placement.select import select

log = logging.getLogger("meshfed.controller")

# MemberRegistry.on_member_change causes that are the member's own state (federation/members.py), not
# its MemberCluster's: "upsert" (labels, region, zone, taints, kubeconfig), "mesh" and "removed" can move
# any AccessPoint's placement; these only those whose placement turns on that member or that it holds.
MEMBER_SIDE_CAUSES = frozenset({"probe", "not-answering", "reset", "listed", "workloads", "no-shard"})

# ---- extension points: each feature's wiring lives in its own module and registers here ----
# Validator: blocking problems (each naming its field) for an AccessPoint, given the known clusters, its
# placement spec (None: its PlacementPolicy is missing) and the placement decided over them (the one the
# reconcile goes on with, computed once: empty without a spec).
Validator = Callable[[AccessPoint, Sequence[ClusterFacts], PlacementSpec | None, PlacementDecision], list[str]]
# ContextProvider: facts for rendering (traffic transforms, generated objects), once per reconcile.
ContextProvider = Callable[[AccessPoint, PlacementDecision, Mapping[str, Member]], Awaitable[RenderContext]]
# SpecSelector: which AccessPoint (revision) each placed cluster should carry (the rollout), given the
# AccessPoint's own revision (its spec's hash, computed once per reconcile).
SpecSelector = Callable[[AccessPoint, PlacementDecision, Mapping[str, Member], str],
                        Awaitable[Mapping[str, AccessPoint]]]
# StatusContributor: adds its part (FQDN, certificate, rollout, extra conditions) to a computed status.
StatusContributor = Callable[[AccessPoint, AccessPointStatus, AccessPointStatus | None, str], AccessPointStatus]
# StatusListener: told about every computed status of an AccessPoint (changed or not).
StatusListener = Callable[[str, AccessPoint, AccessPointStatus], None]
# RenderedValidator: blocking problems in one cluster's rendered objects (namespaces, hosts after
# variables, overrides and generated objects), given the AccessPoint (revision) that cluster carries.
# Every placed cluster is rendered and checked before anything is written to any of them.
RenderedValidator = Callable[[AccessPoint, str, Sequence[dict[str, Any]]], list[str]]
# ShardListener: the shards this replica acquired and lost (a feature enqueues / forgets their work).
ShardListener = Callable[[frozenset[int], frozenset[int]], None]

AP_PATH = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints/{name}"
MC_PATH = "/apis/meshfed.io/v1alpha1/memberclusters/{name}"


FeatureT = TypeVar("FeatureT")

def _field_path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_messages(err: ValidationError) -> list[str]:
    return [f"{_field_path(e['loc'])}: {e['msg']}" for e in err.errors()]


def revision_of(ap: AccessPoint) -> str:
    """Content hash of what lands on members (accesspoint.revisions decides what counts)."""
    return revision_hash(ap.spec)


def _planned_kinds(the_plan: Plan) -> list[tuple[str, str]]:
    """(API group, kind) of every object the plan creates, updates or deletes."""
    return ([(group_of(str(o.get("apiVersion") or "")), str(o.get("kind") or "")) for o in
             (*the_plan.create, *the_plan.update)] + [(k.group, k.kind) for k, _, _ in the_plan.delete])


@dataclass
class MemberWork:
    """The unit of work for one member: the objects rendered for it and the plan against what it holds
    (written by the executor here; a pull-mode agent inside the member could apply the same)."""

    ap: AccessPoint  # the revision this cluster carries
    owner: Owner
    member: Member
    placed: bool
    revision: str
    desired: list[dict[str, Any]]
    plan: Plan

    @property
    def pending(self) -> str:
        return pending_text(len(self.plan.create), len(self.plan.update), len(self.plan.delete))


def rfc3339(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


def _vip(objects: Iterable[dict[str, Any]]) -> str | None:
    for obj in objects:
        if obj.get("kind") != "Service" or (obj.get("spec") or {}).get("type") != "LoadBalancer":
            continue
        for ing in ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
            addr = ing.get("ip") or ing.get("hostname")
            if addr:
                return str(addr)
    return None


_VOLATILE_METADATA = frozenset({"resourceVersion", "managedFields"})


def _same_apart_from(a: Mapping[str, Any], b: Mapping[str, Any], top: frozenset[str],
                     metadata: frozenset[str]) -> bool:
    """`a` and `b` are equal once the `top` fields and the `metadata` fields (beyond resourceVersion and
    managedFields, which every write changes) are left out."""
    def rest(obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = {k: v for k, v in (obj.get("metadata") or {}).items()
                if k not in _VOLATILE_METADATA and k not in metadata}
        return {**{k: v for k, v in obj.items() if k not in top and k != "metadata"}, "metadata": meta}
    return rest(a) == rest(b)


def same_but_status(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """`a` and `b` differ at most in status, resourceVersion and managedFields (what a status write
    changes)."""
    return _same_apart_from(a, b, frozenset({"status"}), frozenset())


def same_but_finalizers(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """`a` and `b` differ at most in metadata.finalizers, resourceVersion and managedFields (what a
    finalizer patch changes) and `b` still carries ours: nothing a reconcile reads changed."""
    if FINALIZER not in ((b.get("metadata") or {}).get("finalizers") or []):
        return False  # ours was removed: a reconcile puts it back
    return _same_apart_from(a, b, frozenset(), frozenset({"finalizers"}))


class Controller:
    def __init__(self, hub: KubeClient, hub_id: str, *, workers: int = 16, probe_interval: float = 5.0,
                 resync_seconds: float = 600.0, istiod_options: dict[str, float] | None = None,
                 route_settle: float = 10.0, gateway_namespace: str = "istio-system",
                 verify_interval: float = VERIFY_INTERVAL) -> None:
        self.hub = hub
        # The member namespace of the gateway that serves AccessPoints, unless
        # spec.traffic.visibility.gatewayNamespace names another (exportTo includes it).
        self.gateway_namespace = gateway_namespace
        self.hub_id = hub_id
        self.writer = HubWriter(hub)
        self.registry = MemberRegistry(hub, hub_id, self._owner_changed, self._member_changed, probe_interval,
                                       on_istiod_change=self._istiod_changed, istiod_options=istiod_options,
                                       verify_interval=verify_interval,
                                       on_member_latency=lambda name: self.enqueue(f"mc/{name}"))
        # Per-member lanes (federation/lanes.py): a reconcile waits for a member's writes only while it
        # answers (a request unanswered for `stall_after` s with no other answer ends the wait), and at
        # most `flight_wait` s (beyond a member's whole-request deadline).
        self.lanes: dict[str, MemberLane[ClusterStatus | None]] = {}
        self.stall_after = 1.0
        self.flight_wait = 15.0
        # MemberCluster status has a loop and workers of its own: a member's Ready/Reachable is
        # written within a second of a probe's verdict, never behind a queue of AccessPoint work.
        self.member_loop = WorkLoop("memberclusters", lambda key: self.write_member_status(key[3:]), fencing=self,
                                    lease_of=self.lease_of, kind_of=lambda key: "membercluster", log=log)
        # routeConfigured: when meshfed last wrote an AccessPoint's objects to a member (monotonic), and
        # the verdict last reported, per (member, AccessPoint key).
        self.route_settle = route_settle
        self._written_at: dict[tuple[str, str], float] = {}
        self._verdicts: dict[tuple[str, str], RouteVerdict | None] = {}
        self._zone_verdicts: dict[tuple[str, str], ZoneVerdict | None] = {}  # zone primaries (issue 21)
        self.accesspoints: dict[str, dict[str, Any]] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self.memberclusters: dict[str, dict[str, Any]] = {}
        self.workers = workers
        self.resync_seconds = resync_seconds
        # The one keyed work loop (federation/workloop.py): event-driven keys (a hub edit, a member
        # object changed) go before bulk work (resync, member status changes, retries), so a user's
        # change never waits behind a re-check of every AccessPoint; fenced under the shard's Lease.
        # The reconcile decides when its backoff ends (a status with Failed/Unknown members retries).
        self.loop = WorkLoop("accesspoints", lambda key: self.reconcile_accesspoint(key[3:]), fencing=self,
                             lease_of=self.lease_of, kind_of=lambda key: "accesspoint", log=log,
                             reset_backoff_on_success=False)
        self._seen_generation: dict[str, tuple[int, float]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._last_cluster_state: dict[tuple[str, str], str] = {}
        # Per AccessPoint key, the members whose own state its last placement turned on
        # (PlacementDecision.hinges_on); absent: not planned yet, or refused (its validity may turn on any).
        self._hinges: dict[str, frozenset[str]] = {}
        self._warm_deadline = 0.0
        self.validators: list[Validator] = []
        self.rendered_validators: list[RenderedValidator] = []
        self.context_providers: list[ContextProvider] = []
        self.spec_selector: SpecSelector | None = None
        self.status_contributors: list[StatusContributor] = []
        self.status_listeners: list[StatusListener] = []
        self.shard_listeners: list[ShardListener] = []
        self.shards: shards.Shards | None = None  # set before start() to run as one of many replicas
        # The feature registry (federation/operator.py FEATURES): a feature installs itself here and
        # is found again by its type; `enqueuers` routes a hub object's key to the work loop of the
        # feature that owns its kind (tenancy re-checks claimants of every kind without importing them).
        self._features: dict[type[Any], Any] = {}
        self.enqueuers: dict[str, Callable[[str, str], None]] = {
            "AccessPoint": lambda ns, name: self.enqueue(f"ap/{ns}/{name}", cause="tenancy")}
        metrics.callbacks.reachability = lambda: {
            n: (m.probe.reachable if not m.kubeconfig_error else False) for n, m in self.registry.members.items()}
        metrics.callbacks.cache_objects = lambda: {n: len(m.cache.objects) for n, m in self.registry.members.items()}
        metrics.callbacks.cache_footprint = self._cache_footprint

    # ---- features (federation/operator.py FEATURES) ----

    def install(self, feature: FeatureT) -> FeatureT:
        """Register `feature` (one per type) so other features and the kopf handlers find it."""
        self._features[type(feature)] = feature
        return feature

    def feature(self, kind: type[FeatureT]) -> FeatureT | None:
        """The installed feature of type `kind`, None when it is not installed."""
        found = self._features.get(kind)
        return found if isinstance(found, kind) else None

    def enqueue_object(self, kind: str, namespace: str, name: str) -> None:
        """Queue hub object `kind` namespace/name with the feature owning that kind (if installed)."""
        enqueue = self.enqueuers.get(kind)
        if enqueue is not None:
            enqueue(namespace, name)

    # ---- shards (federation/shards.py) ----

    def lease_of(self, key: str) -> str | None:
        """The Lease key a work-queue key runs under (None: not sharded)."""
        if self.shards is None:
            return None
        if key.startswith("mc/"):
            return shards.MEMBERS
        ns, _, name = key[3:].partition("/")
        return self.shards.shard_key(ns, name)

    def holds(self, lease: str | None) -> bool:
        return lease is None or self.shards is None or self.shards.valid(lease)

    def retry_when_renewed(self, lease: str | None, requeue: Callable[[], None]) -> bool:
        """Work stopped by fencing while this replica still holds its Lease (the renewal is late, not
        lost) runs again after a retry period: nothing else would enqueue it, since the shard is not
        acquired again. Work for a Lease that is gone is dropped: taking the shard again enqueues
        everything in it. True when the work was put back."""
        if lease is None or self.shards is None or not self.shards.holding(lease):
            return False
        asyncio.get_running_loop().call_later(self.shards.timing.retry_period, requeue)
        return True

    def in_shards(self, key: str, held: frozenset[int]) -> bool:
        """AccessPoint key "namespace/name" is in one of the shards `held`."""
        assert self.shards is not None
        ns, _, name = key.partition("/")
        return shards.shard_of(ns, name, self.shards.count) in held

    def _shards_changed(self, acquired: frozenset[int], lost: frozenset[int], singles: frozenset[str]) -> None:
        assert self.shards is not None
        self.registry.set_shard_filter(self.shards.cached_shards)
        self._warm_deadline = max(self._warm_deadline, time.monotonic() + 30.0)
        if lost:
            # Forget what this replica knew about the lost shards' work: should it take one of them
            # again, it starts from what the API servers say (another replica may have moved it on).
            self._forget(lambda ap_key, member: self.in_shards(ap_key, lost))
            for key in [k for k in self._hinges if self.in_shards(k, lost)]:
                del self._hinges[key]
            for key in [k for k in self.loop.retried() if self.in_shards(k[3:], lost)]:
                self.loop.succeeded(key)
        for listener in self.shard_listeners:
            listener(acquired, lost)
        if acquired:
            for key in list(self.accesspoints):
                if self.in_shards(key, acquired):
                    self.enqueue(f"ap/{key}", urgent=False, cause="shard")
        if shards.MEMBERS in singles:
            for name in list(self.memberclusters):
                self.enqueue(f"mc/{name}", urgent=False, cause="shard")

    def shard_labels(self, namespace: str, name: str) -> dict[str, str]:
        """Labels every member object of AccessPoint namespace/name carries (the shard label)."""
        if self.shards is None:
            return {}
        return {shards.SHARD_LABEL: str(shards.shard_of(namespace, name, self.shards.count))}

    # ---- event intake (called by the operator's handlers and the member registry) ----

    def enqueue(self, key: str, *, urgent: bool = True, cause: str = "other") -> None:
        """Queue "ap/<namespace>/<name>" (an AccessPoint reconcile) or "mc/<name>" (a MemberCluster status);
        `cause`: what asks for it (meshfed_reconcile_causes)."""
        if key.startswith("mc/"):
            self.member_loop.enqueue(key, cause=cause)
        else:
            self.loop.enqueue(key, urgent=urgent, cause=cause)

    def enqueue_later(self, key: str, delay: float, *, cause: str = "timer") -> None:
        (self.member_loop if key.startswith("mc/") else self.loop).enqueue_after(key, delay, cause=cause)

    def enqueue_all(self, *, cause: str) -> None:
        for key in list(self.accesspoints):
            if self._in_held_shard(key):
                self.enqueue(f"ap/{key}", urgent=False, cause=cause)

    def _in_held_shard(self, key: str) -> bool:
        """AccessPoint key "namespace/name" is in a shard this replica holds (always, unsharded). Another
        replica's keys would only be dropped at the Lease check (9 in 10 of them on 10 replicas), and
        taking a shard queues everything in it (_shards_changed)."""
        return self.shards is None or self.shards.holding(self.shards.shard_key(*key.split("/", 1)))

    @property
    def pending(self) -> int:
        return self.loop.pending

    def _owner_changed(self, member: str, owner_key: str, cause: str) -> None:
        lane = self.lanes.get(member)
        flight = lane.flight(owner_key) if lane is not None else None
        if flight is not None:
            # Our writes for this AccessPoint to this member are in the air: nothing is planned against
            # them until they land, so one reconcile then (MemberLane.on_landed), not one per event.
            flight.changed_meanwhile = True
            return
        self.enqueue(f"ap/{owner_key}", cause=cause)

    def _member_changed(self, member: str, why: str) -> None:
        self.enqueue(f"mc/{member}", cause=f"member-{why}")
        if why not in MEMBER_SIDE_CAUSES:
            self.enqueue_all(cause=f"member-{why}")
            return
        # The member's own state moved (a probe's verdict, a list, its Deployments): only the AccessPoints
        # that state can reach are planned again. At 1,000 members a probe flipping somewhere every few
        # seconds otherwise planned every AccessPoint on every member each time (7-23 s of CPU per
        # replica, zone placement, e2e/bench/scale.py's full pass).
        m = self.registry.members.get(member)
        holding = m.cache.by_owner.keys() if m is not None else ()
        # An Istio remote's reachability is in its primary's zone verdict (_zone_verdict), whatever the
        # remote's own placement code.
        primary = m.spec.spec.mesh_primary if m is not None else None
        for key in list(self.accesspoints):
            hinges = self._hinges.get(key)
            if (hinges is None or member in hinges or primary in hinges or key in holding) and \
                    self._in_held_shard(key):
                self.enqueue(f"ap/{key}", urgent=False, cause=f"member-{why}")

    def _forget(self, matches: Callable[[str, str], bool]) -> None:
        """Drop what this replica remembers per (AccessPoint key, member) where `matches(ap_key, member)`:
        its last write time, route and zone verdicts and reported cluster state (an AccessPoint or a
        member gone, a shard lost), so these maps stay as large as the fleet, not its history."""
        for by_member in (self._written_at, self._verdicts, self._zone_verdicts):
            for member, ap_key in [k for k in by_member if matches(k[1], k[0])]:
                del by_member[(member, ap_key)]
        for ap_key, member in [k for k in self._last_cluster_state if matches(k[0], k[1])]:
            del self._last_cluster_state[(ap_key, member)]
        self.registry.forget_wants(matches)

    def _cache_footprint(self) -> dict[str, dict[str, int]]:
        seen: set[int] = set()
        return {n: {"objects": len(m.cache.objects), "whole": m.cache.whole(), "bytes": m.cache.footprint(seen)}
                for n, m in sorted(self.registry.members.items())}

    def _route_verdict(self, member: Member, owner_key: str, objects: Iterable[dict[str, Any]]) -> RouteVerdict | None:
        view = member.istiod.view if member.istiod is not None else None
        return route_verdict(objects, view, changed_at=self._written_at.get((member.name, owner_key)),
                             settle=self.route_settle, now=time.monotonic())

    def _istiod_changed(self, name: str) -> None:
        """After each poll of a member's istiod: reconcile only the AccessPoints whose verdict moved
        (the verdict is cheap and pure; a reconcile renders and plans)."""
        member = self.registry.members.get(name)
        if member is None or member.istiod is None:
            return
        cache = member.cache
        for owner_key, keys in list(cache.by_owner.items()):
            if not any(k.kind == "Gateway" and k.group == ISTIO_NET for k in keys):
                continue
            objects = [cache.objects[k] for k in keys if k in cache.objects]
            verdict = self._route_verdict(member, owner_key, objects)
            moved = self._zone_verdicts.get((name, owner_key)) != self._zone_verdict(member, objects)
            if (self._verdicts.get((name, owner_key)) != verdict or moved) and owner_key in self.accesspoints:
                self.enqueue(f"ap/{owner_key}", cause="istiod")

    def on_accesspoint(self, event_type: str, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        if event_type == "DELETED":
            self.accesspoints.pop(key, None)
            self._seen_generation.pop(key, None)
            self._hinges.pop(key, None)
            self._forget(lambda ap_key, member: ap_key == key)
            self.loop.forget(f"ap/{key}")
            self.writer.status.forget(AP_PATH.format(ns=meta["namespace"], name=meta["name"]))
            return
        held = self.accesspoints.get(key)
        # Kept without managedFields (`slim`): the status manager's entry lists every field of every
        # cluster's status entry, 0.9 KiB per (AccessPoint, member) that nothing here reads.
        self.accesspoints[key] = slim(body)
        gen = int(meta.get("generation", 0))
        if self._seen_generation.get(key, (None, 0.0))[0] != gen:
            self._seen_generation[key] = (gen, time.monotonic())
        if held is not None and same_but_status(held, body) and \
                self.writer.status.own_echo(AP_PATH.format(ns=meta["namespace"], name=meta["name"]), body):
            # The watch event of our own status write, and nothing but the status differs from the
            # object last seen (a change we never got an event for, e.g. across a relist, still
            # reconciles): the reconcile that wrote it had every input this object holds.
            # (Reconciling it again cost a render and a plan per member: in a 5-member bulk, more
            # than half of the AccessPoint events were these.)
            return
        if held is not None and same_but_finalizers(held, body):
            # The watch event of the finalizer the reconcile that had this very object added (or another
            # controller's finalizer): reconciling it again rendered and planned every member for nothing,
            # one reconcile in two of a bulk.
            return
        self.enqueue(f"ap/{key}", cause="hub-object")

    def on_policy(self, event_type: str, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        if event_type == "DELETED":
            self.policies.pop(key, None)
        else:
            self.policies[key] = body
        for ap_key, ap in self.accesspoints.items():
            ref = (ap.get("spec") or {}).get("placementRef") or {}
            if ap_key.split("/")[0] == meta["namespace"] and ref.get("name") == meta["name"]:
                self.enqueue(f"ap/{ap_key}", cause="policy")

    async def on_membercluster(self, event_type: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if event_type == "DELETED":
            self.memberclusters.pop(name, None)
            self._forget(lambda ap_key, member: member == name)
            self.lanes.pop(name, None)
            self.member_loop.forget(f"mc/{name}")
            self.writer.status.forget(MC_PATH.format(name=name))
            await self.registry.remove(name)
            return
        self.memberclusters[name] = body
        try:
            await self.registry.upsert(body)
        except ValidationError as err:
            log.warning("MemberCluster %s is invalid: %s", name, "; ".join(validation_messages(err)))

    # ---- lifecycle ----

    async def start(self, warmup_timeout: float = 30.0) -> None:
        if self.shards is not None:
            count = self.shards.count
            self.registry.shard_of = lambda ns, name: shards.shard_of(ns, name, count)
            self.registry.set_shard_filter(frozenset())
            self.shards.listeners.append(self._shards_changed)
            await self.shards.start()
        # Know every member before the first AccessPoint reconcile, so placement is never computed
        # over a partial list (kopf's own list of MemberClusters may arrive after AccessPoints).
        items, _ = await self.hub.list("/apis/meshfed.io/v1alpha1/memberclusters")
        for body in items:
            await self.on_membercluster("ADDED", body)
        self._warm_deadline = time.monotonic() + warmup_timeout
        self.loop.start(self.workers)
        self.member_loop.start(2)
        self._tasks.append(asyncio.create_task(self._resync(), name="resync"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.loop.stop()
        await self.member_loop.stop()
        if self.shards is not None:
            await self.writer.flush()  # queued Events go out while their Leases are still held
            await self.shards.stop()
        await self.writer.close()
        await self.registry.close()

    async def _resync(self) -> None:
        """The safety net: every MemberCluster registered again (its kubeconfig Secret read again), every
        MemberCluster status and every AccessPoint reconciled once."""
        while True:
            await asyncio.sleep(self.resync_seconds)
            for name, body in list(self.memberclusters.items()):
                await self.on_membercluster("MODIFIED", body)
                self.enqueue(f"mc/{name}", cause="resync")
            self.enqueue_all(cause="resync")

    # ---- MemberCluster status ----

    async def write_member_status(self, name: str) -> None:
        body = self.memberclusters.get(name)
        member = self.registry.members.get(name)
        if body is None or member is None:
            return
        probe = member.probe
        if probe.reachable is None and not member.kubeconfig_error:
            return  # not probed yet: nothing to report
        previous = MemberClusterStatus.model_validate(body.get("status") or {})
        from accesspoint.meta import Condition, merge_conditions

        if member.kubeconfig_error:
            reach = Condition(type="Reachable", status="Unknown", reason="KubeconfigUnavailable",
                              message=member.kubeconfig_error)
        elif not member.answering and probe.reachable is not False:
            # The circuit breaker is open (a request timed out, a probe failed): not known to be down
            # yet (Reachable False after consecutive failed probes), known not to answer now.
            since = rfc3339(member.not_answering_since or time.time())
            reach = Condition(type="Reachable", status="Unknown", reason="NotAnswering",
                              message=f"no answer since {since}: {member.not_answering_why}; writes are held "
                                      "until a probe answers")
        elif probe.reachable is None:
            reach = Condition(type="Reachable", status="Unknown", reason="Probing", message="not probed yet")
        elif probe.reachable and member.latency_ms is not None:
            reach = Condition(type="Reachable", status="True", reason="Degraded",
                              message=f"slow: answers in ~{member.latency_ms / 1000:.1f}s (degraded above "
                                      f"{DEGRADED_AFTER:.0f}s); writes go on at its pace")
        elif probe.reachable:
            reach = Condition(type="Reachable", status="True", reason="ProbeSucceeded", message=probe.message)
        else:
            reach = Condition(type="Reachable", status="False", reason="ProbeFailed", message=probe.message)
        if probe.ready and reach.status == "True":
            ready = Condition(type="Ready", status="True", reason="Ready", message=probe.message)
        elif reach.status == "True":
            ready = Condition(type="Ready", status="False", reason="IstioCRDsMissing", message=probe.message)
        else:
            ready = Condition(type="Ready", status="Unknown" if reach.status != "False" else "False",
                              reason=reach.reason, message=reach.message)
        gen = int(body["metadata"].get("generation", 0))
        conds = [c.model_copy(update={"observed_generation": gen}) for c in (reach, ready)]
        if member.mesh is not None:  # spec.mesh judged against every member (placement.mesh)
            conds.append(member.mesh.condition(gen))
        status = MemberClusterStatus(
            conditions=merge_conditions(previous.conditions, conds, now_rfc3339()),
            kubernetes_version=probe.version or previous.kubernetes_version,
            istio_crds=probe.istio if probe.istio is not None else previous.istio_crds,
            ready=ready.status,
            mesh_role=member.mesh.printed if member.mesh is not None else None,
            latency_ms=member.latency_ms,
            cluster_uid=member.identity or previous.cluster_uid,
            last_cache_reset=member.last_reset or previous.last_cache_reset,
        )
        # lastProbeTime is not written on every probe: that would be a hub write every few seconds.
        wire = status.wire()
        wire.setdefault("lastProbeTime", (body.get("status") or {}).get("lastProbeTime"))
        if status.conditions != previous.conditions or wire.get("kubernetesVersion") != previous.kubernetes_version \
                or wire.get("istioCRDs") != previous.istio_crds or wire.get("ready") != previous.ready \
                or wire.get("probeLatencyMs") != previous.latency_ms:
            wire["lastProbeTime"] = now_rfc3339()
        wire = {k: v for k, v in wire.items() if v is not None}
        await self.writer.write_status(MC_PATH.format(name=name), "MemberCluster", name, None, wire, body)
        mesh, before = member.mesh, next((c for c in previous.conditions if c.type == "MeshRole"), None)
        if mesh is not None and mesh.warning and (before is None or (before.status, before.reason, before.message)
                                                  != (mesh.status, mesh.reason, mesh.message)):
            await self.writer.event(body, "Warning", mesh.reason, mesh.message)

    # ---- AccessPoint reconcile ----

    def _placement_spec(self, ap: AccessPoint) -> tuple[PlacementSpec | None, str | None]:
        if ap.spec.placement_ref is not None:
            body = self.policies.get(f"{ap.namespace}/{ap.spec.placement_ref.name}")
            if body is None:
                ref = ap.spec.placement_ref.name
                return None, f"spec.placementRef.name: PlacementPolicy {ref!r} not found in namespace {ap.namespace}"
            return PlacementPolicy.model_validate(body).spec, None
        return ap.spec.placement or PlacementSpec(), None

    async def reconcile_accesspoint(self, key: str) -> None:
        body = self.accesspoints.get(key)
        if body is None:
            return
        # The deadline first: warm() looks at every member, and after the warm-up nothing needs it.
        if time.monotonic() < self._warm_deadline and not self.registry.warm():
            self.enqueue_later(f"ap/{key}", 0.2, cause="warming")
            return
        telemetry.count("reconciles")
        ns, name = key.split("/", 1)
        path = AP_PATH.format(ns=ns, name=name)
        meta = body["metadata"]
        with telemetry.tracer.start_as_current_span("accesspoint.reconcile", attributes={"accesspoint": key}):
            if meta.get("deletionTimestamp"):
                await self._finalize(key, body, path)
                return
            admitting = time.monotonic()
            await self.writer.set_finalizer(path, meta, True)
            await self._reconcile(key, body, path, admitting)

    async def _reconcile(self, key: str, body: dict[str, Any], path: str, admitting: float) -> None:
        """`admitting`: when the reconcile began (meshfed_reconcile_phase_seconds{phase="admit"} runs from it
        through placement and context; each phase is observed once per reconcile that gets that far)."""
        ns, name = key.split("/", 1)
        try:
            ap = AccessPoint.model_validate(body)
            # Its status, parsed with it (parsing it again cost 3 % of a full pass's CPU).
            previous = ap.status if body.get("status") else None
            problems = [str(e) for e in validate(ap)]
        except ValidationError as err:
            ap = None
            previous = AccessPointStatus.model_validate(body["status"]) if body.get("status") else None
            problems = validation_messages(err)
        spec = None
        decision = PlacementDecision()
        if ap is not None and not problems:
            spec, missing = self._placement_spec(ap)
            if missing:
                problems.append(missing)
            elif spec is not None and spec.follow_workload is not None:  # its facts: Deployments there
                self.registry.follow_workloads_in(self.registry.workload_namespaces | {spec.follow_workload.namespace})
            facts = [m.facts for m in self.registry.members.values()]
            if spec is not None:
                decision = select(spec, facts, previous.placement if previous else None)
            for validator in self.validators:
                problems += validator(ap, facts, spec, decision)
        if ap is None or problems or spec is None:
            await self._refuse(path, ns, name, body, previous, problems)
            return

        owner = Owner(self.hub_id, ns, name)
        revision = revision_of(ap)
        members = self.registry.members
        self._hinges[key] = decision.hinges_on()
        placed = set(decision.names)
        context = RenderContext(labels=self.shard_labels(ns, name)) if self.shards is not None else EMPTY_CONTEXT
        for provider in self.context_providers:
            context = context.merged(await provider(ap, decision, members))
        metrics.reconcile_phase.labels(phase="admit").observe(time.monotonic() - admitting)
        specs: Mapping[str, AccessPoint] = {}
        if self.spec_selector is not None:
            with metrics.phase("rollout"):
                specs = await self.spec_selector(ap, decision, members, revision)
        # One compiled Renderer per AccessPoint revision for all its clusters (accesspoint.render), keyed
        # by id: every AccessPoint a cluster carries stays referenced by the reconcile while they live.
        renderers: dict[int, Renderer] = {id(ap): Renderer(ap, self.hub_id, context, revision=revision)}
        prerendered: dict[str, Rendered] = {}
        planning = time.monotonic()  # the "plan" phase: rendering here and planning in _sync_members
        if self.rendered_validators:
            # Every placed cluster rendered (and checked) before any write, so a problem in one
            # cluster's rendering (a namespace from a variable, an override, a generated object)
            # refuses the whole AccessPoint and nothing is written anywhere.
            problems = []
            for m in members.values():
                if m.name not in placed or not m.usable:
                    continue
                carried = specs.get(m.name, ap)
                renderer = self._renderer(renderers, carried, context)
                rendered = prerendered[m.name] = renderer.render(m.facts)
                if not rendered.errors:
                    for check in self.rendered_validators:
                        problems += [p for p in check(carried, m.name, rendered.objects) if p not in problems]
            if problems:
                await self._refuse(path, ns, name, body, previous, problems)
                return
        entries = await self._sync_members(ap, specs, owner, members, placed, context, renderers, prerendered,
                                           planning)
        # Placed clusters we have no client for (Secret missing): report them, touch nothing.
        for cname in sorted(placed - set(members)):
            entries.append(ClusterStatus(name=cname, state="Unknown", last_error="member cluster not registered"))
        now = now_rfc3339()
        status = summarize(ap.generation, revision, decision, entries, now, previous)
        for contribute in self.status_contributors:
            status = contribute(ap, status, previous, now)
        for listener in self.status_listeners:
            listener(key, ap, status)
        with metrics.phase("status"):
            await self._write_status(path, ns, name, status, body)
            await self._emit_transitions(body, entries)
        if any(e.state in ("Failed", "Unknown", "Removing") for e in entries):
            self.loop.retry(f"ap/{key}", cap=300.0, base=1.0)
        else:
            self.loop.succeeded(f"ap/{key}")

    async def _refuse(self, path: str, ns: str, name: str, body: dict[str, Any],
                      previous: AccessPointStatus | None, problems: Sequence[str]) -> None:
        """Accepted=False with the problems (each naming its field), an Event when it changed, and
        no member write. The reason is the first problem's own (e.g. HostConflict) or InvalidSpec."""
        self._hinges.pop(f"{ns}/{name}", None)  # whether it is valid may turn on any member's state
        generation = int(body["metadata"].get("generation", 0))
        status = summarize(generation, "", PlacementDecision(), [], now_rfc3339(), previous, invalid=problems)
        if await self._write_status(path, ns, name, status, body):
            reason = next((str(r) for p in problems if (r := getattr(p, "reason", None))), "InvalidSpec")
            await self.writer.event(body, "Warning", reason, "; ".join(problems))

    def _zone_verdict(self, member: Member, objects: list[dict[str, Any]]) -> ZoneVerdict | None:
        remotes = self.registry.remotes_of(member.name)
        if not remotes or member.istiod is None:
            return None
        return zone_verdict(objects, member.istiod.view, [r.name for r in remotes],
                            [r.name for r in remotes if r.probe.reachable is False])

    def _lane(self, name: str) -> MemberLane[ClusterStatus | None]:
        lane = self.lanes.get(name)
        if lane is None:
            lane = self.lanes[name] = MemberLane(name, lambda key: self.enqueue(f"ap/{key}", cause="landed"),
                                                 concurrency=self.workers,
                                                 on_room=lambda key: self.enqueue(f"ap/{key}", cause="lane-room"))
        return lane

    async def _sync_members(self, ap: AccessPoint, specs: Mapping[str, AccessPoint], owner: Owner,
                            members: Mapping[str, Member], placed: set[str], context: RenderContext,
                            renderers: dict[int, Renderer], prerendered: Mapping[str, Rendered],
                            planning: float) -> list[ClusterStatus]:
        """Each member's entry: its plan executed in its own lane (federation/lanes.py), waited for while
        the member answers; a stalled member's writes go on alone and its entry says what is pending."""
        entries: dict[str, ClusterStatus | None] = {}
        flights: dict[str, tuple[Flight[ClusterStatus | None], KubeClient | None]] = {}
        for m in members.values():
            known = self.lanes.get(m.name)
            if m.name not in placed and not m.cache.by_owner.get(owner.key) and \
                    (known is None or owner.key not in known.flights):
                # Neither placed there nor holding anything of it, nothing in the air: nothing to plan
                # (what _member_work would find, at a fraction of the cost: most members, at 1,000).
                continue
            lane = known or self._lane(m.name)
            flight = lane.flight(owner.key)
            if flight is not None:
                # This AccessPoint's earlier writes to m are still in the air: nothing is planned against
                # a cache they are about to change; when they land the AccessPoint is reconciled again.
                flight.left_alone = True
                entries[m.name] = self._held(m, owner, flight.pending, flight.since)
                continue
            work = self._member_work(specs.get(m.name, ap), owner, m, m.name in placed, context, renderers,
                                     prerendered.get(m.name))
            if not isinstance(work, MemberWork):
                entries[m.name] = work
            elif work.plan.empty:
                entries[m.name] = self._member_entry(work, None)
            elif lane.full:
                lane.refused.add(owner.key)
                entries[m.name] = self._held(m, owner, work.pending, time.time())
            else:
                flights[m.name] = (lane.launch(owner.key, functools.partial(self._apply_work, work), work.pending,
                                               settled=functools.partial(m.cache.holds_just, owner, work.desired)),
                                   m.client)
        metrics.reconcile_phase.labels(phase="plan").observe(time.monotonic() - planning)
        slow = frozenset(n for n in flights if members[n].degraded)
        with metrics.phase("members"):
            landed = await wait_flights(flights, stall_after=self.stall_after, cap=self.flight_wait, slow=slow,
                                        own_stall=self.registry.stall.since)
        for name, (flight, _) in flights.items():
            entries[name] = landed[name] if name in landed else \
                self._held(members[name], owner, flight.pending, flight.since)
        return [e for e in entries.values() if e is not None]

    def _held(self, member: Member, owner: Owner, pending: str, since: float) -> ClusterStatus:
        """The entry of a member whose writes are in flight (slow) or held (not answering)."""
        owned = member.cache.owned(owner)
        facts = member.facts
        base = ClusterStatus(name=member.name, region=facts.region, zone=facts.zone, state="Unknown",
                             objects=len(owned), vip=_vip(owned.values()))
        since_text = rfc3339(member.not_answering_since or since) if not member.answering else rfc3339(since)
        why = f"not answering since {since_text}: {member.not_answering_why}" if not member.answering else None
        return held_entry(base, answering=member.answering, pending=pending, since=rfc3339(since), why=why)

    def _renderer(self, renderers: dict[int, Renderer], ap: AccessPoint, context: RenderContext) -> Renderer:
        """The reconcile's Renderer of `ap` (one per AccessPoint revision a cluster carries), built on first use."""
        found = renderers.get(id(ap))
        if found is None:
            found = renderers[id(ap)] = Renderer(ap, self.hub_id, context)
        return found

    def _member_work(self, ap: AccessPoint, owner: Owner, member: Member, placed: bool, context: RenderContext,
                     renderers: dict[int, Renderer],
                     prerendered: Rendered | None = None) -> MemberWork | ClusterStatus | None:
        """What one member should get for `ap` (the revision this cluster carries): its rendered objects and
        the plan against what it holds (a MemberWork), or its entry when nothing can be planned. `renderers`:
        the reconcile's Renderer per AccessPoint revision (its spec hash and compiled template, once)."""
        renderer = self._renderer(renderers, ap, context)
        revision = renderer.revision
        facts = member.facts
        owned = member.cache.owned(owner)
        if not placed and not owned:
            return None
        base = {"name": member.name, "region": facts.region, "zone": facts.zone}
        # Not answering, cache listed: the plan is computed (to say what waits) and nothing is written.
        plannable = member.client is not None and not member.kubeconfig_error and member.synced
        if not member.usable and not (plannable and not member.answering):
            why = member.kubeconfig_error or member.probe.message or "member cache not synced yet"
            return ClusterStatus(**base, state="Unknown", objects=len(owned), vip=_vip(owned.values()),
                                 last_error=why if member.probe.reachable is False or member.kubeconfig_error else None)
        desired: list[dict[str, Any]] = []
        if placed:
            rendered = prerendered if prerendered is not None else renderer.render(facts)
            if rendered.errors:
                # Keep the last good objects in this cluster; report the problem.
                return ClusterStatus(**base, state="Failed", objects=len(owned), vip=_vip(owned.values()),
                                     last_error="; ".join(str(e) for e in rendered.errors))
            desired = rendered.objects
            missing = member.unserved(desired)
            if missing:
                # A kind whose CRD the member lacks: write nothing there (no half bundle), keep what it has.
                return ClusterStatus(**base, state="Failed", objects=len(owned), vip=_vip(owned.values()),
                                     last_error=f"the cluster does not serve {', '.join(missing)}: its CRD is "
                                                "not installed there; nothing was changed in this cluster")
            refused = member.refused(desired)
            if refused:  # Istio kinds on an Istio remote: Istio would ignore them (placement.mesh)
                return ClusterStatus(**base, state="Failed", objects=len(owned), vip=_vip(owned.values()),
                                     last_error=refused)
        kinds = frozenset((k.group, k.kind) for k in map(key_of, desired))
        if self.registry.want(member, owner.key, kinds) and member.answering:
            # A kind no longer watched here is listed again first (watch on demand, federation/members.py);
            # its list reconciles this AccessPoint again. Planning now could miss objects of that kind.
            return ClusterStatus(**base, state="Progressing", objects=len(owned), vip=_vip(owned.values()))
        member.cache.compare(owner, desired)  # versions not compared yet are, once; the plan reads verdicts
        owned = member.cache.owned(owner)
        work = MemberWork(ap, owner, member, placed, revision, desired, plan(desired, owned))
        if not member.answering:
            # Circuit breaker open: nothing is written; the entry says what waits, and since when.
            return self._held(member, owner, work.pending, member.not_answering_since or time.time())
        return work

    async def _apply_work(self, work: MemberWork) -> ClusterStatus | None:
        """Execute one member's plan (in its lane) and give its entry."""
        member = work.member
        if not member.answering or member.client is None:  # the breaker opened while this waited
            return self._held(member, work.owner, work.pending, member.not_answering_since or time.time())
        sent = time.monotonic()
        outcome = await execute(member.client, work.plan, work.owner, member.cache, adopt=work.ap.spec.adopt_existing)
        if outcome.timed_out:
            self.registry.not_answering(member, "a write got no answer within its deadline", sent)
        return self._member_entry(work, outcome)

    def _member_entry(self, work: MemberWork, outcome: Outcome | None) -> ClusterStatus | None:
        """One member's entry after its plan ran (`outcome` None: nothing to write), Istio's verdict added."""
        ap, owner, member, desired = work.ap, work.owner, work.member, work.desired
        facts = member.facts
        base = {"name": member.name, "region": facts.region, "zone": facts.zone}
        if outcome is not None and outcome.writes:
            if moves_routes(_planned_kinds(work.plan)):  # a renewed certificate's Secret alone does not
                self._written_at[(member.name, owner.key)] = time.monotonic()
            if member.istiod is not None:
                member.istiod.kick()
            seen = self._seen_generation.get(owner.key)
            if seen and seen[0] == ap.generation:
                telemetry.propagation_latency.record(time.monotonic() - seen[1], {"cluster": member.name})
        owned_now = member.cache.owned(owner)
        vip = _vip(owned_now.values())
        entry: ClusterStatus | None
        if outcome is not None and outcome.conflicts:
            entry = ClusterStatus(**base, state="Conflict", objects=len(owned_now), vip=vip,
                                  last_error="; ".join(outcome.conflicts + outcome.errors))
        elif outcome is not None and outcome.unreachable:
            entry = ClusterStatus(**base, state="Unknown", objects=len(owned_now), vip=vip,
                                  last_error="; ".join(outcome.errors))
        elif outcome is not None and outcome.errors:
            entry = ClusterStatus(**base, state="Failed", objects=len(owned_now), vip=vip,
                                  last_error="; ".join(outcome.errors))
        elif not work.placed:
            entry = ClusterStatus(**base, state="Removing", objects=len(owned_now)) if owned_now else None
        elif any(o["kind"] == "Service" and (o.get("spec") or {}).get("type") == "LoadBalancer"
                 for o in desired) and vip is None:
            entry = ClusterStatus(**base, state="Progressing", revision=work.revision, objects=len(owned_now),
                                  last_error=None, route_configured=None)
        else:
            entry = ClusterStatus(**base, state="Applied", revision=work.revision, objects=len(owned_now), vip=vip)
        if entry is None or not member.usable:
            return entry
        objects = list(owned_now.values())
        analysis = analyzer_messages(objects)
        entry.istio_messages = analysis.messages or None
        entry.no_current_verdict = analysis.stale or None
        if member.istiod is not None and entry.state in ("Applied", "Progressing"):
            verdict = self._route_verdict(member, owner.key, objects)
            self._verdicts[(member.name, owner.key)] = verdict
            if verdict is not None:
                entry.route_configured = verdict.configured
                entry.route_message = verdict.message
                entry.gateway_proxies = verdict.proxies if verdict.total or verdict.configured is not None else None
            zone = self._zone_verdicts[(member.name, owner.key)] = self._zone_verdict(member, objects)
            if zone is not None:  # a zone primary: its istiod's remotes and the endpoints it knows
                entry.remotes, entry.endpoints = zone.remotes or None, zone.endpoints
                entry.endpoints_missing = zone.missing or None
        return entry

    async def _write_status(self, path: str, ns: str, name: str, status: AccessPointStatus,
                            body: dict[str, Any]) -> bool:
        return await self.writer.write_status(path, "AccessPoint", name, ns, status.wire(), body)

    async def _emit_transitions(self, body: dict[str, Any], entries: list[ClusterStatus]) -> None:
        key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        applied: list[ClusterStatus] = []
        for entry in entries:
            state_key = (key, entry.name)
            before = self._last_cluster_state.get(state_key)
            signature = f"{entry.state}:{entry.revision}:{entry.last_error}"
            if before == signature:
                continue
            self._last_cluster_state[state_key] = signature
            if before is None:
                reported = next((c for c in (body.get("status") or {}).get("clusters") or []
                                 if c.get("name") == entry.name), None)
                if reported and reported.get("state") == entry.state and \
                        reported.get("lastError") == entry.last_error:
                    continue  # controller restart: this state was already reported
            if entry.state in ("Failed", "Conflict"):
                await self.writer.event(body, "Warning", f"Cluster{entry.state}", f"{entry.name}: {entry.last_error}")
            elif entry.state == "Applied":
                applied.append(entry)
            elif entry.state == "Unknown" and entry.last_error:
                await self.writer.event(body, "Warning", "ClusterUnreachable", f"{entry.name}: {entry.last_error}")
        if applied:
            # One Event per reconcile for the clusters that reached the revision (not one per
            # cluster): a bulk change over many clusters must not multiply the hub's writes.
            await self.writer.event(body, "Normal", "ClusterApplied", applied_message(applied))

    async def _finalize(self, key: str, body: dict[str, Any], path: str) -> None:
        meta = body["metadata"]
        if FINALIZER not in (meta.get("finalizers") or []):
            return
        ns, name = key.split("/", 1)
        owner = Owner(self.hub_id, ns, name)
        policy = (body.get("spec") or {}).get("deletionPolicy", "Delete")
        waiting: list[str] = []
        if policy == "Delete":
            placed_before = {c.get("name") for c in (body.get("status") or {}).get("clusters") or []}
            for member in self.registry.members.values():
                owned = member.cache.owned(owner)
                if not member.usable:
                    if owned or member.name in placed_before:
                        waiting.append(member.name)
                    continue
                if owned:
                    assert member.client is not None
                    outcome = await execute(member.client, plan([], owned), owner, member.cache)
                    if not outcome.ok or member.cache.owned(owner):
                        waiting.append(member.name)
        if waiting:
            log.info("AccessPoint %s: deletion waits for clusters %s", key, ", ".join(waiting))
            self.enqueue_later(f"ap/{key}", 5.0, cause="deleting")
            return
        await self.writer.set_finalizer(path, meta, False)
        try:
            await self.writer.event(body, "Normal", "Deleted" if policy == "Delete" else "Orphaned",
                                    "member objects removed" if policy == "Delete" else "member objects left in place")
        except ApiError:
            pass
