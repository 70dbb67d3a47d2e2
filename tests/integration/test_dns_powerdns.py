"""NameService against a real PowerDNS (gsqlite3 backend) on loopback through its HTTP API.

Published names are checked by resolving them against the PowerDNS authoritative DNS port.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.dnsservers import PowerDNSServer, start_powerdns
from nameservice.models import NameService
from nameservice.providers.powerdns import PowerDNSProvider
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
def pdns() -> Iterator[PowerDNSServer]:
    with start_powerdns([ZONE]) as server:
        yield server


def provider(pdns: PowerDNSServer, **kw: Any) -> PowerDNSProvider:
    return PowerDNSProvider(
        ZONE, pdns.api_url, pdns.api_key, nameserver=pdns.host, nameserver_port=pdns.port, **kw
    )


def make_ns(fqdn: str | None = None, **spec: Any) -> NameService:
    return _make_ns("pdns", fqdn, **spec)


def foreign(pdns: PowerDNSServer, name: str, rtype: str, content: str) -> None:
    status, body = pdns._request(
        "PATCH",
        f"/servers/{pdns.server_id}/zones/{ZONE}.",
        {
            "rrsets": [
                {
                    "name": name + ".",
                    "type": rtype,
                    "ttl": 300,
                    "changetype": "REPLACE",
                    "records": [{"content": content, "disabled": False}],
                }
            ]
        },
    )
    assert status == 204, body


async def test_publish_resolve_update_noop(pdns: PowerDNSServer) -> None:
    p = provider(pdns)
    ns = make_ns()
    st = await publish(p, ns, pdns)
    st2 = await change_one_vip(p, ns, pdns, st)
    await resync_is_noop(p, ns, st2)
    await p.close()


async def test_bulk_is_one_patch_and_delete_only_ours(pdns: PowerDNSServer) -> None:
    p = provider(pdns)
    items = [SyncItem(make_ns(), facts(f"10.8.{i // 250}.{i % 250 + 1}")) for i in range(300)]
    report = await sync_nameservices(items, p, HUB, NOW, verify=False)
    assert len(report.result.applied) == 300 and report.result.messages == 1
    assert resolve(pdns, items[299].ns.spec.fqdn) == ["10.8.1.50"]
    victim = items[0].ns
    foreign(pdns, victim.spec.fqdn, "TXT", '"site-verification=abc"')
    await delete_only_ours(p, pdns, victim)
    await p.close()


async def test_foreign_record_never_overwritten(pdns: PowerDNSServer) -> None:
    fqdn = f"{unique('legacy')}.{ZONE}"
    foreign(pdns, fqdn, "A", "192.0.2.10")
    p = provider(pdns)
    await foreign_record_kept(p, pdns, make_ns(fqdn))
    await p.close()


async def test_wrong_api_key_and_missing_zone(pdns: PowerDNSServer) -> None:
    bad = PowerDNSProvider(ZONE, pdns.api_url, "wrong-key")
    st = await sync_nameservice(make_ns(), bad, facts("10.0.0.1"), None, HUB, NOW)
    assert cond(st, "Programmed") == ("False", "AuthenticationFailed")
    await bad.close()
    missing = PowerDNSProvider("nothere.test", pdns.api_url, pdns.api_key)
    st2 = await sync_nameservice(make_ns("a.nothere.test"), missing, facts("10.0.0.1"), None, HUB, NOW)
    assert cond(st2, "Programmed") == ("False", "ZoneNotServed")
    await missing.close()


async def test_server_restart_is_retried(pdns: PowerDNSServer) -> None:
    p = provider(pdns, retry_seconds=30)
    ns = make_ns()
    st = await sync_nameservice(ns, p, facts("10.0.0.1"), None, HUB, NOW)
    pdns.stop()
    timer = threading.Timer(1.5, pdns.start)
    timer.start()
    try:
        st2 = await sync_nameservice(ns, p, facts("10.0.0.1", "10.0.0.2"), st, HUB, NOW)
    finally:
        timer.join()
    assert st2.ready == "True", st2.conditions
    assert resolve(pdns, ns.spec.fqdn) == ["10.0.0.1", "10.0.0.2"]
    await p.close()


async def test_a_nameserver_given_as_a_host_name_is_resolved_and_a_bad_one_named(pdns: PowerDNSServer) -> None:
    """spec.powerdns.nameserver may be a host name: resolved (dnspython takes addresses only, and used to
    raise ValueError past the Resolvable check, so no status was written). A name that does not resolve
    is Resolvable=Unknown naming it, the records still published."""
    p = PowerDNSProvider(ZONE, pdns.api_url, pdns.api_key, nameserver="localhost", nameserver_port=pdns.port)
    ns = make_ns()
    st = await sync_nameservice(ns, p, facts("10.0.0.1"), None, HUB, NOW)
    assert cond(st, "Resolvable") == ("True", "Resolved") and st.ready == "True", st.conditions
    await p.close()
    bad = PowerDNSProvider(ZONE, pdns.api_url, pdns.api_key, nameserver="no-such-host.invalid",
                           nameserver_port=pdns.port, retry_seconds=1)
    ns2 = make_ns()
    st2 = await sync_nameservice(ns2, bad, facts("10.0.0.2"), None, HUB, NOW)
    assert cond(st2, "Programmed")[0] == "True" and cond(st2, "Resolvable") == ("Unknown", "ProviderUnreachable")
    message = next(c.message for c in st2.conditions if c.type == "Resolvable")
    assert "spec.powerdns.nameserver 'no-such-host.invalid' does not resolve" in message
    assert resolve(pdns, ns2.spec.fqdn) == ["10.0.0.2"]
    await bad.close()


async def test_without_a_nameserver_resolvable_says_it_only_read_the_api(pdns: PowerDNSServer) -> None:
    """No nameserver: the check compares PowerDNS's own listing, and the condition says so (reason
    Listed), instead of claiming the authoritative server answered."""
    p = PowerDNSProvider(ZONE, pdns.api_url, pdns.api_key)
    st = await sync_nameservice(make_ns(), p, facts("10.0.0.3"), None, HUB, NOW)
    c = next(c for c in st.conditions if c.type == "Resolvable")
    assert (c.status, c.reason) == ("True", "Listed") and "PowerDNS API listing" in c.message
    assert "authoritative server" not in c.message
    await p.close()
