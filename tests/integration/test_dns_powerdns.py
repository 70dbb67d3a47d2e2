"""NameService against a real PowerDNS (gsqlite3 backend) on loopback through its HTTP API.

Published names are checked by resolving them against the PowerDNS authoritative DNS port.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import count
from typing import Any

import dns.message
import dns.query
import pytest

from e2e.dnsservers import PowerDNSServer, start_powerdns
from nameservice.models import NameService, NameServiceStatus
from nameservice.providers import PowerDNSProvider
from nameservice.records import TargetFact, owner_name
from nameservice.sync import SyncItem, delete_nameservice, sync_nameservice, sync_nameservices

pytestmark = pytest.mark.integration

ZONE = "example.test"
HUB = "hub-it"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
_names = count()


@pytest.fixture(scope="module")
def pdns() -> Iterator[PowerDNSServer]:
    with start_powerdns([ZONE]) as server:
        yield server


def provider(pdns: PowerDNSServer, **kw: Any) -> PowerDNSProvider:
    return PowerDNSProvider(
        ZONE, pdns.api_url, pdns.api_key, nameserver=pdns.host, nameserver_port=pdns.port, **kw
    )


def make_ns(fqdn: str | None = None, **spec: Any) -> NameService:
    name = f"svc{next(_names)}"
    base: dict[str, Any] = {
        "fqdn": fqdn or f"{name}.{ZONE}",
        "providerRef": {"name": "pdns"},
        "target": {"accessPointRef": {"name": name}},
        "ttl": 30,
    }
    base.update(spec)
    return NameService.model_validate(
        {"metadata": {"name": name, "namespace": "shop", "generation": 1}, "spec": base}
    )


def facts(*vips: str | None) -> list[TargetFact]:
    return [TargetFact(f"c{i}", "eu", v, True) for i, v in enumerate(vips)]


def resolve(pdns: PowerDNSServer, name: str, rtype: str = "A") -> list[str]:
    r = dns.query.udp(dns.message.make_query(name, rtype), pdns.host, port=pdns.port, timeout=3)
    return sorted(rd.to_text() for rr in r.answer for rd in rr)


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


def cond(st: NameServiceStatus, type_: str) -> tuple[str, str]:
    c = next(c for c in st.conditions if c.type == type_)
    return c.status, c.reason


async def test_publish_resolve_update_noop(pdns: PowerDNSServer) -> None:
    p = provider(pdns)
    ns = make_ns()
    st = await sync_nameservice(ns, p, facts("10.0.0.1", "10.0.0.2", "10.0.0.3"), None, HUB, NOW)
    assert st.ready == "True", st.conditions
    assert resolve(pdns, ns.spec.fqdn) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert resolve(pdns, owner_name(ns.spec.fqdn), "TXT") == [
        f'"heritage=meshfed,hub={HUB},owner=shop/{ns.name}"'
    ]
    st2 = await sync_nameservice(ns, p, facts("10.0.0.1", "10.0.0.9", "10.0.0.3"), st, HUB, NOW)
    assert resolve(pdns, ns.spec.fqdn) == ["10.0.0.1", "10.0.0.3", "10.0.0.9"]
    assert st2.zone_serial is not None and st.zone_serial is not None and st2.zone_serial > st.zone_serial
    sent = p.writes_sent
    st3 = await sync_nameservice(ns, p, facts("10.0.0.1", "10.0.0.9", "10.0.0.3"), st2, HUB, NOW)
    assert p.writes_sent == sent and st3 == st2
    await p.close()


async def test_bulk_is_one_patch_and_delete_only_ours(pdns: PowerDNSServer) -> None:
    p = provider(pdns)
    items = [SyncItem(make_ns(), facts(f"10.8.{i // 250}.{i % 250 + 1}")) for i in range(300)]
    report = await sync_nameservices(items, p, HUB, NOW, verify=False)
    assert len(report.result.applied) == 300 and report.result.messages == 1
    assert resolve(pdns, items[299].ns.spec.fqdn) == ["10.8.1.50"]
    victim = items[0].ns
    foreign(pdns, victim.spec.fqdn, "TXT", '"site-verification=abc"')
    result = await delete_nameservice(victim, p, HUB)
    assert len(result.applied) == 1
    assert resolve(pdns, victim.spec.fqdn) == []
    assert resolve(pdns, victim.spec.fqdn, "TXT") == ['"site-verification=abc"']
    await p.close()


async def test_foreign_record_never_overwritten(pdns: PowerDNSServer) -> None:
    fqdn = f"legacy{next(_names)}.{ZONE}"
    foreign(pdns, fqdn, "A", "192.0.2.10")
    p = provider(pdns)
    st = await sync_nameservice(make_ns(fqdn), p, facts("10.0.0.1"), None, HUB, NOW)
    assert cond(st, "Programmed") == ("False", "ForeignRecord") and p.writes_sent == 0
    assert resolve(pdns, fqdn) == ["192.0.2.10"]
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
