"""certs.renewal: durations, renewal time, jitter, backoff, the issue/wait decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from accesspoint.meta import format_duration, parse_duration
from certs.renewal import (
    CurrentCert,
    backoff,
    decide,
    effective_renew_before,
    jitter_fraction,
    renewal_time,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2160h", 2160 * H),
        ("90m", timedelta(minutes=90)),
        ("1h30m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("0.5h", timedelta(minutes=30)),
        ("1h1m1s", timedelta(seconds=3661)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "10", "h", "10d", "1h 30m", "-1h", "1hx"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_format_duration_round_trips() -> None:
    for d in (2160 * H, timedelta(seconds=3661), timedelta(seconds=59)):
        assert parse_duration(format_duration(d)) == d
    assert format_duration(timedelta(0)) == "0s"


@pytest.mark.parametrize(
    ("lifetime", "renew_before", "expected"),
    [
        (90 * D, None, 30 * D),  # default: one third
        (90 * D, 10 * D, 10 * D),
        (90 * D, 90 * D, 30 * D),  # does not fit the lifetime: fall back to a third
        (90 * D, 200 * D, 30 * D),
        (90 * D, timedelta(0), 30 * D),
        (timedelta(seconds=30), None, timedelta(seconds=10)),
    ],
)
def test_effective_renew_before(
    lifetime: timedelta, renew_before: timedelta | None, expected: timedelta
) -> None:
    assert effective_renew_before(T0, T0 + lifetime, renew_before) == expected


@pytest.mark.parametrize(
    ("lifetime", "renew_before", "latest"),
    [
        (90 * D, None, T0 + 60 * D),
        (90 * D, 10 * D, T0 + 80 * D),
        (timedelta(seconds=60), None, T0 + timedelta(seconds=40)),
    ],
)
def test_renewal_time_window(lifetime: timedelta, renew_before: timedelta | None, latest: datetime) -> None:
    before = effective_renew_before(T0, T0 + lifetime, renew_before)
    for serial in ("1", "abc", "ffff", "0123456789abcdef"):
        at = renewal_time(T0, T0 + lifetime, renew_before, serial)
        # jitter only ever renews earlier, by at most 10% of renewBefore
        assert latest - before * 0.1 <= at <= latest


def test_jitter_is_deterministic_and_spread() -> None:
    assert jitter_fraction("abc") == jitter_fraction("ABC") == jitter_fraction("abc")
    fractions = {round(jitter_fraction(f"{i:x}"), 3) for i in range(200)}
    assert len(fractions) > 150
    assert all(0 <= f < 1 for f in fractions)
    times = {renewal_time(T0, T0 + 90 * D, None, f"{i:x}") for i in range(50)}
    assert len(times) == 50  # a batch issued together does not renew together


def test_no_jitter() -> None:
    assert renewal_time(T0, T0 + 90 * D, None, "abc", jitter=0) == T0 + 60 * D


def test_renewal_time_never_before_not_before() -> None:
    assert renewal_time(T0, T0 + timedelta(seconds=3), None, "x", jitter=50) == T0


@pytest.mark.parametrize(
    ("failures", "expected"),
    [
        (0, timedelta(0)),
        (1, timedelta(seconds=10)),
        (2, timedelta(seconds=20)),
        (3, timedelta(seconds=40)),
        (9, timedelta(seconds=2560)),
        (10, H),
        (1000, H),
    ],
)
def test_backoff(failures: int, expected: timedelta) -> None:
    assert backoff(failures) == expected


CUR = CurrentCert(serial="abc", hosts=("a.example.com",), issuer="ca", not_before=T0, not_after=T0 + 90 * D)
RENEW_AT = renewal_time(T0, T0 + 90 * D, None, "abc")


@pytest.mark.parametrize(
    ("now", "current", "hosts", "issuer", "failures", "last_failure", "due", "reason", "at"),
    [
        (T0, None, ["a.example.com"], "ca", 0, None, True, "Initial", T0),
        (T0 + D, CUR, ["a.example.com"], "ca", 0, None, False, "UpToDate", RENEW_AT),
        (T0 + D, CUR, ["A.example.com"], "ca", 0, None, False, "UpToDate", RENEW_AT),
        (T0 + D, CUR, ["a.example.com", "b.example.com"], "ca", 0, None, True, "HostsChanged", T0 + D),
        (T0 + D, CUR, ["a.example.com"], "acme", 0, None, True, "IssuerChanged", T0 + D),
        (RENEW_AT, CUR, ["a.example.com"], "ca", 0, None, True, "Renewal", RENEW_AT),
        (T0 + 91 * D, CUR, ["a.example.com"], "ca", 0, None, True, "Expired", T0 + 91 * D),
        # failures: wait for the backoff, then try again
        (
            T0 + 5 * timedelta(seconds=1),
            None,
            ["a.example.com"],
            "ca",
            1,
            T0,
            False,
            "Backoff",
            T0 + timedelta(seconds=10),
        ),
        (
            T0 + timedelta(seconds=10),
            None,
            ["a.example.com"],
            "ca",
            1,
            T0,
            True,
            "Initial",
            T0 + timedelta(seconds=10),
        ),
        (
            RENEW_AT,
            CUR,
            ["a.example.com"],
            "ca",
            3,
            RENEW_AT,
            False,
            "Backoff",
            RENEW_AT + timedelta(seconds=40),
        ),
        (RENEW_AT + H, CUR, ["a.example.com"], "ca", 3, RENEW_AT, True, "Renewal", RENEW_AT + H),
    ],
)
def test_decide(
    now: datetime,
    current: CurrentCert | None,
    hosts: list[str],
    issuer: str,
    failures: int,
    last_failure: datetime | None,
    due: bool,
    reason: str,
    at: datetime,
) -> None:
    d = decide(
        now,
        current=current,
        hosts=hosts,
        issuer=issuer,
        renew_before=None,
        failures=failures,
        last_failure=last_failure,
    )
    assert (d.due, d.reason, d.at) == (due, reason, at)
