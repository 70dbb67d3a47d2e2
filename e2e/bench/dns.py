"""DNS benchmark against a real BIND 9 on loopback (RFC 2136 + TSIG through nameservice).

    .venv/bin/python e2e/bench/dns.py [--names 2000] [--samples 50] [--json]

Prints:
- full sync of N NameServices (one zone listing, one plan, batched UPDATE messages): messages
  sent, seconds (and the Resolvable verification of every name, timed separately);
- a no-op resync of the same N: UPDATE messages (target 0) and seconds;
- provider-level "VIP change → record served by BIND": one NameService's VIP changes, its sync
  runs (IXFR listing, plan, one UPDATE), and the time until BIND answers the new VIP over UDP is
  measured; p50 / p95 over `--samples` changes (target p95 ≤ 2 s);
- controller-level "VIP change → record served by BIND" (skip with `--no-controller`): a local
  fleet (hub + 3 members, real kube-apiservers), the `meshfed controller` process, one AccessPoint
  on the 3 members and a NameService for it; the gateway Service's status.loadBalancer changes on
  member-1 (as a cloud load balancer would), and the time until BIND answers the new VIP is
  measured: member watch → AccessPoint reconcile → StatusListener → NameService sync → UPDATE;
  p50 / p95 over `--controller-samples` changes (target p95 ≤ 2 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

# This file is named dns.py: keep its own folder off sys.path so `import dns` finds dnspython.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parents[1]))

import dns.asyncquery  # noqa: E402
import dns.message  # noqa: E402

from e2e.dnsservers import BindServer, start_bind  # noqa: E402
from fleet import HUB_NAMESPACE, ensure_namespace  # noqa: E402
from fleet.testing import ControllerProcess, eventually, start_fleet  # noqa: E402
from nameservice.models import NameService, NameServiceStatus  # noqa: E402
from nameservice.providers.rfc2136 import RFC2136Provider  # noqa: E402
from nameservice.records import TargetFact  # noqa: E402
from nameservice.sync import SyncItem, sync_nameservice, sync_nameservices  # noqa: E402

ZONE = "bench.test"
HUB = "hub-bench"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_ns(i: int) -> NameService:
    return NameService.model_validate(
        {
            "metadata": {"name": f"svc{i}", "namespace": "bench", "generation": 1},
            "spec": {
                "fqdn": f"svc{i}.{ZONE}",
                "ttl": 30,
                "providerRef": {"name": "bind"},
                "target": {"accessPointRef": {"name": f"svc{i}"}},
            },
        }
    )


def vip(i: int, cluster: int, gen: int = 0) -> str:
    n = i * 3 + cluster
    return f"10.{gen % 200 + 1}.{n // 250}.{n % 250 + 1}"


def targets(i: int, gen: int = 0) -> list[TargetFact]:
    return [TargetFact(f"c{c}", f"r{c}", vip(i, c, gen if c == 0 else 0), True) for c in range(3)]


async def served(bind: BindServer, name: str, value: str, deadline: float) -> float:
    """Seconds (monotonic) when BIND first answers `value` for `name` (UDP poll every 2 ms)."""
    q = dns.message.make_query(name, "A")
    while time.monotonic() < deadline:
        r = await dns.asyncquery.udp(q, bind.host, port=bind.port, timeout=1)
        if any(rd.to_text() == value for rr in r.answer for rd in rr):
            return time.monotonic()
        await asyncio.sleep(0.002)
    raise TimeoutError(f"{name} never served {value}")


def percentiles(latencies: list[float], prefix: str, figures: dict[str, float | int]) -> None:
    latencies = sorted(latencies)
    figures[f"{prefix}_p50_ms"] = round(statistics.median(latencies) * 1000, 1)
    figures[f"{prefix}_p95_ms"] = round(latencies[max(0, int(len(latencies) * 0.95) - 1)] * 1000, 1)
    figures[f"{prefix}_max_ms"] = round(latencies[-1] * 1000, 1)


async def answers(bind: BindServer, name: str) -> set[str]:
    r = await dns.asyncquery.udp(dns.message.make_query(name, "A"), bind.host, port=bind.port, timeout=1)
    return {rd.to_text() for rr in r.answer for rd in rr}


async def controller_level(bind: BindServer, samples: int, figures: dict[str, float | int]) -> None:
    """VIP change on a member → served by BIND, through the real controller process."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="meshfed-dnsbench-"))
    fleet = await start_fleet(root, members=3, regions=2, zones=3)
    assert fleet.state is not None
    ctl = ControllerProcess(fleet.state.hub.kubeconfig, root / "controller.log")
    hub = await fleet.state.hub.client()
    member = await fleet.state.members[0].client(attempts=1)
    try:
        ctl.start()
        await ensure_namespace(hub, HUB_NAMESPACE)
        await ensure_namespace(hub, "bench")
        await hub.apply(f"/api/v1/namespaces/{HUB_NAMESPACE}/secrets/bench-tsig",
                        {"apiVersion": "v1", "kind": "Secret",
                         "metadata": {"name": "bench-tsig", "namespace": HUB_NAMESPACE},
                         "stringData": {"secret": bind.key_secret}}, field_manager="bench")
        await hub.create("/apis/meshfed.io/v1alpha1/dnsproviders", {
            "apiVersion": "meshfed.io/v1alpha1", "kind": "DNSProvider", "metadata": {"name": "bind"},
            "spec": {"type": "rfc2136", "zone": ZONE, "rfc2136": {
                "server": bind.host, "port": bind.port,
                "tsig": {"keyName": bind.key_name, "secretRef": {"name": "bench-tsig", "key": "secret"}}}}},
            field_manager="bench")
        await hub.create("/apis/meshfed.io/v1alpha1/namespaces/bench/accesspoints", {
            "apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint",
            "metadata": {"name": "ctl", "namespace": "bench"},
            "spec": {"template": [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gw"},
                                   "spec": {"type": "LoadBalancer", "selector": {"app": "gw"},
                                            "ports": [{"name": "https", "port": 443}]}}]}},
            field_manager="bench")
        await hub.create("/apis/meshfed.io/v1alpha1/namespaces/bench/nameservices", {
            "apiVersion": "meshfed.io/v1alpha1", "kind": "NameService",
            "metadata": {"name": "ctl", "namespace": "bench"},
            "spec": {"fqdn": f"ctl.{ZONE}", "ttl": 30, "providerRef": {"name": "bind"},
                     "target": {"accessPointRef": {"name": "ctl"}}}}, field_manager="bench")
        name = f"ctl.{ZONE}"

        async def three() -> set[str]:
            got = await answers(bind, name)
            return got if len(got) == 3 else set()

        vips = await eventually(three, 180, message=f"{name} should resolve to 3 VIPs")
        svc_status = "/api/v1/namespaces/bench/services/gw/status"
        svc = await member.get("/api/v1/namespaces/bench/services/gw") or {}
        old = svc["status"]["loadBalancer"]["ingress"][0]["ip"]
        others = vips - {old}
        latencies: list[float] = []
        for k in range(samples):
            new = f"127.100.1.{100 + k % 150}"
            start = time.monotonic()
            await member.merge_patch(svc_status, {"status": {"loadBalancer": {"ingress": [{"ip": new}]}}})
            while await answers(bind, name) != others | {new}:
                if time.monotonic() - start > 30:
                    raise TimeoutError(f"{name} never served {new}: {ctl.log_tail()}")
                await asyncio.sleep(0.005)
            latencies.append(time.monotonic() - start)
            await asyncio.sleep(0.3)
        figures["controller_vip_change_samples"] = samples
        percentiles(latencies, "controller_vip_change_to_served", figures)
    finally:
        ctl.stop()
        await member.close()
        await hub.close()
        fleet.down(purge=True)


