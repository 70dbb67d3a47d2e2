"""Visibility benchmark (issue 12): what istiod and a real gateway Envoy do with N AccessPoints, with
meshfed's visibility control (`spec.traffic.visibility` -> exportTo) and without it (everything exported).

A hub and one member of the local fleet with Istio (real kube-apiservers, a real istiod, the gateway
Envoy under pilot-agent in the member's network namespace, an echo backend) and the `meshfed controller`.
Each AccessPoint (in one of 50 team namespaces, `rollout: {waves: [{name: all}]}`) has:

  * a ServiceEntry (its backend host `ap-<i>.<team>.internal`, MESH_INTERNAL, STATIC, the echo backend
    as endpoint) and a VirtualService (its routes) bound to a gateway;
  * every `--served-every`-th AccessPoint is served by the measured gateway (Gateway `istio-system/bench`,
    selector `istio: ingressgateway`); the others by another team's gateway (Gateway `edge/edge`, whose
    proxies run elsewhere) -- the shape of a shared cluster, where the seed's gateways broke: config for
    thousands of services a gateway never routes to. The two Gateways and the LoadBalancer Service of the
    measured gateway are the gateway team's infrastructure, written once on the member by the bench;
  * mode `visibility`: meshfed's default exportTo (the object's own namespace and its gateway's:
    served ones nothing set, exportTo [".", "istio-system"]; the others `visibility.gatewayNamespace:
    edge`, exportTo [".", "edge"]); mode `exported`: `visibility.consumerNamespaces: ["*"]` on every
    AccessPoint, exportTo ["*"] (Istio's default when nothing is set).

How the AccessPoints reach the member: steps up to `--controller-upto` (default: the first size, 500) are
created on the hub and written by the controller; the bench then checks that every object the controller
wrote has exactly the spec of meshfed's own render (accesspoint.render + the visibility transform of
federation.traffic) and the exportTo of the mode. Larger steps write that render on the member directly
(name, namespace, spec: what Istio acts on; without meshfed's ownership labels), because the controller
on this shared 2-core machine propagates a few AccessPoints a second, too slow for 2 x 4,500 more.

Per N (cumulative: 500, 2,000, 5,000) and mode, once the gateway converged: the gateway Envoy's clusters
(cluster_manager.active_clusters) and routes (virtual hosts of this bench's AccessPoints in its route
configurations), its config size (bytes of /config_dump, which leaves EDS out) and the Envoy's RSS,
istiod's RSS, the time from the step's first write until the member holds every object and until the
gateway holds every cluster it should see; then `--changes` single changes (a new served AccessPoint's
objects written on the member), each timed until a request through the gateway reaches its host, with
istiod's own figures for the push it caused (the delta of pilot_xds_push_time -- the sum over the xDS
types pushed -- and the mean pilot_proxy_convergence_time from its /metrics); and a request's latency
through the gateway (p50/p99 of 300 requests on one keep-alive connection, to ap-0).

A step that does not converge within `--step-timeout` seconds ends that mode (the table says which N it
reached). Each mode runs on a fleet of its own, so RSS figures do not carry over.

Usage: python -m e2e.bench.visibility [--sizes 500,2000,5000] [--modes visibility,exported]
                                      [--served-every 10] [--concurrency 16] [--changes 3]
                                      [--controller-upto 500] [--step-timeout 900] [--dir DIR]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from accesspoint.models import AccessPoint
from accesspoint.render import RenderContext, render
from accesspoint.visibility import VisibilityPolicy, apply_visibility
from federation.kube import ApiError, KubeClient
from fleet import GATEWAY_SELECTOR, ISTIO_NAMESPACE, Fleet, ensure_namespace
from fleet.istio import MemberIstio, http_get
from fleet.testing import ACCESSPOINTS, ControllerProcess, gateway_vip, start_fleet
from placement.models import ClusterFacts

TEAMS = 50
EDGE_NS = "edge"  # the other teams' gateway namespace (its proxies run elsewhere)
BENCH_NS = "bench"
GATEWAY = "bench"
DOMAIN = "bench.example"
NET = "/apis/networking.istio.io/v1/namespaces/{ns}/{plural}"


def team(i: int) -> str:
    return f"team-{i % TEAMS:02d}"


def visibility(mode: str, served: bool) -> dict[str, Any] | None:
    """spec.traffic.visibility of an AccessPoint in `mode`."""
    if mode == "exported":
        return {"consumerNamespaces": ["*"]}
    return None if served else {"gatewayNamespace": EDGE_NS}


def expected_export(mode: str, served: bool) -> list[str]:
    """What meshfed must write as exportTo (accesspoint.visibility.export_to) for that visibility."""
    if mode == "exported":
        return ["*"]
    return [".", ISTIO_NAMESPACE if served else EDGE_NS]


def accesspoint(name: str, ns: str, mode: str, served: bool, backend: tuple[str, int]) -> dict[str, Any]:
    backend_host = f"{name}.{ns}.internal"
    template = [
        {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": name},
         "spec": {"hosts": [backend_host], "location": "MESH_INTERNAL", "resolution": "STATIC",
                  "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}],
                  "endpoints": [{"address": backend[0], "ports": {"http": backend[1]}}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": name},
         "spec": {"hosts": [f"{name}.{DOMAIN}"],
                  "gateways": [f"{ISTIO_NAMESPACE}/{GATEWAY}" if served else f"{EDGE_NS}/edge"],
                  "http": [{"route": [{"destination": {"host": backend_host, "port": {"number": 8080}}}]}]}},
    ]
    spec: dict[str, Any] = {"template": template, "rollout": {"waves": [{"name": "all"}]}}
    vis = visibility(mode, served)
    if vis is not None:
        spec["traffic"] = {"visibility": vis}
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": name, "namespace": ns},
            "spec": spec}


def rendered(ap_body: dict[str, Any], cluster: ClusterFacts) -> list[tuple[str, dict[str, Any]]]:
    """(collection path, object) of what meshfed writes on `cluster` for an AccessPoint: its own renderer
    (accesspoint.render) with the visibility transform federation.traffic applies (exportTo from
    spec.traffic.visibility, gateway namespace istio-system). Only name, namespace and spec are kept:
    meshfed's ownership labels would make these objects the controller's, and they change nothing Istio
    does. The bench checks at the first size that the controller writes exactly these specs."""
    ap = AccessPoint.model_validate(ap_body)
    traffic = ap.spec.traffic
    policy: VisibilityPolicy | None = traffic.visibility if traffic is not None else None

    def transform(objects: list[dict[str, Any]], _: ClusterFacts) -> list[dict[str, Any]]:
        return apply_visibility(objects, policy, ISTIO_NAMESPACE, default_namespace=ap.namespace)

    result = render(ap, cluster, "meshfed-hub", RenderContext(transforms=(transform,)))
    if result.errors:
        raise AssertionError(f"render of {ap.namespace}/{ap.name}: {result.errors}")
    out = []
    for obj in result.objects:
        ns, plural = obj["metadata"]["namespace"], PLURALS[obj["kind"]]
        out.append((NET.format(ns=ns, plural=plural),
                    {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                     "metadata": {"name": obj["metadata"]["name"], "namespace": ns}, "spec": obj["spec"]}))
    return out


PLURALS = {"ServiceEntry": "serviceentries", "VirtualService": "virtualservices"}


async def bulk_write(client: KubeClient, items: list[tuple[str, dict[str, Any]]], concurrency: int) -> float:
    """Create `items` on the member (the direct path, past `--controller-upto`)."""
    sem = asyncio.Semaphore(concurrency)
    for ns in sorted({o["metadata"]["namespace"] for _, o in items}):
        await ensure_namespace(client, ns)
    start = time.monotonic()
    await asyncio.gather(*(create_once(client, sem, p, o) for p, o in items))
    return time.monotonic() - start


async def create_once(client: KubeClient, sem: asyncio.Semaphore, path: str, obj: dict[str, Any]) -> None:
    """Create `obj` at `path` (already there: fine), retrying what an overloaded API server refuses."""
    async with sem:
        for attempt in range(5):
            try:
                await client.create(path, obj, field_manager="bench")
                return
            except ApiError as err:
                if err.status == 409:
                    return
                if err.status not in (429, 500, 503, 504) or attempt == 4:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))


async def bulk_create(hub: KubeClient, items: list[dict[str, Any]], concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)
    start = time.monotonic()
    await asyncio.gather(*(create_once(hub, sem, ACCESSPOINTS.format(ns=o["metadata"]["namespace"]), o)
                           for o in items))
    return time.monotonic() - start


async def setup_member(client: KubeClient) -> None:
    """The gateway team's infrastructure on the member: the two Gateways, the measured gateway's VIP."""
    for ns in (BENCH_NS, EDGE_NS):
        await ensure_namespace(client, ns)
    gateways = [
        (ISTIO_NAMESPACE, GATEWAY, GATEWAY_SELECTOR),
        (EDGE_NS, "edge", {"istio": "edgegateway"}),
    ]
    for ns, name, selector in gateways:
        await client.apply(f"{NET.format(ns=ns, plural='gateways')}/{name}",
                           {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                            "metadata": {"name": name, "namespace": ns},
                            "spec": {"selector": dict(selector), "servers": [
                                {"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                                 "hosts": [f"*/*.{DOMAIN}"]}]}},
                           field_manager="bench")
    await client.apply(f"/api/v1/namespaces/{BENCH_NS}/services/bench-gw",
                       {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bench-gw", "namespace": BENCH_NS},
                        "spec": {"type": "LoadBalancer", "selector": dict(GATEWAY_SELECTOR),
                                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
                       field_manager="bench")


async def member_objects(client: KubeClient) -> int:
    """This bench's ServiceEntries and VirtualServices on the member (what the controller wrote so far)."""
    count = 0
    for plural in ("serviceentries", "virtualservices"):
        items, _ = await client.list(f"/apis/networking.istio.io/v1/{plural}", metadata_only=True)
        count += sum(1 for o in items if str(o["metadata"]["name"]).startswith(("ap-", "chg-")))
    return count


