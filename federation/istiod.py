"""Asks one member's istiod what it pushed and what its gateway proxies ACKed (bounded polling).

Owns the I/O behind routeConfigured (the decisions are pure: accesspoint.istioverdict): per member
one IstiodMonitor keeps an `IstiodView` — istiod's /debug/syncz (every proxy's sent/ACKed nonce and
last NACK per xDS type), the config istiod generated for each gateway proxy (/debug/config_dump?
proxyID=…&types=lds,rds: the `istio.config` route metadata naming the VirtualServices), and the
Pods matching the Gateways' selectors (from the member API server). Request budget, shared by every
AccessPoint of the member: one syncz per interval (`idle` seconds, `fast` while a change is in
flight: after a meshfed write to the member (`kick`) or while a proxy has not ACKed), one config_dump
per gateway proxy only when its nonces changed (read between two syncz samples showing the same
nonces, else it is not used), one Pod list per distinct Gateway selector per `idle` interval (to the
member API server, not istiod), and once per `idle` interval istiod's remote clusters (/debug/clusterz)
and, when the member's AccessPoints route to hosts, the endpoints istiod knows of them per cluster
(/debug/endpointShardz, zones: accesspoint.istioverdict.zone_verdict). Requests are counted per member
(`requests`).

How istiod is reached is MemberCluster.spec.istiod: `url` (direct, e.g. the local fleet's loopback
port) or `service` (the member API server's service proxy with the member kubeconfig's identity).
Imports accesspoint.istioverdict and federation.kube; never writes anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

from accesspoint.istioverdict import (
    ROUTE_TYPES,
    TYPE_URLS,
    IstiodView,
    ProxyConfig,
    ProxySync,
    WorkloadPod,
    XdsSync,
)
from federation.kube import ApiError, KubeClient
from placement.models import IstiodAccess

log = logging.getLogger("meshfed.istiod")


class IstiodError(Exception):
    pass


class IstiodEndpoint:
    """GET a JSON debug path of one istiod, directly or through the member API server's service proxy."""

    def __init__(self, access: IstiodAccess, member_client: Callable[[], KubeClient | None], name: str) -> None:
        self.access = access
        self.member_client = member_client
        self.name = name
        self._session: aiohttp.ClientSession | None = None

    def describe(self) -> str:
        if self.access.url is not None:
            return self.access.url.rstrip("/")
        svc = self.access.service
        assert svc is not None
        return f"service {svc.namespace}/{svc.name}:{svc.port} (member API server proxy)"

    async def get(self, path: str, query: dict[str, str] | None = None, timeout: float = 10.0) -> Any:
        if self.access.url is not None:
            if self._session is None:
                self._session = aiohttp.ClientSession(trust_env=False, read_bufsize=2**21)
            url = self.access.url.rstrip("/") + path
            try:
                async with self._session.get(url, params=query or {},
                                             timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                    raw = await resp.read()
                    if resp.status >= 300:
                        raise IstiodError(f"{url}: HTTP {resp.status}: {raw[:200].decode(errors='replace')}")
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise IstiodError(f"{url}: {type(exc).__name__}: {exc}") from None
            try:
                return json.loads(raw)
            except ValueError as exc:
                raise IstiodError(f"{url}: not JSON: {exc}") from None
        svc = self.access.service
        assert svc is not None
        client = self.member_client()
        if client is None:
            raise IstiodError("no client for the member API server")
        proxy_path = f"/api/v1/namespaces/{svc.namespace}/services/{svc.name}:{svc.port}/proxy{path}"
        try:
            payload = await client.request("GET", proxy_path, query=query, timeout=timeout, retry=False)
        except ApiError as err:
            hint = ""
            if err.status == 401:
                hint = (" (istiod answered 401: it serves /debug without a caller identity only to localhost, and "
                        "the API server's service proxy does not forward the caller's token)")
            raise IstiodError(f"{self.describe()}: {err}{hint}") from None
        return payload.get("value", payload) if isinstance(payload, dict) and set(payload) == {"value"} else payload

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def parse_syncz(payload: Any, previous: dict[str, ProxySync], now: float) -> dict[str, ProxySync]:
    """/debug/syncz (a list of SyncStatus) -> ProxySync per proxy ID; changed_at carried over unless
    the proxy's nonces changed."""
    out: dict[str, ProxySync] = {}
    for item in payload if isinstance(payload, list) else []:
        pid = str(item.get("proxy") or "")
        if not pid:
            continue
        xds: dict[str, XdsSync] = {}
        for url, res in (item.get("resources") or {}).items():
            short = TYPE_URLS.get(url)
            if short:
                xds[short] = XdsSync(sent=str(res.get("sent") or ""), acked=str(res.get("acked") or ""),
                                     last_error=str(res.get("lastError") or ""))
        if not xds:  # older istiods: the flat fields only
            for short, field in (("cds", "cluster"), ("lds", "listener"), ("rds", "route"), ("eds", "endpoint")):
                if item.get(f"{field}_sent") or item.get(f"{field}_acked"):
                    xds[short] = XdsSync(sent=str(item.get(f"{field}_sent") or ""),
                                         acked=str(item.get(f"{field}_acked") or ""))
        proxy = ProxySync(id=pid, type=str(item.get("proxy_type") or ""), xds=xds, changed_at=now)
        before = previous.get(pid)
        if before is not None and before.signature() == proxy.signature():
            proxy.changed_at = before.changed_at
        out[pid] = proxy
    return out


def config_paths(dump: Any) -> list[str]:
    """Every `istio.config` metadata value (the Istio object a listener/route came from) in a config dump."""
    found: set[str] = set()
    stack = [dump]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            fm = node.get("filter_metadata") or node.get("filterMetadata")
            if isinstance(fm, dict):
                cfg = (fm.get("istio") or {}).get("config") if isinstance(fm.get("istio"), dict) else None
                if isinstance(cfg, str):
                    found.add(cfg)
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, dict | list))
    return sorted(found)


