"""The keyed work loop every hub-side controller instantiates: AccessPoints and MemberCluster status
(federation/controller.py), DNS, certificates.

Owns the rules client-go's workqueue has, plus what each controller here needs around them:
- a key is queued at most once and never handled by two workers at the same time; a key enqueued
  while it is being handled runs once more after;
- two levels: urgent keys (a hub edit, an event) go before bulk ones (resyncs, timers, retries), so a
  user's change never waits behind a re-check of everything; an urgent enqueue of a key queued as
  bulk moves it up;
- one timer per key (`enqueue_after`: the earlier due time wins, or `replace=True` to set it anew);
- backoff after a failure (`retry`: 0.5 s doubling per attempt up to a cap, reset by `succeeded`);
- fencing (federation.shards): a key runs under the Lease `lease_of(key)` names, only while this
  replica holds it; work stopped by fencing with the renewal merely late runs again after a retry
  period, and work for a Lease that is gone is dropped (taking the shard again enqueues it);
- metrics: reconciles, failures and durations by kind (`kind_of(key)`), the queue depth, how long
  a key waited for a worker, by level (`meshfed_queue_wait_seconds`: since it was queued; moving up
  from bulk to urgent starts its urgent wait), and what asked for each reconcile
  (`meshfed_reconcile_causes{kind,cause}`: the `cause` of the enqueue that queued the key; asked for
  again while queued, it still runs once, counted under the first cause; timers count as `timer`,
  backoffs as `retry`, work put back by fencing as `fenced`).

Imports federation.shards and federation.metrics only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from federation import metrics, shards


class Fencing(Protocol):
    """What the loop needs from its controller to fence work (federation.controller.Controller)."""

    shards: shards.Shards | None

    def holds(self, lease: str | None) -> bool: ...

    def retry_when_renewed(self, lease: str | None, requeue: Callable[[], None]) -> bool: ...


BACKOFF_BASE = 0.5
BACKOFF_CAP = 60.0


class WorkLoop:
    def __init__(self, name: str, handle: Callable[[str], Awaitable[None]], *, fencing: Fencing,
                 lease_of: Callable[[str], str | None], kind_of: Callable[[str], str],
                 log: logging.Logger, reset_backoff_on_success: bool = True, log_traceback: bool = True) -> None:
        """`handle(key)` reconciles one key; `lease_of(key)` names the Lease it runs under (None: not
        sharded); `kind_of(key)` labels its metrics. With `reset_backoff_on_success` False the handler
        decides (`retry` / `succeeded`) when the backoff of a key starts again."""
        self.name = name
        self.handle = handle
        self.fencing = fencing
        self.lease_of = lease_of
        self.kind_of = kind_of
        self.log = log
        self.reset_backoff_on_success = reset_backoff_on_success
        self.log_traceback = log_traceback
        self._urgent: deque[str] = deque()
        self._bulk: deque[str] = deque()
        self._wakeup = asyncio.Event()
        # key -> (queued as urgent, since when at that level, what asked for it first)
        self._queued: dict[str, tuple[bool, float, str]] = {}
        self._active: dict[str, float] = {}  # key being handled -> since when (time.monotonic)
        self._dirty: dict[str, tuple[bool, str]] = {}  # enqueued while active -> (urgent, first cause)
        self._retries: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # ---- intake ----

    def enqueue(self, key: str, *, urgent: bool = True, cause: str = "other") -> None:
        """Queue `key` (once; `urgent` moves a bulk key up). `cause` names what asked for it, for
        meshfed_reconcile_causes (e.g. "hub-object", "member-object", "resync")."""
        if key in self._active:
            dirty = self._dirty.get(key)
            self._dirty[key] = (urgent, cause) if dirty is None else (dirty[0] or urgent, dirty[1])
            return
        queued = self._queued.get(key)
        if queued is None or (urgent and not queued[0]):
            self._queued[key] = (urgent, time.monotonic(), cause if queued is None else queued[2])
            (self._urgent if urgent else self._bulk).append(key)
            self._wakeup.set()

    def enqueue_after(self, key: str, delay: float, *, replace: bool = False, cause: str = "timer") -> None:
        """Enqueue `key` (bulk) after `delay` seconds: one timer per key, the earlier due time wins
        (`replace`: this one wins)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + max(delay, 0.0)
        timer = self._timers.get(key)
        if timer is not None and not replace and not timer.cancelled() and timer.when() <= due:
            return
        if timer is not None:
            timer.cancel()

        def fire() -> None:
            self._timers.pop(key, None)
            self.enqueue(key, urgent=False, cause=cause)

        self._timers[key] = loop.call_at(due, fire)

    def retry(self, key: str, cap: float = BACKOFF_CAP, base: float = BACKOFF_BASE) -> None:
        """Try `key` again after a backoff (base * 2**attempt, at most `cap`) that doubles with each
        retry since it last succeeded."""
        attempt = self._retries.get(key, 0) + 1
        self._retries[key] = attempt
        self.enqueue_after(key, min(base * 2**attempt, cap), cause="retry")

    def succeeded(self, key: str) -> None:
        """The next `retry` of `key` starts from the shortest backoff."""
        self._retries.pop(key, None)

    def forget(self, key: str) -> None:
        """`key`'s object is gone: no timer, no backoff left for it."""
        self._retries.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    @property
    def pending(self) -> int:
        return len(self._queued)

    def in_progress(self) -> tuple[int, float]:
        """Keys being handled now, and for how many seconds the longest-running one has been (0 with
        none): a handler that never returns swallows every later ask for its key (they only mark it
        dirty), so it shows here rather than in the reconcile counts (client-go's workqueue
        unfinished_work / longest_running_processor_seconds)."""
        if not self._active:
            return 0, 0.0
        return len(self._active), time.monotonic() - min(self._active.values())

    def is_queued(self, key: str) -> bool:
        return key in self._queued

    def retried(self) -> list[str]:
        """Keys with a backoff in progress (failed since they last succeeded)."""
        return list(self._retries)

    # ---- workers ----

    def start(self, workers: int) -> list[asyncio.Task[None]]:
        """Start the workers (and report the queue depth as meshfed_queue_depth{queue=name})."""
        metrics.callbacks.queues[self.name] = lambda: self.pending
        metrics.callbacks.in_progress[self.name] = self.in_progress
        new = [asyncio.create_task(self._worker(), name=f"{self.name}-worker-{i}") for i in range(workers)]
        self._tasks.extend(new)
        return new

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    async def _next_key(self) -> tuple[str, str]:
        """The next key to handle and what asked for it."""
        while True:
            for source in (self._urgent, self._bulk):
                while source:
                    key = source.popleft()
                    if key in self._queued:  # else already taken from the other level
                        urgent, since, cause = self._queued.pop(key)
                        metrics.queue_wait.labels(queue=self.name, level="urgent" if urgent else "bulk").observe(
                            time.monotonic() - since)
                        return key, cause
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _worker(self) -> None:
        while True:
            key, cause = await self._next_key()
            await self.run_one(key, cause)
            # Neither taking a queued key nor a reconcile with nothing to change suspends: without this a
            # worker ran a whole pass (a resync, a member's change: every AccessPoint) in one stretch,
            # and Lease renewals, watches, probes and /metrics waited until it ended (seconds at 25
            # members x 400 AccessPoints). One turn of the event loop between keys.
            await asyncio.sleep(0)

    async def run_one(self, key: str, cause: str = "direct") -> None:
        """Handle `key` now, under the loop's rules (fencing, backoff, metrics, once more if dirty)."""
        lease = self.lease_of(key)
        if not self.fencing.holds(lease):
            # Another replica's work (enqueued again when this one takes the shard), or this one's
            # with its renewal late (tried again after a retry period).
            self.fencing.retry_when_renewed(lease, functools.partial(self.enqueue, key, urgent=False, cause="fenced"))
            return
        started = self._active[key] = time.monotonic()
        kind = self.kind_of(key)
        metrics.reconcile_causes.labels(kind=kind, cause=cause).inc()
        try:
            with shards.working_on(self.fencing.shards, lease):
                await self.handle(key)
            if self.reset_backoff_on_success:
                self.succeeded(key)
        except shards.Fenced as err:
            self.log.info("%s %s: stopped: %s", kind, key, err)
            self.fencing.retry_when_renewed(lease, functools.partial(self.enqueue, key, urgent=False, cause="fenced"))
        except Exception as exc:
            metrics.reconcile_errors.labels(kind=kind).inc()
            if self.log_traceback:
                self.log.exception("%s %s: reconcile failed", kind, key)
            else:
                self.log.warning("%s %s: reconcile failed: %s: %s", kind, key, type(exc).__name__, exc)
            self.retry(key)
        finally:
            metrics.reconciles.labels(kind=kind).inc()
            metrics.reconcile_duration.labels(kind=kind).observe(time.monotonic() - started)
            self._active.pop(key, None)
            dirty = self._dirty.pop(key, None)
            if dirty is not None:
                self.enqueue(key, urgent=dirty[0], cause=dirty[1])
