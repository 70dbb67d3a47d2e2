"""Staged rollouts wired into the hub controller (the feature module for issue 4).

Owns: the per-AccessPoint rollout runtime — the revision history on the hub (apps/v1
ControllerRevision objects, one per kept revision, labelled with the AccessPoint's uid and owned by
it through ownerReferences, bounded by `meshfed.io/revision-history-limit`, default 10), the rollout
state (persisted in `status.rollout` through the controller's one status write), the
RolloutApproval objects (created by the controller, verdicts written to their status), the Events
of every transition, and the SpecSelector that tells the controller which revision each placed
cluster carries. The decisions themselves are `accesspoint.rollout.step` (pure).

Driving rule (so that an unchanged world costs no write): one `step` per reconcile, with the
cluster observations of the previous reconcile; when a reconcile changes what clusters report,
the AccessPoint is enqueued again. `lastStepAt` is never persisted and `progressSeconds` is written
only together with another change, so a no-op reconcile or a controller restart writes nothing.

Several replicas: the rollout runs in its AccessPoint's reconcile, so only the holder of its shard
steps it; every hub write here (ControllerRevisions, RolloutApprovals and their verdicts) is fenced
(federation.shards.check). State is forgotten when the shard is lost, and a takeover seeds it from
`status.rollout` and the hub's objects, exactly as a restart does: the same wave, the same gates.

Measured health (HTTP probes of the clusters waiting on health, the Analysis gate's gateway figures,
the route stat prefix) is `federation.rollout_health`, driven from here: figures go into the step's
inputs, the step's `probes` and `analysis` requests go back to it, and probe records are folded into
the observations and shown in the status entries.

Also the client side used by the kubectl plugin: reading the history back, approvals of an
AccessPoint, and who the current user is (SelfSubjectReview).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from accesspoint.meta import Condition, set_condition
from accesspoint.models import AccessPoint, AccessPointStatus, ClusterStatus
from accesspoint.revisions import (
    DEFAULT_HISTORY_LIMIT,
    RevisionHistory,
    RevisionRecord,
    record,
    spec_of,
)
from accesspoint.rollout import (
    ABORT_ANNOTATION,
    PROMOTE_ANNOTATION,
    ApprovalRequest,
    ApprovalSeen,
    ClusterObservation,
    RolloutActions,
    RolloutInputs,
    RolloutState,
    bookkeeping_step,
    step,
)
from federation import shards, telemetry
from federation.controller import Controller
from federation.hubwriter import resource_version
from federation.kube import ApiError, KubeClient
from federation.members import Member
from federation.rollout_health import RolloutHealth
from federation.shards import shard_of
from placement.models import PlacementDecision

log = logging.getLogger("meshfed.rollouts")

GROUP_PATH = "/apis/meshfed.io/v1alpha1"
APPROVALS = GROUP_PATH + "/namespaces/{ns}/rolloutapprovals"
REVISIONS = "/apis/apps/v1/namespaces/{ns}/controllerrevisions"
HISTORY_LIMIT_ANNOTATION = "meshfed.io/revision-history-limit"
AP_LABEL = "meshfed.io/accesspoint"
AP_UID_LABEL = "meshfed.io/accesspoint-uid"
MANAGER = "meshfed-rollout"
# Fields of RolloutState that change on every step without meaning anything changed.
VOLATILE = ("lastStepAt", "progressSeconds")
ROLLOUT_CONDITION = "RolledOut"


# ---------------------------------------------------------------------------------------------
# Pure helpers (also used by the kubectl plugin)


def history_limit(ap: AccessPoint) -> int:
    raw = (ap.metadata.get("annotations") or {}).get(HISTORY_LIMIT_ANNOTATION)
    try:
        return max(1, int(raw)) if raw else DEFAULT_HISTORY_LIMIT
    except ValueError:
        return DEFAULT_HISTORY_LIMIT


def revision_object_name(ap_name: str, hash_: str) -> str:
    return f"{ap_name}-{hash_}"


def history_from_items(items: list[dict[str, Any]], limit: int = DEFAULT_HISTORY_LIMIT) -> RevisionHistory:
    """RevisionHistory from ControllerRevision objects (newest last, by number)."""
    records = []
    for item in items:
        try:
            records.append(RevisionRecord.model_validate(item.get("data") or {}))
        except ValueError:
            log.warning("ControllerRevision %s: unreadable data", item["metadata"]["name"])
    records.sort(key=lambda r: r.number)
    return RevisionHistory(limit=limit, records=records)


def observation(entry: ClusterStatus, require_vip: bool = True) -> ClusterObservation:
    """A cluster's health for the rollout: Healthy when Applied with the revision (and the VIP,
    which `Applied` already implies when the bundle has a LoadBalancer Service)."""
    if entry.state == "Applied" and entry.revision:
        return ClusterObservation(revision=entry.revision, health="Healthy")
    if entry.state == "Progressing" and entry.revision:
        health = "Progressing" if require_vip else "Healthy"
        return ClusterObservation(revision=entry.revision, health=health, message="waiting for the gateway VIP")
    if entry.state in ("Failed", "Conflict"):
        return ClusterObservation(revision=entry.revision, health="Failed", message=entry.last_error or "")
    return ClusterObservation(revision=entry.revision, health="Unknown", message=entry.last_error or "")


def observations(ap: AccessPoint, clusters: list[ClusterStatus]) -> dict[str, ClusterObservation]:
    rollout = ap.spec.rollout
    require_vip = rollout.health_checks.require_vip if rollout and rollout.health_checks else True
    return {c.name: observation(c, require_vip) for c in clusters if c.state != "Removing"}


def persisted(state: RolloutState, previous: RolloutState | None) -> RolloutState:
    """What goes into status.rollout: never lastStepAt; progressSeconds only with another change."""
    out = state.model_copy(update={"last_step_at": None})
    if previous is not None:
        a = {k: v for k, v in out.wire().items() if k not in VOLATILE}
        b = {k: v for k, v in previous.wire().items() if k not in VOLATILE}
        if a == b:
            return previous.model_copy(update={"last_step_at": None})
    return out


def rollout_condition(state: RolloutState, generation: int) -> Condition:
    done = state.phase == "Succeeded"
    return Condition(type=ROLLOUT_CONDITION, status="True" if done else "False", reason=state.reason or state.phase,
                     message=state.message, observed_generation=generation)


# ---------------------------------------------------------------------------------------------
# The runtime


class Rollouts:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.hub: KubeClient = controller.hub
        self.states: dict[str, RolloutState] = {}          # by AccessPoint uid
        self.histories: dict[str, RevisionHistory] = {}    # by AccessPoint uid
        # ControllerRevisions listed once at start, by AccessPoint uid (None: not loaded, list per
        # AccessPoint on its first reconcile).
        self.preloaded: dict[str, list[dict[str, Any]]] | None = None
        self.used: dict[str, dict[str, ClusterObservation]] = {}
        self.seen: dict[str, dict[str, ClusterObservation]] = {}
        self.approvals: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) -> body
        self.created: set[tuple[str, str]] = set()
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        # Several replicas: when the preload's list started, and when each held shard was acquired.
        # An AccessPoint missing from the preload has no history only if the list ran after this
        # replica took its shard (before that, another replica may have recorded revisions).
        self.preload_at = 0.0
        self.acquired_at: dict[int, float] = {}
        self._reloads: set[asyncio.Task[None]] = set()
        self.health = RolloutHealth(controller)
        self.entries: dict[str, dict[str, ClusterStatus]] = {}  # by AccessPoint uid: last status entries
        # By AccessPoint uid, from its `select` to its `contribute` (the same reconcile): the step's
        # inputs and the revision it assigned to each cluster.
        self.stepped: dict[str, tuple[RolloutInputs, Mapping[str, str]]] = {}

    def observe(self, ap: AccessPoint, uid: str, clusters: list[ClusterStatus],
                state: RolloutState | None) -> dict[str, ClusterObservation]:
        """`observations`, with the HTTP probe folded in for the revision being rolled out."""
        base = observations(ap, clusters)
        rolling = state.revision if state is not None and state.revision != state.stable else None
        by_name = {c.name: c for c in clusters}
        return {name: self.health.observe(ap, uid, by_name[name], obs, rolling) for name, obs in base.items()}

    # -- intake -----------------------------------------------------------------------------
    async def load_approvals(self) -> None:
        items, _ = await self.hub.list(GROUP_PATH + "/rolloutapprovals")
        for body in items:
            self.on_approval("ADDED", body)

    async def load_histories(self) -> None:
        """Every AccessPoint's ControllerRevisions in one list at start, instead of one list per
        AccessPoint on its first reconcile (500 AccessPoints: 500 hub requests). Only this
        controller creates them, and `record` keeps `histories` current, so an AccessPoint with
        none in this list has no history."""
        started = time.monotonic()
        items, _ = await self.hub.list("/apis/apps/v1/controllerrevisions", label_selector=AP_UID_LABEL)
        self.preload_at = started
        preloaded: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            uid = ((item.get("metadata") or {}).get("labels") or {}).get(AP_UID_LABEL)
            if uid:
                preloaded.setdefault(uid, []).append(item)
        self.preloaded = preloaded

    def on_approval(self, event_type: str, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        if event_type == "DELETED":
            self.approvals.pop(key, None)
            self.created.discard(key)
            self.controller.writer.status.forget(f"{APPROVALS.format(ns=key[0])}/{key[1]}")
        else:
            old = self.approvals.get(key)
            if old is not None and resource_version(old) > resource_version(body):
                return
            self.approvals[key] = body
        ap_name = (body.get("spec") or {}).get("accessPoint")
        if ap_name and f"{key[0]}/{ap_name}" in self.controller.accesspoints:
            self.controller.enqueue(f"ap/{key[0]}/{ap_name}", cause="rollout")

    # -- history ----------------------------------------------------------------------------
    async def history(self, ap: AccessPoint) -> RevisionHistory:
        uid = str(ap.metadata.get("uid", ""))
        found = self.histories.get(uid)
        if found is None:
            cached = self.preloaded.pop(uid, None) if self.preloaded is not None else None
            if cached is not None and self._fresh(ap):
                items = cached
            elif self.preloaded is not None and self._fresh(ap):
                items = []
            else:
                items, _ = await self.hub.list(REVISIONS.format(ns=ap.namespace),
                                               label_selector=f"{AP_UID_LABEL}={uid}")
            found = history_from_items(items, history_limit(ap))
            self.histories[uid] = found
        return found.model_copy(update={"limit": history_limit(ap)})

    async def record(self, ap: AccessPoint, history: RevisionHistory, keep: list[str],
                     now: datetime, revision: str) -> RevisionHistory:
        uid = str(ap.metadata.get("uid", ""))
        new, _ = record(history, ap.spec, now, keep=keep, revision=revision)
        if new.records == history.records and new.limit == history.limit:
            return history
        old = {(r.hash, r.number) for r in history.records}
        fresh = {(r.hash, r.number) for r in new.records}
        path = REVISIONS.format(ns=ap.namespace)
        shards.check()
        for r in history.records:
            if (r.hash, r.number) not in fresh:
                try:
                    await self.hub.delete(f"{path}/{revision_object_name(ap.name, r.hash)}")
                    telemetry.count("hub_writes", kind="revision")
                except ApiError as err:
                    if err.status != 404:
                        raise
        for r in new.records:
            if (r.hash, r.number) in old:
                continue
            name = revision_object_name(ap.name, r.hash)
            body: dict[str, Any] = {
                "apiVersion": "apps/v1",
                "kind": "ControllerRevision",
                "metadata": {
                    "name": name,
                    "namespace": ap.namespace,
                    "labels": {AP_LABEL: ap.name, AP_UID_LABEL: uid, "app.kubernetes.io/managed-by": "meshfed"},
                    "ownerReferences": [_owner_ref(ap)],
                },
                "revision": r.number,
                "data": r.wire(),
            }
            try:
                await self.hub.create(path, body, field_manager=MANAGER)
                telemetry.count("hub_writes", kind="revision")
            except ApiError as err:
                if err.status != 409:
                    raise
                await self.hub.delete(f"{path}/{name}")
                await self.hub.create(path, body, field_manager=MANAGER)
                telemetry.count("hub_writes", 2, kind="revision")
        self.histories[uid] = new
        return new

    # -- the SpecSelector -------------------------------------------------------------------
    def _seed(self, ap: AccessPoint, history: RevisionHistory, revision: str) -> RolloutState:
        status = ap.status
        if status is not None and status.rollout is not None:
            return status.rollout
        if status is not None and status.revision and history.by_hash(status.revision) is not None \
                and any(c.revision == status.revision for c in status.clusters):
            return RolloutState(stable=status.revision)
        if status is not None and status.revision and status.revision != revision \
                and any(c.revision for c in status.clusters):
            log.warning("AccessPoint %s/%s: no rollout state and the revision its clusters carry (%s) is "
                        "not in the history: the current revision is treated as the first one",
                        ap.namespace, ap.name, status.revision)
        return RolloutState()

    async def select(self, ap: AccessPoint, decision: PlacementDecision, members: Mapping[str, Member],
                     revision: str) -> Mapping[str, AccessPoint]:
        """The SpecSelector; `revision`: `ap`'s revision_hash."""
        uid = str(ap.metadata.get("uid", ""))
        lock = self.locks.setdefault(uid, asyncio.Lock())
        async with lock:
            return await self._select(ap, decision, members, uid, revision)

    async def _select(self, ap: AccessPoint, decision: PlacementDecision, members: Mapping[str, Member],
                      uid: str, revision: str) -> Mapping[str, AccessPoint]:
        key = f"{ap.namespace}/{ap.name}"
        now = datetime.now(UTC)
        history = await self.history(ap)
        state = self.states.get(uid) or self._seed(ap, history, revision)
        if ap.status is not None:
            self.health.seed(uid, ap.status.clusters)
        observed = self.seen.get(uid)
        if observed is None:
            observed = self.observe(ap, uid, ap.status.clusters, state) if ap.status else {}
        annotations = ap.metadata.get("annotations") or {}
        inputs = RolloutInputs(
            access_point=ap.name,
            revision=revision,
            spec=ap.spec.rollout,
            clusters=[members[n].facts for n in decision.names if n in members],
            observed=observed,
            approvals=self._approvals_of(ap),
            abort=annotations.get(ABORT_ANNOTATION) or None,
            promote_full=annotations.get(PROMOTE_ANNOTATION) or None,
            analysis=await self.health.figures(uid, members),
        )
        new, actions = step(state, inputs, now)
        self.states[uid] = new
        self.used[uid] = observed
        self.stepped[uid] = (inputs, actions.assignments)
        await self.health.track(ap, uid, actions.analysis, members)
        entries = self.entries.get(uid) or {c.name: c for c in (ap.status.clusters if ap.status else [])}
        fqdn = ((ap.status.fqdn if ap.status else None) or "").split(",")[0]
        self.health.want_probes(ap, uid, actions.probes, entries, {n: m.facts for n, m in members.items()}, fqdn)
        history = await self.record(ap, history, [s for s in (new.stable,) if s], now, revision)
        await self._act(ap, actions)
        if actions.requeue_after is not None:
            self._requeue(uid, key, actions.requeue_after.total_seconds())
        specs: dict[str, AccessPoint] = {}
        for cluster, rev in actions.assignments.items():
            if rev == inputs.revision:
                continue
            rec = history.by_hash(rev)
            if rec is None:
                log.error("AccessPoint %s: revision %s for %s is not in the history; keeping the current one",
                          key, rev, cluster)
                continue
            specs[cluster] = ap.model_copy(update={"spec": spec_of(rec, ap.spec)})
        return specs

    def _approvals_of(self, ap: AccessPoint) -> list[ApprovalSeen]:
        out = []
        for (ns, name), body in sorted(self.approvals.items()):
            spec = body.get("spec") or {}
            if ns != ap.namespace or spec.get("accessPoint") != ap.name:
                continue
            try:
                out.append(ApprovalSeen(name=name, revision=str(spec.get("revision", "")),
                                        wave=int(spec.get("wave", 0)), gate=spec.get("gate", "After"),
                                        decision=spec.get("decision"), approver=spec.get("approver", ""),
                                        reason=spec.get("reason", "")))
            except ValueError:
                log.warning("RolloutApproval %s/%s is unreadable", ns, name)
        return out

    def _fresh(self, ap: AccessPoint) -> bool:
        """The preload is current for `ap`: one replica holding everything from the start, or the list
        ran after this replica took the AccessPoint's shard."""
        sh = self.controller.shards
        if sh is None:
            return True
        at = self.acquired_at.get(shard_of(ap.namespace, ap.name, sh.count))
        return at is not None and at <= self.preload_at

    def shards_changed(self, acquired: frozenset[int], lost: frozenset[int]) -> None:
        """Forget the in-memory rollout state of AccessPoints in lost shards (seeded again from the hub
        should this replica take them back); list the revision history again for acquired ones."""
        now = time.monotonic()
        for s in acquired:
            self.acquired_at[s] = now
        for s in lost:
            self.acquired_at.pop(s, None)
        if acquired:
            task = asyncio.get_running_loop().create_task(self._reload())
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)
        if not lost:
            return
        for key, body in list(self.controller.accesspoints.items()):
            if not self.controller.in_shards(key, lost):
                continue
            uid = str((body.get("metadata") or {}).get("uid", ""))
            for store in (self.states, self.histories, self.used, self.seen, self.stepped):
                store.pop(uid, None)
            self.entries.pop(uid, None)
            self.health.forget(uid)  # no probes nor stats reads for an AccessPoint another replica runs
            self.health.records.pop(uid, None)  # seeded from its status again on a takeover
            timer = self.timers.pop(uid, None)
            if timer is not None:
                timer.cancel()
            ns = key.split("/", 1)[0]
            for akey in [k for k in self.created if k[0] == ns]:
                approval = self.approvals.get(akey)
                if approval is None or (approval.get("spec") or {}).get("accessPoint") == key.split("/", 1)[1]:
                    self.created.discard(akey)
                    self.controller.writer.status.forget(f"{APPROVALS.format(ns=akey[0])}/{akey[1]}")

    async def _reload(self) -> None:
        try:
            await self.load_histories()
        except ApiError as err:
            log.warning("revision histories not listed again (%s): each AccessPoint lists its own", err)

    def _requeue(self, uid: str, key: str, seconds: float) -> None:
        old = self.timers.pop(uid, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self.timers[uid] = loop.call_later(max(seconds, 0.05), self.controller.enqueue, f"ap/{key}")

    # -- writes -----------------------------------------------------------------------------
    async def _act(self, ap: AccessPoint, actions: RolloutActions) -> None:
        for request in actions.approval_requests:
            await self._create_approval(ap, request)
        for verdict in actions.approval_verdicts:
            key = (ap.namespace, verdict.name)
            body = self.approvals.get(key)
            if body is None:
                continue
            await self.controller.writer.status.write(
                f"{APPROVALS.format(ns=ap.namespace)}/{verdict.name}", "RolloutApproval", verdict.name, ap.namespace,
                {"phase": verdict.phase, "message": verdict.message}, seen=body,
                foreign=("conditions",))  # the verdict is phase + message; conditions are not ours
        body = self.controller.accesspoints.get(f"{ap.namespace}/{ap.name}")
        if body is not None:
            for ev in actions.events:
                await self.controller.writer.event(body, ev.type, ev.reason, ev.message)

    async def _create_approval(self, ap: AccessPoint, request: ApprovalRequest) -> None:
        key = (ap.namespace, request.name)
        if key in self.approvals or key in self.created:
            return
        obj = request.resource(ap.namespace).wire()
        obj.pop("status", None)
        obj["metadata"]["labels"] = {AP_LABEL: ap.name}
        obj["metadata"]["ownerReferences"] = [_owner_ref(ap)]
        obj["metadata"]["annotations"] = {"meshfed.io/message": request.message}
        shards.check()
        try:
            created = await self.hub.create(APPROVALS.format(ns=ap.namespace), obj, field_manager=MANAGER)
            telemetry.count("hub_writes", kind="approval")
            self.approvals.setdefault(key, created)
        except ApiError as err:
            if err.status != 409:
                raise
        self.created.add(key)

    # -- the StatusContributor ----------------------------------------------------------------
    def contribute(self, ap: AccessPoint, status: AccessPointStatus, previous: AccessPointStatus | None,
                   now: str) -> AccessPointStatus:
        uid = str(ap.metadata.get("uid", ""))
        state = self.states.get(uid)
        if state is None:
            return status
        self.health.seed(uid, previous.clusters if previous else [])
        clusters = self.health.decorate(uid, status.clusters)
        self.entries[uid] = {c.name: c for c in clusters}
        seen = self.observe(ap, uid, clusters, state)
        self.seen[uid] = seen
        stepped = self.stepped.pop(uid, None)
        if seen != self.used.get(uid):
            folded = None if stepped is None else bookkeeping_step(state, stepped[0], stepped[1], seen,
                                                                   datetime.now(UTC))
            if folded is None:
                self.controller.enqueue(f"ap/{ap.namespace}/{ap.name}", cause="rollout")  # step again with what changed
            else:
                state = self.states[uid] = folded
                self.used[uid] = seen
        stored = persisted(state, previous.rollout if previous else None)
        before = [c for c in (previous.conditions if previous else []) if c.type == ROLLOUT_CONDITION]
        mine = set_condition(before, rollout_condition(stored, ap.generation), now)
        conditions = [c for c in status.conditions if c.type != ROLLOUT_CONDITION] + mine
        return status.model_copy(update={"rollout": stored, "conditions": conditions, "clusters": clusters})


def _owner_ref(ap: AccessPoint) -> dict[str, Any]:
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "name": ap.name,
            "uid": str(ap.metadata.get("uid", "")), "controller": True, "blockOwnerDeletion": False}


