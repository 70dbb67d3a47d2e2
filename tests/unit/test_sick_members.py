"""Sick members (issue 19), the parts that need no API server: pending entries, the up-to-date test a
timed-out create relies on, the cache's disagreement test, the lanes' wait rule, and the request
deadlines against a local server that accepts connections and never answers (a SIGSTOPped API server)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from accesspoint.models import ClusterStatus
from accesspoint.ownership import HASH_ANNOTATION, HUB, MANAGED_BY, OWNER_NAME, OWNER_NAMESPACE, Owner
from accesspoint.plan import plan, up_to_date
from accesspoint.render import key_of
from accesspoint.status import held_entry, pending_text
from federation.kube import ApiError, Deadlines, KubeClient
from federation.lanes import MemberLane, wait_flights
from federation.members import OwnedCache
from federation.shards import Fenced


def obj(name: str, rv: str, uid: str = "u1", host: str = "a.example", digest: str = "h1") -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": rv,
                         "labels": {MANAGED_BY: "meshfed", HUB: "hub", OWNER_NAMESPACE: "ns", OWNER_NAME: "ap"},
                         "annotations": {HASH_ANNOTATION: digest}},
            "spec": {"hosts": [host]}}


def test_pending_text_and_held_entries_never_say_applied() -> None:
    assert pending_text(3, 1, 0) == "3 to create, 1 to update"
    assert pending_text(0, 0, 0) == ""
    base = ClusterStatus(name="m4", state="Applied", revision="r1", objects=3)
    slow = held_entry(base, answering=True, pending="1 to update", since="2026-12-04T16:00:00Z", why=None)
    assert (slow.state, slow.pending, slow.pending_since, slow.last_error) == \
        ("Progressing", "1 to update", "2026-12-04T16:00:00Z", None)
    hung = held_entry(base, answering=False, pending="1 to update", since="2026-12-04T16:00:00Z",
                      why="not answering since 2026-12-04T16:00:00Z: timed out")
    assert hung.state == "Unknown" and hung.revision is None and "not answering" in (hung.last_error or "")
    wire = hung.wire() if hasattr(hung, "wire") else hung.model_dump(by_alias=True)
    assert wire["pendingSince"] == "2026-12-04T16:00:00Z"


def test_up_to_date_is_the_plans_own_rule() -> None:
    desired = obj("vs", "", digest="h2", host="b.example")
    del desired["metadata"]["uid"], desired["metadata"]["resourceVersion"]
    held = obj("vs", "7", digest="h2", host="b.example")
    assert up_to_date(desired, held)
    assert plan([desired], {key_of(held): held}).empty
    assert not up_to_date(desired, obj("vs", "7", digest="h1", host="b.example"))  # an older revision
    assert not up_to_date(desired, obj("vs", "7", digest="h2", host="drifted.example"))


def test_cache_disagreement_and_highest_resource_version() -> None:
    cache = OwnedCache("hub")
    cache.replace_kind(("networking.istio.io", "VirtualService"), [obj("a", "10"), obj("b", "12")], "12")
    cache.observed(("networking.istio.io", "VirtualService"), "12")
    cache.put(obj("c", "15"))  # our own write's answer: not what a list of the member has shown
    assert cache.max_rv == {("networking.istio.io", "VirtualService"): 12}
    cache.remove(obj("c", "15"))
    kind = ("networking.istio.io", "VirtualService")
    same = [{"metadata": o["metadata"]} for o in (obj("a", "10"), obj("b", "12"))]
    assert cache.disagrees(kind, [{**o, "kind": "VirtualService", "apiVersion": "networking.istio.io/v1"}
                                  for o in same], "20") is None
    wiped: list[dict[str, Any]] = []
    assert "not on the member" in (cache.disagrees(kind, wiped, "20") or "")
    # Written after the list's snapshot: not missing.
    assert cache.disagrees(kind, [obj("a", "10")], "11") is None
    assert "another uid" in (cache.disagrees(kind, [obj("a", "10", uid="u2"), obj("b", "12")], "20") or "")
    assert "newer" in (cache.disagrees(kind, [obj("a", "15"), obj("b", "12")], "20") or "")


class FakeClient:
    """Only what wait_flights asks a member client: is it stalled."""

    def __init__(self, stalled: bool) -> None:
        self.is_stalled = stalled

    def stalled(self, after: float, own_stall: Callable[[float], float] | None = None) -> float | None:
        return 0.0 if self.is_stalled else None


async def test_a_stalled_member_is_not_waited_for_and_its_landing_reconciles_again() -> None:
    landed: list[str] = []
    healthy: MemberLane[str] = MemberLane("m1", landed.append)
    hung: MemberLane[str] = MemberLane("m4", landed.append)
    release = asyncio.Event()

    async def quick() -> str:
        return "applied"

    async def stuck() -> str:
        await release.wait()
        return "late"

    flights = {"m1": (healthy.launch("ns/ap", quick, "1 to create"), FakeClient(False)),
               "m4": (hung.launch("ns/ap", stuck, "1 to create"), FakeClient(True))}
    started = time.monotonic()
    results = await wait_flights(flights, stall_after=1.0, cap=10.0)  # type: ignore[arg-type]
    assert results == {"m1": "applied"} and time.monotonic() - started < 1.0
    assert hung.flight("ns/ap") is not None  # still in the air: the next reconcile plans nothing against it
    release.set()
    await asyncio.sleep(0.05)
    assert landed == ["ns/ap"] and hung.flight("ns/ap") is None


async def test_a_flight_left_alone_that_fails_is_retrieved_and_only_a_defect_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    """Nobody awaits a flight left alone: its failure is retrieved when it lands (no "Task exception was
    never retrieved" from asyncio); a Lease no longer held is no error, anything else is logged."""
    landed: list[str] = []
    lane: MemberLane[str] = MemberLane("m1", landed.append)

    async def fenced() -> str:
        raise Fenced("lease shard-03 is not held")

    async def broken() -> str:
        raise KeyError("a defect")

    for key, work in (("ns/fenced", fenced), ("ns/broken", broken)):
        flight = lane.launch(key, work, "1 to create")
        flight.left_alone = True
    with caplog.at_level("DEBUG"):
        await asyncio.sleep(0.05)
    assert sorted(landed) == ["ns/broken", "ns/fenced"]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == ["m1: the writes of ns/broken failed"], caplog.text
    assert errors[0].exc_info is not None and "a defect" in caplog.text and "never retrieved" not in caplog.text


async def test_a_request_to_a_server_that_never_answers_ends_at_its_deadline_without_retries() -> None:
    accepted: list[int] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
              "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
              "users": [{"name": "u", "user": {"token": "t"}}],
              "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}
    client = await KubeClient.from_kubeconfig_dict(config, "hung", attempts=3,
                                                   deadlines=Deadlines(connect=1.0, first_byte=0.5, total=2.0))
    try:
        started = time.monotonic()
        try:
            await client.request("GET", "/version")
        except ApiError as err:
            assert err.status == 0 and err.timed_out
        else:
            raise AssertionError("a server that never answers cannot succeed")
        took = time.monotonic() - started
        assert 0.4 < took < 1.5, took  # the first-byte deadline, not three attempts of it
        assert len(accepted) == 1  # a timeout is not retried
        task = asyncio.ensure_future(client.request("GET", "/version"))
        await asyncio.sleep(0.3)
        assert client.stalled(0.2) is not None and client.in_flight == 1
        # The same wait, but this process's own event loop could not run for most of it: not the member's.
        assert client.stalled(0.2, own_stall=lambda since: 0.25) is None
        assert client.stalled(0.2, own_stall=lambda since: 0.05) is not None
        await asyncio.gather(task, return_exceptions=True)
        assert client.stalled(0.2) is None
    finally:
        await client.close()
        server.close()


def test_one_slow_probe_is_not_degraded_three_in_a_row_are() -> None:
    from federation.members import judge_degraded

    state = (False, 0)
    for latency, expected in [(1.3, False), (0.05, False), (1.3, False), (1.4, False), (1.5, True),
                              (0.8, True), (0.4, False), (2.0, False), (None, False), (2.0, False), (2.0, True)]:
        state = judge_degraded(state[0], state[1], latency, 3)
        assert state[0] is expected, (latency, state)


async def test_our_own_stalls_are_measured_and_left_out() -> None:
    from federation.members import LoopStall

    stall = LoopStall()
    stall.ensure_running()
    await asyncio.sleep(0.25)
    start = time.monotonic()
    time.sleep(0.6)  # noqa: ASYNC251 - on purpose: the event loop is blocked, a probe in flight looks 0.6 s slower
    await asyncio.sleep(0.25)
    await stall.stop()
    assert 0.45 < stall.since(start) < 0.75
    assert stall.since(time.monotonic()) == 0


def test_own_stall_since_any_time_is_the_overlap_of_the_samples_after_it() -> None:
    from federation.members import LoopStall

    rng = random.Random(7)
    stall, woke = LoopStall(keep=30.0), 0.0
    for _ in range(400):
        late = rng.choice([0.02, 0.1, 0.6, 2.0])
        woke += 0.1 + late + rng.random()
        stall.record(woke, late)
    assert stall.samples[0][0] > woke - 30.0  # only the last `keep` seconds are kept
    for start in [woke - 40.0, *(woke - rng.random() * 30.0 for _ in range(300)), woke, woke + 1.0]:
        naive = sum(min(late, w - start) for w, late in stall.samples if w > start)
        assert abs(stall.since(start) - naive) < 1e-9, start


async def test_changes_seen_while_in_the_air_reconcile_once_when_it_lands() -> None:
    landed: list[str] = []
    lane: MemberLane[str] = MemberLane("m1", landed.append)
    release = asyncio.Event()

    async def writes() -> str:
        await release.wait()
        return "applied"

    quiet = lane.launch("ns/quiet", writes, "1 to create")
    busy = lane.launch("ns/busy", writes, "3 to create")
    for _ in range(3):  # the watch events of its own three creates, before their answers
        busy.changed_meanwhile = True
    release.set()
    await asyncio.gather(quiet.task, busy.task)
    await asyncio.sleep(0)
    assert landed == ["ns/busy"]


def answer(desired: dict[str, Any], rv: str, **changes: Any) -> dict[str, Any]:
    """The member's copy of `desired` at resourceVersion `rv` (a write's answer or a watch event)."""
    meta = {**desired["metadata"], "uid": f"u-{desired['metadata']['name']}", "resourceVersion": rv}
    return {**desired, "metadata": meta, **changes}


@pytest.mark.parametrize(
    ("name", "before_answers", "after_answers", "fails", "reconciled"),
    [
        # The watch events of its own two creates, before the creates' answers: nothing new.
        ("own echoes", [("a", "20"), ("b", "21")], [], False, False),
        # Someone's edit that our later write overwrote (its answer is newer): nothing new either.
        ("superseded edit", [("a", "19")], [], False, False),
        # Changes after the answers: a foreign edit of the spec, a status the member set (a VIP), a delete.
        ("edit after", [("a", "20")], [("b", "22", {"spec": {"hosts": ["other.example"]}})], False, True),
        ("status after", [("a", "20")], [("a", "23", {"status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}})],
         False, True),
        ("deleted after", [("a", "20")], [("b", None, {})], False, True),
        # The writes failed: reconciled again whatever the cache says.
        ("failed", [("a", "20")], [], True, True),
    ],
)
async def test_a_landing_reconciles_again_only_for_changes_not_its_own(
    name: str, before_answers: list[tuple[str, str]], after_answers: list[tuple[str, str | None, dict[str, Any]]],
    fails: bool, reconciled: bool,
) -> None:
    owner = Owner("hub", "ns", "ap")
    desired = {n: obj(n, "") for n in ("a", "b")}
    for d in desired.values():  # as rendered: no uid, no resourceVersion
        d["metadata"] = {k: v for k, v in d["metadata"].items() if k not in ("uid", "resourceVersion")}
    cache = OwnedCache("hub")
    landed: list[str] = []
    lane: MemberLane[str] = MemberLane("m1", landed.append)
    release = asyncio.Event()

    async def writes() -> str:
        await release.wait()
        if fails:
            raise ApiError(500, "InternalError", "etcdserver: request timed out")
        for n, rv in (("a", "20"), ("b", "21")):
            cache.put(answer(desired[n], rv), desired=desired[n])  # the creates' answers
        for n, rv_after, changes in after_answers:
            if rv_after is None:
                assert cache.remove(answer(desired[n], "21")) == "ns/ap"
            else:
                assert cache.put(answer(desired[n], rv_after, **changes)) == "ns/ap"
        return "applied"

    flight = lane.launch("ns/ap", writes, "2 to create",
                         settled=lambda: cache.holds_just(owner, list(desired.values())))
    for n, rv in before_answers:  # watch events while the writes are in the air (controller._owner_changed)
        assert cache.put(answer(desired[n], rv)) == "ns/ap"
        flight.changed_meanwhile = True
    release.set()
    await asyncio.gather(flight.task, return_exceptions=True)
    await asyncio.sleep(0)
    assert landed == (["ns/ap"] if reconciled else []), name


async def test_a_member_going_slow_and_fast_again_reconciles_its_status_not_every_accesspoint() -> None:
    from federation.members import Member, MemberRegistry, Probe
    from placement.models import MemberCluster

    changed: list[str] = []
    latency_only: list[str] = []
    registry = MemberRegistry(None, "hub", lambda *_: None, lambda name, _why: changed.append(name),  # type: ignore[arg-type]
                              probe_interval=0.01, failure_threshold=1, on_member_latency=latency_only.append)
    mc = MemberCluster.model_validate({"metadata": {"name": "m1"}, "spec": {
        "kubeconfigSecretRef": {"name": "m1", "namespace": "meshfed-system", "key": "kubeconfig"},
        "region": "r1", "zone": "r1-a"}})
    member = Member(name="m1", spec=mc, hub_id="hub", cache=OwnedCache("hub"))
    member.probe = Probe(reachable=True, ready=True, version="v1.34.4", istio=True, served=frozenset(), latency=0.1)
    # slow, slower, fast again, then upgraded (a fact); the last entry only blocks until cancelled
    script: list[tuple[float, str]] = [(0.1, "v1.34.4"), (1.6, "v1.34.4"), (2.4, "v1.34.4"), (0.1, "v1.34.4"),
                                       (0.1, "v1.35.0"), (0.1, "v1.35.0")]

    async def probe_once(m: Member) -> Probe:
        latency, version = script.pop(0)
        if not script:
            await asyncio.Event().wait()
        return Probe(reachable=True, ready=True, version=version, istio=True, served=frozenset(), latency=latency)

    registry.probe_once = probe_once  # type: ignore[method-assign,assignment]
    registry._ensure_watches = lambda m: None  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(registry._probe_loop(member))
    for _ in range(500):
        if not script:
            break
        await asyncio.sleep(0.01)
    assert not script
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await registry.stall.stop()
    # Degraded at 1.6 s, its latency 2.5 s at 2.4 s, healthy again at 0.1 s: three latency-only changes;
    # the new version is a fact (every AccessPoint reconciled).
    assert latency_only == ["m1", "m1", "m1"] and changed == ["m1"]
