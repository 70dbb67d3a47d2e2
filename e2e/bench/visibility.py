"""Visibility benchmark: what istiod and a real gateway Envoy do with N AccessPoints, with meshfed's
visibility control (exportTo) and without it (everything exported).

One member of the local fleet with Istio (a real kube-apiserver, a real istiod, the gateway Envoy under
pilot-agent in the member's network namespace, an echo backend). The member objects are written
directly (what meshfed would write for each AccessPoint), with the concurrency of a bulk load:

  * N AccessPoints in 50 team namespaces, each with its ServiceEntry (the backend host, MESH_INTERNAL,
    STATIC, the echo backend as endpoint) and its routes (a VirtualService bound to a gateway);
  * the measured gateway (istio-system, `istio: ingressgateway`) serves every 10th AccessPoint
    (`--served-every`); the others are served by another team's gateway (Gateway `edge/edge`, whose
    proxies are elsewhere) — the shape of a shared cluster, where the seed's gateways broke: config for
    thousands of services a gateway never routes to;
  * mode `visibility`: exportTo as meshfed writes it (accesspoint.visibility.export_to: the object's own
    namespace and its gateway's namespace); mode `exported`: exportTo ["*"] (Istio's default, and what
    `consumerNamespaces: ["*"]` gives).

Per N (500, 2,000, 5,000; cumulative) and mode, after the gateway converged: the gateway Envoy's clusters
and routes (virtual hosts), its config size (bytes of /config_dump, EDS excluded) and RSS, istiod's RSS,
the time from the API write of the bulk delta until the gateway has it all; then one change (a new served
AccessPoint: ServiceEntry + VirtualService) timed from the API write until a request through the gateway
reaches the new host, with istiod's own figures for that push (pilot_xds_push_time, pilot_proxy_convergence_time
from its /metrics); and a request's latency through the gateway (p50/p99 of 300 keep-alive requests).

Usage: python -m e2e.bench.visibility [--sizes 500,2000,5000] [--modes visibility,exported]
                                      [--served-every 10] [--concurrency 48] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from accesspoint.visibility import VisibilityPolicy, export_to
from federation.fleet import GATEWAY_SELECTOR, ISTIO_NAMESPACE, Fleet
from federation.fleet.istio import http_get
from federation.kube import ApiError, KubeClient
from federation.testing import gateway_vip, start_fleet

TEAMS = 50
EDGE_NS = "edge"  # the other teams' gateway namespace (its proxies run elsewhere)
BENCH_NS = "bench"
GATEWAY = "bench"
DOMAIN = "bench.example"
NET = "/apis/networking.istio.io/v1/namespaces/{ns}/{plural}"


def team(i: int) -> str:
    return f"team-{i % TEAMS:02d}"


def exports(mode: str, ns: str, gateway_ns: str) -> list[str]:
    if mode == "exported":
        return export_to(VisibilityPolicy(consumerNamespaces=["*"]), ns, ISTIO_NAMESPACE)
    return export_to(VisibilityPolicy(gatewayNamespace=gateway_ns), ns, ISTIO_NAMESPACE)


def objects_of(i: int, mode: str, served: bool, backend: tuple[str, int]) -> list[tuple[str, dict[str, Any]]]:
    """(collection path, object) of AccessPoint i: its ServiceEntry and VirtualService."""
    ns = team(i)
    gateway_ns = ISTIO_NAMESPACE if served else EDGE_NS
    backend_host = f"ap-{i}.{ns}.internal"
    se = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
          "metadata": {"name": f"ap-{i}", "namespace": ns},
          "spec": {"hosts": [backend_host], "location": "MESH_INTERNAL", "resolution": "STATIC",
                   "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}],
                   "endpoints": [{"address": backend[0], "ports": {"http": backend[1]}}],
                   "exportTo": exports(mode, ns, gateway_ns)}}
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": f"ap-{i}", "namespace": ns},
          "spec": {"hosts": [f"ap-{i}.{DOMAIN}"],
                   "gateways": [f"{ISTIO_NAMESPACE}/{GATEWAY}" if served else f"{EDGE_NS}/edge"],
                   "http": [{"route": [{"destination": {"host": backend_host, "port": {"number": 8080}}}]}],
                   "exportTo": exports(mode, ns, gateway_ns)}}
    return [(NET.format(ns=ns, plural="serviceentries"), se), (NET.format(ns=ns, plural="virtualservices"), vs)]


async def bulk_create(client: KubeClient, items: list[tuple[str, dict[str, Any]]], concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one(path: str, obj: dict[str, Any]) -> None:
        async with sem:
            try:
                await client.create(path, obj, field_manager="bench")
            except ApiError as err:
                if err.status != 409:
                    raise

    start = time.monotonic()
    await asyncio.gather(*(one(p, o) for p, o in items))
    return time.monotonic() - start


async def setup(client: KubeClient) -> None:
    for ns in [BENCH_NS, EDGE_NS, *(team(i) for i in range(TEAMS))]:
        try:
            await client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                       "metadata": {"name": ns}}, field_manager="bench")
        except ApiError as err:
            if err.status != 409:
                raise
    gateways = [
        (ISTIO_NAMESPACE, GATEWAY, GATEWAY_SELECTOR, [f"*.{DOMAIN}"]),
        (EDGE_NS, "edge", {"istio": "edgegateway"}, [f"*.{DOMAIN}"]),
    ]
    for ns, name, selector, hosts in gateways:
        await client.apply(f"{NET.format(ns=ns, plural='gateways')}/{name}",
                           {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                            "metadata": {"name": name, "namespace": ns},
                            "spec": {"selector": dict(selector), "servers": [
                                {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": hosts}]}},
                           field_manager="bench")
    await client.apply(f"/api/v1/namespaces/{BENCH_NS}/services/bench-gw",
                       {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bench-gw", "namespace": BENCH_NS},
                        "spec": {"type": "LoadBalancer", "selector": dict(GATEWAY_SELECTOR),
                                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
                       field_manager="bench")


# ---- what the gateway holds ----------------------------------------------------------------------


async def admin_json(admin: str, path: str, timeout: float = 60.0) -> Any:
    status, body = await http_get(f"{admin}{path}", timeout=timeout)
    if status != 200:
        raise RuntimeError(f"{admin}{path}: {status} {body[:200]!r}")
    return json.loads(body)


async def active_clusters(admin: str) -> int:
    stats = await admin_json(admin, "/stats?format=json&filter=^cluster_manager.active_clusters$")
    return int(next(s["value"] for s in stats["stats"] if s.get("name") == "cluster_manager.active_clusters"))


@dataclass
class GatewayConfig:
    clusters: int
    routes: int  # virtual hosts over the dynamic route configurations
    dump_bytes: int


async def gateway_config(admin: str) -> GatewayConfig:
    status, body = await http_get(f"{admin}/config_dump", timeout=120.0)
    if status != 200:
        raise RuntimeError(f"config_dump: {status}")
    dump = json.loads(body)
    clusters = routes = 0
    for cfg in dump.get("configs", []):
        t = cfg.get("@type", "")
        if t.endswith("ClustersConfigDump"):
            clusters = len(cfg.get("dynamic_active_clusters", [])) + len(cfg.get("static_clusters", []))
        elif t.endswith("RoutesConfigDump"):
            for rc in cfg.get("dynamic_route_configs", []):
                for vh in rc.get("route_config", {}).get("virtual_hosts", []):
                    if vh.get("name", "").startswith("ap-"):
                        routes += 1
    return GatewayConfig(clusters, routes, len(body))


def envoy_rss(agent_pid: int) -> int:
    try:
        children = psutil.Process(agent_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    return sum(c.memory_info().rss for c in children if "envoy" in c.name())


def rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.NoSuchProcess:
        return 0


_METRIC = re.compile(r"^(pilot_xds_push_time|pilot_proxy_convergence_time)_(sum|count)(\{[^}]*\})?\s+([0-9.eE+-]+)$")


async def istiod_push_metrics(monitoring: str) -> dict[str, float]:
    """Sum over labels of istiod's push-time and convergence-time histograms (seconds, counts)."""
    status, body = await http_get(f"{monitoring}/metrics", timeout=30.0)
    out: dict[str, float] = {}
    if status != 200:
        return out
    for line in body.decode(errors="replace").splitlines():
        m = _METRIC.match(line)
        if m:
            key = f"{m.group(1)}_{m.group(2)}"
            out[key] = out.get(key, 0.0) + float(m.group(4))
    return out


