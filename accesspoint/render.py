"""Rendering: AccessPoint template + one cluster's facts -> that cluster's desired manifests.

Pure and deterministic. Owns variable substitution (`${cluster}`, `${zone}`, `${region}`,
`${namespace}`, `${name}`; `$${x}` is a literal `${x}`), template validation that the CRD schema
cannot express, owner labels and the content-hash annotation. Imports accesspoint.* and
placement.models only.

Two entry points with the same result: `render(ap, cluster, hub, context)` for one cluster, and
`Renderer(ap, hub, context).render(cluster)` for many clusters of one AccessPoint (the controller's
reconcile and the placement benchmark): the template is compiled once (the JSON of every object with
its `${var}` sites located, the variables each object uses, owner labels) and what does not change
between clusters is computed once: an object's substitution is shared by every cluster with the
same values of the variables it uses, and an object that reaches the last step unchanged (same
object, e.g. a Service without `${cluster}`, or a generated object shared by the context) is labelled
and hashed once. `_render_reference` is the straightforward implementation both are tested against.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from accesspoint.kinds import (
    ENVOY_FILTER_OPT_IN,
    accepted_api_versions,
    display_name,
    group_of,
    kinds_named,
    template_kind,
)
from accesspoint.meta import json_copy
from accesspoint.models import AccessPoint, TemplateObject
from accesspoint.overrides import OverrideMemo, apply_overrides
from accesspoint.ownership import HASH_ANNOTATION, Owner
from accesspoint.revisions import revision_hash
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


@dataclass(frozen=True, slots=True)  # slots: one per cached member object (64 bytes instead of 160)
class ObjectKey:
    """A member object's identity: kind, namespace, name and API group (Istio's Gateway and the
    Gateway API's share a kind name)."""

    kind: str
    namespace: str
    name: str
    group: str

    def __str__(self) -> str:
        return f"{display_name(self.group, self.kind)} {self.namespace}/{self.name}"


def key_of(obj: Mapping[str, Any]) -> ObjectKey:
    # Interned: a key is kept per cached member object, and its group would otherwise be a new string each.
    meta = obj.get("metadata") or {}
    return ObjectKey(sys.intern(str(obj.get("kind", ""))), sys.intern(str(meta.get("namespace", ""))),
                     sys.intern(str(meta.get("name", ""))), sys.intern(group_of(str(obj.get("apiVersion", "")))))


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


