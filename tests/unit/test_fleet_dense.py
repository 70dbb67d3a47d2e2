"""Dense member API servers (issue 20): the flags and environment they start with, and fleets saved before
the field existed still load."""

from __future__ import annotations

from pathlib import Path

from fleet.apiserver import ClusterProc


def proc(**extra: object) -> ClusterProc:
    return ClusterProc(name="m", role="member", dir="/tmp/m", port=1, etcd_port=2, peer_port=3, **extra)  # type: ignore[arg-type]


def test_dense_members_turn_off_the_watch_cache_and_priority_and_fairness() -> None:
    dense = proc(dense=True).command(Path("kube-apiserver"))
    assert "--watch-cache=false" in dense and "--enable-priority-and-fairness=false" in dense
    plain = proc().command(Path("kube-apiserver"))
    assert not any(a.startswith(("--watch-cache", "--enable-priority-and-fairness")) for a in plain)


def test_a_fleet_saved_before_dense_existed_loads() -> None:
    saved = proc().to_dict()
    del saved["dense"]
    assert ClusterProc.from_dict(saved).dense is False
    assert ClusterProc.from_dict(proc(dense=True).to_dict()).dense is True