# ---------------------------------------------------------------------------------------------
# Feature wiring (federation/operator.py FEATURES)

def runtime(controller: Controller) -> Rollouts | None:
    return controller.feature(Rollouts)


def register(registry: kopf.OperatorRegistry, holder: dict[str, Any]) -> None:
    @kopf.on.event("meshfed.io", "v1alpha1", "rolloutapprovals", registry=registry)
    async def approval_event(event: kopf.RawEvent, **_: Any) -> None:
        controller = holder.get("controller")
        rollouts = runtime(controller) if controller is not None else None
        if rollouts is not None:
            rollouts.on_approval(event.get("type") or "ADDED", dict(event["object"]))


async def install(controller: Controller) -> None:
    rollouts = controller.install(Rollouts(controller))
    await rollouts.load_approvals()
    await rollouts.load_histories()
    controller.spec_selector = rollouts.select
    controller.status_contributors.append(rollouts.contribute)
    controller.shard_listeners.append(rollouts.shards_changed)
    controller.context_providers.append(rollouts.health.context)


# ---------------------------------------------------------------------------------------------
# Client side (kubectl plugin)


async def whoami(client: KubeClient) -> str:
    review = await client.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                  body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    return str(((review.get("status") or {}).get("userInfo") or {}).get("username", ""))


async def read_history(client: KubeClient, ap_body: dict[str, Any]) -> RevisionHistory:
    ap = AccessPoint.model_validate(ap_body)
    uid = str(ap.metadata.get("uid", ""))
    items, _ = await client.list(REVISIONS.format(ns=ap.namespace), label_selector=f"{AP_UID_LABEL}={uid}")
    return history_from_items(items, history_limit(ap))
