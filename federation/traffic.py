"""Controller wiring of issue 3: placement checks, overrides, locality traffic policy, cross-cluster
reachability, visibility, and PlacementPolicy status.

Owns, as controller hooks (federation/controller.py extension points):
  * a Validator: `spec.traffic` (accesspoint.traffic.validate_policy over the regions and zones the
    placement selects), `spec.overrides` (unknown clusters), `spec.traffic.visibility`, and a placement that
    selects no cluster because of its selector/regions/zones. Any error blocks the reconcile
    (Accepted=False naming the field): nothing already applied on members changes;
  * a ContextProvider: the gateway VIP of every placed cluster (its LoadBalancer Service status, read
    from the member caches) -> per-zone locality fragments (compile_zones: a region in several zones
    gets per-zone weights, so istiod's rounding keeps the promised split) applied to the
    template's DestinationRules, exportTo on VirtualServices/DestinationRules/ServiceEntries
    (apply_visibility), and per cluster the cross-cluster ServiceEntry + DestinationRule pointing at
    the other clusters' gateways (accesspoint.crossref). A VIP change re-renders because the member
    watch enqueues the owning AccessPoint;
  * a StatusContributor: TrafficPolicyValid / TrafficPolicyRisky (and OverridesApplied when the
    AccessPoint has overrides), transition times kept from the previous status so an unchanged world
    writes nothing;
  * PlacementPolicy status (decision, summary, Placed condition), recomputed when a policy or a member
    changes and written through the controller's HubWriter only when it changed.

The render context is built from the AccessPoint's current spec, so a traffic change (a Drain) reaches
every placed cluster in one change, also clusters a staged rollout still holds on an older template
revision: moving traffic away from a region is not something to release wave by wave.

Pure decisions stay in accesspoint/ and placement/; this module only gathers facts and wires them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
from pydantic import ValidationError

from accesspoint.crossref import (
    CrossPort,
    CrossrefError,
    CrossrefMemo,
    GatewayEndpoint,
    cross_cluster_objects,
    federated_host,
)
from accesspoint.meta import Condition, set_condition
from accesspoint.models import AccessPoint, AccessPointStatus
from accesspoint.overrides import overrides_condition, validate_overrides
from accesspoint.ownership import Owner
from accesspoint.render import RenderContext
from accesspoint.traffic import (
    RegionWeight,
    TrafficMemo,
    TrafficPolicy,
    Zones,
    apply_traffic,
    compile_zones,
    placed_zones,
    traffic_conditions,
    validate_policy,
)
from accesspoint.visibility import VisibilityMemo, apply_visibility, export_to, validate_visibility
from federation import shards
from federation.controller import Controller, _vip
from federation.kube import ApiError
from federation.members import Member
from placement.models import (
    ClusterFacts,
    PlacementDecision,
    PlacementPolicy,
    PlacementPolicyStatus,
    PlacementSpec,
)
from placement.select import decision_condition, select, summarize

log = logging.getLogger("meshfed.traffic")

PP_PATH = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/placementpolicies/{name}"
# A placement that selects nothing only because of these (hub-side) criteria is a spec mistake:
# applying it would remove the AccessPoint everywhere, so it is rejected instead.
_SPEC_MISMATCH = frozenset({"SelectorMismatch", "WrongRegion", "WrongZone", "NotNamed", "Excluded"})
_PORT_NAME = re.compile(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$")
_SWEEP_SECONDS = 10.0


# ---- pure helpers -----------------------------------------------------------------------------


def placement_problems(spec: PlacementSpec, decision: PlacementDecision, facts: Sequence[ClusterFacts],
                       where: str) -> list[str]:
    """Errors for a placement whose own criteria match no registered member cluster."""
    if not facts or decision.selected:
        return []
    codes = Counter(d.code or "Rejected" for d in decision.rejected)
    if not codes or not set(codes) <= _SPEC_MISMATCH or set(codes) == {"Excluded"}:
        return []  # e.g. clusters not ready or tainted: reported by Placed, not a spec error
    breakdown = ", ".join(f"{n} {code}" for code, n in sorted(codes.items()))
    if spec.cluster_selector is not None and not any(spec.cluster_selector.matches(f.selector_labels) for f in facts):
        return [f"{where}.clusterSelector: matches no member cluster ({len(facts)} registered: {breakdown}); "
                "nothing already applied is changed"]
    return [f"{where}: selects no member cluster ({breakdown}); nothing already applied is changed"]


def zero_weights(traffic: TrafficPolicy) -> list[str]:
    """Every explicit weight 0, wherever it is: Istio accepts 1..100 only, and the compiler drops a
    remote whose region keeps 100% local instead of saying so."""
    loc = traffic.locality
    if loc is None:
        return []
    lists: list[tuple[str, Sequence[RegionWeight]]] = []
    if loc.weighted is not None:
        lists.append(("spec.traffic.locality.weighted.remotes", loc.weighted.remotes))
        lists += [(f"spec.traffic.locality.weighted.byRegion[{i}].remotes", r.remotes)
                  for i, r in enumerate(loc.weighted.by_region)]
    if loc.drain is not None:
        lists.append(("spec.traffic.locality.drain.to", loc.drain.to))
    return [f"{where}[{i}].weight: weight 0 is not allowed (1..100); omit region {r.region} from the list "
            "to send it nothing" for where, weights in lists for i, r in enumerate(weights) if r.weight == 0]


def _protocol(name: str, number: int) -> str:
    lowered = name.lower()
    if lowered.startswith("https") or lowered.startswith("tls") or number == 443:
        return "TLS"
    if lowered.startswith("http2") or lowered.startswith("grpc"):
        return "HTTP2"
    if lowered.startswith("http"):
        return "HTTP"
    return "TCP"


def gateway_ports(ap: AccessPoint) -> list[CrossPort]:
    """The ports of the AccessPoint's LoadBalancer Service(s): what a remote gateway VIP serves."""
    out: dict[int, CrossPort] = {}
    names: set[str] = set()
    for obj in ap.spec.template:
        if obj.kind != "Service" or obj.spec.get("type") != "LoadBalancer":
            continue
        for port in obj.spec.get("ports") or []:
            number = port.get("port")
            if not isinstance(number, int) or not 1 <= number <= 65535 or number in out:
                continue
            name = str(port.get("name") or "")
            if not _PORT_NAME.match(name) or len(name) > 62 or name in names:
                name = f"port-{number}"
            names.add(name)
            out[number] = CrossPort(name=name, number=number, protocol=_protocol(name, number))
    return [out[n] for n in sorted(out)]


