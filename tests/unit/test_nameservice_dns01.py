"""nameservice.dns01.plan_challenge (pure): one ACME challenge value added to / removed from the TXT
rrset at a name, never touching foreign values, non-TXT names or names outside the zone; and
federation.certificates.secret_refs (which hub Secrets the issuers read)."""

from __future__ import annotations

import pytest

from federation.certificates import secret_refs
from nameservice.dns01 import ChallengeConflict, plan_challenge
from nameservice.providers import OutsideZone
from nameservice.records import Owner, RRset, ZoneSnapshot

OWNER = Owner("hub", "acme", "issuer")
NAME = "_acme-challenge.shop.example.test."


def zone(*rrsets: RRset) -> ZoneSnapshot:
    return ZoneSnapshot.of("example.test", 1, list(rrsets))


def test_add_to_an_empty_name_and_remove_it_again() -> None:
    change = plan_challenge(zone(), NAME, "v1", 60, OWNER, present=True)
    assert change is not None and change.kind == "add"
    assert change.after == (RRset.make(NAME, "TXT", 60, ["v1"]),) and change.before == ()
    ours = RRset.make(NAME, "TXT", 60, ["v1"])
    gone = plan_challenge(zone(ours), NAME, "v1", 60, OWNER, present=False)
    assert gone is not None and gone.kind == "delete" and gone.before == (ours,) and gone.removes == ((NAME, "TXT"),)


def test_foreign_values_and_their_ttl_are_kept() -> None:
    foreign = RRset.make(NAME, "TXT", 300, ["someone-else"])
    change = plan_challenge(zone(foreign), NAME, "v1", 60, OWNER, present=True)
    assert change is not None and change.kind == "update" and change.before == (foreign,)
    assert change.after == (RRset.make(NAME, "TXT", 300, ["someone-else", "v1"]),)
    both = change.after[0]
    back = plan_challenge(zone(both), NAME, "v1", 60, OWNER, present=False)
    assert back is not None and back.kind == "update" and back.after == (foreign,)


def test_nothing_to_do() -> None:
    ours = RRset.make(NAME, "TXT", 60, ["v1"])
    assert plan_challenge(zone(ours), NAME, "v1", 60, OWNER, present=True) is None
    assert plan_challenge(zone(ours), NAME, "v2", 60, OWNER, present=False) is None
    assert plan_challenge(zone(), NAME, "v1", 60, OWNER, present=False) is None


def test_non_txt_at_the_name_and_outside_the_zone_are_refused() -> None:
    cname = RRset.make(NAME, "CNAME", 300, ["elsewhere.test."])
    with pytest.raises(ChallengeConflict, match="CNAME"):
        plan_challenge(zone(cname), NAME, "v1", 60, OWNER, present=True)
    with pytest.raises(ChallengeConflict):
        plan_challenge(zone(cname), NAME, "v1", 60, OWNER, present=False)
    with pytest.raises(OutsideZone):
        plan_challenge(zone(), "_acme-challenge.shop.other.test.", "v1", 60, OWNER, present=True)


def test_secret_refs_name_every_secret_an_issuer_reads() -> None:
    issuers = {
        "ca": {"spec": {"ca": {"secretRef": {"name": "corp-ca"}}}},
        "acme": {"spec": {"acme": {"accountKeySecretRef": {"name": "acct", "namespace": "certs"},
                                   "externalAccountBinding": {"keySecretRef": {"name": "eab"}}}}},
        "acme2": {"spec": {"acme": {"accountKeySecretRef": {"name": "acct", "namespace": "certs"}}}},
        "broken": {"spec": {}},
    }
    assert secret_refs(issuers) == {("meshfed-system", "corp-ca"): {"ca"}, ("certs", "acct"): {"acme", "acme2"},
                                    ("meshfed-system", "eab"): {"acme"}}