async def until(check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.05) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(interval)
    raise TimeoutError(f"not reached within {timeout:.0f}s")


# ---- requests through the gateway ------------------------------------------------------------------


async def one_request(vip: str, host: str, timeout: float = 5.0) -> int:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(vip, 80), timeout)
    except (OSError, TimeoutError):
        return 0
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        return int(head.split(b" ", 2)[1])
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
        return 0
    finally:
        writer.close()


async def latencies(vip: str, host: str, count: int) -> list[float]:
    """Seconds per request over one keep-alive connection (only 200s count)."""
    reader, writer = await asyncio.open_connection(vip, 80)
    out: list[float] = []
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    try:
        for _ in range(count):
            start = time.perf_counter()
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            if head.split(b" ", 2)[1] == b"200":
                out.append(time.perf_counter() - start)
    finally:
        writer.close()
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] if ordered else float("nan")


# ---- one mode -----------------------------------------------------------------------------------


@dataclass
class Row:
    mode: str
    n: int
    served: int
    clusters: int
    routes: int
    dump_bytes: int
    envoy_rss: int
    istiod_rss: int
    create_s: float
    converge_s: float
    change_s: list[float] = field(default_factory=list)
    push_time_s: float = float("nan")
    convergence_s: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")


async def run_mode(mode: str, sizes: list[int], served_every: int, concurrency: int, root: Path,
                   changes: int) -> list[Row]:
    say = lambda msg: print(f"[{mode}] {msg}", flush=True)  # noqa: E731
    fleet: Fleet = await start_fleet(root / mode, members=1, regions=1, zones=1, istio=True, backends=1)
    rows: list[Row] = []
    try:
        assert fleet.state is not None
        (member,) = fleet.state.members
        istio = member.istio
        assert istio is not None and istio.backends
        backend = (istio.backends[0].address, istio.backends[0].port)
        admin = istio.gateway_admin_url
        monitoring = f"http://127.0.0.1:{istio.monitoring_port}"
        client = await member.client()
        try:
            await setup(client)
            vip = ""
            for _ in range(300):
                vip = await gateway_vip(client, BENCH_NS, "bench-gw")
                if vip:
                    break
                await asyncio.sleep(0.1)
            assert vip, "no VIP for the bench gateway Service"
            base = await active_clusters(admin)
            say(f"fleet up; gateway has {base} clusters before the AccessPoints; VIP {vip}")
            done = 0
            extra = 0  # the AccessPoints added by the change measurements (served, visible everywhere)
            for n in sizes:
                items = [it for i in range(done, n) for it in objects_of(i, mode, i % served_every == 0, backend)]
                write_start = time.monotonic()
                create_s = await bulk_create(client, items, concurrency)
                served = sum(1 for i in range(n) if i % served_every == 0) + extra
                visible = (n + extra) if mode == "exported" else served
                want = base + visible
                say(f"N={n}: {len(items)} objects written in {create_s:.1f}s; waiting for {want} clusters")

                async def converged(want: int = want) -> bool:
                    return await active_clusters(admin) >= want
                await until(converged, 900, 0.25)
                converge_s = time.monotonic() - write_start
                config = await gateway_config(admin)
                for _ in range(120):  # routes arrive with the RDS push that follows CDS/LDS
                    if config.routes >= served:
                        break
                    await asyncio.sleep(0.5)
                    config = await gateway_config(admin)
                row = Row(mode, n, served, config.clusters, config.routes, config.dump_bytes,
                          envoy_rss(istio.agent_pid), rss(istio.istiod_pid), create_s, converge_s)
                # one change: a new served AccessPoint, timed until a request reaches it
                for c in range(changes):
                    i = 1_000_000 + n * 10 + c
                    before = await istiod_push_metrics(monitoring)
                    for path, obj in objects_of(i, mode, True, backend):
                        await client.create(path, obj, field_manager="bench")
                    host = f"ap-{i}.{DOMAIN}"

                    async def reached(host: str = host) -> bool:
                        return await one_request(vip, host) == 200
                    row.change_s.append(await until(reached, 300, 0.02) + 0.0)
                    extra += 1
                    await asyncio.sleep(1.0)  # let istiod finish recording the push
                    after = await istiod_push_metrics(monitoring)
                    pushes = after.get("pilot_xds_push_time_count", 0) - before.get("pilot_xds_push_time_count", 0)
                    if pushes > 0:
                        spent = after["pilot_xds_push_time_sum"] - before.get("pilot_xds_push_time_sum", 0)
                        row.push_time_s = spent / pushes
                    conv = after.get("pilot_proxy_convergence_time_count", 0) - \
                        before.get("pilot_proxy_convergence_time_count", 0)
                    if conv > 0:
                        row.convergence_s = (after["pilot_proxy_convergence_time_sum"] -
                                             before.get("pilot_proxy_convergence_time_sum", 0)) / conv
                lat = await latencies(vip, f"ap-0.{DOMAIN}", 300)
                row.p50_ms, row.p99_ms = pct(lat, 50) * 1e3, pct(lat, 99) * 1e3
                rows.append(row)
                say(format_row(row))
                done = n
        finally:
            await client.close()
    finally:
        fleet.down()
    return rows


