"""The propagation bench's figures (e2e/bench/propagation.py): which of the hub's requests during the bulk
are the controller's writes (`meshfed_hub_writes`: issue 20's hub-writes figure counts those, Leases
included), and the bulk ratio balanced over the order of the pairs (`balanced_ratio`)."""

from __future__ import annotations

import math

import pytest

from e2e.bench.propagation import balanced_ratio, meshfed_hub_writes


def test_the_controllers_writes_leases_included_the_benchs_creates_and_reads_not() -> None:
    hub_requests = {"APPLY accesspoints/status": 517, "GET /openapi/v3": 12, "GET endpoints": 5, "LIST leases": 26,
                    "POST accesspoints": 500, "POST controllerrevisions": 500, "POST endpoints": 5,
                    "POST events": 212, "PUT leases": 31, "WATCH accesspoints": 1, "PATCH accesspoints": 3,
                    "DELETE rolloutapprovals": 1}
    assert meshfed_hub_writes(hub_requests) == {
        "APPLY accesspoints/status": 517, "POST controllerrevisions": 500, "POST events": 212, "PUT leases": 31,
        "PATCH accesspoints": 3, "DELETE rolloutapprovals": 1}


@pytest.mark.parametrize(("pairs", "expected"), [
    ([(30.0, 40.0)], 0.75),                               # one pair: its ratio
    ([(30.0, 40.0), (50.0, 50.0)], math.sqrt(0.75)),      # both orders: the geometric mean
    ([(30.0, 40.0), (50.0, 50.0), (1.0, 100.0)], math.sqrt(0.75)),  # an odd last pair is left out
    # Whichever runs second pays the same for fuller members (x 1.2): balanced, the penalty cancels out.
    ([(40.0, 50.0 * 1.2), (40.0 * 1.2, 50.0)], 0.8),
])
def test_balanced_ratio(pairs: list[tuple[float, float]], expected: float) -> None:
    assert balanced_ratio(pairs) == pytest.approx(expected)
