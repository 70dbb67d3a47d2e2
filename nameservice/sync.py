"""One NameService sync: gather → plan → apply → verify → status. The hub controller's entry point.

    status = await sync_nameservice(ns, provider, targets, previous, hub_id, now)

- `ns`: the NameService (its metadata namespace/name and generation are used).
- `provider`: a Provider for the DNSProvider named by `ns.spec.providerRef`
  (`nameservice.providers.factory.provider_for(spec, secret)`; the hub reads the Secret).
- `targets`: one TargetFact per member cluster the AccessPoint is placed on (cluster, region,
  gateway VIP or None, reachable True/False/None, last seen); None when the source is unknown
  (AccessPoint status not read yet): the last published records are kept. Ignored when the
  target is explicit (addresses / hostname).
- `previous`: the NameService's current status (known-good records, per-target history).
- `hub_id`: this hub's identity, written into the ownership TXT record.
- `now`: the time (timezone-aware); nothing here reads the clock.

It lists the zone (TSIG transfer / API), computes the desired records (records.desired, pure),
the plan (plan.diff, pure), applies it (nothing is sent when nothing changed), checks that the
authoritative server answers the published values (Resolvable) and returns the new status. It
never raises for provider failures: they become conditions (a failed read → Unknown, never a
guessed False) and the previous records are kept as the published set, with `pending` saying
what is not applied yet. Status contains no timestamps that move on every sync, so an unchanged
world gives an identical status (write it only when it changed).

`sync_nameservices(items, provider, hub_id, now)` does the same for many NameServices on one
zone with one listing and one batched apply (what a periodic resync and the benchmark use);
`delete_nameservice(ns, provider, hub_id)` removes only what `ns` owns (deletionPolicy Delete);
`error_status(ns, previous, reason, message, now)` is the status for bad input detected by the hub
(unknown provider, missing AccessPoint, unreadable Secret…): a clear condition, nothing changed.

Imports nameservice.* and accesspoint.meta; I/O only through the Provider it is given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from accesspoint.meta import Condition, ConditionStatus, merge_conditions
from nameservice.models import NameService, NameServiceStatus, NameServiceSummary, TargetStatus
from nameservice.plan import Change, Conflict, Deferred, Plan, diff
from nameservice.providers.base import ApplyResult, Provider, ProviderError
from nameservice.records import MANAGED_TYPES, DesiredRecords, TargetFact, desired, removal

VERIFY_CONCURRENCY = 32


@dataclass(frozen=True)
class SyncItem:
    ns: NameService
    targets: Sequence[TargetFact] | None
    previous: NameServiceStatus | None = None


@dataclass
class SyncReport:
    """What a bulk sync did (for logs, metrics and the benchmark)."""

    statuses: list[NameServiceStatus] = field(default_factory=list)
    plan: Plan = field(default_factory=Plan)
    result: ApplyResult = field(default_factory=ApplyResult)
    error: ProviderError | None = None


@dataclass(frozen=True)
class _Outcome:
    programmed: ConditionStatus
    reason: str
    message: str
    published: tuple[str, ...]
    pending: tuple[str, ...] = ()


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _address_values(rrsets: Sequence[object]) -> tuple[str, ...]:
    for r in rrsets:
        rtype = getattr(r, "rtype", "")
        if rtype in MANAGED_TYPES:
            return tuple(getattr(r, "values", ()))
    return ()


def _outcome(
    d: DesiredRecords,
    change: Change | None,
    applied: bool,
    failed: Conflict | None,
    conflict: Conflict | None,
    deferred: Deferred | None,
    current_values: tuple[str, ...],
    apply_error: ProviderError | None,
    previous: NameServiceStatus | None,
) -> _Outcome:
    pending = (deferred.message,) if deferred else ()
    if conflict is not None:
        reason = "FQDNOutsideZone" if conflict.reason == "OutsideZone" else conflict.reason
        return _Outcome("False", reason, conflict.message + ": not overwritten", (), pending)
    if failed is not None:
        return _Outcome("False", failed.reason, failed.message, (), pending)
    if change is not None and not applied:
        kept = tuple(previous.records) if previous else current_values
        why = apply_error.message if apply_error else "not applied"
        pending = (*pending, f"{change.kind} {change.name}: {why}")
        status: ConditionStatus = (
            "Unknown" if apply_error and apply_error.reason == "ProviderUnreachable" else "False"
        )
        return _Outcome(status, apply_error.reason if apply_error else "NotApplied", why, kept, pending)
    if change is not None:
        values = _address_values(change.after)
        return _Outcome("True", "Published", f"{d.name} published: {','.join(values)}", values, pending)
    if d.rrset is None:
        return _Outcome("False", "NoTargets", "no target to publish yet", current_values, pending)
    return _Outcome(
        "True", "Published", f"{d.name} published: {','.join(current_values)}", current_values, pending
    )


def _status(
    ns: NameService,
    d: DesiredRecords,
    out: _Outcome,
    resolvable: tuple[ConditionStatus, str, str],
    serial: int | None,
    zone: str,
    previous: NameServiceStatus | None,
    now: datetime,
) -> NameServiceStatus:
    gen = ns.generation or None
    programmed = Condition(
        type="Programmed",
        status=out.programmed,
        reason=out.reason,
        message=out.message,
        observed_generation=gen,
    )
    res = Condition(
        type="Resolvable",
        status=resolvable[0],
        reason=resolvable[1],
        message=resolvable[2],
        observed_generation=gen,
    )
    ready: tuple[ConditionStatus, str, str]
    if out.programmed == "True" and resolvable[0] == "True":
        ready = (
            ("False", "KeptLastGood", d.message)
            if d.kept_last_good
            else ("True", "Ready", f"{d.name} resolves")
        )
    elif "Unknown" in (out.programmed, resolvable[0]) and "False" not in (out.programmed, resolvable[0]):
        ready = ("Unknown", out.reason if out.programmed == "Unknown" else resolvable[1], out.message)
    else:
        ready = (
            "False",
            out.reason if out.programmed != "True" else resolvable[1],
            out.message if out.programmed != "True" else resolvable[2],
        )
    ready_cond = Condition(
        type="Ready",
        status=ready[0],
        reason=ready[1] or "NotReady",
        message=ready[2],
        observed_generation=gen,
    )
    conditions = merge_conditions(
        previous.conditions if previous else [], [programmed, res, ready_cond], _iso(now)
    )
    targets: list[TargetStatus] = list(d.targets)
    included = sum(1 for t in targets if t.included)
    return NameServiceStatus(
        conditions=conditions,
        observed_generation=gen,
        fqdn=d.name.rstrip("."),
        zone=zone.rstrip("."),
        records=list(out.published),
        zone_serial=serial,
        targets=targets,
        pending=list(out.pending),
        summary=NameServiceSummary(records=",".join(out.published), targets=f"{included}/{len(targets)}"),
        ready=ready[0],
    )


def error_status(
    ns: NameService, previous: NameServiceStatus | None, reason: str, message: str, now: datetime
) -> NameServiceStatus:
    """Status for a failure before anything could be planned: previous records kept, nothing changed."""
    gen = ns.generation or None
    unknown = reason in ("ProviderUnreachable",)
    st: ConditionStatus = "Unknown" if unknown else "False"
    conds = [
        Condition(type="Programmed", status=st, reason=reason, message=message, observed_generation=gen),
        Condition(
            type="Resolvable", status="Unknown", reason=reason, message="not checked", observed_generation=gen
        ),
        Condition(type="Ready", status=st, reason=reason, message=message, observed_generation=gen),
    ]
    base = previous or NameServiceStatus()
    return base.model_copy(
        update={
            "conditions": merge_conditions(base.conditions, conds, _iso(now)),
            "observed_generation": gen,
            "fqdn": ns.spec.fqdn.rstrip("."),
            "pending": [f"sync of {ns.spec.fqdn}: {message}"],
            "ready": st,
        }
    )


async def _verify(
    provider: Provider, name: str, rtype: str, published: tuple[str, ...]
) -> tuple[ConditionStatus, str, str]:
    if not published:
        return ("False", "NotPublished", "no record is published")
    try:
        answer = await provider.resolve(name, rtype)
    except ProviderError as err:
        return ("Unknown", err.reason, err.message)
    source = provider.answer_source
    if tuple(sorted(answer)) == tuple(sorted(published)):
        # Without a DNS server to ask, the provider's own listing is all there is: say so (reason Listed).
        return ("True", "Resolved" if provider.checks_dns else "Listed", f"{source} answers {','.join(answer)}")
    return (
        "False",
        "Mismatch",
        f"{source} answers {','.join(answer) or 'nothing'}, expected {','.join(published)}",
    )


async def sync_nameservices(
    items: Sequence[SyncItem], provider: Provider, hub_id: str, now: datetime, *, verify: bool = True
) -> SyncReport:
    """Sync many NameServices of one zone: one listing, one plan, batched writes."""
    report = SyncReport()
    wanted = [desired(it.ns, it.targets, it.previous, hub_id, now) for it in items]
    try:
        snap = await provider.list_records()
    except ProviderError as err:
        report.error = err
        report.statuses = [error_status(it.ns, it.previous, err.reason, err.message, now) for it in items]
        return report
    plan = diff(wanted, snap)
    report.plan = plan
    apply_error: ProviderError | None = None
    if not plan.noop:
        try:
            report.result = await provider.apply(plan)
        except ProviderError as err:
            apply_error = err
            report.error = err
    serial = snap.serial
    if not plan.noop:
        try:
            serial = await provider.serial()
        except ProviderError:
            serial = snap.serial
    changes = {c.owner: c for c in plan.changes}
    applied = {c.owner for c in report.result.applied}
    failed = {c.owner: c for c in report.result.failed}
    conflicts = {c.owner: c for c in plan.conflicts}
    deferred = {c.owner: c for c in plan.deferred}
    outcomes: list[_Outcome] = []
    for d, it in zip(wanted, items, strict=True):
        current = snap.get(d.name, d.rrset.rtype if d.rrset else it.ns.spec.record_type)
        ours = conflicts.get(d.owner) is None
        outcomes.append(
            _outcome(
                d,
                changes.get(d.owner),
                d.owner in applied,
                failed.get(d.owner),
                conflicts.get(d.owner),
                deferred.get(d.owner),
                current.values if (current and ours) else (),
                apply_error,
                it.previous,
            )
        )
    checks: list[tuple[ConditionStatus, str, str]]
    if verify:
        sem = asyncio.Semaphore(VERIFY_CONCURRENCY)

        async def check(d: DesiredRecords, it: SyncItem, out: _Outcome) -> tuple[ConditionStatus, str, str]:
            async with sem:
                return await _verify(provider, d.name, it.ns.spec.record_type, out.published)

        checks = list(
            await asyncio.gather(*(check(d, it, o) for d, it, o in zip(wanted, items, outcomes, strict=True)))
        )
    else:
        checks = [("Unknown", "NotChecked", "verification skipped")] * len(items)
    report.statuses = [
        _status(it.ns, d, out, chk, serial, snap.zone, it.previous, now)
        for it, d, out, chk in zip(items, wanted, outcomes, checks, strict=True)
    ]
    return report


async def sync_nameservice(
    ns: NameService,
    provider: Provider,
    targets: Sequence[TargetFact] | None,
    previous: NameServiceStatus | None,
    hub_id: str,
    now: datetime,
) -> NameServiceStatus:
    """Gather → plan → apply → verify → status for one NameService (see the module docstring)."""
    report = await sync_nameservices([SyncItem(ns, targets, previous)], provider, hub_id, now)
    return report.statuses[0]


async def delete_nameservice(ns: NameService, provider: Provider, hub_id: str) -> ApplyResult:
    """Remove what `ns` owns at its FQDN (only if its ownership TXT is still ours); raises ProviderError."""
    if ns.spec.deletion_policy == "Orphan":
        return ApplyResult()
    snap = await provider.list_records()
    plan = diff([removal(ns, hub_id)], snap)
    if plan.noop:
        return ApplyResult()
    return await provider.apply(plan)
