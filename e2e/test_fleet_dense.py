"""A dense fleet of real API servers (issue 20): members carry only the CRDs asked for, start with the
density settings and, asked to, apart from each other; meshfed-apiserver refuses a malformed
MESHFED_GC_SPREAD in one line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from fleet import Fleet
from fleet.build import apiserver_binary

CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
def _proc(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def _started_ticks(pid: int) -> int:
    """When the process started, in clock ticks after boot (/proc/<pid>/stat field 22)."""
    return int(_proc(pid, "stat").rsplit(b")", 1)[1].split()[19])


READY_KINDS = ["DestinationRule", "Gateway.networking.istio.io", "ServiceEntry", "VirtualService", "WorkloadEntry"]


async def test_a_dense_member_gets_only_the_crds_asked_for(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    try:
        await fleet.up(members=1, regions=1, zones=1, vip_allocator=False, dense=True, member_crds=READY_KINDS,
                       start_interval=2.0)
        assert fleet.state is not None
        member = fleet.state.members[0]
        # Started apart (`fleet up --start-interval`): the member 2 s after the hub, by the kernel's clock.
        apart = (_started_ticks(member.pid) - _started_ticks(fleet.state.hub.pid)) / os.sysconf("SC_CLK_TCK")
        assert 1.9 <= apart < 10, apart
        client = await member.client()
        try:
            items, _ = await client.list(CRD_PATH)
        finally:
            await client.close()
        assert sorted(f"{c['spec']['names']['kind']}.{c['spec']['group']}" for c in items) == [
            "DestinationRule.networking.istio.io", "Gateway.networking.istio.io",
            "ServiceEntry.networking.istio.io", "VirtualService.networking.istio.io",
            "WorkloadEntry.networking.istio.io"]  # no Gateway API Gateway, none of the other 16
        env = _proc(member.pid, "environ").split(b"\0")
        assert b"MESHFED_GC_SPREAD=2m" in env
        assert "--endpoint-reconciler-type=none" in _proc(member.pid, "cmdline").decode()
        # Saved with the fleet: a member added later gets the same CRDs.
        assert Fleet(tmp_path).state.member_crds == tuple(READY_KINDS)  # type: ignore[union-attr]
    finally:
        fleet.down(purge=True)


def test_a_malformed_gc_spread_is_refused_in_one_line() -> None:
    done = subprocess.run([str(apiserver_binary(quiet=True))], env={**os.environ, "MESHFED_GC_SPREAD": "soon"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == ('meshfed-apiserver: MESHFED_GC_SPREAD must be a duration of 2s or more, such as '
                                   '2m (got "soon")')
