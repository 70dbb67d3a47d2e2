"""What one open TLS connection to an API server costs the controller, with asyncio's own read buffer
(256 KiB) and with federation.kube.TLS_READ_BUFFER, measured in the same run.

A TLS server (aiohttp, in a process of its own so its buffers do not count) answers a small JSON body;
a client process opens N keep-alive connections (one aiohttp session each, as KubeClient makes them)
and reports the growth of its RSS and of Python's traced allocations per connection. The client runs
twice, once as asyncio leaves it and once after `limit_tls_read_buffers()`; the figure is the ratio.

Usage: python -m e2e.bench.tls_buffers [--connections 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import aiohttp
from aiohttp import web

from certs.ca import InternalCA, generate_ca


def _rss_kib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024


async def _serve(cert: str, key: str) -> None:
    async def status(_: web.Request) -> web.Response:
        return web.json_response({"kind": "Status", "status": "Success"})

    app = web.Application()
    app.router.add_get("/", status)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    print(port, flush=True)
    await asyncio.Event().wait()


async def _connect(port: int, ca: str, connections: int, limited: bool) -> dict[str, float]:
    if limited:
        from federation.kube import limit_tls_read_buffers

        limit_tls_read_buffers()
    context = ssl.create_default_context(cafile=ca)
    sessions: list[aiohttp.ClientSession] = []

    async def one() -> None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, keepalive_timeout=600))
        sessions.append(session)
        async with session.get(f"https://localhost:{port}/") as answer:
            await answer.read()

    await one()  # warm up: the first connection loads OpenSSL's tables
    tracemalloc.start()
    rss, traced = _rss_kib(), tracemalloc.get_traced_memory()[0]
    for _ in range(connections):
        await one()
    out = {
        "rss_kib_per_connection": (_rss_kib() - rss) / connections,
        "traced_kib_per_connection": (tracemalloc.get_traced_memory()[0] - traced) / 1024 / connections,
    }
    for session in sessions:
        await session.close()
    return out


def _client(port: int, ca: str, connections: int, limited: bool) -> dict[str, float]:
    answer = subprocess.run(
        [
            sys.executable,
            "-m",
            "e2e.bench.tls_buffers",
            "--client",
            str(port),
            "--ca",
            ca,
            "--connections",
            str(connections),
        ]
        + (["--limited"] if limited else []),
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(answer.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    parser.add_argument("--limited", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(*args.serve))
        return
    if args.client:
        print(json.dumps(asyncio.run(_connect(args.client, args.ca, args.connections, args.limited))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        ca_pem, ca_key = generate_ca()
        bundle = InternalCA(ca_pem, ca_key).issue_sync(["localhost"])
        cert, key, ca = Path(tmp, "tls.crt"), Path(tmp, "tls.key"), Path(tmp, "ca.crt")
        cert.write_bytes(bundle.cert_pem)
        key.write_bytes(bundle.key_pem)
        ca.write_bytes(ca_pem)
        server = subprocess.Popen(
            [sys.executable, "-m", "e2e.bench.tls_buffers", "--serve", str(cert), str(key)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            asyncio_default = _client(port, str(ca), args.connections, limited=False)
            limited = _client(port, str(ca), args.connections, limited=True)
        finally:
            server.terminate()
            server.wait()
    from federation.kube import TLS_READ_BUFFER

    print(f"TLS connections held open by one client process: {args.connections}")
    print(f"{'read buffer':<22}{'RSS KiB/conn':>14}{'traced KiB/conn':>17}")
    for label, figures in (
        (" asyncio's 256 KiB", asyncio_default),
        (f" {TLS_READ_BUFFER // 1024} KiB (meshfed)", limited),
    ):
        print(f"{label:<22}{figures['rss_kib_per_connection']:>14.1f}{figures['traced_kib_per_connection']:>17.1f}")
    ratio = limited["rss_kib_per_connection"] / asyncio_default["rss_kib_per_connection"]
    print(f"ratio RSS per connection, meshfed / asyncio's default: {ratio:.2f}")


if __name__ == "__main__":
    main()
