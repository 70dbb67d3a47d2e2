"""The rollout state machine with a fake clock: strategies, gates, deadline, supersede, abort."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from accesspoint.meta import LabelSelector, parse_duration
from accesspoint.rollout import (
    ApprovalSeen,
    ClusterObservation,
    Gate,
    HttpProbe,
    RolloutActions,
    RolloutApproval,
    RolloutInputs,
    RolloutSpec,
    RolloutState,
    Wave,
    approval_name,
    bookkeeping_step,
    default_waves,
    probe_url,
    step,
    summary,
)
from federation.crdgen import crd_manifest
from placement.models import ZONE_LABEL, ClusterFacts

T0 = datetime(2025, 1, 1, tzinfo=UTC)
A, B, C = "rev-a", "rev-b", "rev-c"


def cluster(name: str, zone: str, region: str = "r1") -> ClusterFacts:
    return ClusterFacts(name=name, region=region, zone=zone, ready=True, reachable=True)


def fleet(per_zone: int = 2, zones: tuple[str, ...] = ("zone-a", "zone-b", "zone-c")) -> list[ClusterFacts]:
    return [cluster(f"{z[-1]}{i}", z) for z in zones for i in range(1, per_zone + 1)]


def zone_wave(zone: str, **kw: Any) -> Wave:
    return Wave(name=zone, cluster_selector=LabelSelector(match_labels={ZONE_LABEL: zone}), **kw)


class Sim:
    """A fake hub: members follow their assignment when synced; the clock moves only on demand."""

    def __init__(
        self, clusters: list[ClusterFacts], spec: RolloutSpec | None = None, revision: str = A
    ) -> None:
        self.clusters = list(clusters)
        self.spec = spec
        self.revision = revision
        self.now = T0
        self.state = RolloutState()
        self.observed: dict[str, ClusterObservation] = {}
        self.approvals: list[ApprovalSeen] = []
        self.abort: str | None = None
        self.promote: str | None = None
        self.pause = False
        self.events: list[str] = []
        self.actions = self.settle()

    def inputs(self) -> RolloutInputs:
        return RolloutInputs(
            access_point="checkout",
            revision=self.revision,
            spec=self.spec,
            clusters=self.clusters,
            observed=self.observed,
            approvals=self.approvals,
            abort=self.abort,
            promote_full=self.promote,
            pause=self.pause,
        )

    def step(self) -> RolloutActions:
        self.state, self.actions = step(self.state, self.inputs(), self.now)
        self.events += [e.reason for e in self.actions.events]
        return self.actions

    def sync(self, health: str = "Healthy", only: set[str] | None = None) -> None:
        for name, rev in self.actions.assignments.items():
            if only is None or name in only:
                self.observed[name] = ClusterObservation(revision=rev, health=health)

    def settle(self, rounds: int = 12) -> RolloutActions:
        for _ in range(rounds):
            before = (self.state, dict(self.observed))
            self.step()
            self.sync()
            if (self.state, self.observed) == before:
                break
        return self.actions

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def approve(
        self, wave: int, gate: str = "After", decision: str = "Approved", approver: str = "alice"
    ) -> None:
        assert self.state.revision is not None
        self.approvals.append(
            ApprovalSeen(
                name=approval_name("checkout", self.state.revision, wave, gate),  # type: ignore[arg-type]
                revision=self.state.revision,
                wave=wave,
                gate=gate,
                decision=decision,
                approver=approver,
            )
        )

    def carrying(self, rev: str) -> set[str]:
        return {c for c, r in self.actions.assignments.items() if r == rev}


def test_first_revision_goes_everywhere_and_becomes_stable() -> None:
    sim = Sim(fleet())
    assert sim.state.phase == "Succeeded" and sim.state.reason == "InitialRevision"
    assert sim.state.stable == A and sim.carrying(A) == {c.name for c in fleet()}


def test_default_strategy_one_cluster_then_approval_then_zone_by_zone() -> None:
    sim = Sim(fleet())
    sim.revision = B
    sim.settle()
    assert sim.carrying(B) == {"a1"}
    st = sim.state
    assert (st.phase, st.reason, st.wave, st.updated) == ("Paused", "AwaitingApproval", "1/4 canary", "1/6")
    assert summary(st) == "Paused(1/4 AwaitingApproval)"
    [request] = sim.actions.approval_requests
    assert request.name == "checkout-rev-b-w1-after" and (request.wave, request.gate) == (1, "After")
    assert request.resource("payments").wire()["spec"] == {
        "accessPoint": "checkout", "revision": B, "wave": 1, "waveName": "canary", "gate": "After",
        "approver": "", "reason": "",
    }  # fmt: skip
    sim.approve(1)
    sim.step()
    assert sim.carrying(B) == {"a1", "a2"}  # zone-a first, without waiting for approval again
    sim.settle()
    assert sim.state.phase == "Succeeded" and sim.state.stable == B and sim.state.updated == "6/6"
    assert sim.carrying(B) == {c.name for c in fleet()}
    assert [v.phase for v in sim.actions.approval_verdicts] == ["Approved"]
    assert sim.events.count("WaveCompleted") == 4 and sim.events[-1] == "RolloutCompleted"


def test_default_canary_choice_is_deterministic() -> None:
    clusters = fleet()
    waves = default_waves(reversed(clusters))
    assert waves == default_waves(clusters)
    assert waves[0].cluster_selector is not None
    assert waves[0].cluster_selector.match_labels == {"meshfed.io/cluster-name": "a1"}
    assert [w.name for w in waves] == ["canary", "zone-a", "zone-b", "zone-c"]


def test_soak_gate_waits_on_the_fake_clock() -> None:
    spec = RolloutSpec(
        waves=[zone_wave("zone-a", after=[Gate(type="Soak", duration="10m")]), zone_wave("zone-b")]
    )
    sim = Sim(fleet(zones=("zone-a", "zone-b")), spec)
    sim.revision = B
    sim.settle()
    assert sim.state.reason == "Soaking" and sim.carrying(B) == {"a1", "a2"}
    assert sim.actions.requeue_after == timedelta(minutes=10)
    sim.advance(300)
    sim.settle()
    assert sim.state.reason == "Soaking" and sim.actions.requeue_after == timedelta(minutes=5)
    assert sim.carrying(B) == {"a1", "a2"}
    sim.advance(300)
    sim.settle()
    assert sim.state.phase == "Succeeded" and "SoakCompleted" in sim.events


def test_progress_deadline_excludes_paused_time() -> None:
    spec = RolloutSpec(waves=[zone_wave("zone-a"), zone_wave("zone-b")], progress_deadline_seconds=600)
    sim = Sim(fleet(zones=("zone-a", "zone-b")), spec)
    sim.revision = B
    sim.step()
    sim.sync(health="Progressing")  # applied, but never becomes healthy
    sim.step()
    assert sim.state.reason == "Updating" and sim.actions.requeue_after == timedelta(seconds=600)
    sim.advance(400)
    sim.step()
    sim.pause = True
    sim.step()
    assert sim.state.phase == "Paused"
    sim.advance(5000)  # paused: not counted
    sim.step()
    sim.pause = False
    sim.step()
    assert sim.state.phase == "Progressing" and "Resumed" in sim.events
    sim.advance(150)
    sim.step()
    assert sim.state.phase == "Progressing" and sim.actions.requeue_after == timedelta(seconds=50)
    sim.advance(50)
    sim.step()
    assert (sim.state.phase, sim.state.reason) == ("Degraded", "ProgressDeadlineExceeded")
    assert "a1, a2" in sim.state.message and sim.carrying(B) == {"a1", "a2"}
    # Progress (the clusters become healthy) clears it and the rollout continues.
    sim.sync()
    sim.settle()
    assert sim.state.phase == "Succeeded"


def test_progress_deadline_with_on_failure_abort() -> None:
    spec = RolloutSpec(
        waves=[zone_wave("zone-a"), zone_wave("zone-b")], progress_deadline_seconds=60, on_failure="Abort"
    )
    sim = Sim(fleet(zones=("zone-a", "zone-b")), spec)
    sim.revision = B
    sim.step()
    sim.sync(health="Progressing")
    sim.advance(61)
    sim.step()
    assert (sim.state.phase, sim.state.reason) == ("Aborted", "ProgressDeadlineExceeded")
    assert sim.carrying(B) == set()


def test_new_revision_supersedes_pending_approvals_and_returns_clusters_to_stable() -> None:
    sim = Sim(fleet())
    sim.revision = B
    sim.settle()
    assert sim.carrying(B) == {"a1"} and sim.state.reason == "AwaitingApproval"
    sim.revision = C
    sim.approve(1)  # an approval for B arrives late: it must not release C
    sim.approvals[0] = sim.approvals[0].model_copy(update={"revision": B, "name": "checkout-rev-b-w1-after"})
    sim.settle()
    assert "Superseded" in sim.events
    assert sim.state.stable == A and sim.state.revision == C
    assert sim.carrying(C) == {"a1"} and sim.carrying(B) == set()
    assert sim.state.reason == "AwaitingApproval"
    # A rejection of the superseded revision does not abort the new one either.
    sim.approvals.append(sim.approvals[0].model_copy(update={"decision": "Rejected", "name": "late-reject"}))
    sim.settle()
    assert sim.state.phase == "Paused" and sim.carrying(C) == {"a1"}
    verdicts = {v.name: v.phase for v in sim.actions.approval_verdicts}
    assert verdicts == {"checkout-rev-b-w1-after": "Superseded", "late-reject": "Superseded"}
    assert [r.name for r in sim.actions.approval_requests] == ["checkout-rev-c-w1-after"]


def test_abort_wins_over_pending_promotion_and_reverts_in_reverse_wave_order() -> None:
    spec = RolloutSpec(
        waves=[zone_wave("zone-a"), zone_wave("zone-b"), zone_wave("zone-c", before=[Gate(type="Approval")])]
    )
    sim = Sim(fleet(), spec)
    sim.revision = B
    sim.settle()
    assert sim.carrying(B) == {"a1", "a2", "b1", "b2"} and sim.state.reason == "AwaitingApproval"
    sim.promote = B
    sim.abort = B
    sim.step()
    assert (sim.state.phase, sim.state.reason) == ("Aborted", "Aborted")
    assert "Promoted" not in sim.events
    # zone-b (the last wave touched) goes first; zone-a waits until zone-b reports stable.
    assert sim.carrying(B) == {"a1", "a2"}
    sim.step()
    assert sim.carrying(B) == {"a1", "a2"}
    sim.sync(only={"b1", "b2"})
    sim.step()
    assert sim.carrying(B) == set()
    sim.settle()
    assert "AbortCompleted" in sim.events and sim.state.phase == "Aborted"
    assert {o.revision for o in sim.observed.values()} == {A}
    assert [e for e in sim.events if e == "WaveReverted"] == ["WaveReverted"] * 2
    # The approval that was pending is cancelled; a later promotion changes nothing.
    sim.approve(3, gate="Before")
    sim.settle()
    assert sim.carrying(B) == set()
    assert [v.phase for v in sim.actions.approval_verdicts] == ["Cancelled"]


def test_unreachable_cluster_does_not_hold_back_the_revert() -> None:
    spec = RolloutSpec(waves=[zone_wave("zone-a"), zone_wave("zone-b", after=[Gate(type="Approval")])])
    sim = Sim(fleet(zones=("zone-a", "zone-b")), spec)
    sim.revision = B
    sim.settle()
    assert sim.carrying(B) == {"a1", "a2", "b1", "b2"} and sim.state.reason == "AwaitingApproval"
    sim.abort = B
    sim.step()
    assert sim.carrying(B) == {"a1", "a2"}
    sim.observed["b1"] = ClusterObservation(revision=B, health="Unknown")
    sim.sync(only={"b2"})
    sim.step()
    assert sim.carrying(B) == set()


def test_rejection_aborts() -> None:
    sim = Sim(fleet())
    sim.revision = B
    sim.settle()
    sim.approve(1, decision="Rejected", approver="bob")
    sim.settle()
    assert (sim.state.phase, sim.state.reason) == ("Aborted", "Rejected")
    assert "bob" in sim.state.message and sim.carrying(B) == set()
    assert [(v.phase) for v in sim.actions.approval_verdicts] == ["Rejected"]


def test_approval_without_approver_is_invalid_and_changes_nothing() -> None:
    sim = Sim(fleet())
    sim.revision = B
    sim.settle()
    sim.approve(1, approver="")
    sim.approve(7)
    sim.settle()
    assert sim.carrying(B) == {"a1"} and sim.state.reason == "AwaitingApproval"
    verdicts = sorted((v.phase, v.message) for v in sim.actions.approval_verdicts)
    assert verdicts == [
        ("Invalid", "spec.approver is required with spec.decision"),
        ("Invalid", "spec.wave 7: the rollout of revision rev-b has 4 waves"),
    ]


def test_spec_pause_and_resume() -> None:
    spec = RolloutSpec(waves=[zone_wave("zone-a"), zone_wave("zone-b")], paused=True)
    sim = Sim(fleet(zones=("zone-a", "zone-b")), spec)
    sim.revision = B
    sim.settle()
    assert sim.state.phase == "Paused" and sim.carrying(B) == set()
    sim.spec = spec.model_copy(update={"paused": False})
    sim.settle()
    assert sim.state.phase == "Succeeded" and sim.events.count("Resumed") == 1


def test_cluster_joining_mid_rollout_gets_stable_until_its_wave() -> None:
    sim = Sim(fleet())
    sim.revision = B
    sim.settle()
    sim.clusters.append(cluster("a9", "zone-a"))  # joins while the canary awaits approval
    sim.settle()
    assert sim.actions.assignments["a9"] == A
    sim.approve(1)
    sim.step()
    assert sim.actions.assignments["a9"] == B  # zone-a wave was frozen after it joined
    # zone-b's wave is frozen now: a late zone-b cluster waits for the last (catch-all) wave.
    sim.sync()
    sim.step()
    assert sim.state.wave == "3/4 zone-b"
    sim.clusters.append(cluster("b9", "zone-b"))
    sim.step()
    assert sim.actions.assignments["b9"] == A
    sim.sync()
    sim.step()
    assert sim.state.wave == "4/4 zone-c"
    assert sim.actions.assignments["b9"] == B


def test_empty_wave_is_skipped() -> None:
    spec = RolloutSpec(waves=[zone_wave("zone-a"), zone_wave("zone-x"), zone_wave("zone-b")])
    sim = Sim(fleet(zones=("zone-a", "zone-b")), spec)
    sim.revision = B
    sim.settle()
    assert sim.state.phase == "Succeeded"
    assert "WaveSkipped" in sim.events and sim.state.waves[1].skipped


def test_empty_wave_keeps_its_approval_gate_unless_one_was_just_granted() -> None:
    gate = [Gate(type="Approval")]
    spec = RolloutSpec(
        waves=[zone_wave("zone-a", after=gate), zone_wave("zone-x", after=gate), zone_wave("zone-b")]
    )
    sim = Sim(fleet(zones=("zone-a", "zone-b")), spec)
    sim.revision = B
    sim.settle()
    assert sim.state.reason == "AwaitingApproval"
    sim.approve(1)
    sim.settle()
    assert sim.state.phase == "Succeeded" and "ApprovalCarriedOver" in sim.events


def test_no_progress_possible_is_a_clear_error_that_changes_nothing() -> None:
    spec = RolloutSpec(waves=[zone_wave("zone-x")], unmatched_clusters="Ignore")
    sim = Sim(fleet(), spec)
    sim.revision = B
    sim.settle()
    assert (sim.state.phase, sim.state.reason) == ("Degraded", "NoProgressPossible")
    assert "no wave selects any of the 6 placed clusters" in sim.state.message
    assert sim.carrying(B) == set() and sim.events.count("NoProgressPossible") == 1
    sim.spec = RolloutSpec(waves=[zone_wave("zone-a")], unmatched_clusters="Ignore")
    sim.settle()
    # zone-a was rolled out; the others follow once the revision is stable.
    assert sim.state.phase == "Succeeded" and sim.carrying(B) == {c.name for c in fleet()}


def test_max_concurrency_percentage() -> None:
    spec = RolloutSpec(waves=[zone_wave("zone-a", max_concurrency="50%")])
    sim = Sim(fleet(per_zone=4, zones=("zone-a",)), spec)
    sim.revision = B
    sim.step()
    assert sim.carrying(B) == {"a1", "a2"}
    sim.step()
    assert sim.carrying(B) == {"a1", "a2"}  # not healthy yet: no more
    sim.sync()
    sim.step()
    assert sim.carrying(B) == {"a1", "a2", "a3", "a4"}


def test_health_failure_pauses_then_recovers() -> None:
    spec = RolloutSpec(waves=[zone_wave("zone-a"), zone_wave("zone-b")])
    sim = Sim(fleet(zones=("zone-a", "zone-b")), spec)
    sim.revision = B
    sim.step()
    sim.sync()
    sim.observed["a1"] = ClusterObservation(revision=B, health="Failed", message="probe: 503")
    sim.step()
    assert (sim.state.phase, sim.state.reason) == ("Degraded", "HealthFailed")
    assert "a1 (probe: 503)" in sim.state.message and sim.carrying(B) == {"a1", "a2"}
    sim.observed["a1"] = ClusterObservation(revision=B, health="Healthy")
    sim.settle()
    assert sim.state.phase == "Succeeded"


def test_health_failure_with_on_failure_abort() -> None:
    spec = RolloutSpec(waves=[zone_wave("zone-a"), zone_wave("zone-b")], on_failure="Abort")
    sim = Sim(fleet(zones=("zone-a", "zone-b")), spec)
    sim.revision = B
    sim.step()
    sim.sync()
    sim.observed["a2"] = ClusterObservation(revision=B, health="Failed")
    sim.settle()
    assert (sim.state.phase, sim.state.reason) == ("Aborted", "HealthFailed") and sim.carrying(B) == set()


def test_promote_full_skips_remaining_gates() -> None:
    sim = Sim(fleet())
    sim.revision = B
    sim.settle()
    sim.promote = B
    sim.step()
    assert sim.carrying(B) == {c.name for c in fleet()}
    sim.settle()
    assert sim.state.phase == "Succeeded" and "Promoted" in sim.events
    assert [v.message for v in sim.actions.approval_verdicts] == []
    sim.approve(1)
    assert [v.message for v in sim.step().approval_verdicts] == ["skipped by promote --full"]


def test_stale_promotion_for_another_revision_is_ignored() -> None:
    sim = Sim(fleet())
    sim.promote = A
    sim.revision = B
    sim.settle()
    assert sim.carrying(B) == {"a1"}


def test_unmatched_own_wave_needs_its_approval() -> None:
    spec = RolloutSpec(waves=[zone_wave("zone-a")], unmatched_clusters="OwnWave")
    sim = Sim(fleet(zones=("zone-a", "zone-b")), spec)
    sim.revision = B
    sim.settle()
    assert sim.carrying(B) == {"a1", "a2"} and sim.state.wave == "2/2 unmatched"
    sim.approve(2, gate="Before")
    sim.settle()
    assert sim.state.phase == "Succeeded"


def test_models_reject_bad_gates_and_concurrency() -> None:
    with pytest.raises(ValidationError, match="Soak gate needs a duration"):
        Gate(type="Soak")
    with pytest.raises(ValidationError, match="takes no duration"):
        Gate(type="Approval", duration="1m")
    with pytest.raises(ValidationError, match="duplicate wave names"):
        RolloutSpec(waves=[Wave(name="w"), Wave(name="w")])
    for bad in ("0%", "101%", 0, "three"):
        with pytest.raises(ValidationError):
            Wave(name="w", max_concurrency=bad)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("5 minutes")
    spec = RolloutSpec.model_validate(
        {"waves": [{"name": "w", "maxConcurrency": "25%", "after": [{"type": "Soak", "duration": "5m"}]}]}
    )
    assert spec.waves[0].max_concurrency == "25%"


def test_probe_url_template() -> None:
    probe = HttpProbe(url="https://${fqdn}/healthz?c=${cluster}&z=${zone}&r=${region}&v=${vip}&x=${other}")
    url = probe_url(probe, cluster("a1", "zone-a"), vip="10.0.0.1", fqdn="shop.example")
    assert url == "https://shop.example/healthz?c=a1&z=zone-a&r=r1&v=10.0.0.1&x=${other}"


def test_rollout_approval_crd() -> None:
    crd = crd_manifest(RolloutApproval)
    version = crd["spec"]["versions"][0]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == [
        "AccessPoint",
        "Revision",
        "Wave",
        "Gate",
        "Decision",
        "Approver",
        "Phase",
        "Reason",
        "Age",
    ]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("oldSelf.decision" in r for r in rules)
    assert spec["properties"]["decision"]["enum"] == ["Approved", "Rejected"]


def test_step_is_deterministic_and_does_not_mutate_its_input() -> None:
    sim = Sim(fleet())
    sim.revision = B
    before = sim.state.model_copy(deep=True)
    one = step(sim.state, sim.inputs(), sim.now)
    two = step(sim.state, sim.inputs(), sim.now)
    assert one == two and sim.state == before


def test_wave_states_for_people() -> None:
    from accesspoint.rollout import wave_states

    waves = [{"name": "canary"}, {"name": "zone-a", "skipped": True}, {"name": "zone-b"}, {"name": "rest"}]
    assert wave_states({"waves": waves, "waveIndex": 2, "stage": "After", "phase": "Paused"}) == [
        "Done", "Skipped", "Gate (after)", "Pending"]
    assert wave_states({"waves": waves, "waveIndex": 0, "stage": "Before", "phase": "Aborted"}) == [
        "Aborted", "Skipped", "Pending", "Pending"]
    assert wave_states({"waves": waves, "waveIndex": 0, "phase": "Progressing"})[0] == "Current"
    assert wave_states({"waves": waves, "waveIndex": 3, "phase": "Succeeded"}) == ["Done", "Skipped", "Done", "Done"]
    assert wave_states({}) == []


def test_bookkeeping_step_counts_the_clusters_that_just_reported() -> None:
    # A first revision: the step (before the writes) saw nothing yet; the clusters report it after.
    clusters = fleet()
    inputs = RolloutInputs(access_point="checkout", revision=A, clusters=clusters)
    state, actions = step(RolloutState(), inputs, T0)
    # No Event of its own: the clusters' ClusterApplied Events tell when it lands.
    assert state.updated == "0/6" and actions.events == []
    observed = {c.name: ClusterObservation(revision=A, health="Healthy") for c in clusters}
    folded = bookkeeping_step(state, inputs, actions.assignments, observed, T0 + timedelta(seconds=1))
    assert folded is not None and folded.updated == "6/6"
    assert (folded.phase, folded.reason, folded.stable) == ("Succeeded", "InitialRevision", A)
    # Nothing left for the next reconcile's step: the same state, no action.
    again, more = step(folded, inputs.model_copy(update={"observed": observed}), T0 + timedelta(seconds=2))
    assert again.model_copy(update={"last_step_at": None}) == folded.model_copy(update={"last_step_at": None})
    assert not (more.events or more.approval_requests or more.approval_verdicts or more.probes)
    assert more.analysis is None and more.requeue_after is None
    # Some clusters only: still books.
    some = {n: o for n, o in observed.items() if n in {"a1", "b2"}}
    partly = bookkeeping_step(state, inputs, actions.assignments, some, T0)
    assert partly is not None and partly.updated == "2/6"


def test_bookkeeping_step_refuses_a_step_that_acts() -> None:
    # A new revision on its canary: the canary reporting it healthy opens the approval gate (a
    # RolloutApproval to create, an Event): that step needs its own reconcile.
    sim = Sim(fleet())
    sim.revision = B
    actions = sim.step()
    assert sim.carrying(B) == {"a1"}
    inputs = sim.inputs()
    observed = {**sim.observed, "a1": ClusterObservation(revision=B, health="Healthy")}
    assert bookkeeping_step(sim.state, inputs, actions.assignments, observed, sim.now) is None
    # A cluster assigned another revision than the one it was rendered with: refused as well.
    elsewhere = {**actions.assignments, "a1": A}
    assert bookkeeping_step(sim.state, inputs, elsewhere, dict(sim.observed), sim.now) is None
