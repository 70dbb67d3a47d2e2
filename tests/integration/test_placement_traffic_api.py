"""Placement / overrides / traffic / cross-cluster objects against one real kube-apiserver.

The API server carries meshfed's generated CRDs and Istio's real CRDs, so its structural schemas
and CEL rules judge: the PlacementPolicy CRD (and its CEL rule on followWorkload), the overrides in
an AccessPoint (CEL: exactly one selector, exactly one patch kind), and every Istio object the
traffic compiler, crossref and visibility generate.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from accesspoint.crossref import CrossPort, GatewayEndpoint, cross_cluster_objects, federated_host
from accesspoint.traffic import TrafficPolicy, apply_traffic, compile_regions
from accesspoint.visibility import VisibilityPolicy, apply_visibility, export_to
from federation.kube import ApiError, KubeClient
from placement.models import ClusterFacts

pytestmark = pytest.mark.integration

REGIONS = ("us-east", "us-west", "eu-west")
ISTIO = "/apis/networking.istio.io/v1/namespaces/{ns}/{plural}"
PLURAL = {
    "ServiceEntry": "serviceentries",
    "WorkloadEntry": "workloadentries",
    "DestinationRule": "destinationrules",
    "VirtualService": "virtualservices",
}


@pytest.fixture
async def client(apiserver: Any) -> Any:
    c: KubeClient = await apiserver.admin_client()
    yield c
    await c.close()


async def new_namespace(client: KubeClient) -> str:
    name = f"pt-{uuid.uuid4().hex[:8]}"
    await client.create(
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        field_manager="test",
    )
    return name


async def create(client: KubeClient, obj: dict[str, Any], ns: str) -> dict[str, Any]:
    body = {**obj, "metadata": {**obj["metadata"], "namespace": ns}}
    if obj["apiVersion"] == "meshfed.io/v1alpha1":
        plural = {"PlacementPolicy": "placementpolicies", "AccessPoint": "accesspoints"}[obj["kind"]]
        path = f"/apis/meshfed.io/v1alpha1/namespaces/{ns}/{plural}"
    else:
        path = ISTIO.format(ns=ns, plural=PLURAL[obj["kind"]])
    return await client.create(path, body, field_manager="test")


async def test_placement_policy_crd(client: KubeClient) -> None:
    ns = await new_namespace(client)
    pp = {
        "apiVersion": "meshfed.io/v1alpha1",
        "kind": "PlacementPolicy",
        "metadata": {"name": "prod"},
        "spec": {
            "clusterSelector": {"matchLabels": {"env": "prod"}},
            "regions": ["us-east", "eu-west"],
            "zones": ["us-east-a"],
            "spread": {"perZone": 1, "maxClusters": 3},
            "tolerations": [{"key": "maintenance", "operator": "Exists", "effect": "NoSchedule"}],
            "excludeClusters": ["m9"],
            "followWorkload": {"namespace": "shop", "name": "checkout"},
        },
    }
    await create(client, pp, ns)
    bad = {**pp, "metadata": {"name": "bad"}, "spec": {"followWorkload": {"namespace": "shop"}}}
    with pytest.raises(ApiError) as info:
        await create(client, bad, ns)
    assert info.value.status == 422 and "exactly one of name or selector" in info.value.message
    bad = {**pp, "metadata": {"name": "bad2"}, "spec": {"spread": {"perZone": 0}}}
    with pytest.raises(ApiError) as info:
        await create(client, bad, ns)
    assert info.value.status == 422 and "perZone" in info.value.message


async def test_membercluster_mesh_role_crd(client: KubeClient) -> None:
    """spec.mesh (issue 21): role Remote needs primary, a primary needs role Remote; target Zone is accepted."""
    path = "/apis/meshfed.io/v1alpha1/memberclusters"
    name = f"mc-{uuid.uuid4().hex[:8]}"
    base = {"kubeconfigSecretRef": {"name": "k"}, "region": "r", "zone": "z"}
    ok = {"apiVersion": "meshfed.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": name},
          "spec": {**base, "mesh": {"role": "Remote", "primary": "p"}}}
    created = await client.create(path, ok, field_manager="test")
    assert created["spec"]["mesh"] == {"role": "Remote", "primary": "p"}
    for i, mesh in enumerate(({"role": "Remote"}, {"primary": "p"}, {"role": "Primary", "primary": "p"})):
        bad = {**ok, "metadata": {"name": f"{name}-bad{i}"}, "spec": {**base, "mesh": mesh}}
        with pytest.raises(ApiError) as info:
            await client.create(path, bad, field_manager="test")
        assert info.value.status == 422 and "primary is set exactly when role is Remote" in info.value.message
    bad = {**ok, "metadata": {"name": f"{name}-bad9"}, "spec": {**base, "mesh": {"role": "Replica"}}}
    with pytest.raises(ApiError) as info:
        await client.create(path, bad, field_manager="test")
    assert info.value.status == 422 and "spec.mesh.role" in info.value.message
    ns = await new_namespace(client)
    pp = {"apiVersion": "meshfed.io/v1alpha1", "kind": "PlacementPolicy", "metadata": {"name": "zones"},
          "spec": {"target": "Zone", "followWorkload": {"namespace": "shop", "name": "checkout"}}}
    assert (await create(client, pp, ns))["spec"]["target"] == "Zone"
    with pytest.raises(ApiError) as info:
        await create(client, {**pp, "metadata": {"name": "bad"}, "spec": {"target": "Region"}}, ns)
    assert info.value.status == 422 and "spec.target" in info.value.message


def access_point(overrides: list[dict[str, Any]], traffic: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "template": [
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": "checkout"},
                "spec": {"host": "checkout"},
            }
        ],
        "overrides": overrides,
    }
    if traffic is not None:
        spec["traffic"] = traffic
    return {
        "apiVersion": "meshfed.io/v1alpha1",
        "kind": "AccessPoint",
        "metadata": {"name": f"ap-{uuid.uuid4().hex[:6]}"},
        "spec": spec,
    }


async def test_access_point_overrides_and_traffic_crd(client: KubeClient) -> None:
    ns = await new_namespace(client)
    target = {"kind": "DestinationRule", "name": "checkout"}
    good = access_point(
        [
            {
                "regions": ["us-east"],
                "target": target,
                "mergePatch": {"spec": {"trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 5}}}}},
            },
            {
                "clusters": ["m1"],
                "target": target,
                "name": "timeouts",
                "jsonPatch": [
                    {"op": "add", "path": "/spec/trafficPolicy", "value": {"tls": {"mode": "SIMPLE"}}},
                    {"op": "remove", "path": "/spec/exportTo"},
                ],
            },
        ],
        {
            "locality": {
                "mode": "Drain",
                "drain": {"regions": ["us-west"]},
                "weighted": {"localWeight": 98, "remotes": [{"region": "eu-west", "weight": 2}]},
                "outlierDetection": {"consecutive5xxErrors": 3, "interval": "2s"},
            },
            "visibility": {"consumerNamespaces": ["web"], "maxExportTo": 8},
        },
    )
    created = await create(client, good, ns)
    assert created["spec"]["overrides"][1]["jsonPatch"][0]["value"] == {"tls": {"mode": "SIMPLE"}}
    cases = [
        (
            [{"clusters": ["m1"], "zones": ["z"], "target": target, "mergePatch": {}}],
            "exactly one of clusters",
        ),
        ([{"target": target, "mergePatch": {}}], "exactly one of clusters"),
        ([{"clusters": ["m1"], "target": target}], "exactly one of mergePatch or jsonPatch"),
        ([{"clusters": ["m1"], "target": target, "jsonPatch": [{"op": "bogus", "path": "/x"}]}], "bogus"),
    ]
    for overrides, needle in cases:
        with pytest.raises(ApiError) as info:
            await create(client, access_point(overrides), ns)
        assert info.value.status == 422 and needle in info.value.message, info.value.message
    for traffic, needle in [
        ({"locality": {"mode": "Sometimes"}}, "Sometimes"),
        ({"locality": {"weighted": {"localWeight": 101}}}, "localWeight"),
        ({"locality": {"weighted": {"remotes": [{"region": "us/east"}]}}}, "region"),
    ]:
        with pytest.raises(ApiError) as info:
            await create(client, access_point([], traffic), ns)
        assert info.value.status == 422 and needle in info.value.message, info.value.message


def gateways(hostnames: bool) -> list[GatewayEndpoint]:
    return [
        GatewayEndpoint(
            cluster=f"{r}-{z}",
            region=r,
            zone=f"{r}-{z}",
            address=f"gw-{r}-{z}.example.net" if hostnames else f"10.{i}.{j}.10",
        )
        for i, r in enumerate(REGIONS)
        for j, z in enumerate("ab")
    ]


@pytest.mark.parametrize("mode", ["endpoints", "workloadEntries"])
@pytest.mark.parametrize("hostnames", [False, True])
@pytest.mark.parametrize(
    "locality",
    [
        {"mode": "Weighted"},
        {"mode": "Weighted", "weighted": {"localWeight": 99, "remotes": [{"region": "us-west"}]}},
        {
            "mode": "Failover",
            "failover": {
                "rules": [{"from": "us-east", "to": "us-west"}, {"from": "us-west", "to": "us-east"}]
            },
        },
        {"mode": "Drain", "drain": {"regions": ["us-west"]}},
        {"mode": "Disabled"},
    ],
)
async def test_generated_istio_objects_are_accepted(
    client: KubeClient, mode: str, hostnames: bool, locality: dict[str, Any]
) -> None:
    ns = await new_namespace(client)
    policy = TrafficPolicy.model_validate(
        {"locality": locality, "visibility": {"consumerNamespaces": ["web", "mobile"]}}
    )
    fragments = compile_regions(policy, REGIONS)
    vis: VisibilityPolicy | None = policy.visibility
    for region in REGIONS:
        cluster = ClusterFacts(name=f"{region}-a", region=region, zone=f"{region}-a", ready=True)
        template = [
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": f"checkout-{region}", "namespace": ns},
                "spec": {"host": "checkout", "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}},
            },
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": f"checkout-{region}", "namespace": ns},
                "spec": {
                    "hosts": ["checkout.example.com"],
                    "gateways": ["istio-system/gw"],
                    "http": [{"route": [{"destination": {"host": federated_host("checkout", ns)}}]}],
                },
            },
        ]
        objects = apply_traffic(template, fragments[region])
        xref = cross_cluster_objects(
            f"checkout-{region}",
            ns,
            cluster,
            gateways(hostnames),
            [
                CrossPort(name="https", number=443),
                CrossPort(name="http", number=80, protocol="HTTP", target_port=8080),
            ],
            [federated_host(f"checkout-{region}", ns)],
            mode=mode,  # type: ignore[arg-type]
            workload_labels={"app": "checkout"},
            export_to=export_to(vis, ns, "istio-system"),
            traffic=fragments[region],
        )
        for obj in apply_visibility([*objects, *xref], vis, "istio-system"):
            stored = await create(client, obj, ns)
            assert stored["spec"] == obj["spec"], (obj["kind"], stored["spec"], obj["spec"])
