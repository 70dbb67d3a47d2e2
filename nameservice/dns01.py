"""ACME DNS-01 through a DNS provider: `_acme-challenge` TXT values published and removed with the
Provider clients NameService uses (RFC 2136 with TSIG, PowerDNS HTTP API).

Owns `plan_challenge` (pure: one challenge value added to / removed from the TXT rrset at a name,
given a zone listing) and `Dns01ProviderHook`, which implements certs.acme_issuer.Dns01Hook
structurally (`set_txt` / `delete_txt`; nothing from certs is imported).

Ownership rules (the same spirit as nameservice.plan, adapted to challenge records):
- a challenge value is ours by construction (unique per order and account key): only that value is
  ever added or removed; every other TXT value at the name (another ACME client, the apex and the
  wildcard of one order, a person's record) is kept as it is, TTL included;
- a name holding anything but TXT (e.g. a CNAME delegating `_acme-challenge` to another zone) is
  a `ChallengeConflict`: nothing is written;
- a name outside the provider's zone is `OutsideZone`: nothing is written;
- every change carries the listing it was planned from as its precondition (RFC 2136
  prerequisites, PowerDNS re-read): a concurrent writer makes it fail, and it is planned again from
  a fresh listing (a few attempts), never overwritten.

Errors are nameservice.providers.base.ProviderError subclasses (the hub maps them to issuance
failures). Imports nameservice.records / plan / providers.base and the standard library only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nameservice.plan import Change, Plan
from nameservice.providers.base import OutsideZone, Provider, ProviderError
from nameservice.records import Owner, RRset, ZoneSnapshot, absolute, canonical_value, in_zone

ATTEMPTS = 4

# Gives the provider client to use now and the lock serialising writes to its zone (None: no lock).
ProviderSource = Callable[[], Awaitable[tuple[Provider, asyncio.Lock | None]]]


class ChallengeConflict(ProviderError):
    """The challenge name holds records that are not TXT, or kept changing under us."""

    reason = "ChallengeRecordConflict"


def plan_challenge(snapshot: ZoneSnapshot, name: str, value: str, ttl: int, owner: Owner, *,
                   present: bool) -> Change | None:
    """The change adding (`present`) or removing one TXT `value` at `name`; None when nothing is to do.
    Raises OutsideZone or ChallengeConflict (nothing may be written)."""
    name = absolute(name)
    if not in_zone(name, snapshot.zone):
        raise OutsideZone(f"{name} is outside zone {snapshot.zone}")
    others = sorted({r.rtype for r in snapshot.at(name) if r.rtype != "TXT"})
    if others:
        raise ChallengeConflict(
            f"{name} holds {','.join(others)} records not published by meshfed: the challenge TXT "
            "cannot be placed there (a CNAME delegating _acme-challenge needs a DNSProvider for its target)")
    txt = snapshot.get(name, "TXT")
    want = canonical_value("TXT", value)
    values = set(txt.values) if txt is not None else set()
    if present:
        if want in values:
            return None
        if txt is None:
            return Change("add", owner, name, (), (RRset.make(name, "TXT", ttl, [want]),))
        return Change("update", owner, name, (txt,), (RRset.make(name, "TXT", txt.ttl, [*values, want]),))
    if txt is None or want not in values:
        return None
    rest = sorted(values - {want})
    if not rest:
        return Change("delete", owner, name, (txt,), ())
    return Change("update", owner, name, (txt,), (RRset.make(name, "TXT", txt.ttl, rest),))


class Dns01ProviderHook:
    """A Dns01Hook writing challenge TXT values through a nameservice Provider."""

    def __init__(self, source: ProviderSource, owner: Owner) -> None:
        self._source = source
        self._owner = owner

    @classmethod
    def for_provider(cls, provider: Provider, owner: Owner) -> Dns01ProviderHook:
        lock = asyncio.Lock()

        async def source() -> tuple[Provider, asyncio.Lock | None]:
            return provider, lock

        return cls(source, owner)

    def __repr__(self) -> str:
        return f"Dns01ProviderHook(owner={self._owner})"

    async def set_txt(self, fqdn: str, value: str, ttl: int) -> None:
        await self._change(fqdn, value, ttl, present=True)

    async def delete_txt(self, fqdn: str, value: str) -> None:
        await self._change(fqdn, value, 60, present=False)

    async def _change(self, fqdn: str, value: str, ttl: int, *, present: bool) -> None:
        provider, lock = await self._source()
        for _ in range(ATTEMPTS):
            async with lock or _NO_LOCK:
                snapshot = await provider.list_records()
                change = plan_challenge(snapshot, fqdn, value, ttl, self._owner, present=present)
                if change is None:
                    return
                result = await provider.apply(_plan_of(change))
            if not result.failed:
                return
        raise ChallengeConflict(f"{absolute(fqdn)} changed on the server during each of {ATTEMPTS} attempts "
                                f"to {'add' if present else 'remove'} the challenge value: not overwritten")


def _plan_of(change: Change) -> Plan:
    if change.kind == "add":
        return Plan(adds=(change,))
    if change.kind == "update":
        return Plan(updates=(change,))
    return Plan(deletes=(change,))


class _NoLock:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_NO_LOCK = _NoLock()
