"""Mesh benchmark (issue 10, part 4): the local fleet with Istio (hub + 2 members in 2 regions, each with a real
istiod and gateway Envoy, echo backends), `meshfed controller` with its defaults.

Prints, measured in one run:
  1. hub edit -> the new route ACKed on every gateway (the gateway Envoy's own /config_dump holds it) and
     -> the hub reporting routeConfigured for the new revision on every cluster, p50/p95, for 1 AccessPoint
     and for one change among 500;
  2. Drain of region-a -> the last request served by region-a through region-a's gateway VIP, p95;
  3. istiod and gateway (pilot-agent + Envoy) CPU and RSS per member at 500 AccessPoints, idle;
  4. requests meshfed sends to each istiod per minute at 500 AccessPoints when nothing changes (counted by a
     forwarding proxy between the controller and each istiod: MemberCluster spec.istiod.url points at it).

Usage: python -m e2e.bench.mesh [--aps 500] [--samples 10] [--drains 5] [--idle 60]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from federation.kube import KubeClient
from fleet import GATEWAY_SELECTOR, Fleet, ensure_namespace
from fleet.istio import http_get
from fleet.testing import ControllerProcess, gateway_vip

AP_PATH = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
NS = "bench"
ECHO = f"echo.{NS}.svc.cluster.local"


def template(name: str, tag: str, *, full: bool) -> list[dict[str, Any]]:
    host = f"{name}.bench.example"
    objs: list[dict[str, Any]] = [
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": name},
         "spec": {"selector": dict(GATEWAY_SELECTOR),
                  "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": [host]}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": name},
         "spec": {"hosts": [host], "gateways": [name],
                  "http": [{"route": [{"destination": {"host": ECHO, "port": {"number": 8080}}}],
                            "headers": {"response": {"set": {"x-tag": tag}}}}]}},
    ]
    if full:  # the measured AccessPoint: a VIP and the DestinationRule the traffic policy compiles into
        objs += [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"{name}-gw"},
             "spec": {"type": "LoadBalancer", "selector": dict(GATEWAY_SELECTOR),
                      "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
            {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "echo"},
             "spec": {"host": ECHO, "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}},
        ]
    return objs


def accesspoint(name: str, tag: str = "v0", *, full: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"template": template(name, tag, full=full), "rollout": {"waves": [{"name": "all"}]}}
    if full:
        spec["traffic"] = {"locality": {"mode": "Weighted"}}
    return {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": name, "namespace": NS},
            "spec": spec}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"p50 {statistics.median(values) * 1000:6.0f} ms, p95 {pct(values, 95) * 1000:6.0f} ms (n={len(values)})"


# ---- a counting proxy in front of each istiod -------------------------------------------------------

class CountingProxy:
    """Forwards GETs to `target` and counts them by path: what meshfed sends to that istiod."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.counts: collections.Counter[str] = collections.Counter()
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession()

    async def handle(self, request: web.Request) -> web.Response:
        self.counts[request.path] += 1
        assert self.session is not None
        async with self.session.get(self.target + request.path_qs, timeout=aiohttp.ClientTimeout(total=30)) as resp:
            return web.Response(status=resp.status, body=await resp.read(), content_type="application/json")

    def total(self) -> int:
        return sum(self.counts.values())

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.runner is not None:
            await self.runner.cleanup()


# ---- process figures ------------------------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def children(pid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            f = _stat(int(p))
            if f and int(f[1]) == pid:
                out.append(int(p))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        f = _stat(pid)
        if f:
            total += sum(int(x) for x in f[11:13]) / os.sysconf("SC_CLK_TCK")
    return total


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


# ---- the measured paths ---------------------------------------------------------------------------

async def gateway_has(admin_url: str, needle: bytes) -> bool:
    status, body = await http_get(f"{admin_url}/config_dump?resource=dynamic_route_configs", timeout=10)
    return status == 200 and needle in body


