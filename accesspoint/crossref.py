"""Cross-cluster reachability: the ServiceEntry / WorkloadEntry objects that give each member
endpoints for the AccessPoint's gateways in the other clusters, with their locality.

Owns the naming, labels and shape of those generated objects. Pure and deterministic (no I/O, no
clock; output independent of input order). Imports accesspoint.meta and placement.models only.

Shape, for member cluster C of AccessPoint `name` in `namespace`:
  * one ServiceEntry `meshfed-xref-<name>` with the federated `hosts`, `location: MESH_INTERNAL`,
    resolution STATIC when every address is an IP (DNS otherwise), and one endpoint per gateway
    VIP of the other placed clusters (plus C's own gateway when `include_local`, so a weighted
    policy has a local endpoint for its local share). Each endpoint carries
    `locality: <region>/<zone>` and the topology labels, which is what Istio's localityLbSetting
    weighs and fails over on;
  * mode "workloadEntries": the ServiceEntry selects WorkloadEntries `meshfed-xref-<name>-<cluster>`
    (one per gateway) instead of listing endpoints, and `workload_labels` are added to them, so a
    Kubernetes Service whose selector matches those labels also gets the remote endpoints;
  * optionally (when a compiled traffic fragment is passed) a DestinationRule per host carrying it.
Istio limits respected: hosts 1..256 and never "*", endpoints <= 4096, endpoint port names valid.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import Field

from accesspoint.meta import ApiModel
from placement.models import REGION_LABEL, ZONE_LABEL, ClusterFacts

ISTIO_API = "networking.istio.io/v1"
PREFIX = "meshfed-xref"
CROSSREF_LABEL = "meshfed.io/crossref"
CLUSTER_LABEL = "meshfed.io/cluster"
DEFAULT_DOMAIN = "meshfed.global"
_PORT_NAME = re.compile(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$")
MAX_ENDPOINTS = 4096
MAX_HOSTS = 256


class GatewayEndpoint(ApiModel):
    """Where one placed cluster's gateway for this AccessPoint can be reached (its VIP)."""

    cluster: str = Field(min_length=1)
    region: str = Field(min_length=1)
    zone: str = Field(min_length=1)
    address: str = Field(min_length=1, max_length=256, description="IP or DNS name of the gateway VIP.")
    network: str | None = None


class CrossPort(ApiModel):
    name: str = Field(min_length=1, max_length=62, pattern=_PORT_NAME.pattern)
    number: int = Field(ge=1, le=65535)
    protocol: str = "TLS"
    target_port: int | None = Field(default=None, ge=1, le=65535, alias="targetPort")


class CrossrefError(ValueError):
    pass


def federated_host(name: str, namespace: str, domain: str = DEFAULT_DOMAIN) -> str:
    """The mesh-wide host under which all clusters' gateways of an AccessPoint are reachable."""
    return f"{name}.{namespace}.{domain}"


@functools.lru_cache(maxsize=65536)
def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _labels(name: str, gw: GatewayEndpoint | None = None) -> dict[str, str]:
    labels = {CROSSREF_LABEL: name}
    if gw is not None:
        labels.update({CLUSTER_LABEL: gw.cluster, REGION_LABEL: gw.region, ZONE_LABEL: gw.zone})
    return labels


def _ports(ports: Sequence[CrossPort]) -> dict[str, int]:
    return {p.name: p.target_port or p.number for p in ports}


