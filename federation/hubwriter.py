"""Writes to the hub: status (server-side apply, only when changed), finalizers, Events.

Owns the "write once, only on change" rule for hub objects: a status equal to the last one seen
or written costs no request. Field manager `meshfed-status` for status, `meshfed-federation` for
finalizers.

Events are recorded the way client-go's EventRecorder does it: `event()` only queues, and a
background task posts them in order, so a reconcile never waits on an Event (they are best-effort:
a full queue drops the newest with a log line, never blocks the controller). One sender keeps
their order on the hub (a rollout's WaveStarted events read in sequence).

Fencing (federation.shards): a status or finalizer write is refused (`Fenced`) unless the Lease of
the work it belongs to is valid; an Event remembers that Lease when it is queued and is dropped
when the Lease is no longer valid by the time it would be posted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from accesspoint.meta import API_VERSION, rfc3339
from federation import shards, telemetry
from federation.kube import ApiError, KubeClient

log = logging.getLogger("meshfed.hub")
FINALIZER = "meshfed.io/cleanup"
STATUS_MANAGER = "meshfed-status"


def now_rfc3339() -> str:
    return rfc3339(dt.datetime.now(dt.UTC))


class HubWriter:
    def __init__(self, hub: KubeClient, *, event_queue: int = 2000, event_senders: int = 1) -> None:
        self.hub = hub
        self.written: dict[str, dict[str, Any]] = {}
        self._event_queue_size = event_queue
        self._event_senders = event_senders
        self._events: asyncio.Queue[tuple[dict[str, Any], tuple[shards.Validity, str] | None]] | None = None
        self._senders: list[asyncio.Task[None]] = []
        self.events_dropped = 0

    async def write_status(self, path: str, kind: str, name: str, namespace: str | None,
                           status: dict[str, Any], current: dict[str, Any] | None) -> bool:
        """Apply `status` unless the object already carries it; True when a write happened."""
        if status == (current or {}) or (self.written.get(path) == status and current is None):
            return False
        meta: dict[str, Any] = {"name": name}
        if namespace:
            meta["namespace"] = namespace
        body = {"apiVersion": API_VERSION, "kind": kind, "metadata": meta, "status": status}
        shards.check()
        try:
            await self.hub.apply(path, body, field_manager=STATUS_MANAGER, subresource="status")
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        self.written[path] = status
        telemetry.count("hub_writes", kind="status")
        return True

    async def set_finalizer(self, path: str, meta: dict[str, Any], present: bool) -> bool:
        finalizers = list(meta.get("finalizers") or [])
        if (FINALIZER in finalizers) == present:
            return False
        finalizers = [*finalizers, FINALIZER] if present else [f for f in finalizers if f != FINALIZER]
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}}
        shards.check()
        try:
            await self.hub.merge_patch(path, patch)
        except ApiError as err:
            if err.status in (404, 409):
                return False  # gone, or changed meanwhile: the next event brings it back
            raise
        telemetry.count("hub_writes", kind="finalizer")
        return True

    async def event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        shards.check()
        meta = involved.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        ts = now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'meshfed')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", API_VERSION),
                "kind": involved.get("kind", ""),
                "name": meta.get("name", ""),
                "namespace": meta.get("namespace", ""),
                "uid": meta.get("uid", ""),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "meshfed-controller"},
            "reportingComponent": "meshfed.io/controller",
            "reportingInstance": "meshfed-controller",
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "count": 1,
        }
        if self._events is None:
            self._events = asyncio.Queue(self._event_queue_size)
            self._senders = [asyncio.create_task(self._send_events(), name=f"events-{i}")
                             for i in range(self._event_senders)]
        try:
            self._events.put_nowait((body, shards.current()))
        except asyncio.QueueFull:
            self.events_dropped += 1
            log.warning("event queue full: dropped %s %s on %s/%s", type_, reason, namespace, meta.get("name"))

    async def _send_events(self) -> None:
        assert self._events is not None
        while True:
            body, lease = await self._events.get()
            try:
                if lease is not None and not lease[0].valid(lease[1]):
                    log.info("event %s on %s/%s dropped: lease %s is no longer held", body.get("reason"),
                             body["metadata"]["namespace"], body["involvedObject"]["name"], lease[1])
                    continue
                namespace = body["metadata"]["namespace"]
                await self.hub.create(f"/api/v1/namespaces/{namespace}/events", body, field_manager="meshfed-events")
                telemetry.count("hub_writes", kind="event")
            except ApiError as err:
                log.debug("event not posted: %s", err)
            finally:
                self._events.task_done()

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until the queued Events are posted."""
        if self._events is not None:
            try:
                await asyncio.wait_for(self._events.join(), timeout)
            except TimeoutError:
                log.warning("%d events not posted before shutdown", self._events.qsize())

    async def close(self) -> None:
        await self.flush()
        for task in self._senders:
            task.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)
        self._senders = []
