"""Local checks of a certificate before anyone is asked to serve it (pure: no I/O, no clock).

Owns: key/cert mismatch, validity window (expired / not yet valid), host coverage (SAN matching
with single-label wildcards), chain order and signatures, and the issuer's allowed-domain policy.
Problems never quote key material. Imports cryptography and certs.issuers (types only).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from certs.issuers import CertBundle, load_key

# How far ahead of ours the clock that stamped a fresh certificate may run: a notBefore up to this
# far in the future is taken. A CA that does not backdate (Pebble) stamps its own time of issue,
# and the SDS server may run on another machine than the hub. cert-manager does not check
# notBefore at all; refusing would re-order and spend the CA's rate limit on a certificate that
# becomes valid on its own.
ISSUER_CLOCK_SKEW = timedelta(minutes=1)


@dataclass(frozen=True)
class Problem:
    code: str  # Unparseable | KeyMismatch | NotYetValid | Expired | HostNotCovered | ChainBroken
    message: str


@dataclass(frozen=True)
class CheckResult:
    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def codes(self) -> list[str]:
        return [p.code for p in self.problems]

    @property
    def message(self) -> str:
        return "; ".join(f"{p.code}: {p.message}" for p in self.problems)


def load_chain(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem) if pem.strip() else []


def san_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return [n.lower() for n in san.get_values_for_type(x509.DNSName)] + ips


def host_covered(host: str, names: Iterable[str]) -> bool:
    """True when a SAN name covers `host` (RFC 6125: '*' replaces exactly the left-most label)."""
    host = host.lower().rstrip(".")
    for name in names:
        name = name.lower().rstrip(".")
        if name == host:
            return True
        if name.startswith("*.") and not host.startswith("*."):
            head, _, rest = host.partition(".")
            if head and rest == name[2:]:
                return True
    return False


def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    """Issuer policy: 'example.com' allows exactly that name; '*.example.com' allows any name (and
    wildcard) below example.com. No patterns: everything is allowed."""
    if not patterns:
        return True
    host = host.lower().rstrip(".")
    bare = host[2:] if host.startswith("*.") else host
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host == pattern or bare.endswith("." + pattern[2:]):
                return True
        elif host == pattern:
            return True
    return False


def disallowed_hosts(hosts: Sequence[str], patterns: Sequence[str]) -> list[str]:
    return [h for h in hosts if not host_allowed(h, patterns)]


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_pem(
    cert_pem: bytes,
    key_pem: bytes,
    hosts: Sequence[str],
    now: datetime,
    ca_pem: bytes = b"",
    *,
    not_before_slack: timedelta = timedelta(0),
) -> CheckResult:
    """Every problem with serving (cert_pem, key_pem) for `hosts` at `now`. A notBefore up to
    `not_before_slack` after `now` is not a problem (another clock stamped it)."""
    problems: list[Problem] = []
    try:
        chain = load_chain(cert_pem)
    except ValueError:
        return CheckResult((Problem("Unparseable", "tls.crt is not a PEM certificate chain"),))
    if not chain:
        return CheckResult((Problem("Unparseable", "tls.crt holds no certificate"),))
    leaf = chain[0]
    try:
        key = load_key(key_pem)
    except ValueError as exc:
        problems.append(Problem("Unparseable", f"tls.key: {exc}"))
    else:
        if _public_der(key.public_key()) != _public_der(leaf.public_key()):
            problems.append(Problem("KeyMismatch", "the private key does not match the certificate"))
    if now + not_before_slack < leaf.not_valid_before_utc:
        problems.append(Problem("NotYetValid", f"valid from {leaf.not_valid_before_utc.isoformat()}"))
    if now >= leaf.not_valid_after_utc:
        problems.append(Problem("Expired", f"expired at {leaf.not_valid_after_utc.isoformat()}"))
    names = san_names(leaf)
    missing = [h for h in hosts if not host_covered(h, names)]
    if missing:
        problems.append(
            Problem("HostNotCovered", f"not covered: {', '.join(missing)} (SAN: {', '.join(names)})")
        )
    problems.extend(_chain_problems(chain, ca_pem))
    return CheckResult(tuple(problems))


def _chain_problems(chain: list[x509.Certificate], ca_pem: bytes) -> list[Problem]:
    out: list[Problem] = []
    for child, parent in itertools.pairwise(chain):
        if not _issued_by(child, parent):
            out.append(
                Problem(
                    "ChainBroken",
                    f"{child.subject.rfc4514_string()} is not signed by the next "
                    f"certificate {parent.subject.rfc4514_string()}",
                )
            )
    if ca_pem.strip():
        try:
            anchors = load_chain(ca_pem)
        except ValueError:
            return [*out, Problem("Unparseable", "ca.crt is not PEM")]
        top = chain[-1]
        if not any(top == a or _issued_by(top, a) for a in anchors):
            out.append(Problem("ChainBroken", f"{top.issuer.rfc4514_string()} is not among the trusted CAs"))
    return out


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_bundle(bundle: CertBundle, now: datetime, hosts: Sequence[str] | None = None, *,
                 not_before_slack: timedelta = timedelta(0)) -> CheckResult:
    """check_pem for a bundle; `hosts` defaults to the hosts it was issued for."""
    return check_pem(
        bundle.cert_pem, bundle.key_pem, bundle.hosts if hosts is None else hosts, now, bundle.ca_pem,
        not_before_slack=not_before_slack,
    )
