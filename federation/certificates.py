"""Certificates on the hub: derive, issue, renew, store and deliver the TLS certificate of each AccessPoint.

Owns the hub wiring of certs/ (which stays free of Kubernetes clients):

- **Derivation.** Every AccessPoint whose Istio Gateways terminate TLS gets a `Certificate` of the
  same name in its namespace (labelled with the owner labels, ownerReference to the AccessPoint),
  whose hosts are the TLS hosts of its Gateways rendered for every placed cluster
  (`certs.manager.desired_certificate`). The issuer is the AccessPoint annotation
  `meshfed.io/certificate-issuer` (`none`: no certificate), else the CertificateIssuer whose
  `allowedDomains` cover every host (a specific one before a catch-all, then by name). Without any
  CertificateIssuer on the hub the feature stays idle. `meshfed.io/certificate-duration` and
  `meshfed.io/certificate-renew-before` on the AccessPoint set the lifetime; other spec fields
  edited on the Certificate (privateKey, secretName) are kept.
- **Issuance and renewal.** A keyed work loop runs `certs.manager.reconcile` per Certificate with
  the issuer built from its CertificateIssuer (`build_issuer`; the CA Secret is read here and only
  here, on the hub, through `_read_secret`). A timer requeues the Certificate at its renewal time
  (or at the end of a failure backoff). Failures land in the Certificate's status and a Warning
  Event (once per distinct failure); the certificate already delivered keeps serving. The Secrets
  issuers reference are followed by metadata-only list+watch, one per Secret, by name (never their
  data); a created/rotated Secret, an edited issuer or a DNSProvider appearing rebuilds the issuer,
  refreshes its status and retries its Certificates at once (no backoff wait). ACME DNS-01 writes
  `_acme-challenge` TXT values through the DNS feature's client for `solver.dns01.providerRef`
  (`ProviderChallenges`, ownership rules in nameservice.dns01).
- **Storage.** The private key lives in memory and in the Secrets a gateway reads. So that a
  controller restart neither re-issues nor rewrites anything, the issued bundle is also kept in one
  hub Secret, `meshfed-system/mfcert.<namespace>.<name>` (type kubernetes.io/tls, annotated with
  revision and serial, labelled `meshfed.io/certificate-namespace`/`meshfed.io/certificate`), read
  back on start. It sits in `meshfed-system` so the controller needs Secret rights in that one hub
  namespace only (deploy/rbac/certificates.yaml); it is deleted with the Certificate's AccessPoint.
  Should it be lost, the bundle is recovered from a member Secret carrying the current serial, and
  only when that fails too is a new certificate issued.
- **Delivery.** A ContextProvider adds the kubernetes.io/tls Secret (`tls.crt`, `tls.key`, `ca.crt`;
  name `<accesspoint>-tls` unless spec.secretName) to each placed cluster, in the namespace of each
  TLS Gateway, and sets `tls.credentialName` on the Gateway servers the certificate covers. The
  controller's plan/executor writes it like any member object (owner labels, content hash, pruned
  when no longer desired). Only issued certificates are delivered: a Certificate that never issued
  changes nothing on members.
- **Status.** Certificate status: revision, serial, notAfter, renewal time, Issued/Delivered/Ready,
  and per placed cluster the revision its Secret carries, read back from the member caches (an
  unusable member reports no revision: Unknown, never a guess) with the member's error when it
  rejected the Secret. The AccessPoint's CERT column (`rev 3, 61d`, or the failure reason) and each
  cluster entry's `certificate` come from a StatusContributor. The CertificateIssuer status carries
  Ready (with the reason when its Secret is missing or invalid) and the CA's notAfter.

Several replicas (federation/shards.py): a Certificate is worked on by the replica holding its
AccessPoint's shard, a CertificateIssuer's status by the holder of the shard of its name; issuance
(`FencedIssuer`), the stored bundle, the Certificate object and every status write are fenced. A
takeover reads the stored bundle back (`ensure_loaded`): nothing is issued twice.

Private keys never reach logs, Events, status or exceptions: bundles and Secret manifests redact
themselves (certs.issuers.CertBundle, certs.delivery.SecretManifest), and only serials, revisions,
hosts and reasons are ever formatted. Imports certs.*, accesspoint.*, nameservice (models, providers,
dns01) and federation's clients and DNS feature.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from accesspoint.kinds import SECRET
from accesspoint.meta import API_VERSION, DURATION_PATTERN, Condition, merge_conditions, rfc3339
from accesspoint.models import AccessPoint, AccessPointStatus
from accesspoint.ownership import HUB, MANAGED_BY, Owner
from accesspoint.render import EMPTY_CONTEXT, RenderContext, render
from accesspoint.tenancy import Problem
from certs.acme_issuer import AcmeIssuer
from certs.ca import InternalCA
from certs.checks import disallowed_hosts, load_chain, san_names
from certs.delivery import (
    SERIAL_ANNOTATION,
    SecretManifest,
    delivered_revision,
    gateway_tls_hosts,
    set_credential_name,
    tls_secret,
)
from certs.issuers import CertBundle, IssuanceError, Issuer
from certs.manager import build_issuer, desired_certificate, forget_issuer, reconcile, with_delivery
from certs.models import (
    SDS_STATUS_FIELDS,
    Certificate,
    CertificateIssuer,
    CertificateIssuerStatus,
    CertificateSpec,
    CertificateStatus,
    ClusterDelivery,
    Failure,
    IssuerRef,
    SecretRef,
)
from certs.renewal import backoff
from federation import dns as dns_feature
from federation import metrics, shards, tenancy
from federation.controller import Controller
from federation.hubwriter import now_rfc3339, resource_version
from federation.kube import ApiError, Gone
from federation.members import Member
from federation.workloop import WorkLoop
from nameservice.dns01 import Dns01ProviderHook
from nameservice.models import DNSProvider
from nameservice.providers import Provider, ProviderError
from nameservice.records import Owner as RecordOwner
from placement.models import ClusterFacts, PlacementDecision, PlacementSpec

log = logging.getLogger("meshfed.certificates")

CERTS = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/certificates"
ISSUERS = "/apis/meshfed.io/v1alpha1/certificateissuers"
SECRETS = "/api/v1/namespaces/{ns}/secrets"
ISSUER_ANNOTATION = "meshfed.io/certificate-issuer"
DURATION_ANNOTATION = "meshfed.io/certificate-duration"
RENEW_BEFORE_ANNOTATION = "meshfed.io/certificate-renew-before"
CERT_NAMESPACE_LABEL = "meshfed.io/certificate-namespace"
STORE_NAMESPACE = "meshfed-system"
FIELD_MANAGER = "meshfed-certificates"
WARMUP_SECONDS = 30.0
ACCESSPOINT_MISSING = "AccessPointMissing"
ISSUER_KEY = "issuer:"  # work-queue key prefix of a CertificateIssuer (':' is never in a namespace)



def store_name(namespace: str, name: str) -> str:
    """The hub Secret (in meshfed-system) keeping the current bundle of Certificate namespace/name."""
    return f"mfcert.{namespace}.{name}"


def _decode(secret: Mapping[str, Any] | None) -> dict[str, bytes] | None:
    if secret is None:
        return None
    return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


@dataclass(frozen=True, repr=False)
class Current:
    """The certificate being delivered for one Certificate: its bundle (with the key) and revision."""

    bundle: CertBundle
    revision: int

    def __repr__(self) -> str:
        return f"Current(revision={self.revision}, bundle={self.bundle!r})"


def bundle_from_secret(secret: Mapping[str, Any], issuer: str = "") -> tuple[CertBundle, int] | None:
    """(bundle, revision) from a kubernetes.io/tls Secret meshfed wrote (hub store or member copy)."""
    data = _decode(secret) or {}
    revision = delivered_revision(secret)
    if not data.get("tls.crt") or not data.get("tls.key") or revision is None:
        return None
    try:
        chain = load_chain(data["tls.crt"])
    except ValueError:
        return None
    if not chain:
        return None
    bundle = CertBundle(cert_pem=data["tls.crt"], key_pem=data["tls.key"], ca_pem=data.get("ca.crt", b""),
                        hosts=tuple(san_names(chain[0])), issuer=issuer)
    return bundle, revision


@dataclass
class Derived:
    """What one AccessPoint reconcile found: the Certificate it wants and where its Secrets go."""

    certificate: Certificate | None
    gateway_namespaces: dict[str, set[str]] = field(default_factory=dict)  # cluster -> namespaces


class ProviderChallenges:
    """The Dns01Hook of `spec.acme.solver.dns01.providerRef`: challenge TXT records written through the
    DNS feature's client for that DNSProvider (federation.dns, which reads its TSIG / API key Secret),
    under that client's lock (one writer per zone, NameService syncs included). The client is looked
    up at every call: a rotated Secret or an edited spec is used at once, a deleted DNSProvider fails
    with DNSProviderMissing. Provider failures become IssuanceErrors naming the provider (their
    messages never hold the secret)."""

    def __init__(self, dns: dns_feature.DNSFeature, provider: str, owner: RecordOwner) -> None:
        self.dns = dns
        self.provider = provider
        self._hook = Dns01ProviderHook(self._source, owner)

    def __repr__(self) -> str:
        return f"ProviderChallenges(provider={self.provider!r})"

    async def _source(self) -> tuple[Provider, asyncio.Lock | None]:
        body = self.dns.providers.get(self.provider)
        if body is None:
            raise IssuanceError("DNSProviderMissing", f"DNSProvider {self.provider} not found")
        try:
            dp = DNSProvider.model_validate(body)
        except ValidationError as err:
            raise IssuanceError("DNSProviderInvalid",
                                f"DNSProvider {self.provider}: {err.errors()[0]['msg']}") from None
        try:
            client = await self.dns.client(self.provider, dp)
        except dns_feature.SetupError as err:
            raise IssuanceError(err.reason, f"DNSProvider {self.provider}: {err.message}") from None
        return client.provider, client.lock

    async def set_txt(self, fqdn: str, value: str, ttl: int) -> None:
        try:
            await self._hook.set_txt(fqdn, value, ttl)
        except ProviderError as err:
            raise IssuanceError(err.reason, f"DNS-01 through DNSProvider {self.provider}: {err.message}") from None

    async def delete_txt(self, fqdn: str, value: str) -> None:
        try:
            await self._hook.delete_txt(fqdn, value)
        except ProviderError as err:
            raise IssuanceError(err.reason, f"DNS-01 through DNSProvider {self.provider}: {err.message}") from None


class FencedIssuer:
    """An Issuer whose `sign` is fenced (federation.shards.check first): a replica that lost the
    Certificate's shard issues nothing."""

    def __init__(self, inner: Issuer) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        return self.inner.name

    async def sign(self, csr_pem: bytes, hosts: Sequence[str], duration: Any) -> Any:
        shards.check()
        metrics.certificates_issued.inc()
        return await self.inner.sign(csr_pem, hosts, duration)


