"""The local fleet: a hub and member clusters as real kube-apiservers on loopback.

Owns building (once, cached outside the repo) the meshfed-apiserver binary from e2e/apiserver,
starting/stopping one API server (with embedded etcd, its own data, PKI and kubeconfig) per
cluster, installing CRDs (meshfed's on the hub; Istio's and Gateway API's on members) and
registering members on the hub. State lives in a directory (default `.fleet/` in the checkout)
described by `fleet.json`, so `meshfed fleet down` stops everything it started.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from federation import pki
from federation.crdgen import all_crds
from federation.kube import ApiError, KubeClient

REPO = Path(__file__).resolve().parents[1]
GO_MODULE = REPO / "e2e" / "apiserver"
K8S_VERSION = "v1.34.4"
HUB_NAMESPACE = "meshfed-system"
_MAJOR, _MINOR = K8S_VERSION[1:].split(".")[:2]
LDFLAGS = (
    "-s", "-w",
    f"-X k8s.io/component-base/version.gitVersion={K8S_VERSION}",
    f"-X k8s.io/component-base/version.gitMajor={_MAJOR}",
    f"-X k8s.io/component-base/version.gitMinor={_MINOR}",
    f"-X k8s.io/client-go/pkg/version.gitVersion={K8S_VERSION}",
)


def say(msg: str) -> None:
    print(f"[fleet] {msg}", flush=True)


def cache_dir() -> Path:
    return Path(os.environ.get("MESHFED_CACHE", Path.home() / ".cache" / "meshfed"))


def shared_dir() -> Path:
    """../shared beside the checkout (CI clones with shared/ beside it), or $MESHFED_SHARED."""
    env = os.environ.get("MESHFED_SHARED")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared", REPO / "shared", Path("/work/shared")]
    for cand in candidates:
        if (cand / "crds" / "istio" / "crd-all.gen.yaml").is_file():
            return cand
    raise FileNotFoundError(
        "Istio CRDs not found: expected shared/crds/istio/crd-all.gen.yaml beside the checkout "
        "(or set MESHFED_SHARED to the shared/ directory)"
    )


def apiserver_binary(*, quiet: bool = False) -> Path:
    """Build meshfed-apiserver once per source hash; later calls return the cached binary."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((GO_MODULE / name).read_bytes())
    digest.update(" ".join(LDFLAGS).encode())
    target = cache_dir() / "bin" / f"meshfed-apiserver-{K8S_VERSION}-{digest.hexdigest()[:12]}"
    if target.exists():
        return target
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise RuntimeError("Go is needed to build kube-apiserver from k8s.io/kubernetes: install Go >= 1.24")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    if not quiet:
        say(f"building kube-apiserver {K8S_VERSION} from Go modules (once; cached at {target}) ...")
    start = time.monotonic()
    proc = subprocess.Popen(
        [go, "build", "-trimpath", "-ldflags=" + " ".join(LDFLAGS), "-o", str(tmp), "."],
        cwd=GO_MODULE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    )
    while proc.poll() is None:
        time.sleep(1)
        elapsed = time.monotonic() - start
        if not quiet and int(elapsed) % 30 == 0:
            say(f"  still building ({elapsed:.0f}s; a cold build takes several minutes on 2 cores)")
    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"go build of kube-apiserver failed:\n{output[-4000:]}")
    tmp.rename(target)
    if not quiet:
        say(f"built in {time.monotonic() - start:.0f}s")
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kubeconfig_dict(name: str, port: int, ca: bytes, client: pki.KeyPair) -> dict[str, Any]:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": f"https://127.0.0.1:{port}",
                                                 "certificate-authority-data": b64(ca)}}],
        "users": [{"name": f"{name}-admin", "user": {"client-certificate-data": b64(client.cert_pem),
                                                      "client-key-data": b64(client.key_pem)}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": f"{name}-admin"}}],
        "current-context": name,
    }


@dataclass
class ClusterProc:
    name: str
    role: str  # hub | member
    dir: str
    port: int
    etcd_port: int
    peer_port: int
    region: str = ""
    zone: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    pid: int = 0

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def kubeconfig(self) -> Path:
        return self.path / "kubeconfig"

    def prepare(self) -> None:
        pki_dir = self.path / "pki"
        if (pki_dir / "ca.crt").exists():
            return
        pki_dir.mkdir(parents=True, exist_ok=True)
        ca = pki.make_ca(f"{self.name}-ca")
        serving = pki.issue(ca, "kube-apiserver", server=True)
        admin = pki.issue(ca, "meshfed-admin", organizations=("system:masters",))
        (pki_dir / "ca.crt").write_bytes(ca.cert_pem)
        pki.write_private(pki_dir / "ca.key", ca.key_pem)
        (pki_dir / "serving.crt").write_bytes(serving.cert_pem)
        pki.write_private(pki_dir / "serving.key", serving.key_pem)
        pki.write_service_account_keys(pki_dir)
        kubeconfig = kubeconfig_dict(self.name, self.port, ca.cert_pem, admin)
        pki.write_private(self.kubeconfig, yaml.safe_dump(kubeconfig).encode())

    def command(self, binary: Path) -> list[str]:
        p = self.path / "pki"
        return [
            str(binary),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--secure-port={self.port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--tls-cert-file={p / 'serving.crt'}",
            f"--tls-private-key-file={p / 'serving.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--allow-privileged=true",
            "--disable-admission-plugins=ServiceAccount",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            "--profiling=false",
            "--v=0",
        ]

    def start(self, binary: Path) -> None:
        if self.running():
            return
        self.prepare()
        env = {
            **os.environ,
            "MESHFED_ETCD_DIR": str(self.path / "etcd"),
            "MESHFED_ETCD_CLIENT_URL": f"http://127.0.0.1:{self.etcd_port}",
            "MESHFED_ETCD_PEER_URL": f"http://127.0.0.1:{self.peer_port}",
            "MESHFED_ETCD_NO_FSYNC": "1",
        }
        log = open(self.path / "apiserver.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            self.command(binary), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        self.pid = proc.pid

    def running(self) -> bool:
        if not self.pid:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        try:  # a zombie child of ours is not running
            waited, _ = os.waitpid(self.pid, os.WNOHANG)
            return waited == 0
        except ChildProcessError:
            return True

    def stop(self, timeout: float = 15.0) -> None:
        if not self.running():
            self.pid = 0
            return
        os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.running():
            os.killpg(self.pid, signal.SIGKILL)
        self.pid = 0

    async def client(self, attempts: int = 3) -> KubeClient:
        return await KubeClient.from_kubeconfig_file(str(self.kubeconfig), self.name, attempts=attempts)

    async def wait_ready(self, timeout: float = 120.0) -> None:
        client = await self.client(attempts=1)
        try:
            deadline = time.monotonic() + timeout
            last = ""
            while time.monotonic() < deadline:
                if not self.running():
                    tail = (self.path / "apiserver.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"API server {self.name} exited during start:\n{tail}")
                try:
                    await client.request("GET", "/readyz", timeout=5, retry=False)
                    return
                except ApiError as err:
                    last = str(err)
                await asyncio.sleep(0.3)
            raise TimeoutError(f"API server {self.name} not ready after {timeout:.0f}s: {last}")
        finally:
            await client.close()


def default_topology(members: int, regions: int, zones: int) -> list[tuple[str, str, str]]:
    """(name, region, zone) for each member: zones spread over regions, members over zones."""
    region_names = [f"region-{chr(ord('a') + i)}" for i in range(regions)]
    zone_names = [(region_names[z % regions], f"{region_names[z % regions]}-{z // regions + 1}") for z in range(zones)]
    return [(f"member-{i + 1}", *zone_names[i % zones]) for i in range(members)]


@dataclass
class FleetState:
    hub: ClusterProc
    members: list[ClusterProc]
    aux_pids: dict[str, int] = field(default_factory=dict)

    def clusters(self) -> list[ClusterProc]:
        return [self.hub, *self.members]

    def member(self, name: str) -> ClusterProc:
        return next(m for m in self.members if m.name == name)


class Fleet:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_file = root / "fleet.json"
        self.state: FleetState | None = None
        if self.state_file.exists():
            raw = json.loads(self.state_file.read_text())
            self.state = FleetState(
                hub=ClusterProc(**raw["hub"]),
                members=[ClusterProc(**m) for m in raw["members"]],
                aux_pids=raw.get("aux_pids", {}),
            )

    def save(self) -> None:
        assert self.state is not None
        self.root.mkdir(parents=True, exist_ok=True)
        data = {
            "hub": asdict(self.state.hub),
            "members": [asdict(m) for m in self.state.members],
            "aux_pids": self.state.aux_pids,
        }
        self.state_file.write_text(json.dumps(data, indent=2))

    def _new_cluster(self, name: str, role: str, region: str = "", zone: str = "",
                     labels: dict[str, str] | None = None) -> ClusterProc:
        return ClusterProc(
            name=name, role=role, dir=str(self.root / name), port=free_port(), etcd_port=free_port(),
            peer_port=free_port(), region=region, zone=zone, labels=dict(labels or {}),
        )

    async def up(self, members: int = 3, regions: int = 2, zones: int = 3,
                 topology: Sequence[tuple[str, str, str]] | None = None, vip_allocator: bool = True) -> FleetState:
        binary = apiserver_binary()
        if self.state is None:
            topo = list(topology) if topology else default_topology(members, regions, zones)
            self.state = FleetState(
                hub=self._new_cluster("hub", "hub"),
                members=[self._new_cluster(n, "member", r, z, {"env": "demo"}) for n, r, z in topo],
            )
        state = self.state
        for cluster in state.clusters():
            cluster.start(binary)
        self.save()
        say(f"starting {len(state.clusters())} API servers (hub + {len(state.members)} members) ...")
        await asyncio.gather(*(c.wait_ready() for c in state.clusters()))
        say("API servers ready; installing CRDs ...")
        await self.install_crds()
        for member in state.members:
            await self.register(member)
        if vip_allocator:
            self.start_vip_allocator()
        self.save()
        say(f"fleet up: hub kubeconfig {state.hub.kubeconfig}")
        return state

    async def install_crds(self) -> None:
        assert self.state is not None
        hub = await self.state.hub.client()
        try:
            await apply_crds(hub, all_crds())
            await ensure_namespace(hub, HUB_NAMESPACE)
            await apply_manifests(hub, APPROVAL_POLICY)
        finally:
            await hub.close()
        member_crds = load_member_crds()
        for member in self.state.members:
            client = await member.client()
            try:
                await apply_crds(client, member_crds)
            finally:
                await client.close()

    async def register(self, member: ClusterProc) -> None:
        """Create the member's kubeconfig Secret and MemberCluster object on the hub."""
        assert self.state is not None
        hub = await self.state.hub.client()
        try:
            await register_member(hub, member.name, member.kubeconfig.read_text(), member.region, member.zone,
                                  member.labels)
        finally:
            await hub.close()

    async def add_member(self, name: str, region: str, zone: str, labels: dict[str, str] | None = None) -> ClusterProc:
        assert self.state is not None
        member = self._new_cluster(name, "member", region, zone, labels or {"env": "demo"})
        self.state.members.append(member)
        member.start(apiserver_binary(quiet=True))
        self.save()
        await member.wait_ready()
        client = await member.client()
        try:
            await apply_crds(client, load_member_crds())
        finally:
            await client.close()
        await self.register(member)
        self.restart_vip_allocator()
        return member

    def start_vip_allocator(self) -> None:
        assert self.state is not None
        old = self.state.aux_pids.get("vip-allocator")
        if old and _alive(old):
            return
        log = open(self.root / "vip-allocator.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "federation.vipalloc", str(self.root)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
        )
        log.close()
        self.state.aux_pids["vip-allocator"] = proc.pid
        self.save()

    def restart_vip_allocator(self) -> None:
        assert self.state is not None
        pid = self.state.aux_pids.pop("vip-allocator", 0)
        if pid:
            _kill_group(pid)
        self.start_vip_allocator()

    def down(self, *, purge: bool = True) -> None:
        if self.state is None:
            say("no fleet here")
            return
        for name, pid in list(self.state.aux_pids.items()):
            _kill_group(pid)
            self.state.aux_pids.pop(name)
        for pid_file in self.root.glob("*.pid"):  # e.g. the demo's controller
            try:
                _kill_group(int(pid_file.read_text().strip()))
            except ValueError:
                pass
            pid_file.unlink()
        for cluster in self.state.clusters():
            cluster.stop()
        self.save()
        if purge:
            shutil.rmtree(self.root, ignore_errors=True)
        say("fleet down: nothing left running")

    def status_rows(self) -> list[tuple[str, str, str, str, str, str]]:
        if self.state is None:
            return []
        return [
            (c.name, c.role, c.region or "-", c.zone or "-", f"https://127.0.0.1:{c.port}",
             "running" if c.running() else "stopped")
            for c in self.state.clusters()
        ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        if not _alive(pid):
            return
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def load_member_crds() -> list[dict[str, Any]]:
    root = shared_dir() / "crds"
    docs: list[dict[str, Any]] = []
    for path in [root / "istio" / "crd-all.gen.yaml", *sorted((root / "gateway-api").glob("*.yaml"))]:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "CustomResourceDefinition"]
    return docs


CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


async def apply_crds(client: KubeClient, crds: Sequence[dict[str, Any]], timeout: float = 60.0) -> None:
    """Server-side apply CRDs and wait until every one is Established."""
    await asyncio.gather(
        *(client.apply(f"{CRD_PATH}/{crd['metadata']['name']}", crd, field_manager="meshfed-fleet") for crd in crds)
    )
    deadline = time.monotonic() + timeout
    for crd in crds:
        while True:
            obj = await client.get(f"{CRD_PATH}/{crd['metadata']['name']}") or {}
            conds = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}
            if conds.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {crd['metadata']['name']} not Established on {client.name}")
            await asyncio.sleep(0.1)


APPROVAL_POLICY = REPO / "deploy" / "rbac" / "approval-policy.yaml"
_CLUSTER_PATHS = {
    "ValidatingAdmissionPolicy": "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies",
    "ValidatingAdmissionPolicyBinding": "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings",
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
}


async def apply_manifests(client: KubeClient, path: Path) -> None:
    """Server-side apply the cluster-scoped objects of a manifest file (the approval policy and roles)."""
    docs = [d for d in yaml.safe_load_all(await asyncio.to_thread(path.read_text)) if d]
    for doc in docs:
        if doc:
            await client.apply(f"{_CLUSTER_PATHS[doc['kind']]}/{doc['metadata']['name']}", doc,
                               field_manager="meshfed-fleet")


async def ensure_namespace(client: KubeClient, name: str) -> None:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    try:
        await client.create("/api/v1/namespaces", body, field_manager="meshfed-fleet")
    except ApiError as err:
        if err.status != 409:
            raise


async def register_member(hub: KubeClient, name: str, kubeconfig: str, region: str, zone: str,
                          labels: dict[str, str]) -> None:
    """The documented way to register any cluster: a kubeconfig Secret + a MemberCluster."""
    await ensure_namespace(hub, HUB_NAMESPACE)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{name}-kubeconfig", "namespace": HUB_NAMESPACE},
        "type": "Opaque",
        "stringData": {"kubeconfig": kubeconfig},
    }
    await hub.apply(f"/api/v1/namespaces/{HUB_NAMESPACE}/secrets/{name}-kubeconfig", secret,
                    field_manager="meshfed-fleet")
    member = {
        "apiVersion": "meshfed.io/v1alpha1",
        "kind": "MemberCluster",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "kubeconfigSecretRef": {"name": f"{name}-kubeconfig", "namespace": HUB_NAMESPACE, "key": "kubeconfig"},
            "region": region,
            "zone": zone,
        },
    }
    await hub.apply(f"/apis/meshfed.io/v1alpha1/memberclusters/{name}", member, field_manager="meshfed-fleet")
