"""NameService e2e: its own local fleet (hub + 3 members), the controller process and a real BIND.

An AccessPoint placed on 3 clusters + a NameService → the FQDN resolves (asked of BIND itself) to
the 3 VIPs and shows on the AccessPoint (status and `kubectl get` column); a VIP change in one
member reaches DNS event-driven; a controller restart writes nothing (hub or DNS); a foreign
record with the same name is never overwritten; bad input (wrong TSIG secret, zone not served,
FQDN outside the zone, unknown provider, missing AccessPoint, TTL out of range) gives a clear
condition and changes nothing in DNS; BIND stopped while a VIP changes → the status says what is
pending, and on its return the change is applied with nothing lost or duplicated; a stopped
cluster's VIP stays for the grace period, then goes, then comes back with the cluster; deletion
removes only what the NameService owns.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import dns.asyncquery
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.tsigkeyring
import dns.update
import pytest
from dnsservers import BindServer, start_bind  # e2e/ is on sys.path for its test modules (no __init__.py)

from federation.kube import ApiError, KubeClient
from fleet import HUB_NAMESPACE, Fleet, apiserver_binary, ensure_namespace
from fleet.testing import (
    ControllerProcess,
    create_namespace,
    diff_breakdown,
    events_until,
    eventually,
    get_status,
    tls_gateway_template,
    wait_condition,
    wait_status,
    write_breakdown,
)
from fleet.testing import condition as cond

pytestmark = pytest.mark.e2e

ZONE = "dns.test"
AP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
NSVC = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/nameservices"
DNSP = "/apis/meshfed.io/v1alpha1/dnsproviders"
SVC = "/api/v1/namespaces/{ns}/services"
GRACE = 30


# ---- fixtures: one fleet, one controller, one BIND for this module ----


@pytest.fixture(scope="module")
def bind() -> Iterator[BindServer]:
    with start_bind([ZONE]) as server:
        yield server


@pytest.fixture(scope="module")
async def hub_setup(hub: KubeClient, bind: BindServer) -> None:
    """The TSIG secret and the DNSProvider for BIND; a second provider with a wrong secret."""
    await ensure_namespace(hub, HUB_NAMESPACE)
    await put_secret(hub, "bind-tsig", bind.key_secret)
    await put_secret(hub, "wrong-tsig", base64.b64encode(secrets.token_bytes(32)).decode())
    await hub.create(DNSP, provider("bind", bind, "bind-tsig"), field_manager="e2e")
    await hub.create(DNSP, provider("bind-wrong-key", bind, "wrong-tsig"), field_manager="e2e")
    await hub.create(DNSP, provider("bind-other-zone", bind, "bind-tsig", zone="other.test"), field_manager="e2e")


@pytest.fixture(scope="module")
async def namespace(hub: KubeClient) -> str:
    return await create_namespace(hub, prefix="dns-")


# ---- helpers ----


async def put_secret(hub: KubeClient, name: str, value: str) -> None:
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": HUB_NAMESPACE},
            "type": "Opaque", "stringData": {"secret": value}}
    await hub.apply(f"/api/v1/namespaces/{HUB_NAMESPACE}/secrets/{name}", body, field_manager="e2e")


def provider(name: str, bind: BindServer, secret: str, zone: str = ZONE) -> dict[str, Any]:
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "DNSProvider", "metadata": {"name": name},
            "spec": {"type": "rfc2136", "zone": zone,
                     "rfc2136": {"server": bind.host, "port": bind.port, "timeoutSeconds": 2,
                                 "tsig": {"keyName": bind.key_name.rstrip("."), "algorithm": bind.key_algorithm,
                                          "secretRef": {"name": secret, "key": "secret"}}}}}


def accesspoint(ns: str, name: str) -> dict[str, Any]:
    template = tls_gateway_template(f"{name}.{ZONE}", "${name}")
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": name, "namespace": ns},
            "spec": {"template": template}}


def nameservice(ns: str, name: str, fqdn: str, *, target: dict[str, Any] | None = None, provider: str = "bind",
                **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "NameService", "metadata": {"name": name, "namespace": ns},
            "spec": {"fqdn": fqdn, "ttl": 30, "recordType": "A", "providerRef": {"name": provider},
                     "target": target or {"accessPointRef": {"name": name}}, **spec}}


async def resolve(bind: BindServer, name: str, rtype: str = "A") -> set[str]:
    """What BIND itself answers for (name, type), over UDP."""
    q = dns.message.make_query(name, rtype)
    r = await dns.asyncquery.udp(q, bind.host, port=bind.port, timeout=2)
    return {rd.to_text() for rr in r.answer for rd in rr}


async def soa_serial(bind: BindServer) -> int:
    q = dns.message.make_query(ZONE, "SOA")
    r = await dns.asyncquery.udp(q, bind.host, port=bind.port, timeout=2)
    return int(r.answer[0][0].serial)


async def wait_ap_vips(hub: KubeClient, ns: str, name: str, clusters: int = 3, timeout: float = 90) -> dict[str, str]:
    def vips_of(st: dict[str, Any]) -> dict[str, Any]:
        return {c["name"]: c.get("vip") for c in st.get("clusters") or []}

    def ok(st: dict[str, Any]) -> bool:
        vips = vips_of(st)
        return cond(st, "Ready").get("status") == "True" and len(vips) == clusters and all(vips.values())

    st = await wait_status(hub, f"{AP.format(ns=ns)}/{name}", ok, timeout=timeout, show=("clusters",),
                           message=f"AccessPoint {ns}/{name} not ready with VIPs")
    return {k: str(v) for k, v in vips_of(st).items()}


async def wait_resolves(bind: BindServer, name: str, values: set[str], timeout: float = 60) -> float:
    """Seconds until BIND answers exactly `values` for `name`."""
    start = time.monotonic()

    async def check() -> bool:
        got = await resolve(bind, name)
        if got != values:
            raise AssertionError(f"{name} resolves to {sorted(got)}, expected {sorted(values)}")
        return True

    await eventually(check, timeout, interval=0.05, message=f"{name} should resolve to {sorted(values)}")
    return time.monotonic() - start


async def wait_ns(hub: KubeClient, ns: str, name: str, ready: str, reason: str | None = None,
                  timeout: float = 60) -> dict[str, Any]:
    return await wait_condition(hub, f"{NSVC.format(ns=ns)}/{name}", "Ready", ready, reason, timeout=timeout,
                                show=("conditions", "pending"),
                                message=f"NameService {ns}/{name}: Ready={ready} {reason or ''}")


def table(out: str) -> list[dict[str, str]]:
    """`kubectl get` rows by column name, cut at the header's offsets (columns may be blank)."""
    header, *rows = out.splitlines()
    names = header.split()
    starts: list[int] = []
    for n in names:
        starts.append(header.index(n, starts[-1] + 1 if starts else 0))
    bounds = [*starts[1:], None]
    return [{n: r[a:b].strip() for n, a, b in zip(names, starts, bounds, strict=True)} for r in rows]


