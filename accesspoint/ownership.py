"""Owner labels: how meshfed marks, finds and recognises the member objects it owns.

Pure; imports nothing of meshfed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MANAGED_BY = "app.kubernetes.io/managed-by"
HUB = "meshfed.io/hub"
OWNER_NAMESPACE = "meshfed.io/accesspoint-namespace"
OWNER_NAME = "meshfed.io/accesspoint"
HASH_ANNOTATION = "meshfed.io/content-hash"
FIELD_MANAGER = "meshfed-federation"


@dataclass(frozen=True, order=True)
class Owner:
    hub: str
    namespace: str
    name: str

    def labels(self) -> dict[str, str]:
        return {MANAGED_BY: "meshfed", HUB: self.hub, OWNER_NAMESPACE: self.namespace, OWNER_NAME: self.name}

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def owner_of(obj: Mapping[str, Any], hub: str) -> Owner | None:
    """The AccessPoint that owns `obj` for this hub, or None when it is not ours."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if labels.get(MANAGED_BY) != "meshfed" or labels.get(HUB) != hub:
        return None
    ns, name = labels.get(OWNER_NAMESPACE), labels.get(OWNER_NAME)
    if not ns or not name:
        return None
    return Owner(hub, ns, name)


def foreign_owner_description(obj: Mapping[str, Any]) -> str:
    """Who holds an object we do not own, in words, for conflict messages."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if labels.get(MANAGED_BY) == "meshfed":
        return (
            f"meshfed AccessPoint {labels.get(OWNER_NAMESPACE)}/{labels.get(OWNER_NAME)}"
            f" of hub {labels.get(HUB)!r}"
        )
    managers = sorted({m.get("manager", "?") for m in (obj.get("metadata") or {}).get("managedFields") or []})
    return "an object not managed by meshfed" + (f" (field managers: {', '.join(managers)})" if managers else "")


def _fields_union(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """The union of two fieldsV1 tries (a field set: nested mappings, `{}` at the leaves)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _fields_union(out[k], v) if isinstance(out.get(k), Mapping) and isinstance(v, Mapping) else v
    return out


def _ours(entry: Any, manager: str) -> bool:
    """A managedFields entry of `manager` for the object itself (not a subresource such as status)."""
    return isinstance(entry, Mapping) and entry.get("manager") == manager and not entry.get("subresource")


def update_entry_index(managed_fields: Any, manager: str = FIELD_MANAGER) -> int | None:
    """Where `manager` owns fields of the object itself through an Update entry (what a POST create with
    fieldManager leaves), when that entry can simply become its Apply entry (it has none): the index;
    -1 when it has an Apply entry too (the two must be merged: `apply_owned`); None when it owns nothing
    through an Update."""
    if not isinstance(managed_fields, list):
        return None
    index, has_apply = None, False
    for i, entry in enumerate(managed_fields):
        if not _ours(entry, manager):
            continue
        if entry.get("operation") == "Update":
            index = i if index is None else -1
        elif entry.get("operation") == "Apply":
            has_apply = True
    if index is None:
        return None
    return -1 if has_apply else index


# Paths of field names (one tuple per owned field; a map owned as a whole by its own path).
FieldPaths = tuple[tuple[str, ...], ...]


class _KeyedElement(Exception):
    """A fieldsV1 trie names list elements (by key, value or index), not only fields."""


def _field_paths(fields: Mapping[str, Any], prefix: tuple[str, ...], out: list[tuple[str, ...]]) -> None:
    for k, sub in fields.items():
        if k == ".":
            out.append(prefix)
        elif not k.startswith("f:"):
            raise _KeyedElement(k)
        elif isinstance(sub, Mapping) and sub:
            _field_paths(sub, (*prefix, k[2:]), out)
        else:
            out.append((*prefix, k[2:]))


def update_owned_fields(managed_fields: Any, manager: str = FIELD_MANAGER) -> FieldPaths | None:
    """What `manager` owns of the object through its Update entries, as field paths (sorted); None when
    an entry names list elements (by key, value or index: a Service's or a ServiceEntry's ports) or
    cannot be read: whether a template still sets those needs the schema, so the fields are handed over."""
    paths: list[tuple[str, ...]] = []
    for entry in managed_fields if isinstance(managed_fields, list) else ():
        if not _ours(entry, manager) or entry.get("operation") != "Update":
            continue
        fields = entry.get("fieldsV1")
        if not isinstance(fields, Mapping):
            return None
        try:
            _field_paths(fields, (), paths)
        except _KeyedElement:
            return None
    return tuple(sorted(set(paths)))


def keeps_update_owned(paths: FieldPaths | None, desired: Mapping[str, Any]) -> bool:
    """Whether `desired`, applied, sets every field of `paths` (`update_owned_fields`): then its apply
    owns them too (taking over those whose value it changes) and leaves nothing of ours behind, so the
    Update entry need not be handed to the Apply entry first. Fields the server defaulted at the create
    (a Service's sessionAffinity) count as not set: conservative, the hand-over is always correct."""
    if paths is None:
        return False
    for path in paths:
        node: Any = desired
        for name in path:
            if not isinstance(node, Mapping) or node.get(name) is None:
                return False
            node = node[name]
    return True


def apply_owned(managed_fields: list[dict[str, Any]], manager: str = FIELD_MANAGER) -> list[dict[str, Any]] | None:
    """managedFields with what `manager` owns of the object through Update entries moved into its Apply
    entry (client-go csaupgrade's rule), or None when there is nothing to move.

    Why: an object created with POST is owned through an Update entry, and server-side apply removes only
    fields its own Apply entry owned: a field later dropped from the template (an annotation, a port, a
    spec key) would stay on the member for ever, under a content hash saying it is up to date."""
    mine = [e for e in managed_fields if _ours(e, manager) and e.get("operation") in ("Update", "Apply")]
    if not any(e.get("operation") == "Update" for e in mine):
        return None
    fields: dict[str, Any] = {}
    for entry in mine:
        fields = _fields_union(fields, entry.get("fieldsV1") or {})
    base = next((e for e in mine if e.get("operation") == "Apply"), mine[0])
    merged = {**base, "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": fields}
    out: list[dict[str, Any]] = []
    for entry in managed_fields:
        if entry is base:
            out.append(merged)
        elif not any(entry is e for e in mine):
            out.append(entry)
    return out
