"""RFC 2136 dynamic-update provider (BIND and friends) through dnspython's asyncio API, with TSIG.

Owns: the TSIG keyring; zone listing by TSIG zone transfer (AXFR first, then IXFR from the cached
copy); batched UPDATE messages (changes packed up to `batch_size` written records, at least 50;
a change is never split; a message that would exceed 64 KiB is halved) with RFC 2136
prerequisites built from each change's `before` (value-dependent "RRset exists" for what we
listed, "name not in use" for new names), so a concurrent writer makes the update fail (NXRRSET,
YXDOMAIN ...) instead of being overwritten; retries with exponential backoff (tenacity) on
transport failures, then ProviderUnreachable.

A batch whose prerequisites fail is retried change by change; a change that still fails is checked
against a fresh transfer: already in place (a retried message that had been applied) counts as
applied, otherwise it is reported as a PreconditionFailed conflict. Nothing is lost or duplicated.

Imports dnspython, tenacity, nameservice.records / plan / providers.base.
"""

from __future__ import annotations

import asyncio
import binascii
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update
import dns.xfr
import dns.zone
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
from nameservice.records import RRset, ZoneSnapshot, absolute, canonical_value, in_zone, owner_name

T = TypeVar("T")

TRANSIENT = (OSError, EOFError, dns.exception.Timeout, asyncio.TimeoutError, ConnectionError)
PREREQ_FAILED = {dns.rcode.YXDOMAIN, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN, dns.rcode.NXRRSET}
MIN_BATCH = 50


