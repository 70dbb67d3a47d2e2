"""`meshfed status`'s text (cli.main.render_status) from an AccessPoint's status: pure, by example."""

from __future__ import annotations

from cli.main import render_status
from tests.unit.test_dashboard_views import SHORTENED_PLACEMENT, ap


def test_not_placed_lists_the_status_clusters_and_counts_the_rest() -> None:
    body = ap()
    body["status"]["placement"] = SHORTENED_PLACEMENT
    text = render_status({"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", **body})
    assert "Not placed:\n  b0: zone b is not one of [a]\n" in text
    assert "  b19: zone b is not one of [a]\n  and 950 more not placed (NotReady 1, WrongZone 969)" in text
