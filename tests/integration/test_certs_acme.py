"""ACME issuance against a real Pebble (Debian `pebble`): HTTP-01 with the built-in responder and real
validation (pebble-challtestsrv resolves every name to 127.0.0.1), DNS-01 through the Dns01Hook,
renewal with a short certificateValidityPeriod, and failures that land in status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from certs.acme_issuer import AcmeIssuer, ChallTestSrv, Dns01Solver, Http01Responder, new_account_key_pem
from certs.checks import check_bundle
from certs.issuers import IssuanceError, issue_bundle
from certs.manager import build_issuer, reconcile
from certs.models import Certificate, CertificateIssuer, CertificateStatus, SecretRef
from e2e.certservers import MissingComponent, Pebble

pytestmark = pytest.mark.integration

VALIDITY = 12  # seconds: renewal (at 2/3 of the lifetime) happens during the test


@pytest.fixture(scope="module")
def pebble() -> Iterator[Pebble]:
    try:
        server = Pebble(validity_seconds=VALIDITY).start()
    except MissingComponent as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
async def responder(pebble: Pebble) -> AsyncIterator[Http01Responder]:
    r = await Http01Responder("127.0.0.1", pebble.http01_port).start()
    yield r
    await r.stop()


def _issuer(pebble: Pebble, account_key: bytes) -> AcmeIssuer:
    return AcmeIssuer(
        pebble.directory_url,
        account_key,
        Dns01Solver(ChallTestSrv(pebble.challtestsrv_url)),
        ca_bundle_pem=pebble.ca_bundle_pem.encode(),
        root_pem=pebble.root_pem(),
    )


async def test_http01_issuance(pebble: Pebble, responder: Http01Responder) -> None:
    issuer = AcmeIssuer(
        pebble.directory_url,
        new_account_key_pem(),
        responder,
        ca_bundle_pem=pebble.ca_bundle_pem.encode(),
        root_pem=pebble.root_pem(),
    )
    bundle = await issue_bundle(issuer, ["shop.example.test", "api.example.test"], timedelta(days=1))
    assert check_bundle(bundle, datetime.now(UTC)).ok  # chain up to Pebble's root, hosts, key
    assert (bundle.not_after - bundle.not_before) <= timedelta(seconds=VALIDITY + 1)
    assert issuer.account_uri and "my-account" in issuer.account_uri


async def test_dns01_wildcard_issuance(pebble: Pebble) -> None:
    issuer = _issuer(pebble, new_account_key_pem())
    bundle = await issue_bundle(issuer, ["*.wild.example.test", "wild.example.test"], timedelta(days=1))
    assert check_bundle(bundle, datetime.now(UTC), ["x.wild.example.test", "wild.example.test"]).ok


async def test_renewal_with_short_validity_through_the_crd_path(pebble: Pebble) -> None:
    secrets = {"acme-account": {"tls.key": new_account_key_pem()}}

    async def read(ref: SecretRef) -> dict[str, bytes] | None:
        return secrets.get(ref.name)

    ci = CertificateIssuer.model_validate(
        {
            "metadata": {"name": "pebble", "generation": 1},
            "spec": {
                "acme": {
                    "server": pebble.directory_url,
                    "accountKeySecretRef": {"name": "acme-account"},
                    "caBundle": pebble.ca_bundle_pem,
                    "solver": {"dns01": {"providerRef": "test-dns"}},
                }
            },
        }
    )
    issuer = await build_issuer(ci, read, dns_hooks={"test-dns": ChallTestSrv(pebble.challtestsrv_url)})
    spec = {"hosts": ["renew.example.test"], "issuerRef": {"name": "pebble"}}
    status: CertificateStatus | None = None
    serials: list[str] = []
    reasons: list[str] = []
    deadline = asyncio.get_running_loop().time() + VALIDITY * 2.5
    while len(serials) < 3 and asyncio.get_running_loop().time() < deadline:
        cert = Certificate.model_validate(
            {
                "metadata": {"name": "r", "namespace": "ns"},
                "spec": spec,
                "status": status.wire() if status else None,
            }
        )
        now = datetime.now(UTC)
        out = await reconcile(cert, issuer, now=now)
        status = out.status
        assert status.last_failure is None, status.last_failure
        if out.bundle is not None:
            serials.append(out.bundle.serial_hex)
            reasons.append(out.decision.reason)
            # the old certificate is still valid when its successor arrives
            assert check_bundle(out.bundle, datetime.now(UTC)).ok
        await asyncio.sleep(max(0.0, min((out.requeue_at - datetime.now(UTC)).total_seconds(), 1.0)))
    assert reasons == ["Initial", "Renewal", "Renewal"]
    assert len(set(serials)) == 3 and status is not None and status.revision == 3


async def test_failed_challenge_and_unreachable_server(pebble: Pebble) -> None:
    # HTTP-01 with nobody answering on the port Pebble validates: the order fails with a clear reason.
    nobody = Http01Responder("127.0.0.1", pebble.http01_port)  # never started
    issuer = AcmeIssuer(
        pebble.directory_url, new_account_key_pem(), nobody, ca_bundle_pem=pebble.ca_bundle_pem.encode()
    )
    with pytest.raises(IssuanceError) as err:
        await issue_bundle(issuer, ["nobody.example.test"], timedelta(days=1))
    assert err.value.reason == "AcmeChallengeFailed" and "nobody.example.test" in err.value.message

    down = AcmeIssuer("https://127.0.0.1:1/dir", new_account_key_pem(), nobody, ca_bundle_pem=b"")
    with pytest.raises(IssuanceError) as err2:
        await issue_bundle(down, ["x.example.test"], timedelta(days=1))
    assert err2.value.reason == "AcmeUnreachable" and err2.value.retryable

    untrusted = AcmeIssuer(pebble.directory_url, new_account_key_pem(), nobody)  # no caBundle
    with pytest.raises(IssuanceError) as err3:
        await issue_bundle(untrusted, ["x.example.test"], timedelta(days=1))
    assert err3.value.reason == "AcmeUnreachable" and "caBundle" in err3.value.message
