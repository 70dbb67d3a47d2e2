"""federation.shards, the pure parts: the shard of an object and the placement of shards over replicas.

Property tests drive `plan_shards` the way the Lease loop does: every round each live replica reads a
snapshot of the holders (all replicas read before any writes: stale views), releases what it plans
to release, and takes a shard only if its Lease still shows what the snapshot showed (the
compare-and-swap of an update at a resourceVersion). From any start (shards held by dead replicas,
by too many live ones, or free) the placement converges to the exact targets, never holds a shard
twice and never gives a replica more than ceil(N/R).
"""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from federation.shards import (
    LeaseTiming,
    Observed,
    fair_share,
    lease_shard,
    live_holder,
    owner_name,
    plan_shards,
    shard_lease,
    shard_of,
    targets,
)


def test_shard_of_is_stable_and_spread() -> None:
    # Stable across processes and versions (SHA-256, not Python's salted hash): fixed values.
    assert shard_of("shop", "checkout", 32) == shard_of("shop", "checkout", 32)
    assert [shard_of("default", f"ap-{i}", 32) for i in range(5)] == [
        shard_of("default", f"ap-{i}", 32) for i in range(5)]
    counts = [0] * 32
    for i in range(3200):
        counts[shard_of("ns", f"ap-{i}", 32)] += 1
    assert min(counts) > 50 and max(counts) < 150, counts


def test_followers_hash_their_accesspoint() -> None:
    ns = {"metadata": {"namespace": "shop", "name": "www"},
          "spec": {"target": {"accessPointRef": {"name": "checkout"}}}}
    standalone = {"metadata": {"namespace": "shop", "name": "static"}, "spec": {"target": {"static": []}}}
    cert = {"metadata": {"namespace": "shop", "name": "checkout"}, "spec": {"accessPointRef": {"name": "checkout"}}}
    approval = {"metadata": {"namespace": "shop", "name": "checkout-r1-w1"}, "spec": {"accessPoint": "checkout"}}
    assert owner_name("NameService", ns) == ("shop", "checkout")
    assert owner_name("NameService", standalone) == ("shop", "static")
    assert owner_name("Certificate", cert) == ("shop", "checkout")
    assert owner_name("RolloutApproval", approval) == ("shop", "checkout")
    assert owner_name("AccessPoint", cert) == ("shop", "checkout")


def test_lease_keys_round_trip() -> None:
    assert shard_lease(7) == "shard-07"
    assert lease_shard("shard-07") == 7
    assert lease_shard("members") is None
    assert lease_shard("replica-shard-07") is None


def test_targets_are_exact() -> None:
    assert targets(["b", "a", "c"], 32) == {"a": 11, "b": 11, "c": 10}
    assert targets(["a"], 32) == {"a": 32}
    assert targets(["a", "b"], 1) == {"a": 1, "b": 0}
    assert fair_share(32, 3) == 11


