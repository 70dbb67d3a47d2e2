"""`meshfed sds`: Envoy's Secret Discovery Service (gRPC StreamSecrets, state-of-the-world xDS).

Owns the SDS server core: the named secrets served (`<name>` = tls_certificate, `<name>-cacert` =
validation context), their versions, pushing a new version to every subscribed Envoy on rotation,
the per-Envoy ACK/NACK record (an ACK echoes our nonce with no error_detail; a NACK carries
error_detail and the last version Envoy accepted) with the wall-clock time of its last change, and
**who may fetch what**:

- **Listeners.** A Unix domain socket (`UnixListener`: file mode and owner set before anyone can
  connect; the client is the peer uid from SO_PEERCRED, mapped to an identity by configuration) or
  TCP with mutual TLS (`TlsListener`: server certificate + the client CA the operator names; the
  client is the verified certificate's SPIFFE URI or DNS SANs; the server certificate is reloaded
  when its files change: `ServingTls`). There is no plaintext TCP listener:
  `parse_listen` refuses one with the reason. A client without a (mapped uid | verified certificate)
  gets gRPC UNAUTHENTICATED and nothing else; a certificate from another CA fails the TLS handshake.
- **Grants.** `grant(name, identities)`: the identities that may fetch secret `name` (and its
  `-cacert`); nothing is granted by default. A stream's resources not granted to its client are
  never sent: they are named in the response's `resource_errors` (PERMISSION_DENIED) while the
  granted ones are served; a stream asking only for refused resources ends with PERMISSION_DENIED.
  Each refusal is counted (`on_refusal`), logged once per (identity, resource) and kept in
  `refusals()` (for status) until `refusal_ttl` after the last one.

`set_secret` runs certs.checks first and refuses a bundle that fails them, so a served certificate
is never replaced by a broken one (`force=True` exists only to test Envoy's own NACK path).
Versions are "<n>-<serial>" unless the caller names one (federation/sds.py: "<revision>-<serial>").
Protobuf messages carrying keys are built only at send time and never logged. The gRPC server is
grpclib (pure asyncio), because it gives the handler the connection (SO_PEERCRED, the verified
peer certificate), which grpcio does not. Imports grpclib, the xds-protos messages, certs.checks /
certs.issuers / certs.models; no Kubernetes client (federation/sds.py is the hub wiring).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import stat
import struct
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.rpc import status_pb2
from grpclib import GRPCError, Status
from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream

from certs.checks import ISSUER_CLOCK_SKEW, CheckResult, check_bundle
from certs.issuers import CertBundle
from certs.models import EnvoySdsStatus, SdsRefusal

log = logging.getLogger("meshfed.sds")

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
CA_SUFFIX = "-cacert"  # Istio's convention for the validation context of credential <name>
SERVICE = "/envoy.service.secret.v3.SecretDiscoveryService"
UNAUTHENTICATED = "Unauthenticated"
FIRST_REQUEST_WAIT = 2.0  # seconds an unauthenticated client may take to send its request before the refusal
PERMISSION_DENIED = "PermissionDenied"
_UCRED = struct.Struct("3i")  # struct ucred {pid, uid, gid}
MAX_REFUSALS = 1000


# --- listeners -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnixListener:
    """A Unix domain socket; a client is the peer uid (SO_PEERCRED) mapped through `peer_uids`."""

    path: Path
    mode: int = 0o660
    owner: int | None = None  # uid of the socket file (default: this process)
    group: int | None = None  # gid of the socket file
    peer_uids: Mapping[int, str] = field(default_factory=dict)  # uid -> identity

    def __str__(self) -> str:
        return f"unix:{self.path} (mode {self.mode:o})"


@dataclass(frozen=True)
class TlsListener:
    """TCP with mutual TLS: our certificate chain + key, and the CA client certificates must chain to."""

    host: str
    port: int
    cert_file: Path
    key_file: Path
    client_ca_file: Path

    def __str__(self) -> str:
        return f"{self.host}:{self.port} (mutual TLS, client CA {self.client_ca_file})"


Listener = UnixListener | TlsListener


class ListenerRefused(ValueError):
    """A listener that would hand keys to unauthenticated clients (or one that cannot be built)."""


def parse_peer_uid(text: str) -> tuple[int, str]:
    """`UID=IDENTITY` (e.g. `1337=spiffe://meshfed/cluster/east-1`)."""
    uid, sep, identity = text.partition("=")
    if not sep or not uid.strip().isdigit() or not identity.strip():
        raise ListenerRefused(f"--peer-uid {text!r}: expected UID=IDENTITY, e.g. 1337=spiffe://meshfed/cluster/east-1")
    return int(uid), identity.strip()


def parse_listen(
    address: str,
    *,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    client_ca: Path | None = None,
    socket_mode: int = 0o660,
    socket_owner: int | None = None,
    socket_group: int | None = None,
    peer_uids: Mapping[int, str] | None = None,
) -> Listener:
    """`unix:PATH` or `HOST:PORT` (mutual TLS: all three of tls_cert, tls_key, client_ca).
    A TCP address without them is refused: any client could fetch every private key."""
    if address.startswith("unix:"):
        path = address[len("unix:"):].removeprefix("//")
        if not path:
            raise ListenerRefused(f"--listen {address}: no socket path")
        return UnixListener(Path(path), socket_mode, socket_owner, socket_group, dict(peer_uids or {}))
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ListenerRefused(f"--listen {address}: expected unix:PATH or HOST:PORT")
    files = {"--tls-cert": tls_cert, "--tls-key": tls_key, "--client-ca": client_ca}
    missing = [flag for flag, value in files.items() if value is None]
    if missing:
        raise ListenerRefused(
            f"refusing plaintext TCP listener {address}: any client that reaches it could fetch every private "
            f"key; listen on unix:PATH, or give {', '.join(missing)} for mutual TLS")
    assert tls_cert is not None and tls_key is not None and client_ca is not None
    return TlsListener(host.strip("[]"), int(port), tls_cert, tls_key, client_ca)


def server_tls_context(listener: TlsListener) -> ssl.SSLContext:
    """TLS >= 1.2, ALPN h2, a client certificate requested and verified against the client CA
    (CERT_OPTIONAL: a client without one completes the handshake and is answered UNAUTHENTICATED;
    one with a certificate that does not verify fails the handshake)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(listener.cert_file, listener.key_file)
        ctx.load_verify_locations(cafile=listener.client_ca_file)
    except (OSError, ssl.SSLError) as err:
        raise ListenerRefused(f"TLS listener: {err.__class__.__name__}: {err}") from None
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["h2"])
    return ctx