async def run(names: int, samples: int, controller_samples: int = 0) -> dict[str, float | int]:
    figures: dict[str, float | int] = {"names": names}
    with start_bind([ZONE]) as bind:
        p = RFC2136Provider(ZONE, bind.host, bind.key_name, bind.key_secret, port=bind.port, batch_size=200)
        nss = [make_ns(i) for i in range(names)]
        items = [SyncItem(ns, targets(i)) for i, ns in enumerate(nss)]

        t0 = time.perf_counter()
        report = await sync_nameservices(items, p, HUB, NOW, verify=False)
        figures["full_sync_seconds"] = round(time.perf_counter() - t0, 3)
        figures["full_sync_update_messages"] = report.result.messages
        figures["full_sync_changes_applied"] = len(report.result.applied)
        t0 = time.perf_counter()
        verified = await sync_nameservices(
            [SyncItem(ns, targets(i), report.statuses[i]) for i, ns in enumerate(nss)], p, HUB, NOW
        )
        figures["verify_all_seconds"] = round(time.perf_counter() - t0, 3)
        figures["names_resolvable"] = sum(1 for s in verified.statuses if s.ready == "True")
        statuses: list[NameServiceStatus] = verified.statuses

        sent = p.writes_sent
        t0 = time.perf_counter()
        noop = await sync_nameservices(
            [SyncItem(ns, targets(i), statuses[i]) for i, ns in enumerate(nss)], p, HUB, NOW, verify=False
        )
        figures["noop_sync_seconds"] = round(time.perf_counter() - t0, 3)
        figures["noop_sync_update_messages"] = p.writes_sent - sent
        figures["noop_plan_changes"] = len(noop.plan.changes)

        rng = random.Random(7)
        latencies: list[float] = []
        for gen in range(1, samples + 1):
            i = rng.randrange(names)
            new_vip = vip(i, 0, gen)
            start = time.monotonic()
            watcher = asyncio.create_task(served(bind, f"svc{i}.{ZONE}", new_vip, start + 10))
            statuses[i] = await sync_nameservice(nss[i], p, targets(i, gen), statuses[i], HUB, NOW)
            latencies.append(await watcher - start)
        figures["vip_change_samples"] = samples
        percentiles(latencies, "vip_change_to_served", figures)
        figures["transfers_axfr"] = p.transfers["AXFR"]
        figures["transfers_ixfr"] = p.transfers["IXFR"]
        await p.close()
        if controller_samples:
            await controller_level(bind, controller_samples, figures)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--controller-samples", type=int, default=30)
    ap.add_argument("--no-controller", action="store_true", help="skip the controller-level measurement")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()
    figures = asyncio.run(run(args.names, args.samples, 0 if args.no_controller else args.controller_samples))
    if args.json:
        print(json.dumps(figures))
        return
    print(f"DNS benchmark: BIND 9 (RFC 2136 + TSIG) on loopback, {args.names} NameServices x 3 VIPs")
    print(
        f"  full sync           {figures['full_sync_seconds']:>8} s   "
        f"{figures['full_sync_update_messages']} UPDATE messages, "
        f"{figures['full_sync_changes_applied']} names"
    )
    print(
        f"  verify (Resolvable) {figures['verify_all_seconds']:>8} s   "
        f"{figures['names_resolvable']}/{args.names} names resolve"
    )
    print(
        f"  no-op resync        {figures['noop_sync_seconds']:>8} s   "
        f"{figures['noop_sync_update_messages']} UPDATE messages (target 0)"
    )
    print(
        f"  VIP change -> served by BIND (provider level, {args.samples} samples): "
        f"p50 {figures['vip_change_to_served_p50_ms']} ms, p95 {figures['vip_change_to_served_p95_ms']} ms, "
        f"max {figures['vip_change_to_served_max_ms']} ms (target p95 <= 2000 ms)"
    )
    print(f"  zone transfers: {figures['transfers_axfr']} AXFR, {figures['transfers_ixfr']} IXFR")
    if "controller_vip_change_samples" in figures:
        print(
            f"  VIP change on a member -> served by BIND (controller process, local fleet, "
            f"{figures['controller_vip_change_samples']} samples): "
            f"p50 {figures['controller_vip_change_to_served_p50_ms']} ms, "
            f"p95 {figures['controller_vip_change_to_served_p95_ms']} ms, "
            f"max {figures['controller_vip_change_to_served_max_ms']} ms (target p95 <= 2000 ms)"
        )


if __name__ == "__main__":
    main()
