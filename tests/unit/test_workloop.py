"""federation.workloop.WorkLoop: one pending entry per key, a key enqueued while handled runs again,
urgent before bulk, one timer per key, backoff, fencing and metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from federation import metrics, shards
from federation.workloop import WorkLoop

log = logging.getLogger("test.workloop")


class Fence:
    """Stands in for the Controller's fencing: which Leases are held, and what was put back."""

    def __init__(self, held: bool = True) -> None:
        self.shards: shards.Shards | None = None
        self.held = held
        self.put_back: list[str | None] = []

    def holds(self, lease: str | None) -> bool:
        return self.held

    def retry_when_renewed(self, lease: str | None, requeue: Callable[[], None]) -> bool:
        self.put_back.append(lease)
        requeue()
        return True


def make(handle: Callable[[str], object], fence: Fence | None = None, **kw: bool) -> WorkLoop:
    async def run(key: str) -> None:
        result = handle(key)
        if asyncio.iscoroutine(result):
            await result

    return WorkLoop("test", run, fencing=fence or Fence(), lease_of=lambda key: f"lease-{key}",
                    kind_of=lambda key: "testkind", log=log, **kw)


def _due_in(loop: WorkLoop, key: str) -> float:
    return loop._timers[key].when() - asyncio.get_running_loop().time()


def _drop_timer(loop: WorkLoop, key: str) -> None:
    """Cancel the pending timer of `key` (an earlier timer would win over the next retry's)."""
    loop._timers.pop(key).cancel()


async def test_dedups_and_runs_a_key_enqueued_while_active_once_more() -> None:
    order: list[str] = []
    gate = asyncio.Event()

    async def handle(key: str) -> None:
        order.append(key)
        if len(order) == 1:
            wl.enqueue("a")  # changed while active: once more after
            wl.enqueue("a")
            await gate.wait()

    wl = make(handle)
    wl.enqueue("a")
    wl.enqueue("a")
    wl.enqueue("b")
    assert wl.pending == 2
    wl.start(1)
    await asyncio.sleep(0.05)
    assert order == ["a"]
    gate.set()
    await asyncio.sleep(0.05)
    assert order == ["a", "b", "a"] and wl.pending == 0
    await wl.stop()


async def test_urgent_keys_go_before_bulk_ones_and_an_urgent_enqueue_moves_a_key_up() -> None:
    order: list[str] = []
    wl = make(order.append)
    for key in ("bulk-1", "bulk-2", "bulk-3"):
        wl.enqueue(key, urgent=False)
    wl.enqueue("edit")
    wl.enqueue("bulk-3")  # an event for a key already waiting as bulk
    wl.start(1)
    await asyncio.sleep(0.05)
    assert order == ["edit", "bulk-3", "bulk-1", "bulk-2"]
    await wl.stop()


async def test_a_worker_lets_the_event_loop_run_between_keys_whose_handling_never_waits() -> None:
    # A reconcile with nothing to change awaits nothing that suspends (no write, no list); a queue of
    # them (a resync, a member's change: every AccessPoint) held the loop for the whole pass: Lease
    # renewals, watches, probes and /metrics waited seconds (the scale bench's /metrics scrape timed out).
    handled: list[str] = []
    all_handled = asyncio.Event()

    def handle(key: str) -> None:
        handled.append(key)
        if len(handled) == 1000:
            all_handled.set()

    wl = make(handle)
    for i in range(1000):
        wl.enqueue(f"ap-{i}", urgent=False)
    others: list[int] = []

    async def lease_renewal() -> None:
        while len(others) < 3:
            others.append(len(handled))
            await asyncio.sleep(0)

    wl.start(4)
    await lease_renewal()
    assert others[-1] < 10, f"other tasks ran only after {others[-1]} keys were handled: {others}"
    await asyncio.wait_for(all_handled.wait(), 10)
    await wl.stop()


def _waits(queue: str, level: str) -> tuple[float, float]:
    """(keys, seconds) meshfed_queue_wait_seconds has recorded for `queue` at `level`."""
    samples = {s.name: s.value for m in metrics.queue_wait.collect() for s in m.samples
               if s.labels.get("queue") == queue and s.labels.get("level") == level}
    return samples.get("meshfed_queue_wait_seconds_count", 0.0), samples.get("meshfed_queue_wait_seconds_sum", 0.0)


