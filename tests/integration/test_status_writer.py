"""The one hub status writer (federation.hubwriter.StatusWriter) against a real kube-apiserver:
server-side apply on the status subresource, a write only on change (what the writer wrote, or the
newest object its caller saw), fields of another field manager neither applied nor compared, and a
memory that forgets deleted objects and stays within its limit."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import pytest

from accesspoint.meta import API_VERSION
from federation.hubwriter import StatusWriter
from federation.kube import KubeClient
from tests.integration.conftest import ApiServer

pytestmark = pytest.mark.integration

NS = "default"
CERTS = f"/apis/{API_VERSION}/namespaces/{NS}/certificates"
SDS_FIELDS = ("envoys", "sds")


class CountingHub:
    """The real client; counts the status applies that reach the API server."""

    def __init__(self, inner: KubeClient) -> None:
        self.inner = inner
        self.applies: list[tuple[str, str]] = []

    async def apply(self, path: str, body: Mapping[str, Any], *, field_manager: str, force: bool = True,
                    subresource: str = "") -> dict[str, Any]:
        self.applies.append((path, field_manager))
        return await self.inner.apply(path, body, field_manager=field_manager, force=force, subresource=subresource)


async def _certificate(hub: KubeClient) -> tuple[str, str]:
    name = f"sw-{uuid.uuid4().hex[:8]}"
    await hub.create(CERTS, {"apiVersion": API_VERSION, "kind": "Certificate", "metadata": {"name": name},
                             "spec": {"hosts": [f"{name}.example.com"], "issuerRef": {"name": "ca"}}},
                     field_manager="test")
    return name, f"{CERTS}/{name}"


async def test_writes_once_per_change_and_compares_with_the_newest_object_seen(hub: ApiServer) -> None:
    client = await hub.admin_client()
    counting = CountingHub(client)
    writer = StatusWriter(counting, "meshfed-status")  # type: ignore[arg-type]
    name, path = await _certificate(client)
    stale = await client.get(path)
    assert stale is not None

    first = await writer.write(path, "Certificate", name, NS, {"summary": "Pending", "ready": "False"}, seen=stale)
    assert first is not None and first["status"] == {"summary": "Pending", "ready": "False"}
    assert counting.applies == [(f"{path}", "meshfed-status")]
    managers = {m["manager"] for m in first["metadata"]["managedFields"] if m.get("subresource") == "status"}
    assert managers == {"meshfed-status"}

    # The same status again, with the caller's (older) view of the object: nothing is sent.
    assert await writer.write(path, "Certificate", name, NS, {"summary": "Pending", "ready": "False"},
                              seen=stale) is None
    assert len(counting.applies) == 1

    # Someone else changes the status: the newer object seen wins over what was written.
    other = await client.apply(path, {"apiVersion": API_VERSION, "kind": "Certificate",
                                      "metadata": {"name": name, "namespace": NS},
                                      "status": {"summary": "Pending", "ready": "False", "revision": 7}},
                               field_manager="meshfed-status", subresource="status")
    again = await writer.write(path, "Certificate", name, NS, {"summary": "Pending", "ready": "False"}, seen=other)
    assert again is not None and "revision" not in again["status"]
    assert len(counting.applies) == 2
    await client.delete(path)


async def test_fields_of_another_manager_are_neither_applied_nor_compared(hub: ApiServer) -> None:
    client = await hub.admin_client()
    counting = CountingHub(client)
    writer = StatusWriter(counting, "meshfed-status")  # type: ignore[arg-type]
    name, path = await _certificate(client)
    sds = {"envoys": [{"node": "gw-1", "resource": f"{NS}/{name}", "connected": True}]}
    live = await client.apply(path, {"apiVersion": API_VERSION, "kind": "Certificate",
                                     "metadata": {"name": name, "namespace": NS}, "status": sds},
                              field_manager="meshfed-sds", subresource="status")
    # Our status, computed with a stale copy of the SDS fields: they are not sent, so not taken over.
    ours = {"summary": "rev 1, 89d", "ready": "True", "envoys": []}
    written = await writer.write(path, "Certificate", name, NS, ours, seen=live, foreign=SDS_FIELDS)
    assert written is not None
    assert written["status"]["envoys"] == sds["envoys"] and written["status"]["summary"] == "rev 1, 89d"
    # meshfed sds reports again: a change of its fields alone costs us no write.
    live = await client.apply(path, {"apiVersion": API_VERSION, "kind": "Certificate",
                                     "metadata": {"name": name, "namespace": NS}, "status": {"envoys": []}},
                              field_manager="meshfed-sds", subresource="status")
    assert await writer.write(path, "Certificate", name, NS, ours, seen=live, foreign=SDS_FIELDS) is None
    assert len(counting.applies) == 1
    await client.delete(path)


async def test_memory_forgets_deleted_objects_and_stays_within_its_limit(hub: ApiServer) -> None:
    client = await hub.admin_client()
    writer = StatusWriter(client, "meshfed-status", limit=2)
    objects = [await _certificate(client) for _ in range(3)]
    for name, path in objects:
        assert await writer.write(path, "Certificate", name, NS, {"summary": "Pending"}) is not None
    assert len(writer) == 2 and writer.known(objects[0][1]) is None  # the least recently used went
    assert writer.known(objects[2][1]) == {"summary": "Pending"}

    name, path = objects[2]
    writer.forget(path)
    assert len(writer) == 1
    # An object deleted behind the writer's back: the write finds nothing (404) and forgets it.
    name, path = objects[1]
    await client.delete(path)
    assert await writer.write(path, "Certificate", name, NS, {"summary": "Failed"}) is None
    assert len(writer) == 0
    for _, other in (objects[0], objects[2]):
        await client.delete(other)


async def test_own_echo_is_the_event_of_our_own_write_only(hub: ApiServer) -> None:
    """The watch event our status write causes is recognised (the controller does not reconcile it);
    a status write by anyone else, or a spec change, is not."""
    client = await hub.admin_client()
    writer = StatusWriter(client, "meshfed-status")
    name, path = await _certificate(client)
    seen = await client.get(path)
    assert seen is not None
    assert not writer.own_echo(path, seen)  # nothing written yet
    written = await writer.write(path, "Certificate", name, NS, {"summary": "Pending"}, seen=seen)
    assert written is not None
    events = client.watch(CERTS, resource_version=seen["metadata"]["resourceVersion"],
                          field_selector=f"metadata.name={name}", timeout_seconds=5)
    echo = (await anext(events)).object
    assert echo["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]
    assert writer.own_echo(path, echo)
    writer.observe(path, echo)  # seeing the echo again keeps it ours
    assert writer.own_echo(path, echo)

    other = await client.apply(path, {"apiVersion": API_VERSION, "kind": "Certificate",
                                      "metadata": {"name": name, "namespace": NS},
                                      "status": {"summary": "Pending", "revision": 2}},
                               field_manager="someone-else", subresource="status")
    assert not writer.own_echo(path, other)
    writer.observe(path, other)
    assert not writer.own_echo(path, other)
    assert not writer.own_echo(path, echo)  # an older event: not the newest, not ours any more
    await client.delete(path)
