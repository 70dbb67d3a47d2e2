"""The members' share of the request budget (federation.kube.Slots, member_request_slots) and its
upkeep by the registry as members come and go."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

import pytest

from federation.kube import MEMBER_CONNECTIONS, MEMBER_REQUESTS_MIN, Slots, member_request_slots
from federation.members import Member, MemberRegistry, OwnedCache
from placement.models import MemberCluster


@pytest.mark.parametrize(("members", "share"), [
    (0, 16), (1, 16), (5, 16), (16, 16), (17, 15), (25, 10), (50, 5), (64, 4), (200, 4), (1000, 4)])
def test_share_of_the_budget(members: int, share: int) -> None:
    assert member_request_slots(members) == share
    assert MEMBER_REQUESTS_MIN <= share <= MEMBER_CONNECTIONS


async def _hold(slots: Slots, log: list[str], name: str, release: asyncio.Event) -> None:
    async with slots:
        log.append(name)
        await release.wait()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_slots_bound_order_and_resize() -> None:
    slots = Slots(2)
    log: list[str] = []
    gates = {n: asyncio.Event() for n in "abcde"}
    tasks = {n: asyncio.create_task(_hold(slots, log, n, gates[n])) for n in "abcde"}
    await _settle()
    assert log == ["a", "b"] and slots.held == 2
    slots.resize(1)  # smaller: nobody new until holders leave
    gates["a"].set()
    await _settle()
    assert log == ["a", "b"] and slots.held == 1
    gates["b"].set()
    await _settle()
    assert log == ["a", "b", "c"] and slots.held == 1  # first come, first served
    slots.resize(3)  # larger: the waiters come in at once
    await _settle()
    assert log == ["a", "b", "c", "d", "e"] and slots.held == 3
    for n in "cde":
        gates[n].set()
    await asyncio.gather(*tasks.values())
    assert slots.held == 0


async def test_cancelled_waiters_give_their_turn_away() -> None:
    slots = Slots(1)
    log: list[str] = []
    gates = {n: asyncio.Event() for n in "abc"}
    a = asyncio.create_task(_hold(slots, log, "a", gates["a"]))
    await _settle()
    b = asyncio.create_task(_hold(slots, log, "b", gates["b"]))
    c = asyncio.create_task(_hold(slots, log, "c", gates["c"]))
    await _settle()
    b.cancel()  # waiting: skipped
    gates["a"].set()
    await _settle()
    assert log == ["a", "c"] and slots.held == 1
    # Granted and cancelled before it ran: the slot passes on.
    d = asyncio.create_task(_hold(slots, log, "d", asyncio.Event()))
    e = asyncio.create_task(_hold(slots, log, "e", gates["c"]))
    await _settle()
    gates["c"].set()  # c leaves and grants d its turn ...
    await asyncio.sleep(0)
    d.cancel()  # ... which d never takes
    await _settle()
    assert log == ["a", "c", "e"] and slots.held == 0
    for task in (a, b, c, d, e):
        with pytest.raises(asyncio.CancelledError) if task in (b, d) else contextlib.nullcontext():
            await task


def _member(name: str) -> Member:
    mc = MemberCluster.model_validate({
        "metadata": {"name": name},
        "spec": {"kubeconfigSecretRef": {"name": f"{name}-kubeconfig", "namespace": "meshfed-system",
                                         "key": "kubeconfig"}, "region": "r1", "zone": "r1-a"}})
    return Member(name=name, spec=mc, hub_id="hub-1", cache=OwnedCache("hub-1"))


async def test_registry_shares_the_budget_as_members_come_and_go() -> None:
    registry = MemberRegistry(cast(Any, None), "hub-1", lambda *_: None, lambda *_: None)
    for i in range(50):
        member = registry.members[f"m{i}"] = _member(f"m{i}")
        registry._share_request_budget()
    assert {m.requests.size for m in registry.members.values()} == {5}
    await registry.remove("m0")  # 49 members: 256 // 49
    assert {m.requests.size for m in registry.members.values()} == {5}
    for i in range(1, 40):
        await registry.remove(f"m{i}")
    assert {m.requests.size for m in registry.members.values()} == {16}
    assert member.requests.size == 16
