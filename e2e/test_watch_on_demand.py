"""Watch on demand (issue 20): a member is watched only for the kinds some AccessPoint plans there or of
which it holds objects of ours. Hub + 1 member (real kube-apiservers); the member's own metrics say
which watches are open (apiserver_longrunning_requests) and which kinds were listed.

- At start every kind the member serves is listed once, so an object of ours of a kind nobody uses any
  more is found (and pruned by its AccessPoint); then only the used kinds stay watched.
- A kind planned for the first time is listed before anything is planned against it, then watched
  (drift on it is reverted by the watch); when its last object goes, its watch stops.
- An object of ours of an unwatched kind appearing later (an older replica's, a restore) is found by
  the periodic verification (--verify-interval) and handled.
- A Lease renewal that comes late (the hub stopped past the renew deadline) lists nothing again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

import pytest

from accesspoint.ownership import HUB, MANAGED_BY, OWNER_NAME, OWNER_NAMESPACE
from federation.kube import KubeClient
from fleet import Fleet, ensure_namespace
from fleet.testing import (
    FAST_LEASES,
    create_namespace,
    eventually,
    metric_value,
    open_watches,
    request_breakdown,
    running_controller,
    wait_condition,
)

pytestmark = pytest.mark.e2e

# No VIP allocator: its own watch of Services would come and go in the member's count of watches.
FLEET = {"members": 1, "regions": 1, "zones": 1, "vip_allocator": False}
AP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
SIDECARS = "/apis/networking.istio.io/v1/namespaces/{ns}/sidecars"
SERVICES = "/api/v1/namespaces/{ns}/services"


async def lists_of(member: KubeClient, resource: str) -> int:
    return sum((await request_breakdown(member, ("LIST",), (resource,))).values())


def service(port: int = 80) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "${name}"},
            "spec": {"selector": {"app": "${name}"}, "ports": [{"name": "http", "port": port}]}}


def sidecar(hosts: str = "./*") -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": {"name": "${name}"},
            "spec": {"egress": [{"hosts": [hosts]}]}}


def accesspoint(ns: str, name: str, template: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": name, "namespace": ns},
            "spec": {"template": template, "rollout": {"waves": [{"name": "all"}]}}}


def stray_sidecar(ns: str, name: str, owner: str) -> dict[str, Any]:
    """A Sidecar labelled as AccessPoint `owner`'s, whose template has none (left from an older template)."""
    return {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": name, "namespace": ns,
                         "labels": {MANAGED_BY: "meshfed", HUB: "meshfed-hub", OWNER_NAMESPACE: ns,
                                    OWNER_NAME: owner}},
            "spec": {"egress": [{"hosts": ["./*"]}]}}


async def test_only_used_kinds_are_watched(fleet: Fleet, hub: KubeClient, members: dict[str, KubeClient]) -> None:
    member = members["member-1"]
    ns = await create_namespace(hub)
    await hub.create(AP.format(ns=ns), accesspoint(ns, "keeper", [service()]), field_manager="e2e")
    await ensure_namespace(member, ns)
    await member.create(SIDECARS.format(ns=ns), stray_sidecar(ns, "left-over", "keeper"), field_manager="e2e")
    sidecar_lists = await lists_of(member, "sidecars")
    own = await open_watches(member)  # the API server's own (its loopback informers)

    with running_controller(fleet, extra=["--verify-interval", "2"]) as ctl:
        # The start lists every kind, Sidecars included: keeper's left-over Sidecar is found and pruned.
        await wait_condition(hub, f"{AP.format(ns=ns)}/keeper", "Applied", timeout=60)
        await eventually(lambda: _absent(member, f"{SIDECARS.format(ns=ns)}/left-over"), 30,
                         message="the Sidecar of a kind no template uses should be found at start and pruned")
        assert await lists_of(member, "sidecars") > sidecar_lists

        # Then only Services stay watched; the controller's gauge says the same as the member.
        async def ours() -> dict[str, int]:
            now = await open_watches(member)
            return {r: n - own.get(r, 0) for r, n in now.items() if n != own.get(r, 0)}

        async def only_services() -> dict[str, int] | None:
            watches = await ours()
            gauge = metric_value((await _metrics(ctl)), "meshfed_member_watches", cluster="member-1")
            return watches if set(watches) == {"services"} and gauge == sum(watches.values()) else None

        await eventually(only_services, 30, message=f"only services watched on the member: {await ours()}")

        # A Sidecar planned for the first time: listed, created, watched; drift on it is reverted.
        await hub.create(AP.format(ns=ns), accesspoint(ns, "edge", [sidecar()]), field_manager="e2e")
        await wait_condition(hub, f"{AP.format(ns=ns)}/edge", "Applied", timeout=60)
        assert (await ours()).get("sidecars") == 1
        await member.merge_patch(f"{SIDECARS.format(ns=ns)}/edge", {"spec": {"egress": [{"hosts": ["drift/*"]}]}})
        await eventually(lambda: _hosts(member, f"{SIDECARS.format(ns=ns)}/edge", "./*"), 30,
                         message="drift on the Sidecar should be reverted by its watch")

        # Its AccessPoint deleted: the Sidecar goes, and with the last Sidecar its watch.
        await hub.delete(f"{AP.format(ns=ns)}/edge")
        await eventually(lambda: _absent(member, f"{SIDECARS.format(ns=ns)}/edge"), 30, message="edge's Sidecar")
        await eventually(only_services, 30, message="the Sidecar watch should stop with the last Sidecar")

        # One of ours appearing while Sidecars are unwatched: the verification lists it, keeper prunes it.
        await member.create(SIDECARS.format(ns=ns), stray_sidecar(ns, "late", "keeper"), field_manager="e2e")
        await eventually(lambda: _absent(member, f"{SIDECARS.format(ns=ns)}/late"), 30,
                         message="a Sidecar of ours on an unwatched kind should be found by the verification")
        await eventually(only_services, 30, message="and the Sidecar watch stops again")


