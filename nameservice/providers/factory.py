"""Building the DNS provider client for a DNSProvider spec (the I/O side of nameservice).

Imports the provider clients (nameservice.providers.{rfc2136,powerdns}); used by the hub only.
"""

from __future__ import annotations

from nameservice.models import DNSProviderSpec
from nameservice.providers.base import Provider, ProviderError
from nameservice.providers.powerdns import PowerDNSProvider
from nameservice.providers.rfc2136 import RFC2136Provider


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
