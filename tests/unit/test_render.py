"""accesspoint.render: variables (and `$${x}` escapes), validation naming the field, owner labels,
content hash, determinism, RenderContext (transforms, generated objects) and overrides after both."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accesspoint.models import AccessPoint
from accesspoint.ownership import HASH_ANNOTATION, HUB, MANAGED_BY, OWNER_NAME, OWNER_NAMESPACE, owner_of
from accesspoint.render import (
    EMPTY_CONTEXT,
    VARIABLES,
    ObjectKey,
    RenderContext,
    TemplateError,
    content_hash,
    key_of,
    render,
    substitute,
    validate,
    variables_for,
)
from placement.models import ClusterFacts

HUB_ID = "hub-1"
EAST = ClusterFacts(name="east-1", region="us-east", zone="us-east-a", labels={"tier": "gold"}, ready=True)
WEST = ClusterFacts(name="west-1", region="us-west", zone="us-west-b", ready=True)
VARS = {"cluster": "east-1", "zone": "us-east-a", "region": "us-east", "namespace": "payments", "name": "checkout"}


def service(name: str = "checkout-gw", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"app": "checkout-gw"}},
        "spec": spec or {"type": "LoadBalancer", "ports": [{"name": "https", "port": 443}]},
    }


def gateway(hosts: list[str] | None = None, api_version: str = "networking.istio.io/v1") -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": "Gateway",
        "metadata": {"name": "checkout"},
        "spec": {
            "selector": {"app": "checkout-gw"},
            "servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                         "hosts": hosts or ["checkout.${region}.shop.example"]}],
        },
    }


def virtual_service() -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": "checkout", "annotations": {"note": "served by ${cluster} in ${zone}"}},
        "spec": {
            "hosts": ["checkout.${region}.shop.example"],
            "gateways": ["checkout"],
            "http": [{"route": [{"destination": {"host": "checkout.${namespace}.svc.cluster.local"}}],
                      "headers": {"response": {"set": {"x-served-by": "${cluster}", "x-ap": "${name}"}}}}],
        },
    }


def make_ap(template: list[dict[str, Any]], overrides: list[dict[str, Any]] | None = None,
            namespace: str = "payments", name: str = "checkout") -> AccessPoint:
    return AccessPoint.model_validate({
        "metadata": {"name": name, "namespace": namespace, "generation": 1},
        "spec": {"template": template, "overrides": overrides or []},
    })


def bundle() -> AccessPoint:
    return make_ap([service(), gateway(), virtual_service()])


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


# ---- substitution ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${cluster}", "east-1"),
        ("gw-${cluster}-${zone}", "gw-east-1-us-east-a"),
        ("${region}.${namespace}.${name}", "us-east.payments.checkout"),
        ("no variables", "no variables"),
        ("$cluster", "$cluster"),
        ("price: $5", "price: $5"),
        ("$", "$"),
        ("$${cluster}", "${cluster}"),
        ("$${anything}", "${anything}"),
        ("$${cluster}-${cluster}", "${cluster}-east-1"),
        ("${cluster}$${zone}", "east-1${zone}"),
        ("${cluster}}", "east-1}"),
        ("{cluster}", "{cluster}"),
        ("", ""),
    ],
)
def test_substitute_table(text: str, expected: str) -> None:
    assert substitute(text, VARS, "p") == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("${regoin}", "unknown variable ${regoin}"),
        ("x-${Cluster}", "unknown variable ${Cluster}"),
        ("${ cluster }", "unknown variable ${ cluster }"),
        ("${}", "unknown variable ${}"),
        ("${cluster", "malformed variable"),
        ("a-${cluster}-${zone", "malformed variable"),
        ("${regoin-${cluster}", "malformed variable"),
        ("pre ${ ${zone}", "malformed variable"),
    ],
)
def test_substitute_rejects_unknown_and_malformed(text: str, fragment: str) -> None:
    with pytest.raises(TemplateError) as info:
        substitute({"spec": {"hosts": ["ok", text]}}, VARS, "spec.template[3]")
    assert info.value.path == "spec.template[3].spec.hosts[1]"
    assert fragment in str(info.value)
    assert str(info.value).startswith("spec.template[3].spec.hosts[1]: ")


def test_unknown_variable_message_lists_the_known_ones() -> None:
    with pytest.raises(TemplateError) as info:
        substitute("${regoin}", VARS, "f")
    for var in VARIABLES:
        assert "${" + var + "}" in str(info.value)


def test_substitute_walks_nested_values_and_leaves_non_strings_and_keys_alone() -> None:
    value: dict[str, Any] = {"${cluster}": {"a": [1, 2.5, True, None, "${zone}", ["${region}"]]}, "n": 443}
    out = substitute(value, VARS, "root")
    assert out == {"${cluster}": {"a": [1, 2.5, True, None, "us-east-a", ["us-east"]]}, "n": 443}
    assert value["${cluster}"]["a"][4] == "${zone}"  # input not mutated


@given(st.text(alphabet=st.characters(blacklist_characters="$"), max_size=40))
def test_text_without_dollar_is_unchanged(text: str) -> None:
    assert substitute(text, VARS, "p") == text


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-.", min_size=1, max_size=12))
def test_escape_yields_the_literal_for_any_name(name: str) -> None:
    assert substitute(f"a $${{{name}}} b", VARS, "p") == f"a ${{{name}}} b"


# ---- validation -----------------------------------------------------------------------------

def test_valid_bundle_has_no_errors() -> None:
    assert validate(bundle()) == []


def test_unknown_variable_names_the_exact_field() -> None:
    ap = make_ap([service(), gateway(hosts=["ok.example", "checkout.${regoin}.shop.example"])])
    errors = validate(ap)
    assert [e.path for e in errors] == ["spec.template[1].spec.servers[0].hosts[1]"]
    assert "unknown variable ${regoin}" in str(errors[0])


def test_malformed_variable_in_metadata_names_the_field() -> None:
    svc = service()
    svc["metadata"]["labels"]["zone"] = "${zone"
    errors = validate(make_ap([svc]))
    assert [e.path for e in errors] == ["spec.template[0].metadata.labels.zone"]
    assert "malformed variable" in str(errors[0])


@pytest.mark.parametrize("api_version", ["networking.istio.io/v1", "networking.istio.io/v1beta1",
                                         "networking.istio.io/v1alpha3"])
def test_accepted_istio_api_versions(api_version: str) -> None:
    assert validate(make_ap([gateway(api_version=api_version)])) == []


@pytest.mark.parametrize(
    ("index", "obj", "fragment"),
    [
        (0, gateway(api_version="networking.istio.io/v2"), "use networking.istio.io/v1, networking.istio.io/v1beta1"),
        # Gateway names two kinds: the error lists the apiVersions of both
        (0, gateway(api_version="gateway.networking.k8s.io/v1alpha2"),
         "networking.istio.io/v1alpha3, gateway.networking.k8s.io/v1, gateway.networking.k8s.io/v1beta1"),
        (0, gateway(api_version="v1"), "not an apiVersion of Gateway"),
        (1, {**service(), "apiVersion": "apps/v1"}, "(use v1)"),
        (1, {**service(), "apiVersion": "v2"}, "not an apiVersion of Service"),
    ],
)
def test_wrong_api_version_names_the_field(index: int, obj: dict[str, Any], fragment: str) -> None:
    template = [obj, service()] if index == 0 else [gateway(), obj]
    errors = validate(make_ap(template))
    assert [e.path for e in errors] == [f"spec.template[{index}].apiVersion"]
    assert fragment in str(errors[0])


def test_duplicate_objects_are_reported_against_the_later_one() -> None:
    dup = service()
    explicit_ns = service()
    explicit_ns["metadata"]["namespace"] = "payments"  # same as the AccessPoint's: still a duplicate
    other_ns = service()
    other_ns["metadata"]["namespace"] = "elsewhere"  # different namespace: fine
    errors = validate(make_ap([service(), gateway(), dup, explicit_ns, other_ns]))
    assert [(e.path, str(e).split(": ", 1)[1]) for e in errors] == [
        ("spec.template[2].metadata.name", "duplicates spec.template[0]"),
        ("spec.template[3].metadata.name", "duplicates spec.template[0]"),
    ]


def test_same_name_different_kinds_is_fine() -> None:
    gw, vs = gateway(), virtual_service()
    assert gw["metadata"]["name"] == vs["metadata"]["name"]
    assert validate(make_ap([gw, vs])) == []


def test_validation_reports_every_error() -> None:
    bad_gw = gateway(api_version="networking.istio.io/v9", hosts=["${nope}"])
    errors = validate(make_ap([bad_gw, service(), service()]))
    assert sorted(e.path for e in errors) == [
        "spec.template[0].apiVersion",
        "spec.template[0].spec.servers[0].hosts[0]",
        "spec.template[2].metadata.name",
    ]


def test_render_refuses_bad_variables_and_writes_nothing() -> None:
    ap = make_ap([service(), gateway(hosts=["${regoin}.example"]), virtual_service()])
    out = render(ap, EAST, HUB_ID)
    assert out.objects == []
    assert [e.path for e in out.errors] == ["spec.template[1].spec.servers[0].hosts[0]"]


# ---- rendering ------------------------------------------------------------------------------

def test_render_substitutes_per_cluster() -> None:
    east = by_kind(render(bundle(), EAST, HUB_ID).objects)
    west = by_kind(render(bundle(), WEST, HUB_ID).objects)
    assert east["Gateway"]["spec"]["servers"][0]["hosts"] == ["checkout.us-east.shop.example"]
    assert west["Gateway"]["spec"]["servers"][0]["hosts"] == ["checkout.us-west.shop.example"]
    headers = east["VirtualService"]["spec"]["http"][0]["headers"]["response"]["set"]
    assert headers == {"x-served-by": "east-1", "x-ap": "checkout"}
    assert east["VirtualService"]["metadata"]["annotations"]["note"] == "served by east-1 in us-east-a"
    route = east["VirtualService"]["spec"]["http"][0]["route"][0]
    assert route["destination"]["host"] == "checkout.payments.svc.cluster.local"


def test_render_output_shape() -> None:
    out = render(bundle(), EAST, HUB_ID)
    assert out.errors == []
    assert [key_of(o) for o in out.objects] == [
        ObjectKey("Service", "payments", "checkout-gw", ""),
        ObjectKey("Gateway", "payments", "checkout", "networking.istio.io"),
        ObjectKey("VirtualService", "payments", "checkout", "networking.istio.io"),
    ]
    objs = by_kind(out.objects)
    # meshfed writes the kind's first version whatever version the template names
    assert objs["VirtualService"]["apiVersion"] == "networking.istio.io/v1"
    assert objs["Service"]["apiVersion"] == "v1"
    for obj in out.objects:
        assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
        assert set(obj["metadata"]) == {"name", "namespace", "labels", "annotations"}


def test_explicit_namespace_is_kept_and_substituted() -> None:
    svc = service()
    svc["metadata"]["namespace"] = "gw-${region}"
    (obj,) = render(make_ap([svc]), EAST, HUB_ID).objects
    assert obj["metadata"]["namespace"] == "gw-us-east"


def test_owner_labels_win_over_template_labels_and_keep_the_others() -> None:
    svc = service()
    svc["metadata"]["labels"].update({HUB: "someone-else", OWNER_NAME: "spoof", MANAGED_BY: "helm"})
    (obj,) = render(make_ap([svc]), EAST, HUB_ID).objects
    assert obj["metadata"]["labels"] == {
        "app": "checkout-gw",
        MANAGED_BY: "meshfed",
        HUB: HUB_ID,
        OWNER_NAMESPACE: "payments",
        OWNER_NAME: "checkout",
    }
    owner = owner_of(obj, HUB_ID)
    assert owner is not None and owner.key == "payments/checkout"


def test_hash_annotation_is_the_hash_of_the_object_without_it() -> None:
    for obj in render(bundle(), EAST, HUB_ID).objects:
        stamped = obj["metadata"]["annotations"][HASH_ANNOTATION]
        bare = copy.deepcopy(obj)
        del bare["metadata"]["annotations"][HASH_ANNOTATION]
        assert stamped == content_hash(bare)
        assert len(stamped) == 16 and int(stamped, 16) >= 0


def test_a_template_cannot_set_the_hash_annotation() -> None:
    svc = service()
    svc["metadata"]["annotations"] = {HASH_ANNOTATION: "0000000000000000"}
    (obj,) = render(make_ap([svc]), EAST, HUB_ID).objects
    (plain,) = render(make_ap([service()]), EAST, HUB_ID).objects
    assert obj["metadata"]["annotations"][HASH_ANNOTATION] == plain["metadata"]["annotations"][HASH_ANNOTATION]


def test_hash_changes_with_content_cluster_and_owner_but_not_with_unrelated_input() -> None:
    def hashes(ap: AccessPoint, cluster: ClusterFacts = EAST, hub: str = HUB_ID) -> list[str]:
        return [o["metadata"]["annotations"][HASH_ANNOTATION] for o in render(ap, cluster, hub).objects]

    base = hashes(bundle())
    assert base == hashes(bundle())
    assert hashes(bundle(), WEST) != base
    assert hashes(bundle(), hub="hub-2") != base
    # the Service has no variables: only the owner labels can change its hash
    assert hashes(bundle(), WEST)[0] == base[0]
    changed = make_ap([service(type="ClusterIP", ports=[{"port": 80}]), gateway(), virtual_service()])
    assert hashes(changed)[0] != base[0] and hashes(changed)[1:] == base[1:]
    # an unused cluster label does not show in the objects
    relabelled = EAST.model_copy(update={"labels": {"tier": "silver"}})
    assert hashes(bundle(), relabelled) == base


def test_content_hash_is_key_order_independent_and_pinned() -> None:
    a = {"kind": "Service", "metadata": {"name": "a", "labels": {"x": "1", "y": "2"}}, "spec": {"port": 443}}
    b = {"spec": {"port": 443}, "metadata": {"labels": {"y": "2", "x": "1"}, "name": "a"}, "kind": "Service"}
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash({**a, "spec": {"port": 444}})
    # Pinned: a change of the hash function rewrites every member object on upgrade.
    assert content_hash(a) == "d49221d1f013ee2f"


def test_render_does_not_mutate_its_inputs() -> None:
    ap = bundle()
    before = ap.model_dump()
    generated = {"east-1": ({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "payments"},
                             "type": "kubernetes.io/tls", "data": {"tls.crt": "Y2VydA=="}},)}
    ctx = RenderContext(generated=generated)
    snapshot = copy.deepcopy(generated)
    first = render(ap, EAST, HUB_ID, ctx)
    first.objects[0]["spec"]["mutated"] = True
    first.objects[-1]["metadata"]["labels"]["mutated"] = "yes"
    second = render(ap, EAST, HUB_ID, ctx)
    assert ap.model_dump() == before
    assert generated == snapshot
    assert "mutated" not in second.objects[0]["spec"]
    assert "mutated" not in second.objects[-1]["metadata"]["labels"]


# ---- render context -------------------------------------------------------------------------

def add_label(key: str, value: str) -> Any:
    def transform(objects: list[dict[str, Any]], cluster: ClusterFacts) -> list[dict[str, Any]]:
        out = []
        for obj in objects:
            obj = copy.deepcopy(obj)
            obj["metadata"]["labels"][key] = f"{value}@{cluster.name}"
            out.append(obj)
        return out

    return transform


def test_transforms_run_in_order_on_substituted_objects() -> None:
    seen: list[str] = []

    def record(objects: list[dict[str, Any]], cluster: ClusterFacts) -> list[dict[str, Any]]:
        seen.append(objects[1]["spec"]["servers"][0]["hosts"][0])
        return objects

    def overwrite(objects: list[dict[str, Any]], cluster: ClusterFacts) -> list[dict[str, Any]]:
        return [{**o, "metadata": {**o["metadata"], "labels": {**o["metadata"]["labels"], "step": "2"}}}
                for o in objects]

    ctx = RenderContext(transforms=(record, add_label("step", "1"), overwrite))
    out = render(bundle(), EAST, HUB_ID, ctx)
    assert seen == ["checkout.us-east.shop.example"]  # transforms see substituted objects
    assert {o["metadata"]["labels"]["step"] for o in out.objects} == {"2"}


def test_generated_objects_get_owner_labels_and_hash_and_are_per_cluster() -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": "checkout-tls", "namespace": "payments", "labels": {"cert": "c1"}},
              "data": {"tls.crt": "Y2VydA=="}}
    ctx = RenderContext(transforms=(add_label("t", "x"),), generated={"east-1": (secret,)})
    east = render(bundle(), EAST, HUB_ID, ctx).objects
    west = render(bundle(), WEST, HUB_ID, ctx).objects
    assert [o["kind"] for o in east] == ["Service", "Gateway", "VirtualService", "Secret"]
    assert [o["kind"] for o in west] == ["Service", "Gateway", "VirtualService"]
    gen = east[-1]
    assert owner_of(gen, HUB_ID) is not None
    assert gen["metadata"]["labels"]["cert"] == "c1"
    assert "t" not in gen["metadata"]["labels"]  # generated objects are added after the transforms
    assert gen["data"] == secret["data"] and gen["type"] == "kubernetes.io/tls"
    bare = copy.deepcopy(gen)
    del bare["metadata"]["annotations"][HASH_ANNOTATION]
    assert gen["metadata"]["annotations"][HASH_ANNOTATION] == content_hash(bare)


def test_context_merge_concatenates_transforms_and_generated() -> None:
    t1, t2 = add_label("a", "1"), add_label("b", "2")
    s1 = {"kind": "Secret", "metadata": {"name": "s1"}}
    s2 = {"kind": "Secret", "metadata": {"name": "s2"}}
    s3 = {"kind": "Secret", "metadata": {"name": "s3"}}
    one = RenderContext(transforms=(t1,), generated={"east-1": (s1,)})
    two = RenderContext(transforms=(t2,), generated={"east-1": (s2,), "west-1": (s3,)})
    merged = one.merged(two)
    assert merged.transforms == (t1, t2)
    assert dict(merged.generated) == {"east-1": (s1, s2), "west-1": (s3,)}
    assert dict(one.generated) == {"east-1": (s1,)}  # inputs untouched
    assert EMPTY_CONTEXT.merged(EMPTY_CONTEXT) == EMPTY_CONTEXT


# ---- overrides ------------------------------------------------------------------------------

def test_overrides_apply_after_substitution_transforms_and_generation() -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls", "namespace": "payments"},
              "data": {"k": "dg=="}}
    overrides: list[dict[str, Any]] = [
        {"zones": ["us-east-a"], "target": {"kind": "Gateway", "name": "checkout"},
         "mergePatch": {"spec": {"servers": [{"port": {"number": 8443}, "hosts": ["east.example"]}]}}},
        {"clusters": ["east-1"], "target": {"kind": "Service", "name": "checkout-gw"},
         "mergePatch": {"metadata": {"labels": {"t": "patched", MANAGED_BY: "helm"}}}},
        {"clusters": ["east-1"], "target": {"kind": "Secret", "name": "tls"},
         "jsonPatch": [{"op": "add", "path": "/data/extra", "value": "eA=="}]},
    ]
    ap = make_ap([service(), gateway(), virtual_service()], overrides)
    ctx = RenderContext(transforms=(add_label("t", "transform"),), generated={"east-1": (secret,)})
    east = by_kind(render(ap, EAST, HUB_ID, ctx).objects)
    assert east["Gateway"]["spec"]["servers"] == [{"port": {"number": 8443}, "hosts": ["east.example"]}]
    assert east["Service"]["metadata"]["labels"]["t"] == "patched"  # after the transform
    assert east["Service"]["metadata"]["labels"][MANAGED_BY] == "meshfed"  # owner labels after overrides
    assert east["Secret"]["data"] == {"k": "dg==", "extra": "eA=="}  # generated objects can be patched
    west = by_kind(render(ap, WEST, HUB_ID, ctx).objects)
    assert west["Gateway"]["spec"]["servers"][0]["hosts"] == ["checkout.us-west.shop.example"]
    # the hash covers the overridden content
    plain = by_kind(render(make_ap([service(), gateway(), virtual_service()]), EAST, HUB_ID, ctx).objects)
    assert plain["Gateway"]["metadata"]["annotations"] != east["Gateway"]["metadata"]["annotations"]


def test_failing_override_fails_the_whole_cluster_with_the_override_path() -> None:
    overrides = [
        {"clusters": ["east-1"], "target": {"kind": "Gateway", "name": "missing"}, "mergePatch": {"spec": {}}},
    ]
    ap = make_ap([service(), gateway()], overrides)
    out = render(ap, EAST, HUB_ID)
    assert out.objects == []
    assert [e.path for e in out.errors] == ["spec.overrides[0] on cluster east-1"]
    assert "not in the rendered bundle" in str(out.errors[0])
    assert render(ap, WEST, HUB_ID).errors == []  # the override does not select west-1


def test_variables_for() -> None:
    assert variables_for(bundle(), EAST) == VARS


# ---- properties -----------------------------------------------------------------------------

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10)
CLUSTERS = st.lists(
    st.builds(
        lambda n, r, z: ClusterFacts(name=n, region=r, zone=z, ready=True),
        NAMES, st.sampled_from(["r1", "r2", "r3"]), st.sampled_from(["z1", "z2", "z3"]),
    ),
    min_size=1, max_size=6, unique_by=lambda c: c.name,
)


def shuffled(value: Any, rnd: Any) -> Any:
    """The same JSON value with every object's keys in another order."""
    if isinstance(value, dict):
        keys = list(value)
        rnd.shuffle(keys)
        return {k: shuffled(value[k], rnd) for k in keys}
    if isinstance(value, list):
        return [shuffled(v, rnd) for v in value]
    return value


