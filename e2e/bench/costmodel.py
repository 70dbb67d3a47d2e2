"""The controller's cost model: fitted to `e2e/bench/scale.py`'s runs, projected to fleets this machine
cannot hold. Pure (no I/O, no clock); imports only the standard library.

What one replica costs, as measured:
  memory  = base + per_member x members it connects to
            + (connections per member + its pooled share) x members x CONNECTION_KIB (each TLS
              connection's buffers)
            + per_object x member objects it caches
  CPU     = cpu_per_object x member objects it writes (bulk propagation, the controller's process)
  hub writes = writes_per_ap x AccessPoints it owns (status, Events, revisions, finalizers; Leases apart)
  a full pass (a resync, or a member's change: every AccessPoint it owns rendered and planned again,
  nothing to write) = for each of its AccessPoints: pass_fixed + pass_per_placed x the members it is on
                      + pass_per_unplaced x the members it is not on (CPU)
The pass terms: a line over the runs' full passes per AccessPoint (each on every member) against the
members gives pass_fixed and pass_per_placed; the runs' passes over AccessPoints on one member each
(each edited once) give pass_per_unplaced: their slope against the members (each edit's own watch
event and the fixed part are the same at every member count); from one member count, what is left
after that line's value for one member, over the members they are not on (a bound from above: the
edit's own cost counted in).
The per-member and base terms come from the controller idle with its members connected and no
AccessPoint (a least-squares line over the runs); the connections per member from the runs loaded
(counted by the bench): the member's share of the request budget (`PoolShare`, federation.kube's
member_request_slots: it shrinks as members grow) plus the rest (watches, the probe's); the per-object
terms from the same runs loaded (what the bulk added, less those connections, over the objects it added).
Shards split AccessPoints, not members: every replica watches every member, so with R replicas each
holds 1/R of the objects and all of the members.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# What one open TLS connection to an API server costs the controller: its read buffer (federation.kube.
# TLS_READ_BUFFER, 32 KiB), OpenSSL's state and aiohttp's. Measured as RSS per connection by
# e2e/bench/tls_buffers.py (2026-12-05): 97 KiB (321 KiB with asyncio's own 256 KiB buffer).
CONNECTION_KIB = 97.0


@dataclass(frozen=True)
class PoolShare:
    """Each member's pooled connections for `members` members: `budget` shared out, `least` to `most`
    each (federation.kube: MEMBER_REQUEST_BUDGET, MEMBER_REQUESTS_MIN, MEMBER_CONNECTIONS)."""

    budget: int
    least: int
    most: int

    def per_member(self, members: int) -> int:
        return max(self.least, min(self.most, self.budget // max(1, members)))


@dataclass(frozen=True)
class Run:
    """One scale run's measured figures."""

    members: int
    aps: int
    member_objects: int
    idle_rss_mib: float  # the controller with every member's caches synced, no AccessPoint
    loaded_rss_mib: float  # the same controller after the bulk (every member object cached)
    bulk_cpu_s: float  # controller CPU seconds from the first create until all Applied
    hub_writes: int  # the controller's hub writes during the bulk (Leases apart)
    connections_per_member: float = 0.0  # the controller's TCP connections to each member, loaded
    pooled_per_member: float = 0.0  # of those, the member's share of the request budget in that run
    pass_ms_per_ap: float = 0.0  # a full pass's controller CPU per AccessPoint on every member (0: not measured)
    one_member_pass_ms_per_ap: float = 0.0  # the same per AccessPoint on one member, edited (0: not measured)


@dataclass(frozen=True)
class Model:
    base_mib: float
    per_member_mib: float
    per_object_kib: float
    cpu_ms_per_object: float
    hub_writes_per_ap: float
    connections_per_member: float = 0.0  # besides the pooled ones
    pool: PoolShare | None = None  # the pooled connections per member (None: none)
    pass_ms_fixed: float = 0.0  # a full pass's CPU per AccessPoint, whatever its placement
    pass_ms_per_placed: float = 0.0  # ... and per member it is placed on
    pass_ms_per_unplaced: float = 0.0  # ... and per member it is not placed on

    def pass_ms_per_ap(self, members: int, placed_on: int) -> float:
        """A full pass's controller CPU for one AccessPoint placed on `placed_on` of `members` members."""
        return self.pass_ms_fixed + self.pass_ms_per_placed * placed_on + \
            self.pass_ms_per_unplaced * max(0, members - placed_on)

    def connections(self, members: int) -> float:
        """The connections to each member, loaded, when there are `members`."""
        return self.connections_per_member + (self.pool.per_member(members) if self.pool is not None else 0)

    def rss_mib(self, members: int, objects: float) -> float:
        connections_kib = self.connections(members) * members * CONNECTION_KIB
        return self.base_mib + self.per_member_mib * members + (connections_kib + self.per_object_kib * objects) / 1024