def parse_clusterz(payload: Any) -> dict[str, str]:
    """/debug/clusterz: [{id, secretName, syncStatus}] -> cluster ID -> syncStatus."""
    if not isinstance(payload, list):
        raise IstiodError(f"unexpected /debug/clusterz answer: {str(payload)[:200]}")
    return {str(c.get("id")): str(c.get("syncStatus") or "") for c in payload if isinstance(c, dict) and c.get("id")}


def parse_endpoint_shards(payload: Any, hosts: set[str]) -> dict[str, dict[str, int]]:
    """/debug/endpointShardz: {host: {namespace: {Shards: {"<provider>/<cluster ID>": [endpoint...]}}}} ->
    host -> cluster ID -> endpoints, for `hosts` only (summed over the namespaces declaring the host)."""
    if not isinstance(payload, dict):
        raise IstiodError(f"unexpected /debug/endpointShardz answer: {str(payload)[:200]}")
    out: dict[str, dict[str, int]] = {}
    for host in hosts:
        per_ns = payload.get(host)
        if not isinstance(per_ns, dict):
            continue
        counts: Counter[str] = Counter()
        for shards in per_ns.values():
            for key, endpoints in ((shards or {}).get("Shards") or {}).items():
                counts[str(key).rpartition("/")[2]] += len(endpoints or [])
        out[host] = dict(counts)
    return out


def _acked(proxy: ProxySync) -> bool:
    return "lds" in proxy.xds and all(
        s.sent == s.acked and not s.last_error for t, s in proxy.xds.items() if t in ROUTE_TYPES)


