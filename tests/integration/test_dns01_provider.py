"""ACME DNS-01 through nameservice providers (nameservice.dns01) against real servers: BIND 9 (RFC 2136
+ TSIG) and PowerDNS (HTTP API) for the TXT ownership rules, and Pebble resolving through our BIND
for a real DNS-01 validation of a wildcard and its apex (two challenge values at one name)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dns.message
import dns.query
import pytest

from certs.acme_issuer import new_account_key_pem
from certs.checks import check_bundle
from certs.issuers import IssuanceError, issue_bundle
from certs.manager import build_issuer
from certs.models import CertificateIssuer, SecretRef
from e2e.certservers import Pebble
from e2e.dnsservers import BindServer, PowerDNSServer, start_bind, start_powerdns
from nameservice.dns01 import ChallengeConflict, Dns01ProviderHook
from nameservice.providers import OutsideZone, Provider
from nameservice.providers.powerdns import PowerDNSProvider
from nameservice.providers.rfc2136 import RFC2136Provider
from nameservice.records import Owner

pytestmark = pytest.mark.integration

ZONE = "acme.test"
OWNER = Owner("hub-it", "acme", "issuer")


@pytest.fixture(scope="module")
def bind() -> Iterator[BindServer]:
    with start_bind([ZONE]) as server:
        yield server


@pytest.fixture(scope="module")
def pdns() -> Iterator[PowerDNSServer]:
    with start_powerdns([ZONE]) as server:
        yield server


def bind_provider(bind: BindServer) -> RFC2136Provider:
    return RFC2136Provider(ZONE, bind.host, bind.key_name, bind.key_secret, port=bind.port)


def pdns_provider(pdns: PowerDNSServer) -> PowerDNSProvider:
    return PowerDNSProvider(ZONE, pdns.api_url, pdns.api_key, nameserver=pdns.host, nameserver_port=pdns.port)


def query(host: str, port: int, name: str, rtype: str = "TXT") -> list[tuple[int, str]]:
    """(ttl, value) of every record the authoritative server answers."""
    r = dns.query.tcp(dns.message.make_query(name, rtype), host, port=port, timeout=3)
    return sorted((rr.ttl, rd.to_text()) for rr in r.answer for rd in rr)


@pytest.fixture(params=["bind", "powerdns"])
def server(request: pytest.FixtureRequest) -> tuple[Provider, Callable[[str, str], list[tuple[int, str]]]]:
    if request.param == "bind":
        b: BindServer = request.getfixturevalue("bind")
        return bind_provider(b), lambda name, rtype: query(b.host, b.port, name, rtype)
    p: PowerDNSServer = request.getfixturevalue("pdns")
    return pdns_provider(p), lambda name, rtype: query(p.host, p.port, name, rtype)


async def seed(provider: Provider, name: str, rtype: str, ttl: int, values: list[str]) -> None:
    """A record somebody else published (not through the hook)."""
    from nameservice.plan import Change, Plan
    from nameservice.records import RRset

    rr = RRset.make(name, rtype, ttl, values)
    result = await provider.apply(Plan(adds=(Change("add", Owner("someone", "x", "y"), rr.name, (), (rr,)),)))
    assert result.applied and not result.failed


async def test_values_are_added_beside_foreign_ones_and_only_ours_are_removed(server: Any) -> None:
    provider, ask = server
    hook = Dns01ProviderHook.for_provider(provider, OWNER)
    name = f"_acme-challenge.shop-{id(provider) % 10**6}.{ZONE}."
    await seed(provider, name, "TXT", 300, ["foreign-client-token"])
    await hook.set_txt(name, "our-value-1", 60)
    await hook.set_txt(name, "our-value-2", 60)  # a wildcard and its apex share the name
    await hook.set_txt(name, "our-value-2", 60)  # idempotent
    # The foreign value and its TTL are kept; ours sit beside it.
    assert ask(name, "TXT") == [(300, '"foreign-client-token"'), (300, '"our-value-1"'), (300, '"our-value-2"')]
    await hook.delete_txt(name, "our-value-1")
    assert ask(name, "TXT") == [(300, '"foreign-client-token"'), (300, '"our-value-2"')]
    await hook.delete_txt(name, "our-value-2")
    await hook.delete_txt(name, "our-value-2")  # already gone: nothing to do
    assert ask(name, "TXT") == [(300, '"foreign-client-token"')]
    # A name only we used is removed entirely after cleanup.
    own = f"_acme-challenge.own-{id(provider) % 10**6}.{ZONE}."
    await hook.set_txt(own, "v", 60)
    assert ask(own, "TXT") == [(60, '"v"')]
    await hook.delete_txt(own, "v")
    assert ask(own, "TXT") == []
    await provider.close()


async def test_a_cname_at_the_challenge_name_and_a_name_outside_the_zone_are_never_written(server: Any) -> None:
    provider, ask = server
    hook = Dns01ProviderHook.for_provider(provider, OWNER)
    name = f"_acme-challenge.deleg-{id(provider) % 10**6}.{ZONE}."
    await seed(provider, name, "CNAME", 300, ["challenges.elsewhere.test."])
    writes = provider.writes_sent
    with pytest.raises(ChallengeConflict) as err:
        await hook.set_txt(name, "our-value", 60)
    assert "CNAME" in err.value.message and err.value.reason == "ChallengeRecordConflict"
    assert ask(name, "CNAME") == [(300, "challenges.elsewhere.test.")]
    with pytest.raises(OutsideZone):
        await hook.set_txt("_acme-challenge.shop.other.test.", "our-value", 60)
    assert provider.writes_sent == writes, "nothing may be sent"
    await provider.close()


async def test_pebble_validates_dns01_through_bind_and_the_challenge_records_are_cleaned_up(
    bind: BindServer,
) -> None:
    pebble = await asyncio.to_thread(Pebble(dns_server=f"{bind.host}:{bind.port}").start)
    try:
        provider = bind_provider(bind)
        await seed(provider, f"_acme-challenge.wild.{ZONE}.", "TXT", 120, ["kept-by-someone-else"])
        secrets = {"acme-account": {"tls.key": new_account_key_pem()}}

        async def read(ref: SecretRef) -> dict[str, bytes] | None:
            return secrets.get(ref.name)

        ci = CertificateIssuer.model_validate({
            "metadata": {"name": "bind-acme", "generation": 1},
            "spec": {"acme": {"server": pebble.directory_url, "accountKeySecretRef": {"name": "acme-account"},
                              "caBundle": pebble.ca_bundle_pem, "solver": {"dns01": {"providerRef": "bind"}}}}})
        hook = Dns01ProviderHook.for_provider(provider, OWNER)
        issuer = await build_issuer(ci, read, dns_hooks={"bind": hook})
        bundle = await issue_bundle(issuer, [f"*.wild.{ZONE}", f"wild.{ZONE}"], timedelta(days=1))
        assert check_bundle(bundle, datetime.now(UTC), [f"x.wild.{ZONE}", f"wild.{ZONE}"]).ok
        # Only the foreign value is left at the challenge name.
        assert query(bind.host, bind.port, f"_acme-challenge.wild.{ZONE}.") == [(120, '"kept-by-someone-else"')]
        # No DNSProvider for the name given: a clear reason before any order is placed.
        with pytest.raises(IssuanceError) as err:
            await build_issuer(ci, read, dns_hooks={})
        assert err.value.reason == "DNSProviderMissing" and "bind" in err.value.message
        await provider.close()
    finally:
        await asyncio.to_thread(pebble.stop)
