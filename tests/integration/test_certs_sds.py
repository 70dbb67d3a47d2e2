"""The SDS protocol over real gRPC with a scripted client (on the Unix socket, as a mapped uid):
subscriptions to several secrets (incl. the `-cacert` validation context), a secret that appears
later, ACK/NACK bookkeeping, disconnect. Who may fetch what: test_certs_sds_auth.py."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2

from certs.ca import InternalCA, generate_ca
from certs.sds import SECRET_TYPE_URL, SdsServer, UnixListener

pytestmark = pytest.mark.integration


def req(
    names: list[str], version: str = "", nonce: str = "", error: str | None = None
) -> discovery_pb2.DiscoveryRequest:
    r = discovery_pb2.DiscoveryRequest(
        node=base_pb2.Node(id="fake", cluster="c1"),
        resource_names=names,
        type_url=SECRET_TYPE_URL,
        version_info=version,
        response_nonce=nonce,
    )
    if error is not None:
        r.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return r


async def test_sds_protocol(tmp_path: Path) -> None:
    ca = InternalCA(*generate_ca())
    sds = SdsServer()
    sock = tmp_path / "sds.sock"
    await sds.start(UnixListener(sock, peer_uids={os.getuid(): "me"}))
    a = ca.issue_sync(["a.example.com"], timedelta(days=1))
    sds.set_secret("a", a)
    sds.grant("a", ["me"])
    sds.grant("b", ["me"])
    outbox: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (item := await outbox.get()) is not None:
            yield item

    async with grpc.aio.insecure_channel(f"unix:{sock}") as channel:
        call = sds_pb2_grpc.SecretDiscoveryServiceStub(channel).StreamSecrets(requests())
        await outbox.put(req(["a", "a-cacert", "b"]))
        async with asyncio.timeout(5):
            r1 = await call.read()
        secrets = {}
        for any_ in r1.resources:
            s = secret_pb2.Secret()
            any_.Unpack(s)
            secrets[s.name] = s
        assert set(secrets) == {"a", "a-cacert"}  # b is unknown so far
        assert secrets["a"].tls_certificate.certificate_chain.inline_bytes == a.cert_pem
        assert secrets["a-cacert"].validation_context.trusted_ca.inline_bytes == a.ca_pem
        assert r1.version_info == sds.version("a")
        await outbox.put(req(["a", "a-cacert", "b"], r1.version_info, r1.nonce))  # ACK
        async with asyncio.timeout(5):
            await sds.wait_for_ack("a")

        # b appears: pushed without asking
        b = ca.issue_sync(["b.example.com"], timedelta(days=1))
        sds.set_secret("b", b)
        async with asyncio.timeout(5):
            r2 = await call.read()
        assert len(r2.resources) == 3 and "b=" in r2.version_info
        await outbox.put(req(["a", "a-cacert", "b"], r1.version_info, r2.nonce, error="bad key"))  # NACK
        async with asyncio.timeout(5):
            await sds.wait_for_ack("b")
        by_res = {s.resource: s for s in sds.status()}
        assert by_res["b"].nack_message == "bad key" and by_res["b"].acked_version is None
        assert by_res["a"].acked_version == sds.version("a") and by_res["a"].nack_message == "bad key"
        assert all(s.node == "c1/fake" and s.connected for s in sds.status())

        # NACKed content is not resent in a loop; the next change is
        sds.set_secret("b", ca.issue_sync(["b.example.com"], timedelta(days=1)))
        async with asyncio.timeout(5):
            r3 = await call.read()
        assert r3.nonce != r2.nonce
        await outbox.put(None)
        async with asyncio.timeout(5):
            await sds.wait_for(lambda sts: not any(s.connected for s in sts))
    await sds.stop()
