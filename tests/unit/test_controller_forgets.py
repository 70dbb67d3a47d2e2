"""What the controller remembers per (AccessPoint, member) — last write time, route and zone verdicts,
reported cluster state — goes with the AccessPoint or the member: the maps stay as large as the fleet,
not its history. No API server: the hub client is never contacted."""

from __future__ import annotations

import pytest

from federation.controller import Controller


@pytest.fixture
def ctl(offline_controller: Controller) -> Controller:
    return offline_controller


def remember(ctl: Controller, ap_key: str, member: str) -> None:
    ctl._written_at[(member, ap_key)] = 1.0
    ctl._verdicts[(member, ap_key)] = None
    ctl._zone_verdicts[(member, ap_key)] = None
    ctl._last_cluster_state[(ap_key, member)] = "Applied"


def sizes(ctl: Controller) -> list[int]:
    return [len(ctl._written_at), len(ctl._verdicts), len(ctl._zone_verdicts), len(ctl._last_cluster_state)]


async def test_a_deleted_accesspoint_and_a_deleted_member_are_forgotten(ctl: Controller) -> None:
    for ap in ("team/a", "team/b"):
        for member in ("m1", "m2"):
            remember(ctl, ap, member)
    body = {"metadata": {"namespace": "team", "name": "a", "generation": 1}}
    ctl.on_accesspoint("ADDED", body)
    ctl.on_accesspoint("DELETED", body)
    assert sizes(ctl) == [2, 2, 2, 2]
    assert all(k[1] == "team/b" for k in ctl._verdicts) and all(k[0] == "team/b" for k in ctl._last_cluster_state)
    await ctl.on_membercluster("DELETED", {"metadata": {"name": "m1"}})
    assert sizes(ctl) == [1, 1, 1, 1]
    assert list(ctl._verdicts) == [("m2", "team/b")] and list(ctl._last_cluster_state) == [("team/b", "m2")]
