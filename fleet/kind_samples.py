"""Test data: one valid template object per template kind added for the gateway teams (Istio security,
Sidecar, Telemetry, EnvoyFilter, Gateway API), each using a `${var}`, shared by the unit, integration and
e2e tests (like fleet.testing, never used by the controller). Valid against the real CRDs in
shared/crds (istio/crd-all.gen.yaml, gateway-api/*.yaml). Imports nothing of meshfed."""

from __future__ import annotations

from typing import Any

GATEWAY_SELECTOR = {"istio": "ingressgateway"}


def authorization_policy(name: str = "deny-admin", paths: tuple[str, ...] = ("/admin", "/admin/*")) -> dict[str, Any]:
    """DENY requests whose path is /admin or below it, on the workloads the selector picks."""
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "labels": {"meshfed.io/example": "${cluster}"}},
            "spec": {"selector": {"matchLabels": dict(GATEWAY_SELECTOR)}, "action": "DENY",
                     "rules": [{"to": [{"operation": {"paths": list(paths)}}]}]}}


def peer_authentication(name: str = "strict") -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": "backend-${cluster}"}}, "mtls": {"mode": "STRICT"}}}


def request_authentication(name: str = "jwt", issuer: str = "https://issuer.${region}.example",
                           jwks: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"issuer": issuer, "forwardOriginalToken": True}
    if jwks is not None:
        rule["jwks"] = jwks
    else:
        rule["jwksUri"] = "https://issuer.example/.well-known/jwks.json"
    return {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
            "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": dict(GATEWAY_SELECTOR)}, "jwtRules": [rule]}}


def sidecar(name: str = "default") -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": name, "annotations": {"meshfed.io/cluster": "${cluster}"}},
            "spec": {"egress": [{"hosts": ["./*", "istio-system/*"]}]}}


def telemetry(name: str = "access-log") -> dict[str, Any]:
    """Access logging only: a metrics Telemetry makes upstream Envoy NACK (lab README)."""
    return {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
            "metadata": {"name": name, "labels": {"meshfed.io/zone": "${zone}"}},
            "spec": {"selector": {"matchLabels": dict(GATEWAY_SELECTOR)},
                     "accessLogging": [{"providers": [{"name": "envoy"}]}]}}


def envoy_filter(name: str = "served-by", header: str = "x-envoyfilter") -> dict[str, Any]:
    """A response header on every route of the gateway: the value names the cluster."""
    return {"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
            "metadata": {"name": name},
            "spec": {"workloadSelector": {"labels": dict(GATEWAY_SELECTOR)},
                     "configPatches": [{"applyTo": "ROUTE_CONFIGURATION", "match": {"context": "GATEWAY"},
                                        "patch": {"operation": "MERGE", "value": {"response_headers_to_add": [
                                            {"header": {"key": header, "value": "${cluster}"}}]}}}]}}


def k8s_gateway(name: str = "web", port: int = 8080, hostname: str = "*.${region}.example",
                address: str | None = None) -> dict[str, Any]:
    """A Gateway API Gateway of class istio; `address` (a Service hostname) binds it to an existing gateway
    deployment (Istio's manual deployment) instead of having istiod create one."""
    spec: dict[str, Any] = {"gatewayClassName": "istio",
                            "listeners": [{"name": "http", "port": port, "protocol": "HTTP", "hostname": hostname,
                                           "allowedRoutes": {"namespaces": {"from": "All"}}}]}
    if address is not None:
        spec["addresses"] = [{"type": "Hostname", "value": address}]
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": name},
            "spec": spec}


def http_route(name: str = "web", gateway: str = "web", gateway_namespace: str | None = None,
               hostname: str = "app.${region}.example", backend: str = "app", port: int = 80) -> dict[str, Any]:
    parent: dict[str, Any] = {"name": gateway}
    if gateway_namespace is not None:
        parent["namespace"] = gateway_namespace
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": name},
            "spec": {"parentRefs": [parent], "hostnames": [hostname],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                "filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                                    "set": [{"name": "x-route-cluster", "value": "${cluster}"}]}}],
                                "backendRefs": [{"name": backend, "port": port}]}]}}


def grpc_route(name: str = "grpc", gateway: str = "web", backend: str = "app-grpc", port: int = 9090) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute", "metadata": {"name": name},
            "spec": {"parentRefs": [{"name": gateway}], "hostnames": ["grpc.${region}.example"],
                     "rules": [{"matches": [{"method": {"service": "shop.Checkout"}}],
                                "backendRefs": [{"name": backend, "port": port}]}]}}


def reference_grant(name: str = "routes-to-services", from_namespace: str = "${namespace}") -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant", "metadata": {"name": name},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                               "namespace": from_namespace}],
                     "to": [{"group": "", "kind": "Service"}]}}


def all_new_kinds() -> list[dict[str, Any]]:
    """One object of every new kind but EnvoyFilter (opt-in)."""
    return [authorization_policy(), peer_authentication(), request_authentication(), sidecar(), telemetry(),
            k8s_gateway(), http_route(), grpc_route(), reference_grant()]
