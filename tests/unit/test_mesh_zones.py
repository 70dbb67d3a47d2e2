"""Mesh roles (placement.mesh) and the zone as a placement target (placement.select, target Zone)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from placement.mesh import domains, remote_refusal, role_verdicts
from placement.models import (
    ClusterFacts,
    MemberCluster,
    MemberClusterSpec,
    PlacementSpec,
    Spread,
    WorkloadFact,
    WorkloadRef,
)
from placement.select import select


def spec(region: str, zone: str, primary: str | None = None) -> MemberClusterSpec:
    body: dict[str, object] = {"kubeconfigSecretRef": {"name": "k"}, "region": region, "zone": zone}
    if primary is not None:
        body["mesh"] = {"role": "Remote", "primary": primary}
    return MemberClusterSpec.model_validate(body)


def test_role_verdicts_table() -> None:
    members = {
        "a1": spec("ra", "ra-1"),
        "a2": spec("ra", "ra-1", primary="a1"),
        "a3": spec("ra", "ra-2", primary="a1"),  # primary in another zone
        "x": spec("ra", "ra-1", primary="ghost"),
        "y": spec("ra", "ra-1", primary="a2"),  # remote of a remote
        "z": spec("ra", "ra-1", primary="z"),
    }
    v = role_verdicts(members)
    got = {n: (r.status, r.reason, r.printed, r.warning) for n, r in v.items()}
    assert got == {
        "a1": ("True", "OwnControlPlane", "Primary", False),
        "a2": ("True", "RemoteOf", "Remote(a1)", False),
        "a3": ("True", "PrimaryInOtherZone", "Remote(a1)", True),
        "x": ("False", "PrimaryNotFound", "Invalid(PrimaryNotFound)", True),
        "y": ("False", "PrimaryIsRemote", "Invalid(PrimaryIsRemote)", True),
        "z": ("False", "PrimaryIsSelf", "Invalid(PrimaryIsSelf)", True),
    }
    # Every refusal and the warning name the field.
    for n in ("a3", "x", "y", "z"):
        assert "spec.mesh.primary" in v[n].message, n
    assert "'ghost' is not registered" in v["x"].message
    assert "a2 is itself an Istio remote (of a1)" in v["y"].message
    assert v["a1"].problem is None and v["x"].problem == v["x"].message
    cond = v["y"].condition(4)
    assert (cond.type, cond.status, cond.reason, cond.observed_generation) == ("MeshRole", "False",
                                                                              "PrimaryIsRemote", 4)


def test_mesh_spec_needs_primary_exactly_for_remote() -> None:
    with pytest.raises(ValidationError, match=r"spec\.mesh\.primary is set exactly when"):
        MemberClusterSpec.model_validate({"kubeconfigSecretRef": {"name": "k"}, "region": "r", "zone": "z",
                                          "mesh": {"role": "Remote"}})
    with pytest.raises(ValidationError, match=r"spec\.mesh\.primary is set exactly when"):
        MemberClusterSpec.model_validate({"kubeconfigSecretRef": {"name": "k"}, "region": "r", "zone": "z",
                                          "mesh": {"primary": "a1"}})
    assert spec("r", "z").mesh_primary is None
    assert spec("r", "z", "a1").mesh_primary == "a1"


def test_printer_column_and_cel_rule() -> None:
    crd = MemberCluster.crd
    assert ("Mesh", ".status.meshRole") in [(c.name, c.json_path) for c in crd.printer_columns]


def facts(name: str, region: str, zone: str, primary: str | None = None, problem: str | None = None,
          workloads: list[WorkloadFact] | None = None, ready: bool = True, reachable: bool | None = True,
          labels: dict[str, str] | None = None) -> ClusterFacts:
    return ClusterFacts(name=name, region=region, zone=zone, mesh_primary=primary, mesh_problem=problem,
                        workloads=workloads, ready=ready, reachable=reachable, labels=labels or {})


CHECKOUT = WorkloadFact(namespace="shop", name="checkout")


def zone_fleet() -> list[ClusterFacts]:
    """2 regions x 2 zones, each zone a primary (pN) + a remote (rN); checkout runs only in rb1's remote."""
    out = []
    for region in ("ra", "rb"):
        for z in ("1", "2"):
            zone = f"{region}-{z}"
            p, r = f"{region}{z}-p", f"{region}{z}-r"
            out.append(facts(p, region, zone, workloads=[]))
            out.append(facts(r, region, zone, primary=p,
                             workloads=[CHECKOUT] if (region, z) == ("rb", "1") else []))
    return out