HEADER = ("mode", "N", "served", "clusters", "routes", "config_dump", "Envoy RSS", "istiod RSS", "write",
          "converged", "change->served", "istiod push", "convergence", "p50", "p99")


def format_row(r: Row) -> str:
    change = statistics.median(r.change_s) if r.change_s else float("nan")
    return " | ".join([
        r.mode, f"{r.n:,}", f"{r.served:,}", f"{r.clusters:,}", f"{r.routes:,}", f"{r.dump_bytes / 1e6:.1f} MB",
        f"{r.envoy_rss / 2**20:.0f} MiB", f"{r.istiod_rss / 2**20:.0f} MiB", f"{r.create_s:.1f} s",
        f"{r.converge_s:.1f} s", f"{change * 1e3:.0f} ms", f"{r.push_time_s * 1e3:.1f} ms",
        f"{r.convergence_s * 1e3:.0f} ms", f"{r.p50_ms:.2f} ms", f"{r.p99_ms:.2f} ms"])


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + format_row(r) + " |" for r in sorted(rows, key=lambda r: (r.n, r.mode))]
    return "\n".join(lines)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="meshfed visibility benchmark (istiod + gateway Envoy)")
    parser.add_argument("--sizes", default="500,2000,5000")
    parser.add_argument("--modes", default="visibility,exported")
    parser.add_argument("--served-every", type=int, default=10,
                        help="the measured gateway serves every k-th AccessPoint (others: another gateway)")
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--changes", type=int, default=3, help="single changes timed per size")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    root = Path(args.dir or tempfile.mkdtemp(prefix="meshfed-bench-visibility-"))
    rows: list[Row] = []
    started = time.monotonic()
    for mode in args.modes.split(","):
        rows += await run_mode(mode, sizes, args.served_every, args.concurrency, root, args.changes)
    print()
    print(f"visibility benchmark: 1 member (istiod + gateway Envoy), every {args.served_every}th AccessPoint on "
          f"the measured gateway, {time.monotonic() - started:.0f} s")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
