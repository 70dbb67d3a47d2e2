"""The Issuer plug-in interface, the key-holding CertBundle, and key + CSR generation.

An *issuer* is anything that turns a CSR into a signed chain: the internal CA (certs.ca), ACME
(certs.acme_issuer), or an enterprise issuance center behind a small adapter. Issuers never see
private keys: meshfed generates a fresh key per certificate (`new_private_key`), sends only the CSR,
and pairs the returned chain with the key in a `CertBundle`.

To plug in another CA, implement `Issuer`:

    class MyCA:
        name = "corp-ca"
        async def sign(self, csr_pem: bytes, hosts: Sequence[str], duration: timedelta) -> IssuedChain:
            ...  # POST the CSR to the issuance center, return the PEM chain
            # raise IssuanceError(reason="...", message="...", retryable=...) on failure

Imports cryptography only; no I/O here.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
KeyAlgorithm = Literal["ECDSA", "RSA"]


class IssuanceError(Exception):
    """An issuance that failed: `reason` is a CamelCase condition reason, `message` is safe to show
    (never contains key material), `retryable` says whether backing off and retrying may help."""

    def __init__(self, reason: str, message: str, *, retryable: bool = True) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True)
class IssuedChain:
    """What an issuer returns: PEM leaf + intermediates, and the root (for ca.crt) when known."""

    chain_pem: bytes  # leaf first, then intermediates
    ca_pem: bytes = b""  # trust anchor for clients (ca.crt); may be empty when unknown


@dataclass(frozen=True, repr=False)
class CertBundle:
    """A certificate with its private key. Its repr, str and equality never show the key."""

    cert_pem: bytes  # leaf + intermediates, PEM (tls.crt)
    key_pem: bytes = field(repr=False)  # PKCS#8 PEM (tls.key)
    ca_pem: bytes = b""  # ca.crt
    hosts: tuple[str, ...] = ()
    issuer: str = ""

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def serial_hex(self) -> str:
        return serial_hex(self.leaf.serial_number)

    @property
    def not_before(self) -> datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc

    def __repr__(self) -> str:
        try:
            what = f"serial={self.serial_hex} not_after={self.not_after.isoformat()}"
        except ValueError:
            what = "unparseable certificate"
        return f"CertBundle({what} hosts={list(self.hosts)} issuer={self.issuer!r} key=<redacted>)"

    __str__ = __repr__


def serial_hex(serial: int) -> str:
    return f"{serial:x}"


@runtime_checkable
class Issuer(Protocol):
    """Signs CSRs. `sign` must not block the event loop (run blocking clients in a thread)."""

    @property
    def name(self) -> str: ...

    async def sign(self, csr_pem: bytes, hosts: Sequence[str], duration: timedelta) -> IssuedChain: ...


def new_private_key(algorithm: KeyAlgorithm = "ECDSA", size: int | None = None) -> PrivateKey:
    """A new key: ECDSA P-256 (default) or P-384, RSA 2048 (default) to 4096 bits. Any other size is
    refused (never silently replaced by a default curve); the CRD schema refuses it first."""
    if algorithm == "ECDSA":
        curves: dict[int | None, ec.EllipticCurve] = {None: ec.SECP256R1(), 256: ec.SECP256R1(), 384: ec.SECP384R1()}
        if size not in curves:
            raise ValueError(f"unsupported ECDSA key size {size} (256 or 384)")
        return ec.generate_private_key(curves[size])
    if size is not None and not 2048 <= size <= 4096:
        raise ValueError(f"unsupported RSA key size {size} (2048 to 4096)")
    return rsa.generate_private_key(public_exponent=65537, key_size=size or 2048)


def key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_key(key_pem: bytes) -> PrivateKey:
    """Load a PEM private key; errors never echo the input."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ValueError("private key is not a readable unencrypted PEM key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    return key


def general_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """SAN entries: IP addresses as iPAddress, everything else as dNSName."""
    out: list[x509.GeneralName] = []
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def make_csr(key: PrivateKey, hosts: Sequence[str]) -> bytes:
    """A CSR naming `hosts` in the SAN (CN = first host, for old clients)."""
    if not hosts:
        raise ValueError("a certificate needs at least one host")
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64])]))
        .add_extension(x509.SubjectAlternativeName(general_names(hosts)), critical=False)
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


async def issue_bundle(
    issuer: Issuer,
    hosts: Sequence[str],
    duration: timedelta,
    *,
    algorithm: KeyAlgorithm = "ECDSA",
    size: int | None = None,
    reuse_key_pem: bytes | None = None,
) -> CertBundle:
    """Generate a key (new per certificate unless `reuse_key_pem`), a CSR, have `issuer` sign it."""
    try:
        if reuse_key_pem is not None:
            key = load_key(reuse_key_pem)
        elif algorithm == "RSA":
            key = await asyncio.to_thread(new_private_key, algorithm, size)  # RSA keygen takes ~50 ms+
        else:
            key = new_private_key(algorithm, size)
    except ValueError as exc:
        raise IssuanceError("PrivateKeyInvalid", f"spec.privateKey: {exc}", retryable=False) from None
    csr = make_csr(key, hosts)
    chain = await issuer.sign(csr, hosts, duration)
    return CertBundle(
        cert_pem=chain.chain_pem,
        key_pem=reuse_key_pem if reuse_key_pem is not None else key_to_pem(key),
        ca_pem=chain.ca_pem,
        hosts=tuple(hosts),
        issuer=issuer.name,
    )
