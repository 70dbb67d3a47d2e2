"""certs.checks: key/cert mismatch, validity window, host coverage, chain, issuer domain policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from certs.ca import InternalCA, generate_ca
from certs.checks import check_bundle, check_pem, disallowed_hosts, host_allowed, host_covered
from certs.issuers import CertBundle

NOW = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> InternalCA:
    return InternalCA(*generate_ca(now=NOW - timedelta(days=1)), clock=lambda: NOW)


@pytest.fixture(scope="module")
def good(ca: InternalCA) -> CertBundle:
    return ca.issue_sync(["a.example.com", "*.apps.example.com"], timedelta(days=30))


def test_good_bundle_passes(good: CertBundle) -> None:
    result = check_bundle(good, NOW)
    assert result.ok, result.message
    assert result.codes == []


def test_key_mismatch(ca: InternalCA, good: CertBundle) -> None:
    other = ca.issue_sync(["a.example.com"])
    result = check_pem(good.cert_pem, other.key_pem, ["a.example.com"], NOW)
    assert result.codes == ["KeyMismatch"]
    assert "PRIVATE KEY" not in result.message


@pytest.mark.parametrize(
    ("now", "code"),
    [
        (NOW - timedelta(days=1), "NotYetValid"),
        (NOW + timedelta(days=31), "Expired"),
        (NOW + timedelta(days=29), None),
    ],
)
def test_validity_window(good: CertBundle, now: datetime, code: str | None) -> None:
    assert check_bundle(good, now).codes == ([code] if code else [])


def test_not_before_slack(good: CertBundle) -> None:
    starts = good.leaf.not_valid_before_utc
    early = starts - timedelta(seconds=30)
    assert check_bundle(good, early).codes == ["NotYetValid"]
    assert check_bundle(good, early, not_before_slack=timedelta(seconds=30)).codes == []
    assert check_bundle(good, early, not_before_slack=timedelta(seconds=29)).codes == ["NotYetValid"]


def test_hosts_not_covered(good: CertBundle) -> None:
    result = check_bundle(
        good, NOW, ["a.example.com", "x.apps.example.com", "b.example.com", "y.x.apps.example.com"]
    )
    assert result.codes == ["HostNotCovered"]
    assert "b.example.com" in result.message and "y.x.apps.example.com" in result.message
    assert "x.apps.example.com," not in result.message.split("(SAN")[0]


@pytest.mark.parametrize(
    ("host", "names", "covered"),
    [
        ("a.example.com", ["a.example.com"], True),
        ("A.Example.COM", ["a.example.com"], True),
        ("a.example.com.", ["a.example.com"], True),
        ("x.example.com", ["*.example.com"], True),
        ("example.com", ["*.example.com"], False),
        ("y.x.example.com", ["*.example.com"], False),
        ("*.example.com", ["*.example.com"], True),
        ("*.example.com", ["a.example.com"], False),
        ("b.example.com", ["a.example.com"], False),
        ("127.0.0.1", ["127.0.0.1"], True),
    ],
)
def test_host_covered(host: str, names: list[str], covered: bool) -> None:
    assert host_covered(host, names) is covered


def test_chain_broken_and_untrusted(ca: InternalCA, good: CertBundle) -> None:
    other_ca_pem, _ = generate_ca("someone else", now=NOW - timedelta(days=1))
    # a chain whose "intermediate" did not sign the leaf
    broken = check_pem(good.cert_pem + other_ca_pem, good.key_pem, ["a.example.com"], NOW)
    assert broken.codes == ["ChainBroken"]
    # a leaf not issued by the CA we were told to trust
    untrusted = check_pem(good.cert_pem, good.key_pem, ["a.example.com"], NOW, ca_pem=other_ca_pem)
    assert untrusted.codes == ["ChainBroken"]
    # the right anchor, alone or among others
    assert check_pem(good.cert_pem, good.key_pem, [], NOW, ca_pem=other_ca_pem + ca.ca_pem).ok


@pytest.mark.parametrize(
    ("cert", "key", "codes"),
    [
        (b"not a cert", b"", ["Unparseable"]),
        (b"", b"", ["Unparseable"]),
    ],
)
def test_unparseable(cert: bytes, key: bytes, codes: list[str]) -> None:
    assert check_pem(cert, key, ["a.example.com"], NOW).codes == codes


def test_unreadable_key_message_does_not_echo_it(good: CertBundle) -> None:
    junk = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LXNlY3JldA==\n-----END PRIVATE KEY-----\n"
    result = check_pem(good.cert_pem, junk, ["a.example.com"], NOW)
    assert result.codes == ["Unparseable"]
    assert "c2VjcmV0" not in result.message


@pytest.mark.parametrize(
    ("host", "patterns", "allowed"),
    [
        ("a.example.com", [], True),
        ("a.example.com", ["a.example.com"], True),
        ("b.example.com", ["a.example.com"], False),
        ("a.example.com", ["*.example.com"], True),
        ("x.y.example.com", ["*.example.com"], True),
        ("*.example.com", ["*.example.com"], True),
        ("*.com", ["*.example.com"], False),
        ("*.apps.example.com", ["*.example.com"], True),
        ("example.com", ["*.example.com"], False),
        ("evilexample.com", ["*.example.com"], False),
    ],
)
def test_host_allowed(host: str, patterns: list[str], allowed: bool) -> None:
    assert host_allowed(host, patterns) is allowed


def test_disallowed_hosts() -> None:
    assert disallowed_hosts(["a.corp.test", "shop.example.com"], ["*.corp.test"]) == ["shop.example.com"]
