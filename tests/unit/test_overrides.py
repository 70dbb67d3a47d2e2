"""Overrides: selection, documented order, merge patch (RFC 7386), JSON patch (RFC 6902), errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from accesspoint.meta import LabelSelector
from accesspoint.models import AccessPointSpec
from accesspoint.overrides import (
    Override,
    apply_overrides,
    merge_patch,
    ordered,
    overrides_condition,
    validate_overrides,
)
from placement.models import ClusterFacts

EAST_A = ClusterFacts(name="east-a1", region="us-east", zone="us-east-a", labels={"tier": "gold"}, ready=True)
WEST_B = ClusterFacts(name="west-b1", region="us-west", zone="us-west-b", ready=True)


def bundle() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "checkout", "namespace": "shop"},
            "spec": {"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 443}}]},
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "checkout", "namespace": "shop"},
            "spec": {
                "host": "checkout",
                "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 100}}},
            },
        },
    ]


def ov(**kw: Any) -> Override:
    kw.setdefault("target", {"kind": "DestinationRule", "name": "checkout"})
    return Override.model_validate(kw)


def max_conns(objs: list[dict[str, Any]]) -> int:
    return int(objs[1]["spec"]["trafficPolicy"]["connectionPool"]["tcp"]["maxConnections"])


def mp(n: int) -> dict[str, Any]:
    return {"spec": {"trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": n}}}}}


def test_order_region_zone_selector_cluster_then_list() -> None:
    overrides = [
        ov(clusters=["east-a1"], mergePatch=mp(4)),
        ov(clusterSelector={"matchLabels": {"tier": "gold"}}, mergePatch=mp(3)),
        ov(zones=["us-east-a"], mergePatch=mp(2)),
        ov(regions=["us-east"], mergePatch=mp(1)),
        ov(regions=["us-east"], mergePatch=mp(11)),
    ]
    assert [i for i, _ in ordered(overrides)] == [3, 4, 2, 1, 0]
    objs, errors = apply_overrides(bundle(), overrides, EAST_A)
    assert errors == [] and max_conns(objs) == 4
    objs, errors = apply_overrides(bundle(), overrides[2:], EAST_A)
    assert max_conns(objs) == 2
    objs, errors = apply_overrides(bundle(), overrides[3:], EAST_A)
    assert max_conns(objs) == 11  # same level: list order, last wins
    objs, errors = apply_overrides(bundle(), overrides, WEST_B)
    assert errors == [] and objs == bundle()


def test_merge_patch_rfc7386() -> None:
    # examples from RFC 7386 appendix A
    cases = [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ]
    for target, patch, expected in cases:
        before = copy.deepcopy(target)
        assert merge_patch(target, patch) == expected
        assert target == before


def test_json_patch_and_input_untouched() -> None:
    objs = bundle()
    before = copy.deepcopy(objs)
    o = ov(
        target={"kind": "Gateway", "name": "checkout"},
        clusters=["east-a1"],
        jsonPatch=[
            {"op": "replace", "path": "/spec/servers/0/port/number", "value": 8443},
            {"op": "add", "path": "/metadata/labels", "value": {"tier": "gold"}},
            {"op": "test", "path": "/spec/selector/istio", "value": "ingressgateway"},
            {"op": "copy", "from": "/spec/selector", "path": "/metadata/annotations"},
            {"op": "remove", "path": "/spec/selector"},
        ],
    )
    out, errors = apply_overrides(objs, [o], EAST_A)
    assert errors == []
    assert out[0]["spec"] == {"servers": [{"port": {"number": 8443}}]}
    assert out[0]["metadata"]["labels"] == {"tier": "gold"}
    assert out[1] is objs[1]  # untouched object is shared, not copied
    assert objs == before


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        (ov(clusters=["east-a1"], jsonPatch=[{"op": "remove", "path": "/spec/nope"}]), "JSON patch"),
        (
            ov(clusters=["east-a1"], jsonPatch=[{"op": "test", "path": "/spec/host", "value": "x"}]),
            "JSON patch",
        ),
        (ov(clusters=["east-a1"], jsonPatch=[{"op": "replace", "path": "spec", "value": 1}]), "failed"),
        (
            ov(clusters=["east-a1"], target={"kind": "VirtualService", "name": "checkout"}, mergePatch={}),
            "not in the rendered bundle",
        ),
        (ov(clusters=["east-a1"], mergePatch={"metadata": {"name": "other"}}), "may not change"),
        (ov(clusters=["east-a1"], mergePatch={"kind": "Service"}), "may not change"),
    ],
)
def test_errors_name_override_and_cluster(override: Override, needle: str) -> None:
    good = ov(regions=["us-east"], mergePatch=mp(7), name="pool")
    bad = override.model_copy(update={"name": "broken"})
    objs = bundle()
    out, errors = apply_overrides(objs, [good, bad], EAST_A)
    assert out == bundle()  # all or nothing: the caller keeps the last good objects
    assert len(errors) == 1
    text = str(errors[0])
    assert text.startswith("spec.overrides[1] (broken) on cluster east-a1: ")
    assert needle in text, text
    cond = overrides_condition(errors)
    assert cond.status == "False" and "east-a1" in cond.message
    assert overrides_condition([]).status == "True"


def test_ambiguous_target_needs_namespace() -> None:
    objs = bundle()
    other = copy.deepcopy(objs[1])
    other["metadata"]["namespace"] = "other"
    objs.append(other)
    _, errors = apply_overrides(objs, [ov(clusters=["east-a1"], mergePatch=mp(1))], EAST_A)
    assert "ambiguous" in str(errors[0])
    target = {"kind": "DestinationRule", "name": "checkout", "namespace": "other"}
    out, errors = apply_overrides(objs, [ov(clusters=["east-a1"], target=target, mergePatch=mp(1))], EAST_A)
    assert errors == [] and out[2]["spec"]["trafficPolicy"]["connectionPool"]["tcp"]["maxConnections"] == 1
    assert max_conns(out) == 100


def test_model_validation() -> None:
    with pytest.raises(ValidationError, match="exactly one of clusters"):
        ov(mergePatch={})
    with pytest.raises(ValidationError, match="exactly one of clusters"):
        ov(clusters=["a"], zones=["z"], mergePatch={})
    with pytest.raises(ValidationError, match="exactly one of mergePatch"):
        ov(clusters=["a"])
    with pytest.raises(ValidationError):
        ov(clusters=["a"], jsonPatch=[{"op": "frobnicate", "path": "/x"}])
    spec = AccessPointSpec.model_validate(
        {
            "template": [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}}],
            "overrides": [
                {"clusters": ["a"], "target": {"kind": "Service", "name": "x"}, "mergePatch": {"spec": {}}}
            ],
        }
    )
    assert spec.overrides[0].clusters == ["a"]


def test_validate_overrides_against_fleet() -> None:
    report = validate_overrides(
        [
            ov(clusters=["east-a1", "ghost"], mergePatch={}),
            ov(zones=["mars-1"], mergePatch={}, name="z"),
            ov(regions=["us-west"], mergePatch={}),
            ov(clusterSelector=LabelSelector(match_labels={"tier": "platinum"}).wire(), mergePatch={}),
        ],
        [EAST_A, WEST_B],
    )
    assert report.errors == ["spec.overrides[0]: cluster ghost is not a registered MemberCluster"]
    assert report.warnings == [
        "spec.overrides[1] (z): no member cluster is in zone mars-1",
        "spec.overrides[3]: clusterSelector matches no member cluster",
    ]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["x", "y"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
    max_leaves=10,
)


@given(target=json_values, patch=json_values)
def test_merge_patch_properties(target: Any, patch: Any) -> None:
    before = copy.deepcopy(target)
    once = merge_patch(target, patch)
    assert target == before
    assert merge_patch(once, patch) == once  # idempotent
