"""federation.crdgen: every generated CRD is a structural schema with printer columns, and
deploy/crds holds exactly what `meshfed crds` generates now."""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from accesspoint.meta import GROUP, VERSION
from cli.main import cmd_crds
from federation.crdgen import RESOURCES, all_crds, crd_manifest

CRDS = all_crds()
IDS = [c["metadata"]["name"] for c in CRDS]
DEPLOY_CRDS = Path(__file__).resolve().parents[2] / "deploy" / "crds"

FORBIDDEN = ("anyOf", "oneOf", "allOf", "not", "$ref", "$defs", "definitions", "default", "const", "title",
             "examples", "discriminator")
ALLOWED_TYPES = {"object", "array", "string", "integer", "number", "boolean"}


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below `node` (not property names), with a readable path."""
    yield path or ".", node
    for name, child in (node.get("properties") or {}).items():
        yield from nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}{{}}")


def structural_problems(schema: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for path, node in nodes(schema):
        for key in FORBIDDEN:
            if key in node:
                problems.append(f"{path}: {key}")
        open_ = node.get("x-kubernetes-preserve-unknown-fields") is True
        int_or_string = node.get("x-kubernetes-int-or-string") is True
        if "type" in node:
            if node["type"] not in ALLOWED_TYPES:
                problems.append(f"{path}: type {node['type']!r}")
            if int_or_string:
                problems.append(f"{path}: int-or-string with a type")
        elif not (open_ or int_or_string):
            problems.append(f"{path}: no type")
        if ("properties" in node or "additionalProperties" in node) and node.get("type") != "object":
            problems.append(f"{path}: fields on a non-object node")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: both properties and additionalProperties")
        if node.get("additionalProperties") is not None and not isinstance(node["additionalProperties"], dict):
            problems.append(f"{path}: additionalProperties {node['additionalProperties']!r}")
        if node.get("type") == "array" and not isinstance(node.get("items"), dict):
            problems.append(f"{path}: array without items")
        if node.get("type") == "object" and not (
            open_ or "properties" in node or "additionalProperties" in node or path == ".metadata"
        ):
            problems.append(f"{path}: object without properties (would prune everything)")
        for req in node.get("required") or []:
            if req not in (node.get("properties") or {}):
                problems.append(f"{path}: required {req!r} is not a property")
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            if bound in node and not isinstance(node[bound], bool):
                problems.append(f"{path}: {bound} must be a boolean in OpenAPI v3.0")
        for rule in node.get("x-kubernetes-validations") or []:
            if not rule.get("rule"):
                problems.append(f"{path}: empty CEL rule")
        if "enum" in node and node.get("type") == "string" and not all(isinstance(v, str) for v in node["enum"]):
            problems.append(f"{path}: non-string enum value")
    return problems


@pytest.mark.parametrize("crd", CRDS, ids=IDS)
def test_schema_is_structural(crd: dict[str, Any]) -> None:
    problems = structural_problems(schema_of(crd))
    assert problems == [], f"{crd['metadata']['name']} is not structural: {problems}"


def test_the_structural_check_catches_what_it_should() -> None:
    bad = {
        "type": "object",
        "required": ["spec", "gone"],
        "properties": {
            "spec": {"type": "object", "properties": {
                "a": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "b": {"type": "string", "default": "x"},
                "c": {"$ref": "#/$defs/C"},
                "d": {"type": "array"},
                "e": {"type": "object"},
                "f": {"type": "integer", "exclusiveMinimum": 0},
                "default": {"type": "string"},  # a field named "default" is fine
            }},
        },
    }
    assert structural_problems(bad) == [
        ".: required 'gone' is not a property",
        ".spec.a: anyOf", ".spec.a: no type",
        ".spec.b: default",
        ".spec.c: $ref", ".spec.c: no type",
        ".spec.d: array without items",
        ".spec.e: object without properties (would prune everything)",
        ".spec.f: exclusiveMinimum must be a boolean in OpenAPI v3.0",
    ]


@pytest.mark.parametrize("crd", CRDS, ids=IDS)
def test_root_shape(crd: dict[str, Any]) -> None:
    root = schema_of(crd)
    assert root["type"] == "object"
    assert set(root["properties"]) >= {"apiVersion", "kind", "metadata", "spec"}
    assert root["properties"]["metadata"] == {"type": "object"}  # metadata may not be restricted further
    assert "spec" in root["required"]


@pytest.mark.parametrize("crd", CRDS, ids=IDS)
def test_names_version_and_subresources(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    names = spec["names"]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1" and crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{names['plural']}.{GROUP}"
    assert spec["group"] == GROUP and spec["scope"] in ("Namespaced", "Cluster")
    assert names["listKind"] == f"{names['kind']}List"
    assert names["plural"] == names["plural"].lower() and names["singular"] == names["singular"].lower()
    assert "meshfed" in names["categories"]
    (version,) = spec["versions"]
    assert version["name"] == VERSION and version["served"] and version["storage"]
    if "status" in schema_of(crd)["properties"]:
        assert version["subresources"] == {"status": {}}


def resolves(schema: dict[str, Any], json_path: str) -> bool:
    node = schema
    for part in json_path.strip(".").split("."):
        if node.get("x-kubernetes-preserve-unknown-fields") or (node.get("type") == "object" and
                                                                 "properties" not in node and part):
            return True  # open object (metadata): anything may be there
        props = node.get("properties") or {}
        if part not in props:
            return False
        node = props[part]
    return True


@pytest.mark.parametrize("crd", CRDS, ids=IDS)
def test_printer_columns(crd: dict[str, Any]) -> None:
    (version,) = crd["spec"]["versions"]
    columns = version["additionalPrinterColumns"]
    assert columns, "every meshfed CRD carries printer columns"
    names = [c["name"] for c in columns]
    assert len(names) == len(set(names))
    assert columns[-1] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    for col in columns:
        assert col["type"] in ("string", "integer", "number", "boolean", "date")
        assert resolves(schema_of(crd), col["jsonPath"]), f"column {col['name']}: {col['jsonPath']} not in schema"


def test_every_resource_is_generated_once_in_order() -> None:
    assert [c["spec"]["names"]["kind"] for c in CRDS] == [m.crd.kind for m in RESOURCES]
    assert len(set(IDS)) == len(IDS)
    assert {c["spec"]["names"]["kind"] for c in CRDS} >= {"MemberCluster", "AccessPoint", "PlacementPolicy",
                                                          "RolloutApproval", "NameService", "DNSProvider",
                                                          "CertificateIssuer", "Certificate"}


def test_generation_is_deterministic() -> None:
    assert all_crds() == CRDS
    assert [yaml.safe_dump(crd_manifest(m), sort_keys=False) for m in RESOURCES] == [
        yaml.safe_dump(c, sort_keys=False) for c in CRDS]


def test_accesspoint_template_spec_is_open_and_kinds_are_an_enum() -> None:
    (ap,) = [c for c in CRDS if c["spec"]["names"]["kind"] == "AccessPoint"]
    item = schema_of(ap)["properties"]["spec"]["properties"]["template"]["items"]
    assert item["properties"]["spec"]["x-kubernetes-preserve-unknown-fields"] is True
    assert set(item["properties"]["kind"]["enum"]) == {
        "Service", "Gateway", "VirtualService", "DestinationRule", "ServiceEntry", "WorkloadEntry", "Sidecar",
        "EnvoyFilter", "AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication", "Telemetry",
        "HTTPRoute", "GRPCRoute", "ReferenceGrant"}


def test_deploy_crds_are_fresh(tmp_path: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        cmd_crds(argparse.Namespace(out=str(tmp_path)))
    generated = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    committed = {p.name: p.read_text() for p in DEPLOY_CRDS.glob("*.yaml")}
    stale = sorted(n for n in generated.keys() & committed.keys() if generated[n] != committed[n])
    missing = sorted(generated.keys() - committed.keys())
    extra = sorted(committed.keys() - generated.keys())
    assert not (stale or missing or extra), (
        f"deploy/crds is out of date with the models (stale: {stale}, missing: {missing}, "
        f"not generated: {extra}); run: make crds"
    )
