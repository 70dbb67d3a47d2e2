"""accesspoint.istioverdict: selected proxies, the routeConfigured verdict and the analyzer summary, by tables;
federation.istiod's parsers of istiod's debug JSON; summarize with routes and analyzer messages."""

from __future__ import annotations

from typing import Any

import pytest

from accesspoint.istioverdict import (
    IstiodView,
    IstioMessage,
    ProxyConfig,
    ProxySync,
    WorkloadPod,
    XdsSync,
    analyzer_messages,
    bound_virtualservices,
    gateway_selectors,
    moves_routes,
    route_verdict,
    selected_proxies,
)
from accesspoint.meta import condition
from accesspoint.models import ClusterStatus
from accesspoint.ownership import HASH_ANNOTATION
from accesspoint.plan import plan
from accesspoint.render import key_of
from accesspoint.status import summarize
from federation.controller import _planned_kinds
from federation.istiod import config_paths, parse_syncz
from placement.models import ClusterDecision, IstiodAccess, MemberClusterSpec, PlacementDecision

NET = "networking.istio.io/v1"
VS_PATH = "/apis/networking.istio.io/v1/namespaces/shop/virtual-service/web"


def gw(name: str = "web-gw", ns: str = "shop", selector: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": NET, "kind": "Gateway", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"istio": "ingressgateway"} if selector is None else selector,
                     "servers": [{"port": {"number": 8080, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}


def vs(name: str = "web", ns: str = "shop", gateways: list[str] | None = None, **status: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": NET, "kind": "VirtualService",
                           "metadata": {"name": name, "namespace": ns, "generation": status.pop("gen", 1)},
                           "spec": {"hosts": ["web.example"], "gateways": gateways or ["web-gw"],
                                    "http": [{"route": [{"destination": {"host": "web"}}]}]}}
    if status:
        obj["status"] = status
    return obj


POD = WorkloadPod(name="gw-1", namespace="istio-system", labels={"istio": "ingressgateway"})
PODS = {"istio=ingressgateway": [POD]}
PID = "gw-1.istio-system"


def synced(pid: str = PID, changed_at: float = 5.0, **override: XdsSync) -> ProxySync:
    xds = {t: XdsSync(sent=f"{t}-n1", acked=f"{t}-n1") for t in ("cds", "eds", "lds", "rds")}
    xds.update(override)
    return ProxySync(id=pid, type="router", xds=xds, changed_at=changed_at)


def view(proxies: list[ProxySync] | None = None, configs: list[str] | None = None, **kw: Any) -> IstiodView:
    proxies = [synced()] if proxies is None else proxies
    cfg = {p.id: ProxyConfig(signature=p.signature(), configs=[VS_PATH] if configs is None else configs)
           for p in proxies}
    return IstiodView(**{"reachable": True, "proxies": {p.id: p for p in proxies}, "configs": cfg, "pods": PODS, **kw})


URL = "https://istio.io/v1.30/docs/reference/config/analysis/ist0101/"
MSG = {"documentationUrl": URL, "level": "ERROR", "type": {"code": "IST0101"}}
NACK = "Didn't find a registered implementation for 'istio.alpn'"

CASES: list[tuple[str, list[dict[str, Any]], IstiodView | None, dict[str, Any], bool | None, str, str]] = [
    ("all ACKed", [gw(), vs()], view(), {}, True, "routes ACKed by 1/1 gateway proxies", "1/1"),
    ("gateway-only AP", [gw()], view(configs=[]), {}, True, "routes ACKed by 1/1 gateway proxies", "1/1"),
    ("no view yet", [gw(), vs()], None, {}, None, "istiod not asked yet", "0/0"),
    ("istiod down", [gw(), vs()], IstiodView(reachable=False, error="connection refused"), {}, None,
     "istiod cannot be asked: connection refused", "0/0"),
    ("pods unknown", [gw(), vs()], view(pods={}), {}, None,
     "gateway workloads (istio=ingressgateway) not listed yet", "0/0"),
    ("no workload", [gw(selector={"istio": "other"}), vs()], view(pods={"istio=other": []}), {}, False,
     "no gateway workload matches the selector istio=other of Gateway shop/web-gw", "0/0"),
    ("empty selector", [gw(selector={}), vs()], view(), {}, False,
     "Gateway shop/web-gw has no spec.selector (it selects no gateway workload)", "0/0"),
    ("proxy not connected", [gw(), vs()], view(proxies=[]), {}, False,
     "gateway proxy gw-1.istio-system is not connected to istiod", "0/1"),
    ("NACK with Envoy's message", [gw(), vs()],
     view(proxies=[synced(lds=XdsSync(sent="n2", acked="n1", last_error=NACK))]), {}, False,
     f"gateway proxy gw-1.istio-system rejected (NACK) the LDS (listeners) push: {NACK}", "0/1"),
    ("push not ACKed", [gw(), vs()], view(proxies=[synced(rds=XdsSync(sent="n2", acked="n1"))]), {}, False,
     "gateway proxy gw-1.istio-system has not ACKed the RDS (routes) push yet", "0/1"),
    ("route of the VS missing", [gw(), vs()],
     view(configs=["/apis/networking.istio.io/v1/namespaces/x/virtual-service/y"]),
     {}, False, "no route of VirtualService shop/web in the config istiod pushed to gateway proxy gw-1.istio-system",
     "0/1"),
    ("dump for older nonces", [gw(), vs()],
     IstiodView(reachable=True, proxies={PID: synced()}, pods=PODS,
                configs={PID: ProxyConfig(signature="old", configs=[VS_PATH])}), {}, False,
     "the config istiod generated for gateway proxy gw-1.istio-system is not read yet", "0/1"),
    ("written after the last push, within settle", [gw(), vs()], view(), {"changed_at": 6.0, "now": 7.0}, False,
     "istiod has not pushed to gateway proxy gw-1.istio-system since the last change", "0/1"),
    ("written after the last push, settle passed", [gw(), vs()], view(), {"changed_at": 6.0, "now": 17.0}, True,
     "routes ACKed by 1/1 gateway proxies", "1/1"),
    ("pushed after the write", [gw(), vs()], view(), {"changed_at": 4.0, "now": 5.5}, True,
     "routes ACKed by 1/1 gateway proxies", "1/1"),
    ("VS bound to another gateway only", [gw(), vs(gateways=["istio-system/shared"])], view(configs=[]), {}, True,
     "routes ACKed by 1/1 gateway proxies", "1/1"),
    ("analyzer ERROR on a VS naming an unknown gateway", [gw(), vs(gateways=["istio-system/typo"], observedGeneration=1,
                                                                   validationMessages=[MSG])],
     view(configs=[]), {}, False, "Istio's analyzer reports IST0101 on VirtualService shop/web", "1/1"),
    ("stale analyzer ERROR is no verdict", [gw(), vs(gen=2, observedGeneration=1, validationMessages=[MSG])], view(),
     {}, True, "routes ACKed by 1/1 gateway proxies", "1/1"),
    ("analyzer WARNING does not block",
     [gw(), vs(observedGeneration=1, validationMessages=[{**MSG, "level": "WARNING"}])], view(), {}, True,
     "routes ACKed by 1/1 gateway proxies", "1/1"),
    ("two proxies, one missing", [gw(), vs()],
     view(pods={"istio=ingressgateway": [POD, WorkloadPod(name="gw-2", namespace="istio-system",
                                                          labels={"istio": "ingressgateway"})]}),
     {}, False, "gateway proxy gw-2.istio-system is not connected to istiod", "1/2"),
]


@pytest.mark.parametrize(("objects", "the_view", "kw", "configured", "message", "proxies"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_route_verdict(objects: list[dict[str, Any]], the_view: IstiodView | None, kw: dict[str, Any],
                       configured: bool | None, message: str, proxies: str) -> None:
    verdict = route_verdict(objects, the_view, **kw)
    assert verdict is not None
    assert (verdict.configured, verdict.message, verdict.proxies) == (configured, message, proxies)


def test_not_evaluated_without_gateway() -> None:
    assert route_verdict([vs()], view()) is None


def test_selection_and_binding() -> None:
    objs = [gw(), gw("other", "istio-system", {"app": "x"}), vs(gateways=["web-gw", "istio-system/other", "mesh"]),
            vs("w2", "shop", ["shop/web-gw"])]
    assert gateway_selectors(objs) == {"istio=ingressgateway", "app=x"}
    pods = {"istio=ingressgateway": [POD], "app=x": [WorkloadPod(name="p", namespace="a", labels={"app": "x"}),
                                                     WorkloadPod(name="q", namespace="a", labels={"app": "y"})]}
    sel = selected_proxies(objs, pods)
    assert sel.proxies == {PID: ["shop/web-gw"], "p.a": ["istio-system/other"]} and not sel.unmatched
    bound = bound_virtualservices(objs)
    assert [v["metadata"]["name"] for v in bound[("shop", "web-gw")]] == ["web", "w2"]
    assert [v["metadata"]["name"] for v in bound[("istio-system", "other")]] == ["web"]




@pytest.mark.parametrize(("obj", "messages", "stale"), [
    (vs(), [], []),
    (vs(validationMessages=[MSG, MSG], observedGeneration="1"),
     [IstioMessage(object="VirtualService shop/web", code="IST0101", level="ERROR", documentation_url=URL)], []),
    (vs(gen=3, validationMessages=[MSG], observedGeneration="2"), [], ["VirtualService shop/web"]),
    (vs(gen=3, observedGeneration="2"), [], []),  # cleared: nothing to report
    (vs(validationMessages=[MSG]), [], ["VirtualService shop/web"]),  # no observedGeneration: not current
    ({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "shop", "generation": 1},
      "status": {"validationMessages": [MSG], "observedGeneration": 1}}, [], []),
], ids=["clean", "current", "stale after in-place fix", "cleared", "no observedGeneration", "not an Istio kind"])
def test_analyzer_messages(obj: dict[str, Any], messages: list[IstioMessage], stale: list[str]) -> None:
    verdict = analyzer_messages([obj])
    assert (verdict.messages, verdict.stale) == (messages, stale)


def test_drift_correction_ignores_istio_status() -> None:
    desired = vs()
    owned = vs(validationMessages=[MSG], observedGeneration="1")
    owned["metadata"]["uid"], owned["metadata"]["resourceVersion"] = "u1", "7"
    assert plan([desired], {key_of(owned): owned}).empty


def _owned(obj: dict[str, Any], digest: str) -> dict[str, Any]:
    """`obj` as the member holds it, rendered with content hash `digest`."""
    meta = {**obj["metadata"], "annotations": {HASH_ANNOTATION: digest}, "uid": f"u-{digest}", "resourceVersion": "7"}
    return {**obj, "metadata": meta}


def test_a_renewed_certificate_alone_does_not_count_as_a_route_write() -> None:
    """A certificate renewal rewrites only the credential Secret, which istiod sends over SDS: no CDS/LDS/RDS
    nonce moves, so it must not start the settle wait (routeConfigured stays True; seen in e2e/test_mesh_traffic
    as Ready flapping to RoutesNotConfigured for `settle` seconds after every renewal)."""
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": "shop-tls", "namespace": "istio-system"}, "data": {"tls.crt": "bmV3"}}
    gateway = gw()
    owned = {key_of(o): o for o in (_owned(gateway, "g1"), _owned(secret, "s1"))}
    renewal = plan([_owned(gateway, "g1"), _owned(secret, "s2")], owned)
    assert [o["kind"] for o in renewal.update] == ["Secret"] and not renewal.create and not renewal.delete
    assert _planned_kinds(renewal) == [("", "Secret")]
    assert not moves_routes(_planned_kinds(renewal))
    gateway_edit = plan([_owned(gateway, "g2"), _owned(secret, "s2")], owned)
    assert moves_routes(_planned_kinds(gateway_edit))
    gateway_gone = plan([_owned(secret, "s1")], owned)
    assert _planned_kinds(gateway_gone) == [("networking.istio.io", "Gateway")]
    assert moves_routes(_planned_kinds(gateway_gone))
    for kinds, moves in (([], False), ([("", "Secret")], False), ([("", "Service")], True),
                         ([("", "Secret"), ("networking.istio.io", "VirtualService")], True),
                         ([("gateway.networking.k8s.io", "HTTPRoute")], True)):
        assert moves_routes(kinds) is moves, kinds


def test_istiod_access_one_of() -> None:
    base = {"kubeconfigSecretRef": {"name": "k"}, "region": "r", "zone": "z"}
    assert MemberClusterSpec.model_validate({**base, "istiod": {"url": "http://127.0.0.1:15014"}}).istiod == \
        IstiodAccess(url="http://127.0.0.1:15014")
    svc = MemberClusterSpec.model_validate({**base, "istiod": {"service": {}}}).istiod
    assert svc is not None and svc.service is not None and (svc.service.namespace, svc.service.name,
                                                            svc.service.port) == ("istio-system", "istiod", 15014)
    for bad in ({}, {"url": "http://a:1", "service": {}}, {"url": "ftp://x"}):
        with pytest.raises(ValueError):
            MemberClusterSpec.model_validate({**base, "istiod": bad})


def test_parse_syncz_and_config_paths() -> None:
    payload = [{"proxy": PID, "proxy_type": "router", "resources": {
        "type.googleapis.com/envoy.config.listener.v3.Listener": {"sent": "v1/3a", "acked": "v1/2b", "lastError": NACK},
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration": {"sent": "v1/3c", "acked": "v1/3c"},
        "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig": {"sent": "x", "acked": "x"}}},
        {"proxy": "old.ns", "listener_sent": "a", "listener_acked": "a"}]
    first = parse_syncz(payload, {}, 10.0)
    assert first[PID].xds["lds"] == XdsSync(sent="v1/3a", acked="v1/2b", last_error=NACK)
    assert set(first[PID].xds) == {"lds", "rds"} and first["old.ns"].xds == {"lds": XdsSync(sent="a", acked="a")}
    again = parse_syncz(payload, first, 20.0)
    assert again[PID].changed_at == 10.0  # same nonces: the change time stays
    payload[0]["resources"]["type.googleapis.com/envoy.config.route.v3.RouteConfiguration"]["sent"] = "v1/4d"
    assert parse_syncz(payload, first, 30.0)[PID].changed_at == 30.0
    dump = {"configs": [{"@type": "x", "name": "http.8080", "virtual_hosts": [
        {"domains": ["web.example"], "routes": [{"metadata": {"filter_metadata": {"istio": {"config": VS_PATH}}}}]}]},
        [{"metadata": {"filter_metadata": {"istio": {"config": "/apis/networking.istio.io/v1/namespaces/a/"
                                                              "virtual-service/b"}}}}]]}
    assert config_paths(dump) == ["/apis/networking.istio.io/v1/namespaces/a/virtual-service/b", VS_PATH]


def _placed(*names: str) -> PlacementDecision:
    return PlacementDecision(selected=[ClusterDecision(cluster=n, reason="selected") for n in names])


def _entry(name: str, configured: bool | None, message: str | None, **kw: Any) -> ClusterStatus:
    return ClusterStatus(name=name, state="Applied", revision="r", objects=2, vip=f"10.0.0.{name[-1]}",
                         route_configured=configured, route_message=message, **kw)


def test_summarize_routes() -> None:
    entries = [_entry("m1", True, "routes ACKed by 1/1 gateway proxies", gateway_proxies="1/1"),
               _entry("m2", False, "gateway proxy gw-1.istio-system is not connected to istiod", gateway_proxies="0/1"),
               _entry("m3", None, None)]
    st = summarize(1, "r", _placed("m1", "m2", "m3"), entries, "T", None)
    ready = condition(st.conditions, "Ready")
    assert ready is not None and (ready.status, ready.reason) == ("False", "RoutesNotConfigured")
    assert ready.message == ("ready in 2/3 cluster(s); routes not configured in m2: gateway proxy gw-1.istio-system "
                             "is not connected to istiod")
    assert st.summary is not None and (st.summary.routes, st.summary.clusters) == ("1/2", "2/3")
    analysis = condition(st.conditions, "IstioAnalysis")
    assert analysis is not None and (analysis.status, analysis.reason) == ("True", "NoMessages")

    entries[1] = _entry("m2", None, "istiod cannot be asked: refused")
    st = summarize(1, "r", _placed("m1", "m2", "m3"), entries, "T", st)
    ready = condition(st.conditions, "Ready")
    assert ready is not None and (ready.status, ready.reason, ready.message) == (
        "Unknown", "RoutesUnknown", "ready in 2/3 cluster(s); routes unknown in m2: istiod cannot be asked: refused")

    msg = IstioMessage(object="VirtualService shop/web", code="IST0101", level="ERROR", documentation_url=URL)
    entries[1] = _entry("m2", True, "ok", istio_messages=[msg], no_current_verdict=["Gateway shop/gw"])
    st = summarize(1, "r", _placed("m1", "m2", "m3"), entries, "T", st)
    ready = condition(st.conditions, "Ready")
    analysis = condition(st.conditions, "IstioAnalysis")
    assert ready is not None and ready.status == "True"
    assert analysis is not None and (analysis.status, analysis.reason, analysis.message) == (
        "False", "IstioError", "m2: VirtualService shop/web: IST0101 ERROR; no current verdict for m2: Gateway shop/gw")
    assert st.summary is not None and st.summary.routes == "2/2"


def test_summarize_without_istio_is_unchanged() -> None:
    st = summarize(1, "r", _placed("m1"), [_entry("m1", None, None)], "T", None)
    assert st.summary is not None and st.summary.routes is None
    assert [c.type for c in st.conditions] == ["Accepted", "Placed", "Applied", "Ready"]
