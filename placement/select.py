"""Pure cluster selection: (placement spec, cluster facts, previous decision) -> decision.

Owns the placement rules. Deterministic and stable under reordering of the clusters; no clock, no
I/O. Imports placement.models, placement.mesh and accesspoint.meta only.

Rules, in the order they are checked (the first failing one is the rejection reason):
  1. excludeClusters         -> Excluded
  2. clusterNames            -> NotNamed
  3. clusterSelector         -> SelectorMismatch
  4. regions / zones         -> WrongRegion / WrongZone
  5. taints (tolerations)    -> Tainted. Kubernetes semantics: an untolerated NoExecute taint removes
                                a cluster, an untolerated NoSchedule taint only stops new placements.
  6. followWorkload          -> NoWorkload (the Deployment is known to be absent) / WorkloadUnknown
  7. readiness               -> NotReady
  8. spread (perZone, maxClusters) -> SpreadLimit

Target Zone (spec.target): the unit is a zone's control domain (placement.mesh.domains: a member with its
own control plane and its Istio remotes). The rules above are checked on the primary (its name, labels,
region, zone, taints, readiness), except followWorkload, which holds when the Deployment runs in any
cluster of the domain (remotes included); the selected entry is the primary (where the bundle is written)
and lists the remotes. Remotes are rejected as IstioRemote, members with an invalid mesh role as
MeshRoleInvalid. Spread counts domains (perZone: one primary per zone and domain anyway).

Stability rules (nothing moves because of an outage):
  * a cluster in `previous` that is not ready or not reachable stays selected (code Kept) as long
    as the hub-side facts (labels, region, zone, names, exclusions, NoExecute taints) still match;
    member-side facts (readiness, workloads) of an unreachable cluster are not evaluated;
  * a not-ready cluster that was never selected is not newly chosen;
  * spread prefers clusters already selected, then balances across zones round-robin, zones ordered
    by (region, zone) and clusters by name: adding a cluster never displaces a placed one.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Iterable

from accesspoint.meta import Condition
from placement.mesh import Domain, domains
from placement.models import (
    HUB_SIDE_CODES,
    ClusterDecision,
    ClusterFacts,
    DecisionCode,
    PlacementDecision,
    PlacementSpec,
    PlacementSummary,
    WorkloadFact,
)


@functools.lru_cache(maxsize=1024)
def _fmt(values: tuple[str, ...]) -> str:
    """The values sorted, comma-separated; kept, as the same spec's list is written once per cluster it
    leaves out (970 times an AccessPoint on one zone of 1,000 clusters, each reconcile: a quarter of
    `select`'s time)."""
    return ", ".join(sorted(values))


def _evaluate(
    spec: PlacementSpec, cluster: ClusterFacts, was_selected: bool
) -> tuple[bool, DecisionCode, str]:
    """(candidate?, code, reason) for one cluster, before spread limits."""
    name = cluster.name
    if name in spec.exclude_clusters:
        return False, "Excluded", "listed in excludeClusters"
    why: list[str] = []
    kept: list[str] = []
    if spec.cluster_names:
        if name not in spec.cluster_names:
            return False, "NotNamed", "not in clusterNames"
        why.append("named in clusterNames")
    if spec.cluster_selector is not None:
        if not spec.cluster_selector.matches(cluster.selector_labels):
            return False, "SelectorMismatch", "clusterSelector does not match its labels"
        why.append("matches clusterSelector")
    if spec.regions:
        if cluster.region not in spec.regions:
            return False, "WrongRegion", f"region {cluster.region} is not one of [{_fmt(tuple(spec.regions))}]"
        why.append(f"region {cluster.region}")
    if spec.zones:
        if cluster.zone not in spec.zones:
            return False, "WrongZone", f"zone {cluster.zone} is not one of [{_fmt(tuple(spec.zones))}]"
        why.append(f"zone {cluster.zone}")
    for taint in sorted(cluster.taints, key=lambda t: (t.key, t.value, t.effect)):
        if any(tol.tolerates(taint) for tol in spec.tolerations):
            continue
        text = f"taint {taint.key}={taint.value}:{taint.effect} not tolerated"
        if taint.effect == "NoExecute" or not was_selected:
            return False, "Tainted", text
        kept.append(f"{text} (NoSchedule keeps existing placements)")
    reachable = cluster.reachable is True
    if spec.follow_workload is not None:
        ref = spec.follow_workload
        if was_selected and (not reachable or cluster.workloads is None):
            kept.append(f"{ref.describe()} not verifiable while the cluster is unreachable")
        elif cluster.workloads is None:
            return False, "WorkloadUnknown", f"not known whether {ref.describe()} runs here"
        elif not ref.found_in(cluster.workloads):
            return False, "NoWorkload", f"no {ref.describe()}"
        else:
            why.append(f"runs {ref.describe()}")
    if not cluster.ready:
        state = "unreachable" if cluster.reachable is False else "not ready"
        if not was_selected:
            return False, "NotReady", f"cluster is {state} and was not placed before"
        kept.append(f"cluster is {state}; kept because an outage never removes a placement")
    if not why:
        why.append("all clusters (no criteria)")
    if kept:
        return True, "Kept", "; ".join(why + kept)
    return True, "Matched", "; ".join(why)


def _domain_view(domain: Domain) -> tuple[ClusterFacts, list[str]]:
    """The primary's facts with the workloads of the whole domain (None when one cluster's are unknown
    and no known cluster has any), and the names of the remotes."""
    known: list[WorkloadFact] = []
    unknown = False
    for c in domain.clusters:
        if c.workloads is None:
            unknown = True
        else:
            known.extend(c.workloads)
    workloads = None if unknown and not known else known
    return domain.primary.model_copy(update={"workloads": workloads}), [r.name for r in domain.remotes]


def _zone_reason(spec: PlacementSpec, domain: Domain, reason: str, code: DecisionCode) -> str:
    remotes = ", ".join(r.name for r in domain.remotes) or "none"
    where = ""
    # Where the Deployment runs, only when the zone is not left out by the hub's facts alone: a reason
    # there must not change with a member's own state (PlacementDecision.hinges_on).
    if spec.follow_workload is not None and code not in HUB_SIDE_CODES:
        found = [c.name for c in domain.clusters
                 if c.workloads is not None and spec.follow_workload.found_in(c.workloads)]
        if found:
            where = f" (in {', '.join(found)})"
    return f"zone {domain.primary.zone} (primary {domain.primary.name}, remotes {remotes}): {reason}{where}"


def _zone_units(
    spec: PlacementSpec, by_name: dict[str, ClusterFacts]
) -> tuple[dict[str, ClusterFacts], dict[str, Domain], list[ClusterDecision]]:
    """Target Zone: the primaries to evaluate (with their domain's workloads), the domains, and the
    rejections of every cluster that is no domain's primary."""
    doms = domains(by_name.values())
    units = {name: _domain_view(d)[0] for name, d in doms.items()}
    rejected = []
    for name, c in sorted(by_name.items()):
        if name in doms:
            continue
        if c.mesh_problem is not None:
            code: DecisionCode = "MeshRoleInvalid"
            reason = f"its mesh role is invalid: {c.mesh_problem}"
        else:
            code, reason = "IstioRemote", (f"Istio remote of {c.mesh_primary}: the zone is placed through its "
                                           f"primary {c.mesh_primary}")
        rejected.append(ClusterDecision(cluster=name, reason=reason, code=code, region=c.region, zone=c.zone))
    return units, doms, rejected


def select(
    spec: PlacementSpec,
    clusters: Iterable[ClusterFacts],
    previous: PlacementDecision | None = None,
) -> PlacementDecision:
    """Decide where an AccessPoint goes; every known cluster gets a reason (see module docstring)."""
    by_name: dict[str, ClusterFacts] = {}
    for c in clusters:
        # Duplicate names should not happen; keep the decision independent of input order anyway.
        if c.name not in by_name or c.model_dump_json() < by_name[c.name].model_dump_json():
            by_name[c.name] = c
    before = set(previous.names) if previous is not None else set()
    candidates: list[tuple[ClusterFacts, DecisionCode, str]] = []
    rejected: list[ClusterDecision] = []
    units: dict[str, ClusterFacts] = by_name
    doms: dict[str, Domain] = {}
    if spec.target == "Zone":
        units, doms, rejected = _zone_units(spec, by_name)
    for name in sorted(units):
        cluster = units[name]
        ok, code, reason = _evaluate(spec, cluster, name in before)
        if name in doms:
            reason = _zone_reason(spec, doms[name], reason, code)
        if ok:
            candidates.append((cluster, code, reason))
        else:
            rejected.append(
                ClusterDecision(
                    cluster=name, reason=reason, code=code, region=cluster.region, zone=cluster.zone
                )
            )

    selected: list[ClusterDecision] = []
    spread = spec.spread
    if spread is None or (spread.per_zone is None and spread.max_clusters is None):
        chosen = candidates
    else:
        # Rank: already selected first, then round-robin over zones, then by name.
        per_zone: dict[tuple[str, str], list[tuple[ClusterFacts, DecisionCode, str]]] = defaultdict(list)
        for cand in candidates:
            per_zone[(cand[0].region, cand[0].zone)].append(cand)
        ranked: list[tuple[tuple[bool, int, str, str, str], tuple[ClusterFacts, DecisionCode, str]]] = []
        for (region, zone), members in per_zone.items():
            members.sort(key=lambda m: (m[0].name not in before, m[0].name))
            for i, m in enumerate(members):
                ranked.append(((m[0].name not in before, i, region, zone, m[0].name), m))
        ranked.sort(key=lambda r: r[0])
        zone_count: Counter[tuple[str, str]] = Counter()
        chosen = []
        for _, (cluster, code, reason) in ranked:
            zone_key = (cluster.region, cluster.zone)
            if spread.per_zone is not None and zone_count[zone_key] >= spread.per_zone:
                why = (
                    f"over the spread limit: perZone {spread.per_zone} already reached in zone {cluster.zone}"
                )
            elif spread.max_clusters is not None and len(chosen) >= spread.max_clusters:
                why = f"over the spread limit: maxClusters {spread.max_clusters} already reached"
            else:
                zone_count[zone_key] += 1
                chosen.append((cluster, code, reason))
                continue
            rejected.append(
                ClusterDecision(
                    cluster=cluster.name,
                    reason=why,
                    code="SpreadLimit",
                    region=cluster.region,
                    zone=cluster.zone,
                )
            )
        chosen.sort(key=lambda m: m[0].name)
        rejected.sort(key=lambda d: d.cluster)
    for cluster, code, reason in chosen:
        remotes = [r.name for r in doms[cluster.name].remotes] if cluster.name in doms else None
        selected.append(
            ClusterDecision(
                cluster=cluster.name, reason=reason, code=code, region=cluster.region, zone=cluster.zone,
                remotes=remotes,
            )
        )
    rejected.sort(key=lambda d: d.cluster)
    unknown = sorted((set(spec.cluster_names) | set(spec.exclude_clusters)) - set(by_name))
    return PlacementDecision(selected=selected, rejected=rejected, unknown_clusters=unknown)


def added_and_removed(
    previous: PlacementDecision | None, current: PlacementDecision
) -> tuple[list[str], list[str]]:
    """Clusters newly selected and clusters to prune (both sorted)."""
    before = set(previous.names) if previous is not None else set()
    now = set(current.names)
    return sorted(now - before), sorted(before - now)


def decision_condition(decision: PlacementDecision, observed_generation: int | None = None) -> Condition:
    """The `Placed` condition for a decision: False (with a breakdown) when nothing is selected."""
    unknown = ""
    if decision.unknown_clusters:
        unknown = f"; unknown clusters named: {', '.join(decision.unknown_clusters)}"
    if decision.selected:
        names = decision.names
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        return Condition(
            type="Placed",
            status="True",
            reason="Placed",
            message=f"{len(names)} cluster(s): {shown}{unknown}",
            observed_generation=observed_generation,
        )
    counts = Counter(d.code or "Rejected" for d in decision.rejected)
    breakdown = ", ".join(f"{n} {code}" for code, n in sorted(counts.items()))
    message = f"no cluster matches the placement ({breakdown or 'no member clusters'}){unknown}"
    return Condition(
        type="Placed",
        status="False",
        reason="NoMatchingClusters",
        message=message,
        observed_generation=observed_generation,
    )


def summarize(decision: PlacementDecision, limit: int = 5) -> PlacementSummary:
    """Printer-column strings for a PlacementPolicy: `3/50` and the first names."""
    names = decision.names
    total = len(decision.selected) + len(decision.rejected)
    shown = ",".join(names[:limit]) + (f",+{len(names) - limit}" if len(names) > limit else "")
    return PlacementSummary(selected=f"{len(names)}/{total}", clusters=shown)