class ServingTls:
    """A TLS listener's context, kept current with its files: cert-manager, the kubelet (Secret volumes)
    and operators rotate the server certificate in place, and a long-running `meshfed sds` must not
    serve the old one until it expires. `reload_if_changed()` compares the files' (inode, size, mtime)
    with the last load; a new pair is first loaded into a throwaway context, and only a pair that loads
    (certificate and key matching) is put into the live one, whose new handshakes then use it. A broken
    pair is logged and the previous one kept. A new client CA is added (client certificates of the old
    one stay accepted until a restart: the overlap a CA rotation needs)."""

    def __init__(self, listener: TlsListener) -> None:
        self.listener = listener
        self.context = server_tls_context(listener)
        self.stamp = self._stamp()
        self.reloads = 0
        self.last_error = ""

    def _stamp(self) -> tuple[tuple[int, int, int] | None, ...]:
        out: list[tuple[int, int, int] | None] = []
        for path in (self.listener.cert_file, self.listener.key_file, self.listener.client_ca_file):
            try:
                st = path.stat()
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return tuple(out)

    def reload_if_changed(self) -> bool:
        """True when a changed certificate, key or client CA was loaded."""
        stamp = self._stamp()
        if stamp == self.stamp:
            return False
        self.stamp = stamp
        try:
            server_tls_context(self.listener)  # the whole new set must load before the live context changes
            self.context.load_cert_chain(self.listener.cert_file, self.listener.key_file)
            self.context.load_verify_locations(cafile=self.listener.client_ca_file)
        except ListenerRefused as err:
            self.last_error = str(err)
            log.warning("sds %s: the changed certificate files do not load, still serving the previous ones: %s",
                        self.listener, err)
            return False
        self.reloads += 1
        self.last_error = ""
        log.info("sds %s: server certificate reloaded from %s", self.listener, self.listener.cert_file)
        return True


