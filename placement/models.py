"""MemberCluster and PlacementPolicy API models, ClusterFacts (what placement decides over) and
PlacementDecision (what it decides).

Owns the placement vocabulary: cluster facts (incl. taints and the Deployments a member runs, for
`followWorkload`), the PlacementSpec shape used inline by AccessPoints and as a PlacementPolicy's
spec, tolerations, spread, and the decision with a reason per cluster.

Imports only accesspoint.meta (shared API primitives). Pure data, no I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from accesspoint.meta import (
    AGE,
    ApiModel,
    Condition,
    CRDInfo,
    LabelSelector,
    PrinterColumn,
    Resource,
)

REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"


class SecretKeyRef(ApiModel):
    name: str = Field(min_length=1)
    namespace: str = Field(default="meshfed-system", min_length=1)
    key: str = Field(default="kubeconfig", min_length=1)


class Taint(ApiModel):
    key: str = Field(min_length=1)
    value: str = ""
    effect: Literal["NoSchedule", "NoExecute"] = "NoSchedule"


class GatewayPods(ApiModel):
    """The member's gateway pods, whose Envoy admin port the hub reads through the member API
    server's pod proxy (`/api/v1/namespaces/NS/pods/POD:PORT/proxy/stats`), summed over the pods."""

    namespace: str = Field(default="istio-system", min_length=1)
    selector: dict[str, str] = Field(
        default_factory=lambda: {"istio": "ingressgateway"}, description="pod labels (matchLabels)"
    )
    port: int = Field(default=15000, ge=1, le=65535, description="the Envoy admin port of the pods")


class GatewayStats(ApiModel):
    """Where the hub reads the member's gateway Envoy stats (used by Analysis gates): exactly one of
    `url` (an Envoy admin base URL the hub reaches directly, e.g. the local fleet's) or `pods`."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.url) != has(self.pods)", "message": "set exactly one of url and pods"}
            ]
        }
    )

    url: str | None = Field(default=None, pattern=r"^https?://[^/\s]+/?$",
                            description="Envoy admin base URL, e.g. http://127.0.0.1:15000")
    pods: GatewayPods | None = None

    @model_validator(mode="after")
    def _one_source(self) -> GatewayStats:
        if (self.url is None) == (self.pods is None):
            raise ValueError("spec.gatewayStats: set exactly one of url and pods")
        return self


class IstiodServiceRef(ApiModel):
    """istiod's Service in the member, reached through the member API server's service proxy
    (`/api/v1/namespaces/<namespace>/services/<name>:<port>/proxy/debug/...`, with the member kubeconfig's
    identity; deploy/member grants services/proxy on this Service only)."""

    namespace: str = Field(default="istio-system", min_length=1, max_length=63)
    name: str = Field(default="istiod", min_length=1, max_length=63)
    port: int = Field(default=15014, ge=1, le=65535, description="istiod's port serving /debug (monitoring: 15014)")


class IstiodAccess(ApiModel):
    """How the hub reads the member istiod's debug API (/debug/syncz, /debug/config_dump) for routeConfigured.

    Exactly one of url or service. Without spec.istiod, routeConfigured is not evaluated for this member."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.url) != has(self.service)", "message": "set exactly one of url or service"}
            ]
        }
    )
    url: str | None = Field(
        default=None, pattern=r"^https?://[^/\s]+/?$",
        description="Direct base URL of istiod's HTTP debug server, e.g. http://127.0.0.1:15014 (local fleet)")
    service: IstiodServiceRef | None = None

    @model_validator(mode="after")
    def _one_of(self) -> IstiodAccess:
        if (self.url is None) == (self.service is None):
            raise ValueError("spec.istiod needs exactly one of url or service")
        return self


