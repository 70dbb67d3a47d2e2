"""Staged rollouts e2e (issue 4): 6 members over 3 zones, real kube-apiservers, the controller process,
the real `kubectl meshfed` plugin, and an auditor reading every member's objects all along.

Covers: the default strategy stops after one cluster; `kubectl meshfed approve` (as a user holding
the `approve` verb) releases the next wave; the auditor sees no cluster outside a released wave
carry the new revision, ever; a user without the verb is refused by the API server; abort
restores the stable revision everywhere it had spread; a new revision supersedes a pending
approval (a decision on it changes nothing); undo to a revision no longer in history is a clear
error; a controller restart in the middle of a rollout writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from accesspoint.rollout import approval_name
from federation.kube import ApiError, Gone, KubeClient
from fleet import Fleet, kubeconfig_dict, pki
from fleet.testing import (
    ControllerProcess,
    accesspoint_status,
    diff_breakdown,
    events_until,
    eventually,
    tls_gateway_template,
    wait_caught_up,
    wait_status,
    write_breakdown,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
AP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
RAP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/rolloutapprovals"
VS = "/apis/networking.istio.io/v1/namespaces/{ns}/virtualservices"
TOPOLOGY = [
    ("m-a1", "region-a", "zone-a"), ("m-a2", "region-a", "zone-a"),
    ("m-b1", "region-a", "zone-b"), ("m-b2", "region-a", "zone-b"),
    ("m-c1", "region-b", "zone-c"), ("m-c2", "region-b", "zone-c"),
]
ZONES = {"zone-a": ["m-a1", "m-a2"], "zone-b": ["m-b1", "m-b2"], "zone-c": ["m-c1", "m-c2"]}
ALL = [name for name, _, _ in TOPOLOGY]
CANARY = "m-a1"  # first by (region, zone, name)


def template(version: str) -> list[dict[str, Any]]:
    host = f"{version}.${{namespace}}.${{region}}.example"  # hosts are owned per namespace (tenancy)
    return [
        *tls_gateway_template(host, "gw-tls", name="gw"),
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "app"},
         "spec": {"hosts": [host], "gateways": ["gw"],
                  "http": [{"route": [{"destination": {"host": "app.svc.cluster.local"}}]}]}},
    ]


def accesspoint(ns: str, name: str, version: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint",
            "metadata": {"name": name, "namespace": ns}, "spec": {"template": template(version), **spec}}


# ---------------------------------------------------------------------------------------------
# fixtures: a 6-member fleet of its own, users, the controller


FLEET = {"topology": TOPOLOGY}


def user_kubeconfig(fleet: Fleet, user: str) -> Path:
    """A kubeconfig with a client certificate for `user` (no groups), signed by the hub's CA."""
    assert fleet.state is not None
    hub = fleet.state.hub
    pki_dir = hub.path / "pki"
    ca = pki.KeyPair((pki_dir / "ca.crt").read_bytes(), (pki_dir / "ca.key").read_bytes())
    path = fleet.root / f"{user}.kubeconfig"
    if not path.exists():
        pki.write_private(path, yaml.safe_dump(kubeconfig_dict("hub", hub.port, ca.cert_pem,
                                                               pki.issue(ca, user))).encode())
    return path


