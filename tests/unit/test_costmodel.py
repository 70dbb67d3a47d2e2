"""The scale bench's cost model (e2e/bench/costmodel.py): fit and projection, by table."""

from __future__ import annotations

import dataclasses
import math

import pytest

from e2e.bench.costmodel import CONNECTION_KIB, Model, PoolShare, Run, check, check_pass, fit, line, project


def run(members: int, aps: int = 200, objects_per_ap: int = 3, *, base: float = 100.0, per_member: float = 2.0,
        per_object_kib: float = 1.5, cpu_ms: float = 0.4, writes_per_ap: float = 4.0,
        connections: float = 0.0, pass_fixed: float = 0.0, per_placed: float = 0.0,
        per_unplaced: float = 0.0) -> Run:
    objects = members * aps * objects_per_ap
    idle = base + per_member * members
    return Run(members=members, aps=aps, member_objects=objects, idle_rss_mib=idle,
               loaded_rss_mib=idle + (per_object_kib * objects + connections * members * CONNECTION_KIB) / 1024,
               bulk_cpu_s=cpu_ms * objects / 1000, hub_writes=round(writes_per_ap * aps),
               connections_per_member=connections,
               pass_ms_per_ap=pass_fixed + per_placed * members,
               one_member_pass_ms_per_ap=pass_fixed + per_placed + per_unplaced * (members - 1) if per_placed else 0.0)


@pytest.mark.parametrize(("xs", "ys", "expected"), [
    ([1, 2, 3], [3, 5, 7], (1.0, 2.0)),
    ([5], [9], (9.0, 0.0)),
    ([4, 4], [1, 3], (2.0, 0.0)),
    ([0, 10], [10, 0], (10.0, -1.0)),
])
def test_line(xs: list[float], ys: list[float], expected: tuple[float, float]) -> None:
    assert line(xs, ys) == pytest.approx(expected)


def test_fit_recovers_the_terms_the_runs_were_made_with() -> None:
    model = fit([run(10), run(25)])
    assert model.base_mib == pytest.approx(100.0)
    assert model.per_member_mib == pytest.approx(2.0)
    assert model.per_object_kib == pytest.approx(1.5)
    assert model.cpu_ms_per_object == pytest.approx(0.4)
    assert model.hub_writes_per_ap == pytest.approx(4.0)
    assert check(model, run(50)) == pytest.approx(1.0), "a third run made the same way is predicted exactly"


def test_connections_are_a_cost_per_member_not_per_object() -> None:
    model = fit([run(10, connections=4.0), run(25, connections=4.0)])
    assert model.connections_per_member == pytest.approx(4.0)
    assert model.per_object_kib == pytest.approx(1.5), "the connections' buffers are not counted per object"
    assert check(model, run(50, connections=4.0)) == pytest.approx(1.0)
    assert model.rss_mib(1000, 0) == pytest.approx(100 + 2.0 * 1000 + 4.0 * 1000 * CONNECTION_KIB / 1024)


def test_check_says_how_far_off_a_run_is() -> None:
    model = fit([run(10), run(25)])
    heavier = run(50, per_object_kib=3.0)
    assert check(model, heavier) < 1.0


def test_projection_splits_objects_not_members_over_replicas() -> None:
    model = Model(base_mib=100.0, per_member_mib=1.0, per_object_kib=1.0, cpu_ms_per_object=0.5,
                  hub_writes_per_ap=4.0)
    one = project(model, members=1000, aps=2000, objects_per_ap=3, replicas=1)
    ten = project(model, members=1000, aps=2000, objects_per_ap=3, replicas=10)
    assert one.objects_per_replica == 6_000_000 and ten.objects_per_replica == 600_000
    assert one.rss_mib_per_replica == pytest.approx(100 + 1000 + 6_000_000 / 1024)
    assert ten.rss_mib_per_replica == pytest.approx(100 + 1000 + 600_000 / 1024), "every replica sees every member"
    assert ten.bulk_cpu_s_per_replica == pytest.approx(300.0)
    assert ten.hub_writes_per_replica == pytest.approx(800.0)
    three = project(model, members=1000, aps=2000, objects_per_ap=3, replicas=3)
    assert three.objects_per_replica == 2_000_000 and math.isclose(three.hub_writes_per_replica, 8000 / 3)


def test_projection_of_a_placement_on_some_members_only() -> None:
    model = Model(base_mib=100.0, per_member_mib=1.0, per_object_kib=1.0, cpu_ms_per_object=0.5,
                  hub_writes_per_ap=4.0)
    zone = project(model, members=1000, aps=2000, objects_per_ap=3, replicas=10, clusters_per_ap=30)
    assert zone.clusters_per_ap == 30 and zone.objects_per_replica == 18_000
    assert zone.rss_mib_per_replica == pytest.approx(100 + 1000 + 18_000 / 1024), "members still all watched"
    assert project(model, 10, 1, 1, 1, clusters_per_ap=50).clusters_per_ap == 10


