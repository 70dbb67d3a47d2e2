"""The controller's stall metrics: garbage-collector pauses by generation and event-loop lag."""

from __future__ import annotations

import asyncio
import gc
import time

from federation import metrics
from federation.gcpolicy import observe_pauses


def test_a_full_collection_is_recorded_with_its_generation() -> None:
    seen: list[tuple[int, float]] = []
    callback = observe_pauses(lambda generation, seconds: seen.append((generation, seconds)))
    try:
        gc.collect(2)
    finally:
        gc.callbacks.remove(callback)
    assert [g for g, _ in seen] == [2]
    assert seen[0][1] >= 0.0
    gc.collect(2)
    assert len(seen) == 1  # removed: no more records


def _lag_count_over(bound: str) -> float:
    samples = {s.labels.get("le"): s.value for m in metrics.loop_lag.collect() for s in m.samples
               if s.name.endswith("_bucket")}
    return samples["+Inf"] - samples[bound]


async def test_a_blocked_loop_shows_as_lag() -> None:
    before = _lag_count_over("0.1")
    sampler = asyncio.create_task(metrics.sample_loop_lag(period=0.01))
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # noqa: ASYNC251 -- blocking the loop is the point: the timer fires 0.3 s late
        await asyncio.sleep(0.05)
    finally:
        sampler.cancel()
    assert _lag_count_over("0.1") - before >= 1


def _phase(name: str) -> tuple[float, float]:
    samples = {s.name: s.value for m in metrics.reconcile_phase.collect() for s in m.samples
               if s.labels.get("phase") == name and s.name.endswith(("_count", "_sum"))}
    prefix = "meshfed_reconcile_phase_seconds"
    return samples.get(f"{prefix}_count", 0.0), samples.get(f"{prefix}_sum", 0.0)


def test_a_reconcile_phase_is_timed_also_when_it_raises() -> None:
    count, total = _phase("rollout")
    with metrics.phase("rollout"):
        time.sleep(0.02)
    try:
        with metrics.phase("rollout"):
            raise RuntimeError("the hub refused")
    except RuntimeError:
        pass
    count_after, total_after = _phase("rollout")
    assert count_after == count + 2
    assert total_after - total >= 0.02
