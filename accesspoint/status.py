"""AccessPoint status summary: per-cluster outcomes + placement -> conditions and columns.

Pure: the caller passes `now` (RFC 3339) for transition times; an unchanged world yields an equal
status, so the writer can skip the write. Ready needs routeConfigured True on every placed cluster
where it is evaluated (ClusterStatus.routeMessage set); the IstioAnalysis condition carries Istio's
analyzer messages per cluster. Imports accesspoint.models, accesspoint.meta.
"""

from __future__ import annotations

from collections.abc import Sequence

from accesspoint.meta import Condition, ConditionStatus, merge_conditions
from accesspoint.models import (
    AccessPointStatus,
    AccessPointSummary,
    ClusterStatus,
)
from placement.models import PlacementDecision


def summarize(
    generation: int,
    revision: str,
    decision: PlacementDecision,
    clusters: Sequence[ClusterStatus],
    now: str,
    previous: AccessPointStatus | None,
    invalid: Sequence[str] = (),
) -> AccessPointStatus:
    gen = generation
    prev_conditions = previous.conditions if previous else []
    placed = set(decision.names)
    entries = sorted(clusters, key=lambda c: c.name)
    # A placed cluster nobody reported on is in an unknown state (never Ready by omission).
    unreported = [ClusterStatus(name=n, state="Unknown") for n in placed - {c.name for c in entries}]
    in_place = sorted([c for c in entries if c.name in placed] + unreported, key=lambda c: c.name)
    applied = [c for c in in_place if c.state == "Applied"]
    failed = [c for c in in_place if c.state in ("Failed", "Conflict")]
    unknown = [c for c in in_place if c.state == "Unknown"]
    removing = [c for c in entries if c.name not in placed]

    def cond(type_: str, status: ConditionStatus, reason: str, message: str) -> Condition:
        return Condition(type=type_, status=status, reason=reason, message=message, observed_generation=gen)

    if invalid:
        # A problem may carry its own reason (accesspoint.tenancy.Problem: HostConflict, ...).
        reason = next((str(r) for p in invalid if (r := getattr(p, "reason", None))), "InvalidSpec")
        fresh = [
            cond("Accepted", "False", reason, "; ".join(invalid)),
            cond("Applied", "Unknown", reason, "nothing is written while the spec is invalid"),
            cond("Ready", "False", reason, "the spec is invalid" if reason == "InvalidSpec" else "the spec is refused"),
        ]
        status = (previous or AccessPointStatus()).model_copy(deep=True)
        status.observed_generation = gen
        status.conditions = merge_conditions(prev_conditions, fresh, now)
        status.summary = AccessPointSummary(
            clusters=(status.summary.clusters if status.summary else "0/0"),
            vips=(status.summary.vips if status.summary else ""),
            phase="Invalid" if reason == "InvalidSpec" else "Refused",
        )
        return status

    fresh = [cond("Accepted", "True", "Valid", "the spec is valid")]
    if placed:
        names_list = ", ".join(sorted(placed))
        fresh.append(cond("Placed", "True", "ClustersSelected", f"{len(placed)} cluster(s): {names_list}"))
    else:
        fresh.append(cond("Placed", "False", "NoClusterSelected", "the placement selects no member cluster"))

    def names(items: Sequence[ClusterStatus]) -> str:
        return ", ".join(c.name for c in items)

    if failed:
        detail = "; ".join(f"{c.name}: {c.last_error}" for c in failed)
        fresh.append(cond("Applied", "False", "ApplyFailed", detail))
    elif unknown:
        fresh.append(cond("Applied", "Unknown", "ClusterUnreachable", f"state unknown in: {names(unknown)}"))
    elif len(applied) < len(in_place) or removing:
        waiting = [c for c in in_place if c.state != "Applied"] + removing
        fresh.append(cond("Applied", "False", "Progressing", f"in progress: {names(waiting)}"))
    elif placed:
        fresh.append(cond("Applied", "True", "Applied", f"revision {revision} applied in {len(applied)} cluster(s)"))
    else:
        fresh.append(cond("Applied", "False", "NoClusterSelected", "nothing to apply"))

    lb_missing = [c for c in applied if c.vip is None and c.route_configured is False]
    # Istio's verdict, where it is evaluated (a member with spec.istiod, an AccessPoint with Gateways).
    evaluated = [c for c in in_place if c.routes_evaluated]
    routes_false = [c for c in applied if c.routes_evaluated and c.route_configured is False]
    routes_unknown = [c for c in applied if c.routes_evaluated and c.route_configured is None]
    # A zone's istiod that knows no endpoint of a routed host: the route is there, the service is not.
    no_endpoints = [c for c in applied if c.endpoints_missing]
    ready = [c for c in applied if c not in lb_missing and c not in routes_false and c not in routes_unknown
             and c not in no_endpoints]

    def why(items: Sequence[ClusterStatus]) -> str:
        return "; ".join(f"{c.name}: {c.route_message}" for c in items)

    if placed and len(ready) == len(in_place) and not removing:
        fresh.append(cond("Ready", "True", "Ready", f"ready in {len(ready)}/{len(in_place)} cluster(s)"))
    elif failed:
        fresh.append(cond("Ready", "False", "ApplyFailed", f"failed in: {names(failed)}"))
    elif unknown:
        fresh.append(cond("Ready", "Unknown", "ClusterUnreachable", f"state unknown in: {names(unknown)}"))
    elif no_endpoints:
        fresh.append(cond("Ready", "False", "NoEndpoints", f"ready in {len(ready)}/{len(in_place)} cluster(s); " +
                          "; ".join(f"zone {c.zone} ({c.name}): its istiod knows no endpoint of "
                                    f"{', '.join(c.endpoints_missing or [])}" for c in no_endpoints)))
    elif routes_false:
        fresh.append(cond("Ready", "False", "RoutesNotConfigured",
                          f"ready in {len(ready)}/{len(in_place)} cluster(s); "
                          f"routes not configured in {why(routes_false)}"
                          + (f"; routes unknown in {why(routes_unknown)}" if routes_unknown else "")))
    elif routes_unknown and len(ready) + len(routes_unknown) == len(in_place) and not removing:
        fresh.append(cond("Ready", "Unknown", "RoutesUnknown",
                          f"ready in {len(ready)}/{len(in_place)} cluster(s); routes unknown in {why(routes_unknown)}"))
    else:
        fresh.append(cond("Ready", "False", "NotReady", f"ready in {len(ready)}/{len(in_place)} cluster(s)"))
    analysis = _analysis_condition(in_place, gen)
    if analysis is not None:
        fresh.append(analysis)

    phase = "Ready"
    if failed:
        phase = "Degraded"
    elif unknown:
        phase = "Unknown"
    elif not placed:
        phase = "Unplaced"
    elif len(ready) < len(in_place) or removing:
        phase = "Progressing"

    vips = [c.vip for c in in_place if c.vip]
    status = AccessPointStatus(
        observed_generation=gen,
        revision=revision,
        conditions=merge_conditions(prev_conditions, fresh, now),
        placement=decision.shortened(),  # the clusters not placed: at most REJECTED_SHOWN listed
        clusters=list(entries),
        summary=AccessPointSummary(
            clusters=f"{len(ready)}/{len(in_place)}", vips=",".join(vips), phase=phase,
            routes=(f"{sum(1 for c in evaluated if c.route_configured is True)}/{len(evaluated)}"
                    if evaluated else None),
            endpoints=(f"{sum(1 for c in with_endpoints if not c.endpoints_missing)}/{len(with_endpoints)}"
                       if (with_endpoints := [c for c in in_place if c.endpoints is not None]) else None)),
        fqdn=previous.fqdn if previous else None,
        certificate=previous.certificate if previous else None,
    )
    return status


