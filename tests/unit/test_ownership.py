"""accesspoint.ownership: owner labels, owner_of (ours / another hub / not meshfed) and conflict wording."""

from __future__ import annotations

from typing import Any

import pytest

from accesspoint.ownership import (
    HUB,
    MANAGED_BY,
    OWNER_NAME,
    OWNER_NAMESPACE,
    Owner,
    foreign_owner_description,
    owner_of,
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