class MemberClusterSpec(ApiModel):
    kubeconfig_secret_ref: SecretKeyRef = Field(alias="kubeconfigSecretRef")
    region: str = Field(min_length=1)
    zone: str = Field(min_length=1)
    taints: list[Taint] = Field(default_factory=list)
    istiod: IstiodAccess | None = Field(
        default=None, description="Where the hub asks this member's istiod whether routes were pushed and ACKed")
    gateway_stats: GatewayStats | None = Field(
        default=None, alias="gatewayStats",
        description="Where the gateway Envoy's stats are read (Analysis gates). Absent: an Analysis gate "
        "cannot judge this cluster (it waits, then fails after maxWait naming this field).",
    )


class MemberClusterStatus(ApiModel):
    conditions: list[Condition] = Field(default_factory=list)
    kubernetes_version: str | None = Field(default=None, alias="kubernetesVersion")
    istio_crds: bool | None = Field(default=None, alias="istioCRDs")
    last_probe_time: str | None = Field(default=None, alias="lastProbeTime")
    ready: str | None = Field(default=None, description="Ready condition status, for printing")
    latency_ms: int | None = Field(
        default=None, alias="probeLatencyMs",
        description="how long the member took to answer its probe, rounded to 500 ms, while it is slow "
        "(Reachable reason Degraded: it keeps receiving writes, at its pace); absent when it answers promptly")
    cluster_uid: str | None = Field(
        default=None, alias="clusterUID",
        description="the member's identity: its kube-system namespace UID. A different one at the same address "
        "(a rebuilt or replaced cluster) drops the hub's cache of the member, which is relisted and repaired")
    last_cache_reset: str | None = Field(
        default=None, alias="lastCacheReset",
        description="when and why the hub last dropped its cache of this member (another identity, "
        "resourceVersions going backwards); absent when it never did")


class MemberCluster(Resource):
    crd = CRDInfo(
        kind="MemberCluster",
        plural="memberclusters",
        singular="membercluster",
        scope="Cluster",
        short_names=("mc",),
        printer_columns=(
            PrinterColumn("Region", ".spec.region"),
            PrinterColumn("Zone", ".spec.zone"),
            PrinterColumn("Ready", ".status.ready"),
            PrinterColumn("Version", ".status.kubernetesVersion"),
            PrinterColumn("Istio", ".status.istioCRDs", "boolean"),
            AGE,
        ),
    )
    kind: str = "MemberCluster"
    spec: MemberClusterSpec
    status: MemberClusterStatus | None = None


class WorkloadFact(ApiModel):
    """One Deployment seen in a member cluster (only what followWorkload needs)."""

    namespace: str = Field(min_length=1)
    name: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)


class ClusterFacts(ApiModel):
    """What the hub knows of one member at a moment: the input to placement and rendering."""

    name: str
    region: str
    zone: str
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[Taint] = Field(default_factory=list)
    # Ready: the cluster answered its last probe and serves the Istio CRDs.
    ready: bool = False
    # Reachable=False means "we do not know": never a reason to remove anything from it.
    reachable: bool | None = None
    # Deployments in the member (the caller may pass only those relevant to followWorkload).
    # None means "not known" (e.g. unreachable): followWorkload then keeps what was placed before
    # and places nothing new.
    workloads: list[WorkloadFact] | None = None

    @property
    def selector_labels(self) -> dict[str, str]:
        """Labels a selector sees: the MemberCluster's labels plus region/zone and the name."""
        return {
            **self.labels,
            REGION_LABEL: self.region,
            ZONE_LABEL: self.zone,
            "meshfed.io/cluster-name": self.name,
        }


class Toleration(ApiModel):
    """A core/v1 Toleration, matched against MemberCluster taints with Kubernetes semantics."""

    key: str | None = Field(default=None, description="Empty with operator Exists tolerates every taint.")
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = ""
    effect: Literal["NoSchedule", "NoExecute"] | None = Field(
        default=None, description="Empty tolerates every effect."
    )

    def tolerates(self, taint: Taint) -> bool:
        if self.effect is not None and self.effect != taint.effect:
            return False
        if self.operator == "Exists":
            return self.key in (None, "", taint.key)
        return self.key == taint.key and self.value == taint.value


