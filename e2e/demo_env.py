"""What `make demo` (e2e/demo.sh) needs besides the fleet: BIND and the internal CA's key pair, all local.

Owns, under the fleet directory (so `meshfed fleet down` / `make demo-down` stops and removes them):
  * `bind`: a BIND 9 primary for the demo zone on a fixed loopback port (default 127.0.0.1:8053, the
    address deploy/examples/platform.yaml's DNSProvider names), dynamic updates and transfers allowed with
    one TSIG key kept in `bind/tsig.secret`; its pid in `bind.pid` (named runs in its own session, so
    `fleet down` stops it with the rest). A BIND of an earlier run that still answers is reused. The port is
    fixed so that the example stays plain YAML, and lies below the ephemeral range the tests' free ports come
    from; the address is 127.0.0.1 because named listens only on addresses configured on an interface;
  * `ca`: the internal CA (`ca/ca.crt`, `ca/ca.key`, mode 0600) the hub's CertificateIssuer signs with,
    made once and kept while the fleet directory lives (so curl's `--cacert` stays valid);
  * `resolve`: the A records of a name, asked of that BIND (for machines without dig).

    python -m e2e.demo_env bind FLEET_DIR [--address A] [--port P] [--zone Z]
    python -m e2e.demo_env ca FLEET_DIR
    python -m e2e.demo_env resolve NAME [--address A] [--port P]

Imports e2e.dnsservers (BIND process handling), fleet.pki (key pairs), dnspython and the standard library.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

from e2e.dnsservers import BindServer, ServerFailed, _soa_answers, find_binary
from fleet import pki

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 8053
DEFAULT_ZONE = "shop.example"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def bind_up(root: Path, address: str, port: int, zone: str) -> None:
    workdir = root / "bind"
    workdir.mkdir(parents=True, exist_ok=True)
    pid_file, secret_file = root / "bind.pid", workdir / "tsig.secret"
    if pid_file.exists() and _alive(int(pid_file.read_text().strip() or 0)) and _soa_answers(address, port, zone):
        print(f"    BIND already running on {address}:{port} (pid {pid_file.read_text().strip()}), zone {zone}")
        return
    if _soa_answers(address, port, zone):
        sys.exit(f"demo: something else already serves {zone} on {address}:{port} (another demo's BIND?); "
                 f"stop it (make demo-down in its checkout) and run make demo again")
    if not secret_file.exists():
        pki.write_private(secret_file, base64.b64encode(secrets.token_bytes(32)))
    server = BindServer(workdir=workdir, log_path=workdir / "named.log", zones=(zone,), host=address, port=port,
                        key_secret=secret_file.read_text().strip(), binary=find_binary("named", "bind9"))
    try:
        server.start()
    except ServerFailed as err:
        sys.exit(f"demo: BIND did not start on {address}:{port} ({err}); is the address taken? "
                 f"(ss -lnup | grep ':{port} ')")
    assert server.proc is not None
    pid_file.write_text(f"{server.proc.pid}\n")
    print(f"    BIND started on {address}:{port} (pid {server.proc.pid}), primary for {zone}, "
          f"TSIG key {server.key_name.rstrip('.')} ({server.key_algorithm}); log {server.log_path}")


def ca_up(root: Path) -> None:
    directory = root / "ca"
    cert, key = directory / "ca.crt", directory / "ca.key"
    if cert.exists() and key.exists():
        print(f"    internal CA already made: {cert}")
        return
    directory.mkdir(parents=True, exist_ok=True)
    ca = pki.make_ca("meshfed demo internal CA")
    pki.write_private(key, ca.key_pem)
    cert.write_bytes(ca.cert_pem)
    print(f"    internal CA made: {cert} (key {key}, mode 0600)")


def resolve(name: str, address: str, port: int) -> None:
    answer = dns.query.tcp(dns.message.make_query(name, dns.rdatatype.A), address, port=port, timeout=3)
    print("\n".join(sorted(rr.to_text() for rrset in answer.answer for rr in rrset)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m e2e.demo_env", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for action in ("bind", "ca"):
        p = sub.add_parser(action)
        p.add_argument("root", type=Path)
    r = sub.add_parser("resolve")
    r.add_argument("name")
    for p in (sub.choices["bind"], r):
        p.add_argument("--address", default=DEFAULT_ADDRESS)
        p.add_argument("--port", type=int, default=DEFAULT_PORT)
    sub.choices["bind"].add_argument("--zone", default=DEFAULT_ZONE)
    args = parser.parse_args(argv)
    if args.action == "bind":
        bind_up(args.root, args.address, args.port, args.zone)
    elif args.action == "ca":
        ca_up(args.root)
    else:
        resolve(args.name, args.address, args.port)


if __name__ == "__main__":
    main()
