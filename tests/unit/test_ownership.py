"""accesspoint.ownership: owner labels, owner_of (ours / another hub / not meshfed), conflict wording, and
what we own through an Update entry handed to our Apply entry."""

from __future__ import annotations

from typing import Any

import pytest

from accesspoint.ownership import (
    FIELD_MANAGER,
    HUB,
    MANAGED_BY,
    OWNER_NAME,
    OWNER_NAMESPACE,
    Owner,
    apply_owned,
    foreign_owner_description,
    keeps_update_owned,
    owner_of,
    update_entry_index,
    update_owned_fields,
)

OWNER = Owner("hub-1", "payments", "checkout")


def labelled(labels: dict[str, str] | None, **meta: Any) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": "gw", "namespace": "payments", "labels": labels, **meta}}


def test_owner_labels_and_key() -> None:
    assert OWNER.labels() == {MANAGED_BY: "meshfed", HUB: "hub-1", OWNER_NAMESPACE: "payments",
                              OWNER_NAME: "checkout"}
    assert OWNER.key == "payments/checkout"
    assert sorted([Owner("h", "b", "a"), Owner("h", "a", "z")]) == [Owner("h", "a", "z"), Owner("h", "b", "a")]


def test_owner_of_round_trips_the_labels() -> None:
    assert owner_of(labelled(OWNER.labels()), "hub-1") == OWNER
    assert owner_of(labelled({**OWNER.labels(), "app": "x"}), "hub-1") == OWNER


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"metadata": None},
        {"metadata": {}},
        labelled(None),
        labelled({}),
        labelled({"app": "gw"}),
        labelled({**OWNER.labels(), MANAGED_BY: "helm"}),
        labelled({k: v for k, v in OWNER.labels().items() if k != MANAGED_BY}),
        labelled({**OWNER.labels(), HUB: "hub-2"}),  # another hub's object is not ours
        labelled({k: v for k, v in OWNER.labels().items() if k != HUB}),
        labelled({k: v for k, v in OWNER.labels().items() if k != OWNER_NAME}),
        labelled({k: v for k, v in OWNER.labels().items() if k != OWNER_NAMESPACE}),
        labelled({**OWNER.labels(), OWNER_NAME: ""}),
        labelled({**OWNER.labels(), OWNER_NAMESPACE: ""}),
    ],
)
def test_owner_of_is_none_for_objects_that_are_not_ours(obj: dict[str, Any]) -> None:
    assert owner_of(obj, "hub-1") is None


def test_foreign_owner_another_accesspoint_or_hub() -> None:
    other = Owner("hub-2", "shop", "cart")
    assert foreign_owner_description(labelled(other.labels())) == "meshfed AccessPoint shop/cart of hub 'hub-2'"


def test_foreign_owner_not_meshfed_names_the_field_managers_sorted_and_unique() -> None:
    obj = labelled({"app": "gw"}, managedFields=[{"manager": "kubectl-client-side-apply"}, {"manager": "helm"},
                                                 {"manager": "helm"}, {"operation": "Update"}])
    assert foreign_owner_description(obj) == (
        "an object not managed by meshfed (field managers: ?, helm, kubectl-client-side-apply)")


@pytest.mark.parametrize("obj", [{}, labelled(None), labelled({"app": "x"}, managedFields=[]),
                                 labelled({"app": "x"}, managedFields=None)])
def test_foreign_owner_without_managers(obj: dict[str, Any]) -> None:
    assert foreign_owner_description(obj) == "an object not managed by meshfed"


def _entry(manager: str, operation: str, fields: dict[str, object], subresource: str = "") -> dict[str, object]:
    out: dict[str, object] = {"manager": manager, "operation": operation, "apiVersion": "v1",
                              "time": "2026-12-06T12:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": fields}
    if subresource:
        out["subresource"] = subresource
    return out


