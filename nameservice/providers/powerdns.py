"""PowerDNS provider through its HTTP API (aiohttp): list the zone's rrsets, one PATCH per change.

Owns the API calls, the X-API-Key header, error translation and retries with exponential backoff
(tenacity) on connection failures and 5xx answers. A PATCH is all-or-nothing on the server (one
bad rrset → 422, nothing applied), so a plan goes out as exactly one PATCH per zone.

PowerDNS has no update prerequisites: just before the PATCH the zone is read again and each
change's `before` is compared with what is there now; a change whose name moved meanwhile is
reported as a PreconditionFailed conflict and left out (the window is the PATCH round trip).

Resolvable checks query the DNS endpoint (`nameserver`: an IP address or a host name, resolved once)
when one is configured; otherwise they compare the API's listing, and the status says so (`answer_source`).

Imports aiohttp, dnspython, tenacity, nameservice.records / plan / providers.base.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, stop_after_delay, wait_exponential

from nameservice.plan import Change, Conflict, Plan
from nameservice.providers.base import (
    ApplyResult,
    OutsideZone,
    ProviderAuthError,
    ProviderError,
    ProviderRejected,
    ProviderUnreachable,
    ZoneNotServed,
)
from nameservice.records import RRset, ZoneSnapshot, absolute, canonical_value, in_zone

T = TypeVar("T")


class _Transient(Exception):
    """A 5xx answer: retried like a connection failure."""


TRANSIENT = (
    aiohttp.ClientConnectionError,
    asyncio.TimeoutError,
    _Transient,
    OSError,
    EOFError,
    dns.exception.Timeout,
)


class PowerDNSProvider:
    def __init__(
        self,
        zone: str,
        api_url: str,
        api_key: str,
        *,
        server_id: str = "localhost",
        nameserver: str | None = None,
        nameserver_port: int = 53,
        timeout: float = 10.0,
        retry_seconds: float = 20.0,
    ) -> None:
        self.zone = absolute(zone)
        self.api_url = api_url.rstrip("/")
        self.server_id = server_id
        self.nameserver = nameserver
        self.nameserver_port = nameserver_port
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.writes_sent = 0
        self._api_key = api_key
        self._session: aiohttp.ClientSession | None = None
        self._nameserver_ip: str | None = None

    @property
    def _zone_url(self) -> str:
        return f"{self.api_url}/api/v1/servers/{quote(self.server_id)}/zones/{quote(self.zone)}"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"X-API-Key": self._api_key, "Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
        return self._session

    async def _retry(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        started = time.monotonic()
        attempts = 0
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(self.retry_seconds),
                wait=wait_exponential(multiplier=0.1, min=0.1, max=2.0),
                retry=retry_if_exception_type(TRANSIENT),
            ):
                with attempt:
                    attempts += 1
                    return await op()
        except RetryError as err:
            cause = err.last_attempt.exception()
            raise ProviderUnreachable(
                f"PowerDNS API {self.api_url} unreachable ({what}): {attempts} attempts over "
                f"{time.monotonic() - started:.1f}s, last error: {type(cause).__name__}: {cause}"
            ) from cause
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call(self, method: str, body: dict[str, Any] | None = None) -> Any:
        async with self._http().request(method, self._zone_url, json=body) as resp:
            text = await resp.text()
            if resp.status >= 500:
                raise _Transient(f"{resp.status} {text[:200]}")
            if resp.status == 401 or resp.status == 403:
                raise ProviderAuthError(f"PowerDNS API {self.api_url} rejected the API key ({resp.status})")
            if resp.status == 404 or (resp.status == 422 and "Could not find domain" in text):
                raise ZoneNotServed(
                    f"PowerDNS server {self.server_id} at {self.api_url} has no zone {self.zone}"
                )
            if resp.status >= 400:
                raise ProviderRejected(f"PowerDNS API {method} {self.zone}: {resp.status} {text[:500]}")
            if resp.status == 204 or not text:
                return None
            return await resp.json(content_type=None)

    async def _zone(self) -> dict[str, Any]:
        data = await self._retry("GET zone", lambda: self._call("GET"))
        if not isinstance(data, dict):
            raise ProviderError(f"PowerDNS API returned no zone for {self.zone}")
        return data

    async def list_records(self) -> ZoneSnapshot:
        return _snapshot(self.zone, await self._zone())

    async def serial(self) -> int:
        return int((await self._zone()).get("serial") or 0)

    @property
    def answer_source(self) -> str:
        if self.nameserver is None:
            return "the PowerDNS API listing (no nameserver set: DNS answers are not checked)"
        return f"authoritative server {self.nameserver}:{self.nameserver_port}"

    @property
    def checks_dns(self) -> bool:
        return self.nameserver is not None

    async def _nameserver_address(self, nameserver: str) -> str:
        """The nameserver as an IP address (dnspython queries addresses only): a host name is
        resolved once; a name that does not resolve is a ProviderUnreachable naming it."""
        if self._nameserver_ip is None:
            try:
                ipaddress.ip_address(nameserver)
                self._nameserver_ip = nameserver
            except ValueError:
                try:
                    infos = await asyncio.get_running_loop().getaddrinfo(
                        nameserver, self.nameserver_port, type=socket.SOCK_DGRAM
                    )
                except OSError as err:
                    raise ProviderUnreachable(
                        f"spec.powerdns.nameserver {nameserver!r} does not resolve: {err}"
                    ) from None
                self._nameserver_ip = str(infos[0][4][0])
        return self._nameserver_ip

    async def resolve(self, name: str, rtype: str) -> tuple[str, ...]:
        if self.nameserver is None:
            snap = await self.list_records()
            r = snap.get(name, rtype)
            return r.values if r else ()
        nameserver = await self._nameserver_address(self.nameserver)

        async def op() -> tuple[str, ...]:
            q = dns.message.make_query(absolute(name), rtype)
            r, _ = await dns.asyncquery.udp_with_fallback(
                q, nameserver, port=self.nameserver_port, timeout=self.timeout
            )
            if r.rcode() == dns.rcode.NXDOMAIN:
                return ()
            want = dns.rdatatype.from_text(rtype)
            return tuple(
                sorted(
                    canonical_value(rtype, rd.to_text()) for rr in r.answer if rr.rdtype == want for rd in rr
                )
            )

        return await self._retry("DNS query", op)

    async def apply(self, plan: Plan) -> ApplyResult:
        result = ApplyResult()
        changes = list(plan.changes)
        if not changes:
            return result
        for c in changes:
            if not in_zone(c.name, self.zone):
                raise OutsideZone(f"{c.name} is outside zone {self.zone}")
        # Optimistic concurrency by re-reading: PowerDNS has no prerequisites.
        now = await self.list_records()
        ready: list[Change] = []
        for c in changes:
            keys = {r.key for r in c.before} | {r.key for r in c.after}
            there = {k: now.rrsets[k] for k in keys if k in now.rrsets}
            if there == {r.key: r for r in c.before}:
                ready.append(c)
            elif there == {r.key: r for r in c.after}:
                result.applied.append(c)
            else:
                result.failed.append(
                    Conflict(
                        c.owner,
                        c.name,
                        "PreconditionFailed",
                        f"{c.name} changed on the server since it was listed: not overwritten",
                    )
                )
        if not ready:
            return result
        rrsets: list[dict[str, Any]] = []
        for c in ready:
            for name, rtype in c.removes:
                rrsets.append({"name": name, "type": rtype, "changetype": "DELETE"})
            for r in c.puts:
                rrsets.append(
                    {
                        "name": r.name,
                        "type": r.rtype,
                        "ttl": r.ttl,
                        "changetype": "REPLACE",
                        "records": [{"content": v, "disabled": False} for v in r.values],
                    }
                )

        async def patch() -> Any:
            self.writes_sent += 1
            result.messages += 1
            return await self._call("PATCH", {"rrsets": rrsets})

        await self._retry("PATCH zone", patch)
        result.applied.extend(ready)
        return result

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _snapshot(zone: str, data: dict[str, Any]) -> ZoneSnapshot:
    rrsets: list[RRset] = []
    for item in data.get("rrsets", []):
        values = [r["content"] for r in item.get("records", []) if not r.get("disabled")]
        if not values:
            continue
        try:
            rrsets.append(RRset.make(item["name"], item["type"], int(item.get("ttl", 0)), values))
        except ValueError:
            rrsets.append(
                RRset(absolute(item["name"]), item["type"], int(item.get("ttl", 0)), tuple(sorted(values)))
            )
    serial = data.get("serial")
    return ZoneSnapshot.of(zone, int(serial) if serial is not None else None, rrsets)