async def hub_routes_for(hub: KubeClient, name: str, generation: int, members: int) -> bool:
    ap = await hub.get(f"{AP_PATH.format(ns=NS)}/{name}") or {}
    st = ap.get("status") or {}
    if st.get("observedGeneration") != generation or (st.get("summary") or {}).get("routes") != f"{members}/{members}":
        return False
    clusters = st.get("clusters") or []
    return len(clusters) == members and all(c.get("revision") == st.get("revision") and c.get("routeConfigured")
                                            for c in clusters)


async def edit_latency(hub: KubeClient, fleet: Fleet, name: str, samples: int) -> tuple[list[float], list[float]]:
    """Change the response header tag of one AccessPoint's route: time until every gateway Envoy holds it, and
    until the hub reports routeConfigured for that revision on every cluster."""
    assert fleet.state is not None
    admins = [m.istio.gateway_admin_url for m in fleet.state.members if m.istio]
    gw_times: list[float] = []
    hub_times: list[float] = []
    path = f"{AP_PATH.format(ns=NS)}/{name}"
    for _ in range(samples):
        tag = f"t-{uuid.uuid4().hex[:10]}"
        ap = await hub.get(path)
        assert ap is not None
        body = {k: v for k, v in ap.items() if k != "status"}
        body["spec"]["template"][1]["spec"]["http"][0]["headers"]["response"]["set"]["x-tag"] = tag
        t0 = time.monotonic()
        updated = await hub.request("PUT", path, body=body, query={"fieldManager": "bench"})
        generation = int(updated["metadata"]["generation"])
        gw_done: dict[str, float] = {}
        hub_done: float | None = None
        deadline = t0 + 60
        while (len(gw_done) < len(admins) or hub_done is None) and time.monotonic() < deadline:
            for url in admins:
                if url not in gw_done and await gateway_has(url, tag.encode()):
                    gw_done[url] = time.monotonic() - t0
            if hub_done is None and await hub_routes_for(hub, name, generation, len(admins)):
                hub_done = time.monotonic() - t0
            await asyncio.sleep(0.02)
        if len(gw_done) == len(admins):
            gw_times.append(max(gw_done.values()))
        if hub_done is not None:
            hub_times.append(hub_done)
        await asyncio.sleep(0.5)
    return gw_times, hub_times


async def drain_latency(hub: KubeClient, fleet: Fleet, members: dict[str, KubeClient], name: str,
                        drains: int) -> tuple[list[float], list[str]]:
    """Requests through region-a's gateway VIP; Drain region-a on the hub; time until the last answer from a
    region-a backend. Undrain and wait for region-a to serve again before the next sample."""
    assert fleet.state is not None
    first = next(m for m in fleet.state.members if m.region == "region-a")
    vip = ""
    for _ in range(100):
        vip = await gateway_vip(members[first.name], NS, f"{name}-gw")
        if vip:
            break
        await asyncio.sleep(0.2)
    host = f"{name}.bench.example"
    path = f"{AP_PATH.format(ns=NS)}/{name}"
    out: list[float] = []
    notes: list[str] = []
    log: list[tuple[float, str]] = []
    stop = asyncio.Event()

    async def client() -> None:
        request = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        conn = None
        while not stop.is_set():
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection(vip, 80), 3)
                conn[1].write(request)
                head = await asyncio.wait_for(conn[0].readuntil(b"\r\n\r\n"), 3)
                headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ": " in line)
                lower = {k.lower(): v for k, v in headers.items()}
                await conn[0].readexactly(int(lower.get("content-length", "0")))
                log.append((time.monotonic(), lower.get("x-echo-region", "?")))
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                if conn is not None:
                    conn[1].close()
                conn = None
                await asyncio.sleep(0.05)

    task = asyncio.create_task(client())
    try:
        for _ in range(drains):
            # steady state: region-a answers (99/1 local)
            t_wait = time.monotonic()
            while not any(t > t_wait + 0.5 and r == "region-a" for t, r in log[-50:]):
                if time.monotonic() - t_wait > 60:
                    notes.append("region-a never answered before a drain")
                    break
                await asyncio.sleep(0.1)
            t0 = time.monotonic()
            await hub.merge_patch(path, {"spec": {"traffic": {"locality": {"mode": "Drain",
                                                                          "drain": {"regions": ["region-a"]}}}}})
            # done when 3 s pass with answers but none from region-a
            while time.monotonic() - t0 < 60:
                recent_a = [t for t, r in log if t > t0 and r == "region-a"]
                last_a = recent_a[-1] if recent_a else t0
                if time.monotonic() - last_a > 3 and any(t > last_a + 1 for t, _ in log):
                    break
                await asyncio.sleep(0.1)
            recent_a = [t for t, r in log if t > t0 and r == "region-a"]
            out.append((recent_a[-1] - t0) if recent_a else 0.0)
            await hub.merge_patch(path, {"spec": {"traffic": {"locality": {"mode": "Weighted", "drain": None}}}})
    finally:
        stop.set()
        await task
    return out, notes


