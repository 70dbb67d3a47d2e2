"""Tenancy on the hub: TenancyPolicies, the host-ownership index and the checks that use them.

Owns the hub wiring of accesspoint.tenancy (the pure rules): its own kopf `on.event` handlers for
TenancyPolicies, AccessPoints, NameServices and Certificates (every replica sees every hub object,
whatever the work sharding: ownership is derived from the full hub view), an OwnershipIndex updated
incrementally from those events (and listed once at start, so ownership survives a restart), and
the checks:

- a Validator (namespace confinement of the template, host claims) and a RenderedValidator (every
  rendered per-cluster object: namespaces after variables/overrides/generated objects, hosts within
  the AccessPoint's claims) on the Controller: a refusal is `Accepted=False` naming the field, with
  reason `NamespaceNotAllowed` or `HostConflict`, an Event, and no member write;
- `nameservice_refusals` / `certificate_refusals`, called by federation/dns.py and
  federation/certificates.py before any DNS UPDATE or issuance.

When the claims of an object change (created, hosts edited, deletion started, deleted) the objects
whose claims collide with the old or new hosts are re-reconciled, so a claimant waiting for a host
proceeds once its owner is deleted. A TenancyPolicy change re-reconciles every claimant. The claims
of an object being deleted are released when its deletion starts (its member objects are being
removed). A Certificate claims its hosts only while an AccessPoint of its name exists (one made by hand
without it is never issued: AccessPointMissing, federation/certificates.py). Imports accesspoint.*,
federation.controller and the DNS/certificate features (lazily).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
from pydantic import ValidationError

from accesspoint.models import AccessPoint
from accesspoint.tenancy import (
    OwnershipIndex,
    Policies,
    Problem,
    TenancyPolicy,
    accesspoint_hosts,
    claims_of,
    refusal_problems,
    rendered_problems,
    source_of,
    template_problems,
)
from federation.controller import Controller
from placement.models import ClusterFacts, PlacementDecision, PlacementSpec

log = logging.getLogger("meshfed.tenancy")

POLICIES = "/apis/meshfed.io/v1alpha1/tenancypolicies"
LISTS = {
    "AccessPoint": "/apis/meshfed.io/v1alpha1/accesspoints",
    "NameService": "/apis/meshfed.io/v1alpha1/nameservices",
    "Certificate": "/apis/meshfed.io/v1alpha1/certificates",
}



def _hosts(kind: str, body: Mapping[str, Any]) -> list[tuple[str, str]]:
    spec = body.get("spec") or {}
    if kind == "NameService":
        fqdn = str(spec.get("fqdn") or "")
        return [("spec.fqdn", fqdn)] if fqdn else []
    if kind == "Certificate":
        return [(f"spec.hosts[{i}]", str(h)) for i, h in enumerate(spec.get("hosts") or [])]
    try:
        return accesspoint_hosts(AccessPoint.model_validate(body))
    except ValidationError:
        return []  # the controller reports the invalid spec; nothing of it is written


class Tenancy:
    """The tenancy part of the hub controller (one per Controller)."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.policy_bodies: dict[str, dict[str, Any]] = {}
        self.index = OwnershipIndex()
        self._seen: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        self._globs: dict[int, tuple[Any, list[str]]] = {}  # id(AccessPoint spec) -> (it, its claim globs)
        self._accesspoints: set[tuple[str, str]] = set()  # (namespace, name) of live AccessPoints
        self._certificates: dict[tuple[str, str], Mapping[str, Any]] = {}  # the Certificates seen, by key

    # ---- intake ----

    def on_policy(self, event_type: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if event_type == "DELETED":
            self.policy_bodies.pop(name, None)
        else:
            self.policy_bodies[name] = body
        self._rebuild_policies()
        for kind, ns, obj in self.index.sources():
            self._enqueue(kind, ns, obj)
        for key in list(self.controller.accesspoints):  # also those with no host (namespaces)
            self.controller.enqueue(f"ap/{key}", cause="tenancy")

    def _rebuild_policies(self) -> None:
        parsed = []
        for name, body in sorted(self.policy_bodies.items()):
            try:
                parsed.append(TenancyPolicy.model_validate(body))
            except ValidationError as err:
                log.warning("TenancyPolicy %s is invalid (ignored): %s", name, err.errors()[0]["msg"])
        self.index.set_policies(Policies.build(parsed))

    def on_object(self, kind: str, event_type: str, body: Mapping[str, Any],
                  hosts: list[tuple[str, str]] | None = None) -> None:
        """A claimant changed: update its claims; re-reconcile those whose claims collide."""
        meta = body.get("metadata") or {}
        key = (kind, str(meta.get("namespace", "")), str(meta.get("name", "")))
        gone = event_type == "DELETED" or bool(meta.get("deletionTimestamp"))
        usable = True
        if kind == "AccessPoint":
            self._accesspoint_changed(key[1], key[2], present=not gone)
        elif kind == "Certificate":
            # A Certificate without an AccessPoint of its name is never issued (AccessPointMissing,
            # federation/certificates.py): it claims no host until that AccessPoint exists.
            usable = (key[1], key[2]) in self._accesspoints
            if gone:
                self._certificates.pop((key[1], key[2]), None)
            else:
                self._certificates[(key[1], key[2])] = body
            if not usable:
                hosts = []
        if event_type == "DELETED":
            self._seen.pop(key, None)
        else:
            signature = (meta.get("uid"), meta.get("generation"), gone, usable)
            if self._seen.get(key) == signature:
                return  # e.g. a status update: the claims did not change
            self._seen[key] = signature
        before = {c.glob for c in self.index.claims(*key)}
        if gone:
            changed = self.index.remove(*key)
        else:
            changed = self.index.put(source_of(body, kind), hosts if hosts is not None else _hosts(kind, body))
        if not changed:
            return
        after = {c.glob for c in self.index.claims(*key)}
        for other in self.index.colliding(before | after):
            if other != key:
                self._enqueue(*other)

    def _accesspoint_changed(self, ns: str, name: str, *, present: bool) -> None:
        """An AccessPoint appeared or went: the Certificate of its name starts or stops claiming hosts."""
        if ((ns, name) in self._accesspoints) == present:
            return
        if present:
            self._accesspoints.add((ns, name))
        else:
            self._accesspoints.discard((ns, name))
        cert = self._certificates.get((ns, name))
        if cert is not None:
            self.on_object("Certificate", "MODIFIED", cert)

    def _enqueue(self, kind: str, ns: str, name: str) -> None:
        self.controller.enqueue_object(kind, ns, name)

    # ---- checks ----

    def validate(self, ap: AccessPoint, _facts: Sequence[ClusterFacts], _spec: PlacementSpec | None,
                 _decision: PlacementDecision) -> list[str]:
        """Validator: the template's namespaces, then the AccessPoint's host claims (brought up to
        date from the very body being reconciled; a no-op when its generation was seen)."""
        meta = ap.metadata
        key = ("AccessPoint", ap.namespace, ap.name)
        if self._seen.get(key) != (meta.get("uid"), meta.get("generation"), bool(meta.get("deletionTimestamp"))):
            self.on_object("AccessPoint", "MODIFIED", {"metadata": meta}, accesspoint_hosts(ap))
        problems: list[str] = list(template_problems(ap, self.index.policies))
        problems += refusal_problems(self.index.refusals("AccessPoint", ap.namespace, ap.name))
        return problems

    def validate_rendered(self, ap: AccessPoint, cluster: str, objects: Sequence[dict[str, Any]]) -> list[str]:
        """RenderedValidator: one cluster's rendered objects (of the revision that cluster carries;
        its hosts must be among that revision's own hosts; the current revision's hosts are the
        ones the ownership index holds and the Validator checked)."""
        hit = self._globs.get(id(ap.spec))
        if hit is None or hit[0] is not ap.spec:
            if len(self._globs) > 4096:
                self._globs.clear()
            hit = self._globs[id(ap.spec)] = (ap.spec, [c.glob for c in claims_of(source_of(
                {"metadata": ap.metadata}, "AccessPoint"), accesspoint_hosts(ap))])
        return list(rendered_problems(ap, cluster, objects, self.index.policies, hit[1]))

    def refusals(self, kind: str, body: Mapping[str, Any]) -> list[Problem]:
        """HostConflict problems of a NameService or Certificate (its claims brought up to date)."""
        self.on_object(kind, "MODIFIED", body)
        meta = body.get("metadata") or {}
        return refusal_problems(self.index.refusals(kind, str(meta.get("namespace", "")), str(meta.get("name", ""))))

    # ---- lifecycle ----

    async def start(self) -> None:
        """Every claim the hub holds, before the first reconcile (ownership survives restarts)."""
        items, _ = await self.controller.hub.list(POLICIES)
        for body in items:
            self.policy_bodies[body["metadata"]["name"]] = body
        self._rebuild_policies()
        for kind, path in LISTS.items():
            items, _ = await self.controller.hub.list(path)
            for body in items:
                self.on_object(kind, "ADDED", body)
        log.info("tenancy: %d TenancyPolicies, %d claimants", len(self.policy_bodies), len(self.index.sources()))


def feature_of(controller: Controller) -> Tenancy | None:
    return controller.feature(Tenancy)


def nameservice_refusals(controller: Controller, body: Mapping[str, Any]) -> list[Problem]:
    feature = feature_of(controller)
    return feature.refusals("NameService", body) if feature is not None else []


def certificate_refusals(controller: Controller, body: Mapping[str, Any]) -> list[Problem]:
    feature = feature_of(controller)
    return feature.refusals("Certificate", body) if feature is not None else []


# ---- the feature module interface (federation/operator.py FEATURES) ----


def register(registry: kopf.OperatorRegistry, holder: dict[str, Any]) -> None:
    def feature() -> Tenancy | None:
        controller = holder.get("controller")
        return controller.feature(Tenancy) if controller is not None else None

    @kopf.on.event("meshfed.io", "v1alpha1", "tenancypolicies", registry=registry)
    async def tenancypolicy_event(event: kopf.RawEvent, **_: Any) -> None:
        f = feature()
        if f is not None:
            f.on_policy(event.get("type") or "ADDED", dict(event["object"]))

    for kind, plural in (("AccessPoint", "accesspoints"), ("NameService", "nameservices"),
                         ("Certificate", "certificates")):
        def make(kind: str) -> Any:
            async def claimant_event(event: kopf.RawEvent, **_: Any) -> None:
                f = feature()
                if f is not None:
                    f.on_object(kind, event.get("type") or "ADDED", dict(event["object"]))
            claimant_event.__name__ = f"tenancy_{kind.lower()}_event"
            return claimant_event

        kopf.on.event("meshfed.io", "v1alpha1", plural, registry=registry, id=f"tenancy-{plural}")(make(kind))


async def install(controller: Controller) -> None:
    feature = controller.install(Tenancy(controller))
    controller.validators.append(feature.validate)
    controller.rendered_validators.append(feature.validate_rendered)
    await feature.start()
