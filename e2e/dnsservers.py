"""Real authoritative DNS servers on loopback for tests and benchmarks: BIND 9 and PowerDNS.

Owns process management only: a temp directory per server with its config, zone data and TSIG
key / API key, a free loopback port, start / stop / restart on the same port, readiness checks.
Usable from pytest fixtures and from standalone scripts (`e2e/bench/dns.py`); synchronous.

    with start_bind(["example.test"]) as bind:      # named -g -c CONF on 127.0.0.1:<port>
        bind.port, bind.key_name, bind.key_secret, bind.stop(), bind.start()
    with start_powerdns(["example.test"]) as pdns:  # pdns_server + gsqlite3, API on a free port
        pdns.api_url, pdns.api_key, pdns.port

Binaries come from Debian packages `bind9` (named) and `pdns-server` + `pdns-backend-sqlite3`
(pdns_server); `make deps` installs them. A missing binary raises MissingBinary naming the package
(after waiting a while if apt/dpkg is busy installing it right now).

Imports only the standard library and dnspython.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from fleet.apiserver import free_port as fleet_free_port

SBIN_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin")
PDNS_SCHEMA = Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql")
PDNS_SCHEMA_ALT = Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql")


class MissingBinary(RuntimeError):
    """A DNS server binary is not installed; the message names the Debian package."""


class ServerFailed(RuntimeError):
    """A DNS server did not start or answer; the message carries the tail of its log."""


def _apt_busy() -> bool:
    for lock in ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock"):
        if not os.path.exists(lock):
            continue
        try:
            out = subprocess.run(["fuser", lock], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            out = None
        if out is not None and out.stdout.strip():
            return True
    try:
        ps = subprocess.run(["ps", "-eo", "comm"], capture_output=True, text=True, timeout=5).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(p in {"apt", "apt-get", "dpkg", "unattended-upgr"} for p in ps)


def find_binary(name: str, package: str, wait_seconds: float = 300.0) -> str:
    """Path of `name`; waits while apt/dpkg is busy (it may be installing it), else MissingBinary."""
    deadline = time.monotonic() + wait_seconds
    while True:
        found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))
        if found:
            return found
        if time.monotonic() < deadline and _apt_busy():
            time.sleep(3)
            continue
        raise MissingBinary(
            f"{name} not found: install the Debian package {package} "
            f"(`make deps`, or `apt-get install -y {package}`; check with `dpkg -l {package.split()[0]}`)"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on `host` (the fleet's port chooser, shared by concurrent fleets)."""
    return fleet_free_port(host, udp=True)


def _soa_answers(host: str, port: int, zone: str, timeout: float = 1.0) -> bool:
    try:
        q = dns.message.make_query(zone, dns.rdatatype.SOA)
        r = dns.query.tcp(q, host, port=port, timeout=timeout)
    except (OSError, EOFError, dns.exception.DNSException):
        return False
    return r.rcode() == dns.rcode.NOERROR and bool(r.answer)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class _Process:
    workdir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str]) -> None:
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
            )
        finally:
            log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM, then SIGKILL); data on disk is kept for start()."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.proc = None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@dataclass
class BindServer(_Process):
    """A BIND 9 primary for `zones`, dynamic updates and transfers allowed with one TSIG key."""

    zones: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 0
    key_name: str = "meshfed-key."
    key_algorithm: str = "hmac-sha256"
    key_secret: str = ""
    binary: str = "named"

    @property
    def conf_path(self) -> Path:
        return self.workdir / "named.conf"

    def write_config(self) -> None:
        zone_blocks = []
        for zone in self.zones:
            zfile = self.workdir / f"{zone}.db"
            if not zfile.exists():
                zfile.write_text(
                    f"$ORIGIN {zone}.\n$TTL 300\n"
                    f"@ IN SOA ns1.{zone}. hostmaster.{zone}. ( 1 3600 600 86400 60 )\n"
                    f"@ IN NS ns1.{zone}.\nns1 IN A 127.0.0.1\n"
                )
            zone_blocks.append(
                f'zone "{zone}" {{ type primary; file "{zfile}"; notify no;\n'
                f'  allow-update {{ key "{self.key_name}"; }};\n'
                f'  allow-transfer {{ key "{self.key_name}"; }}; }};\n'
            )
        self.conf_path.write_text(
            "options {\n"
            f'  directory "{self.workdir}";\n'
            f'  pid-file "{self.workdir}/named.pid";\n'
            f'  session-keyfile "{self.workdir}/session.key";\n'
            f'  managed-keys-directory "{self.workdir}";\n'
            f"  listen-on port {self.port} {{ {self.host}; }};\n"
            "  listen-on-v6 { none; };\n"
            "  recursion no; allow-query { any; }; dnssec-validation no; notify no;\n"
            "  max-journal-size 64m;\n"
            "};\n"
            "controls { };\n"
            f'key "{self.key_name}" {{ algorithm {self.key_algorithm}; secret "{self.key_secret}"; }};\n'
            + "".join(zone_blocks)
        )

    def start(self, timeout: float = 20.0) -> None:
        """Start (or restart) named on the same port, with the zone data it had (journal kept)."""
        if self.running:
            return
        self.write_config()
        self._spawn([self.binary, "-g", "-n", "2", "-c", str(self.conf_path)])
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise ServerFailed(f"named exited early:\n{_tail(self.log_path)}")
            if all(_soa_answers(self.host, self.port, z) for z in self.zones):
                return
            time.sleep(0.1)
        self.stop()
        raise ServerFailed(f"named did not answer within {timeout}s:\n{_tail(self.log_path)}")

    def __enter__(self) -> BindServer:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_bind(zones: Sequence[str] = ("example.test",), port: int | None = None) -> BindServer:
    """Start BIND as primary for `zones` on 127.0.0.1:<free port> with a fresh TSIG key."""
    binary = find_binary("named", "bind9")
    workdir = Path(tempfile.mkdtemp(prefix="meshfed-bind-"))
    server = BindServer(
        workdir=workdir,
        log_path=workdir / "named.log",
        zones=tuple(z.rstrip(".").lower() for z in zones),
        port=port or free_port(),
        key_secret=base64.b64encode(secrets.token_bytes(32)).decode(),
        binary=binary,
    )
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server