async def check_rendered(client: KubeClient, mode: str, bodies: list[tuple[dict[str, Any], bool]],
                         cluster: ClusterFacts) -> list[str]:
    """Problems with what the controller wrote on the member for each (AccessPoint, served): its spec must
    equal `rendered` (the direct path) and carry the exportTo of `mode`."""
    problems = []
    for body, served in bodies:
        want = expected_export(mode, served)
        for path, expected in rendered(body, cluster):
            name = expected["metadata"]["name"]
            obj = await client.get(f"{path}/{name}") or {}
            spec = obj.get("spec")
            where = f"{expected['kind']} {expected['metadata']['namespace']}/{name}"
            if spec != expected["spec"]:
                problems.append(f"{where}: spec {spec} differs from the direct render {expected['spec']}")
            elif spec.get("exportTo") != want:
                problems.append(f"{where}: exportTo {spec.get('exportTo')}, expected {want}")
    return problems


# ---- what the gateway holds ----------------------------------------------------------------------


async def admin_json(admin: str, path: str, timeout: float = 60.0) -> Any:
    status, body = await http_get(f"{admin}{path}", timeout=timeout)
    if status != 200:
        raise RuntimeError(f"{admin}{path}: {status} {body[:200]!r}")
    return json.loads(body)


async def active_clusters(admin: str) -> int:
    try:
        stats = await admin_json(admin, "/stats?format=json&filter=^cluster_manager.active_clusters$", timeout=30)
    except (RuntimeError, ValueError):
        return -1
    return int(next(s["value"] for s in stats["stats"] if s.get("name") == "cluster_manager.active_clusters"))


