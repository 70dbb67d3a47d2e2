"""A keyed work queue: the controller's MemberCluster status lane (issue 19). DNS and certificates
use federation.workloop; the controller's own loops are to adopt it (issue 23, left).

Owns the rule client-go's workqueue has: a key is queued at most once, never processed by two
workers at the same time, and a key enqueued while it is being processed runs once more after.
Imports only asyncio.
"""

from __future__ import annotations

import asyncio


class KeyedQueue:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._dirty: set[str] = set()

    def put(self, key: str) -> None:
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    async def get(self) -> str:
        """The next key, now being processed until `done(key)`."""
        key = await self._queue.get()
        self._queued.discard(key)
        self._active.add(key)
        return key

    def done(self, key: str) -> None:
        self._active.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.put(key)
