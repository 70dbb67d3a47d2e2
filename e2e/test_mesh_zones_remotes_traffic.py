"""99/1 per zone in the shape users run (issue 21): hub + 2 regions x 2 zones, each zone a primary (istiod +
gateway Envoy) and an Istio remote, the echo backends only in the remotes (a Service + WorkloadEntries with
their locality, fleet.istio.remote_backend_objects). Every primary's istiod reads every remote through remote
secrets (the fleet's `mesh_wide`: one mesh, one control plane per zone), so each zone's gateway knows the
endpoints of all four zones, each in its own locality.

- An AccessPoint targeting zones (one bundle per zone, on its primary) with Weighted locality: 5,000 requests
  through each zone's gateway VIP, each region's count inside its 4-sigma binomial band (99/1), from every
  zone, also where the remote region has two zones (whose 1% the two gateways of a region spread over both);
  the gateways' own EDS hold the promised weights first; only remotes answer.
- A Drain of region-b: the time from the hub edit to every zone's DestinationRule and to the last request
  region-b served; afterwards every gateway sends everything to region-a, split over its two zones.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from test_mesh_traffic import (  # e2e/ is on sys.path for its test modules (no __init__.py)
    AP,
    assert_shares,
    entries,
    http_template,
    load,
    regions_of,
    time_drain,
    vips,
    wait_serving,
    weighted,
)
from test_mesh_zones_traffic import wait_region_weights

from federation.kube import KubeClient
from fleet import Fleet
from fleet.testing import ControllerProcess, binomial_band, condition, request_loop, wait_object

pytestmark = pytest.mark.e2e

ZONES = [("a1", "region-a", "region-a-1"), ("a2", "region-a", "region-a-2"),
         ("b1", "region-b", "region-b-1"), ("b2", "region-b", "region-b-2")]
TOPOLOGY = [(f"{role}-{z}", region, zone) for z, region, zone in ZONES for role in ("zp", "zr")]
REMOTES = {f"zr-{z}": f"zp-{z}" for z, _, _ in ZONES}
FLEET: dict[str, Any] = {"topology": TOPOLOGY, "istio": True, "remotes": REMOTES, "mesh_wide": True}
PRIMARIES = [f"zp-{z}" for z, _, _ in ZONES]
REGION = {name: region for name, region, _ in TOPOLOGY}
ZONE = {name: zone for name, _, zone in TOPOLOGY}
OTHER = {"region-a": "region-b", "region-b": "region-a"}
SPLIT_REQUESTS = 5000  # per zone gateway
CONNECTIONS = 6


@pytest.fixture
async def ns(namespace: str, controller: ControllerProcess, fleet: Fleet) -> str:
    """A hub namespace whose echo Service has its endpoints in the four remotes only."""
    await fleet.publish_remote_backends(namespace)
    return namespace


def echo_host(ns: str) -> str:
    return f"echo.{ns}.svc.cluster.local"


def zonal(ns: str, name: str, host: str, traffic: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": name, "namespace": ns},
            "spec": {"template": http_template(host, echo_host(ns), rule=True), "placement": {"target": "Zone"},
                     "rollout": {"waves": [{"name": "all"}]}, "traffic": traffic}}


async def test_99_1_from_every_zone_gateway_with_backends_only_in_remotes(fleet: Fleet, hub: KubeClient,
                                                                          ns: str) -> None:
    host = f"split.{ns}.example"
    await hub.create(AP.format(ns=ns), zonal(ns, "split", host, weighted()), field_manager="e2e")
    st = await wait_serving(hub, ns, "split", PRIMARIES, timeout=240)
    assert (condition(st, "TrafficPolicyRisky")["status"], condition(st, "TrafficPolicyRisky")["reason"]) == \
        ("False", "NoRisk"), condition(st, "TrafficPolicyRisky")
    localities = {}
    for primary in PRIMARIES:
        region = REGION[primary]
        localities[primary] = await wait_region_weights(fleet, primary, echo_host(ns),
                                                        {region: 99, OTHER[region]: 1}, timeout=120)
        # the zone's gateway weighs both zones of its region (endpoints of their remotes) and a zone of the
        # other region (Istio's weights are whole numbers: the 1% goes to one zone per gateway, rotated)
        assert {f"{r}/{z}" for _, r, z in ZONES if r == region} <= set(localities[primary]), localities[primary]
    for region in ("region-a", "region-b"):  # together, a region's two gateways send the 1% to both remote zones
        remote_zones = {loc for p in PRIMARIES if REGION[p] == region for loc in localities[p]
                        if loc.startswith(OTHER[region])}
        assert len(remote_zones) == 2, (region, remote_zones)
    start = time.monotonic()
    tallies = await asyncio.gather(*(request_loop(vips(st)[p], host, SPLIT_REQUESTS, port=80, tls=False,
                                                  connections=CONNECTIONS) for p in PRIMARIES))
    elapsed = time.monotonic() - start
    report = []
    for primary, tally in zip(PRIMARIES, tallies, strict=True):
        region = REGION[primary]
        want = {region: 0.99, OTHER[region]: 0.01}
        assert tally.total == SPLIT_REQUESTS
        # only remotes answer: the primaries have no backend
        assert set(tally.clusters) <= set(REMOTES), (primary, dict(tally.clusters))
        shares = assert_shares(tally, want, f"99/1, gateway of zone {ZONE[primary]}")
        for loc, (weight, _, _) in localities[primary].items():  # each zone its own weight
            low, high = binomial_band(tally.ok, weight / 100)
            assert low <= tally.zones[loc.split("/")[1]] <= high, (primary, loc, weight, dict(tally.zones))
        report.append(f"zone {ZONE[primary]} ({primary}): " + ", ".join(
            f"{r} {tally.regions[r]} ({shares[r]:.2%}, band {binomial_band(tally.ok, want[r])[0]:.0f}.."
            f"{binomial_band(tally.ok, want[r])[1]:.0f})" for r in sorted(want))
            + "; by remote " + ", ".join(f"{c} {n}" for c, n in sorted(tally.clusters.items())))
    print(f"\n{len(PRIMARIES)} x {SPLIT_REQUESTS} requests in {elapsed:.1f}s "
          f"({len(PRIMARIES) * SPLIT_REQUESTS / elapsed:.0f} req/s):\n  " + "\n  ".join(report))


async def test_drain_of_a_region_moves_every_zone_gateway(fleet: Fleet, hub: KubeClient,
                                                          members: dict[str, KubeClient], ns: str) -> None:
    host, drained = f"drain.{ns}.example", "region-b"
    await hub.create(AP.format(ns=ns), zonal(ns, "drain", host, weighted()), field_manager="e2e")
    st = await wait_serving(hub, ns, "drain", PRIMARIES, timeout=240)
    for primary in PRIMARIES:
        region = REGION[primary]
        await wait_region_weights(fleet, primary, echo_host(ns), {region: 99, OTHER[region]: 1}, timeout=120)
    async with load(host, vips(st), connections=2) as running:
        await running.wait_answers(300)
        assert all(regions_of(running.since(p, 0))[drained] > 0 for p in PRIMARIES if REGION[p] == drained)
        t0 = time.monotonic()
        await hub.merge_patch(f"{AP.format(ns=ns)}/drain",
                              {"spec": {"traffic": {"locality": {"mode": "Drain", "drain": {"regions": [drained]}}}}})

        timing = await time_drain(running, members, ns, "drain", drained, t0)
    landed, last, after = timing.landed, timing.last, timing.after
    drain_time = last - t0
    zones = {p: Counter(a.zone for a in answered if a.status == 200) for p, answered in after.items()}
    for primary, answered in after.items():
        assert answered and all(a.status == 200 for a in answered), (primary, Counter(a.status for a in answered))
        assert regions_of(answered)[drained] == 0, (primary, regions_of(answered))
        n = sum(zones[primary].values())  # both zones of region-a serve
        low, high = binomial_band(n, 0.5)
        assert low <= zones[primary]["region-a-1"] <= high, (primary, dict(zones[primary]))
    assert drain_time < 20, f"the drain took {drain_time:.1f}s"
    final = await wait_object(
        hub, f"{AP.format(ns=ns)}/drain",
        lambda o: (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"],
        message="status of the drained generation")
    assert condition(final["status"], "TrafficPolicyValid")["status"] == "True"
    assert sorted(entries(final["status"])) == sorted(PRIMARIES)
    print(f"\ndrain of {drained} (2 zones, backends in remotes): zone DestinationRules after "
          + ", ".join(f"{p} {t:.2f}s" for p, t in sorted(landed.items()))
          + f"; last request served by {drained} {drain_time:.2f}s after the hub edit; afterwards: "
          + "; ".join(f"gateway of {ZONE[p]}: {dict(zones[p])}" for p in PRIMARIES))
