"""What a person does to a rollout, as themselves: approve/reject the waiting gate, abort, promote --full, undo.

Owns the requests behind `kubectl meshfed approve|reject|abort|promote|undo` (cli.rollout) and the
dashboard's buttons (dashboard.server), so both act alike. Every change goes through the API server
with the caller's own client (their kubeconfig identity), which checks it: approve/reject set
`spec.decision` of the waiting RolloutApproval with `spec.approver` = the user the API server reports
(SelfSubjectReview), and deploy/rbac/approval-policy.yaml refuses anyone without the `approve` verb;
promote --full sets an annotation that needs the `promote` verb; abort sets an annotation; undo
writes an old revision's spec back (a new revision that rolls out like any change). A refusal is the
API server's ApiError, raised as it is; a request that cannot be made is an `ActionError`.

Imports accesspoint (models, revisions, rollout annotations) and federation.rollouts; no module state.
"""

from __future__ import annotations

from typing import Any

from accesspoint.models import AccessPoint
from accesspoint.revisions import RevisionNotFound, revision_hash, undo
from accesspoint.rollout import ABORT_ANNOTATION, PROMOTE_ANNOTATION
from federation.kube import KubeClient
from federation.rollouts import read_history, whoami

AP_PATH = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints/{name}"
APPROVALS_PATH = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/rolloutapprovals"
FIELD_MANAGER = "kubectl-meshfed"


class ActionError(Exception):
    """The action cannot be asked for (nothing waits, no rollout, unknown revision): one line for the user."""


async def accesspoint(client: KubeClient, ns: str, name: str) -> dict[str, Any]:
    obj = await client.get(AP_PATH.format(ns=ns, name=name))
    if obj is None:
        raise ActionError(f"AccessPoint {ns}/{name} not found (list them with: kubectl get ap -A)")
    return obj


def rollout_revision(obj: dict[str, Any]) -> str:
    ro = (obj.get("status") or {}).get("rollout") or {}
    rev = ro.get("revision")
    if not rev:
        raise ActionError(f"AccessPoint {obj['metadata']['namespace']}/{obj['metadata']['name']} has no rollout "
                          "yet (the controller has not reported one)")
    return str(rev)


async def decide(client: KubeClient, ns: str, name: str, approve: bool, *, wave: int | None = None,
                 message: str = "", dry_run: bool = False) -> str:
    """Approve (or reject) the first waiting gate of the current revision, as the caller."""
    decision = "Approved" if approve else "Rejected"
    obj = await accesspoint(client, ns, name)
    revision = rollout_revision(obj)
    items, _ = await client.list(APPROVALS_PATH.format(ns=ns))
    mine = [a for a in items if (a.get("spec") or {}).get("accessPoint") == name]
    if wave is not None:
        mine = [a for a in mine if a["spec"].get("wave") == wave]
    current = [a for a in mine if a["spec"].get("revision") == revision and not a["spec"].get("decision")]
    waiting = [a for a in current if (a.get("status") or {}).get("phase") in (None, "Pending")]
    if not waiting:
        decided = [a for a in mine if a["spec"].get("revision") == revision and a["spec"].get("decision")]
        other = [a for a in mine if a["spec"].get("revision") != revision and not a["spec"].get("decision")]
        detail = ""
        if decided:
            detail += "; already decided: " + ", ".join(
                f"{a['metadata']['name']} ({a['spec']['decision']} by {a['spec'].get('approver')})" for a in decided)
        if other:
            detail += "; for superseded revisions (nothing to decide): " + ", ".join(
                a["metadata"]["name"] for a in other)
        raise ActionError(f"nothing awaits a decision for AccessPoint {ns}/{name} revision {revision}{detail}")
    waiting.sort(key=lambda a: (a["spec"].get("wave", 0), a["spec"].get("gate") != "Before"))
    target = waiting[0]
    user = await whoami(client)
    patch: dict[str, Any] = {"spec": {"decision": decision, "approver": user}}
    if message:
        patch["spec"]["reason"] = message
    rap = target["metadata"]["name"]
    await client.request("PATCH", f"{APPROVALS_PATH.format(ns=ns)}/{rap}", body=patch,
                         query={"dryRun": "All"} if dry_run else None, content_type="application/merge-patch+json")
    spec = target["spec"]
    what = "approved" if approve else "rejected"
    return (f"{what} RolloutApproval {rap} (revision {spec['revision']}, wave {spec['wave']} "
            f"{spec.get('waveName', '')}, {spec['gate'].lower()} gate) as {user}" + (" (dry run)" if dry_run else ""))


async def annotate(client: KubeClient, ns: str, name: str, action: str) -> str:
    """`abort` or `promote` (--full) the rollout in progress."""
    obj = await accesspoint(client, ns, name)
    revision = rollout_revision(obj)
    stable = ((obj.get("status") or {}).get("rollout") or {}).get("stable")
    if revision == stable:
        raise ActionError(f"revision {revision} is already stable: no rollout in progress")
    annotation = ABORT_ANNOTATION if action == "abort" else PROMOTE_ANNOTATION
    await client.merge_patch(AP_PATH.format(ns=ns, name=name), {"metadata": {"annotations": {annotation: revision}}},
                             field_manager=FIELD_MANAGER)
    if action == "abort":
        return f"abort requested for revision {revision}: clusters return to stable revision {stable}"
    return f"promote --full requested for revision {revision}: remaining gates are skipped"


async def undo_to(client: KubeClient, ns: str, name: str, to_revision: int) -> str:
    """Re-deploy revision `to_revision` (0: the previous one) as a new revision."""
    obj = await accesspoint(client, ns, name)
    history = await read_history(client, obj)
    current = AccessPoint.model_validate(obj).spec
    try:
        spec = undo(history, to_revision, current)
    except RevisionNotFound as err:
        raise ActionError(f"AccessPoint {ns}/{name}: {err} (see: history {name})") from None
    target = history.by_hash(revision_hash(spec))
    number = target.number if target is not None else to_revision
    what = f"revision {number} ({revision_hash(spec)})" + (" (the previous one)" if not to_revision else "")
    if revision_hash(spec) == revision_hash(current):
        return f"AccessPoint {ns}/{name}: {what} is already the current revision: nothing to do"
    body = {k: v for k, v in obj.items() if k != "status"}
    body["spec"] = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    await client.request("PUT", AP_PATH.format(ns=ns, name=name), body=body, query={"fieldManager": FIELD_MANAGER})
    return f"AccessPoint {ns}/{name}: {what} re-deployed as a new revision; it rolls out like any change"