def axfr_count(bind: BindServer) -> int:
    return bind.log_path.read_text(errors="replace").count("AXFR started")


async def _true(value: bool) -> bool:
    return value


def kubectl(fleet: Fleet, *args: str) -> str:
    assert fleet.state is not None
    return subprocess.run(["kubectl", *args], capture_output=True, text=True, check=True,
                          env={**os.environ, "KUBECONFIG": str(fleet.state.hub.kubeconfig)}).stdout


# ---- tests ----


async def test_fqdn_resolves_to_the_vips_and_follows_a_vip_change(
    fleet: Fleet, controller: ControllerProcess, hub: KubeClient, members: dict[str, KubeClient],
    namespace: str, bind: BindServer,
) -> None:
    await hub.create(AP.format(ns=namespace), accesspoint(namespace, "shop"), field_manager="e2e")
    vips = await wait_ap_vips(hub, namespace, "shop")
    assert len(set(vips.values())) == 3
    await hub.create(NSVC.format(ns=namespace), nameservice(namespace, "shop", f"shop.{ZONE}",
                                                            unreachableGraceSeconds=GRACE), field_manager="e2e")
    st = await wait_ns(hub, namespace, "shop", "True", "Ready")
    await wait_resolves(bind, f"shop.{ZONE}", set(vips.values()), timeout=10)
    assert sorted(st["records"]) == sorted(vips.values())
    assert cond(st, "Programmed")["status"] == "True" and cond(st, "Resolvable")["status"] == "True"
    assert {t["cluster"]: (t["address"], t["included"], t["reason"]) for t in st["targets"]} == {
        c: (v, True, "Ready") for c, v in vips.items()}
    assert st["zone"] == ZONE and st["zoneSerial"] == await soa_serial(bind)
    assert st["summary"]["targets"] == "3/3"
    # The ownership record names this hub and this NameService.
    owner = await resolve(bind, f"_meshfed-owner.shop.{ZONE}", "TXT")
    assert owner == {f'"heritage=meshfed,hub=meshfed-hub,owner={namespace}/shop"'}

    # The AccessPoint shows its FQDN: in status and in `kubectl get accesspoints`.
    async def ap_fqdn() -> bool:
        return (await get_status(hub, f"{AP.format(ns=namespace)}/shop")).get("fqdn") == f"shop.{ZONE}"

    await eventually(ap_fqdn, 30, message="AccessPoint status.fqdn should show the NameService's FQDN")
    row = table(kubectl(fleet, "get", "accesspoints", "-n", namespace))[0]
    assert row["NAME"] == "shop" and row["FQDN"] == f"shop.{ZONE}", row
    row = table(kubectl(fleet, "get", "nameservices", "-n", namespace))[0]
    assert row == {**row, "NAME": "shop", "FQDN": f"shop.{ZONE}", "TYPE": "A", "TTL": "30",
                   "RECORDS": ",".join(sorted(vips.values())), "TARGETS": "3/3", "READY": "True"}, row
    row = table(kubectl(fleet, "get", "dnsproviders", "bind"))[0]
    assert row == {**row, "TYPE": "rfc2136", "ZONE": ZONE, "READY": "True"}, row

    # A VIP changes in member-2 (as a cloud load balancer would): DNS follows, event-driven.
    new_vip = "127.100.2.222"
    svc_status = f"{SVC.format(ns=namespace)}/shop-gw/status"
    await members["member-2"].merge_patch(svc_status, {"status": {"loadBalancer": {"ingress": [{"ip": new_vip}]}}})
    expected = {vips["member-1"], new_vip, vips["member-3"]}
    took = await wait_resolves(bind, f"shop.{ZONE}", expected, timeout=30)
    print(f"VIP change on member-2 -> served by BIND in {took:.2f}s")
    assert took < 5, f"VIP change took {took:.1f}s to reach DNS: must be event-driven, not a periodic resync"

    async def recorded() -> bool:  # the status follows the DNS write
        st = await wait_ns(hub, namespace, "shop", "True", "Ready")
        return sorted(st["records"]) == sorted(expected)

    await eventually(recorded, 10, message="status.records should show the new VIP")
    def published(events: list[dict[str, Any]]) -> None:
        assert any(e["reason"] == "Published" and e["involvedObject"]["name"] == "shop" for e in events)

    await events_until(hub, namespace, published)