def decision_zones(decision: PlacementDecision) -> Zones:
    """region -> zone -> placed clusters, from the placement decision."""
    return placed_zones((d.region or "", d.zone) for d in decision.selected)


def fragment_for(fragments: Mapping[tuple[str, str], dict[str, Any] | None],
                 cluster: ClusterFacts) -> dict[str, Any] | None:
    """The compiled fragment for `cluster`: its zone's, or (zone not in the decision) its region's first."""
    hit = fragments.get((cluster.region, cluster.zone))
    if hit is None:
        hit = next((f for (r, _), f in sorted(fragments.items(), key=lambda kv: kv[0]) if r == cluster.region), None)
    return hit


def merge_previous(status: AccessPointStatus, previous: AccessPointStatus | None,
                   fresh: Sequence[Condition], now: str) -> AccessPointStatus:
    """`status` with `fresh` conditions upserted; transition times taken from `previous`."""
    before = previous.conditions if previous else []
    conditions = list(status.conditions)
    for cond in fresh:
        merged = set_condition([c for c in before if c.type == cond.type], cond, now)[0]
        conditions = [c for c in conditions if c.type != cond.type] + [merged]
    return status.model_copy(update={"conditions": conditions})


# ---- the feature ------------------------------------------------------------------------------


class TrafficFeature:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.policies: dict[str, dict[str, Any]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- helpers --

    def _facts(self) -> list[ClusterFacts]:
        return [m.facts for m in self.controller.registry.members.values()]

    def _where(self, ap: AccessPoint) -> str:
        if ap.spec.placement_ref is not None:
            return f"PlacementPolicy {ap.spec.placement_ref.name} (spec.placementRef) spec"
        return "spec.placement"

    # -- Validator --

    def validate(self, ap: AccessPoint, facts: Sequence[ClusterFacts], spec: PlacementSpec | None,
                 decision: PlacementDecision) -> list[str]:
        problems: list[str] = []
        if spec is not None:
            problems += placement_problems(spec, decision, facts, self._where(ap))
        problems += validate_overrides(ap.spec.overrides, facts).errors
        traffic = ap.spec.traffic
        if traffic is not None:
            problems += validate_visibility(traffic.visibility)
            zero = zero_weights(traffic)
            errors = validate_policy(traffic, decision_zones(decision)).errors
            problems += zero + [e for e in errors if not (zero and "weight 0 is not allowed" in e)]
        return problems

    # -- ContextProvider --

    def gateways(self, ap: AccessPoint, decision: PlacementDecision,
                 members: Mapping[str, Member]) -> list[GatewayEndpoint]:
        owner = Owner(self.controller.hub_id, ap.namespace, ap.name)
        out = []
        for d in decision.selected:
            member = members.get(d.cluster)
            if member is None:
                continue
            vip = _vip(member.cache.owned(owner).values())
            if vip:
                facts = member.facts
                out.append(GatewayEndpoint(cluster=d.cluster, region=facts.region, zone=facts.zone, address=vip))
        return out

    async def context(self, ap: AccessPoint, decision: PlacementDecision,
                      members: Mapping[str, Member]) -> RenderContext:
        traffic = ap.spec.traffic
        visibility = traffic.visibility if traffic is not None else None
        locality = traffic.locality if traffic is not None else None
        # Validated by the Validator over the same decision; a TrafficPolicyError here is a bug and
        # fails the reconcile (nothing written) rather than applying half a policy.
        fragments = compile_zones(traffic, decision_zones(decision)) if locality is not None else {}
        # The placed clusters mostly get the same objects (per region): transformed once per reconcile.
        traffic_memo: TrafficMemo = {}
        visibility_memo: VisibilityMemo = {}

        def transform(objects: list[dict[str, Any]], cluster: ClusterFacts) -> list[dict[str, Any]]:
            fragment = fragment_for(fragments, cluster)
            if fragment is not None:
                objects = apply_traffic(objects, fragment, memo=traffic_memo)
            return apply_visibility(objects, visibility, self.controller.gateway_namespace,
                                    default_namespace=ap.namespace, memo=visibility_memo)

        generated: dict[str, tuple[dict[str, Any], ...]] = {}
        ports = gateway_ports(ap)
        if locality is not None and ports:
            gateways = self.gateways(ap, decision, members)
            exports = export_to(visibility, ap.namespace, self.controller.gateway_namespace)
            host = federated_host(ap.name, ap.namespace)
            # With the local gateway included, a cluster's objects depend only on its region and its
            # fragment, unless every gateway is its own (then there are none): built once per key
            # and shared (read-only) instead of once per cluster, which is O(clusters^2) per AccessPoint.
            built: dict[tuple[str, int, str | None], tuple[dict[str, Any], ...] | CrossrefError] = {}
            crossref_memo: CrossrefMemo = {}  # the ServiceEntry once for all regions
            for d in decision.selected:
                member = members.get(d.cluster)
                if member is None:
                    continue
                facts = member.facts
                alone = facts.name if all(g.cluster == facts.name for g in gateways) else None
                fragment = fragment_for(fragments, facts)
                key = (facts.region, id(fragment), alone)
                if key not in built:
                    try:
                        built[key] = tuple(cross_cluster_objects(
                            ap.name, ap.namespace, facts, gateways, ports, [host],
                            export_to=exports, traffic=fragment, memo=crossref_memo))
                    except CrossrefError as err:
                        built[key] = err
                objs = built[key]
                if isinstance(objs, CrossrefError):
                    log.warning("AccessPoint %s/%s: no cross-cluster objects for %s: %s",
                                ap.namespace, ap.name, d.cluster, objs)
                    continue
                if objs:
                    generated[d.cluster] = objs
        return RenderContext(transforms=(transform,), generated=generated)

    # -- StatusContributor --

    def contribute(self, ap: AccessPoint, status: AccessPointStatus, previous: AccessPointStatus | None,
                   now: str) -> AccessPointStatus:
        fresh: list[Condition] = []
        if ap.spec.traffic is not None:
            zones = decision_zones(status.placement or PlacementDecision())
            fresh += traffic_conditions(validate_policy(ap.spec.traffic, zones), ap.generation)
        if ap.spec.overrides:
            failed = [f"{c.name}: {c.last_error}" for c in status.clusters
                      if c.last_error and "spec.overrides[" in c.last_error]
            cond = overrides_condition(failed, ap.generation)
            warnings = validate_overrides(ap.spec.overrides, self._facts()).warnings
            if not failed and warnings:
                cond = cond.model_copy(update={"message": "; ".join(warnings)})
            fresh.append(cond)
        return merge_previous(status, previous, fresh, now) if fresh else status

    # -- PlacementPolicy status --

    def on_policy_event(self, event_type: str, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        if event_type == "DELETED":
            self.policies.pop(key, None)
            self.controller.writer.status.forget(PP_PATH.format(ns=meta["namespace"], name=meta["name"]))
            return
        self.policies[key] = body
        self.poke()

    def poke(self, *_: Any) -> None:
        self._wake.set()

    def policy_status(self, body: dict[str, Any], facts: Sequence[ClusterFacts], now: str) -> dict[str, Any] | None:
        try:
            policy = PlacementPolicy.model_validate(body)
        except ValidationError as err:
            log.warning("PlacementPolicy %s/%s is invalid: %s", body["metadata"].get("namespace"),
                        body["metadata"].get("name"), err)
            return None
        previous = policy.status or PlacementPolicyStatus()
        decision = select(policy.spec, facts, previous.decision)
        cond = decision_condition(decision, policy.generation)
        problems = placement_problems(policy.spec, decision, facts, "spec")
        if problems:
            cond = cond.model_copy(update={"reason": "SelectorMatchesNothing", "message": "; ".join(problems)})
        merged = set_condition([c for c in previous.conditions if c.type == cond.type], cond, now)
        status = PlacementPolicyStatus(observed_generation=policy.generation, conditions=merged,
                                       decision=decision.shortened(), summary=summarize(decision))
        return status.wire()

    async def sweep(self) -> None:
        from federation.hubwriter import now_rfc3339

        facts = self._facts()
        now = now_rfc3339()
        for key, body in list(self.policies.items()):
            wire = self.policy_status(body, facts, now)
            if wire is None:
                continue
            ns, name = key.split("/", 1)
            path = PP_PATH.format(ns=ns, name=name)
            sh = self.controller.shards
            lease = sh.shard_key(ns, name) if sh is not None else None
            if not self.controller.holds(lease):
                continue  # the holder of its shard writes it
            try:
                with shards.working_on(sh, lease):
                    await self.controller.writer.write_status(path, "PlacementPolicy", name, ns, wire, body)
            except shards.Fenced:
                continue
            except ApiError as err:
                log.warning("PlacementPolicy %s: status not written: %s", key, err)
                self.poke()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _SWEEP_SECONDS)
            await asyncio.sleep(0.05)  # coalesce bursts (a member change comes with many events)
            self._wake.clear()
            if not self.controller.registry.warm():
                await asyncio.sleep(0.2)
                self.poke()
                continue
            try:
                await self.sweep()
            except Exception:
                log.exception("PlacementPolicy status sweep failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="placementpolicy-status")
            self.controller._tasks.append(self._task)  # cancelled by Controller.stop()


def register(registry: kopf.OperatorRegistry, holder: dict[str, Any]) -> None:
    @kopf.on.event("meshfed.io", "v1alpha1", "placementpolicies", registry=registry)
    async def placementpolicy_status_event(event: kopf.RawEvent, **_: Any) -> None:
        controller = holder.get("controller")
        feature = controller.feature(TrafficFeature) if controller is not None else None
        if feature is not None:
            feature.on_policy_event(event.get("type") or "ADDED", dict(event["object"]))


async def install(controller: Controller) -> None:
    feature = controller.install(TrafficFeature(controller))
    controller.validators.append(feature.validate)
    controller.context_providers.append(feature.context)
    controller.status_contributors.append(feature.contribute)
    # Member changes (labels, readiness, new members) change PlacementPolicy decisions.
    notify = controller.registry.on_member_change

    def member_changed(name: str, why: str) -> None:
        notify(name, why)
        feature.poke()

    controller.registry.on_member_change = member_changed
    controller.shard_listeners.append(lambda acquired, _lost: feature.poke() if acquired else None)
    feature.start()
