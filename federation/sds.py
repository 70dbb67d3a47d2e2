"""`meshfed sds --kubeconfig HUB`: the SDS server sourcing certificates from the hub and reporting
each Envoy's ACK/NACK on the hub Certificate.

Owns the hub wiring of certs.sds (which stays free of Kubernetes clients):

- **Source.** List+watch of every Certificate on the hub and of the bundles the controller keeps in
  `meshfed-system/mfcert.<namespace>.<name>` (federation.certificates.store_name / bundle_from_secret;
  label-selected by `meshfed.io/certificate-namespace`, so only that one namespace is read). A
  store Secret whose `meshfed.io/certificate-uid` names another Certificate (a deleted and
  re-created one) is ignored.
- **Serving.** Certificate `<namespace>/<name>` is served as SDS resource `<namespace>/<name>` (its
  CA as `<namespace>/<name>-cacert`), version `<revision>-<serial>` (stable across restarts, so a
  restart re-sends nothing new). SdsServer.set_secret refuses a bundle failing certs.checks: the
  previous one keeps serving and the refusal shows in status (`--unsafe-serve-unchecked` skips the
  checks, to test Envoy's own NACK path only).
- **Grants.** Certificate `<namespace>/<name>` is served only to the identities in its
  `spec.delivery.sdsClients`; without that field, to one identity per cluster it is delivered to
  (`status.clusters[].name` through `--cluster-identity`, default `spiffe://meshfed/cluster/{cluster}`);
  `[]` grants nobody (certs.sds enforces it per stream and resource).
- **Status.** Per Certificate, `status.envoys` (each connected Envoy subscribed to it: node,
  resource, ackedVersion or nackVersion + nackMessage, time) and `status.sds` (resource, serial and
  version served, refusedSerial/refusedMessage) and `status.refusedClients` (the identities refused
  this certificate within `--refusal-ttl`, with the node they named), written by server-side apply on the status
  subresource with this component's own field manager `meshfed-sds` (the hub's one status writer,
  federation.hubwriter.StatusWriter, the controller's fields foreign), only when they changed
  (compared with the live object), after a short debounce that folds bursts (a rotation ACKed by
  many Envoys) into one write. The controller (federation/certificates.py, manager meshfed-status)
  never applies these two fields; it reads them and folds them into Delivered/Ready. Times are kept
  from the live object while the facts are unchanged, so a restart writes nothing.

- **Many replicas.** Every `meshfed sds` replica serves every Certificate; only the one holding the
  `sds` singleton Lease (federation.shards.SingletonLease, in meshfed-system) writes status, and it
  stops before its Lease can be taken over (fencing). A replica that takes the Lease over marks every
  Certificate, so what the previous writer had not written yet is written once.

- **Entry point.** `main` is the one `meshfed sds` (hub or `--dir` mode): it builds the listener
  (certs.sds.parse_listen refuses a plaintext TCP one with a one-line reason), counts refusals in
  `meshfed_sds_refusals_total` (federation.metrics, served on `--http-address`).

Pure parts: `resource_name`, `granted_identities`, `desired_fragment`, `live_fragment`. Imports certs.*,
federation.kube, federation.metrics, federation.shards (its singleton Lease) and federation.certificates
(its store helpers only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from accesspoint.meta import rfc3339
from certs.delivery import CERTIFICATE_LABEL
from certs.issuers import CertBundle
from certs.models import SDS_STATUS_FIELDS, CertificateDelivery, EnvoySdsStatus, SdsRefusal, SdsServing
from certs.sds import (
    CA_SUFFIX,
    Listener,
    ListenerRefused,
    Refusal,
    SdsServer,
    load_grants,
    parse_listen,
    parse_peer_uid,
    serve_directory,
)
from federation import metrics
from federation.certificates import CERT_NAMESPACE_LABEL, STORE_NAMESPACE, bundle_from_secret, store_name
from federation.hubwriter import StatusWriter
from federation.kube import ApiError, Gone, KubeClient
from federation.shards import SDS, LeaseTiming, SingletonLease

log = logging.getLogger("meshfed.sds")

FIELD_MANAGER = "meshfed-sds"
CERTIFICATES = "/apis/meshfed.io/v1alpha1/certificates"
CERT = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/certificates/{name}"
STORE = f"/api/v1/namespaces/{STORE_NAMESPACE}/secrets"
UID_ANNOTATION = "meshfed.io/certificate-uid"
CLUSTER_IDENTITY = "spiffe://meshfed/cluster/{cluster}"
DEFAULT_SOCKET = "unix:/var/run/meshfed/sds.sock"


def resource_name(namespace: str, name: str) -> str:
    """The SDS resource name of Certificate namespace/name (Envoy's `sds_secret_configs[].name`)."""
    return f"{namespace}/{name}"


def granted_identities(cert: Mapping[str, Any], cluster_identity: str = CLUSTER_IDENTITY) -> frozenset[str]:
    """Who may fetch Certificate `cert` over SDS: spec.delivery.sdsClients, else one identity per
    cluster it is delivered to (status.clusters, through `cluster_identity`)."""
    delivery = CertificateDelivery.model_validate(((cert.get("spec") or {}).get("delivery")) or {})
    if delivery.sds_clients is not None:
        return frozenset(delivery.sds_clients)
    clusters = ((cert.get("status") or {}).get("clusters")) or []
    return frozenset(cluster_identity.format(cluster=c["name"]) for c in clusters if c.get("name"))


# ---- pure: the status fragment meshfed sds owns ----


def live_fragment(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The fields of a live Certificate status that meshfed sds owns (an empty list counts as absent)."""
    status = status or {}
    return {k: status[k] for k in SDS_STATUS_FIELDS if status.get(k)}


def desired_fragment(
    envoys: Sequence[EnvoySdsStatus],
    serving: SdsServing | None,
    live_status: Mapping[str, Any] | None,
    *,
    keep_unknown: bool = False,
    known: Collection[tuple[str, str]] = (),
    refused: Sequence[SdsRefusal] = (),
) -> dict[str, Any]:
    """`status.envoys` and `status.sds` for one Certificate: the connected Envoys subscribed to it
    (sorted by node, resource) and what is served; {} when no Envoy asks for it and nothing was
    refused. A `time` is taken from the live status while the rest of its entry is unchanged.
    `keep_unknown` (the grace period after a start, while Envoys reconnect): live entries of Envoys
    this server has no record of (`known`: (node, resource) pairs it has seen) are kept as they are;
    `refused` (clients refused this certificate) becomes `refusedClients`, likewise."""
    live = live_fragment(live_status)
    before = {(e.node, e.resource): e for e in map(EnvoySdsStatus.model_validate, live.get("envoys") or [])}
    current = [e for e in envoys if e.connected is not False]
    if keep_unknown:
        seen = set(known) | {(e.node, e.resource) for e in current}
        current += [e for k, e in before.items() if k not in seen]
    out: list[dict[str, Any]] = []
    for e in sorted(current, key=lambda e: (e.node, e.resource)):
        old = before.get((e.node, e.resource))
        if old is not None and old.model_copy(update={"time": None}) == e.model_copy(update={"time": None}):
            e = old
        out.append(e.wire())
    before_refused = {(r.identity, r.resource): r
                      for r in map(SdsRefusal.model_validate, live.get("refusedClients") or [])}
    refusals = list(refused)
    if keep_unknown:
        seen_refused = {(r.identity, r.resource) for r in refusals}
        refusals += [r for k, r in before_refused.items() if k not in seen_refused]
    refused_out: list[dict[str, Any]] = []
    for r in sorted(refusals, key=lambda r: (r.identity, r.resource)):
        old_r = before_refused.get((r.identity, r.resource))
        if old_r is not None and old_r.model_copy(update={"time": None}) == r.model_copy(update={"time": None}):
            r = old_r
        refused_out.append(r.wire())
    if not out and not refused_out and (serving is None or not serving.refused_message):
        return {}
    fragment: dict[str, Any] = {"envoys": out} if out else {}
    if refused_out:
        fragment["refusedClients"] = refused_out
    if serving is not None:
        old_sds = SdsServing.model_validate(live["sds"]) if live.get("sds") else None
        if old_sds is not None and old_sds.model_copy(update={"time": None}) == serving.model_copy(
            update={"time": None}
        ):
            serving = old_sds
        fragment["sds"] = serving.wire()
    return fragment


def _rv(obj: Mapping[str, Any] | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion", "0"))
    except ValueError:
        return 0


# ---- the hub-sourced SDS server ----


class HubSds:
    """Serves the hub's Certificates over SDS and writes the Envoys' ACK/NACK back to them."""

    def __init__(
        self,
        hub: KubeClient,
        server: SdsServer,
        *,
        force: bool = False,
        debounce: float = 0.25,
        grace: float = 30.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        lease: SingletonLease | None = None,
        cluster_identity: str = CLUSTER_IDENTITY,
    ) -> None:
        self.hub = hub
        self.status_writer = StatusWriter(hub, FIELD_MANAGER)
        self.lease = lease
        self.cluster_identity = cluster_identity
        self.server = server
        self.force = force
        self.debounce = debounce
        self.clock = clock
        self.grace = grace
        self._grace_until = 0.0
        self.certs: dict[str, dict[str, Any]] = {}  # "ns/name" -> Certificate
        self.secrets: dict[str, dict[str, Any]] = {}  # store Secret name -> Secret
        self.serving: dict[str, SdsServing] = {}
        self._bundles: dict[str, CertBundle] = {}  # key -> last bundle served or refused
        self._synced: dict[str, tuple[str, int]] = {}  # key -> (cert uid, secret rv) last looked at
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self.writes = 0

    # ---- intake ----

    def mark(self, key: str) -> None:
        self._dirty.add(key)
        self._wake.set()

    def on_envoys(self) -> None:
        """SdsServer callback: some Envoy's ACK/NACK/subscription changed."""
        for key in self.certs:
            self.mark(key)

    def on_refusal(self, refusal: Refusal) -> None:
        """SdsServer callback: a client was refused `refusal.resource`; its entry expires after the TTL."""
        if refusal.resource:
            key = refusal.resource.removesuffix(CA_SUFFIX)
            if key in self.certs:
                self.mark(key)
                asyncio.get_running_loop().call_later(self.server.refusal_ttl + 1.0, self.mark, key)

    def _grant(self, key: str) -> None:
        cert = self.certs.get(key)
        ns, name = key.split("/", 1)
        try:
            identities = granted_identities(cert, self.cluster_identity) if cert is not None else frozenset()
        except ValidationError as err:  # the CRD validates the same model: only a stale object can fail
            log.warning("sds: %s: spec.delivery unreadable (%s); granted to nobody", key, err.errors()[0]["msg"])
            identities = frozenset()
        self.server.grant(resource_name(ns, name), identities)

    def on_certificate(self, event_type: str, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        old = self.certs.get(key)
        if event_type == "DELETED":
            if old is not None and old["metadata"].get("uid") == meta.get("uid"):
                del self.certs[key]
                self._forget(key)
            return
        if old is not None and old["metadata"].get("uid") == meta.get("uid") and _rv(old) > _rv(body):
            return  # an echo older than our own apply result
        self.certs[key] = body
        self._grant(key)
        self._sync(key)
        self.mark(key)

    def on_secret(self, event_type: str, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        labels = meta.get("labels") or {}
        ns, name = labels.get(CERT_NAMESPACE_LABEL), labels.get(CERTIFICATE_LABEL)
        if not ns or not name or store_name(ns, name) != meta["name"]:
            return
        if event_type == "DELETED":
            self.secrets.pop(meta["name"], None)
        else:
            self.secrets[meta["name"]] = body
        self._sync(f"{ns}/{name}")

    def _forget(self, key: str) -> None:
        self.server.remove_secret(resource_name(*key.split("/", 1)))
        self.server.grant(resource_name(*key.split("/", 1)), ())
        self.serving.pop(key, None)
        self._bundles.pop(key, None)
        self._synced.pop(key, None)
        self._dirty.discard(key)

    def _sync(self, key: str) -> None:
        """Serve the stored bundle of Certificate `key` if it is new (refused bundles are recorded)."""
        cert = self.certs.get(key)
        if cert is None:
            return
        ns, name = key.split("/", 1)
        secret = self.secrets.get(store_name(ns, name))
        uid = str(cert["metadata"].get("uid", ""))
        fingerprint = (uid, _rv(secret))
        if secret is None or self._synced.get(key) == fingerprint:
            return
        self._synced[key] = fingerprint
        owner_uid = ((secret["metadata"].get("annotations") or {}).get(UID_ANNOTATION)) or uid
        if owner_uid != uid:
            log.info("sds: %s: the store Secret belongs to another Certificate (uid %s); ignored", key, owner_uid)
            return
        resource = resource_name(ns, name)
        previous = self.serving.get(key) or SdsServing(resource=resource)
        found = bundle_from_secret(secret, str(((cert.get("status") or {}).get("issuer")) or ""))
        if found is None:
            self.serving[key] = previous.model_copy(update={
                "refused_serial": None, "time": rfc3339(self.clock()),
                "refused_message": f"Secret {STORE_NAMESPACE}/{store_name(ns, name)} holds no usable "
                                   "tls.crt/tls.key/revision"})
            self.mark(key)
            return
        bundle, revision = found
        if self._bundles.get(key) == bundle:
            return
        self._bundles[key] = bundle
        result = self.server.set_secret(resource, bundle, force=self.force,
                                        version=f"{revision}-{bundle.serial_hex[:16]}")
        now = rfc3339(self.clock())
        if result.ok or self.force:
            self.serving[key] = SdsServing(resource=resource, serial=bundle.serial_hex,
                                           version=self.server.version(resource), time=now)
            log.info("sds: %s: serving revision %d, serial %s as %s", key, revision, bundle.serial_hex, resource)
        else:
            self.serving[key] = previous.model_copy(update={
                "refused_serial": bundle.serial_hex, "refused_message": result.message, "time": now})
            log.warning("sds: %s: refused revision %d, serial %s: %s (still serving %s)", key, revision,
                        bundle.serial_hex, result.message, previous.serial or "nothing")
        self.mark(key)

    # ---- status ----

    async def write_status(self, key: str) -> bool:
        """Apply this component's status fields of Certificate `key` when they differ from the live ones."""
        body = self.certs.get(key)
        if body is None:
            return False
        ns, name = key.split("/", 1)
        resource = resource_name(ns, name)
        records = self.server.status(resource)
        status = body.get("status") or {}
        want = desired_fragment([e for e in records if e.connected], self.serving.get(key), status,
                                keep_unknown=time.monotonic() < self._grace_until,
                                known=[(e.node, e.resource) for e in records],
                                refused=[r.wire() for r in self.server.refusals(resource)])
        if want == live_fragment(status):
            return False
        if self.lease is not None and not self.lease.valid():
            return False  # another replica writes status (marked again when this one takes the Lease)
        # The hub's one status writer (federation.hubwriter): server-side apply of the fields this
        # component owns; the controller's fields are foreign, neither applied nor compared.
        result = await self.status_writer.write(CERT.format(ns=ns, name=name), "Certificate", name, ns, want,
                                                seen=body, foreign=[k for k in status if k not in SDS_STATUS_FIELDS])
        if result is None:
            return False  # already written (our own last write is newer than the watch), or the Certificate is gone
        self.writes += 1
        log.info("sds: %s: status %s%s", key, "; ".join(
            f"{e['node']} {'NACK ' + str(e.get('nackMessage')) if e.get('nackMessage') else e.get('ackedVersion')}"
            for e in want.get("envoys", [])) or "no Envoy",
            "".join(f"; refused {r['identity']}" for r in want.get("refusedClients", [])))
        if result.get("metadata", {}).get("uid") == body["metadata"].get("uid"):
            self.certs[key] = result
        return True

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.debounce)  # fold a burst (many Envoys ACKing one rotation) into one write
            self._wake.clear()
            keys, self._dirty = self._dirty, set()
            for key in sorted(keys):
                try:
                    await self.write_status(key)
                except ApiError as err:
                    log.warning("sds: %s: status write failed: %s", key, err)
                    asyncio.get_running_loop().call_later(1.0, self.mark, key)

    # ---- list + watch ----

    async def _reflect(self, path: str, store: dict[str, dict[str, Any]], key: Callable[[dict[str, Any]], str],
                       handle: Callable[[str, dict[str, Any]], None], *, label_selector: str | None = None,
                       synced: asyncio.Event | None = None) -> None:
        delay = 0.2
        while True:
            try:
                items, rv = await self.hub.list(path, label_selector=label_selector)
                seen = {key(i) for i in items}
                for gone in [k for k in store if k not in seen]:
                    handle("DELETED", store[gone])
                for item in items:
                    handle("ADDED", item)
                if synced is not None:
                    synced.set()
                delay = 0.2
                while True:
                    async for ev in self.hub.watch(path, rv, label_selector=label_selector):
                        rv = str(ev.object.get("metadata", {}).get("resourceVersion") or rv)
                        if ev.type != "BOOKMARK":
                            handle(ev.type, ev.object)
            except Gone:
                continue
            except ApiError as err:
                log.warning("sds: watch %s: %s", path, err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def run(self) -> None:
        """Watch the hub and write status until cancelled (the SDS server is started by the caller)."""
        secrets_synced = asyncio.Event()
        # Envoys of a previous process keep their entries until they reconnect (or the grace ends).
        self._grace_until = time.monotonic() + self.grace
        asyncio.get_running_loop().call_later(self.grace + 0.1, self.on_envoys)
        if self.lease is not None:
            self.lease.shards.listeners.append(lambda _a, _l, singles: self.on_envoys() if singles else None)
            await self.lease.start(wait=0.0)
        tasks = [
            asyncio.create_task(self._reflect(
                STORE, self.secrets, lambda s: str(s["metadata"]["name"]), self.on_secret,
                label_selector=CERT_NAMESPACE_LABEL, synced=secrets_synced)),
        ]
        try:
            await secrets_synced.wait()  # bundles known before the first Certificate is looked at
            tasks.append(asyncio.create_task(self._reflect(
                CERTIFICATES, self.certs,
                lambda c: f"{c['metadata']['namespace']}/{c['metadata']['name']}", self.on_certificate)))
            tasks.append(asyncio.create_task(self._writer()))
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            if self.lease is not None:
                await self.lease.stop()


def count_refusal(refusal: Refusal) -> None:
    metrics.sds_refusals.labels(reason=refusal.reason).inc()


async def serve_hub(hub: KubeClient, listeners: Sequence[Listener], *, force: bool = False, debounce: float = 0.25,
                    grace: float = 30.0, lease: SingletonLease | None = None,
                    cluster_identity: str = CLUSTER_IDENTITY, refusal_ttl: float = 300.0) -> None:
    feature: HubSds | None = None

    def refused(refusal: Refusal) -> None:
        count_refusal(refusal)
        if feature is not None:
            feature.on_refusal(refusal)

    server = SdsServer(on_status=lambda: feature.on_envoys() if feature is not None else None,
                       on_refusal=refused, refusal_ttl=refusal_ttl)
    feature = HubSds(hub, server, force=force, debounce=debounce, grace=grace, lease=lease,
                     cluster_identity=cluster_identity)
    try:
        for listener in listeners:
            await server.start(listener)
        await feature.run()
    finally:
        await server.stop()
        await hub.close()


def _owner(text: str | None) -> tuple[int | None, int | None]:
    """`USER[:GROUP]` (names or numbers) of the socket file."""
    if not text:
        return None, None
    user, _, group = text.partition(":")

    def resolve(value: str, lookup: Callable[[str], int], what: str) -> int | None:
        if not value:
            return None
        if value.isdigit():
            return int(value)
        try:
            return lookup(value)
        except KeyError:
            raise ListenerRefused(f"--socket-owner {text}: no such {what} {value!r}") from None

    import grp
    import pwd

    return (resolve(user, lambda n: pwd.getpwnam(n).pw_uid, "user"),
            resolve(group, lambda n: grp.getgrnam(n).gr_gid, "group"))


def main(argv: list[str] | None = None) -> int:
    """`meshfed sds [--listen unix:PATH | --listen HOST:PORT --tls-cert --tls-key --client-ca]
    (--kubeconfig HUB | --in-cluster | --dir DIR)`."""
    parser = argparse.ArgumentParser(
        prog="meshfed sds",
        description="Serve certificates to authenticated Envoys over SDS, each secret only to the identities "
        "granted it: from the hub (Certificates and their stored bundles; each Envoy's ACK/NACK and each "
        "refused client written to Certificate status) or from a directory of mounted Secrets.",
    )
    parser.add_argument("--listen", action="append", default=[],
                        help="unix:PATH (clients: peer uid, --peer-uid) or HOST:PORT with mutual TLS (--tls-cert, "
                        "--tls-key, --client-ca); repeatable; a plaintext TCP listener is refused "
                        f"(default {DEFAULT_SOCKET})")
    parser.add_argument("--socket-mode", default="660", help="unix socket: file mode, octal (default %(default)s)")
    parser.add_argument("--socket-owner", help="unix socket: USER[:GROUP] owning the file (default: this process)")
    parser.add_argument("--peer-uid", action="append", default=[], metavar="UID=IDENTITY",
                        help="unix socket: a client process of this uid is this identity (repeatable); "
                        "other uids are refused")
    parser.add_argument("--tls-cert", type=Path, help="TCP: this server's certificate chain (PEM)")
    parser.add_argument("--tls-key", type=Path, help="TCP: this server's private key (PEM)")
    parser.add_argument("--client-ca", type=Path, help="TCP: CA bundle client certificates must chain to (PEM)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--kubeconfig", help="hub kubeconfig: serve Certificate <namespace>/<name> as that "
                        "SDS resource and report ACK/NACK in its status")
    source.add_argument("--in-cluster", action="store_true", help="like --kubeconfig, with the Pod's service account")
    source.add_argument("--dir", type=Path, help="directory of <name>/tls.crt,tls.key[,ca.crt] (no hub, no status)")
    parser.add_argument("--grants", type=Path, help="--dir: YAML {secret name: [identity, ...]} (re-read with "
                        "the directory)")
    parser.add_argument("--grant", action="append", default=[], metavar="NAME=IDENTITY",
                        help="--dir: secret NAME may be fetched by IDENTITY (repeatable)")
    parser.add_argument("--cluster-identity", default=CLUSTER_IDENTITY,
                        help="hub: the identity of a cluster's gateway, granted the Certificates delivered to that "
                        "cluster unless spec.delivery.sdsClients says otherwise (default %(default)s)")
    parser.add_argument("--refusal-ttl", type=float, default=300.0,
                        help="hub: a refused client stays in status.refusedClients this long after its last try")
    parser.add_argument("--http-address", help="serve /metrics (Prometheus), /healthz and /readyz here")
    parser.add_argument("--interval", type=float, default=5.0, help="--dir: re-read period (seconds)")
    parser.add_argument("--debounce", type=float, default=0.25, help="hub: status write debounce (seconds)")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="hub: after a start, Envoys not yet reconnected keep their status entries this long")
    parser.add_argument("--unsafe-serve-unchecked", action="store_true",
                        help="serve bundles that fail the local checks (only to test Envoy's NACK path)")
    parser.add_argument("--hub-id", default=os.environ.get("MESHFED_HUB_ID", "meshfed-hub"),
                        help="hub: the hub id naming the status-writing Lease (as the controller's)")
    parser.add_argument("--lease-namespace", default="meshfed-system",
                        help="hub: namespace of the Lease only one replica writes status under ('' : no Lease)")
    parser.add_argument("--lease-duration", type=int, default=15)
    parser.add_argument("--renew-deadline", type=float, default=10.0)
    parser.add_argument("--retry-period", type=float, default=2.0)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        owner, group = _owner(args.socket_owner)
        try:
            mode = int(args.socket_mode, 8)
        except ValueError:
            raise ListenerRefused(f"--socket-mode {args.socket_mode}: not an octal mode") from None
        peer_uids = dict(map(parse_peer_uid, args.peer_uid))
        listeners = [parse_listen(address, tls_cert=args.tls_cert, tls_key=args.tls_key, client_ca=args.client_ca,
                                  socket_mode=mode, socket_owner=owner, socket_group=group, peer_uids=peer_uids)
                     for address in args.listen or [DEFAULT_SOCKET]]
        try:
            probe = args.cluster_identity.format(cluster="\0")
        except (KeyError, IndexError, ValueError):
            probe = ""
        if "\0" not in probe:
            raise ListenerRefused(f"--cluster-identity {args.cluster_identity}: needs {{cluster}} and no other "
                                  "placeholder, e.g. spiffe://meshfed/cluster/{cluster}")
        if args.dir is not None and not args.dir.is_dir():
            raise ListenerRefused(f"--dir {args.dir}: not a directory")
        if args.dir is not None:
            load_grants(args.grants, args.grant)  # a bad grants file stops the start, not a later re-read
        elif args.grants or args.grant:
            raise ListenerRefused("--grants/--grant are for --dir; in hub mode a Certificate's "
                                  "spec.delivery.sdsClients grants it")
    except ValueError as err:  # ListenerRefused included
        print(f"meshfed sds: {err}", file=sys.stderr)
        return 2

    async def hub_mode() -> None:
        hub = (await KubeClient.in_cluster("hub") if args.in_cluster
               else await KubeClient.from_kubeconfig_file(args.kubeconfig, "hub"))
        lease = None
        if args.lease_namespace:
            lease = SingletonLease(hub, args.hub_id, SDS, namespace=args.lease_namespace,
                                   timing=LeaseTiming(args.lease_duration, args.renew_deadline, args.retry_period))
        await serve_hub(hub, listeners, force=args.unsafe_serve_unchecked, debounce=args.debounce,
                        grace=args.grace, lease=lease, cluster_identity=args.cluster_identity,
                        refusal_ttl=args.refusal_ttl)

    async def run() -> None:
        http = None
        if args.http_address:
            http = metrics.HttpServer(args.http_address, lambda: (True, ""), lambda: (True, ""))
            await http.start()
        try:
            if args.dir is not None:
                await serve_directory(args.dir, listeners, args.interval,
                                      grants=lambda: load_grants(args.grants, args.grant),
                                      server=SdsServer(on_refusal=count_refusal))
            else:
                await hub_mode()
        finally:
            if http is not None:
                await http.stop()

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run())
    except ListenerRefused as err:
        print(f"meshfed sds: {err}", file=sys.stderr)
        return 2
    return 0
