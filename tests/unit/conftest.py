"""Fixtures of the pure-layer tests: nothing here reaches a server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio.client import ApiClient, Configuration

from federation.controller import Controller
from federation.kube import KubeClient


@pytest.fixture
async def offline_controller() -> AsyncIterator[Controller]:
    """A Controller whose hub client points at a port nobody serves, and is never contacted."""
    cfg = Configuration()
    cfg.host = "https://127.0.0.1:9"
    api = ApiClient(cfg)
    try:
        yield Controller(KubeClient(api, "hub"), "hub")
    finally:
        await api.close()
