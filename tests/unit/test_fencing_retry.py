"""Work stopped by fencing while the replica still holds its Lease (a late renewal, not a lost Lease)
runs again once the Lease is renewed; work for a Lease that is gone is not retried (taking the shard
again enqueues it). Measured by the shards benchmark: on a loaded machine a replica's event loop was
starved past its renew deadline for a moment, 119 of its AccessPoints were stopped by fencing and none
ran again until the 10-minute resync, though it never lost a Lease.

The controller's work loop (federation/workloop.py) runs for real here; only the reconcile itself is
replaced (no API server).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio.client import ApiClient, Configuration

from federation import shards
from federation.controller import Controller
from federation.kube import KubeClient
from federation.shards import LeaseTiming, Shards

RETRY = 0.05
NS, NAME = "team-a", "web"


@pytest.fixture
async def controller() -> AsyncIterator[tuple[Controller, Shards, list[str]]]:
    cfg = Configuration()
    cfg.host = "https://127.0.0.1:9"  # never contacted
    api = ApiClient(cfg)
    hub = KubeClient(api, "hub")
    ctl = Controller(hub, "hub", workers=1)
    sh = Shards(hub, "hub", identity="me", timing=LeaseTiming(duration=5, renew_deadline=3, retry_period=RETRY))
    ctl.shards = sh
    ran: list[str] = []
    ctl.loop.start(1)
    try:
        yield ctl, sh, ran
    finally:
        await ctl.loop.stop()
        await api.close()


def hold(sh: Shards, key: str, valid_for: float) -> None:
    """This replica holds Lease `key`, valid for `valid_for` more seconds (<= 0: its renewal is late)."""
    sh._s.held.add(key)
    sh._s.valid_until[key] = time.monotonic() + valid_for


async def wait_until(check: object, timeout: float = 2.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.01)


async def test_work_skipped_during_a_late_renewal_runs_once_renewed(
        controller: tuple[Controller, Shards, list[str]]) -> None:
    ctl, sh, ran = controller
    lease = sh.shard_key(NS, NAME)
    hold(sh, lease, -1.0)

    async def reconcile(key: str) -> None:
        ran.append(key)

    ctl.reconcile_accesspoint = reconcile  # type: ignore[method-assign]
    ctl.enqueue(f"ap/{NS}/{NAME}")
    await asyncio.sleep(10 * RETRY)
    assert ran == []  # not written while the renewal is late
    hold(sh, lease, 60.0)  # renewed
    await wait_until(lambda: ran == [f"{NS}/{NAME}"])


async def test_reconcile_fenced_midway_runs_again_once_renewed(
        controller: tuple[Controller, Shards, list[str]]) -> None:
    ctl, sh, ran = controller
    lease = sh.shard_key(NS, NAME)
    hold(sh, lease, 60.0)

    async def reconcile(key: str) -> None:
        ran.append(key)
        if len(ran) == 1:  # the renew deadline passes during the first reconcile
            hold(sh, lease, -1.0)
            shards.check()
        await asyncio.sleep(0)

    ctl.reconcile_accesspoint = reconcile  # type: ignore[method-assign]
    ctl.enqueue(f"ap/{NS}/{NAME}")
    await wait_until(lambda: len(ran) == 1)
    await asyncio.sleep(10 * RETRY)
    assert len(ran) == 1
    hold(sh, lease, 60.0)
    await wait_until(lambda: len(ran) == 2)


async def test_work_of_a_lease_not_held_is_not_retried(controller: tuple[Controller, Shards, list[str]]) -> None:
    ctl, sh, ran = controller

    async def reconcile(key: str) -> None:
        ran.append(key)

    ctl.reconcile_accesspoint = reconcile  # type: ignore[method-assign]
    ctl.enqueue(f"ap/{NS}/{NAME}")  # another replica's shard
    await asyncio.sleep(10 * RETRY)
    assert ran == [] and ctl.pending == 0
    assert not ctl.retry_when_renewed(sh.shard_key(NS, NAME), lambda: None)
