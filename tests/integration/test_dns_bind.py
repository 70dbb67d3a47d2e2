"""NameService against a real BIND 9 on loopback: RFC 2136 + TSIG, AXFR/IXFR, prerequisites, faults.

Every check of a published name resolves it against the authoritative server with dnspython.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import dns.name
import dns.query
import dns.rcode
import dns.tsigkeyring
import dns.update
import pytest

from e2e.dnsservers import BindServer, start_bind
from nameservice.models import NameService
from nameservice.plan import diff
from nameservice.providers.rfc2136 import RFC2136Provider
from nameservice.records import TargetFact, desired, owner_name
from nameservice.sync import SyncItem, sync_nameservice, sync_nameservices
from tests.integration.dns_harness import (
    HUB,
    NOW,
    ZONE,
    change_one_vip,
    cond,
    delete_only_ours,
    facts,
    foreign_record_kept,
    publish,
    resolve,
    resync_is_noop,
    unique,
)
from tests.integration.dns_harness import make_ns as _make_ns

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bind() -> Iterator[BindServer]:
    with start_bind([ZONE]) as server:
        yield server


def provider(bind: BindServer, **kw: Any) -> RFC2136Provider:
    return RFC2136Provider(ZONE, bind.host, bind.key_name, bind.key_secret, port=bind.port, **kw)


def make_ns(fqdn: str | None = None, **spec: Any) -> NameService:
    return _make_ns("bind", fqdn, **spec)


def raw_update(bind: BindServer, build: Any) -> int:
    kr = dns.tsigkeyring.from_text({bind.key_name: (bind.key_algorithm, bind.key_secret)})
    upd = dns.update.UpdateMessage(
        ZONE, keyring=kr, keyname=dns.name.from_text(bind.key_name), keyalgorithm=bind.key_algorithm
    )
    build(upd)
    return dns.query.tcp(upd, bind.host, port=bind.port, timeout=3).rcode()


async def test_publish_resolve_update_noop(bind: BindServer) -> None:
    p = provider(bind)
    ns = make_ns()
    st = await publish(p, ns, bind)
    assert cond(st, "Resolvable") == ("True", "Resolved")
    assert st.zone_serial is not None and st.zone_serial > 1
    # a VIP changes in one member
    st2 = await change_one_vip(p, ns, bind, st)
    # nothing changed: zero UPDATE messages, identical status, listing by IXFR
    ixfr = p.transfers["IXFR"]
    await resync_is_noop(p, ns, st2)
    assert p.transfers["IXFR"] > ixfr
    await p.close()


async def test_foreign_record_never_overwritten(bind: BindServer) -> None:
    fqdn = f"{unique('legacy')}.{ZONE}"
    assert raw_update(bind, lambda u: u.add(fqdn + ".", 300, "A", "192.0.2.10")) == dns.rcode.NOERROR
    p = provider(bind)
    st = await foreign_record_kept(p, bind, make_ns(fqdn))
    assert st.ready == "False"
    await p.close()


async def test_prerequisites_stop_a_stale_plan(bind: BindServer) -> None:
    p = provider(bind)
    ns = make_ns()
    st = await sync_nameservice(ns, p, facts("10.0.0.1"), None, HUB, NOW)
    snap = await p.list_records()
    plan = diff([desired(ns, facts("10.0.0.2"), st, HUB, NOW)], snap)
    # someone else rewrites the record between our listing and our update
    assert (
        raw_update(bind, lambda u: u.replace(ns.spec.fqdn + ".", 30, "A", "192.0.2.99")) == dns.rcode.NOERROR
    )
    result = await p.apply(plan)
    assert not result.applied and [c.reason for c in result.failed] == ["PreconditionFailed"]
    assert resolve(bind, ns.spec.fqdn) == ["192.0.2.99"]
    await p.close()


async def test_batched_bulk_sync_and_delete_only_ours(bind: BindServer) -> None:
    p = provider(bind, batch_size=200)
    items = [SyncItem(make_ns(), facts(f"10.7.{i // 250}.{i % 250 + 1}")) for i in range(300)]
    report = await sync_nameservices(items, p, HUB, NOW, verify=False)
    assert len(report.result.applied) == 300
    assert report.result.messages == 3  # 600 records, 200 per UPDATE message
    for it in items[::50]:
        assert resolve(bind, it.ns.spec.fqdn) != []
    # deletion removes what the NameService owns, nothing else at the name
    victim = items[0].ns
    assert raw_update(bind, lambda u: u.add(victim.spec.fqdn + ".", 300, "TXT", "site-verification=abc")) == 0
    await delete_only_ours(p, bind, victim)
    assert resolve(bind, owner_name(victim.spec.fqdn), "TXT") == []
    await p.close()


async def test_unreachable_cluster_kept_for_grace(bind: BindServer) -> None:
    p = provider(bind)
    ns = make_ns(unreachableGraceSeconds=60)
    st = await sync_nameservice(ns, p, facts("10.0.0.1", "10.0.0.2"), None, HUB, NOW)
    down = [TargetFact("c0", "eu", "10.0.0.1", True), TargetFact("c1", "eu", None, False, NOW)]
    st = await sync_nameservice(ns, p, down, st, HUB, NOW + timedelta(seconds=30))
    assert resolve(bind, ns.spec.fqdn) == ["10.0.0.1", "10.0.0.2"]
    assert next(t for t in st.targets if t.cluster == "c1").reason == "UnreachableInGrace"
    st = await sync_nameservice(ns, p, down, st, HUB, NOW + timedelta(seconds=61))
    assert resolve(bind, ns.spec.fqdn) == ["10.0.0.1"]
    # every cluster gone: the last good record stays
    st = await sync_nameservice(
        ns, p, [TargetFact("c0", "eu", None, False, NOW)], st, HUB, NOW + timedelta(hours=1)
    )
    assert resolve(bind, ns.spec.fqdn) == ["10.0.0.1"] and cond(st, "Ready") == ("False", "KeptLastGood")
    await p.close()


async def test_wrong_tsig_secret_and_unknown_key(bind: BindServer) -> None:
    wrong = base64.b64encode(secrets.token_bytes(32)).decode()
    p = RFC2136Provider(ZONE, bind.host, bind.key_name, wrong, port=bind.port)
    ns = make_ns()
    st = await sync_nameservice(ns, p, facts("10.0.0.1"), None, HUB, NOW)
    status, reason = cond(st, "Programmed")
    assert (status, reason) == ("False", "AuthenticationFailed")
    msg = next(c for c in st.conditions if c.type == "Programmed").message
    assert "BADSIG" in msg and "wrong TSIG secret" in msg
    assert resolve(bind, ns.spec.fqdn) == []
    p2 = RFC2136Provider(ZONE, bind.host, "nobody.", bind.key_secret, port=bind.port)
    st2 = await sync_nameservice(ns, p2, facts("10.0.0.1"), None, HUB, NOW)
    assert cond(st2, "Programmed") == ("False", "AuthenticationFailed")
    assert "BADKEY" in next(c for c in st2.conditions if c.type == "Programmed").message


async def test_zone_not_served_and_fqdn_outside_zone(bind: BindServer) -> None:
    p = RFC2136Provider("nothere.test", bind.host, bind.key_name, bind.key_secret, port=bind.port)
    st = await sync_nameservice(make_ns("a.nothere.test"), p, facts("10.0.0.1"), None, HUB, NOW)
    assert cond(st, "Programmed") == ("False", "ZoneNotServed")
    p2 = provider(bind)
    st2 = await sync_nameservice(make_ns("www.elsewhere.test"), p2, facts("10.0.0.1"), None, HUB, NOW)
    assert cond(st2, "Programmed") == ("False", "FQDNOutsideZone") and p2.writes_sent == 0


async def test_server_stopped_then_restarted(bind: BindServer) -> None:
    p = provider(bind, retry_seconds=30)
    ns = make_ns()
    st = await sync_nameservice(ns, p, facts("10.0.0.1"), None, HUB, NOW)
    # down for good (short retry budget): Unknown, records kept, pending says what waits
    short = provider(bind, retry_seconds=1.0, timeout=0.5)
    bind.stop()
    try:
        down = await sync_nameservice(ns, short, facts("10.0.0.1", "10.0.0.2"), st, HUB, NOW)
    finally:
        bind.start()
    assert cond(down, "Programmed") == ("Unknown", "ProviderUnreachable")
    assert down.records == ["10.0.0.1"] and down.pending and "unreachable" in down.pending[0]
    # down for ~1.5 s during a sync: retried with backoff, applied exactly once
    bind.stop()
    timer = threading.Timer(1.5, bind.start)
    timer.start()
    started = time.monotonic()
    try:
        st2 = await sync_nameservice(ns, p, facts("10.0.0.1", "10.0.0.2"), st, HUB, NOW)
    finally:
        timer.join()
    assert time.monotonic() - started >= 1.0
    assert st2.ready == "True", st2.conditions
    assert resolve(bind, ns.spec.fqdn) == ["10.0.0.1", "10.0.0.2"]
    assert len(resolve(bind, owner_name(ns.spec.fqdn), "TXT")) == 1
    # the restarted server kept everything: a resync is a no-op
    sent = p.writes_sent
    await sync_nameservice(ns, p, facts("10.0.0.1", "10.0.0.2"), st2, HUB, NOW)
    assert p.writes_sent == sent
    await p.close()
    await short.close()
    await asyncio.sleep(0)


async def test_oversized_update_is_split(bind: BindServer) -> None:
    p = provider(bind, batch_size=2000)
    items = [SyncItem(make_ns(), facts(f"10.6.{i // 250}.{i % 250 + 1}")) for i in range(1000)]
    report = await sync_nameservices(items, p, HUB, NOW, verify=False)
    assert len(report.result.applied) == 1000 and not report.result.failed
    assert report.result.messages >= 2  # 2,000 records do not fit one 64 KiB message
    assert resolve(bind, items[-1].ns.spec.fqdn) == ["10.6.3.250"]
    await p.close()
