"""The entry points the hub controller calls for certificates (async; no Kubernetes client here).

Owns: deriving a Certificate from an AccessPoint's Gateway TLS hosts (`desired_certificate`),
building an issuer from a CertificateIssuer and the Secrets it references (`build_issuer`), one
reconcile step (`reconcile`: issue or renew if due, else nothing; failures back off and show in
status, the current certificate keeps serving), and folding delivery facts (member Secrets, SDS
ACK/NACK) into status (`with_delivery`). Condition/summary evaluation is pure; only `reconcile`
and `build_issuer` await (the issuer, the Secret reader).

Typical hub use, per Certificate:

    issuer = await build_issuer(ci, read_secret, dns_hooks=...)        # IssuanceError -> status
    out = await reconcile(cert, issuer, now=now, current_key_pem=...)  # never raises IssuanceError
    if out.bundle: write certs.delivery.tls_secret(out.bundle, ..., revision=out.status.revision)
                   to every placed member (SSA), and/or sds.set_secret(cert.secret_name, out.bundle)
    status = with_delivery(out.status, clusters=[...], envoys=sds.status(name), now=now)
    patch status if changed; requeue at out.requeue_at

Imports certs.* and accesspoint.meta.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from time import monotonic
from typing import Any

from accesspoint.meta import AccessPointRef, Condition, merge_conditions, parse_duration, parse_time, rfc3339
from certs.acme_issuer import (
    AcmeIssuer,
    ChallengeSolver,
    Dns01Hook,
    Dns01Solver,
    ExternalAccount,
    new_account_key_pem,
)
from certs.ca import InternalCA
from certs.checks import ISSUER_CLOCK_SKEW, check_bundle
from certs.delivery import gateway_tls_hosts
from certs.issuers import CertBundle, IssuanceError, Issuer, issue_bundle, serial_hex
from certs.models import (
    Certificate,
    CertificateIssuer,
    CertificateSpec,
    CertificateStatus,
    ClusterDelivery,
    EnvoySdsStatus,
    Failure,
    IssuerRef,
    SecretRef,
)
from certs.renewal import CurrentCert, Decision, backoff, decide, renewal_time

SecretReader = Callable[[SecretRef], Awaitable[Mapping[str, bytes] | None]]
# Creates a Secret holding `data` (it did not exist) and returns what the Secret then holds (another
# writer may have won the race: its data, not ours).
SecretCreator = Callable[[SecretRef, Mapping[str, bytes]], Awaitable[Mapping[str, bytes]]]


# --- derivation -------------------------------------------------------------------------------


def desired_certificate(
    access_point: str,
    namespace: str,
    manifests: Sequence[Mapping[str, Any]],
    issuer: str,
    *,
    labels: Mapping[str, str] | None = None,
    base: CertificateSpec | None = None,
) -> Certificate | None:
    """The Certificate for an AccessPoint: the TLS hosts of its Gateway servers (None if none).
    `base` carries user choices (duration, renewBefore, key) to keep."""
    hosts = gateway_tls_hosts(manifests)
    if not hosts:
        return None
    spec = (base or CertificateSpec(hosts=hosts, issuer_ref=IssuerRef(name=issuer))).model_copy(
        update={
            "hosts": hosts,
            "issuer_ref": IssuerRef(name=issuer),
            "access_point_ref": AccessPointRef(name=access_point),
        }
    )
    return Certificate(
        metadata={"name": access_point, "namespace": namespace, "labels": dict(labels or {})}, spec=spec
    )


# --- issuers ------------------------------------------------------------------------------------


async def build_issuer(
    resource: CertificateIssuer,
    read_secret: SecretReader,
    *,
    dns_hooks: Mapping[str, Dns01Hook] | None = None,
    http01: ChallengeSolver | None = None,
    cache: dict[str, Issuer] | None = None,
    create_secret: SecretCreator | None = None,
) -> Issuer:
    """An Issuer for `resource` (cached by name + generation in `cache`). Raises IssuanceError with
    a reason naming what is missing: CASecretMissing, AccountKeyMissing, DNSProviderMissing...
    An ACME account key Secret that does not exist is created with a new key through `create_secret`
    (without it: AccountKeyMissing); one that exists without the key is not touched (not ours)."""
    key = f"{resource.name}@{resource.generation}"
    if cache is not None and key in cache:
        return cache[key]
    spec = resource.spec
    issuer: Issuer
    if spec.ca is not None:
        data = await read_secret(spec.ca.secret_ref)
        issuer = InternalCA.from_secret_data(data, name=resource.name, allowed_domains=spec.allowed_domains)
    elif spec.acme is not None:
        acme = spec.acme
        ref = acme.account_key_secret_ref
        data_key = ref.key or "tls.key"
        account = await read_secret(ref)
        if account is None and create_secret is not None:
            account = await create_secret(ref, {data_key: new_account_key_pem()})
        key_pem = (account or {}).get(data_key)
        if not key_pem:
            raise IssuanceError(
                "AccountKeyMissing",
                f"Secret {ref.namespace}/{ref.name} does not exist"
                if account is None
                else f"Secret {ref.namespace}/{ref.name} has no {data_key} (meshfed adds no key to a Secret "
                "it did not create: add it, or name a Secret that does not exist yet to have one generated)",
            )
        eab = None
        if acme.external_account_binding is not None:
            e = acme.external_account_binding
            hmac = (await read_secret(e.key_secret_ref) or {}).get(e.key_secret_ref.key or "secret")
            if not hmac:
                raise IssuanceError(
                    "ExternalAccountKeyMissing", f"Secret {e.key_secret_ref.name} has no HMAC key"
                )
            eab = ExternalAccount(e.key_id, hmac.decode().strip(), e.key_algorithm)
        solver: ChallengeSolver
        if acme.solver.dns01 is not None:
            hook = (dns_hooks or {}).get(acme.solver.dns01.provider_ref)
            if hook is None:
                raise IssuanceError(
                    "DNSProviderMissing", f"DNSProvider {acme.solver.dns01.provider_ref} not found"
                )
            solver = Dns01Solver(hook)
        elif http01 is not None:  # a library caller's own HTTP-01 solver (tests, benchmarks)
            solver = http01
        else:  # an object stored before the API server refused http01 (the hub controller offers none)
            raise IssuanceError(
                "Http01Unsupported",
                "spec.acme.solver.http01 is not offered (no route to the controller's responder): "
                "use spec.acme.solver.dns01 with a DNSProvider",
                retryable=False,
            )
        issuer = AcmeIssuer(
            acme.server,
            key_pem,
            solver,
            name=resource.name,
            email=acme.email,
            external_account=eab,
            ca_bundle_pem=acme.ca_bundle.encode() if acme.ca_bundle else None,
            allowed_domains=spec.allowed_domains,
        )
    else:
        raise IssuanceError("IssuerInvalid", "neither spec.ca nor spec.acme is set", retryable=False)
    if cache is not None:
        # Older generations of this issuer go (each ACME issuer holds its account, directory and CA
        # bundle file; released when the last issuance using it ends).
        forget_issuer(cache, resource.name)
        cache[key] = issuer
    return issuer


def forget_issuer(cache: dict[str, Issuer], name: str) -> None:
    """Drop every cached generation of issuer `name` (`build_issuer`'s keys are name@generation)."""
    for key in [k for k in cache if k.rsplit("@", 1)[0] == name]:
        del cache[key]


# --- reconcile ----------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Outcome:
    status: CertificateStatus
    bundle: CertBundle | None  # a newly issued certificate to deliver; None when nothing changed
    decision: Decision
    requeue_at: datetime  # look again then (renewal time, backoff end)

    def __repr__(self) -> str:
        return f"Outcome(decision={self.decision}, revision={self.status.revision}, bundle={self.bundle!r})"


def _current(status: CertificateStatus) -> CurrentCert | None:
    if not (status.serial and status.not_before and status.not_after):
        return None
    return CurrentCert(
        status.serial,
        tuple(status.hosts),
        status.issuer or "",
        parse_time(status.not_before),
        parse_time(status.not_after),
    )


async def reconcile(
    cert: Certificate,
    issuer: Issuer | IssuanceError,
    *,
    now: datetime,
    current_key_pem: bytes | None = None,
) -> Outcome:
    """Issue or renew `cert` if due. `issuer` may be the IssuanceError `build_issuer` raised, which
    is then recorded like a failed issuance. Never raises IssuanceError: failures land in status
    (lastFailure, failures, nextAttempt) and the current certificate stays in place.
    `current_key_pem` is reused only with privateKey.rotationPolicy=Never."""
    prev = cert.status or CertificateStatus()
    spec = cert.spec
    renew_before = parse_duration(spec.renew_before) if spec.renew_before else None
    issuer_name = spec.issuer_ref.name
    last_failure = parse_time(prev.last_failure.time) if prev.last_failure else None
    decision = decide(
        now,
        current=_current(prev),
        hosts=spec.hosts,
        issuer=issuer_name,
        renew_before=renew_before,
        failures=prev.failures,
        last_failure=last_failure,
    )
    if not decision.due:
        status = evaluate(prev.model_copy(update={"observed_generation": cert.generation}), now)
        return Outcome(status, None, decision, decision.at)
    try:
        if isinstance(issuer, IssuanceError):
            raise issuer
        reuse = current_key_pem if spec.private_key.rotation_policy == "Never" else None
        started = monotonic()
        bundle = await issue_bundle(
            issuer,
            spec.hosts,
            parse_duration(spec.duration),
            algorithm=spec.private_key.algorithm,
            size=spec.private_key.size,
            reuse_key_pem=reuse,
        )
        # Checked as of when the certificate arrived, not when this reconcile began: an ACME order
        # takes seconds (minutes with DNS-01), and a CA that does not backdate (Pebble) stamps
        # notBefore with its own time of issue, which is after `now`.
        arrived = now + timedelta(seconds=monotonic() - started)
        result = check_bundle(bundle, arrived, spec.hosts, not_before_slack=ISSUER_CLOCK_SKEW)
        if not result.ok:
            raise IssuanceError("IssuedCertificateInvalid", result.message)
    except IssuanceError as err:
        failures = prev.failures + 1
        retry_at = now + backoff(failures)
        status = prev.model_copy(
            update={
                "observed_generation": cert.generation,
                "failures": failures,
                "last_failure": Failure(time=rfc3339(now), reason=err.reason, message=err.message),
                "next_attempt": rfc3339(retry_at),
            }
        )
        return Outcome(evaluate(status, now), None, decision, retry_at)
    # Issued: the new certificate replaces the old one in status; delivery state is re-evaluated
    # by with_delivery (members still hold the old revision, which keeps serving until replaced).
    leaf = bundle.leaf
    serial = serial_hex(leaf.serial_number)
    renew_at = renewal_time(leaf.not_valid_before_utc, leaf.not_valid_after_utc, renew_before, serial)
    status = prev.model_copy(
        update={
            "observed_generation": cert.generation,
            "revision": prev.revision + 1,
            "serial": serial,
            "hosts": list(spec.hosts),
            "issuer": issuer_name,
            "not_before": rfc3339(leaf.not_valid_before_utc),
            "not_after": rfc3339(leaf.not_valid_after_utc),
            "renewal_time": rfc3339(renew_at),
            "failures": 0,
            "last_failure": None,
            "next_attempt": None,
        }
    )
    return Outcome(evaluate(status, now), bundle, decision, renew_at)


# --- status evaluation (pure) ---------------------------------------------------------------


def _envoy_current(e: EnvoySdsStatus, serial: str) -> bool:
    return bool(e.acked_version) and str(e.acked_version).split("-", 1)[-1] == serial[:16]


def with_delivery(
    status: CertificateStatus,
    *,
    clusters: Sequence[ClusterDelivery] | None = None,
    envoys: Sequence[EnvoySdsStatus] | None = None,
    now: datetime,
) -> CertificateStatus:
    """Status with fresh delivery facts: per cluster, the revision its Secret carries (None when
    unknown: a failed read is never guessed); per Envoy, the SDS ACK/NACK."""
    update: dict[str, Any] = {}
    if clusters is not None:
        update["clusters"] = sorted(clusters, key=lambda c: c.name)
    if envoys is not None:
        update["envoys"] = sorted(envoys, key=lambda e: (e.node, e.resource))
    return evaluate(status.model_copy(update=update), now)


def _delivered(status: CertificateStatus) -> Condition:
    if not status.serial:
        return Condition(type="Delivered", status="False", reason="NotIssued", message="no certificate yet")
    targets = len(status.clusters) + len(status.envoys)
    if targets == 0:
        return Condition(
            type="Delivered", status="False", reason="NoTargets", message="not placed on any cluster"
        )
    errors = [f"{c.name}: {c.last_error}" for c in status.clusters if c.last_error]
    nacks = [f"{e.node}: {e.nack_message}" for e in status.envoys if e.nack_message]
    refused = (
        [f"meshfed sds refused serial {status.sds.refused_serial}: {status.sds.refused_message}"]
        if status.sds is not None and status.sds.refused_message
        else []
    )
    unknown = [c.name for c in status.clusters if c.revision is None and not c.last_error]
    behind = [  # a cluster that refused the Secret is counted once, with its error
        c.name
        for c in status.clusters
        if c.revision is not None and c.revision != status.revision and not c.last_error
    ]
    stale = [e.node for e in status.envoys if not e.nack_message and not _envoy_current(e, status.serial)]
    ok = targets - len(errors) - len(nacks) - len(unknown) - len(behind) - len(stale)
    counts = f"{ok}/{targets} at revision {status.revision}"
    if errors or nacks or refused:
        return Condition(
            type="Delivered",
            status="False",
            reason="DeliveryFailed",
            message=f"{counts}; " + "; ".join(errors + nacks + refused),
        )
    if unknown:
        return Condition(
            type="Delivered",
            status="Unknown",
            reason="Unknown",
            message=f"{counts}; unknown: {', '.join(unknown)}",
        )
    if behind or stale:
        return Condition(
            type="Delivered",
            status="False",
            reason="Delivering",
            message=f"{counts}; pending: {', '.join(behind + stale)}",
        )
    return Condition(type="Delivered", status="True", reason="Delivered", message=counts)


def evaluate(status: CertificateStatus, now: datetime) -> CertificateStatus:
    """Conditions Issued / Delivered / Ready, the summary column and `ready`, from status facts."""
    expired = bool(status.not_after) and now >= parse_time(str(status.not_after))
    failure = status.last_failure
    if status.serial and not expired:
        if failure is not None:
            issued = Condition(
                type="Issued",
                status="True",
                reason="RenewalFailing",
                message=f"serving revision {status.revision}; {failure.reason}: {failure.message}",
            )
        else:
            issued = Condition(
                type="Issued",
                status="True",
                reason="Issued",
                message=f"revision {status.revision}, serial {status.serial}",
            )
    elif failure is not None:
        issued = Condition(type="Issued", status="False", reason=failure.reason, message=failure.message)
    elif expired:
        issued = Condition(
            type="Issued", status="False", reason="Expired", message=f"expired at {status.not_after}"
        )
    else:
        issued = Condition(type="Issued", status="False", reason="Pending", message="not issued yet")
    delivered = _delivered(status)
    if issued.status == "True" and delivered.status == "True":
        ready = Condition(type="Ready", status="True", reason="Ready", message=delivered.message)
    else:
        worst = issued if issued.status != "True" else delivered
        ready = Condition(
            type="Ready",
            status="Unknown" if worst.status == "Unknown" else "False",
            reason=worst.reason,
            message=worst.message,
        )
    fresh = [issued, delivered, ready]
    conditions = merge_conditions(status.conditions, fresh, rfc3339(now))
    summary = None
    if status.serial and status.not_after:
        left = parse_time(status.not_after) - now
        days = left // timedelta(days=1)
        summary = (
            f"rev {status.revision}, {days}d"
            if left >= timedelta(days=1)
            else (
                f"rev {status.revision}, {max(int(left.total_seconds()) // 3600, 0)}h"
                if not expired
                else f"rev {status.revision}, expired"
            )
        )
    return status.model_copy(update={"conditions": conditions, "summary": summary, "ready": ready.status})
