"""Pure cluster selection: (placement spec, cluster facts) -> decision, deterministic and order-free.

Imports placement.models only.
"""

from __future__ import annotations

from collections.abc import Iterable

from placement.models import ClusterDecision, ClusterFacts, PlacementDecision, PlacementSpec


def select(spec: PlacementSpec, clusters: Iterable[ClusterFacts]) -> PlacementDecision:
    """Select clusters by explicit name and/or label selector; every cluster gets a reason.

    Readiness does not deselect: a cluster that is placed but unreachable stays placed, so an
    outage never turns into a removal.
    """
    selected: list[ClusterDecision] = []
    rejected: list[ClusterDecision] = []
    names = set(spec.cluster_names)
    for cluster in sorted(clusters, key=lambda c: c.name):
        if names and cluster.name not in names:
            rejected.append(ClusterDecision(cluster=cluster.name, reason="not in clusterNames"))
            continue
        if spec.cluster_selector is not None and not spec.cluster_selector.matches(cluster.selector_labels):
            rejected.append(ClusterDecision(cluster=cluster.name, reason="clusterSelector does not match"))
            continue
        why = "named in clusterNames" if names else "matches clusterSelector"
        if not names and spec.cluster_selector is None:
            why = "all clusters (no selector)"
        selected.append(ClusterDecision(cluster=cluster.name, reason=why))
    return PlacementDecision(selected=selected, rejected=rejected)