def test_lease_timing_needs_deadline_below_duration() -> None:
    LeaseTiming(15, 10.0, 2.0)
    for bad in ((10, 10.0, 2.0), (15, 1.0, 2.0), (15, 20.0, 2.0)):
        try:
            LeaseTiming(*bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")


def test_one_replica_takes_everything_free() -> None:
    moves = plan_shards("a", ["a"], {}, 32)
    assert sorted(moves.acquire) == list(range(32)) and not moves.release


def test_newcomer_gets_released_shards() -> None:
    holders = {s: ("a" if s < 16 else "b") for s in range(32)}
    # a and b see c: each releases down to its target; c takes what is free.
    ra = plan_shards("a", ["a", "b", "c"], holders, 32)
    rb = plan_shards("b", ["a", "b", "c"], holders, 32)
    assert len(ra.release) == 5 and len(rb.release) == 5  # targets 11, 11, 10
    for s in (*ra.release, *rb.release):
        del holders[s]
    rc = plan_shards("c", ["a", "b", "c"], holders, 32)
    assert len(rc.acquire) == 10 and not set(rc.acquire) & set(holders)


@settings(max_examples=200, deadline=None)
@given(shards=st.integers(min_value=1, max_value=64), replicas=st.integers(min_value=2, max_value=7),
       seed=st.integers(min_value=0, max_value=10_000))
def test_survivors_take_a_dead_replicas_shards_in_one_round_without_racing(shards: int, replicas: int,
                                                                          seed: int) -> None:
    """Same view, disjoint takes: after a kill every survivor plans from the same holders, no two plan
    to take the same shard (a lost compare-and-swap costs a retry period), and together they take
    every shard the dead replica held, each up to its new target."""
    rng = random.Random(seed)
    everyone = [f"r{i}-{rng.getrandbits(16):04x}" for i in range(replicas)]
    holders = simulate(shards, everyone, {}, seed, rounds=8)[-1]
    dead = rng.choice(everyone)
    live = [r for r in everyone if r != dead]
    snapshot = {s: h for s, h in holders.items() if h != dead}
    plans = {r: plan_shards(r, live, snapshot, shards) for r in live}
    taken = [s for p in plans.values() for s in p.acquire]
    assert len(taken) == len(set(taken)), f"two survivors plan to take the same shard: {plans}"
    assert sorted(taken) == sorted(s for s, h in holders.items() if h == dead)
    want = targets(live, shards)
    for r in live:
        assert not plans[r].release
        assert len([s for s, h in snapshot.items() if h == r]) + len(plans[r].acquire) == want[r]


def simulate(shards: int, live: list[str], holders: dict[int, str], seed: int, rounds: int) -> list[dict[int, str]]:
    rng = random.Random(seed)
    history = [dict(holders)]
    for _ in range(rounds):
        order = list(live)
        rng.shuffle(order)
        snapshot = {s: h for s, h in holders.items() if h in live}  # dead holders' Leases expired
        plans = {r: plan_shards(r, live, snapshot, shards) for r in order}
        for s in [s for s, h in holders.items() if h not in live]:
            del holders[s]
        for r in order:
            for s in plans[r].release:
                assert holders.get(s) == r, "a replica released a shard it did not hold"
                del holders[s]
            for s in plans[r].acquire:
                if holders.get(s) == snapshot.get(s):  # compare-and-swap on the Lease version seen
                    holders[s] = r
        history.append(dict(holders))
        if all(len([s for s, h in holders.items() if h == r]) == t for r, t in targets(live, shards).items()):
            break
    return history


@settings(max_examples=300, deadline=None)
@given(
    shards=st.integers(min_value=1, max_value=64),
    replicas=st.integers(min_value=1, max_value=7),
    dead=st.integers(min_value=0, max_value=3),
    seed=st.integers(min_value=0, max_value=10_000),
    fill=st.floats(min_value=0.0, max_value=1.0),
)
def test_placement_converges_fairly_without_double_holding(shards: int, replicas: int, dead: int, seed: int,
                                                          fill: float) -> None:
    rng = random.Random(seed)
    live = [f"r{i}" for i in range(replicas)]
    everyone = live + [f"dead{i}" for i in range(dead)]
    # Any start: some shards held (by live or dead replicas, maybe too many by one replica), some free.
    holders = {s: rng.choice(everyone) for s in range(shards) if rng.random() < fill}
    history = simulate(shards, live, holders, seed, rounds=6)
    final = history[-1]
    want = targets(live, shards)
    got = {r: sorted(s for s, h in final.items() if h == r) for r in live}
    assert {r: len(v) for r, v in got.items()} == want, f"not converged after 6 rounds: {got}"
    assert sorted(final) == list(range(shards)), "a shard nobody holds"
    assert max(want.values()) <= math.ceil(shards / replicas)
    for state in history[1:]:
        assert all(h in live for h in state.values())  # (a dict: no shard has two holders)
        for r in live:  # nobody ever holds more than its fair share once the first round is done
            assert len([s for s, h in state.items() if h == r]) <= max(
                math.ceil(shards / replicas), len([s for s, h in history[0].items() if h == r]))


@settings(max_examples=100, deadline=None)
@given(shards=st.integers(min_value=1, max_value=64), seed=st.integers(min_value=0, max_value=10_000))
def test_membership_changes_move_few_shards(shards: int, seed: int) -> None:
    """A replica joining moves only what it takes; one leaving moves only what it held."""
    live = ["a", "b"]
    holders = simulate(shards, live, {}, seed, rounds=6)[-1]
    grown = simulate(shards, ["a", "b", "c"], dict(holders), seed, rounds=6)[-1]
    moved = [s for s in range(shards) if holders.get(s) != grown.get(s)]
    assert len(moved) == targets(["a", "b", "c"], shards)["c"]
    shrunk = simulate(shards, ["a", "c"], dict(grown), seed, rounds=6)[-1]
    moved = [s for s in range(shards) if grown.get(s) != shrunk.get(s)]
    # b's shards move, plus at most one per survivor to even out the exact targets.
    assert len(moved) <= len([s for s, h in grown.items() if h == "b"]) + 2


def test_relist_keeps_objects_written_after_its_snapshot() -> None:
    """A list that started before our own create must not drop the created object from the cache
    (the next plan would create it again: a 409 and an apply on the member)."""
    from federation.members import OwnedCache

    def obj(name: str, rv: int) -> dict[str, object]:
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}", "resourceVersion": str(rv),
                             "labels": {"app.kubernetes.io/managed-by": "meshfed", "meshfed.io/hub": "h",
                                        "meshfed.io/accesspoint-namespace": "ns",
                                        "meshfed.io/accesspoint": name}}}

    cache = OwnedCache("h")
    cache.put(obj("old", 10))
    cache.put(obj("created", 120))  # written through after the list's snapshot (rv 100)
    cache.put(obj("gone", 50))
    cache.replace_kind(("", "Service"), [obj("old", 10)], "100")
    assert sorted(k.name for k in cache.objects) == ["created", "old"]