def test_fields_we_own_through_an_update_are_handed_to_our_apply_entry() -> None:
    created = _entry(FIELD_MANAGER, "Update", {"f:metadata": {"f:annotations": {"f:b": {}}},
                                                "f:spec": {"f:exportTo": {}, "f:hosts": {}}})
    applied = _entry(FIELD_MANAGER, "Apply", {"f:metadata": {"f:annotations": {"f:a": {}}}, "f:spec": {"f:hosts": {}}})
    status = _entry(FIELD_MANAGER, "Update", {"f:status": {}}, subresource="status")
    other = _entry("istiod", "Update", {"f:metadata": {"f:labels": {"f:x": {}}}})
    # Created with POST: the Update entry simply becomes the Apply entry, at its index.
    assert update_entry_index([other, created]) == 1
    assert update_entry_index([other, created, applied]) == -1  # both: they must be merged
    assert update_entry_index([other, applied, status]) is None  # nothing of the object itself by Update
    assert update_entry_index(None) is None and update_entry_index([other]) is None
    assert apply_owned([other, applied, status]) is None
    merged = apply_owned([other, created, applied, status])
    assert merged is not None
    assert [(e["manager"], e["operation"], e.get("subresource", "")) for e in merged] == [
        ("istiod", "Update", ""), (FIELD_MANAGER, "Apply", ""), (FIELD_MANAGER, "Update", "status")]
    assert merged[1]["fieldsV1"] == {"f:metadata": {"f:annotations": {"f:a": {}, "f:b": {}}},
                                     "f:spec": {"f:exportTo": {}, "f:hosts": {}}}
    alone = apply_owned([created])
    assert alone is not None and alone[0]["operation"] == "Apply" and alone[0]["fieldsV1"] == created["fieldsV1"]
    assert created["operation"] == "Update", "the input is left as it was"


def test_an_apply_setting_every_field_our_update_entry_owns_needs_no_hand_over() -> None:
    """The fields our POST's Update entry owns, as paths; an apply that sets them all owns them too and
    leaves nothing behind. List elements named by key or value (a Service's ports), or a field the
    desired object lacks (dropped, or defaulted by the server), ask for the hand-over."""
    created = _entry(FIELD_MANAGER, "Update", {
        "f:metadata": {"f:annotations": {".": {}, "f:a": {}}, "f:labels": {"f:app": {}}},
        "f:spec": {"f:hosts": {}, "f:http": {}}})
    applied = _entry(FIELD_MANAGER, "Apply", {"f:spec": {"f:exportTo": {}}})
    status = _entry(FIELD_MANAGER, "Update", {"f:status": {"f:x": {}}}, subresource="status")
    other = _entry("istiod", "Update", {"f:spec": {"f:tcp": {}}})
    paths = update_owned_fields([other, created, applied, status])
    assert paths == (("metadata", "annotations"), ("metadata", "annotations", "a"), ("metadata", "labels", "app"),
                     ("spec", "hosts"), ("spec", "http"))
    desired = {"metadata": {"annotations": {"a": "2"}, "labels": {"app": "x", "more": "y"}},
               "spec": {"hosts": ["h"], "http": [{"route": []}], "tcp": []}}
    assert keeps_update_owned(paths, desired)  # values changed, a field added: all set
    for drop in (("metadata", "annotations", "a"), ("spec", "http"), ("metadata", "labels")):
        edited = {"metadata": {k: dict(v) for k, v in desired["metadata"].items()}, "spec": dict(desired["spec"])}
        parent: dict[str, object] = edited
        for name in drop[:-1]:
            parent = parent[name]  # type: ignore[assignment]
        del parent[drop[-1]]
        assert not keeps_update_owned(paths, edited), drop
    assert not keeps_update_owned(paths, {**desired, "spec": {**desired["spec"], "http": None}})
    assert not keeps_update_owned(paths, {**desired, "spec": "not a mapping"})
    # Keyed list elements need the schema to compare: always handed over.
    service = _entry(FIELD_MANAGER, "Update", {"f:spec": {"f:ports": {
        'k:{"port":80,"protocol":"TCP"}': {".": {}, "f:port": {}, "f:protocol": {}}}}})
    assert update_owned_fields([service]) is None and not keeps_update_owned(None, {"spec": {"ports": []}})
    assert update_owned_fields([_entry(FIELD_MANAGER, "Update", {"f:metadata": {"f:finalizers": {'v:"x"': {}}}})]) \
        is None
    assert update_owned_fields([{**created, "fieldsV1": None}]) is None
    # Nothing by Update: nothing to keep.
    assert update_owned_fields([applied, status, other]) == () and keeps_update_owned((), {})
