"""The template kinds for gateway teams (Istio security, Sidecar, Telemetry, EnvoyFilter, Gateway API):
the kind table against the real CRDs, (group, kind) identity (Istio's vs the Gateway API's Gateway),
validation (apiVersion, the EnvoyFilter opt-in), rendering (variables, overrides, labels, hash),
plan/prune keys, revision, and the member's served-kind discovery."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from accesspoint.istioverdict import (
    ISTIO_GATEWAY_CONTROLLER,
    IstiodView,
    RouteVerdict,
    analyzer_messages,
    combine_verdicts,
    gateway_api_verdict,
    route_verdict,
)
from accesspoint.kinds import (
    GATEWAY_API,
    ISTIO_NET,
    MANAGED_KINDS,
    TEMPLATE_KIND_NAMES,
    TEMPLATE_KINDS,
    accepted_api_versions,
    display_name,
    kinds_named,
    template_kind,
)
from accesspoint.models import AccessPoint, TemplateKind
from accesspoint.ownership import HASH_ANNOTATION, OWNER_NAME
from accesspoint.plan import plan
from accesspoint.render import Renderer, key_of, render, validate
from accesspoint.revisions import revision_hash
from federation.members import Member, OwnedCache, Probe, served_kinds, served_resources
from fleet import kind_samples as samples
from placement.models import ClusterFacts, MemberCluster

HUB = "hub-1"
EAST = ClusterFacts(name="east-1", region="us-east", zone="us-east-a", ready=True)
WEST = ClusterFacts(name="west-1", region="us-west", zone="us-west-b", ready=True)
SHARED = Path(__file__).resolve().parents[3] / "shared" / "crds"
if not SHARED.exists():
    SHARED = Path("/work/shared/crds")


def make_ap(template: list[dict[str, Any]], **spec: Any) -> AccessPoint:
    return AccessPoint.model_validate({
        "metadata": {"name": "shop", "namespace": "payments", "generation": 1},
        "spec": {"template": template, **spec},
    })


def member_crds() -> list[dict[str, Any]]:
    docs = list(yaml.safe_load_all((SHARED / "istio" / "crd-all.gen.yaml").read_text()))
    for path in sorted((SHARED / "gateway-api").glob("*.yaml")):
        docs += list(yaml.safe_load_all(path.read_text()))
    return [d for d in docs if d and d.get("kind") == "CustomResourceDefinition"]


# ---- the kind table ----------------------------------------------------------------------------


@pytest.mark.skipif(not SHARED.exists(), reason="shared CRDs not available")
def test_every_template_kind_matches_its_real_crd() -> None:
    crds = {(c["spec"]["group"], c["spec"]["names"]["kind"]): c for c in member_crds()}
    for kind in TEMPLATE_KINDS.values():
        if not kind.group:
            continue
        crd = crds[kind.id]
        assert crd["spec"]["names"]["plural"] == kind.plural, kind
        assert crd["spec"]["scope"] == "Namespaced", kind
        served = [v["name"] for v in crd["spec"]["versions"] if v["served"]]
        assert kind.versions[0] in served, f"{kind.qualified}: meshfed writes {kind.versions[0]}, served {served}"
        assert set(kind.versions) <= set(served), f"{kind.qualified}: accepts {kind.versions}, served {served}"


def test_kind_names_are_the_crd_enum_and_gateway_names_two_kinds() -> None:
    assert TemplateKind.__args__ == TEMPLATE_KIND_NAMES  # type: ignore[attr-defined]
    assert len(TEMPLATE_KIND_NAMES) == len(TEMPLATE_KINDS) - 1
    assert [k.group for k in kinds_named("Gateway")] == [ISTIO_NET, GATEWAY_API]
    for name in ("AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication", "Sidecar", "Telemetry",
                 "EnvoyFilter", "HTTPRoute", "GRPCRoute", "ReferenceGrant"):
        assert len(kinds_named(name)) == 1, name


def test_template_kind_resolves_by_api_version() -> None:
    istio = template_kind("networking.istio.io/v1beta1", "Gateway")
    gwapi = template_kind("gateway.networking.k8s.io/v1beta1", "Gateway")
    assert istio is not None and istio.group == ISTIO_NET and istio.api_version == "networking.istio.io/v1"
    assert gwapi is not None and gwapi.group == GATEWAY_API and gwapi.api_version == "gateway.networking.k8s.io/v1"
    assert template_kind("security.istio.io/v1", "Gateway") is None
    assert template_kind("networking.istio.io/v1alpha3", "EnvoyFilter") is not None
    assert MANAGED_KINDS[("", "Secret")].plural == "secrets"


def test_display_names_keep_istio_gateway_bare() -> None:
    assert display_name(ISTIO_NET, "Gateway") == "Gateway"
    assert display_name(GATEWAY_API, "Gateway") == "Gateway.gateway.networking.k8s.io"
    assert display_name(GATEWAY_API, "HTTPRoute") == "HTTPRoute"
    assert "gateway.networking.k8s.io/v1" in accepted_api_versions("Gateway")


# ---- validation ------------------------------------------------------------------------------


def test_every_new_kind_validates_and_renders_with_variables() -> None:
    ap = make_ap(samples.all_new_kinds())
    assert validate(ap) == []
    out = render(ap, EAST, HUB)
    assert out.errors == []
    by_kind = {(key_of(o).group, o["kind"]): o for o in out.objects}
    assert len(by_kind) == len(samples.all_new_kinds())
    for obj in out.objects:
        kind = template_kind(obj["apiVersion"], obj["kind"])
        assert kind is not None and obj["apiVersion"] == kind.api_version
        assert obj["metadata"]["namespace"] == "payments"
        assert obj["metadata"]["labels"][OWNER_NAME] == "shop"
        assert HASH_ANNOTATION in obj["metadata"]["annotations"]
        assert "${" not in str(obj)
    assert by_kind[("security.istio.io", "AuthorizationPolicy")]["metadata"]["labels"]["meshfed.io/example"] == "east-1"
    assert by_kind[("security.istio.io", "PeerAuthentication")]["spec"]["selector"]["matchLabels"] == {
        "app": "backend-east-1"}
    assert by_kind[(GATEWAY_API, "HTTPRoute")]["spec"]["hostnames"] == ["app.us-east.example"]
    assert by_kind[(GATEWAY_API, "ReferenceGrant")]["spec"]["from"][0]["namespace"] == "payments"
    assert by_kind[("telemetry.istio.io", "Telemetry")]["metadata"]["labels"]["meshfed.io/zone"] == "us-east-a"
    west = {(key_of(o).group, o["kind"]): o for o in render(ap, WEST, HUB).objects}
    assert west[(GATEWAY_API, "Gateway")]["spec"]["listeners"][0]["hostname"] == "*.us-west.example"


def test_renderer_equals_render_for_the_new_kinds() -> None:
    ap = make_ap([*samples.all_new_kinds(), samples.envoy_filter()], allowEnvoyFilter=True)
    renderer = Renderer(ap, HUB)
    for cluster in (EAST, WEST):
        assert renderer.render(cluster).objects == render(ap, cluster, HUB).objects


def test_envoy_filter_needs_the_opt_in() -> None:
    template = [samples.authorization_policy(), samples.envoy_filter()]
    errors = validate(make_ap(template))
    assert [e.path for e in errors] == ["spec.template[1].kind"]
    assert "spec.allowEnvoyFilter" in str(errors[0]) and "EnvoyFilter" in str(errors[0])
    assert validate(make_ap(template, allowEnvoyFilter=True)) == []
    out = render(make_ap(template, allowEnvoyFilter=True), EAST, HUB)
    patch = out.objects[1]["spec"]["configPatches"][0]["patch"]["value"]
    assert patch["response_headers_to_add"][0]["header"]["value"] == "east-1"


def test_allow_envoy_filter_is_revisioned_and_its_default_changes_no_hash() -> None:
    ap = make_ap([samples.authorization_policy()])
    assert revision_hash(ap.spec) == revision_hash(make_ap([samples.authorization_policy()],
                                                            allowEnvoyFilter=False).spec)
    assert revision_hash(ap.spec) != revision_hash(make_ap([samples.authorization_policy()],
                                                            allowEnvoyFilter=True).spec)
    assert "allowEnvoyFilter" not in ap.spec.model_dump(by_alias=True, exclude_defaults=True)


@pytest.mark.parametrize(("obj", "fragment"), [
    ({**samples.authorization_policy(), "apiVersion": "networking.istio.io/v1"}, "use security.istio.io/v1"),
    ({**samples.http_route(), "apiVersion": "gateway.networking.k8s.io/v1alpha2"}, "gateway.networking.k8s.io/v1"),
    ({**samples.envoy_filter(), "apiVersion": "networking.istio.io/v1"}, "networking.istio.io/v1alpha3"),
    ({**samples.telemetry(), "apiVersion": "telemetry.istio.io/v1beta1"}, "telemetry.istio.io/v1alpha1"),
])
def test_wrong_api_version_of_a_new_kind_names_the_field(obj: dict[str, Any], fragment: str) -> None:
    errors = validate(make_ap([obj], allowEnvoyFilter=True))
    assert [e.path for e in errors] == ["spec.template[0].apiVersion"]
    assert fragment in str(errors[0])


def test_unknown_kind_is_refused_by_the_model() -> None:
    with pytest.raises(ValueError, match="kind"):
        make_ap([{"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": "w"}}])


# ---- Istio's Gateway and the Gateway API's Gateway: same kind name, two kinds ---------------------


def istio_gateway(name: str = "web") -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": name},
            "spec": {"selector": {"istio": "ingressgateway"},
                     "servers": [{"port": {"number": 8080, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}


def test_both_gateways_of_one_name_are_two_objects() -> None:
    ap = make_ap([istio_gateway("web"), samples.k8s_gateway("web")])
    assert validate(ap) == []
    out = render(ap, EAST, HUB)
    keys = [key_of(o) for o in out.objects]
    assert [(k.group, k.kind, k.name) for k in keys] == [(ISTIO_NET, "Gateway", "web"), (GATEWAY_API, "Gateway", "web")]
    assert str(keys[0]) == "Gateway payments/web"
    assert str(keys[1]) == "Gateway.gateway.networking.k8s.io payments/web"
    p = plan(out.objects, {})
    assert len(p.create) == 2
    # the same (group, kind, name) twice is still a duplicate
    dup = validate(make_ap([samples.k8s_gateway("web"), {**samples.k8s_gateway("web"),
                                                         "apiVersion": "gateway.networking.k8s.io/v1beta1"}]))
    assert [e.path for e in dup] == ["spec.template[1].metadata.name"]


def test_override_target_group_picks_one_gateway() -> None:
    patch = {"spec": {"listeners": [{"name": "http", "port": 9090, "protocol": "HTTP"}]}}
    ambiguous = make_ap([istio_gateway("web"), samples.k8s_gateway("web")],
                        overrides=[{"clusters": ["east-1"], "target": {"kind": "Gateway", "name": "web"},
                                    "mergePatch": patch}])
    out = render(ambiguous, EAST, HUB)
    assert len(out.errors) == 1 and "ambiguous: set target.group" in str(out.errors[0])
    ok = make_ap([istio_gateway("web"), samples.k8s_gateway("web")],
                 overrides=[{"clusters": ["east-1"], "mergePatch": patch,
                             "target": {"kind": "Gateway", "name": "web", "group": GATEWAY_API}}])
    east = render(ok, EAST, HUB)
    assert east.errors == []
    assert east.objects[1]["spec"]["listeners"][0]["port"] == 9090
    assert east.objects[0]["spec"]["servers"][0]["port"]["number"] == 8080
    assert render(ok, WEST, HUB).objects[1]["spec"]["listeners"][0]["port"] == 8080


def test_prune_removes_only_the_gateway_that_left_the_template() -> None:
    both = render(make_ap([istio_gateway("web"), samples.k8s_gateway("web"), samples.http_route()]), EAST, HUB)
    owned = {}
    for i, obj in enumerate(both.objects):
        served = copy.deepcopy(obj)
        served["metadata"].update({"uid": f"u{i}", "resourceVersion": str(10 + i)})
        owned[key_of(obj)] = served
    only_istio = render(make_ap([istio_gateway("web"), samples.http_route()]), EAST, HUB)
    p = plan(only_istio.objects, owned)
    assert [(k.group, k.kind, k.name, uid) for k, uid, _ in p.delete] == [(GATEWAY_API, "Gateway", "web", "u1")]
    assert p.create == [] and p.update == [] and p.unchanged == 2


# ---- the member: which kinds it serves ---------------------------------------------------------


def discovery(groups: dict[str, dict[str, list[str]]]) -> dict[str, Any]:
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "items": [
        {"metadata": {"name": g}, "versions": [
            {"version": v, "resources": [{"resource": r} for r in res]} for v, res in versions.items()]}
        for g, versions in groups.items()]}


def test_served_kinds_from_aggregated_discovery() -> None:
    found = served_resources(discovery({
        "networking.istio.io": {"v1": ["gateways", "virtualservices", "sidecars"], "v1alpha3": ["envoyfilters"]},
        "gateway.networking.k8s.io": {"v1": ["gateways", "httproutes"], "v1beta1": ["referencegrants"]},
    }))
    assert found is not None
    served = served_kinds(found)
    assert {("", "Service"), ("", "Secret"), (ISTIO_NET, "Gateway"), (ISTIO_NET, "Sidecar"),
            (ISTIO_NET, "EnvoyFilter"), (GATEWAY_API, "Gateway"), (GATEWAY_API, "HTTPRoute")} <= served
    # referencegrants only at v1beta1: meshfed writes v1, so not served; no security group at all
    assert (GATEWAY_API, "ReferenceGrant") not in served
    assert ("security.istio.io", "AuthorizationPolicy") not in served
    assert served_resources({"kind": "APIGroupList", "groups": []}) is None


def test_member_reports_the_kinds_it_does_not_serve_and_waits_only_for_served_ones() -> None:
    mc = MemberCluster.model_validate({"metadata": {"name": "m1"}, "spec": {
        "kubeconfigSecretRef": {"name": "k", "namespace": "meshfed-system"}, "region": "r", "zone": "z"}})
    member = Member(name="m1", spec=mc, hub_id=HUB, cache=OwnedCache(HUB))
    found = served_resources(discovery({"networking.istio.io": {"v1": ["gateways", "virtualservices"]}}))
    assert found is not None
    member.probe = Probe(reachable=True, ready=True, istio=True, served=served_kinds(found))
    objects = render(make_ap([istio_gateway(), samples.authorization_policy(), samples.http_route()]), EAST,
                     HUB).objects
    assert member.unserved(objects) == ["AuthorizationPolicy (security.istio.io/v1)",
                                        "HTTPRoute (gateway.networking.k8s.io/v1)"]
    member.client = object()  # type: ignore[assignment]  # usable() only checks that one exists
    assert not member.usable
    member.cache.synced |= {("", "Service"), ("", "Secret"), (ISTIO_NET, "Gateway")}
    assert not member.usable
    member.cache.synced.add((ISTIO_NET, "VirtualService"))
    assert member.usable


# ---- Istio's status on the Gateway API kinds feeds routeConfigured -----------------------------------



def served(obj: dict[str, Any], generation: int = 1, status: dict[str, Any] | None = None) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["metadata"] = {**out["metadata"], "namespace": "payments", "generation": generation}
    if status is not None:
        out["status"] = status
    return out


def cond(type_: str, status: str = "True", reason: str | None = None, generation: int = 1,
         message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason or type_, "message": message,
            "observedGeneration": generation, "lastTransitionTime": "2026-12-02T08:00:00Z"}


def gw_status(programmed: str = "True", generation: int = 1, reason: str | None = None) -> dict[str, Any]:
    return {"conditions": [cond("Accepted", generation=generation),
                           cond("Programmed", programmed, reason, generation)]}


def route_status(accepted: str = "True", resolved: str = "True", generation: int = 1, parent: str = "web",
                 reason: str | None = None, message: str = "") -> dict[str, Any]:
    return {"parents": [{"parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": parent},
                         "controllerName": ISTIO_GATEWAY_CONTROLLER,
                         "conditions": [cond("Accepted", accepted, reason, generation, message),
                                        cond("ResolvedRefs", resolved,
                                             None if resolved == "True" else "BackendNotFound", generation)]}]}


def test_gateway_api_verdict_is_istios_status() -> None:
    assert gateway_api_verdict([served(samples.authorization_policy())]) is None
    good = [served(samples.k8s_gateway("web"), status=gw_status()),
            served(samples.http_route("web"), status=route_status()),
            served(samples.grpc_route("grpc"), status=route_status())]
    verdict = gateway_api_verdict(good)
    assert verdict is not None and verdict.configured is True
    assert verdict.message == ("Istio reports 1 Gateway API Gateway(s) Programmed and 2 route(s) Accepted with "
                               "references resolved")
    # not programmed: the reason and message istiod wrote
    bad = [served(samples.k8s_gateway("web"), status=gw_status("False", reason="AddressNotAssigned")), good[1]]
    verdict = gateway_api_verdict(bad)
    assert verdict is not None and verdict.configured is False
    assert verdict.message == ("Gateway.gateway.networking.k8s.io payments/web: Programmed=False "
                               "AddressNotAssigned")
    # a route whose backend does not resolve / not accepted by its listener
    verdict = gateway_api_verdict([served(samples.http_route("web"), status=route_status(resolved="False"))])
    assert verdict is not None and verdict.configured is False
    assert "HTTPRoute payments/web: parent payments/web: ResolvedRefs=False BackendNotFound" in verdict.message
    verdict = gateway_api_verdict([served(samples.http_route("web"), status=route_status(
        accepted="False", reason="NoMatchingListenerHostname", message="no hostnames matched"))])
    assert verdict is not None and "Accepted=False NoMatchingListenerHostname: no hostnames matched" in verdict.message


def test_gateway_api_verdict_counts_only_the_current_generation_and_every_parent() -> None:
    stale = served(samples.http_route("web"), generation=2, status=route_status(generation=1))
    verdict = gateway_api_verdict([stale])
    assert verdict is not None and verdict.configured is False
    assert "Accepted reported for generation 1, not yet for 2" in verdict.message
    fresh = served(samples.http_route("web"))
    verdict = gateway_api_verdict([fresh])
    assert verdict is not None and verdict.configured is False
    assert verdict.message == "HTTPRoute payments/web: parent payments/web: not reported by istiod yet"
    two = served(samples.http_route("web"), status=route_status())
    two["spec"]["parentRefs"].append({"name": "other", "namespace": "istio-system"})
    verdict = gateway_api_verdict([two])
    assert verdict is not None and verdict.configured is False
    assert "parent istio-system/other: not reported by istiod yet" in verdict.message
    # a status written by another controller is not Istio's verdict
    foreign = served(samples.http_route("web"), status=route_status())
    foreign["status"]["parents"][0]["controllerName"] = "example.com/other-controller"
    verdict = gateway_api_verdict([foreign])
    assert verdict is not None and verdict.configured is False


def test_route_verdict_combines_the_istio_and_gateway_api_parts() -> None:
    t = RouteVerdict(configured=True, message="routes ACKed by 1/1 gateway proxies", synced=1, total=1)
    f = RouteVerdict(configured=False, message="HTTPRoute payments/web: ...")
    u = RouteVerdict(configured=None, message="istiod cannot be asked: down")
    assert combine_verdicts(None, None) is None
    assert combine_verdicts(t, None) == t
    both = combine_verdicts(t, RouteVerdict(configured=True, message="Istio reports ..."))
    assert both is not None and both.configured is True and both.message == "routes ACKed by 1/1 gateway proxies; " \
        "Istio reports ..." and both.proxies == "1/1"
    assert combine_verdicts(t, f) == RouteVerdict(configured=False, message=f.message, synced=1, total=1)
    undecided = combine_verdicts(u, t)
    assert undecided is not None and undecided.configured is None and undecided.message == u.message
    falsy = combine_verdicts(u, f)
    assert falsy is not None and falsy.configured is False
    # route_verdict: Gateway API objects only, no istiod view needed
    objs = [served(samples.k8s_gateway("web"), status=gw_status()), served(samples.http_route("web"),
                                                                           status=route_status())]
    verdict = route_verdict(objs, IstiodView(reachable=False, error="down"))
    assert verdict is not None and verdict.configured is True
    istio_gw = served(istio_gateway("web"))
    verdict = route_verdict([*objs, istio_gw], IstiodView(reachable=False, error="down"))
    assert verdict is not None and verdict.configured is None and verdict.message == "istiod cannot be asked: down"


def test_analyzer_messages_cover_every_istio_group() -> None:
    msg = {"validationMessages": [{"type": {"code": "IST0101"}, "level": "ERROR"}], "observedGeneration": 1}
    objs = [served(samples.authorization_policy(), status=msg), served(samples.telemetry(), status=msg),
            served(samples.http_route(), status=msg)]
    verdict = analyzer_messages(objs)
    assert [m.object for m in verdict.messages] == ["AuthorizationPolicy payments/deny-admin",
                                                    "Telemetry payments/access-log"]