async def test_controller_restart_writes_nothing_to_the_hub_or_dns(
    controller: ControllerProcess, hub: KubeClient, members: dict[str, KubeClient], namespace: str,
    bind: BindServer,
) -> None:
    await wait_ns(hub, namespace, "shop", "True", "Ready")
    await asyncio.sleep(3)  # let trailing events settle

    async def writes() -> dict[str, int]:
        clients = {"hub": hub, **members}
        counts = await asyncio.gather(*(write_breakdown(c) for c in clients.values()))
        return {f"{name}: {k}": v for name, bd in zip(clients, counts, strict=True) for k, v in bd.items()}

    before, serial = await writes(), await soa_serial(bind)
    transfers = axfr_count(bind)
    controller.restart()
    # BIND's own log witnesses the new process re-reading the zone (its first sync is an AXFR).
    await eventually(lambda: _true(axfr_count(bind) > transfers), 90, interval=0.5,
                     message="the restarted controller should re-sync the NameService (AXFR)")
    await asyncio.sleep(8)  # every AccessPoint and NameService reconciled
    assert controller.proc is not None and controller.proc.poll() is None, controller.log_tail()
    changed = diff_breakdown(before, await writes())
    assert not changed, f"writes after a restart with nothing changed: {changed}"
    assert await soa_serial(bind) == serial, "a restart with nothing changed must send no DNS UPDATE"
    await wait_ns(hub, namespace, "shop", "True", "Ready", timeout=5)


