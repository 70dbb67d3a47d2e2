"""federation.workqueue.KeyedQueue: one pending entry per key, a key enqueued while processed runs again."""

from __future__ import annotations

import asyncio

from federation.workqueue import KeyedQueue


def test_keyed_queue_dedups_and_requeues_a_key_changed_while_active() -> None:
    async def scenario() -> list[str]:
        q = KeyedQueue()
        q.put("a")
        q.put("a")
        q.put("b")
        order = [await q.get()]  # "a" active
        q.put("a")  # changed while active: once more after done
        q.put("a")
        order.append(await q.get())  # "b"
        q.done(order[0])
        q.done(order[1])
        order.append(await q.get())
        q.done(order[2])
        assert q._queue.empty()
        return order

    assert asyncio.run(scenario()) == ["a", "b", "a"]
