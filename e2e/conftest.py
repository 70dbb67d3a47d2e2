"""E2e fixtures: a local fleet (hub + members, real kube-apiservers) per module, its hub and member
clients, and the controller process.

A module sets the shape of its fleet with a module-level `FLEET` (keyword arguments of
`fleet.testing.start_fleet`; hub + 3 members over 2 regions and 3 zones when absent). A module
that needs objects on the hub before the controller starts (a CA Secret, a DNSProvider) overrides
`hub_setup`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from federation.kube import KubeClient
from fleet import Fleet
from fleet.testing import (
    ControllerProcess,
    create_namespace,
    delete_accesspoints,
    hub_client,
    member_clients,
    running_controller,
    running_fleet,
)

DEFAULT_FLEET: dict[str, Any] = {"members": 3, "regions": 2, "zones": 3}


@pytest.fixture(scope="module")
async def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    shape = getattr(request.module, "FLEET", DEFAULT_FLEET)
    async with running_fleet(tmp_path_factory.mktemp(f"fleet-{request.module.__name__}"), **shape) as f:
        yield f


@pytest.fixture(scope="module")
async def hub(fleet: Fleet) -> AsyncIterator[KubeClient]:
    async with hub_client(fleet) as client:
        yield client


@pytest.fixture(scope="module")
async def members(fleet: Fleet) -> AsyncIterator[dict[str, KubeClient]]:
    async with member_clients(fleet) as clients:
        yield clients


@pytest.fixture(scope="module")
def hub_setup() -> None:
    """What must exist on the hub before the controller starts: nothing here; a module overrides it."""


@pytest.fixture(scope="module")
def controller(fleet: Fleet, hub_setup: None) -> Iterator[ControllerProcess]:
    with running_controller(fleet) as ctl:
        yield ctl


@pytest.fixture
async def namespace(hub: KubeClient) -> AsyncIterator[str]:
    """A fresh hub namespace per test (namespaces never finish deleting without a controller-manager).

    Its AccessPoints are deleted afterwards, so one test's deliberately broken objects do not
    keep the controller busy during the next test's measurements.
    """
    name = await create_namespace(hub)
    yield name
    await delete_accesspoints(hub, name, timeout=20)


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
