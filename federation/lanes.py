"""Per-member lanes: each member's writes run in a lane of their own, so one member never delays another.

Owns, per member: the flights (one per AccessPoint at a time: the execution of that AccessPoint's plan
for this member, see controller.MemberWork), a bound on flights running at once (`concurrency`) and on
flights waiting (`capacity`: beyond it a reconcile reports the writes as pending and is called back
when room frees up), and the rule for how long a reconcile waits for its flights: until they land,
or, for a member that looks stalled (a request unanswered for `stall_after` seconds while nothing else
answers: hung) or is known to be slow (its probe is degraded: many requests in flight, each answered
late), at most `stall_after` seconds. A flight not waited for goes on alone; when it lands, its
AccessPoint is reconciled again (`on_landed`), which plans against the cache the flight wrote
through: what landed is not written twice, what is still missing is written once. So is a flight during
which the member's watch showed a change to its objects, unless its `settled` check then finds the member
holding just what it wrote (the change was the watch event of its own write).
Imports asyncio, federation.kube and federation.shards (`Fenced`) only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from federation.kube import ApiError, KubeClient
from federation.shards import Fenced

log = logging.getLogger("meshfed.lanes")

T = TypeVar("T")


@dataclass
class Flight(Generic[T]):
    key: str
    task: asyncio.Task[T]
    since: float  # wall clock: when its writes were sent (or queued)
    pending: str  # what it writes, e.g. "3 to create"
    left_alone: bool = False  # a reconcile stopped waiting: reconcile the key again when it lands
    # The member's watch showed a change to the key's objects while the flight was in the air (mostly
    # its own writes' events, which often come before their answers): reconcile again when it lands,
    # unless `settled` (given at launch) then says the member holds exactly what was written.
    changed_meanwhile: bool = False
    settled: Callable[[], bool] | None = None


@dataclass
class MemberLane(Generic[T]):
    name: str
    on_landed: Callable[[str], None]
    concurrency: int = 16
    capacity: int = 1024
    flights: dict[str, Flight[T]] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)  # keys told "lane full": called back when room frees
    on_room: Callable[[str], None] | None = None  # how they are called back (default: on_landed)
    _slots: asyncio.Semaphore | None = None

    def flight(self, key: str) -> Flight[T] | None:
        """The key's flight still in the air (a landed one is forgotten)."""
        flight = self.flights.get(key)
        if flight is not None and flight.task.done():
            del self.flights[key]
            return None
        return flight

    @property
    def full(self) -> bool:
        return len(self.flights) >= self.capacity

    def launch(self, key: str, work: Callable[[], Awaitable[T]], pending: str,
               settled: Callable[[], bool] | None = None) -> Flight[T]:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        slots = self._slots

        async def run() -> T:
            async with slots:
                return await work()

        flight: Flight[T] = Flight(key, asyncio.create_task(run(), name=f"lane-{self.name}-{key}"), time.time(),
                                   pending, settled=settled)
        self.flights[key] = flight
        flight.task.add_done_callback(lambda _: self._landed(flight))
        return flight

    def _landed(self, flight: Flight[T]) -> None:
        if self.flights.get(flight.key) is flight:
            del self.flights[flight.key]
        failed = None if flight.task.cancelled() else flight.task.exception()  # retrieved here, once
        if failed is not None and flight.left_alone and not isinstance(failed, (Fenced, ApiError)):
            # Nobody awaits a flight left alone (its AccessPoint is reconciled again below). A Lease no
            # longer held (the reconcile again finds its shard gone or taken back) is no error; anything
            # else is a defect, logged with its traceback.
            log.error("%s: the writes of %s failed", self.name, flight.key, exc_info=failed)
        if flight.left_alone or (flight.changed_meanwhile and not self._settled(flight)):
            self.on_landed(flight.key)
        if self.refused and not self.full:
            refused, self.refused = self.refused, set()
            for key in refused:
                (self.on_room or self.on_landed)(key)

    @staticmethod
    def _settled(flight: Flight[T]) -> bool:
        """The changes seen while `flight` was in the air were its own writes' watch events (or older
        than their answers): the member holds what it wrote, and reconciling again would plan nothing.
        (A member's watch event of a create mostly comes before the create's answer: without this
        check each member's landing reconciled the whole AccessPoint again, members x members plans
        per AccessPoint in a bulk.)"""
        if flight.settled is None or flight.task.cancelled() or flight.task.exception() is not None:
            return False
        return flight.settled()


async def wait_flights(flights: Mapping[str, tuple[Flight[T], KubeClient | None]], *, stall_after: float,
                       cap: float, slow: frozenset[str] = frozenset(), tick: float = 0.05,
                       own_stall: Callable[[float], float] | None = None) -> dict[str, T]:
    """The results of the flights (by member) that land while their members answer; a member that
    stalls (or the `cap` in seconds; `stall_after` for the members known to be `slow`) ends the wait
    for its flight, which is then `left_alone`. A stall is judged net of `own_stall` (this process's
    event loop starved: at 50 members on 2 cores it lagged over 0.5 s for long stretches, every member
    then looked stalled, and every flight left alone cost a reconcile of its AccessPoint when it landed:
    7.7 reconciles per AccessPoint in a bulk)."""
    results: dict[str, T] = {}
    waiting = dict(flights)
    started = time.monotonic()
    deadline = started + cap

    def waited() -> float:
        return time.monotonic() - started - (own_stall(started) if own_stall is not None else 0.0)

    while waiting:
        for name, (flight, client) in list(waiting.items()):
            if flight.task.done():
                results[name] = flight.task.result()
                del waiting[name]
            elif client is None or client.stalled(stall_after, own_stall=own_stall) is not None or \
                    time.monotonic() >= deadline or \
                    (name in slow and waited() >= stall_after):
                flight.left_alone = True
                del waiting[name]
        if waiting:
            await asyncio.wait([f.task for f, _ in waiting.values()], timeout=tick)
    return results
