"""Registering a member cluster on the hub: a kubeconfig Secret in meshfed-system and a MemberCluster.

Owns the documented way to register any cluster (`meshfed register`, and the local fleet through
the same function). Imports federation.kube only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from federation.kube import ApiError, KubeClient

HUB_NAMESPACE = "meshfed-system"


async def ensure_namespace(client: KubeClient, name: str) -> None:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    try:
        await client.create("/api/v1/namespaces", body, field_manager="meshfed-fleet")
    except ApiError as err:
        if err.status != 409:
            raise


async def register_member(hub: KubeClient, name: str, kubeconfig: str, region: str, zone: str,
                          labels: dict[str, str], istiod_url: str | None = None,
                          gateway_admin_url: str | None = None, *, istiod: Mapping[str, Any] | None = None,
                          gateway_stats: Mapping[str, Any] | None = None,
                          taints: Sequence[Mapping[str, Any]] | None = None,
                          mesh_primary: str | None = None) -> None:
    """The documented way to register any cluster: a kubeconfig Secret + a MemberCluster (with
    `spec.istiod` when the hub can read the cluster's istiod: `istiod_url` when reached directly, as in
    the local fleet, or `istiod` ({"url"} or {"service"}); `spec.gatewayStats` when its gateway Envoy's
    stats are readable: the Analysis gate reads them (`gateway_admin_url` or `gateway_stats`); `taints`;
    `spec.mesh` for an Istio remote of `mesh_primary`)."""
    await ensure_namespace(hub, HUB_NAMESPACE)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{name}-kubeconfig", "namespace": HUB_NAMESPACE},
        "type": "Opaque",
        "stringData": {"kubeconfig": kubeconfig},
    }
    await hub.apply(f"/api/v1/namespaces/{HUB_NAMESPACE}/secrets/{name}-kubeconfig", secret,
                    field_manager="meshfed-fleet")
    spec: dict[str, Any] = {
        "kubeconfigSecretRef": {"name": f"{name}-kubeconfig", "namespace": HUB_NAMESPACE, "key": "kubeconfig"},
        "region": region,
        "zone": zone,
    }
    if istiod_url or istiod:
        spec["istiod"] = {"url": istiod_url} if istiod_url else dict(istiod or {})
    if gateway_admin_url or gateway_stats:
        spec["gatewayStats"] = {"url": gateway_admin_url} if gateway_admin_url else dict(gateway_stats or {})
    if taints:
        spec["taints"] = [dict(t) for t in taints]
    if mesh_primary:
        spec["mesh"] = {"role": "Remote", "primary": mesh_primary}
    member = {"apiVersion": "meshfed.io/v1alpha1", "kind": "MemberCluster",
              "metadata": {"name": name, "labels": labels}, "spec": spec}
    await hub.apply(f"/apis/meshfed.io/v1alpha1/memberclusters/{name}", member, field_manager="meshfed-fleet")
