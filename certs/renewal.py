"""Renewal policy (pure: no I/O, no clock — callers pass `now`).

Owns: the renewal time of a certificate (notAfter - renewBefore, default
one third of the lifetime, minus a deterministic jitter derived from the serial so a fleet of
certificates issued together does not renew in one burst), exponential backoff after failures, and
the decision "issue now / wait until T" for a Certificate. Imports only the standard library
(durations are parsed by accesspoint.meta.parse_duration).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

DEFAULT_JITTER = 0.1  # renew up to 10% of renewBefore earlier
BACKOFF_BASE = timedelta(seconds=10)
BACKOFF_CAP = timedelta(hours=1)


def jitter_fraction(serial: str) -> float:
    """A stable number in [0, 1) derived from the certificate serial."""
    digest = hashlib.sha256(serial.lower().encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def effective_renew_before(
    not_before: datetime, not_after: datetime, renew_before: timedelta | None
) -> timedelta:
    lifetime = not_after - not_before
    if renew_before is None or renew_before <= timedelta(0) or renew_before >= lifetime:
        # Default, and the fallback for a renewBefore that does not fit the lifetime the CA gave.
        return lifetime / 3
    return renew_before


def renewal_time(
    not_before: datetime,
    not_after: datetime,
    renew_before: timedelta | None,
    serial: str,
    jitter: float = DEFAULT_JITTER,
) -> datetime:
    """notAfter - renewBefore - fraction(serial) * jitter * renewBefore, but never before notBefore."""
    before = effective_renew_before(not_before, not_after, renew_before)
    at = not_after - before - before * (jitter * jitter_fraction(serial))
    return max(at.replace(microsecond=0), not_before)  # whole seconds: status round-trips it exactly


def backoff(failures: int, base: timedelta = BACKOFF_BASE, cap: timedelta = BACKOFF_CAP) -> timedelta:
    """Delay after the n-th consecutive failure: base, 2*base, 4*base ... capped."""
    if failures <= 0:
        return timedelta(0)
    factor: int = 2 ** min(failures - 1, 30)
    return min(base * factor, cap)


Reason = Literal["Initial", "HostsChanged", "IssuerChanged", "Expired", "Renewal", "Backoff", "UpToDate"]


@dataclass(frozen=True)
class CurrentCert:
    """What is known about the certificate being served (from status)."""

    serial: str
    hosts: tuple[str, ...]
    issuer: str
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class Decision:
    due: bool
    reason: Reason
    at: datetime  # when to act (now when due; else the next time to look again)


def decide(
    now: datetime,
    *,
    current: CurrentCert | None,
    hosts: Sequence[str],
    issuer: str,
    renew_before: timedelta | None,
    failures: int = 0,
    last_failure: datetime | None = None,
    jitter: float = DEFAULT_JITTER,
    base: timedelta = BACKOFF_BASE,
    cap: timedelta = BACKOFF_CAP,
) -> Decision:
    """Issue now, or wait until `at`. Backoff after failures delays every kind of (re)issuance."""
    if current is None:
        reason: Reason = "Initial"
    elif sorted(h.lower() for h in hosts) != sorted(h.lower() for h in current.hosts):
        reason = "HostsChanged"
    elif issuer != current.issuer:
        reason = "IssuerChanged"
    elif now >= current.not_after:
        reason = "Expired"
    else:
        at = renewal_time(current.not_before, current.not_after, renew_before, current.serial, jitter)
        if now < at:
            return Decision(False, "UpToDate", at)
        reason = "Renewal"
    if failures > 0 and last_failure is not None:
        retry_at = last_failure + backoff(failures, base, cap)
        if now < retry_at:
            return Decision(False, "Backoff", retry_at)
    return Decision(True, reason, now)