def test_remote_refusal_names_primary() -> None:
    remote = facts("a2", "ra", "ra-1", primary="a1")
    msg = remote_refusal(remote, ["", "networking.istio.io"])
    assert msg is not None
    assert msg.startswith("a2 is an Istio remote of a1 (spec.mesh): networking.istio.io objects are not written")
    assert "primary a1" in msg and "zone ra-1" in msg and "nothing was changed" in msg
    assert remote_refusal(remote, ["", "apps"]) is None  # plain Kubernetes kinds may go to a remote
    assert remote_refusal(facts("a1", "ra", "ra-1"), ["networking.istio.io"]) is None
    bad = facts("x", "ra", "ra-1", primary="ghost", problem="spec.mesh.primary: MemberCluster 'ghost' ...")
    msg = remote_refusal(bad, ["gateway.networking.k8s.io"])
    assert msg is not None and "its role is invalid (spec.mesh.primary" in msg


def test_domains_group_remotes_under_primaries() -> None:
    fl = [*zone_fleet(), facts("orphan", "ra", "ra-1", primary="ghost", problem="p"),
          facts("chain", "ra", "ra-1", primary="ra1-r")]
    doms = domains(fl)
    assert sorted(doms) == ["ra1-p", "ra2-p", "rb1-p", "rb2-p"]
    assert [r.name for r in doms["ra1-p"].remotes] == ["ra1-r"]


def test_zone_target_places_one_entry_per_zone_on_the_primary() -> None:
    d = select(PlacementSpec(target="Zone"), zone_fleet())
    assert d.names == ["ra1-p", "ra2-p", "rb1-p", "rb2-p"]
    assert [s.remotes for s in d.selected] == [["ra1-r"], ["ra2-r"], ["rb1-r"], ["rb2-r"]]
    assert d.selected[0].reason.startswith("zone ra-1 (primary ra1-p, remotes ra1-r): ")
    assert {r.cluster: r.code for r in d.rejected} == {
        "ra1-r": "IstioRemote", "ra2-r": "IstioRemote", "rb1-r": "IstioRemote", "rb2-r": "IstioRemote"}
    assert "Istio remote of rb1-p" in next(r.reason for r in d.rejected if r.cluster == "rb1-r")
    # Cluster target (default) keeps today's behaviour: every cluster is a candidate.
    assert len(select(PlacementSpec(), zone_fleet()).names) == 8


def test_zone_target_criteria_and_spread_count_zones() -> None:
    assert select(PlacementSpec(target="Zone", zones=["rb-2"]), zone_fleet()).names == ["rb2-p"]
    assert select(PlacementSpec(target="Zone", regions=["ra"]), zone_fleet()).names == ["ra1-p", "ra2-p"]
    d = select(PlacementSpec(target="Zone", spread=Spread(max_clusters=2)), zone_fleet())
    assert d.names == ["ra1-p", "ra2-p"]  # zones in (region, zone) order, as for clusters
    assert {r.cluster for r in d.rejected if r.code == "SpreadLimit"} == {"rb1-p", "rb2-p"}


def test_follow_workload_in_zone_mode_picks_the_zone_of_a_remote_deployment() -> None:
    ref = WorkloadRef(namespace="shop", name="checkout")
    d = select(PlacementSpec(target="Zone", follow_workload=ref), zone_fleet())
    assert d.names == ["rb1-p"]
    assert d.selected[0].reason.endswith("runs Deployment shop/checkout (in rb1-r)")
    assert {r.cluster: r.code for r in d.rejected if r.cluster.endswith("-p")} == {
        "ra1-p": "NoWorkload", "ra2-p": "NoWorkload", "rb2-p": "NoWorkload"}
    # Cluster target: the remote itself (where Istio ignores config) would be chosen.
    assert select(PlacementSpec(follow_workload=ref), zone_fleet()).names == ["rb1-r"]


