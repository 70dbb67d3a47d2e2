"""Network namespaces of the local fleet: one per member's data plane.

Owns creating/removing a named network namespace (`ip netns add`, loopback up; we run as root) and
making sockets inside one from a process living in the host's namespace (setns(2) around socket(2):
a socket keeps the namespace it was created in, so one asyncio process can listen in a member's
namespace and connect from the host's, like a userspace kube-proxy). Gateway listeners bind
0.0.0.0:<port> and every member renders the same ports (REFERENCE.md, "several gateways on one
machine"): their own namespace keeps each member's ports its own. Traffic stays on loopback
addresses inside namespaces the fleet made. Imports nothing of meshfed's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    pass


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def create(name: str) -> None:
    """A fresh namespace `name` with its loopback up (an existing one is reused)."""
    if os.geteuid() != 0:
        raise NetnsError("the fleet's Istio data plane needs network namespaces: run as root")
    if not exists(name):
        _ip("netns", "add", name)
    _ip("-n", name, "link", "set", "lo", "up")


def delete(name: str) -> None:
    if exists(name):
        _ip("netns", "delete", name)


def exec_prefix(name: str) -> list[str]:
    """Command prefix running a program inside namespace `name`."""
    return ["ip", "netns", "exec", name]


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """The calling thread inside namespace `name` (None: stay where it is) for the block."""
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(NETNS_DIR / name, os.O_RDONLY)
    except FileNotFoundError:
        os.close(own)
        raise NetnsError(f"network namespace {name} does not exist") from None
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def tcp_socket(name: str | None) -> socket.socket:
    """A non-blocking TCP socket created inside namespace `name` (None: the caller's own)."""
    with entered(name):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def listen(name: str | None, host: str, port: int, backlog: int = 512) -> socket.socket:
    """A listening TCP socket on host:port inside namespace `name`."""
    sock = tcp_socket(name)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock
