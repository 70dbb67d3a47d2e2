"""Garbage-collector policy of meshfed's long-running processes (the controller; the pure benchmarks
use it too, so they measure what the controller does). Imports nothing of meshfed.

Measured with `python -m e2e.bench.propagation` (500 AccessPoints x 5 members, gc.callbacks timing):
with CPython's default thresholds (700, 10, 10) the collector ran for over half of the controller's
time during a bulk load: every full collection rescans all cached API objects, and the growing
caches keep triggering full collections. Nearly all garbage here is freed by reference counting,
so collections can be far less frequent: the young generation every 50,000 allocations instead
of 700. Objects alive after start-up (modules, kopf, pydantic schemas) are frozen out of
collections altogether.
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
