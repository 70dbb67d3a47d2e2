"""AccessPoint API models (spec, status) and its CRD descriptor.

Imports accesspoint.meta, accesspoint.kinds, accesspoint.traffic, accesspoint.rollout,
accesspoint.istioverdict, accesspoint.health and placement.models. Pure data, no I/O.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from accesspoint.health import ProbeRecord
from accesspoint.istioverdict import HostEndpoints, IstioMessage, RemoteSync
from accesspoint.kinds import TEMPLATE_KIND_NAMES
from accesspoint.meta import AGE, ApiModel, Condition, CRDInfo, PrinterColumn, Resource
from accesspoint.overrides import Override
from accesspoint.rollout import RolloutSpec, RolloutState
from accesspoint.traffic import TrafficPolicy
from placement.models import PlacementDecision, PlacementSpec

# The kind names of accesspoint.kinds.TEMPLATE_KINDS (Gateway once: the apiVersion picks Istio's or the
# Gateway API's). An unknown kind is refused by the hub CRD's enum.
TemplateKind = Literal[
    "Service", "Gateway", "VirtualService", "DestinationRule", "ServiceEntry", "WorkloadEntry", "Sidecar",
    "EnvoyFilter", "AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication", "Telemetry",
    "HTTPRoute", "GRPCRoute", "ReferenceGrant",
]
assert TemplateKind.__args__ == TEMPLATE_KIND_NAMES  # type: ignore[attr-defined]


class TemplateMetadata(ApiModel):
    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = Field(default=None, min_length=1, max_length=63)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class TemplateObject(ApiModel):
    """One object of the bundle. `spec` is free-form: the member's own schema validates it."""

    api_version: str = Field(
        alias="apiVersion",
        min_length=1,
        description="Picks the API group where kinds share a name: networking.istio.io/v1 Gateway is Istio's, "
        "gateway.networking.k8s.io/v1 Gateway the Gateway API's.",
    )
    kind: TemplateKind
    metadata: TemplateMetadata
    spec: dict[str, Any] = Field(default_factory=dict, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})


class PlacementRef(ApiModel):
    name: str = Field(min_length=1)


class AccessPointSpec(ApiModel):
    template: list[TemplateObject] = Field(min_length=1, max_length=64)
    placement: PlacementSpec | None = None
    placement_ref: PlacementRef | None = Field(default=None, alias="placementRef")
    deletion_policy: Literal["Delete", "Orphan"] = Field(default="Delete", alias="deletionPolicy")
    adopt_existing: bool = Field(
        default=False,
        alias="adoptExisting",
        description="Take over pre-existing member objects with the same name (otherwise: Conflict).",
    )
    allow_envoy_filter: bool = Field(
        default=False,
        alias="allowEnvoyFilter",
        description="DANGEROUS: allow EnvoyFilter objects in the template. An EnvoyFilter patches the Envoy "
        "configuration istiod generates, below every API Istio validates: a wrong patch can make the gateway "
        "reject its whole configuration (for every AccessPoint on it) and patches break silently across Istio "
        "upgrades. Without it an EnvoyFilter in spec.template is refused (condition Accepted=False).",
    )
    overrides: list[Override] = Field(default_factory=list, max_length=256)
    traffic: TrafficPolicy | None = None
    rollout: RolloutSpec | None = None


ClusterState = Literal["Applied", "Progressing", "Failed", "Conflict", "Unknown", "Removing"]