async def test_foreign_record_is_never_overwritten(
    controller: ControllerProcess, hub: KubeClient, namespace: str, bind: BindServer
) -> None:
    # Someone else's record at the name, no ownership TXT.
    keyring = dns.tsigkeyring.from_text({bind.key_name: (bind.key_algorithm, bind.key_secret)})
    upd = dns.update.UpdateMessage(ZONE, keyring=keyring, keyname=dns.name.from_text(bind.key_name),
                                   keyalgorithm=bind.key_algorithm)
    upd.add(f"taken.{ZONE}.", 300, "A", "192.0.2.10")
    resp = dns.query.tcp(upd, bind.host, port=bind.port, timeout=5)
    assert resp.rcode() == dns.rcode.NOERROR
    await hub.create(AP.format(ns=namespace), accesspoint(namespace, "taken"), field_manager="e2e")
    await hub.create(NSVC.format(ns=namespace), nameservice(namespace, "taken", f"taken.{ZONE}"), field_manager="e2e")
    st = await wait_ns(hub, namespace, "taken", "False", "ForeignRecord", timeout=90)
    assert "not published by meshfed" in cond(st, "Programmed")["message"]
    assert st.get("records", []) == []
    await wait_ap_vips(hub, namespace, "taken")
    await asyncio.sleep(3)  # several syncs later (the AccessPoint got its VIPs meanwhile): still untouched
    assert await resolve(bind, f"taken.{ZONE}") == {"192.0.2.10"}
    assert await resolve(bind, f"_meshfed-owner.taken.{ZONE}", "TXT") == set()
    def foreignrecord(events: list[dict[str, Any]]) -> None:
        assert any(e["reason"] == "ForeignRecord" and e["involvedObject"]["name"] == "taken" for e in events)

    await events_until(hub, namespace, foreignrecord)
    # Deleting the NameService leaves the foreign record alone.
    await hub.delete(f"{NSVC.format(ns=namespace)}/taken")

    async def gone() -> bool:
        return await hub.get(f"{NSVC.format(ns=namespace)}/taken") is None

    await eventually(gone, 30, message="NameService taken should be deleted (finalizer removed)")
    assert await resolve(bind, f"taken.{ZONE}") == {"192.0.2.10"}