@dataclass(frozen=True)
class Client:
    """An authenticated client: its identities (first: the name used in logs and status)."""

    identities: tuple[str, ...]
    via: str  # "uid 1337" or "tls"

    @property
    def name(self) -> str:
        return self.identities[0]


def certificate_identities(cert: Mapping[str, Any] | None) -> tuple[str, ...]:
    """SPIFFE URIs, then DNS SANs, of a verified peer certificate (ssl getpeercert() form)."""
    sans = (cert or {}).get("subjectAltName") or ()
    uris = [str(v) for k, v in sans if k == "URI" and str(v).startswith("spiffe://")]
    return tuple(uris + [str(v) for k, v in sans if k == "DNS"])


# --- records -------------------------------------------------------------------------------------


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


@dataclass
class Refusal:
    """A client refused a resource (or refused altogether: resource "", reason Unauthenticated)."""

    identity: str
    resource: str
    reason: str
    message: str
    node: str = ""
    since: datetime | None = None  # wall clock of the first refusal of this episode
    last: float = field(default_factory=time.monotonic)
    count: int = 0
    active: int = 0  # open streams that still subscribe it (served other resources meanwhile)

    def wire(self) -> SdsRefusal:
        return SdsRefusal(
            identity=self.identity,
            node=self.node or None,
            resource=self.resource,
            reason=self.reason,
            message=self.message,
            time=self.since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if self.since else None,
        )


@dataclass(eq=False)
class _Stream:
    client: Client
    node: str = ""
    subscribed: frozenset[str] = frozenset()
    denied: frozenset[str] = frozenset()  # subscribed resources not granted to the client
    sent_versions: dict[str, str] = field(default_factory=dict)  # what the last response carried
    nonces: dict[str, dict[str, str]] = field(default_factory=dict)  # nonce -> {resource: version}
    pending: list[discovery_pb2.DiscoveryRequest] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    answered: bool = False  # Envoy answered (ACK/NACK) one of our responses on this stream


def _base(name: str) -> str:
    return name[: -len(CA_SUFFIX)] if name.endswith(CA_SUFFIX) else name


