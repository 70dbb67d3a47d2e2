"""MemberCluster and placement API models, and ClusterFacts: what placement decides over.

Imports only accesspoint.meta (shared API primitives). Pure data, no I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

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


class MemberClusterSpec(ApiModel):
    kubeconfig_secret_ref: SecretKeyRef = Field(alias="kubeconfigSecretRef")
    region: str = Field(min_length=1)
    zone: str = Field(min_length=1)
    taints: list[Taint] = Field(default_factory=list)


class MemberClusterStatus(ApiModel):
    conditions: list[Condition] = Field(default_factory=list)
    kubernetes_version: str | None = Field(default=None, alias="kubernetesVersion")
    istio_crds: bool | None = Field(default=None, alias="istioCRDs")
    last_probe_time: str | None = Field(default=None, alias="lastProbeTime")
    ready: str | None = Field(default=None, description="Ready condition status, for printing")


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

    @property
    def selector_labels(self) -> dict[str, str]:
        """Labels a selector sees: the MemberCluster's labels plus region/zone and the name."""
        return {
            **self.labels,
            REGION_LABEL: self.region,
            ZONE_LABEL: self.zone,
            "meshfed.io/cluster-name": self.name,
        }


class PlacementSpec(ApiModel):
    """Which member clusters an AccessPoint goes to (inline, or the spec of a PlacementPolicy)."""

    cluster_names: list[str] = Field(default_factory=list, alias="clusterNames")
    cluster_selector: LabelSelector | None = Field(default=None, alias="clusterSelector")


class ClusterDecision(ApiModel):
    cluster: str
    reason: str


class PlacementDecision(ApiModel):
    selected: list[ClusterDecision] = Field(default_factory=list)
    rejected: list[ClusterDecision] = Field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [d.cluster for d in self.selected]
