"""NameService and DNSProvider API models (spec, status) and their CRD descriptors.

Imports only accesspoint.meta (shared API primitives) and the standard library. Pure data, no I/O.

A NameService publishes one FQDN: A/AAAA records with the ready gateway VIPs of an AccessPoint
across member clusters (or explicit addresses), or a CNAME to a hostname. A DNSProvider is a zone
on an RFC 2136 server (TSIG) or on a PowerDNS server (HTTP API); it is cluster-scoped and its
Secrets live in the namespace named by each reference.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from accesspoint.meta import AGE, AccessPointRef, ApiModel, Condition, CRDInfo, PrinterColumn, Resource, SecretKeyRef

# One DNS label (RFC 1123, lowercase), and a name of 1..127 labels without the trailing dot.
DNS_NAME_PATTERN = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*\.?$"
MIN_TTL = 5
MAX_TTL = 86400

RecordType = Literal["A", "AAAA", "CNAME"]
RoutingPolicy = Literal["All", "PrimaryRegionFailover"]
TSIGAlgorithm = Literal["hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1", "hmac-md5"]


_TARGET_RULES: dict[str, Any] = {
    "x-kubernetes-validations": [
        {
            "rule": "[has(self.accessPointRef), has(self.addresses) && size(self.addresses) > 0, "
            "has(self.hostname)].exists_one(x, x)",
            "message": "set exactly one of accessPointRef, addresses, hostname",
        }
    ]
}


class NameServiceTarget(ApiModel):
    """What the name points at: exactly one of accessPointRef, addresses, hostname."""

    model_config = ConfigDict(**ApiModel.model_config, json_schema_extra=_TARGET_RULES)

    access_point_ref: AccessPointRef | None = Field(
        default=None, alias="accessPointRef",
        description="An AccessPoint in the NameService's namespace: its ready gateway VIPs are the targets.",
    )
    addresses: list[str] = Field(
        default_factory=list, max_length=64, description="Explicit IPv4/IPv6 addresses"
    )
    hostname: str | None = Field(
        default=None, pattern=DNS_NAME_PATTERN, max_length=253, description="CNAME target (recordType CNAME)"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> NameServiceTarget:
        given = [self.access_point_ref is not None, bool(self.addresses), self.hostname is not None]
        if sum(given) != 1:
            raise ValueError("target: set exactly one of accessPointRef, addresses, hostname")
        for addr in self.addresses:
            try:
                ipaddress.ip_address(addr)
            except ValueError as err:
                raise ValueError(f"target.addresses: {addr!r} is not an IP address") from err
        return self


_ROUTING_RULES: dict[str, Any] = {
    "x-kubernetes-validations": [
        {
            "rule": "!has(self.policy) || self.policy != 'PrimaryRegionFailover' || has(self.primaryRegion)",
            "message": "primaryRegion is required with policy PrimaryRegionFailover",
        }
    ]
}


class Routing(ApiModel):
    """All: every included target. PrimaryRegionFailover: the primary region's targets while it
    has any, otherwise every other region's."""

    model_config = ConfigDict(**ApiModel.model_config, json_schema_extra=_ROUTING_RULES)

    policy: RoutingPolicy = "All"
    primary_region: str | None = Field(default=None, alias="primaryRegion", min_length=1)

    @model_validator(mode="after")
    def _primary(self) -> Routing:
        if self.policy == "PrimaryRegionFailover" and not self.primary_region:
            raise ValueError("routing.primaryRegion is required with policy PrimaryRegionFailover")
        return self


class ProviderRef(ApiModel):
    """A (cluster-scoped) DNSProvider."""

    name: str = Field(min_length=1, max_length=253)


