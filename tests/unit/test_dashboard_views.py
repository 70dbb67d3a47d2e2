"""dashboard.views: the fleet map, the AccessPoint list and page, and the gateways' comparison (pure)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from dashboard.views import (
    ap_detail,
    ap_list,
    compare_routes,
    expected_routes,
    fleet_map,
    gateway_column,
    gateway_routes,
    localities,
    proxy_sync,
    traffic_share,
    virtual_services,
)

NOW = dt.datetime(2027, 1, 17, 9, 0, tzinfo=dt.UTC).timestamp()  # 2 days 1 hour after creation


def mc(name: str, region: str, zone: str, reachable: str = "True", ready: str = "True") -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"region": region, "zone": zone},
            "status": {"conditions": [{"type": "Reachable", "status": reachable, "message": "probe"},
                                      {"type": "Ready", "status": ready, "reason": "R"}],
                       "kubernetesVersion": "v1.33.0", "istioCRDs": True}}


def ap(name: str = "web", ns: str = "shop", *, clusters: list[dict[str, Any]] | None = None,
       rollout: dict[str, Any] | None = None, ready: str = "True", template: list[dict[str, Any]] | None = None,
       revision: str = "r2") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "creationTimestamp": "2027-01-15T08:00:00Z"},
            "spec": {"template": template or []},
            "status": {"revision": revision, "summary": {"clusters": "2/2", "phase": "Ready", "routes": "2/2"},
                       "conditions": [{"type": "Ready", "status": ready}], "clusters": clusters or [],
                       **({"rollout": rollout} if rollout else {})}}


def approval(name: str, revision: str, wave: int = 1, decision: str = "", phase: str = "Pending") -> dict[str, Any]:
    spec = {"accessPoint": "web", "revision": revision, "wave": wave, "waveName": "canary", "gate": "After"}
    if decision:
        spec |= {"decision": decision, "approver": "alice"}
    return {"metadata": {"name": name, "namespace": "shop", "creationTimestamp": "2027-01-15T08:00:00Z"},
            "spec": spec, "status": {"phase": phase}}


ROLLOUT = {"phase": "Paused", "reason": "AwaitingApproval", "revision": "r2", "stable": "r1", "waveIndex": 0,
           "stage": "After", "wave": "1/2 canary", "updated": "1/2",
           "waves": [{"name": "canary", "after": [{"type": "Approval"}], "clusters": ["a1"], "released": ["a1"]},
                     {"name": "rest", "clusters": None}]}


def test_fleet_map_groups_regions_zones_and_colours_an_unreachable_member() -> None:
    carried = ap(clusters=[{"name": "a1", "state": "Applied"}, {"name": "b1", "state": "Failed"}])
    view = fleet_map([mc("b1", "r-b", "z-b"), mc("a1", "r-a", "z-a"), mc("a2", "r-a", "z-a", "False", "False")],
                     [carried])
    assert [r["name"] for r in view["regions"]] == ["r-a", "r-b"]
    zone = view["regions"][0]["zones"][0]
    cards = {c["name"]: c for c in zone["clusters"]}
    assert [c["name"] for c in zone["clusters"]] == ["a1", "a2"]
    assert (cards["a1"]["reachability"], cards["a1"]["level"], cards["a1"]["accessPoints"]) == ("reachable", "ok", 1)
    assert (cards["a2"]["reachability"], cards["a2"]["level"]) == ("unreachable", "bad")
    b1 = view["regions"][1]["zones"][0]["clusters"][0]
    assert b1["level"] == "warn" and "1 AccessPoint(s) not applied or not routed here" in b1["problems"]
    assert view["totals"] == {"clusters": 3, "ok": 1, "warn": 1, "bad": 1, "accessPoints": 1}


def test_list_filters_by_namespace_phase_and_waiting_for_approval() -> None:
    waiting = ap("web", rollout=ROLLOUT)
    other = ap("api", "pay")
    approvals = [approval("web-r2-1-after", "r2"), approval("web-r1-1-after", "r1", decision="Approved")]
    rows = ap_list([waiting, other], approvals, NOW)["rows"]
    assert [(r["namespace"], r["name"], r["waiting"]) for r in rows] == [("pay", "api", False), ("shop", "web", True)]
    assert (rows[1]["wave"], rows[1]["reason"], rows[1]["age"]) == ("1/2 canary", "AwaitingApproval", "2d")
    assert [r["name"] for r in ap_list([waiting, other], approvals, NOW, waiting=True)["rows"]] == ["web"]
    assert [r["name"] for r in ap_list([waiting, other], approvals, NOW, namespace="pay")["rows"]] == ["api"]
    assert ap_list([waiting, other], approvals, NOW, phase="Failed")["rows"] == []


def test_page_shows_the_waiting_gate_and_wave_states() -> None:
    view = ap_detail(ap(rollout=ROLLOUT, clusters=[
        {"name": "a1", "state": "Applied", "revision": "r2", "routeConfigured": True, "routeMessage": "ok",
         "istioMessages": [{"object": "VirtualService shop/web", "code": "IST0101", "level": "ERROR",
                            "documentationUrl": "https://istio.io/latest/docs/reference/config/analysis/ist0101/"}]},
        {"name": "b1", "state": "Applied", "revision": "r1"}]),
        [approval("web-r2-1-after", "r2")], [{"number": 1}])
    ro = view["rollout"]
    assert ro["pending"] == {"name": "web-r2-1-after", "wave": 1, "waveName": "canary", "gate": "After",
                             "revision": "r2"}
    assert [(w["state"], w["waitingGates"]) for w in ro["waves"]] == [("Gate (after)", ["After"]), ("Pending", [])]
    assert ro["waves"][1]["clusters"] is None and ro["inProgress"]
    rows = {c["name"]: c for c in view["clusters"]}
    assert rows["a1"]["level"] == "bad" and rows["a1"]["istio"][0]["url"].endswith("/ist0101/")
    assert rows["b1"]["level"] == "warn" and not rows["b1"]["onTarget"]


VS = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "web"},
      "spec": {"hosts": ["${region}.shop.example"], "http": [{"route": [
          {"destination": {"host": "echo.shop.svc.cluster.local", "port": {"number": 8080}}, "weight": 90},
          {"destination": {"host": "echo-b.shop.svc.cluster.local"}, "weight": 10}]}]}}


def dump(routes: list[tuple[str, str, int]], config: str = "/apis/networking.istio.io/v1/namespaces/shop/"
         "virtual-service/web") -> dict[str, Any]:
    return {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "dynamicRouteConfigs": [
        {"routeConfig": {"name": "http.80", "virtualHosts": [
            {"name": f"{host}:80", "domains": [host],
             "routes": [{"match": {"prefix": "/"},
                         "route": {"weightedClusters": {"clusters": [{"name": c, "weight": w}]}},
                         "metadata": {"filterMetadata": {"istio": {"config": config}}}}]}
            for host, c, w in routes]}}]}]}


def test_gateway_routes_against_the_expected_revision() -> None:
    vss = virtual_services({"metadata": {"name": "web", "namespace": "shop"}, "spec": {"template": [VS]}},
                           {"region": "eu", "zone": "z", "cluster": "c", "namespace": "shop", "name": "web"})
    expected = expected_routes(vss)
    assert [(r["host"], r["destination"], r["port"], r["weight"]) for r in expected] == [
        ("eu.shop.example", "echo-b.shop.svc.cluster.local", None, 10),
        ("eu.shop.example", "echo.shop.svc.cluster.local", 8080, 90)]
    good = gateway_routes(dump([("eu.shop.example", "outbound|8080||echo.shop.svc.cluster.local", 90),
                                ("eu.shop.example", "outbound|9090||echo-b.shop.svc.cluster.local", 10)]), ["shop/web"])
    assert compare_routes(expected, good) == {"missing": [], "extra": []}
    old = gateway_routes(dump([("eu.shop.example", "outbound|8080||echo.shop.svc.cluster.local", 100)]), ["shop/web"])
    assert compare_routes(expected, old) == {
        "missing": ["eu.shop.example -> echo-b.shop.svc.cluster.local weight 10",
                    "eu.shop.example -> echo.shop.svc.cluster.local:8080 weight 90"],
        "extra": ["eu.shop.example -> echo.shop.svc.cluster.local:8080 weight 100"]}
    # istiod's /debug/config_dump?proxyID= lists the RouteConfigurations themselves
    istiod_form = {"configs": [dump([("eu.shop.example", "outbound|8080||echo.shop.svc.cluster.local", 100)])
                               ["configs"][0]["dynamicRouteConfigs"][0]["routeConfig"]]}
    assert gateway_routes(istiod_form, ["shop/web"]) == old
    # another VirtualService's routes on the same gateway are not this AccessPoint's
    assert gateway_routes(dump([("x", "outbound|80||y", 100)], "/apis/x/v1/namespaces/shop/virtual-service/other"),
                          ["shop/web"]) == []


def test_gateway_column_differences_and_sync_state() -> None:
    synced = {"proxy": "gw.istio-system", "proxy_type": "router", "resources": {
        "type.googleapis.com/envoy.config.listener.v3.Listener": {"sent": "n1", "acked": "n1"},
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration": {"sent": "n2", "acked": "n1"}}}
    assert proxy_sync(synced)["xds"] == {"LDS": "synced", "RDS": "pending"} and proxy_sync(synced)["state"] == "pending"
    expected = [{"host": "h", "destination": "d", "port": 80, "weight": 100, "config": "shop/web"}]
    held = [{"host": "h", "destination": "d", "port": 80, "weight": 100}]
    ok = gateway_column({"name": "a1", "revision": "r2"}, "r2", expected,
                        {"proxies": [{**synced, "resources": {}, "listener_sent": "1", "listener_acked": "1"}],
                         "routes": {"gw.istio-system": held}})
    assert not ok["different"], ok["differences"]
    old = gateway_column({"name": "b1", "revision": "r1"}, "r2", expected,
                         {"proxies": [], "routes": {}})
    assert old["differences"] == ["carries revision r1, expected r2", "no gateway proxy connected to istiod"]
    down = gateway_column({"name": "c1", "revision": "r2"}, "r2", expected, {"error": "http://x: HTTP 503"})
    assert down["differences"] == ["istiod: http://x: HTTP 503"]


def test_endpoint_localities_and_traffic_share() -> None:
    clusters = {"cluster_statuses": [{"name": "outbound|8080||echo", "host_statuses": [
        {"address": {"socket_address": {"address": "127.0.11.1", "port_value": 8080}},
         "locality": {"region": "r-a", "zone": "z-a"}, "health_status": {"eds_health_status": "HEALTHY"}}]},
        {"name": "other", "host_statuses": []}]}
    assert localities(clusters, ["outbound|8080||echo"]) == {
        "outbound|8080||echo": ["127.0.11.1:8080 (r-a/z-a) HEALTHY"]}
    share = traffic_share([{"region": "r-a", "stats": {"requests": 30}}, {"region": "r-b", "stats": {"requests": 10}},
                           {"region": "r-b", "stats": {"error": "down"}}])
    assert share == [{"region": "r-a", "requests": 30, "share": 75.0}, {"region": "r-b", "requests": 10, "share": 25.0}]


# A status placed on one zone of 971 clusters: 20 of the 970 not placed listed, the rest counted.
SHORTENED_PLACEMENT = {
    "selected": [{"cluster": "a1", "reason": "zone a"}],
    "rejected": [{"cluster": f"b{i}", "reason": "zone b is not one of [a]", "code": "WrongZone"} for i in range(20)],
    "rejectedTotal": 970, "rejectedByCode": {"NotReady": 1, "WrongZone": 969}}


def test_the_page_says_how_many_more_clusters_are_not_placed() -> None:
    body = ap()
    body["status"]["placement"] = SHORTENED_PLACEMENT
    view = ap_detail(body, [], [])
    assert len(view["notPlaced"]) == 20
    assert view["notPlacedMore"] == "and 950 more not placed (NotReady 1, WrongZone 969)"
