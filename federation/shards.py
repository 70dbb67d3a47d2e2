"""Many replicas: work split into virtual shards, each held through a coordination.k8s.io Lease on the hub.

Owns:
- **Which shard an object belongs to** (pure): an AccessPoint's shard is a stable hash (SHA-256) of
  its namespace/name modulo the shard count. Its NameServices and Certificates follow it: a
  NameService hashes the namespace/name of `spec.target.accessPointRef` (a standalone one, with
  static targets only, hashes its own namespace/name); a Certificate hashes `spec.accessPointRef`
  (meshfed derives every Certificate from the AccessPoint of the same name, so this is its own
  namespace/name too); a RolloutApproval hashes its `spec.accessPoint`. Cluster-scoped hub objects
  (DNSProvider, CertificateIssuer status) hash ("", name); a PlacementPolicy its namespace/name.
  MemberCluster status is a cluster-wide singleton (`MEMBERS`), held by a Lease of its own; so is
  `meshfed sds`'s status writing (`SDS`, through `SingletonLease`).
- **The placement of shards over replicas** (pure, `plan_shards`): given the live replicas and the
  current holders, which shards this replica takes and releases. Targets are exact: the replicas in
  name order get ceil(N/R) for the first N mod R of them, floor(N/R) for the rest; a replica releases
  what it holds beyond its target and takes free shards up to it. The free shards are dealt out
  over all the replicas short of their targets in rendezvous-hash order, the same way by every
  replica with the same view, so survivors taking over a dead replica's shards do not race for them.
  Taking is a compare-and-swap on the Lease (create, or update at the resourceVersion seen), so no
  shard is ever held twice.
- **The Lease machinery** (`Shards`): one Lease per replica (identity + liveness, so fair shares can
  be computed), one per shard, one per singleton, all in the Lease namespace (default
  meshfed-system) labelled `meshfed.io/lease-of=<hub id>`. Every `retry_period` one LIST reads them
  all, and this replica renews its own replica Lease, releases its excess and takes free or expired
  shards. Expiry follows client-go's rule: a Lease held by another replica is expired once its
  record has not changed for `leaseDurationSeconds` of *this* replica's monotonic clock (no clock
  comparison across machines).
- **Renewal costs one write per replica, whatever the shard count** (lease protocol 2, label
  `meshfed.io/lease-protocol`): a shard or singleton Lease written under protocol 2 is written only
  when it changes hands (acquire, release); it stays held for as long as its holder's replica Lease
  is renewed — it is live when its own record is fresh *or* its holder's replica Lease is live. A
  replica renewing 32 shard Leases every 2 s wrote 16 times a second for ever; now 0.5. While a live
  replica of an older version (its replica Lease without the label) is seen, which judges shard
  Leases by their own record only, this replica renews its shard Leases too (as before), so a
  rolling upgrade never lets an old replica take a shard a new one still holds.
- **Fencing**: a replica writes for a Lease only until `renew_deadline` after the start of its last
  successful renewal (`valid`), and renew_deadline < lease duration, so it stops writing before any
  other replica can observe the Lease expired and take it. Work runs inside `working_on(lease)`
  (a context variable that asyncio tasks inherit); every write-side boundary (executor, hub writer,
  DNS provider, issuer, rollout objects) calls `check()`, which raises `Fenced` once the Lease is
  not valid. A renewal that comes late (a round slower than the renew deadline: a starved event loop,
  a slow hub) drops the Leases as lost, but a shard whose Lease still names this replica stays in
  `cached_shards`: its objects stay watched on the members until the next round takes it back (nothing
  relisted) or its record names someone else. Without a Shards manager (`Controller.shards is None`)
  nothing is checked: one process holding everything, as before.

Imports only federation.kube and federation.metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from federation import metrics
from federation.kube import ApiError, KubeClient

log = logging.getLogger("meshfed.shards")

DEFAULT_SHARDS = 32
LEASE_NAMESPACE = "meshfed-system"
SHARD_LABEL = "meshfed.io/shard"  # on member objects: the shard of their owning AccessPoint
LEASE_OF = "meshfed.io/lease-of"  # on Leases: the hub id
LEASE_KIND = "meshfed.io/lease-kind"  # shard | replica | singleton
LEASE_PROTOCOL = "meshfed.io/lease-protocol"  # "2": shard/singleton Leases live while their holder's replica Lease does
PROTOCOL = "2"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
MEMBERS = "members"  # singleton: MemberCluster status
SDS = "sds"  # singleton: `meshfed sds` status writing


# ---------------------------------------------------------------------------------------------
# Pure: shard of an object, lease names, placement


def shard_of(namespace: str, name: str, shards: int) -> int:
    """The shard of namespace/name: SHA-256 (stable across processes and versions) modulo `shards`."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def owner_name(kind: str, body: Mapping[str, Any]) -> tuple[str, str]:
    """The (namespace, name) whose shard `body` (a hub object of `kind`) follows."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    if kind == "NameService":
        ref = ((spec.get("target") or {}).get("accessPointRef") or {}).get("name")
        return ns, str(ref or name)
    if kind == "Certificate":
        return ns, str((spec.get("accessPointRef") or {}).get("name") or name)
    if kind == "RolloutApproval":
        return ns, str(spec.get("accessPoint") or name)
    return ns, name


def shard_lease(shard: int) -> str:
    """The lease key of a shard (the suffix of its Lease's name)."""
    return f"shard-{shard:02d}"


def lease_shard(key: str) -> int | None:
    m = re.fullmatch(r"shard-(\d+)", key)
    return int(m.group(1)) if m else None


def _rank(replica: str, shard: int) -> bytes:
    return hashlib.sha256(f"{replica}#{shard}".encode()).digest()


def targets(live: Sequence[str], shards: int) -> dict[str, int]:
    """How many shards each live replica should hold: exact, summing to `shards`."""
    replicas = sorted(set(live))
    if not replicas:
        return {}
    base, extra = divmod(shards, len(replicas))
    return {r: base + (1 if i < extra else 0) for i, r in enumerate(replicas)}


def fair_share(shards: int, replicas: int) -> int:
    return math.ceil(shards / max(replicas, 1))


@dataclass(frozen=True)
class Moves:
    acquire: tuple[int, ...] = ()
    release: tuple[int, ...] = ()


def plan_shards(me: str, live: Iterable[str], holders: Mapping[int, str], shards: int) -> Moves:
    """Which shards `me` takes and releases, given the live replicas and the live holder of each shard
    (absent: free or expired). Pure and deterministic; `me` is always counted as live.

    The free shards are dealt out over every live replica short of its target, the same way by every
    replica that sees the same holders (each shard to the replica ranking it first, in rendezvous-hash
    order, among those still short), and `me` takes only its own part: replicas taking over a dead
    replica's shards in the same round do not race for the same Leases (a lost compare-and-swap would
    cost a retry period per collision)."""
    alive = set(live) | {me}
    target = targets(sorted(alive), shards)
    mine = sorted(s for s, h in holders.items() if h == me and 0 <= s < shards)
    if len(mine) > target[me]:
        # Release the ones this replica ranks last (what it would take last), keep the rest.
        keep = sorted(mine, key=lambda s: _rank(me, s))[:target[me]]
        return Moves(release=tuple(sorted(set(mine) - set(keep))))
    free = [s for s in range(shards) if holders.get(s) not in alive]
    held = {r: sum(1 for s, h in holders.items() if h == r and 0 <= s < shards) for r in alive}
    short = {r: target[r] - held[r] for r in alive if held[r] < target[r]}
    if not free or me not in short:
        return Moves()
    dealt: list[int] = []
    taken: set[int] = set()
    for _, replica, shard in sorted((_rank(r, s), r, s) for r in short for s in free):
        if shard in taken or short[replica] == 0:
            continue
        taken.add(shard)
        short[replica] -= 1
        if replica == me:
            dealt.append(shard)
    return Moves(acquire=tuple(sorted(dealt, key=lambda s: _rank(me, s))))


# ---------------------------------------------------------------------------------------------
# Pure: Lease bodies


def micro_time(at: dt.datetime | None = None) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds)."""
    return (at or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def identity_default() -> str:
    """POD_NAME (the Deployment sets it) or the host name, plus a random suffix (a restart is a new replica)."""
    base = os.environ.get("POD_NAME") or socket.gethostname() or "meshfed"
    base = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")[:40] or "meshfed"
    return f"{base}-{uuid.uuid4().hex[:6]}"


def lease_body(name: str, namespace: str, hub_id: str, kind: str, holder: str, duration: int,
               *, acquire_time: str | None, transitions: int, resource_version: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace,
                            "labels": {LEASE_OF: hub_id, LEASE_KIND: kind, LEASE_PROTOCOL: PROTOCOL}}
    if resource_version:
        meta["resourceVersion"] = resource_version
    spec: dict[str, Any] = {"holderIdentity": holder, "leaseDurationSeconds": duration, "renewTime": micro_time(),
                            "leaseTransitions": transitions}
    if acquire_time:
        spec["acquireTime"] = acquire_time
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}


# ---------------------------------------------------------------------------------------------
# Fencing: the Lease the current task works for


class Fenced(Exception):
    """A write for a Lease this replica does not hold (or can no longer be sure it holds)."""


class Validity:
    """Anything that can say whether a Lease key is still held for writing."""

    def valid(self, key: str) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


_current: ContextVar[tuple[Validity, str] | None] = ContextVar("meshfed_lease", default=None)


def current() -> tuple[Validity, str] | None:
    return _current.get()


def check() -> None:
    """At every write-side boundary: raise Fenced unless the Lease the current work runs for is valid."""
    cur = _current.get()
    if cur is not None and not cur[0].valid(cur[1]):
        metrics.fenced_writes.labels(lease=cur[1]).inc()
        raise Fenced(f"lease {cur[1]} is not held (or its renew deadline passed): write refused")


@contextlib.contextmanager
def working_on(owner: Validity | None, key: str | None) -> Iterator[None]:
    """Run the body for Lease `key` (no-op without a manager)."""
    if owner is None or key is None:
        yield
        return
    token = _current.set((owner, key))
    try:
        yield
    finally:
        _current.reset(token)


# ---------------------------------------------------------------------------------------------
# The Lease machinery


@dataclass
class Observed:
    """A Lease as this replica last saw it, and when (monotonic) its record last changed."""

    holder: str
    renew: str
    duration: float
    transitions: int
    acquire: str | None
    rv: str
    at: float
    protocol: str = ""

    def expired(self, now: float) -> bool:
        """Its own record is stale (or it has no holder)."""
        return not self.holder or now >= self.at + self.duration


def live_holder(key: str, observed: Mapping[str, Observed], role: str, now: float) -> str | None:
    """The holder of Lease `key` if it is live, else None (pure). Live: its own record is fresh, or —
    for a protocol-2 shard/singleton Lease, written only when it changes hands — its holder's replica
    Lease (`<role>-<holder>`) is held by that holder and fresh."""
    o = observed.get(key)
    if o is None or not o.holder:
        return None
    if not o.expired(now):
        return o.holder
    if o.protocol != PROTOCOL or key.startswith(f"{role}-"):
        return None
    replica = observed.get(f"{role}-{o.holder}")
    if replica is not None and replica.holder == o.holder and not replica.expired(now):
        return o.holder
    return None


@dataclass
class LeaseTiming:
    duration: int = 15  # leaseDurationSeconds written on our Leases
    renew_deadline: float = 10.0  # stop writing this long after the last successful renewal started
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.duration:
            raise ValueError(f"need 0 < retry period ({self.retry_period}) < renew deadline "
                             f"({self.renew_deadline}) < lease duration ({self.duration})")


ChangeListener = Callable[[frozenset[int], frozenset[int], frozenset[str]], None]  # acquired, lost, singletons


@dataclass
class _State:
    held: set[str] = field(default_factory=set)
    valid_until: dict[str, float] = field(default_factory=dict)
    observed: dict[str, Observed] = field(default_factory=dict)
    # Shard Leases dropped because a renewal came late whose record still names this replica (see
    # `cached_shards`); a key leaves when it is taken back or its record names someone else (or nobody).
    late: set[str] = field(default_factory=set)


class Shards(Validity):
    """This replica's Leases: its own, its shards', its singletons'."""

    def __init__(self, hub: KubeClient, hub_id: str, *, shards: int = DEFAULT_SHARDS,
                 identity: str | None = None, namespace: str = LEASE_NAMESPACE,
                 timing: LeaseTiming | None = None, singletons: Iterable[str] = (MEMBERS,),
                 role: str = "replica") -> None:
        if shards < 0:
            raise ValueError("the shard count must not be negative")
        self.hub = hub
        self.hub_id = hub_id
        self.count = shards
        self.identity = identity or identity_default()
        self.namespace = namespace
        self.timing = timing or LeaseTiming()
        self.singletons = tuple(singletons)
        self.role = role  # replica Leases are "<role>-<identity>": only the same role counts as live
        self.listeners: list[ChangeListener] = []
        self.live: list[str] = [self.identity]
        self.legacy_peers = False  # a live replica of an older version judges shard Leases by their own record
        self.rounds = 0
        self._s = _State()
        self._task: asyncio.Task[None] | None = None
        self._first = asyncio.Event()
        self._stopping = False
        self.last_round_ok = 0.0

    # ---- what is held ----

    def lease_name(self, key: str) -> str:
        return f"{self.hub_id}-{key}"

    def replica_key(self, identity: str | None = None) -> str:
        return f"{self.role}-{identity or self.identity}"

    def valid(self, key: str) -> bool:
        return key in self._s.held and time.monotonic() < self._s.valid_until.get(key, 0.0)

    def holding(self, key: str) -> bool:
        """Lease `key` is this replica's, valid or not: not valid only while a renewal is late (a
        round still in flight or an event loop starved on a loaded machine), until the round that
        renews it or drops it as lost."""
        return key in self._s.held

    def shard_key(self, namespace: str, name: str) -> str:
        return shard_lease(shard_of(namespace, name, self.count))

    def key_of(self, kind: str, body: Mapping[str, Any]) -> str:
        return self.shard_key(*owner_name(kind, body))

    @property
    def held_shards(self) -> frozenset[int]:
        return frozenset(s for s in (lease_shard(k) for k in self._s.held) if s is not None)

    @property
    def holds_all(self) -> bool:
        return len(self.held_shards) == self.count

    @property
    def cached_shards(self) -> frozenset[int] | None:
        """The shards whose objects the member caches keep (None: all of them): those held, and those
        dropped because a renewal came late whose Lease still names this replica. No other replica can
        take those before they expire, and this one takes them back at its next round, so their objects
        stay watched: a renewal late on a starved machine (measured: a single replica at 50 members on 2
        cores lost all 32 in a bulk) costs no relist of every kind on every member, twice."""
        shards = self.held_shards | frozenset(s for s in map(lease_shard, self._s.late) if s is not None)
        return None if len(shards) == self.count else shards

    def target(self) -> int:
        return targets(self.live, self.count).get(self.identity, 0)

    def balanced(self) -> bool:
        """This replica holds its target number of shards (readiness, with synced caches)."""
        return self.rounds > 0 and len(self.held_shards) >= self.target()

    def holders(self) -> dict[str, str]:
        """Lease key -> live holder, as last observed (for the kubectl view and tests)."""
        now = time.monotonic()
        out = {k: h for k in self._s.observed if (h := live_holder(k, self._s.observed, self.role, now))}
        for k in self._s.held:
            out[k] = self.identity
        return out

    # ---- lifecycle ----

    async def start(self, wait: float | None = None) -> None:
        """Start the renewal loop; wait (bounded) for the first round, so the first reconciles see the
        shards this replica can take at once."""
        self._task = asyncio.create_task(self._run(), name="shard-leases")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first.wait(), wait if wait is not None else self.timing.duration)

    async def stop(self) -> None:
        """Release everything (a clean shutdown hands its shards over at once, as client-go's
        ReleaseOnCancel), then stop."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        held = sorted(self._s.held)
        self._drop(held, "released")
        await asyncio.gather(*(self._release(k) for k in held), self._release(self.replica_key()),
                             return_exceptions=True)

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.round()
                self.last_round_ok = time.monotonic()
            except ApiError as err:
                log.warning("lease round failed: %s", err)
            except Exception:
                log.exception("lease round failed")
            finally:
                self._first.set()
                self._expire_local()
            await asyncio.sleep(max(0.0, self.timing.retry_period - (time.monotonic() - started)))

    def _expire_local(self) -> None:
        """Leases whose renew deadline passed are dropped from `held` (they were not renewed in time)."""
        now = time.monotonic()
        gone = [k for k in self._s.held if now >= self._s.valid_until.get(k, 0.0)]
        if gone:
            log.warning("renew deadline passed for %s: stopped writing for them", ", ".join(sorted(gone)))
            self._s.late.update(k for k in gone if lease_shard(k) is not None)
            self._drop(gone, "lost")

    # ---- one round ----

    async def round(self) -> None:
        t0 = time.monotonic()
        items, _ = await self.hub.list(LEASES.format(ns=self.namespace), label_selector=f"{LEASE_OF}={self.hub_id}")
        self._observe(items, t0)
        # Late-dropped shards whose record no longer names this replica (taken, released, deleted) leave
        # the cached set: the listeners narrow the member caches to what is held.
        moved = {k for k in self._s.late if (o := self._s.observed.get(k)) is None or o.holder != self.identity}
        if moved:
            self._s.late -= moved
            self._notify(acquired=(), lost=())
        now = time.monotonic()
        mine_replica = self.replica_key()
        live = {self.identity}
        role = f"{self.role}-"
        legacy = False
        for key, o in self._s.observed.items():
            if key.startswith(role) and not o.expired(now) and o.holder == key[len(role):]:
                live.add(o.holder)
                legacy = legacy or (o.protocol != PROTOCOL and o.holder != self.identity)
        self.live = sorted(live)
        if legacy != self.legacy_peers:
            log.info("%s replica of an older lease protocol: shard Leases %s", "a live" if legacy else "no live",
                     "renewed each round" if legacy else "written only when they change hands")
        self.legacy_peers = legacy
        # A held Lease whose record names another holder (or is gone) was taken or deleted: lost. (Its
        # renewal finds the same under the old protocol; under protocol 2 it is not renewed by itself.)
        taken_away = [k for k in self._s.held if k != mine_replica and
                      (k not in self._s.observed or self._s.observed[k].holder != self.identity)]
        if taken_away:
            log.warning("leases %s were taken or deleted", ", ".join(sorted(taken_away)))
            self._drop(taken_away, "lost")
        holders: dict[int, str] = {}
        for key in self._s.observed:
            shard = lease_shard(key)
            if shard is None or shard >= self.count:
                continue
            if key in self._s.held:
                holders[shard] = self.identity
            elif (holder := live_holder(key, self._s.observed, self.role, now)) and holder != self.identity:
                holders[shard] = holder
        moves = plan_shards(self.identity, self.live, holders, self.count)
        # Stop working on what is released before the Lease says so (no write after it is free).
        released = [shard_lease(s) for s in moves.release]
        self._drop(released, "released")
        # A record naming this replica that it does not hold (an acquisition whose answer was lost, or
        # a Lease dropped when a renewal was late) stays live through our replica Lease under protocol
        # 2, so nobody else can take it: take it back (compare-and-swap) when the plan deals it to us,
        # release it otherwise.
        dealt = {shard_lease(s) for s in moves.acquire}
        released += [k for k, o in self._s.observed.items() if lease_shard(k) is not None and k not in self._s.held
                     and o.holder == self.identity and k not in dealt]
        singles = [k for k in self.singletons if k not in self._s.held and self._takeable(k, now)]
        # Protocol 2: the replica Lease's renewal renews everything held (one write); with a live
        # replica of an older version every held Lease is renewed, as that version expects.
        renew = [mine_replica, *sorted(self._s.held)] if self.legacy_peers else [mine_replica]
        acquire = [shard_lease(s) for s in moves.acquire if self._takeable(shard_lease(s), now)] + singles
        results = await asyncio.gather(
            *(self._renew(k, t0) for k in renew),
            *(self._release(k) for k in released),
            *(self._acquire(k) for k in acquire),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, ApiError):
                raise r
        renewed = self._s.valid_until.get(mine_replica, 0.0) >= t0 + self.timing.renew_deadline
        if not self.legacy_peers and renewed:
            # The replica Lease was renewed: every Lease held through it is good for the same deadline
            # (the holder's own fencing; others see them live as long as the replica Lease).
            for key in self._s.held:
                self._s.valid_until[key] = max(self._s.valid_until.get(key, 0.0), t0 + self.timing.renew_deadline)
        taken = [k for k, r in zip(acquire, results[len(renew) + len(released):], strict=True) if r is True]
        if taken:
            self._add(taken)
        self.rounds += 1
        metrics.shards_held.set(len(self.held_shards))
        metrics.replicas_live.set(len(self.live))

    def _takeable(self, key: str, now: float) -> bool:
        o = self._s.observed.get(key)
        return o is None or o.holder == self.identity or live_holder(key, self._s.observed, self.role, now) is None

    def _observe(self, items: list[dict[str, Any]], at: float) -> None:
        prefix = f"{self.hub_id}-"
        seen: set[str] = set()
        for item in items:
            name = str(item["metadata"]["name"])
            if not name.startswith(prefix):
                continue
            key = name[len(prefix):]
            seen.add(key)
            self._record(key, item, at)
        for key in [k for k in self._s.observed if k not in seen]:
            del self._s.observed[key]

    def _record(self, key: str, item: Mapping[str, Any], at: float) -> None:
        spec = item.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        renew = str(spec.get("renewTime") or "")
        rv = str((item.get("metadata") or {}).get("resourceVersion") or "")
        old = self._s.observed.get(key)
        changed = old is None or (old.holder, old.renew) != (holder, renew)
        self._s.observed[key] = Observed(
            holder=holder, renew=renew, duration=float(spec.get("leaseDurationSeconds") or self.timing.duration),
            transitions=int(spec.get("leaseTransitions") or 0), acquire=spec.get("acquireTime"), rv=rv,
            at=at if changed or old is None else old.at,
            protocol=str(((item.get("metadata") or {}).get("labels") or {}).get(LEASE_PROTOCOL) or ""))

    def _kind(self, key: str) -> str:
        if lease_shard(key) is not None:
            return "shard"
        return "singleton" if key in self.singletons else "replica"

    async def _renew(self, key: str, started: float) -> None:
        o = self._s.observed.get(key)
        path = LEASES.format(ns=self.namespace)
        if o is None:  # our own replica Lease, first time (or deleted by someone)
            if key == self.replica_key():
                await self._acquire(key)
                self._s.valid_until[key] = started + self.timing.renew_deadline
                return
            self._drop([key], "lost")
            return
        if o.holder != self.identity:
            log.warning("lease %s was taken by %s", key, o.holder or "nobody")
            self._drop([key], "lost")
            return
        body = lease_body(self.lease_name(key), self.namespace, self.hub_id, self._kind(key), self.identity,
                          self.timing.duration, acquire_time=o.acquire, transitions=o.transitions,
                          resource_version=o.rv)
        try:
            result = await self.hub.request("PUT", f"{path}/{self.lease_name(key)}", body=body,
                                            timeout=self.timing.renew_deadline, retry=False)
        except ApiError as err:
            if err.status in (404, 409):
                log.warning("lease %s: renewal refused (%s): lost", key, err.status)
                self._drop([key], "lost")
            raise
        self._record(key, result, time.monotonic())
        self._s.valid_until[key] = started + self.timing.renew_deadline

    async def _acquire(self, key: str) -> bool:
        """Take Lease `key` (create it, or update the version we observed): True when it is ours."""
        started = time.monotonic()
        o = self._s.observed.get(key)
        path = LEASES.format(ns=self.namespace)
        now = micro_time()
        try:
            if o is None:
                body = lease_body(self.lease_name(key), self.namespace, self.hub_id, self._kind(key),
                                  self.identity, self.timing.duration, acquire_time=now, transitions=0)
                result = await self.hub.request("POST", path, body=body, timeout=self.timing.renew_deadline,
                                                retry=False)
            else:
                body = lease_body(self.lease_name(key), self.namespace, self.hub_id, self._kind(key),
                                  self.identity, self.timing.duration, acquire_time=now,
                                  transitions=o.transitions + (1 if o.holder != self.identity else 0),
                                  resource_version=o.rv)
                result = await self.hub.request("PUT", f"{path}/{self.lease_name(key)}", body=body,
                                                timeout=self.timing.renew_deadline, retry=False)
        except ApiError as err:
            if err.status == 404 and o is None:
                log.error("cannot create Lease %s: namespace %s not found on the hub", key, self.namespace)
                return False
            if err.status in (404, 409):
                return False  # someone else was faster (or it was deleted): look again next round
            raise
        self._record(key, result, time.monotonic())
        self._s.valid_until[key] = started + self.timing.renew_deadline
        if key != self.replica_key():
            log.info("acquired lease %s%s", key, f" (from {o.holder})" if o is not None and o.holder else "")
        return True

    async def _release(self, key: str) -> None:
        o = self._s.observed.get(key)
        if o is None or o.holder != self.identity:
            return
        body = lease_body(self.lease_name(key), self.namespace, self.hub_id, self._kind(key), "", 1,
                          acquire_time=o.acquire, transitions=o.transitions, resource_version=o.rv)
        try:
            result = await self.hub.request("PUT", f"{LEASES.format(ns=self.namespace)}/{self.lease_name(key)}",
                                            body=body, timeout=5, retry=False)
            self._record(key, result, time.monotonic())
        except ApiError as err:
            log.info("lease %s: release failed (%s); it expires by itself", key, err)

    # ---- local bookkeeping and listeners ----

    def _add(self, keys: Sequence[str]) -> None:
        self._s.held.update(keys)
        self._s.late.difference_update(keys)
        for k in keys:
            metrics.lease_transitions.labels(kind=self._kind(k), transition="acquired").inc()
        self._notify(acquired=keys, lost=())

    def _drop(self, keys: Sequence[str], why: str) -> None:
        keys = [k for k in keys if k in self._s.held]
        if not keys:
            return
        for k in keys:
            self._s.held.discard(k)
            self._s.valid_until.pop(k, None)
            metrics.lease_transitions.labels(kind=self._kind(k), transition=why).inc()
        if not self._stopping:
            log.info("%s leases %s", why, ", ".join(sorted(keys)))
        self._notify(acquired=(), lost=keys)

    def _notify(self, acquired: Sequence[str], lost: Sequence[str]) -> None:
        metrics.shards_held.set(len(self.held_shards))
        if self._stopping:
            return
        a = frozenset(s for s in map(lease_shard, acquired) if s is not None)
        lo = frozenset(s for s in map(lease_shard, lost) if s is not None)
        singles = frozenset(k for k in acquired if k in self.singletons)
        for listener in list(self.listeners):
            try:
                listener(a, lo, singles)
            except Exception:
                log.exception("shard listener failed")


class SingletonLease(Validity):
    """One Lease for a cluster-wide singleton (`meshfed sds` status writing): take it when free or
    expired, renew it, write only while `valid()`. Same timing and fencing rules as `Shards`."""

    def __init__(self, hub: KubeClient, hub_id: str, key: str, *, identity: str | None = None,
                 namespace: str = LEASE_NAMESPACE, timing: LeaseTiming | None = None) -> None:
        # No shards: only the singleton (and this process's replica Lease).
        self.shards = Shards(hub, hub_id, shards=0, identity=identity, namespace=namespace, timing=timing,
                             singletons=(key,), role=f"{key}-replica")
        self.key = key

    def valid(self, key: str | None = None) -> bool:
        return self.shards.valid(key or self.key)

    async def start(self, wait: float | None = None) -> None:
        await self.shards.start(wait)

    async def stop(self) -> None:
        await self.shards.stop()
