"""What the NameService provider tests against real DNS servers share (test_dns_bind.py: BIND over
RFC 2136; test_dns_powerdns.py: PowerDNS over its HTTP API): the zone, NameServices and target facts,
resolving against the server's own DNS port, and the publish / change / resync / delete scenario steps
both providers must pass. Each step asserts what both providers guarantee; a module asserts its
provider's own extras (BIND's IXFR listing, the Resolvable condition, ...) around them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count
from typing import Any, Protocol

import dns.message
import dns.query

from nameservice.models import NameService, NameServiceStatus
from nameservice.providers.base import Provider
from nameservice.records import TargetFact, owner_name
from nameservice.sync import delete_nameservice, sync_nameservice

ZONE = "example.test"
HUB = "hub-it"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FIRST_VIPS = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
CHANGED_VIPS = ("10.0.0.1", "10.0.0.9", "10.0.0.3")  # one member's VIP changed
_names = count()


class DnsServer(Protocol):
    host: str
    port: int


def unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


def make_ns(provider_ref: str, fqdn: str | None = None, **spec: Any) -> NameService:
    """A NameService with a fresh name in namespace shop, published through the provider `provider_ref`."""
    name = unique("svc")
    base: dict[str, Any] = {
        "fqdn": fqdn or f"{name}.{ZONE}",
        "providerRef": {"name": provider_ref},
        "target": {"accessPointRef": {"name": name}},
        "ttl": 30,
    }
    base.update(spec)
    return NameService.model_validate(
        {"metadata": {"name": name, "namespace": "shop", "generation": 1}, "spec": base}
    )


def facts(*vips: str | None) -> list[TargetFact]:
    return [TargetFact(f"c{i}", "eu", v, True) for i, v in enumerate(vips)]


def resolve(server: DnsServer, name: str, rtype: str = "A") -> list[str]:
    """What the server itself answers for (name, type), over UDP, sorted."""
    r = dns.query.udp(dns.message.make_query(name, rtype), server.host, port=server.port, timeout=3)
    return sorted(rd.to_text() for rr in r.answer for rd in rr)


def cond(st: NameServiceStatus, type_: str) -> tuple[str, str]:
    c = next(c for c in st.conditions if c.type == type_)
    return c.status, c.reason


async def publish(p: Provider, ns: NameService, server: DnsServer) -> NameServiceStatus:
    """First sync of 3 VIPs: Ready, the name resolves to them and the ownership TXT names this hub."""
    st = await sync_nameservice(ns, p, facts(*FIRST_VIPS), None, HUB, NOW)
    assert st.ready == "True", st.conditions
    assert resolve(server, ns.spec.fqdn) == sorted(FIRST_VIPS)
    assert resolve(server, owner_name(ns.spec.fqdn), "TXT") == [
        f'"heritage=meshfed,hub={HUB},owner=shop/{ns.name}"'
    ]
    return st


async def change_one_vip(p: Provider, ns: NameService, server: DnsServer,
                         st: NameServiceStatus) -> NameServiceStatus:
    """A VIP changes in one member: the name follows and the zone serial goes up."""
    st2 = await sync_nameservice(ns, p, facts(*CHANGED_VIPS), st, HUB, NOW)
    assert resolve(server, ns.spec.fqdn) == sorted(CHANGED_VIPS)
    assert st2.zone_serial is not None and st.zone_serial is not None and st2.zone_serial > st.zone_serial
    return st2


async def resync_is_noop(p: Provider, ns: NameService, st2: NameServiceStatus) -> NameServiceStatus:
    """Nothing changed since `st2`: zero writes sent, identical status."""
    sent = p.writes_sent
    st3 = await sync_nameservice(ns, p, facts(*CHANGED_VIPS), st2, HUB, NOW)
    assert p.writes_sent == sent
    assert st3 == st2
    return st3


async def foreign_record_kept(p: Provider, server: DnsServer, ns: NameService) -> NameServiceStatus:
    """Someone else's A 192.0.2.10 at the NameService's FQDN: ForeignRecord, nothing written, the record
    still answers."""
    st = await sync_nameservice(ns, p, facts("10.0.0.1"), None, HUB, NOW)
    assert cond(st, "Programmed") == ("False", "ForeignRecord") and p.writes_sent == 0
    assert resolve(server, ns.spec.fqdn) == ["192.0.2.10"]
    return st


async def delete_only_ours(p: Provider, server: DnsServer, victim: NameService) -> None:
    """Deleting a NameService whose name also carries someone else's TXT removes its records, not that TXT."""
    result = await delete_nameservice(victim, p, HUB)
    assert len(result.applied) == 1
    assert resolve(server, victim.spec.fqdn) == []
    assert resolve(server, victim.spec.fqdn, "TXT") == ['"site-verification=abc"']
