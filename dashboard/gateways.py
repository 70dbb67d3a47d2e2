"""Reads what each placed cluster's gateway holds for one AccessPoint: istiod's view and the gateway's admin.

Owns the dashboard's reads of a member's istiod (`/debug/syncz`, `/debug/config_dump?proxyID=…&types=rds`)
and gateway Envoy admin (`/clusters?format=json`, `/stats` for the AccessPoint's route stat prefix), at the
addresses of MemberCluster `spec.istiod.url` and `spec.gatewayStats.url` — the same endpoints the
controller reads (federation.istiod, federation.gatewaystats). The dashboard has no identity of its own
on members: where a member's istiod or gateway is reachable only through the member API server
(`spec.istiod.service`, `spec.gatewayStats.pods`), the column says so instead of borrowing credentials.
Nothing is written anywhere. The comparison itself is pure (dashboard.views).

Imports federation.istiod, federation.gatewaystats, accesspoint.health, dashboard.views.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from accesspoint.health import stat_prefix
from dashboard.views import (
    expected_routes,
    gateway_column,
    gateway_routes,
    localities,
    route_configs,
    traffic_share,
    virtual_services,
)
from federation.gatewaystats import parse_stats, stats_query

TIMEOUT = 5.0
GATEWAY_PROXY_TYPE = "router"


class GatewayReader:
    """One aiohttp session (no proxies from the environment) for every member's istiod and gateway admin."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(trust_env=False, read_bufsize=2**22)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get_json(self, url: str, query: Mapping[str, str] | None = None) -> Any:
        """Raises LookupError naming the URL and what went wrong."""
        try:
            async with self.session.get(url, params=dict(query or {}),
                                        timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise LookupError(f"{url}: HTTP {resp.status}: {raw[:200].decode(errors='replace')}")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise LookupError(f"{url}: {type(exc).__name__}: {exc}".rstrip(": ")) from None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise LookupError(f"{url}: not JSON: {exc}") from None

    async def read_cluster(self, mc: Mapping[str, Any] | None, ap: Mapping[str, Any], vs_keys: list[str],
                           *, with_dump: bool = False) -> dict[str, Any]:
        """One cluster's reading for dashboard.views.gateway_column."""
        spec = (mc or {}).get("spec") or {}
        istiod = (spec.get("istiod") or {}).get("url")
        admin = (spec.get("gatewayStats") or {}).get("url")
        reading: dict[str, Any] = {"istiod": istiod or "", "gatewayAdmin": admin or ""}
        if mc is None:
            reading["error"] = "MemberCluster not visible to you"
            return reading
        if not istiod:
            reading["error"] = ("spec.istiod.service: reachable only through the member API server; the dashboard "
                                "uses no member credentials" if spec.get("istiod") else "spec.istiod is not set")
            return reading
        base = istiod.rstrip("/")
        try:
            syncz = await self.get_json(f"{base}/debug/syncz")
        except LookupError as err:
            reading["error"] = str(err)
            return reading
        proxies = [p for p in syncz if isinstance(p, dict) and p.get("proxy_type") == GATEWAY_PROXY_TYPE] \
            if isinstance(syncz, list) else []
        reading["proxies"] = proxies
        routes: dict[str, list[dict[str, Any]]] = {}
        dumps: dict[str, Any] = {}
        for p in proxies:
            pid = str(p.get("proxy", ""))
            try:
                dump = await self.get_json(f"{base}/debug/config_dump", {"proxyID": pid, "types": "rds"})
            except LookupError as err:
                reading.setdefault("dumpErrors", []).append(str(err))
                continue
            routes[pid] = gateway_routes(dump, vs_keys)
            if with_dump:
                dumps[pid] = dump
        reading["routes"] = routes
        if with_dump:
            reading["dumps"] = dumps
        if admin:
            names = sorted({r["cluster"] for rs in routes.values() for r in rs})
            base_admin = admin.rstrip("/")
            try:
                reading["endpoints"] = localities(await self.get_json(f"{base_admin}/clusters", {"format": "json"}),
                                                  names)
            except LookupError as err:
                reading["endpoints"] = {"(error)": [str(err)]}
            meta = ap["metadata"]
            prefix = stat_prefix(meta.get("namespace", ""), meta["name"])
            try:
                payload = await self.get_json(f"{base_admin}/stats", stats_query(prefix))
                figures = parse_stats(payload if isinstance(payload, dict) else {}, prefix)
                reading["stats"] = {"requests": figures.requests, "errors": figures.errors, "prefix": prefix}
                if with_dump:
                    reading["rawStats"] = payload
            except LookupError as err:
                reading["stats"] = {"error": str(err), "prefix": prefix}
        return reading

    async def side_by_side(self, ap: Mapping[str, Any], memberclusters: Mapping[str, Mapping[str, Any]]
                           ) -> dict[str, Any]:
        """Every placed cluster's column, compared with the AccessPoint's current revision."""
        status = ap.get("status") or {}
        target = str(status.get("revision") or "")
        clusters = list(status.get("clusters") or [])
        ns = ap["metadata"].get("namespace", "")

        async def one(c: Mapping[str, Any]) -> dict[str, Any]:
            variables = {"cluster": c["name"], "zone": c.get("zone", ""), "region": c.get("region", ""),
                         "namespace": ns, "name": ap["metadata"]["name"]}
            vss = virtual_services(ap, variables)
            keys = [f"{v['metadata']['namespace']}/{v['metadata']['name']}" for v in vss]
            expected = expected_routes(vss)
            reading = await self.read_cluster(memberclusters.get(c["name"]), ap, keys)
            column = gateway_column(c, target, expected, reading)
            column["expected"] = expected
            return column

        columns = list(await asyncio.gather(*(one(c) for c in clusters)))
        return {"namespace": ns, "name": ap["metadata"]["name"], "revision": target,
                "stable": (status.get("rollout") or {}).get("stable", ""), "columns": columns,
                "traffic": traffic_share(columns)}

    async def detail(self, ap: Mapping[str, Any], mc: Mapping[str, Any] | None, cluster: str) -> dict[str, Any]:
        """On request: the config dump's route section for this AccessPoint and its stats, for one cluster."""
        entry = next((c for c in (ap.get("status") or {}).get("clusters") or [] if c.get("name") == cluster), None)
        if entry is None:
            raise LookupError(f"cluster {cluster} is not placed for this AccessPoint")
        ns = ap["metadata"].get("namespace", "")
        variables = {"cluster": cluster, "zone": entry.get("zone", ""), "region": entry.get("region", ""),
                     "namespace": ns, "name": ap["metadata"]["name"]}
        vss = virtual_services(ap, variables)
        keys = [f"{v['metadata']['namespace']}/{v['metadata']['name']}" for v in vss]
        reading = await self.read_cluster(mc, ap, keys, with_dump=True)
        sections: dict[str, Any] = {}
        for pid, dump in (reading.get("dumps") or {}).items():
            sections[pid] = ap_section(dump, {r["virtualHost"] for r in reading["routes"].get(pid, [])})
        return {"cluster": cluster, "error": reading.get("error", ""), "routeSections": sections,
                "stats": reading.get("stats"), "rawStats": reading.get("rawStats")}


def ap_section(dump: Any, virtual_hosts: set[str]) -> list[dict[str, Any]]:
    """The virtual hosts of an RDS config dump that carry this AccessPoint's routes, as Envoy is given them."""
    return [{"routeConfig": rc.get("name"), "virtualHost": vh} for rc in route_configs(dump)
            for vh in rc.get("virtualHosts") or rc.get("virtual_hosts") or [] if vh.get("name") in virtual_hosts]