@dataclass
class GatewayConfig:
    clusters: int
    routes: int  # virtual hosts of this bench's AccessPoints over the dynamic route configurations
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
                    if vh.get("name", "").startswith(("ap-", "chg-")):
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
    via: str  # how this step's AccessPoints reached the member: "controller" or "direct"
    served: int
    clusters: int
    routes: int
    dump_bytes: int
    envoy_rss: int
    istiod_rss: int
    create_s: float
    propagate_s: float  # first hub create -> every object of the step on the member (the controller)
    converge_s: float  # ... -> the gateway holds every cluster it should see (controller + istiod + Envoy)
    change_s: list[float] = field(default_factory=list)
    push_time_s: list[float] = field(default_factory=list)
    convergence_s: list[float] = field(default_factory=list)
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")

    @property
    def change_median(self) -> float:
        return statistics.median(self.change_s) if self.change_s else float("nan")

    @property
    def push_median(self) -> float:
        return statistics.median(self.push_time_s) if self.push_time_s else float("nan")

    @property
    def convergence_median(self) -> float:
        return statistics.median(self.convergence_s) if self.convergence_s else float("nan")


async def measure_change(client: KubeClient, vip: str, monitoring: str, body: dict[str, Any],
                         cluster: ClusterFacts, row: Row) -> None:
    """A new served AccessPoint's objects written on the member until a request through the gateway
    reaches its host, and istiod's figures for the push it caused (istiod + gateway only: the
    controller's share of a change is measured by e2e/bench/propagation.py)."""
    objects = rendered(body, cluster)
    for ns in {o["metadata"]["namespace"] for _, o in objects}:
        await ensure_namespace(client, ns)
    before = await istiod_push_metrics(monitoring)
    start = time.monotonic()
    for path, obj in objects:
        await client.create(path, obj, field_manager="bench")
    host = f"{body['metadata']['name']}.{DOMAIN}"

    async def reached() -> bool:
        return await one_request(vip, host) == 200
    await until(reached, 300, 0.02)
    row.change_s.append(time.monotonic() - start)
    await asyncio.sleep(2.0)  # istiod records the push after the proxy ACKed it
    after = await istiod_push_metrics(monitoring)
    spent = after.get("pilot_xds_push_time_sum", 0.0) - before.get("pilot_xds_push_time_sum", 0.0)
    if after.get("pilot_xds_push_time_count", 0.0) > before.get("pilot_xds_push_time_count", 0.0):
        row.push_time_s.append(spent)
    conv = after.get("pilot_proxy_convergence_time_count", 0.0) - before.get("pilot_proxy_convergence_time_count", 0.0)
    if conv > 0:
        row.convergence_s.append((after["pilot_proxy_convergence_time_sum"] -
                                  before.get("pilot_proxy_convergence_time_sum", 0.0)) / conv)