class Kubectl:
    def __init__(self, kubeconfig: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig),
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    async def __call__(self, *args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec("kubectl", *args, env=self.env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    async def ok(self, *args: str) -> str:
        code, out = await self(*args)
        assert code == 0, f"kubectl {' '.join(args)} failed ({code}): {out}"
        return out


@pytest.fixture(scope="module")
def admin(fleet: Fleet) -> Kubectl:
    assert fleet.state is not None
    return Kubectl(fleet.state.hub.kubeconfig)


@pytest.fixture(scope="module")
def alice(fleet: Fleet) -> Kubectl:
    return Kubectl(user_kubeconfig(fleet, "alice"))


@pytest.fixture(scope="module")
def bob(fleet: Fleet) -> Kubectl:
    return Kubectl(user_kubeconfig(fleet, "bob"))


@pytest.fixture
async def rns(hub: KubeClient, admin: Kubectl) -> str:
    """A namespace where alice holds meshfed-approver and bob may edit approvals but not `approve`."""
    ns = f"r-{uuid.uuid4().hex[:8]}"
    await admin.ok("create", "namespace", ns)
    await admin.ok("-n", ns, "create", "rolebinding", "alice-approves", "--clusterrole", "meshfed-approver",
                   "--user", "alice")
    await admin.ok("-n", ns, "create", "role", "edit-approvals", "--verb", "get,list,watch,update,patch",
                   "--resource", "rolloutapprovals,accesspoints")
    await admin.ok("-n", ns, "create", "rolebinding", "bob-edits", "--role", "edit-approvals", "--user", "bob")
    return ns


# ---------------------------------------------------------------------------------------------
# the auditor: reads every member's VirtualService, all the time


class Auditor:
    """Samples the VirtualService of every member (in `order`) and records any cluster carrying a
    version other than `stable` while it is not in `allowed` (the clusters of released waves)."""

    def __init__(self, members: dict[str, KubeClient], ns: str, stable: str, order: list[str]) -> None:
        self.members, self.ns, self.stable, self.order = members, ns, stable, order
        self.allowed: set[str] = set()
        self.samples: list[dict[str, str | None]] = []
        self.violations: list[str] = []
        self._task: asyncio.Task[None] | None = None
        # member -> version -> when its watch first delivered the VirtualService with that version:
        # the order in which waves reached the clusters, however fast they follow each other
        # (the samples above can miss a wave that lasts less than one sampling round).
        self.first_seen: dict[str, dict[str, float]] = {name: {} for name in order}
        self._watches: list[asyncio.Task[None]] = []

    async def snapshot(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for name in self.order:  # sequential, in this order (see test_default_strategy)
            vs = await self.members[name].get(f"{VS.format(ns=self.ns)}/app")
            out[name] = vs["spec"]["hosts"][0].split(".")[0] if vs else None
        return out

    async def _run(self) -> None:
        while True:
            allowed = set(self.allowed)
            snap = await self.snapshot()
            allowed |= self.allowed  # widened during the sample: either is legitimate
            self.samples.append(snap)
            for name, version in snap.items():
                if version not in (None, self.stable) and name not in allowed:
                    self.violations.append(f"sample {len(self.samples)}: {name} carries {version} "
                                           f"outside the released waves {sorted(allowed)}: {snap}")
            await asyncio.sleep(0.2)

    async def _watch(self, name: str) -> None:
        client, path = self.members[name], VS.format(ns=self.ns)
        while True:
            with contextlib.suppress(Gone, ApiError):
                items, rv = await client.list(path)
                for item in items:
                    self._saw(name, item)
                async for ev in client.watch(path, rv):
                    if ev.type in ("ADDED", "MODIFIED"):
                        self._saw(name, ev.object)
            await asyncio.sleep(0.1)

    def _saw(self, name: str, vs: dict[str, Any]) -> None:
        if vs["metadata"]["name"] == "app":
            version = vs["spec"]["hosts"][0].split(".")[0]
            self.first_seen[name].setdefault(version, time.monotonic())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        self._watches = [asyncio.create_task(self._watch(name)) for name in self.order]

    async def stop(self) -> None:
        assert self._task is not None
        for task in [self._task, *self._watches]:
            task.cancel()
        for task in [self._task, *self._watches]:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def check(self) -> None:
        assert self.samples, "the auditor took no sample"
        assert not self.violations, "release invariant broken:\n" + "\n".join(self.violations[:10])

    async def wait(self, expected: dict[str, str], timeout: float = 90) -> dict[str, str | None]:
        async def match() -> dict[str, str | None] | None:
            snap = await self.snapshot()
            return snap if all(snap[k] == v for k, v in expected.items()) else None

        return await eventually(match, timeout, interval=0.2, message=f"members should carry {expected}")


async def rollout(hub: KubeClient, ns: str, name: str) -> dict[str, Any]:
    return dict((await accesspoint_status(hub, ns, name)).get("rollout") or {})


async def wait_rollout(hub: KubeClient, ns: str, name: str, timeout: float = 90, **want: Any) -> dict[str, Any]:
    def ok(st: dict[str, Any]) -> bool:
        ro = st.get("rollout") or {}
        return all(ro.get(k) == v for k, v in want.items())

    st = await wait_status(hub, f"{AP.format(ns=ns)}/{name}", ok, timeout=timeout, show=("rollout",),
                           message=f"rollout of {ns}/{name} should reach {want}")
    return dict(st.get("rollout") or {})


async def revision(hub: KubeClient, ns: str, name: str) -> str:
    return str((await accesspoint_status(hub, ns, name)).get("revision") or "")


async def wait_revision_change(hub: KubeClient, ns: str, name: str, old: str) -> str:
    async def changed() -> str | None:
        rev = await revision(hub, ns, name)
        return rev if rev and rev != old else None

    return await eventually(changed, 60, message="the controller should see the new revision")


async def approval(hub: KubeClient, ns: str, name: str) -> dict[str, Any]:
    return await hub.get(f"{RAP.format(ns=ns)}/{name}") or {}


async def set_template(hub: KubeClient, ns: str, name: str, version: str) -> None:
    await hub.merge_patch(f"{AP.format(ns=ns)}/{name}", {"spec": {"template": template(version)}})


async def create_and_settle(hub: KubeClient, auditor: Auditor, ns: str, name: str, version: str,
                            **spec: Any) -> str:
    await hub.create(AP.format(ns=ns), accesspoint(ns, name, version, **spec), field_manager="e2e")
    await auditor.wait(dict.fromkeys(ALL, version))
    ro = await wait_rollout(hub, ns, name, phase="Succeeded", reason="InitialRevision")
    assert ro["stable"] == ro["revision"]
    return str(ro["stable"])


# ---------------------------------------------------------------------------------------------
# tests


async def test_default_strategy_stops_after_one_cluster_and_approve_releases_zone_by_zone(
    fleet: Fleet, controller: ControllerProcess, hub: KubeClient, members: dict[str, KubeClient], rns: str,
    admin: Kubectl, alice: Kubectl,
) -> None:
    ns = rns
    # Later waves are read first, so a sample never shows a later wave ahead of an earlier one
    # merely because the earlier cluster was read before it changed.
    order = ZONES["zone-c"] + ZONES["zone-b"] + ["m-a2", CANARY]
    auditor = Auditor(members, ns, "v1", order)
    auditor.start()
    try:
        v1 = await create_and_settle(hub, auditor, ns, "shop", "v1")
        auditor.allowed = {CANARY}
        await set_template(hub, ns, "shop", "v2")
        v2 = await wait_revision_change(hub, ns, "shop", v1)
        ro = await wait_rollout(hub, ns, "shop", phase="Paused", reason="AwaitingApproval", updated="1/6")
        assert ro["revision"] == v2 and ro["stable"] == v1 and ro["wave"] == "1/4 canary"
        await auditor.wait({CANARY: "v2", **{m: "v1" for m in ALL if m != CANARY}})
        await asyncio.sleep(3)  # it stays stopped after one cluster
        snap = await auditor.snapshot()
        assert snap == {CANARY: "v2", **{m: "v1" for m in ALL if m != CANARY}}, snap
        auditor.check()

        # What the user sees: the AccessPoint's columns, the approval waiting for a person.
        out = await admin.ok("get", "accesspoints", "-n", ns)
        header, row = out.splitlines()[:2]
        assert header.split()[:9] == ["NAME", "CLUSTERS", "PHASE", "VIPS", "ROLLOUT", "WAVE", "UPDATED", "REASON",
                                      "REVISION"]
        assert "Paused" in row and "1/4 canary" in row and "1/6" in row and "AwaitingApproval" in row and v2 in row
        name = approval_name("shop", v2, 1, "After")
        rap = await approval(hub, ns, name)
        assert rap["spec"]["accessPoint"] == "shop" and rap["spec"]["revision"] == v2
        assert rap["status"]["phase"] == "Pending" and "decision" not in rap["spec"]
        out = await admin.ok("get", "rolloutapprovals", "-n", ns)
        assert name in out and "Pending" in out
        status_out = await admin.ok("meshfed", "status", "shop", "-n", ns)
        assert "Rollout: Paused (AwaitingApproval)" in status_out and "canary" in status_out
        assert "zone-b" in status_out and "(not frozen)" in status_out

        # A controller restart in the middle of a rollout writes nothing, anywhere.
        async def writes() -> dict[str, int]:
            clients = {"hub": hub, **members}
            counts = await asyncio.gather(*(write_breakdown(c) for c in clients.values()))
            return {f"{n}: {k}": v for n, bd in zip(clients, counts, strict=True) for k, v in bd.items()}

        before = await writes()
        controller.restart()
        await wait_caught_up(controller, hub)  # every AccessPoint reconciled, queues empty: then count
        assert controller.proc is not None and controller.proc.poll() is None, controller.log_tail()
        changed = diff_breakdown(before, await writes())
        assert not changed, f"writes after a restart mid-rollout: {changed}"

        # alice approves with the real plugin; the rest goes zone by zone without further gates.
        auditor.allowed = set(ALL)
        out = await alice.ok("meshfed", "approve", "shop", "-n", ns, "-m", "canary looks good")
        assert f"approved RolloutApproval {name}" in out and "as alice" in out
        await auditor.wait(dict.fromkeys(ALL, "v2"))
        ro = await wait_rollout(hub, ns, "shop", phase="Succeeded", reason="Completed")
        assert ro["stable"] == v2 and ro["updated"] == "6/6"
        rap = await approval(hub, ns, name)
        assert rap["spec"]["decision"] == "Approved" and rap["spec"]["approver"] == "alice"
        assert rap["spec"]["reason"] == "canary looks good"
        await eventually(lambda: _phase_is(hub, ns, name, "Approved"), 30, message="approval status Approved")
    finally:
        await auditor.stop()
    auditor.check()
    # Zone by zone: whenever a cluster of a later wave carried v2, every earlier wave did.
    waves = [[CANARY], ["m-a2"], ZONES["zone-b"], ZONES["zone-c"]]
    for snap in auditor.samples:
        for later in range(1, len(waves)):
            if any(snap[c] == "v2" for c in waves[later]):
                earlier = [c for w in waves[:later] for c in w]
                assert all(snap[c] == "v2" for c in earlier), f"wave order broken: {snap}"
    # ... and the waves reached the clusters one after the other: every cluster of a wave carried v2
    # (seen by its watch) before any cluster of the next wave did.
    reached = {c: auditor.first_seen[c].get("v2") for c in ALL}
    assert all(t is not None for t in reached.values()), f"v2 not seen by every member's watch: {reached}"
    for wave, next_wave in itertools.pairwise(waves):
        assert max(reached[c] or 0.0 for c in wave) < min(reached[c] or 0.0 for c in next_wave), \
            f"wave {next_wave} reached before wave {wave} was done: {reached}"
    def every_reason(events: list[dict[str, Any]]) -> None:
        reasons = [e["reason"] for e in events if e["involvedObject"]["name"] == "shop"]
        for reason in ("ClusterApplied", "RolloutStarted", "AwaitingApproval", "Approved", "WaveStarted",
                       "RolloutCompleted"):
            assert reason in reasons, (reason, reasons)

    await events_until(hub, ns, every_reason)


async def _phase_is(hub: KubeClient, ns: str, name: str, phase: str) -> bool:
    return bool(((await approval(hub, ns, name)).get("status") or {}).get("phase") == phase)


WAVES = {
    "waves": [
        {"name": "canary", "clusterSelector": {"matchLabels": {"meshfed.io/cluster-name": CANARY}},
         "after": [{"type": "Approval"}]},
        {"name": "zone-a", "clusterSelector": {"matchLabels": {"topology.kubernetes.io/zone": "zone-a"}},
         "after": [{"type": "Approval"}]},
        {"name": "zone-b", "clusterSelector": {"matchLabels": {"topology.kubernetes.io/zone": "zone-b"}},
         "after": [{"type": "Approval"}]},
        {"name": "zone-c", "clusterSelector": {"matchLabels": {"topology.kubernetes.io/zone": "zone-c"}}},
    ],
}


async def test_each_approval_releases_one_wave_unauthorized_refused_abort_restores_stable(
    controller: ControllerProcess, hub: KubeClient, members: dict[str, KubeClient], rns: str,
    alice: Kubectl, bob: Kubectl, admin: Kubectl,
) -> None:
    ns = rns
    auditor = Auditor(members, ns, "v1", ALL[::-1])
    auditor.start()
    try:
        v1 = await create_and_settle(hub, auditor, ns, "cart", "v1", rollout=WAVES)
        auditor.allowed = {CANARY}
        await set_template(hub, ns, "cart", "v2")
        v2 = await wait_revision_change(hub, ns, "cart", v1)
        await wait_rollout(hub, ns, "cart", phase="Paused", reason="AwaitingApproval", wave="1/4 canary")
        await auditor.wait({CANARY: "v2", "m-a2": "v1"})

        # bob may edit RolloutApprovals but lacks the `approve` verb: the API server refuses him.
        async def refused() -> str | None:
            code, out = await bob("meshfed", "approve", "cart", "-n", ns, "--dry-run")
            return out if code != 0 else None

        out = await eventually(refused, 30, message="the approval policy should refuse bob")
        assert 'may not approve' in out and "bob" in out, out
        code, out = await bob("meshfed", "approve", "cart", "-n", ns)
        assert code != 0 and "refused by the API server" in out and "may not approve" in out, out
        # ... nor can anyone approve in someone else's name.
        name1 = approval_name("cart", v2, 1, "After")
        code, out = await alice("-n", ns, "patch", "rolloutapproval", name1, "--type", "merge", "-p",
                                '{"spec": {"decision": "Approved", "approver": "carol"}}')
        assert code != 0 and "spec.approver must be the user making the decision" in out, out
        rap = await approval(hub, ns, name1)
        assert "decision" not in rap["spec"]
        await asyncio.sleep(2)
        assert (await rollout(hub, ns, "cart"))["reason"] == "AwaitingApproval"

        # Each approval releases exactly the next wave.
        auditor.allowed |= set(ZONES["zone-a"])
        await alice.ok("meshfed", "approve", "cart", "-n", ns)
        await wait_rollout(hub, ns, "cart", phase="Paused", reason="AwaitingApproval", wave="2/4 zone-a")
        await auditor.wait({"m-a2": "v2", "m-b1": "v1", "m-b2": "v1", "m-c1": "v1", "m-c2": "v1"})
        auditor.allowed |= set(ZONES["zone-b"])
        await alice.ok("meshfed", "approve", "cart", "-n", ns, "--wave", "2")
        ro = await wait_rollout(hub, ns, "cart", phase="Paused", reason="AwaitingApproval", wave="3/4 zone-b")
        snap = await auditor.wait({**dict.fromkeys(ALL[:4], "v2"), "m-c1": "v1", "m-c2": "v1"})
        assert ro["updated"] == "4/6", ro
        auditor.check()

        # Abort: every cluster that got v2 returns to v1 (the stable revision); zone-c never saw v2.
        out = await admin.ok("meshfed", "abort", "cart", "-n", ns)
        assert f"abort requested for revision {v2}" in out
        await auditor.wait(dict.fromkeys(ALL, "v1"))
        ro = await wait_rollout(hub, ns, "cart", phase="Aborted", reason="Aborted")
        assert ro["stable"] == v1 and ro["revision"] == v2

        # The phase is Aborted at once; the message follows the reconcile that sees the members'
        # reports of the stable revision (after the auditor saw the writes): wait for it.
        async def back_on_stable() -> dict[str, Any]:
            now = await rollout(hub, ns, "cart")
            assert "every cluster is back on stable revision" in now["message"], now["message"]
            return now

        ro = await eventually(back_on_stable, 30, message="the rollout should report every cluster on stable")
        assert ro["phase"] == "Aborted" and ro["stable"] == v1 and ro["revision"] == v2
        name3 = approval_name("cart", v2, 3, "After")
        await eventually(lambda: _phase_is(hub, ns, name3, "Cancelled"), 30, message="pending approval Cancelled")
        st = (await hub.get(f"{AP.format(ns=ns)}/cart") or {})["status"]
        assert {c["name"]: c["revision"] for c in st["clusters"]} == dict.fromkeys(ALL, v1)
        await asyncio.sleep(2)
        snap = await auditor.snapshot()
        assert snap == dict.fromkeys(ALL, "v1"), snap
    finally:
        await auditor.stop()
    auditor.check()
    assert not any(s["m-c1"] == "v2" or s["m-c2"] == "v2" for s in auditor.samples)
    def aborted(events: list[dict[str, Any]]) -> None:
        reasons = [e["reason"] for e in events if e["involvedObject"]["name"] == "cart"]
        assert "Aborted" in reasons and "WaveReverted" in reasons and "AbortCompleted" in reasons, reasons

    await events_until(hub, ns, aborted)


async def test_new_revision_supersedes_pending_approval_and_undo_outside_history_is_refused(
    controller: ControllerProcess, hub: KubeClient, members: dict[str, KubeClient], rns: str,
    alice: Kubectl, admin: Kubectl,
) -> None:
    ns = rns
    auditor = Auditor(members, ns, "v1", ALL[::-1])
    auditor.start()
    try:
        limit = {"metadata": {"annotations": {"meshfed.io/revision-history-limit": "2"}}}
        await hub.create(AP.format(ns=ns), {**accesspoint(ns, "sup", "v1"), **{
           "metadata": {"name": "sup", "namespace": ns, **limit["metadata"]}}}, field_manager="e2e")
        await auditor.wait(dict.fromkeys(ALL, "v1"))
        v1 = str((await wait_rollout(hub, ns, "sup", phase="Succeeded"))["stable"])
        auditor.allowed = {CANARY}
        await set_template(hub, ns, "sup", "v2")
        v2 = await wait_revision_change(hub, ns, "sup", v1)
        await wait_rollout(hub, ns, "sup", phase="Paused", reason="AwaitingApproval", revision=v2)
        await auditor.wait({CANARY: "v2"})
        old = approval_name("sup", v2, 1, "After")
        await eventually(lambda: _phase_is(hub, ns, old, "Pending"), 30, message="approval Pending")

        # v3 supersedes v2: the pending approval is void, the canary carries v3 (its wave 1 again).
        await set_template(hub, ns, "sup", "v3")
        v3 = await wait_revision_change(hub, ns, "sup", v2)
        await wait_rollout(hub, ns, "sup", phase="Paused", reason="AwaitingApproval", revision=v3, stable=v1)
        await auditor.wait({CANARY: "v3", **{m: "v1" for m in ALL if m != CANARY}})
        await eventually(lambda: _phase_is(hub, ns, old, "Superseded"), 30, message="old approval Superseded")
        # A decision on the superseded approval is recorded by the API server but changes nothing.
        await alice.ok("-n", ns, "patch", "rolloutapproval", old, "--type", "merge", "-p",
                       '{"spec": {"decision": "Approved", "approver": "alice"}}')
        await asyncio.sleep(3)
        rap = await approval(hub, ns, old)
        assert rap["status"]["phase"] == "Superseded" and "superseded" in rap["status"]["message"], rap["status"]
        snap = await auditor.snapshot()
        assert snap == {CANARY: "v3", **{m: "v1" for m in ALL if m != CANARY}}, snap
        assert (await rollout(hub, ns, "sup"))["reason"] == "AwaitingApproval"
        auditor.check()

        # History limit 2 keeps the stable revision (1) and the newest (3): revision 2 is gone.
        out = await admin.ok("meshfed", "history", "sup", "-n", ns)
        numbers = [line.split()[0] for line in out.splitlines()[1:]]
        assert numbers == ["1", "3"], out
        code, out = await admin("meshfed", "undo", "sup", "-n", ns, "--to-revision", "2")
        assert code != 0 and "revision 2 is not in the history (kept: 1, 3" in out, out
        assert await revision(hub, ns, "sup") == v3  # nothing changed

        # Undo to revision 1 (the stable one) is a new revision equal to stable: back at once.
        out = await admin.ok("meshfed", "undo", "sup", "-n", ns, "--to-revision", "1")
        assert "re-deployed as a new revision" in out
        await auditor.wait(dict.fromkeys(ALL, "v1"))
        auditor.allowed = set()
        ro = await wait_rollout(hub, ns, "sup", phase="Succeeded", reason="StableRevision")
        assert ro["stable"] == v1 and ro["revision"] == v1
        out = await admin.ok("meshfed", "history", "sup", "-n", ns)
        assert [line.split()[0] for line in out.splitlines()[1:]][-1] == "4", out
    finally:
        await auditor.stop()
    auditor.check()


def test_plugin_is_found_by_kubectl() -> None:
    out = subprocess.run(["kubectl", "meshfed", "--help"], capture_output=True, text=True, check=True,
                         env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    for verb in ("approve", "reject", "undo", "promote", "abort", "pause", "resume"):
        assert verb in out.stdout
