"""DNS providers: the Provider protocol (base), RFC 2136 (rfc2136), PowerDNS HTTP API (powerdns).

`provider_for(spec, secret)` builds the client for a DNSProvider spec; the caller (the hub)
reads the referenced Secret and passes its value.
"""

from __future__ import annotations

from nameservice.models import DNSProviderSpec
from nameservice.providers.base import (
    ApplyResult,
    OutsideZone,
    Provider,
    ProviderAuthError,
    ProviderError,
    ProviderRejected,
    ProviderUnreachable,
    ZoneNotServed,
)
from nameservice.providers.powerdns import PowerDNSProvider
from nameservice.providers.rfc2136 import RFC2136Provider

__all__ = [
    "ApplyResult",
    "OutsideZone",
    "PowerDNSProvider",
    "Provider",
    "ProviderAuthError",
    "ProviderError",
    "ProviderRejected",
    "ProviderUnreachable",
    "RFC2136Provider",
    "ZoneNotServed",
    "provider_for",
]


def provider_for(spec: DNSProviderSpec, secret: str) -> Provider:
    """The provider client for `spec`; `secret` is the TSIG secret or the PowerDNS API key."""
    if spec.type == "rfc2136" and spec.rfc2136 is not None:
        r = spec.rfc2136
        return RFC2136Provider(
            spec.zone,
            r.server,
            r.tsig.key_name,
            secret,
            port=r.port,
            algorithm=r.tsig.algorithm,
            batch_size=r.batch_size,
            timeout=r.timeout_seconds,
        )
    if spec.type == "powerdns" and spec.powerdns is not None:
        p = spec.powerdns
        return PowerDNSProvider(
            spec.zone,
            p.api_url,
            secret,
            server_id=p.server_id,
            nameserver=p.nameserver,
            nameserver_port=p.nameserver_port,
            timeout=p.timeout_seconds,
        )
    raise ProviderError(f"unknown DNS provider type {spec.type!r}")