class NameServiceSpec(ApiModel):
    fqdn: str = Field(pattern=DNS_NAME_PATTERN, min_length=1, max_length=253)
    ttl: int = Field(default=60, ge=MIN_TTL, le=MAX_TTL, description=f"Seconds, {MIN_TTL}..{MAX_TTL}")
    record_type: RecordType = Field(default="A", alias="recordType")
    provider_ref: ProviderRef = Field(alias="providerRef")
    target: NameServiceTarget
    routing: Routing = Field(default_factory=Routing)
    deletion_policy: Literal["Delete", "Orphan"] = Field(default="Delete", alias="deletionPolicy")
    max_removals_per_sync: int | None = Field(
        default=None,
        alias="maxRemovalsPerSync",
        ge=1,
        description="At most this many addresses removed per sync",
    )
    unreachable_grace_seconds: int = Field(
        default=300,
        alias="unreachableGraceSeconds",
        ge=0,
        le=7 * 86400,
        description="How long an unreachable cluster's VIP stays published",
    )

    @model_validator(mode="after")
    def _type_matches_target(self) -> NameServiceSpec:
        if self.record_type == "CNAME" and self.target.addresses:
            raise ValueError("target.addresses cannot be used with recordType CNAME")
        if self.record_type != "CNAME" and self.target.hostname is not None:
            raise ValueError("target.hostname requires recordType CNAME")
        family = {"A": 4, "AAAA": 6}.get(self.record_type)
        for addr in self.target.addresses:
            if ipaddress.ip_address(addr).version != family:
                raise ValueError(f"target.addresses: {addr} is not an {self.record_type} address")
        return self


TargetReason = Literal[
    "Ready",  # reachable, VIP known: published
    "Explicit",  # spec.target.addresses / hostname
    "UnreachableInGrace",  # unreachable, kept until the grace period ends
    "ReachabilityUnknown",  # not probed yet: previous decision kept
    "GraceExpired",  # unreachable for longer than the grace period: dropped
    "NoVIP",  # reachable but no gateway VIP
    "AddressFamilyMismatch",  # VIP is not of the record type's family
    "Standby",  # PrimaryRegionFailover: a non-primary region while the primary has targets
    "NotSelected",  # CNAME holds one value: another target was chosen
    "KeptLastGood",  # sources unknown or empty: previous target kept
    "RemovalCapped",  # would be removed, deferred by maxRemovalsPerSync
]


class TargetStatus(ApiModel):
    """One cluster's (or explicit) target and whether it is published."""

    cluster: str = ""
    region: str = ""
    address: str | None = None
    included: bool
    reason: TargetReason
    message: str = ""
    last_seen: str | None = Field(
        default=None, alias="lastSeen", description="Last time seen reachable (RFC 3339)"
    )
    unreachable_since: str | None = Field(default=None, alias="unreachableSince")


class NameServiceSummary(ApiModel):
    """Pre-formatted strings for printer columns."""

    records: str = ""
    targets: str = "0/0"


class NameServiceStatus(ApiModel):
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    fqdn: str | None = None
    zone: str | None = None
    records: list[str] = Field(default_factory=list, description="Values published (the last known-good set)")
    zone_serial: int | None = Field(default=None, alias="zoneSerial")
    targets: list[TargetStatus] = Field(default_factory=list)
    pending: list[str] = Field(default_factory=list, description="Changes not yet applied, and why")
    summary: NameServiceSummary = Field(default_factory=NameServiceSummary)
    ready: str | None = Field(default=None, description="Ready condition status, for printing")


class NameService(Resource):
    crd = CRDInfo(
        kind="NameService",
        plural="nameservices",
        singular="nameservice",
        short_names=("nsvc",),
        printer_columns=(
            PrinterColumn("FQDN", ".spec.fqdn"),
            PrinterColumn("Type", ".spec.recordType"),
            PrinterColumn("TTL", ".spec.ttl", "integer"),
            PrinterColumn("Records", ".status.summary.records"),
            PrinterColumn("Targets", ".status.summary.targets"),
            PrinterColumn("Ready", ".status.ready"),
            PrinterColumn("Provider", ".spec.providerRef.name", priority=1),
            PrinterColumn("Serial", ".status.zoneSerial", "integer", priority=1),
            AGE,
        ),
    )
    kind: str = "NameService"
    spec: NameServiceSpec
    status: NameServiceStatus | None = None