@settings(max_examples=50, deadline=None)
@given(CLUSTERS, st.randoms(use_true_random=False))
def test_render_is_deterministic_and_independent_of_cluster_and_key_order(
    clusters: list[ClusterFacts], rnd: Any
) -> None:
    template = [service(), gateway(), virtual_service()]
    ap = make_ap(template)
    ap_reordered = make_ap(shuffled(template, rnd))
    order = list(clusters)
    rnd.shuffle(order)
    first = {c.name: render(ap, c, HUB_ID).objects for c in clusters}
    second = {c.name: render(ap_reordered, c, HUB_ID).objects for c in order}
    assert first == second
    for name, objects in first.items():
        assert [o["metadata"]["annotations"][HASH_ANNOTATION] for o in objects] == [
            o["metadata"]["annotations"][HASH_ANNOTATION] for o in second[name]
        ]
    # clusters that share region and zone and differ only in name get the same Gateway
    for a in clusters:
        for b in clusters:
            if (a.region, a.zone) == (b.region, b.zone):
                assert first[a.name][1] == first[b.name][1]


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(NAMES, st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(NAMES, children, max_size=3),
    max_leaves=10,
), max_size=5))
def test_rendered_spec_is_the_substituted_template_spec(spec: dict[str, Any]) -> None:
    try:
        substitute(spec, VARS, "spec")
    except TemplateError:
        return  # random text may hold a malformed variable; that is covered above
    (obj,) = render(make_ap([{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": spec}]),
                    EAST, HUB_ID).objects
    assert obj["spec"] == substitute(spec, VARS, "spec")