async def _metrics(ctl: Any) -> str:
    code, text = ctl.http("/metrics")
    assert code == 200
    return str(text)


async def _absent(client: KubeClient, path: str) -> bool:
    return await client.get(path) is None


async def _hosts(client: KubeClient, path: str, host: str) -> bool:
    obj = await client.get(path) or {}
    return bool(((obj.get("spec") or {}).get("egress") or [{}])[0].get("hosts") == [host])


async def test_a_restarted_controller_compares_what_it_lists_once_and_writes_nothing(
        fleet: Fleet, hub: KubeClient, members: dict[str, KubeClient]) -> None:
    """The member caches keep compact records (federation/members.py `compact`): what a restarted
    controller lists comes whole, is compared with what it should be at its AccessPoint's plan, and is
    then kept as a record with the verdict; an unchanged member gets no write."""
    ns = await create_namespace(hub)
    await hub.create(AP.format(ns=ns), accesspoint(ns, "kept", [service(), sidecar()]), field_manager="e2e")
    with running_controller(fleet) as ctl:
        await wait_condition(hub, f"{AP.format(ns=ns)}/kept", "Applied", timeout=60)
        # The count read below is the one that sees writes (the first controller created both objects).
        assert metric_value(await _metrics(ctl), "meshfed_member_writes_total", cluster="member-1") >= 2
    with running_controller(fleet) as ctl:
        async def compared() -> dict[str, int] | None:
            try:
                code, text = ctl.http("/debug/caches")
            except OSError:  # not listening yet (the process is starting)
                return None
            if code != 200:
                return None
            mine = json.loads(text)["members"].get("member-1") or {}
            return mine if mine.get("objects", 0) >= 2 and mine.get("whole") == 0 else None

        seen = await eventually(compared, 60, message="the listed objects should be compared and kept compact")
        assert seen is not None and seen["bytes"] > 0
        writes = metric_value(await _metrics(ctl), "meshfed_member_writes_total", cluster="member-1")
        assert writes == 0, f"an unchanged member got {writes} writes from the restarted controller"


async def test_a_late_lease_renewal_relists_nothing(fleet: Fleet, hub: KubeClient,
                                                     members: dict[str, KubeClient]) -> None:
    """A Lease round slower than the renew deadline (the hub's API server stopped past it: what a starved
    hub or controller does on a loaded machine) drops the controller's Leases; its next round takes them
    back (federation/shards.py `cached_shards`). The member watches go on meanwhile: nothing is listed
    again (before, every kind of every member was listed twice: narrowed to no shard, then widened)."""
    assert fleet.state is not None
    member = members["member-1"]
    ns = await create_namespace(hub)
    path = f"{AP.format(ns=ns)}/steady"
    await hub.create(AP.format(ns=ns), accesspoint(ns, "steady", [service()]), field_manager="e2e")
    # No periodic verification: its lists would be counted with the relists this test looks for.
    with running_controller(fleet, extra=[*FAST_LEASES, "--verify-interval", "0"]) as ctl:
        await wait_condition(hub, path, "Applied", timeout=60)
        await eventually(lambda: _gauge(ctl, "meshfed_shards_held", 32), 30, message="every shard held")
        lists = {r: await lists_of(member, r) for r in ("services", "sidecars")}
        lost = metric_value(await _metrics(ctl), "meshfed_lease_transitions_total", kind="shard", transition="lost")
        hub_pid = fleet.state.hub.pid
        os.kill(hub_pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(float(FAST_LEASES[3]) + 1.5)  # the renew deadline, and more
        finally:
            os.kill(hub_pid, signal.SIGCONT)

        async def dropped_and_taken_back() -> bool:
            text = await _metrics(ctl)
            return metric_value(text, "meshfed_lease_transitions_total", kind="shard", transition="lost") > lost \
                and metric_value(text, "meshfed_shards_held") == 32

        await eventually(dropped_and_taken_back, 30, message="the late round should drop the Leases, the next "
                                                             "take them back")
        # The controller works again, through the watch it kept: an edit reaches the member.
        await hub.merge_patch(path, {"spec": {"template": [service(port=8080)]}})
        await eventually(lambda: _port(member, f"{SERVICES.format(ns=ns)}/steady", 8080), 30,
                         message="the edit after the late renewal should reach the member")
        assert {r: await lists_of(member, r) for r in lists} == lists, "the member was listed again"


async def _gauge(ctl: Any, name: str, value: float) -> bool:
    return metric_value(await _metrics(ctl), name) == value


async def _port(client: KubeClient, path: str, port: int) -> bool:
    obj = await client.get(path) or {}
    return [p.get("port") for p in (obj.get("spec") or {}).get("ports") or []] == [port]
