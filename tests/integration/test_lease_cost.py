"""Shard Leases on a real API server (lease protocol 2, federation/shards.py): renewal costs one write
per replica and round whatever the shard count, a crashed replica's shards are taken over only after
it stopped writing, and a live replica of the older protocol makes a new one renew its shard Leases.

Writes are counted by the API server itself (apiserver_request_total on leases); each "nothing more
was written" is read after the replica has done a counted number of rounds (positive evidence that it
looked), never after a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from federation.kube import KubeClient
from federation.registration import ensure_namespace
from federation.shards import LEASES, LeaseTiming, Shards, lease_body, micro_time
from fleet.testing import MUTATING, eventually, request_breakdown
from tests.integration.conftest import ApiServer

pytestmark = pytest.mark.integration

TIMING = LeaseTiming(duration=3, renew_deadline=2.0, retry_period=0.25)
NS = "meshfed-system"


async def lease_writes(client: KubeClient) -> int:
    return sum((await request_breakdown(client, MUTATING, ["leases"])).values())


@pytest.fixture
async def client(apiserver: ApiServer) -> AsyncIterator[KubeClient]:
    c = await apiserver.admin_client()
    await ensure_namespace(c, NS)
    try:
        yield c
    finally:
        await c.close()


async def rounds_done(replica: Shards, rounds: int, timeout: float = 30.0) -> None:
    target = replica.rounds + rounds

    async def check() -> bool:
        return replica.rounds >= target

    await eventually(check, timeout=timeout)


async def test_renewal_costs_one_write_per_round_whatever_the_shard_count(client: KubeClient) -> None:
    hub_id = f"cost-{uuid.uuid4().hex[:6]}"
    replica = Shards(client, hub_id, shards=32, identity="a", timing=TIMING)
    await replica.start()
    try:
        await eventually(lambda: _async(replica.holds_all), timeout=20)
        await rounds_done(replica, 1)
        before, rounds_before = await lease_writes(client), replica.rounds
        await rounds_done(replica, 20)
        writes, rounds = await lease_writes(client) - before, replica.rounds - rounds_before
        # The replica Lease each round, nothing else (the old protocol: 33 a round); a round in flight
        # at each end of the window may be counted on one side only.
        assert rounds - 2 <= writes <= rounds + 2, (writes, rounds)
        assert all(replica.valid(f"shard-{s:02d}") for s in range(32))
        assert replica.valid("members")
    finally:
        await replica.stop()


async def test_a_crashed_replicas_shards_are_taken_only_after_it_stopped_writing(client: KubeClient) -> None:
    hub_id = f"crash-{uuid.uuid4().hex[:6]}"
    a = Shards(client, hub_id, shards=8, identity="a", timing=TIMING)
    b = Shards(client, hub_id, shards=8, identity="b", timing=TIMING)
    await a.start()
    await eventually(lambda: _async(a.holds_all), timeout=20)
    await b.start()
    try:
        await eventually(lambda: _async(len(a.held_shards) == 4 and len(b.held_shards) == 4), timeout=30)
        mine = sorted(a.held_shards)
        # a crashes: its loop stops without releasing anything (no renewal, no release).
        assert a._task is not None
        a._task.cancel()
        await asyncio.gather(a._task, return_exceptions=True)
        crashed = time.monotonic()
        a_valid_until = crashed
        b_took_at: float | None = None
        while time.monotonic() - crashed < 15:
            now = time.monotonic()
            if any(a.valid(f"shard-{s:02d}") for s in mine):
                a_valid_until = now
            if b_took_at is None and set(mine) & b.held_shards:
                b_took_at = now
            if len(b.held_shards) == 8:
                break
            await asyncio.sleep(0.02)
        assert b.held_shards == frozenset(range(8)), b.held_shards
        assert b_took_at is not None
        # Fencing: a's last valid moment comes before b's first write for one of its shards, and the
        # takeover waits for the lease duration (3 s) without renewal.
        assert a_valid_until < b_took_at, (a_valid_until - crashed, b_took_at - crashed)
        assert b_took_at - crashed >= TIMING.duration - TIMING.retry_period - 0.5, b_took_at - crashed
        assert b_took_at - crashed < TIMING.duration + 3, b_took_at - crashed
    finally:
        await b.stop()
        a._stopping = True


async def test_a_live_replica_of_the_older_protocol_makes_shard_leases_renewed(client: KubeClient) -> None:
    hub_id = f"legacy-{uuid.uuid4().hex[:6]}"
    replica = Shards(client, hub_id, shards=4, identity="new", timing=TIMING)
    await replica.start()
    stop = asyncio.Event()

    async def old_replica() -> None:  # an older version's replica Lease: no lease-protocol label
        path = LEASES.format(ns=NS)
        body = lease_body(f"{hub_id}-replica-old", NS, hub_id, "replica", "old", TIMING.duration,
                          acquire_time=micro_time(), transitions=0)
        del body["metadata"]["labels"]["meshfed.io/lease-protocol"]
        created = await client.request("POST", path, body=body)
        rv = created["metadata"]["resourceVersion"]
        while not stop.is_set():
            await asyncio.sleep(0.25)
            body["metadata"]["resourceVersion"] = rv
            body["spec"]["renewTime"] = micro_time()
            rv = (await client.request("PUT", f"{path}/{hub_id}-replica-old", body=body))["metadata"]["resourceVersion"]

    old = asyncio.create_task(old_replica())
    try:
        # The old replica takes no shards here (it is only a Lease); the new one holds its share.
        await eventually(lambda: _async(replica.legacy_peers and len(replica.held_shards) == 2), timeout=20)
        await rounds_done(replica, 1)
        before, rounds_before = await lease_writes(client), replica.rounds
        await rounds_done(replica, 10)
        writes = await lease_writes(client) - before
        rounds = replica.rounds - rounds_before
        old_writes = rounds * 0.25 / TIMING.retry_period  # the old replica's own renewals, about one a round
        # Each round: the replica Lease, the 2 shards, the "members" singleton, plus the old replica's.
        assert writes >= rounds * 4, (writes, rounds, old_writes)
        stop.set()
        await old
        # The old replica's Lease expires: back to one write a round.
        await eventually(lambda: _async(not replica.legacy_peers), timeout=TIMING.duration + 5)
        await eventually(lambda: _async(len(replica.held_shards) == 4), timeout=20)
        await rounds_done(replica, 1)
        before, rounds_before = await lease_writes(client), replica.rounds
        await rounds_done(replica, 10)
        writes, rounds = await lease_writes(client) - before, replica.rounds - rounds_before
        assert rounds - 2 <= writes <= rounds + 2, (writes, rounds)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await old
        await replica.stop()


class SlowHub:
    """The hub client, its Lease lists slowed at will: the first one waits `first_delay` (a round slower
    than the renew deadline: a starved event loop, a slow hub), the next ones wait for `gate`."""

    def __init__(self, client: KubeClient, first_delay: float) -> None:
        self.client, self.first_delay, self.lists, self.gate = client, first_delay, 0, asyncio.Event()
        self.gate.set()

    async def list(self, *args: Any, **kwargs: Any) -> Any:
        self.lists += 1
        if self.lists == 1:
            await asyncio.sleep(self.first_delay)
        else:
            await self.gate.wait()
        return await self.client.list(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


async def test_a_late_renewal_keeps_its_shards_cached_until_they_move(client: KubeClient) -> None:
    """Leases dropped because a renewal came late are taken back at the next round, and their shards stay
    in `cached_shards` meanwhile (the member caches are not narrowed and relisted); one whose Lease then
    names another replica leaves it."""
    hub_id = f"late-{uuid.uuid4().hex[:6]}"
    replica = Shards(client, hub_id, shards=8, identity="a", timing=TIMING)
    await replica.start()
    seen: list[tuple[frozenset[int], frozenset[int] | None]] = []  # (held, cached) at each change
    replica.listeners.append(lambda acquired, lost, singles: seen.append((replica.held_shards, replica.cached_shards)))
    try:
        await eventually(lambda: _async(replica.holds_all), timeout=20)
        slow = SlowHub(client, TIMING.renew_deadline + 0.5)
        slow.gate.clear()  # the round after the slow one waits for the test
        replica.hub = slow  # type: ignore[assignment]
        await eventually(lambda: _async(not replica.held_shards), timeout=10,
                         message="the slow round should drop every Lease (renew deadline passed)")
        assert seen and all(cached is None for _, cached in seen), seen  # nothing narrowed: all still cached
        # While no round runs, shard 3's Lease comes to name replica b (as b taking it over would).
        lease = await client.get(f"{LEASES.format(ns=NS)}/{hub_id}-shard-03")
        assert lease is not None and lease["spec"]["holderIdentity"] == "a"
        lease["spec"]["holderIdentity"], lease["spec"]["renewTime"] = "b", micro_time()
        await client.request("PUT", f"{LEASES.format(ns=NS)}/{hub_id}-shard-03", body=lease)
        slow.gate.set()
        rest = frozenset(range(8)) - {3}
        await eventually(lambda: _async(replica.held_shards == rest), timeout=10,
                         message="the replica should take back the shards still naming it")
        assert replica.cached_shards == rest, replica.cached_shards
        assert all(cached is None or cached == rest for _, cached in seen), seen  # never narrower
        assert replica.valid("shard-00") and not replica.holding("shard-03")
    finally:
        await replica.stop()


async def _async(value: bool) -> bool:
    return value
