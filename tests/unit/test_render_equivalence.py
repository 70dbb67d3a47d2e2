"""The compiled renderer (accesspoint.render.Renderer, used by the controller and the placement
benchmark) and the JSON patch fast path (accesspoint.overrides) give exactly what the
straightforward implementations give: same objects, same key order, same hashes, same errors."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
from hypothesis import given, settings
from hypothesis import strategies as st

from accesspoint.models import AccessPoint
from accesspoint.overrides import _fast_json_patch
from accesspoint.render import RenderContext, Renderer, _render_reference, render
from placement.models import ClusterFacts

HUB_ID = "hub-1"

# Strings as templates hold them: variables, escapes, malformed ones, '$' without a variable, the
# renderer's internal marker character and JSON-escaped text.
STRINGS = st.one_of(
    st.sampled_from([
        "${cluster}", "gw-${cluster}-${zone}", "${region}.${namespace}.${name}", "$${cluster}",
        "$${x}-${cluster}", "price: $5", "$", "plain", "", "${zone}", "${name}-tls", "${cluster}}",
        "${regoin}", "${cluster", "$${", "\ue000", "\ue0000\ue000", '"quoted" ${cluster}', "caf\u00e9-${zone}",
        "\\ue0000\\ue000", "a/b~c",
    ]),
    st.text(alphabet="${}ab-/\\\"\u00e9", max_size=8),
)
KEYS = st.sampled_from(["a", "b", "host", "hosts", "timeout", "ports", "x-y", "${cluster}", "ü"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | STRINGS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3),
    max_leaves=12,
)
KINDS = [("Service", "v1"), ("DestinationRule", "networking.istio.io/v1"),
         ("VirtualService", "networking.istio.io/v1beta1"), ("Gateway", "networking.istio.io/v1")]
NAMES = st.sampled_from(["svc", "${name}", "${name}-${cluster}", "dr-${region}", "x"])


@st.composite
def template_object(draw: st.DrawFn) -> dict[str, Any]:
    kind, api_version = draw(st.sampled_from(KINDS))
    meta: dict[str, Any] = {"name": draw(NAMES)}
    if draw(st.booleans()):
        meta["namespace"] = draw(st.sampled_from(["${namespace}", "other", "ns-${region}"]))
    if draw(st.booleans()):
        meta["labels"] = draw(st.dictionaries(st.sampled_from(["app", "zone"]), STRINGS, max_size=2))
    if draw(st.booleans()):
        meta["annotations"] = draw(st.dictionaries(
            st.sampled_from(["note", "meshfed.io/content-hash"]), STRINGS, max_size=2))
    return {"apiVersion": api_version, "kind": kind, "metadata": meta,
            "spec": draw(st.dictionaries(KEYS, JSON, max_size=4))}


PATHS = st.sampled_from(["/spec/a", "/spec/b/0", "/spec/hosts/-", "/spec/ports/0/x", "/metadata/labels/l",
                         "/metadata/name", "/spec/a~1b", "/spec", "/spec/b/01", "/spec/timeout"])


@st.composite
def override(draw: st.DrawFn, template: list[dict[str, Any]]) -> dict[str, Any]:
    target = draw(st.sampled_from(template))
    out: dict[str, Any] = {"target": {"kind": target["kind"], "name": draw(st.sampled_from(
        [target["metadata"]["name"], "svc", "x", "dr-us-east"]))}}
    scope = draw(st.sampled_from(["regions", "zones", "clusters", "clusterSelector"]))
    if scope == "regions":
        out["regions"] = draw(st.lists(st.sampled_from(["us-east", "eu-west"]), min_size=1, max_size=2))
    elif scope == "zones":
        out["zones"] = ["us-east-a"]
    elif scope == "clusters":
        out["clusters"] = draw(st.lists(st.sampled_from(["east-1", "east-2", "eu-1"]), min_size=1, max_size=2))
    else:
        out["clusterSelector"] = {"matchLabels": {"tier": "gold"}}
    if draw(st.booleans()):
        out["mergePatch"] = draw(st.dictionaries(st.sampled_from(["spec", "metadata"]),
                                                 st.dictionaries(KEYS, JSON, max_size=2), max_size=2))
    else:
        out["jsonPatch"] = draw(st.lists(st.fixed_dictionaries(
            {"op": st.sampled_from(["add", "replace", "remove", "test"]), "path": PATHS, "value": JSON}),
            min_size=1, max_size=3))
    return out


@st.composite
def access_point(draw: st.DrawFn) -> AccessPoint:
    template = draw(st.lists(template_object(), min_size=1, max_size=4))
    overrides = draw(st.lists(override(template), max_size=3))
    return AccessPoint.model_validate({
        "metadata": {"name": draw(st.sampled_from(["checkout", "caf\u00e9"])), "namespace": "payments"},
        "spec": {"template": template, "overrides": overrides},
    })


CLUSTERS = [
    ClusterFacts(name="east-1", region="us-east", zone="us-east-a", labels={"tier": "gold"}, ready=True),
    ClusterFacts(name="east-2", region="us-east", zone="us-east-a", ready=True),
    ClusterFacts(name="east-3", region="us-east", zone="us-east-b", labels={"tier": "gold"}, ready=True),
    ClusterFacts(name="eu-1", region="eu-west", zone="eu-west-a", ready=True),
    ClusterFacts(name='q"\\-\u00e9', region="eu-west", zone="eu-west-a", ready=True),
]


def context(kind: str) -> RenderContext:
    """Transforms that keep their inputs (copy-on-write, per region) and generated objects shared by
    the clusters of a region, as the traffic wiring builds them."""
    if kind == "none":
        return RenderContext()

    def by_region(objects: list[dict[str, Any]], cluster: ClusterFacts) -> list[dict[str, Any]]:
        return [{**o, "spec": {**(o.get("spec") or {}), "region": cluster.region}}
                if o["kind"] == "DestinationRule" else o for o in objects]

    shared = {region: ({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                        "metadata": {"name": "svc", "namespace": "payments", "labels": {"x": region}},
                        "spec": {"hosts": [f"h.{region}"], "endpoints": [{"address": "10.0.0.1"}]}},)
              for region in ("us-east", "eu-west")}
    generated = {c.name: shared[c.region] for c in CLUSTERS}
    return RenderContext(transforms=(by_region,), generated=generated)


def wire(objects: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(o) for o in objects]  # key order included


@settings(max_examples=300, deadline=None)
@given(access_point(), st.sampled_from(["none", "traffic"]), st.permutations(CLUSTERS))
def test_renderer_equals_the_reference_rendering(ap: AccessPoint, ctx_kind: str,
                                                 clusters: list[ClusterFacts]) -> None:
    ctx = context(ctx_kind)
    snapshot = copy.deepcopy(dict(ctx.generated))
    before = ap.model_dump()
    renderer = Renderer(ap, HUB_ID, ctx)
    for cluster in clusters:
        want = _render_reference(ap, cluster, HUB_ID, ctx)
        got = renderer.render(cluster)
        assert [str(e) for e in got.errors] == [str(e) for e in want.errors]
        assert wire(got.objects) == wire(want.objects)
        single = render(ap, cluster, HUB_ID, ctx)
        assert [str(e) for e in single.errors] == [str(e) for e in want.errors]
        assert wire(single.objects) == wire(want.objects)
    assert ap.model_dump() == before
    assert dict(ctx.generated) == snapshot


def test_renderer_shares_what_does_not_change_between_clusters() -> None:
    ap = AccessPoint.model_validate({
        "metadata": {"name": "checkout", "namespace": "payments"},
        "spec": {"template": [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "${name}"}, "spec": {"ports": []}},
            {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "${name}"},
             "spec": {"servers": [{"hosts": ["${cluster}.example"]}]}},
        ]},
    })
    renderer = Renderer(ap, HUB_ID)
    a, b = (renderer.render(c).objects for c in CLUSTERS[:2])
    assert a[0] is b[0]  # the Service: same content, labelled and hashed once
    assert a[1] != b[1]
    # render() hands out objects of the caller's own
    one, two = render(ap, CLUSTERS[0], HUB_ID).objects, render(ap, CLUSTERS[1], HUB_ID).objects
    assert one[0] == two[0] and one[0] is not two[0] and one[0]["spec"] is not two[0]["spec"]


OPS = st.lists(st.fixed_dictionaries({
    "op": st.sampled_from(["add", "replace", "remove", "move", "copy", "test"]),
    "path": st.sampled_from(["/a", "/a/0", "/a/1", "/a/-", "/b/c", "/b/c/d", "/b", "/", "", "/a/01", "/a/x",
                             "/b/~1", "/n/0", "/a/0/c", "/l/2", "/l/3"]),
    "value": JSON,
}, optional={"from": st.sampled_from(["/a", "/b/c"])}), min_size=1, max_size=4)
DOCS = st.fixed_dictionaries({}, optional={
    "a": st.lists(JSON, max_size=3), "b": st.dictionaries(st.sampled_from(["c", "d", "/"]), JSON, max_size=2),
    "n": st.integers(), "l": st.lists(st.integers(), min_size=3, max_size=3),
})


@settings(max_examples=500, deadline=None)
@given(DOCS, OPS)
def test_fast_json_patch_equals_jsonpatch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    snapshot = copy.deepcopy(doc)
    fast = _fast_json_patch(doc, ops)
    assert doc == snapshot  # the input is never mutated
    if fast is None:
        return  # jsonpatch runs instead
    want = jsonpatch.apply_patch(doc, ops, in_place=False)
    assert json.dumps(fast) == json.dumps(want)


def test_fast_json_patch_takes_the_common_override() -> None:
    doc: dict[str, Any] = {"spec": {"http": [{"route": []}]}}
    out = _fast_json_patch(doc, [{"op": "add", "path": "/spec/http/0/timeout", "value": "5s"}])
    assert out == {"spec": {"http": [{"route": [], "timeout": "5s"}]}}
    assert doc == {"spec": {"http": [{"route": []}]}}
    assert out is not None and out["spec"]["http"][0]["route"] is doc["spec"]["http"][0]["route"]
