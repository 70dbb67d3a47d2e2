"""E2e: two tenants on one hub (issue 13), each acting through a ServiceAccount token that holds only
the tenant roles in its own hub namespace (deploy/rbac/people.yaml meshfed-tenant, and
approval-policy.yaml meshfed-approver for its own rollouts).

Tenant B owns `shop.tenancy.test` (AccessPoint with a TLS Gateway, its Certificate, a NameService on
a real BIND). Tenant A cannot place objects in kube-system or in B's namespace, cannot claim B's host
(AccessPoint, NameService, Certificate: all refused with the condition naming the owner), and none of
that makes a single write on any member (their own apiserver_request_total) nor a DNS UPDATE (the
zone serial). A cannot approve or abort B's rollout (the hub's RBAC). The TenancyPolicy lets A bind a
Gateway in istio-system, which lands there. Deleting B's objects frees the host: A's waiting
AccessPoint and NameService proceed.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import yaml
from dnsservers import BindServer, start_bind  # e2e/ is on sys.path for its test modules (no __init__.py)

from certs.ca import generate_ca
from federation.kube import ApiError, KubeClient
from fleet import HUB_NAMESPACE, Fleet, ensure_namespace
from fleet.testing import (
    REPO,
    apply_objects,
    condition,
    create_namespace,
    diff_breakdown,
    eventually,
    get_object,
    service_account_token,
    tls_gateway_template,
    token_kubeconfig,
    wait_condition,
    wait_status,
    write_breakdown,
)

FLEET = {"members": 2, "regions": 2, "zones": 2}
ZONE = "tenancy.test"
HOST = f"shop.{ZONE}"
AP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
NSVC = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/nameservices"
CERT = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/certificates"
RAP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/rolloutapprovals"
POLICIES = "/apis/meshfed.io/v1alpha1/tenancypolicies"
ISTIO = "/apis/networking.istio.io/v1/namespaces/{ns}/{plural}"
SVC = "/api/v1/namespaces/{ns}/services"


# ---- fixtures ----


@pytest.fixture(scope="module")
def bind() -> Iterator[BindServer]:
    with start_bind([ZONE]) as server:
        yield server


@pytest.fixture(scope="module")
async def hub_setup(hub: KubeClient, bind: BindServer) -> None:
    """What the platform team sets up: a DNSProvider (BIND), a CertificateIssuer (internal CA), the
    people roles. The tenancy policy is created by the test (a live change)."""
    await ensure_namespace(hub, HUB_NAMESPACE)
    tsig = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bind-tsig", "namespace": HUB_NAMESPACE},
            "type": "Opaque", "stringData": {"secret": bind.key_secret}}
    await hub.apply(f"/api/v1/namespaces/{HUB_NAMESPACE}/secrets/bind-tsig", tsig, field_manager="e2e")
    await hub.create("/apis/meshfed.io/v1alpha1/dnsproviders", {
        "apiVersion": "meshfed.io/v1alpha1", "kind": "DNSProvider", "metadata": {"name": "bind"},
        "spec": {"type": "rfc2136", "zone": ZONE,
                 "rfc2136": {"server": bind.host, "port": bind.port, "timeoutSeconds": 2,
                             "tsig": {"keyName": bind.key_name.rstrip("."), "algorithm": bind.key_algorithm,
                                      "secretRef": {"name": "bind-tsig", "key": "secret"}}}}}, field_manager="e2e")
    cert_pem, key_pem = generate_ca("meshfed e2e tenancy CA")
    ca = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
          "metadata": {"name": "tenancy-ca", "namespace": HUB_NAMESPACE},
          "data": {"tls.crt": base64.b64encode(cert_pem).decode(), "tls.key": base64.b64encode(key_pem).decode()}}
    await hub.create(f"/api/v1/namespaces/{HUB_NAMESPACE}/secrets", ca, field_manager="e2e")
    await hub.create("/apis/meshfed.io/v1alpha1/certificateissuers", {
        "apiVersion": "meshfed.io/v1alpha1", "kind": "CertificateIssuer", "metadata": {"name": "tenancy-ca"},
        "spec": {"ca": {"secretRef": {"name": "tenancy-ca", "namespace": HUB_NAMESPACE}},
                 "allowedDomains": [f"*.{ZONE}"]}}, field_manager="e2e")
    people = [d for d in yaml.safe_load_all((REPO / "deploy" / "rbac" / "people.yaml").read_text()) if d]
    await apply_objects(hub, people)


class Tenant:
    def __init__(self, ns: str, client: KubeClient, user: str) -> None:
        self.ns, self.client, self.user = ns, client, user


async def make_tenant(fleet: Fleet, hub: KubeClient) -> Tenant:
    """A hub namespace and a ServiceAccount there bound to meshfed-tenant and meshfed-approver (RoleBindings
    in that namespace only): its token is all the tenant acts with."""
    assert fleet.state is not None
    ns = await create_namespace(hub, prefix="tn-")
    await hub.create(f"/api/v1/namespaces/{ns}/serviceaccounts",
                     {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "team"}}, field_manager="e2e")
    for role in ("meshfed-tenant", "meshfed-approver"):
        await hub.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "team", "namespace": ns}]}, field_manager="e2e")
    token = await service_account_token(hub, ns, "team")
    user = f"system:serviceaccount:{ns}:team"
    client = await KubeClient.from_kubeconfig_dict(token_kubeconfig(fleet.state.hub, user, token), f"tenant-{ns}")
    return Tenant(ns, client, user)


@pytest.fixture(scope="module")
async def tenants(fleet: Fleet, hub: KubeClient) -> AsyncIterator[tuple[Tenant, Tenant]]:
    a, b = await make_tenant(fleet, hub), await make_tenant(fleet, hub)
    yield a, b
    await a.client.close()
    await b.client.close()


# ---- helpers ----


def service(name: str, namespace: str | None = None, lb: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, **({"namespace": namespace} if namespace else {})}
    spec: dict[str, Any] = {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    if lb:
        spec["type"] = "LoadBalancer"
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def http_gateway(name: str, host: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": meta,
            "spec": {"selector": {"istio": "ingressgateway"},
                     "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": [host]}]}}


def virtualservice(name: str, host: str, gateway: str, tag: str = "v1") -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": name},
            "spec": {"hosts": [host], "gateways": [gateway],
                     "http": [{"route": [{"destination": {"host": f"{name}.svc.cluster.local"}}],
                               "headers": {"response": {"set": {"x-tag": tag}}}}]}}


def accesspoint(ns: str, name: str, template: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": name, "namespace": ns},
            "spec": {"template": template}}


def nameservice(ns: str, name: str, fqdn: str, target: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "NameService", "metadata": {"name": name, "namespace": ns},
            "spec": {"fqdn": fqdn, "ttl": 30, "recordType": "A", "providerRef": {"name": "bind"}, "target": target}}


def kubectl(fleet: Fleet, *args: str) -> str:
    assert fleet.state is not None
    return subprocess.run(["kubectl", *args], capture_output=True, text=True, check=True,
                          env={**os.environ, "KUBECONFIG": str(fleet.state.hub.kubeconfig)}).stdout


async def resolve(bind: BindServer, name: str) -> set[str]:
    import dns.asyncquery
    import dns.message

    r = await dns.asyncquery.udp(dns.message.make_query(name, "A"), bind.host, port=bind.port, timeout=2)
    return {rd.to_text() for rr in r.answer for rd in rr}


async def soa_serial(bind: BindServer) -> int:
    import dns.asyncquery
    import dns.message

    r = await dns.asyncquery.udp(dns.message.make_query(ZONE, "SOA"), bind.host, port=bind.port, timeout=2)
    return int(r.answer[0][0].serial)


async def wait_resolves(bind: BindServer, name: str, values: set[str], timeout: float = 60) -> None:
    async def check() -> bool:
        got = await resolve(bind, name)
        if got != values:
            raise AssertionError(f"{name} resolves to {sorted(got)}, expected {sorted(values)}")
        return True

    await eventually(check, timeout, interval=0.1, message=f"{name} should resolve to {sorted(values)}")


async def refused(hub: KubeClient, path: str, reason: str, type_: str = "Accepted") -> str:
    st = await wait_condition(hub, path, type_, "False", reason, timeout=60)
    return str(condition(st, type_)["message"])


async def events(hub: KubeClient, ns: str, name: str) -> list[dict[str, Any]]:
    items = (await hub.request("GET", f"/api/v1/namespaces/{ns}/events"))["items"]
    return [e for e in items if e["involvedObject"]["name"] == name]


async def forbidden(call: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        await call
    assert info.value.status == 403, info.value
    return info.value


async def member_writes(members: dict[str, KubeClient]) -> dict[str, dict[str, int]]:
    return dict(zip(members, await asyncio.gather(*(write_breakdown(c) for c in members.values())), strict=True))


async def ready(hub: KubeClient, ns: str, name: str, clusters: int = 2) -> dict[str, Any]:
    def ok(st: dict[str, Any]) -> bool:
        return condition(st, "Ready").get("status") == "True" and \
            sum(1 for c in st.get("clusters") or [] if c.get("state") == "Applied") == clusters

    return await wait_status(hub, f"{AP.format(ns=ns)}/{name}", ok, timeout=90,
                             message=f"AccessPoint {ns}/{name} should be Ready in {clusters} clusters")


# ---- the test ----


async def test_two_tenants_stay_in_their_lane(
    fleet: Fleet, controller: Any, hub: KubeClient, members: dict[str, KubeClient], bind: BindServer,
    tenants: tuple[Tenant, Tenant],
) -> None:
    a, b = tenants
    # The tenants' tokens cannot touch the platform's objects.
    policy = {"apiVersion": "meshfed.io/v1alpha1", "kind": "TenancyPolicy", "metadata": {"name": f"team-{a.ns}"},
              "spec": {"namespaces": [a.ns], "targetNamespaces": [{"namespace": "istio-system", "kinds": ["Gateway"]}]}}
    await forbidden(a.client.create(POLICIES, policy, field_manager="tenant"))
    await forbidden(a.client.create("/apis/meshfed.io/v1alpha1/memberclusters",
                                    {"apiVersion": "meshfed.io/v1alpha1", "kind": "MemberCluster",
                                     "metadata": {"name": "rogue"}, "spec": {}}, field_manager="tenant"))
    await forbidden(a.client.create(AP.format(ns=b.ns), accesspoint(b.ns, "x", [service("x")]), field_manager="t"))

    # ---- B's host: an AccessPoint with a TLS Gateway (its Certificate), and a NameService ----
    b_template = [*tls_gateway_template(HOST, "shop-tls", name="shop"), virtualservice("shop", HOST, "shop")]
    await b.client.create(AP.format(ns=b.ns), accesspoint(b.ns, "shop", b_template), field_manager="tenant-b")
    st = await ready(hub, b.ns, "shop")
    vips = {c["vip"] for c in st["clusters"]}
    await b.client.create(NSVC.format(ns=b.ns), nameservice(b.ns, "shop", HOST, {"accessPointRef": {"name": "shop"}}),
                          field_manager="tenant-b")
    await wait_condition(hub, f"{NSVC.format(ns=b.ns)}/shop", "Ready", "True", timeout=60)
    await wait_resolves(bind, HOST, vips)
    await wait_condition(hub, f"{CERT.format(ns=b.ns)}/shop", "Issued", "True", timeout=60)
    await ready(hub, b.ns, "shop")  # the TLS Secret delivered
    await asyncio.sleep(2)  # trailing writes (Service status from the VIP allocator) settle

    writes_before, serial_before = await member_writes(members), await soa_serial(bind)

    # ---- A's refused attempts ----
    await a.client.create(AP.format(ns=a.ns), accesspoint(a.ns, "sys", [service("sys", "kube-system")]),
                          field_manager="tenant-a")
    await a.client.create(AP.format(ns=a.ns), accesspoint(a.ns, "intob", [service("intob", b.ns)]),
                          field_manager="tenant-a")
    a_template = [http_gateway("steal", HOST), virtualservice("steal", HOST, "steal"), service("steal", lb=True)]
    await a.client.create(AP.format(ns=a.ns), accesspoint(a.ns, "steal", a_template), field_manager="tenant-a")
    await a.client.create(NSVC.format(ns=a.ns), nameservice(a.ns, "steal", HOST, {"addresses": ["192.0.2.66"]}),
                          field_manager="tenant-a")
    await a.client.create(CERT.format(ns=a.ns), {
        "apiVersion": "meshfed.io/v1alpha1", "kind": "Certificate", "metadata": {"name": "steal", "namespace": a.ns},
        "spec": {"hosts": [HOST], "issuerRef": {"name": "tenancy-ca"}}}, field_manager="tenant-a")

    msg = await refused(hub, f"{AP.format(ns=a.ns)}/sys", "NamespaceNotAllowed")
    assert msg == (f"spec.template[0].metadata.namespace: namespace kube-system is not allowed for AccessPoints "
                   f"in {a.ns}")
    msg = await refused(hub, f"{AP.format(ns=a.ns)}/intob", "NamespaceNotAllowed")
    assert msg == f"spec.template[0].metadata.namespace: namespace {b.ns} is not allowed for AccessPoints in {a.ns}"
    msg = await refused(hub, f"{AP.format(ns=a.ns)}/steal", "HostConflict")
    assert f"host {HOST} is owned by namespace {b.ns}" in msg and f"AccessPoint {b.ns}/shop" in msg, msg
    assert msg.startswith("spec.template[0]: "), msg
    msg = await refused(hub, f"{NSVC.format(ns=a.ns)}/steal", "HostConflict", "Ready")
    assert f"spec.fqdn: host {HOST} is owned by namespace {b.ns}" in msg, msg
    msg = await refused(hub, f"{CERT.format(ns=a.ns)}/steal", "HostConflict", "Ready")
    assert f"spec.hosts[0]: host {HOST} is owned by namespace {b.ns}" in msg, msg
    for name, reason in (("sys", "NamespaceNotAllowed"), ("intob", "NamespaceNotAllowed"), ("steal", "HostConflict")):
        async def has_event(name: str = name, reason: str = reason) -> bool:
            return any(e["reason"] == reason and e["type"] == "Warning" for e in await events(hub, a.ns, name))

        await eventually(has_event, 30, message=f"{a.ns}/{name} should have a Warning {reason} Event")
    print(kubectl(fleet, "get", "accesspoints", "-n", a.ns))
    print(kubectl(fleet, "get", "nameservices,certificates", "-n", a.ns))

    # No member write, no DNS UPDATE, B's records untouched, no certificate for A.
    await asyncio.sleep(3)
    writes_after = await member_writes(members)
    assert {m: diff_breakdown(writes_before[m], writes_after[m]) for m in members} == {m: {} for m in members}
    print("member writes during the refused attempts:",
          {m: sum(diff_breakdown(writes_before[m], writes_after[m]).values()) for m in members})
    assert await soa_serial(bind) == serial_before
    assert await resolve(bind, HOST) == vips
    for m, client in members.items():
        assert await client.get(f"{SVC.format(ns='kube-system')}/sys") is None, m
        assert await client.get(f"{SVC.format(ns=b.ns)}/intob") is None, m
        assert await client.get(f"{ISTIO.format(ns=a.ns, plural='gateways')}/steal") is None, m
    cert = await get_object(hub, f"{CERT.format(ns=a.ns)}/steal")
    assert not (cert.get("status") or {}).get("serial")
    assert await hub.get(f"/api/v1/namespaces/{HUB_NAMESPACE}/secrets/mfcert.{a.ns}.steal") is None

    # ---- A cannot approve or abort B's rollout ----
    changed = [*tls_gateway_template(HOST, "shop-tls", name="shop"), virtualservice("shop", HOST, "shop", "v2")]
    await b.client.merge_patch(f"{AP.format(ns=b.ns)}/shop", {"spec": {"template": changed}})

    async def pending() -> dict[str, Any] | None:
        items = (await hub.list(RAP.format(ns=b.ns)))[0]
        return next((i for i in items if not (i.get("spec") or {}).get("decision")), None)

    gate = await eventually(pending, 60, message="B's rollout should wait for an approval")
    gate_path = f"{RAP.format(ns=b.ns)}/{gate['metadata']['name']}"
    await forbidden(a.client.merge_patch(gate_path, {"spec": {"decision": "Approved", "approver": a.user}}))
    await forbidden(a.client.merge_patch(f"{AP.format(ns=b.ns)}/shop",
                                         {"metadata": {"annotations": {"meshfed.io/abort": "x"}}}))
    # B itself may (its own approve verb, checked by the admission policy).
    await b.client.merge_patch(gate_path, {"spec": {"decision": "Approved", "approver": b.user}})

    async def released() -> bool:
        st = (await get_object(hub, f"{AP.format(ns=b.ns)}/shop")).get("status") or {}
        return (st.get("rollout") or {}).get("phase") in ("Progressing", "Succeeded", "Paused") and \
            bool((await get_object(hub, gate_path)).get("status", {}).get("phase") not in (None, "Pending"))

    await eventually(released, 60, message="B's approval should release the wave")

    # ---- the platform policy lets A bind its Gateway in istio-system ----
    await hub.create(POLICIES, policy, field_manager="platform")
    edge = [http_gateway("edge", f"edge.{ZONE}", "istio-system"), virtualservice("edge", f"edge.{ZONE}",
                                                                                 "istio-system/edge")]
    await a.client.create(AP.format(ns=a.ns), accesspoint(a.ns, "edge", edge), field_manager="tenant-a")
    await ready(hub, a.ns, "edge")
    for m, client in members.items():
        gw = await client.get(f"{ISTIO.format(ns='istio-system', plural='gateways')}/edge")
        assert gw is not None and gw["metadata"]["labels"]["meshfed.io/accesspoint-namespace"] == a.ns, m
    # Only the kinds the policy names: a Service there stays refused.
    await a.client.create(AP.format(ns=a.ns), accesspoint(a.ns, "edgesvc", [service("edgesvc", "istio-system")]),
                          field_manager="tenant-a")
    msg = await refused(hub, f"{AP.format(ns=a.ns)}/edgesvc", "NamespaceNotAllowed")
    assert "not allowed for Service objects of AccessPoints in" in msg, msg
    print(kubectl(fleet, "get", "tenancypolicies"))

    # ---- releasing: B deletes its AccessPoint and NameService; A's waiting claims proceed ----
    await b.client.delete(f"{NSVC.format(ns=b.ns)}/shop")
    await b.client.delete(f"{AP.format(ns=b.ns)}/shop")
    await wait_condition(hub, f"{AP.format(ns=a.ns)}/steal", "Accepted", "True", timeout=90)
    st = await ready(hub, a.ns, "steal")
    for m, client in members.items():
        assert await client.get(f"{ISTIO.format(ns=a.ns, plural='gateways')}/steal") is not None, m
    await wait_condition(hub, f"{NSVC.format(ns=a.ns)}/steal", "Ready", "True", timeout=60)
    await wait_resolves(bind, HOST, {"192.0.2.66"})
    await wait_condition(hub, f"{CERT.format(ns=a.ns)}/steal", "Issued", "True", timeout=60)
    print(kubectl(fleet, "get", "accesspoints", "-n", a.ns))