def secret_refs(issuers: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(namespace, name) of every hub Secret a CertificateIssuer reads -> the issuers reading it."""
    refs: dict[tuple[str, str], set[str]] = {}
    for name, body in issuers.items():
        spec = body.get("spec") or {}
        acme = spec.get("acme") or {}
        for ref in ((spec.get("ca") or {}).get("secretRef"), acme.get("accountKeySecretRef"),
                    (acme.get("externalAccountBinding") or {}).get("keySecretRef")):
            if isinstance(ref, Mapping) and ref.get("name"):
                refs.setdefault((str(ref.get("namespace") or STORE_NAMESPACE), str(ref["name"])), set()).add(name)
    return refs


class Certificates:
    """The certificate feature attached to one Controller."""

    def __init__(self, controller: Controller) -> None:
        self.ctl = controller
        self.hub = controller.hub
        self.writer = controller.writer
        self.hub_id = controller.hub_id
        self.issuers: dict[str, dict[str, Any]] = {}
        self.certs: dict[str, dict[str, Any]] = {}  # "ns/name" -> Certificate body (hub view)
        self.current: dict[str, Current] = {}
        self.placed: dict[str, tuple[str, ...]] = {}  # AccessPoint key -> clusters placed at its last reconcile
        self.cluster_errors: dict[str, dict[str, str]] = {}
        self.issuer_cache: dict[str, Issuer] = {}
        # The keyed work loop (federation/workloop.py): a Certificate's renewal timer is its timer there.
        self.loop = WorkLoop("certificates", self._reconcile, fencing=controller, lease_of=self.lease_of,
                             kind_of=lambda key: "issuer" if key.startswith(ISSUER_KEY) else "certificate",
                             log=log, log_traceback=False)
        self._loaded: set[str] = set()
        self._lost: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._warm_deadline = 0.0
        self._kicked: set[str] = set()  # Certificates to retry now, backoff or not (an input changed)
        self._secret_refs: dict[tuple[str, str], set[str]] = {}
        self._secret_watches: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._dns_providers: dict[str, tuple[Any, Any]] = {}  # name -> (generation, uid)
        self._issuer_failures: dict[str, int] = {}  # issuer name -> consecutive failed builds

    # ---- intake ----

    def enqueue(self, key: str) -> None:
        self.loop.enqueue(key)

    def enqueue_at(self, key: str, when: datetime) -> None:
        delay = max((when - datetime.now(UTC)).total_seconds(), 0.0) + 0.05
        self.loop.enqueue_after(key, min(delay, 86400.0), replace=True)

    def on_issuer(self, event_type: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        old = self.issuers.get(name)
        if event_type == "DELETED":
            self.issuers.pop(name, None)
            self.writer.status.forget(f"{ISSUERS}/{name}")
        else:
            self.issuers[name] = body
        if old is not None and event_type != "DELETED" and \
                old["metadata"].get("generation") == body["metadata"].get("generation"):
            return  # a status update (ours): nothing to redo
        self._sync_secret_watches()
        self.issuer_inputs_changed(name)
        self.ctl.enqueue_all(cause="certificate")  # issuer choice (and whether certificates are wanted) may change

    def issuer_inputs_changed(self, name: str) -> None:
        """Issuer `name`, a Secret or a DNSProvider it uses changed: build it again, refresh its status
        and retry its Certificates now (a failure backoff is not waited out: the input it waited for
        may have arrived)."""
        forget_issuer(self.issuer_cache, name)
        if name in self.issuers:
            self.enqueue(f"{ISSUER_KEY}{name}")
        for key, cert in self.certs.items():
            if ((cert.get("spec") or {}).get("issuerRef") or {}).get("name") == name:
                self._kicked.add(key)
                self.enqueue(key)

    def on_dnsprovider(self, event_type: str, body: dict[str, Any]) -> None:
        """A DNSProvider was created, edited or deleted: the ACME issuers solving DNS-01 through it."""
        name = body["metadata"]["name"]
        signature = None if event_type == "DELETED" else (body["metadata"].get("generation"),
                                                          body["metadata"].get("uid"))
        if self._dns_providers.get(name) == signature:
            return  # a status update
        if signature is None:
            self._dns_providers.pop(name, None)
        else:
            self._dns_providers[name] = signature
        for issuer, ibody in list(self.issuers.items()):
            dns01 = (((ibody.get("spec") or {}).get("acme") or {}).get("solver") or {}).get("dns01") or {}
            if dns01.get("providerRef") == name:
                self.issuer_inputs_changed(issuer)

    # ---- the hub Secrets issuers read: metadata-only watches ----

    def _sync_secret_watches(self) -> None:
        """One watch per hub Secret a CertificateIssuer references (none for any other Secret)."""
        self._secret_refs = secret_refs(self.issuers)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not running (unit tests): nothing to watch
        for ref in [r for r in self._secret_watches if r not in self._secret_refs]:
            self._secret_watches.pop(ref).cancel()
        for ref in self._secret_refs:
            if ref not in self._secret_watches:
                self._secret_watches[ref] = loop.create_task(self._watch_secret(*ref),
                                                             name=f"cert-secret-{ref[0]}/{ref[1]}")

    async def _watch_secret(self, ns: str, name: str) -> None:
        """Follow one referenced Secret by list+watch of its metadata only (PartialObjectMetadata with
        a metadata.name field selector): the key never comes through here, `_read_secret` stays its
        only reader. Created, rotated (new resourceVersion) or deleted -> its issuers are re-evaluated."""
        path, selector = SECRETS.format(ns=ns), f"metadata.name={name}"
        known: tuple[str, str] | None = None
        first, delay, last_error = True, 1.0, ""
        while True:
            try:
                items, rv = await self.hub.list(path, field_selector=selector, metadata_only=True)
                seen = _fingerprint(items[0]) if items else None
                issuers = self._secret_refs.get((ns, name), set())
                if (seen != known and not first) or (first and seen is not None and any(
                        (self.issuers.get(i, {}).get("status") or {}).get("ready") != "True" for i in issuers)):
                    self._secret_changed(ns, name)
                known, first = seen, False
                async for event in self.hub.watch(path, rv, field_selector=selector, metadata_only=True):
                    delay, last_error = 1.0, ""
                    if event.type == "BOOKMARK":
                        continue
                    now = None if event.type == "DELETED" else _fingerprint(event.object)
                    if now != known:
                        known = now
                        self._secret_changed(ns, name)
            except Gone:
                continue
            except ApiError as err:
                message = f"{err.status} {err.reason}"
                if message != last_error:
                    log.warning("cannot watch hub Secret %s/%s (referenced by CertificateIssuer %s): %s", ns, name,
                                ", ".join(sorted(self._secret_refs.get((ns, name), ()))), message)
                    last_error = message
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    def _secret_changed(self, ns: str, name: str) -> None:
        issuers = sorted(self._secret_refs.get((ns, name), ()))
        log.info("hub Secret %s/%s changed: re-evaluating CertificateIssuer %s", ns, name, ", ".join(issuers))
        for issuer in issuers:
            self.issuer_inputs_changed(issuer)

    def on_certificate(self, event_type: str, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        old = self.certs.get(key)
        if event_type == "DELETED":
            if old is not None and old["metadata"].get("uid") == meta.get("uid"):
                self.certs.pop(key, None)
                self._loaded.discard(key)
                self.writer.status.forget(f"{CERTS.format(ns=meta['namespace'])}/{meta['name']}")
                self.ctl.enqueue(f"ap/{key}", cause="certificate")
            return
        if old is not None and resource_version(old) > resource_version(body) and \
                old["metadata"].get("uid") == meta.get("uid"):
            return
        self.certs[key] = body
        if old is None or old.get("spec") != body.get("spec") or \
                old["metadata"].get("uid") != meta.get("uid"):
            self.enqueue(key)
        before, after = (old or {}).get("status") or {}, body.get("status") or {}
        if (before.get("summary"), before.get("ready"), before.get("lastFailure")) != \
                (after.get("summary"), after.get("ready"), after.get("lastFailure")):
            self.ctl.enqueue(f"ap/{key}", cause="certificate")  # the CERT column
        if any(before.get(f) != after.get(f) for f in SDS_STATUS_FIELDS):
            self.enqueue(key)  # meshfed sds reported Envoy ACK/NACK: re-evaluate Delivered/Ready

    async def on_accesspoint_deleted(self, key: str) -> None:
        lease = self.lease_of(key)
        if not self.ctl.holds(lease):
            return  # the holder of its shard cleans up
        with shards.working_on(self.ctl.shards, lease):
            await self._forget(key)

    # ---- shards ----

    def lease_of(self, key: str) -> str | None:
        sh = self.ctl.shards
        if sh is None:
            return None
        if key.startswith(ISSUER_KEY):
            return sh.shard_key("", key[len(ISSUER_KEY):])
        body = self.certs.get(key)
        if body is not None:
            return sh.key_of("Certificate", body)
        ns, _, name = key.partition("/")
        return sh.shard_key(ns, name)

    def shards_changed(self, acquired: frozenset[int], lost: frozenset[int]) -> None:
        if self.ctl.shards is None:
            return
        for key in list(self.certs):
            shard = shards.lease_shard(self.lease_of(key) or "")
            if shard in lost:  # read back from the hub store should this replica take it again
                self._loaded.discard(key)
                self.current.pop(key, None)
                self._lost.discard(key)
            elif shard in acquired:
                self.enqueue(key)
        for name in list(self.issuers):
            if shards.lease_shard(self.lease_of(f"{ISSUER_KEY}{name}") or "") in acquired:
                self.enqueue(f"{ISSUER_KEY}{name}")

    # ---- lifecycle ----

    async def start(self, workers: int = 4) -> None:
        # Know every issuer and certificate before the first AccessPoint reconcile, like the
        # controller does for MemberClusters: rendering must never miss a delivered Secret.
        items, _ = await self.hub.list(ISSUERS)
        for body in items:
            self.issuers[body["metadata"]["name"]] = body
        self._sync_secret_watches()
        dns = dns_feature.feature_of(self.ctl)  # installed before us: its DNSProviders are listed
        for name, body in (dns.providers if dns is not None else {}).items():
            self._dns_providers[name] = (body["metadata"].get("generation"), body["metadata"].get("uid"))
        items, _ = await self.hub.list("/apis/meshfed.io/v1alpha1/certificates")
        for body in items:
            self.certs[f"{body['metadata']['namespace']}/{body['metadata']['name']}"] = body
        self._warm_deadline = time.monotonic() + WARMUP_SECONDS
        self.ctl._tasks.extend(self.loop.start(workers))  # stopped with the controller
        for key in self.certs:
            self.enqueue(key)
        for name in self.issuers:  # their status (Ready, caNotAfter), with or without Certificates
            self.enqueue(f"{ISSUER_KEY}{name}")

    async def stop(self) -> None:
        await self.loop.stop()
        for task in self._secret_watches.values():
            task.cancel()
        self._secret_watches.clear()

    async def _reconcile(self, key: str) -> None:
        if key.startswith(ISSUER_KEY):
            await self.reconcile_issuer(key[len(ISSUER_KEY):])
        else:
            await self.reconcile_certificate(key)

    # ---- derivation (called from the AccessPoint reconcile) ----

    def _choose_issuer(self, hosts: list[str]) -> str | None:
        names = sorted(self.issuers)
        if not names:
            return None

        def allowed(name: str) -> list[str]:
            return list((self.issuers[name].get("spec") or {}).get("allowedDomains") or [])

        covering = [n for n in names if not disallowed_hosts(hosts, allowed(n))]
        specific = [n for n in covering if allowed(n)]
        return (specific or covering or names)[0]

    def derive(self, ap: AccessPoint, decision: PlacementDecision, members: Mapping[str, Member]) -> Derived:
        key = f"{ap.namespace}/{ap.name}"
        annotations = dict(ap.metadata.get("annotations") or {})
        explicit = annotations.get(ISSUER_ANNOTATION)
        existing = self.certs.get(key)
        if explicit == "none" or (not self.issuers and existing is None):
            return Derived(None)
        manifests: list[dict[str, Any]] = []
        namespaces: dict[str, set[str]] = {}
        for cname in decision.names:
            member = members.get(cname)
            if member is None:
                continue
            rendered = render(ap, member.facts, self.hub_id)
            if rendered.errors:
                continue
            manifests += rendered.objects
            namespaces[cname] = {
                str(o["metadata"]["namespace"]) for o in rendered.objects
                if o.get("kind") == "Gateway" and gateway_tls_hosts([o])
            }
        hosts = gateway_tls_hosts(manifests)
        if not hosts:
            if not decision.names and existing is not None:
                # Placed nowhere right now: keep the Certificate as it is (nothing to deliver).
                return Derived(Certificate.model_validate(existing), {})
            return Derived(None)
        issuer = explicit
        if issuer is None and existing is not None:
            # Keep the issuer already chosen while it exists and may sign every host (no surprise re-issue).
            kept = ((existing.get("spec") or {}).get("issuerRef") or {}).get("name")
            allowed = ((self.issuers.get(kept or "") or {}).get("spec") or {}).get("allowedDomains") or []
            if kept in self.issuers and not disallowed_hosts(hosts, allowed):
                issuer = kept
        issuer = issuer or self._choose_issuer(hosts)
        if issuer is None:
            return Derived(None)
        base = CertificateSpec.model_validate(existing["spec"]) if existing else None
        update: dict[str, Any] = {}
        if annotations.get(DURATION_ANNOTATION):
            update["duration"] = annotations[DURATION_ANNOTATION]
        if annotations.get(RENEW_BEFORE_ANNOTATION):
            update["renew_before"] = annotations[RENEW_BEFORE_ANNOTATION]
        if update:
            base = (base or CertificateSpec(hosts=hosts, issuer_ref=IssuerRef(name=issuer))).model_copy(update=update)
            base = CertificateSpec.model_validate(base.wire())  # re-validate the annotation values
        owner = Owner(self.hub_id, ap.namespace, ap.name)
        cert = desired_certificate(ap.name, ap.namespace, manifests, issuer,
                                   labels={**owner.labels()}, base=base)
        return Derived(cert, namespaces)

    async def provide(self, ap: AccessPoint, decision: PlacementDecision,
                      members: Mapping[str, Member]) -> RenderContext:
        """ContextProvider: the TLS Secret per placed cluster and credentialName on covered servers."""
        key = f"{ap.namespace}/{ap.name}"
        self.placed[key] = tuple(decision.names)
        try:
            derived = self.derive(ap, decision, members)
        except ValidationError as err:  # bad annotation values: reported on the Certificate's owner
            log.warning("AccessPoint %s: certificate annotations invalid: %s", key, err.errors()[0]["msg"])
            raise
        if derived.certificate is None:
            if key in self.certs and self._ours(self.certs[key], ap):
                await self._forget(key)
            elif key in self.certs:
                self.enqueue(key)  # one made by hand: its AccessPoint exists now (AccessPointMissing clears)
            return EMPTY_CONTEXT
        await self._ensure_certificate(ap, derived.certificate)
        await self.ensure_loaded(key)
        current = self.current.get(key)
        self.enqueue(key)
        if current is None:
            return EMPTY_CONTEXT
        cert = Certificate.model_validate(self.certs[key])
        secret_name = cert.secret_name
        bundle, revision = current.bundle, current.revision
        generated: dict[str, tuple[dict[str, Any], ...]] = {}
        for cname, namespaces in derived.gateway_namespaces.items():
            generated[cname] = tuple(
                tls_secret(bundle, name=secret_name, namespace=ns, revision=revision, certificate=cert.name)
                for ns in sorted(namespaces)
            )
        hosts = list(bundle.hosts)

        def credential(objs: list[dict[str, Any]], _cluster: Any) -> list[dict[str, Any]]:
            return set_credential_name(objs, hosts, secret_name)

        return RenderContext(transforms=(credential,), generated=generated)

    def _ours(self, body: Mapping[str, Any], ap: AccessPoint) -> bool:
        labels = (body.get("metadata") or {}).get("labels") or {}
        return labels.get(MANAGED_BY) == "meshfed" and labels.get(HUB) == self.hub_id and \
            ((body.get("spec") or {}).get("accessPointRef") or {}).get("name") == ap.name

    async def _ensure_certificate(self, ap: AccessPoint, cert: Certificate) -> None:
        key = f"{ap.namespace}/{ap.name}"
        existing = self.certs.get(key)
        want_spec = cert.spec.wire()
        want_labels = dict(cert.labels)
        owner_ref = {"apiVersion": API_VERSION, "kind": "AccessPoint", "name": ap.name,
                     "uid": str(ap.metadata.get("uid", "")), "controller": True, "blockOwnerDeletion": False}
        if existing is not None:
            have_spec = CertificateSpec.model_validate(existing.get("spec") or {}).wire()
            have_labels = (existing["metadata"].get("labels") or {})
            if have_spec == want_spec and all(have_labels.get(k) == v for k, v in want_labels.items()):
                return
        body: dict[str, Any] = {
            "apiVersion": API_VERSION, "kind": "Certificate",
            "metadata": {"name": ap.name, "namespace": ap.namespace, "labels": want_labels,
                         "ownerReferences": [owner_ref] if owner_ref["uid"] else []},
            "spec": want_spec,
        }
        path = CERTS.format(ns=ap.namespace)
        shards.check()
        if existing is None:
            try:
                result = await self.hub.create(path, body, field_manager=FIELD_MANAGER)
            except ApiError as err:
                if err.status != 409:
                    raise
                result = await self.hub.apply(f"{path}/{ap.name}", body, field_manager=FIELD_MANAGER)
        else:
            result = await self.hub.apply(f"{path}/{ap.name}", body, field_manager=FIELD_MANAGER)
        self.on_certificate("MODIFIED" if existing else "ADDED", result)

    async def _forget(self, key: str) -> None:
        """The AccessPoint is gone or wants no certificate: delete the Certificate and its stored bundle."""
        shards.check()
        ns, name = key.split("/", 1)
        body = self.certs.pop(key, None)
        self.current.pop(key, None)
        self._loaded.discard(key)
        self.placed.pop(key, None)
        self.loop.forget(key)
        if body is not None:
            labels = (body["metadata"].get("labels") or {})
            if labels.get(HUB) == self.hub_id:
                await self.hub.delete(f"{CERTS.format(ns=ns)}/{name}", uid=str(body["metadata"].get("uid", "")))
        await self.hub.delete(f"{SECRETS.format(ns=STORE_NAMESPACE)}/{store_name(ns, name)}")

    # ---- the stored bundle ----

    async def ensure_loaded(self, key: str) -> None:
        """Bring the bundle of Certificate `key` into memory (once per process): from the hub store,
        else from a member Secret carrying the current serial; otherwise mark it lost (re-issue)."""
        if key in self._loaded:
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key in self._loaded:
                return
            body = self.certs.get(key)
            if body is None:
                return
            ns, name = key.split("/", 1)
            status = CertificateStatus.model_validate(body.get("status") or {})
            issuer = status.issuer or ""
            stored = await self.hub.get(f"{SECRETS.format(ns=STORE_NAMESPACE)}/{store_name(ns, name)}")
            found = bundle_from_secret(stored, issuer) if stored else None
            if found is not None and (found[0].serial_hex == status.serial or found[1] > status.revision):
                self.current[key] = Current(*found)
            elif status.serial:
                owner = Owner(self.hub_id, ns, name)
                for member in self.ctl.registry.members.values():
                    for okey, obj in member.cache.owned(owner).items():
                        if okey.kind != "Secret":
                            continue
                        if ((obj.get("metadata") or {}).get("annotations") or {}).get(SERIAL_ANNOTATION) \
                                != status.serial:
                            continue
                        recovered = bundle_from_secret(obj, issuer)
                        if recovered is not None:
                            self.current[key] = Current(*recovered)
                            await self._store(ns, name, body, recovered[0], recovered[1])
                            log.info("certificate %s: bundle recovered from member %s", key, member.name)
                            break
                    if key in self.current:
                        break
                if key not in self.current:
                    log.warning("certificate %s: the key of serial %s is lost; a new certificate is issued",
                                key, status.serial)
                    self._lost.add(key)
            self._loaded.add(key)

    async def _store(self, ns: str, name: str, body: Mapping[str, Any], bundle: CertBundle, revision: int) -> None:
        shards.check()
        secret: SecretManifest = tls_secret(
            bundle, name=store_name(ns, name), namespace=STORE_NAMESPACE, revision=revision,
            labels={MANAGED_BY: "meshfed", HUB: self.hub_id, CERT_NAMESPACE_LABEL: ns}, certificate=name)
        secret["metadata"]["annotations"]["meshfed.io/certificate-uid"] = str(body["metadata"].get("uid", ""))
        await self.hub.apply(f"{SECRETS.format(ns=STORE_NAMESPACE)}/{secret['metadata']['name']}", secret,
                             field_manager=FIELD_MANAGER)

    # ---- issuers ----

    async def _read_secret(self, ref: SecretRef) -> Mapping[str, bytes] | None:
        try:
            return _decode(await self.hub.get(f"{SECRETS.format(ns=ref.namespace)}/{ref.name}"))
        except ApiError as err:
            raise IssuanceError("SecretUnreadable", f"cannot read Secret {ref.namespace}/{ref.name}: "
                                f"{err.status} {err.reason}") from None

    async def _create_secret(self, ref: SecretRef, data: Mapping[str, bytes]) -> Mapping[str, bytes]:
        """Create the hub Secret `ref` holding `data` (an ACME account key meshfed generated); when it
        appeared meanwhile (409), what it holds now. Labelled as meshfed's; never overwrites."""
        shards.check()
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": ref.name, "namespace": ref.namespace,
                             "labels": {MANAGED_BY: "meshfed", HUB: self.hub_id}},
                "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}
        try:
            created = await self.hub.create(SECRETS.format(ns=ref.namespace), body, field_manager=FIELD_MANAGER)
        except ApiError as err:
            if err.status == 409:
                return await self._read_secret(ref) or {}
            raise IssuanceError("SecretUnwritable", f"cannot create Secret {ref.namespace}/{ref.name}: "
                                f"{err.status} {err.reason}") from None
        log.info("created hub Secret %s/%s with a new ACME account key", ref.namespace, ref.name)
        return _decode(created) or dict(data)

    async def issuer_for(self, cert: Certificate) -> Issuer | IssuanceError:
        name = cert.spec.issuer_ref.name
        body = self.issuers.get(name)
        if body is None:
            return IssuanceError("IssuerNotFound", f"CertificateIssuer {name} not found")
        try:
            resource = CertificateIssuer.model_validate(body)
        except ValidationError as err:
            return IssuanceError("IssuerInvalid", f"CertificateIssuer {name}: {err.errors()[0]['msg']}")
        allowed = resource.spec.allowed_domains
        denied = disallowed_hosts(cert.spec.hosts, allowed)
        if denied:
            others = [n for n in sorted(self.issuers) if n != name]
            return IssuanceError(
                "HostNotAllowed",
                f"no CertificateIssuer may sign {', '.join(denied)}: {name} allows only {', '.join(allowed)}"
                + (f" and none of {', '.join(others)} covers every host" if others else ""),
                retryable=False,
            )
        return await self._build(resource, body)

    async def reconcile_issuer(self, name: str) -> None:
        """Build issuer `name` and write its status (Ready or why not, the CA's notAfter)."""
        body = self.issuers.get(name)
        if body is None:
            return
        try:
            resource = CertificateIssuer.model_validate(body)
        except ValidationError:
            return  # reported on its Certificates (IssuerInvalid)
        await self._build(resource, body)

    async def _build(self, resource: CertificateIssuer, body: dict[str, Any]) -> Issuer | IssuanceError:
        try:
            dns_hooks: dict[str, ProviderChallenges] = {}
            acme = resource.spec.acme
            if acme is not None and acme.solver.dns01 is not None:
                provider = acme.solver.dns01.provider_ref
                dns = dns_feature.feature_of(self.ctl)
                if dns is not None and provider in dns.providers:
                    dns_hooks[provider] = ProviderChallenges(dns, provider,
                                                             RecordOwner(self.hub_id, "acme", resource.name))
            issuer: Issuer | IssuanceError = await build_issuer(
                resource, self._read_secret, dns_hooks=dns_hooks, cache=self.issuer_cache,
                create_secret=self._create_secret)
            if isinstance(issuer, AcmeIssuer):
                await issuer.register()  # Ready only once the ACME server knows the account
        except IssuanceError as err:
            issuer = err
            forget_issuer(self.issuer_cache, resource.name)  # built again (and registered) on the next attempt
        await self._issuer_status(resource, body, issuer)
        return issuer

    async def _issuer_status(self, resource: CertificateIssuer, body: dict[str, Any],
                             issuer: Issuer | IssuanceError) -> None:
        previous = CertificateIssuerStatus.model_validate(body.get("status") or {})
        name = resource.name
        if isinstance(issuer, IssuanceError):
            ready = Condition(type="Ready", status="False", reason=issuer.reason, message=issuer.message)
            if issuer.retryable:  # e.g. the ACME server unreachable: look again, backing off
                failures = self._issuer_failures.get(name, 0) + 1
                self._issuer_failures[name] = failures
                self.enqueue_at(f"{ISSUER_KEY}{name}", datetime.now(UTC) + backoff(failures))
        else:
            self._issuer_failures.pop(name, None)
            message = "the issuer can sign"
            if isinstance(issuer, AcmeIssuer):
                message = f"account registered at {resource.spec.acme.server if resource.spec.acme else ''}"
            ready = Condition(type="Ready", status="True", reason="Ready", message=message)
        ready = ready.model_copy(update={"observed_generation": resource.generation})
        ca_not_after = previous.ca_not_after
        if isinstance(issuer, InternalCA):
            ca_not_after = rfc3339(load_chain(issuer.ca_pem)[0].not_valid_after_utc)
        status = previous.model_copy(update={
            "observed_generation": resource.generation,
            "conditions": merge_conditions(previous.conditions, [ready], now_rfc3339()),
            "type": "CA" if resource.spec.ca is not None else "ACME",
            "ready": ready.status,
            "ca_not_after": ca_not_after,
            "acme_account_uri": issuer.account_uri if isinstance(issuer, AcmeIssuer) else None,
        })
        result = await self.writer.status.write(f"{ISSUERS}/{resource.name}", "CertificateIssuer", resource.name,
                                                None, status.wire(), seen=body)
        if result is not None:
            self.issuers[resource.name] = result

    # ---- the Certificate reconcile ----

    @staticmethod
    def _member_revision(member: Member, owner: Owner, secret: str) -> int | None:
        """The revision every copy of our Secret in this member carries (None: none, or they differ)."""
        revisions = {delivered_revision(obj) for okey, obj in member.cache.owned(owner).items()
                     if okey.kind == "Secret" and okey.name == secret}
        return revisions.pop() if len(revisions) == 1 else None

    def deliveries(self, key: str, cert: Certificate) -> list[ClusterDelivery] | None:
        placed = self.placed.get(key)
        if placed is None:
            return None  # the AccessPoint was not reconciled yet in this process: keep what status says
        ns, name = key.split("/", 1)
        owner = Owner(self.hub_id, ns, name)
        errors = self.cluster_errors.get(key, {})
        out = []
        for cname in placed:
            member = self.ctl.registry.members.get(cname)
            revision = None
            if member is not None and member.usable and SECRET.id in member.cache.synced:
                revision = self._member_revision(member, owner, cert.secret_name)
            out.append(ClusterDelivery(name=cname, revision=revision, secret=cert.secret_name,
                                       last_error=errors.get(cname)))
        return out

    async def reconcile_certificate(self, key: str) -> None:
        body = self.certs.get(key)
        if body is None:
            return
        if not self.ctl.registry.warm() and time.monotonic() < self._warm_deadline:
            self.loop.enqueue_after(key, 0.2)
            return
        ns, name = key.split("/", 1)
        if key not in self.ctl.accesspoints and \
                await self.hub.get(f"/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints/{name}") is None:
            # Its AccessPoint was deleted while no controller ran: nothing left to serve.
            if ((body.get("metadata") or {}).get("labels") or {}).get(HUB) == self.hub_id:
                log.info("certificate %s: its AccessPoint is gone; deleting it", key)
                await self._forget(key)
                return
            # Made by hand: a Certificate is issued and delivered for the AccessPoint of its name (its
            # Gateways say where the Secret goes). Until that exists: say so, issue nothing, claim no host
            # (federation/tenancy.py).
            cert = Certificate.model_validate(body)
            await self._refuse(ns, name, body, cert, [Problem(
                f"no AccessPoint {ns}/{name}: a Certificate is issued and delivered for the AccessPoint of the "
                "same name (its Gateways' TLS hosts); create that AccessPoint, or delete this Certificate",
                ACCESSPOINT_MISSING)])
            return
        await self.ensure_loaded(key)
        body = self.certs.get(key)
        if body is None:
            return
        cert = Certificate.model_validate(body)
        conflicts = tenancy.certificate_refusals(self.ctl, body)
        if conflicts:  # another namespace owns a host (federation/tenancy.py): nothing is issued
            await self._refuse(ns, name, body, cert, conflicts)
            return
        status = cert.status or CertificateStatus()
        current = self.current.get(key)
        if current is not None and current.bundle.serial_hex != status.serial:
            # The stored bundle is newer than status (a crash between the two writes): adopt it.
            leaf = current.bundle.leaf
            status = status.model_copy(update={
                "revision": current.revision, "serial": current.bundle.serial_hex,
                "hosts": list(current.bundle.hosts), "issuer": status.issuer or cert.spec.issuer_ref.name,
                "not_before": rfc3339(leaf.not_valid_before_utc), "not_after": rfc3339(leaf.not_valid_after_utc),
            })
        elif key in self._lost:
            status = status.model_copy(update={"serial": None, "not_before": None, "not_after": None,
                                               "hosts": [], "renewal_time": None})
        cert = cert.model_copy(update={"status": status})
        kicked = key in self._kicked
        self._kicked.discard(key)
        issuer = await self.issuer_for(cert)
        if not isinstance(issuer, IssuanceError):
            issuer = FencedIssuer(issuer)
        now = datetime.now(UTC)
        attempt = cert
        if kicked and status.last_failure is not None:
            # An input of its issuer changed (Secret, DNSProvider, spec): try now, not after the backoff.
            attempt = cert.model_copy(update={"status": status.model_copy(update={"last_failure": None})})
        out = await reconcile(attempt, issuer, now=now,
                              current_key_pem=current.bundle.key_pem if current is not None else None)
        if out.bundle is not None:
            revision = out.status.revision
            await self._store(ns, name, body, out.bundle, revision)
            self.current[key] = Current(out.bundle, revision)
            self._lost.discard(key)
            self.ctl.enqueue(f"ap/{key}", cause="certificate")
            what = "Issued" if out.decision.reason == "Initial" or revision == 1 else "Renewed"
            log.info("certificate %s: %s revision %d, serial %s, hosts %s, notAfter %s (%s)", key, what.lower(),
                     revision, out.bundle.serial_hex, ",".join(out.bundle.hosts), out.status.not_after,
                     out.decision.reason)
            await self.writer.event(body, "Normal", what,
                                    f"revision {revision}, serial {out.bundle.serial_hex}, hosts "
                                    f"{', '.join(out.bundle.hosts)}, notAfter {out.status.not_after} "
                                    f"({out.decision.reason})")
        else:
            failure, before = out.status.last_failure, status.last_failure
            if failure is not None and (before is None or (before.reason, before.message, before.time)
                                        != (failure.reason, failure.message, failure.time)):
                log.warning("certificate %s: issuance failed: %s: %s (attempt %d, next %s)", key, failure.reason,
                            failure.message, out.status.failures, out.status.next_attempt)
                if before is None or (before.reason, before.message) != (failure.reason, failure.message):
                    await self.writer.event(body, "Warning", "IssuanceFailed",
                                            f"{failure.reason}: {failure.message}")
        # status.envoys / status.sds belong to `meshfed sds` (its own field manager): read from the live
        # object into Delivered/Ready, never applied here (so neither side ever overwrites the other).
        new = with_delivery(out.status, clusters=self.deliveries(key, cert), envoys=status.envoys, now=now)
        refused = {c.name: c.last_error for c in status.clusters if c.last_error}
        for entry in new.clusters:  # once per distinct refusal (a restart finds it in status already)
            if entry.last_error and refused.get(entry.name) != entry.last_error:
                await self.writer.event(body, "Warning", "DeliveryFailed", f"{entry.name}: {entry.last_error}")
        await self._write_status(ns, name, body, new)
        self.enqueue_at(key, out.requeue_at)

    async def _refuse(self, ns: str, name: str, body: dict[str, Any], cert: Certificate,
                      problems: Sequence[Problem]) -> None:
        """A Certificate that cannot be used: claiming a host another namespace owns (HostConflict), or
        made by hand without its AccessPoint (AccessPointMissing). Issued/Ready False with the reason,
        lastFailure, one Warning Event per distinct refusal; no issuance, no delivery."""
        status = cert.status or CertificateStatus()
        reason, message = problems[0].reason, "; ".join(problems)
        before = status.last_failure
        gen = cert.generation or None
        conds = [Condition(type=t, status="False", reason=reason, message=message, observed_generation=gen)
                 for t in ("Issued", "Ready")]
        failure = before if before is not None and (before.reason, before.message) == (reason, message) \
            else Failure(time=now_rfc3339(), reason=reason, message=message)
        new = status.model_copy(update={
            "conditions": merge_conditions(status.conditions, conds, now_rfc3339()), "observed_generation": gen,
            "last_failure": failure, "summary": reason, "ready": "False", "next_attempt": None})
        await self._write_status(ns, name, body, new)
        if failure is not before:
            log.warning("certificate %s/%s: refused: %s", ns, name, message)
            await self.writer.event(body, "Warning", reason, message)

    async def _write_status(self, ns: str, name: str, body: dict[str, Any], status: CertificateStatus) -> None:
        """Apply a Certificate's status when it changed (status.envoys / status.sds are `meshfed sds`'s:
        neither applied nor compared); the result updates our view at once, so a reconcile before the
        watch event neither writes the same status again nor reads a stale one."""
        result = await self.writer.status.write(f"{CERTS.format(ns=ns)}/{name}", "Certificate", name, ns,
                                                status.wire(), seen=body, foreign=SDS_STATUS_FIELDS)
        if result is not None:
            self.on_certificate("MODIFIED", result)

    # ---- AccessPoint status ----

    def listen(self, key: str, ap: AccessPoint, status: AccessPointStatus) -> None:
        """StatusListener: member errors about our Secret, and a nudge to refresh delivery status."""
        body = self.certs.get(key)
        if body is None:
            return
        secret = Certificate.model_validate(body).secret_name
        self.cluster_errors[key] = {
            c.name: c.last_error for c in status.clusters
            if c.last_error and c.state in ("Failed", "Conflict") and "Secret " in c.last_error
            and f"/{secret}" in c.last_error
        }
        self.enqueue(key)

    def contribute(self, ap: AccessPoint, status: AccessPointStatus, previous: AccessPointStatus | None,
                   now: str) -> AccessPointStatus:
        """StatusContributor: the CERT column and each cluster's delivered certificate revision."""
        key = f"{ap.namespace}/{ap.name}"
        body = self.certs.get(key)
        if body is None:
            return status.model_copy(update={"certificate": None}) if status.certificate else status
        cst = CertificateStatus.model_validate(body.get("status") or {})
        column = cst.summary
        if cst.last_failure is not None:
            column = f"{column} ({cst.last_failure.reason})" if column else cst.last_failure.reason
        column = column or "Pending"
        delivered = {c.name: c.revision for c in cst.clusters}
        ns, name = key.split("/", 1)
        secret = Certificate.model_validate(body).secret_name
        owner = Owner(self.hub_id, ns, name)
        clusters = []
        for entry in status.clusters:
            member = self.ctl.registry.members.get(entry.name)
            revision = delivered.get(entry.name)
            if member is not None and member.usable:
                revision = self._member_revision(member, owner, secret)
            clusters.append(entry.model_copy(update={"certificate": f"rev {revision}" if revision else None}))
        return status.model_copy(update={"certificate": column, "clusters": clusters})


