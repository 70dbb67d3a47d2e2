"""The internal CA issuer: signs CSRs with a CA key held in memory (loaded once from the hub Secret).

Owns CA creation (`generate_ca`, for bootstrap and tests), loading from Secret data
(`InternalCA.from_secret_data`) and signing. The CA key object is loaded once and reused, so one
issuance is a CSR parse + one ECDSA signature (well under a millisecond). Its repr names the CA
subject only. Imports cryptography and certs.issuers / certs.checks; no I/O. The clock is injectable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.checks import disallowed_hosts
from certs.issuers import (
    CertBundle,
    IssuanceError,
    IssuedChain,
    PrivateKey,
    general_names,
    key_to_pem,
    load_key,
    make_csr,
    new_private_key,
)

Clock = Callable[[], datetime]
BACKDATE = timedelta(minutes=5)  # tolerate clock skew between hub and gateways


def _utcnow() -> datetime:
    return datetime.now(UTC)


def generate_ca(
    common_name: str = "meshfed internal CA",
    *,
    now: datetime | None = None,
    validity: timedelta = timedelta(days=3650),
    hosts: Sequence[str] = (),
) -> tuple[bytes, bytes]:
    """A self-signed CA: (cert_pem, key_pem). `hosts` adds SANs (handy for test servers)."""
    key = new_private_key("ECDSA")
    now = now or _utcnow()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(general_names(hosts)), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), key_to_pem(key)


class InternalCA:
    """An `Issuer` backed by a CA certificate and key."""

    def __init__(
        self,
        ca_cert_pem: bytes,
        ca_key_pem: bytes,
        *,
        name: str = "internal-ca",
        allowed_domains: Sequence[str] = (),
        max_duration: timedelta = timedelta(days=397),
        clock: Clock = _utcnow,
    ) -> None:
        try:
            self._cert = x509.load_pem_x509_certificate(ca_cert_pem)
        except ValueError:
            raise IssuanceError(
                "CASecretInvalid", "tls.crt of the CA Secret is not a PEM certificate", retryable=False
            ) from None
        try:
            self._key: PrivateKey = load_key(ca_key_pem)
        except ValueError as exc:
            raise IssuanceError(
                "CASecretInvalid", f"tls.key of the CA Secret: {exc}", retryable=False
            ) from None
        if self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != self._cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise IssuanceError(
                "CASecretInvalid", "the CA key does not match the CA certificate", retryable=False
            )
        self._ca_pem = self._cert.public_bytes(serialization.Encoding.PEM)
        self._name = name
        self._allowed = tuple(allowed_domains)
        self._max_duration = max_duration
        self._clock = clock
        self._hash = (
            hashes.SHA256() if isinstance(self._key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) else None
        )
        try:
            self._aki: x509.AuthorityKeyIdentifier | None = (
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key())
            )
        except ValueError:
            self._aki = None

    @classmethod
    def from_secret_data(cls, data: Mapping[str, bytes] | None, **kwargs: object) -> InternalCA:
        """From the decoded data of a kubernetes.io/tls Secret; a missing Secret or key is a clear error."""
        if data is None:
            raise IssuanceError("CASecretMissing", "the CA Secret does not exist", retryable=True)
        for k in ("tls.crt", "tls.key"):
            if not data.get(k):
                raise IssuanceError("CASecretInvalid", f"the CA Secret has no {k}", retryable=False)
        return cls(data["tls.crt"], data["tls.key"], **kwargs)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return self._name

    @property
    def ca_pem(self) -> bytes:
        return self._ca_pem

    def __repr__(self) -> str:
        subject = self._cert.subject.rfc4514_string()
        return f"InternalCA(name={self._name!r}, subject={subject!r}, key=<redacted>)"

    __str__ = __repr__

    async def sign(self, csr_pem: bytes, hosts: Sequence[str], duration: timedelta) -> IssuedChain:
        return self.sign_sync(csr_pem, hosts, duration)

    def sign_sync(self, csr_pem: bytes, hosts: Sequence[str], duration: timedelta) -> IssuedChain:
        denied = disallowed_hosts(hosts, self._allowed)
        if denied:
            raise IssuanceError(
                "HostNotAllowed",
                f"issuer {self._name} may not sign {', '.join(denied)} (allowed: {', '.join(self._allowed)})",
                retryable=False,
            )
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise IssuanceError("BadCSR", "the CSR is not PEM", retryable=False) from None
        if not csr.is_signature_valid:
            raise IssuanceError("BadCSR", "the CSR signature is invalid", retryable=False)
        now = self._clock()
        not_after = min(now + min(duration, self._max_duration), self._cert.not_valid_after_utc)
        if not_after <= now:
            raise IssuanceError(
                "CAExpired", f"the CA expired at {self._cert.not_valid_after_utc.isoformat()}"
            )
        public_key = csr.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64])]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(general_names(hosts)), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        )
        if self._aki is not None:
            builder = builder.add_extension(self._aki, critical=False)
        cert = builder.sign(self._key, self._hash)
        return IssuedChain(chain_pem=cert.public_bytes(serialization.Encoding.PEM), ca_pem=self._ca_pem)

    def issue_client_sync(self, identities: Sequence[str], duration: timedelta = timedelta(days=1)) -> CertBundle:
        """A client certificate (key usage clientAuth) for mutual TLS, e.g. an Envoy talking to
        `meshfed sds`: `spiffe://` identities become URI SANs, others DNS SANs."""
        if not identities:
            raise ValueError("a client certificate needs at least one identity")
        key = new_private_key("ECDSA")
        now = self._clock()
        sans: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(i) if i.startswith("spiffe://") else x509.DNSName(i) for i in identities
        ]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identities[0][:64])]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + duration, self._cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if self._aki is not None:
            builder = builder.add_extension(self._aki, critical=False)
        cert = builder.sign(self._key, self._hash)
        return CertBundle(cert.public_bytes(serialization.Encoding.PEM), key_to_pem(key), self._ca_pem,
                          tuple(identities), self._name)

    def issue_sync(self, hosts: Sequence[str], duration: timedelta = timedelta(days=90)) -> CertBundle:
        """Key + CSR + signature in one synchronous call (bootstrap, test servers, benchmarks)."""
        key = new_private_key("ECDSA")
        chain = self.sign_sync(make_csr(key, hosts), hosts, duration)
        return CertBundle(chain.chain_pem, key_to_pem(key), chain.ca_pem, tuple(hosts), self._name)
