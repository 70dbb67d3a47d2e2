"""Desired DNS records of a NameService (pure): record sets, ownership TXT, target decisions.

Owns the provider-neutral record model (`RRset`, `ZoneSnapshot`), the ownership TXT record
format, and `desired()`: NameService + per-cluster target facts + the previous status + now →
the record set to publish and why each target is in or out. Imports nameservice.models,
accesspoint.meta and the standard library only: no I/O, no clock (time is an argument).

Safety rules (the failures external-dns users complain about most):
- unknown sources (`targets is None`) or an empty result never empty the record set: the previous
  known-good values are kept (`kept_last_good`);
- an unreachable cluster's VIP stays for `unreachableGraceSeconds` after it was last seen;
- a cluster whose reachability is unknown (`reachable=None`) keeps its previous decision.

Ownership: every published name N gets a TXT record at `_meshfed-owner.N` (a separate name, so
that a CNAME can own one too) whose single value is
`"heritage=meshfed,hub=<hub id>,owner=<namespace>/<name>"`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from accesspoint.meta import parse_time_or_none
from nameservice.models import NameService, NameServiceStatus, TargetStatus

OWNER_PREFIX = "_meshfed-owner"
HERITAGE = "meshfed"
MANAGED_TYPES = ("A", "AAAA", "CNAME")


def absolute(name: str) -> str:
    """Canonical absolute DNS name: lowercase with one trailing dot."""
    return name.strip().rstrip(".").lower() + "."


def in_zone(name: str, zone: str) -> bool:
    n, z = absolute(name), absolute(zone)
    return n == z or n.endswith("." + z)


def canonical_value(rtype: str, value: str) -> str:
    """Provider-neutral text of one rdata (IPs compressed, names absolute, TXT quoted)."""
    if rtype in ("A", "AAAA"):
        return str(ipaddress.ip_address(value.strip()))
    if rtype in ("CNAME", "NS", "PTR"):
        return absolute(value)
    if rtype == "TXT":
        v = value.strip()
        return v if v.startswith('"') else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value.strip()


@dataclass(frozen=True, order=True)
class RRset:
    """One record set: name (absolute), type, TTL and its sorted canonical values."""

    name: str
    rtype: str
    ttl: int
    values: tuple[str, ...]

    @staticmethod
    def make(name: str, rtype: str, ttl: int, values: Sequence[str]) -> RRset:
        rtype = rtype.upper()
        return RRset(
            absolute(name), rtype, int(ttl), tuple(sorted({canonical_value(rtype, v) for v in values}))
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.rtype)


@dataclass(frozen=True)
class ZoneSnapshot:
    """What a provider holds for one zone: rrsets by (name, type), and the SOA serial."""

    zone: str
    serial: int | None
    rrsets: Mapping[tuple[str, str], RRset] = field(default_factory=dict)
    _by_name: dict[str, list[RRset]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for (name, _), r in sorted(self.rrsets.items()):
            self._by_name.setdefault(name, []).append(r)

    @staticmethod
    def of(zone: str, serial: int | None, rrsets: Sequence[RRset]) -> ZoneSnapshot:
        return ZoneSnapshot(absolute(zone), serial, {r.key: r for r in rrsets})

    def at(self, name: str) -> list[RRset]:
        """Every rrset at exactly `name`, sorted by type."""
        return list(self._by_name.get(absolute(name), ()))

    def get(self, name: str, rtype: str) -> RRset | None:
        return self.rrsets.get((absolute(name), rtype.upper()))


@dataclass(frozen=True, order=True)
class Owner:
    hub: str
    namespace: str
    name: str

    @property
    def txt(self) -> str:
        return canonical_value(
            "TXT", f"heritage={HERITAGE},hub={self.hub},owner={self.namespace}/{self.name}"
        )

    def __str__(self) -> str:
        return f"{self.hub}:{self.namespace}/{self.name}"


def owner_name(name: str) -> str:
    return absolute(f"{OWNER_PREFIX}.{absolute(name)}")


def ownership_rrset(owner: Owner, name: str, ttl: int) -> RRset:
    return RRset.make(owner_name(name), "TXT", ttl, [owner.txt])


def parse_owner(txt_value: str) -> Owner | None:
    """The Owner encoded in one TXT value, or None if it is not a meshfed ownership record."""
    raw = txt_value.strip()
    if raw.startswith('"') and raw.endswith('"'):
        raw = raw[1:-1]
    fields = dict(p.split("=", 1) for p in raw.split(",") if "=" in p)
    if fields.get("heritage") != HERITAGE or "hub" not in fields or "/" not in fields.get("owner", ""):
        return None
    ns, _, nm = fields["owner"].partition("/")
    return Owner(fields["hub"], ns, nm)


@dataclass(frozen=True)
class TargetFact:
    """What the hub knows of one member cluster for this NameService's AccessPoint."""

    cluster: str
    region: str
    vip: str | None
    # True: answered its last probe. False: unreachable. None: not known (not probed yet).
    reachable: bool | None
    last_seen: datetime | None = None