def validate_annotations(ap: AccessPoint, _facts: Sequence[ClusterFacts], _spec: PlacementSpec | None,
                         _decision: PlacementDecision) -> list[str]:
    """Validator: the certificate annotations of an AccessPoint, each problem naming its field."""
    annotations = dict(ap.metadata.get("annotations") or {})
    problems = []
    for name in (DURATION_ANNOTATION, RENEW_BEFORE_ANNOTATION):
        value = annotations.get(name)
        if value is not None and not re.fullmatch(DURATION_PATTERN, value):
            problems.append(f"metadata.annotations[{name}]: invalid duration {value!r} "
                            "(expected e.g. '2160h', '90m', '1h30m')")
    return problems


def _fingerprint(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("uid", "")), str(meta.get("resourceVersion", ""))


# ---- feature protocol (federation/operator.py) ----

def register(registry: kopf.OperatorRegistry, holder: dict[str, Any]) -> None:
    def feature() -> Certificates | None:
        ctl = holder.get("controller")
        return ctl.feature(Certificates) if ctl is not None else None

    # Async handlers: kopf runs sync ones in a worker thread, where neither the work queue nor
    # asyncio.get_running_loop() (the Secret watches, timers) may be used.
    @kopf.on.event("meshfed.io", "v1alpha1", "certificateissuers", registry=registry)
    async def issuer_event(event: kopf.RawEvent, **_: Any) -> None:
        f = feature()
        if f is not None:
            f.on_issuer(event.get("type") or "ADDED", dict(event["object"]))

    @kopf.on.event("meshfed.io", "v1alpha1", "dnsproviders", registry=registry)
    async def certificate_dnsprovider_event(event: kopf.RawEvent, **_: Any) -> None:
        f = feature()
        if f is not None:
            f.on_dnsprovider(event.get("type") or "ADDED", dict(event["object"]))

    @kopf.on.event("meshfed.io", "v1alpha1", "certificates", registry=registry)
    async def certificate_event(event: kopf.RawEvent, **_: Any) -> None:
        f = feature()
        if f is not None:
            f.on_certificate(event.get("type") or "ADDED", dict(event["object"]))

    @kopf.on.event("meshfed.io", "v1alpha1", "accesspoints", registry=registry)
    async def accesspoint_deleted(event: kopf.RawEvent, **_: Any) -> None:
        f = feature()
        if f is None or event.get("type") != "DELETED":
            return
        meta = event["object"]["metadata"]
        with contextlib.suppress(ApiError):
            await f.on_accesspoint_deleted(f"{meta['namespace']}/{meta['name']}")


async def install(controller: Controller) -> None:
    feature = controller.install(Certificates(controller))
    controller.enqueuers["Certificate"] = lambda ns, name: feature.enqueue(f"{ns}/{name}")
    controller.validators.append(validate_annotations)
    controller.context_providers.append(feature.provide)
    controller.status_contributors.append(feature.contribute)
    controller.status_listeners.append(feature.listen)
    controller.shard_listeners.append(feature.shards_changed)
    await feature.start()


def feature_of(controller: Controller) -> Certificates | None:
    """The certificate feature installed on `controller` (None when it is not)."""
    return controller.feature(Certificates)