def test_follow_workload_zone_unknown_and_kept() -> None:
    ref = WorkloadRef(namespace="shop", name="checkout")
    fl = [facts("p", "ra", "ra-1", workloads=[]), facts("r", "ra", "ra-1", primary="p", workloads=None,
                                                         reachable=False, ready=False)]
    d = select(PlacementSpec(target="Zone", follow_workload=ref), fl)
    assert d.names == [] and d.rejected[0].code == "WorkloadUnknown"
    # Placed before with the Deployment in the remote; the remote becomes unreachable: the zone stays.
    up = [fl[0], facts("r", "ra", "ra-1", primary="p", workloads=[CHECKOUT])]
    prev = select(PlacementSpec(target="Zone", follow_workload=ref), up)
    assert prev.names == ["p"]
    assert select(PlacementSpec(target="Zone", follow_workload=ref), fl, prev).names == ["p"]
    # Known to be gone from every cluster of the zone: removed.
    gone = [fl[0], facts("r", "ra", "ra-1", primary="p", workloads=[])]
    assert select(PlacementSpec(target="Zone", follow_workload=ref), gone, prev).names == []


def test_zone_target_rejects_invalid_roles_and_is_order_independent() -> None:
    fl = [*zone_fleet(), facts("orphan", "ra", "ra-1", primary="ghost", problem="spec.mesh.primary: gone")]
    d = select(PlacementSpec(target="Zone"), fl)
    orphan = next(r for r in d.rejected if r.cluster == "orphan")
    assert orphan.code == "MeshRoleInvalid" and "spec.mesh.primary: gone" in orphan.reason
    assert select(PlacementSpec(target="Zone"), list(reversed(fl))) == d


# ---- status per zone from the zone's istiod (accesspoint.istioverdict.zone_verdict) ----

GW = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw", "namespace": "shop"},
      "spec": {"selector": {"istio": "ingressgateway"}, "servers": []}}


def vs(name: str, hosts: list[str], gateways: list[str]) -> dict[str, object]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"gateways": gateways, "http": [{"route": [{"destination": {"host": h}} for h in hosts]}]}}


def test_routed_hosts_are_fqdns_of_gateway_bound_virtualservices() -> None:
    from accesspoint.istioverdict import routed_hosts

    objs = [GW, vs("a", ["echo", "api.pay", "ext.example.com"], ["gw"]), vs("mesh-only", ["internal"], ["mesh"])]
    assert routed_hosts(objs) == ["api.pay.svc.cluster.local", "echo.shop.svc.cluster.local", "ext.example.com"]


def test_parse_clusterz_and_endpoint_shards() -> None:
    from federation.istiod import IstiodError, parse_clusterz, parse_endpoint_shards

    assert parse_clusterz([{"id": "zp-a", "secretName": "", "syncStatus": "synced"},
                           {"id": "zr-a", "secretName": "istio-system/istio-remote-secret-zr-a",
                            "syncStatus": "syncing"}]) == {"zp-a": "synced", "zr-a": "syncing"}
    shards = {"echo.shop.svc.cluster.local": {"shop": {"Shards": {"Kubernetes/zr-a": [{}, {}],
                                                                  "External/zp-a": [{}]}},
                                              "other": {"Shards": {"Kubernetes/zr-a": [{}]}}},
              "unrelated.svc.cluster.local": {"x": {"Shards": {"Kubernetes/zp-a": [{}]}}}}
    assert parse_endpoint_shards(shards, {"echo.shop.svc.cluster.local", "gone.shop.svc.cluster.local"}) == {
        "echo.shop.svc.cluster.local": {"zr-a": 3, "zp-a": 1}}
    with pytest.raises(IstiodError):
        parse_clusterz({"not": "a list"})