# ---- lease protocol 2: shard Leases live through their holder's replica Lease ----------------------

def _observed(holder: str, at: float, protocol: str = "2", duration: float = 15.0) -> Observed:
    return Observed(holder=holder, renew="r", duration=duration, transitions=0, acquire=None, rv="1", at=at,
                    protocol=protocol)


def test_a_protocol_2_shard_lease_lives_as_long_as_its_holders_replica_lease() -> None:
    now = 100.0
    fresh, stale = now - 1, now - 20  # record last changed 1 s / 20 s ago (duration 15 s)
    cases = [
        # (shard record, replica record of its holder) -> live holder
        (_observed("a", fresh), None, "a"),                                   # own record fresh
        (_observed("a", stale), _observed("a", fresh), "a"),                  # through the replica Lease
        (_observed("a", stale), _observed("a", stale), None),                 # holder dead
        (_observed("a", stale), None, None),                                  # holder's replica Lease gone
        (_observed("a", stale), _observed("b", fresh), None),                 # replica Lease names another
        (_observed("a", stale, protocol=""), _observed("a", fresh), None),    # old protocol: own record only
        (_observed("", fresh), _observed("a", fresh), None),                  # released
    ]
    for shard, replica, expected in cases:
        observed = {"shard-03": shard} | ({"replica-a": replica} if replica is not None else {})
        assert live_holder("shard-03", observed, "replica", now) == expected, (shard, replica)
    # A replica Lease itself is judged by its own record only.
    assert live_holder("replica-a", {"replica-a": _observed("a", stale)}, "replica", now) is None
    # Singletons of another role (meshfed sds) follow that role's replica Lease.
    observed = {"sds": _observed("x", stale), "sds-replica-x": _observed("x", fresh),
                "replica-x": _observed("x", stale)}
    assert live_holder("sds", observed, "sds-replica", now) == "x"
    assert live_holder("sds", observed, "replica", now) is None


def test_kubectl_shards_shows_protocol_2_leases_held_through_the_replica_lease() -> None:
    from cli.rollout import render_shards

    def lease(name: str, kind: str, holder: str, renewed: str, protocol: str = "2") -> dict[str, object]:
        labels = {"meshfed.io/lease-of": "hub", "meshfed.io/lease-kind": kind}
        if protocol:
            labels["meshfed.io/lease-protocol"] = protocol
        return {"metadata": {"name": f"hub-{name}", "labels": labels},
                "spec": {"holderIdentity": holder, "renewTime": renewed, "leaseDurationSeconds": 15}}

    now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    fresh, old = "2027-01-15T07:59:58.000000Z", "2027-01-15T07:00:00.000000Z"
    view = render_shards([lease("replica-a", "replica", "a", fresh), lease("shard-00", "shard", "a", old),
                          lease("shard-01", "shard", "b", old), lease("shard-02", "shard", "a", old, protocol="")],
                         now)
    rows = {line.split()[1]: line for line in view.splitlines() if line.startswith("hub ")}
    assert "held" in rows["shard-00"] and "expired" not in rows["shard-00"], view   # through replica a
    assert "expired" in rows["shard-01"], view                                      # b is not live
    assert "expired" in rows["shard-02"], view                                      # old protocol
    assert rows["a"].split()[3:5] == ["1", "0"], view  # replica a: one shard held, shard 0
