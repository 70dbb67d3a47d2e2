"""Certificate API models: CertificateIssuer (internal CA or ACME) and Certificate, with their CRDs.

Imports only accesspoint.meta (shared API primitives). Pure data, no I/O. Nothing here ever holds a
private key: keys live in Secrets that these models only reference by name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from accesspoint.meta import AGE, AccessPointRef, ApiModel, Condition, CRDInfo, Duration, PrinterColumn, Resource

# A DNS host name or a single leading wildcard label.
HOST_PATTERN = r"^(\*\.)?([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
Host = Annotated[str, Field(pattern=HOST_PATTERN, max_length=253)]


class SecretRef(ApiModel):
    """A Secret on the hub. `key` is only used where one value of the Secret is meant."""

    name: str = Field(min_length=1, max_length=253)
    namespace: str = Field(default="meshfed-system", min_length=1, max_length=63)
    key: str | None = Field(default=None, min_length=1)


# --- CertificateIssuer -------------------------------------------------------------------------


class CAIssuer(ApiModel):
    """An internal CA (stand-in for an enterprise issuance center): its cert and key sit in a hub
    Secret of type kubernetes.io/tls (`tls.crt`, `tls.key`); only the issuer ever reads it."""

    secret_ref: SecretRef = Field(alias="secretRef")


class ExternalAccountBinding(ApiModel):
    key_id: str = Field(alias="keyID", min_length=1)
    # Secret value: the base64url HMAC key the CA handed out.
    key_secret_ref: SecretRef = Field(alias="keySecretRef")
    key_algorithm: Literal["HS256", "HS384", "HS512"] = Field(default="HS256", alias="keyAlgorithm")


class Http01Solver(ApiModel):
    """HTTP-01 is not offered (the API server refuses it; an object stored before is reported not Ready,
    Http01Unsupported). Kept in the schema only so that refusal can name it: the controller runs as a
    non-root user without capabilities (no port 80), no Service routes /.well-known/acme-challenge to it,
    and with several replicas the one answering a validation need not be the one holding the token.
    Use dns01."""

    port: int = Field(default=80, ge=1, le=65535)


class Dns01Solver(ApiModel):
    """DNS-01: `_acme-challenge` TXT records published through a DNSProvider (nameservice)."""

    provider_ref: str = Field(
        alias="providerRef", min_length=1, description="name of a DNSProvider (cluster-scoped)"
    )


class AcmeSolver(ApiModel):
    http01: Http01Solver | None = Field(default=None, description="not offered: refused, use dns01")
    dns01: Dns01Solver | None = None


class AcmeIssuer(ApiModel):
    server: str = Field(min_length=1, pattern=r"^https://", description="ACME directory URL")
    email: str | None = None
    account_key_secret_ref: SecretRef = Field(
        alias="accountKeySecretRef",
        description="PEM account key (data key `key`, default tls.key). A Secret that does not exist is "
        "created holding a new ECDSA P-256 key; one that exists without the key is never modified "
        "(AccountKeyMissing)",
    )
    external_account_binding: ExternalAccountBinding | None = Field(
        default=None, alias="externalAccountBinding"
    )
    solver: AcmeSolver
    ca_bundle: str | None = Field(
        default=None, alias="caBundle", description="PEM CA bundle trusted for the ACME server's TLS"
    )


class CertificateIssuerSpec(ApiModel):
    ca: CAIssuer | None = None
    acme: AcmeIssuer | None = None
    allowed_domains: list[str] = Field(
        default_factory=list,
        alias="allowedDomains",
        description="host patterns this issuer may sign ('example.com', '*.example.com'); empty: any",
    )


class CertificateIssuerStatus(ApiModel):
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    conditions: list[Condition] = Field(default_factory=list)
    type: str | None = None
    ready: str | None = Field(default=None, description="Ready condition status, for printing")
    acme_account_uri: str | None = Field(default=None, alias="acmeAccountURI")
    ca_not_after: str | None = Field(default=None, alias="caNotAfter")


class CertificateIssuer(Resource):
    crd = CRDInfo(
        kind="CertificateIssuer",
        plural="certificateissuers",
        singular="certificateissuer",
        scope="Cluster",
        short_names=("mfci",),
        printer_columns=(
            PrinterColumn("Type", ".status.type"),
            PrinterColumn("Ready", ".status.ready"),
            PrinterColumn("Server", ".spec.acme.server", priority=1),
            AGE,
        ),
        root_rules=(
            {
                "rule": "has(self.spec.ca) != has(self.spec.acme)",
                "message": "exactly one of spec.ca and spec.acme must be set",
            },
            {
                "rule": "!has(self.spec.acme) || !has(self.spec.acme.solver.http01)",
                "fieldPath": ".spec.acme.solver.http01",
                "message": "HTTP-01 is not offered (no route to the controller's responder): use "
                "spec.acme.solver.dns01 with a DNSProvider",
            },
            {
                "rule": "!has(self.spec.acme) || has(self.spec.acme.solver.dns01)",
                "fieldPath": ".spec.acme.solver",
                "message": "spec.acme.solver needs dns01 (a DNSProvider publishing _acme-challenge records)",
            },
        ),
    )
    kind: str = "CertificateIssuer"
    spec: CertificateIssuerSpec
    status: CertificateIssuerStatus | None = None


# --- Certificate -------------------------------------------------------------------------------


class IssuerRef(ApiModel):
    name: str = Field(min_length=1)


# The key sizes issuance supports (certs.issuers.new_private_key): ECDSA P-256 or P-384, RSA 2048..4096.
ECDSA_SIZES = (256, 384)
RSA_SIZES = (2048, 4096)
_KEY_SIZE_RULES: dict[str, Any] = {
    "x-kubernetes-validations": [
        {
            "rule": "!has(self.size) || (has(self.algorithm) && self.algorithm == 'RSA' ? "
            f"(self.size >= {RSA_SIZES[0]} && self.size <= {RSA_SIZES[1]}) : "
            f"(self.size == {ECDSA_SIZES[0]} || self.size == {ECDSA_SIZES[1]}))",
            "fieldPath": ".size",
            "reason": "FieldValueInvalid",
            "message": "size must be 256 or 384 for ECDSA, 2048 to 4096 for RSA",
        }
    ]
}


class PrivateKeySpec(ApiModel):
    model_config = ConfigDict(**ApiModel.model_config, json_schema_extra=_KEY_SIZE_RULES)

    algorithm: Literal["ECDSA", "RSA"] = "ECDSA"
    size: int | None = Field(
        default=None, description="ECDSA: 256 (default) or 384; RSA: 2048 (default) to 4096"
    )
    rotation_policy: Literal["Always", "Never"] = Field(
        default="Always", alias="rotationPolicy", description="Always: a new key for every certificate"
    )

    @model_validator(mode="after")
    def _size_fits_algorithm(self) -> PrivateKeySpec:
        if self.size is None:
            return self
        if self.algorithm == "RSA" and not RSA_SIZES[0] <= self.size <= RSA_SIZES[1]:
            raise ValueError(f"privateKey.size: RSA keys are {RSA_SIZES[0]} to {RSA_SIZES[1]} bits, not {self.size}")
        if self.algorithm == "ECDSA" and self.size not in ECDSA_SIZES:
            raise ValueError(f"privateKey.size: ECDSA keys are 256 or 384 bits, not {self.size}")
        return self


class CertificateDelivery(ApiModel):
    """How the certificate is delivered beyond the member Secrets: who may fetch it from `meshfed sds`."""

    sds_clients: list[Annotated[str, Field(min_length=1, max_length=512)]] | None = Field(
        default=None,
        alias="sdsClients",
        max_length=100,
        description="identities `meshfed sds` serves this certificate (and its -cacert) to: a verified client "
        "certificate's SPIFFE URI or DNS SAN, or the identity a Unix peer uid is mapped to (--peer-uid). "
        "Absent: one identity per cluster in status.clusters (the clusters it is delivered to), "
        "spiffe://meshfed/cluster/<cluster> unless `meshfed sds --cluster-identity` says otherwise. "
        "[]: nobody",
    )


class CertificateSpec(ApiModel):
    hosts: list[Host] = Field(min_length=1, max_length=100)
    issuer_ref: IssuerRef = Field(alias="issuerRef")
    access_point_ref: AccessPointRef | None = Field(
        default=None,
        alias="accessPointRef",
        description="set by meshfed: the AccessPoint this Certificate is derived from (always the one of its "
        "name; without that AccessPoint nothing is issued: AccessPointMissing)",
    )
    duration: Duration = "2160h"
    renew_before: Duration | None = Field(
        default=None,
        alias="renewBefore",
        description="default: 1/3 of the lifetime",
    )
    secret_name: str | None = Field(
        default=None, alias="secretName", max_length=253, description="member TLS Secret; default <name>-tls"
    )
    private_key: PrivateKeySpec = Field(default_factory=PrivateKeySpec, alias="privateKey")
    delivery: CertificateDelivery | None = None


class ClusterDelivery(ApiModel):
    """What one member cluster holds: the revision of the TLS Secret meshfed wrote there."""

    name: str
    revision: int | None = None
    secret: str | None = None
    last_error: str | None = Field(default=None, alias="lastError")


class EnvoySdsStatus(ApiModel):
    """One Envoy connected to `meshfed sds`, for one secret: what it ACKed, or its NACK."""

    node: str
    resource: str
    acked_version: str | None = Field(default=None, alias="ackedVersion")
    nack_version: str | None = Field(default=None, alias="nackVersion")
    nack_message: str | None = Field(default=None, alias="nackMessage")
    connected: bool | None = None
    time: str | None = Field(default=None, description="when this Envoy last ACKed, NACKed or subscribed")


class SdsServing(ApiModel):
    """What `meshfed sds --kubeconfig` serves for a Certificate (written by it, field manager meshfed-sds):
    the SDS resource name, the serial and version served, and the last bundle it refused to serve."""

    resource: str
    serial: str | None = None
    version: str | None = None
    refused_serial: str | None = Field(default=None, alias="refusedSerial")
    refused_message: str | None = Field(default=None, alias="refusedMessage")
    time: str | None = Field(default=None, description="when this last changed")


class SdsRefusal(ApiModel):
    """A client `meshfed sds` refused this certificate to (written by it, field manager meshfed-sds)."""

    identity: str = Field(description="the client's verified identity (certificate SAN or mapped peer uid)")
    node: str | None = Field(default=None, description="the Envoy node it named (self-declared)")
    resource: str
    reason: str = Field(description="PermissionDenied: the identity is not in the certificate's grants")
    message: str
    time: str | None = Field(default=None, description="first refusal of this client (kept while it retries)")


# The Certificate status fields `meshfed sds --kubeconfig` writes (field manager meshfed-sds); the
# controller reads them and never applies them.
SDS_STATUS_FIELDS = ("envoys", "sds", "refusedClients")


class Failure(ApiModel):
    time: str
    reason: str
    message: str = ""


class CertificateStatus(ApiModel):
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    conditions: list[Condition] = Field(default_factory=list)
    revision: int = 0
    serial: str | None = Field(default=None, description="hex serial of the current certificate")
    hosts: list[str] = Field(default_factory=list, description="hosts the current certificate covers")
    issuer: str | None = Field(default=None, description="issuer that signed the current certificate")
    not_before: str | None = Field(default=None, alias="notBefore")
    not_after: str | None = Field(default=None, alias="notAfter")
    renewal_time: str | None = Field(default=None, alias="renewalTime")
    clusters: list[ClusterDelivery] = Field(default_factory=list)
    envoys: list[EnvoySdsStatus] = Field(
        default_factory=list, description="Envoys connected to `meshfed sds` (owned by meshfed-sds)"
    )
    sds: SdsServing | None = Field(default=None, description="what `meshfed sds` serves (owned by meshfed-sds)")
    refused_clients: list[SdsRefusal] = Field(
        default_factory=list, alias="refusedClients",
        description="clients `meshfed sds` refused this certificate to, recently (owned by meshfed-sds)")
    last_failure: Failure | None = Field(default=None, alias="lastFailure")
    failures: int = Field(default=0, description="consecutive failed issuance attempts")
    next_attempt: str | None = Field(
        default=None, alias="nextAttempt", description="backoff: no retry before"
    )
    summary: str | None = Field(default=None, description="e.g. 'rev 3, 61d' (the AccessPoint CERT column)")
    ready: str | None = Field(default=None, description="Ready condition status, for printing")


class Certificate(Resource):
    crd = CRDInfo(
        kind="Certificate",
        plural="certificates",
        singular="certificate",
        short_names=("mfcert",),
        printer_columns=(
            PrinterColumn("Ready", ".status.ready"),
            PrinterColumn("Cert", ".status.summary"),
            PrinterColumn("Issuer", ".spec.issuerRef.name"),
            PrinterColumn("Serial", ".status.serial", priority=1),
            # strings, not "date": kubectl shows a date-typed column in the future as <invalid>
            PrinterColumn("NotAfter", ".status.notAfter", priority=1),
            PrinterColumn("Renewal", ".status.renewalTime", priority=1),
            AGE,
        ),
    )
    kind: str = "Certificate"
    spec: CertificateSpec
    status: CertificateStatus | None = None

    @property
    def secret_name(self) -> str:
        return self.spec.secret_name or f"{self.name}-tls"