class ClusterStatus(ApiModel):
    name: str
    region: str = ""
    zone: str = ""
    state: ClusterState
    revision: str | None = None
    objects: int = 0
    vip: str | None = None
    fqdn: str | None = None
    certificate: str | None = None
    route_configured: bool | None = Field(
        default=None, alias="routeConfigured",
        description="Istio's verdict: every gateway proxy the AccessPoint's Gateways select was pushed its "
        "routes and ACKed them (null: not evaluated, or istiod cannot be asked; see routeMessage)")
    route_message: str | None = Field(
        default=None, alias="routeMessage",
        description="Why routeConfigured is what it is; absent when routes are not evaluated here (the member "
        "has no spec.istiod, or the AccessPoint has no Gateway)")
    gateway_proxies: str | None = Field(default=None, alias="gatewayProxies",
                                        description="gateway proxies with the routes ACKed / selected")
    istio_messages: list[IstioMessage] | None = Field(
        default=None, alias="istioMessages",
        description="Istio analyzer messages (status.validationMessages) current for the objects' generation")
    no_current_verdict: list[str] | None = Field(
        default=None, alias="noCurrentVerdict",
        description="Objects whose analyzer messages are for an older generation (not reported)")
    remotes: list[RemoteSync] | None = Field(
        default=None, description="Zone target: the sync state of this primary's istiod with each Istio remote")
    endpoints: list[HostEndpoints] | None = Field(
        default=None, description="Endpoints of each host the gateway routes to, known to this cluster's istiod, "
        "per cluster ID (the zone's remotes included); absent when istiod is not read")
    endpoints_missing: list[str] | None = Field(
        default=None, alias="endpointsMissing",
        description="Routed hosts of which this cluster's istiod knows no endpoint: the zone is not ready")
    last_error: str | None = Field(default=None, alias="lastError")
    pending: str | None = Field(
        default=None, description="writes this cluster has not confirmed yet (it is slow, or does not answer: "
        "they are held until it does), e.g. `3 to create, 1 to update`; absent when there are none")
    pending_since: str | None = Field(default=None, alias="pendingSince",
                                      description="since when those writes wait (RFC 3339)")
    probe: ProbeRecord | None = Field(
        default=None, description="the rollout's HTTP probe of this cluster on the revision it carries "
        "(spec.rollout.healthChecks.http): last result (code, latency), consecutive counts, verdict",
    )

    @property
    def routes_evaluated(self) -> bool:
        return self.route_message is not None


class AccessPointSummary(ApiModel):
    """Pre-formatted strings for printer columns (kubectl columns cannot compute)."""

    clusters: str = "0/0"
    vips: str = ""
    phase: str = ""
    routes: str | None = Field(default=None, description="clusters with routes configured / evaluated")
    endpoints: str | None = Field(default=None, description="clusters whose istiod knows an endpoint of every "
                                  "routed host / clusters where endpoints are read")


class AccessPointStatus(ApiModel):
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    revision: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    placement: PlacementDecision | None = None
    clusters: list[ClusterStatus] = Field(default_factory=list)
    summary: AccessPointSummary | None = None
    fqdn: str | None = None
    certificate: str | None = None
    rollout: RolloutState | None = None


class AccessPoint(Resource):
    crd = CRDInfo(
        kind="AccessPoint",
        plural="accesspoints",
        singular="accesspoint",
        short_names=("ap",),
        printer_columns=(
            PrinterColumn("Clusters", ".status.summary.clusters", description="ready/placed"),
            PrinterColumn("Phase", ".status.summary.phase"),
            PrinterColumn("VIPs", ".status.summary.vips"),
            PrinterColumn("Rollout", ".status.rollout.phase", description="rollout phase"),
            PrinterColumn("Wave", ".status.rollout.wave", description="current wave, e.g. 1/3 zone-a"),
            PrinterColumn("Updated", ".status.rollout.updated", description="placed clusters on the revision"),
            PrinterColumn("Reason", ".status.rollout.reason"),
            PrinterColumn("Revision", ".status.revision"),
            PrinterColumn("Routes", ".status.summary.routes",
                          description="clusters whose gateways ACKed the routes / clusters where evaluated"),
            PrinterColumn("Endpoints", ".status.summary.endpoints",
                          description="clusters (zones) whose istiod knows an endpoint of every routed host / read"),
            PrinterColumn("Stable", ".status.rollout.stable", priority=1),
            PrinterColumn("FQDN", ".status.fqdn"),
            PrinterColumn("Cert", ".status.certificate"),
            AGE,
        ),
        root_rules=(
            {
                "rule": "self.metadata.name.size() <= 63",
                "message": "metadata.name must be at most 63 characters (it is used in member labels)",
            },
            {
                "rule": "!(has(self.spec.placement) && has(self.spec.placementRef))",
                "message": "spec.placement and spec.placementRef are mutually exclusive",
            },
        ),
    )
    kind: str = "AccessPoint"
    spec: AccessPointSpec
    status: AccessPointStatus | None = None
