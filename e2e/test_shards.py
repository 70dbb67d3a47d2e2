"""Many replicas e2e (issue 11): 3 controller replicas share 32 Lease-held shards over the local fleet
(hub + 3 members, real kube-apiservers) and a real BIND.

Covers: the shards spread evenly and `kubectl get leases` / `kubectl meshfed shards` show who holds
what; each replica's member caches hold only its shards' objects (the shard label); kill -9 of the
holder of a shard (a) during a paused rollout — taken over within the lease duration, nothing
written by the takeover, one RolloutApproval, and the approval after the takeover releases exactly
one wave — (b) during a bulk propagation — every object created exactly once (the members' own
request metrics), nothing deleted — (c) while a NameService follows a VIP change — DNS follows with
the same number of UPDATEs as without a kill; a replica cut from the hub (a TCP proxy between it
and the hub, then cut) stops writing before another replica takes its shards; a rolling restart of
every replica under load loses nothing; with nothing changed, a resync and a rolling restart of all
3 replicas write nothing.

Leases are short here (fleet.testing.FAST_LEASES: 5 s duration, 3 s renew deadline, 0.5 s
retry); the deploy defaults are client-go's 15/10/2.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import pytest
import yaml
from dnsservers import BindServer, start_bind  # e2e/ is on sys.path for its test modules

from federation.kube import KubeClient
from federation.shards import SHARD_LABEL, shard_lease, shard_of
from fleet import HUB_NAMESPACE, Fleet, ensure_namespace, free_port
from fleet.testing import (
    FAST_LEASES,
    ControllerProcess,
    accesspoint_status,
    create_namespace,
    diff_breakdown,
    eventually,
    lease_holders,
    request_breakdown,
    running_replicas,
    tls_gateway_template,
    wait_balanced,
    write_breakdown,
)
from fleet.testing import condition as cond

pytestmark = pytest.mark.e2e

ZONE = "shards.test"
AP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
RAP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/rolloutapprovals"
NSVC = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/nameservices"
DNSP = "/apis/meshfed.io/v1alpha1/dnsproviders"
SVC = "/api/v1/namespaces/{ns}/services"
VS = "/apis/networking.istio.io/v1/namespaces/{ns}/virtualservices"
LEASE_DURATION = float(FAST_LEASES[1])
RETRY = float(FAST_LEASES[5])
MEMBERS = ["member-1", "member-2", "member-3"]
OBJECT_RESOURCES = ("services", "gateways", "virtualservices")
REPO = Path(__file__).resolve().parents[1]


# ---- fixtures: the fleet (e2e/conftest.py), BIND, 3 replicas ----


@pytest.fixture(scope="module")
def bind() -> Iterator[BindServer]:
    with start_bind([ZONE]) as server:
        yield server


@pytest.fixture(scope="module")
async def hub_setup(hub: KubeClient, bind: BindServer) -> None:
    await ensure_namespace(hub, HUB_NAMESPACE)
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bind-tsig", "namespace": HUB_NAMESPACE},
            "type": "Opaque", "stringData": {"secret": bind.key_secret}}
    await hub.apply(f"/api/v1/namespaces/{HUB_NAMESPACE}/secrets/bind-tsig", body, field_manager="e2e")
    await hub.create(DNSP, {
        "apiVersion": "meshfed.io/v1alpha1", "kind": "DNSProvider", "metadata": {"name": "bind"},
        "spec": {"type": "rfc2136", "zone": ZONE,
                 "rfc2136": {"server": bind.host, "port": bind.port, "timeoutSeconds": 2,
                             "tsig": {"keyName": bind.key_name.rstrip("."), "algorithm": bind.key_algorithm,
                                      "secretRef": {"name": "bind-tsig", "key": "secret"}}}}}, field_manager="e2e")


@pytest.fixture(scope="module")
def replicas(fleet: Fleet, hub_setup: None) -> Iterator[list[ControllerProcess]]:
    with running_replicas(fleet, 3, extra=(*FAST_LEASES, "--resync", "15")) as procs:
        yield procs


# ---- helpers ----


def template(version: str = "v1") -> list[dict[str, Any]]:
    host = f"{version}.${{name}}.{ZONE}"
    return [
        *tls_gateway_template(host, "${name}-tls"),
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "${name}"},
         "spec": {"hosts": [host], "gateways": ["${name}-gw"],
                  "http": [{"route": [{"destination": {"host": "app.svc.cluster.local"}}]}]}},
    ]


def accesspoint(ns: str, name: str, version: str = "v1", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": name, "namespace": ns},
            "spec": {"template": template(version), **spec}}


async def wait_ready(hub: KubeClient, ns: str, names: list[str], timeout: float = 120,
                     revision: dict[str, str] | None = None) -> None:
    async def ready() -> bool:
        items, _ = await hub.list(AP.format(ns=ns))
        by_name = {i["metadata"]["name"]: i.get("status") or {} for i in items}
        missing = []
        for n in names:
            st = by_name.get(n) or {}
            ok = cond(st, "Ready").get("status") == "True" and \
                st.get("observedGeneration") == next(i for i in items if i["metadata"]["name"] == n)[
                    "metadata"]["generation"] and len(st.get("clusters") or []) == 3
            if not ok:
                missing.append(n)
        if missing:
            raise AssertionError(f"{len(missing)} not ready: {missing[:5]}")
        return True

    await eventually(ready, timeout, 0.5, message=f"AccessPoints in {ns} should be Ready")


async def member_writes(members: dict[str, KubeClient]) -> dict[str, int]:
    counts = await asyncio.gather(*(write_breakdown(c) for c in members.values()))
    return {f"{n}: {k}": v for n, bd in zip(members, counts, strict=True) for k, v in bd.items()}


async def all_writes(hub: KubeClient, members: dict[str, KubeClient]) -> dict[str, int]:
    return {**{f"hub: {k}": v for k, v in (await write_breakdown(hub)).items()}, **await member_writes(members)}


async def object_requests(members: dict[str, KubeClient]) -> dict[str, int]:
    """Every write request on the template's kinds, by member, verb, resource and response code (the
    members' own metrics)."""
    out: dict[str, int] = {}
    verbs = {"POST", "PATCH", "APPLY", "PUT", "DELETE"}
    for name, client in members.items():
        total = await request_breakdown(client, verbs, OBJECT_RESOURCES)
        seen: dict[str, int] = {}
        for code in ("200", "201", "404", "409", "422", "429", "500", "503", "504"):
            for k, v in (await request_breakdown(client, verbs, OBJECT_RESOURCES, code)).items():
                out[f"{name}: {k} {code}"] = v
                seen[k] = seen.get(k, 0) + v
        for k, v in total.items():
            if v - seen.get(k, 0):
                out[f"{name}: {k} other"] = v - seen.get(k, 0)
    return out


