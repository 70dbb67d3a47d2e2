"""KubeClient's sessions make asyncio's TLS connections read through TLS_READ_BUFFER, not 256 KiB
(e2e/bench/tls_buffers.py measures what that saves). Fails when a Python release renames the knob:
then the saving is gone and the bench and the cost model need another look."""

from __future__ import annotations

import asyncio.sslproto

import pytest
from kubernetes_asyncio.client import ApiClient, Configuration

from federation.kube import TLS_READ_BUFFER, KubeClient, limit_tls_read_buffers


def test_this_python_has_the_knob() -> None:
    assert isinstance(asyncio.sslproto.SSLProtocol.max_size, int)
    assert asyncio.sslproto.SSLProtocol.max_size >= TLS_READ_BUFFER


@pytest.mark.parametrize("session", ["session", "watch_session"])
async def test_a_session_limits_the_buffers(monkeypatch: pytest.MonkeyPatch, session: str) -> None:
    monkeypatch.setattr(asyncio.sslproto.SSLProtocol, "max_size", 256 * 1024)
    client = KubeClient(ApiClient(Configuration(host="https://127.0.0.1:1")), "m")
    try:
        getattr(client, session)
        assert asyncio.sslproto.SSLProtocol.max_size == TLS_READ_BUFFER
    finally:
        await client.close()


def test_never_grows_a_smaller_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio.sslproto.SSLProtocol, "max_size", 8 * 1024)
    limit_tls_read_buffers()
    assert asyncio.sslproto.SSLProtocol.max_size == 8 * 1024
