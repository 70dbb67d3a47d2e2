"""Revisions: content hash, bounded history, undo."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from accesspoint.models import AccessPointSpec
from accesspoint.revisions import (
    RevisionHistory,
    RevisionNotFound,
    record,
    revision_content,
    revision_hash,
    spec_of,
    undo,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def spec(port: int = 80, **extra: Any) -> AccessPointSpec:
    return AccessPointSpec.model_validate(
        {
            "template": [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "gw"},
                    "spec": {"ports": [{"port": port}]},
                }
            ],
            **extra,
        }
    )


def test_hash_covers_what_lands_on_members_only() -> None:
    base = revision_hash(spec())
    assert base == revision_hash(spec())
    assert len(base) == 10
    assert revision_hash(spec(81)) != base
    assert revision_hash(spec(placement={"clusterNames": ["a"]})) != base
    # How it lands is not what lands: no new revision.
    assert revision_hash(spec(rollout={"paused": True})) == base
    assert revision_hash(spec(rollout={"waves": [{"name": "w1"}]})) == base
    assert revision_hash(spec(deletionPolicy="Orphan")) == base
    assert revision_hash(spec(adoptExisting=True)) == base
    assert "rollout" not in revision_content(spec(rollout={"paused": True}))


def test_record_numbers_dedupes_and_is_idempotent() -> None:
    h = RevisionHistory()
    h, r1 = record(h, spec(80), T0)
    h2, same = record(h, spec(80, rollout={"paused": True}), T0 + timedelta(1))
    assert same == r1 and h2 == h
    h, r2 = record(h, spec(81), T0 + timedelta(2))
    assert (r1.number, r2.number) == (1, 2)
    # Going back to an older content is a new revision that says what it re-deploys.
    h, r3 = record(h, spec(80), T0 + timedelta(3))
    assert r3.number == 3 and r3.hash == r1.hash and r3.undo_of == 1
    assert [r.number for r in h.records] == [2, 3]


def test_record_given_the_revision_it_already_has_records_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller hashes a spec once per reconcile and hands the hash on; with it, an unchanged spec
    is not dumped again, and every history comes out as without it."""
    import accesspoint.revisions as revisions

    histories = [RevisionHistory()]
    for port, day in ((80, 0), (81, 1), (80, 2), (80, 3)):
        h = histories[-1]
        without = record(h, spec(port), T0 + timedelta(day))
        given = record(h, spec(port), T0 + timedelta(day), revision=revision_hash(spec(port)))
        assert given == without
        histories.append(given[0])
    known = revision_hash(spec(80))
    dumped: list[AccessPointSpec] = []
    monkeypatch.setattr(revisions, "revision_content", lambda s: dumped.append(s) or {})
    h, _ = record(histories[-1], spec(80), T0 + timedelta(4), revision=known)
    assert h == histories[-1] and dumped == []


def test_history_is_bounded_but_keeps_the_stable_revision() -> None:
    h = RevisionHistory(limit=2)
    h, stable = record(h, spec(1), T0)
    for port in (2, 3, 4):
        h, _ = record(h, spec(port), T0, keep=[stable.hash])
    assert [r.number for r in h.records] == [1, 4]
    h, _ = record(h, spec(5), T0)  # nothing pinned: oldest goes
    assert [r.number for r in h.records] == [4, 5]


def test_spec_of_renders_an_old_revision_with_current_rollout_settings() -> None:
    _, r1 = record(RevisionHistory(), spec(80), T0)
    current = spec(81, rollout={"paused": True}, deletionPolicy="Orphan")
    old = spec_of(r1, current)
    assert revision_hash(old) == r1.hash
    assert old.rollout is not None and old.rollout.paused
    assert old.deletion_policy == "Orphan"


def test_undo_redeploys_as_a_new_revision() -> None:
    h = RevisionHistory()
    for port in (80, 81, 82):
        h, _ = record(h, spec(port), T0)
    current = spec(82, rollout={"paused": True})
    back = undo(h, 1, current)
    assert revision_hash(back) == revision_hash(spec(80))
    assert back.rollout is not None and back.rollout.paused
    h, r = record(h, back, T0)
    assert r.number == 4 and r.undo_of == 1
    # --to-revision 0: the one before the newest.
    assert revision_hash(undo(h, 0, back)) == revision_hash(spec(82))
    # Undo to the newest changes nothing.
    assert revision_hash(undo(h, 4, back)) == revision_hash(back)


def test_undo_to_a_revision_not_in_history_is_a_clear_error() -> None:
    h = RevisionHistory(limit=2)
    for port in (80, 81, 82):
        h, _ = record(h, spec(port), T0)
    kept = r"revision 1 is not in the history \(kept: 2, 3; history limit 2\)"
    with pytest.raises(RevisionNotFound, match=kept):
        undo(h, 1, spec(82))
    with pytest.raises(RevisionNotFound, match="no previous revision"):
        undo(RevisionHistory(), 0, spec(82))
