"""MemberCluster and PlacementPolicy API models, ClusterFacts (what placement decides over) and
PlacementDecision (what it decides).

Owns the placement vocabulary: cluster facts (incl. taints and the Deployments a member runs, for
`followWorkload`) and its Istio mesh role (`spec.mesh`: its own control plane or a remote of another
member; judged in placement.mesh), the PlacementSpec shape used inline by AccessPoints and as a
PlacementPolicy's spec (target Cluster or Zone), tolerations, spread, and the decision with a reason per
cluster.

Imports only accesspoint.meta (shared API primitives). Pure data, no I/O.
"""

from __future__ import annotations

from collections import Counter
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
    SecretKeyRef,
)

REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"


class KubeconfigSecretRef(SecretKeyRef):
    """The key of a hub Secret that holds a member's kubeconfig."""

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


class MeshRole(ApiModel):
    """This member's place in the Istio mesh: its own control plane (istiod reading config from this
    cluster's API server: single cluster or multi-primary), or an Istio remote whose Services, Pods and
    Nodes are read by another member's istiod (through a remote secret) and whose own Istio config is
    ignored by Istio (istiod reads config only from its own cluster)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "(has(self.role) && self.role == 'Remote') == has(self.primary)",
                 "message": "primary is set exactly when role is Remote"}
            ]
        }
    )
    role: Literal["Primary", "Remote"] = Field(
        default="Primary",
        description="Primary (default): the cluster runs its own istiod and gateway. Remote: an Istio remote "
        "of `primary`; Istio kinds are never written here (a zone target writes them to the primary).")
    primary: str | None = Field(
        default=None, min_length=1, max_length=253,
        description="Remote only: the MemberCluster running the istiod that reads this cluster (the zone's "
        "primary). It must be a registered member with its own control plane.")

    @model_validator(mode="after")
    def _primary_iff_remote(self) -> MeshRole:
        if (self.role == "Remote") != (self.primary is not None):
            raise ValueError("spec.mesh.primary is set exactly when spec.mesh.role is Remote")
        return self


class MemberClusterSpec(ApiModel):
    kubeconfig_secret_ref: KubeconfigSecretRef = Field(alias="kubeconfigSecretRef")
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
    mesh: MeshRole | None = Field(
        default=None, description="The cluster's Istio mesh role. Absent: its own control plane (role Primary).")

    @property
    def mesh_primary(self) -> str | None:
        """The member whose istiod reads this one (role Remote), else None (its own control plane)."""
        return self.mesh.primary if self.mesh is not None and self.mesh.role == "Remote" else None


class MemberClusterStatus(ApiModel):
    conditions: list[Condition] = Field(default_factory=list)
    kubernetes_version: str | None = Field(default=None, alias="kubernetesVersion")
    istio_crds: bool | None = Field(default=None, alias="istioCRDs")
    last_probe_time: str | None = Field(default=None, alias="lastProbeTime")
    ready: str | None = Field(default=None, description="Ready condition status, for printing")
    mesh_role: str | None = Field(
        default=None, alias="meshRole",
        description="For printing: Primary, Remote(<primary>), or Invalid(<reason>) (see the MeshRole condition)")
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
            PrinterColumn("Mesh", ".status.meshRole", description="Istio role: Primary or Remote(<primary>)"),
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
    # Istio role: the member whose istiod reads this one (an Istio remote), None for its own
    # control plane. mesh_problem: why the declared role cannot be used (placement.mesh), if so.
    mesh_primary: str | None = None
    mesh_problem: str | None = None

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
        default=None, alias="followWorkload",
        description="Place only where this Deployment exists (target Zone: in any cluster of the zone, "
        "remotes included).",
    )
    target: Literal["Cluster", "Zone"] = Field(
        default="Cluster",
        description="Cluster (default): every selected cluster gets the bundle. Zone: the unit is an "
        "availability zone's control domain (a cluster with its own control plane and its Istio "
        "remotes): one bundle per selected zone, written to its primary (${cluster} = the primary); "
        "the criteria are matched against the primary, followWorkload against every cluster of the "
        "zone, spread and waves count zones.",
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
    "IstioRemote",
    "MeshRoleInvalid",
]


class ClusterDecision(ApiModel):
    cluster: str
    reason: str
    code: DecisionCode | None = None
    region: str | None = None
    zone: str | None = None
    remotes: list[str] | None = Field(
        default=None, description="target Zone: the Istio remotes of this primary (the rest of the zone)")


# At most this many clusters not placed are listed in a status (KubeFleet's scheduler keeps 20 too): an
# AccessPoint placed on one zone of a 1,000-cluster fleet otherwise carries 970 of them in every status
# write, in the hub's storage and in every replica's memory, for one reader in a thousand.
REJECTED_SHOWN = 20

# The codes listed first when the list is shortened: clusters the criteria would take but for their
# state (what a reader asking "why not there?" is after), before those the criteria leave out.
_TELLING_CODES: tuple[str, ...] = ("NotReady", "Tainted", "SpreadLimit", "NoWorkload", "WorkloadUnknown",
                                   "MeshRoleInvalid", "Excluded", "IstioRemote")


# The codes the hub's facts alone decide: the AccessPoint's spec against a MemberCluster's name, labels,
# region and zone. A member's own state (probes, lists, its Deployments, Istio) cannot change them.
HUB_SIDE_CODES: frozenset[str] = frozenset({"Excluded", "NotNamed", "SelectorMismatch", "WrongRegion", "WrongZone"})


class PlacementDecision(ApiModel):
    selected: list[ClusterDecision] = Field(default_factory=list)
    rejected: list[ClusterDecision] = Field(
        default_factory=list,
        description=f"Clusters not placed, each with why. In a status at most {REJECTED_SHOWN}: those the "
        "criteria would take but for their state (not ready, tainted, over the spread limit, no workload) "
        "first, then those the criteria leave out, by name; rejectedTotal and rejectedByCode then count "
        "them all.")
    rejected_total: int | None = Field(
        default=None, alias="rejectedTotal",
        description="How many clusters were not placed, set when `rejected` lists only some of them.")
    rejected_by_code: dict[str, int] | None = Field(
        default=None, alias="rejectedByCode",
        description="The clusters not placed counted by code (e.g. NotNamed: 960), set when `rejected` lists "
        "only some of them.")
    unknown_clusters: list[str] = Field(
        default_factory=list,
        alias="unknownClusters",
        description="Names in clusterNames/excludeClusters that are no registered MemberCluster.",
    )

    @property
    def names(self) -> list[str]:
        return [d.cluster for d in self.selected]

    def hinges_on(self) -> frozenset[str]:
        """The clusters whose own state this decision can turn on: the placed ones, and those not placed for
        a reason other than the hub-side criteria (`HUB_SIDE_CODES`): not ready, tainted, over the spread
        limit, no workload, Istio remotes. Any other cluster becoming ready, unreachable or relisted leaves
        the decision, and what is rendered from it for the placed clusters, as it is. Call it on the whole
        decision, not on a `shortened` one."""
        return frozenset([d.cluster for d in self.selected]
                         + [d.cluster for d in self.rejected if (d.code or "") not in HUB_SIDE_CODES])

    def shortened(self, limit: int = REJECTED_SHOWN) -> PlacementDecision:
        """The decision as a status shows it: at most `limit` clusters not placed, the telling ones
        first (`_TELLING_CODES`), then by name, listed by name; the rest counted (itself when none is
        left out)."""
        if len(self.rejected) <= limit:
            return self
        rank = {code: i for i, code in enumerate(_TELLING_CODES)}
        kept = sorted(self.rejected, key=lambda d: (rank.get(d.code or "", len(rank)), d.cluster))[:limit]
        codes = Counter(d.code or "Rejected" for d in self.rejected)
        return self.model_copy(update={"rejected": sorted(kept, key=lambda d: d.cluster),
                                       "rejected_total": len(self.rejected),
                                       "rejected_by_code": dict(sorted(codes.items()))})


def not_placed_beyond(placement: dict[str, object]) -> str:
    """What a status's shortened `rejected` list leaves out, from its wire form: `and 950 more not placed
    (NotNamed 940, NotReady 10)`, or "" when it lists them all."""
    total, codes, listed = placement.get("rejectedTotal"), placement.get("rejectedByCode"), placement.get("rejected")
    if not isinstance(total, int) or not isinstance(listed, list) or total <= len(listed):
        return ""
    counts = f" ({', '.join(f'{code} {n}' for code, n in codes.items())})" if isinstance(codes, dict) and codes else ""
    return f"and {total - len(listed)} more not placed{counts}"


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