def cross_cluster_objects(
    name: str,
    namespace: str,
    cluster: ClusterFacts,
    gateways: Iterable[GatewayEndpoint],
    ports: Sequence[CrossPort],
    hosts: Sequence[str],
    *,
    include_local: bool = True,
    mode: Literal["endpoints", "workloadEntries"] = "endpoints",
    workload_labels: Mapping[str, str] | None = None,
    export_to: Sequence[str] | None = None,
    traffic: Mapping[str, Any] | None = None,
    memo: CrossrefMemo | None = None,
) -> list[dict[str, Any]]:
    """The cross-cluster objects for member `cluster` (see the module docstring).

    `gateways` are the gateway VIPs of every placed cluster (the local one is used only with
    `include_local`). Returns [] when there is nothing to point at. Raises CrossrefError on input
    Istio would reject (no/wildcard/too many hosts, duplicate ports, too many endpoints).

    `memo` (one AccessPoint over many clusters/regions): the ServiceEntry (or WorkloadEntries) for
    the same inputs is built once and shared, read-only, between the results; only the
    DestinationRule carrying the per-region `traffic` is new per call.
    """
    if not hosts or len(hosts) > MAX_HOSTS or any(h == "*" or not h for h in hosts):
        raise CrossrefError(f"hosts must be 1..{MAX_HOSTS} names, none of them '*'")
    if not ports:
        raise CrossrefError("at least one port is needed")
    if len({p.number for p in ports}) != len(ports) or len({p.name for p in ports}) != len(ports):
        raise CrossrefError("port names and numbers must be unique")
    by_cluster: dict[str, GatewayEndpoint] = {}
    for gw in gateways:
        if gw.cluster == cluster.name and not include_local:
            continue
        prev = by_cluster.get(gw.cluster)
        if prev is None or gw.model_dump_json() < prev.model_dump_json():
            by_cluster[gw.cluster] = gw  # duplicate entries: pick one independent of order
    eps = sorted(by_cluster.values(), key=lambda g: (g.region, g.zone, g.cluster))
    if not eps or all(g.cluster == cluster.name for g in eps):
        return []
    if len(eps) > MAX_ENDPOINTS:
        raise CrossrefError(f"{len(eps)} gateways exceed Istio's {MAX_ENDPOINTS} endpoints per ServiceEntry")
    se_name = f"{PREFIX}-{name}"
    key = (
        name, namespace, tuple((g.cluster, g.region, g.zone, g.address, g.network) for g in eps),
        tuple((p.name, p.number, p.protocol, p.target_port) for p in ports), tuple(hosts), mode,
        tuple(sorted((workload_labels or {}).items())), None if export_to is None else tuple(export_to),
    )
    shared = memo.get(key) if memo is not None else None
    out = list(shared) if shared is not None else _entries(name, namespace, se_name, eps, ports, hosts,
                                                            mode, workload_labels, export_to)
    if memo is not None and shared is None:
        memo[key] = tuple(out)
    if traffic is not None:
        for i, host in enumerate(sorted(set(hosts))):
            dr_spec: dict[str, Any] = {"host": host, "trafficPolicy": dict(traffic)}
            if export_to is not None:
                dr_spec["exportTo"] = list(export_to)
            out.append(
                {
                    "apiVersion": ISTIO_API,
                    "kind": "DestinationRule",
                    "metadata": {
                        "name": se_name if i == 0 else f"{se_name}-{i}",
                        "namespace": namespace,
                        "labels": _labels(name),
                    },
                    "spec": dr_spec,
                }
            )
    return out


# the inputs of the ServiceEntry part -> it (cross_cluster_objects' memo)
CrossrefMemo = dict[tuple[Any, ...], tuple[dict[str, Any], ...]]


def _entries(
    name: str,
    namespace: str,
    se_name: str,
    eps: Sequence[GatewayEndpoint],
    ports: Sequence[CrossPort],
    hosts: Sequence[str],
    mode: Literal["endpoints", "workloadEntries"],
    workload_labels: Mapping[str, str] | None,
    export_to: Sequence[str] | None,
) -> list[dict[str, Any]]:
    """The ServiceEntry (first) and, in workloadEntries mode, the WorkloadEntries."""
    resolution = "STATIC" if all(_is_ip(g.address) for g in eps) else "DNS"
    spec: dict[str, Any] = {
        "hosts": sorted(set(hosts)),
        "location": "MESH_INTERNAL",
        "resolution": resolution,
        "ports": [
            {"name": p.name, "number": p.number, "protocol": p.protocol}
            for p in sorted(ports, key=lambda p: p.number)
        ],
    }
    if export_to is not None:
        spec["exportTo"] = list(export_to)
    out: list[dict[str, Any]] = []
    port_map = _ports(ports)
    if mode == "endpoints":
        endpoints = []
        for g in eps:
            ep: dict[str, Any] = {
                "address": g.address,
                "locality": f"{g.region}/{g.zone}",
                "labels": _labels(name, g),
                "ports": dict(port_map),
            }
            if g.network:
                ep["network"] = g.network
            endpoints.append(ep)
        spec["endpoints"] = endpoints
    else:
        selector = {CROSSREF_LABEL: name, **(workload_labels or {})}
        spec["workloadSelector"] = {"labels": dict(sorted(selector.items()))}
        for g in eps:
            we_spec: dict[str, Any] = {
                "address": g.address,
                "locality": f"{g.region}/{g.zone}",
                "labels": dict(sorted({**_labels(name, g), **(workload_labels or {})}.items())),
                "ports": dict(port_map),
            }
            if g.network:
                we_spec["network"] = g.network
            out.append(
                {
                    "apiVersion": ISTIO_API,
                    "kind": "WorkloadEntry",
                    "metadata": {
                        "name": f"{se_name}-{g.cluster}",
                        "namespace": namespace,
                        "labels": _labels(name),
                    },
                    "spec": we_spec,
                }
            )
    se = {
        "apiVersion": ISTIO_API,
        "kind": "ServiceEntry",
        "metadata": {"name": se_name, "namespace": namespace, "labels": _labels(name)},
        "spec": spec,
    }
    out.insert(0, se)
    return out


def regions_with_endpoints(gateways: Iterable[GatewayEndpoint]) -> list[str]:
    """The regions the traffic compiler should consider present."""
    return sorted({g.region for g in gateways})
