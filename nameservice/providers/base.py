"""The Provider protocol every DNS backend implements, its errors and its apply result.

Imports nameservice.records / nameservice.plan and the standard library only. The errors carry a
`reason` that becomes the condition reason in NameService / DNSProvider status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from nameservice.plan import Change, Conflict, Plan
from nameservice.records import ZoneSnapshot


class ProviderError(Exception):
    """A provider failure with a condition reason and a message meant for a person."""

    reason = "ProviderError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ProviderAuthError(ProviderError):
    """Wrong TSIG secret / unknown key name / wrong API key."""

    reason = "AuthenticationFailed"


class ZoneNotServed(ProviderError):
    reason = "ZoneNotServed"


class OutsideZone(ProviderError):
    reason = "FQDNOutsideZone"


class ProviderUnreachable(ProviderError):
    """The server did not answer after retries with backoff."""

    reason = "ProviderUnreachable"


class ProviderRejected(ProviderError):
    """The server refused or rejected a request (policy, malformed data)."""

    reason = "ProviderRejected"


@dataclass
class ApplyResult:
    applied: list[Change] = field(default_factory=list)
    # Changes whose prerequisites failed (someone else changed the name meanwhile): not applied.
    failed: list[Conflict] = field(default_factory=list)
    # Write requests sent (RFC 2136 UPDATE messages, PowerDNS PATCH requests), retries included.
    messages: int = 0


class Provider(Protocol):
    """One zone on one DNS server."""

    zone: str
    # Cumulative count of write requests (UPDATE messages / PATCHes) this provider sent.
    writes_sent: int

    async def list_records(self) -> ZoneSnapshot:
        """Every rrset of the zone, with its SOA serial."""
        ...

    async def apply(self, plan: Plan) -> ApplyResult:
        """Apply the plan's changes; an empty plan sends nothing."""
        ...

    async def serial(self) -> int:
        """The zone's current SOA serial."""
        ...

    async def resolve(self, name: str, rtype: str) -> tuple[str, ...]:
        """Canonical values the authoritative server answers for (name, type); () if none."""
        ...

    @property
    def answer_source(self) -> str:
        """Who `resolve` asks, for the Resolvable condition's message ("authoritative server h:p")."""
        ...

    @property
    def checks_dns(self) -> bool:
        """False when `resolve` reads the provider's own listing instead of asking a DNS server."""
        ...

    async def close(self) -> None: ...
