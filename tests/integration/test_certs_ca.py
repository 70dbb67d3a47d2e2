"""Internal CA issuance end to end: Secret data -> issuer -> reconcile -> TLS Secret that a real TLS
stack accepts (Python's ssl handshake against the issued cert, verified with ca.crt)."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certs.ca import generate_ca
from certs.delivery import tls_secret
from certs.manager import build_issuer, reconcile
from certs.models import Certificate, CertificateIssuer, SecretRef

pytestmark = pytest.mark.integration


def _issuer(allowed: list[str] | None = None) -> CertificateIssuer:
    return CertificateIssuer.model_validate(
        {
            "metadata": {"name": "corp", "generation": 1},
            "spec": {"ca": {"secretRef": {"name": "corp-ca"}}, "allowedDomains": allowed or []},
        }
    )


def _cert(hosts: list[str]) -> Certificate:
    return Certificate.model_validate(
        {
            "metadata": {"name": "checkout", "namespace": "payments", "generation": 1},
            "spec": {"hosts": hosts, "issuerRef": {"name": "corp"}, "duration": "2160h"},
        }
    )


async def test_internal_ca_issues_a_certificate_tls_accepts() -> None:
    ca_cert, ca_key = generate_ca("corp issuance center")
    secrets = {"corp-ca": {"tls.crt": ca_cert, "tls.key": ca_key}}

    async def read(ref: SecretRef) -> dict[str, bytes] | None:
        return secrets.get(ref.name)

    issuer = await build_issuer(_issuer(["*.example.com"]), read)
    out = await reconcile(_cert(["shop.example.com", "*.api.example.com"]), issuer, now=datetime.now(UTC))
    assert out.bundle is not None and out.status.revision == 1
    secret = tls_secret(
        out.bundle, name="checkout-tls", namespace="istio-system", revision=out.status.revision
    )

    # Serve the Secret's tls.crt/tls.key over real TLS and verify it with its ca.crt.
    with tempfile.TemporaryDirectory() as d:
        files = {k: Path(d) / k for k in ("tls.crt", "tls.key", "ca.crt")}
        for k, p in files.items():
            p.write_bytes(base64.b64decode(secret["data"][k]))
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(files["tls.crt"], files["tls.key"])
        client_ctx = ssl.create_default_context(cafile=str(files["ca.crt"]))
        with socket.socket() as lsock:
            lsock.bind(("127.0.0.1", 0))
            lsock.listen()
            port = lsock.getsockname()[1]

            def serve() -> None:
                conn, _ = lsock.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)

            task = asyncio.get_running_loop().run_in_executor(None, serve)

            def connect(host: str) -> int:
                with (
                    socket.create_connection(("127.0.0.1", port)) as raw,
                    client_ctx.wrap_socket(raw, server_hostname=host) as tls,
                ):
                    der = tls.getpeercert(binary_form=True)
                    tls.send(b"x")
                    from cryptography import x509

                    return int(x509.load_der_x509_certificate(der or b"").serial_number)

            serial = await asyncio.to_thread(connect, "x.api.example.com")
            await task
    assert f"{serial:x}" == out.status.serial


async def test_missing_ca_secret_and_disallowed_host_are_conditions() -> None:
    async def nothing(ref: SecretRef) -> dict[str, bytes] | None:
        return None

    from certs.issuers import IssuanceError

    with pytest.raises(IssuanceError) as err:
        await build_issuer(_issuer(), nothing)
    out = await reconcile(_cert(["shop.example.com"]), err.value, now=datetime.now(UTC))
    assert out.status.conditions[0].reason == "CASecretMissing"

    ca_cert, ca_key = generate_ca()

    async def read(ref: SecretRef) -> dict[str, bytes] | None:
        return {"tls.crt": ca_cert, "tls.key": ca_key}

    issuer = await build_issuer(_issuer(["*.corp.test"]), read)
    out = await reconcile(_cert(["shop.example.com"]), issuer, now=datetime.now(UTC))
    issued = out.status.conditions[0]
    assert (issued.type, issued.status, issued.reason) == ("Issued", "False", "HostNotAllowed")
    assert out.bundle is None


async def test_internal_ca_issuance_is_fast() -> None:
    ca_cert, ca_key = generate_ca()

    async def read(ref: SecretRef) -> dict[str, bytes] | None:
        return {"tls.crt": ca_cert, "tls.key": ca_key}

    issuer = await build_issuer(_issuer(), read)
    from certs.issuers import issue_bundle

    times = []
    for _ in range(200):
        t = time.perf_counter()
        await issue_bundle(issuer, ["shop.example.com"], timedelta(days=90))
        times.append(time.perf_counter() - t)
    times.sort()
    assert times[int(len(times) * 0.95)] < 0.050
