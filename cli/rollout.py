"""The rollout subcommands of `meshfed` and `kubectl meshfed` (cli.kubectl), and `shards`.

Owns the rollout subcommands (approve, reject, undo, promote --full, abort, pause, resume,
history) and the rollout part of `status`. Every change goes through the API server as the
current user, who is checked there: approve/reject set `spec.decision` of the waiting
RolloutApproval with `spec.approver` = the user the API server reports (SelfSubjectReview), and
deploy/rbac/approval-policy.yaml refuses anyone without the `approve` verb; promote --full sets an
annotation that needs the `promote` verb; abort sets an annotation; undo writes an old revision's
spec back (a new revision that rolls out like any change). The requests themselves are
federation.useractions (shared with the dashboard's buttons).

Also `kubectl meshfed shards`: who holds which shard and singleton Lease on the hub (read-only; the
table `render_shards` is pure). Imports cli.common and, lazily, the runtime.
"""

from __future__ import annotations

import argparse
from typing import Any

from accesspoint.rollout import wave_states
from cli.common import (
    UsageError,
    add_hub_options,
    non_negative_int,
    positive_int,
    run,
    table,
)

AP_PATH = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints/{name}"


# ---- status: the rollout part ----

def render_rollout(status: dict[str, Any]) -> str:
    ro = status.get("rollout")
    if not ro:
        return ""
    lines = [
        "",
        f"Rollout: {ro.get('phase', '-')}"
        + (f" ({ro['reason']})" if ro.get("reason") else "")
        + f"   revision {ro.get('revision') or '-'}   stable {ro.get('stable') or '-'}   "
        f"wave {ro.get('wave') or '-'}   updated {ro.get('updated', '-')}",
    ]
    if ro.get("message"):
        lines.append(f"  {ro['message']}")
    waves = ro.get("waves") or []
    if waves:
        rows = [["#", "WAVE", "BEFORE", "AFTER", "CLUSTERS", "RELEASED", "STATE"]]
        granted = {(g["wave"], g["gate"]): g for g in ro.get("granted") or []}
        for i, (w, state) in enumerate(zip(waves, wave_states(ro), strict=True)):

            def gates(position: str, items: list[dict[str, Any]], number: int = i + 1) -> str:
                out = []
                for g in items:
                    label = g["type"] + (f" {g['duration']}" if g.get("duration") else "")
                    grant = granted.get((number, position))
                    if g["type"] == "Approval" and grant:
                        label += f" ✓{grant.get('approver') or grant.get('how', '')}"
                    out.append(label)
                return ",".join(out) or "-"

            clusters = w.get("clusters")
            rows.append([str(i + 1), w["name"], gates("Before", w.get("before") or []),
                         gates("After", w.get("after") or []),
                         ",".join(clusters) if clusters is not None else "(not frozen)",
                         ",".join(w.get("released") or []) or "-", state])
        lines += ["", table(rows)]
    return "\n".join(lines)