class SdsServer:
    """An SDS server. Use from one event loop: `await start(listener)` (per listener), `set_secret(...)`,
    `grant(...)`, `status()`, `refusals()`."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_status: Callable[[], None] | None = None,
        on_refusal: Callable[[Refusal], None] | None = None,
        refusal_ttl: float = 300.0,
        tls_reload_interval: float = 10.0,
    ) -> None:
        self._clock = clock
        self._on_status = on_status
        self._on_refusal = on_refusal
        self.refusal_ttl = refusal_ttl
        self._secrets: dict[str, _Served] = {}
        self._grants: dict[str, frozenset[str]] = {}
        self._counter = 0
        self._nonce = 0
        self._streams: set[_Stream] = set()
        self._status: dict[tuple[str, str], NodeStatus] = {}
        self._refusals: dict[tuple[str, str], Refusal] = {}
        self._logged: set[tuple[str, str, str]] = set()
        self._status_changed = asyncio.Condition()
        self._servers: list[tuple[Listener, Server]] = []
        self.port = 0  # the TCP port of the last TLS listener started
        self.tls_reload_interval = tls_reload_interval
        self.serving_tls: list[ServingTls] = []  # one per TLS listener, reloaded when its files change
        self._reloader: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, listener: Listener) -> int:
        """Listen on `listener` (call again for more listeners: a Unix socket and mutual TLS side by
        side); returns the TCP port (0 for a Unix socket)."""
        server = Server([_Endpoint(self, listener)])
        port = 0
        if isinstance(listener, UnixListener):
            await server.start(sock=_unix_socket(listener))
        else:
            serving = ServingTls(listener)
            ctx = serving.context
            family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((listener.host, listener.port))
            except OSError as err:
                sock.close()
                raise ListenerRefused(f"--listen {listener.host}:{listener.port}: {err.strerror}") from None
            port = self.port = int(sock.getsockname()[1])
            await server.start(sock=sock, ssl=ctx)
            self.serving_tls.append(serving)
            if self._reloader is None:
                self._reloader = asyncio.create_task(self._reload_tls_loop(), name="sds-tls-reload")
        self._servers.append((listener, server))
        log.info("sds listening on %s", listener if port == 0 else f"{listener} port {port}")
        return port

    def reload_tls(self) -> int:
        """Reload every TLS listener whose files changed; how many were reloaded."""
        return sum(serving.reload_if_changed() for serving in self.serving_tls)

    async def _reload_tls_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tls_reload_interval)
            self.reload_tls()

    async def stop(self, grace: float = 0.5) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader
            self._reloader = None
        self.serving_tls = []
        for s in self._streams:
            s.closed = True
            s.wake.set()
        servers, self._servers = self._servers, []
        for listener, server in servers:
            server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace + 2):
                    await server.wait_closed()
            if isinstance(listener, UnixListener):
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(listener.path.lstat().st_mode):
                        listener.path.unlink()

    # --- secrets and grants ----------------------------------------------------------------

    def set_secret(
        self, name: str, bundle: CertBundle, *, force: bool = False, version: str | None = None
    ) -> CheckResult:
        """Serve `bundle` as secret `name` (and `name`-cacert) and push it to subscribed Envoys,
        unless it fails certs.checks: then nothing changes and the problems are returned.
        `force=True` pushes even a failing bundle (for testing Envoy's NACK path only).
        `version` (e.g. "<revision>-<serial>", stable across restarts) defaults to "<n>-<serial>";
        it must end with "-" + the first 16 hex digits of the serial (certs.manager reads it so)."""
        result = check_bundle(bundle, self._clock(), not_before_slack=ISSUER_CLOCK_SKEW)
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
        self._wake(name)
        return result

    def remove_secret(self, name: str) -> None:
        self._secrets.pop(name, None)

    def grant(self, name: str, identities: Iterable[str]) -> None:
        """The identities that may fetch secret `name` (and `name`-cacert); replaces earlier grants."""
        want = frozenset(identities)
        if self._grants.get(name, frozenset()) == want:
            return
        if want:
            self._grants[name] = want
        else:
            self._grants.pop(name, None)
        log.info("sds: %s granted to %s", name, ", ".join(sorted(want)) or "nobody")
        self._wake(name)

    def grants(self, name: str) -> frozenset[str]:
        return self._grants.get(_base(name), frozenset())

    def allowed(self, client: Client, resource: str) -> bool:
        return not self.grants(resource).isdisjoint(client.identities)

    def _wake(self, name: str) -> None:
        for s in self._streams:
            if any(_base(r) == name for r in s.subscribed):
                s.wake.set()

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

    def refusals(self, resource: str | None = None) -> list[Refusal]:
        """Refusals of the last `refusal_ttl` seconds (or still subscribed), for secret `resource`
        (its base name; None: all, including UNAUTHENTICATED ones, whose resource is "")."""
        self._expire()
        return [Refusal(**vars(r)) for _, r in sorted(self._refusals.items())
                if resource is None or (r.resource and _base(r.resource) == resource)]

    def _expire(self) -> None:
        """Forget refusals `refusal_ttl` after their last try (and past MAX_REFUSALS, the oldest): a
        client trying again later is logged again; random names from a client cannot grow memory."""
        cutoff = time.monotonic() - self.refusal_ttl
        idle = sorted((r.last, k) for k, r in self._refusals.items() if not r.active)
        excess = max(0, len(self._refusals) - MAX_REFUSALS)
        for i, (last, key) in enumerate(idle):
            if last >= cutoff and i >= excess:
                break
            ref = self._refusals.pop(key)
            self._logged.discard((ref.identity, ref.resource, ref.reason))

    async def wait_for(self, predicate: Callable[[list[NodeStatus]], bool]) -> list[NodeStatus]:
        """Wait until `predicate(node_status())` holds (bound it with `asyncio.timeout`)."""
        async with self._status_changed:
            await self._status_changed.wait_for(lambda: predicate(self.node_status()))
        return self.node_status()

    async def wait_for_refusal(self, predicate: Callable[[list[Refusal]], bool]) -> list[Refusal]:
        """Wait until `predicate(refusals())` holds (bound it with `asyncio.timeout`)."""
        async with self._status_changed:
            await self._status_changed.wait_for(lambda: predicate(self.refusals()))
        return self.refusals()

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

    def _refuse(self, identity: str, resource: str, reason: str, message: str, node: str = "",
                active: bool = False) -> None:
        """Count, record and (once per identity, resource and reason) log one refusal. Never key bytes."""
        self._expire()
        key = (identity, resource)
        ref = self._refusals.get(key)
        if ref is None or ref.reason != reason:
            ref = self._refusals[key] = Refusal(identity, resource, reason, message, node, self._clock())
        ref.count += 1
        ref.last = time.monotonic()
        ref.node = node or ref.node
        ref.message = message
        if active:
            ref.active += 1
        if (identity, resource, reason) not in self._logged:
            self._logged.add((identity, resource, reason))
            log.warning("sds: refused %s%s: %s: %s", identity, f" {resource}" if resource else "", reason, message)
        if self._on_refusal is not None:
            self._on_refusal(ref)

    # --- authentication --------------------------------------------------------------------

    def _authenticate(self, stream: Stream[Any, Any], listener: Listener) -> Client | str:
        """The client of a stream on `listener`, or why it is not authenticated."""
        if isinstance(listener, UnixListener):
            uid = _peer_uid(stream)
            if isinstance(uid, str):
                return uid
            identity = listener.peer_uids.get(uid)
            if identity is None:
                return f"unix peer uid {uid} is not mapped to an identity (--peer-uid)"
            return Client((identity,), f"uid {uid}")
        if isinstance(listener, TlsListener):
            cert = stream.peer.cert()
            if not cert:
                return "no verified client certificate"
            identities = certificate_identities(cert)
            if not identities:
                return "the client certificate has no SPIFFE URI or DNS SAN"
            return Client(identities, "tls")
        return "no listener"  # pragma: no cover

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
            changed |= self._authorize(stream)
        return changed

    def _authorize(self, stream: _Stream) -> bool:
        """Split the stream's subscription into granted and refused (grants may have changed since):
        refusals are recorded once per stream and resource; status entries only for granted ones."""
        changed = False
        denied = frozenset(r for r in stream.subscribed if not self.allowed(stream.client, r))
        for resource in sorted(denied - stream.denied):
            self._refuse(stream.client.name, resource, PERMISSION_DENIED,
                         f"{stream.client.name} is not granted {_base(resource)}", stream.node, active=True)
            st = self._status.get((stream.node, resource))
            if st is not None and st.connected:
                st.connected = False  # its grant was revoked while connected
            changed = True
        for resource in stream.denied - denied:
            self._release(stream, resource)
        stream.denied = denied
        for resource in stream.subscribed - denied:
            key = (stream.node, resource)
            if key not in self._status or not self._status[key].connected:
                st = self._status.setdefault(key, NodeStatus(stream.node, resource))
                st.connected, st.since = True, self._clock()
                changed = True
        return changed

    def _release(self, stream: _Stream, resource: str) -> None:
        ref = self._refusals.get((stream.client.name, resource))
        if ref is not None and ref.active > 0:
            ref.active -= 1
            ref.last = time.monotonic()

    def _response(self, stream: _Stream) -> discovery_pb2.DiscoveryResponse | None:
        want = {r: v for r in sorted(stream.subscribed - stream.denied) if (v := self.version(r)) is not None}
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
        errors = [
            discovery_pb2.ResourceError(
                resource_name=discovery_pb2.ResourceName(name=r),
                error_detail=status_pb2.Status(code=Status.PERMISSION_DENIED.value,
                                               message=f"{stream.client.name} is not granted {_base(r)}"))
            for r in sorted(stream.denied)
        ]
        return discovery_pb2.DiscoveryResponse(
            version_info=version, resources=resources, type_url=SECRET_TYPE_URL, nonce=nonce,
            resource_errors=errors,
        )

    async def _client(self, stream: Stream[Any, Any], listener: Listener) -> Client:
        found = self._authenticate(stream, listener)
        if isinstance(found, str):
            self._refuse(_anonymous(stream, listener), "", UNAUTHENTICATED, found)
            await self._notify()
            # Take the client's first request (bounded) before refusing: ending the stream while the
            # client is still sending it makes HTTP/2 reset the stream, which a gRPC client reports as
            # INTERNAL instead of our UNAUTHENTICATED (seen 1 in 4 with grpcio). Nothing is answered.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stream.recv_message(), FIRST_REQUEST_WAIT)
            raise GRPCError(Status.UNAUTHENTICATED, f"meshfed sds: {found}")
        return found

    async def _stream_secrets(
        self, grpc_stream: Stream[discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse],
        listener: Listener,
    ) -> None:
        stream = _Stream(await self._client(grpc_stream, listener))
        self._streams.add(stream)

        async def read() -> None:
            try:
                async for req in grpc_stream:
                    stream.pending.append(req)
                    stream.wake.set()
            except (GRPCError, ConnectionError, asyncio.CancelledError):
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
                changed |= self._authorize(stream)  # a grant may have changed meanwhile
                if changed:
                    await self._notify()
                if stream.closed:
                    break
                if stream.subscribed and stream.denied == stream.subscribed:
                    raise GRPCError(Status.PERMISSION_DENIED, f"meshfed sds: {stream.client.name} is not granted "
                                    f"{', '.join(sorted({_base(r) for r in stream.denied}))}")
                resp = self._response(stream)
                if resp is not None:
                    await grpc_stream.send_message(resp)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self._streams.discard(stream)
            for resource in stream.denied:
                self._release(stream, resource)
            for resource in stream.subscribed - stream.denied:
                st = self._status.get((stream.node, resource))
                if st is not None:
                    st.connected = False
            await self._notify()

    async def _delta_secrets(
        self, grpc_stream: Stream[discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse],
        listener: Listener,
    ) -> None:
        await self._client(grpc_stream, listener)
        raise GRPCError(Status.UNIMPLEMENTED, "meshfed sds serves state-of-the-world StreamSecrets")


def _peer_uid(stream: Stream[Any, Any]) -> int | str:
    """The uid of the process at the other end of a Unix socket stream (SO_PEERCRED), or why not."""
    transport = getattr(stream.peer, "_transport", None)  # grpclib keeps the connection's transport there
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return "no peer credentials on this connection"
    try:
        return int(_UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))[1])
    except OSError as err:
        return f"SO_PEERCRED failed: {err.strerror}"


def _anonymous(stream: Stream[Any, Any], listener: Listener) -> str:
    """How a client that has no identity is named in logs and records: its uid, or its address."""
    if isinstance(listener, UnixListener):
        uid = _peer_uid(stream)
        return f"anonymous (uid {uid})" if isinstance(uid, int) else "anonymous"
    addr = stream.peer.addr()
    return f"anonymous ({addr[0]})" if addr else "anonymous"


class _Endpoint:
    """The gRPC service of one listener (grpclib handler): authentication depends on the listener."""

    def __init__(self, sds: SdsServer, listener: Listener) -> None:
        self.sds, self.listener = sds, listener

    async def stream_secrets(
        self, stream: Stream[discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse]
    ) -> None:
        await self.sds._stream_secrets(stream, self.listener)

    async def delta_secrets(
        self, stream: Stream[discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse]
    ) -> None:
        await self.sds._delta_secrets(stream, self.listener)

    def __mapping__(self) -> dict[str, Handler]:
        return {
            f"{SERVICE}/StreamSecrets": Handler(
                self.stream_secrets, Cardinality.STREAM_STREAM,
                discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse),
            f"{SERVICE}/DeltaSecrets": Handler(
                self.delta_secrets, Cardinality.STREAM_STREAM,
                discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse),
        }


def _unix_socket(listener: UnixListener) -> socket.socket:
    """Bind the socket with no permissions for anyone but us, then set mode and owner: nobody can
    connect before the configured mode applies. A stale socket file is replaced; anything else is not."""
    path = listener.path
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ListenerRefused(f"--listen unix:{path}: exists and is not a socket")
        path.unlink()
    with contextlib.suppress(OSError):  # a missing parent (the default /var/run/meshfed): bind says why
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as err:
        sock.close()
        raise ListenerRefused(f"--listen unix:{path}: {err.strerror}") from None
    finally:
        os.umask(old)
    try:
        if listener.owner is not None or listener.group is not None:
            os.chown(path, -1 if listener.owner is None else listener.owner,
                     -1 if listener.group is None else listener.group)
        os.chmod(path, listener.mode)
    except OSError as err:
        sock.close()
        raise ListenerRefused(f"--listen unix:{path}: {err.strerror}") from None
    return sock


# --- directory mode (`meshfed sds --dir`) ----------------------------------------------------------


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


def load_grants(path: Path | None, flags: Collection[str] = ()) -> dict[str, frozenset[str]]:
    """Grants of directory mode: a YAML/JSON file `{secret name: [identity, ...]}` plus
    `NAME=IDENTITY` flags. A malformed file raises ValueError naming it."""
    out: dict[str, set[str]] = {}
    if path is not None:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"--grants {path}: {err}") from None
        if not isinstance(data, dict) or not all(
                isinstance(k, str) and isinstance(v, list) and all(isinstance(i, str) for i in v)
                for k, v in data.items()):
            raise ValueError(f"--grants {path}: expected a mapping of secret name to a list of identities")
        for name, identities in data.items():
            out.setdefault(name, set()).update(identities)
    for flag in flags:
        name, sep, identity = flag.partition("=")
        if not sep or not name or not identity:
            raise ValueError(f"--grant {flag!r}: expected NAME=IDENTITY")
        out.setdefault(name, set()).add(identity)
    return {k: frozenset(v) for k, v in out.items()}


async def serve_directory(
    root: Path,
    listeners: Sequence[Listener],
    interval: float = 5.0,
    *,
    grants: Callable[[], Mapping[str, Collection[str]]] = dict,
    server: SdsServer | None = None,
) -> None:
    """Serve every certificate found under `root` to the identities `grants()` names for it,
    re-reading both every `interval` seconds. Hosts are not enforced in this mode (the files name
    none); the other checks are. A grants source that fails keeps the grants already in force."""
    server = server or SdsServer()
    for listener in listeners:
        await server.start(listener)
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
            try:
                current = grants()
            except ValueError as err:
                log.warning("sds: grants not re-read: %s", err)
            else:
                for name in set(current) | set(bundles):
                    server.grant(name, current.get(name, ()))
            await asyncio.sleep(interval)
    finally:
        await server.stop()
