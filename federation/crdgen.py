"""CustomResourceDefinitions generated from the pydantic API models (the one source of truth).

Owns the translation of pydantic JSON Schema into Kubernetes structural OpenAPI v3 and the list
of meshfed's hub resources. Pure: `meshfed crds --out deploy/crds` writes the files; a unit test
fails when deploy/crds is stale.
"""

from __future__ import annotations

import copy
from typing import Any

from accesspoint.meta import DURATION_DOC, DURATION_PATTERN, GROUP, VERSION, Resource
from accesspoint.models import AccessPoint
from accesspoint.rollout import RolloutApproval
from accesspoint.tenancy import TenancyPolicy
from certs.models import Certificate, CertificateIssuer
from nameservice.models import DNSProvider, NameService
from placement.models import MemberCluster, PlacementPolicy

# Each issue's resources join this list; order is the order of files in deploy/crds.
RESOURCES: list[type[Resource]] = [MemberCluster, AccessPoint, CertificateIssuer, Certificate]
RESOURCES.append(PlacementPolicy)
RESOURCES += [NameService, DNSProvider]
RESOURCES.append(RolloutApproval)
RESOURCES.append(TenancyPolicy)

_DROP = {"title", "default", "examples"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _resolve({**target, **extra}, defs)
    return {k: _resolve(v, defs) for k, v in node.items() if k not in _DROP}


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """Rewrite JSON Schema constructs that structural schemas forbid."""
    node = dict(node)
    if "properties" in node:
        node["properties"] = {k: _structural(v) for k, v in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        node["items"] = _structural(node["items"])
    if isinstance(node.get("additionalProperties"), dict) and node["additionalProperties"]:
        node["additionalProperties"] = _structural(node["additionalProperties"])
    for key in ("anyOf", "oneOf"):
        if key in node:
            node[key] = [_structural(o) for o in node[key]]
    for key in ("anyOf", "oneOf"):
        if key not in node:
            continue
        options = [o for o in node.pop(key) if o.get("type") != "null"]
        types = {o.get("type") for o in options}
        if len(options) == 1:
            node = {**options[0], **node}
        elif types == {"integer", "string"}:
            node["x-kubernetes-int-or-string"] = True
            # No CEL for the string form: its cost multiplies with every enclosing list; the
            # controller validates it and reports the field.
        else:
            node["x-kubernetes-preserve-unknown-fields"] = True
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), int | float) and not isinstance(node.get(bound), bool):
            node[plain] = node[bound]  # JSON Schema 2020 number -> OpenAPI 3.0 boolean form
            node[bound] = True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("type") == "object" and node.get("additionalProperties") in ({}, True):
        node.pop("additionalProperties")
        node["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("additionalProperties") is False:
        node.pop("additionalProperties")
    if "type" not in node and not node.get("x-kubernetes-int-or-string") and "properties" not in node:
        node["x-kubernetes-preserve-unknown-fields"] = True
    if "properties" in node:
        node.setdefault("type", "object")
    if node.get("pattern") == DURATION_PATTERN:  # accesspoint.meta.Duration: its grammar, said once
        node["description"] = f"{node['description']} {DURATION_DOC}" if node.get("description") else DURATION_DOC
    return node


def openapi_schema(model: type[Resource]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    resolved = _resolve(raw, defs)
    props = resolved.get("properties", {})
    schema: dict[str, Any] = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": _structural(props["spec"]),
        },
    }
    if "status" in props:
        schema["properties"]["status"] = _structural(props["status"])
    if model.crd.root_rules:
        schema["x-kubernetes-validations"] = [dict(r) for r in model.crd.root_rules]
    return schema


def crd_manifest(model: type[Resource]) -> dict[str, Any]:
    info = model.crd
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": openapi_schema(model)},
        "additionalPrinterColumns": [c.wire() for c in info.printer_columns],
    }
    if info.status_subresource:
        version["subresources"] = {"status": {}}
    names: dict[str, Any] = {"kind": info.kind, "plural": info.plural, "singular": info.singular,
                             "listKind": f"{info.kind}List"}
    if info.short_names:
        names["shortNames"] = list(info.short_names)
    if info.categories:
        names["categories"] = list(info.categories)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{info.plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "meshfed"}},
        "spec": {"group": GROUP, "scope": info.scope, "names": names, "versions": [version]},
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd_manifest(m) for m in RESOURCES]
