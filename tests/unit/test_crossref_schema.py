"""Generated Istio objects (cross-cluster ServiceEntry/WorkloadEntry/DestinationRule, compiled
locality settings, exportTo) checked offline against Istio's real CRD schemas.

A small structural-schema validator: field names, types, enums, min/max, lengths, item/property
counts, required fields, and each CEL rule these CRDs carry, evaluated by a Python twin. A CEL rule
with no twin fails the test, so a new rule in a newer CRD file is noticed rather than skipped.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from accesspoint.crossref import CrossPort, GatewayEndpoint, cross_cluster_objects, federated_host
from accesspoint.traffic import TrafficPolicy, compile_locality
from accesspoint.visibility import VisibilityPolicy, apply_visibility, export_to
from placement.models import ClusterFacts

CRDS = Path(__file__).resolve().parents[3] / "shared" / "crds" / "istio" / "crd-all.gen.yaml"
if not CRDS.exists():  # the checkout layout: /work/main next to /work/shared
    CRDS = Path("/work/shared/crds/istio/crd-all.gen.yaml")
pytestmark = pytest.mark.skipif(not CRDS.exists(), reason="Istio CRDs not available")


def _ts(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _dur_ms(v: str) -> float:
    total = 0.0
    for num, unit in re.findall(r"([0-9.]+)(ms|s|m|h)", v):
        total += float(num) * {"ms": 1, "s": 1000, "m": 60000, "h": 3600000}[unit]
    return total


_PORT = re.compile(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$")
CEL: dict[str, Any] = {
    '!((has(self.addresses) ? self.addresses : []).exists(k, k.contains("/")) && !((has(self.resolution) ? '
    'self.resolution : "NONE") in ["STATIC", "NONE"]))': lambda s: (
        not (
            any("/" in a for a in s.get("addresses", []))
            and s.get("resolution", "NONE") not in ("STATIC", "NONE")
        )
    ),
    '!self.contains("*")': lambda s: "*" not in s,
    '((has(self.resolution) ? self.resolution : "") == "DNS_ROUND_ROBIN") ? ((has(self.endpoints) ? '
    "self.endpoints : []).size() <= 1) : true": lambda s: (
        s.get("resolution") != "DNS_ROUND_ROBIN" or len(s.get("endpoints", [])) <= 1
    ),
    '((has(self.resolution) ? self.resolution : "NONE") == "NONE") ? !has(self.endpoints) : true': lambda s: (
        s.get("resolution", "NONE") != "NONE" or "endpoints" not in s
    ),
    '(has(self.address) ? self.address : "").startsWith("unix://") ? !has(self.ports) : true': lambda s: (
        not _ts(s.get("address", "")).startswith("unix://") or "ports" not in s
    ),
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.endpoints) ? 1 : 0) <= 1": lambda s: (
        not ("workloadSelector" in s and "endpoints" in s)
    ),
    "0 < self && self <= 65535": lambda s: 0 < s <= 65535,
    "duration(self) >= duration('1ms')": lambda s: _dur_ms(s) >= 1,
    "has(self.address) || has(self.network)": lambda s: "address" in s or "network" in s,
    'self != "*"': lambda s: s != "*",
    'self.all(key, !key.contains("*"))': lambda s: all("*" not in k for k in s),
    "self.all(key, key.size() != 0)": lambda s: all(len(k) != 0 for k in s),
    'self.all(key, size(key) < 63 && key.matches("^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$"))': lambda s: (
        all(len(k) < 63 and _PORT.match(k) for k in s)
    ),
    "self.all(l1, self.exists_one(l2, l1.number == l2.number))": lambda s: all(
        sum(1 for b in s if b.get("number") == a.get("number")) == 1 for a in s
    ),
    'self.startsWith("unix://") ? !self.endsWith("/") : true': lambda s: (
        not s.startswith("unix://") or not s.endswith("/")
    ),
    'self.startsWith("unix://") ? (self.substring(7, 8) == "/" || self.substring(7, 8) == "@") : true': (
        lambda s: not s.startswith("unix://") or s[7:8] in ("/", "@")
    ),
}


@functools.cache
def schemas() -> dict[str, dict[str, Any]]:
    out = {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for doc in yaml.load_all(CRDS.read_text(), Loader=loader):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        kind = doc["spec"]["names"]["kind"]
        if doc["spec"]["group"] != "networking.istio.io":
            continue
        for version in doc["spec"]["versions"]:
            if version["name"] == "v1":
                out[kind] = version["schema"]["openAPIV3Schema"]
    return out


def _one_of_ok(node: dict[str, Any], value: dict[str, Any]) -> bool:
    def satisfies(option: dict[str, Any]) -> bool:
        if "required" in option:
            return all(k in value for k in option["required"])
        if "not" in option:
            return not any(satisfies(o) for o in option["not"].get("anyOf", []))
        return True

    return sum(satisfies(o) for o in node["oneOf"]) == 1


def validate(node: dict[str, Any], value: Any, path: str = "") -> list[str]:
    errs: list[str] = []
    if value is None:
        return [] if node.get("nullable") else [f"{path}: null not allowed"]
    typ = node.get("type")
    if node.get("x-kubernetes-int-or-string"):
        if not isinstance(value, int | str):
            errs.append(f"{path}: want int or string")
    elif typ == "object":
        if not isinstance(value, dict):
            return [f"{path}: want object, got {type(value).__name__}"]
        props = node.get("properties")
        for req in node.get("required", []):
            if req not in value:
                errs.append(f"{path}: missing required {req}")
        if "maxProperties" in node and len(value) > node["maxProperties"]:
            errs.append(f"{path}: more than {node['maxProperties']} properties")
        for k, v in value.items():
            if props is not None and k in props:
                errs += validate(props[k], v, f"{path}.{k}")
            elif isinstance(node.get("additionalProperties"), dict):
                errs += validate(node["additionalProperties"], v, f"{path}.{k}")
            elif not node.get("x-kubernetes-preserve-unknown-fields"):
                errs.append(f"{path}: unknown field {k!r}")
        if "oneOf" in node and not _one_of_ok(node, value):
            errs.append(f"{path}: oneOf violated")
    elif typ == "array":
        if not isinstance(value, list):
            return [f"{path}: want array"]
        if "maxItems" in node and len(value) > node["maxItems"]:
            errs.append(f"{path}: more than {node['maxItems']} items")
        if "minItems" in node and len(value) < node["minItems"]:
            errs.append(f"{path}: fewer than {node['minItems']} items")
        for i, item in enumerate(value):
            errs += validate(node.get("items", {}), item, f"{path}[{i}]")
    elif typ == "string":
        if not isinstance(value, str):
            return [f"{path}: want string, got {value!r}"]
        if "maxLength" in node and len(value) > node["maxLength"]:
            errs.append(f"{path}: longer than {node['maxLength']}")
        if "enum" in node and value not in node["enum"]:
            errs.append(f"{path}: {value!r} not in {node['enum']}")
    elif typ == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{path}: want integer, got {value!r}"]
        if "minimum" in node and value < node["minimum"]:
            errs.append(f"{path}: below {node['minimum']}")
        if "maximum" in node and value > node["maximum"]:
            errs.append(f"{path}: above {node['maximum']}")
    elif typ == "boolean" and not isinstance(value, bool):
        errs.append(f"{path}: want boolean")
    for rule in node.get("x-kubernetes-validations", []):
        twin = CEL.get(rule["rule"])
        if twin is None:
            errs.append(f"{path}: CEL rule without a Python twin: {rule['rule']}")
        elif not twin(value):
            errs.append(f"{path}: {rule['message']}")
    return errs


def check(obj: dict[str, Any]) -> list[str]:
    schema = schemas()[obj["kind"]]
    assert obj["apiVersion"] == "networking.istio.io/v1"
    return validate(schema["properties"]["spec"], obj["spec"], f"{obj['kind']}.spec")


# ---- fixtures -----------------------------------------------------------------------------------

REGIONS = ("us-east", "us-west", "eu-west")


def fleet_gateways(hostnames: bool = False) -> list[GatewayEndpoint]:
    out = []
    for r_i, r in enumerate(REGIONS):
        for z_i, z in enumerate("ab"):
            addr = f"gw-{r}-{z}.example.net" if hostnames else f"10.{r_i}.{z_i}.10"
            out.append(GatewayEndpoint(cluster=f"{r}-{z}", region=r, zone=f"{r}-{z}", address=addr))
    return out


PORTS = [
    CrossPort(name="https", number=443, protocol="TLS"),
    CrossPort(name="http", number=80, protocol="HTTP", target_port=8080),
]


def me(region: str = "us-east", zone: str = "a") -> ClusterFacts:
    return ClusterFacts(name=f"{region}-{zone}", region=region, zone=f"{region}-{zone}", ready=True)


# ---- tests --------------------------------------------------------------------------------------


def test_validator_catches_mistakes() -> None:
    """The checker itself: it must reject what the API server would reject."""
    bad_se = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "spec": {"hosts": ["*"], "resolution": "NONE", "endpoints": [{"address": "1.2.3.4"}], "bogus": 1},
    }
    errs = check(bad_se)
    assert any("hostname cannot be wildcard" in e for e in errs)
    assert any("NONE mode cannot set endpoints" in e for e in errs)
    assert any("unknown field 'bogus'" in e for e in errs)
    bad_dr = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "spec": {
            "host": "x",
            "trafficPolicy": {
                "loadBalancer": {"localityLbSetting": {"distrib": []}},
                "outlierDetection": {"interval": "0s"},
            },
        },
    }
    errs = check(bad_dr)
    assert any("distrib" in e for e in errs) and any("1ms" in e for e in errs)


@pytest.mark.parametrize("mode", ["endpoints", "workloadEntries"])
@pytest.mark.parametrize("hostnames", [False, True])
def test_crossref_objects_match_istio_schema(mode: str, hostnames: bool) -> None:
    cluster = me()
    host = federated_host("checkout", "shop")
    traffic = compile_locality(
        TrafficPolicy.model_validate({"locality": {"weighted": {"localWeight": 98}}}), cluster, REGIONS
    )
    objs = cross_cluster_objects(
        "checkout",
        "shop",
        cluster,
        fleet_gateways(hostnames),
        PORTS,
        [host],
        mode=mode,  # type: ignore[arg-type]
        workload_labels={"app": "checkout"},
        export_to=export_to(VisibilityPolicy(consumer_namespaces=["web"]), "shop", "istio-system"),
        traffic=traffic,
    )
    kinds = [o["kind"] for o in objs]
    assert kinds.count("ServiceEntry") == 1 and kinds.count("DestinationRule") == 1
    assert kinds.count("WorkloadEntry") == (6 if mode == "workloadEntries" else 0)
    for obj in objs:
        assert check(obj) == [], obj
    se = objs[0]
    assert se["spec"]["resolution"] == ("DNS" if hostnames else "STATIC")
    assert se["spec"]["exportTo"] == [".", "istio-system", "web"]
    localities = (
        [e["locality"] for e in se["spec"]["endpoints"]]
        if mode == "endpoints"
        else [o["spec"]["locality"] for o in objs if o["kind"] == "WorkloadEntry"]
    )
    assert sorted(localities) == sorted(f"{r}/{r}-{z}" for r in REGIONS for z in "ab")
    dr = next(o for o in objs if o["kind"] == "DestinationRule")
    assert dr["spec"]["host"] == host
    assert dr["spec"]["trafficPolicy"]["loadBalancer"]["localityLbSetting"]["distribute"] == [
        {"from": "us-east/*", "to": {"eu-west/*": 1, "us-east/*": 98, "us-west/*": 1}}
    ]


policy_st = st.sampled_from(
    [
        {"mode": "Weighted"},
        {"mode": "Weighted", "weighted": {"localWeight": 90, "remotes": [{"region": "us-west"}]}},
        {
            "mode": "Failover",
            "failover": {"rules": [{"from": "us-east", "to": "us-west"}]},
            "outlierDetection": {"interval": "10s", "consecutive5xxErrors": 2},
        },
        {"mode": "Drain", "drain": {"regions": ["us-west"]}},
        {"mode": "Disabled"},
    ]
)


@settings(max_examples=60, deadline=None)
@given(
    policy=policy_st, region=st.sampled_from(REGIONS), regions=st.sets(st.sampled_from(REGIONS), min_size=2)
)
def test_compiled_destination_rules_match_istio_schema(
    policy: dict[str, Any], region: str, regions: set[str]
) -> None:
    tp = TrafficPolicy.model_validate({"locality": policy})
    frag = compile_locality(tp, me(region), regions | {"us-east", "us-west"})
    dr = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "x", "namespace": "shop"},
        "spec": {"host": "checkout.shop.svc.cluster.local", "trafficPolicy": frag},
    }
    assert check(dr) == []


def test_visibility_on_template_objects_matches_schema() -> None:
    objs = [
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "v", "namespace": "s"},
            "spec": {
                "hosts": ["checkout.example.com"],
                "gateways": ["istio-system/gw"],
                "http": [{"route": [{"destination": {"host": "checkout"}}]}],
            },
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "d", "namespace": "s"},
            "spec": {"host": "checkout"},
        },
    ]
    names = [f"ns{i}" for i in range(40)]
    for pol in (
        None,
        VisibilityPolicy(consumer_namespaces=names[:5]),
        VisibilityPolicy(consumer_namespaces=names),
    ):
        for obj in apply_visibility(objs, pol, "istio-system"):
            assert check(obj) == []
            assert obj["spec"]["exportTo"] == ["*"] or len(obj["spec"]["exportTo"]) <= 16


def test_crossref_edges() -> None:
    from accesspoint.crossref import CrossrefError

    host = federated_host("checkout", "shop")
    gws = fleet_gateways()
    # only the local gateway: nothing to point at
    local_only = [g for g in gws if g.cluster == "us-east-a"]
    assert cross_cluster_objects("checkout", "shop", me(), local_only, PORTS, [host]) == []
    # excluding local: five remote endpoints
    se = cross_cluster_objects("checkout", "shop", me(), gws, PORTS, [host], include_local=False)[0]
    assert len(se["spec"]["endpoints"]) == 5
    assert all(e["address"] != "10.0.0.10" for e in se["spec"]["endpoints"])
    assert se["spec"]["endpoints"][0]["ports"] == {"https": 443, "http": 8080}
    # order-free
    assert cross_cluster_objects(
        "checkout", "shop", me(), list(reversed(gws)), PORTS, [host]
    ) == cross_cluster_objects("checkout", "shop", me(), gws, PORTS, [host])
    for bad_hosts in ([], ["*"]):
        with pytest.raises(CrossrefError):
            cross_cluster_objects("checkout", "shop", me(), gws, PORTS, bad_hosts)
    with pytest.raises(CrossrefError):
        cross_cluster_objects("checkout", "shop", me(), gws, [PORTS[0], PORTS[0]], [host])
    assert ipaddress.ip_address(se["spec"]["endpoints"][0]["address"])


@pytest.mark.parametrize("mode", ["endpoints", "workloadEntries"])
def test_crossref_memo_gives_the_same_objects_and_shares_the_service_entry(mode: str) -> None:
    gws = [GatewayEndpoint(cluster=f"c{i}", region=r, zone=f"{r}-a", address=f"10.0.0.{i + 1}")
           for i, r in enumerate(["us-east", "us-west", "eu-west", "us-east"])]
    ports = [CrossPort(name="https", number=443, protocol="TLS")]
    policy = TrafficPolicy.model_validate({"locality": {"mode": "Weighted"}})
    memo: dict[Any, Any] = {}
    results = []
    for gw in gws:
        cluster = ClusterFacts(name=gw.cluster, region=gw.region, zone=gw.zone)
        fragment = compile_locality(policy, cluster, [g.region for g in gws])
        plain = cross_cluster_objects("app", "shop", cluster, gws, ports, ["app.shop.global"], mode=mode,  # type: ignore[arg-type]
                                      export_to=[".", "web"], traffic=fragment)
        memoised = cross_cluster_objects("app", "shop", cluster, gws, ports, ["app.shop.global"], mode=mode,  # type: ignore[arg-type]
                                         export_to=[".", "web"], traffic=fragment, memo=memo)
        assert memoised == plain
        results.append(memoised)
    assert all(r[0] is results[0][0] for r in results)  # one ServiceEntry, shared (read-only)
    assert len(memo) == 1
