"""accesspoint.plan: is_subset semantics and the create/update/delete/unchanged/drift diff."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accesspoint.models import AccessPoint
from accesspoint.ownership import HASH_ANNOTATION
from accesspoint.plan import Plan, is_subset, plan
from accesspoint.render import ObjectKey, content_hash, key_of, render
from placement.models import ClusterFacts

EAST = ClusterFacts(name="east-1", region="us-east", zone="us-east-a", ready=True)


@pytest.mark.parametrize(
    ("desired", "current", "expected"),
    [
        # scalars
        ("a", "a", True),
        ("a", "b", False),
        (1, 1, True),
        (1, 1.0, True),  # JSON numbers: the server may hand back 1.0 for 1
        (1.0, 1, True),
        (0.5, 0.5, True),
        (1, 2, False),
        (1, "1", False),
        ("1", 1, False),
        (True, True, True),
        (False, False, True),
        (True, 1, False),  # bool is not an int here
        (1, True, False),
        (False, 0, False),
        (0, False, False),
        (True, "true", False),
        (None, None, True),
        # objects: extra fields in current are fine (server defaults, status, other managers)
        ({}, {}, True),
        ({}, {"x": 1}, True),
        ({"a": 1}, {"a": 1, "b": 2}, True),
        ({"a": 1}, {"b": 2}, False),
        ({"a": 1}, {"a": 2}, False),
        ({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}, True),
        ({"a": {"b": 1}}, {"a": {"c": 2}}, False),
        ({"a": {}}, {"a": "x"}, False),
        ({"a": 1}, [("a", 1)], False),
        # a null in desired means "absent": the API server drops nulls, so absent must match
        ({"a": None}, {}, True),
        ({"a": None}, {"a": None}, True),
        ({"a": None}, {"a": 1}, False),
        ({"a": {"b": None, "c": 1}}, {"a": {"c": 1}}, True),
        # lists: same length, item by item, each item a subset (server defaults inside items)
        ([], [], True),
        ([1, 2], [1, 2], True),
        ([1, 2], [2, 1], False),
        ([1], [1, 2], False),
        ([1, 2], [1], False),
        ([{"port": 443}], [{"port": 443, "protocol": "TCP", "targetPort": 443}], True),
        ([{"port": 443}, {"port": 80}], [{"port": 443, "protocol": "TCP"}, {"port": 80, "protocol": "TCP"}], True),
        ([{"port": 443}, {"port": 80}], [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}], False),
        ([{"port": 443}], [{"port": 443.0}], True),
        ([], {}, False),
        ({}, [], False),
        ([1], "1", False),
    ],
)
def test_is_subset(desired: Any, current: Any, expected: bool) -> None:
    assert is_subset(desired, current) is expected


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-5, 5, allow_nan=False) | st.text(max_size=3),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=12,
)


@given(JSON)
def test_every_value_is_a_subset_of_itself(value: Any) -> None:
    assert is_subset(value, value)
    assert is_subset(value, copy.deepcopy(value))


@given(st.dictionaries(st.text(max_size=3), JSON, max_size=4), st.dictionaries(st.text(max_size=3), JSON, max_size=4))
def test_extra_fields_in_current_never_matter(desired: dict[str, Any], extra: dict[str, Any]) -> None:
    assert is_subset(desired, {**extra, **desired})


# ---- plan -----------------------------------------------------------------------------------

def obj(kind: str, name: str, spec: dict[str, Any], namespace: str = "payments") -> dict[str, Any]:
    """A desired object the way render() produces it: labelled and hashed."""
    o: dict[str, Any] = {
        "apiVersion": "networking.istio.io/v1" if kind != "Service" else "v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "meshfed"},
                     "annotations": {}},
        "spec": spec,
    }
    o["metadata"]["annotations"][HASH_ANNOTATION] = content_hash(o)
    return o


def as_served(desired: dict[str, Any], uid: str = "uid-1", rv: str = "100") -> dict[str, Any]:
    """What the member returns for `desired`: server-set metadata, defaults and status added."""
    served = copy.deepcopy(desired)
    served.pop("apiVersion")  # list items may come back without apiVersion/kind
    served["metadata"].update({"uid": uid, "resourceVersion": rv, "generation": 3,
                               "creationTimestamp": "2025-01-01T00:00:00Z",
                               "managedFields": [{"manager": "meshfed-federation"}]})
    served["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied"] = "{}"
    if "spec" in served:
        served["spec"]["defaultedByServer"] = True
    served["status"] = {"loadBalancer": {}}
    return served


def owned_from(desired: list[dict[str, Any]]) -> dict[ObjectKey, dict[str, Any]]:
    return {key_of(o): as_served(o, uid=f"uid-{i}", rv=str(100 + i)) for i, o in enumerate(desired)}


GW = obj("Gateway", "checkout", {"servers": [{"port": {"number": 443}, "hosts": ["a.example"]}]})
VS = obj("VirtualService", "checkout", {"hosts": ["a.example"], "gateways": ["checkout"]})
SVC = obj("Service", "checkout-gw", {"type": "LoadBalancer", "ports": [{"port": 443}]})


def test_everything_new_is_created_in_order() -> None:
    p = plan([SVC, GW, VS], {})
    assert p.create == [SVC, GW, VS]
    assert (p.update, p.delete, p.unchanged, p.drifted) == ([], [], 0, [])
    assert not p.empty and p.writes == 3


def test_unchanged_world_is_an_empty_plan() -> None:
    p = plan([SVC, GW, VS], owned_from([SVC, GW, VS]))
    assert p.empty and p.writes == 0
    assert p.unchanged == 3
    assert p == Plan(unchanged=3)


def test_server_defaults_in_list_items_are_not_drift() -> None:
    owned = owned_from([SVC])
    owned[key_of(SVC)]["spec"]["ports"][0].update({"protocol": "TCP", "targetPort": 443, "nodePort": 31443})
    owned[key_of(SVC)]["spec"]["clusterIP"] = "10.0.0.12"
    assert plan([SVC], owned).empty


def test_hash_change_is_an_update_not_drift() -> None:
    changed = obj("Gateway", "checkout", {"servers": [{"port": {"number": 8443}, "hosts": ["a.example"]}]})
    p = plan([changed], owned_from([GW]))
    assert p.update == [changed]
    assert p.drifted == [] and p.create == [] and p.delete == [] and p.unchanged == 0


def test_same_hash_but_changed_field_is_drift() -> None:
    owned = owned_from([GW, VS])
    owned[key_of(GW)]["spec"]["servers"][0]["hosts"] = ["evil.example"]
    p = plan([GW, VS], owned)
    assert p.update == [GW]
    assert p.drifted == [key_of(GW)]
    assert p.unchanged == 1


@pytest.mark.parametrize(
    "tamper",
    [
        lambda o: o["metadata"]["labels"].pop("app.kubernetes.io/managed-by"),
        lambda o: o["metadata"]["labels"].update({"app.kubernetes.io/managed-by": "helm"}),
        lambda o: o["spec"].pop("gateways"),
        lambda o: o["spec"]["hosts"].append("b.example"),
        lambda o: o["spec"].update({"hosts": "a.example"}),
    ],
)
def test_drift_kinds(tamper: Any) -> None:
    owned = owned_from([VS])
    tamper(owned[key_of(VS)])
    p = plan([VS], owned)
    assert p.update == [VS] and p.drifted == [key_of(VS)]


def test_a_missing_hash_annotation_is_rewritten() -> None:
    owned = owned_from([VS])
    del owned[key_of(VS)]["metadata"]["annotations"][HASH_ANNOTATION]
    p = plan([VS], owned)
    assert p.update == [VS] and p.drifted == []


def test_objects_no_longer_desired_are_deleted_with_preconditions() -> None:
    owned = owned_from([SVC, GW, VS])
    p = plan([GW], owned)
    assert p.unchanged == 1
    assert p.delete == [
        (ObjectKey("Service", "payments", "checkout-gw", ""), "uid-0", "100"),
        (ObjectKey("VirtualService", "payments", "checkout", "networking.istio.io"), "uid-2", "102"),
    ]
    assert p.writes == 2


def test_deletes_are_sorted_by_kind_namespace_name() -> None:
    a = obj("Gateway", "b", {}, namespace="ns1")
    b = obj("Gateway", "a", {}, namespace="ns2")
    c = obj("Gateway", "z", {}, namespace="ns1")
    d = obj("DestinationRule", "z", {}, namespace="ns9")
    owned = owned_from([a, b, c, d])
    keys = [k for k, _, _ in plan([], owned).delete]
    assert keys == [key_of(d), key_of(a), key_of(c), key_of(b)]


def test_desired_and_owned_with_the_same_name_in_other_namespaces_are_distinct() -> None:
    here = obj("Gateway", "checkout", {"x": 1}, namespace="a")
    there = obj("Gateway", "checkout", {"x": 1}, namespace="b")
    p = plan([here], owned_from([there]))
    assert p.create == [here]
    assert [k for k, _, _ in p.delete] == [key_of(there)]


def test_create_update_delete_unchanged_together() -> None:
    gw2 = obj("Gateway", "checkout", {"servers": []})
    dr = obj("DestinationRule", "checkout", {"host": "checkout"})
    p = plan([SVC, gw2, dr], owned_from([SVC, GW, VS]))
    assert p.create == [dr]
    assert p.update == [gw2]
    assert [k for k, _, _ in p.delete] == [key_of(VS)]
    assert p.unchanged == 1 and p.writes == 3


def secret(data: dict[str, str]) -> dict[str, Any]:
    o: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "checkout-tls", "namespace": "payments", "labels": {}, "annotations": {}},
        "data": data,
    }
    o["metadata"]["annotations"][HASH_ANNOTATION] = content_hash(o)
    return o


def test_objects_without_spec_are_unchanged_when_equal() -> None:
    s = secret({"tls.crt": "Y2VydA==", "tls.key": "a2V5"})
    assert plan([s], owned_from([s])).empty


def test_drift_outside_spec_is_detected() -> None:
    s = secret({"tls.crt": "Y2VydA==", "tls.key": "a2V5"})
    owned = owned_from([s])
    owned[key_of(s)]["data"]["tls.key"] = "b3RoZXI="
    p = plan([s], owned)
    assert p.update == [s] and p.drifted == [key_of(s)]
    owned = owned_from([s])
    owned[key_of(s)]["type"] = "Opaque"
    assert plan([s], owned).drifted == [key_of(s)]


def test_a_null_in_desired_does_not_cause_endless_updates() -> None:
    # e.g. a JSON patch override that adds `null`: the member never stores it
    vs = obj("VirtualService", "checkout", {"hosts": ["a.example"], "tcp": None})
    served = owned_from([vs])
    served[key_of(vs)]["spec"].pop("tcp")
    assert plan([vs], served).empty


# ---- properties -----------------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "d"])
KINDS = st.sampled_from(["Service", "Gateway", "VirtualService", "DestinationRule"])
SMALL_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["", "a", "b"]),
    lambda children: st.lists(children, max_size=2) | st.dictionaries(st.sampled_from("xyz"), children, max_size=2),
    max_leaves=4,
)
SPECS = st.dictionaries(st.sampled_from(["x", "y", "hosts"]), SMALL_JSON, max_size=3)
OBJECTS = st.lists(
    st.builds(obj, KINDS, NAMES, SPECS, st.sampled_from(["ns1", "ns2"])),
    max_size=8, unique_by=lambda o: (o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]),
)


@settings(max_examples=100, deadline=None)
@given(OBJECTS)
def test_plan_of_desired_against_itself_is_empty(desired: list[dict[str, Any]]) -> None:
    p = plan(desired, owned_from(desired))
    assert p.empty and p.unchanged == len(desired) and p.drifted == []


@settings(max_examples=100, deadline=None)
@given(OBJECTS, OBJECTS)
def test_plan_never_deletes_what_it_does_not_own_and_covers_everything(
    desired: list[dict[str, Any]], previous: list[dict[str, Any]]
) -> None:
    owned = owned_from(previous)
    p = plan(desired, owned)
    deleted = {k for k, _, _ in p.delete}
    assert deleted <= set(owned)
    assert deleted == set(owned) - {key_of(o) for o in desired}
    for key, uid, rv in p.delete:
        assert (uid, rv) == (owned[key]["metadata"]["uid"], owned[key]["metadata"]["resourceVersion"])
    # every desired object is exactly one of: created, updated, unchanged
    assert len(p.create) + len(p.update) + p.unchanged == len(desired)
    assert {key_of(o) for o in p.create} == {key_of(o) for o in desired} - set(owned)
    assert set(p.drifted) <= {key_of(o) for o in p.update}
    # applying the plan converges: the next plan is empty
    after = {k: v for k, v in owned.items() if k not in deleted}
    after.update({key_of(o): as_served(o) for o in p.create + p.update})
    assert plan(desired, after).empty


def test_render_then_plan_against_the_served_objects_is_empty() -> None:
    ap = AccessPoint.model_validate({
        "metadata": {"name": "checkout", "namespace": "payments"},
        "spec": {"template": [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gw"},
             "spec": {"type": "LoadBalancer", "ports": [{"port": 443}]}},
            {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw"},
             "spec": {"servers": [{"hosts": ["${cluster}.example"], "port": {"number": 443}}]}},
        ]},
    })
    desired = render(ap, EAST, "hub").objects
    assert plan(desired, owned_from(desired)).empty
    assert plan(render(ap, EAST.model_copy(update={"name": "east-2"}), "hub").objects, owned_from(desired)).writes == 1
