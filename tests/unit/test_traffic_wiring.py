"""federation.traffic's pure helpers and the render fast path (no I/O)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from accesspoint.meta import Condition
from accesspoint.models import AccessPoint, AccessPointStatus
from accesspoint.render import render, substitute, variables_for
from accesspoint.traffic import TrafficPolicy
from federation.controller import Controller
from federation.traffic import TrafficFeature, gateway_ports, merge_previous, placement_problems, zero_weights
from placement.models import ClusterFacts, PlacementSpec
from placement.select import select

EAST = ClusterFacts(name="east-1", region="east", zone="east-a", labels={"env": "prod"}, ready=True, reachable=True)
WEST = ClusterFacts(name="west-1", region="west", zone="west-a", labels={"env": "prod"}, ready=True, reachable=True)


def ap(template: list[dict[str, Any]], **spec: Any) -> AccessPoint:
    return AccessPoint.model_validate({"metadata": {"name": "shop", "namespace": "pay", "generation": 3},
                                       "spec": {"template": template, **spec}})


TEMPLATE = [
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "${name}-gw", "labels": {"${keep}": "${zone}"}},
     "spec": {"type": "LoadBalancer", "ports": [{"name": "https", "port": 443}, {"name": "Bad_Name", "port": 8080},
                                                {"port": 15021}],
              "selector": {"app": "${name}"}}},
    {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "${name}"},
     "spec": {"hosts": ["${name}.${region}.example", "$${cluster}.literal", "plain"],
              "http": [{"route": [{"destination": {"host": "a", "port": {"number": 80}}, "weight": 100}],
                        "headers": {"response": {"set": {"x-${cluster}": "${cluster}/${zone}", "n": "1.5"}}}}]}},
]


def test_render_fast_path_equals_the_walking_substitution() -> None:
    a = ap(TEMPLATE)
    for cluster in (EAST, WEST, EAST):  # the second EAST render hits the cache
        out = render(a, cluster, "hub")
        assert not out.errors
        slow = [substitute(t.wire(), variables_for(a, cluster), f"spec.template[{i}]")
                for i, t in enumerate(a.spec.template)]
        for obj, want in zip(out.objects, slow, strict=True):
            assert obj["spec"] == want["spec"]
            assert obj["metadata"]["name"] == want["metadata"]["name"]
        vs = out.objects[1]["spec"]
        assert vs["hosts"] == [f"shop.{cluster.region}.example", "${cluster}.literal", "plain"]
        # keys are never substituted, values are
        assert vs["http"][0]["headers"]["response"]["set"] == {"x-${cluster}": f"{cluster.name}/{cluster.zone}",
                                                                "n": "1.5"}


def test_render_sees_template_changes_and_names_the_field_of_an_error() -> None:
    a = ap(TEMPLATE)
    render(a, EAST, "hub")
    a.spec.template[1].spec["hosts"] = ["${regoin}.example"]  # mutated after a render: content-keyed cache
    out = render(a, EAST, "hub")
    assert [str(e) for e in out.errors] == [
        "spec.template[1].spec.hosts[0]: unknown variable ${regoin} (known: ${cluster}, ${zone}, ${region}, "
        "${namespace}, ${name})"]
    a.spec.template[1].spec["hosts"] = ["${zone}.example"]
    assert render(a, EAST, "hub").objects[1]["spec"]["hosts"] == ["east-a.example"]


def test_render_outputs_are_independent_copies() -> None:
    a = ap(TEMPLATE)
    first = render(a, EAST, "hub").objects
    first[1]["spec"]["hosts"].append("mutated")
    first[1]["spec"]["http"][0]["route"][0]["destination"]["host"] = "mutated"
    again = render(a, EAST, "hub").objects
    assert "mutated" not in again[1]["spec"]["hosts"]
    assert again[1]["spec"]["http"][0]["route"][0]["destination"]["host"] == "a"


def test_gateway_ports_from_the_loadbalancer_service() -> None:
    ports = gateway_ports(ap(TEMPLATE))
    assert [(p.name, p.number, p.protocol) for p in ports] == [
        ("https", 443, "TLS"), ("port-8080", 8080, "TCP"), ("port-15021", 15021, "TCP")]
    assert gateway_ports(ap(TEMPLATE[1:])) == []


def test_zero_weights_are_found_everywhere() -> None:
    policy = TrafficPolicy.model_validate({"locality": {
        "mode": "Drain", "drain": {"regions": ["west"], "to": [{"region": "east", "weight": 0}]},
        "weighted": {"remotes": [{"region": "west", "weight": 0}],
                     "byRegion": [{"region": "east", "remotes": [{"region": "west", "weight": 0}]}]}}})
    assert [e.split(":")[0] for e in zero_weights(policy)] == [
        "spec.traffic.locality.weighted.remotes[0].weight",
        "spec.traffic.locality.weighted.byRegion[0].remotes[0].weight",
        "spec.traffic.locality.drain.to[0].weight",
    ]
    assert zero_weights(TrafficPolicy.model_validate({"locality": {"mode": "Weighted"}})) == []


def test_placement_matching_nothing_is_an_error_but_an_outage_is_not() -> None:
    facts = [EAST, WEST]
    spec = PlacementSpec.model_validate({"clusterSelector": {"matchLabels": {"env": "nowhere"}}})
    problems = placement_problems(spec, select(spec, facts), facts, "spec.placement")
    assert len(problems) == 1 and problems[0].startswith("spec.placement.clusterSelector: matches no member cluster")
    regions = PlacementSpec.model_validate({"regions": ["north"]})
    assert placement_problems(regions, select(regions, facts), facts, "spec.placement")[0].startswith(
        "spec.placement: selects no member cluster (2 WrongRegion)")
    down = [c.model_copy(update={"ready": False, "reachable": False}) for c in facts]
    every = PlacementSpec()
    assert placement_problems(every, select(every, down), down, "spec.placement") == []
    assert placement_problems(spec, select(spec, []), [], "spec.placement") == []


def test_status_contribution_keeps_transition_times() -> None:
    a = ap(TEMPLATE, traffic={"locality": {"mode": "Weighted"}})
    feature = TrafficFeature(cast(Controller, SimpleNamespace(registry=SimpleNamespace(members={}))))
    decision = select(PlacementSpec(), [EAST, WEST])
    first = feature.contribute(a, AccessPointStatus(placement=decision), None, "T1")
    valid = next(c for c in first.conditions if c.type == "TrafficPolicyValid")
    assert valid.status == "True" and valid.last_transition_time == "T1" and valid.observed_generation == 3
    again = feature.contribute(a, AccessPointStatus(placement=decision), first, "T2")
    assert again.conditions == first.conditions  # nothing changed: nothing to write
    prev = AccessPointStatus(conditions=[Condition(type="X", status="True", reason="R", last_transition_time="T0")])
    merged = merge_previous(AccessPointStatus(), prev, [Condition(type="X", status="True", reason="R")], "T9")
    assert merged.conditions[0].last_transition_time == "T0"


async def test_export_to_names_the_controllers_gateway_namespace_read_when_it_starts(
        monkeypatch: Any) -> None:
    """visibility.gatewayNamespace defaults to the controller's setting (Controller.gateway_namespace,
    taken from MESHFED_GATEWAY_NAMESPACE when the controller starts), not to a value read at import."""
    import federation.traffic  # noqa: F401  (already imported: the setting must not come from import time)

    monkeypatch.setenv("MESHFED_GATEWAY_NAMESPACE", "edge-gateways")
    a = ap([{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "vs"},
             "spec": {"hosts": ["a"]}}], traffic={"visibility": {"consumerNamespaces": ["web"]}})
    ctl = SimpleNamespace(registry=SimpleNamespace(members={}), gateway_namespace="edge-gateways",
                          hub_id="hub")
    feature = TrafficFeature(cast(Controller, ctl))
    context = await feature.context(a, select(PlacementSpec(), [EAST]), {})
    objects = [{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": "vs", "namespace": "pay"}, "spec": {"hosts": ["a"]}}]
    for transform in context.transforms:
        objects = transform(objects, EAST)
    assert objects[0]["spec"]["exportTo"] == [".", "edge-gateways", "web"]
