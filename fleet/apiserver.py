"""One local API server (meshfed-apiserver: kube-apiserver with embedded etcd) and what the fleet
installs on it.

Owns starting/stopping one API server on loopback (its own data, PKI and kubeconfig), installing CRDs
(meshfed's on the hub; Istio's and Gateway API's on members, from ../shared/crds) and registering a
member on the hub (kubeconfig Secret + MemberCluster). Imports federation.{pki,crdgen,kube} and
fleet.build.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from federation.hubwriter import FINALIZER
from federation.kube import ApiError, Deadlines, KubeClient
from fleet import pki
from fleet.build import ISTIO_MODULE, REPO
from fleet.istio import EchoBackend, MemberIstio


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


# Ports for the fleet's servers come from below Linux's ephemeral range (32768-60999 by default), so an
# outgoing connection never takes one between our choosing it and a server binding it; a marker file per
# port (created exclusively) keeps concurrent fleets (tests, helpers, the demo) from choosing the same.
PORT_RANGE = (20000, 32700)
PORT_MARKERS = Path(os.environ.get("TMPDIR", "/tmp")) / "meshfed-ports"
PORT_MARKER_TTL = 120.0  # seconds: by then the server that asked has bound it (a bind test protects it after)
KILLED_GONE_WITHIN = 10.0  # seconds a SIGKILLed API server may take to be gone


def _bindable(host: str, port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", *, udp: bool = False) -> int:
    """A TCP port on `host` (with `udp`, free for UDP too: DNS servers) no other fleet process chose in
    the last PORT_MARKER_TTL seconds and that is free now. (Asking the kernel for port 0 returned
    ephemeral ports that concurrent fleets' client connections took before the server bound them:
    "address already in use".)"""
    PORT_MARKERS.mkdir(parents=True, exist_ok=True)
    for _ in range(500):
        port = random.randrange(*PORT_RANGE)
        marker = PORT_MARKERS / str(port)
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            try:
                if time.time() - marker.stat().st_mtime > PORT_MARKER_TTL:
                    marker.unlink()  # stale: whoever chose it has bound it or given up; the bind test decides
            except FileNotFoundError:
                pass
            continue
        if _bindable(host, port, socket.SOCK_STREAM) and (not udp or _bindable(host, port, socket.SOCK_DGRAM)):
            return port
        # in use (a server of ours, or anything else): keep the marker, try another
    raise RuntimeError(f"no free port in {PORT_RANGE} after 500 tries (markers in {PORT_MARKERS})")


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


# Go forces a garbage collection on a heap left alone for 2 minutes; dense members start and idle alike,
# so those collections come due together (measured on 10 idle members: 31-86 % of a core for 5 s every
# 2 minutes, 0.1 core-second each). meshfed-apiserver collects instead at a random point of every period.
DENSE_GC_SPREAD = "2m"

# Each kube-apiserver's CRD informer resyncs every 5 minutes from its start (built in), rebuilding every
# CRD's OpenAPI: 0.1-0.2 core-second per member with the scale bench's 5 CRDs. Members started within the
# same seconds burst together: 30 idle dense members took 0.9-1.4 cores for 6 s, 5 minutes after they
# started (2026-12-06, sampled every 2 s; 0.25-0.3 cores otherwise), and at 50 members such a burst
# (10 CPU-seconds of members in 5 s) held one scale-bench edit 5.3 s. Members of a real fleet do not
# start together: `fleet up --start-interval` starts them this many seconds apart, so no two bursts meet.
MEMBERS_STARTED_APART = 6.0

# Go runs as many schedulers as cores; 50 dense members on 2 cores each keep 2, and each wake-up spins
# them. With one each, measured by e2e/bench/fanout.py (50 dense members x 200 VirtualServices, the same
# VirtualService applied on all 50 at once, 50 times; 2026-12-07, 2 rounds in alternating order against
# Go's default in the same run): idle 0.91x, member CPU a write 0.92x, the fan-out's p50 0.91x and p99
# 0.88x (3.8-4.7 against 4.5-4.8 ms a write; p99 319-355 against 346-421 ms). Small: within one pair's
# scatter, but idle, CPU a write and p50 lower in each of 4 pairs (2 by hand), p99 in 3.
# A GOMAXPROCS in the environment wins (Go's own knob).
DENSE_GOMAXPROCS = "1"


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
    istio: MemberIstio | None = None  # members of a fleet started with istio=True (primaries only)
    # An Istio remote of this member (primary-remote zones): no istiod or gateway of its own; the
    # primary's istiod reads it through a remote secret. Its echo backends live here as Pods.
    mesh_primary: str = ""
    backends: list[EchoBackend] = field(default_factory=list)
    # Tuned for density (many members on one machine, issue 20): watch cache and API Priority and
    # Fairness off, GOGC=50, no endpoint reconciler (its Lease and Endpoints writes every 10 s), garbage
    # collections spread apart (DENSE_GC_SPREAD). Measured before: 338-462 MiB with Istio's CRDs, about
    # 282 MiB idle tuned.
    dense: bool = False

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ClusterProc:
        data = dict(raw)
        istio = data.pop("istio", None)
        backends = [EchoBackend(**b) for b in data.pop("backends", None) or []]
        return cls(**data, istio=MemberIstio.from_dict(istio) if istio else None, backends=backends)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["istio"] = self.istio.to_dict() if self.istio else None
        return data

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
            # The hub sets meshfed's cleanup finalizer at admission (deploy/admission/finalizers.yaml):
            # MutatingAdmissionPolicy is beta in Kubernetes 1.34, off unless asked for.
            *(["--feature-gates=MutatingAdmissionPolicy=true",
               "--runtime-config=admissionregistration.k8s.io/v1beta1=true"] if self.role == "hub" else []),
            *(["--watch-cache=false", "--enable-priority-and-fairness=false",
               # The `kubernetes` Service's endpoints: nothing in a dense (API-only) member reads them.
               "--endpoint-reconciler-type=none"] if self.dense else []),
        ]

    def environment(self) -> dict[str, str]:
        """What meshfed-apiserver reads from its environment (e2e/apiserver/main.go) beside its flags."""
        return {
            "MESHFED_ETCD_DIR": str(self.path / "etcd"),
            "MESHFED_ETCD_CLIENT_URL": f"http://127.0.0.1:{self.etcd_port}",
            "MESHFED_ETCD_PEER_URL": f"http://127.0.0.1:{self.peer_port}",
            "MESHFED_ETCD_NO_FSYNC": "1",
            **({"GOGC": "50", "MESHFED_GC_SPREAD": DENSE_GC_SPREAD,
                "GOMAXPROCS": os.environ.get("GOMAXPROCS", DENSE_GOMAXPROCS)} if self.dense else {}),
        }

    def start(self, binary: Path) -> None:
        if self.running():
            return
        self.prepare()
        log = open(self.path / "apiserver.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            self.command(binary), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.environment()},
            start_new_session=True
        )
        log.close()
        self.pid = proc.pid

    def rss_mib(self) -> float | None:
        """Resident memory of the API server process (with its embedded etcd), MiB; None when not running."""
        try:
            with open(f"/proc/{self.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

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
        """SIGTERM, then SIGKILL after `timeout`; returns once the process is gone, so its ports are free
        for a restart on the same ones (a killed API server holds them until the kernel has torn it down:
        a restart right after the SIGKILL met "address already in use")."""
        if not self.running():
            self.pid = 0
            return
        os.killpg(self.pid, signal.SIGTERM)
        if not self._gone_within(timeout):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            if not self._gone_within(KILLED_GONE_WITHIN):
                raise RuntimeError(f"API server {self.name} (pid {self.pid}) still there "
                                   f"{KILLED_GONE_WITHIN:.0f} s after SIGKILL")
        self.pid = 0

    def _gone_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    async def client(self, attempts: int = 3, deadlines: Deadlines | None = None) -> KubeClient:
        return await KubeClient.from_kubeconfig_file(str(self.kubeconfig), self.name, attempts=attempts,
                                                     deadlines=deadlines)

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


GATEWAY_API_BUNDLE = "gateway.networking.k8s.io/bundle-version"


def gateway_api_version() -> str:
    """The Gateway API release istiod is built against (e2e/istio/go.mod), e.g. v1.6.0; "" if not found."""
    for line in (ISTIO_MODULE / "go.mod").read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "sigs.k8s.io/gateway-api":
            return words[1]
    return ""


def load_member_crds() -> list[dict[str, Any]]:
    root = shared_dir() / "crds"
    docs: list[dict[str, Any]] = []
    for path in [root / "istio" / "crd-all.gen.yaml", *sorted((root / "gateway-api").glob("*.yaml"))]:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "CustomResourceDefinition"]
    # The shared Gateway API CRDs come from a development checkout (bundle-version v0.0.0-dev); istiod reads
    # that annotation and ignores kinds whose CRD is "below" its minimum (GRPCRoute needs 1.1.0), so label
    # them with the release istiod is built against, as an installed release would be.
    release = gateway_api_version()
    for doc in docs:
        annotations = (doc.get("metadata") or {}).get("annotations") or {}
        if release and annotations.get(GATEWAY_API_BUNDLE) == "v0.0.0-dev":
            annotations[GATEWAY_API_BUNDLE] = release
    return docs


def select_member_crds(crds: Sequence[dict[str, Any]], kinds: Sequence[str] | None) -> list[dict[str, Any]]:
    """The member CRDs of `kinds` (None: all), each a kind (every CRD of it) or KIND.GROUP. Every CRD
    costs a member API server for ever: the CRD informer resyncs every 5 minutes and each resync rebuilds
    every CRD's OpenAPI (0.3-0.5 core-second a member with all 21 Istio and Gateway API CRDs), so a dense
    fleet installs only what its run uses."""
    if kinds is None:
        return list(crds)

    def names(crd: dict[str, Any]) -> set[str]:  # Gateway is two kinds: Gateway.networking.istio.io picks one
        kind = crd["spec"]["names"]["kind"]
        return {kind, f"{kind}.{crd['spec']['group']}"}

    known = set().union(*map(names, crds))
    unknown = sorted(set(kinds) - known)
    if unknown:
        listed = sorted({crd["spec"]["names"]["kind"] for crd in crds})
        raise ValueError(f"no member CRD of kind {', '.join(unknown)} (kinds: {', '.join(listed)}; "
                         "KIND.GROUP picks one of two of the same kind)")
    return [crd for crd in crds if names(crd) & set(kinds)]


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
FINALIZER_POLICY = REPO / "deploy" / "admission" / "finalizers.yaml"
_CLUSTER_PATHS = {
    "MutatingAdmissionPolicy": "/apis/admissionregistration.k8s.io/v1beta1/mutatingadmissionpolicies",
    "MutatingAdmissionPolicyBinding": "/apis/admissionregistration.k8s.io/v1beta1/mutatingadmissionpolicybindings",
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


async def install_finalizer_policy(client: KubeClient, timeout: float = 30.0) -> None:
    """Apply deploy/admission/finalizers.yaml and wait until the API server sets the finalizer (its
    admission plugin reads policies through an informer): a dry-run create of an AccessPoint comes
    back with it. Objects created before that would only cost the controller a finalizer write."""
    await apply_manifests(client, FINALIZER_POLICY)
    probe = {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint",
             "metadata": {"name": "meshfed-finalizer-policy-probe", "namespace": "default"},
             "spec": {"template": [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "probe"},
                                    "spec": {"ports": [{"port": 80}]}}]}}
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = await client.request("POST", "/apis/meshfed.io/v1alpha1/namespaces/default/accesspoints",
                                          query={"dryRun": "All", "fieldManager": "meshfed-fleet"}, body=probe)
        except ApiError as err:
            # A CRD just Established is served a moment later (503 "Resource kind ... not found").
            if err.status not in (404, 503):
                raise
            answer = {}
        if FINALIZER in ((answer.get("metadata") or {}).get("finalizers") or []):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{client.name}: the finalizer policy was not in effect after {timeout:.0f} s")
        await asyncio.sleep(0.1)