async def all_routed(hub: KubeClient, members: int) -> int:
    """AccessPoints whose status (for their current generation) says ROUTES members/members."""
    items, _ = await hub.list(AP_PATH.format(ns=NS))
    count = 0
    for a in items:
        st = a.get("status") or {}
        if (st.get("summary") or {}).get("routes") == f"{members}/{members}" and \
                st.get("observedGeneration") == a["metadata"]["generation"]:
            count += 1
    return count


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="meshfed-bench-mesh-"))
    fleet = Fleet(root)
    print(f"fleet: hub + 2 members with Istio ({root})", flush=True)
    await fleet.up(members=2, regions=2, zones=2, istio=True)
    assert fleet.state is not None
    hub = await fleet.state.hub.client()
    members = {m.name: await m.client() for m in fleet.state.members}
    proxies: dict[str, CountingProxy] = {}
    ctl = ControllerProcess(fleet.state.hub.kubeconfig, root / "controller.log",
                            extra=["--probe-interval", "5", "--resync", "600"])
    try:
        for m in fleet.state.members:
            assert m.istio is not None
            proxy = CountingProxy(m.istio.istiod_url)
            await proxy.start()
            proxies[m.name] = proxy
            await hub.merge_patch(f"/apis/meshfed.io/v1alpha1/memberclusters/{m.name}",
                                  {"spec": {"istiod": {"url": proxy.url}}})
        await ensure_namespace(hub, NS)
        await fleet.publish_backends(NS, ECHO)
        ctl.start()
        await asyncio.sleep(3)
        n = len(members)

        print("1 AccessPoint: create, wait until routes are configured on both gateways ...", flush=True)
        t0 = time.monotonic()
        await hub.create(AP_PATH.format(ns=NS), accesspoint("ap-0", full=True), field_manager="bench")
        while await all_routed(hub, n) < 1:
            if time.monotonic() - t0 > 180:
                raise SystemExit("ap-0 never got its routes configured:\n" + ctl.log_tail())
            await asyncio.sleep(0.1)
        first_ready = time.monotonic() - t0
        print(f"  created -> ROUTES {n}/{n}: {first_ready:.1f} s", flush=True)
        print(f"latency: {args.samples} edits of 1 AccessPoint ...", flush=True)
        gw1, hub1 = await edit_latency(hub, fleet, "ap-0", args.samples)
        print(f"  gateways {ms(gw1)}; hub {ms(hub1)}", flush=True)

        print(f"drain: {args.drains} drains of region-a ...", flush=True)
        drain, drain_notes = await drain_latency(hub, fleet, members, "ap-0", args.drains)
        print(f"  last region-a answer after the hub edit: {ms(drain)} {drain_notes or ''}", flush=True)

        print(f"bulk: {args.aps - 1} more AccessPoints (Gateway + VirtualService each) ...", flush=True)
        sem = asyncio.Semaphore(16)

        async def create(i: int) -> None:
            async with sem:
                await hub.create(AP_PATH.format(ns=NS), accesspoint(f"ap-{i}"), field_manager="bench")

        t0 = time.monotonic()
        await asyncio.gather(*(create(i) for i in range(1, args.aps)))
        routed = 0
        while routed < args.aps:
            routed = await all_routed(hub, n)
            if time.monotonic() - t0 > 900:
                raise SystemExit(f"only {routed}/{args.aps} AccessPoints got their routes in 15 min:\n"
                                 + ctl.log_tail())
            await asyncio.sleep(1)
        bulk = time.monotonic() - t0
        print(f"  {args.aps} AccessPoints with ROUTES {n}/{n}: {bulk:.1f} s after the first create", flush=True)

        print(f"idle: 35 s for the in-flight windows to close, then {args.idle:.0f} s counted ...", flush=True)
        await asyncio.sleep(35)
        before = {k: (p.total(), collections.Counter(p.counts)) for k, p in proxies.items()}
        pids: dict[str, dict[str, list[int]]] = {}
        for m in fleet.state.members:
            assert m.istio is not None
            pids[m.name] = {"istiod": [m.istio.istiod_pid],
                            "gateway": [m.istio.agent_pid, *children(m.istio.agent_pid)]}
        cpu0 = {k: {r: cpu_seconds(v) for r, v in d.items()} for k, d in pids.items()}
        t_idle = time.monotonic()
        await asyncio.sleep(args.idle)
        idle_s = time.monotonic() - t_idle
        cpu1 = {k: {r: cpu_seconds(v) for r, v in d.items()} for k, d in pids.items()}
        rss = {k: {r: rss_mb(v) for r, v in d.items()} for k, d in pids.items()}
        idle_rate = {k: (p.total() - before[k][0]) * 60 / idle_s for k, p in proxies.items()}
        idle_paths = {k: dict(p.counts - before[k][1]) for k, p in proxies.items()}

        print(f"latency: {args.samples} edits of 1 AccessPoint among {args.aps} ...", flush=True)
        gw500, hub500 = await edit_latency(hub, fleet, "ap-0", args.samples)
        print(f"  gateways {ms(gw500)}; hub {ms(hub500)}", flush=True)

        print("\n==== mesh benchmark ====")
        print(f"fleet: hub + {n} members (region-a, region-b), each a real istiod + gateway Envoy; "
              f"controller defaults (istiod poll 10 s idle / 0.5 s in flight)")
        print(f"hub edit -> route ACKed on every gateway, 1 AccessPoint:        {ms(gw1)}")
        print(f"hub edit -> hub reports routeConfigured, 1 AccessPoint:         {ms(hub1)}")
        print(f"hub edit -> route ACKed on every gateway, 1 change among {args.aps}: {ms(gw500)}")
        print(f"hub edit -> hub reports routeConfigured, 1 change among {args.aps}: {ms(hub500)}")
        print(f"Drain region-a -> last request served by region-a:              {ms(drain)}")
        print(f"{args.aps} AccessPoints created -> all ROUTES {n}/{n}:                 {bulk:.1f} s")
        for name in sorted(pids):
            parts = []
            for role in ("istiod", "gateway"):
                cpu = (cpu1[name][role] - cpu0[name][role]) / idle_s * 100
                parts.append(f"{role} {cpu:5.1f}% CPU {rss[name][role]:6.0f} MiB RSS")
            print(f"{name} at {args.aps} AccessPoints, idle: " + ", ".join(parts))
        for name in sorted(idle_rate):
            print(f"requests to {name}'s istiod per minute at {args.aps} AccessPoints, idle: {idle_rate[name]:5.1f} "
                  f"{idle_paths[name]}")
        print(f"istiod requests over the whole run: { {k: dict(p.counts) for k, p in proxies.items()} }")
    finally:
        ctl.stop()
        for p in proxies.values():
            await p.stop()
        await hub.close()
        for c in members.values():
            await c.close()
        fleet.down()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aps", type=int, default=500)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--drains", type=int, default=5)
    parser.add_argument("--idle", type=float, default=60.0)
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