class Spread(ApiModel):
    """Caps on how many clusters are chosen; ties are broken deterministically (see select)."""

    per_zone: int | None = Field(default=None, ge=1, alias="perZone")
    max_clusters: int | None = Field(default=None, ge=1, alias="maxClusters")


class WorkloadRef(ApiModel):
    """A Deployment to follow: by name, or by label selector, in one namespace."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.name) != has(self.selector)",
                    "message": "set exactly one of name or selector",
                }
            ]
        }
    )
    namespace: str = Field(min_length=1, max_length=63)
    name: str | None = Field(default=None, min_length=1, max_length=253)
    selector: LabelSelector | None = None

    @model_validator(mode="after")
    def _one_of(self) -> WorkloadRef:
        if (self.name is None) == (self.selector is None):
            raise ValueError("followWorkload needs exactly one of name or selector")
        return self

    def found_in(self, workloads: list[WorkloadFact]) -> bool:
        for w in workloads:
            if w.namespace != self.namespace:
                continue
            if self.name is not None and w.name == self.name:
                return True
            if self.selector is not None and self.selector.matches(w.labels):
                return True
        return False

    def describe(self) -> str:
        if self.name is not None:
            return f"Deployment {self.namespace}/{self.name}"
        return f"a Deployment in {self.namespace} matching the selector"


class PlacementSpec(ApiModel):
    """Which member clusters an AccessPoint goes to (inline, or the spec of a PlacementPolicy).

    Every set criterion must hold (AND). An empty spec selects every ready cluster.
    """

    cluster_names: list[str] = Field(default_factory=list, alias="clusterNames")
    cluster_selector: LabelSelector | None = Field(default=None, alias="clusterSelector")
    regions: list[str] = Field(default_factory=list)
    zones: list[str] = Field(default_factory=list)
    exclude_clusters: list[str] = Field(
        default_factory=list, alias="excludeClusters", description="Never placed here, whatever else matches."
    )
    tolerations: list[Toleration] = Field(default_factory=list)
    spread: Spread | None = None
    follow_workload: WorkloadRef | None = Field(
        default=None, alias="followWorkload", description="Place only where this Deployment exists."
    )


DecisionCode = Literal[
    # selected
    "Matched",
    "Kept",
    # rejected
    "Excluded",
    "NotNamed",
    "SelectorMismatch",
    "WrongRegion",
    "WrongZone",
    "Tainted",
    "NoWorkload",
    "WorkloadUnknown",
    "NotReady",
    "SpreadLimit",
]


class ClusterDecision(ApiModel):
    cluster: str
    reason: str
    code: DecisionCode | None = None
    region: str | None = None
    zone: str | None = None


class PlacementDecision(ApiModel):
    selected: list[ClusterDecision] = Field(default_factory=list)
    rejected: list[ClusterDecision] = Field(default_factory=list)
    unknown_clusters: list[str] = Field(
        default_factory=list,
        alias="unknownClusters",
        description="Names in clusterNames/excludeClusters that are no registered MemberCluster.",
    )

    @property
    def names(self) -> list[str]:
        return [d.cluster for d in self.selected]


class PlacementSummary(ApiModel):
    """Pre-formatted strings for printer columns."""

    selected: str = "0/0"
    clusters: str = ""


class PlacementPolicyStatus(ApiModel):
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    conditions: list[Condition] = Field(default_factory=list)
    decision: PlacementDecision | None = None
    summary: PlacementSummary | None = None


class PlacementPolicy(Resource):
    crd = CRDInfo(
        kind="PlacementPolicy",
        plural="placementpolicies",
        singular="placementpolicy",
        short_names=("pp",),
        printer_columns=(
            PrinterColumn("Selected", ".status.summary.selected", description="selected/known clusters"),
            PrinterColumn("Clusters", ".status.summary.clusters"),
            PrinterColumn("Workload", ".spec.followWorkload.name", priority=1),
            AGE,
        ),
    )
    kind: str = "PlacementPolicy"
    spec: PlacementSpec
    status: PlacementPolicyStatus | None = None