@dataclass
class PowerDNSServer(_Process):
    """An authoritative PowerDNS with the gsqlite3 backend and its HTTP API enabled."""

    zones: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 0
    api_port: int = 0
    api_key: str = ""
    server_id: str = "localhost"
    binary: str = "pdns_server"
    _created: bool = field(default=False, repr=False)

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def db_path(self) -> Path:
        return self.workdir / "pdns.sqlite3"

    def _init_db(self) -> None:
        if self.db_path.exists():
            return
        schema = PDNS_SCHEMA if PDNS_SCHEMA.exists() else PDNS_SCHEMA_ALT
        if not schema.exists():
            raise MissingBinary(
                "PowerDNS sqlite schema not found: install the Debian package pdns-backend-sqlite3"
            )
        with contextlib.closing(sqlite3.connect(self.db_path)) as db:
            db.executescript(schema.read_text())
            db.commit()

    def start(self, timeout: float = 20.0) -> None:
        if self.running:
            return
        self._init_db()
        (self.workdir / "pdns.conf").write_text("")
        self._spawn(
            [
                self.binary,
                f"--config-dir={self.workdir}",
                f"--socket-dir={self.workdir}",
                "--daemon=no",
                "--guardian=no",
                "--disable-syslog",
                "--write-pid=no",
                "--launch=gsqlite3",
                f"--gsqlite3-database={self.db_path}",
                f"--local-address={self.host}",
                f"--local-port={self.port}",
                "--webserver=yes",
                f"--webserver-address={self.host}",
                f"--webserver-port={self.api_port}",
                "--webserver-allow-from=127.0.0.0/8",
                "--api=yes",
                f"--api-key={self.api_key}",
                "--loglevel=4",
                "--security-poll-suffix=",
                "--cache-ttl=0",
                "--negquery-cache-ttl=0",
                "--query-cache-ttl=0",
            ]
        )
        self._wait_api(timeout)
        if not self._created:
            for zone in self.zones:
                self._create_zone(zone)
            self._created = True
        deadline = time.monotonic() + timeout
        while not all(_soa_answers(self.host, self.port, z) for z in self.zones):
            if time.monotonic() > deadline:
                raise ServerFailed(f"pdns_server does not serve its zones:\n{_tail(self.log_path)}")
            time.sleep(0.1)

    def _request(self, method: str, path: str, body: object | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(
            f"{self.api_url}/api/v1{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"X-API-Key": self.api_key, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as err:
            return int(err.code), err.read()

    def _wait_api(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise ServerFailed(f"pdns_server exited early:\n{_tail(self.log_path)}")
            with contextlib.suppress(OSError):
                status, _ = self._request("GET", f"/servers/{self.server_id}")
                if status == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise ServerFailed(f"PowerDNS API did not answer within {timeout}s:\n{_tail(self.log_path)}")

    def _create_zone(self, zone: str) -> None:
        status, body = self._request(
            "POST",
            f"/servers/{self.server_id}/zones",
            {
                "name": f"{zone}.",
                "kind": "Native",
                "nameservers": [f"ns1.{zone}."],
                "rrsets": [
                    {
                        "name": f"ns1.{zone}.",
                        "type": "A",
                        "ttl": 300,
                        "changetype": "REPLACE",
                        "records": [{"content": "127.0.0.1", "disabled": False}],
                    }
                ],
            },
        )
        if status not in (201, 409):
            raise ServerFailed(f"creating zone {zone} failed: {status} {body!r}")

    def __enter__(self) -> PowerDNSServer:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_powerdns(zones: Sequence[str] = ("example.test",)) -> PowerDNSServer:
    """Start PowerDNS (gsqlite3) serving `zones` on 127.0.0.1:<free port>, API on another port."""
    binary = find_binary("pdns_server", "pdns-server pdns-backend-sqlite3")
    workdir = Path(tempfile.mkdtemp(prefix="meshfed-pdns-"))
    server = PowerDNSServer(
        workdir=workdir,
        log_path=workdir / "pdns.log",
        zones=tuple(z.rstrip(".").lower() for z in zones),
        port=free_port(),
        api_port=free_port(),
        api_key=secrets.token_hex(16),
        binary=binary,
    )
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server


@contextlib.contextmanager
def bind_server(zones: Sequence[str] = ("example.test",)) -> Iterator[BindServer]:
    with start_bind(zones) as server:
        yield server


@contextlib.contextmanager
def powerdns_server(zones: Sequence[str] = ("example.test",)) -> Iterator[PowerDNSServer]:
    with start_powerdns(zones) as server:
        yield server