@dataclass(frozen=True)
class DesiredRecords:
    """The records one NameService wants: its address rrset (None: nothing to publish yet) and the
    ownership TXT, plus the per-target explanations for status."""

    owner: Owner
    name: str
    rrset: RRset | None
    ownership: RRset
    targets: tuple[TargetStatus, ...]
    kept_last_good: bool = False
    message: str = ""
    max_removals: int | None = None
    # True: the NameService is being deleted: remove what it owns at `name`.
    remove: bool = False

    @property
    def values(self) -> tuple[str, ...]:
        return self.rrset.values if self.rrset else ()


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _family_ok(rtype: str, value: str) -> bool:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return rtype == "CNAME"
    return (rtype == "A" and addr.version == 4) or (rtype == "AAAA" and addr.version == 6)


def _cluster_target(
    fact: TargetFact, prev: TargetStatus | None, rtype: str, grace: timedelta, now: datetime
) -> TargetStatus:
    prev_addr = prev.address if prev else None
    # lastSeen is recorded only while the cluster is not reachable (stable status, no churn).
    last_seen = (
        None if fact.reachable is True else (fact.last_seen or parse_time_or_none(prev.last_seen if prev else None))
    )
    base = TargetStatus(
        cluster=fact.cluster,
        region=fact.region,
        address=fact.vip or prev_addr,
        included=False,
        reason="NoVIP",
        last_seen=_iso(last_seen) if last_seen else None,
    )
    if fact.reachable is True:
        if not fact.vip:
            return base.model_copy(
                update={"address": None, "message": "cluster reachable, gateway has no VIP"}
            )
        if not _family_ok(rtype, fact.vip):
            return base.model_copy(
                update={"reason": "AddressFamilyMismatch", "message": f"{fact.vip} cannot be a {rtype} value"}
            )
        return base.model_copy(update={"included": True, "reason": "Ready"})
    address = base.address
    if fact.reachable is None:
        if prev is not None and prev.included and address:
            return base.model_copy(
                update={"included": True, "reason": "ReachabilityUnknown", "message": "not probed yet: kept"}
            )
        return base.model_copy(
            update={"included": False, "reason": "ReachabilityUnknown", "message": "not probed yet"}
        )
    # Unreachable: keep the VIP for the grace period, counted from when it was last seen.
    since = parse_time_or_none(prev.unreachable_since if prev else None) or now
    start = last_seen or since
    base = base.model_copy(update={"unreachable_since": _iso(since)})
    if not address:
        return base.model_copy(update={"message": "unreachable, no VIP known"})
    if not _family_ok(rtype, address):
        return base.model_copy(update={"reason": "AddressFamilyMismatch"})
    until = start + grace
    if until > now:
        return base.model_copy(
            update={
                "included": True,
                "reason": "UnreachableInGrace",
                "message": f"unreachable; kept until {_iso(until)}",
            }
        )
    return base.model_copy(update={"reason": "GraceExpired", "message": f"unreachable since {_iso(start)}"})


