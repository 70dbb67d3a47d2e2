"""Property test of the rollout invariant over random event sequences.

No cluster outside a released wave ever carries the new revision: a cluster carries a revision that
is not stable only if it belongs to a wave whose every preceding Approval gate was approved by a
valid RolloutApproval for that revision (or legitimately carried over: nothing was released since
the previous approval), or `promote --full` was requested for that revision. Checked after every
step, together with: frozen wave membership, selector-consistent membership, success only through
approved gates, abort never spreading a revision and ending with no cluster on it.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accesspoint.rollout import ApprovalSeen, ClusterObservation, Gate, RolloutSpec, RolloutState, Wave
from tests.unit.test_rollout import A, Sim, cluster, fleet, zone_wave

REVISIONS = (A, "rev-b", "rev-c", "rev-d")
ZONES = ("zone-a", "zone-b", "zone-c", "zone-d")
APPROVAL = [Gate(type="Approval")]

SPECS: list[RolloutSpec | None] = [
    None,  # the default strategy
    RolloutSpec(
        waves=[
            zone_wave("zone-a", after=APPROVAL),
            zone_wave("zone-b", after=APPROVAL, max_concurrency=1),
            zone_wave("zone-c", after=[Gate(type="Soak", duration="1m")]),
        ]
    ),
    RolloutSpec(
        waves=[
            zone_wave("zone-x", after=APPROVAL),
            zone_wave("zone-b", before=APPROVAL, max_concurrency="50%"),
        ],
        unmatched_clusters="OwnWave",
        progress_deadline_seconds=120,
        on_failure="Abort",
    ),
    RolloutSpec(
        waves=[zone_wave("zone-a", after=APPROVAL), zone_wave("zone-c", after=APPROVAL)],
        unmatched_clusters="Ignore",
        progress_deadline_seconds=60,
    ),
    RolloutSpec(waves=[Wave(name="all", max_concurrency=2, after=APPROVAL), zone_wave("zone-d")]),
]

answer_pending = st.tuples(
    st.just("answer"),
    st.sampled_from(("Approved", "Approved", "Approved", "Rejected")),
    st.sampled_from(("alice", "alice", "")),
    st.sampled_from(("same", "same", "same", "old-revision", "next-wave")),
)
events = st.one_of(
    answer_pending,
    answer_pending,
    answer_pending,
    st.tuples(
        st.just("approve"),
        st.sampled_from((*REVISIONS, "current", "current")),
        st.integers(1, 5),
        st.sampled_from(("Before", "After")),
        st.sampled_from(("Approved", "Approved", "Rejected")),
        st.sampled_from(("alice", "alice", "")),
    ),
    st.tuples(st.just("abort"), st.sampled_from((*REVISIONS, "current"))),
    st.tuples(st.just("promote"), st.sampled_from((*REVISIONS, "current"))),
    st.tuples(st.just("revision"), st.sampled_from(REVISIONS)),
    st.tuples(st.just("join"), st.sampled_from(ZONES), st.integers(0, 99)),
    st.tuples(st.just("leave"), st.integers(0, 99)),
    st.tuples(
        st.just("health"),
        st.integers(0, 99),
        st.sampled_from(("Healthy", "Progressing", "Failed", "Unknown")),
    ),
    st.tuples(st.just("sync"), st.integers(0, 99)),
    st.tuples(st.just("sync-all")),
    st.tuples(st.just("sync-all")),
    st.tuples(st.just("tick"), st.integers(1, 200)),
    st.tuples(st.just("pause"), st.booleans()),
)


class Oracle:
    """What the test itself submitted, and the checks derived from it."""

    def __init__(self, spec: RolloutSpec | None) -> None:
        self.spec = spec
        self.approved: set[tuple[str, int, str]] = set()
        self.promoted: set[str] = set()
        self.aborted: set[str] = set()
        self.frozen: dict[tuple[int, int], list[str]] = {}
        self.epoch = 0
        self.joined = 0
        self.last_revision: str | None = None
        self.last_carrying: dict[str, set[str]] = {}

    def submitted(self, a: ApprovalSeen) -> None:
        if a.decision == "Approved" and a.approver:
            self.approved.add((a.revision, a.wave, a.gate))

    def gates_ok(self, rev: str, state: RolloutState, upto: int) -> bool:
        """Every Approval gate in the positions before `upto` was approved or carried over."""
        if rev in self.promoted:
            return True
        positions: list[tuple[str, int]] = []
        for j in range(len(state.waves)):
            positions += [("Before", j), ("Updating", j), ("After", j)]
        for p in range(min(upto, len(positions))):
            kind, j = positions[p]
            w = state.waves[j]
            gates = w.before if kind == "Before" else w.after if kind == "After" else []
            if not any(g.type == "Approval" for g in gates) or (rev, j + 1, kind) in self.approved:
                continue
            # Carried over: walking back, an approved gate comes before any released cluster.
            for q in range(p - 1, -1, -1):
                kq, jq = positions[q]
                wq = state.waves[jq]
                if kq == "Updating" and wq.released:
                    return False
                gq = wq.before if kq == "Before" else wq.after if kq == "After" else []
                if any(g.type == "Approval" for g in gq) and (rev, jq + 1, kq) in self.approved:
                    break
            else:
                return False
        return True

    def check(self, sim: Sim, previous_stable: str | None) -> None:
        state, assignments = sim.state, sim.actions.assignments
        rev, stable = state.revision, state.stable
        assert rev is not None and stable is not None
        placed = {c.name: c for c in sim.clusters}
        assert set(assignments) == set(placed)
        assert set(assignments.values()) <= {rev, stable}
        if rev != self.last_revision:
            self.epoch += 1
            self.last_revision = rev
        # Frozen membership.
        for k, w in enumerate(state.waves):
            if w.clusters is None:
                continue
            key = (self.epoch, k)
            if key not in self.frozen:  # just frozen: taken by its selector (or catch-all)
                self.frozen[key] = list(w.clusters)
                for name in w.clusters:
                    assert name in placed
                    if not w.catch_all and w.cluster_selector is not None:
                        assert w.cluster_selector.matches(placed[name].selector_labels)
            assert self.frozen[key] == w.clusters, "wave membership changed"
        carrying = {c for c, r in assignments.items() if r == rev}
        if rev != stable:
            for name in carrying:
                [k] = [k for k, w in enumerate(state.waves) if name in w.released]
                assert name in (state.waves[k].clusters or [])
                assert self.gates_ok(rev, state, 3 * k + 1), (
                    f"{name} in wave {k + 1} carries {rev} unreleased"
                )
            if state.phase == "Aborted":
                assert carrying <= self.last_carrying.get(rev, set()), "an abort spread the revision"
                if state.revert_index < 0:
                    assert carrying == set(), "abort finished with clusters on the aborted revision"
        elif stable != previous_stable and state.reason == "Completed":
            assert self.gates_ok(rev, state, 3 * len(state.waves)), f"{rev} completed without its approvals"
        if state.aborting:
            assert state.phase == "Aborted"
        self.last_carrying[rev] = carrying


def apply(sim: Sim, oracle: Oracle, event: tuple[Any, ...]) -> None:
    kind = event[0]
    names = sorted(c.name for c in sim.clusters)
    current = sim.state.revision or A
    if kind == "approve":
        _, rev, wave, gate, decision, approver = event
        rev = current if rev == "current" else rev
        a = ApprovalSeen(
            name=f"x{len(sim.approvals)}",
            revision=rev,
            wave=wave,
            gate=gate,
            decision=decision,
            approver=approver,
        )
        sim.approvals.append(a)
        oracle.submitted(a)
    elif kind == "answer" and sim.actions.approval_requests:
        _, decision, approver, twist = event
        req = sim.actions.approval_requests[0]
        rev = (
            REVISIONS[(REVISIONS.index(req.revision) + 1) % len(REVISIONS)]
            if twist == "old-revision"
            else req.revision
        )
        wave = req.wave + 1 if twist == "next-wave" else req.wave
        a = ApprovalSeen(
            name=f"x{len(sim.approvals)}",
            revision=rev,
            wave=wave,
            gate=req.gate,
            decision=decision,
            approver=approver,
        )
        sim.approvals.append(a)
        oracle.submitted(a)
    elif kind == "abort":
        sim.abort = current if event[1] == "current" else event[1]
        oracle.aborted.add(sim.abort)
    elif kind == "promote":
        sim.promote = current if event[1] == "current" else event[1]
        oracle.promoted.add(sim.promote)
    elif kind == "revision":
        sim.revision = event[1]
    elif kind == "join":
        sim.clusters.append(cluster(f"j{oracle.joined}-{event[2]}", event[1]))
        oracle.joined += 1
    elif kind == "leave" and names:
        gone = names[event[1] % len(names)]
        sim.clusters = [c for c in sim.clusters if c.name != gone]
    elif kind == "health" and names:
        name = names[event[1] % len(names)]
        seen = sim.observed.get(name) or ClusterObservation()
        sim.observed[name] = seen.model_copy(update={"health": event[2]})
    elif kind == "sync" and names:
        sim.sync(only={names[event[1] % len(names)]})
    elif kind == "sync-all":
        sim.sync()
    elif kind == "tick":
        sim.advance(event[1])
    elif kind == "pause":
        sim.pause = event[1]


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_index=st.integers(0, len(SPECS) - 1), sequence=st.lists(events, max_size=80))
def test_no_cluster_outside_a_released_wave_carries_the_new_revision(
    spec_index: int, sequence: list[tuple[Any, ...]]
) -> None:
    spec = SPECS[spec_index]
    sim = Sim(fleet(zones=ZONES[:3]), spec)
    oracle = Oracle(spec)
    oracle.check(sim, None)
    for event in sequence:
        apply(sim, oracle, event)
        previous_stable = sim.state.stable
        sim.step()
        oracle.check(sim, previous_stable)
