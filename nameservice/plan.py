"""DNS plan (pure): diff(desired records, the provider's current zone) → adds/updates/deletes.

Owns the ownership rules and the removal cap. Imports nameservice.records and the standard
library only: no I/O, no clock, deterministic (same inputs → same plan, sorted by name).

Rules:
- A name is ours when the TXT rrset at `_meshfed-owner.<name>` is exactly our ownership value.
  A name with any record but no ownership TXT, or whose TXT names another owner (or was edited),
  is a Conflict: never touched, reported.
- Only the managed types (A, AAAA, CNAME) and our TXT are ever written; other types at the name
  are left alone (a CNAME next to other data is a conflict).
- Every Change carries `before` (what the listing showed: the provider turns it into RFC 2136
  prerequisites, so a concurrent writer makes the update fail instead of being overwritten) and
  `after` (what must be there afterwards).
- `maxRemovalsPerSync` caps the addresses one update removes; the rest is Deferred (pending).
- A NameService being deleted removes only what it owns; `rrset=None` (nothing known yet) never
  removes anything.
- Equal desired and current → no change at all (zero writes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from nameservice.records import (
    MANAGED_TYPES,
    DesiredRecords,
    Owner,
    RRset,
    ZoneSnapshot,
    in_zone,
    owner_name,
    parse_owner,
)

ChangeKind = Literal["add", "update", "delete"]
ConflictReason = Literal[
    "ForeignRecord",
    "OwnedByOther",
    "OwnershipModified",
    "CNAMEConflict",
    "OutsideZone",
    "DuplicateName",
    "PreconditionFailed",
]


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    owner: Owner
    name: str
    before: tuple[RRset, ...]
    after: tuple[RRset, ...]

    @property
    def puts(self) -> tuple[RRset, ...]:
        """Rrsets to write (new, or different values/TTL from before)."""
        old = set(self.before)
        return tuple(r for r in self.after if r not in old)

    @property
    def removes(self) -> tuple[tuple[str, str], ...]:
        """(name, type) rrsets to delete."""
        keep = {r.key for r in self.after}
        return tuple(r.key for r in self.before if r.key not in keep)

    @property
    def size(self) -> int:
        """Records this change writes (values put + rrsets deleted); prerequisites not counted."""
        return sum(len(r.values) for r in self.puts) + len(self.removes)


@dataclass(frozen=True)
class Conflict:
    owner: Owner
    name: str
    reason: ConflictReason
    message: str
    holder: str = ""


@dataclass(frozen=True)
class Deferred:
    owner: Owner
    name: str
    message: str


@dataclass(frozen=True)
class Plan:
    adds: tuple[Change, ...] = ()
    updates: tuple[Change, ...] = ()
    deletes: tuple[Change, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    deferred: tuple[Deferred, ...] = ()

    @property
    def changes(self) -> tuple[Change, ...]:
        return self.adds + self.updates + self.deletes

    @property
    def noop(self) -> bool:
        return not self.changes

    def for_owner(self, owner: Owner) -> Plan:
        return Plan(
            tuple(c for c in self.adds if c.owner == owner),
            tuple(c for c in self.updates if c.owner == owner),
            tuple(c for c in self.deletes if c.owner == owner),
            tuple(c for c in self.conflicts if c.owner == owner),
            tuple(c for c in self.deferred if c.owner == owner),
        )

    @staticmethod
    def merge(plans: Iterable[Plan]) -> Plan:
        ps = list(plans)
        return Plan(
            tuple(c for p in ps for c in p.adds),
            tuple(c for p in ps for c in p.updates),
            tuple(c for p in ps for c in p.deletes),
            tuple(c for p in ps for c in p.conflicts),
            tuple(c for p in ps for c in p.deferred),
        )


def _ownership(d: DesiredRecords, current: ZoneSnapshot) -> tuple[bool, Conflict | None]:
    """(ours, conflict): whether the name is ours, or why it is not ours and not free."""
    oname = owner_name(d.name)
    txt = current.get(oname, "TXT")
    if txt is not None:
        if txt.values == (d.owner.txt,):
            return True, None
        holders = [o for o in (parse_owner(v) for v in txt.values) if o is not None]
        if len(txt.values) == 1 and holders:
            return False, Conflict(
                d.owner, d.name, "OwnedByOther", f"{d.name} is owned by {holders[0]}", holder=str(holders[0])
            )
        return False, Conflict(
            d.owner,
            d.name,
            "OwnershipModified",
            f"the ownership record {oname} holds foreign values",
            holder="unknown",
        )
    in_use = current.at(d.name) + [r for r in current.at(oname) if r.rtype != "TXT"]
    if in_use:
        types = ",".join(sorted({r.rtype for r in in_use}))
        return False, Conflict(
            d.owner,
            d.name,
            "ForeignRecord",
            f"{d.name} already has {types} records not published by meshfed",
            holder="unmanaged",
        )
    return False, None


def _plan_one(d: DesiredRecords, current: ZoneSnapshot) -> Plan:
    if not in_zone(d.name, current.zone):
        if d.remove:
            return Plan()
        return Plan(
            conflicts=(Conflict(d.owner, d.name, "OutsideZone", f"{d.name} is outside zone {current.zone}"),)
        )
    ours, conflict = _ownership(d, current)
    txt = current.get(owner_name(d.name), "TXT")
    managed = [r for r in current.at(d.name) if r.rtype in MANAGED_TYPES]
    if d.remove:
        if not ours or txt is None:
            return Plan()
        return Plan(deletes=(Change("delete", d.owner, d.name, (*managed, txt), ()),))
    if d.rrset is None:
        return Plan()
    if conflict is not None:
        return Plan(conflicts=(conflict,))
    if d.rrset.rtype == "CNAME":
        others = [r for r in current.at(d.name) if r.rtype != "CNAME"]
        if others:
            types = ",".join(sorted({r.rtype for r in others}))
            return Plan(
                conflicts=(Conflict(d.owner, d.name, "CNAMEConflict", f"{d.name} has {types}: no CNAME"),)
            )
    if not ours:
        return Plan(adds=(Change("add", d.owner, d.name, (), (d.rrset, d.ownership)),))
    assert txt is not None
    new = d.rrset
    deferred: tuple[Deferred, ...] = ()
    old_same = next((r for r in managed if r.rtype == new.rtype), None)
    if old_same is not None and d.max_removals is not None:
        removed = sorted(set(old_same.values) - set(new.values))
        if len(removed) > d.max_removals:
            kept = removed[d.max_removals :]
            new = RRset(new.name, new.rtype, new.ttl, tuple(sorted(set(new.values) | set(kept))))
            deferred = (
                Deferred(
                    d.owner,
                    d.name,
                    f"removal of {', '.join(kept)} deferred: maxRemovalsPerSync={d.max_removals}",
                ),
            )
    before = (*managed, txt)
    after = (new, d.ownership)
    if set(before) == set(after):
        return Plan(deferred=deferred)
    return Plan(updates=(Change("update", d.owner, d.name, before, after),), deferred=deferred)


def diff(desired: Sequence[DesiredRecords], current: ZoneSnapshot) -> Plan:
    """The plan that turns `current` into `desired` without touching what others own.

    Two NameServices wanting one name: the current owner keeps it (or, if nobody owns it yet,
    the smallest owner); the other gets a DuplicateName conflict.
    """
    by_name: dict[str, list[DesiredRecords]] = {}
    for d in desired:
        by_name.setdefault(d.name, []).append(d)
    plans: list[Plan] = []
    for name in sorted(by_name):
        group = sorted(by_name[name], key=lambda d: (d.remove, d.owner))
        claimants = [d.owner for d in group if not d.remove]
        txt = current.get(owner_name(name), "TXT")
        current_owner = next((o for o in (parse_owner(v) for v in (txt.values if txt else ())) if o), None)
        winner = current_owner if current_owner in claimants else (min(claimants) if claimants else None)
        for d in group:
            if not d.remove and winner is not None and d.owner != winner:
                plans.append(
                    Plan(
                        conflicts=(
                            Conflict(
                                d.owner,
                                name,
                                "DuplicateName",
                                f"{name} is also claimed by {winner}",
                                holder=str(winner),
                            ),
                        )
                    )
                )
                continue
            plans.append(_plan_one(d, current))
    return Plan.merge(plans)
