"""Which of the hub's requests during the propagation bench's bulk are the controller's writes
(e2e/bench/propagation.py `meshfed_hub_writes`): issue 20's hub-writes figure counts those, Leases included."""

from __future__ import annotations

from e2e.bench.propagation import meshfed_hub_writes


def test_the_controllers_writes_leases_included_the_benchs_creates_and_reads_not() -> None:
    hub_requests = {"APPLY accesspoints/status": 517, "GET /openapi/v3": 12, "GET endpoints": 5, "LIST leases": 26,
                    "POST accesspoints": 500, "POST controllerrevisions": 500, "POST endpoints": 5,
                    "POST events": 212, "PUT leases": 31, "WATCH accesspoints": 1, "PATCH accesspoints": 3,
                    "DELETE rolloutapprovals": 1}
    assert meshfed_hub_writes(hub_requests) == {
        "APPLY accesspoints/status": 517, "POST controllerrevisions": 500, "POST events": 212, "PUT leases": 31,
        "PATCH accesspoints": 3, "DELETE rolloutapprovals": 1}
