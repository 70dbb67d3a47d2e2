"""Writes to the hub: status (server-side apply, only when changed), finalizers, Events.

Owns the one hub status writer (`StatusWriter`) that every feature uses (AccessPoints,
MemberClusters, NameServices, DNSProviders, Certificates, CertificateIssuers, RolloutApprovals,
PlacementPolicies) and the "write once, only on change" rule for hub objects: per object it
remembers the newest status known — seen in an event (`observe`, the object with its
resourceVersion) or returned by its own write — and a status equal to it costs no request. The
memory is bounded: an entry goes when its object is deleted (`forget`), and past `limit` entries the
least recently used goes (the next write of that object then compares with what its caller saw).
Field manager `meshfed-status` for status (one per component: `meshfed sds` applies its own status
fields under its own), `meshfed-federation` for finalizers.

Events are recorded the way client-go's EventRecorder does it: `event()` only queues, and a
background task posts them in order, so a reconcile never waits on an Event (they are best-effort:
a full queue drops the newest with a log line, never blocks the controller). One sender keeps
their order on the hub (a rollout's WaveStarted events read in sequence).

Fencing (federation.shards): a status or finalizer write is refused (`Fenced`) unless the Lease of
the work it belongs to is valid; an Event remembers that Lease when it is queued and is dropped
when the Lease is no longer valid by the time it would be posted.

Imports accesspoint.meta and federation's shards, telemetry and kube.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import OrderedDict
from collections.abc import Collection, Mapping
from typing import Any

from accesspoint.meta import API_VERSION, rfc3339
from federation import shards, telemetry
from federation.kube import ApiError, KubeClient

log = logging.getLogger("meshfed.hub")
FINALIZER = "meshfed.io/cleanup"
STATUS_MANAGER = "meshfed-status"
STATUS_CACHE_LIMIT = 50_000  # objects whose newest status is remembered (~1 KiB each)


def now_rfc3339() -> str:
    return rfc3339(dt.datetime.now(dt.UTC))


def resource_version(body: Mapping[str, Any] | None) -> int:
    """An object's resourceVersion as a number (0 when absent or not a number)."""
    try:
        return int(((body or {}).get("metadata") or {}).get("resourceVersion", "0"))
    except (TypeError, ValueError):
        return 0


class StatusWriter:
    """Status of hub objects, applied (server-side apply on the status subresource, one field manager)
    only when it differs from the newest status known for the object."""

    def __init__(self, hub: KubeClient, field_manager: str = STATUS_MANAGER, *,
                 limit: int = STATUS_CACHE_LIMIT) -> None:
        self.hub = hub
        self.field_manager = field_manager
        self.limit = limit
        # path -> (resourceVersion, status, written) of the newest status known: an event or a list
        # (written False), or the answer to our own write (written True).
        self._known: OrderedDict[str, tuple[int, dict[str, Any], bool]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._known)

    def observe(self, path: str, body: Mapping[str, Any]) -> None:
        """The object at `path` as seen (an event, a list): remembered unless older than what is known."""
        rv = resource_version(body)
        known = self._known.get(path)
        # At the same resourceVersion the object is the same: the answer to our write stays marked ours.
        if known is None or rv > known[0] or (rv == known[0] and not known[2]):
            self._remember(path, rv, dict(body.get("status") or {}))

    def known(self, path: str) -> dict[str, Any] | None:
        """The newest status known for `path` (None: nothing known)."""
        entry = self._known.get(path)
        return entry[1] if entry is not None else None

    def own_echo(self, path: str, body: Mapping[str, Any]) -> bool:
        """`body` is the object exactly as our last status write left it (its watch event): nothing in
        it is news to the writer of that status."""
        known = self._known.get(path)
        return known is not None and known[2] and resource_version(body) == known[0] > 0

    def forget(self, path: str) -> None:
        """The object is gone: nothing of it is kept."""
        self._known.pop(path, None)

    async def write(self, path: str, kind: str, name: str, namespace: str | None, status: Mapping[str, Any], *,
                    seen: Mapping[str, Any] | None = None, foreign: Collection[str] = ()) -> dict[str, Any] | None:
        """Apply `status` to the object at `path` unless the newest status known (`seen`, the object
        as the caller last saw it, counts when it is newer) already carries it; fields in `foreign`
        belong to another field manager and are neither applied nor compared. Returns the object
        the API server answered, None when nothing was written (unchanged, or the object is gone)."""
        if seen is not None:
            self.observe(path, seen)
        mine = {k: v for k, v in status.items() if k not in foreign}
        known = self.known(path)
        if known is not None and {k: v for k, v in known.items() if k not in foreign} == mine:
            self._known.move_to_end(path)
            return None
        meta: dict[str, Any] = {"name": name}
        if namespace:
            meta["namespace"] = namespace
        body = {"apiVersion": API_VERSION, "kind": kind, "metadata": meta, "status": mine}
        shards.check()
        try:
            result = await self.hub.apply(path, body, field_manager=self.field_manager, subresource="status")
        except ApiError as err:
            if err.status == 404:
                self.forget(path)
                return None
            raise
        telemetry.count("hub_writes", kind="status")
        # The answer is the object after the write (with other managers' fields); a bare answer
        # (no status) leaves what was applied, over the foreign fields known.
        answered = result.get("status") if result else None
        self._remember(path, resource_version(result), dict(answered) if isinstance(answered, dict) else
                       {**{k: v for k, v in (known or {}).items() if k in foreign}, **mine}, written=True)
        return result

    def _remember(self, path: str, rv: int, status: dict[str, Any], *, written: bool = False) -> None:
        self._known[path] = (rv, status, written)
        self._known.move_to_end(path)
        while len(self._known) > self.limit:
            self._known.popitem(last=False)


class HubWriter:
    def __init__(self, hub: KubeClient, *, event_queue: int = 2000, event_senders: int = 1) -> None:
        self.hub = hub
        self.status = StatusWriter(hub)
        self._event_queue_size = event_queue
        self._event_senders = event_senders
        self._events: asyncio.Queue[tuple[dict[str, Any], tuple[shards.Validity, str] | None]] | None = None
        self._senders: list[asyncio.Task[None]] = []
        self.events_dropped = 0

    async def write_status(self, path: str, kind: str, name: str, namespace: str | None,
                           status: dict[str, Any], seen: Mapping[str, Any] | None) -> bool:
        """StatusWriter.write for callers that only need to know whether a write happened."""
        return await self.status.write(path, kind, name, namespace, status, seen=seen) is not None

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