class RFC2136Provider:
    """One zone on an RFC 2136 primary. All network calls are asyncio (dns.asyncquery)."""

    def __init__(
        self,
        zone: str,
        server: str,
        key_name: str,
        key_secret: str,
        *,
        port: int = 53,
        algorithm: str = "hmac-sha256",
        batch_size: int = 200,
        timeout: float = 5.0,
        retry_seconds: float = 20.0,
    ) -> None:
        self.zone = absolute(zone)
        self.origin = dns.name.from_text(self.zone)
        self.server = server
        self.port = port
        self.key_name = dns.name.from_text(key_name)
        self.algorithm = algorithm
        try:
            self.keyring = dns.tsigkeyring.from_text({key_name: (algorithm, key_secret)})
        except (binascii.Error, ValueError) as err:
            raise ProviderAuthError(f"TSIG secret of key {key_name} is not valid base64: {err}") from err
        self.batch_size = max(MIN_BATCH, batch_size)
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.writes_sent = 0
        self.transfers: dict[str, int] = {"AXFR": 0, "IXFR": 0}
        self._cache: dns.zone.Zone | None = None
        self._converted: dict[tuple[dns.name.Name, int], tuple[dns.rdataset.Rdataset, RRset]] = {}
        self._address: str | None = None

    # -- transport ---------------------------------------------------------------------------

    async def _where(self) -> str:
        if self._address is None:
            try:
                ipaddress.ip_address(self.server)
                self._address = self.server
            except ValueError:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    self.server, self.port, type=socket.SOCK_STREAM
                )
                self._address = str(infos[0][4][0])
        return self._address

    async def _retry(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        started = time.monotonic()
        attempts = 0
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(self.retry_seconds),
                wait=wait_exponential(multiplier=0.1, min=0.1, max=2.0),
                retry=retry_if_exception_type(TRANSIENT),
                reraise=False,
            ):
                with attempt:
                    attempts += 1
                    return await self._translate(op)
        except RetryError as err:
            cause = err.last_attempt.exception()
            raise ProviderUnreachable(
                f"DNS server {self.server}:{self.port} unreachable ({what}): {attempts} attempts over "
                f"{time.monotonic() - started:.1f}s, last error: {type(cause).__name__}: {cause}"
            ) from cause
        raise AssertionError("unreachable")  # pragma: no cover

    async def _translate(self, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except dns.tsig.PeerBadKey as err:
            raise ProviderAuthError(
                f"TSIG key {self.key_name} is unknown to {self.server}:{self.port} (BADKEY)"
            ) from err
        except dns.tsig.PeerBadSignature as err:
            raise ProviderAuthError(
                f"{self.server}:{self.port} rejected the TSIG signature of key {self.key_name} (BADSIG): "
                "wrong TSIG secret or algorithm"
            ) from err
        except (dns.tsig.PeerBadTime, dns.tsig.PeerBadTruncation, dns.tsig.PeerError) as err:
            raise ProviderAuthError(f"TSIG failure with {self.server}:{self.port}: {err}") from err
        except dns.xfr.TransferError as err:
            if err.rcode in (dns.rcode.NOTAUTH, dns.rcode.NOTZONE):
                raise ZoneNotServed(
                    f"{self.server}:{self.port} is not authoritative for zone {self.zone}"
                ) from err
            if err.rcode == dns.rcode.REFUSED:
                raise ProviderRejected(
                    f"{self.server}:{self.port} refused a transfer of {self.zone} to key {self.key_name} "
                    "(allow-transfer)"
                ) from err
            raise ProviderError(f"zone transfer of {self.zone} failed: {err}") from err

    def _check_rcode(self, rcode: int, what: str) -> None:
        if rcode == dns.rcode.NOERROR:
            return
        if rcode in (dns.rcode.NOTAUTH, dns.rcode.NOTZONE):
            raise ZoneNotServed(
                f"{self.server}:{self.port} is not authoritative for zone {self.zone} ({what})"
            )
        if rcode == dns.rcode.REFUSED:
            raise ProviderRejected(
                f"{self.server}:{self.port} refused {what} for zone {self.zone} with key {self.key_name} "
                "(allow-update / update-policy)"
            )
        raise ProviderError(
            f"{what} for zone {self.zone} failed: {dns.rcode.to_text(dns.rcode.Rcode(rcode))}"
        )

    # -- reading ------------------------------------------------------------------------------

    async def list_records(self) -> ZoneSnapshot:
        """Zone contents by TSIG transfer: IXFR from the cached copy when there is one, else AXFR."""
        zone = await self._retry("zone transfer", self._transfer)
        return self._snapshot(zone)

    def _snapshot(self, zone: dns.zone.Zone) -> ZoneSnapshot:
        """Convert the transferred zone; rdatasets an IXFR left untouched reuse their conversion."""
        rrsets: list[RRset] = []
        serial: int | None = None
        seen: dict[tuple[dns.name.Name, int], tuple[dns.rdataset.Rdataset, RRset]] = {}
        for name, rds in zone.iterate_rdatasets():
            key = (name, int(rds.rdtype))
            if rds.rdtype == dns.rdatatype.SOA:
                serial = int(rds[0].serial)
            hit = self._converted.get(key)
            rr = hit[1] if hit is not None and hit[0] is rds else _convert(zone, name, rds)
            seen[key] = (rds, rr)
            rrsets.append(rr)
        self._converted = seen
        return ZoneSnapshot.of(self.zone, serial, rrsets)

    async def _transfer(self) -> dns.zone.Zone:
        where = await self._where()
        cached = self._cache
        if cached is not None:
            try:
                query, _ = dns.xfr.make_query(
                    cached, serial=0, keyring=self.keyring, keyname=self.key_name, keyalgorithm=self.algorithm
                )
                await dns.asyncquery.inbound_xfr(
                    where, cached, query=query, port=self.port, lifetime=self.timeout * 4
                )
                self.transfers["IXFR"] += 1
                return cached
            except (dns.xfr.TransferError, dns.exception.FormError, dns.xfr.SerialWentBackwards):
                self._cache = None  # fall back to a full transfer
        zone = dns.zone.Zone(self.origin, relativize=False)
        query, _ = dns.xfr.make_query(
            zone, serial=None, keyring=self.keyring, keyname=self.key_name, keyalgorithm=self.algorithm
        )
        await dns.asyncquery.inbound_xfr(where, zone, query=query, port=self.port, lifetime=self.timeout * 4)
        self.transfers["AXFR"] += 1
        self._cache = zone
        return zone

    async def serial(self) -> int:
        async def op() -> int:
            q = dns.message.make_query(self.origin, dns.rdatatype.SOA)
            r = await dns.asyncquery.tcp(q, await self._where(), port=self.port, timeout=self.timeout)
            self._check_rcode(r.rcode(), "SOA query")
            for rrset in r.answer:
                if rrset.rdtype == dns.rdatatype.SOA:
                    return int(rrset[0].serial)
            raise ZoneNotServed(f"{self.server}:{self.port} has no SOA for {self.zone}")

        return await self._retry("SOA query", op)

    @property
    def answer_source(self) -> str:
        return f"authoritative server {self.server}:{self.port}"

    @property
    def checks_dns(self) -> bool:
        return True

    async def resolve(self, name: str, rtype: str) -> tuple[str, ...]:
        """Ask the authoritative server (no TSIG, like any resolver would)."""

        async def op() -> tuple[str, ...]:
            q = dns.message.make_query(absolute(name), rtype)
            r, _ = await dns.asyncquery.udp_with_fallback(
                q, await self._where(), port=self.port, timeout=self.timeout
            )
            if r.rcode() == dns.rcode.NXDOMAIN:
                return ()
            self._check_rcode(r.rcode(), "query")
            want = dns.rdatatype.from_text(rtype)
            return tuple(
                sorted(
                    canonical_value(rtype, rd.to_text()) for rr in r.answer if rr.rdtype == want for rd in rr
                )
            )

        return await self._retry("query", op)

    # -- writing ------------------------------------------------------------------------------

    def _message(self, changes: Sequence[Change]) -> dns.update.UpdateMessage:
        upd = dns.update.UpdateMessage(
            self.origin, keyring=self.keyring, keyname=self.key_name, keyalgorithm=self.algorithm
        )
        for c in changes:
            if not in_zone(c.name, self.zone):
                raise OutsideZone(f"{c.name} is outside zone {self.zone}")
            if c.kind == "add":
                upd.absent(c.name)  # name not in use
                upd.absent(owner_name(c.name))
            else:
                listed = {r.key for r in c.before}
                for r in c.before:
                    upd.present(r.name, _rdataset(r, ttl=0))  # RRset exists, value dependent
                for r in c.after:
                    if r.key not in listed:
                        upd.absent(r.name, r.rtype)  # RRset does not exist
            for name, rtype in c.removes:
                upd.delete(name, rtype)
            for r in c.puts:
                upd.replace(r.name, _rdataset(r))
        return upd

    def _batches(self, changes: Sequence[Change]) -> list[list[Change]]:
        batches: list[list[Change]] = []
        current: list[Change] = []
        size = 0
        for c in changes:
            if current and size + c.size > self.batch_size:
                batches.append(current)
                current, size = [], 0
            current.append(c)
            size += c.size
        if current:
            batches.append(current)
        return batches

    async def _send(self, changes: Sequence[Change]) -> int:
        msg = self._message(changes)

        async def op() -> int:
            self.writes_sent += 1
            try:
                r = await dns.asyncquery.tcp(msg, await self._where(), port=self.port, timeout=self.timeout)
            except dns.exception.TooBig:
                self.writes_sent -= 1  # rendering failed: nothing was sent
                raise
            return r.rcode()

        return await self._retry("UPDATE", op)

    async def apply(self, plan: Plan) -> ApplyResult:
        result = ApplyResult()
        before = self.writes_sent
        try:
            queue = self._batches(plan.changes)
            while queue:
                batch = queue.pop(0)
                try:
                    rcode = await self._send(batch)
                except dns.exception.TooBig:
                    if len(batch) == 1:
                        raise ProviderRejected(f"the UPDATE for {batch[0].name} exceeds 64 KiB") from None
                    half = len(batch) // 2
                    queue[:0] = [batch[:half], batch[half:]]
                    continue
                if rcode == dns.rcode.NOERROR:
                    result.applied.extend(batch)
                    continue
                if rcode not in PREREQ_FAILED:
                    self._check_rcode(rcode, "UPDATE")
                for change in batch:
                    rcode = await self._send([change]) if len(batch) > 1 else rcode
                    if rcode == dns.rcode.NOERROR:
                        result.applied.append(change)
                    elif rcode in PREREQ_FAILED:
                        if await self._in_place(change):
                            result.applied.append(change)
                        else:
                            result.failed.append(
                                Conflict(
                                    change.owner,
                                    change.name,
                                    "PreconditionFailed",
                                    f"{change.name} changed on the server since it was listed "
                                    f"({dns.rcode.to_text(dns.rcode.Rcode(rcode))}): not overwritten",
                                )
                            )
                    else:
                        self._check_rcode(rcode, "UPDATE")
        finally:
            result.messages = self.writes_sent - before
        return result

    async def _in_place(self, change: Change) -> bool:
        """True when the server already holds exactly `change.after` (an earlier send succeeded)."""
        snap = await self.list_records()
        keys = {r.key for r in change.before} | {r.key for r in change.after}
        now = {k: snap.rrsets[k] for k in keys if k in snap.rrsets}
        return now == {r.key: r for r in change.after}

    async def close(self) -> None:
        self._cache = None


def _rdataset(r: RRset, ttl: int | None = None) -> dns.rdataset.Rdataset:
    return dns.rdataset.from_text_list(
        dns.rdataclass.IN, r.rtype, r.ttl if ttl is None else ttl, list(r.values)
    )


def _convert(zone: dns.zone.Zone, name: dns.name.Name, rds: dns.rdataset.Rdataset) -> RRset:
    rtype = dns.rdatatype.to_text(rds.rdtype)
    absname = name.derelativize(zone.origin) if zone.origin is not None else name
    values = [rd.to_text(origin=zone.origin, relativize=False) for rd in rds]
    try:
        return RRset.make(absname.to_text(), rtype, rds.ttl, values)
    except ValueError:
        return RRset(absname.to_text().lower(), rtype, rds.ttl, tuple(sorted(values)))
