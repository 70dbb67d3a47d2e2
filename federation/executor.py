"""Executes one member cluster's plan: create, server-side apply, conditional delete.

Owns the write rules of the house: objects are created with POST (never blindly applied over
something that exists), updated with server-side apply under one field manager (what the POST left
owned through an Update entry is handed to the Apply entry, `_own_by_apply`, before an apply that
would not set it all: else a field the template drops would stay on the member), and deleted only
with uid+resourceVersion preconditions of the object we saw owned. A pre-existing object we do not
own is a conflict unless the AccessPoint asks for adoption, and never one owned by another
AccessPoint or hub; a create meeting an object of ours that already is as desired (a create that
timed out and was applied later) writes nothing more. A namespace the member lacks is created once,
before the first create into it, and the creates going into it meanwhile wait for that one
(`_namespace_ready`). Successful writes go straight into the
member's cache (write-through), compared there with what was written (kept compact, federation/members.py).
Every request that writes is preceded by the fencing check of federation.shards (a replica whose
shard Lease is no longer valid sends nothing; `Fenced` ends the reconcile).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from accesspoint.kinds import NAMESPACE, api_path, managed_kind
from accesspoint.ownership import (
    FIELD_MANAGER,
    MANAGED_BY,
    Owner,
    apply_owned,
    foreign_owner_description,
    keeps_update_owned,
    owner_of,
    update_entry_index,
    update_owned_fields,
)
from accesspoint.plan import Plan, up_to_date
from accesspoint.render import ObjectKey, key_of
from federation import metrics, telemetry
from federation.kube import ApiError, KubeClient
from federation.members import OwnedCache
from federation.shards import Fenced
from federation.shards import check as fence


@dataclass
class Outcome:
    writes: int = 0
    errors: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    unreachable: bool = False
    timed_out: bool = False  # a request got no answer within its deadline (the member may be hung)

    @property
    def ok(self) -> bool:
        return not (self.errors or self.conflicts or self.unreachable)


def _describe(key: ObjectKey) -> str:
    return str(key)


async def _create_fenced(client: KubeClient, collection: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST `body` into `collection`, counted, and only while this replica holds the shard (`fence`)."""
    fence()
    metrics.member_writes.labels(cluster=client.name, verb="create").inc()
    return await client.create(collection, body, field_manager=FIELD_MANAGER)


async def _ensure_namespace(client: KubeClient, name: str, owner: Owner, *, known_missing: bool) -> None:
    """Create the namespace if it is missing. Namespaces are never updated or deleted by meshfed.
    Before the first create into it (`known_missing` False) a refusal (403: the identity may not create
    namespaces) is no error: the namespace may well exist, and the object's own create tells."""
    body = {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {MANAGED_BY: "meshfed", "meshfed.io/hub": owner.hub}}}
    try:
        await _create_fenced(client, api_path(NAMESPACE, None), body)
    except ApiError as err:
        if err.status != 409 and (known_missing or err.status != 403):
            raise


async def _namespace_ready(client: KubeClient, name: str, owner: Owner, cache: OwnedCache, *,
                           missing_since: asyncio.Future[None] | None = None) -> asyncio.Future[None]:
    """Wait until the namespace `name` has been made sure of on this member: one create per namespace
    (per member cache), which every create into it waits for. Without it, the creates of a bulk going
    into a namespace the member lacks all failed with 404 (each costing the member's NamespaceLifecycle
    admission a live lookup) and each created the namespace itself (measured at 50 members: 1,350
    namespace creates, ~1,400 failed object creates, ~1,300 lookups in one bulk). Returns the making-sure
    waited for. `missing_since`: the making-sure a create waited for before it found the namespace missing
    (someone deleted it since): that one is stale and is made again, once for all the creates that waited
    for it. A making-sure started since is waited for, not repeated: the creates of one bulk find the
    namespace missing one after another, the last perhaps after it was created again (a second namespace
    create, seen once in CI)."""
    while True:
        pending = cache.namespaces.get(name)
        if pending is not None and pending.done() and (pending is missing_since or pending.cancelled()
                                                       or pending.exception() is not None):
            pending = None
        ours = pending is None
        if pending is None:
            pending = asyncio.ensure_future(_ensure_namespace(client, name, owner,
                                                              known_missing=missing_since is not None))
            cache.namespaces[name] = pending

            def forget_failed(done: asyncio.Future[None], name: str = name) -> None:
                if (done.cancelled() or done.exception() is not None) and cache.namespaces.get(name) is done:
                    del cache.namespaces[name]  # the next create tries again

            pending.add_done_callback(forget_failed)
        try:
            # Shielded: a reconcile cancelled while waiting must not cancel the create the others wait for.
            await asyncio.shield(pending)
            return pending
        except Fenced:
            if ours:
                raise
            fence()  # another shard's Lease refused that create; ours holds: make sure under ours


