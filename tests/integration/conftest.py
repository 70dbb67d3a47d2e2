"""Integration fixtures: one real kube-apiserver (built from Go modules) with meshfed's CRDs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from federation.kube import KubeClient
from fleet import ClusterProc
from fleet.testing import single_apiserver


@dataclass
class ApiServer:
    proc: ClusterProc

    @property
    def kubeconfig(self) -> Path:
        return self.proc.kubeconfig

    async def admin_client(self) -> KubeClient:
        return await self.proc.client()


@pytest.fixture(scope="session")
async def apiserver(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ApiServer]:
    proc = await single_apiserver(tmp_path_factory.mktemp("apiserver"), istio_crds=True)
    try:
        yield ApiServer(proc)
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def hub(apiserver: ApiServer) -> ApiServer:
    return apiserver
