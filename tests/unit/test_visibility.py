"""Visibility: exportTo from consumer namespaces + gateway namespace, collapse past the maximum."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from accesspoint.visibility import VisibilityPolicy, apply_visibility, export_to, validate_visibility


def test_default_is_small() -> None:
    assert export_to(None, "shop", "istio-system") == [".", "istio-system"]
    assert export_to(VisibilityPolicy(), "istio-system", "istio-system") == ["."]


def test_consumers_added_sorted_and_deduped() -> None:
    pol = VisibilityPolicy(consumer_namespaces=["web", "api", "shop", "web"])
    assert export_to(pol, "shop", "istio-system") == [".", "api", "istio-system", "web"]


def test_collapse_past_max() -> None:
    pol = VisibilityPolicy(consumer_namespaces=["a", "b", "c"], max_export_to=4)
    assert export_to(pol, "shop", "gw") == ["*"]
    pol = VisibilityPolicy(consumer_namespaces=["a", "b"], max_export_to=4)
    assert export_to(pol, "shop", "gw") == [".", "a", "b", "gw"]
    assert export_to(VisibilityPolicy(consumer_namespaces=["*"]), "shop", "gw") == ["*"]


def test_gateway_namespace_override() -> None:
    pol = VisibilityPolicy(gateway_namespace="edge")
    assert export_to(pol, "shop", "istio-system") == [".", "edge"]


def test_apply_visibility() -> None:
    objs: list[dict[str, Any]] = [
        {"kind": "VirtualService", "metadata": {"name": "v", "namespace": "shop"}, "spec": {}},
        {"kind": "DestinationRule", "metadata": {"name": "d"}, "spec": {"host": "x"}},
        {"kind": "ServiceEntry", "metadata": {"name": "s", "namespace": "shop"}, "spec": {"exportTo": ["*"]}},
        {"kind": "Gateway", "metadata": {"name": "g", "namespace": "shop"}, "spec": {}},
        {"kind": "Service", "metadata": {"name": "svc", "namespace": "shop"}, "spec": {}},
    ]
    out = apply_visibility(
        objs, VisibilityPolicy(consumer_namespaces=["web"]), "istio-system", default_namespace="shop"
    )
    assert out[0]["spec"]["exportTo"] == [".", "istio-system", "web"]
    assert out[1]["spec"]["exportTo"] == [".", "istio-system", "web"]
    assert out[2]["spec"]["exportTo"] == ["*"]  # template's explicit choice kept
    assert "exportTo" not in out[3]["spec"] and "exportTo" not in out[4]["spec"]
    assert "exportTo" not in objs[0]["spec"]  # input untouched


def test_validation() -> None:
    with pytest.raises(ValidationError):
        VisibilityPolicy(max_export_to=0)
    assert validate_visibility(VisibilityPolicy(consumer_namespaces=["ok", "Not_OK"]))[0].startswith(
        "spec.traffic.visibility.consumerNamespaces[1]"
    )
    assert validate_visibility(None) == []


ns = st.from_regex(r"\A[a-z][a-z0-9]{0,5}\Z")


@given(consumers=st.lists(ns, max_size=20), own=ns, gw=ns, limit=st.integers(1, 12))
def test_properties(consumers: list[str], own: str, gw: str, limit: int) -> None:
    pol = VisibilityPolicy(consumer_namespaces=consumers, max_export_to=limit)
    out = export_to(pol, own, gw)
    assert out == export_to(
        VisibilityPolicy(consumer_namespaces=list(reversed(consumers)), max_export_to=limit), own, gw
    )
    if out != ["*"]:
        assert out[0] == "." and len(out) <= limit and len(set(out)) == len(out)
        assert own not in out and (gw == own or gw in out)
        assert set(consumers) - {own} <= set(out)
    else:
        assert len((set(consumers) | {gw}) - {own}) + 1 > limit