async def _accesspoint(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    from federation.useractions import accesspoint

    return await accesspoint(client, args.namespace, args.name)


# ---- approve / reject / abort / promote / undo: federation.useractions (the dashboard's buttons too) ----

def cmd_decide(args: argparse.Namespace) -> None:
    from federation.useractions import decide

    async def work(client: Any) -> str:
        return await decide(client, args.namespace, args.name, args.command == "approve", wave=args.wave,
                            message=args.message, dry_run=args.dry_run)

    run(args, work)


def cmd_annotate(args: argparse.Namespace) -> None:
    from federation.useractions import annotate

    async def work(client: Any) -> str:
        return await annotate(client, args.namespace, args.name, args.command)

    if args.command == "promote" and not args.full:
        raise UsageError("promote skips gates only all at once: pass --full to skip every remaining gate "
                         f"(to release just the waiting approval: approve {args.name})")
    run(args, work)


def cmd_pause(args: argparse.Namespace) -> None:
    paused = args.command == "pause"

    async def work(client: Any) -> str:
        await _accesspoint(client, args)
        await client.merge_patch(AP_PATH.format(ns=args.namespace, name=args.name),
                                 {"spec": {"rollout": {"paused": paused}}}, field_manager="kubectl-meshfed")
        return f"AccessPoint {args.namespace}/{args.name}: rollout {'paused' if paused else 'resumed'}"

    run(args, work)


def cmd_undo(args: argparse.Namespace) -> None:
    from federation.useractions import undo_to

    async def work(client: Any) -> str:
        return await undo_to(client, args.namespace, args.name, args.to_revision)

    run(args, work)


def cmd_history(args: argparse.Namespace) -> None:
    from federation.rollouts import read_history

    async def work(client: Any) -> str:
        obj = await _accesspoint(client, args)
        history = await read_history(client, obj)
        ro = (obj.get("status") or {}).get("rollout") or {}
        rows = [["REVISION", "HASH", "CREATED", "UNDO OF", ""]]
        for r in history.records:
            mark = " ".join(x for x, h in (("stable", ro.get("stable")), ("rolling-out", ro.get("revision")))
                            if h == r.hash and (x == "stable" or ro.get("stable") != r.hash))
            rows.append([str(r.number), r.hash, r.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                         str(r.undo_of or "-"), mark])
        return table(rows) if len(rows) > 1 else "(no revisions recorded)"

    run(args, work)


def add_rollout_commands(sub: Any) -> None:
    """The rollout subcommands (registered by cli.main.build_parser)."""

    def target(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("name", help="AccessPoint name")
        return add_hub_options(p)

    for verb, help_ in (("approve", "release the waiting gate of an AccessPoint's rollout"),
                        ("reject", "reject the waiting gate (aborts the rollout)")):
        p = target(sub.add_parser(verb, help=help_))
        p.add_argument("-m", "--message", default="", help="reason recorded on the RolloutApproval")
        p.add_argument("--wave", type=positive_int, help="only the gate of this wave (1-based)")
        p.add_argument("--dry-run", action="store_true", help="ask the API server without recording anything")
        p.set_defaults(func=cmd_decide)
    p = target(sub.add_parser("undo", help="re-deploy an old revision as a new one"))
    p.add_argument("--to-revision", type=non_negative_int, default=0,
                   help="revision number, as `history` lists them (default 0: the previous revision)")
    p.set_defaults(func=cmd_undo)
    p = target(sub.add_parser("promote", help="skip every remaining gate (needs the promote verb)"))
    p.add_argument("--full", action="store_true", help="skip every remaining gate (the only promotion meshfed has)")
    p.set_defaults(func=cmd_annotate)
    target(sub.add_parser("abort", help="return every cluster to the stable revision")).set_defaults(
        func=cmd_annotate)
    target(sub.add_parser("pause", help="stop the rollout where it is (spec.rollout.paused)")).set_defaults(
        func=cmd_pause)
    target(sub.add_parser("resume", help="continue a paused rollout")).set_defaults(func=cmd_pause)
    target(sub.add_parser("history", help="the revisions kept for an AccessPoint")).set_defaults(func=cmd_history)
    p = sub.add_parser("shards", help="which controller replica holds which shard (the hub's Leases)")
    p.add_argument("--hub-id", default=None, help="only this hub id's Leases (default: all)")
    p.add_argument("--lease-namespace", default="meshfed-system")
    add_hub_options(p, namespaced=False)
    p.set_defaults(func=cmd_shards)


# ---- shards ----

def _lease_state(spec: dict[str, Any], now: float) -> str:
    import datetime as dt

    holder = spec.get("holderIdentity") or ""
    if not holder:
        return "free"
    try:
        renewed = dt.datetime.fromisoformat(str(spec.get("renewTime")).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "held"
    left = renewed + float(spec.get("leaseDurationSeconds") or 0) - now
    return "held" if left > 0 else f"expired {-left:.0f}s ago"


def render_shards(leases: list[dict[str, Any]], now: float) -> str:
    """Replicas (with their shards) and every Lease: holder, state, renewal, transitions."""
    from federation.shards import LEASE_KIND, LEASE_OF, LEASE_PROTOCOL, PROTOCOL, lease_shard

    rows = [["HUB", "LEASE", "KIND", "HOLDER", "STATE", "RENEWED", "TRANSITIONS"]]
    by_holder: dict[tuple[str, str], list[int]] = {}
    replicas: list[tuple[str, str, str]] = []
    # Shard and singleton Leases of lease protocol 2 are written only when they change hands and live
    # as long as their holder's replica Lease is renewed (federation/shards.py).
    live_replicas = set()
    for r in leases:
        labels, spec = r["metadata"].get("labels") or {}, r.get("spec") or {}
        if labels.get(LEASE_KIND) == "replica" and _lease_state(spec, now) == "held":
            live_replicas.add((labels.get(LEASE_OF, ""), spec.get("holderIdentity")))
    for lease in sorted(leases, key=lambda x: x["metadata"]["name"]):
        meta, spec = lease["metadata"], lease.get("spec") or {}
        labels = meta.get("labels") or {}
        hub, kind = labels.get(LEASE_OF, ""), labels.get(LEASE_KIND, "")
        key = meta["name"][len(hub) + 1:] if meta["name"].startswith(f"{hub}-") else meta["name"]
        state = _lease_state(spec, now)
        if kind != "replica" and state.startswith("expired") and labels.get(LEASE_PROTOCOL) == PROTOCOL \
                and (hub, spec.get("holderIdentity")) in live_replicas:
            state = "held"
        holder = spec.get("holderIdentity") or "-"
        if kind == "replica":
            replicas.append((hub, holder, state))
            continue
        shard = lease_shard(key)
        if shard is not None and state == "held":
            by_holder.setdefault((hub, holder), []).append(shard)
        rows.append([hub, key, kind, holder, state, str(spec.get("renewTime") or "-"),
                     str(spec.get("leaseTransitions", 0))])
    out = []
    if replicas:
        reps = [["HUB", "REPLICA", "STATE", "SHARDS", "HELD"]]
        for hub, holder, state in sorted(replicas):
            held = sorted(by_holder.get((hub, holder), []))
            reps.append([hub, holder, state, str(len(held)), ",".join(map(str, held)) or "-"])
        out += [table(reps), ""]
    out.append(table(rows) if len(rows) > 1 else "(no shard Leases: is a sharded meshfed controller running?)")
    return "\n".join(out)


def cmd_shards(args: argparse.Namespace) -> None:
    import time

    from federation.shards import LEASE_OF, LEASES

    async def work(client: Any) -> str:
        selector = f"{LEASE_OF}={args.hub_id}" if args.hub_id else LEASE_OF
        items, _ = await client.list(LEASES.format(ns=args.lease_namespace), label_selector=selector)
        return render_shards(items, time.time())

    run(args, work)

