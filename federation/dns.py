"""NameService on the hub: kopf events → a keyed DNS work queue → nameservice.sync → status.

Owns the hub wiring of NameService and DNSProvider (the pure core and the provider clients live in
nameservice/): its own kopf `on.event` handlers (NameServices, DNSProviders, and AccessPoint
additions/removals), a keyed work loop (federation/workloop.py), one provider client per DNSProvider
(rebuilt when its spec or Secret changes; one sync at a time per zone), NameService / DNSProvider
status written once per change, Events on Ready transitions, and the `meshfed.io/cleanup`
finalizer that removes only the records a NameService owns.

Event-driven: a StatusListener on the Controller sees every computed AccessPoint status; when the
facts a NameService depends on (per cluster: region, VIP, reachability) change, the NameServices
targeting it are synced at once. A slow periodic resync is the safety net. A StatusContributor sets
`AccessPointStatus.fqdn` (the FQDN printer column) from the NameServices targeting it.

Bad input (unknown provider, missing Secret or key, missing AccessPoint, a spec the models reject)
becomes a clear condition through `nameservice.sync.error_status`: the previous records are kept
and nothing is written to DNS. An unchanged world costs no hub write and no DNS UPDATE (the
restart test depends on it): statuses carry no moving timestamps and are compared before writing.

Several replicas (federation/shards.py): a NameService is worked on only by the replica holding the
shard of its target AccessPoint (a standalone one: its own namespace/name), a DNSProvider's status
by the holder of the shard of its name; every UPDATE sent to a zone (`FencedProvider`) and every hub
write is fenced.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from pydantic import ValidationError

from accesspoint.meta import Condition, merge_conditions, parse_time_or_none
from accesspoint.models import AccessPoint, AccessPointStatus
from federation import metrics, shards, telemetry, tenancy
from federation.controller import Controller, validation_messages
from federation.hubwriter import FINALIZER, now_rfc3339
from federation.kube import ApiError
from federation.workloop import WorkLoop
from nameservice.models import DNSProvider, DNSProviderStatus, NameService, NameServiceStatus
from nameservice.providers import Provider, ProviderError
from nameservice.providers.factory import provider_for
from nameservice.records import TargetFact
from nameservice.sync import delete_nameservice, error_status, sync_nameservice

log = logging.getLogger("meshfed.dns")

NS_PATH = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/nameservices/{name}"
DNSP_PATH = "/apis/meshfed.io/v1alpha1/dnsproviders/{name}"
AP_LIST = "/apis/meshfed.io/v1alpha1/accesspoints"
WORKERS = 4
WARMUP_SECONDS = 30.0
MAX_RESYNC_SECONDS = 300.0
# Reasons that only a change on the hub (an event we watch) can fix: no timed retry.
HUB_FIXABLE = {"InvalidSpec", "ProviderNotFound", "ProviderInvalid", "AccessPointNotFound", "HostConflict"}
# Setup failures after which deleting a NameService cannot reach DNS at all.
UNREACHABLE_SETUP = {"SecretNotFound", "SecretKeyMissing", "AuthenticationFailed", "ZoneNotServed",
                     "ProviderRejected", "ProviderNotFound", "ProviderInvalid"}



class SetupError(Exception):
    """A provider client could not be built (Secret missing, unreadable, malformed)."""

    def __init__(self, reason: str, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.transient = transient


class FencedProvider:
    """A Provider whose writes are fenced (federation.shards.check before every change set): a replica
    that no longer holds the NameService's shard sends no UPDATE."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.zone = inner.zone

    @property
    def writes_sent(self) -> int:
        return self.inner.writes_sent

    async def list_records(self) -> Any:
        return await self.inner.list_records()

    async def apply(self, plan: Any) -> Any:
        if not plan.noop:
            shards.check()
            metrics.dns_updates.inc()
        return await self.inner.apply(plan)

    async def serial(self) -> int:
        return await self.inner.serial()

    async def resolve(self, name: str, rtype: str) -> tuple[str, ...]:
        return await self.inner.resolve(name, rtype)

    @property
    def answer_source(self) -> str:
        return self.inner.answer_source

    @property
    def checks_dns(self) -> bool:
        return self.inner.checks_dns

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class ProviderClient:
    fingerprint: str
    provider: Provider
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _cond(conditions: Iterable[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


class DNSFeature:
    """The DNS part of the hub controller (one per Controller)."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.hub = controller.hub
        self.hub_id = controller.hub_id
        self.nameservices: dict[str, dict[str, Any]] = {}  # "ns/name" -> body
        self.providers: dict[str, dict[str, Any]] = {}  # DNSProvider name -> body
        self.clients: dict[str, ProviderClient] = {}
        self.status = controller.writer.status  # newest status known per object, writes on change
        self.by_ap: dict[str, dict[str, str]] = {}  # AccessPoint key -> {NameService key: fqdn}
        self.ap_of: dict[str, str] = {}  # NameService key -> AccessPoint key
        self.ap_status: dict[str, AccessPointStatus] = {}  # newest computed AccessPoint status
        self.ap_signature: dict[str, tuple[tuple[str, str, str | None, bool | None], ...]] = {}
        self.intake: dict[str, tuple[Any, ...]] = {}  # key -> what last enqueued it (spec, deletion)
        # The keyed work loop (federation/workloop.py); reconciles decide when a backoff starts over.
        self.loop = WorkLoop("dns", self._reconcile, fencing=controller, lease_of=self.lease_of,
                             kind_of=lambda key: "nameservice" if key.startswith("ns/") else "dnsprovider",
                             log=log, reset_backoff_on_success=False)
        self._tasks: list[asyncio.Task[None]] = []
        self._expected_members: set[str] = set()
        self._warm_deadline = 0.0

    # ---- queue ----

    def enqueue(self, key: str) -> None:
        self.loop.enqueue(key)

    def enqueue_later(self, key: str, delay: float) -> None:
        """Enqueue `key` after `delay` seconds (an earlier pending timer for it wins)."""
        self.loop.enqueue_after(key, delay)

    def _retry(self, key: str, cap: float = 60.0) -> None:
        self.loop.retry(key, cap)

    def lease_of(self, key: str) -> str | None:
        """The Lease a work-queue key runs under (None: not sharded)."""
        sh = self.controller.shards
        if sh is None:
            return None
        if key.startswith("ns/"):
            body = self.nameservices.get(key[3:])
            if body is not None:
                return sh.key_of("NameService", body)
            ns, _, name = key[3:].partition("/")
            return sh.shard_key(ns, name)
        return sh.shard_key("", key.partition("/")[2])

    def shards_changed(self, acquired: frozenset[int], lost: frozenset[int]) -> None:
        sh = self.controller.shards
        if sh is None:
            return
        for key in [k for k in self.ap_status if self.controller.in_shards(k, lost)]:
            # Computed while this replica held the shard: stale once another replica moved on.
            self.ap_status.pop(key, None)
            self.ap_signature.pop(key, None)
        if not acquired:
            return
        for key in list(self.nameservices):
            if shards.lease_shard(self.lease_of(f"ns/{key}") or "") in acquired:
                self.enqueue(f"ns/{key}")
        for name in list(self.providers):
            if shards.lease_shard(self.lease_of(f"dnsp/{name}") or "") in acquired:
                self.enqueue(f"dnsp/{name}")

    async def _reconcile(self, key: str) -> None:
        if key.startswith("ns/"):
            await self.reconcile_nameservice(key[3:])
        elif key.startswith("dnsp/"):
            await self.reconcile_provider(key[5:])

    async def _resync(self) -> None:
        period = min(self.controller.resync_seconds, MAX_RESYNC_SECONDS)
        while True:
            await asyncio.sleep(period)
            for name in list(self.providers):
                self.enqueue(f"dnsp/{name}")
            for key in list(self.nameservices):
                self.enqueue(f"ns/{key}")

    # ---- lifecycle ----

    async def start(self) -> None:
        """List what the first reconciles need (before kopf's streams arrive), start the workers."""
        items, _ = await self.hub.list("/apis/meshfed.io/v1alpha1/dnsproviders")
        for body in items:
            self.on_provider("ADDED", body)
        items, _ = await self.hub.list("/apis/meshfed.io/v1alpha1/nameservices")
        for body in items:
            self.on_nameservice("ADDED", body)
        # AccessPoints too: a NameService synced before kopf's AccessPoint stream arrives must not
        # report its (existing) AccessPoint as missing.
        items, _ = await self.hub.list(AP_LIST)
        for body in items:
            self.controller.on_accesspoint("ADDED", body)
        members, _ = await self.hub.list("/apis/meshfed.io/v1alpha1/memberclusters")
        self._expected_members = {m["metadata"]["name"] for m in members}
        self._warm_deadline = time.monotonic() + WARMUP_SECONDS
        self._tasks.extend(self.loop.start(WORKERS))
        self._tasks.append(asyncio.create_task(self._resync(), name="dns-resync"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.loop.stop()
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                await client.provider.close()
        self.clients.clear()

    def warm(self) -> bool:
        """Every MemberCluster known at start is registered and probed (as the controller's warm-up):
        syncing earlier would see clusters as unknown and churn status after every restart."""
        registry = self.controller.registry
        return (set(registry.members) >= self._expected_members and registry.warm()) or \
            time.monotonic() >= self._warm_deadline

    # ---- event intake ----

    def on_nameservice(self, event_type: str, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        path = NS_PATH.format(ns=meta["namespace"], name=meta["name"])
        if event_type == "DELETED":
            self.nameservices.pop(key, None)
            self.status.forget(path)
            self.loop.forget(f"ns/{key}")
            self.intake.pop(f"ns/{key}", None)
            self._index(key, None)
            return
        self.nameservices[key] = body
        self.status.observe(path, body)
        deleting = bool(meta.get("deletionTimestamp"))
        spec = body.get("spec") or {}
        ref = ((spec.get("target") or {}).get("accessPointRef") or {}).get("name")
        self._index(key, (f"{meta['namespace']}/{ref}", str(spec.get("fqdn", "")).rstrip(".")) if ref and not deleting
                    else None)
        signature = (meta.get("generation"), deleting, meta.get("uid"))
        if self.intake.get(f"ns/{key}") != signature:
            self.intake[f"ns/{key}"] = signature
            self.enqueue(f"ns/{key}")

    def on_provider(self, event_type: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        path = DNSP_PATH.format(name=name)
        if event_type == "DELETED":
            self.providers.pop(name, None)
            self.status.forget(path)
            self.loop.forget(f"dnsp/{name}")
            self.intake.pop(f"dnsp/{name}", None)
            client = self.clients.pop(name, None)
            if client is not None:
                asyncio.get_running_loop().create_task(client.provider.close())
        else:
            self.providers[name] = body
            self.status.observe(path, body)
            signature = (body["metadata"].get("generation"), body["metadata"].get("uid"))
            if self.intake.get(f"dnsp/{name}") == signature:
                return
            self.intake[f"dnsp/{name}"] = signature
            self.enqueue(f"dnsp/{name}")
        for key in self._nameservices_of_provider(name):
            self.enqueue(f"ns/{key}")

    def on_accesspoint(self, event_type: str, body: dict[str, Any]) -> None:
        """AccessPoint appeared or went away: its NameServices re-sync (status changes come through
        the StatusListener)."""
        meta = body["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        if event_type == "DELETED":
            self.ap_status.pop(key, None)
            self.ap_signature.pop(key, None)
        elif key in self.ap_signature or key in self.ap_status:
            return
        for ns_key in self.by_ap.get(key, {}):
            self.enqueue(f"ns/{ns_key}")

    def _index(self, key: str, target: tuple[str, str] | None) -> None:
        old_ap = self.ap_of.pop(key, None)
        old_fqdn = self.by_ap.get(old_ap, {}).pop(key, None) if old_ap else None
        if old_ap and not self.by_ap.get(old_ap):
            self.by_ap.pop(old_ap, None)
        if target is not None:
            ap_key, fqdn = target
            self.ap_of[key] = ap_key
            self.by_ap.setdefault(ap_key, {})[key] = fqdn
        # The AccessPoint's FQDN column changes: let the controller recompute its status.
        new_ap = target[0] if target else None
        if old_ap != new_ap or (target is not None and old_fqdn != target[1]):
            for changed in (old_ap, new_ap):
                if changed is not None and changed in self.controller.accesspoints:
                    self.controller.enqueue(f"ap/{changed}", cause="nameservice")

    def _nameservices_of_provider(self, name: str) -> list[str]:
        return [k for k, b in self.nameservices.items()
                if ((b.get("spec") or {}).get("providerRef") or {}).get("name") == name]

    # ---- controller hooks ----

    def contribute(self, ap: AccessPoint, status: AccessPointStatus, previous: AccessPointStatus | None,
                   now: str) -> AccessPointStatus:
        fqdns = sorted(set(self.by_ap.get(f"{ap.namespace}/{ap.name}", {}).values()))
        return status.model_copy(update={"fqdn": ",".join(fqdns) or None})

    def listen(self, key: str, ap: AccessPoint, status: AccessPointStatus) -> None:
        self.ap_status[key] = status
        signature = self._signature(status)
        if self.ap_signature.get(key) != signature:
            self.ap_signature[key] = signature
            for ns_key in self.by_ap.get(key, {}):
                self.enqueue(f"ns/{ns_key}")

    def _signature(self, status: AccessPointStatus) -> tuple[tuple[str, str, str | None, bool | None], ...]:
        return tuple((f.cluster, f.region, f.vip, f.reachable) for f in self._facts(status))

    def _facts(self, status: AccessPointStatus) -> list[TargetFact]:
        members = self.controller.registry.members
        facts = []
        for entry in status.clusters:
            if entry.state == "Removing":
                continue  # no longer placed there
            member = members.get(entry.name)
            reachable = member.probe.reachable if member is not None and not member.kubeconfig_error else None
            facts.append(TargetFact(entry.name, entry.region, entry.vip, reachable))
        return sorted(facts, key=lambda f: f.cluster)

    def targets(self, ap_key: str) -> list[TargetFact] | None:
        """Per-cluster facts of an AccessPoint; None when its status is not known yet."""
        status = self.ap_status.get(ap_key)
        if status is None:
            raw = (self.controller.accesspoints.get(ap_key) or {}).get("status")
            if not raw:
                return None
            try:
                status = AccessPointStatus.model_validate(raw)
            except ValidationError:
                return None
        if status.placement is None and not status.clusters:
            return None
        return self._facts(status)

    # ---- provider clients ----

    async def client(self, name: str, dp: DNSProvider) -> ProviderClient:
        spec = dp.spec
        ref = spec.rfc2136.tsig.secret_ref if spec.rfc2136 is not None else \
            spec.powerdns.api_key_secret_ref if spec.powerdns is not None else None
        if ref is None:
            raise SetupError("ProviderInvalid", f"DNSProvider {name}: no backend configured")
        where = f"Secret {ref.namespace}/{ref.name}"
        try:
            secret = await self.hub.get(f"/api/v1/namespaces/{ref.namespace}/secrets/{ref.name}")
        except ApiError as err:
            raise SetupError("SecretUnreadable", f"cannot read {where}: {err}", transient=True) from err
        if secret is None:
            raise SetupError("SecretNotFound", f"DNSProvider {name}: {where} not found")
        raw = (secret.get("data") or {}).get(ref.key)
        if not raw:
            raise SetupError("SecretKeyMissing", f"DNSProvider {name}: {where} has no key {ref.key!r}")
        try:
            value = base64.b64decode(raw).decode().strip()
        except (binascii.Error, UnicodeDecodeError) as err:
            raise SetupError("SecretKeyMissing", f"DNSProvider {name}: {where} key {ref.key!r}: {err}") from err
        fingerprint = json.dumps([spec.wire(), value], sort_keys=True)
        current = self.clients.get(name)
        if current is not None and current.fingerprint == fingerprint:
            return current
        try:
            provider = provider_for(spec, value)
        except ProviderError as err:
            raise SetupError(err.reason, f"DNSProvider {name}: {err.message}") from err
        client = ProviderClient(fingerprint, FencedProvider(provider))  # type: ignore[arg-type]
        self.clients[name] = client
        if current is not None:
            async with current.lock:
                await current.provider.close()
        return client

    # ---- NameService reconcile ----

    async def reconcile_nameservice(self, key: str) -> None:
        body = self.nameservices.get(key)
        if body is None:
            return
        if not self.warm():
            self.enqueue_later(f"ns/{key}", 0.2)
            return
        telemetry.count("dns_reconciles")
        ns_name, name = key.split("/", 1)
        path = NS_PATH.format(ns=ns_name, name=name)
        self.status.observe(path, body)  # (again: the writer's memory is bounded)
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            await self._finalize(key, body, path)
            return
        await self._set_finalizer(key, path, meta, True)
        previous = self._previous(path)
        now = datetime.now(UTC)
        try:
            ns = NameService.model_validate(body)
        except ValidationError as err:
            await self._invalid(body, path, previous, "; ".join(validation_messages(err)))
            return
        refused = tenancy.nameservice_refusals(self.controller, body)
        if refused:  # another namespace owns the FQDN (federation/tenancy.py): no DNS write at all
            status = error_status(ns, previous, refused[0].reason, "; ".join(refused), now)
            await self._write(path, "NameService", name, ns_name, status.wire())
            await self._transition(body, previous, status)
            return
        status, retry = await self._sync(ns, previous, now)
        if await self._write(path, "NameService", name, ns_name, status.wire()):
            provider = ns.spec.provider_ref.name
            if provider in self.providers:
                self.enqueue(f"dnsp/{provider}")  # serial or health changed
        await self._transition(body, previous, status)
        programmed = _cond(status.conditions, "Programmed")
        if retry:
            self._retry(f"ns/{key}")  # transient: the DNS server or the hub did not answer
        elif status.pending and (programmed is None or programmed.reason not in HUB_FIXABLE):
            self._retry(f"ns/{key}", cap=30.0)  # deferred removals, or not applied yet
        elif programmed is not None and programmed.status != "True" and programmed.reason not in HUB_FIXABLE:
            self._retry(f"ns/{key}", cap=120.0)  # conflicts, auth or zone problems: look again, slowly
        else:
            self.loop.succeeded(f"ns/{key}")
        self._schedule_grace_expiry(key, ns, status, now)

    async def _set_finalizer(self, key: str, path: str, meta: dict[str, Any], present: bool) -> None:
        if not await self.controller.writer.set_finalizer(path, meta, present) and \
                (FINALIZER in (meta.get("finalizers") or [])) != present:
            self.enqueue_later(f"ns/{key}", 1.0)  # changed meanwhile (409): look again

    def _previous(self, path: str) -> NameServiceStatus | None:
        raw = self.status.known(path)
        if not raw:
            return None
        try:
            return NameServiceStatus.model_validate(raw)
        except ValidationError:
            return None

    async def _sync(self, ns: NameService, previous: NameServiceStatus | None,
                    now: datetime) -> tuple[NameServiceStatus, bool]:
        """The new status, and whether to retry soon (a transient failure)."""
        pname = ns.spec.provider_ref.name
        body = self.providers.get(pname)
        if body is None:
            return error_status(ns, previous, "ProviderNotFound",
                                f"spec.providerRef.name: DNSProvider {pname!r} not found", now), False
        try:
            dp = DNSProvider.model_validate(body)
        except ValidationError as err:
            return error_status(ns, previous, "ProviderInvalid",
                                f"DNSProvider {pname}: {'; '.join(validation_messages(err))}", now), False
        targets: list[TargetFact] | None = None
        ref = ns.spec.target.access_point_ref
        if ref is not None:
            ap_key = f"{ns.namespace}/{ref.name}"
            ap_body = self.controller.accesspoints.get(ap_key)
            if ap_body is None or ap_body["metadata"].get("deletionTimestamp"):
                return error_status(
                    ns, previous, "AccessPointNotFound",
                    f"spec.target.accessPointRef.name: AccessPoint {ref.name!r} not found in namespace "
                    f"{ns.namespace}", now), False
            targets = self.targets(ap_key)
        try:
            client = await self.client(pname, dp)
        except SetupError as err:
            return error_status(ns, previous, err.reason, err.message, now), err.transient
        async with client.lock:
            status = await sync_nameservice(ns, client.provider, targets, previous, self.hub_id, now)
        programmed = _cond(status.conditions, "Programmed")
        transient = programmed is not None and programmed.status == "Unknown"
        return status, transient

    def _schedule_grace_expiry(self, key: str, ns: NameService, status: NameServiceStatus, now: datetime) -> None:
        grace = timedelta(seconds=ns.spec.unreachable_grace_seconds)
        due: list[float] = []
        for t in status.targets:
            if t.reason != "UnreachableInGrace":
                continue
            start = parse_time_or_none(t.last_seen) or parse_time_or_none(t.unreachable_since)
            if start is not None:
                due.append(max(0.0, (start + grace - now).total_seconds()))
        if due:
            self.enqueue_later(f"ns/{key}", min(due) + 0.2)

    async def _invalid(self, body: dict[str, Any], path: str, previous: NameServiceStatus | None,
                       message: str) -> None:
        gen = int(body["metadata"].get("generation", 0)) or None
        conds = [Condition(type=t, status="False", reason="InvalidSpec", message=message, observed_generation=gen)
                 for t in ("Programmed", "Ready")]
        base = previous or NameServiceStatus()
        status = base.model_copy(update={
            "conditions": merge_conditions(base.conditions, conds, now_rfc3339()),
            "observed_generation": gen, "ready": "False"})
        meta = body["metadata"]
        await self._write(path, "NameService", meta["name"], meta["namespace"], status.wire())
        await self._transition(body, previous, status)

    async def _transition(self, body: dict[str, Any], previous: NameServiceStatus | None,
                          status: NameServiceStatus) -> None:
        """One Event per Ready transition (status or reason): none after a restart with nothing new."""
        before = _cond(previous.conditions, "Ready") if previous else None
        after = _cond(status.conditions, "Ready")
        if after is None or (before is not None and (before.status, before.reason) == (after.status, after.reason)):
            return
        if after.status == "True":
            await self.controller.writer.event(body, "Normal", "Published", after.message)
        else:
            await self.controller.writer.event(body, "Warning", after.reason, after.message)

    async def _finalize(self, key: str, body: dict[str, Any], path: str) -> None:
        meta = body["metadata"]
        if FINALIZER not in (meta.get("finalizers") or []):
            return
        try:
            ns: NameService | None = NameService.model_validate(body)
        except ValidationError:
            ns = None
        previous = self._previous(path)
        published = bool(previous and previous.records)
        message = "records left in place (deletionPolicy Orphan)"
        if ns is not None and ns.spec.deletion_policy == "Delete":
            reason, message = await self._remove(ns)
            if reason:
                if reason in UNREACHABLE_SETUP and not published:
                    message = f"nothing was published; {message}"
                else:
                    log.info("NameService %s: deletion waits: %s", key, message)
                    if previous is not None:
                        pending = previous.model_copy(update={"pending": [f"delete {ns.spec.fqdn}: {message}"]})
                        await self._write(path, "NameService", meta["name"], meta["namespace"], pending.wire())
                    self._retry(f"ns/{key}", cap=30.0)
                    return
        await self._set_finalizer(key, path, meta, False)
        self.loop.succeeded(f"ns/{key}")
        with contextlib.suppress(ApiError):
            await self.controller.writer.event(body, "Normal", "Deleted", message)

    async def _remove(self, ns: NameService) -> tuple[str, str]:
        """Delete what `ns` owns: ("", message) when done, (reason, message) when not possible now."""
        pname = ns.spec.provider_ref.name
        body = self.providers.get(pname)
        if body is None:
            return "ProviderNotFound", f"DNSProvider {pname!r} not found: records cannot be removed"
        try:
            dp = DNSProvider.model_validate(body)
            client = await self.client(pname, dp)
        except ValidationError as err:
            return "ProviderInvalid", "; ".join(validation_messages(err))
        except SetupError as err:
            return err.reason, err.message
        try:
            async with client.lock:
                result = await delete_nameservice(ns, client.provider, self.hub_id)
        except ProviderError as err:
            return err.reason, err.message
        if result.failed:
            return "PreconditionFailed", "; ".join(c.message for c in result.failed)
        if result.applied:
            return "", f"records of {ns.spec.fqdn} removed from zone {dp.spec.zone}"
        return "", f"nothing owned at {ns.spec.fqdn} in zone {dp.spec.zone}"

    # ---- DNSProvider reconcile ----

    async def reconcile_provider(self, name: str) -> None:
        body = self.providers.get(name)
        if body is None:
            return
        path = DNSP_PATH.format(name=name)
        self.status.observe(path, body)
        raw_prev = self.status.known(path) or {}
        try:
            previous = DNSProviderStatus.model_validate(raw_prev) if raw_prev else DNSProviderStatus()
        except ValidationError:
            previous = DNSProviderStatus()
        gen = int(body["metadata"].get("generation", 0)) or None
        serial = previous.zone_serial
        retry = False
        try:
            dp = DNSProvider.model_validate(body)
            client = await self.client(name, dp)
            async with client.lock:
                snap = await client.provider.list_records()
            serial = snap.serial
            ready = Condition(type="Ready", status="True", reason="ZoneServed",
                              message=f"zone {dp.spec.zone} listed (serial {serial})", observed_generation=gen)
        except ValidationError as err:
            ready = Condition(type="Ready", status="False", reason="InvalidSpec",
                              message="; ".join(validation_messages(err)), observed_generation=gen)
        except SetupError as err:
            retry = err.transient
            ready = Condition(type="Ready", status="Unknown" if err.transient else "False", reason=err.reason,
                              message=err.message, observed_generation=gen)
        except ProviderError as err:
            retry = err.reason == "ProviderUnreachable"
            ready = Condition(type="Ready", status="Unknown" if retry else "False", reason=err.reason,
                              message=err.message, observed_generation=gen)
        now = now_rfc3339()
        conditions = merge_conditions(previous.conditions, [ready], now)
        status = DNSProviderStatus(conditions=conditions, zone_serial=serial, ready=ready.status,
                                   last_check_time=previous.last_check_time)
        if status.conditions != previous.conditions:
            status.last_check_time = now  # not on every check: that would be a hub write each time
        if await self._write(path, "DNSProvider", name, None, status.wire()):
            before = _cond(previous.conditions, "Ready")
            if before is None or (before.status, before.reason) != (ready.status, ready.reason):
                await self.controller.writer.event(
                    body, "Normal" if ready.status == "True" else "Warning",
                    "ZoneServed" if ready.status == "True" else ready.reason, ready.message)
        if retry or ready.status != "True":
            self._retry(f"dnsp/{name}", cap=120.0)
        else:
            self.loop.succeeded(f"dnsp/{name}")

    # ---- hub writes ----

    async def _write(self, path: str, kind: str, name: str, namespace: str | None, status: dict[str, Any]) -> bool:
        """Apply `status` unless it is the newest status known for `path`; True when written."""
        return await self.status.write(path, kind, name, namespace, status) is not None


# ---- the feature module interface (federation/operator.py FEATURES) ----


def feature_of(controller: Controller) -> DNSFeature | None:
    """The DNS feature installed on `controller` (None when it is not), e.g. for ACME DNS-01."""
    return controller.feature(DNSFeature)


def _feature(holder: dict[str, Any]) -> DNSFeature | None:
    controller = holder.get("controller")
    return controller.feature(DNSFeature) if controller is not None else None


def register(registry: kopf.OperatorRegistry, holder: dict[str, Any]) -> None:
    @kopf.on.event("meshfed.io", "v1alpha1", "nameservices", registry=registry)
    async def nameservice_event(event: kopf.RawEvent, **_: Any) -> None:
        feature = _feature(holder)
        if feature is not None:
            feature.on_nameservice(event.get("type") or "ADDED", dict(event["object"]))

    @kopf.on.event("meshfed.io", "v1alpha1", "dnsproviders", registry=registry)
    async def dnsprovider_event(event: kopf.RawEvent, **_: Any) -> None:
        feature = _feature(holder)
        if feature is not None:
            feature.on_provider(event.get("type") or "ADDED", dict(event["object"]))

    @kopf.on.event("meshfed.io", "v1alpha1", "accesspoints", registry=registry)
    async def dns_accesspoint_event(event: kopf.RawEvent, **_: Any) -> None:
        feature = _feature(holder)
        if feature is not None:
            feature.on_accesspoint(event.get("type") or "ADDED", dict(event["object"]))


async def install(controller: Controller) -> None:
    feature = controller.install(DNSFeature(controller))
    controller.enqueuers["NameService"] = lambda ns, name: feature.enqueue(f"ns/{ns}/{name}")
    controller.status_contributors.append(feature.contribute)
    controller.status_listeners.append(feature.listen)
    controller.shard_listeners.append(feature.shards_changed)
    await feature.start()
    # Stopped with the controller (Controller.stop cancels its tasks).
    controller._tasks.extend(feature._tasks)
