"""Rendering: AccessPoint template + one cluster's facts -> that cluster's desired manifests.

Pure and deterministic. Owns variable substitution (`${cluster}`, `${zone}`, `${region}`,
`${namespace}`, `${name}`; `$${x}` is a literal `${x}`), template validation that the CRD schema
cannot express, owner labels and the content-hash annotation. Imports accesspoint.* and
placement.models only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from accesspoint.kinds import TEMPLATE_KINDS
from accesspoint.models import AccessPoint
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


def substitute(value: Any, variables: Mapping[str, str], path: str) -> Any:
    """Replace ${var} in every string below `value`; raises TemplateError naming the field."""

    def one(text: str, where: str) -> str:
        if "$" not in text:
            return text

        def repl(m: re.Match[str]) -> str:
            escaped, var = m.group(1), m.group(2)
            if var is None:
                if m.group(3):
                    return m.group(0)  # an escaped `$${` without a closing brace stays as it is
                raise TemplateError(where, f"malformed variable in {text!r}: '${{' without a closing '}}'")
            if escaped:
                return "${" + var + "}"
            if var not in variables:
                raise TemplateError(
                    where, f"unknown variable ${{{var}}} (known: {', '.join('${' + v + '}' for v in VARIABLES)})"
                )
            return variables[var]

        return _VAR.sub(repl, text)

    return _walk_strings(value, path, one)


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
    substituted += [copy.deepcopy(o) for o in context.generated.get(cluster.name, ())]
    patched, problems = apply_overrides(substituted, ap.spec.overrides, cluster)
    if problems:
        out.errors = [TemplateError(str(p).split(": ", 1)[0], p.message) for p in problems]
        return out
    for obj in patched:
        meta = obj.setdefault("metadata", {})
        meta["labels"] = {**(meta.get("labels") or {}), **owner.labels()}
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != HASH_ANNOTATION}
        meta["annotations"] = annotations
        annotations[HASH_ANNOTATION] = content_hash(obj)
        out.objects.append(obj)
    return out
