"""The gateway-team kinds acting on real traffic (issue 12): a hub, two members each with a real istiod
and a real gateway Envoy, the controller; every behaviour shown by requests through each member's VIP.

- an AuthorizationPolicy (DENY /admin) in the AccessPoint: /admin and below answer 403 from the gateway,
  other paths reach the echo backend;
- a Gateway API Gateway (class istio, bound to the shared gateway Service) and an HTTPRoute: requests for
  its host reach the echo backend of each cluster, with the route's per-cluster header; Istio's own status
  on the member (Gateway Programmed, route Accepted/ResolvedRefs) and the per-cluster status on the hub;
- RequestAuthentication (inline JWKS) + AuthorizationPolicy: a request without a valid JWT is refused
  (403 without a token, 401 with a bad signature or an expired one), a valid token passes;
- an EnvoyFilter (spec.allowEnvoyFilter) adding a response header naming the cluster;
- a Telemetry (access logging to Istio's built-in `envoy` provider, /dev/stdout): a request through each
  member's VIP appears in that member's gateway Envoy log, and did not before the Telemetry existed nor
  after the template drops it (the controller prunes it);
- a GRPCRoute through a Gateway API Gateway: a real gRPC call through each member's VIP reaches the gRPC
  backend of that cluster (e2e/grpcecho.py in the member's network namespace, a ServiceEntry with a
  GRPC port).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from federation.kube import KubeClient
from fleet import GATEWAY_SELECTOR, ISTIO_NAMESPACE, Fleet, netns
from fleet import kind_samples as samples
from fleet.istio import http_get
from fleet.testing import (
    ACCESSPOINTS,
    ControllerProcess,
    eventually,
    gateway_vip,
    grant_tenancy,
    wait_status,
)

pytestmark = pytest.mark.e2e

FLEET = {"members": 2, "regions": 2, "zones": 2, "istio": True}
ECHO_NS = "echo-kinds"
ECHO_HOST = f"echo.{ECHO_NS}.svc.cluster.local"
GATEWAY_SERVICE_FQDN = f"istio-ingressgateway.{ISTIO_NAMESPACE}.svc.cluster.local"
GATEWAY_WORKLOAD = {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
                    "metadata": {"name": "istio-ingressgateway-0", "namespace": ISTIO_NAMESPACE},
                    "spec": {"address": "127.0.0.1", "labels": {**GATEWAY_SELECTOR, "app": "istio-ingressgateway"},
                             "serviceAccount": "istio-ingressgateway"}}


# ---- one HTTP request, with the response headers ---------------------------------------------


async def request(address: str, host: str, path: str = "/", port: int = 80, headers: dict[str, str] | None = None,
                  timeout: float = 5.0) -> tuple[int, dict[str, str]]:
    """GET http://address:port/path with Host `host`: (status, lower-cased headers); (0, {error}) on failure."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
    except (OSError, TimeoutError) as err:
        return 0, {"error": type(err).__name__}
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as err:
        return 0, {"error": type(err).__name__}
    finally:
        writer.close()
    lines = head.decode("latin-1").split("\r\n")
    out = {}
    for line in lines[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            out[k.strip().lower()] = v.strip()
    return int(lines[0].split(" ", 2)[1]), out


async def statuses(address: str, host: str, paths: list[str], headers: dict[str, str] | None = None) -> dict[str, int]:
    return {p: (await request(address, host, p, headers=headers))[0] for p in paths}


# ---- the AccessPoint pieces ------------------------------------------------------------------


def lb_service(name: str) -> dict[str, Any]:
    """A LoadBalancer Service for the shared gateway: the fleet gives it a VIP that reaches the gateway."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"type": "LoadBalancer", "selector": dict(GATEWAY_SELECTOR),
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def istio_http_route(name: str, host: str) -> list[dict[str, Any]]:
    """An Istio Gateway (HTTP 80 for `host`) in istio-system and a VirtualService to the echo backends."""
    return [
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
         "metadata": {"name": name, "namespace": ISTIO_NAMESPACE},
         "spec": {"selector": dict(GATEWAY_SELECTOR),
                  "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": [host]}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": name},
         "spec": {"hosts": [host], "gateways": [f"{ISTIO_NAMESPACE}/{name}"],
                  "http": [{"route": [{"destination": {"host": ECHO_HOST, "port": {"number": 8080}}}],
                            "headers": {"response": {"set": {"x-served-by": "${cluster}"}}}}]}},
    ]


def echo_locality_rule() -> dict[str, Any]:
    """Keep each gateway's traffic on its own cluster's echo backend (locality LB needs outlier detection).
    In the echo namespace: Istio looks a DestinationRule up in the proxy's, the service's and the root
    namespace only."""
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "echo-local", "namespace": ECHO_NS},
            "spec": {"host": ECHO_HOST,
                     "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN",
                                                        "localityLbSetting": {"enabled": True}},
                                       "outlierDetection": {"consecutive5xxErrors": 3, "interval": "1s",
                                                            "baseEjectionTime": "30s", "maxEjectionPercent": 100}}}}


def in_gateway_ns(obj: dict[str, Any]) -> dict[str, Any]:
    """Gateway workload policies live in the gateway's namespace (istio-system)."""
    return {**obj, "metadata": {**obj["metadata"], "namespace": ISTIO_NAMESPACE}}


def accesspoint(name: str, template: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": name},
            "spec": {"template": template, **spec}}


async def create_ap(hub: KubeClient, ns: str, body: dict[str, Any]) -> None:
    # The gateway workload policies and the Gateway API Gateway live in istio-system, routes beside the
    # echo ServiceEntry, the Gateway listens on *.kinds.example: the platform team grants that (issue 13).
    await grant_tenancy(hub, ns, target_namespaces=[ISTIO_NAMESPACE, ECHO_NS], domains=["*.kinds.example"])
    await hub.create(ACCESSPOINTS.format(ns=ns), {**body, "metadata": {**body["metadata"], "namespace": ns}},
                     field_manager="e2e")


def applied_everywhere(count: int) -> Any:
    def ok(st: dict[str, Any]) -> bool:
        clusters = st.get("clusters") or []
        return len(clusters) == count and all(c.get("state") == "Applied" for c in clusters)
    return ok


async def vips(fleet: Fleet, members: dict[str, KubeClient], ns: str, service: str) -> dict[str, str]:
    assert fleet.state is not None
    out = {}
    for m in fleet.state.members:
        out[m.name] = await eventually(lambda c=members[m.name]: gateway_vip(c, ns, service), 30,
                                       message=f"{m.name}: no VIP for {ns}/{service}")
    return out


@pytest.fixture(scope="module")
async def echo(fleet: Fleet, members: dict[str, KubeClient]) -> str:
    """The echo backends published on every member, with the locality rule (fleet set-up, not an AccessPoint)."""
    await fleet.publish_backends(ECHO_NS, ECHO_HOST)
    rule = echo_locality_rule()
    for client in members.values():
        await client.apply(f"/apis/networking.istio.io/v1/namespaces/{ECHO_NS}/destinationrules/echo-local", rule,
                           field_manager="e2e")
        # The gateway Envoy runs outside Kubernetes (its Pod stays Pending, no endpoints): registered as a
        # WorkloadEntry, the gateway Service has an instance, which Istio needs before it reports a Gateway
        # API Gateway bound to that Service (manual deployment) Programmed.
        await client.apply(f"/apis/networking.istio.io/v1/namespaces/{ISTIO_NAMESPACE}/workloadentries/"
                           "istio-ingressgateway-0", GATEWAY_WORKLOAD, field_manager="e2e")
    return ECHO_HOST


# ---- JWTs ------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self.key.public_key().public_numbers()
        self.jwks = json.dumps({"keys": [{
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": "k1",
            "n": b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": b64url(numbers.e.to_bytes(3, "big"))}]})

    def token(self, *, expires_in: float = 3600, key: rsa.RSAPrivateKey | None = None) -> str:
        header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "k1"}).encode())
        now = int(time.time())
        payload = b64url(json.dumps({"iss": self.issuer, "sub": "tester", "iat": now,
                                     "exp": int(now + expires_in)}).encode())
        signing = f"{header}.{payload}".encode()
        signature = (key or self.key).sign(signing, padding.PKCS1v15(), hashes.SHA256())
        return f"{header}.{payload}.{b64url(signature)}"


# ---- tests -----------------------------------------------------------------------------------


async def test_authorization_policy_denies_admin_paths(fleet: Fleet, hub: KubeClient, members: dict[str, KubeClient],
                                                       controller: ControllerProcess, namespace: str,
                                                       echo: str) -> None:
    host = "admin-deny.kinds.example"
    policy = in_gateway_ns(samples.authorization_policy("${name}-deny-admin"))
    policy["spec"]["rules"][0]["to"][0]["operation"]["hosts"] = [host, f"{host}:*"]
    template = [lb_service("authz-gw"), *istio_http_route("authz", host), policy]
    await create_ap(hub, namespace, accesspoint("authz", template))
    await wait_status(hub, f"{ACCESSPOINTS.format(ns=namespace)}/authz", applied_everywhere(2), timeout=90)
    for cluster, vip in (await vips(fleet, members, namespace, "authz-gw")).items():
        paths = ["/", "/shop", "/administrator", "/admin", "/admin/users", "/admin/"]

        async def enforced(vip: str = vip, paths: list[str] = paths) -> dict[str, int]:
            got = await statuses(vip, host, paths)
            assert got == {"/": 200, "/shop": 200, "/administrator": 200, "/admin": 403, "/admin/users": 403,
                           "/admin/": 403}, got
            return got
        await eventually(enforced, 60, interval=0.5, message=f"{cluster}: /admin not denied through {vip}")
        status, headers = await request(vip, host, "/shop")
        assert status == 200 and headers.get("x-echo-cluster") == cluster and headers.get("x-served-by") == cluster
        status, headers = await request(vip, host, "/admin/users")
        assert status == 403 and "x-echo-cluster" not in headers  # the gateway refused it; no backend saw it


async def test_httproute_through_a_gateway_api_gateway_in_each_cluster(
        fleet: Fleet, hub: KubeClient, members: dict[str, KubeClient], controller: ControllerProcess,
        namespace: str, echo: str) -> None:
    host = "route.${region}.kinds.example"
    # manual deployment: the Gateway in the gateway Service's namespace; the route beside the ServiceEntry
    # it names (Istio resolves a Hostname backendRef in the route's namespace)
    gw = in_gateway_ns(samples.k8s_gateway("web", port=80, hostname="*.kinds.example", address=GATEWAY_SERVICE_FQDN))
    route = samples.http_route("web", gateway="web", gateway_namespace=ISTIO_NAMESPACE, hostname=host,
                               backend=ECHO_HOST, port=8080)
    route["metadata"]["namespace"] = ECHO_NS
    route["spec"]["rules"][0]["backendRefs"] = [{"group": "networking.istio.io", "kind": "Hostname",
                                                 "name": ECHO_HOST, "port": 8080}]
    template = [lb_service("route-gw"), gw, route]
    await create_ap(hub, namespace, accesspoint("routes", template))
    path = f"{ACCESSPOINTS.format(ns=namespace)}/routes"
    await wait_status(hub, path, applied_everywhere(2), timeout=90)
    assert fleet.state is not None
    regions = {m.name: m.region for m in fleet.state.members}
    for cluster, vip in (await vips(fleet, members, namespace, "route-gw")).items():
        want = f"route.{regions[cluster]}.kinds.example"

        async def routed(vip: str = vip, want: str = want, cluster: str = cluster) -> dict[str, str]:
            status, headers = await request(vip, want, "/hello")
            assert status == 200, (status, headers)
            assert headers.get("x-echo-cluster") == cluster and headers.get("x-route-cluster") == cluster, headers
            return headers
        await eventually(routed, 90, interval=0.5, message=f"{cluster}: HTTPRoute not serving through {vip}")
        # Istio's own status on the member
        member = members[cluster]

        async def istio_status(ns: str = namespace, member: KubeClient = member) -> bool:
            g = await member.get(f"/apis/gateway.networking.k8s.io/v1/namespaces/{ISTIO_NAMESPACE}/gateways/web") or {}
            r = await member.get(f"/apis/gateway.networking.k8s.io/v1/namespaces/{ECHO_NS}/httproutes/web") or {}
            gconds = {c["type"]: c["status"] for c in (g.get("status") or {}).get("conditions") or []}
            parents = (r.get("status") or {}).get("parents") or []
            rconds = {c["type"]: c["status"] for p in parents for c in p.get("conditions") or []}
            assert gconds.get("Programmed") == "True", g.get("status")
            assert rconds.get("Accepted") == "True" and rconds.get("ResolvedRefs") == "True", r.get("status")
            assert parents[0]["controllerName"] == "istio.io/gateway-controller"
            return True
        await eventually(istio_status, 60, message=f"{cluster}: Istio's Gateway API status")
    # and the hub shows it per cluster
    st = await wait_status(hub, path, lambda s: all(c.get("routeConfigured") is True for c in s.get("clusters") or [])
                           and len(s.get("clusters") or []) == 2, timeout=60)
    for c in st["clusters"]:
        assert "Gateway API Gateway(s) Programmed" in (c.get("routeMessage") or ""), c


async def test_requests_without_a_valid_jwt_are_refused(fleet: Fleet, hub: KubeClient,
                                                        members: dict[str, KubeClient],
                                                        controller: ControllerProcess, namespace: str,
                                                        echo: str) -> None:
    host = "jwt.kinds.example"
    issuer = Issuer("https://issuer.kinds.example")
    authn = in_gateway_ns(samples.request_authentication("${name}-jwt", issuer=issuer.issuer, jwks=issuer.jwks))
    authn["spec"]["jwtRules"][0].pop("forwardOriginalToken", None)
    require = in_gateway_ns({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "${name}-require-jwt"},
        "spec": {"selector": {"matchLabels": dict(GATEWAY_SELECTOR)}, "action": "DENY",
                 "rules": [{"from": [{"source": {"notRequestPrincipals": ["*"]}}],
                            "to": [{"operation": {"hosts": [host, f"{host}:*"]}}]}]}})
    template = [lb_service("jwt-gw"), *istio_http_route("jwt", host), authn, require]
    await create_ap(hub, namespace, accesspoint("jwt", template))
    await wait_status(hub, f"{ACCESSPOINTS.format(ns=namespace)}/jwt", applied_everywhere(2), timeout=90)
    good = issuer.token()
    expired = issuer.token(expires_in=-600)
    forged = issuer.token(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    for cluster, vip in (await vips(fleet, members, namespace, "jwt-gw")).items():

        async def enforced(vip: str = vip) -> dict[str, int]:
            got = {
                "none": (await request(vip, host, "/"))[0],
                "valid": (await request(vip, host, "/", headers={"authorization": f"Bearer {good}"}))[0],
                "expired": (await request(vip, host, "/", headers={"authorization": f"Bearer {expired}"}))[0],
                "forged": (await request(vip, host, "/", headers={"authorization": f"Bearer {forged}"}))[0],
            }
            assert got == {"none": 403, "valid": 200, "expired": 401, "forged": 401}, got
            return got
        await eventually(enforced, 60, interval=0.5, message=f"{cluster}: JWT not enforced through {vip}")
        status, headers = await request(vip, host, "/", headers={"authorization": f"Bearer {good}"})
        assert status == 200 and headers.get("x-echo-cluster") == cluster


async def test_envoy_filter_with_the_opt_in_adds_a_header(fleet: Fleet, hub: KubeClient,
                                                          members: dict[str, KubeClient],
                                                          controller: ControllerProcess, namespace: str,
                                                          echo: str) -> None:
    host = "filter.kinds.example"
    template = [lb_service("ef-gw"), *istio_http_route("ef", host),
                in_gateway_ns(samples.envoy_filter("${name}-served-by"))]
    await create_ap(hub, namespace, accesspoint("ef", template, allowEnvoyFilter=True))
    await wait_status(hub, f"{ACCESSPOINTS.format(ns=namespace)}/ef", applied_everywhere(2), timeout=90)
    for cluster, vip in (await vips(fleet, members, namespace, "ef-gw")).items():

        async def patched(vip: str = vip, cluster: str = cluster) -> dict[str, str]:
            status, headers = await request(vip, host, "/")
            assert status == 200 and headers.get("x-envoyfilter") == cluster, (status, headers)
            return headers
        await eventually(patched, 60, interval=0.5, message=f"{cluster}: EnvoyFilter header missing through {vip}")


def gateway_log(fleet: Fleet, cluster: str) -> Path:
    """Where the fleet sends the member's pilot-agent output, and so the gateway Envoy's /dev/stdout."""
    assert fleet.state is not None
    member = next(m for m in fleet.state.members if m.name == cluster)
    assert member.istio is not None
    return member.istio.gateway_dir / "gateway.log"


def logged(log: Path, paths: list[str]) -> set[str]:
    """The request paths found in an access log line (`"GET <path> HTTP/1.1"`, so -on-1 is not -on-10)."""
    text = log.read_text(errors="replace")
    return {p for p in paths if f" {p} HTTP/" in text}


async def test_telemetry_access_log_appears_in_the_gateway_log(fleet: Fleet, hub: KubeClient,
                                                               members: dict[str, KubeClient],
                                                               controller: ControllerProcess, namespace: str,
                                                               echo: str) -> None:
    host = "telemetry.kinds.example"
    run = uuid.uuid4().hex[:12]
    routing = [lb_service("tel-gw"), *istio_http_route("tel", host)]
    telemetry = in_gateway_ns(samples.telemetry("${name}-access-log"))
    telemetry_path = f"/apis/telemetry.istio.io/v1/namespaces/{ISTIO_NAMESPACE}/telemetries/telemetry-access-log"
    ap_path = f"{ACCESSPOINTS.format(ns=namespace)}/telemetry"
    everywhere = {"rollout": {"waves": [{"name": "all"}]}}  # template changes reach both members at once
    await create_ap(hub, namespace, accesspoint("telemetry", routing, **everywhere))
    await wait_status(hub, ap_path, applied_everywhere(2), timeout=90)
    addresses = await vips(fleet, members, namespace, "tel-gw")
    logs = {cluster: gateway_log(fleet, cluster) for cluster in addresses}
    sent: dict[str, dict[str, list[str]]] = {c: {"before": [], "on": [], "after": [], "again": []} for c in addresses}

    async def served(cluster: str, phase: str) -> str:
        """One request with a path never used before; it must reach this cluster's echo backend."""
        path = f"/telemetry-{run}-{cluster}-{phase}-{len(sent[cluster][phase])}"
        sent[cluster][phase].append(path)
        status, headers = await request(addresses[cluster], host, path)
        assert status == 200 and headers.get("x-echo-cluster") == cluster, (path, status, headers)
        return path

    for cluster in addresses:  # the route serves, and nothing logs it yet
        await eventually(lambda c=cluster: served(c, "before"), 60, interval=0.5,
                         message=f"{cluster}: route not serving through {addresses[cluster]}")
        assert await access_log_off(fleet, cluster), f"{cluster}: the gateway logs before any Telemetry"

    await hub.apply(ap_path, {**accesspoint("telemetry", [*routing, telemetry], **everywhere),
                              "metadata": {"name": "telemetry", "namespace": namespace}}, field_manager="e2e")
    for cluster, member in members.items():
        await eventually(lambda m=member: m.get(telemetry_path), 60, message=f"{cluster}: Telemetry not applied")

    for cluster in addresses:
        async def logging(cluster: str = cluster) -> set[str]:
            await served(cluster, "on")
            return logged(logs[cluster], sent[cluster]["on"])
        await eventually(logging, 45, interval=0.5, message=f"{cluster}: requests not in {logs[cluster]}")
    for cluster in addresses:
        everything = [p for c in sent.values() for p in c["before"] + c["on"]]
        own_on = logged(logs[cluster], sent[cluster]["on"])
        # Envoy writes its access log in order: a later request is in the file, so an earlier one that is
        # not was never logged -- the requests before the Telemetry existed were not
        assert logged(logs[cluster], everything) == own_on, (cluster, logged(logs[cluster], everything))
        assert own_on, cluster

    # the template drops the Telemetry: the controller prunes it and the gateway stops logging
    await hub.apply(ap_path, {**accesspoint("telemetry", routing, **everywhere),
                              "metadata": {"name": "telemetry", "namespace": namespace}}, field_manager="e2e")
    for cluster, member in members.items():
        async def pruned(member: KubeClient = member) -> bool:
            return await member.get(telemetry_path) is None
        await eventually(pruned, 60, message=f"{cluster}: Telemetry not pruned")
    for cluster in addresses:
        # the gateway's running config no longer writes an access log (Envoy's admin, via the fleet's forward)
        await eventually(lambda c=cluster: access_log_off(fleet, c), 45,
                         message=f"{cluster}: gateway still has an access log")
        await served(cluster, "after")
    # and shown by the log itself: the Telemetry back, later requests are logged, the ones sent while it was
    # gone are not
    await hub.apply(ap_path, {**accesspoint("telemetry", [*routing, telemetry], **everywhere),
                              "metadata": {"name": "telemetry", "namespace": namespace}}, field_manager="e2e")
    for cluster in addresses:
        async def logging_again(cluster: str = cluster) -> set[str]:
            await served(cluster, "again")
            return logged(logs[cluster], sent[cluster]["again"])
        await eventually(logging_again, 45, interval=0.5, message=f"{cluster}: requests not logged again")
        assert not logged(logs[cluster], sent[cluster]["after"]), cluster


async def access_log_off(fleet: Fleet, cluster: str) -> bool:
    """Whether no active listener of the member's gateway Envoy writes an access log to /dev/stdout."""
    assert fleet.state is not None
    member = next(m for m in fleet.state.members if m.name == cluster)
    assert member.istio is not None
    status, body = await http_get(f"{member.istio.gateway_admin_url}/config_dump?resource=dynamic_listeners")
    assert status == 200, (status, body[:200])
    # only the listeners taking new connections count (a draining one may still log its last requests)
    active = [entry.get("active_state") for entry in json.loads(body).get("configs") or []]
    return "/dev/stdout" not in json.dumps(active)


GRPC_HOST = f"grpc.{ECHO_NS}.svc.cluster.local"
GRPC_PORT = 9090  # the ServiceEntry's port
GRPC_BACKEND = ("127.0.50.1", 50051)  # where each member's backend listens, inside that member's netns
GRPC_METHOD = "/meshfed.e2e.Echo/Who"


def grpc_backend_objects(cluster: str) -> list[tuple[str, dict[str, Any]]]:
    """A ServiceEntry with a GRPC port and the WorkloadEntry of this member's own backend only: an answer
    naming the cluster proves the member's gateway routed to its own backend."""
    base = f"/apis/networking.istio.io/v1/namespaces/{ECHO_NS}"
    labels = {"app": "grpc-echo"}
    address, port = GRPC_BACKEND
    return [
        (f"{base}/serviceentries/grpc-echo",
         {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
          "metadata": {"name": "grpc-echo", "namespace": ECHO_NS},
          "spec": {"hosts": [GRPC_HOST], "location": "MESH_INTERNAL", "resolution": "STATIC",
                   "ports": [{"name": "grpc", "number": GRPC_PORT, "protocol": "GRPC"}],
                   "workloadSelector": {"labels": labels}}}),
        (f"{base}/workloadentries/grpc-echo-{cluster}",
         {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
          "metadata": {"name": f"grpc-echo-{cluster}", "namespace": ECHO_NS, "labels": labels},
          "spec": {"address": address, "ports": {"grpc": port}, "labels": labels}}),
    ]


@pytest.fixture
async def grpc_backends(fleet: Fleet, members: dict[str, KubeClient], echo: str) -> AsyncIterator[str]:
    """A gRPC backend in each member's network namespace, registered on that member; stopped afterwards."""
    assert fleet.state is not None
    procs: list[asyncio.subprocess.Process] = []
    script = str(Path(__file__).with_name("grpcecho.py"))
    try:
        for m in fleet.state.members:
            assert m.istio is not None
            proc = await asyncio.create_subprocess_exec(*netns.exec_prefix(m.istio.netns), sys.executable, script,
                                                        m.name, *map(str, GRPC_BACKEND),
                                                        stdout=asyncio.subprocess.PIPE)
            procs.append(proc)
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line.strip() == b"ready", f"{m.name}: gRPC backend did not start ({line!r})"
            for path, obj in grpc_backend_objects(m.name):
                await members[m.name].apply(path, obj, field_manager="e2e")
        yield GRPC_HOST
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 10)


async def grpc_call(address: str, authority: str, timeout: float = 3.0) -> str:
    """One unary call over h2c to address:80 with :authority `authority`: the backend's answer."""
    async with grpc.aio.insecure_channel(f"{address}:80", options=[("grpc.default_authority", authority)]) as ch:
        answer = await ch.unary_unary(GRPC_METHOD)(b"", timeout=timeout)
    assert isinstance(answer, bytes)
    return answer.decode()


async def test_grpcroute_reaches_the_grpc_backend_in_each_cluster(fleet: Fleet, hub: KubeClient,
                                                                  members: dict[str, KubeClient],
                                                                  controller: ControllerProcess, namespace: str,
                                                                  grpc_backends: str) -> None:
    host = "grpc.kinds.example"
    gw = in_gateway_ns(samples.k8s_gateway("grpc", port=80, hostname=host, address=GATEWAY_SERVICE_FQDN))
    route = samples.grpc_route("grpc", gateway="grpc", backend=grpc_backends, port=GRPC_PORT)
    route["metadata"]["namespace"] = ECHO_NS  # beside the ServiceEntry its Hostname backendRef names
    route["spec"]["parentRefs"] = [{"name": "grpc", "namespace": ISTIO_NAMESPACE}]
    route["spec"]["hostnames"] = [host]
    route["spec"]["rules"] = [{"matches": [{"method": {"service": "meshfed.e2e.Echo"}}],
                               "backendRefs": [{"group": "networking.istio.io", "kind": "Hostname",
                                                "name": grpc_backends, "port": GRPC_PORT}]}]
    await create_ap(hub, namespace, accesspoint("grpc", [lb_service("grpc-gw"), gw, route]))
    await wait_status(hub, f"{ACCESSPOINTS.format(ns=namespace)}/grpc", applied_everywhere(2), timeout=90)
    for cluster, vip in (await vips(fleet, members, namespace, "grpc-gw")).items():

        async def answered(vip: str = vip) -> str:
            try:
                return await grpc_call(vip, host)
            except grpc.aio.AioRpcError as err:
                raise AssertionError(f"{err.code()}: {err.details()}") from err
        got = await eventually(answered, 45, interval=0.5, message=f"{cluster}: no gRPC answer through {vip}")
        assert got == cluster, (cluster, got)

        async def accepted(member: KubeClient = members[cluster]) -> bool:  # Istio's own status on the member
            obj = await member.get(f"/apis/gateway.networking.k8s.io/v1/namespaces/{ECHO_NS}/grpcroutes/grpc") or {}
            parents = (obj.get("status") or {}).get("parents") or []
            conditions = {c["type"]: c["status"] for p in parents for c in p.get("conditions") or []}
            assert conditions.get("Accepted") == "True" and conditions.get("ResolvedRefs") == "True", obj.get("status")
            return True
        await eventually(accepted, 30, message=f"{cluster}: GRPCRoute not Accepted by Istio")