def validate(ap: AccessPoint) -> list[TemplateError]:
    """Checks the CRD schema cannot express; every error names its field."""
    errors: list[TemplateError] = []
    seen: dict[tuple[str, str, str, str], int] = {}
    dummy = dict.fromkeys(VARIABLES, "x")
    allowed = {ENVOY_FILTER_OPT_IN: ap.spec.allow_envoy_filter}
    for i, obj in enumerate(ap.spec.template):
        path = f"spec.template[{i}]"
        kind = template_kind(obj.api_version, obj.kind)
        if kind is None or not kind.accepts(obj.api_version):
            errors.append(
                TemplateError(
                    f"{path}.apiVersion",
                    f"{obj.api_version!r} is not an apiVersion of {obj.kind} "
                    f"(use {', '.join(accepted_api_versions(obj.kind))})",
                )
            )
        elif kind.opt_in is not None and not allowed.get(kind.opt_in, False):
            errors.append(
                TemplateError(
                    f"{path}.kind",
                    f"{obj.kind} is refused unless spec.{kind.opt_in} is true: it patches the generated "
                    "Envoy configuration directly, and a wrong patch can break the gateway for every "
                    "AccessPoint on it",
                )
            )
        try:
            substitute(obj.wire(), dummy, path)
        except TemplateError as err:
            errors.append(err)
        ident = (group_of(obj.api_version), obj.kind, obj.metadata.namespace or ap.namespace, obj.metadata.name)
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
      they get the same owner labels and hash as template objects;
    - `labels`: labels added to every object next to the owner labels (the shard label,
      federation/shards.py), part of the content hash.
    Overrides run after both, so users can still patch generated objects.
    """

    transforms: tuple[Transform, ...] = ()
    generated: Mapping[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)

    def merged(self, other: RenderContext) -> RenderContext:
        generated = {k: tuple(v) for k, v in self.generated.items()}
        for cluster, objs in other.generated.items():
            generated[cluster] = generated.get(cluster, ()) + tuple(objs)
        return RenderContext(self.transforms + other.transforms, generated, {**self.labels, **other.labels})


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


def _render_reference(
    ap: AccessPoint, cluster: ClusterFacts, hub: str, context: RenderContext = EMPTY_CONTEXT
) -> Rendered:
    """The straightforward rendering (see `render` for the order of the steps): every call walks
    the whole template. Renderer must return exactly this; it also produces the errors."""
    owner = Owner(hub, ap.namespace, ap.name)
    variables = variables_for(ap, cluster)
    out = Rendered()
    substituted: list[dict[str, Any]] = []
    for i, tmpl in enumerate(ap.spec.template):
        try:
            raw = substitute(tmpl.wire(), variables, f"spec.template[{i}]")
        except TemplateError as err:
            out.errors.append(err)
            continue
        substituted.append(_normalized(ap, tmpl, raw))
    if out.errors:
        return out
    for transform in context.transforms:
        substituted = transform(substituted, cluster)
    substituted += [json_copy(o) for o in context.generated.get(cluster.name, ())]
    patched, problems = apply_overrides(substituted, ap.spec.overrides, cluster)
    if problems:
        out.errors = [TemplateError(str(p).split(": ", 1)[0], p.message) for p in problems]
        return out
    owner_labels = {**context.labels, **owner.labels()}
    for obj in patched:
        meta = obj.setdefault("metadata", {})
        meta["labels"] = {**(meta.get("labels") or {}), **owner_labels}
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != HASH_ANNOTATION}
        meta["annotations"] = annotations
        annotations[HASH_ANNOTATION] = content_hash(obj)
        out.objects.append(obj)
    return out


def _normalized(ap: AccessPoint, tmpl: TemplateObject, raw: Mapping[str, Any]) -> dict[str, Any]:
    """A substituted template object as members get it: apiVersion of what meshfed writes, the
    AccessPoint's namespace by default, labels/annotations always present."""
    meta = raw.get("metadata", {})
    # validate() refuses an apiVersion of no kind; unvalidated, the first kind of that name is written.
    kind = template_kind(tmpl.api_version, tmpl.kind) or kinds_named(tmpl.kind)[0]
    return {
        "apiVersion": kind.api_version,
        "kind": tmpl.kind,
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace") or ap.namespace,
            "labels": dict(meta.get("labels", {})),
            "annotations": dict(meta.get("annotations", {})),
        },
        "spec": raw.get("spec", {}),
    }


_Piece = str | tuple[str]  # literal text, or (variable name,)


def _pieces(text: str) -> list[_Piece] | None:
    """`text` split the way _replace substitutes it; None when _replace would raise (the variables
    known and the syntax do not depend on the values, so this is decided once per template)."""
    out: list[_Piece] = []
    pos = 0
    for m in _VAR.finditer(text):
        if m.start() > pos:
            out.append(text[pos : m.start()])
        escaped, var = m.group(1), m.group(2)
        if var is None:
            if not m.group(3):
                return None
            out.append(m.group(0))
        elif escaped:
            out.append("${" + var + "}")
        elif var in VARIABLES:
            out.append((var,))
        else:
            return None
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    return out


_MARKER = re.compile(r'"\\ue000(\d+)\\ue000"')
_encode_string: Callable[[str], str] = json.encoder.encode_basestring_ascii
_PER_AP = frozenset({"namespace", "name"})  # the same for every cluster of one AccessPoint


def _split(text: str, sites: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """JSON text with markers 0..sites-1 (each at most once) -> the text between them, and the
    marker numbers in order."""
    split = _MARKER.split(text)
    order = tuple(int(n) for n in split[1::2])
    assert len(set(order)) == len(order) and set(order) <= set(range(sites))
    return tuple(split[0::2]), order


@dataclass(frozen=True)
class _CompiledObject:
    """One template object, normalized, with what does not depend on the cluster substituted: `base`
    (never mutated; its `${var}` sites that depend on the cluster hold markers) and, per such site,
    its path in `base` and its pieces. `hashed`/`hashed_order`: the canonical JSON content_hash
    reads (sorted keys, owner labels, no hash annotation) split at the sites, or None when that
    cannot be precomputed."""

    base: dict[str, Any]
    paths: tuple[_Path, ...]
    sites: tuple[tuple[_Piece, ...], ...]
    uses: tuple[str, ...]  # the variables the object uses per cluster, in VARIABLES order
    hashed: tuple[str, ...] | None
    hashed_order: tuple[int, ...]


def _labelled(obj: Mapping[str, Any], owner_labels: Mapping[str, str]) -> dict[str, Any]:
    """`obj` (not mutated) with the owner labels and without the hash annotation."""
    done = dict(obj)
    meta = dict(obj.get("metadata") or {})
    meta["labels"] = {**(meta.get("labels") or {}), **owner_labels}
    meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items() if k != HASH_ANNOTATION}
    done["metadata"] = meta
    return done