@dataclass(frozen=True)
class Projection:
    members: int
    aps: int
    objects_per_ap: int
    replicas: int
    clusters_per_ap: int
    objects_per_replica: int
    rss_mib_per_replica: float
    bulk_cpu_s_per_replica: float  # CPU to write its share once (e.g. after a template change of all)
    pass_cpu_s_per_replica: float  # CPU of a full pass over its share (a resync, a MemberCluster's change)
    # CPU of a member's own state moving (a probe's verdict, a relist): only the AccessPoints placed on that
    # member are planned again (federation.controller.MEMBER_SIDE_CAUSES), the busiest replica's share
    member_change_cpu_s_per_replica: float
    hub_writes_per_replica: float


def line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares intercept and slope of ys over xs (one point or equal xs: slope 0)."""
    if not xs or len(xs) != len(ys):
        raise ValueError("need as many ys as xs, at least one")
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return my, 0.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
    return my - slope * mx, slope


def fit(runs: Sequence[Run], pool: PoolShare | None = None) -> Model:
    """The model of `runs` (at least one, with objects); `pool`: how the pooled share of each run's
    connections (`Run.pooled_per_member`) goes with the members."""
    objects = sum(r.member_objects for r in runs)
    if not runs or objects <= 0:
        raise ValueError("fit needs at least one run with member objects")
    base, per_member = line([r.members for r in runs], [r.idle_rss_mib for r in runs])
    connections = sum(max(0.0, r.connections_per_member - r.pooled_per_member) * r.members
                      for r in runs) / sum(r.members for r in runs)
    added_mib = sum(max(0.0, r.loaded_rss_mib - r.idle_rss_mib - r.connections_per_member * r.members *
                        CONNECTION_KIB / 1024) for r in runs)
    measured = [r for r in runs if r.pass_ms_per_ap > 0]
    if len({r.members for r in measured}) >= 2:
        pass_fixed, per_placed = line([r.members for r in measured], [r.pass_ms_per_ap for r in measured])
        pass_fixed, per_placed = max(0.0, pass_fixed), max(0.0, per_placed)
    else:  # one member count: all of it per member placed on (no fixed part can be told apart)
        pass_fixed = 0.0
        per_placed = sum(r.pass_ms_per_ap / r.members for r in measured) / len(measured) if measured else 0.0
    one = [r for r in runs if r.one_member_pass_ms_per_ap > 0 and r.members > 1]
    if len({r.members for r in one}) >= 2:  # the slope: the edit's own cost and the fixed part are constants
        per_unplaced = max(0.0, line([r.members for r in one], [r.one_member_pass_ms_per_ap for r in one])[1])
    else:  # one member count: all of the rest, the edit's own cost too (a bound from above)
        per_unplaced = sum(max(0.0, r.one_member_pass_ms_per_ap - pass_fixed - per_placed) / (r.members - 1)
                           for r in one) / len(one) if one else 0.0
    return Model(
        pass_ms_fixed=pass_fixed,
        pass_ms_per_placed=per_placed,
        pass_ms_per_unplaced=per_unplaced,
        base_mib=base,
        per_member_mib=max(0.0, per_member),
        per_object_kib=added_mib * 1024 / objects,
        cpu_ms_per_object=sum(r.bulk_cpu_s for r in runs) * 1000 / objects,
        hub_writes_per_ap=sum(r.hub_writes for r in runs) / max(1, sum(r.aps for r in runs)),
        connections_per_member=connections,
        pool=pool,
    )


def project(model: Model, members: int, aps: int, objects_per_ap: int, replicas: int,
            clusters_per_ap: int | None = None) -> Projection:
    """Each AccessPoint placed on `clusters_per_ap` members (None: on every member, the worst case), shards
    split evenly over `replicas`."""
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    spread = members if clusters_per_ap is None else min(clusters_per_ap, members)
    objects = spread * aps * objects_per_ap
    share = -(-objects // replicas)  # the busiest replica's share, rounded up
    return Projection(
        members=members, aps=aps, objects_per_ap=objects_per_ap, replicas=replicas, clusters_per_ap=spread,
        objects_per_replica=share,
        rss_mib_per_replica=model.rss_mib(members, share),
        bulk_cpu_s_per_replica=model.cpu_ms_per_object * share / 1000,
        pass_cpu_s_per_replica=-(-aps // replicas) * model.pass_ms_per_ap(members, spread) / 1000,
        # the AccessPoints placed on one member: aps x spread / members of them, over the replicas
        member_change_cpu_s_per_replica=math.ceil(math.ceil(aps * spread / members) / replicas)
        * model.pass_ms_per_ap(members, spread) / 1000,
        hub_writes_per_replica=model.hub_writes_per_ap * aps / replicas,
    )


def check(model: Model, run: Run) -> float:
    """Predicted over measured loaded RSS of `run` (1.0: exact)."""
    return model.rss_mib(run.members, run.member_objects) / run.loaded_rss_mib


def check_pass(model: Model, run: Run) -> float | None:
    """Predicted over measured full-pass CPU per AccessPoint of `run` (1.0: exact; None: not measured)."""
    if run.pass_ms_per_ap <= 0:
        return None
    return model.pass_ms_per_ap(run.members, run.members) / run.pass_ms_per_ap