async def _create(client: KubeClient, obj: dict[str, Any], owner: Owner, adopt: bool, cache: OwnedCache,
                  out: Outcome) -> None:
    key = key_of(obj)
    kind = managed_kind(key.group, key.kind)
    collection = api_path(kind, key.namespace)
    try:
        made_sure = await _namespace_ready(client, key.namespace, owner, cache) if key.namespace else None
        try:
            created = await _create_fenced(client, collection, obj)
        except ApiError as err:
            if err.status == 404 and "namespaces" in err.message and key.namespace:
                await _namespace_ready(client, key.namespace, owner, cache, missing_since=made_sure)
                created = await _create_fenced(client, collection, obj)
            else:
                raise
        out.writes += 1
        cache.put(created, desired=obj)
    except ApiError as err:
        if err.status != 409:
            raise
        existing = await client.get(api_path(kind, key.namespace, key.name)) or {}
        holder = owner_of(existing, owner.hub)
        if holder == owner and up_to_date(obj, existing):
            # Ours and already as desired: a create that timed out (a hung member) and was applied
            # once the member answered again. Written once, not twice.
            cache.put(existing, desired=obj)
            return
        if holder == owner or (adopt and holder is None and
                               ((existing.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY) != "meshfed"):
            managed_fields = (existing.get("metadata") or {}).get("managedFields")
            index = update_entry_index(managed_fields)
            if holder == owner and index is not None and \
                    not keeps_update_owned(update_owned_fields(managed_fields), obj):
                await _own_by_apply(client, api_path(kind, key.namespace, key.name), index)
            fence()
            metrics.member_writes.labels(cluster=client.name, verb="apply").inc()
            applied = await client.apply(api_path(kind, key.namespace, key.name), obj, field_manager=FIELD_MANAGER)
            out.writes += 1
            cache.put(applied, desired=obj)
            return
        hint = "" if holder else " (set spec.adoptExisting: true to take it over)"
        holder_text = foreign_owner_description(existing)
        out.conflicts.append(f"{_describe(key)} already exists and belongs to {holder_text}{hint}")


async def _own_by_apply(client: KubeClient, path: str, index: int) -> None:
    """Before an apply to an object we created that would not set every field our POST's Update entry
    owns (accesspoint.ownership `keeps_update_owned`: a field or list element dropped from the template,
    a field the server defaulted): what we own through that entry becomes our Apply entry's
    (`apply_owned`), so the apply removes what the template no longer has. An apply that sets them all
    owns them too and needs no hand-over: a changed value, the common edit, costs one request.
    One JSON patch renaming the entry's operation at `index` (its `test`s fail, 422, if the entries moved
    since); otherwise, or with an Apply entry of ours there too (an apply that needed no hand-over left
    one), the object is read and the entries merged, on the condition of its resourceVersion."""
    if index >= 0:
        at = f"/metadata/managedFields/{index}"
        try:
            fence()
            metrics.member_writes.labels(cluster=client.name, verb="patch").inc()
            await client.json_patch(path, [{"op": "test", "path": f"{at}/manager", "value": FIELD_MANAGER},
                                           {"op": "test", "path": f"{at}/operation", "value": "Update"},
                                           {"op": "replace", "path": f"{at}/operation", "value": "Apply"}],
                                    field_manager=FIELD_MANAGER)
            return
        except ApiError as err:
            if err.status != 422:
                raise
    current = await client.get(path)
    if current is None:
        return
    meta = current["metadata"]
    managed = apply_owned(meta.get("managedFields") or [])
    if managed is None:
        return
    fence()
    metrics.member_writes.labels(cluster=client.name, verb="patch").inc()
    rv = meta["resourceVersion"]
    await client.json_patch(path, [{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
                                   {"op": "replace", "path": "/metadata/managedFields", "value": managed}],
                            field_manager=FIELD_MANAGER)


async def execute(client: KubeClient, plan: Plan, owner: Owner, cache: OwnedCache, *, adopt: bool = False) -> Outcome:
    out = Outcome()

    async def guarded(key: ObjectKey, action: Any) -> None:
        try:
            await action
        except ApiError as err:
            telemetry.count("member_errors", cluster=client.name)
            if err.status == 0:
                out.unreachable = True
                out.timed_out = out.timed_out or err.timed_out
                out.errors.append(f"{_describe(key)}: {err.message}")
            elif err.status == 409 and "precondition" in err.message.lower():
                pass  # the object changed since we saw it; the watch will bring the new state
            else:
                out.errors.append(f"{_describe(key)}: {err.message}")

    async def update(obj: dict[str, Any]) -> None:
        key = key_of(obj)
        path = api_path(managed_kind(key.group, key.kind), key.namespace, key.name)
        update_owned = cache.update_owned.get(key)
        if update_owned is not None and not keeps_update_owned(update_owned[1], obj):
            await _own_by_apply(client, path, update_owned[0])
        fence()
        metrics.member_writes.labels(cluster=client.name, verb="apply").inc()
        applied = await client.apply(path, obj, field_manager=FIELD_MANAGER)
        out.writes += 1
        cache.put(applied, desired=obj)

    async def delete(key: ObjectKey, uid: str, rv: str) -> None:
        current = cache.objects.get(key)
        fence()
        metrics.member_writes.labels(cluster=client.name, verb="delete").inc()
        gone = await client.delete(api_path(managed_kind(key.group, key.kind), key.namespace, key.name), uid=uid,
                                   resource_version=rv)
        out.writes += int(gone)
        if current is not None:
            cache.remove(current)

    with telemetry.tracer.start_as_current_span(
        "member.apply", attributes={"cluster": client.name, "accesspoint": owner.key, "writes": plan.writes}
    ):
        await asyncio.gather(
            *(guarded(key_of(o), _create(client, o, owner, adopt, cache, out)) for o in plan.create),
            *(guarded(key_of(o), update(o)) for o in plan.update),
            *(guarded(k, delete(k, uid, rv)) for k, uid, rv in plan.delete),
        )
    telemetry.count("member_writes", out.writes, cluster=client.name)
    return out
