"""DNS plan (pure): ownership, conflicts, removal cap, no-op; and sync with an in-memory provider."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nameservice.models import NameService
from nameservice.plan import Plan, diff
from nameservice.providers.base import ApplyResult, ProviderUnreachable
from nameservice.records import (
    DesiredRecords,
    Owner,
    RRset,
    TargetFact,
    ZoneSnapshot,
    desired,
    owner_name,
    ownership_rrset,
    removal,
)
from nameservice.sync import SyncItem, sync_nameservice, sync_nameservices

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HUB = "hub-a"
ZONE = "example.test."


def make_ns(name: str = "checkout", fqdn: str | None = None, **spec: Any) -> NameService:
    base: dict[str, Any] = {
        "fqdn": fqdn or f"{name}.example.test",
        "providerRef": {"name": "bind"},
        "target": {"accessPointRef": {"name": name}},
    }
    base.update(spec)
    return NameService.model_validate({"metadata": {"name": name, "namespace": "shop"}, "spec": base})


def want(ns: NameService, *vips: str) -> DesiredRecords:
    return desired(ns, [TargetFact(f"c{i}", "eu", v, True) for i, v in enumerate(vips)], None, HUB, NOW)


def zone(*rrsets: RRset) -> ZoneSnapshot:
    soa = RRset.make(ZONE, "SOA", 300, ["ns1.example.test. h.example.test. 1 3600 600 86400 60"])
    return ZoneSnapshot.of(ZONE, 1, [soa, *rrsets])


def published(d: DesiredRecords) -> list[RRset]:
    assert d.rrset is not None
    return [d.rrset, d.ownership]


def test_new_name_is_added_with_ownership() -> None:
    d = want(make_ns(), "10.0.0.1")
    plan = diff([d], zone())
    assert [c.kind for c in plan.changes] == ["add"]
    assert set(plan.adds[0].after) == {d.rrset, d.ownership}
    assert plan.adds[0].before == ()


def test_equal_is_noop() -> None:
    d = want(make_ns(), "10.0.0.1", "10.0.0.2")
    assert diff([d], zone(*published(d))).noop


def test_update_carries_before_for_prerequisites() -> None:
    old = want(make_ns(), "10.0.0.1")
    new = want(make_ns(), "10.0.0.1", "10.0.0.2")
    plan = diff([new], zone(*published(old)))
    (change,) = plan.updates
    assert set(change.before) == set(published(old))
    assert change.puts == (new.rrset,)
    assert change.removes == ()


def test_foreign_record_without_txt_is_conflict() -> None:
    d = want(make_ns(), "10.0.0.1")
    plan = diff([d], zone(RRset.make("checkout.example.test", "A", 300, ["192.0.2.1"])))
    assert plan.noop and plan.conflicts[0].reason == "ForeignRecord"


def test_name_owned_by_other_is_conflict() -> None:
    d = want(make_ns(), "10.0.0.1")
    theirs = ownership_rrset(Owner("hub-b", "shop", "checkout"), d.name, 60)
    plan = diff([d], zone(RRset.make(d.name, "A", 60, ["192.0.2.1"]), theirs))
    assert plan.noop and plan.conflicts[0].reason == "OwnedByOther" and "hub-b" in plan.conflicts[0].holder
    edited = RRset(owner_name(d.name), "TXT", 60, (*theirs.values, '"hello"'))
    assert diff([d], zone(edited)).conflicts[0].reason == "OwnershipModified"


def test_other_types_at_name_left_alone_and_block_cname() -> None:
    ns = make_ns()
    d = want(ns, "10.0.0.1")
    mx = RRset.make(d.name, "MX", 60, ["10 mail.example.test."])
    plan = diff([d], zone(mx, d.ownership))
    (change,) = plan.updates
    assert all(r.rtype != "MX" for r in (*change.before, *change.after))
    c = desired(make_ns(recordType="CNAME", target={"hostname": "lb.example.test"}), None, None, HUB, NOW)
    assert diff([c], zone(mx, c.ownership)).conflicts[0].reason == "CNAMEConflict"


def test_type_change_removes_old_type() -> None:
    old = want(make_ns(), "10.0.0.1")
    new = desired(make_ns(recordType="AAAA"), [TargetFact("c", "eu", "2001:db8::1", True)], None, HUB, NOW)
    (change,) = diff([new], zone(*published(old))).updates
    assert change.removes == (("checkout.example.test.", "A"),)


def test_removal_cap_defers() -> None:
    old = want(make_ns(), "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")
    new = want(make_ns(maxRemovalsPerSync=1), "10.0.0.1")
    plan = diff([new], zone(*published(old)))
    (change,) = plan.updates
    assert change.after[0].values == ("10.0.0.1", "10.0.0.3", "10.0.0.4")
    assert plan.deferred and "10.0.0.3" in plan.deferred[0].message


def test_removal_removes_only_ours() -> None:
    ns = make_ns()
    d = want(ns, "10.0.0.1")
    mx = RRset.make(d.name, "MX", 60, ["10 mail.example.test."])
    plan = diff([removal(ns, HUB)], zone(*published(d), mx))
    (change,) = plan.deletes
    assert set(change.removes) == {(d.name, "A"), (owner_name(d.name), "TXT")}
    foreign = zone(RRset.make(d.name, "A", 60, ["192.0.2.1"]))
    assert diff([removal(ns, HUB)], foreign).noop
    assert diff([removal(make_ns("other", fqdn="checkout.example.test"), HUB)], zone(*published(d))).noop


def test_outside_zone_and_duplicates() -> None:
    d = want(make_ns(fqdn="checkout.elsewhere.test"), "10.0.0.1")
    assert diff([d], zone()).conflicts[0].reason == "OutsideZone"
    a = want(make_ns("a", fqdn="same.example.test"), "10.0.0.1")
    b = want(make_ns("b", fqdn="same.example.test"), "10.0.0.2")
    plan = diff([b, a], zone())
    assert [c.owner.name for c in plan.adds] == ["a"]
    assert [(c.owner.name, c.reason) for c in plan.conflicts] == [("b", "DuplicateName")]
    held = diff([a, b], zone(*published(b)))
    assert [c.owner.name for c in held.conflicts] == ["a"] and held.noop


# -- property: ownership never violated, plans deterministic, apply(plan) converges -----------------

vip_sets = st.lists(st.integers(1, 20).map(lambda i: f"10.2.0.{i}"), min_size=1, max_size=4, unique=True)
foreign_st = st.sampled_from(["none", "foreign-a", "other-owner", "ours"])


def _apply(snapshot: ZoneSnapshot, plan: Plan) -> ZoneSnapshot:
    rr = dict(snapshot.rrsets)
    for c in plan.changes:
        for k in c.removes:
            rr.pop(k, None)
        for r in c.puts:
            rr[r.key] = r
    return ZoneSnapshot(snapshot.zone, snapshot.serial, rr)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), vip_sets, foreign_st, st.none() | st.integers(1, 3)),
        max_size=6,
        unique_by=lambda c: c[0],
    )
)
def test_ownership_never_violated(cases: list[tuple[int, list[str], str, int | None]]) -> None:
    rrsets: list[RRset] = []
    wants: list[DesiredRecords] = []
    protected: set[tuple[str, str]] = set()
    for idx, vips, state, cap in cases:
        ns = make_ns(f"n{idx}", maxRemovalsPerSync=cap)
        d = want(ns, *vips)
        if state == "foreign-a":
            rrsets.append(RRset.make(d.name, "A", 60, ["192.0.2.7"]))
        elif state == "other-owner":
            rrsets += [
                RRset.make(d.name, "A", 60, ["192.0.2.8"]),
                ownership_rrset(Owner("hub-z", "x", "y"), d.name, 60),
            ]
        elif state == "ours":
            rrsets += published(want(ns, "10.3.0.1", "10.3.0.2"))
        if state in ("foreign-a", "other-owner"):
            protected |= {(d.name, "A"), (owner_name(d.name), "TXT")}
        wants.append(d)
    current = ZoneSnapshot.of(ZONE, 1, rrsets)
    plan = diff(wants, current)
    assert plan == diff(list(reversed(wants)), current)
    touched = {k for c in plan.changes for k in (*c.removes, *(r.key for r in c.puts))}
    assert not touched & protected
    after = _apply(current, plan)
    assert all(after.rrsets.get(k) == current.rrsets.get(k) for k in protected)
    # converges: a second round only finishes capped removals, a third is a no-op
    second = diff(wants, _apply(after, diff(wants, after)))
    assert second.noop


# -- sync with an in-memory provider -------------------------------------------------------------


class MemoryProvider:
    def __init__(self) -> None:
        self.zone = ZONE
        self.rrsets: dict[tuple[str, str], RRset] = {}
        self.serial_no = 1
        self.writes_sent = 0
        self.down = False

    async def list_records(self) -> ZoneSnapshot:
        if self.down:
            raise ProviderUnreachable("server down")
        return ZoneSnapshot(ZONE, self.serial_no, dict(self.rrsets))

    async def apply(self, plan: Plan) -> ApplyResult:
        self.writes_sent += 1
        for c in plan.changes:
            for k in c.removes:
                self.rrsets.pop(k, None)
            for r in c.puts:
                self.rrsets[r.key] = r
        self.serial_no += 1
        return ApplyResult(applied=list(plan.changes), messages=1)

    async def serial(self) -> int:
        return self.serial_no

    async def resolve(self, name: str, rtype: str) -> tuple[str, ...]:
        r = self.rrsets.get((name, rtype))
        return r.values if r else ()

    answer_source = "authoritative server memory"
    checks_dns = True

    async def close(self) -> None:
        return None


async def test_sync_publishes_then_noop_with_identical_status() -> None:
    p = MemoryProvider()
    ns = make_ns()
    facts = [TargetFact("c1", "eu", "10.0.0.1", True), TargetFact("c2", "us", "10.0.0.2", True)]
    s1 = await sync_nameservice(ns, p, facts, None, HUB, NOW)
    assert s1.ready == "True" and s1.records == ["10.0.0.1", "10.0.0.2"] and s1.zone_serial == 2
    assert s1.summary.targets == "2/2"
    s2 = await sync_nameservice(ns, p, facts, s1, HUB, NOW)
    assert p.writes_sent == 1 and s2 == s1


async def test_sync_provider_down_keeps_records_and_is_unknown() -> None:
    p = MemoryProvider()
    ns = make_ns()
    s1 = await sync_nameservice(ns, p, [TargetFact("c1", "eu", "10.0.0.1", True)], None, HUB, NOW)
    p.down = True
    s2 = await sync_nameservice(ns, p, [TargetFact("c1", "eu", "10.0.0.9", True)], s1, HUB, NOW)
    assert s2.records == s1.records and s2.ready == "Unknown" and s2.pending
    programmed = next(c for c in s2.conditions if c.type == "Programmed")
    assert programmed.status == "Unknown" and programmed.reason == "ProviderUnreachable"


async def test_sync_conflict_reported_not_overwritten() -> None:
    p = MemoryProvider()
    foreign = RRset.make("checkout.example.test", "A", 300, ["192.0.2.1"])
    p.rrsets[foreign.key] = foreign
    s = await sync_nameservice(make_ns(), p, [TargetFact("c1", "eu", "10.0.0.1", True)], None, HUB, NOW)
    assert p.rrsets[foreign.key] == foreign and p.writes_sent == 0
    programmed = next(c for c in s.conditions if c.type == "Programmed")
    assert (programmed.status, programmed.reason) == ("False", "ForeignRecord") and s.ready == "False"


async def test_bulk_sync_one_write() -> None:
    p = MemoryProvider()
    items = [SyncItem(make_ns(f"s{i}"), [TargetFact("c", "eu", f"10.9.0.{i + 1}", True)]) for i in range(20)]
    report = await sync_nameservices(items, p, HUB, NOW)
    assert p.writes_sent == 1 and len(report.plan.adds) == 20
    assert all(s.ready == "True" for s in report.statuses)