async def test_bad_input_gives_a_clear_condition_and_changes_nothing(
    controller: ControllerProcess, hub: KubeClient, namespace: str, bind: BindServer
) -> None:
    await wait_ns(hub, namespace, "shop", "True", "Ready")
    serial = await soa_serial(bind)
    cases = {
        "wrongkey": (nameservice(namespace, "wrongkey", f"wrongkey.{ZONE}", target={"addresses": ["192.0.2.1"]},
                                 provider="bind-wrong-key"), "AuthenticationFailed", "BADSIG"),
        "otherzone": (nameservice(namespace, "otherzone", "x.other.test", target={"addresses": ["192.0.2.2"]},
                                  provider="bind-other-zone"), "ZoneNotServed", "not authoritative"),
        "outside": (nameservice(namespace, "outside", "x.elsewhere.example", target={"addresses": ["192.0.2.3"]}),
                    "FQDNOutsideZone", "outside zone"),
        "noprovider": (nameservice(namespace, "noprovider", f"noprovider.{ZONE}", provider="nope",
                                   target={"addresses": ["192.0.2.4"]}), "ProviderNotFound", "spec.providerRef.name"),
        "noap": (nameservice(namespace, "noap", f"noap.{ZONE}", target={"accessPointRef": {"name": "ghost"}}),
                 "AccessPointNotFound", "spec.target.accessPointRef.name"),
    }
    for body, _, _ in cases.values():
        await hub.create(NSVC.format(ns=namespace), body, field_manager="e2e")
    for name, (_, reason, words) in cases.items():
        st = await wait_ns(hub, namespace, name, "False", reason)
        programmed = cond(st, "Programmed")
        assert programmed["status"] == "False" and programmed["reason"] == reason
        assert words in programmed["message"], programmed
        assert st.get("records", []) == []
    # TTL out of range: the CRD schema refuses it, naming the field.
    with pytest.raises(ApiError) as err:
        await hub.create(NSVC.format(ns=namespace), nameservice(namespace, "badttl", f"badttl.{ZONE}", ttl=1),
                         field_manager="e2e")
    assert err.value.status == 422 and "spec.ttl" in err.value.message
    # Nothing reached DNS, and the wrong key shows on its DNSProvider too.
    for name in ("wrongkey", "noprovider", "noap"):
        assert await resolve(bind, f"{name}.{ZONE}") == set()
    assert await soa_serial(bind) == serial
    dnsp = await get_status(hub, f"{DNSP}/bind-wrong-key")
    assert cond(dnsp, "Ready")["status"] == "False" and cond(dnsp, "Ready")["reason"] == "AuthenticationFailed"
    # The good NameService is unaffected.
    await wait_ns(hub, namespace, "shop", "True", "Ready", timeout=5)
    # Fixing the input fixes the condition: the AccessPoint appears → the name is published.
    await hub.create(AP.format(ns=namespace), accesspoint(namespace, "ghost"), field_manager="e2e")
    vips = await wait_ap_vips(hub, namespace, "ghost")
    await wait_ns(hub, namespace, "noap", "True", "Ready")
    await wait_resolves(bind, f"noap.{ZONE}", set(vips.values()), timeout=10)


async def test_dns_server_outage_is_pending_then_applied_without_loss_or_duplicates(
    controller: ControllerProcess, hub: KubeClient, members: dict[str, KubeClient], namespace: str,
    bind: BindServer,
) -> None:
    st = await wait_ns(hub, namespace, "shop", "True", "Ready")
    before = set(st["records"])
    bind.stop()
    try:
        # A VIP changes while BIND is down: the status says what is pending; nothing is guessed.
        svc_status = f"{SVC.format(ns=namespace)}/shop-gw/status"
        vip1 = next(t["address"] for t in st["targets"] if t["cluster"] == "member-1")
        await members["member-1"].merge_patch(svc_status,
                                              {"status": {"loadBalancer": {"ingress": [{"ip": "127.100.1.77"}]}}})
        st = await wait_ns(hub, namespace, "shop", "Unknown", "ProviderUnreachable", timeout=90)
        assert cond(st, "Programmed")["status"] == "Unknown"
        assert any("shop.dns.test" in p and "unreachable" in p for p in st["pending"]), st["pending"]
        assert set(st["records"]) == before, "the published set stays the last known-good one"
    finally:
        bind.start()
    expected = (before - {vip1}) | {"127.100.1.77"}
    await wait_resolves(bind, f"shop.{ZONE}", expected, timeout=90)
    st = await wait_ns(hub, namespace, "shop", "True", "Ready", timeout=30)
    assert st.get("pending", []) == [] and set(st["records"]) == expected
    # Nothing lost or duplicated: one A rrset with exactly these values, one ownership value.
    assert await resolve(bind, f"_meshfed-owner.shop.{ZONE}", "TXT") == {
        f'"heritage=meshfed,hub=meshfed-hub,owner={namespace}/shop"'}
    r = await dns.asyncquery.udp(dns.message.make_query(f"shop.{ZONE}", "A"), bind.host, port=bind.port, timeout=2)
    assert sorted(rd.to_text() for rr in r.answer for rd in rr) == sorted(expected)


