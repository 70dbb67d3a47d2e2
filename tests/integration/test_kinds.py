"""The gateway-team kinds (Istio AuthorizationPolicy, PeerAuthentication, RequestAuthentication, Sidecar,
Telemetry, EnvoyFilter; Gateway API Gateway, HTTPRoute, GRPCRoute, ReferenceGrant) through the real
`meshfed controller` into real member API servers, whose CRD schemas judge every object.

Two kube-apiservers: "full" is the hub (meshfed's CRDs) and a member carrying every Istio and Gateway API
CRD; "partial" is a member with Istio's networking and the Gateway API CRDs but none of Istio's
security.istio.io ones. Per kind: the member's schema accepts the rendered object and refuses a bad one
(the cluster reports the API server's message); apply with variables and overrides; revision update;
prune; adoption refusal (a foreign object is never overwritten, adoptExisting takes it over); the
EnvoyFilter opt-in; Istio's and the Gateway API's Gateway of one name side by side; a kind the member does
not serve fails that cluster only, writing nothing there; an unknown kind is refused by the hub CRD.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest

from accesspoint.kinds import TEMPLATE_KINDS, Kind, api_path, template_kind
from accesspoint.ownership import HUB, MANAGED_BY, OWNER_NAME
from federation.kube import ApiError, KubeClient
from fleet import ClusterProc, apply_crds, load_member_crds, register_member
from fleet import kind_samples as samples
from fleet.testing import (
    ACCESSPOINTS,
    ControllerProcess,
    create_namespace,
    delete_accesspoints,
    eventually,
    grant_tenancy,
    single_apiserver,
    wait_status,
)

pytestmark = pytest.mark.integration

HUB_ID = "kinds-hub"
HTTPROUTE = TEMPLATE_KINDS[("gateway.networking.k8s.io", "HTTPRoute")]
NEW_KINDS = [k for k in TEMPLATE_KINDS.values() if k.kind not in
             ("Service", "VirtualService", "DestinationRule", "ServiceEntry", "WorkloadEntry")
             and not (k.kind == "Gateway" and k.group == "networking.istio.io")]


class Rig:
    def __init__(self, hub: KubeClient, full: KubeClient, partial: KubeClient) -> None:
        self.hub = hub
        self.members = {"full": full, "partial": partial}
        self.namespaces: list[str] = []

    async def namespace(self) -> str:
        """A fresh hub namespace that owns the sample hosts (`*.example`, including the Gateway API
        listener's wildcard: wildcards only by TenancyPolicy, issue 13); its AccessPoints are deleted
        after the test, so the next test's namespace can claim the same sample hosts."""
        ns = await create_namespace(self.hub, "kinds-")
        await grant_tenancy(self.hub, ns, domains=["*.example"])
        self.namespaces.append(ns)
        return ns


@pytest.fixture(scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    root = tmp_path_factory.mktemp("kinds")
    without_security = [c for c in load_member_crds() if c["spec"]["group"] != "security.istio.io"]
    started = await asyncio.gather(single_apiserver(root, "full", istio_crds=True),
                                   single_apiserver(root, "partial", meshfed_crds=False), return_exceptions=True)
    procs = [s for s in started if isinstance(s, ClusterProc)]
    ctl: ControllerProcess | None = None
    clients: list[KubeClient] = []
    try:
        for s in started:
            if isinstance(s, BaseException):
                raise s
        full, partial = procs
        clients = [await full.client(), await full.client(), await partial.client()]
        hub, full_client, partial_client = clients
        await apply_crds(partial_client, without_security)
        await register_member(hub, "full", full.kubeconfig.read_text(), "r1", "r1-a", {})
        await register_member(hub, "partial", partial.kubeconfig.read_text(), "r2", "r2-a", {})
        ctl = ControllerProcess(full.kubeconfig, root / "controller.log", hub_id=HUB_ID)
        ctl.start()
        yield Rig(hub, full_client, partial_client)
    finally:
        if ctl is not None:
            ctl.stop()
        for c in clients:
            await c.close()
        for p in procs:
            p.stop()


@pytest.fixture(autouse=True)
async def release_hosts(rig: Rig) -> AsyncIterator[None]:
    yield
    while rig.namespaces:
        await delete_accesspoints(rig.hub, rig.namespaces.pop(), timeout=30)  # claims go when deletion starts


def accesspoint(name: str, template: list[dict[str, Any]], clusters: list[str], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": name},
            "spec": {"template": template, "placement": {"clusterNames": clusters}, **spec}}


async def create_ap(rig: Rig, ns: str, body: dict[str, Any]) -> None:
    await rig.hub.create(ACCESSPOINTS.format(ns=ns), {**body, "metadata": {**body["metadata"], "namespace": ns}},
                         field_manager="test")


async def update_ap(rig: Rig, ns: str, name: str, spec: dict[str, Any]) -> None:
    await rig.hub.merge_patch(f"{ACCESSPOINTS.format(ns=ns)}/{name}", {"spec": spec})


def clusters_by_name(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in st.get("clusters") or []}


def cluster_in(name: str, state: str, revision: str | None = None) -> Any:
    def ok(st: dict[str, Any]) -> bool:
        c = clusters_by_name(st).get(name) or {}
        gen_ok = st.get("observedGeneration") is not None
        return gen_ok and c.get("state") == state and (revision is None or c.get("revision") == revision)
    return ok


def path_of(obj: dict[str, Any], ns: str) -> str:
    kind = template_kind(obj["apiVersion"], obj["kind"])
    assert kind is not None
    return api_path(kind, ns, obj["metadata"]["name"])


async def wait_status_of(rig: Rig, ns: str, name: str, ok: Any, timeout: float = 60.0) -> dict[str, Any]:
    return await wait_status(rig.hub, f"{ACCESSPOINTS.format(ns=ns)}/{name}", ok, timeout=timeout)


async def test_an_unknown_kind_is_refused_by_the_hub_crd(rig: Rig) -> None:
    ns = await rig.namespace()
    body = accesspoint("wasm", [{"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
                                 "metadata": {"name": "w"}, "spec": {}}], ["full"])
    with pytest.raises(ApiError) as info:
        await create_ap(rig, ns, body)
    assert info.value.status == 422 and "spec.template[0].kind" in info.value.message
    assert "WasmPlugin" in info.value.message


async def test_every_new_kind_is_applied_updated_pruned_and_deleted(rig: Rig) -> None:
    ns = await rig.namespace()
    template = [*samples.all_new_kinds(), samples.envoy_filter()]
    await create_ap(rig, ns, accesspoint("all", template, ["full"], allowEnvoyFilter=True))
    st = await wait_status_of(rig, ns, "all", cluster_in("full", "Applied"))
    full = clusters_by_name(st)["full"]
    assert full["objects"] == len(template), full
    member = rig.members["full"]
    for obj in template:
        got = await member.get(path_of(obj, ns))
        assert got is not None, f"{obj['kind']} missing on the member"
        labels = got["metadata"]["labels"]
        assert labels[MANAGED_BY] == "meshfed" and labels[HUB] == HUB_ID and labels[OWNER_NAME] == "all"
        assert "${" not in str(got["spec"]), got["spec"]
    ap_obj = await member.get(path_of(samples.authorization_policy(), ns))
    assert ap_obj is not None and ap_obj["metadata"]["labels"]["meshfed.io/example"] == "full"
    route = await member.get(path_of(samples.http_route(), ns))
    assert route is not None and route["spec"]["hostnames"] == ["app.r1.example"]
    kinds_seen = {(template_kind(o["apiVersion"], o["kind"]) or Kind("", "", ("",), "")).id for o in template}
    assert kinds_seen == {k.id for k in NEW_KINDS}

    # update (a new revision): a per-cluster override on the HTTPRoute and a changed AuthorizationPolicy
    before = full["revision"]
    changed = copy.deepcopy(template)
    changed[0] = samples.authorization_policy(paths=("/admin", "/admin/*", "/internal"))
    await update_ap(rig, ns, "all", {"template": changed, "overrides": [
        {"clusters": ["full"], "target": {"kind": "HTTPRoute", "name": "web"},
         "mergePatch": {"spec": {"hostnames": ["override.r1.example"]}}}]})
    st = await wait_status_of(rig, ns, "all", lambda s: cluster_in("full", "Applied")(s)
                              and clusters_by_name(s)["full"]["revision"] != before)

    async def updated() -> bool:
        pol = await member.get(path_of(changed[0], ns)) or {}
        rt = await member.get(path_of(samples.http_route(), ns)) or {}
        return (pol["spec"]["rules"][0]["to"][0]["operation"]["paths"][-1] == "/internal"
                and rt["spec"]["hostnames"] == ["override.r1.example"])
    await eventually(updated, 30, message="update reached the member")

    # prune: drop the Gateway API Gateway and the Telemetry from the template
    kept = [o for o in changed if o["kind"] not in ("Gateway", "Telemetry")]
    await update_ap(rig, ns, "all", {"template": kept})
    await wait_status_of(rig, ns, "all", lambda s: cluster_in("full", "Applied")(s)
                         and clusters_by_name(s)["full"]["objects"] == len(kept))
    assert await member.get(path_of(samples.k8s_gateway(), ns)) is None
    assert await member.get(path_of(samples.telemetry(), ns)) is None
    assert await member.get(path_of(samples.http_route(), ns)) is not None

    # deletion of the AccessPoint removes what it owns
    await rig.hub.delete(f"{ACCESSPOINTS.format(ns=ns)}/all")

    async def gone() -> bool:
        return all([await member.get(path_of(o, ns)) is None for o in kept])
    await eventually(gone, 30, message="member objects removed after the AccessPoint was deleted")


@pytest.mark.parametrize(("kind", "bad"), [
    ("AuthorizationPolicy", {**samples.authorization_policy(), "spec": {"action": "SOMETIMES"}}),
    ("HTTPRoute", {**samples.http_route(), "spec": {"parentRefs": [{"name": "web"}],
                                                    "rules": [{"matches": [{"path": {"type": "Sometimes"}}]}]}}),
    ("Telemetry", {**samples.telemetry(), "spec": {"accessLogging": [{"disabled": "no"}]}}),
])
async def test_the_member_schema_judges_the_new_kinds(rig: Rig, kind: str, bad: dict[str, Any]) -> None:
    ns = await rig.namespace()
    await create_ap(rig, ns, accesspoint("bad", [bad], ["full"]))
    st = await wait_status_of(rig, ns, "bad", cluster_in("full", "Failed"))
    error = clusters_by_name(st)["full"]["lastError"]
    assert error.startswith(f"{kind} {ns}/{bad['metadata']['name']}:"), error
    assert "Unsupported value" in error or "Invalid value" in error, error
    assert await rig.members["full"].get(path_of(bad, ns)) is None


async def test_a_foreign_object_is_never_overwritten_unless_adopted(rig: Rig) -> None:
    ns = await rig.namespace()
    member = rig.members["full"]
    policy = samples.authorization_policy("gate")
    foreign = copy.deepcopy(policy)
    foreign["metadata"] = {"name": "gate", "namespace": ns, "labels": {"team": "platform"}}
    foreign["spec"]["rules"][0]["to"][0]["operation"]["paths"] = ["/theirs"]
    await member.create(path_of(policy, ns).rsplit("/", 1)[0], foreign, field_manager="platform-team")
    route = samples.http_route("gate-route")
    await create_ap(rig, ns, accesspoint("gate", [policy, route], ["full"]))
    st = await wait_status_of(rig, ns, "gate", cluster_in("full", "Conflict"))
    error = clusters_by_name(st)["full"]["lastError"]
    assert f"AuthorizationPolicy {ns}/gate already exists" in error and "spec.adoptExisting" in error, error
    held = await member.get(path_of(policy, ns))
    assert held is not None and held["spec"]["rules"][0]["to"][0]["operation"]["paths"] == ["/theirs"]
    assert MANAGED_BY not in held["metadata"]["labels"]
    # another AccessPoint never takes an object meshfed owns for this one, even with adoptExisting
    await create_ap(rig, ns, accesspoint("thief", [route], ["full"], adoptExisting=True))
    st = await wait_status_of(rig, ns, "thief", cluster_in("full", "Conflict"))
    assert f"meshfed AccessPoint {ns}/gate" in clusters_by_name(st)["full"]["lastError"]
    # adoption: the AccessPoint asks for it
    await update_ap(rig, ns, "gate", {"adoptExisting": True})
    await wait_status_of(rig, ns, "gate", cluster_in("full", "Applied"))
    held = await member.get(path_of(policy, ns))
    assert held is not None and held["metadata"]["labels"][OWNER_NAME] == "gate"
    assert held["spec"]["rules"][0]["to"][0]["operation"]["paths"] == ["/admin", "/admin/*"]
    assert held["metadata"]["labels"]["team"] == "platform"  # what meshfed does not manage stays


async def test_envoy_filter_is_refused_without_the_opt_in(rig: Rig) -> None:
    ns = await rig.namespace()
    template = [samples.sidecar(), samples.envoy_filter()]
    await create_ap(rig, ns, accesspoint("ef", template, ["full"]))
    path = f"{ACCESSPOINTS.format(ns=ns)}/ef"
    st = await wait_status(rig.hub, path, lambda s: any(c["type"] == "Accepted" and c["status"] == "False"
                                                        for c in s.get("conditions") or []))
    accepted = next(c for c in st["conditions"] if c["type"] == "Accepted")
    assert accepted["reason"] == "InvalidSpec"
    assert "spec.template[1].kind" in accepted["message"] and "spec.allowEnvoyFilter" in accepted["message"]
    assert await rig.members["full"].get(path_of(template[0], ns)) is None  # nothing written
    await update_ap(rig, ns, "ef", {"allowEnvoyFilter": True})
    await wait_status_of(rig, ns, "ef", cluster_in("full", "Applied"))
    ef = await rig.members["full"].get(path_of(template[1], ns))
    assert ef is not None
    assert ef["spec"]["configPatches"][0]["patch"]["value"]["response_headers_to_add"][0]["header"]["value"] == "full"


async def test_istio_and_gateway_api_gateways_of_one_name(rig: Rig) -> None:
    ns = await rig.namespace()
    istio_gw = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "web"},
                "spec": {"selector": {"istio": "ingressgateway"},
                         "servers": [{"port": {"number": 8080, "name": "http", "protocol": "HTTP"},
                                      "hosts": ["web.example"]}]}}
    api_gw = samples.k8s_gateway("web")
    await create_ap(rig, ns, accesspoint("gws", [istio_gw, api_gw], ["full"], overrides=[
        {"clusters": ["full"], "target": {"kind": "Gateway", "name": "web", "group": "gateway.networking.k8s.io"},
         "mergePatch": {"metadata": {"labels": {"which": "gateway-api"}}}}]))
    st = await wait_status_of(rig, ns, "gws", cluster_in("full", "Applied"))
    assert clusters_by_name(st)["full"]["objects"] == 2
    member = rig.members["full"]
    a = await member.get(path_of(istio_gw, ns))
    b = await member.get(path_of(api_gw, ns))
    assert a is not None and b is not None and a["metadata"]["uid"] != b["metadata"]["uid"]
    assert "which" not in a["metadata"]["labels"] and b["metadata"]["labels"]["which"] == "gateway-api"
    # drop the Gateway API one: only it is pruned
    await update_ap(rig, ns, "gws", {"template": [istio_gw], "overrides": []})
    await wait_status_of(rig, ns, "gws", lambda s: cluster_in("full", "Applied")(s)
                         and clusters_by_name(s)["full"]["objects"] == 1)
    assert await member.get(path_of(api_gw, ns)) is None
    assert (await member.get(path_of(istio_gw, ns)) or {}).get("metadata", {}).get("uid") == a["metadata"]["uid"]


