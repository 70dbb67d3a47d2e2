"""The status fragment `meshfed sds --kubeconfig` owns (federation.sds, pure parts) and how the
controller's evaluation (certs.manager.with_delivery) reads it: ACK/NACK per Envoy, refusals,
no churn (times kept while the facts are unchanged), the grace period after a restart."""

from __future__ import annotations

from datetime import UTC, datetime

from accesspoint.meta import condition
from certs.manager import with_delivery
from certs.models import (
    SDS_STATUS_FIELDS,
    CertificateStatus,
    ClusterDelivery,
    EnvoySdsStatus,
    SdsRefusal,
    SdsServing,
)
from federation.sds import desired_fragment, granted_identities, live_fragment, resource_name

SERIAL = "5f3a9c0e11223344556677"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def envoy(node: str, acked: str | None = None, *, nack: str | None = None, time: str = "2026-01-01T00:00:01Z",
          resource: str = "payments/checkout") -> EnvoySdsStatus:
    return EnvoySdsStatus(node=node, resource=resource, acked_version=acked, nack_version="9-bad" if nack else None,
                          nack_message=nack, connected=True, time=time)


def test_resource_name_is_namespace_slash_name() -> None:
    assert resource_name("payments", "checkout") == "payments/checkout"
    assert SDS_STATUS_FIELDS == ("envoys", "sds", "refusedClients")


def test_fragment_lists_connected_envoys_sorted_with_what_is_served() -> None:
    serving = SdsServing(resource="payments/checkout", serial=SERIAL, version=f"2-{SERIAL[:16]}")
    gone = envoy("c/gw-0", f"2-{SERIAL[:16]}").model_copy(update={"connected": False})
    out = desired_fragment([envoy("c/gw-2", f"2-{SERIAL[:16]}"), envoy("c/gw-1", nack="bad key"), gone],
                           serving, None)
    assert [e["node"] for e in out["envoys"]] == ["c/gw-1", "c/gw-2"]
    assert out["envoys"][0]["nackMessage"] == "bad key" and out["envoys"][1]["ackedVersion"] == f"2-{SERIAL[:16]}"
    assert out["sds"] == {"resource": "payments/checkout", "serial": SERIAL, "version": f"2-{SERIAL[:16]}"}


def test_nothing_to_say_without_envoys_or_refusals() -> None:
    serving = SdsServing(resource="payments/checkout", serial=SERIAL, version="1-x")
    assert desired_fragment([], serving, None) == {} == live_fragment({"envoys": [], "revision": 3})
    refused = serving.model_copy(update={"refused_serial": "77", "refused_message": "KeyMismatch: ..."})
    assert desired_fragment([], refused, None) == {"sds": refused.wire()}


def test_unchanged_facts_keep_the_live_times_so_a_restart_writes_nothing() -> None:
    live_status = {"revision": 2, "envoys": [envoy("c/gw-1", "2-a", time="2025-12-31T10:00:00Z").wire()],
                   "sds": SdsServing(resource="payments/checkout", serial="a", version="2-a",
                                     time="2025-12-31T09:00:00Z").wire()}
    again = desired_fragment([envoy("c/gw-1", "2-a", time="2026-01-01T00:00:05Z")],
                             SdsServing(resource="payments/checkout", serial="a", version="2-a",
                                        time="2026-01-01T00:00:04Z"), live_status)
    assert again == live_fragment(live_status)
    changed = desired_fragment([envoy("c/gw-1", "3-b", time="2026-01-01T00:00:05Z")], None, live_status)
    assert changed["envoys"][0]["time"] == "2026-01-01T00:00:05Z"


def test_grace_keeps_envoys_not_yet_reconnected_then_drops_them() -> None:
    live_status = {"envoys": [envoy("c/gw-1", "2-a").wire(), envoy("c/gw-2", "2-a").wire()]}
    back = envoy("c/gw-1", nack="bad key", time="2026-01-01T00:01:00Z")
    during = desired_fragment([back], None, live_status, keep_unknown=True, known=[("c/gw-1", "payments/checkout")])
    assert [(e["node"], e.get("nackMessage")) for e in during["envoys"]] == [("c/gw-1", "bad key"), ("c/gw-2", None)]
    after = desired_fragment([back], None, live_status)
    assert [e["node"] for e in after["envoys"]] == ["c/gw-1"]