def _compile(ap: AccessPoint, tmpl: TemplateObject, owner_labels: Mapping[str, str]) -> _CompiledObject | None:
    """None when some string of the object cannot be substituted (the reference path names it)."""
    text = tmpl.model_dump_json(by_alias=True, exclude_none=True)
    if "\ue000" in text:  # the marker below: such (rare) text takes the reference path
        return None
    raw: Any = json.loads(text)
    per_ap = {"namespace": ap.namespace, "name": ap.name}
    paths: list[_Path] = []
    marks: list[tuple[_Piece, ...]] = []
    for where, value in _variable_strings(text):
        pieces = _pieces(value)
        if pieces is None:
            return None
        node = raw
        for key in where[:-1]:
            node = node[key]
        if all(isinstance(p, str) or p[0] in _PER_AP for p in pieces):
            node[where[-1]] = "".join(p if isinstance(p, str) else per_ap[p[0]] for p in pieces)
        elif where[0] == "apiVersion":  # not written: the kind's apiVersion is (still a valid template)
            node[where[-1]] = ""
        else:
            node[where[-1]] = f"\ue000{len(marks)}\ue000"
            paths.append(where)
            marks.append(tuple(p if isinstance(p, str) or p[0] not in _PER_AP else per_ap[p[0]] for p in pieces))
    base = _normalized(ap, tmpl, raw)
    hashed: tuple[str, ...] | None = None
    hashed_order: tuple[int, ...] = ()
    if "\ue000" not in str(base["metadata"]["namespace"]):  # `or ap.namespace` needs the value
        # ensure_ascii: the markers are the only non-ASCII text, "\ue000<n>\ue000" in the output.
        # Keys are never substituted, so the sorted key order does not depend on the values. A
        # site may be gone (a template's own content-hash annotation is dropped).
        canonical = json.dumps(_labelled(base, owner_labels), sort_keys=True, separators=(",", ":"))
        hashed, hashed_order = _split(canonical, len(marks))
    used = {p[0] for site in marks for p in site if isinstance(p, tuple)}
    return _CompiledObject(
        base, tuple(paths), tuple(marks), tuple(v for v in VARIABLES if v in used), hashed, hashed_order
    )


def _with_values(base: dict[str, Any], paths: tuple[_Path, ...], values: list[str]) -> dict[str, Any]:
    """`base` with the string at each path replaced, copying only the containers on those paths
    (the rest is shared with `base`, which is not mutated)."""
    copies: dict[int, Any] = {}
    root = dict(base)
    for path, value in zip(paths, values, strict=True):
        node: Any = root
        original: Any = base
        for key in path[:-1]:
            original = original[key]
            child = copies.get(id(original))
            if child is None:
                child = copies[id(original)] = original.copy()
                node[key] = child
            node = child
        node[path[-1]] = value
    return root


