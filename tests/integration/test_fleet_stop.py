"""`ClusterProc.stop` returns only once the process is gone: a server whose graceful shutdown hangs is
killed, and its ports are free for a restart on the same ones as soon as stop() returns (CI met a
restart right after the SIGKILL failing with "address already in use" on the embedded etcd's port).
One real process (a Python stand-in that ignores SIGTERM and listens on a port), no API server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from fleet.apiserver import ClusterProc, free_port

HOLDER = """
import signal, socket, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a graceful shutdown that never ends
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
print("listening", flush=True)
# Dying takes a while: a large heap to tear down, as a killed API server has.
ballast = [bytearray(1 << 20) for _ in range(512)]
while True:
    time.sleep(1)
"""


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def test_stop_kills_a_hung_shutdown_and_returns_with_its_port_free(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(port)], stdout=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"listening"
    time.sleep(0.5)  # the ballast allocated
    cluster = ClusterProc(name="stand-in", role="member", dir=str(tmp_path), port=port, etcd_port=0, peer_port=0,
                          pid=proc.pid)
    assert not bindable(port)
    started = time.monotonic()
    cluster.stop(timeout=0.5)
    assert time.monotonic() - started >= 0.5  # SIGTERM was ignored for the whole timeout
    assert cluster.pid == 0
    assert not cluster.running()
    assert proc.poll() is not None  # gone (reaped) when stop() returned
    assert bindable(port), "the port of the stopped server should be free when stop() returns"
