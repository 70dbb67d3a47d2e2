"""One real istiod (pilot-discovery) + one real gateway Envoy beside one test API server (the lab recipe,
../shared/lab/istio): loopback ports of their own, analysis on, optionally istiod's validation webhook
registered on the API server. The gateway is Envoy with a hand-written bootstrap (no pilot-agent, so no
fixed 15020/15021/15090 ports): node ID `router~127.0.0.1~<pod>.istio-system~…`, i.e. proxy `<pod>.istio-system`,
and its placeholder Pod object so the Gateway selector matches a workload. Binaries: fleet's
cached builds. (The e2e fleet runs the full setup: pilot-agent, mTLS xDS, network namespaces.)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from federation.kube import ApiError, KubeClient
from fleet import envoy_binary, free_port, istio_binary, pki

MESH = """rootNamespace: istio-system
trustDomain: cluster.local
ingressControllerMode: "OFF"
enablePrometheusMerge: false
enableAutoMtls: false
localityLbSetting: {{enabled: true}}
defaultConfig: {{discoveryAddress: 127.0.0.1:{grpc}, controlPlaneAuthPolicy: NONE}}
"""


@dataclass
class Istiod:
    dir: Path
    kubeconfig: Path
    http: int = field(default_factory=free_port)
    grpc: int = field(default_factory=free_port)
    secure_grpc: int = field(default_factory=free_port)
    https: int = field(default_factory=free_port)
    monitoring: int = field(default_factory=free_port)
    ctrlz: int = field(default_factory=free_port)
    webhook_ca: bytes | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def start(self, *, webhook: bool = False) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "mesh.yaml").write_text(MESH.format(grpc=self.grpc))
        (self.dir / "meshNetworks.yaml").write_text("networks: {}\n")
        args = [str(istio_binary("pilot-discovery")), "discovery", "--kubeconfig", str(self.kubeconfig),
                "--meshConfig", str(self.dir / "mesh.yaml"), "--networksConfig", str(self.dir / "meshNetworks.yaml"),
                "-n", "istio-system", "--domain", "cluster.local",
                "--httpAddr", f"127.0.0.1:{self.http}", "--grpcAddr", f"127.0.0.1:{self.grpc}",
                "--secureGRPCAddr", f"127.0.0.1:{self.secure_grpc}", "--httpsAddr", f"127.0.0.1:{self.https}",
                "--monitoringAddr", f"127.0.0.1:{self.monitoring}", "--ctrlz_port", str(self.ctrlz),
                "--log_output_level", "default:info"]
        if webhook and self.webhook_ca is None:
            ca = pki.make_ca("istiod-webhook-ca")
            cert = pki.issue(ca, "istiod", server=True)  # SAN 127.0.0.1: the webhook URL
            for name, data in (("cert.pem", cert.cert_pem), ("key.pem", cert.key_pem), ("ca.pem", ca.cert_pem)):
                pki.write_private(self.dir / name, data)
            self.webhook_ca = ca.cert_pem
        if webhook:
            args += ["--tlsCertFile", str(self.dir / "cert.pem"), "--tlsKeyFile", str(self.dir / "key.pem"),
                     "--caCertFile", str(self.dir / "ca.pem")]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.dir), "POD_NAME": "istiod-test-0",
               "POD_NAMESPACE": "istio-system", "REVISION": "default", "CLUSTER_ID": "Kubernetes",
               "PILOT_ENABLE_ANALYSIS": "true", "PILOT_ANALYSIS_INTERVAL": "1s",
               "VALIDATION_WEBHOOK_CONFIG_NAME": "", "INJECTION_WEBHOOK_CONFIG_NAME": "",
               "PILOT_ENABLE_GATEWAY_API": "false", "PILOT_ENABLE_METADATA_EXCHANGE": "false",
               "PILOT_ENABLE_ALPN_FILTER": "false", "PILOT_FILTER_GATEWAY_CLUSTER_CONFIG": "true"}
        log = open(self.dir / "istiod.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(args, cwd=self.dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    async def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"istiod exited: {self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(f"{self.url}/ready", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.3)
        raise TimeoutError(f"istiod not ready: {self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        path = self.dir / "istiod.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


BOOTSTRAP = """node:
  id: router~127.0.0.1~{pod}.istio-system~istio-system.svc.cluster.local
  cluster: istio-ingressgateway.istio-system
  locality: {{region: {region}, zone: {zone}}}
  metadata:
    NAMESPACE: istio-system
    CLUSTER_ID: Kubernetes
    NAME: {pod}
    WORKLOAD_NAME: istio-ingressgateway
    SERVICE_ACCOUNT: istio-ingressgateway
    INSTANCE_IPS: 127.0.0.1
    ISTIO_VERSION: unknown
    LABELS: {{istio: ingressgateway, app: istio-ingressgateway}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{envoy_grpc: {{cluster_name: xds-grpc}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3, initial_fetch_timeout: 0s}}
  lds_config: {{ads: {{}}, resource_api_version: V3, initial_fetch_timeout: 0s}}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds-grpc
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {grpc}}}}}}}
"""


@dataclass
class Gateway:
    dir: Path
    istiod: Istiod
    pod: str = "gw-1"
    admin: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def proxy_id(self) -> str:
        return f"{self.pod}.istio-system"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        boot = self.dir / "bootstrap.yaml"
        boot.write_text(BOOTSTRAP.format(pod=self.pod, region="region-a", zone="zone-1", admin=self.admin,
                                         grpc=self.istiod.grpc))
        log = open(self.dir / "envoy.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(envoy_binary()), "-c", str(boot), "--concurrency", "1", "--disable-hot-restart", "-l", "warning",
             "--base-id", str(self.admin)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    async def config_dump(self) -> dict[str, object]:
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{self.admin}/config_dump", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            data: dict[str, object] = await resp.json(content_type=None)
            return data


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


async def ensure(client: KubeClient, path: str, body: dict[str, object]) -> None:
    with contextlib.suppress(ApiError):
        await client.create(path, body, field_manager="test")


async def gateway_workload(client: KubeClient, port: int, pod: str = "gw-1") -> None:
    """The gateway's placeholder Pod (never runs) and Service (targetPort: the Gateway server `port`), so the
    analyzers see a workload."""
    await ensure(client, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": "istio-system"}})
    await ensure(client, "/api/v1/namespaces/istio-system/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": "istio-system",
                     "labels": {"istio": "ingressgateway", "app": "istio-ingressgateway"}},
        "spec": {"containers": [{"name": "istio-proxy", "image": "example.invalid/none:0"}]}})
    await ensure(client, "/api/v1/namespaces/istio-system/services", {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system"},
        "spec": {"selector": {"istio": "ingressgateway"},
                 "ports": [{"name": "http", "port": 80, "targetPort": port, "protocol": "TCP"}]}})


async def register_webhook(client: KubeClient, istiod: Istiod) -> None:
    assert istiod.webhook_ca is not None
    await ensure(client, "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations", {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": f"istio-validator-{istiod.https}"},
        "webhooks": [{"name": "validation.istio.io",
                      "clientConfig": {"url": f"https://127.0.0.1:{istiod.https}/validate",
                                       "caBundle": base64.b64encode(istiod.webhook_ca).decode()},
                      "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": ["networking.istio.io"],
                                 "apiVersions": ["*"], "resources": ["*"]}],
                      "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"]}]})


def cleanup_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
