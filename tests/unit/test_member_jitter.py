"""federation.members.jittered: members' periodic work (probes, verification lists) spread in time."""

from __future__ import annotations

from federation.members import JITTER, jittered


def test_periodic_member_work_is_spread_and_never_late() -> None:
    waits = [jittered(5.0) for _ in range(2000)]
    assert all(5.0 * (1 - JITTER) <= w <= 5.0 for w in waits)
    # spread over the whole band, not bunched: loops started together drift apart
    assert max(waits) - min(waits) > 0.9 * 5.0 * JITTER