class IstiodMonitor:
    """The polling loop of one member's istiod (see the module docstring for the request budget)."""

    def __init__(self, member: str, access: IstiodAccess, member_client: Callable[[], KubeClient | None],
                 selectors: Callable[[], set[str]], on_change: Callable[[str], None], *,
                 idle: float = 10.0, fast: float = 0.5, fast_for: float = 30.0, confirm_delay: float = 0.2,
                 zone_hosts: Callable[[], set[str] | None] | None = None) -> None:
        self.member = member
        self.access = access
        self.endpoint = IstiodEndpoint(access, member_client, member)
        self.member_client = member_client
        self.selectors = selectors
        self.on_change = on_change
        self.idle = idle
        self.fast = fast
        self.fast_for = fast_for
        self.confirm_delay = confirm_delay
        self.view = IstiodView()
        self.requests: Counter[str] = Counter()  # istiod requests by endpoint
        self.member_requests = 0  # Pod lists sent to the member API server
        self._fast_until = 0.0
        self._pods_at = 0.0
        # A zone primary's routed hosts, whose endpoints are read (/debug/endpointShardz) with clusterz once
        # per `idle`; None: the member is no zone primary (it has no remote), neither is read.
        self.zone_hosts = zone_hosts or (lambda: None)
        self._zone_at = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"istiod-{self.member}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self.endpoint.close()

    def kick(self) -> None:
        """A change is in flight (meshfed wrote to this member): poll fast for a while, now."""
        self._fast_until = time.monotonic() + self.fast_for
        self._pods_at = 0.0
        self._zone_at = 0.0
        self._wake.set()

    def _in_flight(self) -> bool:
        if time.monotonic() < self._fast_until:
            return True
        targets = self._targets()
        for pid in targets:
            proxy = self.view.proxies.get(pid)
            if proxy is None:
                continue
            config = self.view.configs.get(pid)
            if not _acked(proxy) and not any(s.last_error for s in proxy.xds.values()):
                return True
            if _acked(proxy) and (config is None or config.signature != proxy.signature()):
                return True
        return False

    def _targets(self) -> set[str]:
        return {f"{p.name}.{p.namespace}" for pods in self.view.pods.values() for p in pods}

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop the monitor
                log.exception("istiod monitor %s: poll failed", self.member)
            self.on_change(self.member)
            self._wake.clear()
            delay = self.fast if self._in_flight() else self.idle
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _syncz(self) -> dict[str, ProxySync]:
        self.requests["syncz"] += 1
        payload = await self.endpoint.get("/debug/syncz")
        return parse_syncz(payload, self.view.proxies, time.monotonic())

    async def _refresh_pods(self) -> None:
        client = self.member_client()
        wanted = self.selectors()
        if client is None:
            self.view.pods_error = "no client for the member API server"
            return
        pods: dict[str, list[WorkloadPod]] = {}
        errors = []
        for key in sorted(wanted):
            self.member_requests += 1
            try:
                items, _ = await client.list("/api/v1/pods", label_selector=key, metadata_only=True)
            except ApiError as err:
                errors.append(f"cannot list Pods {key}: {err}")
                continue
            pods[key] = [WorkloadPod(name=str(i["metadata"].get("name")), namespace=str(i["metadata"].get("namespace")),
                                     labels=dict(i["metadata"].get("labels") or {})) for i in items]
        self.view.pods = pods
        self.view.pods_error = "; ".join(errors)
        self._pods_at = time.monotonic()

    async def _refresh_zone(self) -> None:
        """istiod's remotes (/debug/clusterz, small) and, when the member's AccessPoints route somewhere,
        the endpoints it knows of those hosts (/debug/endpointShardz: every service's shards in one answer,
        hence read at most once per `idle` interval)."""
        self._zone_at = time.monotonic()
        hosts = self.zone_hosts()
        if hosts is None:
            self.view.clusters = self.view.endpoints = None
            return
        try:
            self.requests["clusterz"] += 1
            self.view.clusters = parse_clusterz(await self.endpoint.get("/debug/clusterz"))
            if hosts:
                self.requests["endpointShardz"] += 1
                self.view.endpoints = parse_endpoint_shards(await self.endpoint.get("/debug/endpointShardz",
                                                                                    timeout=30), hosts)
            else:
                self.view.endpoints = None
        except IstiodError as err:
            log.info("member %s: istiod's clusters/endpoints: %s", self.member, err)
            self.view.clusters = None
            self.view.endpoints = None

    async def poll_once(self) -> None:
        now = time.monotonic()
        if now - self._pods_at >= self.idle or set(self.selectors()) != set(self.view.pods):
            await self._refresh_pods()
        if now - self._zone_at >= self.idle or (self.view.endpoints is None and self.zone_hosts()):
            await self._refresh_zone()
        try:
            proxies = await self._syncz()
        except IstiodError as err:
            if self.view.reachable is not False or self.view.error != str(err):
                log.info("member %s: istiod cannot be asked: %s", self.member, err)
            self.view.reachable = False
            self.view.error = str(err)
            return
        self.view.reachable = True
        self.view.error = ""
        self.view.proxies = proxies
        targets = self._targets()
        stale = [pid for pid in sorted(targets) if pid in proxies and _acked(proxies[pid]) and
                 (pid not in self.view.configs or self.view.configs[pid].signature != proxies[pid].signature())]
        for pid in list(self.view.configs):
            if pid not in proxies:
                del self.view.configs[pid]
        if not stale:
            return
        read: dict[str, ProxyConfig] = {}
        for pid in stale:
            signature = proxies[pid].signature()
            self.requests["config_dump"] += 1
            try:
                dump = await self.endpoint.get("/debug/config_dump", {"proxyID": pid, "types": "lds,rds"}, timeout=30)
            except IstiodError as err:
                log.info("member %s: config_dump of %s: %s", self.member, pid, err)
                continue
            read[pid] = ProxyConfig(signature=signature, configs=config_paths(dump))
        # Use a dump only if the proxy's nonces did not move around it: istiod sets a proxy's push
        # context before it sends the push, so a dump read during a push may be ahead of what was ACKed.
        await asyncio.sleep(self.confirm_delay)
        try:
            after = await self._syncz()
        except IstiodError as err:
            self.view.reachable = False
            self.view.error = str(err)
            return
        self.view.proxies = after
        for pid, config in read.items():
            if pid in after and after[pid].signature() == config.signature:
                self.view.configs[pid] = config
