"""Staged rollouts: the `spec.rollout` models, the RolloutApproval CRD model and the pure state machine.

Owns: waves (cluster selector, maxConcurrency), gates (Approval, Soak, Analysis), the default
strategy (one cluster, approval, then zone by zone), the persisted RolloutState, and `step`, the one
function that decides which revision every placed cluster carries, which approvals must exist, which
clusters to probe and which gateway figures to gather (the Analysis decision itself is
accesspoint.health.decide), which events to emit and when to be called again.

Imports accesspoint.meta, accesspoint.health and placement.models only. Pure: no I/O, no clock (`now` is passed in),
deterministic (clusters are ordered by region, zone, name).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic.config import JsonDict

from accesspoint.health import (
    AnalysisFigures,
    AnalysisSpec,
    HttpProbe,
    decide,
)
from accesspoint.meta import (
    AGE,
    ApiModel,
    Condition,
    CRDInfo,
    Duration,
    LabelSelector,
    PrinterColumn,
    Resource,
    parse_duration,
)
from placement.models import REGION_LABEL, ZONE_LABEL, ClusterFacts

# ---------------------------------------------------------------------------------------------
# spec.rollout

PERCENT_PATTERN = r"^(100|[1-9][0-9]?)%$"

CLUSTER_NAME_LABEL = "meshfed.io/cluster-name"
# How `kubectl meshfed abort|promote --full` ask (AccessPoint annotations; the value is the revision
# they apply to, so a request never outlives its revision). deploy/rbac/approval-policy.yaml
# requires the `promote` verb to set PROMOTE_ANNOTATION.
ABORT_ANNOTATION = "meshfed.io/abort"
PROMOTE_ANNOTATION = "meshfed.io/promote-full"
DEFAULT_PROGRESS_DEADLINE_SECONDS = 600


GateType = Literal["Approval", "Soak", "Analysis"]
GatePosition = Literal["Before", "After"]


class Gate(ApiModel):
    """A pause before or after a wave: wait for a human (`Approval`), for time (`Soak`), or for the
    gateways' traffic figures of the clusters on the new revision to pass thresholds (`Analysis`)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.type == 'Soak' ? has(self.duration) : !has(self.duration)",
                    "message": "duration is required for a Soak gate and not allowed for an Approval gate",
                },
                {
                    "rule": "self.type == 'Analysis' || !has(self.analysis)",
                    "message": "analysis is only allowed on an Analysis gate",
                },
            ]
        }
    )

    type: GateType
    duration: Duration | None = Field(
        default=None, description="Soak only: e.g. 90s, 10m, 1h30m."
    )
    analysis: AnalysisSpec | None = Field(
        default=None, description="Analysis only: the thresholds (absent: the defaults of each field)."
    )

    @model_validator(mode="after")
    def _duration_matches_type(self) -> Gate:
        if self.type == "Soak" and self.duration is None:
            raise ValueError("a Soak gate needs a duration (e.g. 10m)")
        if self.type != "Soak" and self.duration is not None:
            raise ValueError(f"an {self.type} gate takes no duration")
        if self.type != "Analysis" and self.analysis is not None:
            raise ValueError("analysis is only allowed on an Analysis gate")
        return self

    @property
    def soak(self) -> timedelta:
        return parse_duration(self.duration) if self.duration else timedelta(0)

    @property
    def thresholds(self) -> AnalysisSpec:
        return self.analysis or AnalysisSpec()


MaxConcurrency = Annotated[int, Field(ge=1)] | Annotated[str, Field(pattern=PERCENT_PATTERN)]


class Wave(ApiModel):
    name: str = Field(min_length=1, max_length=63)
    cluster_selector: LabelSelector | None = Field(
        default=None,
        alias="clusterSelector",
        description="Over MemberCluster labels plus topology.kubernetes.io/region|zone and "
        "meshfed.io/cluster-name. Absent: every placed cluster no earlier wave took.",
    )
    max_concurrency: MaxConcurrency | None = Field(
        default=None,
        alias="maxConcurrency",
        description='Clusters of the wave updating at once: a number or a percentage ("50%"). '
        "Absent: the whole wave at once.",
    )
    before: list[Gate] = Field(default_factory=list)
    after: list[Gate] = Field(default_factory=list)


UnmatchedPolicy = Literal["LastWave", "OwnWave", "Ignore"]
FailurePolicy = Literal["Pause", "Abort"]


class HealthChecks(ApiModel):
    """What "healthy" means for a cluster on the new revision (evaluated by the controller)."""

    require_vip: bool = Field(default=True, alias="requireVip")
    http: HttpProbe | None = None


class RolloutSpec(ApiModel):
    """spec.rollout. Without waves, the default strategy: one cluster, Approval, then zone by zone."""

    waves: list[Wave] = Field(default_factory=list, max_length=64)
    unmatched_clusters: UnmatchedPolicy = Field(
        default="LastWave",
        alias="unmatchedClusters",
        description="Clusters no wave selects: join the last wave (LastWave), go in a final wave of "
        "their own after an Approval (OwnWave), or keep the stable revision until the rollout "
        "succeeds (Ignore).",
    )
    paused: bool = False
    progress_deadline_seconds: int = Field(
        default=DEFAULT_PROGRESS_DEADLINE_SECONDS,
        ge=1,
        alias="progressDeadlineSeconds",
        description="Longest time a wave may go without a cluster becoming healthy on the new "
        "revision (time spent paused, soaking or awaiting approval is not counted).",
    )
    health_checks: HealthChecks | None = Field(default=None, alias="healthChecks")
    on_failure: FailurePolicy = Field(default="Pause", alias="onFailure")

    @model_validator(mode="after")
    def _unique_wave_names(self) -> RolloutSpec:
        names = [w.name for w in self.waves]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"spec.rollout.waves: duplicate wave names {dupes}")
        if self.unmatched_clusters == "OwnWave" and UNMATCHED_WAVE in names:
            raise ValueError(
                f"spec.rollout.waves: {UNMATCHED_WAVE!r} is reserved with unmatchedClusters: OwnWave"
            )
        return self


