"""The pure traffic compiler itself rejects the bad inputs of issue 3, each message naming the field
(the wiring's validator in federation/traffic.py is a second line, not the only one)."""

from __future__ import annotations

from typing import Any

import pytest

from accesspoint.traffic import TrafficPolicy, TrafficPolicyError, compile_locality, compile_regions
from placement.models import ClusterFacts

P = "spec.traffic.locality"


def policy(locality: dict[str, Any]) -> TrafficPolicy:
    return TrafficPolicy.model_validate({"locality": locality})


@pytest.mark.parametrize(
    ("locality", "regions", "field", "needle"),
    [
        # weight 0, wherever it is written (also where these regions would not use it)
        ({"weighted": {"remotes": [{"region": "b", "weight": 0}]}}, ["a", "b"],
         f"{P}.weighted.remotes[0].weight", "weight 0 is not allowed (1..100); omit region b"),
        ({"weighted": {"localWeight": 100, "remotes": [{"region": "b", "weight": 0}]}}, ["a", "b"],
         f"{P}.weighted.remotes[0].weight", "weight 0 is not allowed"),
        ({"weighted": {"remotes": [{"region": "b", "weight": 60}, {"region": "c", "weight": 0}]}}, ["a", "b", "c"],
         f"{P}.weighted.remotes[1].weight", "weight 0 is not allowed"),
        ({"weighted": {"byRegion": [{"region": "z", "remotes": [{"region": "a", "weight": 0}]}]}}, ["a", "b"],
         f"{P}.weighted.byRegion[0].remotes[0].weight", "weight 0 is not allowed"),
        ({"weighted": {"localWeight": 0}}, ["a", "b"],
         f"{P}.weighted.localWeight", "weight 0 is not allowed (1..100); use mode Drain"),
        ({"weighted": {"byRegion": [{"region": "z", "localWeight": 0}]}}, ["a", "b"],
         f"{P}.weighted.byRegion[0].localWeight", "weight 0 is not allowed"),
        ({"mode": "Drain", "drain": {"regions": ["b"], "to": [{"region": "a", "weight": 0}]}}, ["a", "b"],
         f"{P}.drain.to[0].weight", "weight 0 is not allowed"),
        # weights not totalling 100
        ({"weighted": {"localWeight": 90, "remotes": [{"region": "b", "weight": 5}]}}, ["a", "b"],
         f"{P}.weighted.remotes", "weights total 95, not 100"),
        ({"weighted": {"rules": [{"from": "a/*", "to": {"a/*": 60, "b/*": 60}}]}}, ["a", "b"],
         f"{P}.weighted.rules.distribute[0]", "weights total 120, not 100"),
        ({"mode": "Drain", "drain": {"regions": ["b"], "to": [{"region": "a", "weight": 50}]}}, ["a", "b"],
         f"{P}.drain.to", "weights total 50, not 100"),
        # overlapping localities
        ({"weighted": {"rules": [{"from": "a/*", "to": {"a/*": 50, "a/z1/*": 50}}]}}, ["a"],
         f"{P}.weighted.rules.distribute[0].to", "overlap"),
        ({"weighted": {"rules": [{"from": "a/*", "to": {"a/*": 100}}, {"from": "a/z1", "to": {"a/*": 100}}]}},
         ["a"], f"{P}.weighted.rules.distribute.from", "overlap"),
        ({"weighted": {"remotes": [{"region": "b"}, {"region": "b"}]}}, ["a", "b"],
         f"{P}.weighted.remotes", "listed twice (overlapping localities)"),
        # failover and distribute together
        ({"mode": "Weighted", "failover": {"rules": [{"from": "a", "to": "b"}]}}, ["a", "b"],
         P, "failover and distribute are mutually exclusive"),
        ({"mode": "Failover", "weighted": {"localWeight": 90}}, ["a", "b"],
         P, "failover and distribute are mutually exclusive"),
        # drain of the only region / of every region
        ({"mode": "Drain", "drain": {"regions": ["a"]}}, ["a"], f"{P}.drain.regions", "the only region"),
        ({"mode": "Drain", "drain": {"regions": ["a", "b"]}}, ["a", "b"], f"{P}.drain.regions", "every region"),
    ],
)
def test_the_compiler_rejects_bad_input_naming_the_field(
    locality: dict[str, Any], regions: list[str], field: str, needle: str
) -> None:
    pol = policy(locality)
    with pytest.raises(TrafficPolicyError) as info:
        compile_regions(pol, regions)
    assert any(e.startswith(f"{field}:") and needle in e for e in info.value.errors), info.value.errors
    cluster = ClusterFacts(name="c1", region=regions[0], zone=f"{regions[0]}-1")
    with pytest.raises(TrafficPolicyError) as single:
        compile_locality(pol, cluster, regions)
    assert single.value.errors == info.value.errors


def test_valid_weights_still_compile() -> None:
    out = compile_regions(policy({"weighted": {"localWeight": 80, "remotes": [{"region": "b", "weight": 20}]}}),
                          ["a", "b"])
    fragment = out["a"]
    assert fragment is not None
    assert fragment["loadBalancer"]["localityLbSetting"]["distribute"] == [
        {"from": "a/*", "to": {"a/*": 80, "b/*": 20}}]