class Renderer:
    """`render` for one AccessPoint over many clusters, compiled once (see the module docstring).

    `Renderer(ap, hub, context).render(cluster) == render(ap, cluster, hub, context)` for every
    cluster. The objects it returns are read-only: they may share parts with each other, with other
    clusters' results of the same Renderer and with `context.generated` (so do `context.transforms`
    and the overrides, which never mutate their inputs). Neither `ap` nor the context may change
    while the Renderer is in use (the controller builds one per reconcile).
    """

    def __init__(self, ap: AccessPoint, hub: str, context: RenderContext = EMPTY_CONTEXT, *,
                 revision: str | None = None) -> None:
        """`revision`: `ap`'s revision_hash when the caller has it already (computed here otherwise)."""
        self.ap = ap
        self.hub = hub
        self.context = context
        self._owner_labels = {**context.labels, **Owner(hub, ap.namespace, ap.name).labels()}
        compiled = [_compile(ap, t, self._owner_labels) for t in ap.spec.template]
        # Any object with a variable error: every cluster gets the reference path's errors.
        self._objects: list[_CompiledObject] | None = (
            None if any(c is None for c in compiled) else [c for c in compiled if c is not None]
        )
        # (object index, values of the variables it uses) -> the substituted object (shared)
        self._substituted: dict[tuple[int, tuple[str, ...]], dict[str, Any]] = {}
        # id(substituted object) -> (it, its compiled form, its site values): its hash without
        # serializing it, if it reaches the last step unchanged.
        self._sites: dict[int, tuple[dict[str, Any], _CompiledObject, list[str]]] = {}
        # id(object before labels) -> (that object, the labelled and hashed object): an object met
        # again (shared substitution, generated object, memoised override) is finished once.
        self._finished: dict[int, tuple[Mapping[str, Any], dict[str, Any]]] = {}
        self._overridden: OverrideMemo = {}
        self._revision = revision

    @property
    def revision(self) -> str:
        """The AccessPoint's revision (accesspoint.revisions.revision_hash of its spec), computed once."""
        if self._revision is None:
            self._revision = revision_hash(self.ap.spec)
        return self._revision

    def _substitute(self, index: int, obj: _CompiledObject, variables: Mapping[str, str]) -> dict[str, Any]:
        key = (index, tuple([variables[v] for v in obj.uses]))
        hit = self._substituted.get(key)
        if hit is not None:
            return hit
        values = ["".join([p if isinstance(p, str) else variables[p[0]] for p in site]) for site in obj.sites]
        result = _with_values(obj.base, obj.paths, values)
        meta = result["metadata"]
        if not meta["namespace"]:  # a substituted namespace that came out empty: as _normalized
            result["metadata"] = {**meta, "namespace": self.ap.namespace}
        self._substituted[key] = result
        self._sites[id(result)] = (result, obj, values)
        return result

    def _finish(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        hit = self._finished.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        done = _labelled(obj, self._owner_labels)
        sites = self._sites.get(id(obj))
        if sites is not None and sites[0] is obj and sites[1].hashed is not None:
            compiled, values = sites[1], sites[2]
            assert compiled.hashed is not None
            parts = [compiled.hashed[0]]
            for n, chunk in zip(compiled.hashed_order, compiled.hashed[1:], strict=True):
                parts.append(_encode_string(values[n]))
                parts.append(chunk)
            digest = hashlib.sha256("".join(parts).encode()).hexdigest()[:16]  # == content_hash(done)
        else:
            digest = content_hash(done)
        done["metadata"]["annotations"][HASH_ANNOTATION] = digest
        self._finished[id(obj)] = (obj, done)  # holds `obj`, so its id is not reused meanwhile
        return done

    def render(self, cluster: ClusterFacts) -> Rendered:
        if self._objects is None:
            return _render_reference(self.ap, cluster, self.hub, self.context)
        variables = variables_for(self.ap, cluster)
        objects: list[dict[str, Any]] = [
            self._substitute(i, obj, variables) for i, obj in enumerate(self._objects)
        ]
        for transform in self.context.transforms:
            objects = transform(objects, cluster)
        objects += self.context.generated.get(cluster.name, ())
        patched, problems = apply_overrides(objects, self.ap.spec.overrides, cluster, memo=self._overridden)
        if problems:
            return Rendered(errors=[TemplateError(str(p).split(": ", 1)[0], p.message) for p in problems])
        return Rendered(objects=[self._finish(obj) for obj in patched])


def render(ap: AccessPoint, cluster: ClusterFacts, hub: str, context: RenderContext = EMPTY_CONTEXT) -> Rendered:
    """The manifests `cluster` should carry for `ap`: substituted, overridden, labelled, hashed.

    Order: variable substitution -> context transforms -> generated objects -> overrides
    (accesspoint.overrides, all-or-nothing) -> owner labels and content hash, so an override can
    never remove meshfed's ownership marks. The objects are the caller's (new, sharing nothing);
    for many clusters of one AccessPoint use Renderer.
    """
    rendered = Renderer(ap, hub, context).render(cluster)
    rendered.objects = [json_copy(o) for o in rendered.objects]
    return rendered