def _analysis_condition(clusters: Sequence[ClusterStatus], gen: int) -> Condition | None:
    """IstioAnalysis: Istio's analyzer messages on the member objects, naming cluster, object and code.

    Only messages current for the object's generation are reported; objects whose messages are older
    say "no current verdict". Absent when no placed cluster has routes evaluated and none has messages.
    """
    messages = [(c.name, m) for c in clusters for m in c.istio_messages or []]
    stale = [(c.name, o) for c in clusters for o in c.no_current_verdict or []]
    if not messages and not stale and not any(c.routes_evaluated for c in clusters):
        return None
    if messages:
        text = "; ".join(f"{name}: {m.object}: {m.code} {m.level}".rstrip() for name, m in messages)
        if stale:
            text += "; no current verdict for " + ", ".join(f"{name}: {o}" for name, o in stale)
        worst = "IstioError" if any(m.level.upper() == "ERROR" for _, m in messages) else "IstioWarning"
        return Condition(type="IstioAnalysis", status="False", reason=worst, message=text, observed_generation=gen)
    if stale:
        return Condition(type="IstioAnalysis", status="Unknown", reason="NoCurrentVerdict",
                         message="no current verdict (messages are for an older generation) for "
                         + ", ".join(f"{name}: {o}" for name, o in stale), observed_generation=gen)
    return Condition(type="IstioAnalysis", status="True", reason="NoMessages",
                     message="Istio's analyzer reports nothing on the member objects", observed_generation=gen)


def applied_message(applied: Sequence[ClusterStatus]) -> str:
    """One Event message for the clusters a reconcile brought to their revision, grouped by
    revision: `revision 3f2a… applied on m1, m2, m3 (5 objects each)`."""
    by_revision: dict[str, list[ClusterStatus]] = {}
    for entry in sorted(applied, key=lambda e: e.name):
        by_revision.setdefault(entry.revision or "", []).append(entry)
    parts = []
    for revision, entries in sorted(by_revision.items()):
        counts = {e.objects for e in entries}
        if len(counts) == 1:
            names = ", ".join(e.name for e in entries)
            parts.append(f"revision {revision} applied on {names} ({counts.pop()} objects each)")
        else:
            names = ", ".join(f"{e.name} ({e.objects} objects)" for e in entries)
            parts.append(f"revision {revision} applied on {names}")
    return "; ".join(parts)


def pending_text(create: int, update: int, delete: int) -> str:
    """`3 to create, 1 to update` for writes a cluster has not confirmed ("" for none)."""
    parts = [f"{n} to {verb}" for n, verb in ((create, "create"), (update, "update"), (delete, "delete")) if n]
    return ", ".join(parts)


def held_entry(entry: ClusterStatus, *, answering: bool, pending: str, since: str, why: str | None) -> ClusterStatus:
    """The entry of a cluster whose writes are not confirmed: in flight to a slow cluster (Progressing:
    it answers, at its own pace) or held for one that does not answer (Unknown, with why). Never
    Applied: the cluster has not been seen holding them."""
    return entry.model_copy(update={
        "state": "Progressing" if answering else "Unknown",
        "pending": pending or None,
        "pending_since": since if pending else None,
        "last_error": None if answering else why,
        "revision": entry.revision if answering else None,
    })