UNMATCHED_WAVE = "unmatched"
CANARY_WAVE = "canary"


def probe_url(probe: HttpProbe, cluster: ClusterFacts, vip: str = "", fqdn: str = "") -> str:
    """The probe URL for one cluster (the controller performs the request)."""
    values = {
        "cluster": cluster.name,
        "zone": cluster.zone,
        "region": cluster.region,
        "vip": vip,
        "fqdn": fqdn,
    }
    return re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), probe.url)


def _order(clusters: Iterable[ClusterFacts]) -> list[ClusterFacts]:
    return sorted(clusters, key=lambda c: (c.region, c.zone, c.name))


def default_waves(clusters: Iterable[ClusterFacts]) -> list[Wave]:
    """The safe default: the first cluster (by region, zone, name) alone, an Approval, then one wave
    per availability zone (region, zone order); the last zone wave also takes late joiners."""
    ordered = _order(clusters)
    if not ordered:
        return []
    canary = ordered[0]
    waves = [
        Wave(
            name=CANARY_WAVE,
            cluster_selector=LabelSelector(match_labels={CLUSTER_NAME_LABEL: canary.name}),
            after=[Gate(type="Approval")],
        )
    ]
    zones = sorted({(c.region, c.zone) for c in ordered})
    for region, zone in zones:
        waves.append(
            Wave(
                name=zone[:63],
                cluster_selector=LabelSelector(match_labels={REGION_LABEL: region, ZONE_LABEL: zone}),
            )
        )
    return waves


# ---------------------------------------------------------------------------------------------
# RolloutApproval

Decision = Literal["Approved", "Rejected"]
ApprovalPhase = Literal["Pending", "Approved", "Rejected", "Superseded", "Cancelled", "Invalid"]