def _status(**extra: object) -> CertificateStatus:
    return CertificateStatus.model_validate({"revision": 2, "serial": SERIAL, "notAfter": "2027-01-01T00:00:00Z",
                                             **extra})


def test_controller_evaluation_reads_acks_nacks_and_refusals() -> None:
    clusters = [ClusterDelivery(name="member-1", revision=2)]
    ok = with_delivery(_status(), clusters=clusters, envoys=[envoy("c/gw-1", f"2-{SERIAL[:16]}")], now=NOW)
    delivered = condition(ok.conditions, "Delivered")
    assert delivered is not None and delivered.status == "True" and delivered.message == "2/2 at revision 2"

    nacked = with_delivery(_status(), clusters=clusters, envoys=[envoy("c/gw-1", "1-old", nack="bad key")], now=NOW)
    delivered = condition(nacked.conditions, "Delivered")
    assert delivered is not None and (delivered.status, delivered.reason) == ("False", "DeliveryFailed")
    assert "c/gw-1: bad key" in delivered.message and nacked.ready == "False"

    refusal = SdsServing(resource="payments/checkout", serial=SERIAL, version="2-x", refused_serial="77",
                         refused_message="KeyMismatch: the private key does not match")
    refused = with_delivery(_status(sds=refusal.wire()), clusters=clusters,
                            envoys=[envoy("c/gw-1", f"2-{SERIAL[:16]}")], now=NOW)
    delivered = condition(refused.conditions, "Delivered")
    assert delivered is not None and delivered.reason == "DeliveryFailed"
    assert "meshfed sds refused serial 77: KeyMismatch" in delivered.message

    pending = with_delivery(_status(), clusters=clusters, envoys=[envoy("c/gw-1", "1-0123456789abcdef")], now=NOW)
    delivered = condition(pending.conditions, "Delivered")
    assert delivered is not None and delivered.reason == "Delivering" and "c/gw-1" in delivered.message


def refusal(identity: str, time: str = "2026-01-01T00:00:05Z") -> SdsRefusal:
    return SdsRefusal(identity=identity, node="c/gw-9", resource="payments/checkout", reason="PermissionDenied",
                      message=f"{identity} is not granted payments/checkout", time=time)


def test_refused_clients_are_listed_sorted_and_keep_their_first_time() -> None:
    out = desired_fragment([], None, None, refused=[refusal("spiffe://b"), refusal("spiffe://a")])
    assert [r["identity"] for r in out["refusedClients"]] == ["spiffe://a", "spiffe://b"]
    assert "envoys" not in out and "sds" not in out
    # the same refusals later (a client retrying, or after a restart): the live time stays, nothing to write
    again = desired_fragment([], None, out, refused=[refusal("spiffe://a", "2026-01-01T00:09:00Z"),
                                                     refusal("spiffe://b", "2026-01-01T00:09:00Z")])
    assert again == out == live_fragment(out)
    # expired refusals drop out; during the grace after a start, live ones are kept
    assert desired_fragment([], None, out) == {}
    assert desired_fragment([], None, out, keep_unknown=True) == out


def test_grants_come_from_spec_delivery_else_from_the_clusters_delivered_to() -> None:
    status = {"clusters": [{"name": "east-1"}, {"name": "west-1"}]}
    assert granted_identities({"spec": {}, "status": status}) == {
        "spiffe://meshfed/cluster/east-1", "spiffe://meshfed/cluster/west-1"}
    assert granted_identities({"spec": {}, "status": status}, "gw.{cluster}.corp.example") == {
        "gw.east-1.corp.example", "gw.west-1.corp.example"}
    explicit = {"spec": {"delivery": {"sdsClients": ["spiffe://corp/gw"]}}, "status": status}
    assert granted_identities(explicit) == {"spiffe://corp/gw"}
    assert granted_identities({"spec": {"delivery": {"sdsClients": []}}, "status": status}) == frozenset()
    assert granted_identities({"spec": {}}) == frozenset()  # not delivered anywhere yet: nobody