class TSIGKey(ApiModel):
    key_name: str = Field(alias="keyName", pattern=DNS_NAME_PATTERN, max_length=253)
    algorithm: TSIGAlgorithm = "hmac-sha256"
    secret_ref: SecretKeyRef = Field(alias="secretRef", description="base64 TSIG secret")


class RFC2136Spec(ApiModel):
    server: str = Field(min_length=1, description="Primary server address (IP or hostname)")
    port: int = Field(default=53, ge=1, le=65535)
    tsig: TSIGKey
    batch_size: int = Field(
        default=200, alias="batchSize", ge=50, le=2000, description="Records per UPDATE message (at least 50)"
    )
    timeout_seconds: float = Field(default=5.0, alias="timeoutSeconds", gt=0, le=60)


class PowerDNSSpec(ApiModel):
    api_url: str = Field(alias="apiURL", pattern=r"^https?://", description="e.g. http://pdns:8081")
    server_id: str = Field(default="localhost", alias="serverId", min_length=1)
    api_key_secret_ref: SecretKeyRef = Field(alias="apiKeySecretRef")
    nameserver: str | None = Field(
        default=None,
        description="IP address or host name of PowerDNS's DNS endpoint, asked for the Resolvable check; "
        "unset: Resolvable only compares the API's listing (reason Listed)",
    )
    nameserver_port: int = Field(default=53, alias="nameserverPort", ge=1, le=65535)
    timeout_seconds: float = Field(default=10.0, alias="timeoutSeconds", gt=0, le=120)


_PROVIDER_RULES: dict[str, Any] = {
    "x-kubernetes-validations": [
        {
            "rule": "self.type != 'rfc2136' || (has(self.rfc2136) && !has(self.powerdns))",
            "message": "type rfc2136 requires spec.rfc2136 only",
        },
        {
            "rule": "self.type != 'powerdns' || (has(self.powerdns) && !has(self.rfc2136))",
            "message": "type powerdns requires spec.powerdns only",
        },
    ]
}


class DNSProviderSpec(ApiModel):
    model_config = ConfigDict(**ApiModel.model_config, json_schema_extra=_PROVIDER_RULES)
    type: Literal["rfc2136", "powerdns"]
    zone: str = Field(pattern=DNS_NAME_PATTERN, min_length=1, max_length=253)
    rfc2136: RFC2136Spec | None = None
    powerdns: PowerDNSSpec | None = None

    @model_validator(mode="after")
    def _one_backend(self) -> DNSProviderSpec:
        if self.type == "rfc2136" and (self.rfc2136 is None or self.powerdns is not None):
            raise ValueError("type rfc2136 requires spec.rfc2136 (and no spec.powerdns)")
        if self.type == "powerdns" and (self.powerdns is None or self.rfc2136 is not None):
            raise ValueError("type powerdns requires spec.powerdns (and no spec.rfc2136)")
        return self


class DNSProviderStatus(ApiModel):
    conditions: list[Condition] = Field(default_factory=list)
    zone_serial: int | None = Field(default=None, alias="zoneSerial")
    last_check_time: str | None = Field(default=None, alias="lastCheckTime")
    ready: str | None = None


class DNSProvider(Resource):
    crd = CRDInfo(
        kind="DNSProvider",
        plural="dnsproviders",
        singular="dnsprovider",
        scope="Cluster",
        short_names=("dnsp",),
        printer_columns=(
            PrinterColumn("Type", ".spec.type"),
            PrinterColumn("Zone", ".spec.zone"),
            PrinterColumn("Ready", ".status.ready"),
            PrinterColumn("Serial", ".status.zoneSerial", "integer"),
            AGE,
        ),
    )
    kind: str = "DNSProvider"
    spec: DNSProviderSpec
    status: DNSProviderStatus | None = None