def say(mode: str, msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} {mode}] {msg}", flush=True)


async def run_mode(mode: str, sizes: list[int], served_every: int, concurrency: int, root: Path,
                   changes: int, step_timeout: float, controller_upto: int) -> tuple[list[Row], str]:
    """Rows for the sizes this mode reached, and a note when a step did not complete."""
    try:
        fleet: Fleet = await start_fleet(root / mode, members=1, regions=1, zones=1, istio=True, backends=1)
    except (TimeoutError, OSError) as err:
        # Fleets pick free loopback ports; a concurrent fleet on the machine may take one in between
        # ("address already in use" in l4.log). Once more, on fresh ports.
        say(mode, f"fleet start failed ({err}); retrying once")
        fleet = await start_fleet(root / f"{mode}-retry", members=1, regions=1, zones=1, istio=True, backends=1)
    rows: list[Row] = []
    note = ""
    ctl: ControllerProcess | None = None
    try:
        assert fleet.state is not None
        (member,) = fleet.state.members
        cluster = ClusterFacts(name=member.name, region=member.region, zone=member.zone)
        istio: MemberIstio | None = member.istio
        assert istio is not None and istio.backends
        backend = (istio.backends[0].address, istio.backends[0].port)
        admin = istio.gateway_admin_url
        monitoring = f"http://127.0.0.1:{istio.monitoring_port}"
        client = await member.client()
        hub = await fleet.state.hub.client()
        try:
            await setup_member(client)
            for t in range(TEAMS):
                await ensure_namespace(hub, team(t))
            vip = ""
            for _ in range(300):
                vip = await gateway_vip(client, BENCH_NS, "bench-gw")
                if vip:
                    break
                await asyncio.sleep(0.1)
            assert vip, "no VIP for the bench gateway Service"
            ctl = ControllerProcess(fleet.state.hub.kubeconfig, root / f"{mode}-controller.log",
                                    extra=["--probe-interval", "5"])
            ctl.start()
            for _ in range(600):
                if ctl.ready():
                    break
                await asyncio.sleep(0.1)
            base = await active_clusters(admin)
            say(mode, f"fleet up; gateway has {base} clusters before the AccessPoints; VIP {vip}")
            done = 0
            extra = 0  # the AccessPoints added by the change measurements (served)
            for n in sizes:
                bodies = [(accesspoint(f"ap-{i}", team(i), mode, i % served_every == 0, backend), i % served_every == 0)
                          for i in range(done, n)]
                served = sum(1 for i in range(n) if i % served_every == 0) + extra
                visible = (n + extra) if mode == "exported" else served
                want = base + visible
                via = "controller" if n <= controller_upto else "direct"
                step_start = time.monotonic()
                if via == "controller":
                    create_s = await bulk_create(hub, [b for b, _ in bodies], concurrency)
                    say(mode, f"N={n}: {len(bodies)} AccessPoints created on the hub in {create_s:.1f}s; waiting for "
                              f"the controller to write them, then {want} clusters on the gateway")
                else:
                    items = [it for b, _ in bodies for it in rendered(b, cluster)]
                    create_s = await bulk_write(client, items, concurrency)
                    say(mode, f"N={n}: {len(items)} objects of {len(bodies)} AccessPoints (meshfed's render) written "
                              f"on the member in {create_s:.1f}s; waiting for {want} clusters on the gateway")
                propagated_at: list[float] = []

                async def converged(want: int = want, objects: int = 2 * (n + extra),
                                    propagated_at: list[float] = propagated_at) -> bool:
                    if not propagated_at:
                        if await member_objects(client) < objects:
                            return False
                        propagated_at.append(time.monotonic())
                    return await active_clusters(admin) >= want
                try:
                    await until(converged, max(1.0, step_timeout - (time.monotonic() - step_start)), 1.0)
                except TimeoutError:
                    note = (f"{mode}: N={n} did not converge within {step_timeout:.0f} s of the step's first write "
                            f"(member objects {await member_objects(client)}/{2 * (n + extra)}, "
                            f"gateway {await active_clusters(admin)}/{want} clusters)")
                    say(mode, note)
                    break
                converge_s = time.monotonic() - step_start
                propagate_s = propagated_at[0] - step_start
                config = await gateway_config(admin)
                for _ in range(240):  # routes arrive with the RDS push that follows CDS/LDS
                    if config.routes >= served:
                        break
                    await asyncio.sleep(0.5)
                    config = await gateway_config(admin)
                row = Row(mode, n, via, served, config.clusters, config.routes, config.dump_bytes,
                          envoy_rss(istio.agent_pid), rss(istio.istiod_pid), create_s, propagate_s, converge_s)
                if via == "controller":
                    problems = await check_rendered(client, mode, bodies, cluster)
                    if problems:
                        raise AssertionError(f"{len(problems)} objects written by the controller differ from the "
                                             "direct render: " + "; ".join(problems[:5]))
                    others = (f" / {expected_export(mode, False)} (other gateway)"
                              if any(not served for _, served in bodies) else "")
                    say(mode, f"N={n}: all {2 * len(bodies)} objects the controller wrote equal meshfed's render "
                              f"(the direct path) and carry exportTo {expected_export(mode, True)} (served){others}")
                for c in range(changes):
                    body = accesspoint(f"chg-{n}-{c}", team(c), mode, True, backend)
                    await measure_change(client, vip, monitoring, body, cluster, row)
                    extra += 1
                lat = await latencies(vip, f"ap-0.{DOMAIN}", 300)
                row.p50_ms, row.p99_ms = pct(lat, 50) * 1e3, pct(lat, 99) * 1e3
                rows.append(row)
                say(mode, " | ".join(format_row(row, None)))
                done = n
        finally:
            await client.close()
            await hub.close()
    finally:
        if ctl is not None:
            ctl.stop()
        fleet.down(purge=False)
    return rows, note


