"""Member clusters as the hub sees them: one client, one health probe and one owned-object cache each.

Owns: building a KubeClient from a MemberCluster's kubeconfig Secret, probing /readyz, /version and
API discovery (-> Reachable/Ready facts and which managed kinds the member serves: a kind whose CRD
is missing is neither watched nor written), and list+watch caches of every object this hub owns
in the member (label `meshfed.io/hub=<hub id>`), indexed by owning AccessPoint, and the member's IstiodMonitor
(federation/istiod.py) when spec.istiod is set. Also: every member's mesh role judged against the
others (placement.mesh: `Member.mesh`, `remotes_of`), and, for followWorkload, a metadata-only watch of
Deployments in the namespaces it names (`follow_workloads_in`). Changes are reported through callbacks;
this module never writes to members (the executor does) nor to the hub.

Members are unreliable (a hung, slow, wiped or replaced API server; README "Sick members"):
- Circuit breaker: a member that does not answer (a failed probe, or a write the executor saw time out:
  `not_answering`) is `answering=False`, so nothing is planned or written there, until a probe
  answers again; the probe then runs every second. Requests to members have their own deadlines
  (kube.MEMBER_DEADLINES: connect 3 s, first byte 6 s, whole request 10 s, retries included).
- Slow is not dead: `failure_threshold` consecutive probes slower than DEGRADED_AFTER mark the member
  degraded (latency kept, rounded, with hysteresis so it does not flap); it keeps receiving writes.
  A probe's latency is judged net of the time this process's own event loop was stalled meanwhile
  (`LoopStall`): a controller busy starting up or relisting must not call its members slow.
- The cache never outlives the truth: the probe reads the member's identity (the kube-system
  namespace UID); a different one, or a list whose resourceVersion is below what the cache has seen
  (an etcd restored from an older backup or wiped), drops that member's cache and relists every
  kind (`reset`). Every `verify_interval` seconds each kind is listed again, metadata only, and
  compared with the cache by uid/resourceVersion; a disagreement relists that kind. A cache error
  therefore lasts at most verify_interval + one list (default VERIFY_INTERVAL, 10 minutes, + a second).
- Periodic work is spread (`jittered`): a member's probes and verification lists come every period x
  [0.85, 1] (never later than the period), and a member's first verification at a random point of
  its first period, so the loops of members registered together drift apart instead of sending every
  member API server, and this process, their requests in the same instant (measured at 50 members:
  each verification round was 750 LISTs at once).

What the caches keep: an object as a watch or a list brings it is kept whole (but its managedFields,
keys interned: `slim`) until it is compared with what it should be, once per version: a write's answer at
once (the executor knows what it wrote), any other version at its owner's next plan (`compare`; the
change that brought it reconciles the owner). From then on only a compact record (`compact`): identity,
labels, meshfed's annotations, status, the few spec fields read later (READ_SPEC), and the verdict with
the content hash (accesspoint.plan `verdict`). A plan then compares content hashes, not objects; a change on the member
is a new version, compared again.

Watch on demand: every kind the member serves is listed once (at start, with a new client, after a
reset or a shard-filter change), so objects of ours of a kind no template uses any more are found; a
kind stays watched while some AccessPoint plans it there (`want`, from the controller's plan) or objects
of ours of it are cached, and its watch stops with the last of them (`parked`). A parked kind wanted
again is listed first (`waking`): plans needing it wait for that list, and it reconciles the
AccessPoints that wait. The verification lists parked kinds too (metadata only): one of ours appearing
there (an older replica's write, a restore) brings its watch back. `meshfed_member_watches{cluster}`.

Shard filter (several replicas, federation/shards.py): with `set_shard_filter(held)` the watches
select only objects labelled `meshfed.io/shard in (held)` (every watch re-lists when the set
changes; the controller passes federation.shards `cached_shards`, which keeps a shard whose renewal
came late until it is taken back or moves on), plus, at each list, objects of held shards that carry
no shard label yet (written before sharding; the next apply labels them). `warm()` is False until
every member listed with the current filter, so a shard just taken over is never planned against a
cache that lacks its objects.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import itertools
import json
import logging
import random
import sys
import time
import weakref
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from accesspoint.istioverdict import gateway_selectors, routed_hosts
from accesspoint.kinds import GATEWAY_API, ISTIO_NET, MANAGED_KINDS, Kind, api_path
from accesspoint.ownership import (
    HASH_ANNOTATION,
    HUB,
    FieldPaths,
    Owner,
    owner_of,
    update_entry_index,
    update_owned_fields,
)
from accesspoint.plan import compared, plan, verdict
from accesspoint.render import ObjectKey, key_of
from federation import metrics
from federation.istiod import IstiodMonitor
from federation.kube import (
    MEMBER_CONNECTIONS,
    MEMBER_DEADLINES,
    METADATA_LIST,
    ApiError,
    Gone,
    KubeClient,
    Slots,
    member_request_slots,
)
from federation.shards import SHARD_LABEL
from placement.mesh import RoleVerdict, remote_refusal, role_verdicts
from placement.models import ClusterFacts, MemberCluster, WorkloadFact

log = logging.getLogger("meshfed.members")

ISTIO_RESOURCES = {"gateways", "virtualservices", "destinationrules", "serviceentries", "workloadentries"}
# Aggregated discovery (one request for every group, version and resource; GA since Kubernetes 1.30).
AGGREGATED_DISCOVERY = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
KindId = tuple[str, str]  # (group, kind)
PROBE_TIMEOUT = 5.0  # seconds per probe request: a hung member is noticed within probe interval + this
DEGRADED_AFTER = 1.0  # seconds: a probe answer slower than this marks the member degraded
IDENTITY_PATH = "/api/v1/namespaces/kube-system"
RV_RECHECK = 2.0  # seconds before a list that looks older than the cache is asked again
STALL_TICK = 0.1  # seconds between the event-loop stall monitor's wake-ups
JITTER = 0.15  # periodic per-member work runs every period x [1 - JITTER, 1]
# Seconds between two comparisons of a member cache with the member (a LIST per kind). The watches keep
# the cache; this only bounds how long an error of ours in it could last. Each such LIST costs the
# member a read of every object of the kind (measured: 100 ms of CPU for 400 VirtualServices on an API
# server without watch cache, 7-10 ms with it); every minute that was 5.7 of an idle dense member's 18.6
# millicores (e2e/bench/background.py). Ten minutes, as Argo CD's cluster cache restarts (and relists)
# each watch.
VERIFY_INTERVAL = 600.0


def jittered(period: float, factor: float = JITTER) -> float:
    """`period` shortened by a random part of up to `factor` of it: never later than the period, and
    loops started together drift apart (client-go's wait.JitterUntil lengthens it instead)."""
    return period * (1.0 - factor * random.random())


def judge_degraded(degraded: bool, slow_streak: int, latency: float | None, threshold: int) -> tuple[bool, int]:
    """(degraded, slow_streak) after one probe whose answer took `latency` seconds (net of our own
    stalls; None when it did not answer). Degraded after `threshold` consecutive answers slower than
    DEGRADED_AFTER; healthy again at the first answer faster than half of it (hysteresis)."""
    if latency is None:
        return degraded, slow_streak
    streak = slow_streak + 1 if latency > DEGRADED_AFTER else 0
    if degraded:
        return latency > DEGRADED_AFTER / 2, streak
    return streak >= max(1, threshold), streak


class LoopStall:
    """How long this process's event loop was too busy to run callbacks: a task that sleeps STALL_TICK
    and records how late it woke. `since(t)` is the stall time observed after monotonic time `t`."""

    def __init__(self, keep: float = 60.0) -> None:
        self.keep = keep
        self.samples: list[tuple[float, float]] = []  # (woke at, seconds late)
        self._woke: list[float] = []  # the samples' wake-up times, and their running sum of lateness
        self._total: list[float] = []
        self.task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="loop-stall")

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(STALL_TICK)
            now = time.monotonic()
            late = now - before - STALL_TICK
            if late > 0.01:
                self.record(now, late)

    def record(self, woke: float, late: float) -> None:
        """The monitor woke at `woke`, `late` seconds late (samples older than `keep` are dropped)."""
        self.samples.append((woke, late))
        self.samples = [s for s in self.samples if s[0] > woke - self.keep]
        self._woke = [w for w, _ in self.samples]
        self._total = list(itertools.accumulate(lateness for _, lateness in self.samples))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    def since(self, start: float) -> float:
        """Asked for every member of every waiting reconcile each tick (lanes.wait_flights): a binary
        search and two prefix sums, not a walk over the samples."""
        first = bisect.bisect_right(self._woke, start)
        if first >= len(self._woke):
            return 0.0
        total = self._total[-1] - (self._total[first - 1] if first else 0.0)
        # Only the first sample waking after `start` may have begun before it: count only the overlap.
        woke, late = self.samples[first]
        return total - late + min(late, woke - start)


