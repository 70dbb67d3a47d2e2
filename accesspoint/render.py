"""Rendering: AccessPoint template + one cluster's facts -> that cluster's desired manifests.

Pure and deterministic. Owns variable substitution (`${cluster}`, `${zone}`, `${region}`,
`${namespace}`, `${name}`; `$${x}` is a literal `${x}`), template validation that the CRD schema
cannot express, owner labels and the content-hash annotation. Imports accesspoint.* and
placement.models only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from accesspoint.kinds import TEMPLATE_KINDS
from accesspoint.models import AccessPoint, TemplateObject
from accesspoint.overrides import apply_overrides
from accesspoint.ownership import HASH_ANNOTATION, Owner
from placement.models import ClusterFacts

VARIABLES = ("cluster", "zone", "region", "namespace", "name")
# A variable `${x}`, an escaped `$${x}`, or (last alternative) a `${` that starts neither: with no
# closing `}` before the next `{`, e.g. `${regoin-${cluster}`, it is malformed (or, escaped, literal).
_VAR = re.compile(r"\$(\$?)\{([^{}]*)\}|(\$?)\$\{")


class TemplateError(ValueError):
    """A template problem, with the field path it concerns."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


@dataclass(frozen=True)
class ObjectKey:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def key_of(obj: Mapping[str, Any]) -> ObjectKey:
    meta = obj.get("metadata") or {}
    return ObjectKey(str(obj.get("kind", "")), str(meta.get("namespace", "")), str(meta.get("name", "")))


