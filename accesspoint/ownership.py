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
