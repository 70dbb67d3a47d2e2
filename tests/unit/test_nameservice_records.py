"""Desired records (pure): target decisions, grace period, keep-last-good, routing, ownership TXT."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from nameservice.models import DNSProvider, NameService, NameServiceStatus
from nameservice.records import (
    OWNER_PREFIX,
    Owner,
    TargetFact,
    absolute,
    desired,
    owner_name,
    parse_owner,
    removal,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HUB = "hub-a"


def make_ns(**spec: Any) -> NameService:
    base: dict[str, Any] = {
        "fqdn": "checkout.example.test",
        "providerRef": {"name": "bind"},
        "target": {"accessPointRef": {"name": "checkout"}},
    }
    base.update(spec)
    return NameService.model_validate(
        {"metadata": {"name": "checkout", "namespace": "payments", "generation": 1}, "spec": base}
    )


def fact(
    cluster: str,
    vip: str | None,
    reachable: bool | None = True,
    region: str = "eu",
    last_seen: datetime | None = None,
) -> TargetFact:
    return TargetFact(cluster, region, vip, reachable, last_seen)


def status_of(
    ns: NameService, targets: list[TargetFact] | None, prev: NameServiceStatus | None, now: datetime = NOW
) -> NameServiceStatus:
    d = desired(ns, targets, prev, HUB, now)
    return NameServiceStatus(records=list(d.values), targets=list(d.targets))


# -- models --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"ttl": 1}, "ttl"),
        ({"ttl": 90000}, "ttl"),
        ({"fqdn": "Bad_Name!"}, "fqdn"),
        ({"target": {}}, "exactly one"),
        ({"target": {"addresses": ["10.0.0.1"], "hostname": "x.example.test"}}, "exactly one"),
        ({"target": {"addresses": ["not-an-ip"]}}, "not an IP"),
        ({"recordType": "AAAA", "target": {"addresses": ["10.0.0.1"]}}, "AAAA"),
        ({"recordType": "A", "target": {"hostname": "lb.example.test"}}, "CNAME"),
        ({"routing": {"policy": "PrimaryRegionFailover"}}, "primaryRegion"),
        ({"maxRemovalsPerSync": 0}, "maxRemovalsPerSync"),
        ({"recordType": "MX"}, "recordType"),
    ],
)
def test_bad_spec_names_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        make_ns(**spec)
    assert field in str(err.value)


def test_provider_spec_requires_matching_backend() -> None:
    with pytest.raises(ValidationError, match="rfc2136"):
        DNSProvider.model_validate({"spec": {"type": "rfc2136", "zone": "example.test"}})
    p = DNSProvider.model_validate(
        {
            "spec": {
                "type": "powerdns",
                "zone": "example.test",
                "powerdns": {
                    "apiURL": "http://127.0.0.1:8081",
                    "apiKeySecretRef": {"name": "pdns", "key": "k"},
                },
            }
        }
    )
    assert p.spec.powerdns is not None and p.spec.powerdns.server_id == "localhost"


def test_crds_are_generated_with_columns() -> None:
    from federation.crdgen import all_crds

    crds = {c["spec"]["names"]["kind"]: c for c in all_crds()}
    ns = crds["NameService"]["spec"]["versions"][0]
    assert [c["name"] for c in ns["additionalPrinterColumns"]][:3] == ["FQDN", "Type", "TTL"]
    spec = ns["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["ttl"]["minimum"] == 5
    assert spec["properties"]["target"]["x-kubernetes-validations"]
    assert crds["DNSProvider"]["spec"]["scope"] == "Cluster"


# -- ownership -----------------------------------------------------------------------------------


def test_ownership_txt_round_trips() -> None:
    owner = Owner(HUB, "payments", "checkout")
    assert parse_owner(owner.txt) == owner
    assert parse_owner('"v=spf1 -all"') is None
    assert owner_name("Checkout.Example.Test") == f"{OWNER_PREFIX}.checkout.example.test."
    d = desired(make_ns(), [fact("c1", "10.0.0.1")], None, HUB, NOW)
    assert d.ownership.name == owner_name(d.name)
    assert d.ownership.values == (owner.txt,)


# -- target decisions ----------------------------------------------------------------------------


def test_all_ready_vips_published_sorted() -> None:
    d = desired(make_ns(), [fact("c2", "10.0.0.2"), fact("c1", "10.0.0.1"), fact("c3", None)], None, HUB, NOW)
    assert d.rrset is not None and d.rrset.values == ("10.0.0.1", "10.0.0.2")
    assert d.rrset.name == "checkout.example.test." and d.rrset.ttl == 60
    reasons = {t.cluster: (t.included, t.reason) for t in d.targets}
    assert reasons == {"c1": (True, "Ready"), "c2": (True, "Ready"), "c3": (False, "NoVIP")}


def test_unreachable_vip_kept_for_grace_then_dropped() -> None:
    ns = make_ns(unreachableGraceSeconds=300)
    prev = status_of(ns, [fact("c1", "10.0.0.1"), fact("c2", "10.0.0.2")], None)
    seen = NOW
    later = NOW + timedelta(seconds=120)
    d = desired(ns, [fact("c1", "10.0.0.1"), fact("c2", None, False, last_seen=seen)], prev, HUB, later)
    assert d.values == ("10.0.0.1", "10.0.0.2")
    c2 = next(t for t in d.targets if t.cluster == "c2")
    assert c2.reason == "UnreachableInGrace" and c2.address == "10.0.0.2"
    prev2 = NameServiceStatus(records=list(d.values), targets=list(d.targets))
    d2 = desired(
        ns, [fact("c1", "10.0.0.1"), fact("c2", None, False)], prev2, HUB, NOW + timedelta(seconds=301)
    )
    assert d2.values == ("10.0.0.1",)
    assert next(t for t in d2.targets if t.cluster == "c2").reason == "GraceExpired"


def test_grace_counts_from_first_observation_without_last_seen() -> None:
    ns = make_ns(unreachableGraceSeconds=60)
    prev = status_of(ns, [fact("c1", "10.0.0.1"), fact("c2", "10.0.0.2")], None)
    s1 = status_of(ns, [fact("c1", "10.0.0.1"), fact("c2", "10.0.0.2", False)], prev, NOW)
    assert s1.records == ["10.0.0.1", "10.0.0.2"]
    s2 = status_of(
        ns, [fact("c1", "10.0.0.1"), fact("c2", "10.0.0.2", False)], s1, NOW + timedelta(seconds=59)
    )
    assert s2.records == ["10.0.0.1", "10.0.0.2"]
    s3 = status_of(
        ns, [fact("c1", "10.0.0.1"), fact("c2", "10.0.0.2", False)], s2, NOW + timedelta(seconds=61)
    )
    assert s3.records == ["10.0.0.1"]


def test_unknown_source_keeps_last_good() -> None:
    ns = make_ns()
    prev = status_of(ns, [fact("c1", "10.0.0.1"), fact("c2", "10.0.0.2")], None)
    d = desired(ns, None, prev, HUB, NOW)
    assert d.values == ("10.0.0.1", "10.0.0.2")
    assert {t.reason for t in d.targets} == {"KeptLastGood"}


def test_all_gone_keeps_last_good_and_says_so() -> None:
    ns = make_ns(unreachableGraceSeconds=0)
    prev = status_of(ns, [fact("c1", "10.0.0.1")], None)
    d = desired(ns, [fact("c1", None, False)], prev, HUB, NOW + timedelta(hours=1))
    assert d.values == ("10.0.0.1",) and d.kept_last_good
    assert "last published" in d.message


def test_reachability_unknown_keeps_previous_decision() -> None:
    ns = make_ns()
    prev = status_of(ns, [fact("c1", "10.0.0.1"), fact("c2", "10.0.0.2")], None)
    d = desired(ns, [fact("c1", "10.0.0.1", None), fact("c2", "10.0.0.2")], prev, HUB, NOW)
    assert d.values == ("10.0.0.1", "10.0.0.2")
    assert next(t for t in d.targets if t.cluster == "c1").reason == "ReachabilityUnknown"
    fresh = desired(ns, [fact("c1", "10.0.0.1", None), fact("c2", "10.0.0.2")], None, HUB, NOW)
    assert fresh.values == ("10.0.0.2",)


def test_primary_region_failover() -> None:
    ns = make_ns(routing={"policy": "PrimaryRegionFailover", "primaryRegion": "eu"})
    facts = [
        fact("a", "10.0.0.1", region="eu"),
        fact("b", "10.0.0.2", region="us"),
        fact("c", "10.0.0.3", region="ap"),
    ]
    d = desired(ns, facts, None, HUB, NOW)
    assert d.values == ("10.0.0.1",)
    assert {t.cluster: t.reason for t in d.targets} == {"a": "Ready", "b": "Standby", "c": "Standby"}
    facts[0] = fact("a", None, region="eu")
    assert desired(ns, facts, None, HUB, NOW).values == ("10.0.0.2", "10.0.0.3")


def test_family_and_explicit_and_cname() -> None:
    d = desired(
        make_ns(recordType="AAAA"), [fact("a", "10.0.0.1"), fact("b", "2001:db8::0001")], None, HUB, NOW
    )
    assert d.values == ("2001:db8::1",)
    assert next(t for t in d.targets if t.cluster == "a").reason == "AddressFamilyMismatch"
    e = desired(make_ns(target={"addresses": ["10.0.0.9", "10.0.0.8"]}), None, None, HUB, NOW)
    assert e.values == ("10.0.0.8", "10.0.0.9")
    c = desired(make_ns(recordType="CNAME", target={"hostname": "lb.example.test."}), None, None, HUB, NOW)
    assert c.rrset is not None and c.rrset.rtype == "CNAME" and c.values == ("lb.example.test.",)
    multi = desired(
        make_ns(recordType="CNAME"),
        [fact("b", "lb-b.example.test"), fact("a", "lb-a.example.test")],
        None,
        HUB,
        NOW,
    )
    assert multi.values == ("lb-a.example.test.",)
    assert {t.cluster: t.reason for t in multi.targets} == {"a": "Ready", "b": "NotSelected"}


def test_removal_is_marked() -> None:
    r = removal(make_ns(), HUB)
    assert r.remove and r.rrset is None and r.name == absolute("checkout.example.test")


# -- properties ----------------------------------------------------------------------------------

ips = st.integers(min_value=1, max_value=250).map(lambda i: f"10.1.0.{i}")
facts_st = st.lists(
    st.builds(
        TargetFact,
        cluster=st.sampled_from([f"c{i}" for i in range(8)]),
        region=st.sampled_from(["eu", "us"]),
        vip=st.none() | ips,
        reachable=st.sampled_from([True, False, None]),
        last_seen=st.none() | st.integers(0, 600).map(lambda s: NOW - timedelta(seconds=s)),
    ),
    max_size=8,
    unique_by=lambda f: f.cluster,
)


@settings(max_examples=200, deadline=None)
@given(facts_st, facts_st, st.booleans(), st.integers(0, 900))
def test_deterministic_and_never_empty_once_published(
    first: list[TargetFact], second: list[TargetFact], unknown: bool, grace: int
) -> None:
    ns = make_ns(unreachableGraceSeconds=grace)
    d1 = desired(ns, first, None, HUB, NOW)
    assert d1 == desired(ns, list(reversed(first)), None, HUB, NOW)
    prev = NameServiceStatus(records=list(d1.values), targets=list(d1.targets))
    d2 = desired(ns, None if unknown else second, prev, HUB, NOW + timedelta(seconds=30))
    if d1.values:
        assert d2.values, "a published name never becomes empty"
    if unknown:
        assert d2.values == d1.values
    assert all(t.address for t in d2.targets if t.included)