def desired(
    ns: NameService,
    targets: Sequence[TargetFact] | None,
    previous: NameServiceStatus | None,
    hub_id: str,
    now: datetime,
) -> DesiredRecords:
    """The records `ns` wants now. `targets` None means the source is unknown (keep last good)."""
    spec = ns.spec
    rtype = spec.record_type
    owner = Owner(hub_id, ns.namespace, ns.name)
    name = absolute(spec.fqdn)
    ownership = ownership_rrset(owner, name, spec.ttl)
    prev_targets = {t.cluster: t for t in (previous.targets if previous else []) if t.cluster}
    last_good = tuple(previous.records) if previous else ()

    statuses: list[TargetStatus]
    if spec.target.hostname is not None:
        statuses = [TargetStatus(address=absolute(spec.target.hostname), included=True, reason="Explicit")]
    elif spec.target.addresses:
        statuses = [
            TargetStatus(address=canonical_value(rtype, a), included=True, reason="Explicit")
            for a in sorted(set(spec.target.addresses))
        ]
    elif targets is None:
        statuses = [
            t.model_copy(
                update={"reason": "KeptLastGood", "message": "target source unknown: previous decision kept"}
            )
            if t.included
            else t
            for t in sorted(prev_targets.values(), key=lambda t: t.cluster)
        ]
    else:
        grace = timedelta(seconds=spec.unreachable_grace_seconds)
        statuses = [
            _cluster_target(f, prev_targets.get(f.cluster), rtype, grace, now)
            for f in sorted(targets, key=lambda f: f.cluster)
        ]
        if spec.routing.policy == "PrimaryRegionFailover":
            primary = spec.routing.primary_region
            if any(t.included and t.region == primary for t in statuses):
                statuses = [
                    t.model_copy(
                        update={
                            "included": False,
                            "reason": "Standby",
                            "message": f"primary region {primary} serves",
                        }
                    )
                    if t.included and t.region != primary
                    else t
                    for t in statuses
                ]
    if rtype == "CNAME":
        # A CNAME holds one value: the first included target, primary region first, by cluster.
        primary_region = spec.routing.primary_region
        order = sorted(
            (i for i, t in enumerate(statuses) if t.included),
            key=lambda i: (
                primary_region is not None and statuses[i].region != primary_region,
                statuses[i].cluster,
            ),
        )
        for i in order[1:]:
            statuses[i] = statuses[i].model_copy(
                update={"included": False, "reason": "NotSelected", "message": "a CNAME has one value"}
            )

    values = sorted({canonical_value(rtype, t.address) for t in statuses if t.included and t.address})
    kept = False
    message = ""
    if not values and last_good:
        values = sorted(set(last_good))
        kept = True
        message = "no target is available or the source is unknown: keeping the last published records"
        statuses = [
            t.model_copy(update={"included": True, "reason": "KeptLastGood"})
            if t.address and canonical_value_safe(rtype, t.address) in values and not t.included
            else t
            for t in statuses
        ]
    rrset = RRset.make(name, rtype, spec.ttl, values) if values else None
    return DesiredRecords(
        owner, name, rrset, ownership, tuple(statuses), kept, message, max_removals=spec.max_removals_per_sync
    )


def removal(ns: NameService, hub_id: str) -> DesiredRecords:
    """What a deleted NameService wants: everything it owns at its FQDN gone (nothing else)."""
    owner = Owner(hub_id, ns.namespace, ns.name)
    name = absolute(ns.spec.fqdn)
    return DesiredRecords(owner, name, None, ownership_rrset(owner, name, ns.spec.ttl), (), remove=True)


def canonical_value_safe(rtype: str, value: str) -> str | None:
    try:
        return canonical_value(rtype, value)
    except ValueError:
        return None
