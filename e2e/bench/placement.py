"""Placement + render benchmark (pure part): 2,000 AccessPoints x 50 member clusters.

    .venv/bin/python e2e/bench/placement.py [--aps 2000] [--clusters 50] [--json]

Prints, for one core (the pure core is single-threaded; CPU time is reported next to wall time):
- placement: `placement.select` of every AccessPoint over every cluster (with the previous decision,
  as the controller calls it);
- per placed (AccessPoint, cluster) pair, the desired objects: `accesspoint.render.render`
  (variables, overrides, owner labels, content hash), the locality compiler
  (`accesspoint.traffic.compile_locality` + `apply_traffic`), visibility (`apply_visibility`) and
  the cross-cluster ServiceEntry (`accesspoint.crossref`);
- a Drain change: re-deciding and re-compiling every placed pair after one region is drained,
  counting the DestinationRules whose content changed.
Two scenarios: "spread" (each AccessPoint on one cluster per zone in its regions: 6 clusters, the
three-data-center story) and "all" (each AccessPoint on all 50 clusters: the worst case).
Target: pure placement + render of 2,000 x 50 <= 10 s on one core.

TODO(controller wiring): "drain change -> all clusters' DestinationRules updated" p50/p99 on the
local fleet needs the hub runtime (federation/) driving real member API servers; hook:
`measure_fleet_drain()` below raises NotImplementedError until that lands.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from accesspoint.crossref import (
    CrossPort,
    GatewayEndpoint,
    cross_cluster_objects,
    federated_host,
)
from accesspoint.models import AccessPoint
from accesspoint.render import render
from accesspoint.traffic import TrafficPolicy, apply_traffic, compile_regions
from accesspoint.visibility import apply_visibility, export_to
from placement.models import ClusterFacts, PlacementDecision, Taint
from placement.select import select

HUB = "bench-hub"
REGIONS = ("us-east", "us-west", "eu-west")
GATEWAY_NS = "istio-system"


def make_fleet(n: int) -> list[ClusterFacts]:
    out = []
    for i in range(n):
        region = REGIONS[i % 3]
        zone = f"{region}-{'ab'[(i // 3) % 2]}"
        taints = [Taint(key="maintenance", effect="NoSchedule")] if i % 17 == 16 else []
        out.append(
            ClusterFacts(
                name=f"m{i:03d}",
                region=region,
                zone=zone,
                labels={"env": "prod" if i % 10 else "staging", "tier": "gold" if i % 4 == 0 else "silver"},
                taints=taints,
                ready=i % 23 != 22,
                reachable=i % 23 != 22,
            )
        )
    return out


def make_ap(i: int, scenario: str) -> AccessPoint:
    name = f"app{i:04d}"
    placement: dict[str, Any] = {"clusterSelector": {"matchLabels": {"env": "prod"}}}
    if scenario == "spread":
        placement["spread"] = {"perZone": 1}
    else:
        placement = {"tolerations": [{"operator": "Exists"}]}
    host = f"{name}.shop.example.com"
    return AccessPoint.model_validate(
        {
            "metadata": {"name": name, "namespace": f"team{i % 40}", "generation": 1},
            "spec": {
                "placement": placement,
                "template": [
                    {
                        "apiVersion": "v1",
                        "kind": "Service",
                        "metadata": {"name": "${name}"},
                        "spec": {"selector": {"app": "${name}"}, "ports": [{"name": "http", "port": 80}]},
                    },
                    {
                        "apiVersion": "networking.istio.io/v1",
                        "kind": "Gateway",
                        "metadata": {"name": "${name}-gw"},
                        "spec": {
                            "selector": {"istio": "ingressgateway"},
                            "servers": [
                                {
                                    "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                                    "hosts": [host],
                                    "tls": {"mode": "SIMPLE", "credentialName": "${name}-${cluster}"},
                                }
                            ],
                        },
                    },
                    {
                        "apiVersion": "networking.istio.io/v1",
                        "kind": "VirtualService",
                        "metadata": {"name": "${name}"},
                        "spec": {
                            "hosts": [host],
                            "gateways": ["${name}-gw"],
                            "http": [
                                {
                                    "route": [{"destination": {"host": "${name}", "port": {"number": 80}}}],
                                    "headers": {"response": {"set": {"x-served-by": "${cluster}.${zone}"}}},
                                }
                            ],
                        },
                    },
                    {
                        "apiVersion": "networking.istio.io/v1",
                        "kind": "DestinationRule",
                        "metadata": {"name": "${name}"},
                        "spec": {
                            "host": "${name}",
                            "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 100}}},
                        },
                    },
                ],
                "overrides": [
                    {
                        "regions": ["eu-west"],
                        "target": {"kind": "DestinationRule", "name": name},
                        "mergePatch": {
                            "spec": {"trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 50}}}}
                        },
                    },
                    {
                        "clusterSelector": {"matchLabels": {"tier": "gold"}},
                        "target": {"kind": "VirtualService", "name": name},
                        "jsonPatch": [{"op": "add", "path": "/spec/http/0/timeout", "value": "5s"}],
                    },
                ],
                "traffic": {
                    "locality": {"mode": "Weighted"},
                    "visibility": {"consumerNamespaces": ["web", "mobile", "partners"]},
                },
            },
        }
    )


def vips(fleet: list[ClusterFacts]) -> dict[str, GatewayEndpoint]:
    return {
        c.name: GatewayEndpoint(
            cluster=c.name, region=c.region, zone=c.zone, address=f"10.{i // 250}.{i % 250}.1"
        )
        for i, c in enumerate(fleet)
    }


PORTS = [CrossPort(name="https", number=443, protocol="TLS")]
RENDER_CPU = [0.0]  # CPU seconds spent inside accesspoint.render.render (the rest is traffic/xref/visibility)


def desired_for_ap(
    ap: AccessPoint,
    placed: list[ClusterFacts],
    gateways: list[GatewayEndpoint],
    traffic: TrafficPolicy,
) -> dict[str, list[dict[str, Any]]]:
    """Everything each placed member should carry for one AccessPoint (the controller's work).

    Per AccessPoint: the locality fragments (one per region) and the cross-cluster objects (same
    for every cluster of a region); per cluster: render (variables, overrides, labels, hash).
    """
    regions = sorted({c.region for c in placed})
    fragments = compile_regions(traffic, regions)
    host = federated_host(ap.name, ap.namespace)
    exports = export_to(traffic.visibility, ap.namespace, GATEWAY_NS)
    xref = {
        region: cross_cluster_objects(
            ap.name,
            ap.namespace,
            next(c for c in placed if c.region == region),
            gateways,
            PORTS,
            [host],
            export_to=exports,
            traffic=fragments[region],
        )
        for region in regions
    }
    out = {}
    for cluster in placed:
        t0 = time.process_time()
        rendered = render(ap, cluster, HUB)
        assert not rendered.errors, rendered.errors
        objects = rendered.objects
        RENDER_CPU[0] += time.process_time() - t0
        objects = apply_traffic(objects, fragments[cluster.region])
        out[cluster.name] = apply_visibility(
            [*objects, *xref[cluster.region]], traffic.visibility, GATEWAY_NS, default_namespace=ap.namespace
        )
    return out


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def run(n_aps: int, n_clusters: int, scenario: str) -> dict[str, Any]:
    fleet = make_fleet(n_clusters)
    by_name = {c.name: c for c in fleet}
    gw = vips(fleet)
    aps, build_s, _ = timed(lambda: [make_ap(i, scenario) for i in range(n_aps)])

    def place(prev: dict[str, PlacementDecision] | None) -> dict[str, PlacementDecision]:
        out = {}
        for ap in aps:
            assert ap.spec.placement is not None
            out[ap.name] = select(ap.spec.placement, fleet, prev.get(ap.name) if prev else None)
        return out

    first, _, _ = timed(lambda: place(None))
    decisions, place_wall, place_cpu = timed(lambda: place(first))  # steady state: with previous decision
    pairs = sum(len(d.selected) for d in decisions.values())

    def render_all(
        traffic_of: Callable[[AccessPoint], TrafficPolicy],
    ) -> dict[tuple[str, str], list[dict[str, Any]]]:
        out = {}
        for ap in aps:
            names = decisions[ap.name].names
            per_cluster = desired_for_ap(
                ap, [by_name[n] for n in names], [gw[n] for n in names], traffic_of(ap)
            )
            for cluster_name, objects in per_cluster.items():
                out[(ap.name, cluster_name)] = objects
        return out

    def base_traffic(ap: AccessPoint) -> TrafficPolicy:
        assert ap.spec.traffic is not None
        return ap.spec.traffic

    drained = TrafficPolicy.model_validate(
        {
            "locality": {"mode": "Drain", "drain": {"regions": ["us-west"]}},
            "visibility": {"consumerNamespaces": ["web", "mobile", "partners"]},
        }
    )
    RENDER_CPU[0] = 0.0
    before, render_wall, render_cpu = timed(lambda: render_all(base_traffic))
    render_only_cpu = RENDER_CPU[0]
    after, drain_wall, drain_cpu = timed(lambda: render_all(lambda ap: drained))
    objects = sum(len(v) for v in before.values())

    def drs(objs: list[dict[str, Any]]) -> list[str]:
        return [json.dumps(o["spec"], sort_keys=True) for o in objs if o["kind"] == "DestinationRule"]

    changed = sum(1 for k in before for a, b in zip(drs(before[k]), drs(after[k]), strict=True) if a != b)
    # latency distribution of one AccessPoint's full per-cluster work (all its placed clusters)
    samples = []
    ap0 = aps[0]
    names0 = decisions[ap0.name].names
    for _ in range(200):
        t = time.perf_counter()
        desired_for_ap(ap0, [by_name[n] for n in names0], [gw[n] for n in names0], drained)
        samples.append(time.perf_counter() - t)
    samples.sort()
    return {
        "scenario": scenario,
        "accessPoints": n_aps,
        "clusters": n_clusters,
        "placedPairs": pairs,
        "objects": objects,
        "buildModelsSeconds": round(build_s, 3),
        "placementSeconds": round(place_wall, 3),
        "placementCpuSeconds": round(place_cpu, 3),
        "renderSeconds": round(render_wall, 3),
        "renderCpuSeconds": round(render_cpu, 3),
        "placementPlusRenderSeconds": round(place_wall + render_wall, 3),
        "cpuInAccesspointRender": round(render_only_cpu, 3),
        "cpuInTrafficCrossrefVisibility": round(render_cpu - render_only_cpu, 3),
        "placementPlusRenderCpuSeconds": round(place_cpu + render_cpu, 3),
        "drainRecomputeSeconds": round(drain_wall, 3),
        "drainRecomputeCpuSeconds": round(drain_cpu, 3),
        "drainChangedDestinationRules": changed,
        "perAccessPointMsP50": round(statistics.median(samples) * 1000, 3),
        "perAccessPointMsP99": round(samples[int(len(samples) * 0.99) - 1] * 1000, 3),
        "targetMet": place_cpu + render_cpu <= 10.0,
    }


def measure_fleet_drain() -> dict[str, Any]:
    """TODO(controller wiring): drain change -> every member's DestinationRule updated, p50/p99."""
    raise NotImplementedError("needs the hub runtime against the local fleet (e2e/)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aps", type=int, default=2000)
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--scenario", choices=["spread", "all", "both"], default="both")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    scenarios = ["spread", "all"] if args.scenario == "both" else [args.scenario]
    results = [run(args.aps, args.clusters, s) for s in scenarios]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(
            f"scenario {r['scenario']}: {r['accessPoints']} AccessPoints x {r['clusters']} clusters "
            f"-> {r['placedPairs']} placed pairs, {r['objects']} objects"
        )
        print(f"  placement           {r['placementSeconds']:8.3f} s  (cpu {r['placementCpuSeconds']:.3f} s)")
        print(f"  render+traffic+xref {r['renderSeconds']:8.3f} s  (cpu {r['renderCpuSeconds']:.3f} s)")
        print(
            f"    of which render() cpu {r['cpuInAccesspointRender']:.3f} s, traffic+xref+visibility cpu "
            f"{r['cpuInTrafficCrossrefVisibility']:.3f} s"
        )
        print(
            f"  placement + render  {r['placementPlusRenderSeconds']:8.3f} s  "
            f"(cpu {r['placementPlusRenderCpuSeconds']:.3f} s)  target <= 10 s cpu on one core: "
            f"{'met' if r['targetMet'] else 'MISSED'}"
        )
        print(
            f"  drain recompute     {r['drainRecomputeSeconds']:8.3f} s  "
            f"({r['drainChangedDestinationRules']} DestinationRules changed)"
        )
        print(
            f"  one AccessPoint     p50 {r['perAccessPointMsP50']:.3f} ms  "
            f"p99 {r['perAccessPointMsP99']:.3f} ms  (all its clusters)"
        )
    print(
        "  fleet drain -> DestinationRules updated p50/p99: TODO (controller wiring, see measure_fleet_drain)"
    )


if __name__ == "__main__":
    main()
