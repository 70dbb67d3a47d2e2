"""Garbage-collector policy of meshfed's long-running processes (the controller; the pure benchmarks
use it too, so they measure what the controller does). Imports nothing of meshfed.

Measured with `python -m e2e.bench.propagation` (500 AccessPoints x 5 members, gc.callbacks timing):
with CPython's default thresholds (700, 10, 10) the collector ran for over half of the controller's
time during a bulk load: every full collection rescans all cached API objects, and the growing
caches keep triggering full collections. Nearly all garbage here is freed by reference counting,
so collections can be far less frequent: the young generation every 20,000 allocations instead
of 700. Objects alive after start-up (modules, kopf, pydantic schemas) are frozen out of
collections altogether.

The middle generation is collected every 3 young collections (CPython: 10), so that it never holds
more than a few young collections' survivors: with (50,000, 20, 10) it gathered up to a million
objects, and at 50 members one such collection held the controller for 1.3-1.4 s in the middle of
the single edits that followed a bulk (`python -m e2e.bench.scale --members 50`, 2026-12-06). Full
collections stay as rare as before (every 3 x 170 young collections at most, and CPython runs one
only when the long-lived objects grew by a quarter).

`observe_pauses` reports each collection's pause (the controller records them as
`meshfed_gc_pause_seconds`), so a latency tail can be told apart from a collector pause.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

THRESHOLDS = (20_000, 3, 170)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


def observe_pauses(record: Callable[[int, float], None]) -> Callable[[str, dict[str, Any]], None]:
    """Call `record(generation, seconds)` after every collection; returns the callback (for removal)."""
    started = 0.0

    def callback(phase: str, info: dict[str, Any]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            record(int(info.get("generation", 0)), time.perf_counter() - started)

    gc.callbacks.append(callback)
    return callback
