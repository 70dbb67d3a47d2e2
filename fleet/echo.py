"""Echo backends of the local fleet (`python -m fleet.echo FLEET_DIR`).

Owns the small HTTP/1.1 servers that stand in for an application's instances in each member cluster:
every backend answers with its cluster, region and zone (headers `x-echo-cluster`, `x-echo-region`,
`x-echo-zone`, `x-echo-backend` and a JSON body also naming the request's host and path), keeps
connections alive and sets TCP_NODELAY (without it Nagle + delayed ACKs cost ~45 ms per request,
lab README). A backend listens on its own loopback address:port inside the network namespace of every
member running Istio (gateways reach local and remote instances alike; Istio's locality weights decide
which), and can be switched at run time through a control API on the host's loopback
(fleet.json `echo.control`):

    GET  /backends                      every backend: name, cluster, region, zone, address, mode, served
    PUT  /backends/<name>   {"mode": M}  M = ok | fail (answer 503) | hang (accept, never answer) |
    PUT  /clusters/<name>   {"mode": M}       down (listeners closed: connection refused)

Imports fleet.netns only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet import netns

log = logging.getLogger("meshfed.echo")
MODES = ("ok", "fail", "hang", "down")
_REASONS = {200: "OK", 404: "Not Found", 400: "Bad Request", 503: "Service Unavailable"}


@dataclass
class Backend:
    name: str
    cluster: str
    region: str
    zone: str
    address: str
    port: int
    mode: str = "ok"
    served: int = 0
    failed: int = 0
    servers: list[asyncio.Server] = field(default_factory=list)
    conns: set[asyncio.Transport] = field(default_factory=set)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "cluster": self.cluster, "region": self.region, "zone": self.zone,
                "address": self.address, "port": self.port, "mode": self.mode, "served": self.served,
                "failed": self.failed}


def response(status: int, body: bytes, headers: dict[str, str] | None = None, *, close: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}", "content-type: application/json",
             f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class HttpParser:
    """Incremental HTTP/1.1 request parser (Content-Length bodies; no chunked uploads)."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[Request]:
        self.buf += data
        out: list[Request] = []
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return out
            head = self.buf[:end].decode("latin-1").split("\r\n")
            method, path, *_ = [*head[0].split(" "), "", ""][:3]
            headers = {}
            for line in head[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length") or 0)
            if len(self.buf) < end + 4 + length:
                return out
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            out.append(Request(method, path, headers, body))


class _EchoConnection(asyncio.Protocol):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.parser = HttpParser()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.backend.conns.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.backend.conns.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        b = self.backend
        for req in self.parser.feed(data):
            if b.mode == "hang":
                continue
            headers = {"x-echo-cluster": b.cluster, "x-echo-region": b.region, "x-echo-zone": b.zone,
                       "x-echo-backend": b.name}
            if b.mode == "fail":
                b.failed += 1
                body = json.dumps({"backend": b.name, "cluster": b.cluster, "error": "failing on purpose"}).encode()
                self.transport.write(response(503, body, headers))
                continue
            b.served += 1
            body = json.dumps({"cluster": b.cluster, "region": b.region, "zone": b.zone, "backend": b.name,
                               "host": req.headers.get("host", ""), "path": req.path,
                               "method": req.method}).encode()
            self.transport.write(response(200, body, headers))


class EchoFleet:
    def __init__(self, backends: list[Backend], namespaces: list[str]) -> None:
        self.backends = {b.name: b for b in backends}
        self.namespaces = namespaces

    async def open(self, backend: Backend) -> None:
        loop = asyncio.get_running_loop()
        for ns in self.namespaces:
            sock = netns.listen(ns, backend.address, backend.port)
            backend.servers.append(await loop.create_server(lambda: _EchoConnection(backend), sock=sock))

    def close(self, backend: Backend) -> None:
        for server in backend.servers:
            server.close()
        backend.servers.clear()
        for conn in list(backend.conns):
            conn.abort()

    async def set_mode(self, backend: Backend, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if mode == "down" and backend.mode != "down":
            self.close(backend)
        elif mode != "down" and backend.mode == "down":
            await self.open(backend)
        if mode == "ok" and backend.mode == "hang":
            for conn in list(backend.conns):  # what hung stays unanswered: drop it
                conn.abort()
        backend.mode = mode
        log.info("%s (%s): %s", backend.name, backend.cluster, mode)

    async def control(self, req: Request) -> tuple[int, Any]:
        parts = [p for p in req.path.split("?")[0].split("/") if p]
        if req.method == "GET" and parts == ["backends"]:
            return 200, [b.describe() for b in self.backends.values()]
        if req.method == "PUT" and len(parts) == 2 and parts[0] in ("backends", "clusters"):
            try:
                mode = str(json.loads(req.body or b"{}").get("mode"))
            except ValueError:
                return 400, {"error": "body must be JSON {\"mode\": ...}"}
            by_name = parts[0] == "backends"
            chosen = [b for b in self.backends.values() if (b.name if by_name else b.cluster) == parts[1]]
            if not chosen:
                return 404, {"error": f"no {parts[0][:-1]} {parts[1]}"}
            try:
                for b in chosen:
                    await self.set_mode(b, mode)
            except ValueError as err:
                return 400, {"error": str(err)}
            return 200, [b.describe() for b in chosen]
        return 404, {"error": f"no route {req.method} {req.path}"}


class _ControlConnection(asyncio.Protocol):
    def __init__(self, fleet: EchoFleet) -> None:
        self.fleet = fleet
        self.parser = HttpParser()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for req in self.parser.feed(data):
            asyncio.get_running_loop().create_task(self._answer(req))

    async def _answer(self, req: Request) -> None:
        status, payload = await self.fleet.control(req)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(response(status, json.dumps(payload).encode(), close=True))
            self.transport.close()


def backends_of(state: dict[str, Any]) -> list[Backend]:
    out = []
    for member in state["members"]:
        for raw in [*((member.get("istio") or {}).get("backends") or []), *(member.get("backends") or [])]:
            out.append(Backend(name=raw["name"], cluster=raw["cluster"], region=raw["region"], zone=raw["zone"],
                               address=raw["address"], port=int(raw["port"])))
    return out


async def main(root: Path) -> None:
    state = json.loads((root / "fleet.json").read_text())
    namespaces = [m["istio"]["netns"] for m in state["members"] if m.get("istio")]
    fleet = EchoFleet(backends_of(state), namespaces)
    for backend in fleet.backends.values():
        await fleet.open(backend)
    control = int(state["echo"]["control"])
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _ControlConnection(fleet), "127.0.0.1", control)
    log.info("ready: %d backends in %d namespaces, control on 127.0.0.1:%d", len(fleet.backends), len(namespaces),
             control)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    asyncio.run(main(Path(sys.argv[1])))
