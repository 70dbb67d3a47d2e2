"""`meshfed sds`: Envoy's Secret Discovery Service (gRPC StreamSecrets, state-of-the-world xDS).

Owns: the named secrets served (`<name>` = tls_certificate, `<name>-cacert` = validation context),
their versions, pushing a new version to every subscribed Envoy on rotation, and the per-Envoy
ACK/NACK record (an ACK echoes our nonce with no error_detail; a NACK carries error_detail and the
last version Envoy accepted), with the wall-clock time of its last change. Versions are
"<n>-<serial>" unless the caller names one (federation/sds.py: "<revision>-<serial>").
`set_secret` runs certs.checks first and refuses a bundle that fails them, so a served certificate
is never replaced by a broken one (`force=True` exists only to test Envoy's own NACK path).
Protobuf messages carrying keys are built only at send time and never logged. Imports grpc.aio,
the xds-protos stubs, certs.checks / certs.issuers / certs.models.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import any_pb2

from certs.checks import CheckResult, check_bundle
from certs.issuers import CertBundle
from certs.models import EnvoySdsStatus

log = logging.getLogger("meshfed.sds")

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
CA_SUFFIX = "-cacert"  # Istio's convention for the validation context of credential <name>


@dataclass
class NodeStatus:
    """What one Envoy did with one secret."""

    node: str
    resource: str
    acked_version: str | None = None
    nack_version: str | None = None  # the version it refused
    nack_message: str | None = None
    connected: bool = True
    updated: float = field(default_factory=time.monotonic)
    since: datetime | None = None  # wall clock of the last ACK/NACK/subscription

    def wire(self) -> EnvoySdsStatus:
        return EnvoySdsStatus(
            node=self.node,
            resource=self.resource,
            acked_version=self.acked_version,
            nack_version=self.nack_version,
            nack_message=self.nack_message,
            connected=self.connected,
            time=self.since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if self.since else None,
        )


@dataclass
class _Served:
    version: str
    bundle: CertBundle


@dataclass(eq=False)
class _Stream:
    node: str = ""
    subscribed: frozenset[str] = frozenset()
    sent_versions: dict[str, str] = field(default_factory=dict)  # what the last response carried
    nonces: dict[str, dict[str, str]] = field(default_factory=dict)  # nonce -> {resource: version}
    pending: list[discovery_pb2.DiscoveryRequest] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    answered: bool = False  # Envoy answered (ACK/NACK) one of our responses on this stream


def _base(name: str) -> str:
    return name[: -len(CA_SUFFIX)] if name.endswith(CA_SUFFIX) else name


class SdsServer(sds_pb2_grpc.SecretDiscoveryServiceServicer):  # type: ignore[misc]
    """An SDS server. Use from one event loop: `await start()`, `set_secret(...)`, `status()`."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_status: Callable[[], None] | None = None,
    ) -> None:
        self._clock = clock
        self._on_status = on_status
        self._secrets: dict[str, _Served] = {}
        self._counter = 0
        self._nonce = 0
        self._streams: set[_Stream] = set()
        self._status: dict[tuple[str, str], NodeStatus] = {}
        self._status_changed = asyncio.Condition()
        self._server: grpc.aio.Server | None = None
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, address: str = "127.0.0.1:0") -> int:
        self._server = grpc.aio.server()
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port(address)
        await self._server.start()
        log.info("sds listening on %s (port %d)", address, self.port)
        return self.port

    async def stop(self, grace: float = 0.5) -> None:
        for s in self._streams:
            s.closed = True
            s.wake.set()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    # --- secrets ---------------------------------------------------------------------------

    def set_secret(
        self, name: str, bundle: CertBundle, *, force: bool = False, version: str | None = None
    ) -> CheckResult:
        """Serve `bundle` as secret `name` (and `name`-cacert) and push it to subscribed Envoys,
        unless it fails certs.checks: then nothing changes and the problems are returned.
        `force=True` pushes even a failing bundle (for testing Envoy's NACK path only).
        `version` (e.g. "<revision>-<serial>", stable across restarts) defaults to "<n>-<serial>";
        it must end with "-" + the first 16 hex digits of the serial (certs.manager reads it so)."""
        result = check_bundle(bundle, self._clock())
        if not result.ok and not force:
            log.warning("sds: refused new certificate for %s: %s", name, result.message)
            return result
        self._counter += 1
        current = self._secrets.get(name)
        if version is None or (current is not None and current.version == version and current.bundle != bundle):
            version = f"{self._counter}-{bundle.serial_hex[:16]}"
        self._secrets[name] = _Served(version, bundle)
        log.info(
            "sds: serving %s version %s%s", name, version, " (forced past checks)" if not result.ok else ""
        )
        for s in self._streams:
            if any(_base(r) == name for r in s.subscribed):
                s.wake.set()
        return result

    def remove_secret(self, name: str) -> None:
        self._secrets.pop(name, None)

    def version(self, name: str) -> str | None:
        served = self._secrets.get(_base(name))
        return served.version if served else None

    def serial(self, name: str) -> str | None:
        served = self._secrets.get(_base(name))
        return served.bundle.serial_hex if served else None

    # --- status ----------------------------------------------------------------------------

    def status(self, resource: str | None = None) -> list[EnvoySdsStatus]:
        """Per (Envoy node, secret): ACKed version, or the NACKed version with Envoy's message."""
        return [
            st.wire()
            for _, st in sorted(self._status.items())
            if resource is None or _base(st.resource) == resource
        ]

    def node_status(self) -> list[NodeStatus]:
        return [NodeStatus(**vars(st)) for _, st in sorted(self._status.items())]

    async def wait_for(self, predicate: Callable[[list[NodeStatus]], bool]) -> list[NodeStatus]:
        """Wait until `predicate(node_status())` holds (bound it with `asyncio.timeout`)."""
        async with self._status_changed:
            await self._status_changed.wait_for(lambda: predicate(self.node_status()))
        return self.node_status()

    async def wait_for_ack(self, name: str, version: str | None = None) -> list[NodeStatus]:
        """Wait until every connected Envoy subscribed to `name` ACKed `version` (default: current)
        or NACKed it; at least one Envoy must be subscribed."""
        want = version or self.version(name)

        def done(sts: list[NodeStatus]) -> bool:
            mine = [s for s in sts if s.resource == name and s.connected]
            return bool(mine) and all(s.acked_version == want or s.nack_version == want for s in mine)

        return await self.wait_for(done)

    async def _notify(self) -> None:
        async with self._status_changed:
            self._status_changed.notify_all()
        if self._on_status is not None:
            self._on_status()

    # --- xDS -------------------------------------------------------------------------------

    def _secret_any(self, resource: str) -> any_pb2.Any | None:
        served = self._secrets.get(_base(resource))
        if served is None:
            return None
        bundle = served.bundle
        if resource.endswith(CA_SUFFIX):
            msg = secret_pb2.Secret(
                name=resource,
                validation_context=common_pb2.CertificateValidationContext(
                    trusted_ca=base_pb2.DataSource(inline_bytes=bundle.ca_pem or bundle.cert_pem)
                ),
            )
        else:
            msg = secret_pb2.Secret(
                name=resource,
                tls_certificate=common_pb2.TlsCertificate(
                    certificate_chain=base_pb2.DataSource(inline_bytes=bundle.cert_pem),
                    private_key=base_pb2.DataSource(inline_bytes=bundle.key_pem),
                ),
            )
        out = any_pb2.Any()
        out.Pack(msg)
        return out

    def _record(self, stream: _Stream, req: discovery_pb2.DiscoveryRequest) -> bool:
        """Apply one request to the stream state; True when the ACK/NACK record changed."""
        if req.node.id:
            stream.node = req.node.id if not req.node.cluster else f"{req.node.cluster}/{req.node.id}"
        changed = False
        sent = stream.nonces.pop(req.response_nonce, None) if req.response_nonce else None
        if sent is not None:
            for resource, version in sent.items():
                st = self._status.setdefault((stream.node, resource), NodeStatus(stream.node, resource))
                if req.HasField("error_detail"):
                    st.nack_version, st.nack_message = version, req.error_detail.message
                    if (st.acked_version is None and not stream.answered and req.version_info
                            and "=" not in req.version_info and len({_base(r) for r in stream.subscribed}) == 1):
                        # The first answer on a new stream (e.g. after our restart) to a stream for one
                        # secret: the version Envoy names is the one it still serves for that secret.
                        st.acked_version = req.version_info
                    log.warning(
                        "sds: %s NACKed %s version %s: %s",
                        stream.node,
                        resource,
                        version,
                        req.error_detail.message,
                    )
                else:
                    st.acked_version, st.nack_version, st.nack_message = version, None, None
                st.connected, st.updated, st.since = True, time.monotonic(), self._clock()
                changed = True
            # Older nonces are superseded by this answer.
            stream.nonces.clear()
            stream.answered = True
        names = frozenset(req.resource_names)
        if names != stream.subscribed:
            stream.subscribed = names
            for resource in names:
                key = (stream.node, resource)
                if key not in self._status or not self._status[key].connected:
                    st = self._status.setdefault(key, NodeStatus(stream.node, resource))
                    st.connected, st.since = True, self._clock()
                    changed = True
        return changed

    def _response(self, stream: _Stream) -> discovery_pb2.DiscoveryResponse | None:
        want = {r: v for r in sorted(stream.subscribed) if (v := self.version(r)) is not None}
        if not want or want == stream.sent_versions:
            return None
        resources = [a for r in want if (a := self._secret_any(r)) is not None]
        self._nonce += 1
        nonce = str(self._nonce)
        stream.nonces[nonce] = want
        stream.sent_versions = want
        version = (
            next(iter(want.values()))
            if len(set(want.values())) == 1
            else ",".join(f"{r}={v}" for r, v in want.items())
        )
        return discovery_pb2.DiscoveryResponse(
            version_info=version, resources=resources, type_url=SECRET_TYPE_URL, nonce=nonce
        )

    async def StreamSecrets(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: object
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream = _Stream()
        self._streams.add(stream)

        async def read() -> None:
            try:
                async for req in request_iterator:
                    stream.pending.append(req)
                    stream.wake.set()
            except (grpc.aio.AioRpcError, asyncio.CancelledError):
                pass
            finally:
                stream.closed = True
                stream.wake.set()

        reader = asyncio.create_task(read())
        try:
            while True:
                await stream.wake.wait()
                stream.wake.clear()
                changed = False
                while stream.pending:
                    changed |= self._record(stream, stream.pending.pop(0))
                if changed:
                    await self._notify()
                if stream.closed:
                    break
                resp = self._response(stream)
                if resp is not None:
                    yield resp
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self._streams.discard(stream)
            for resource in stream.subscribed:
                st = self._status.get((stream.node, resource))
                if st is not None:
                    st.connected = False
            await self._notify()

    async def DeltaSecrets(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "meshfed sds serves state-of-the-world StreamSecrets"
        )
        yield discovery_pb2.DeltaDiscoveryResponse()  # pragma: no cover


# --- standalone `meshfed sds` ----------------------------------------------------------------


def load_directory(root: Path) -> dict[str, CertBundle]:
    """Secrets from `<root>/<name>/{tls.crt,tls.key,ca.crt}` (a mounted kubernetes.io/tls Secret)."""
    out: dict[str, CertBundle] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        crt, key, ca = d / "tls.crt", d / "tls.key", d / "ca.crt"
        if crt.is_file() and key.is_file():
            out[d.name] = CertBundle(
                cert_pem=crt.read_bytes(),
                key_pem=key.read_bytes(),
                ca_pem=ca.read_bytes() if ca.is_file() else b"",
                issuer="file",
            )
    return out


async def serve_directory(root: Path, address: str, interval: float = 5.0) -> None:
    """Serve every certificate found under `root`, re-reading it every `interval` seconds.
    Hosts are not enforced in this mode (the files name none); the other checks are."""
    server = SdsServer()
    await server.start(address)
    served: dict[str, bytes] = {}
    try:
        while True:
            bundles = await asyncio.to_thread(load_directory, root)
            for name, bundle in bundles.items():
                fingerprint = bundle.cert_pem + bundle.ca_pem
                if served.get(name) != fingerprint:
                    result = server.set_secret(name, bundle)
                    if result.ok:
                        served[name] = fingerprint
            await asyncio.sleep(interval)
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    """`meshfed sds --listen 127.0.0.1:15012 --dir /var/run/meshfed/certs`."""
    parser = argparse.ArgumentParser(
        prog="meshfed sds", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--listen", default="127.0.0.1:15012")
    parser.add_argument(
        "--dir", type=Path, required=True, help="directory of <name>/tls.crt,tls.key[,ca.crt]"
    )
    parser.add_argument("--interval", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_directory(args.dir, args.listen, args.interval))
    return 0
