"""The Kubernetes, Istio and Gateway API kinds an AccessPoint template may contain, and how to address them.

Pure data; imported by validation (accesspoint) and by the member clients (federation).

A kind is identified by (API group, kind): Istio's `Gateway` (networking.istio.io) and the Gateway
API's `Gateway` (gateway.networking.k8s.io) share a name. A template object's apiVersion picks its
group; every existing template (kind names unique before the Gateway API kinds) resolves as before.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    kind: str
    group: str
    versions: tuple[str, ...]  # accepted in templates; the first is what meshfed writes and watches
    plural: str
    # The spec field an AccessPoint must set to true before this kind may be in its template.
    opt_in: str | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.versions[0]}" if self.group else self.versions[0]

    @property
    def id(self) -> tuple[str, str]:
        return (self.group, self.kind)

    @property
    def qualified(self) -> str:
        """`Kind.group` (kubectl's spelling), or the bare kind for the core group."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def accepts(self, api_version: str) -> bool:
        group, _, version = api_version.rpartition("/")
        return group == self.group and version in self.versions


ISTIO_NET = "networking.istio.io"
ISTIO_SECURITY = "security.istio.io"
ISTIO_TELEMETRY = "telemetry.istio.io"
GATEWAY_API = "gateway.networking.k8s.io"
ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")
ISTIO_SECURITY_VERSIONS = ("v1", "v1beta1")
# The versions the Gateway API CRDs serve (shared/crds/gateway-api, standard channel).
GATEWAY_API_VERSIONS = ("v1", "v1beta1")

# EnvoyFilter patches the generated Envoy configuration directly: a wrong patch can break every
# listener of the gateway it selects, for every AccessPoint on it. Opt-in per AccessPoint.
ENVOY_FILTER_OPT_IN = "allowEnvoyFilter"

_TEMPLATE_KINDS = (
    Kind("Service", "", ("v1",), "services"),
    Kind("Gateway", ISTIO_NET, ISTIO_VERSIONS, "gateways"),
    Kind("VirtualService", ISTIO_NET, ISTIO_VERSIONS, "virtualservices"),
    Kind("DestinationRule", ISTIO_NET, ISTIO_VERSIONS, "destinationrules"),
    Kind("ServiceEntry", ISTIO_NET, ISTIO_VERSIONS, "serviceentries"),
    Kind("WorkloadEntry", ISTIO_NET, ISTIO_VERSIONS, "workloadentries"),
    Kind("Sidecar", ISTIO_NET, ISTIO_VERSIONS, "sidecars"),
    Kind("EnvoyFilter", ISTIO_NET, ("v1alpha3",), "envoyfilters", opt_in=ENVOY_FILTER_OPT_IN),
    Kind("AuthorizationPolicy", ISTIO_SECURITY, ISTIO_SECURITY_VERSIONS, "authorizationpolicies"),
    Kind("PeerAuthentication", ISTIO_SECURITY, ISTIO_SECURITY_VERSIONS, "peerauthentications"),
    Kind("RequestAuthentication", ISTIO_SECURITY, ISTIO_SECURITY_VERSIONS, "requestauthentications"),
    Kind("Telemetry", ISTIO_TELEMETRY, ("v1", "v1alpha1"), "telemetries"),
    Kind("Gateway", GATEWAY_API, GATEWAY_API_VERSIONS, "gateways"),
    Kind("HTTPRoute", GATEWAY_API, GATEWAY_API_VERSIONS, "httproutes"),
    Kind("GRPCRoute", GATEWAY_API, ("v1",), "grpcroutes"),
    Kind("ReferenceGrant", GATEWAY_API, GATEWAY_API_VERSIONS, "referencegrants"),
)

# (group, kind) -> Kind
TEMPLATE_KINDS: dict[tuple[str, str], Kind] = {k.id: k for k in _TEMPLATE_KINDS}
# The kind names a template's `kind` may take (the hub CRD's enum), in table order.
TEMPLATE_KIND_NAMES: tuple[str, ...] = tuple(dict.fromkeys(k.kind for k in _TEMPLATE_KINDS))

# Kinds meshfed writes to members besides the template (TLS Secrets from the certs controller).
SECRET = Kind("Secret", "", ("v1",), "secrets")
NAMESPACE = Kind("Namespace", "", ("v1",), "namespaces")
MANAGED_KINDS: dict[tuple[str, str], Kind] = {**TEMPLATE_KINDS, SECRET.id: SECRET}
_BY_NAME: dict[str, tuple[Kind, ...]] = {}
for _k in MANAGED_KINDS.values():
    _BY_NAME[_k.kind] = (*_BY_NAME.get(_k.kind, ()), _k)


def group_of(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def kinds_named(kind: str) -> tuple[Kind, ...]:
    """Every managed kind with this name (two for Gateway), in table order."""
    return _BY_NAME.get(kind, ())


def template_kind(api_version: str, kind: str) -> Kind | None:
    """The template kind an object's apiVersion + kind denote, or None when no such kind exists."""
    return TEMPLATE_KINDS.get((group_of(api_version), kind))


def managed_kind(group: str, kind: str) -> Kind:
    """The managed kind (group, kind); KeyError for one meshfed never writes."""
    return MANAGED_KINDS[(group, kind)]


def display_name(group: str, kind: str) -> str:
    """How messages name a kind: bare when its name is unambiguous (Service, VirtualService, HTTPRoute),
    else `Kind.group` for all but the first of that name (Istio's Gateway stays `Gateway`, as it
    always was; the Gateway API's is `Gateway.gateway.networking.k8s.io`)."""
    same = _BY_NAME.get(kind, ())
    if len(same) <= 1 or same[0].group == group:
        return kind
    return f"{kind}.{group}" if group else kind


def accepted_api_versions(kind: str) -> list[str]:
    """Every apiVersion a template object of this kind name may use."""
    return [f"{k.group}/{v}" if k.group else v for k in kinds_named(kind) for v in k.versions]


def api_path(kind: Kind, namespace: str | None, name: str | None = None) -> str:
    """REST path of a collection or an object."""
    base = f"/api/{kind.versions[0]}" if not kind.group else f"/apis/{kind.group}/{kind.versions[0]}"
    ns = f"/namespaces/{namespace}" if namespace else ""
    tail = f"/{name}" if name else ""
    return f"{base}{ns}/{kind.plural}{tail}"