async def test_stopped_cluster_keeps_its_vip_for_the_grace_period(
    fleet: Fleet, controller: ControllerProcess, hub: KubeClient, namespace: str, bind: BindServer
) -> None:
    assert fleet.state is not None
    st = await wait_ns(hub, namespace, "shop", "True", "Ready")
    published = set(st["records"])
    member3_vip = next(t["address"] for t in st["targets"] if t["cluster"] == "member-3")
    down = fleet.state.member("member-3")
    # ClusterProc.stop waits for the API server's graceful shutdown: keep watching meanwhile.
    stopping = asyncio.create_task(asyncio.to_thread(down.stop))
    try:
        async def in_grace() -> dict[str, Any]:
            s = await get_status(hub, f"{NSVC.format(ns=namespace)}/shop")
            t: dict[str, Any] = next((t for t in s.get("targets") or [] if t["cluster"] == "member-3"), {})
            if t.get("reason") != "UnreachableInGrace":
                raise AssertionError(s.get("targets"))
            return s

        st = await eventually(in_grace, 30, message="member-3 should be UnreachableInGrace")
        target = next(t for t in st["targets"] if t["cluster"] == "member-3")
        assert target["included"] and target["address"] == member3_vip and target["unreachableSince"]
        # The grace period counts from when the hub saw the cluster unreachable (wall clock).
        since = datetime.fromisoformat(target["unreachableSince"].replace("Z", "+00:00")).timestamp()
        expiry = since + GRACE
        assert expiry - time.time() > 5, "the test noticed the outage too late to watch the grace period"
        # Within the grace period the VIP stays published.
        while time.time() < expiry - 2:
            got = await resolve(bind, f"shop.{ZONE}")
            if got != published:
                st = await get_status(hub, f"{NSVC.format(ns=namespace)}/shop")
                raise AssertionError(f"VIP dropped {expiry - time.time():.1f}s before the grace period ends: "
                                     f"{got}; targets {st.get('targets')}; {controller.log_tail(3000)}")
            await asyncio.sleep(0.5)
        # After it, the VIP goes (timer-driven, no event needed) and the others stay.
        await wait_resolves(bind, f"shop.{ZONE}", published - {member3_vip}, timeout=30)
        assert time.time() >= expiry and time.time() - expiry < 15, time.time() - expiry
        # The status is written after the DNS UPDATE of the same reconcile: wait for it to say so.
        async def grace_expired() -> dict[str, Any]:
            s = await get_status(hub, f"{NSVC.format(ns=namespace)}/shop")
            t: dict[str, Any] = next((t for t in s.get("targets") or [] if t["cluster"] == "member-3"), {})
            if t.get("included") is not False or t.get("reason") != "GraceExpired":
                raise AssertionError(s.get("targets"))
            return s

        await eventually(grace_expired, 15, message="member-3 should be GraceExpired after its VIP went")
        await wait_ns(hub, namespace, "shop", "True", "Ready")
    finally:
        await stopping
        down.start(apiserver_binary(quiet=True))
        await down.wait_ready()
    # The cluster is back: its VIP is published again.
    await wait_resolves(bind, f"shop.{ZONE}", published, timeout=60)


async def test_deletion_removes_only_what_the_nameservice_owns(
    controller: ControllerProcess, hub: KubeClient, namespace: str, bind: BindServer
) -> None:
    await wait_ns(hub, namespace, "shop", "True", "Ready")
    assert await resolve(bind, f"shop.{ZONE}")
    await hub.delete(f"{NSVC.format(ns=namespace)}/shop")

    async def removed() -> bool:
        return await resolve(bind, f"shop.{ZONE}") == set() and \
            await resolve(bind, f"_meshfed-owner.shop.{ZONE}", "TXT") == set() and \
            await hub.get(f"{NSVC.format(ns=namespace)}/shop") is None

    await eventually(removed, 30, message="shop's records and then the NameService should be gone")
    assert await resolve(bind, f"taken.{ZONE}") == {"192.0.2.10"}, "a foreign record must survive"
    assert await resolve(bind, f"noap.{ZONE}"), "another NameService's records must survive"

    async def fqdn_cleared() -> bool:
        return "fqdn" not in await get_status(hub, f"{AP.format(ns=namespace)}/shop")

    await eventually(fqdn_cleared, 30, message="the AccessPoint's FQDN should be cleared")