def served_resources(discovery: dict[str, Any]) -> dict[tuple[str, str], set[str]] | None:
    """(group, version) -> resource names from an APIGroupDiscoveryList; None for any other answer
    (an API server without aggregated discovery answers /apis with a plain APIGroupList)."""
    if discovery.get("kind") != "APIGroupDiscoveryList":
        return None
    out: dict[tuple[str, str], set[str]] = {}
    for group in discovery.get("items") or []:
        name = str((group.get("metadata") or {}).get("name", ""))
        for version in group.get("versions") or []:
            out[(name, str(version.get("version", "")))] = {
                str(r.get("resource", "")) for r in version.get("resources") or []}
    return out


@dataclass(frozen=True)
class Discovery:
    """One discovery answer: (group, version) -> resource names, and the managed kinds served."""

    resources: dict[tuple[str, str], set[str]]
    served: frozenset[KindId]


# Lists of one member's kinds in flight at once (Member.list_slots).
LISTS_PER_MEMBER = 3

# Discovery answers kept by ETag (members of one fleet mostly serve the same APIs: one entry for all).
DISCOVERIES_KEPT = 16


def served_kinds(resources: dict[tuple[str, str], set[str]]) -> frozenset[KindId]:
    """The managed kinds served at the version meshfed writes and watches (core kinds always are)."""
    return frozenset(k.id for k in MANAGED_KINDS.values()
                     if not k.group or k.plural in resources.get((k.group, k.versions[0]), set()))


