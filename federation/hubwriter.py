"""Writes to the hub: status (server-side apply, only when changed), finalizers, Events.

Owns the "write once, only on change" rule for hub objects: a status equal to the last one seen
or written costs no request. Field manager `meshfed-status` for status, `meshfed-federation` for
finalizers.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from accesspoint.meta import API_VERSION
from federation import telemetry
from federation.kube import ApiError, KubeClient

log = logging.getLogger("meshfed.hub")
FINALIZER = "meshfed.io/cleanup"
STATUS_MANAGER = "meshfed-status"


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class HubWriter:
    def __init__(self, hub: KubeClient) -> None:
        self.hub = hub
        self.written: dict[str, dict[str, Any]] = {}

    async def write_status(self, path: str, kind: str, name: str, namespace: str | None,
                           status: dict[str, Any], current: dict[str, Any] | None) -> bool:
        """Apply `status` unless the object already carries it; True when a write happened."""
        if status == (current or {}) or (self.written.get(path) == status and current is None):
            return False
        meta: dict[str, Any] = {"name": name}
        if namespace:
            meta["namespace"] = namespace
        body = {"apiVersion": API_VERSION, "kind": kind, "metadata": meta, "status": status}
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
        try:
            await self.hub.merge_patch(path, patch)
        except ApiError as err:
            if err.status in (404, 409):
                return False  # gone, or changed meanwhile: the next event brings it back
            raise
        telemetry.count("hub_writes", kind="finalizer")
        return True

    async def event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
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
        try:
            await self.hub.create(f"/api/v1/namespaces/{namespace}/events", body, field_manager="meshfed-events")
            telemetry.count("hub_writes", kind="event")
        except ApiError as err:
            log.debug("event not posted: %s", err)
