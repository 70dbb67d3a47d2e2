"""accesspoint.tenancy: namespace confinement and host ownership rules (pure), table and property tests."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from accesspoint.models import AccessPoint
from accesspoint.render import render
from accesspoint.tenancy import (
    HOST_CONFLICT,
    NAMESPACE_NOT_ALLOWED,
    OwnershipIndex,
    Policies,
    Source,
    TenancyPolicy,
    accesspoint_hosts,
    glob_match,
    host_glob,
    overlap,
    rendered_problems,
    template_problems,
)
from placement.models import ClusterFacts, PlacementDecision


def policy(name: str, namespaces: list[str], targets: list[dict[str, Any]] | None = None,
           domains: list[str] | None = None) -> TenancyPolicy:
    return TenancyPolicy.model_validate({
        "metadata": {"name": name},
        "spec": {"namespaces": namespaces, "targetNamespaces": targets or [], "domains": domains or []}})


def ap(ns: str, name: str, template: list[dict[str, Any]], overrides: list[dict[str, Any]] | None = None,
       created: str = "2026-01-01T00:00:00Z") -> AccessPoint:
    return AccessPoint.model_validate({
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": created, "uid": f"uid-{ns}-{name}"},
        "spec": {"template": template, "overrides": overrides or []}})


def svc(namespace: str | None = None, name: str = "web") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {"ports": [{"port": 80}]}}


def gw(hosts: list[str], namespace: str | None = None, name: str = "gw") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": meta,
            "spec": {"selector": {"istio": "ingressgateway"},
                     "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": hosts}]}}


def vs(hosts: list[str], name: str = "vs") -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": name},
            "spec": {"hosts": hosts, "gateways": ["gw"], "http": [{"route": [{"destination": {"host": "web"}}]}]}}


CLUSTER = ClusterFacts(name="member-1", region="region-a", zone="region-a-1")


# ---- confinement ----


def test_template_namespace_outside_the_accesspoints_own_is_refused_naming_the_field() -> None:
    a = ap("tenant", "x", [svc("kube-system")])
    problems = template_problems(a, Policies())
    assert problems == ["spec.template[0].metadata.namespace: namespace kube-system is not allowed for "
                        "AccessPoints in tenant"]
    assert problems[0].reason == NAMESPACE_NOT_ALLOWED


@pytest.mark.parametrize(("namespace", "kind_ok"), [(None, True), ("tenant", True), ("${namespace}", True),
                                                    ("istio-system", False), ("other", False)])
def test_own_namespace_always_allowed(namespace: str | None, kind_ok: bool) -> None:
    a = ap("tenant", "x", [svc(namespace)])
    assert (template_problems(a, Policies()) == []) is kind_ok


def test_policy_allows_a_target_namespace_for_listed_kinds_only() -> None:
    pols = Policies.build([policy("p", ["tenant"], [{"namespace": "istio-system", "kinds": ["Gateway"]}])])
    ok = ap("tenant", "x", [gw(["a.example.com"], "istio-system")])
    assert template_problems(ok, pols) == []
    bad = ap("tenant", "x", [svc("istio-system")])
    (problem,) = template_problems(bad, pols)
    assert problem.startswith("spec.template[0].metadata.namespace: namespace istio-system is not allowed for "
                              "Service objects of AccessPoints in tenant (TenancyPolicy p allows only Gateway")
    # Another hub namespace gets nothing from a policy that does not list it.
    other = ap("other", "x", [gw(["a.example.com"], "istio-system")])
    assert len(template_problems(other, pols)) == 1
    # No kinds: every kind.
    every = Policies.build([policy("p", ["tenant"], [{"namespace": "shared"}])])
    assert template_problems(ap("tenant", "x", [svc("shared")]), every) == []


def test_a_namespace_from_a_variable_is_checked_on_the_rendered_objects() -> None:
    a = ap("tenant", "x", [svc("${cluster}")])
    assert template_problems(a, Policies()) == []  # undecidable before rendering
    rendered = render(a, CLUSTER, "hub")
    assert not rendered.errors
    (problem,) = rendered_problems(a, CLUSTER.name, rendered.objects, Policies(), [])
    assert problem == ("spec.template[0].metadata.namespace: in cluster member-1: namespace member-1 is not allowed "
                       "for AccessPoints in tenant")


def test_generated_objects_are_confined_and_tls_secrets_follow_their_gateway() -> None:
    pols = Policies.build([policy("p", ["tenant"], [{"namespace": "istio-system", "kinds": ["Gateway"]}])])
    a = ap("tenant", "x", [gw(["a.example.com"], "istio-system")])
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x-tls", "namespace": "istio-system"}}
    objects = [*render(a, CLUSTER, "hub").objects, secret]
    assert rendered_problems(a, "m", objects, pols, ["a.example.com"]) == []
    stray = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x-tls", "namespace": "kube-system"}}
    (problem,) = rendered_problems(a, "m", [*objects, stray], pols, ["a.example.com"])
    assert problem.startswith("generated Secret x-tls.metadata.namespace: in cluster m: namespace kube-system")
    # The same Secret without a Gateway in istio-system is not allowed there.
    b = ap("tenant", "x", [svc()])
    assert len(rendered_problems(b, "m", [*render(b, CLUSTER, "hub").objects, secret], pols, [])) == 1


def test_rendered_hosts_must_be_claimed() -> None:
    a = ap("tenant", "x", [vs(["shop.${region}.example.com"])])
    objects = render(a, CLUSTER, "hub").objects
    claims = [host_glob(h, "tenant", "x") for _, h in accesspoint_hosts(a)]
    assert rendered_problems(a, "m", objects, Policies(), claims) == []
    (problem,) = rendered_problems(a, "m", objects, Policies(), ["other.example.com"])
    assert problem.reason == HOST_CONFLICT and "shop.region-a.example.com" in problem


def test_hosts_set_by_overrides_are_claims() -> None:
    a = ap("tenant", "x", [vs(["shop.example.com"])], overrides=[
        {"clusters": ["member-1"], "target": {"kind": "VirtualService", "name": "vs"},
         "mergePatch": {"spec": {"hosts": ["b.example.com"]}}},
        {"regions": ["r"], "target": {"kind": "VirtualService", "name": "vs"},
         "jsonPatch": [{"op": "add", "path": "/spec/hosts/-", "value": "c.example.com"}]},
    ])
    assert sorted(h for _, h in accesspoint_hosts(a)) == ["b.example.com", "c.example.com", "shop.example.com"]
    assert ("spec.overrides[0].mergePatch", "b.example.com") in accesspoint_hosts(a)


# ---- patterns ----


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("shop.example.com", "shop.example.com", True),
    ("shop.example.com", "shop.example.org", False),
    ("shop.*.example.com", "shop.region-a.example.com", True),
    ("shop.*.example.com", "cart.region-a.example.com", False),
    ("*.example.com", "shop.*.example.com", True),
    ("a-*.example.com", "*-b.example.com", True),
    ("a-*.example.com", "b-*.example.com", False),
    ("*", "anything.example", True),
    ("x*y", "xy", False),  # a variable is never empty
    ("x*y*z", "x*z", True),
])
def test_overlap_table(a: str, b: str, expected: bool) -> None:
    assert overlap(a, b) is expected and overlap(b, a) is expected


def test_host_glob_substitutes_per_accesspoint_variables_only() -> None:
    assert host_glob("${name}.${region}.Example.com.", "ns", "shop") == "shop.*.example.com"
    assert host_glob("$${region}.example.com", "ns", "shop") == "${region}.example.com"


LITERALS = st.text(alphabet="ab.", min_size=0, max_size=4)


@st.composite
def globs(draw: st.DrawFn) -> str:
    parts = draw(st.lists(LITERALS, min_size=1, max_size=4))
    return "*".join(parts)


@settings(max_examples=300, deadline=None)
@given(globs(), globs(), st.lists(st.text(alphabet="ab.", min_size=1, max_size=3), min_size=4, max_size=4))
def test_overlap_agrees_with_a_witness(a: str, b: str, fills: list[str]) -> None:
    """overlap(a, b) is symmetric, and any string matching both proves it True."""
    assert overlap(a, b) == overlap(b, a)
    for fill in itertools.product(fills[:2], repeat=a.count("*")):
        text = a
        for f in fill:
            text = text.replace("*", f, 1)
        if glob_match(b, text):
            assert overlap(a, b), (a, b, text)


# ---- ownership ----


def src(ns: str, name: str, created: str, kind: str = "AccessPoint") -> Source:
    return Source(created, ns, name, kind, f"uid-{ns}-{name}")


def test_first_claim_wins_and_deleting_the_owner_frees_the_host() -> None:
    index = OwnershipIndex()
    index.put(src("b", "shop", "2026-01-02T00:00:00Z"), [("spec.template[0]", "shop.example.com")])
    index.put(src("a", "shop", "2026-01-03T00:00:00Z"), [("spec.template[0]", "shop.example.com")])
    assert index.refusals("AccessPoint", "b", "shop") == []
    (v,) = index.refusals("AccessPoint", "a", "shop")
    assert v.message == ("host shop.example.com is owned by namespace b: claimed first by AccessPoint b/shop at "
                         "2026-01-02T00:00:00Z")
    # Same namespace, other kinds: no conflict.
    index.put(src("b", "shop", "2026-01-02T12:00:00Z", "NameService"), [("spec.fqdn", "shop.example.com")])
    assert index.refusals("NameService", "b", "shop") == []
    # A NameService of namespace a for the same host is refused too.
    index.put(src("a", "dns", "2026-01-01T00:00:00Z", "NameService"), [("spec.fqdn", "other.example.com")])
    assert index.remove("AccessPoint", "b", "shop")
    assert index.refusals("AccessPoint", "a", "shop") != []  # b's NameService still holds it
    index.remove("NameService", "b", "shop")
    assert index.refusals("AccessPoint", "a", "shop") == []


def test_ties_are_broken_by_namespace_then_name() -> None:
    index = OwnershipIndex()
    t = "2026-01-01T00:00:00Z"
    index.put(src("zz", "a", t), [("f", "h.example.com")])
    index.put(src("aa", "z", t), [("f", "h.example.com")])
    assert index.refusals("AccessPoint", "aa", "z") == []
    assert index.refusals("AccessPoint", "zz", "a") != []


def test_a_pattern_claims_every_host_it_can_render_to() -> None:
    index = OwnershipIndex()
    index.put(src("a", "shop", "2026-01-01T00:00:00Z"), [("f", "shop.${region}.example.com")])
    index.put(src("b", "eu", "2026-01-02T00:00:00Z"), [("f", "shop.eu.example.com")])
    index.put(src("c", "cart", "2026-01-02T00:00:00Z"), [("f", "cart.eu.example.com")])
    assert "owned by namespace a (shop.${region}.example.com)" in index.refusals("AccessPoint", "b", "eu")[0].message
    assert index.refusals("AccessPoint", "c", "cart") == []


def test_a_refused_claim_blocks_nobody() -> None:
    """b's pattern collides with a's earlier claim (refused); c's host collides only with b's: granted."""
    index = OwnershipIndex()
    index.put(src("a", "x", "2026-01-01T00:00:00Z"), [("f", "a-b.example.com")])
    index.put(src("b", "x", "2026-01-02T00:00:00Z"), [("f", "${region}-b.example.com")])
    index.put(src("c", "x", "2026-01-03T00:00:00Z"), [("f", "c-b.example.com")])
    assert index.refusals("AccessPoint", "b", "x") and not index.refusals("AccessPoint", "c", "x")
    index.remove("AccessPoint", "a", "x")  # b now owns its pattern, and c waits
    assert not index.refusals("AccessPoint", "b", "x") and index.refusals("AccessPoint", "c", "x")


def test_wildcards_only_by_policy() -> None:
    index = OwnershipIndex()
    index.put(src("a", "x", "2026-01-01T00:00:00Z"), [("f", "*.example.com")])
    index.put(src("b", "x", "2026-01-01T00:00:00Z"), [("f", "*")])
    assert "wildcard host *.example.com needs a TenancyPolicy" in index.refusals("AccessPoint", "a", "x")[0].message
    assert index.refusals("AccessPoint", "b", "x")
    index.set_policies(Policies.build([policy("pa", ["a"], domains=["*.example.com"])]))
    assert index.refusals("AccessPoint", "a", "x") == []


def test_policy_assignment_beats_first_claim_and_the_most_specific_assignment_decides() -> None:
    index = OwnershipIndex(Policies.build([
        policy("platform", ["platform"], domains=["*.example.com"]),
        policy("payments", ["payments"], domains=["*.pay.example.com", "checkout.example.com"]),
    ]))
    index.put(src("squatter", "x", "2025-01-01T00:00:00Z"), [("f", "checkout.example.com")])
    index.put(src("payments", "x", "2026-01-01T00:00:00Z"), [("f", "checkout.example.com"),
                                                             ("g", "a.pay.example.com")])
    index.put(src("platform", "x", "2026-01-01T00:00:00Z"), [("f", "*.example.com"), ("g", "www.example.com")])
    (v,) = index.refusals("AccessPoint", "squatter", "x")
    assert v.message == ("host checkout.example.com is assigned to namespace payments by TenancyPolicy payments "
                         "(domain checkout.example.com)")
    assert index.refusals("AccessPoint", "payments", "x") == []
    assert index.refusals("AccessPoint", "platform", "x") == []  # its catch-all wildcard, and www
    index.put(src("platform", "y", "2026-01-01T00:00:00Z"), [("f", "b.pay.example.com")])
    assert "assigned to namespace payments" in index.refusals("AccessPoint", "platform", "y")[0].message


def test_service_names_belong_to_their_namespace() -> None:
    index = OwnershipIndex()
    index.put(src("a", "x", "2026-01-01T00:00:00Z"),
              [("f", "web.b.svc.cluster.local"), ("g", "web.a.svc.cluster.local")])
    (v,) = index.refusals("AccessPoint", "a", "x")
    assert "Service name of namespace b" in v.message


CLAIM = st.tuples(
    st.sampled_from(["a", "b", "c"]),  # namespace
    st.sampled_from(["x", "y"]),  # name
    st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"]),
    st.lists(st.sampled_from(["h.example.com", "*.example.com", "h.${region}.example.com", "q.example.com",
                              "${zone}.example.com", "h.eu.example.com"]), min_size=1, max_size=3),
)


def verdicts(events: list[tuple[str, str, str, list[str]]], policies: Policies) -> dict[tuple[str, str], list[str]]:
    index = OwnershipIndex(policies)
    final: dict[tuple[str, str], tuple[str, list[str]]] = {}
    for ns, name, created, hosts in events:
        index.put(src(ns, name, created), [(f"h{i}", h) for i, h in enumerate(hosts)])
        final[(ns, name)] = (created, hosts)
        index.refusals("AccessPoint", ns, name)  # queried between events: memos must never go stale
    return {k: sorted(v.message for v in index.refusals("AccessPoint", *k)) for k in final}


@settings(max_examples=150, deadline=None)
@given(st.lists(CLAIM, min_size=1, max_size=7), st.randoms(use_true_random=False), st.booleans())
def test_verdicts_are_the_same_under_any_event_order(events: list[Any], rnd: Any, with_policy: bool) -> None:
    # The last event per object is its state; the order of the *final* states is what we permute.
    last = {(ns, name): (ns, name, created, hosts) for ns, name, created, hosts in events}
    finals = list(last.values())
    pols = Policies.build([policy("p", ["a"], domains=["*.example.com"])]) if with_policy else Policies()
    expected = verdicts(finals, pols)
    shuffled = finals[:]
    rnd.shuffle(shuffled)
    # Replaying all intermediate events too (in a shuffled order, each object's final state last).
    replay = events[:]
    rnd.shuffle(replay)
    assert verdicts(shuffled, pols) == expected
    assert verdicts(replay + shuffled, pols) == expected


@settings(max_examples=150, deadline=None)
@given(st.lists(CLAIM, min_size=1, max_size=6, unique_by=lambda c: (c[0], c[1])))
def test_first_claim_wins(events: list[Any]) -> None:
    """With concrete hosts: the owner of every host is the namespace of its earliest claimant, and
    exactly the claimants of other namespaces are refused."""
    concrete = [(ns, name, created, [h for h in hosts if "$" not in h and "*" not in h] or ["q.example.com"])
                for ns, name, created, hosts in events]
    got = verdicts(concrete, Policies())
    for ns, name, _created, hosts in concrete:
        expect_refused = False
        for host in hosts:
            earliest = min((c, n, nm) for n, nm, c, hs in concrete if host in hs)
            expect_refused |= earliest[1] != ns
        assert bool(got[(ns, name)]) == expect_refused, (concrete, got)


def test_target_namespace_kinds_are_template_kinds() -> None:
    """A typo in targetNamespaces[].kinds used to be accepted and then matched nothing (every object of
    that kind refused, silently): the kinds are the template kinds' enum, in the model and the CRD."""
    from accesspoint.kinds import TEMPLATE_KIND_NAMES
    from accesspoint.tenancy import TenancyPolicy
    from federation.crdgen import crd_manifest

    def policy(kinds: list[str]) -> dict[str, Any]:
        return {"metadata": {"name": "p"},
                "spec": {"namespaces": ["pay"], "targetNamespaces": [{"namespace": "edge", "kinds": kinds}]}}

    TenancyPolicy.model_validate(policy(["Gateway", "VirtualService"]))
    with pytest.raises(ValidationError) as err:
        TenancyPolicy.model_validate(policy(["Gateway", "Gatway"]))
    assert err.value.errors()[0]["loc"] == ("spec", "targetNamespaces", 0, "kinds", 1)
    schema = crd_manifest(TenancyPolicy)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    items = schema["properties"]["spec"]["properties"]["targetNamespaces"]["items"]["properties"]["kinds"]["items"]
    assert items["enum"] == list(TEMPLATE_KIND_NAMES)