HEADER = ("mode", "N", "step via", "served", "clusters", "routes", "config_dump", "Envoy RSS", "istiod RSS",
          "write -> on member", "-> gateway has all", "change -> served", "istiod push", "convergence",
          "p50", "p99")


def ratio(value: float, base: float | None) -> str:
    if base is None or not base or value != value or base != base:
        return ""
    return f" ({value / base:.2f}x)"


def format_row(r: Row, base: Row | None) -> list[str]:
    """Cells of a row; with `base` (the exported row at the same N), ratios against it."""
    def cell(text: str, value: float, attr: Callable[[Row], float]) -> str:
        return text + (ratio(value, attr(base)) if base is not None and base is not r else "")
    return [
        r.mode, f"{r.n:,}", r.via, f"{r.served:,}",
        cell(f"{r.clusters:,}", r.clusters, lambda b: b.clusters),
        cell(f"{r.routes:,}", r.routes, lambda b: b.routes),
        cell(f"{r.dump_bytes / 1e6:.1f} MB", r.dump_bytes, lambda b: b.dump_bytes),
        cell(f"{r.envoy_rss / 2**20:.0f} MiB", r.envoy_rss, lambda b: b.envoy_rss),
        cell(f"{r.istiod_rss / 2**20:.0f} MiB", r.istiod_rss, lambda b: b.istiod_rss),
        cell(f"{r.propagate_s:.0f} s", r.propagate_s, lambda b: b.propagate_s),
        cell(f"{r.converge_s:.0f} s", r.converge_s, lambda b: b.converge_s),
        cell(f"{r.change_median * 1e3:.0f} ms", r.change_median, lambda b: b.change_median),
        cell(f"{r.push_median * 1e3:.0f} ms", r.push_median, lambda b: b.push_median),
        cell(f"{r.convergence_median * 1e3:.0f} ms", r.convergence_median, lambda b: b.convergence_median),
        cell(f"{r.p50_ms:.2f} ms", r.p50_ms, lambda b: b.p50_ms),
        cell(f"{r.p99_ms:.2f} ms", r.p99_ms, lambda b: b.p99_ms),
    ]


