"""AccessPoint revisions: the content hash of what lands on members, and the bounded history.

Owns: which parts of an AccessPointSpec make a revision (everything that changes what a member
receives: template, overrides, traffic, placement, ...; not `rollout`, `deletionPolicy` or
`adoptExisting`, which steer how it lands), the revision hash, the history of recent revisions with a
snapshot of those parts (enough to render any of them again), and `undo` (an old revision
re-deployed as a new one).

Imports accesspoint.meta and accesspoint.models only. Pure: no I/O, no clock (`now` is passed in).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pydantic import Field

from accesspoint.meta import ApiModel
from accesspoint.models import AccessPointSpec

# Spec fields (wire names) that do not change what lands on a member: changing them makes no new
# revision. Everything else does, including fields added later (a missed field would silently skip
# the rollout; an extra one only costs a rollout of identical content).
NOT_REVISIONED: frozenset[str] = frozenset({"rollout", "deletionPolicy", "adoptExisting"})

DEFAULT_HISTORY_LIMIT = 10
HASH_LENGTH = 10


class RevisionNotFound(ValueError):
    """`undo --to-revision N` names a revision that is not (or no longer) in the history."""


class RevisionRecord(ApiModel):
    number: int = Field(ge=1)
    hash: str = Field(min_length=1)
    created_at: datetime = Field(alias="createdAt")
    # The revisioned parts of the spec (wire form, defaults omitted): with the current spec's
    # non-revisioned parts, enough to render this revision again (see `spec_of`).
    content: dict[str, Any] = Field(default_factory=dict)
    # Set when this revision was created by `undo`: the number it re-deployed.
    undo_of: int | None = Field(default=None, alias="undoOf")


class RevisionHistory(ApiModel):
    """Newest last. Numbers grow; one record per hash (re-deploying a hash renumbers it)."""

    limit: int = Field(default=DEFAULT_HISTORY_LIMIT, ge=1)
    records: list[RevisionRecord] = Field(default_factory=list)

    @property
    def latest(self) -> RevisionRecord | None:
        return self.records[-1] if self.records else None

    def by_hash(self, hash_: str) -> RevisionRecord | None:
        return next((r for r in self.records if r.hash == hash_), None)

    def by_number(self, number: int) -> RevisionRecord | None:
        return next((r for r in self.records if r.number == number), None)


def revision_content(spec: AccessPointSpec) -> dict[str, Any]:
    """The parts of `spec` that make its revision, in wire form with default values left out.

    Defaults are left out so that adding an optional field to the API later does not change the
    hash of every existing AccessPoint (which would roll out identical content everywhere).
    """
    dumped = spec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
    return {k: v for k, v in dumped.items() if k not in NOT_REVISIONED}


def content_hash(content: dict[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]


def revision_hash(spec: AccessPointSpec) -> str:
    """The revision of `spec`: a short, stable content hash (what members record they carry)."""
    return content_hash(revision_content(spec))


def record(
    history: RevisionHistory,
    spec: AccessPointSpec,
    now: datetime,
    keep: Iterable[str] = (),
    revision: str | None = None,
) -> tuple[RevisionHistory, RevisionRecord]:
    """Record `spec` as the newest revision; return the new history and the spec's record.

    Unchanged when `spec` hashes like the newest record. A spec that hashes like an older record
    becomes a new revision (new number, `undoOf` = the old number; the old record is dropped, as a
    Deployment renumbers a ReplicaSet). The oldest records beyond `history.limit` are dropped,
    except the hashes in `keep` (pass the stable revision: an abort must still be able to render it).
    `revision`: `revision_hash(spec)` when the caller has it (the content is then dumped only for a
    new record, not on every reconcile).
    """
    hash_ = revision if revision is not None else revision_hash(spec)
    latest = history.latest
    if latest is not None and latest.hash == hash_:
        return history, latest
    content = revision_content(spec)
    number = latest.number + 1 if latest is not None else 1
    older = history.by_hash(hash_)
    new = RevisionRecord(
        number=number, hash=hash_, created_at=now, content=content, undo_of=older.number if older else None
    )
    records = [r for r in history.records if r.hash != hash_] + [new]
    pinned = set(keep) | {hash_}
    while len(records) > history.limit:
        victim = next((r for r in records if r.hash not in pinned), None)
        if victim is None:
            break
        records.remove(victim)
    return history.model_copy(update={"records": records}), new


def spec_of(record_: RevisionRecord, current: AccessPointSpec) -> AccessPointSpec:
    """The full spec of an old revision: its snapshot plus the current non-revisioned parts.

    The controller renders this for clusters that carry `record_` (e.g. the stable revision while a
    new one rolls out).
    """
    base = current.model_dump(mode="json", by_alias=True, exclude_none=True)
    kept = {k: v for k, v in base.items() if k in NOT_REVISIONED}
    return AccessPointSpec.model_validate({**record_.content, **kept})


def undo(history: RevisionHistory, to_revision: int, current: AccessPointSpec) -> AccessPointSpec:
    """The spec to write back for `undo --to-revision N` (N=0: the revision before the newest).

    Writing it makes revision N's content the newest revision again (a new number with `undoOf: N`,
    recorded by `record` on the next reconcile), which then rolls out like any change. When N is
    already the newest revision the result hashes like `current`: writing it changes nothing.
    Raises RevisionNotFound with the numbers still in history when N is not there.
    """
    if to_revision == 0:
        if len(history.records) < 2:
            raise RevisionNotFound("undo: there is no previous revision in the history")
        target = history.records[-2]
    else:
        found = history.by_number(to_revision)
        if found is None:
            kept = ", ".join(str(r.number) for r in history.records) or "none"
            raise RevisionNotFound(
                f"undo: revision {to_revision} is not in the history (kept: {kept}; "
                f"history limit {history.limit})"
            )
        target = found
    return spec_of(target, current)
