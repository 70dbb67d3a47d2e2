"""Traffic compiler: table tests (99/1, 98/1/1, drain, failover), bad input, Istio-rule properties."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accesspoint.traffic import (
    DistributeRule,
    DrainLocality,
    FailoverLocality,
    FailoverRule,
    LocalityPolicy,
    OutlierDetection,
    RegionWeight,
    TrafficPolicy,
    TrafficPolicyError,
    WeightedLocality,
    apply_traffic,
    check_locality_lb_setting,
    compile_locality,
    compile_regions,
    traffic_conditions,
    validate_policy,
)
from placement.models import ClusterFacts


def cluster(region: str, zone: str = "") -> ClusterFacts:
    return ClusterFacts(name=f"{region}-1", region=region, zone=zone or f"{region}-a", ready=True)


def tp(**locality: Any) -> TrafficPolicy:
    return TrafficPolicy.model_validate({"locality": locality})


def distribute(frag: dict[str, Any] | None) -> dict[str, dict[str, int]]:
    assert frag is not None
    lb = frag["loadBalancer"]["localityLbSetting"]
    return {d["from"]: d["to"] for d in lb["distribute"]}


OUTLIER = {"consecutive5xxErrors": 5, "interval": "5s", "baseEjectionTime": "30s", "maxEjectionPercent": 100}


@pytest.mark.parametrize(
    ("policy", "region", "regions", "expected"),
    [
        # 99/1, two regions
        (
            tp(mode="Weighted"),
            "us-east",
            ["us-east", "us-west"],
            {"us-east/*": {"us-east/*": 99, "us-west/*": 1}},
        ),
        (
            tp(mode="Weighted"),
            "us-west",
            ["us-east", "us-west"],
            {"us-west/*": {"us-east/*": 1, "us-west/*": 99}},
        ),
        # three regions, 98/1/1 by default (1 per remote, the rest local)
        (
            tp(mode="Weighted"),
            "us-west",
            ["us-east", "us-west", "eu-west"],
            {"us-west/*": {"eu-west/*": 1, "us-east/*": 1, "us-west/*": 98}},
        ),
        # three regions, 98/1/1 explicit
        (
            tp(weighted={"localWeight": 98}),
            "eu-west",
            ["us-east", "us-west", "eu-west"],
            {"eu-west/*": {"eu-west/*": 98, "us-east/*": 1, "us-west/*": 1}},
        ),
        # three regions, 99 local, 1 to a named remote
        (
            tp(weighted={"remotes": [{"region": "us-west"}]}),
            "us-east",
            ["us-east", "us-west", "eu-west"],
            {"us-east/*": {"us-east/*": 99, "us-west/*": 1}},
        ),
        # uneven remainder: +1 to the first remote (sorted)
        (
            tp(weighted={"localWeight": 95}),
            "a",
            ["a", "b", "c"],
            {"a/*": {"a/*": 95, "b/*": 3, "c/*": 2}},
        ),
        # explicit weights; a client region named as remote folds its share back to local
        (
            tp(
                weighted={
                    "localWeight": 90,
                    "remotes": [{"region": "b", "weight": 7}, {"region": "c", "weight": 3}],
                }
            ),
            "a",
            ["a", "b", "c"],
            {"a/*": {"a/*": 90, "b/*": 7, "c/*": 3}},
        ),
        (
            tp(
                weighted={
                    "localWeight": 90,
                    "remotes": [{"region": "b", "weight": 7}, {"region": "c", "weight": 3}],
                }
            ),
            "b",
            ["a", "b", "c"],
            {"b/*": {"b/*": 97, "c/*": 3}},
        ),
        # per client region
        (
            tp(weighted={"byRegion": [{"region": "b", "localWeight": 80, "remotes": [{"region": "a"}]}]}),
            "b",
            ["a", "b"],
            {"b/*": {"a/*": 20, "b/*": 80}},
        ),
        # drain folds an explicit share back to local
        (
            tp(
                mode="Drain",
                drain={"regions": ["b"]},
                weighted={
                    "localWeight": 90,
                    "remotes": [{"region": "b", "weight": 7}, {"region": "c", "weight": 3}],
                },
            ),
            "a",
            ["a", "b", "c"],
            {"a/*": {"a/*": 97, "c/*": 3}},
        ),
        # single region: all local
        (tp(mode="Weighted"), "solo", ["solo"], {"solo/*": {"solo/*": 100}}),
        # drain us-west: us-east stops sending to it; us-west sends everything away
        (
            tp(mode="Drain", drain={"regions": ["us-west"]}),
            "us-east",
            ["us-east", "us-west", "eu-west"],
            {"us-east/*": {"us-east/*": 99, "eu-west/*": 1}},
        ),
        (
            tp(mode="Drain", drain={"regions": ["us-west"]}),
            "us-west",
            ["us-east", "us-west", "eu-west"],
            {"us-west/*": {"eu-west/*": 50, "us-east/*": 50}},
        ),
        (
            tp(mode="Drain", drain={"regions": ["us-west"]}),
            "us-east",
            ["us-east", "us-west"],
            {"us-east/*": {"us-east/*": 100}},
        ),
        (
            tp(mode="Drain", drain={"regions": ["b"], "to": [{"region": "c", "weight": 100}]}),
            "b",
            ["a", "b", "c"],
            {"b/*": {"c/*": 100}},
        ),
    ],
)
def test_distribute_table(policy: TrafficPolicy, region: str, regions: list[str], expected: Any) -> None:
    frag = compile_locality(policy, cluster(region), regions)
    assert distribute(frag) == expected
    assert frag is not None
    assert frag["outlierDetection"] == OUTLIER
    assert frag["loadBalancer"]["localityLbSetting"]["enabled"] is True
    assert check_locality_lb_setting(frag["loadBalancer"]["localityLbSetting"], frag["outlierDetection"]).ok


def test_failover_and_disabled() -> None:
    pol = tp(mode="Failover", failover={"rules": [{"from": "us-east", "to": "us-west"}]})
    frag = compile_locality(pol, cluster("us-east"), ["us-east", "us-west"])
    assert frag == {
        "loadBalancer": {
            "localityLbSetting": {"enabled": True, "failover": [{"from": "us-east", "to": "us-west"}]}
        },
        "outlierDetection": OUTLIER,
    }
    assert compile_locality(tp(mode="Disabled"), cluster("a"), ["a"]) == {
        "loadBalancer": {"localityLbSetting": {"enabled": False}}
    }
    assert compile_locality(TrafficPolicy(), cluster("a"), ["a"]) is None
    assert compile_locality(None, cluster("a"), ["a"]) is None
    custom = tp(mode="Failover", outlierDetection={"consecutive5xxErrors": 3, "interval": "1s"})
    frag = compile_locality(custom, cluster("a"), ["a", "b"])
    assert frag is not None
    assert frag["outlierDetection"]["maxEjectionPercent"] == 100
    assert frag["outlierDetection"]["consecutive5xxErrors"] == 3


def test_verbatim_rules() -> None:
    pol = tp(
        weighted={
            "rules": [{"from": "us-east/zone1/*", "to": {"us-east/zone1/*": 80, "us-east/zone2/*": 20}}]
        }
    )
    assert distribute(compile_locality(pol, cluster("us-east"), ["us-east"])) == {
        "us-east/zone1/*": {"us-east/zone1/*": 80, "us-east/zone2/*": 20}
    }


@pytest.mark.parametrize(
    ("policy", "regions", "needle"),
    [
        (
            tp(weighted={"localWeight": 90, "remotes": [{"region": "b", "weight": 5}]}),
            ["a", "b"],
            "total 95, not 100",
        ),
        (
            tp(weighted={"byRegion": [{"region": "b", "localWeight": 0}]}),
            ["a", "b"],
            "byRegion[0].localWeight",
        ),
        (
            tp(
                weighted={
                    "localWeight": 99,
                    "remotes": [{"region": "b", "weight": 0}, {"region": "c", "weight": 1}],
                }
            ),
            ["a", "b", "c"],
            "weight 0",
        ),
        (tp(weighted={"localWeight": 0}), ["a", "b"], "localWeight: weight 0"),
        (tp(weighted={"localWeight": 99}), ["a", "b", "c"], "1 left to share between 2 region(s)"),
        (tp(weighted={"rules": [{"from": "a/*", "to": {"a/*": 50, "a/z1/*": 50}}]}), ["a"], "overlap"),
        (
            tp(
                weighted={
                    "rules": [{"from": "a/*", "to": {"a/*": 100}}, {"from": "a/z1", "to": {"a/*": 100}}]
                }
            ),
            ["a"],
            "overlap",
        ),
        (tp(weighted={"rules": [{"from": "*/a", "to": {"a/*": 100}}]}), ["a"], "wildcard"),
        (tp(weighted={"rules": [{"from": "a", "to": {"a/*": 60, "b/*": 60}}]}), ["a"], "total 120"),
        (tp(weighted={"remotes": [{"region": "b"}, {"region": "b"}]}), ["a", "b"], "listed twice"),
        (tp(mode="Weighted", failover={"rules": []}), ["a"], "mutually exclusive"),
        (tp(mode="Failover", weighted={}), ["a"], "mutually exclusive"),
        (tp(mode="Drain", drain={"regions": ["a"]}), ["a"], "the only region"),
        (tp(mode="Drain", drain={"regions": ["a", "b"]}), ["a", "b"], "every region"),
        (tp(mode="Drain"), ["a"], "needs drain.regions"),
        (tp(mode="Failover", failover={"rules": [{"from": "a", "to": "a"}]}), ["a"], "different regions"),
        (tp(mode="Failover", failover={"rules": [{"from": "a/z1", "to": "b"}]}), ["a", "b"], "region-only"),
        (tp(mode="Failover", failover={"rules": [{"from": "a", "to": "b*"}]}), ["a", "b"], "'*'"),
    ],
)
def test_invalid_policies(policy: TrafficPolicy, regions: list[str], needle: str) -> None:
    report = validate_policy(policy, regions)
    assert not report.ok
    assert any(needle in e for e in report.errors), report.errors
    assert all(e.startswith("spec.traffic.locality") for e in report.errors), report.errors
    with pytest.raises(TrafficPolicyError) as info:
        compile_locality(policy, cluster(regions[0]), regions)
    assert info.value.errors == report.errors
    cond = traffic_conditions(report)[0]
    assert cond.status == "False" and needle in cond.message


def test_region_left_out_warns() -> None:
    pol = tp(weighted={"remotes": [{"region": "us-west"}]})
    report = validate_policy(pol, ["us-east", "us-west", "eu-west"])
    assert report.ok
    assert any("region eu-west has endpoints but clients in region us-east" in w for w in report.warnings)
    assert traffic_conditions(report)[1].status == "True"
    assert validate_policy(tp(weighted={"localWeight": 98}), ["a", "b", "c"]).warnings == []
    assert any(
        "has endpoints" in w for w in validate_policy(tp(weighted={"localWeight": 100}), ["a", "b"]).warnings
    )
    assert any(
        "no placed clusters" in w
        for w in validate_policy(tp(drain={"regions": ["x"]}, mode="Drain"), ["a", "b"]).warnings
    )


def test_apply_traffic_keeps_other_settings() -> None:
    dr = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "checkout", "namespace": "shop"},
        "spec": {
            "host": "checkout",
            "trafficPolicy": {
                "loadBalancer": {"simple": "LEAST_REQUEST"},
                "connectionPool": {"tcp": {"maxConnections": 10}},
            },
        },
    }
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {}}
    frag = compile_locality(tp(), cluster("a"), ["a", "b"])
    out = apply_traffic([dr, svc], frag)
    tpol = out[0]["spec"]["trafficPolicy"]
    assert tpol["loadBalancer"]["simple"] == "LEAST_REQUEST"
    assert tpol["loadBalancer"]["localityLbSetting"]["distribute"][0]["to"] == {"a/*": 99, "b/*": 1}
    assert tpol["connectionPool"] == {"tcp": {"maxConnections": 10}}
    assert out[1] == svc
    assert "localityLbSetting" not in dr["spec"]["trafficPolicy"]["loadBalancer"]  # input untouched
    assert apply_traffic([dr], frag, hosts=["other"])[0] == dr


def test_models() -> None:
    pol = TrafficPolicy.model_validate(
        {
            "locality": {
                "mode": "Weighted",
                "weighted": {"localWeight": 99, "remotes": [{"region": "us-west"}]},
            },
            "visibility": {"consumerNamespaces": ["web"], "maxExportTo": 8},
        }
    )
    assert pol.locality is not None and pol.locality.weighted is not None
    assert pol.locality.weighted.remotes == [RegionWeight(region="us-west")]
    assert isinstance(
        FailoverLocality(rules=[FailoverRule.model_validate({"from": "a", "to": "b"})]), FailoverLocality
    )
    assert DrainLocality(regions=["a"]).to == []
    assert OutlierDetection().max_ejection_percent == 100
    assert DistributeRule.model_validate({"from": "a", "to": {"a/*": 100}}).from_ == "a"
    with pytest.raises(ValueError):
        RegionWeight(region="a/b")
    with pytest.raises(ValueError):
        LocalityPolicy.model_validate({"mode": "Sometimes"})
    with pytest.raises(ValueError):
        WeightedLocality.model_validate({"localWeight": 101})


# ---- properties -------------------------------------------------------------------------------

region_names = st.sampled_from(["r0", "r1", "r2", "r3", "r4"])


@st.composite
def weighted_cases(draw: st.DrawFn) -> tuple[TrafficPolicy, list[str]]:
    regions = draw(st.lists(region_names, min_size=1, max_size=5, unique=True))
    mode = draw(st.sampled_from(["Weighted", "Drain"]))
    local = draw(st.one_of(st.none(), st.integers(1, 100)))
    remotes = draw(st.lists(region_names, max_size=4, unique=True))
    weighted: dict[str, Any] = {"remotes": [{"region": r} for r in remotes]}
    if local is not None:
        weighted["localWeight"] = local
    locality: dict[str, Any] = {"mode": mode, "weighted": weighted}
    if mode == "Drain":
        locality["drain"] = {"regions": draw(st.lists(st.sampled_from(regions), min_size=1, unique=True))}
    return TrafficPolicy.model_validate({"locality": locality}), regions


@settings(max_examples=400, deadline=None)
@given(case=weighted_cases(), data=st.data())
def test_compiled_always_obeys_istio(case: tuple[TrafficPolicy, list[str]], data: st.DataObject) -> None:
    policy, regions = case
    report = validate_policy(policy, regions)
    shuffled = data.draw(st.permutations(regions))
    assert validate_policy(policy, shuffled) == report  # order-free
    for region in regions:
        if not report.ok:
            with pytest.raises(TrafficPolicyError):
                compile_locality(policy, cluster(region), regions)
            continue
        frag = compile_locality(policy, cluster(region), regions)
        assert frag == compile_locality(policy, cluster(region), shuffled)  # deterministic
        assert frag == compile_regions(policy, regions)[region]
        assert frag is not None
        lb = frag["loadBalancer"]["localityLbSetting"]
        assert "failover" not in lb
        assert check_locality_lb_setting(lb, frag["outlierDetection"]).ok
        for rule in lb["distribute"]:
            assert sum(rule["to"].values()) == 100
            assert all(1 <= w <= 100 for w in rule["to"].values())
            assert rule["from"] == f"{region}/*"
        assert frag["outlierDetection"]["maxEjectionPercent"] == 100
        if policy.locality and policy.locality.mode == "Drain" and policy.locality.drain:
            for drained in policy.locality.drain.regions:
                assert f"{drained}/*" not in lb["distribute"][0]["to"]


@settings(max_examples=300, deadline=None)
@given(locs=st.lists(st.from_regex(r"\A(\*|[ab](/(\*|[xy](/(\*|[pq]))?))?)\Z"), min_size=1, max_size=4))
def test_overlap_check_symmetric(locs: list[str]) -> None:
    from accesspoint.traffic import check_localities

    ok_forward = not check_localities(locs, "x")
    ok_backward = not check_localities(list(reversed(locs)), "x")
    assert ok_forward == ok_backward


@settings(max_examples=100, deadline=None)
@given(regions=st.lists(region_names, min_size=1, max_size=5, unique=True))
def test_default_policy_is_always_valid_and_keeps_every_region(regions: list[str]) -> None:
    policy = tp(mode="Weighted")
    report = validate_policy(policy, regions)
    assert report.errors == [] and report.warnings == []
    for region in regions:
        to = distribute(compile_locality(policy, cluster(region), regions))[f"{region}/*"]
        assert set(to) == {f"{r}/*" for r in regions}
        assert to[f"{region}/*"] == 100 - (len(regions) - 1)
