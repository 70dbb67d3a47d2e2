"""Dense member API servers (issue 20): the flags and environment they start with, and fleets saved before
the field existed still load."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from fleet.apiserver import ClusterProc, select_member_crds
from fleet.core import Fleet, FleetState


def proc(**extra: object) -> ClusterProc:
    return ClusterProc(name="m", role="member", dir="/tmp/m", port=1, etcd_port=2, peer_port=3, **extra)  # type: ignore[arg-type]


def test_dense_members_turn_off_the_watch_cache_priority_and_fairness_and_the_endpoint_reconciler() -> None:
    dense = proc(dense=True).command(Path("kube-apiserver"))
    assert "--watch-cache=false" in dense and "--enable-priority-and-fairness=false" in dense
    assert "--endpoint-reconciler-type=none" in dense
    plain = proc().command(Path("kube-apiserver"))
    assert not any(a.startswith(("--watch-cache", "--enable-priority-and-fairness", "--endpoint-reconciler"))
                   for a in plain)


def test_dense_members_tune_and_spread_their_garbage_collections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    dense, plain = proc(dense=True).environment(), proc().environment()
    assert dense["GOGC"] == "50" and dense["MESHFED_GC_SPREAD"] == "2m"
    assert "GOGC" not in plain and "MESHFED_GC_SPREAD" not in plain
    # One scheduler each (many members share few cores), unless GOMAXPROCS is set (Go's own knob).
    assert dense["GOMAXPROCS"] == "1" and "GOMAXPROCS" not in plain
    # Both run with their own embedded etcd, without fsync (a throw-away fleet).
    for env in (dense, plain):
        assert env["MESHFED_ETCD_DIR"] == "/tmp/m/etcd" and env["MESHFED_ETCD_NO_FSYNC"] == "1"


def test_a_gomaxprocs_in_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOMAXPROCS", "2")
    assert proc(dense=True).environment()["GOMAXPROCS"] == "2"


def test_a_fleet_saved_before_dense_existed_loads() -> None:
    saved = proc().to_dict()
    del saved["dense"]
    assert ClusterProc.from_dict(saved).dense is False
    assert ClusterProc.from_dict(proc(dense=True).to_dict()).dense is True


ISTIO, GATEWAY_API = "networking.istio.io", "gateway.networking.k8s.io"


def crd(kind: str, group: str = ISTIO) -> dict[str, Any]:
    return {"kind": "CustomResourceDefinition", "spec": {"group": group, "names": {"kind": kind}}}


def test_a_dense_fleet_installs_only_the_member_crds_asked_for() -> None:
    crds = [crd("VirtualService"), crd("DestinationRule"), crd("Gateway"), crd("Gateway", GATEWAY_API),
            crd("HTTPRoute", GATEWAY_API)]
    assert select_member_crds(crds, None) == crds
    assert select_member_crds(crds, ["DestinationRule", "VirtualService"]) == crds[:2]
    assert select_member_crds(crds, ["Gateway"]) == crds[2:4]  # a kind: every CRD of it
    assert select_member_crds(crds, ["Gateway.networking.istio.io"]) == [crds[2]]
    with pytest.raises(ValueError, match=r"no member CRD of kind Gatewy \(kinds: DestinationRule, Gateway, HTTPRoute"):
        select_member_crds(crds, ["VirtualService", "Gatewy"])


def test_the_member_crds_of_a_fleet_are_saved_with_it(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.state = FleetState(hub=proc(), members=[proc(dense=True)], member_crds=("VirtualService",))
    fleet.save()
    assert Fleet(tmp_path).state.member_crds == ("VirtualService",)  # type: ignore[union-attr]
    fleet.state.member_crds = None
    fleet.save()
    assert Fleet(tmp_path).state.member_crds is None  # type: ignore[union-attr]


def test_member_crds_are_refused_with_istio_and_unknown_kinds_before_anything_starts(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    with pytest.raises(ValueError, match="istiod needs every Istio CRD"):
        asyncio.run(fleet.up(members=1, istio=True, member_crds=["VirtualService"]))
    with pytest.raises(ValueError, match="no member CRD of kind NoSuchKind"):
        asyncio.run(fleet.up(members=1, dense=True, member_crds=["NoSuchKind"]))
    assert fleet.state is None and not (tmp_path / "fleet.json").exists()
