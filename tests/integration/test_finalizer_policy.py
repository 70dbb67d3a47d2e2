"""deploy/admission/finalizers.yaml against a real kube-apiserver (MutatingAdmissionPolicy, beta in
1.34, on for the hub): the API server sets meshfed's cleanup finalizer on AccessPoints and
NameServices it creates, next to any other, once; never on an update (a finalizer the controller
removed stays removed); and the controller's own finalizer write then has nothing to do.

Its own API server: the shared one of the other integration tests stays without the policy, so
their objects exercise the controller adding the finalizer itself.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from federation.hubwriter import FINALIZER, HubWriter
from federation.kube import KubeClient
from federation.registration import ensure_namespace
from fleet import install_finalizer_policy
from fleet.testing import single_apiserver

pytestmark = pytest.mark.integration

AP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
NS = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/nameservices"


@pytest.fixture(scope="module")
async def hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KubeClient]:
    proc = await single_apiserver(Path(tmp_path_factory.mktemp("finalizer-policy")))
    client = await proc.client()
    try:
        await install_finalizer_policy(client)
        yield client
    finally:
        await client.close()
        proc.stop()


@pytest.fixture
async def namespace(hub: KubeClient) -> str:
    ns = f"fin-{uuid.uuid4().hex[:6]}"
    await ensure_namespace(hub, ns)
    return ns


def accesspoint(ns: str, name: str, finalizers: list[str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if finalizers is not None:
        meta["finalizers"] = finalizers
    template = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}}]
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": meta,
            "spec": {"template": template}}


async def test_created_accesspoints_carry_the_finalizer_once_beside_others(hub: KubeClient, namespace: str) -> None:
    plain = await hub.create(AP.format(ns=namespace), accesspoint(namespace, "plain"), field_manager="test")
    assert plain["metadata"]["finalizers"] == [FINALIZER]
    other = await hub.create(AP.format(ns=namespace), accesspoint(namespace, "other", ["example.com/keep"]),
                             field_manager="test")
    assert other["metadata"]["finalizers"] == ["example.com/keep", FINALIZER]
    ours = await hub.create(AP.format(ns=namespace), accesspoint(namespace, "ours", [FINALIZER]),
                            field_manager="test")
    assert ours["metadata"]["finalizers"] == [FINALIZER]


async def test_nameservices_too(hub: KubeClient, namespace: str) -> None:
    body = {"apiVersion": "meshfed.io/v1alpha1", "kind": "NameService",
            "metadata": {"name": "shop", "namespace": namespace},
            "spec": {"fqdn": "shop.example.com", "providerRef": {"name": "bind"},
                     "target": {"addresses": ["192.0.2.1"]}}}
    created = await hub.create(NS.format(ns=namespace), body, field_manager="test")
    assert created["metadata"]["finalizers"] == [FINALIZER]


async def test_an_update_never_puts_it_back(hub: KubeClient, namespace: str) -> None:
    """The controller removes the finalizer when an object's member objects are gone; an UPDATE
    re-adding it would hold the deletion for ever."""
    path = f"{AP.format(ns=namespace)}/kept-off"
    created = await hub.create(AP.format(ns=namespace), accesspoint(namespace, "kept-off", ["example.com/keep"]),
                               field_manager="test")
    writer = HubWriter(hub)
    assert await writer.set_finalizer(path, created["metadata"], False)  # what the controller does
    after = await hub.merge_patch(path, {"metadata": {"labels": {"touched": "yes"}}})
    assert after["metadata"]["finalizers"] == ["example.com/keep"]
    assert after["metadata"]["labels"] == {"touched": "yes"}


async def test_the_controller_then_writes_no_finalizer(hub: KubeClient, namespace: str) -> None:
    created = await hub.create(AP.format(ns=namespace), accesspoint(namespace, "quiet"), field_manager="test")
    path = f"{AP.format(ns=namespace)}/quiet"
    assert not await HubWriter(hub).set_finalizer(path, created["metadata"], True)
    held = await hub.get(path)
    assert held is not None
    assert held["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
