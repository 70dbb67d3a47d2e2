"""Per-cluster overrides of an AccessPoint's rendered bundle (`spec.overrides[]`).

Owns the Override model, RFC 7386 JSON merge patch, and the pure application of overrides to one
cluster's rendered objects. Imports accesspoint.meta, placement.models and the `jsonpatch` package
(RFC 6902); no I/O, no clock.

Application (after variable substitution, before owner labels/hashes are stamped):
  * an override applies to a cluster when its one selector matches: `regions`, `zones`,
    `clusterSelector` (MemberCluster labels plus region/zone/name labels) or `clusters`;
  * applicable overrides run from least to most specific - region < zone < clusterSelector <
    cluster - and, within one level, in list order, so a cluster override wins over a zone one;
  * each targets one object of the bundle by kind + name (+ namespace when names repeat, + group when
    kinds of two API groups share kind and name: Istio's and the Gateway API's Gateway) and holds
    either a JSON merge patch (`mergePatch`, RFC 7386: null deletes a key) or a JSON patch
    (`jsonPatch`, RFC 6902) applied to the whole object (paths start at `/spec`, `/metadata`...);
  * an override may not change an object's apiVersion, kind, name or namespace;
  * all or nothing: if any applicable override fails, the objects are returned unchanged together
    with every error (each naming the override index and the cluster), so the caller keeps that
    cluster's last good objects.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import jsonpatch
from pydantic import ConfigDict, Field, model_validator
from pydantic.config import JsonDict

from accesspoint.meta import ApiModel, Condition, LabelSelector
from placement.models import ClusterFacts

_ANY: JsonDict = {"x-kubernetes-preserve-unknown-fields": True}


class ObjectRef(ApiModel):
    kind: str = Field(min_length=1)
    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = Field(default=None, min_length=1, max_length=63)
    group: str | None = Field(
        default=None,
        max_length=253,
        description="API group of the target (\"\" for core): needed only when two objects of the bundle share "
        "kind and name across groups, e.g. Istio's Gateway (networking.istio.io) and the Gateway API's "
        "(gateway.networking.k8s.io).",
    )

    def __str__(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        kind = f"{self.kind}.{self.group}" if self.group else self.kind
        return f"{kind} {ns}{self.name}"


class JsonPatchOperation(ApiModel):
    """One RFC 6902 operation."""

    op: Literal["add", "remove", "replace", "move", "copy", "test"]
    path: str
    value: Any = Field(default=None, json_schema_extra=_ANY)
    from_: str | None = Field(default=None, alias="from")

    def rfc(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "path": self.path}
        if self.op in ("add", "replace", "test"):
            out["value"] = self.value
        if self.from_ is not None:
            out["from"] = self.from_
        return out


SCOPES = ("regions", "zones", "clusterSelector", "clusters")  # least to most specific


class Override(ApiModel):
    """Patch one object of the bundle in the clusters one selector picks."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "[has(self.clusters), has(self.zones), has(self.regions),"
                    " has(self.clusterSelector)].filter(x, x).size() == 1",
                    "message": "set exactly one of clusters, zones, regions or clusterSelector",
                },
                {
                    "rule": "has(self.mergePatch) != has(self.jsonPatch)",
                    "message": "set exactly one of mergePatch or jsonPatch",
                },
            ]
        }
    )

    name: str | None = Field(default=None, max_length=253, description="Shown in conditions.")
    clusters: list[str] | None = Field(default=None, min_length=1)
    zones: list[str] | None = Field(default=None, min_length=1)
    regions: list[str] | None = Field(default=None, min_length=1)
    cluster_selector: LabelSelector | None = Field(default=None, alias="clusterSelector")
    target: ObjectRef
    merge_patch: dict[str, Any] | None = Field(default=None, alias="mergePatch", json_schema_extra=_ANY)
    json_patch: list[JsonPatchOperation] | None = Field(default=None, alias="jsonPatch", min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> Override:
        scopes = [self.clusters, self.zones, self.regions, self.cluster_selector]
        if sum(s is not None for s in scopes) != 1:
            raise ValueError("set exactly one of clusters, zones, regions or clusterSelector")
        if (self.merge_patch is None) == (self.json_patch is None):
            raise ValueError("set exactly one of mergePatch or jsonPatch")
        return self

    @property
    def level(self) -> int:
        """Specificity: 0 regions, 1 zones, 2 clusterSelector, 3 clusters."""
        if self.regions is not None:
            return 0
        if self.zones is not None:
            return 1
        if self.cluster_selector is not None:
            return 2
        return 3

    def applies_to(self, cluster: ClusterFacts) -> bool:
        if self.clusters is not None:
            return cluster.name in self.clusters
        if self.zones is not None:
            return cluster.zone in self.zones
        if self.regions is not None:
            return cluster.region in self.regions
        assert self.cluster_selector is not None
        return self.cluster_selector.matches(cluster.selector_labels)


@dataclass(frozen=True)
class OverrideError:
    index: int
    name: str | None
    cluster: str
    message: str

    def __str__(self) -> str:
        label = f" ({self.name})" if self.name else ""
        return f"spec.overrides[{self.index}]{label} on cluster {self.cluster}: {self.message}"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; returns a new value and never mutates its inputs."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: dict[str, Any] = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


_INDEX = re.compile(r"^(0|[1-9][0-9]*)$")


def _fast_json_patch(doc: dict[str, Any], ops: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """`jsonpatch.apply_patch(doc, ops, in_place=False)` for the common case, without copying the
    whole document: add / replace / remove through existing objects and arrays, copying only the
    containers along each path (the rest is shared with `doc`, which is never mutated). None for
    anything else (other ops, the root, '~' escapes, a missing path, a bad index): the caller then
    runs jsonpatch, which gives the same result or the error message."""
    root: Any = doc
    for op in ops:
        kind, path = op.get("op"), op.get("path")
        if kind not in ("add", "replace", "remove") or not isinstance(path, str) or not path.startswith("/"):
            return None
        if "~" in path or (kind != "remove" and "value" not in op):
            return None
        parts = path[1:].split("/")
        new_root: Any = root.copy() if isinstance(root, dict) else None
        if new_root is None:
            return None
        node = new_root
        for part in parts[:-1]:  # copy every container on the way down
            if isinstance(node, dict):
                if part not in node:
                    return None
                child = node[part]
            elif isinstance(node, list):
                if not _INDEX.match(part) or int(part) >= len(node):
                    return None
                child = node[int(part)]
            else:
                return None
            if isinstance(child, dict | list):
                child = child.copy()
            else:
                return None
            node[int(part) if isinstance(node, list) else part] = child
            node = child
        last = parts[-1]
        if isinstance(node, dict):
            if kind == "add":
                node[last] = copy.deepcopy(op["value"])
            elif last not in node:
                return None
            elif kind == "replace":
                node[last] = copy.deepcopy(op["value"])
            else:
                del node[last]
        elif isinstance(node, list):
            if kind == "add" and last == "-":
                node.append(copy.deepcopy(op["value"]))
                root = new_root
                continue
            if not _INDEX.match(last):
                return None
            index = int(last)
            if index > len(node) or (kind != "add" and index == len(node)):
                return None
            if kind == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif kind == "replace":
                node[index] = copy.deepcopy(op["value"])
            else:
                del node[index]
        else:
            return None
        root = new_root
    return root if isinstance(root, dict) else None


def ordered(overrides: Sequence[Override]) -> list[tuple[int, Override]]:
    """(index, override) in application order: by specificity, then list order."""
    return sorted(enumerate(overrides), key=lambda pair: (pair[1].level, pair[0]))


def _identity(obj: Mapping[str, Any]) -> tuple[str, str, str, str]:
    meta = obj.get("metadata") or {}
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    return group, str(obj.get("kind", "")), str(meta.get("name", "")), str(meta.get("namespace", ""))


def _find(objects: Sequence[Mapping[str, Any]], ref: ObjectRef) -> tuple[int | None, str | None]:
    hits = [
        i
        for i, obj in enumerate(objects)
        if obj.get("kind") == ref.kind
        and (obj.get("metadata") or {}).get("name") == ref.name
        and (ref.namespace is None or (obj.get("metadata") or {}).get("namespace") == ref.namespace)
        and (ref.group is None or str(obj.get("apiVersion", "")).rpartition("/")[0] == ref.group)
    ]
    if not hits:
        return None, f"target {ref} is not in the rendered bundle"
    if len(hits) > 1:
        groups = {str(objects[i].get("apiVersion", "")).rpartition("/")[0] for i in hits}
        fields = "target.group" if len(groups) > 1 else "target.namespace"
        return None, f"target {ref} is ambiguous: set {fields}"
    return hits[0], None


# (id(object), override index) -> (that object, the object patched by that override)
OverrideMemo = dict[tuple[int, int], tuple[Mapping[str, Any], dict[str, Any]]]


def apply_overrides(
    objects: Sequence[Mapping[str, Any]],
    overrides: Sequence[Override],
    cluster: ClusterFacts,
    *,
    memo: OverrideMemo | None = None,
) -> tuple[list[dict[str, Any]], list[OverrideError]]:
    """Apply the overrides that select `cluster` (see the module docstring for order and rules).

    Returns (objects, errors). Inputs are never mutated: patched objects are new dicts (a merge
    patch shares the subtrees it did not touch with the input, a JSON patch copies), unpatched
    ones are the input dicts themselves; on any error the input objects are returned unchanged.

    `memo` (accesspoint.render.Renderer, one AccessPoint over many clusters): a successful patch of
    an object is kept by the object's identity and the override, and the same object patched by the
    same override again is that result, shared (the memo holds the object, so its id stays unique).
    """
    result: list[Any] = list(objects)
    errors: list[OverrideError] = []
    if not overrides:
        return result, errors
    for index, override in ordered(overrides):
        if not override.applies_to(cluster):
            continue
        if memo is not None:
            pos, _ = _find(result, override.target)
            hit = memo.get((id(result[pos]), index)) if pos is not None else None
            if pos is not None and hit is not None and hit[0] is result[pos]:
                result[pos] = hit[1]
                continue

        def fail(message: str, index: int = index, override: Override = override) -> None:
            errors.append(OverrideError(index, override.name, cluster.name, message))

        pos, problem = _find(result, override.target)
        if pos is None:
            fail(problem or "target not found")
            continue
        current = result[pos]
        try:
            if override.merge_patch is not None:
                new = merge_patch(current, override.merge_patch)
            else:
                ops = [op.rfc() for op in override.json_patch or []]
                fast = _fast_json_patch(current, ops) if isinstance(current, dict) else None
                new = fast if fast is not None else jsonpatch.apply_patch(current, ops, in_place=False)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            fail(f"JSON patch on {override.target} failed: {exc}")
            continue
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            fail(f"patch on {override.target} failed: {exc}")
            continue
        if not isinstance(new, dict):
            fail(f"patch on {override.target} did not produce an object")
            continue
        if _identity(new) != _identity(current):
            fail(f"patch on {override.target} may not change apiVersion group, kind, name or namespace")
            continue
        if memo is not None:
            memo[(id(current), index)] = (current, new)
        result[pos] = new
    if errors:
        return [cast(dict[str, Any], o) for o in objects], errors
    return result, errors


@dataclass
class OverrideReport:
    errors: list[str]
    warnings: list[str]


def validate_overrides(overrides: Sequence[Override], clusters: Iterable[ClusterFacts]) -> OverrideReport:
    """Static checks against the known member clusters: unknown clusters are errors; zones, regions
    and selectors that match no cluster are warnings."""
    known = list(clusters)
    names = {c.name for c in known}
    zones = {c.zone for c in known}
    regions = {c.region for c in known}
    errors: list[str] = []
    warnings: list[str] = []
    for i, o in enumerate(overrides):
        label = f"spec.overrides[{i}]" + (f" ({o.name})" if o.name else "")
        for name in o.clusters or []:
            if name not in names:
                errors.append(f"{label}: cluster {name} is not a registered MemberCluster")
        for zone in o.zones or []:
            if zone not in zones:
                warnings.append(f"{label}: no member cluster is in zone {zone}")
        for region in o.regions or []:
            if region not in regions:
                warnings.append(f"{label}: no member cluster is in region {region}")
        if o.cluster_selector is not None and not any(
            o.cluster_selector.matches(c.selector_labels) for c in known
        ):
            warnings.append(f"{label}: clusterSelector matches no member cluster")
    return OverrideReport(errors=errors, warnings=warnings)


def overrides_condition(
    errors: Sequence[OverrideError | str], observed_generation: int | None = None
) -> Condition:
    """`OverridesApplied`: False (naming each override and cluster) when any failed."""
    if errors:
        return Condition(
            type="OverridesApplied",
            status="False",
            reason="OverrideFailed",
            message="; ".join(str(e) for e in errors),
            observed_generation=observed_generation,
        )
    return Condition(
        type="OverridesApplied", status="True", reason="Applied", observed_generation=observed_generation
    )
