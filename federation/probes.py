"""Sending one rollout health probe to one cluster's gateway (the I/O behind healthChecks.http).

Owns the request itself: a TCP (TLS for https) connection to the cluster's VIP and the URL's port —
never to what DNS answers for the URL's host, so the answer comes from that cluster's gateway —
with the URL's host as SNI and Host header, an HTTP/1.1 GET, and the status line read within
`timeoutSeconds`. The certificate is not verified (the probe checks the answer; certificates have
their own checks). Imports accesspoint.health only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
import time
from urllib.parse import urlsplit

from accesspoint.health import HttpProbe, ProbeResult, probe_outcome

_CONTEXT = ssl.create_default_context()
_CONTEXT.check_hostname = False
_CONTEXT.verify_mode = ssl.CERT_NONE


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def send_probe(probe: HttpProbe, url: str, vip: str | None, at: str | None = None) -> ProbeResult:
    """GET `url` through `vip` (the cluster's gateway VIP); never raises."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    try:
        port = parts.port or (443 if https else 80)
    except ValueError:
        port = 0
    if parts.scheme not in ("http", "https") or not host or not port:
        return ProbeResult(url=url, outcome="Error", at=at,
                           message="spec.rollout.healthChecks.http.url must be an http:// or https:// URL with a host")
    if not vip:
        return ProbeResult(url=url, outcome="Error", at=at,
                           message="no VIP reported for this cluster: the probe goes through the cluster's gateway VIP")
    via = f"{vip}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = host if parts.port is None else f"{host}:{parts.port}"
    start = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - start) * 1000)

    writer: asyncio.StreamWriter | None = None

    async def exchange() -> int:
        nonlocal writer
        reader, writer = await asyncio.open_connection(
            vip, port, ssl=_CONTEXT if https else None,
            server_hostname=(host if not _is_ip(host) else "") if https else None)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: meshfed-rollout-probe\r\n"
                     "Accept: */*\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        line = await reader.readline()
        fields = line.decode("latin-1").split()
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
            raise ValueError(f"not an HTTP answer: {line[:60]!r}")
        return int(fields[1])

    try:
        code = await asyncio.wait_for(exchange(), timeout=probe.timeout_seconds)
    except TimeoutError:
        return ProbeResult(url=url, via=via, outcome="TimedOut", latency_ms=elapsed(), at=at,
                           message=f"timed out after {probe.timeout_seconds}s")
    except (OSError, ssl.SSLError, ValueError, asyncio.IncompleteReadError) as exc:
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        return ProbeResult(url=url, via=via, outcome="Error", latency_ms=elapsed(), at=at, message=text.lower())
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
    return ProbeResult(url=url, via=via, outcome=probe_outcome(probe, code), code=code, latency_ms=elapsed(), at=at)
