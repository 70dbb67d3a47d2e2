"""Visibility: the `exportTo` of generated VirtualServices, DestinationRules and ServiceEntries.

Owns the VisibilityPolicy model (part of an AccessPoint's `spec.traffic`) and the pure functions
that turn it into `exportTo` lists. Imports accesspoint.meta only; no I/O.

Why: every exported object lands in the Envoy config of every proxy that can see it; past a few
thousand services gateways degrade. The default therefore exports to the object's own namespace
(".") plus the gateway namespace (a gateway only applies VirtualServices/DestinationRules it can
see), never to "*". Declared consumer namespaces are added by name; past `maxExportTo` names the
list collapses to ["*"] (Istio's own limit on a useful list is a matter of config size, not schema).

Rules:
  * the object's own namespace is written ".", never by name; duplicates are dropped;
  * the result is sorted: "." first, then namespace names; it never mixes "*" with names;
  * consumer "*" means "export everywhere" explicitly; "~" (export nowhere) is not offered since
    the gateway must always see the object.
  * objects whose template already sets `exportTo` keep it (the template author decided).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import Field

from accesspoint.meta import ApiModel

EXPORTED_KINDS = frozenset({"VirtualService", "DestinationRule", "ServiceEntry"})
DEFAULT_MAX_EXPORT_TO = 16
_NS_PATTERN = r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$"


class VisibilityPolicy(ApiModel):
    """Who may see the generated Istio objects (`spec.traffic.visibility`)."""

    consumer_namespaces: list[str] = Field(
        default_factory=list,
        alias="consumerNamespaces",
        max_length=1024,
        description='Namespaces whose workloads call this AccessPoint; "*" exports to all.',
    )
    max_export_to: int = Field(
        default=DEFAULT_MAX_EXPORT_TO,
        ge=1,
        le=1024,
        alias="maxExportTo",
        description='Past this many namespaces exportTo collapses to ["*"].',
    )
    gateway_namespace: str | None = Field(
        default=None,
        alias="gatewayNamespace",
        max_length=63,
        pattern=_NS_PATTERN,
        description="Member namespace of the gateway that serves the AccessPoint (default: the controller's "
        "setting, MESHFED_GATEWAY_NAMESPACE when it starts, else istio-system).",
    )


def export_to(
    policy: VisibilityPolicy | None,
    object_namespace: str,
    gateway_namespace: str,
) -> list[str]:
    """The exportTo list for one object living in `object_namespace`."""
    consumers = policy.consumer_namespaces if policy is not None else []
    limit = policy.max_export_to if policy is not None else DEFAULT_MAX_EXPORT_TO
    gateway = (policy.gateway_namespace if policy is not None else None) or gateway_namespace
    if "*" in consumers:
        return ["*"]
    names = {ns for ns in [*consumers, gateway] if ns and ns != object_namespace}
    if len(names) + 1 > limit:
        return ["*"]
    return [".", *sorted(names)]


def validate_visibility(policy: VisibilityPolicy | None) -> list[str]:
    """Error messages naming the field (things the CRD schema does not already reject)."""
    if policy is None:
        return []
    errors = []
    for i, ns in enumerate(policy.consumer_namespaces):
        if not re.match(_NS_PATTERN, ns) or len(ns) > 63:
            errors.append(
                f"spec.traffic.visibility.consumerNamespaces[{i}]: {ns!r} is not a namespace name or '*'"
            )
    return errors


# id(object) -> (that object, the object with exportTo set), for one (policy, namespaces)
VisibilityMemo = dict[int, tuple[Mapping[str, Any], dict[str, Any]]]


def apply_visibility(
    objects: Iterable[Mapping[str, Any]],
    policy: VisibilityPolicy | None,
    gateway_namespace: str,
    *,
    default_namespace: str = "",
    memo: VisibilityMemo | None = None,
) -> list[dict[str, Any]]:
    """`objects` with exportTo set on VirtualServices, DestinationRules and ServiceEntries.

    An object whose spec already has `exportTo` is left as the template wrote it. Inputs are never
    mutated: a changed object is a new dict with a new `spec` (other values are shared, not copied);
    unchanged objects are returned as they are.

    `memo` (one AccessPoint's objects over many clusters): the same input object gives the same,
    shared, result object (the memo holds the input, so its id stays unique). A memo belongs to one
    (policy, gateway_namespace, default_namespace): the caller keeps one per such triple.
    """
    out: list[dict[str, Any]] = []
    cache: dict[str, list[str]] = {}
    for obj in objects:
        spec = obj.get("spec")
        if obj.get("kind") in EXPORTED_KINDS and not (isinstance(spec, Mapping) and "exportTo" in spec):
            hit = memo.get(id(obj)) if memo is not None else None
            if hit is not None and hit[0] is obj:
                out.append(hit[1])
                continue
            ns = str((obj.get("metadata") or {}).get("namespace") or default_namespace)
            if ns not in cache:
                cache[ns] = export_to(policy, ns, gateway_namespace)
            new = {**obj, "spec": {**(spec or {}), "exportTo": list(cache[ns])}}
            if memo is not None:
                memo[id(obj)] = (obj, new)
            out.append(new)
        else:
            out.append(obj if isinstance(obj, dict) else dict(obj))
    return out
