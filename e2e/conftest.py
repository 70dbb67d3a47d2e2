"""E2e fixtures: the local fleet (hub + 3 members, real kube-apiservers) and the controller process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from federation.fleet import Fleet
from federation.kube import KubeClient
from federation.testing import ControllerProcess, start_fleet


@pytest.fixture(scope="session")
async def fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    f = await start_fleet(tmp_path_factory.mktemp("fleet"), members=3, regions=2, zones=3)
    try:
        yield f
    finally:
        f.down(purge=False)


@pytest.fixture(scope="session")
def controller(fleet: Fleet) -> ControllerProcess:
    assert fleet.state is not None
    ctl = ControllerProcess(fleet.state.hub.kubeconfig, fleet.root / "controller.log")
    ctl.start()
    yield ctl  # type: ignore[misc]
    ctl.stop()


@pytest.fixture(scope="session")
async def hub(fleet: Fleet) -> AsyncIterator[KubeClient]:
    assert fleet.state is not None
    client = await fleet.state.hub.client()
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def members(fleet: Fleet) -> AsyncIterator[dict[str, KubeClient]]:
    assert fleet.state is not None
    clients = {m.name: await m.client(attempts=1) for m in fleet.state.members}
    yield clients
    for c in clients.values():
        await c.close()


@pytest.fixture
async def namespace(hub: KubeClient) -> AsyncIterator[str]:
    """A fresh hub namespace per test (namespaces never finish deleting without a controller-manager).

    Its AccessPoints are deleted afterwards, so one test's deliberately broken objects do not
    keep the controller busy during the next test's measurements.
    """
    name = f"t-{uuid.uuid4().hex[:8]}"
    await hub.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
                     field_manager="e2e")
    yield name
    path = f"/apis/meshfed.io/v1alpha1/namespaces/{name}/accesspoints"
    items, _ = await hub.list(path)
    for item in items:
        await hub.delete(f"{path}/{item['metadata']['name']}")
    for _ in range(100):
        if not (await hub.list(path))[0]:
            break
        await asyncio.sleep(0.2)


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
