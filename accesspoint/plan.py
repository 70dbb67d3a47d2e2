"""The plan for one member cluster: diff(desired manifests, objects we own there).

Pure. An object is rewritten only when its content hash changed or a field we manage drifted
(desired is no longer a subset of what the member holds); an unchanged world yields an empty
plan and therefore zero writes. Imports accesspoint.render and accesspoint.ownership.

What a member holds comes whole, or as the member caches keep it once compared (federation/members.py
`compact`): the fields read later, and its content hash under `IN_SYNC` when it was found to hold the
desired object of that hash, under `OUT_OF_SYNC` when it held less. Each version of a member object is
compared once, when it arrives or at the first plan after, not at every plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from accesspoint.ownership import HASH_ANNOTATION
from accesspoint.render import ObjectKey, key_of


def is_subset(desired: Any, current: Any) -> bool:
    """True when every field of `desired` holds the same value in `current`.

    Extra fields in `current` (server defaults, status, fields other managers own) are fine;
    lists must match item by item, each item again as a subset. A null in `desired` matches an
    absent field: API servers drop nulls, so they never come back.
    """
    if isinstance(desired, dict):
        return isinstance(current, dict) and all(
            (current.get(k) is None) if v is None else (k in current and is_subset(v, current[k]))
            for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(current, list)
            and len(desired) == len(current)
            and all(is_subset(d, c) for d, c in zip(desired, current, strict=True))
        )
    if isinstance(desired, bool) or isinstance(current, bool):
        return desired is current
    if isinstance(desired, int | float) and isinstance(current, int | float):
        return float(desired) == float(current)
    return bool(desired == current)


@dataclass
class Plan:
    create: list[dict[str, Any]] = field(default_factory=list)
    update: list[dict[str, Any]] = field(default_factory=list)
    # (key, uid, resourceVersion) so the delete is conditional on the object we saw.
    delete: list[tuple[ObjectKey, str, str]] = field(default_factory=list)
    unchanged: int = 0
    drifted: list[ObjectKey] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)

    @property
    def writes(self) -> int:
        return len(self.create) + len(self.update) + len(self.delete)


_IDENTITY = frozenset({"apiVersion", "kind"})

# The keys under which a compact cached record carries its comparison's verdict and its content hash (in
# place of the annotation): IN_SYNC when its version was found to hold the desired object of that hash,
# OUT_OF_SYNC when it held less. Not Kubernetes field names.
IN_SYNC = "@inSync"
OUT_OF_SYNC = "@outOfSync"


def compared(current: Mapping[str, Any]) -> bool:
    """`current` is a compact record (its verdict kept), not a whole object."""
    return IN_SYNC in current or OUT_OF_SYNC in current


def up_to_date(desired: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """`current` (what a member holds) already is `desired`: same content hash, no managed field drifted.
    A compact record answers from the verdict it carries (the same hash means the same desired object)."""
    if compared(current):
        held = current.get(IN_SYNC)
        return held is not None and held == _hash(desired)
    return _hash(current) == _hash(desired) and is_subset({k: v for k, v in desired.items() if k not in _IDENTITY},
                                                         current)


def verdict(desired: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[str, str | None]:
    """What a compact record of `current` keeps: (IN_SYNC or OUT_OF_SYNC, its content hash)."""
    return (IN_SYNC if up_to_date(desired, current) else OUT_OF_SYNC), _hash(current)


def _hash(obj: Mapping[str, Any]) -> str | None:
    if compared(obj):
        held = obj.get(IN_SYNC) or obj.get(OUT_OF_SYNC)
        return str(held) if held is not None else None
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(HASH_ANNOTATION)
    return str(value) if value is not None else None


def plan(desired: Iterable[dict[str, Any]], owned: Mapping[ObjectKey, Mapping[str, Any]]) -> Plan:
    """Diff desired manifests against the objects this AccessPoint owns in one cluster."""
    result = Plan()
    wanted: set[ObjectKey] = set()
    for obj in desired:
        key = key_of(obj)
        wanted.add(key)
        current = owned.get(key)
        if current is None:
            result.create.append(obj)
            continue
        same_hash = _hash(current) == _hash(obj)
        # Every top-level field but apiVersion/kind (the key covers them; list items may lack them):
        # `spec` for most kinds, `data`/`type` for Secrets.
        if up_to_date(obj, current):
            result.unchanged += 1
            continue
        if same_hash:  # the hash is the same: a field drifted
            result.drifted.append(key)
        result.update.append(obj)
    for key in sorted(set(owned) - wanted, key=lambda k: (k.kind, k.group, k.namespace, k.name)):
        meta = owned[key].get("metadata") or {}
        result.delete.append((key, str(meta.get("uid", "")), str(meta.get("resourceVersion", ""))))
    return result