_IMMUTABLE: JsonDict = {"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "immutable"}]}


class RolloutApprovalSpec(ApiModel):
    """Created by the controller; a person sets only `decision`, `approver` and `reason`."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.decision) || (has(self.approver) && self.approver != '')",
                    "message": "spec.approver is required when spec.decision is set",
                },
                {
                    "rule": "!has(oldSelf.decision) || has(self.decision)",
                    "message": "spec.decision cannot be removed once set",
                },
            ]
        }
    )

    access_point: str = Field(alias="accessPoint", min_length=1, max_length=63, json_schema_extra=_IMMUTABLE)
    revision: str = Field(min_length=1, json_schema_extra=_IMMUTABLE)
    wave: int = Field(ge=1, description="1-based wave index", json_schema_extra=_IMMUTABLE)
    wave_name: str = Field(default="", alias="waveName")
    gate: GatePosition = Field(json_schema_extra=_IMMUTABLE)
    decision: Decision | None = Field(
        default=None,
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": "spec.decision cannot be changed once set"}
            ]
        },
    )
    approver: str = Field(
        default="", description="Must be the user setting the decision (admission-checked)."
    )
    reason: str = ""


class RolloutApprovalStatus(ApiModel):
    phase: ApprovalPhase | None = None
    message: str = ""
    conditions: list[Condition] = Field(default_factory=list)


class RolloutApproval(Resource):
    crd = CRDInfo(
        kind="RolloutApproval",
        plural="rolloutapprovals",
        singular="rolloutapproval",
        short_names=("rap",),
        printer_columns=(
            PrinterColumn("AccessPoint", ".spec.accessPoint"),
            PrinterColumn("Revision", ".spec.revision"),
            PrinterColumn("Wave", ".spec.waveName"),
            PrinterColumn("Gate", ".spec.gate", priority=1),
            PrinterColumn("Decision", ".spec.decision"),
            PrinterColumn("Approver", ".spec.approver"),
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("Reason", ".spec.reason", priority=1),
            AGE,
        ),
    )
    kind: str = "RolloutApproval"
    spec: RolloutApprovalSpec
    status: RolloutApprovalStatus | None = None


def approval_name(access_point: str, revision: str, wave: int, gate: GatePosition) -> str:
    """Deterministic object name of the approval for (AccessPoint, revision, wave, gate)."""
    return f"{access_point}-{revision[:10]}-w{wave}-{gate.lower()}"


# ---------------------------------------------------------------------------------------------
# State (persisted by the controller, e.g. in AccessPoint status.rollout)

Phase = Literal["Progressing", "Paused", "Succeeded", "Degraded", "Aborted"]
Stage = Literal["Before", "Updating", "After"]


class WaveState(ApiModel):
    """One planned wave. `clusters` is frozen when the cursor reaches the wave (None before)."""

    name: str
    cluster_selector: LabelSelector | None = Field(default=None, alias="clusterSelector")
    catch_all: bool = Field(default=False, alias="catchAll", description="also takes unassigned clusters")
    max_concurrency: MaxConcurrency | None = Field(default=None, alias="maxConcurrency")
    before: list[Gate] = Field(default_factory=list)
    after: list[Gate] = Field(default_factory=list)
    clusters: list[str] | None = None
    released: list[str] = Field(default_factory=list, description="members given the new revision")
    skipped: bool = False


class GrantedGate(ApiModel):
    wave: int  # 1-based
    gate: GatePosition
    approver: str = ""
    how: Literal["Approved", "CarriedOver", "Promoted"] = "Approved"


class RolloutState(ApiModel):
    """Everything the state machine remembers between steps (start from `RolloutState()`, or
    `RolloutState(stable=REV)` when members already carry REV and no state was kept).

    `phase`, `reason`, `wave`, `updated` and `message` are kept current for printer columns."""

    revision: str | None = Field(default=None, description="the revision being rolled out")
    stable: str | None = Field(default=None, description="the last revision that completed its rollout")
    phase: Phase = "Succeeded"
    reason: str = ""
    message: str = ""
    wave: str = Field(default="", description='e.g. "1/3 zone-a"')
    updated: str = Field(default="0/0", description="placed clusters reporting the revision / placed")
    waves: list[WaveState] = Field(default_factory=list)
    wave_index: int = Field(default=0, alias="waveIndex", description="0-based cursor")
    stage: Stage = "Before"
    gate_index: int = Field(default=0, alias="gateIndex")
    gate_since: datetime | None = Field(default=None, alias="gateSince")
    gate_failed: str = Field(
        default="", alias="gateFailed",
        description="why the current Analysis gate failed (onFailure: Pause holds it there)",
    )
    granted: list[GrantedGate] = Field(default_factory=list)
    fresh_approval: bool = Field(
        default=False, alias="freshApproval", description="an approval was granted and nothing released since"
    )
    promoted: bool = False
    aborting: bool = False
    revert_index: int = Field(default=-1, alias="revertIndex", description="wave being reverted on abort")
    reverting: list[str] = Field(default_factory=list)
    abort_cause: str = Field(default="", alias="abortCause")
    progress_seconds: float = Field(default=0.0, alias="progressSeconds")
    done_count: int = Field(default=0, alias="doneCount")
    last_step_at: datetime | None = Field(default=None, alias="lastStepAt")


# ---------------------------------------------------------------------------------------------
# Inputs and actions

Health = Literal["Healthy", "Progressing", "Failed", "Unknown"]


class ClusterObservation(ApiModel):
    """What a member reports: the revision its objects carry and the health of that revision
    (Healthy: applied, revision reported, VIP present if required, HTTP probe passed its
    successThreshold; Progressing: on its way, e.g. the probe has not passed yet; Failed: a
    definite failure, e.g. rejected apply or failureThreshold probe failures; Unknown: unreachable)."""

    revision: str | None = None
    health: Health = "Unknown"
    message: str = ""


class ApprovalSeen(ApiModel):
    """A RolloutApproval on the hub, as the controller read it."""

    name: str
    revision: str
    wave: int
    gate: GatePosition = "After"
    decision: Decision | None = None
    approver: str = ""
    reason: str = ""


class RolloutInputs(ApiModel):
    access_point: str = Field(alias="accessPoint")
    revision: str = Field(description="the desired revision (hash of the current spec)")
    spec: RolloutSpec | None = None
    clusters: list[ClusterFacts] = Field(default_factory=list, description="placed clusters")
    observed: dict[str, ClusterObservation] = Field(default_factory=dict)
    approvals: list[ApprovalSeen] = Field(default_factory=list)
    abort: str | None = Field(default=None, description="abort requested for this revision")
    promote_full: str | None = Field(
        default=None, alias="promoteFull", description="promote --full for this revision"
    )
    pause: bool = Field(default=False, description="a pause request besides spec.rollout.paused")
    analysis: AnalysisFigures | None = Field(
        default=None, description="figures gathered for the Analysis gate of the last AnalysisRequest"
    )


@dataclass(frozen=True)
class RolloutEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class ApprovalRequest:
    """A RolloutApproval that must exist (create it when missing; never overwrite its spec)."""

    name: str
    access_point: str
    revision: str
    wave: int
    wave_name: str
    gate: GatePosition
    message: str

    def resource(self, namespace: str) -> RolloutApproval:
        return RolloutApproval(
            metadata={"name": self.name, "namespace": namespace},
            spec=RolloutApprovalSpec(
                access_point=self.access_point,
                revision=self.revision,
                wave=self.wave,
                wave_name=self.wave_name,
                gate=self.gate,
            ),
            status=RolloutApprovalStatus(phase="Pending", message=self.message),
        )


@dataclass(frozen=True)
class ApprovalVerdict:
    """The status to write on an existing RolloutApproval."""

    name: str
    phase: ApprovalPhase
    message: str


@dataclass(frozen=True)
class AnalysisRequest:
    """An Analysis gate is open: gather the gateway figures of `canary` (clusters on the new
    revision) and `stable` (placed clusters on the stable revision) since the gate opened, and pass
    them as `RolloutInputs.analysis` (with this `key`) to the next steps, every `interval` at most."""

    key: str
    canary: list[str]
    stable: list[str]
    window: timedelta
    interval: timedelta


@dataclass(frozen=True)
class RolloutActions:
    assignments: dict[str, str]  # every placed cluster -> the revision it must carry
    approval_requests: list[ApprovalRequest] = field(default_factory=list)
    approval_verdicts: list[ApprovalVerdict] = field(default_factory=list)
    events: list[RolloutEvent] = field(default_factory=list)
    requeue_after: timedelta | None = None  # call `step` again by then even if nothing changes
    # Clusters whose health waits on the HTTP probe now (spec.rollout.healthChecks.http): probe
    # them (and only them); their observations must stay short of Healthy until the probe passes.
    probes: list[str] = field(default_factory=list)
    analysis: AnalysisRequest | None = None


# ---------------------------------------------------------------------------------------------
# Planning


def plan_waves(spec: RolloutSpec | None, clusters: Iterable[ClusterFacts]) -> list[WaveState]:
    """The waves of a new rollout (membership not frozen yet)."""
    waves = spec.waves if spec is not None and spec.waves else default_waves(clusters)
    policy: UnmatchedPolicy = spec.unmatched_clusters if spec is not None and spec.waves else "LastWave"
    out = [
        WaveState(
            name=w.name,
            cluster_selector=w.cluster_selector,
            max_concurrency=w.max_concurrency,
            before=list(w.before),
            after=list(w.after),
        )
        for w in waves
    ]
    if out and policy == "LastWave":
        out[-1].catch_all = True
    if out and policy == "OwnWave":
        out.append(WaveState(name=UNMATCHED_WAVE, catch_all=True, before=[Gate(type="Approval")]))
    return out


def _take(wave: WaveState, placed: list[ClusterFacts], assigned: set[str]) -> list[str]:
    sel = wave.cluster_selector
    return [
        c.name
        for c in placed
        if c.name not in assigned and (wave.catch_all or sel is None or sel.matches(c.selector_labels))
    ]


def _assigned(waves: Iterable[WaveState]) -> set[str]:
    return {name for w in waves for name in (w.clusters or [])}


def predict_membership(waves: list[WaveState], clusters: Iterable[ClusterFacts]) -> list[list[str]]:
    """Frozen members where frozen, else who would be taken if every later wave started now."""
    placed = _order(clusters)
    assigned = _assigned(waves)
    out: list[list[str]] = []
    for w in waves:
        if w.clusters is not None:
            out.append(list(w.clusters))
            continue
        members = _take(w, placed, assigned)
        assigned.update(members)
        out.append(members)
    return out


def _limit(max_concurrency: int | str | None, size: int) -> int:
    if max_concurrency is None:
        return max(size, 1)
    if isinstance(max_concurrency, int):
        return max_concurrency
    return max(1, math.ceil(size * int(max_concurrency.rstrip("%")) / 100))


# ---------------------------------------------------------------------------------------------
# The state machine


class _Step:
    """One evaluation of `step`: a mutable working copy and the outputs being collected."""

    def __init__(self, state: RolloutState, inputs: RolloutInputs, now: datetime) -> None:
        self.s = state.model_copy(deep=True)
        self.i = inputs
        self.now = now
        self.spec = inputs.spec or RolloutSpec()
        self.placed = _order(inputs.clusters)
        self.placed_names = {c.name for c in self.placed}
        self.events: list[RolloutEvent] = []
        self.requests: list[ApprovalRequest] = []
        self.requeue: list[timedelta] = []
        self.analysis: AnalysisRequest | None = None

    # -- helpers ------------------------------------------------------------------------------
    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(RolloutEvent("Warning" if warning else "Normal", reason, message))

    def obs(self, cluster: str) -> ClusterObservation:
        return self.i.observed.get(cluster) or ClusterObservation()

    def done(self, cluster: str) -> bool:
        o = self.obs(cluster)
        return o.revision == self.s.revision and o.health == "Healthy"

    def released(self) -> list[str]:
        return [c for w in self.s.waves for c in w.released if c in self.placed_names]

    def set(self, phase: Phase, reason: str, message: str) -> None:
        self.s.phase, self.s.reason, self.s.message = phase, reason, message

    def wave_label(self, index: int) -> str:
        return f"{index + 1}/{len(self.s.waves)} {self.s.waves[index].name}"

    # -- time ---------------------------------------------------------------------------------
    def account_time(self) -> None:
        s = self.s
        if s.last_step_at is not None and _counts_progress(s):
            s.progress_seconds += max(0.0, (self.now - s.last_step_at).total_seconds())
        s.last_step_at = self.now

    # -- revisions ----------------------------------------------------------------------------
    def maybe_new_revision(self) -> None:
        s, new = self.s, self.i.revision
        if s.revision == new:
            return
        old = s.revision
        if old is not None and old != s.stable and not s.aborting:
            self.event(
                "Superseded",
                f"revision {old} superseded by {new}: pending approvals are void and clusters "
                f"return to the stable revision {s.stable} until their wave",
            )
        self.s = s = RolloutState(stable=s.stable, revision=new, last_step_at=self.now)
        if s.stable is None:
            s.stable = new
            # No Event: each cluster's arrival is the ClusterApplied Event (one per reconcile), and an
            # Event here would claim the revision deployed before any cluster holds it (and cost every
            # new AccessPoint one more hub write).
            self.set("Succeeded", "InitialRevision", f"first revision {new} deployed to every placed cluster")
        elif s.stable == new:
            self.set(
                "Succeeded", "StableRevision", f"revision {new} is the stable revision: nothing to roll out"
            )
            self.event("RolledBack", f"every cluster returns to the stable revision {new}")
        else:
            s.waves = plan_waves(self.i.spec, self.placed)
            self.set("Progressing", "Started", f"rolling out revision {new} over {len(s.waves)} waves")
            self.event("RolloutStarted", f"revision {new} (stable {s.stable}): {len(s.waves)} waves planned")

    # -- abort --------------------------------------------------------------------------------
    def rejection(self) -> ApprovalSeen | None:
        granted = {(g.wave, g.gate) for g in self.s.granted}
        for a in sorted(self.i.approvals, key=lambda a: a.name):
            if (
                a.revision == self.s.revision
                and a.decision == "Rejected"
                and a.approver
                and (a.wave, a.gate) not in granted
                and 1 <= a.wave <= len(self.s.waves)
            ):
                return a
        return None

    def begin_abort(self, reason: str, message: str) -> None:
        s = self.s
        s.aborting = True
        s.abort_cause = message
        touched = [i for i, w in enumerate(s.waves) if w.released]
        s.revert_index = touched[-1] if touched else -1
        self.set("Aborted", reason, message)
        self.event("Aborted", f"{message}; returning clusters to stable revision {s.stable}", warning=True)

    def revert(self) -> None:
        """Return released clusters to stable, last wave first; a wave's clusters must report
        the stable revision before the previous wave is reverted (unreachable or failed clusters
        do not hold the others back: they converge when they can)."""
        s = self.s
        while s.revert_index >= 0:
            w = s.waves[s.revert_index]
            if w.released:
                s.reverting = list(w.released)
                w.released = []
                self.event(
                    "WaveReverted",
                    f"wave {self.wave_label(s.revert_index)}: {len(s.reverting)} "
                    f"clusters back to stable revision {s.stable}",
                )
            waiting = [
                c
                for c in s.reverting
                if c in self.placed_names
                and self.obs(c).revision != s.stable
                and self.obs(c).health in ("Healthy", "Progressing")
            ]
            if waiting:
                waiting_for = ", ".join(waiting)
                s.message = (
                    f"aborted ({s.abort_cause}): waiting for {waiting_for} to report revision {s.stable}"
                )
                return
            s.reverting = []
            s.revert_index -= 1
            if s.revert_index < 0:
                s.message = f"aborted ({s.abort_cause}): every cluster is back on stable revision {s.stable}"
                self.event("AbortCompleted", s.message)

    # -- gates --------------------------------------------------------------------------------
    def approval_for(self, wave: int, gate: GatePosition) -> ApprovalSeen | None:
        for a in sorted(self.i.approvals, key=lambda a: a.name):
            if (
                a.revision == self.s.revision
                and a.wave == wave
                and a.gate == gate
                and a.decision
                and a.approver
            ):
                return a
        return None

    def pass_gates(self, gates: list[Gate], gate: GatePosition) -> bool:
        """Advance through the gates of the current stage; False while one holds."""
        s = self.s
        wave = s.waves[s.wave_index]
        number = s.wave_index + 1
        while s.gate_index < len(gates):
            g = gates[s.gate_index]
            if s.promoted:
                pass
            elif g.type == "Soak" and not wave.skipped:
                if s.gate_since is None:
                    s.gate_since = self.now
                    self.event(
                        "SoakStarted", f"wave {self.wave_label(s.wave_index)}: soaking for {g.duration}"
                    )
                remaining = s.gate_since + g.soak - self.now
                if remaining > timedelta(0):
                    self.set(
                        "Progressing",
                        "Soaking",
                        f"wave {self.wave_label(s.wave_index)}: soaking, "
                        f"{int(remaining.total_seconds())}s left",
                    )
                    self.requeue.append(remaining)
                    return False
                self.event("SoakCompleted", f"wave {self.wave_label(s.wave_index)}: soaked {g.duration}")
            elif g.type == "Approval":
                if not self.approval_gate(number, gate):
                    return False
            elif g.type == "Analysis" and not wave.skipped and not self.analysis_gate(g, gate):
                return False
            s.gate_index += 1
            s.gate_since = None
            s.gate_failed = ""
        s.gate_index = 0
        return True

    def analysis_gate(self, g: Gate, gate: GatePosition) -> bool:
        """True when the Analysis gate passes; while it waits, ask for figures; on failure abort
        (onFailure: Abort) or hold the rollout at the gate (Pause) with the figures in the reason."""
        s = self.s
        assert s.revision is not None
        label = f"wave {self.wave_label(s.wave_index)}"
        if s.gate_failed:
            self.set("Paused", "AnalysisFailed", s.gate_failed)
            return False
        spec = g.thresholds
        if s.gate_since is None:
            s.gate_since = self.now
            self.event("AnalysisStarted", f"{label}: analysing the gateways' traffic for {spec.window}")
        key = f"{s.revision}/w{s.wave_index + 1}/{gate.lower()}/{s.gate_index}"
        released = set(self.released())
        canary = [c.name for c in self.placed if c.name in released]
        stable = [c.name for c in self.placed if c.name not in released]
        self.analysis = AnalysisRequest(key, canary, stable, timedelta(seconds=spec.window_seconds),
                                        timedelta(seconds=spec.interval_seconds))
        figures = self.i.analysis if self.i.analysis is not None and self.i.analysis.key == key else None
        waited = (self.now - s.gate_since).total_seconds()
        verdict = decide(spec, canary, stable, figures, waited)
        if verdict.decision == "Pass":
            self.event("AnalysisPassed", f"{label}: {verdict.message}")
            return True
        if verdict.decision == "Fail":
            message = f"{label}: analysis failed: {verdict.message}"
            if self.spec.on_failure == "Abort":
                self.begin_abort("AnalysisFailed", message)
                self.revert()
                return False
            s.gate_failed = message
            self.event("AnalysisFailed", message + "; rollout held at this gate (onFailure: Pause): "
                       "kubectl meshfed abort or promote --full", warning=True)
            self.set("Paused", "AnalysisFailed", message)
            return False
        self.set("Progressing", "Analyzing", f"{label}: analysing: {verdict.message}")
        left = spec.max_wait_seconds - waited
        self.requeue.append(timedelta(seconds=max(0.05, min(spec.interval_seconds, left))))
        return False

    def approval_gate(self, number: int, gate: GatePosition) -> bool:
        """True when the Approval gate at (wave number, gate) is granted (now or before)."""
        s = self.s
        if any(x.wave == number and x.gate == gate for x in s.granted):
            return True
        label = f"{gate.lower()} wave {self.wave_label(number - 1)}"
        found = self.approval_for(number, gate)
        if found is not None and found.decision == "Approved":
            s.granted.append(GrantedGate(wave=number, gate=gate, approver=found.approver))
            s.fresh_approval = True
            why = f" ({found.reason})" if found.reason else ""
            self.event("Approved", f"{label}: approved by {found.approver}{why}")
            return True
        if s.fresh_approval:
            s.granted.append(GrantedGate(wave=number, gate=gate, how="CarriedOver"))
            self.event("ApprovalCarriedOver", f"{label}: no cluster updated since the last approval")
            return True
        self.await_approval(number, gate)
        return False

    def await_approval(self, number: int, gate: GatePosition) -> None:
        s = self.s
        assert s.revision is not None
        wave = s.waves[number - 1]
        if gate == "Before":
            what = f"release wave {self.wave_label(number - 1)} ({len(wave.clusters or [])} clusters)"
        else:
            what = f"continue after wave {self.wave_label(number - 1)}"
        name = approval_name(self.i.access_point, s.revision, number, gate)
        message = f"approve to {what} of revision {s.revision}: kubectl meshfed approve {self.i.access_point}"
        if s.reason != "AwaitingApproval":
            self.event("AwaitingApproval", f"{message} (RolloutApproval {name})")
        self.set("Paused", "AwaitingApproval", message)
        self.requests.append(
            ApprovalRequest(
                name=name,
                access_point=self.i.access_point,
                revision=s.revision,
                wave=number,
                wave_name=wave.name,
                gate=gate,
                message=message,
            )
        )

    # -- forward ------------------------------------------------------------------------------
    def freeze(self, index: int) -> None:
        s = self.s
        w = s.waves[index]
        if w.clusters is not None:
            return
        w.clusters = _take(w, self.placed, _assigned(s.waves))
        if not w.clusters:
            w.skipped = True
            where = (
                f"spec.rollout.waves[{index}].clusterSelector"
                if self.i.spec and self.i.spec.waves
                else "wave"
            )
            self.event(
                "WaveSkipped",
                f"wave {self.wave_label(index)}: {where} matches no placed cluster that no earlier wave took",
                warning=True,
            )

    def release(self, index: int, names: list[str]) -> None:
        if not names:
            return
        s = self.s
        s.waves[index].released.extend(names)
        s.fresh_approval = False
        self.event(
            "ClustersUpdated",
            f"wave {self.wave_label(index)}: revision {s.revision} released to {', '.join(names)}",
        )

    def no_progress_possible(self) -> str | None:
        s = self.s
        if any(w.clusters is not None for w in s.waves) or not self.placed:
            return None
        if any(predict_membership(s.waves, self.placed)):
            return None
        return (
            f"spec.rollout: no wave selects any of the {len(self.placed)} placed clusters and "
            "unmatchedClusters is Ignore: revision "
            f"{s.revision} cannot reach any cluster; fix the wave selectors or unmatchedClusters"
        )

    def advance(self) -> None:
        s = self.s
        if not any(w.clusters is not None for w in s.waves):
            s.waves = plan_waves(self.i.spec, self.placed)  # not started: follow spec edits
        problem = self.no_progress_possible()
        if problem is not None:
            if s.reason != "NoProgressPossible":
                self.event("NoProgressPossible", problem, warning=True)
            self.set("Degraded", "NoProgressPossible", problem)
            return
        if s.promoted:
            self.advance_promoted()
            return
        while s.wave_index < len(s.waves):
            index = s.wave_index
            w = s.waves[index]
            if s.stage == "Before":
                self.freeze(index)
                if not self.pass_gates(w.before, "Before"):
                    return
                s.stage = "Updating"
                if not w.skipped:
                    self.event(
                        "WaveStarted", f"wave {self.wave_label(index)}: {len(w.clusters or [])} clusters"
                    )
                s.progress_seconds = 0.0
            if s.stage == "Updating":
                if not w.skipped and not self.update_wave(index):
                    return
                s.stage = "After"
                if not w.skipped:
                    self.event(
                        "WaveCompleted",
                        f"wave {self.wave_label(index)}: every cluster healthy on revision {s.revision}",
                    )
            if not self.pass_gates(w.after, "After"):
                return
            s.wave_index += 1
            s.stage = "Before"
        self.succeed()

    def update_wave(self, index: int) -> bool:
        """Release clusters of the wave within maxConcurrency; True when all are healthy."""
        s = self.s
        w = s.waves[index]
        members = [c for c in w.clusters or [] if c in self.placed_names]
        in_flight = [c for c in w.released if c in self.placed_names and not self.done(c)]
        free = _limit(w.max_concurrency, len(w.clusters or [])) - len(in_flight)
        if free > 0:
            self.release(index, [c for c in members if c not in w.released][:free])
        pending = [c for c in members if not (c in w.released and self.done(c))]
        if not pending:
            return True
        self.wait_for(pending, f"wave {self.wave_label(index)}")
        return False

    def advance_promoted(self) -> None:
        s = self.s
        for index in range(s.wave_index, len(s.waves)):
            self.freeze(index)
            w = s.waves[index]
            self.release(
                index, [c for c in w.clusters or [] if c not in w.released and c in self.placed_names]
            )
        if s.waves:
            s.wave_index, s.stage = len(s.waves) - 1, "Updating"
        pending = [c for c in self.released() if not self.done(c)]
        if pending:
            self.wait_for(pending, "promoted")
            return
        self.succeed()

    def wait_for(self, pending: list[str], where: str) -> None:
        s = self.s
        deadline = float(self.spec.progress_deadline_seconds)
        if s.progress_seconds >= deadline:
            message = (
                f"{where}: no progress for {int(s.progress_seconds)}s (progressDeadlineSeconds "
                f"{int(deadline)}): waiting for {', '.join(pending)}"
            )
            if self.spec.on_failure == "Abort":
                self.begin_abort("ProgressDeadlineExceeded", message)
                self.revert()
                return
            if s.reason != "ProgressDeadlineExceeded":
                self.event("ProgressDeadlineExceeded", message, warning=True)
            self.set("Degraded", "ProgressDeadlineExceeded", message)
            return
        self.set(
            "Progressing",
            "Updating",
            f"{where}: waiting for {', '.join(pending)} to report revision {s.revision} healthy",
        )
        self.requeue.append(timedelta(seconds=deadline - s.progress_seconds))

    def succeed(self) -> None:
        s = self.s
        s.stable = s.revision
        s.wave_index = max(len(s.waves) - 1, 0)
        s.stage = "After"
        self.set("Succeeded", "Completed", f"revision {s.revision} is rolled out and stable")
        self.event("RolloutCompleted", s.message)

    def health_failures(self) -> list[str]:
        return [c for c in self.released() if self.obs(c).health == "Failed"]

    def track_progress(self) -> None:
        done = sum(1 for c in self.released() if self.done(c))
        if done > self.s.done_count:
            self.s.progress_seconds = 0.0
        self.s.done_count = done

    # -- the step -----------------------------------------------------------------------------
    def run(self) -> None:
        self.account_time()
        self.maybe_new_revision()
        s = self.s
        if s.revision == s.stable:
            return
        if not s.aborting:
            rejected = self.rejection()
            if s.revision is not None and self.i.abort == s.revision:
                self.begin_abort("Aborted", f"abort requested for revision {s.revision}")
            elif rejected is not None:
                self.begin_abort(
                    "Rejected",
                    f"wave {rejected.wave} {rejected.gate.lower()} gate rejected by "
                    f"{rejected.approver}" + (f": {rejected.reason}" if rejected.reason else ""),
                )
        if s.aborting:
            self.revert()
            return
        self.track_progress()
        if self.spec.paused or self.i.pause:
            if s.phase != "Paused" or s.reason != "Paused":
                self.event("Paused", "rollout paused (spec.rollout.paused or a pause request)")
            self.set(
                "Paused", "Paused", f"paused at wave {self.wave_label(s.wave_index)}" if s.waves else "paused"
            )
            return
        if s.reason == "Paused":
            self.event("Resumed", "rollout resumed")
        if not s.promoted and self.i.promote_full == s.revision:
            s.promoted = True
            for g in self.pending_gates():
                s.granted.append(g)
            self.event(
                "Promoted",
                f"promote --full: remaining gates skipped, revision {s.revision} released to "
                "every remaining cluster",
            )
        failures = self.health_failures()
        if failures:
            message = "health check failed on " + ", ".join(
                f"{c} ({self.obs(c).message})" if self.obs(c).message else c for c in failures
            )
            if self.spec.on_failure == "Abort":
                self.begin_abort("HealthFailed", message)
                self.revert()
                return
            if s.reason != "HealthFailed":
                self.event(
                    "HealthFailed",
                    message + "; rollout halted until they recover (onFailure: Pause)",
                    warning=True,
                )
            self.set("Degraded", "HealthFailed", message)
            return
        self.advance()

    def pending_gates(self) -> list[GrantedGate]:
        """Approval gates not granted yet (recorded as Promoted when promote --full skips them)."""
        s = self.s
        granted = {(g.wave, g.gate) for g in s.granted}
        out: list[GrantedGate] = []
        for index, w in enumerate(s.waves):
            stages: tuple[tuple[GatePosition, list[Gate]], ...] = (("Before", w.before), ("After", w.after))
            for position, gates in stages:
                if any(g.type == "Approval" for g in gates) and (index + 1, position) not in granted:
                    out.append(GrantedGate(wave=index + 1, gate=position, how="Promoted"))
        return out

    # -- outputs ------------------------------------------------------------------------------
    def assignments(self) -> dict[str, str]:
        s = self.s
        assert s.revision is not None and s.stable is not None
        new = set(self.released()) if s.revision != s.stable else self.placed_names
        return {c.name: (s.revision if c.name in new else s.stable) for c in self.placed}

    def verdicts(self) -> list[ApprovalVerdict]:
        s = self.s
        out: list[ApprovalVerdict] = []
        granted = {(g.wave, g.gate): g for g in s.granted}
        for a in sorted(self.i.approvals, key=lambda a: a.name):
            key = (a.wave, a.gate)
            if a.revision != s.revision:
                out.append(
                    ApprovalVerdict(
                        a.name,
                        "Superseded",
                        f"revision {a.revision} was superseded by "
                        f"{s.revision}: this approval changes nothing",
                    )
                )
            elif a.decision and not a.approver:
                out.append(ApprovalVerdict(a.name, "Invalid", "spec.approver is required with spec.decision"))
            elif not 1 <= a.wave <= len(s.waves):
                out.append(
                    ApprovalVerdict(
                        a.name,
                        "Invalid",
                        f"spec.wave {a.wave}: the rollout of revision {s.revision} has {len(s.waves)} waves",
                    )
                )
            elif key in granted:
                g = granted[key]
                how = {
                    "Approved": f"approved by {g.approver}",
                    "CarriedOver": "covered by the previous approval",
                    "Promoted": "skipped by promote --full",
                }[g.how]
                out.append(ApprovalVerdict(a.name, "Approved", how))
            elif s.aborting and s.reason == "Rejected" and a.decision == "Rejected":
                out.append(ApprovalVerdict(a.name, "Rejected", f"rejected by {a.approver}: rollout aborted"))
            elif s.aborting or s.phase == "Succeeded":
                out.append(ApprovalVerdict(a.name, "Cancelled", f"rollout {s.phase.lower()}: not needed"))
            else:
                waiting = s.reason == "AwaitingApproval" and any(r.name == a.name for r in self.requests)
                msg = (
                    "awaiting a decision"
                    if waiting
                    else "recorded; takes effect when the rollout reaches this gate"
                )
                out.append(ApprovalVerdict(a.name, "Pending", msg))
        return out

    def labels(self) -> None:
        s = self.s
        if s.waves:
            s.wave = self.wave_label(min(s.wave_index, len(s.waves) - 1))
        else:
            s.wave = ""
        on_new = sum(1 for c in self.placed if self.obs(c.name).revision == s.revision)
        s.updated = f"{on_new}/{len(self.placed)}"

    def probe_targets(self) -> list[str]:
        """Released clusters reporting the new revision but not healthy on it yet, while the
        rollout moves forward (not paused, aborting or done) and an HTTP probe is configured."""
        s = self.s
        checks = self.spec.health_checks
        if checks is None or checks.http is None or s.aborting or s.revision in (None, s.stable):
            return []
        if self.spec.paused or self.i.pause or s.phase in ("Succeeded", "Aborted"):
            return []
        return [c for c in self.released() if self.obs(c).revision == s.revision and not self.done(c)]

    def actions(self) -> RolloutActions:
        self.labels()
        analysis = self.analysis if not self.s.aborting and self.s.reason == "Analyzing" else None
        return RolloutActions(
            assignments=self.assignments(),
            approval_requests=self.requests,
            approval_verdicts=self.verdicts(),
            events=self.events,
            requeue_after=min(self.requeue) if self.requeue else None,
            probes=self.probe_targets(),
            analysis=analysis,
        )


def _counts_progress(s: RolloutState) -> bool:
    """Whether the time since the last step counts against progressDeadlineSeconds."""
    return (
        not s.aborting
        and s.revision != s.stable
        and s.stage == "Updating"
        and s.phase in ("Progressing", "Degraded")
        and s.reason not in ("NoProgressPossible", "HealthFailed")
    )


def step(state: RolloutState, inputs: RolloutInputs, now: datetime) -> tuple[RolloutState, RolloutActions]:
    """Advance the rollout as far as the inputs allow; pure and deterministic.

    Call it whenever an input changes and at the latest after `requeue_after`. Persist the returned
    state; render for each placed cluster the revision in `assignments`; create the missing
    RolloutApprovals of `approval_requests`; write `approval_verdicts` into their status; emit
    `events`.
    """
    work = _Step(state, inputs, now)
    work.run()
    actions = work.actions()
    return work.s, actions


def bookkeeping_step(state: RolloutState, inputs: RolloutInputs, assigned: Mapping[str, str],
                     observed: Mapping[str, ClusterObservation], now: datetime) -> RolloutState | None:
    """`state` stepped again with newer observations, when that step only keeps books (which clusters
    count as updated, progress): no event, approval, probe, Analysis gate or timer, and every cluster
    keeps the revision it was just rendered with (`assigned`, the actions of the step that made
    `state`). The caller writes its status once with it, instead of once with the observations of the
    reconcile before and again after one reconcile more (a first revision reaching every cluster).
    None: the step acts, so it runs in a reconcile of its own (the renders follow its assignments)."""
    stepped, actions = step(state, inputs.model_copy(update={"observed": dict(observed)}), now)
    if actions.events or actions.approval_requests or actions.approval_verdicts or actions.probes or \
            actions.analysis is not None or actions.requeue_after is not None or actions.assignments != assigned:
        return None
    return stepped


def summary(state: RolloutState) -> str:
    """A compact phase string for the AccessPoint PHASE column, e.g. "Paused(1/3 AwaitingApproval)"."""
    detail = " ".join(x for x in (state.wave.split(" ")[0] if state.wave else "", state.reason) if x)
    return f"{state.phase}({detail})" if detail and state.phase != "Succeeded" else state.phase


WAVE_STAGE_LABELS = {"Before": "Gate (before)", "Updating": "Updating", "After": "Gate (after)"}


def wave_states(rollout: Mapping[str, Any]) -> list[str]:
    """Each wave's state for people (the CLI's table, the dashboard's timeline) from a status.rollout as
    written: Skipped, Done, Pending, or for the current wave its stage (Gate (before), Updating,
    Gate (after), Current) or Aborted."""
    index = int(rollout.get("waveIndex", 0))
    states = []
    for i, wave in enumerate(rollout.get("waves") or []):
        if wave.get("skipped"):
            state = "Skipped"
        elif rollout.get("phase") == "Succeeded" or i < index:
            state = "Done"
        elif i == index:
            state = "Aborted" if rollout.get("phase") == "Aborted" else \
                WAVE_STAGE_LABELS.get(rollout.get("stage", ""), "Current")
        else:
            state = "Pending"
        states.append(state)
    return states


__all__ = [
    "AnalysisRequest",
    "ApprovalRequest",
    "ApprovalSeen",
    "ApprovalVerdict",
    "ClusterObservation",
    "Gate",
    "HealthChecks",
    "HttpProbe",
    "RolloutActions",
    "RolloutApproval",
    "RolloutEvent",
    "RolloutInputs",
    "RolloutSpec",
    "RolloutState",
    "Wave",
    "approval_name",
    "default_waves",
    "plan_waves",
    "predict_membership",
    "probe_url",
    "step",
    "summary",
    "wave_states",
]