async def test_a_kind_the_member_does_not_serve_fails_that_cluster_only(rig: Rig) -> None:
    ns = await rig.namespace()
    template = [samples.http_route("shop"), samples.authorization_policy("shop")]
    await create_ap(rig, ns, accesspoint("shop", template, ["full", "partial"]))
    st = await wait_status_of(rig, ns, "shop", lambda s: cluster_in("full", "Applied")(s)
                              and cluster_in("partial", "Failed")(s))
    error = clusters_by_name(st)["partial"]["lastError"]
    assert "does not serve AuthorizationPolicy (security.istio.io/v1)" in error and "CRD" in error, error
    applied = next(c for c in st["conditions"] if c["type"] == "Applied")
    assert applied["status"] == "False" and "partial:" in applied["message"]
    # nothing at all was written there (not even the HTTPRoute the member does serve)
    partial = rig.members["partial"]
    assert await partial.get(path_of(template[0], ns)) is None
    assert (await partial.list(api_path(HTTPROUTE, ns)))[0] == []
    # the full member has both
    for obj in template:
        assert await rig.members["full"].get(path_of(obj, ns)) is not None
    # another AccessPoint of kinds the partial member serves lands there
    await create_ap(rig, ns, accesspoint("routes", [samples.http_route("only-route"), samples.sidecar()],
                                         ["partial"]))
    await wait_status_of(rig, ns, "routes", cluster_in("partial", "Applied"))
    assert await partial.get(path_of(samples.http_route("only-route"), ns)) is not None
    # the failing AccessPoint stays failed there and its condition names the cluster
    st = await wait_status_of(rig, ns, "shop", cluster_in("partial", "Failed"))
    assert "does not serve AuthorizationPolicy" in clusters_by_name(st)["partial"]["lastError"]