@pytest.mark.parametrize("bad", [[], [Run(10, 0, 0, 1.0, 1.0, 0.0, 0)]])
def test_fit_refuses_runs_without_objects(bad: list[Run]) -> None:
    with pytest.raises(ValueError):
        fit(bad)


def test_project_refuses_no_replicas() -> None:
    with pytest.raises(ValueError):
        project(fit([run(10)]), 10, 10, 3, 0)


def test_the_pooled_share_of_the_connections_shrinks_with_the_members() -> None:
    pool = PoolShare(budget=256, least=4, most=16)
    assert [pool.per_member(n) for n in (1, 10, 16, 25, 50, 64, 1000)] == [16, 16, 16, 10, 5, 4, 4]

    def pooled_run(members: int) -> Run:
        made = run(members, connections=3.0 + pool.per_member(members))
        return dataclasses.replace(made, pooled_per_member=float(pool.per_member(members)))

    model = fit([pooled_run(10), pooled_run(25)], pool)
    assert model.connections_per_member == pytest.approx(3.0), "the rest: watches and the probe's"
    assert model.per_object_kib == pytest.approx(1.5)
    assert model.connections(10) == 19 and model.connections(50) == 8 and model.connections(1000) == 7
    assert check(model, pooled_run(50)) == pytest.approx(1.0), "50 members: 5 pooled each, predicted"
    unpooled = fit([pooled_run(10), pooled_run(25)])
    assert unpooled.connections(1000) == pytest.approx(3.0), "without the pool: only the rest"


def test_fit_recovers_a_full_pass_fixed_placed_and_unplaced_terms() -> None:
    terms = {"pass_fixed": 0.5, "per_placed": 0.9, "per_unplaced": 0.01}
    model = fit([run(10, **terms), run(25, **terms)])
    assert (model.pass_ms_fixed, model.pass_ms_per_placed, model.pass_ms_per_unplaced) == \
        pytest.approx((0.5, 0.9, 0.01))
    assert check_pass(model, run(50, **terms)) == pytest.approx(1.0)
    assert check_pass(model, run(50, pass_fixed=0.5, per_placed=1.8)) == pytest.approx((0.5 + 45) / (0.5 + 90))
    assert check_pass(model, run(50)) is None, "a run without passes is not checked"


def test_a_full_pass_is_projected_over_each_replicas_accesspoints_and_every_member() -> None:
    model = Model(base_mib=100.0, per_member_mib=1.0, per_object_kib=1.0, cpu_ms_per_object=0.5,
                  hub_writes_per_ap=4.0, pass_ms_fixed=1.0, pass_ms_per_placed=0.5, pass_ms_per_unplaced=0.01)
    everywhere = project(model, members=1000, aps=2000, objects_per_ap=3, replicas=10)
    assert everywhere.pass_cpu_s_per_replica == pytest.approx(200 * (1.0 + 0.5 * 1000) / 1000)
    zone = project(model, members=1000, aps=2000, objects_per_ap=3, replicas=3, clusters_per_ap=30)
    assert zone.pass_cpu_s_per_replica == pytest.approx(667 * (1.0 + 0.5 * 30 + 0.01 * 970) / 1000), \
        "the busiest replica's AccessPoints, each costing its unplaced members too"
    # A member's own state moving plans only the AccessPoints placed on it: 2,000 x 30 / 1,000 = 60 of them,
    # 20 on the busiest of 3 replicas; on every member, all of them.
    assert zone.member_change_cpu_s_per_replica == pytest.approx(20 * (1.0 + 0.5 * 30 + 0.01 * 970) / 1000)
    assert everywhere.member_change_cpu_s_per_replica == everywhere.pass_cpu_s_per_replica


def test_passes_at_one_member_count_are_all_per_member_placed_on() -> None:
    model = fit([run(10, pass_fixed=2.0, per_placed=0.8), run(10, pass_fixed=2.0, per_placed=0.8)])
    assert model.pass_ms_fixed == 0.0 and model.pass_ms_per_placed == pytest.approx(1.0)
    assert fit([run(10), run(25)]).pass_ms_per_ap(1000, 30) == 0.0, "not measured: no pass cost projected"


def test_the_unplaced_term_is_a_slope_so_each_edits_own_cost_drops_out() -> None:
    edited = [dataclasses.replace(r, one_member_pass_ms_per_ap=r.one_member_pass_ms_per_ap + 2.0)
              for r in (run(10, pass_fixed=0.5, per_placed=0.9, per_unplaced=0.01),
                        run(25, pass_fixed=0.5, per_placed=0.9, per_unplaced=0.01))]
    assert fit(edited).pass_ms_per_unplaced == pytest.approx(0.01)
    alone = fit(edited[:1])  # one member count: a bound, the fixed part and the edit's 2 ms spread over 9 members
    assert alone.pass_ms_per_placed == pytest.approx(0.95)
    assert alone.pass_ms_per_unplaced == pytest.approx((0.5 + 0.9 + 0.09 + 2.0 - 0.95) / 9)
