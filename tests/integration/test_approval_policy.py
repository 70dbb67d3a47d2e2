"""deploy/rbac/approval-policy.yaml against a real kube-apiserver: who may approve, and as whom.

Uses kubectl (the user's own path) with impersonation (`--as`) from the admin kubeconfig.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from accesspoint.rollout import PROMOTE_ANNOTATION, approval_name

pytestmark = pytest.mark.integration

POLICY = Path(__file__).resolve().parents[2] / "deploy" / "rbac" / "approval-policy.yaml"


class Kubectl:
    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace

    async def __call__(
        self, *args: str, user: str | None = None, stdin: str | None = None
    ) -> tuple[int, str]:
        cmd = ["kubectl", "--kubeconfig", str(self.kubeconfig), "-n", self.namespace, *args]
        if user:
            cmd += ["--as", user]
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate(stdin.encode() if stdin else None)
        return proc.returncode or 0, out.decode()

    async def ok(self, *args: str, user: str | None = None, stdin: str | None = None) -> str:
        code, out = await self(*args, user=user, stdin=stdin)
        assert code == 0, f"kubectl {' '.join(args)} failed: {out}"
        return out

    async def decide(self, name: str, user: str, *extra: str, **spec: Any) -> tuple[int, str]:
        patch = json.dumps({"spec": spec})
        return await self("patch", "rolloutapproval", name, "--type", "merge", "-p", patch, *extra, user=user)

    async def until_refused(self, *args: str, user: str) -> str:
        """The API server loads policies asynchronously: probe with a server-side dry run."""
        deadline = time.monotonic() + 30
        while True:
            code, out = await self(*args, "--dry-run=server", user=user)
            if code != 0:
                return out
            assert time.monotonic() < deadline, f"policy never enforced: {out}"
            await asyncio.sleep(0.3)


async def test_only_an_authorized_user_can_decide_and_only_as_themselves(apiserver: Any) -> None:
    ns = f"appr-{uuid.uuid4().hex[:6]}"
    k = Kubectl(Path(apiserver.kubeconfig), ns)
    await k.ok("apply", "-f", str(POLICY))
    await k.ok("create", "namespace", ns)
    await k.ok(
        "create", "rolebinding", "alice-approves", "--clusterrole", "meshfed-approver", "--user", "alice"
    )
    # bob may edit approvals but lacks the `approve` verb on accesspoints.
    await k.ok(
        "create", "role", "edit-approvals", "--verb", "get,update,patch", "--resource", "rolloutapprovals"
    )
    await k.ok("create", "rolebinding", "bob-edits", "--role", "edit-approvals", "--user", "bob")

    name = approval_name("checkout", "rev-b", 1, "After")
    approval = {
        "apiVersion": "meshfed.io/v1alpha1",
        "kind": "RolloutApproval",
        "metadata": {"name": name},
        "spec": {
            "accessPoint": "checkout",
            "revision": "rev-b",
            "wave": 1,
            "waveName": "canary",
            "gate": "After",
        },
    }
    await k.ok("create", "-f", "-", stdin=json.dumps(approval))  # the controller's part

    bob = json.dumps({"spec": {"decision": "Approved", "approver": "bob"}})
    out = await k.until_refused("patch", "rolloutapproval", name, "--type", "merge", "-p", bob, user="bob")
    assert 'user "bob" may not approve AccessPoint' in out and "approve" in out, out
    code, out = await k.decide(name, "bob", decision="Approved", approver="bob")
    assert code != 0 and "may not approve" in out, out

    code, out = await k.decide(name, "alice", decision="Approved", approver="bob")
    assert code != 0 and 'spec.approver must be the user making the decision: set it to "alice"' in out, out

    code, out = await k.decide(name, "alice", reason="looks good")  # no decision: nothing to check
    assert code == 0, out
    await k.ok("patch", "rolloutapproval", name, "--type", "merge", "-p", '{"spec":{"reason":""}}')

    code, out = await k.decide(name, "alice", decision="Approved", approver="alice", reason="canary is fine")
    assert code == 0, out
    got = json.loads(await k.ok("get", "rolloutapproval", name, "-o", "json"))
    assert (got["spec"]["decision"], got["spec"]["approver"]) == ("Approved", "alice")

    # Recorded decisions stand.
    code, out = await k.decide(name, "alice", decision="Rejected", approver="alice")
    assert code != 0 and "spec.decision cannot be changed once set" in out, out
    code, out = await k.decide(name, "alice", reason="changed my mind")
    assert code != 0 and "cannot change once a decision is recorded" in out, out

    # A decision must name an approver (CRD rule), even for an admin.
    other = approval_name("checkout", "rev-b", 2, "After")
    approval["metadata"]["name"] = other
    approval["spec"] = {**approval["spec"], "wave": 2, "decision": "Approved"}
    code, out = await k("create", "-f", "-", stdin=json.dumps(approval))
    assert code != 0 and "spec.approver is required when spec.decision is set" in out, out

    # kubectl get shows what waits for whom.
    table = await k.ok("get", "rolloutapprovals")
    assert "ACCESSPOINT" in table and "DECISION" in table and "alice" in table


async def test_promote_full_needs_the_promote_verb(apiserver: Any) -> None:
    ns = f"prom-{uuid.uuid4().hex[:6]}"
    k = Kubectl(Path(apiserver.kubeconfig), ns)
    await k.ok("apply", "-f", str(POLICY))
    await k.ok("create", "namespace", ns)
    await k.ok(
        "create", "role", "edit-ap", "--verb", "get,update,patch", "--resource", "accesspoints.meshfed.io"
    )
    await k.ok("create", "rolebinding", "bob-edits", "--role", "edit-ap", "--user", "bob")
    await k.ok(
        "create", "rolebinding", "carol-promotes", "--clusterrole", "meshfed-promoter", "--user", "carol"
    )
    ap = {
        "apiVersion": "meshfed.io/v1alpha1",
        "kind": "AccessPoint",
        "metadata": {"name": "checkout"},
        "spec": {
            "template": [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gw"}, "spec": {}}]
        },
    }
    await k.ok("create", "-f", "-", stdin=json.dumps(ap))
    out = await k.until_refused(
        "annotate", "accesspoint", "checkout", f"{PROMOTE_ANNOTATION}=rev-b", user="bob"
    )
    assert 'user "bob" may not promote AccessPoint' in out and 'needs the "promote" verb' in out, out
    await k.ok("annotate", "accesspoint", "checkout", f"{PROMOTE_ANNOTATION}=rev-b", user="carol")
    # Unrelated edits by bob still work while the promotion annotation stays.
    await k.ok("label", "accesspoint", "checkout", "team=payments", user="bob")