def by_identity(replicas: list[ControllerProcess], identity: str) -> ControllerProcess:
    return next(p for p in replicas if p.identity == identity)


async def holder_of(hub: KubeClient, key: str) -> str:
    return (await lease_holders(hub)).get(key, "")


async def wait_takeover(hub: KubeClient, key: str, dead: str, live: set[str], since: float) -> float:
    """Seconds from `since` until Lease `key` is held by one of `live` (not `dead`)."""
    async def taken() -> float | None:
        holder = await holder_of(hub, key)
        if holder != dead and holder in live:
            return time.monotonic() - since
        return None

    return await eventually(taken, 60, 0.1, message=f"{key} should be taken over from {dead}")


def plugin(fleet: Fleet, *args: str) -> str:
    assert fleet.state is not None
    out = subprocess.run([sys.executable, "-m", "cli.kubectl", *args, "--kubeconfig",
                          str(fleet.state.hub.kubeconfig)], capture_output=True, text=True, cwd=REPO, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def kubectl(fleet: Fleet, *args: str) -> str:
    assert fleet.state is not None
    return subprocess.run(["kubectl", *args], capture_output=True, text=True, check=True,
                          env={**os.environ, "KUBECONFIG": str(fleet.state.hub.kubeconfig)}).stdout


async def restart_killed(hub: KubeClient, replicas: list[ControllerProcess]) -> None:
    for p in replicas:
        if not p.alive:
            p.start()
    await wait_balanced(hub, replicas, timeout=90)


# ---- tests ----


async def test_shards_spread_evenly_and_show_who_holds_what(
    fleet: Fleet, hub: KubeClient, replicas: list[ControllerProcess],
) -> None:
    holders = await wait_balanced(hub, replicas, timeout=90)
    counts = sorted(sum(1 for h in holders.values() if h == p.identity) for p in replicas)
    assert counts == [10, 11, 11], counts
    singles = await lease_holders(hub, kind="singleton")
    assert singles.get("members") in {p.identity for p in replicas}, singles
    # Each replica's own /metrics agrees.
    assert sum(p.metric("meshfed_shards_held") for p in replicas) == 32
    assert all(p.metric("meshfed_replicas_live") == 3 for p in replicas)
    out = kubectl(fleet, "get", "leases", "-n", HUB_NAMESPACE)
    assert "meshfed-hub-shard-00" in out and "meshfed-hub-members" in out
    view = plugin(fleet, "shards")
    print(view)
    for p in replicas:
        assert p.identity in view
    assert "shard-31" in view and "members" in view and "expired" not in view, view


async def test_member_caches_hold_only_their_shards_objects(
    hub: KubeClient, members: dict[str, KubeClient], replicas: list[ControllerProcess],
) -> None:
    await wait_balanced(hub, replicas)
    ns = await create_namespace(hub, "cache-")
    names = [f"ap-{i}" for i in range(24)]
    await asyncio.gather(*(hub.create(AP.format(ns=ns), accesspoint(ns, n), field_manager="e2e") for n in names))
    await wait_ready(hub, ns, names)
    # Every member object carries its AccessPoint's shard.
    items, _ = await members["member-1"].list(VS.format(ns=ns))
    assert len(items) == 24
    for item in items:
        assert item["metadata"]["labels"][SHARD_LABEL] == str(shard_of(ns, item["metadata"]["name"], 32))
    # Each replica caches exactly the objects of the shards it holds (plus what the earlier tests left):
    # counted per replica from the objects' shard labels and the shard Leases' holders. (Not "none holds
    # more than 60 %": with a fresh namespace's hashes, 24 AccessPoints land that unevenly on one of
    # three replicas about once in a hundred runs.)
    holders = await lease_holders(hub)
    shards_of_objects: list[int] = []
    for m in members.values():
        for res in OBJECT_RESOURCES:
            path = f"/api/v1/{res}" if res == "services" else f"/apis/networking.istio.io/v1/{res}"
            found, _ = await m.list(path, label_selector="meshfed.io/hub=meshfed-hub")
            shards_of_objects += [int(o["metadata"]["labels"][SHARD_LABEL]) for o in found]
    expected = [sum(1 for s in shards_of_objects if holders.get(f"shard-{s:02d}") == p.identity) for p in replicas]
    cached = [p.metric("meshfed_member_cache_objects") for p in replicas]
    print(f"member objects: {len(shards_of_objects)}; cached per replica: {cached}; by their shards' holders: "
          f"{expected}")
    assert cached == expected, (cached, expected)
    assert sum(cached) == len(shards_of_objects) and await lease_holders(hub) == holders
    assert sum(1 for n in expected if n) >= 2, "the objects of 24 AccessPoints fall in more than one replica's shards"


ALL_AT_ONCE = {"waves": [{"name": "all"}]}
ROLLOUT = {"waves": [
    {"name": "one", "clusterSelector": {"matchLabels": {"meshfed.io/cluster-name": "member-1"}},
     "after": [{"type": "Approval"}]},
    {"name": "two", "clusterSelector": {"matchLabels": {"meshfed.io/cluster-name": "member-2"}},
     "after": [{"type": "Approval"}]},
    {"name": "three", "clusterSelector": {"matchLabels": {"meshfed.io/cluster-name": "member-3"}}},
]}


async def versions(members: dict[str, KubeClient], ns: str, name: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for m, client in members.items():
        vs = await client.get(f"{VS.format(ns=ns)}/{name}")
        out[m] = vs["spec"]["hosts"][0].split(".")[0] if vs else None
    return out


async def wait_rollout(hub: KubeClient, ns: str, name: str, **want: str) -> dict[str, Any]:
    async def ok() -> dict[str, Any]:
        ro = (await accesspoint_status(hub, ns, name)).get("rollout") or {}
        assert all(ro.get(k) == v for k, v in want.items()), ro
        return dict(ro)

    return await eventually(ok, 90, 0.3, message=f"rollout should reach {want}")


async def test_kill_holder_during_paused_rollout(
    fleet: Fleet, hub: KubeClient, members: dict[str, KubeClient], replicas: list[ControllerProcess],
) -> None:
    await wait_balanced(hub, replicas)
    ns = await create_namespace(hub, "roll-")
    await hub.create(AP.format(ns=ns), accesspoint(ns, "shop", "v1", rollout=ROLLOUT), field_manager="e2e")
    await wait_rollout(hub, ns, "shop", phase="Succeeded")
    await hub.merge_patch(f"{AP.format(ns=ns)}/shop", {"spec": {"template": template("v2")}})
    await wait_rollout(hub, ns, "shop", phase="Paused", reason="AwaitingApproval", wave="1/3 one")
    await eventually(lambda: _eq(versions(members, ns, "shop"), {"member-1": "v2", "member-2": "v1",
                                                                  "member-3": "v1"}), 30, message="wave 1 only")
    await asyncio.sleep(2)
    approvals_before = (await hub.list(RAP.format(ns=ns)))[0]
    assert len(approvals_before) == 1
    key = shard_lease(shard_of(ns, "shop", 32))
    dead = await holder_of(hub, key)
    victim = by_identity(replicas, dead)
    before = await member_writes(members)
    killed_at = time.monotonic()
    victim.kill()
    took = await wait_takeover(hub, key, dead, {p.identity for p in replicas if p.alive}, killed_at)
    print(f"paused rollout: shard {key} taken over {took:.2f}s after kill -9 (lease {LEASE_DURATION:.0f}s)")
    assert took < LEASE_DURATION + 2 * RETRY + 2.0, took
    await asyncio.sleep(4)  # the new holder has reconciled the AccessPoint: nothing to write
    assert diff_breakdown(before, await member_writes(members)) == {}, "the takeover wrote to members"
    ro = await wait_rollout(hub, ns, "shop", phase="Paused", reason="AwaitingApproval", wave="1/3 one")
    assert len((await hub.list(RAP.format(ns=ns)))[0]) == 1, "a duplicate RolloutApproval after the takeover"
    # Approve: exactly the next wave is released, by the new holder.
    out = plugin(fleet, "approve", "shop", "-n", ns, "-m", "after takeover")
    assert "approved" in out, out
    await wait_rollout(hub, ns, "shop", phase="Paused", reason="AwaitingApproval", wave="2/3 two")
    await eventually(lambda: _eq(versions(members, ns, "shop"), {"member-1": "v2", "member-2": "v2",
                                                                  "member-3": "v1"}), 30, message="wave 2 only")
    await asyncio.sleep(2)
    assert await versions(members, ns, "shop") == {"member-1": "v2", "member-2": "v2", "member-3": "v1"}
    changed = diff_breakdown(before, await member_writes(members))
    # Only member-2 (wave 2) was written, once per changed object (its VirtualService and Gateway): one
    # apply each. Their first update since created, but it changes values only: the applies set every
    # field the POST owns, so nothing is handed over first (federation/executor.py `_own_by_apply`).
    assert changed == {"member-2: APPLY gateways": 1, "member-2: APPLY virtualservices": 1}, changed
    assert not any("DELETE" in k for k in changed), changed
    approvals = (await hub.list(RAP.format(ns=ns)))[0]
    assert sorted(a["spec"]["wave"] for a in approvals) == [1, 2], [a["metadata"]["name"] for a in approvals]
    assert ro["revision"]
    await restart_killed(hub, replicas)


async def _eq(got: Any, want: Any) -> bool:
    value = await got
    if value != want:
        raise AssertionError(value)
    return True


async def test_kill_holder_during_bulk_propagation(
    hub: KubeClient, members: dict[str, KubeClient], replicas: list[ControllerProcess],
) -> None:
    await wait_balanced(hub, replicas)
    ns = await create_namespace(hub, "bulk-")
    names = [f"bulk-{i}" for i in range(60)]
    before = await object_requests(members)
    deletes_before = await member_writes(members)
    await asyncio.gather(*(hub.create(AP.format(ns=ns), accesspoint(ns, n), field_manager="e2e") for n in names))
    # Kill the replica holding the most of these AccessPoints' shards, mid-propagation.
    holders = await lease_holders(hub)
    load: dict[str, int] = {}
    for n in names:
        load[holders[shard_lease(shard_of(ns, n, 32))]] = load.get(holders[shard_lease(shard_of(ns, n, 32))], 0) + 1
    dead = max(load, key=lambda k: load[k])

    async def some_created() -> bool:
        items, _ = await members["member-3"].list(VS.format(ns=ns))
        return len(items) >= 5

    await eventually(some_created, 60, 0.05, message="propagation should have started")
    killed_at = time.monotonic()
    by_identity(replicas, dead).kill()
    mine = [k for k, h in holders.items() if h == dead]
    took = await wait_takeover(hub, mine[0], dead, {p.identity for p in replicas if p.alive}, killed_at)
    print(f"bulk: {load[dead]} of 60 AccessPoints on the killed replica; its shards taken over in {took:.2f}s")
    await wait_ready(hub, ns, names, timeout=180)
    await asyncio.sleep(3)
    changed = diff_breakdown(before, await object_requests(members))
    # Every object created exactly once on every member (POST answered 201), never re-applied,
    # never a create that met an existing object (409), nothing deleted.
    print(f"bulk: member write requests {changed}")
    for m in MEMBERS:
        for res in OBJECT_RESOURCES:
            # Each object created once: at most 60 creates answered 201 (a create refused because the
            # member namespace did not exist yet is answered 404 and sent again after the namespace; one
            # the API server failed (429/5xx) is retried; one cut off by the kill may have been stored
            # without its 201 being counted), and all 60 objects exist.
            assert changed.get(f"{m}: POST {res} 201", 0) <= 60, (m, res, changed)
            items, _ = await members[m].list(f"/api/v1/namespaces/{ns}/{res}" if res == "services"
                                             else f"/apis/networking.istio.io/v1/namespaces/{ns}/{res}")
            assert len(items) == 60, (m, res, len(items))
    # No create met an existing object (409: a second create), nothing was updated or deleted (the
    # VIP stand-in's services/status patches are the fleet's, not meshfed's).
    assert not [k for k in changed if k.endswith(" 409")], changed
    assert not [k for k in changed if (" PATCH " in k or " APPLY " in k or " PUT " in k or " DELETE " in k)
                and "/status" not in k], changed
    deletes = {k: v for k, v in diff_breakdown(deletes_before, await member_writes(members)).items() if "DELETE" in k}
    assert not deletes, deletes
    await restart_killed(hub, replicas)


async def resolve(bind: BindServer, name: str) -> set[str]:
    q = dns.message.make_query(name, "A")
    r = await dns.asyncquery.udp(q, bind.host, port=bind.port, timeout=2)
    return {rd.to_text() for rr in r.answer for rd in rr}


async def soa_serial(bind: BindServer) -> int:
    q = dns.message.make_query(ZONE, "SOA")
    r = await dns.asyncquery.udp(q, bind.host, port=bind.port, timeout=2)
    return int(r.answer[0][0].serial)


async def wait_resolves(bind: BindServer, name: str, values: set[str], timeout: float = 60) -> None:
    async def check() -> bool:
        got = await resolve(bind, name)
        if got != values:
            raise AssertionError(f"{name} -> {sorted(got)}, expected {sorted(values)}")
        return True

    await eventually(check, timeout, 0.05, message=f"{name} should resolve to {sorted(values)}")


async def vips_of(hub: KubeClient, ns: str, name: str) -> dict[str, str]:
    async def ok() -> dict[str, str]:
        st = await accesspoint_status(hub, ns, name)
        vips = {c["name"]: c.get("vip") for c in st.get("clusters") or []}
        assert len(vips) == 3 and all(vips.values()), vips
        return {k: str(v) for k, v in vips.items()}

    return await eventually(ok, 90, 0.3, message="VIPs")


def lb(ip: str) -> dict[str, Any]:
    return {"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}


async def test_kill_holder_while_nameservice_follows_a_vip_change(
    hub: KubeClient, members: dict[str, KubeClient], replicas: list[ControllerProcess], bind: BindServer,
) -> None:
    await wait_balanced(hub, replicas)
    ns = await create_namespace(hub, "dns-")
    await hub.create(AP.format(ns=ns), accesspoint(ns, "web"), field_manager="e2e")
    vips = await vips_of(hub, ns, "web")
    await hub.create(NSVC.format(ns=ns), {
        "apiVersion": "meshfed.io/v1alpha1", "kind": "NameService", "metadata": {"name": "web", "namespace": ns},
        "spec": {"fqdn": f"web.{ZONE}", "ttl": 30, "recordType": "A", "providerRef": {"name": "bind"},
                 "target": {"accessPointRef": {"name": "web"}}}}, field_manager="e2e")
    await wait_resolves(bind, f"web.{ZONE}", set(vips.values()))
    await asyncio.sleep(2)
    svc_status = f"{SVC.format(ns=ns)}/web-gw/status"
    # A VIP change with every replica alive: how many UPDATEs it takes (the SOA serial's step).
    serial = await soa_serial(bind)
    await members["member-1"].merge_patch(svc_status, lb("127.100.1.201"))
    await wait_resolves(bind, f"web.{ZONE}", {"127.100.1.201", vips["member-2"], vips["member-3"]})
    await asyncio.sleep(2)
    step = await soa_serial(bind) - serial
    assert step >= 1
    # Now the same change while the holder of the AccessPoint's (and so the NameService's) shard dies.
    key = shard_lease(shard_of(ns, "web", 32))
    dead = await holder_of(hub, key)
    serial = await soa_serial(bind)
    await members["member-2"].merge_patch(svc_status, lb("127.100.2.202"))
    killed_at = time.monotonic()
    by_identity(replicas, dead).kill()
    expected = {"127.100.1.201", "127.100.2.202", vips["member-3"]}
    took = await wait_takeover(hub, key, dead, {p.identity for p in replicas if p.alive}, killed_at)
    await wait_resolves(bind, f"web.{ZONE}", expected, timeout=60)
    served = time.monotonic() - killed_at
    print(f"VIP change during kill -9: taken over in {took:.2f}s, served by BIND {served:.2f}s after the kill")
    await asyncio.sleep(3)
    assert await soa_serial(bind) - serial == step, "the VIP change was sent to DNS more (or less) than once"

    async def recorded() -> bool:
        st = (await hub.get(f"{NSVC.format(ns=ns)}/web") or {}).get("status") or {}
        assert sorted(st.get("records") or []) == sorted(expected), st.get("records")
        return True

    await eventually(recorded, 30, message="NameService status should show the new records")
    await restart_killed(hub, replicas)


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of the hub that can be cut (every connection closed, new
    ones refused) and restored."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.conns: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.conns |= {writer, up_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        self.conns -= {writer, up_w}

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.conns):
            w.transport.abort()
        self.conns.clear()
        self.server = None

    async def close(self) -> None:
        if self.server is not None:
            await self.cut()


def write_proxied(source: Path, path: Path, port: int) -> None:
    config = yaml.safe_load(source.read_text())
    for c in config["clusters"]:
        c["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(config))
    os.chmod(path, 0o600)


@contextlib.asynccontextmanager
async def proxied_kubeconfig(fleet: Fleet) -> AsyncIterator[tuple[Proxy, Path]]:
    assert fleet.state is not None
    proxy = Proxy(fleet.state.hub.port)
    await proxy.start()
    path = fleet.root / "hub-via-proxy.kubeconfig"
    write_proxied(Path(fleet.state.hub.kubeconfig), path, proxy.port)
    try:
        yield proxy, path
    finally:
        await proxy.close()


async def test_replica_cut_from_the_hub_stops_writing_before_its_shards_are_taken(
    fleet: Fleet, hub: KubeClient, members: dict[str, KubeClient], replicas: list[ControllerProcess],
) -> None:
    await wait_balanced(hub, replicas)
    assert fleet.state is not None
    cut = replicas[2]
    try:
        await _cut_replica_stops_writing(fleet, hub, members, replicas, cut)
    finally:  # back on the direct kubeconfig whatever happened: the next tests need 3 live replicas
        cut.stop()
        cut.base_args[cut.base_args.index("--kubeconfig") + 1] = str(fleet.state.hub.kubeconfig)
        cut.start()
    await wait_balanced(hub, replicas, timeout=90)


async def _cut_replica_stops_writing(fleet: Fleet, hub: KubeClient, members: dict[str, KubeClient],
                                     replicas: list[ControllerProcess], cut: ControllerProcess) -> None:
    async with proxied_kubeconfig(fleet) as (proxy, kubeconfig):
        # replica-2 talks to the hub through the proxy (a new replica process).
        cut.stop()
        cut.base_args[cut.base_args.index("--kubeconfig") + 1] = str(kubeconfig)
        cut.start()
        holders = await wait_balanced(hub, replicas, timeout=90)
        ns = await create_namespace(hub, "cut-")
        name = next(f"w-{i}" for i in range(1000)
                    if holders[shard_lease(shard_of(ns, f"w-{i}", 32))] == cut.identity)
        key = shard_lease(shard_of(ns, name, 32))
        await hub.create(AP.format(ns=ns), accesspoint(ns, name), field_manager="e2e")
        await wait_ready(hub, ns, [name])
        path = f"{VS.format(ns=ns)}/{name}"

        async def tamper() -> None:  # drift the cut replica repairs while it may, and then must not
            while True:
                with contextlib.suppress(Exception):
                    await members["member-1"].merge_patch(path, {"metadata": {"annotations": {
                        "meshfed.io/content-hash": f"tampered-{time.monotonic()}"}}})
                await asyncio.sleep(0.25)

        writes_seen: list[tuple[float, float]] = []

        async def watch_writes() -> None:  # the cut replica's own counter of member writes, over time
            while True:
                with contextlib.suppress(Exception):
                    writes_seen.append((time.monotonic(), await asyncio.to_thread(
                        cut.metric, "meshfed_member_writes_total", cluster="member-1")))
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch_writes())
        tamperer = asyncio.create_task(tamper())
        try:
            await asyncio.sleep(2)
            assert writes_seen and writes_seen[-1][1] > writes_seen[0][1], "the replica should repair drift"
            cut_at = time.monotonic()
            await proxy.cut()
            took = await wait_takeover(hub, key, cut.identity, {p.identity for p in replicas if p != cut}, cut_at)
            taken_at = cut_at + took
            await asyncio.sleep(2)
        finally:
            tamperer.cancel()
            watcher.cancel()
            for t in (tamperer, watcher):
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        last = max(v for _, v in writes_seen)
        last_write = min(t for t, v in writes_seen if v == last)
        print(f"cut from the hub: last member write {last_write - cut_at:.2f}s after the cut, shard taken over "
              f"{taken_at - cut_at:.2f}s after the cut (renew deadline {FAST_LEASES[3]}s, lease {FAST_LEASES[1]}s)")
        assert last_write < taken_at - 0.5, (last_write - cut_at, taken_at - cut_at)
        assert cut.metric("meshfed_fenced_writes_total") > 0 or last_write - cut_at < float(FAST_LEASES[3]) + 1
        assert "renew deadline passed" in cut.log_tail(200_000)
        # The object is repaired by the new holder (the last tampering was just now: its watch event
        # and the repair take a moment).
        async def repaired() -> bool:
            vs = await members["member-1"].get(path) or {}
            hash_ = vs["metadata"]["annotations"]["meshfed.io/content-hash"]
            assert not hash_.startswith("tampered"), hash_
            return True
        await eventually(repaired, 15, 0.2, message="the new holder should repair the drift")


async def test_rolling_restart_under_load_loses_nothing(
    hub: KubeClient, members: dict[str, KubeClient], replicas: list[ControllerProcess],
) -> None:
    await wait_balanced(hub, replicas)
    ns = await create_namespace(hub, "roll-restart-")
    names = [f"load-{i}" for i in range(30)]
    before = await member_writes(members)
    # One wave, no gates: each edit goes to every member at once (the default strategy would stop each
    # edit after one cluster for an approval, which is not what this test is about).
    await asyncio.gather(*(hub.create(AP.format(ns=ns), accesspoint(ns, n, rollout=ALL_AT_ONCE), field_manager="e2e")
                           for n in names))

    async def edits() -> None:  # changes keep coming during the restart
        for round_ in range(2, 6):
            for n in names[::3]:
                await hub.merge_patch(f"{AP.format(ns=ns)}/{n}", {"spec": {"template": template(f"v{round_}")}})
            await asyncio.sleep(1.5)

    editing = asyncio.create_task(edits())
    for p in replicas:  # one at a time, as a Deployment's RollingUpdate with maxUnavailable 0
        p.stop()  # SIGTERM: its Leases are released at once
        p.start()
        await eventually(lambda p=p: _true(p.ready()), 90, 0.3, message=f"{p.name} should become Ready")
    await editing
    await wait_balanced(hub, replicas, timeout=90)
    await wait_ready(hub, ns, names, timeout=180)
    got = await versions(members, ns, names[0])
    assert got == dict.fromkeys(MEMBERS, "v5"), got
    for n in names:
        want = "v5" if n in names[::3] else "v1"
        assert await versions(members, ns, n) == dict.fromkeys(MEMBERS, want), n
    deletes = {k: v for k, v in diff_breakdown(before, await member_writes(members)).items() if "DELETE" in k}
    assert not deletes, deletes


async def _true(value: bool) -> bool:
    return value


async def test_nothing_changed_resync_and_rolling_restart_write_nothing(
    hub: KubeClient, members: dict[str, KubeClient], replicas: list[ControllerProcess],
) -> None:
    await wait_balanced(hub, replicas)
    await asyncio.sleep(5)  # trailing events of the previous tests
    before = await all_writes(hub, members)
    await asyncio.sleep(17)  # a full resync (--resync 15) of every replica
    changed = diff_breakdown(before, await all_writes(hub, members))
    assert not changed, f"writes during a no-op resync with 3 replicas: {changed}"
    for p in replicas:
        p.stop()
        p.start()
        await eventually(lambda p=p: _true(p.ready()), 90, 0.3, message=f"{p.name} should become Ready")
    await wait_balanced(hub, replicas, timeout=90)
    await asyncio.sleep(5)
    changed = diff_breakdown(before, await all_writes(hub, members))
    assert not changed, f"writes after a rolling restart of 3 replicas with nothing changed: {changed}"