def test_a_certificate_without_its_accesspoint_claims_no_host() -> None:
    """A Certificate made by hand with no AccessPoint of its name is never issued (AccessPointMissing):
    its hosts must not refuse another team's AccessPoint (HostConflict). Once its AccessPoint exists it
    claims them like any other; when that AccessPoint goes, it stops."""
    from types import SimpleNamespace
    from typing import cast

    from federation.controller import Controller
    from federation.tenancy import Tenancy

    enqueued: list[tuple[str, str, str]] = []
    ctl = SimpleNamespace(enqueue_object=lambda *k: enqueued.append(k), accesspoints={})
    feature = Tenancy(cast(Controller, ctl))

    def gateway_ap(ns: str, name: str, host: str, created: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": ns, "uid": f"{ns}-{name}", "generation": 1,
                             "creationTimestamp": created},
                "spec": {"template": [{"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                                       "metadata": {"name": "gw"},
                                       "spec": {"servers": [{"hosts": [host], "port": {
                                           "number": 443, "name": "https", "protocol": "HTTPS"}}]}}]}}

    cert = {"metadata": {"name": "mine", "namespace": "early", "uid": "c1", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"hosts": ["shop.example.com"], "issuerRef": {"name": "corp"}}}
    feature.on_object("Certificate", "ADDED", cert)
    late = gateway_ap("late", "shop", "shop.example.com", "2026-02-01T00:00:00Z")
    feature.on_object("AccessPoint", "ADDED", late)
    assert feature.validate(AccessPoint.model_validate(late), [], None, PlacementDecision()) == []
    assert feature.refusals("Certificate", cert) == []

    # Its AccessPoint appears: the Certificate (the earlier claim) now owns the host.
    own = gateway_ap("early", "mine", "other.example.com", "2026-03-01T00:00:00Z")
    feature.on_object("AccessPoint", "ADDED", own)
    problems = feature.validate(AccessPoint.model_validate(late), [], None, PlacementDecision())
    assert any("HostConflict" in p or "shop.example.com" in p for p in problems), "the certificate claims again"
    assert ("AccessPoint", "late", "shop") in enqueued  # the loser is looked at again
    feature.on_object("AccessPoint", "DELETED", own)
    assert feature.validate(AccessPoint.model_validate(late), [], None, PlacementDecision()) == []