def content_hash(obj: Mapping[str, Any]) -> str:
    """Stable hash of an object's content (JSON with sorted keys), 16 hex digits."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _walk_strings(value: Any, path: str, fn: Callable[[str, str], str]) -> Any:
    if isinstance(value, str):
        return fn(value, path)
    if isinstance(value, list):
        return [_walk_strings(v, f"{path}[{i}]", fn) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _walk_strings(v, f"{path}.{k}", fn) for k, v in value.items()}
    return value


class _VariableError(ValueError):
    """A substitution problem before its field path is known (see _fill)."""


def _replace(text: str, variables: Mapping[str, str]) -> str:
    """`text` with its variables substituted; raises _VariableError with the message."""

    def repl(m: re.Match[str]) -> str:
        escaped, var = m.group(1), m.group(2)
        if var is None:
            if m.group(3):
                return m.group(0)  # an escaped `$${` without a closing brace stays as it is
            raise _VariableError(f"malformed variable in {text!r}: '${{' without a closing '}}'")
        if escaped:
            return "${" + var + "}"
        if var not in variables:
            raise _VariableError(
                f"unknown variable ${{{var}}} (known: {', '.join('${' + v + '}' for v in VARIABLES)})"
            )
        return variables[var]

    return _VAR.sub(repl, text)


def substitute(value: Any, variables: Mapping[str, str], path: str) -> Any:
    """Replace ${var} in every string below `value`; raises TemplateError naming the field."""

    def one(text: str, where: str) -> str:
        if "$" not in text:
            return text
        try:
            return _replace(text, variables)
        except _VariableError as err:
            raise TemplateError(where, str(err)) from None

    return _walk_strings(value, path, one)


_Path = tuple[str | int, ...]
_VARIABLE_STRINGS: dict[str, tuple[tuple[_Path, str], ...]] = {}
_VARIABLE_STRINGS_MAX = 8192


def _variable_strings(wire_json: str) -> tuple[tuple[_Path, str], ...]:
    """Where the strings holding '$' are in a template object (given as its wire JSON), found once
    per distinct content (a bounded cache keyed by the content itself, so never stale)."""
    hit = _VARIABLE_STRINGS.get(wire_json)
    if hit is not None:
        return hit
    found: list[tuple[_Path, str]] = []
    stack: list[tuple[_Path, Any]] = [((), json.loads(wire_json))]
    while stack:
        where, node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, item in items:
            if isinstance(item, str):
                if "$" in item:
                    found.append(((*where, key), item))
            elif isinstance(item, (dict, list)):
                stack.append(((*where, key), item))
    if len(_VARIABLE_STRINGS) >= _VARIABLE_STRINGS_MAX:
        _VARIABLE_STRINGS.pop(next(iter(_VARIABLE_STRINGS)))
    result = _VARIABLE_STRINGS[wire_json] = tuple(found)
    return result


def _substituted_wire(tmpl: TemplateObject, variables: Mapping[str, str]) -> dict[str, Any]:
    """substitute(tmpl.wire(), ...) without walking the object: a fresh copy from the wire JSON,
    then only the strings holding '$' are replaced. Raises _VariableError (no field path: the
    caller re-runs substitute() to name the field)."""
    text = tmpl.model_dump_json(by_alias=True, exclude_none=True)
    raw: dict[str, Any] = json.loads(text)
    for where, value in _variable_strings(text):
        node: Any = raw
        for key in where[:-1]:
            node = node[key]
        node[where[-1]] = _replace(value, variables)
    return raw


def _json_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_copy(v) for v in value]
    return value


def validate(ap: AccessPoint) -> list[TemplateError]:
    """Checks the CRD schema cannot express; every error names its field."""
    errors: list[TemplateError] = []
    seen: dict[tuple[str, str, str], int] = {}
    dummy = dict.fromkeys(VARIABLES, "x")
    for i, obj in enumerate(ap.spec.template):
        path = f"spec.template[{i}]"
        kind = TEMPLATE_KINDS[obj.kind]
        if not kind.accepts(obj.api_version):
            errors.append(
                TemplateError(
                    f"{path}.apiVersion",
                    f"{obj.api_version!r} is not an apiVersion of {obj.kind} "
                    f"(use {', '.join(f'{kind.group}/{v}' if kind.group else v for v in kind.versions)})",
                )
            )
        try:
            substitute(obj.wire(), dummy, path)
        except TemplateError as err:
            errors.append(err)
        ident = (obj.kind, obj.metadata.namespace or ap.namespace, obj.metadata.name)
        if ident in seen:
            errors.append(TemplateError(f"{path}.metadata.name", f"duplicates spec.template[{seen[ident]}]"))
        seen.setdefault(ident, i)
    return errors


Transform = Callable[[list[dict[str, Any]], ClusterFacts], list[dict[str, Any]]]


@dataclass(frozen=True)
class RenderContext:
    """What rendering needs beyond the AccessPoint and the cluster, built once per reconcile by the
    controller's context providers (federation/controller.py):

    - `transforms`: pure functions over one cluster's substituted objects (traffic policy into
      DestinationRules, exportTo, credentialName on Gateways), applied in order;
    - `generated`: objects meshfed generates per cluster (cross-cluster ServiceEntries, TLS Secrets);
      they get the same owner labels and hash as template objects.
    Overrides run after both, so users can still patch generated objects.
    """

    transforms: tuple[Transform, ...] = ()
    generated: Mapping[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)

    def merged(self, other: RenderContext) -> RenderContext:
        generated = {k: tuple(v) for k, v in self.generated.items()}
        for cluster, objs in other.generated.items():
            generated[cluster] = generated.get(cluster, ()) + tuple(objs)
        return RenderContext(self.transforms + other.transforms, generated)


EMPTY_CONTEXT = RenderContext()


@dataclass
class Rendered:
    objects: list[dict[str, Any]] = field(default_factory=list)
    errors: list[TemplateError] = field(default_factory=list)


def variables_for(ap: AccessPoint, cluster: ClusterFacts) -> dict[str, str]:
    return {
        "cluster": cluster.name,
        "zone": cluster.zone,
        "region": cluster.region,
        "namespace": ap.namespace,
        "name": ap.name,
    }


def render(ap: AccessPoint, cluster: ClusterFacts, hub: str, context: RenderContext = EMPTY_CONTEXT) -> Rendered:
    """The manifests `cluster` should carry for `ap`: substituted, overridden, labelled, hashed.

    Order: variable substitution -> context transforms -> generated objects -> overrides
    (accesspoint.overrides, all-or-nothing) -> owner labels and content hash, so an override can
    never remove meshfed's ownership marks.
    """
    owner = Owner(hub, ap.namespace, ap.name)
    variables = variables_for(ap, cluster)
    out = Rendered()
    substituted: list[dict[str, Any]] = []
    for i, tmpl in enumerate(ap.spec.template):
        path = f"spec.template[{i}]"
        try:
            raw = _substituted_wire(tmpl, variables)
        except _VariableError:
            try:  # the slow path names the field
                raw = substitute(tmpl.wire(), variables, path)
            except TemplateError as err:
                out.errors.append(err)
                continue
        meta = raw.get("metadata", {})
        substituted.append({
            "apiVersion": TEMPLATE_KINDS[tmpl.kind].api_version,
            "kind": tmpl.kind,
            "metadata": {
                "name": meta["name"],
                "namespace": meta.get("namespace") or ap.namespace,
                "labels": dict(meta.get("labels", {})),
                "annotations": dict(meta.get("annotations", {})),
            },
            "spec": raw.get("spec", {}),
        })
    if out.errors:
        return out
    for transform in context.transforms:
        substituted = transform(substituted, cluster)
    substituted += [_json_copy(o) for o in context.generated.get(cluster.name, ())]
    patched, problems = apply_overrides(substituted, ap.spec.overrides, cluster)
    if problems:
        out.errors = [TemplateError(str(p).split(": ", 1)[0], p.message) for p in problems]
        return out
    owner_labels = owner.labels()
    for obj in patched:
        meta = obj.setdefault("metadata", {})
        meta["labels"] = {**(meta.get("labels") or {}), **owner_labels}
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != HASH_ANNOTATION}
        meta["annotations"] = annotations
        annotations[HASH_ANNOTATION] = content_hash(obj)
        out.objects.append(obj)
    return out
