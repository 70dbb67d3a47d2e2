"""The controller leaves the watch event of its own status write unreconciled only when nothing but
the status (and resourceVersion, managedFields) differs from the object it last saw: a spec edit, a
deletion or a label it never got an event for (across a relist) still reconciles. Likewise the event of
its finalizer patch: only finalizers changed, and ours is there."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from federation.controller import same_but_finalizers, same_but_status

HELD: dict[str, Any] = {
    "apiVersion": "meshfed.io/v1alpha1",
    "kind": "AccessPoint",
    "metadata": {"name": "shop", "namespace": "payments", "generation": 3, "resourceVersion": "100",
                 "labels": {"team": "a"}, "finalizers": ["meshfed.io/cleanup"], "uid": "u1"},
    "spec": {"template": [{"kind": "Service"}]},
    "status": {"observedGeneration": 3, "summary": "Pending"},
}


def changed(path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(HELD)
    *parents, last = path.split(".")
    node = obj
    for part in parents:
        node = node[part]
    node[last] = value
    return obj


@pytest.mark.parametrize(("path", "value"), [
    ("status.summary", "Applied"),
    ("metadata.resourceVersion", "101"),
    ("metadata.managedFields", [{"manager": "meshfed-status"}]),
])
def test_what_a_status_write_changes(path: str, value: Any) -> None:
    assert same_but_status(HELD, changed(path, value))


@pytest.mark.parametrize(("path", "value"), [
    ("spec.template", []),
    ("metadata.generation", 4),
    ("metadata.deletionTimestamp", "2026-12-05T03:00:00Z"),
    ("metadata.labels", {"team": "b"}),
    ("metadata.finalizers", []),
    ("metadata.annotations", {"meshfed.io/x": "1"}),
])
def test_anything_else_is_news(path: str, value: Any) -> None:
    assert not same_but_status(HELD, changed(path, value))


@pytest.mark.parametrize(("path", "value", "news"), [
    ("metadata.finalizers", ["meshfed.io/cleanup", "other.io/keep"], False),  # another controller's
    ("metadata.resourceVersion", "101", False),
    ("metadata.finalizers", [], True),  # ours removed: a reconcile puts it back
    ("metadata.finalizers", ["other.io/keep"], True),
    ("status.summary", "Applied", True),  # a status write is told apart by same_but_status and own_echo
    ("spec.template", [], True),
    ("metadata.deletionTimestamp", "2026-12-05T03:00:00Z", True),
    ("metadata.labels", {"team": "b"}, True),
])
def test_what_a_finalizer_patch_changes(path: str, value: Any, news: bool) -> None:
    before = changed("metadata.finalizers", [])  # as created, before the reconcile added ours
    assert same_but_finalizers(before, changed("metadata.resourceVersion", "101"))  # our patch's event
    assert same_but_finalizers(HELD, changed(path, value)) is not news