def slim(obj: dict[str, Any]) -> dict[str, Any]:
    """What the caches keep of an object (member objects; the hub's AccessPoints too): all of it but
    `metadata.managedFields` (which planning, drift detection and status never read; for
    server-side-applied objects it is 40 % of the JSON),
    with every mapping key interned (the same few hundred key strings, not one copy per object).
    Measured on a Service, VirtualService and DestinationRule: 7.7 KB of Python objects each whole,
    4.3 KB without managedFields, 2.8 KB with interned keys too.
    managedFields is left out before the copy, and scalars are not descended into: 5 us instead of 20 us
    for a VirtualService applied by meshfed (json.loads of it: 18 us)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    out: dict[str, Any] = _interned(obj)
    return out


_SCALARS: frozenset[type] = frozenset({str, int, float, bool, type(None)})


def _interned(value: Any, intern: Callable[[str], str] = sys.intern, scalars: frozenset[type] = _SCALARS) -> Any:
    # No call for a scalar, type() looked up in a set, the names bound once: this runs on every object
    # a member's watch or a write's answer brings.
    if type(value) is dict:
        return {intern(k): v if type(v) in scalars else _interned(v) for k, v in value.items()}
    if type(value) is list:
        return [v if type(v) in scalars else _interned(v) for v in value]
    return value


# What a compact record keeps of a member object's spec: the fields read after its comparison (the rest
# is compared once per version of the object, then only the verdict is kept). Readers: the VIP
# (federation/controller.py `_vip`: a Service's type) and Istio's verdict (accesspoint/istioverdict.py: an
# Istio Gateway's selector, a VirtualService's gateways and route destinations, a Gateway API route's
# parentRefs). tests/unit/test_compact_cache.py checks that each reader answers the same on both forms.
_ROUTE_HOSTS: dict[str, Any] = {"route": {"destination": {"host": True}}}
READ_SPEC: dict[KindId, dict[str, Any]] = {
    ("", "Service"): {"type": True},
    (ISTIO_NET, "Gateway"): {"selector": True},
    (ISTIO_NET, "VirtualService"): {"gateways": True, "http": _ROUTE_HOSTS, "tcp": _ROUTE_HOSTS, "tls": _ROUTE_HOSTS},
    (GATEWAY_API, "HTTPRoute"): {"parentRefs": True},
    (GATEWAY_API, "GRPCRoute"): {"parentRefs": True},
}
# Metadata read after the comparison: identity and preconditions (uid, resourceVersion), ownership and
# shard (labels), Istio's observedGeneration check (generation, Istio and Gateway API kinds), and meshfed's
# own annotations (the certificate revision and serial; the content hash is kept with the verdict); other
# annotations (kubectl's last-applied copy...) are dropped.
_KEPT_METADATA = ("name", "namespace", "uid", "resourceVersion", "generation", "labels", "deletionTimestamp")
_OUR_ANNOTATIONS = "meshfed.io/"
_UNIQUE = frozenset({"uid", "resourceVersion"})  # values no two objects share: not interned


class _Shared(dict[str, Any]):
    """A read-only mapping that compact records share (a dict that can be referred to weakly)."""

    __slots__ = ("__weakref__",)


# Equal parts of compact records are one object: the owner labels of an AccessPoint's objects, a
# certificate's annotations, the spec fields and the status that are the same on every member.
# Like sys.intern, a table of identical read-only values: an entry lives as long as a record refers to it.
_SHARED: weakref.WeakValueDictionary[str, _Shared] = weakref.WeakValueDictionary()


def _shared(value: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))  # exact: 1, 1.0 and true differ
    held = _SHARED.get(text)
    if held is None:
        held = _Shared(_interned(value))
        _SHARED[text] = held
    return held


def _kept(value: Any, fields: Any) -> Any:
    if fields is True:
        return value
    if type(value) is list:
        return [_kept(v, fields) for v in value]
    if type(value) is dict:
        return {k: _kept(value[k], sub) for k, sub in fields.items() if k in value}
    return value


def _pruned(value: Any) -> Any:
    """`value` without empty mappings and lists (every reader takes an absent field for an empty one)."""
    if type(value) is dict:
        kept = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v != {} and v != []}
    if type(value) is list:
        return [_pruned(v) for v in value]
    return value


def _verdict_reads_generation(api_version: str) -> bool:
    """Istio's analyzer messages and the Gateway API conditions count only at the object's generation."""
    group = api_version.rpartition("/")[0]
    return group.endswith(".istio.io") or group == GATEWAY_API


def compact(obj: dict[str, Any], outcome: tuple[str, str | None]) -> dict[str, Any]:
    """What the caches keep of a member object once compared with the object it should be (`outcome`:
    accesspoint.plan.verdict, kept with the object's content hash in place of the annotation): its
    identity, labels, meshfed's other annotations, status (Istio's verdict and the VIP are read from
    there; empty parts left out), the generation where Istio's verdict compares it, and the spec fields of
    READ_SPEC. 0.8 KB of Python objects per cached member object, its key and index entries included
    (/debug/caches at 10 and 25 members), instead of ~4.5 KB whole (`slim`); no Secret's data stays in
    memory. What repeats across objects
    and members is held once: names, namespaces and hashes interned; labels, annotations, spec fields and
    status shared (`_shared`). Read-only, like every cached object."""
    meta = obj.get("metadata") or {}
    intern = sys.intern
    api_version, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
    kept: dict[str, Any] = {}
    for k in _KEPT_METADATA:
        if k not in meta or (k == "generation" and not _verdict_reads_generation(api_version)):
            continue
        v = meta[k]
        if k == "labels":
            kept[k] = _shared(v)
        else:
            kept[k] = intern(v) if type(v) is str and k not in _UNIQUE else v
    ours = {a: b for a, b in (meta.get("annotations") or {}).items()
            if a.startswith(_OUR_ANNOTATIONS) and a != HASH_ANNOTATION}
    if ours:
        kept["annotations"] = _shared(ours)
    which, content_hash = outcome
    record: dict[str, Any] = {"apiVersion": intern(api_version), "kind": intern(kind), "metadata": kept,
                              which: intern(content_hash) if content_hash is not None else None}
    fields = READ_SPEC.get((api_version.rpartition("/")[0], kind))
    if fields is not None and isinstance(obj.get("spec"), dict):
        record["spec"] = _shared(_kept(obj["spec"], fields))
    status = _pruned(obj.get("status"))
    if status:
        record["status"] = _shared(status)
    return record


def deep_size(root: Any, seen: set[int]) -> int:
    """sys.getsizeof of `root` and of everything it refers to (containers, instances' attributes), each
    object once: ids already in `seen` are skipped, and the ones counted are added to it (so everything
    counted must stay alive while `seen` is used: an id is reused once its object is gone)."""
    total, stack = 0, [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif not isinstance(obj, type):
            if hasattr(obj, "__dict__"):
                stack.append(vars(obj))
            stack.extend(getattr(obj, slot) for cls in type(obj).__mro__
                         for slot in getattr(cls, "__slots__", ()) if slot != "__weakref__" and hasattr(obj, slot))
    return total


def _rv(obj: dict[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion", "0"))
    except ValueError:
        return 0


# An object's Update entry of ours: its index in managedFields (-1: beside an Apply entry of ours) and
# the fields it owns (None: list elements too), accesspoint.ownership `update_entry_index`,
# `update_owned_fields`.
UpdateOwned = tuple[int, FieldPaths | None]


class OwnedCache:
    """Objects of one member labelled with our hub id, with an index by owning AccessPoint."""

    def __init__(self, hub: str) -> None:
        self.hub = hub
        self.objects: dict[ObjectKey, dict[str, Any]] = {}
        self.by_owner: dict[str, set[ObjectKey]] = defaultdict(set)
        self.per_kind: Counter[KindId] = Counter()  # objects held, by (group, kind)
        self.synced: set[KindId] = set()
        # The highest resourceVersion the member's lists and watch events of each kind have shown (not
        # our own writes' answers: a list served from the watch cache may lag those by a few revisions).
        # A later list of the kind is never older, unless the member's store went back.
        self.max_rv: dict[KindId, int] = {}
        # Namespaces the executor made sure of on this member (federation/executor.py `_namespace_ready`):
        # the one create per namespace that every create into it waits for, kept once done. A new cache
        # (a reset: the member was wiped or replaced) makes sure of them again.
        self.namespaces: dict[str, asyncio.Future[None]] = {}
        # Objects whose fields we own through an Update entry (created with POST), by key: the entry's
        # index in managedFields, -1 when an Apply entry of ours is there too (accesspoint.ownership
        # `update_entry_index`), and the fields it owns (`update_owned_fields`). Before an apply that
        # would not set them all, the executor moves them into the Apply entry. Objects of one shape share
        # one record (`_shapes`): it costs them nothing but the index's slot.
        self.update_owned: dict[ObjectKey, UpdateOwned] = {}
        self._shapes: dict[UpdateOwned, UpdateOwned] = {}

    def put(self, obj: dict[str, Any], desired: dict[str, Any] | None = None) -> str | None:
        """Store `obj` unless we hold a newer version; return its owner key when it changed. With
        `desired` (a write's answer: the executor knows what it wrote) it is compared at once and kept
        compact; otherwise (a watch event, a list) it is kept whole until its owner's next plan
        (`compare`), which the returned owner key brings."""
        key = key_of(obj)
        old = self.objects.get(key)
        if old is not None and old["metadata"].get("uid") == obj["metadata"].get("uid"):
            if _rv(old) > _rv(obj):
                return None  # an older event than what we hold
            if old["metadata"].get("resourceVersion") == obj["metadata"].get("resourceVersion"):
                if desired is not None and not compared(old):  # the watch was faster than the write's answer
                    self.objects[key] = compact(old, verdict(desired, old))
                return None  # the watch echo of our own write (already in the cache): nothing new
        previous_owner = self._drop(key)
        owner = owner_of(obj, self.hub)
        if owner is None:  # someone removed our labels: it is no longer ours
            return previous_owner
        self.objects[key] = slim(obj) if desired is None else compact(obj, verdict(desired, obj))
        self._note_update_entry(key, obj)
        self.per_kind[(key.group, key.kind)] += 1
        self.by_owner[owner.key].add(key)
        return owner.key

    def _note_update_entry(self, key: ObjectKey, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        if "managedFields" not in meta:
            return  # a version without them (stripped by someone) says nothing new
        index = update_entry_index(meta["managedFields"])
        if index is None:
            self.update_owned.pop(key, None)
            return
        record = (index, update_owned_fields(meta["managedFields"]))
        if len(self._shapes) >= 4096:  # many templates' shapes: start sharing anew
            self._shapes.clear()
        self.update_owned[key] = self._shapes.setdefault(record, record)

    def remove(self, obj: dict[str, Any]) -> str | None:
        key = key_of(obj)
        old = self.objects.get(key)
        if old is None or old["metadata"].get("uid") != obj["metadata"].get("uid"):
            return None
        return self._drop(key)

    def _drop(self, key: ObjectKey) -> str | None:
        self.update_owned.pop(key, None)
        old = self.objects.pop(key, None)
        if old is None:
            return None
        self.per_kind[(key.group, key.kind)] -= 1
        owner = owner_of(old, self.hub)
        if owner is not None:
            self.by_owner[owner.key].discard(key)
            return owner.key
        return None

    def replace_kind(self, kind: KindId, items: list[dict[str, Any]], list_rv: str = "") -> set[str]:
        """After a relist: replace every object of `kind` (group, kind); return the owners that changed.
        An object written through (or seen by a watch) after the list's snapshot `list_rv` is kept: a
        list that started before our own create must not make it look missing (a second create would
        follow)."""
        changed: set[str] = set()
        fresh = {key_of(o): o for o in items}
        group, name = kind
        try:
            snapshot = int(list_rv) if list_rv else None
        except ValueError:
            snapshot = None
        for key in [k for k in self.objects if k.kind == name and k.group == group and k not in fresh
                    and (snapshot is None or _rv(self.objects[k]) <= snapshot)]:
            owner = self._drop(key)
            if owner:
                changed.add(owner)
        for obj in items:
            old = self.objects.get(key_of(obj))
            if old is None or old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                owner = self.put(obj)
                if owner:
                    changed.add(owner)
        self.synced.add(kind)
        return changed

    def observed(self, kind: KindId, resource_version: str) -> None:
        """A list or watch event of `kind` at `resource_version`."""
        try:
            rv = int(resource_version)
        except ValueError:
            return
        self.max_rv[kind] = max(self.max_rv.get(kind, 0), rv)

    def disagrees(self, kind: KindId, listed: list[dict[str, Any]], list_rv: str) -> str | None:
        """What a (metadata-only) list of `kind` says that the cache does not: an object the cache lacks
        or holds with another uid or an older resourceVersion, or one the cache holds that the member
        no longer has (unless written after the list's snapshot). None when they agree."""
        group, name = kind
        try:
            snapshot = int(list_rv)
        except ValueError:
            snapshot = 0
        fresh = {key_of(o): o for o in listed}
        for key, obj in fresh.items():
            held = self.objects.get(key)
            if held is None:
                return f"{key} is on the member, not in the cache"
            if held["metadata"].get("uid") != obj["metadata"].get("uid"):
                return f"{key} has another uid on the member"
            if _rv(held) < _rv(obj):
                return f"{key} is newer on the member"
        for key, held in self.objects.items():
            if key.kind == name and key.group == group and key not in fresh and _rv(held) <= snapshot:
                return f"{key} is in the cache, not on the member"
        return None

    def compare(self, owner: Owner, desired: Iterable[dict[str, Any]]) -> None:
        """Before `owner`'s plan: every object of its `desired` that is cached whole (a version not compared
        yet) is compared with it and kept compact from now on (accesspoint.plan `verdict`)."""
        mine = self.by_owner.get(owner.key)
        if not mine:
            return
        for obj in desired:
            key = key_of(obj)
            held = self.objects.get(key)
            if held is not None and not compared(held) and key in mine:
                self.objects[key] = compact(held, verdict(obj, held))

    def footprint(self, seen: set[int]) -> int:
        """Bytes of Python objects this cache holds (records, keys, indexes); what is in `seen` (parts
        shared with records of other caches, interned strings) is not counted again."""
        return sum(deep_size(part, seen) for part in (self.objects, self.by_owner, self.per_kind, self.max_rv,
                                                      self.update_owned))

    def whole(self) -> int:
        """Objects cached whole: versions not compared with what they should be yet."""
        return sum(1 for o in self.objects.values() if not compared(o))

    def holds_just(self, owner: Owner, desired: Iterable[dict[str, Any]]) -> bool:
        """Every object of `owner` held is a version already compared (a write's answer, or one a plan
        compared; not one a watch or list brought since) and a plan of `desired` against them writes
        nothing: no change seen on the member since then asks for a reconcile."""
        owned = self.owned(owner)
        return all(compared(o) for o in owned.values()) and plan(desired, owned).empty

    def owned(self, owner: Owner) -> dict[ObjectKey, dict[str, Any]]:
        return {k: self.objects[k] for k in self.by_owner.get(owner.key, set()) if k in self.objects}

    def owners(self) -> set[str]:
        return {k for k, v in self.by_owner.items() if v}

    def holds(self, kind: KindId) -> bool:
        """Some object of `kind` is cached."""
        return self.per_kind[kind] > 0


@dataclass
class Probe:
    reachable: bool | None = None
    ready: bool = False
    version: str | None = None
    istio: bool | None = None
    message: str = ""
    at: float = 0.0
    served: frozenset[KindId] | None = None  # managed kinds the member serves (None: not probed)
    latency: float | None = None  # seconds the readiness request took (None: no answer)
    identity: str | None = None  # the kube-system namespace UID (None: not known)


@dataclass
class Member:
    """The hub's live view of one member cluster."""

    name: str
    spec: MemberCluster
    hub_id: str
    cache: OwnedCache
    client: KubeClient | None = None
    probe: Probe = field(default_factory=Probe)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    kubeconfig_error: str | None = None
    # Asks this member's istiod about pushes and ACKs (spec.istiod set), else None.
    istiod: IstiodMonitor | None = None
    watches: dict[KindId, asyncio.Task[None]] = field(default_factory=dict)
    listed: dict[KindId, int] = field(default_factory=dict)  # kind -> shard-filter generation last listed with
    # Watch on demand: the kinds each AccessPoint (owner key) plans here (`MemberRegistry.want`), their
    # union counted; a kind listed, with nothing of ours cached and nobody wanting it, is `parked` (no
    # watch); wanted again, it is `waking` (listed anew) and plans needing it wait for that list.
    wants: dict[str, frozenset[KindId]] = field(default_factory=dict)
    wanted: Counter[KindId] = field(default_factory=Counter)
    parked: set[KindId] = field(default_factory=set)
    waking: set[KindId] = field(default_factory=set)
    # The verdict on spec.mesh against every registered member (placement.mesh), set by the registry.
    mesh: RoleVerdict | None = None
    # Deployments (namespace, name) -> labels in the namespaces followWorkload names, once listed
    # (MemberRegistry.follow_workloads_in); None until then.
    workloads: dict[tuple[str, str], dict[str, str]] | None = None
    workloads_task: asyncio.Task[None] | None = None
    # Circuit breaker: False from a failed probe or a timed-out write until a probe answers again.
    answering: bool = True
    not_answering_since: float | None = None  # wall clock
    not_answering_why: str = ""
    degraded: bool = False  # slow probes (latency kept in `probe.latency`)
    slow_probes: int = 0  # consecutive probes slower than DEGRADED_AFTER
    identity: str | None = None  # kube-system UID of the cluster the cache describes
    discovery_etag: str | None = None  # of the last aggregated discovery answer (MemberRegistry._discover)
    # Lists of this member's kinds at once (its watches starting, the verification): each list in flight
    # holds a pooled TLS connection (~97 KiB) until it idles out, so a cold start listing 15 kinds of
    # every member at once held ~16 connections per member.
    list_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(LISTS_PER_MEMBER), repr=False)
    # Its requests in flight at once (its client's `slots`): a share of MEMBER_REQUEST_BUDGET.
    requests: Slots = field(default_factory=lambda: Slots(MEMBER_CONNECTIONS), repr=False)
    last_reset: str = ""  # why and when the cache was last dropped (identity, resourceVersions, relist)
    resets: int = 0
    _needed: tuple[frozenset[KindId] | None, frozenset[KindId]] | None = field(default=None, repr=False)
    _facts: tuple[tuple[object, ...], ClusterFacts] | None = field(default=None, repr=False)

    def needed_kinds(self) -> frozenset[KindId]:
        """The managed kinds the member serves. Asked on every plan (`usable`): kept until a probe
        brings another `served`."""
        served = self.probe.served
        if self._needed is None or self._needed[0] is not served:
            self._needed = (served, frozenset(k.id for k in MANAGED_KINDS.values() if self.serves(k)))
        return self._needed[1]

    def may_park(self, kind: KindId) -> bool:
        """Nothing of ours of `kind` is cached here and no AccessPoint plans one: its watch may stop."""
        return self.wanted[kind] <= 0 and not self.cache.holds(kind)

    def set_wants(self, owner_key: str, kinds: frozenset[KindId]) -> None:
        """`owner_key` plans objects of `kinds` here (empty: none)."""
        old = self.wants.pop(owner_key, frozenset())
        if kinds:
            self.wants[owner_key] = kinds
        self.wanted.subtract(old)
        self.wanted.update(kinds)

    def waiting_for(self, kinds: Iterable[KindId]) -> set[KindId]:
        """Of `kinds`, those whose watch is (re)starting: a plan needing them waits for their list."""
        return {k for k in kinds if k in self.waking or k in self.parked}

    def listed_with(self, generation: int) -> bool:
        return all(self.listed.get(k, -1) >= generation for k in self.needed_kinds())

    @property
    def facts(self) -> ClusterFacts:
        """Kept while what it is made of is the same objects (asked many times per reconcile)."""
        parts = (self.spec, self.probe.ready, self.probe.reachable, self.mesh, self.workloads)
        kept = self._facts
        if kept is not None and all(a is b for a, b in zip(kept[0], parts, strict=True)):
            return kept[1]
        facts = self._make_facts()
        self._facts = (parts, facts)
        return facts

    def _make_facts(self) -> ClusterFacts:
        return ClusterFacts(
            name=self.name,
            region=self.spec.spec.region,
            zone=self.spec.spec.zone,
            labels=self.spec.labels,
            taints=self.spec.spec.taints,
            ready=self.probe.ready,
            reachable=self.probe.reachable,
            mesh_primary=self.spec.spec.mesh_primary,
            mesh_problem=self.mesh.problem if self.mesh is not None else None,
            # Not known while unreachable: followWorkload then keeps what it placed and adds nothing.
            workloads=None if self.workloads is None or not self.probe.reachable else [
                WorkloadFact(namespace=ns, name=name, labels=labels)
                for (ns, name), labels in sorted(self.workloads.items())],
        )

    def refused(self, objects: list[dict[str, Any]]) -> str | None:
        """Why these objects must not be written here (Istio kinds on an Istio remote), else None."""
        return remote_refusal(self.facts, (key_of(o).group for o in objects))

    def serves(self, kind: Kind) -> bool:
        """The member serves this kind (its CRD is installed) at the version meshfed uses."""
        served = self.probe.served
        return not kind.group if served is None else kind.id in served

    def unserved(self, objects: list[dict[str, Any]]) -> list[str]:
        """`Kind.group/version` of every kind among `objects` the member does not serve, sorted."""
        missing = set()
        for obj in objects:
            key = key_of(obj)
            kind = MANAGED_KINDS.get((key.group, key.kind))
            if kind is not None and not self.serves(kind):
                missing.add(f"{kind.kind} ({kind.api_version})")
        return sorted(missing)

    @property
    def synced(self) -> bool:
        """Every managed kind the member serves listed at least once (its cache is complete)."""
        return self.cache.synced >= self.needed_kinds()

    @property
    def usable(self) -> bool:
        """Reachable and answering now, and every managed kind it serves listed at least once: safe to
        plan against."""
        return bool(self.probe.reachable) and self.answering and self.client is not None and self.synced

    @property
    def latency_ms(self) -> int | None:
        """The probe's latency when degraded, rounded to 500 ms (a status write per real change, not
        per probe); None when the member answers promptly."""
        if not self.degraded or self.probe.latency is None:
            return None
        return int(round(self.probe.latency * 2) * 500)


# (member name, owner key, why: "member-object" a watch event, "relist" a list that found it changed,
# "waking" the list of a kind it waits for)
OwnerCallback = Callable[[str, str, str], None]
MemberCallback = Callable[[str], None]  # member name
# (member name, why: "upsert" its MemberCluster or kubeconfig, "mesh" its mesh role, "removed", "not-answering",
# "reset" its cache dropped, "workloads" followWorkload's Deployments, "probe" the probe's verdict, "listed" the
# list that completed its cache (`Member.synced`), "no-shard" no shard held: the same, with nothing of any kind ours)
MemberChangeCallback = Callable[[str, str], None]


def _planned_from(member: Member) -> tuple[Any, ...]:
    """What an upsert may change of what planning and the member's status read: its MemberCluster's spec and
    labels, its mesh role, its client and istiod monitor (the objects themselves: plain objects, equal
    only to themselves, and held here so that a new one cannot take the old one's id) and the kubeconfig's
    error. Not the probe's verdict: the probe loop runs meanwhile and reports its own changes (compared
    here, a probe landing during an upsert's read of the Secret made the upsert report a change too)."""
    return (member.spec.spec, member.spec.labels, member.mesh, member.client, member.istiod,
            member.kubeconfig_error)


class MemberRegistry:
    """Starts/stops Members as MemberCluster objects and their Secrets come and go."""

    def __init__(
        self,
        hub: KubeClient,
        hub_id: str,
        on_owner_change: OwnerCallback,
        on_member_change: MemberChangeCallback,
        probe_interval: float = 5.0,
        failure_threshold: int = 3,
        on_istiod_change: MemberCallback | None = None,
        istiod_options: dict[str, float] | None = None,
        verify_interval: float = VERIFY_INTERVAL,
        on_member_latency: MemberCallback | None = None,
    ) -> None:
        self.hub = hub
        self.hub_id = hub_id
        self.members: dict[str, Member] = {}
        self.on_owner_change = on_owner_change
        self.on_member_change = on_member_change
        # Only the member's probe latency (degraded or not, and how slow) changed: no fact a placement
        # or a rendering reads (default: treated as any member change).
        self.on_member_latency: MemberCallback = on_member_latency or (lambda name: on_member_change(name, "latency"))
        self.probe_interval = probe_interval
        # Consecutive failed probes before a reachable member is reported unreachable: one slow
        # answer from a busy API server must not flip every AccessPoint on it to Unknown.
        self.failure_threshold = failure_threshold
        self.verify_interval = verify_interval
        self.stall = LoopStall()
        self._kubeconfigs: dict[str, str] = {}
        self.on_istiod_change = on_istiod_change
        self.istiod_options = dict(istiod_options or {})
        # Shard filter: None = every object of this hub; a set = only those shards' objects.
        self.shard_filter: frozenset[int] | None = None
        self.filter_generation = 0
        self.shard_of: Callable[[str, str], int] | None = None
        self.workload_namespaces: frozenset[str] = frozenset()  # followWorkload's namespaces
        self._discoveries: OrderedDict[str, Discovery] = OrderedDict()  # by ETag, DISCOVERIES_KEPT at most

    def set_shard_filter(self, held: frozenset[int] | None) -> None:
        """Cache only the objects of shards `held` (None: all); re-list every watch when it changes."""
        if held == self.shard_filter:
            return
        self.shard_filter = held
        self.filter_generation += 1
        for member in self.members.values():
            for task in member.watches.values():
                task.cancel()
            member.watches.clear()
            member.parked.clear()  # every kind is listed again with the new filter, then parked again
            member.waking.clear()
            if member.probe.reachable and member.client is not None:
                self._ensure_watches(member)
            self._count_watches(member)

    def selector(self) -> str | None:
        """The label selector of the watches (None: nothing to select, an empty shard set)."""
        base = f"{HUB}={self.hub_id}"
        if self.shard_filter is None:
            return base
        if not self.shard_filter:
            return None
        return f"{base},{SHARD_LABEL} in ({','.join(str(s) for s in sorted(self.shard_filter))})"

    async def upsert(self, body: dict[str, Any]) -> None:
        """A MemberCluster as the hub has it now (an event, or the resync reading each again: its kubeconfig
        Secret is read again too). The member is reported changed (`on_member_change`: every AccessPoint is
        planned again) only when something planning reads changed (`_planned_from`): its spec or labels, its
        mesh role, its client (a new kubeconfig) or istiod access, or the kubeconfig's error. Not for an event
        of its status alone, which is ours: one MemberCluster status write re-planned every AccessPoint, and a resync
        every AccessPoint once per member (`tests/integration/test_member_upsert.py`)."""
        mc = MemberCluster.model_validate(body)
        member = self.members.get(mc.name)
        if member is None:
            member = Member(name=mc.name, spec=mc, hub_id=self.hub_id, cache=OwnedCache(self.hub_id))
            self.members[mc.name] = member
            self._share_request_budget()
            before = None
        else:
            before = _planned_from(member)
            if mc.spec != member.spec.spec or mc.labels != member.spec.labels:
                member.spec = mc  # else the one it had: Member.facts stays as it was
        self._judge_roles(mc.name)
        await self._ensure_client(member)
        await self._ensure_istiod(member)
        if before is None or _planned_from(member) != before:
            self.on_member_change(mc.name, "upsert")

    def remotes_of(self, primary: str) -> list[Member]:
        """The members that are valid Istio remotes of `primary` (its zone's other clusters), by name."""
        return sorted((m for m in self.members.values() if m.spec.spec.mesh_primary == primary
                       and m.mesh is not None and m.mesh.problem is None), key=lambda m: m.name)

    def _judge_roles(self, changed: str) -> None:
        """Re-judge every member's mesh role (one member's change can invalidate another's: its primary
        went away or became a remote); members whose verdict changed are reported, besides `changed`."""
        verdicts = role_verdicts({n: m.spec.spec for n, m in self.members.items()})
        for name, member in self.members.items():
            if member.mesh != verdicts[name]:
                member.mesh = verdicts[name]
                if name != changed:
                    self.on_member_change(name, "mesh")

    async def _ensure_istiod(self, member: Member) -> None:
        """One IstiodMonitor per member with spec.istiod (restarted when spec.istiod changes)."""
        access = member.spec.spec.istiod
        if member.istiod is not None and (access is None or member.istiod.access != access):
            await member.istiod.stop()
            member.istiod = None
        if access is None or member.istiod is not None or self.on_istiod_change is None:
            return

        def selectors() -> set[str]:
            return gateway_selectors(o for k, o in member.cache.objects.items()
                                     if k.kind == "Gateway" and k.group == ISTIO_NET)

        def zone_hosts() -> set[str] | None:  # a zone primary: the destinations its gateways route to
            if not self.remotes_of(member.name):
                return None
            return set(routed_hosts(o for k, o in member.cache.objects.items()
                                    if k.group == ISTIO_NET and k.kind in ("Gateway", "VirtualService")))

        member.istiod = IstiodMonitor(member.name, access, lambda: member.client, selectors, self.on_istiod_change,
                                      zone_hosts=zone_hosts, **self.istiod_options)
        member.istiod.start()

    def _share_request_budget(self) -> None:
        """Every member's share of MEMBER_REQUEST_BUDGET for the members registered now."""
        share = member_request_slots(len(self.members))
        for member in self.members.values():
            member.requests.resize(share)

    async def remove(self, name: str) -> None:
        """Forget a deregistered member. Its objects stay where they are: deregistering is no deletion."""
        member = self.members.pop(name, None)
        if member is not None:
            await self._stop(member)
            self._share_request_budget()
        self._judge_roles(name)
        self.on_member_change(name, "removed")

    def warm(self) -> bool:
        """Every member has been probed, and the reachable ones have listed their objects.

        Until then the hub's view is incomplete, not failed: reconciling would report clusters
        as Unknown (and then flip back), which is status churn and noise after every restart.
        """
        return all(
            m.kubeconfig_error is not None or m.probe.reachable is False or
            (m.usable and m.listed_with(self.filter_generation))
            for m in self.members.values()
        )

    async def close(self) -> None:
        for member in list(self.members.values()):
            await self._stop(member)
        self.members.clear()
        await self.stall.stop()

    async def _stop(self, member: Member) -> None:
        tasks = [*member.tasks, *member.watches.values(), *([member.workloads_task] if member.workloads_task else [])]
        member.workloads_task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        member.tasks.clear()
        if member.istiod is not None:
            await member.istiod.stop()
            member.istiod = None
        member.watches.clear()
        member.parked.clear()  # a new client starts with a new cache: every kind is listed again
        member.waking.clear()
        with contextlib.suppress(KeyError):
            metrics.member_watches.remove(member.name)
        if member.client is not None:
            await member.client.close()
            member.client = None

    async def _read_kubeconfig(self, member: Member) -> str | None:
        ref = member.spec.spec.kubeconfig_secret_ref
        try:
            secret = await self.hub.get(f"/api/v1/namespaces/{ref.namespace}/secrets/{ref.name}")
        except ApiError as err:
            member.kubeconfig_error = f"cannot read Secret {ref.namespace}/{ref.name}: {err}"
            return None
        if secret is None:
            member.kubeconfig_error = f"Secret {ref.namespace}/{ref.name} not found"
            return None
        data = (secret.get("data") or {}).get(ref.key)
        if not data:
            member.kubeconfig_error = f"Secret {ref.namespace}/{ref.name} has no key {ref.key!r}"
            return None
        member.kubeconfig_error = None
        return base64.b64decode(data).decode()

    async def _ensure_client(self, member: Member) -> None:
        text = await self._read_kubeconfig(member)
        if text is None or (self._kubeconfigs.get(member.name) == text and member.client is not None):
            if text is None:
                member.probe = Probe(reachable=None, ready=False, message=member.kubeconfig_error or "", at=time.time())
            return
        await self._stop(member)
        try:
            member.client = await KubeClient.from_kubeconfig_dict(yaml.safe_load(text), member.name, attempts=2,
                                                                  deadlines=MEMBER_DEADLINES,
                                                                  connections=MEMBER_CONNECTIONS)
            member.client.slots = member.requests
        except Exception as exc:  # a malformed kubeconfig is user input: report it, do not crash
            member.kubeconfig_error = f"invalid kubeconfig in Secret: {type(exc).__name__}: {exc}"
            member.probe = Probe(reachable=None, ready=False, message=member.kubeconfig_error, at=time.time())
            return
        self._kubeconfigs[member.name] = text
        member.cache = OwnedCache(self.hub_id)
        member.listed.clear()
        member.identity = None
        member.answering = True
        member.tasks.append(asyncio.create_task(self._probe_loop(member), name=f"probe-{member.name}"))
        if self.verify_interval > 0:
            member.tasks.append(asyncio.create_task(self._verify_loop(member), name=f"verify-{member.name}"))

    def not_answering(self, member: Member, why: str, since: float) -> None:
        """Open the member's circuit breaker (a request sent at `since`, monotonic, got no answer): no new
        writes until a probe answers again. Reported at once (the MemberCluster status has its own
        queue). A member that answered anything since then is busy, not hung: the breaker stays closed."""
        client = member.client
        if not member.answering or (client is not None and client.last_answer > since):
            return
        member.answering = False
        member.not_answering_since = time.time()
        member.not_answering_why = why
        metrics.member_not_answering.labels(cluster=member.name).inc()
        log.warning("member %s: not answering (%s): writes held until a probe answers", member.name, why)
        self.on_member_change(member.name, "not-answering")

    def reset(self, member: Member, why: str) -> None:
        """The cache no longer describes the member: drop it and relist every kind (the plans that
        follow repair what is missing; nothing is deleted for lack of a cache)."""
        log.warning("member %s: cache dropped, relisting: %s", member.name, why)
        for task in member.watches.values():
            task.cancel()
        member.watches.clear()
        member.parked.clear()
        member.waking.clear()
        member.cache = OwnedCache(self.hub_id)
        member.listed.clear()
        member.resets += 1
        member.last_reset = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: {why}"
        if member.probe.reachable and member.client is not None:
            self._ensure_watches(member)
        self.on_member_change(member.name, "reset")

    async def probe_once(self, member: Member) -> Probe:
        client = member.client
        assert client is not None
        try:
            started = time.monotonic()
            await client.request("GET", "/readyz", timeout=PROBE_TIMEOUT, retry=False, probe=True)
            latency = time.monotonic() - started
            version = await client.request("GET", "/version", timeout=PROBE_TIMEOUT, retry=False, probe=True)
            discovery = await self._discover(member, client)
            try:
                kube_system = await client.request("GET", IDENTITY_PATH, timeout=PROBE_TIMEOUT, retry=False,
                                                   probe=True)
                identity = str((kube_system.get("metadata") or {}).get("uid") or "") or None
            except ApiError as err:
                if err.status == 0:
                    raise
                identity = None  # not created yet (an API server just started), or not readable
            istio = discovery.resources.get((ISTIO_NET, "v1"), set()) >= ISTIO_RESOURCES
            message = "API server ready" + ("" if istio else "; Istio networking CRDs (v1) are not installed")
            return Probe(True, istio, str(version.get("gitVersion", "")), istio, message, time.time(),
                         discovery.served, latency, identity)
        except ApiError as err:
            return Probe(False, False, member.probe.version, member.probe.istio, str(err), time.time())

    async def _discover(self, member: Member, client: KubeClient) -> Discovery:
        """What the member serves, for the groups of the managed kinds: one aggregated discovery request,
        asked only to change (If-None-Match: most probes get a 304 without a body instead of ~40 KB of
        JSON to parse, 3 ms of CPU each); or (older API servers) one request per group version."""
        etag = member.discovery_etag
        known = self._discoveries.get(etag) if etag is not None else None
        found, answered = await client.get_unless_unchanged("/apis", etag if known is not None else None,
                                                            timeout=PROBE_TIMEOUT, accept=AGGREGATED_DISCOVERY,
                                                            probe=True)
        if found is None and etag is not None and known is not None:
            self._discoveries.move_to_end(etag)
            return known
        resources = served_resources(found or {})
        if resources is None:
            member.discovery_etag = None
            resources = await self._group_listings(client)
            return Discovery(resources, served_kinds(resources))
        discovery = Discovery(resources, served_kinds(resources))
        member.discovery_etag = answered
        if answered:  # an ETag is the answer's digest: members serving the same APIs share one entry
            self._discoveries[answered] = discovery
            self._discoveries.move_to_end(answered)
            while len(self._discoveries) > DISCOVERIES_KEPT:
                self._discoveries.popitem(last=False)
        return discovery

    @staticmethod
    async def _group_listings(client: KubeClient) -> dict[tuple[str, str], set[str]]:
        out: dict[tuple[str, str], set[str]] = {}
        for group, version in sorted({(k.group, k.versions[0]) for k in MANAGED_KINDS.values() if k.group}):
            try:
                listing = await client.request("GET", f"/apis/{group}/{version}", timeout=PROBE_TIMEOUT, retry=False)
            except ApiError as err:
                if err.status != 404:
                    raise
                continue
            out[(group, version)] = {str(r.get("name", "")) for r in listing.get("resources") or []}
        return out

    def follow_workloads_in(self, namespaces: frozenset[str]) -> None:
        """Watch Deployments (metadata only) in these namespaces of every member: followWorkload's facts.
        A new set restarts the watches (the facts are unknown until each member has listed again)."""
        if namespaces == self.workload_namespaces:
            return
        self.workload_namespaces = namespaces
        for member in self.members.values():
            if member.workloads_task is not None:
                member.workloads_task.cancel()
                member.workloads_task = None
            member.workloads = None
            if member.probe.reachable and member.client is not None:
                self._ensure_watches(member)

    async def _watch_workloads(self, member: Member) -> None:
        """List+watch Deployments' metadata in every namespace, keeping those followWorkload names."""
        wanted = self.workload_namespaces
        path = "/apis/apps/v1/deployments"
        delay = 0.2
        while True:
            client = member.client
            if client is None:
                return
            try:
                items, rv = await client.list(path, metadata_only=True)
                listed: dict[tuple[str, str], dict[str, str]] = {}
                for item in items:
                    meta = item.get("metadata") or {}
                    if meta.get("namespace") in wanted:
                        listed[(meta["namespace"], meta["name"])] = dict(meta.get("labels") or {})
                if member.workloads != listed:  # a relist (410 Gone) that finds them as they were changes nothing
                    member.workloads = listed
                    self.on_member_change(member.name, "workloads")
                delay = 0.2
                while True:
                    async for ev in client.watch(path, rv, metadata_only=True):
                        meta = ev.object.get("metadata") or {}
                        rv = str(meta.get("resourceVersion") or rv)
                        if ev.type == "BOOKMARK" or meta.get("namespace") not in wanted:
                            continue
                        key = (str(meta["namespace"]), str(meta["name"]))
                        after = None if ev.type == "DELETED" else dict(meta.get("labels") or {})
                        known = member.workloads or {}
                        if known.get(key) != after:
                            # A new dict, never changed in place: `Member.facts` is kept while it is the same.
                            changed = {k: v for k, v in known.items() if k != key}
                            if after is not None:
                                changed[key] = after
                            member.workloads = changed
                            self.on_member_change(member.name, "workloads")
            except Gone:
                continue
            except ApiError as err:
                log.debug("member %s: watch deployments: %s", member.name, err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _ensure_watches(self, member: Member) -> None:
        """A watch of every kind the member serves, except the parked ones nobody wants (every kind is
        listed once: objects of ours of a kind no AccessPoint uses any more are found and pruned)."""
        if self.workload_namespaces and member.workloads_task is None:
            member.workloads_task = asyncio.create_task(self._watch_workloads(member),
                                                        name=f"watch-{member.name}-deployments")
        for kind in MANAGED_KINDS.values():
            if kind.id in member.watches or not member.serves(kind):
                continue
            if kind.id in member.parked:
                if member.wanted[kind.id] <= 0:
                    continue
                member.parked.discard(kind.id)
                member.waking.add(kind.id)
            member.watches[kind.id] = asyncio.create_task(self._watch_kind(member, kind),
                                                          name=f"watch-{member.name}-{kind.qualified}")
        self._count_watches(member)

    def want(self, member: Member, owner_key: str, kinds: frozenset[KindId]) -> set[KindId]:
        """`owner_key` plans objects of `kinds` on `member`: their watches run (a parked one restarts).
        Returns the kinds not listed yet; the plan waits for them and `owner_key` is reconciled again
        when they are."""
        dropped = member.wants.get(owner_key, frozenset()) - kinds
        member.set_wants(owner_key, kinds)
        self._park_unused(member, dropped)
        if member.waiting_for(kinds) and member.probe.reachable and member.client is not None:
            self._ensure_watches(member)
        return member.waiting_for(kinds)

    def forget_wants(self, matches: Callable[[str, str], bool]) -> None:
        """Drop what AccessPoints (owner key, member name) matching `matches` wanted (deleted, shard lost)."""
        for member in self.members.values():
            for owner_key in [k for k in member.wants if matches(k, member.name)]:
                dropped = member.wants[owner_key]
                member.set_wants(owner_key, frozenset())
                self._park_unused(member, dropped)

    def _park_unused(self, member: Member, kinds: Iterable[KindId]) -> None:
        """Stop the watches of `kinds` nobody wants any more and of which nothing of ours is cached (their
        last object went while still wanted: the AccessPoint deleted after its objects)."""
        for kind_id in kinds:
            task = member.watches.get(kind_id)
            if task is not None and member.may_park(kind_id) and kind_id in member.cache.synced:
                task.cancel()
                member.waking.discard(kind_id)
                self._park(member, MANAGED_KINDS[kind_id])

    def _park(self, member: Member, kind: Kind) -> None:
        """Mark `kind` unwatched on `member`: its watch task returns right after (called from it) or was
        just cancelled (`_park_unused`)."""
        member.watches.pop(kind.id, None)
        member.parked.add(kind.id)
        self._count_watches(member)
        log.debug("member %s: no %s of ours and none planned: watch stopped", member.name, kind.plural)

    @staticmethod
    def _count_watches(member: Member) -> None:
        metrics.member_watches.labels(cluster=member.name).set(
            len(member.watches) + (1 if member.workloads_task is not None else 0))

    async def _probe_loop(self, member: Member) -> None:
        self.stall.ensure_running()
        failures = 0
        while True:
            sent = time.monotonic()
            probe = await self.probe_once(member)
            failures = 0 if probe.reachable else failures + 1
            if not probe.reachable:
                self.not_answering(member, probe.message, sent)  # no writes from now on; reported at once
            if not probe.reachable and member.probe.reachable and failures < self.failure_threshold:
                await asyncio.sleep(min(self.probe_interval, 1.0))
                continue  # Reachable stays as it was (Unknown through the breaker) for a few more probes
            if not probe.reachable and probe.served is None:
                probe.served = member.probe.served  # what it served when last reachable
            latency = probe.latency
            own_stall = self.stall.since(sent)
            degraded, member.slow_probes = judge_degraded(
                member.degraded, member.slow_probes, None if latency is None else max(0.0, latency - own_stall),
                self.failure_threshold)
            before = (member.probe.reachable, member.probe.ready, member.probe.version, member.probe.istio,
                      member.probe.served, member.answering)
            latency_before = member.latency_ms
            member.probe = probe
            member.degraded = degraded
            if probe.reachable and not member.answering:
                log.info("member %s: answering again (not answering since %s)", member.name,
                         time.strftime("%H:%M:%S", time.gmtime(member.not_answering_since or 0)))
                member.answering = True
                member.not_answering_since = None
                member.not_answering_why = ""
            if probe.reachable and probe.identity is not None:
                if member.identity is not None and member.identity != probe.identity:
                    self.reset(member, f"a different cluster answers: kube-system uid {probe.identity} "
                                       f"(the cache described {member.identity})")
                member.identity = probe.identity
            if probe.reachable:
                self._ensure_watches(member)
            after = (probe.reachable, probe.ready, probe.version, probe.istio, probe.served, member.answering)
            if before != after or member.latency_ms != latency_before:
                log.info("member %s: reachable=%s ready=%s latency=%s (%s)", member.name, probe.reachable,
                         probe.ready, f"{latency:.2f}s" if latency is not None else "-", probe.message)
            if before != after:
                self.on_member_change(member.name, "probe")
            elif member.latency_ms != latency_before:
                # A loaded fleet's members go slow and fast again: each such change reconciled every
                # AccessPoint (every member rendered and planned) for its MemberCluster's status alone.
                self.on_member_latency(member.name)
            await asyncio.sleep(jittered(self.probe_interval) if probe.reachable and member.answering
                                else min(self.probe_interval, 1.0))

    async def _verify_loop(self, member: Member) -> None:
        """Every verify_interval: list each kind's owned objects (metadata only) and compare them with
        the cache; relist a kind that disagrees (reset all on resourceVersions going backwards). The
        first round comes at a random point of the first interval: members' rounds do not coincide."""
        wait = self.verify_interval * random.random()
        while True:
            await asyncio.sleep(wait)
            wait = jittered(self.verify_interval)
            client, selector = member.client, self.selector()
            if client is None or selector is None or not member.usable:
                continue
            for kind in MANAGED_KINDS.values():
                parked = kind.id in member.parked
                if not parked and (kind.id not in member.cache.synced or kind.id not in member.watches):
                    continue
                try:
                    async with member.list_slots:
                        items, rv = await client.list(api_path(kind, None), label_selector=selector,
                                                      metadata_only=True)
                except ApiError as err:
                    log.debug("member %s: verify %s: %s", member.name, kind.plural, err)
                    break
                if parked:
                    if items and kind.id in member.parked:  # ours, unwatched (an older replica's, a restore)
                        log.warning("member %s: %d %s of ours while unwatched: watching it again", member.name,
                                    len(items), kind.plural)
                        member.parked.discard(kind.id)
                        self._ensure_watches(member)
                    continue
                if await self._rv_went_back(member, kind, rv):
                    break
                for item in items:  # PartialObjectMetadata: the kind is the list's
                    item["kind"], item["apiVersion"] = kind.kind, kind.api_version
                if self.shard_filter is not None:
                    continue  # unlabelled objects of held shards are not in this list: compare by watch only
                why = member.cache.disagrees(kind.id, items, rv)
                if why is not None:
                    metrics.member_cache_repairs.labels(cluster=member.name).inc()
                    log.warning("member %s: cache disagrees with the member (%s): relisting %s", member.name, why,
                                kind.plural)
                    task = member.watches.pop(kind.id)
                    task.cancel()
                    self._ensure_watches(member)

    async def _rv_went_back(self, member: Member, kind: Kind, list_rv: str) -> bool:
        """A list of `kind` older than what the cache has seen of it, and still older a moment later (a
        list served from a lagging watch cache catches up within that moment): the member's store went
        back (restored from an older backup, wiped)."""
        seen = member.cache.max_rv.get(kind.id, 0)
        try:
            listed = int(list_rv)
        except ValueError:
            return False
        if listed >= seen:
            return False
        await asyncio.sleep(RV_RECHECK)
        client = member.client
        if client is None:
            return False
        try:
            page = await client.request("GET", api_path(kind, None), query={"limit": 1}, accept=METADATA_LIST)
            listed = int((page.get("metadata") or {}).get("resourceVersion") or 0)
        except (ApiError, ValueError):
            return False
        if listed >= seen:
            return False
        metrics.member_cache_repairs.labels(cluster=member.name).inc()
        self.reset(member, f"resourceVersions went backwards: the member lists {kind.kind} at {listed}, the "
                           f"cache had seen {seen}")
        return True

    async def _watch_kind(self, member: Member, kind: Kind) -> None:
        """List+watch one kind forever; relist after 410 or a lost connection (and, cancelled, when the
        shard filter changes: the registry starts a new watch)."""
        generation = self.filter_generation
        selector = self.selector()
        path = api_path(kind, None)
        delay = 0.2
        while True:
            client = member.client
            if client is None:
                return
            if selector is None:  # no shard held: nothing of this kind is ours to cache
                synced_before = member.synced
                for changed_owner in member.cache.replace_kind(kind.id, []):
                    self.on_owner_change(member.name, changed_owner, "relist")
                member.listed[kind.id] = generation
                if member.synced and not synced_before:
                    self.on_member_change(member.name, "no-shard")
                await asyncio.Event().wait()  # until the filter changes (cancelled)
            try:
                async with member.list_slots:
                    items, rv = await client.list(path, label_selector=selector)
                if await self._rv_went_back(member, kind, rv):
                    return  # reset() started a new watch of every kind
                if self.shard_filter is not None and self.shard_of is not None:
                    items += await self._unlabelled(client, path)
                for item in items:
                    item.setdefault("kind", kind.kind)
                    item.setdefault("apiVersion", kind.api_version)
                synced_before = member.synced
                changed = member.cache.replace_kind(kind.id, items, rv)
                member.cache.observed(kind.id, rv)
                member.listed[kind.id] = generation
                for changed_owner in changed:
                    self.on_owner_change(member.name, changed_owner, "relist")
                if kind.id in member.waking:
                    # Restarted for AccessPoints that now plan this kind: those wait for it, nobody else.
                    member.waking.discard(kind.id)
                    for owner_key in [k for k, kinds in member.wants.items() if kind.id in kinds]:
                        self.on_owner_change(member.name, owner_key, "waking")
                elif member.synced and not synced_before:
                    # The list that completes the cache: plans that found it incomplete can run now. Not
                    # every list: a relist reports the owners it found changed (above), and a member's
                    # change reconciles every AccessPoint placed there — at 15 kinds per member, each
                    # member's start queued them 15 times, and each relist (410 Gone, a verification) once more.
                    self.on_member_change(member.name, "listed")
                if member.may_park(kind.id) and member.watches.get(kind.id) is asyncio.current_task():
                    self._park(member, kind)
                    return
                delay = 0.2
                while True:
                    async for ev in client.watch(path, rv, label_selector=selector):
                        rv = str(ev.object.get("metadata", {}).get("resourceVersion") or rv)
                        member.cache.observed(kind.id, rv)
                        if ev.type == "BOOKMARK":
                            continue
                        ev.object.setdefault("kind", kind.kind)
                        ev.object.setdefault("apiVersion", kind.api_version)
                        owner = member.cache.remove(ev.object) if ev.type == "DELETED" else member.cache.put(ev.object)
                        if owner:
                            self.on_owner_change(member.name, owner, "member-object")
                        if ev.type == "DELETED" and member.may_park(kind.id) and \
                                member.watches.get(kind.id) is asyncio.current_task():
                            self._park(member, kind)  # the last one went
                            return
            except Gone:
                continue
            except ApiError as err:
                # The cache stays usable while we relist: planning on a slightly stale cache is
                # safe (creates meet 409, applies are idempotent, deletes carry preconditions);
                # an unreachable member is caught by the probe, not here.
                log.debug("member %s: watch %s: %s", member.name, kind.plural, err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _unlabelled(self, client: KubeClient, path: str) -> list[dict[str, Any]]:
        """Objects of this hub without a shard label (written before sharding) whose owner is in a held
        shard: cached like the rest, so the next plan labels (or prunes) them."""
        assert self.shard_filter is not None and self.shard_of is not None
        items, _ = await client.list(path, label_selector=f"{HUB}={self.hub_id},!{SHARD_LABEL}")
        out = []
        for item in items:
            owner = owner_of(item, self.hub_id)
            if owner is not None and self.shard_of(owner.namespace, owner.name) in self.shard_filter:
                out.append(item)
        return out
