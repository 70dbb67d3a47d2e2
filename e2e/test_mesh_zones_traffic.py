"""99/1 whatever the zone count (issue 21, traffic), proven by requests through the VIPs: hub + 4 members in
2 regions x 2 zones (one istiod and one gateway Envoy per member), 2 echo backends per member.

- 99/1 from every gateway: 5,000 requests through each member's VIP, every region's count inside its 4-sigma
  binomial band, also from region-b's gateways whose remote region-a has two zones (the wildcard compile gave
  98/2 there). The backends are published unevenly (1 or 2 endpoints per zone) to show that the split no
  longer depends on endpoint counts: istiod keeps a per-zone weight exactly, Envoy picks the locality by it.
  The gateways' own EDS hold the promised weights first.
- The same rule written with wildcards (`weighted.rules` verbatim) is reported TrafficPolicyRisky /
  SplitNotAsPromised with the split istiod makes of it (98.04 / 1.96), and that is what a gateway sends.
- A Drain of region-b: the time from the hub edit to the member DestinationRules and to the last request
  region-b served; afterwards region-b's gateways send 50/50 to region-a's two zones.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import pytest
from test_mesh_traffic import (  # e2e/ is on sys.path for its test modules (no __init__.py)
    AP,
    accesspoint,
    admin_url,
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

from federation.kube import KubeClient
from fleet import Fleet
from fleet import istio as mesh
from fleet.istio import http_get
from fleet.testing import ControllerProcess, binomial_band, condition, eventually, request_loop, wait_object

pytestmark = pytest.mark.e2e

TOPOLOGY = [("m-a1", "region-a", "region-a-1"), ("m-a2", "region-a", "region-a-2"),
            ("m-b1", "region-b", "region-b-1"), ("m-b2", "region-b", "region-b-2")]
FLEET = {"topology": TOPOLOGY, "istio": True, "backends": 2}
REGION = {name: region for name, region, _ in TOPOLOGY}
ZONE = {name: zone for name, _, zone in TOPOLOGY}
ALL = [name for name, _, _ in TOPOLOGY]
OTHER = {"region-a": "region-b", "region-b": "region-a"}
SPLIT_REQUESTS = 5000  # per gateway
CONNECTIONS = 6
# Left out of the uneven host: region-a-1 and region-b-2 keep one endpoint, the other zones two.
UNEVEN_DROPPED = {"m-a1-echo-2", "m-b2-echo-2"}


def echo_host(ns: str) -> str:
    return f"echo.{ns}.svc.cluster.local"


def uneven_host(ns: str) -> str:
    return f"uneven.{ns}.svc.cluster.local"


@pytest.fixture
async def ns(namespace: str, controller: ControllerProcess, fleet: Fleet, members: dict[str, KubeClient]) -> str:
    """A hub namespace with every member's echo backends published on every member under echo.<ns>, and all
    but UNEVEN_DROPPED under uneven.<ns> (zones with 1 and 2 endpoints)."""
    await fleet.publish_backends(namespace, echo_host(namespace))
    uneven = [b for b in fleet.echo_backends() if b.name not in UNEVEN_DROPPED]
    assert len(uneven) == 2 * len(ALL) - len(UNEVEN_DROPPED)
    await asyncio.gather(*(mesh.publish_backends(client, namespace, uneven_host(namespace), uneven, service="uneven")
                           for client in members.values()))
    return namespace


# ---- the gateways' own view, per locality -------------------------------------------------------------


async def eds_localities(fleet: Fleet, member: str, host: str) -> dict[str, tuple[int, int, int]]:
    """region/zone -> (locality weight, priority, endpoints) of `host`'s cluster in the member's gateway EDS."""
    status, body = await http_get(f"{admin_url(fleet, member)}/config_dump?include_eds"
                                  "&resource=dynamic_endpoint_configs")
    assert status == 200, body[:300]
    out: dict[str, tuple[int, int, int]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if str(node.get("cluster_name", "")).endswith(f"|{host}"):
                for ep in node.get("endpoints") or []:
                    if ep.get("lb_endpoints"):  # Istio empties a locality the distribute rule leaves out
                        loc = ep.get("locality") or {}
                        out[f"{loc.get('region', '')}/{loc.get('zone', '')}"] = (
                            int(ep.get("load_balancing_weight") or 0), int(ep.get("priority") or 0),
                            len(ep["lb_endpoints"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(body))
    return out


async def wait_region_weights(fleet: Fleet, member: str, host: str, want: dict[str, int],
                              timeout: float = 60) -> dict[str, tuple[int, int, int]]:
    """Until the member's gateway weighs `host`'s localities so that they add up per region to `want` (one
    priority). Returns the localities."""

    async def check() -> dict[str, tuple[int, int, int]]:
        got = await eds_localities(fleet, member, host)
        per_region: Counter[str] = Counter()
        for loc, (weight, _, _) in got.items():
            per_region[loc.split("/")[0]] += weight
        assert dict(per_region) == want and all(p == 0 for _, p, _ in got.values()), got
        return got

    return await eventually(check, timeout, interval=0.3, message=f"{member}: gateway EDS {want} for {host}")


def risky(st: dict[str, Any]) -> dict[str, Any]:
    return condition(st, "TrafficPolicyRisky")


# ---- 1. 99/1 from every gateway; the wildcard rule reported with the split it gets -------------------------


async def test_99_1_from_every_gateway_of_two_regions_in_two_zones_and_the_wildcard_split_reported(
        fleet: Fleet, hub: KubeClient, ns: str) -> None:
    split_host, wild_host = f"split.{ns}.example", f"wild.{ns}.example"
    await hub.create(AP.format(ns=ns), accesspoint(ns, "split", http_template(split_host, uneven_host(ns), rule=True),
                                                   traffic=weighted()), field_manager="e2e")
    # What the compiler wrote before issue 21, as verbatim rules: each region's share as one wildcard.
    wild_rules = [{"from": f"{r}/*", "to": {f"{r}/*": 99, f"{OTHER[r]}/*": 1}} for r in ("region-a", "region-b")]
    await hub.create(AP.format(ns=ns), accesspoint(
        ns, "wild", http_template(wild_host, echo_host(ns), rule=True),
        traffic={"locality": {"mode": "Weighted", "weighted": {"rules": wild_rules}}}), field_manager="e2e")
    split = await wait_serving(hub, ns, "split", ALL)
    wild = await wait_serving(hub, ns, "wild", ALL)
    assert (risky(split)["status"], risky(split)["reason"]) == ("False", "NoRisk"), risky(split)
    assert (risky(wild)["status"], risky(wild)["reason"]) == ("True", "SplitNotAsPromised"), risky(wild)
    for region in ("region-a", "region-b"):
        assert (f"gateways in region {region} send {region} 98.04% / {OTHER[region]} 1.96% instead of "
                f"{region} 99% / {OTHER[region]} 1%") in risky(wild)["message"], risky(wild)["message"]

    cases: list[tuple[str, str, str, dict[str, float]]] = []  # (what, member, host, region shares)
    localities: dict[str, dict[str, tuple[int, int, int]]] = {}
    for member in ALL:
        region = REGION[member]
        localities[member] = await wait_region_weights(fleet, member, uneven_host(ns), {region: 99, OTHER[region]: 1})
        cases.append(("99/1", member, split_host, {region: 0.99, OTHER[region]: 0.01}))
    # The wildcard rule, as istiod computes it (and the status said): 50 + 50 local, 1 + 1 remote.
    wild_member = "m-b1"
    wild_eds = await wait_region_weights(fleet, wild_member, echo_host(ns), {"region-b": 100, "region-a": 2})
    cases.append(("wildcards", wild_member, wild_host, {"region-b": 100 / 102, "region-a": 2 / 102}))

    targets = {**vips(split)}
    start = time.monotonic()
    tallies = await asyncio.gather(*(
        request_loop((vips(wild) if host == wild_host else targets)[member], host, SPLIT_REQUESTS, port=80, tls=False,
                     connections=CONNECTIONS) for _, member, host, _ in cases))
    elapsed = time.monotonic() - start
    report = []
    for (what, member, _, want), tally in zip(cases, tallies, strict=True):
        assert tally.total == SPLIT_REQUESTS
        shares = assert_shares(tally, want, f"{what}, gateway of {member}")
        line = f"{what} from {member} ({ZONE[member]}): " + ", ".join(
            f"{r} {tally.regions[r]} ({shares[r]:.2%}, band {binomial_band(tally.ok, want[r])[0]:.0f}.."
            f"{binomial_band(tally.ok, want[r])[1]:.0f})" for r in sorted(want))
        if what == "99/1":
            # Within the region too, each zone gets its own weight whatever its endpoint count (1 or 2 here).
            eds = localities[member]
            for loc, (weight, _, _) in eds.items():
                zone = loc.split("/")[1]
                low, high = binomial_band(tally.ok, weight / 100)
                assert low <= tally.zones[zone] <= high, (member, loc, weight, dict(tally.zones))
            line += "; by zone " + ", ".join(f"{loc} w{w}/{n}ep {tally.zones[loc.split('/')[1]]}"
                                             for loc, (w, _, n) in sorted(eds.items()))
        else:
            line += "; EDS " + ", ".join(f"{loc} w{w}" for loc, (w, _, _) in sorted(wild_eds.items()))
        report.append(line)
    # Together, region-x's two gateways send region-y's 1% to both of its zones.
    for region in ("region-a", "region-b"):
        remote_zones = {loc for m in ALL if REGION[m] == region for loc in localities[m]
                        if loc.startswith(OTHER[region])}
        assert len(remote_zones) == 2, (region, remote_zones)
    print(f"\n{len(cases)} x {SPLIT_REQUESTS} requests in {elapsed:.1f}s "
          f"({len(cases) * SPLIT_REQUESTS / elapsed:.0f} req/s):\n  " + "\n  ".join(report)
          + f"\n  status of the wildcard rule: {risky(wild)['message'][:400]}")


# ---- 2. Drain of a region -------------------------------------------------------------------------------


async def test_drain_of_a_region_in_two_zones_moves_every_new_request(
        fleet: Fleet, hub: KubeClient, members: dict[str, KubeClient], ns: str) -> None:
    host, drained = f"drain.{ns}.example", "region-b"
    await hub.create(AP.format(ns=ns), accesspoint(ns, "drain", http_template(host, echo_host(ns), rule=True),
                                                   traffic=weighted()), field_manager="e2e")
    st = await wait_serving(hub, ns, "drain", ALL)
    for member in ALL:
        await wait_region_weights(fleet, member, echo_host(ns), {REGION[member]: 99, OTHER[REGION[member]]: 1})
    async with load(host, vips(st), connections=2) as running:
        await running.wait_answers(300)
        assert all(regions_of(running.since(m, 0))[drained] > 0 for m in ("m-b1", "m-b2")), \
            "the region to drain serves before the drain"
        t0 = time.monotonic()
        await hub.merge_patch(f"{AP.format(ns=ns)}/drain",
                              {"spec": {"traffic": {"locality": {"mode": "Drain", "drain": {"regions": [drained]}}}}})

        timing = await time_drain(running, members, ns, "drain", drained, t0)
    landed, last, after = timing.landed, timing.last, timing.after
    drain_time = last - t0
    for member in ALL:
        await wait_region_weights(fleet, member, echo_host(ns), {"region-a": 100})
    counts = {m: regions_of(a) for m, a in after.items()}
    zones = {m: Counter(a.zone for a in answered if a.status == 200) for m, answered in after.items()}
    for member, answered in after.items():
        assert answered and all(a.status == 200 for a in answered), (member, Counter(a.status for a in answered))
        assert counts[member][drained] == 0, (member, counts[member])
        # Both zones of region-a serve, 50/49 (its own gateways) or 50/50 (the drained region's).
        n = sum(zones[member].values())
        low, high = binomial_band(n, 0.5)
        assert low <= zones[member]["region-a-1"] <= high, (member, dict(zones[member]))
    assert drain_time < 20, f"the drain took {drain_time:.1f}s"
    final = await wait_object(
        hub, f"{AP.format(ns=ns)}/drain",
        lambda o: (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"],
        message="status of the drained generation")
    assert condition(final["status"], "TrafficPolicyValid")["status"] == "True"
    assert condition(final["status"], "TrafficPolicyRisky")["status"] == "False", final["status"]
    assert sorted(entries(final["status"])) == sorted(ALL)
    print(f"\ndrain of {drained} (2 zones): member DestinationRules after "
          + ", ".join(f"{m} {t:.2f}s" for m, t in sorted(landed.items()))
          + f"; last request served by {drained} {drain_time:.2f}s after the hub edit; afterwards: "
          + "; ".join(f"gateway {m}: {dict(zones[m])}" for m in ALL))
