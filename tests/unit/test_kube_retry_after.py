"""KubeClient honours the API server's 429 + Retry-After (as client-go's checkWait): it waits as asked
and tries again, whatever its own retry count, within the call's deadline; other failures keep the
caller's policy. The server here is a few lines of aiohttp answering like kube-apiserver does when
API Priority and Fairness rejects a request or a watch cache is (re)initializing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from kubernetes_asyncio.client import ApiClient, Configuration

from federation.kube import ApiError, KubeClient, retry_after_seconds

TOO_MANY = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "TooManyRequests",
            "message": "storage is (re)initializing", "details": {"retryAfterSeconds": 1}, "code": 429}


class Server:
    def __init__(self) -> None:
        self.refusals = 0  # how many requests to answer 429 before answering 200
        self.retry_after: str | None = "1"
        self.seen: list[float] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(time.monotonic())
        if self.refusals > 0:
            self.refusals -= 1
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            return web.json_response(TOO_MANY, status=429, headers=headers)
        return web.json_response({"kind": "NamespaceList", "items": [], "metadata": {}})


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, str]]:
    srv = Server()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", srv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield srv, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def client(host: str, attempts: int) -> KubeClient:
    cfg = Configuration()
    cfg.host = host
    return KubeClient(ApiClient(configuration=cfg), "fake", attempts=attempts)


@pytest.mark.parametrize("attempts", [1, 3])
async def test_a_429_with_retry_after_is_tried_again_after_the_pause(server: tuple[Server, str],
                                                                     attempts: int) -> None:
    srv, host = server
    srv.refusals = 2
    kube = client(host, attempts)
    try:
        items, _ = await kube.list("/api/v1/namespaces")
    finally:
        await kube.close()
    assert items == []
    assert len(srv.seen) == 3
    gaps = [b - a for a, b in zip(srv.seen, srv.seen[1:], strict=False)]
    assert all(0.95 <= g < 1.5 for g in gaps), f"each retry should wait the 1 s asked for, waited {gaps}"


async def test_a_429_without_retry_after_keeps_the_callers_policy(server: tuple[Server, str]) -> None:
    srv, host = server
    srv.refusals, srv.retry_after = 1, None
    kube = client(host, attempts=1)
    try:
        with pytest.raises(ApiError) as failed:
            await kube.list("/api/v1/namespaces")
    finally:
        await kube.close()
    assert failed.value.status == 429 and failed.value.retry_after is None
    assert len(srv.seen) == 1


async def test_retry_false_and_a_spent_deadline_return_the_429(server: tuple[Server, str]) -> None:
    srv, host = server
    kube = client(host, attempts=3)
    try:
        srv.refusals = 5
        with pytest.raises(ApiError) as once:
            await kube.request("GET", "/readyz", retry=False)
        assert once.value.retry_after == 1.0 and len(srv.seen) == 1
        srv.seen.clear()
        started = time.monotonic()
        with pytest.raises(ApiError):
            await kube.request("GET", "/api/v1/namespaces", timeout=2.5)
        assert time.monotonic() - started < 2.5, "the pauses stay within the call's deadline"
        assert len(srv.seen) == 3, "tries at 0, 1 and 2 s; a fourth at 3 s would pass the deadline"
    finally:
        await kube.close()


@pytest.mark.parametrize(("status", "header", "expected"), [
    (429, "1", 1.0), (429, " 3 ", 3.0), (429, "600", 10.0), (429, "-2", 0.0),
    (429, "Wed, 21 Oct 2026 07:28:00 GMT", None), (429, None, None), (503, "1", None), (200, "1", None),
])
def test_retry_after_seconds(status: int, header: str | None, expected: float | None) -> None:
    assert retry_after_seconds(status, header) == expected