def test_zone_verdict_sync_states_and_missing_endpoints() -> None:
    from accesspoint.istioverdict import IstiodView, zone_verdict

    objs = [GW, vs("a", ["echo", "api"], ["gw"])]
    view = IstiodView(clusters={"zp-a": "synced", "zr-a": "synced", "zr-b": "timeout"},
                      endpoints={"echo.shop.svc.cluster.local": {"zr-a": 2}})
    v = zone_verdict(objs, view, ["zr-a", "zr-b", "zr-c"], unreachable=["zr-a"])
    assert v is not None
    assert [(r.cluster, r.state) for r in v.remotes] == [("zr-a", "Stale"), ("zr-b", "Timeout"), ("zr-c", "NotRead")]
    assert "does not answer the hub" in v.remotes[0].message
    assert "no remote secret for zr-c" in v.remotes[2].message
    assert v.endpoints is not None
    assert [(e.host, e.clusters) for e in v.endpoints] == [("api.shop.svc.cluster.local", {}),
                                                           ("echo.shop.svc.cluster.local", {"zr-a": 2})]
    assert v.missing == ["api.shop.svc.cluster.local"]
    # The remote answers again: Synced; istiod not read yet: Unknown, endpoints not judged.
    v = zone_verdict(objs, view, ["zr-a"])
    assert v is not None and v.remotes[0].state == "Synced" and v.remotes[0].message == ""
    v = zone_verdict(objs, IstiodView(), ["zr-a"])
    assert v is not None and v.remotes[0].state == "Unknown" and v.endpoints is None and v.missing == []
    assert zone_verdict([], view, []) is None


def test_status_no_endpoints_is_not_ready_naming_zone_and_host() -> None:
    from accesspoint.istioverdict import HostEndpoints
    from accesspoint.models import ClusterStatus
    from accesspoint.status import summarize
    from placement.models import ClusterDecision, PlacementDecision

    decision = PlacementDecision(selected=[ClusterDecision(cluster="zp-a", reason="", zone="ra-1"),
                                           ClusterDecision(cluster="zp-b", reason="", zone="rb-1")])
    ok = ClusterStatus(name="zp-b", zone="rb-1", state="Applied", revision="r1",
                       endpoints=[HostEndpoints(host="echo.shop.svc.cluster.local", clusters={"zr-b": 1})])
    bad = ClusterStatus(name="zp-a", zone="ra-1", state="Applied", revision="r1",
                        endpoints=[HostEndpoints(host="echo.shop.svc.cluster.local", clusters={})],
                        endpoints_missing=["echo.shop.svc.cluster.local"])
    st = summarize(1, "r1", decision, [bad, ok], "2026-12-04T00:00:00Z", None)
    ready = next(c for c in st.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "NoEndpoints")
    assert "zone ra-1 (zp-a): its istiod knows no endpoint of echo.shop.svc.cluster.local" in ready.message
    assert st.summary is not None and st.summary.endpoints == "1/2" and st.summary.clusters == "1/2"
    st = summarize(1, "r1", decision, [bad.model_copy(update={"endpoints_missing": None}), ok],
                   "2026-12-04T00:00:00Z", None)
    assert next(c for c in st.conditions if c.type == "Ready").status == "True"
    assert st.summary is not None and st.summary.endpoints == "2/2"


def test_default_waves_in_zone_mode_canary_is_one_zone() -> None:
    from accesspoint.rollout import default_waves

    fl = zone_fleet()
    decision = select(PlacementSpec(target="Zone"), fl)
    placed = [c for c in fl if c.name in decision.names]
    waves = default_waves(placed)
    members = [[c.name for c in placed if w.cluster_selector is not None
                and w.cluster_selector.matches(c.selector_labels)] for w in waves]
    # canary: the first zone's primary alone (then an approval), then one wave per zone, never a remote.
    assert members == [["ra1-p"], ["ra1-p"], ["ra2-p"], ["rb1-p"], ["rb2-p"]]
    assert [g.type for g in waves[0].after] == ["Approval"]
