"""kopf builds no essence of hub objects (federation.operator.NoDiffBase): right only while every
handler meshfed registers with kopf is an on.event handler. A create/update/delete/resume handler, a
daemon or a timer added later fails here, and with it the reason NoDiffBase is safe."""

from __future__ import annotations

import kopf
import pytest

from federation.operator import NoDiffBase, build_registry


def test_only_event_handlers_are_registered() -> None:
    registry = build_registry({"hub_id": "meshfed-hub"})
    assert list(registry._watching.get_all_handlers())  # the hub watches feed the controller
    assert not list(registry._changing.get_all_handlers())
    assert not list(registry._spawning.get_all_handlers())


def test_nothing_is_built_or_fetched() -> None:
    raw: kopf.RawBody = {"metadata": {"name": "a", "labels": {"x": "y"}}, "spec": {"x": 1},
                         "status": {"clusters": [{"name": "m"}]}}
    body = kopf.Body(raw)
    storage = NoDiffBase()
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
    with pytest.raises(RuntimeError, match="no kopf change-detecting handler"):
        storage.store(body=body, patch=kopf.Patch(), essence=kopf.BodyEssence())
