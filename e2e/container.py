"""Run a command from an OCI image the way a Pod's container runs it, without a container engine.

`umoci unpack` makes the image's root filesystem and runtime config (user, environment); the process
then runs in its own mount and PID namespaces (it is PID 1, as in a container), chrooted into that
root filesystem, as the user the Pod's securityContext names (no capabilities), with the root
filesystem read-only when readOnlyRootFilesystem is set, tmpfs where the Pod has emptyDir volumes,
/proc and a minimal /dev, and read-only bind mounts for mounted files (the ServiceAccount token
directory). The network is the host's (the local fleet listens on loopback), so the Pod's ports are
host ports. podman would do the same, but crun cannot set its rlimits in this sandbox (no
CAP_SYS_RESOURCE), so e2e/test_image.py uses this.

Owns nothing but the processes and mounts it starts (mounts live in the private mount namespace and
vanish with it); root is needed (unshare, mount, chroot), as for image/build.sh.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def in_root(rootfs: Path, path: str) -> Path:
    """`path` inside `rootfs` with its symlinks resolved inside `rootfs` (an absolute link restarts at
    rootfs, never at the host's /), as a container runtime resolves mount targets: Debian's /var/run is
    a link to /run, which must not become the host's /run."""
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = rootfs.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise ValueError(f"{path}: too many symbolic links in {rootfs}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return rootfs.joinpath(*resolved)


def unpack(layout: Path, ref: str, bundle: Path) -> dict[str, Any]:
    """`umoci unpack` the image `layout:ref` into `bundle` (rootfs/ and config.json); its runtime config."""
    if bundle.exists():
        shutil.rmtree(bundle)
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:{ref}", str(bundle)], check=True,
                   stdout=subprocess.DEVNULL)
    config: dict[str, Any] = json.loads((bundle / "config.json").read_text())
    return config


@dataclass
class Container:
    """One process from an unpacked image bundle (see the module docstring)."""

    bundle: Path
    command: Sequence[str]
    env: Mapping[str, str]
    user: tuple[int, int]
    log_path: Path
    read_only: bool = True
    tmpfs: Mapping[str, str] = field(default_factory=dict)  # path in the container -> size (e.g. "64m")
    binds: Mapping[str, Path] = field(default_factory=dict)  # path in the container -> host path (read-only)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def rootfs(self) -> Path:
        return self.bundle / "rootfs"

    def script(self) -> str:
        root = shlex.quote(str(self.rootfs))
        lines = ["set -eu", "mount --make-rprivate /", f"mount --bind {root} {root}",
                 f"mount -t proc -o nosuid,nodev,noexec proc {root}/proc",
                 f"mount -t tmpfs -o nosuid,mode=0755,size=64k tmpfs {root}/dev"]
        for dev in DEVICES:
            lines += [f"touch {root}/dev/{dev}", f"mount --bind /dev/{dev} {root}/dev/{dev}"]
        for path, size in self.tmpfs.items():
            target = shlex.quote(str(in_root(self.rootfs, path)))
            lines.append(f"mount -t tmpfs -o nosuid,nodev,mode=1777,size={size} tmpfs {target}")
        for path, source in self.binds.items():
            target = shlex.quote(str(in_root(self.rootfs, path)))
            lines += [f"mount --bind {shlex.quote(str(source))} {target}", f"mount -o remount,bind,ro {target}"]
        if self.read_only:
            lines.append(f"mount -o remount,bind,ro {root}")
        uid, gid = self.user
        lines.append(f"exec chroot --userspec={uid}:{gid} --groups={gid} {root} "
                     + " ".join(shlex.quote(c) for c in self.command))
        return "\n".join(lines)

    def start(self) -> None:
        # mount points inside the (still writable) unpacked root filesystem
        for path in [*self.tmpfs, *self.binds]:
            target = in_root(self.rootfs, path)
            if not target.is_relative_to(self.rootfs):
                raise ValueError(f"{path} leaves the root filesystem {self.rootfs}")
            target.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # The environment is the container's own: chroot passes it on, and the host's mount/chroot are
            # found on the image's PATH (/usr/sbin:/usr/bin) before the chroot.
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--", "/bin/sh", "-c", self.script()],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env=dict(self.env))

    def init_pid(self) -> int | None:
        """The host PID of the container's PID 1 (the command), once unshare has forked it."""
        if self.proc is None:
            return None
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM to the container's PID 1, as the kubelet does, SIGKILL after `grace` seconds; the exit
        code (None when it had to be killed)."""
        if self.proc is None:
            return None
        code: int | None = None
        try:
            pid = self.init_pid()
            if self.proc.poll() is None and pid is not None:
                os.kill(pid, signal.SIGTERM)
            code = self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # unshare --kill-child takes PID 1 with it
            self.proc.wait()
        finally:
            self.proc = None
        return code

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""
