"""The rollout state machine with measured health: waves wait on the HTTP probe, and the Analysis gate
passes, fails (Pause holds, Abort reverts) or waits on the gathered figures. Fake clock, pure step."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accesspoint.health import AnalysisFigures, AnalysisSpec, HttpProbe, TrafficFigures
from accesspoint.meta import LabelSelector
from accesspoint.rollout import (
    CLUSTER_NAME_LABEL,
    ClusterObservation,
    Gate,
    HealthChecks,
    RolloutSpec,
    Wave,
)
from tests.unit.test_rollout import A, B, C, Sim, fleet, zone_wave

PROBE = HealthChecks(http=HttpProbe(url="https://${fqdn}/healthz"))
ANALYSIS = AnalysisSpec(window="60s", interval="5s", min_requests=10, max_5xx_ratio=0.05, max_wait="5m")


def canary_spec(on_failure: str = "Pause", **kw: Any) -> RolloutSpec:
    return RolloutSpec(
        waves=[
            Wave(name="canary", cluster_selector=LabelSelector(match_labels={CLUSTER_NAME_LABEL: "a1"}),
                 after=[Gate(type="Analysis", analysis=ANALYSIS)]),
            Wave(name="rest"),
        ],
        on_failure=on_failure,  # type: ignore[arg-type]
        **kw,
    )


def good(requests: int = 100) -> TrafficFigures:
    return TrafficFigures(requests=requests, errors=0, latency=[(10.0, requests)])


def bad(requests: int = 100) -> TrafficFigures:
    return TrafficFigures(requests=requests, errors=requests // 2, latency=[(10.0, requests)])


def feed(sim: Sim, seconds: float, canary: TrafficFigures, key: str | None = None) -> None:
    request = sim.actions.analysis
    assert request is not None or key is not None
    sim.analysis = AnalysisFigures(
        key=key or (request.key if request else ""), seconds=seconds,
        clusters={"a1": canary, **{c: good(200) for c in (request.stable if request else [])}},
    )


class HealthSim(Sim):
    """Sim whose inputs carry the gathered Analysis figures."""

    analysis: AnalysisFigures | None = None

    def inputs(self) -> Any:
        return super().inputs().model_copy(update={"analysis": self.analysis})


def started(spec: RolloutSpec, health: str = "Healthy") -> HealthSim:
    sim = HealthSim(fleet(zones=("zone-a", "zone-b")), spec)
    sim.revision = B
    sim.step()
    sim.sync(health)
    sim.step()
    return sim


# ---------------------------------------------------------------------------------------------
# probes


def test_a_wave_waits_on_the_probe_and_only_its_clusters_are_probed() -> None:
    spec = RolloutSpec(waves=[zone_wave("zone-a"), zone_wave("zone-b")], health_checks=PROBE)
    sim = started(spec, health="Progressing")  # applied, the probe has not passed yet
    assert sim.carrying(B) == {"a1", "a2"}
    assert sim.actions.probes == ["a1", "a2"]
    assert (sim.state.phase, sim.state.reason) == ("Progressing", "Updating")
    sim.observed["a1"] = ClusterObservation(revision=B, health="Healthy")
    sim.step()
    assert sim.actions.probes == ["a2"] and sim.carrying(B) == {"a1", "a2"}  # a2 still holds the wave
    sim.observed["a2"] = ClusterObservation(revision=B, health="Healthy")
    sim.step()
    assert sim.carrying(B) == {"a1", "a2", "b1", "b2"}
    assert sim.actions.probes == []  # b1, b2 do not report B yet: nothing to probe
    sim.sync("Progressing", only={"b1", "b2"})
    sim.step()
    assert sim.actions.probes == ["b1", "b2"]
    sim.sync("Healthy")
    sim.step()
    assert sim.state.phase == "Succeeded" and sim.actions.probes == []


def test_no_probe_traffic_without_a_probe_or_a_rollout_in_flight() -> None:
    plain = started(RolloutSpec(waves=[zone_wave("zone-a"), zone_wave("zone-b")]), health="Progressing")
    assert plain.actions.probes == []  # no healthChecks.http
    sim = HealthSim(fleet(zones=("zone-a", "zone-b")), RolloutSpec(waves=[zone_wave("zone-a")], health_checks=PROBE))
    sim.sync("Progressing")
    sim.step()
    assert sim.state.phase == "Succeeded" and sim.actions.probes == []  # the first revision: nothing to verify
    paused = started(RolloutSpec(waves=[zone_wave("zone-a")], health_checks=PROBE), health="Progressing")
    paused.pause = True
    paused.step()
    assert paused.state.phase == "Paused" and paused.actions.probes == []


def test_a_failing_probe_pauses_naming_cluster_url_and_answer_then_recovers() -> None:
    spec = RolloutSpec(waves=[zone_wave("zone-a"), zone_wave("zone-b")], health_checks=PROBE)
    sim = started(spec, health="Progressing")
    why = "probe failed 3x in a row (failureThreshold 3): GET https://shop.example/healthz via 127.100.1.1:443: " \
          "503 (expected 200) in 3 ms"
    sim.observed["a1"] = ClusterObservation(revision=B, health="Failed", message=why)
    sim.step()
    assert (sim.state.phase, sim.state.reason) == ("Degraded", "HealthFailed")
    assert f"health check failed on a1 ({why})" in sim.state.message
    assert sim.carrying(B) == {"a1", "a2"}  # nothing reaches the next wave
    assert sim.actions.probes == ["a1", "a2"]  # still probed: it recovers on its own
    sim.advance(3600)
    sim.step()
    assert sim.carrying(B) == {"a1", "a2"} and sim.state.reason == "HealthFailed"
    sim.observed["a1"] = ClusterObservation(revision=B, health="Healthy")
    sim.observed["a2"] = ClusterObservation(revision=B, health="Healthy")
    sim.settle()
    assert sim.state.phase == "Succeeded"


def test_a_failing_probe_aborts_with_on_failure_abort() -> None:
    spec = RolloutSpec(waves=[zone_wave("zone-a"), zone_wave("zone-b")], health_checks=PROBE, on_failure="Abort")
    sim = started(spec, health="Progressing")
    sim.observed["a1"] = ClusterObservation(revision=B, health="Failed", message="probe failed: timed out after 5s")
    sim.step()
    assert (sim.state.phase, sim.state.reason) == ("Aborted", "HealthFailed")
    assert "a1 (probe failed: timed out after 5s)" in sim.state.message
    assert sim.carrying(B) == set() and sim.actions.probes == []


# ---------------------------------------------------------------------------------------------
# the Analysis gate


def at_gate(on_failure: str = "Pause") -> HealthSim:
    sim = started(canary_spec(on_failure))
    assert sim.carrying(B) == {"a1"}
    assert (sim.state.phase, sim.state.reason) == ("Progressing", "Analyzing"), sim.state
    return sim


def test_the_analysis_gate_asks_for_figures_of_canary_and_stable() -> None:
    sim = at_gate()
    request = sim.actions.analysis
    assert request is not None
    assert request.key == f"{B}/w1/after/0"
    assert request.canary == ["a1"] and request.stable == ["a2", "b1", "b2"]
    assert request.window == timedelta(seconds=60) and request.interval == timedelta(seconds=5)
    assert sim.actions.requeue_after == timedelta(seconds=5)
    assert "AnalysisStarted" in sim.events
    assert "a1: 0/10 requests" in sim.state.message


def test_a_good_canary_passes_after_the_whole_window() -> None:
    sim = at_gate()
    feed(sim, 30, good())
    sim.advance(30)
    sim.step()
    assert sim.state.reason == "Analyzing" and sim.carrying(B) == {"a1"} and "30s left" in sim.state.message
    feed(sim, 60, good())
    sim.advance(30)
    sim.step()
    assert "AnalysisPassed" in sim.events and sim.actions.analysis is None
    assert sim.carrying(B) == {"a1", "a2", "b1", "b2"}
    sim.settle()
    assert sim.state.phase == "Succeeded"


def test_a_bad_canary_fails_at_once_and_pause_holds_it_there() -> None:
    sim = at_gate()
    feed(sim, 8, bad())
    sim.advance(8)
    sim.step()
    assert (sim.state.phase, sim.state.reason) == ("Paused", "AnalysisFailed")
    assert "wave 1/2 canary: analysis failed: a1: 50/100 5xx (50.0%), p95 10 ms: 5xx 50.0% > max5xxRatio 5.0%" \
        in sim.state.message, sim.state.message
    assert "vs stable a2,b1,b2: 0/600 5xx (0.0%)" in sim.state.message
    assert sim.carrying(B) == {"a1"} and sim.actions.analysis is None
    assert sim.events.count("AnalysisFailed") == 1
    # Better figures later change nothing: the decision was made; a person decides what next.
    feed(sim, 60, good(), key=f"{B}/w1/after/0")
    sim.advance(600)
    sim.settle()
    assert sim.state.reason == "AnalysisFailed" and sim.carrying(B) == {"a1"}
    assert sim.events.count("AnalysisFailed") == 1
    # promote --full skips the failed gate.
    sim.promote = B
    sim.settle()
    assert sim.state.phase == "Succeeded"


def test_a_bad_canary_aborts_with_on_failure_abort() -> None:
    sim = at_gate("Abort")
    feed(sim, 8, bad())
    sim.step()
    assert (sim.state.phase, sim.state.reason) == ("Aborted", "AnalysisFailed")
    assert "50/100 5xx" in sim.state.message
    assert sim.carrying(B) == set()
    sim.settle()
    assert sim.carrying(B) == set() and "back on stable revision" in sim.state.message


def test_figures_of_another_gate_are_ignored_and_a_new_revision_starts_over() -> None:
    sim = at_gate()
    feed(sim, 60, bad(), key=f"{A}/w1/after/0")
    sim.step()
    assert sim.state.reason == "Analyzing"
    feed(sim, 8, bad())
    sim.step()
    assert sim.state.reason == "AnalysisFailed"
    sim.revision = C
    sim.step()
    sim.sync()
    sim.step()
    assert sim.state.reason == "Analyzing" and sim.actions.analysis is not None
    assert sim.actions.analysis.key == f"{C}/w1/after/0" and sim.state.gate_failed == ""


def test_not_enough_traffic_fails_after_max_wait() -> None:
    sim = at_gate()
    feed(sim, 120, good(3))
    sim.advance(299)
    sim.step()
    assert sim.state.reason == "Analyzing" and sim.actions.requeue_after == timedelta(seconds=1)
    sim.advance(1)
    sim.step()
    assert sim.state.reason == "AnalysisFailed"
    assert "not enough traffic to judge after 300s (maxWait 5m): a1: 3/10 requests" in sim.state.message


def test_time_at_the_analysis_gate_does_not_count_against_the_progress_deadline() -> None:
    sim = started(canary_spec(progress_deadline_seconds=30))
    sim.advance(200)
    sim.step()
    assert sim.state.reason == "Analyzing"


# ---------------------------------------------------------------------------------------------
# property: nothing passes an Analysis gate without passing figures (or promote --full)

moves = st.one_of(
    st.tuples(st.just("figures"), st.sampled_from(("good", "bad", "thin")), st.integers(0, 90)),
    st.tuples(st.just("tick"), st.integers(1, 120)),
    st.tuples(st.just("sync")),
    st.tuples(st.just("sync")),
    st.tuples(st.just("health"), st.sampled_from(("Healthy", "Progressing", "Failed"))),
    st.tuples(st.just("promote")),
    st.tuples(st.just("abort")),
    st.tuples(st.just("pause"), st.booleans()),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(on_failure=st.sampled_from(("Pause", "Abort")), sequence=st.lists(moves, max_size=40))
def test_nothing_passes_an_analysis_gate_without_passing_figures(on_failure: str, sequence: list[Any]) -> None:
    sim = started(canary_spec(on_failure, health_checks=PROBE))  # at the gate
    passing_figures = promoted = False
    failed = False
    for move in sequence:
        kind = move[0]
        if kind == "figures" and sim.actions.analysis is not None:
            figs = {"good": good(), "bad": bad(), "thin": good(2)}[move[1]]
            feed(sim, move[2], figs)
            passing_figures |= move[1] == "good" and move[2] >= 60
        elif kind == "tick":
            sim.advance(move[1])
        elif kind == "sync":
            sim.sync()
        elif kind == "health":
            seen = sim.observed.get("a1") or ClusterObservation()
            sim.observed["a1"] = seen.model_copy(update={"health": move[1]})
        elif kind == "promote":
            sim.promote = B
            promoted = True
        elif kind == "abort":
            sim.abort = B
        elif kind == "pause":
            sim.pause = move[1]
        sim.step()
        failed |= sim.state.reason == "AnalysisFailed"
        outside = sim.carrying(B) - {"a1"}
        if outside:
            assert promoted or (passing_figures and not failed), (sim.state, sim.events)
        if sim.actions.probes:
            assert set(sim.actions.probes) <= {c for c, r in sim.actions.assignments.items() if r == B}
            assert not sim.state.aborting and not sim.pause
        if sim.actions.analysis is not None:
            assert sim.state.reason == "Analyzing" and sim.actions.analysis.canary == ["a1"]