def table(rows: list[Row]) -> str:
    exported = {r.n: r for r in rows if r.mode == "exported"}
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    order = {"exported": 1, "visibility": 0}
    for r in sorted(rows, key=lambda r: (r.n, order.get(r.mode, 2))):
        lines.append("| " + " | ".join(format_row(r, exported.get(r.n))) + " |")
    return "\n".join(lines)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="meshfed visibility benchmark (istiod + gateway Envoy)")
    parser.add_argument("--sizes", default="500,2000,5000")
    parser.add_argument("--modes", default="visibility,exported")
    parser.add_argument("--served-every", type=int, default=10,
                        help="the measured gateway serves every k-th AccessPoint (others: another gateway)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent AccessPoint creates on the hub")
    parser.add_argument("--changes", type=int, default=3, help="single changes timed per size")
    parser.add_argument("--step-timeout", type=float, default=900.0,
                        help="seconds a size step may take before the mode stops there")
    parser.add_argument("--controller-upto", type=int, default=500,
                        help="sizes up to this go through the hub and the controller (checked against the direct "
                             "render); larger steps write meshfed's render on the member directly")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    root = Path(args.dir or tempfile.mkdtemp(prefix="meshfed-bench-visibility-"))
    rows: list[Row] = []
    notes: list[str] = []
    started = time.monotonic()
    for mode in args.modes.split(","):
        mode_rows, note = await run_mode(mode, sizes, args.served_every, args.concurrency, root, args.changes,
                                         args.step_timeout, args.controller_upto)
        rows += mode_rows
        if note:
            notes.append(note)
    print()
    print(f"visibility benchmark: hub + 1 member (istiod + gateway Envoy), controller; every "
          f"{args.served_every}th AccessPoint on the measured gateway; {time.monotonic() - started:.0f} s; "
          f"ratios: visibility / exported at the same N")
    print(table(rows))
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