async def test_the_wait_for_a_worker_is_recorded_by_level() -> None:
    gate = asyncio.Event()

    async def handle(key: str) -> None:
        if key == "busy":
            await gate.wait()

    wl = make(handle)
    urgent0, bulk0 = _waits("test", "urgent"), _waits("test", "bulk")
    wl.enqueue("busy")
    wl.start(1)
    await asyncio.sleep(0.02)  # the one worker is busy
    wl.enqueue("edit")
    wl.enqueue("resync", urgent=False)
    await asyncio.sleep(0.2)
    assert wl.is_queued("edit") and wl.is_queued("resync")  # still waiting: the worker holds "busy"
    assert _waits("test", "urgent")[0] == urgent0[0] + 1  # only "busy", taken at once
    gate.set()
    for _ in range(200):  # until the worker has taken both
        if wl.pending == 0:
            break
        await asyncio.sleep(0.01)
    urgent, bulk = _waits("test", "urgent"), _waits("test", "bulk")
    assert urgent[0] == urgent0[0] + 2 and bulk[0] == bulk0[0] + 1
    # "edit" waited the ~0.2 s "busy" held the worker; "resync" that and a little more
    assert 0.15 <= urgent[1] - urgent0[1] < 1.0 and 0.15 <= bulk[1] - bulk0[1] < 1.0
    await wl.stop()


async def test_one_timer_per_key_the_earlier_wins_unless_replaced() -> None:
    wl = make(lambda key: None)
    wl.enqueue_after("a", 30.0)
    wl.enqueue_after("a", 60.0)
    assert 29 < _due_in(wl, "a") <= 30
    wl.enqueue_after("a", 5.0)
    assert 4 < _due_in(wl, "a") <= 5
    wl.enqueue_after("a", 60.0, replace=True)
    assert 59 < _due_in(wl, "a") <= 60
    wl.enqueue_after("b", 0.01)
    await asyncio.sleep(0.05)
    assert wl.is_queued("b") and "b" not in wl._timers
    wl.forget("a")
    assert "a" not in wl._timers
    await wl.stop()


async def test_a_failure_backs_off_doubling_and_a_success_starts_over() -> None:
    fail = {"x"}
    runs: list[str] = []

    def handle(key: str) -> None:
        runs.append(key)
        if key in fail:
            raise RuntimeError("boom")

    before = metrics.reconcile_errors.labels(kind="testkind")._value.get()
    wl = make(handle)
    wl.start(1)
    wl.enqueue("x")
    await asyncio.sleep(0.05)
    assert 0.9 < _due_in(wl, "x") <= 1.0  # 0.5 s * 2
    _drop_timer(wl, "x")
    wl.enqueue("x")
    await asyncio.sleep(0.05)
    assert 1.9 < _due_in(wl, "x") <= 2.0  # doubled
    assert metrics.reconcile_errors.labels(kind="testkind")._value.get() == before + 2
    _drop_timer(wl, "x")
    fail.clear()
    wl.enqueue("x")
    await asyncio.sleep(0.05)
    fail.add("x")
    wl.enqueue("x")
    await asyncio.sleep(0.05)
    assert 0.9 < _due_in(wl, "x") <= 1.0
    assert runs == ["x"] * 4
    await wl.stop()


async def test_without_reset_on_success_the_handler_decides_when_the_backoff_starts_over() -> None:
    wl = make(lambda key: wl.retry(key, cap=30.0), reset_backoff_on_success=False)
    wl.start(1)
    wl.enqueue("k")
    await asyncio.sleep(0.05)
    _drop_timer(wl, "k")
    wl.enqueue("k")
    await asyncio.sleep(0.05)
    assert 1.9 < _due_in(wl, "k") <= 2.0
    await wl.stop()


async def test_work_runs_only_under_a_held_lease() -> None:
    runs: list[str] = []
    fence = Fence(held=False)
    wl = make(runs.append, fence)
    await wl.run_one("a")
    assert runs == [] and fence.put_back == ["lease-a"] and wl.is_queued("a")

    def fenced(key: str) -> None:
        runs.append(key)
        raise shards.Fenced("lease lost")

    fence = Fence(held=True)
    wl = make(fenced, fence)
    reconciles = metrics.reconciles.labels(kind="testkind")._value.get()
    await wl.run_one("b")
    assert runs == ["b"] and fence.put_back == ["lease-b"] and wl.is_queued("b")
    assert "b" not in wl._timers  # fencing is not a failure: no backoff
    assert metrics.reconciles.labels(kind="testkind")._value.get() == reconciles + 1


