"""Reading a member's gateway Envoy stats for one AccessPoint (the I/O behind the Analysis gate).

Owns: which Envoy stats are an AccessPoint's traffic and how they are read. meshfed gives the
AccessPoint's VirtualService routes the stat prefix `accesspoint.health.stat_prefix(ns, name)`
(Istio passes `match[].statPrefix` to the Envoy route's `stat_prefix`), so the gateway counts that
traffic, and only it, under `vhost.<host:port>.route.<prefix>.upstream_rq_{completed,5xx}` and the
histogram `...upstream_rq_time` (per-route stats, which Istio's bootstrap keeps by default:
`vhost\\..*\\.route\\..*`). Per-cluster upstream stats (`cluster.outbound|...`) would mix every
AccessPoint routing to the same destination, and listener stats every host on the port.

Where: `MemberCluster.spec.gatewayStats` — `url` (an Envoy admin URL the hub reaches directly: the
local fleet) or `pods` (each gateway pod's admin port through the member API server's pod proxy,
summed over the pods: production). The admin's JSON form is read (`/stats?format=json&usedonly&
histogram_buckets=cumulative&filter=...`): names stay whole (the Prometheus form's tag extraction
splits names with dots, such as `shop.example:443`).

Counters are cumulative: `Baseline` keeps each source instance's reading when a gate opens and the
figures are the deltas (a pod or gateway that appeared since counts in full; one whose counters went
down restarted and counts from zero). Imports accesspoint.health, placement.models, federation.kube.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from accesspoint.health import TrafficFigures, add_buckets
from federation.kube import ApiError, KubeClient
from placement.models import GatewayStats

READ_TIMEOUT = 3.0


def stats_query(prefix: str) -> dict[str, str]:
    """The admin /stats query for one route stat prefix (RE2 filter on the stat name)."""
    return {
        "format": "json",
        "usedonly": "",
        "histogram_buckets": "cumulative",
        "filter": rf"\.route\.{prefix}\.upstream_rq_(completed|5xx|time)$",
    }


def parse_stats(payload: dict[str, Any], prefix: str) -> TrafficFigures:
    """This prefix's cumulative figures from an Envoy admin `/stats?format=json` answer, summed over
    every virtual host (an AccessPoint may serve several hosts and ports on one gateway)."""
    pattern = re.compile(r"^vhost\..+\.route\." + re.escape(prefix) + r"\.upstream_rq_(completed|5xx|time)$")
    requests = errors = 0
    latency: list[tuple[float, int]] = []
    for stat in payload.get("stats") or []:
        if not isinstance(stat, dict):
            continue
        if "histograms" in stat:
            histograms = stat["histograms"]
            for h in histograms if isinstance(histograms, list) else []:
                m = pattern.match(str(h.get("name", "")))
                if m and m.group(1) == "time":
                    buckets = [(float(b["upper_bound"]), int(b.get("cumulative", 0))) for b in h.get("buckets") or []]
                    latency = add_buckets(latency, buckets)
            continue
        m = pattern.match(str(stat.get("name", "")))
        if m is None or "value" not in stat:
            continue
        if m.group(1) == "completed":
            requests += int(stat["value"])
        elif m.group(1) == "5xx":
            errors += int(stat["value"])
    return TrafficFigures(requests=requests, errors=errors, latency=latency)


@dataclass
class Reading:
    """One cluster's gateway figures at a moment: per source instance (the URL, or each pod)."""

    at: float
    instances: dict[str, TrafficFigures] = field(default_factory=dict)

    def minus(self, baseline: Reading) -> TrafficFigures:
        total = TrafficFigures()
        for name, now in self.instances.items():
            base = baseline.instances.get(name)
            total = total + (now.minus(base) if base is not None else now)
        return total


class StatsReader:
    """Reads gateway stats from members (one aiohttp session for direct URLs)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def read(self, source: GatewayStats, client: KubeClient | None, prefix: str) -> Reading:
        """Raises LookupError with a reason naming what failed."""
        at = time.monotonic()
        if source.url is not None:
            return Reading(at, {source.url: await self._read_url(source.url, prefix)})
        assert source.pods is not None
        if client is None:
            raise LookupError("member API server not reachable (no client)")
        pods = source.pods
        selector = ",".join(f"{k}={v}" for k, v in sorted(pods.selector.items()))
        try:
            items, _ = await client.list(f"/api/v1/namespaces/{pods.namespace}/pods", label_selector=selector)
        except ApiError as err:
            raise LookupError(f"listing gateway pods ({pods.namespace}, {selector}): {err}") from None
        running = [p for p in items if (p.get("status") or {}).get("phase") == "Running"]
        if not running:
            raise LookupError(f"no Running gateway pod in {pods.namespace} with labels {selector}")

        async def one(pod: dict[str, Any]) -> tuple[str, TrafficFigures]:
            name = pod["metadata"]["name"]
            path = f"/api/v1/namespaces/{pods.namespace}/pods/{name}:{pods.port}/proxy/stats"
            try:
                payload = await client.request("GET", path, query=stats_query(prefix), timeout=READ_TIMEOUT,
                                               retry=False)
            except ApiError as err:
                raise LookupError(f"pod {pods.namespace}/{name}:{pods.port} stats: {err}") from None
            return name, parse_stats(payload, prefix)

        return Reading(at, dict(await asyncio.gather(*(one(p) for p in running))))

    async def _read_url(self, url: str, prefix: str) -> TrafficFigures:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.get(url.rstrip("/") + "/stats", params=stats_query(prefix),
                                         timeout=aiohttp.ClientTimeout(total=READ_TIMEOUT)) as resp:
                if resp.status != 200:
                    raise LookupError(f"{url}/stats answered {resp.status}")
                payload = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise LookupError(f"{url}/stats: {type(exc).__name__}: {exc}") from None
        return parse_stats(payload if isinstance(payload, dict) else {}, prefix)
