"""DNS providers: the Provider protocol (base), RFC 2136 (rfc2136), PowerDNS HTTP API (powerdns).

This package's __init__ loads only the protocol (base), so the pure NameService modules that use
it (nameservice.sync, nameservice.dns01) never load a network client; `provider_for(spec, secret)`
in nameservice.providers.factory builds the client for a DNSProvider spec (the hub reads the
referenced Secret and passes its value).
"""

from __future__ import annotations

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

__all__ = [
    "ApplyResult",
    "OutsideZone",
    "Provider",
    "ProviderAuthError",
    "ProviderError",
    "ProviderRejected",
    "ProviderUnreachable",
    "ZoneNotServed",
]