@pytest.fixture(autouse=True)
def _no_queue_callback_left() -> object:
    yield
    metrics.callbacks.queues.pop("test", None)
    metrics.callbacks.in_progress.pop("test", None)


def _causes(kind: str) -> dict[str, float]:
    return {s.labels["cause"]: s.value for m in metrics.reconcile_causes.collect() for s in m.samples
            if s.name.endswith("_total") and s.labels["kind"] == kind}


async def test_each_reconcile_is_counted_under_the_cause_that_queued_it() -> None:
    """meshfed_reconcile_causes: asked for again while queued (any level), a key runs once, under its
    first cause; asked for while running, it runs once more under the cause of that ask; timers,
    backoffs and fencing name themselves."""
    gate = asyncio.Event()
    ran: list[str] = []

    async def handle(key: str) -> None:
        ran.append(key)
        if key == "busy" and len(ran) == 1:
            await gate.wait()

    fence = Fence()
    wl = WorkLoop("causes", handle, fencing=fence, lease_of=lambda key: f"lease-{key}",
                  kind_of=lambda key: "causekind", log=log)
    wl.enqueue("busy", cause="hub-object")
    wl.start(1)
    await asyncio.sleep(0.02)  # the worker holds "busy"
    wl.enqueue("busy", cause="member-object")  # while running: once more, under this cause
    wl.enqueue("busy", cause="resync")  # merged into the ask above
    wl.enqueue("a", urgent=False, cause="resync")
    wl.enqueue("a", cause="hub-object")  # moved up to urgent, still counted as the resync that queued it
    wl.enqueue_after("b", 0.0)
    wl.retry("c")
    gate.set()
    for _ in range(300):  # "c" backs off 1 s
        if len(ran) >= 5 and wl.pending == 0:
            break
        await asyncio.sleep(0.01)
    assert sorted(ran) == ["a", "b", "busy", "busy", "c"]
    assert _causes("causekind") == {"hub-object": 1, "member-object": 1, "resync": 1, "timer": 1, "retry": 1}
    await wl.stop()
    fence.held = False  # fenced: not run, not counted; put back as "fenced"
    await wl.run_one("d")
    assert wl.is_queued("d") and "d" not in ran and fence.put_back == ["lease-d"]
    fence.held = True
    wl.start(1)
    for _ in range(100):
        if "d" in ran:
            break
        await asyncio.sleep(0.01)
    assert _causes("causekind") == {"hub-object": 1, "member-object": 1, "resync": 1, "timer": 1, "retry": 1,
                                    "fenced": 1}
    await wl.stop()


def _in_progress(queue: str) -> tuple[float, float]:
    samples = {(s.name, s.labels.get("queue")): s.value for m in metrics.callbacks.collect() for s in m.samples}
    return (samples.get(("meshfed_queue_in_progress", queue), -1.0),
            samples.get(("meshfed_queue_longest_running_seconds", queue), -1.0))


async def test_a_handling_that_does_not_end_shows_in_the_longest_running_gauge() -> None:
    """An ask for a key whose handling never ends only marks it dirty: nothing is counted, so only the
    in-progress gauges can show it (client-go's longest_running_processor_seconds)."""
    gate = asyncio.Event()

    async def handle(key: str) -> None:
        await gate.wait()

    wl = make(handle)
    try:
        assert wl.in_progress() == (0, 0.0)
        wl.enqueue("stuck")
        wl.start(1)
        await asyncio.sleep(0.3)
        wl.enqueue("stuck", urgent=False, cause="member-upsert")  # swallowed: marked dirty, not queued
        assert not wl.is_queued("stuck")
        count, seconds = _in_progress("test")
        assert count == 1 and seconds >= 0.25
        gate.set()
        for _ in range(200):  # the dirty key runs once more, then nothing is in progress
            if wl.in_progress() == (0, 0.0) and not wl.is_queued("stuck"):
                break
            await asyncio.sleep(0.01)
        assert _in_progress("test") == (0.0, 0.0)
    finally:
        await wl.stop()
        metrics.callbacks.in_progress.pop("test", None)
