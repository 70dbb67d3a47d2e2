"""The local fleet's stand-in for a cloud L4 load balancer (`python -m fleet.l4 FLEET_DIR`).

Owns, for every member of a fleet:
  * VIP allocation: a Service of type LoadBalancer gets an address from the member's loopback pool
    (127.<block>.<member>.0/24, a block per fleet) in status.loadBalancer.ingress, so VIPs can be reported end to end;
  * on members running Istio, forwarding: VIP:port of such a Service reaches the member's gateway
    Envoy (in the member's network namespace) on 127.0.0.1:<that port's targetPort> — Istio listens
    on the targetPort of the Service selecting the gateway pods for a Gateway server port, so
    `curl --resolve HOST:443:VIP https://HOST/` reaches that AccessPoint's gateway in that cluster.
    A VIP is only handed out once its listeners are bound (another fleet on the machine may hold an
    address of the same pool: it is skipped);
  * the plumbing forwards the fleet records per member (fleet.json `istio.forwards`): the gateway's
    xDS connection from inside its namespace to the member's istiod on the host, and the gateway's
    admin/readiness ports from the host into the namespace.
Forwarding is a userspace TCP relay (kube-proxy's userspace mode): asyncio protocols, TCP_NODELAY,
flow control by pausing the reading side, half-closes passed on. Loopback and the fleet's own
namespaces only. Imports federation.kube and fleet.netns.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.kube import ApiError, Gone, KubeClient
from fleet import netns

log = logging.getLogger("meshfed.l4")
FIELD_MANAGER = "meshfed-fleet-lb"


DEFAULT_VIP_BLOCK = 100
VIP_BLOCKS = range(100, 200)
VIP_BLOCK_GRACE = 300.0
VIP_BLOCK_MARKERS = Path(os.environ.get("TMPDIR", "/tmp")) / "meshfed-vip-blocks"


def pool_for(index: int, block: int = DEFAULT_VIP_BLOCK) -> list[str]:
    """Member `index`'s VIPs: 127.<block>.<index>.0/24. Each fleet has a block of its own
    (claim_vip_block), so concurrent fleets' relays never bind the same VIP:port."""
    net = ipaddress.ip_network(f"127.{block}.{index}.0/24")
    return [str(ip) for ip in list(net.hosts())]


def claim_vip_block(root: Path) -> int:
    """A VIP block no other live fleet holds, recorded in a marker naming the fleet's directory
    (a marker older than VIP_BLOCK_GRACE seconds whose fleet directory has no fleet.json is stale
    and taken over: its fleet was purged, or never got as far as saving its state)."""
    VIP_BLOCK_MARKERS.mkdir(parents=True, exist_ok=True)
    me = str(root.resolve())
    for block in [DEFAULT_VIP_BLOCK, *random.sample(VIP_BLOCKS, len(VIP_BLOCKS))]:
        marker = VIP_BLOCK_MARKERS / str(block)
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = marker.read_text().strip()
            except FileNotFoundError:
                continue
            age = time.time() - marker.stat().st_mtime
            stale = age > VIP_BLOCK_GRACE and not (Path(holder) / "fleet.json").exists()
            if holder == me or stale:
                marker.write_text(me)
                return block
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return block
    raise RuntimeError(f"no free VIP block in 127.{VIP_BLOCKS.start}-{VIP_BLOCKS.stop - 1}.x.x ({VIP_BLOCK_MARKERS})")


def release_vip_block(root: Path, block: int) -> None:
    marker = VIP_BLOCK_MARKERS / str(block)
    with contextlib.suppress(FileNotFoundError):
        if marker.read_text().strip() == str(root.resolve()):
            marker.unlink()


@dataclass(frozen=True)
class Endpoint:
    """host:port inside network namespace `netns` (None: the host's)."""

    netns: str | None
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}" + (f" (netns {self.netns})" if self.netns else "")


# ---- the relay --------------------------------------------------------------------------------


class _Half(asyncio.Protocol):
    """One side of a relayed connection; what it reads goes to `peer`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.pending: list[bytes] = []
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def link(self, peer: _Half) -> None:
        self.peer = peer
        if peer.transport is not None:
            for data in self.pending:
                peer.transport.write(data)
            self.pending.clear()
            if self.eof:
                self._pass_eof()
        if self.lost:
            peer.close()

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending.append(data)

    def _pass_eof(self) -> None:
        assert self.peer is not None and self.peer.transport is not None
        if self.peer.eof:
            self.close()
            self.peer.close()
        elif self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()

    def eof_received(self) -> bool:
        self.eof = True
        if self.peer is not None and self.peer.transport is not None:
            self._pass_eof()
        return True

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.peer is not None:
            self.peer.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


async def connect(target: Endpoint, protocol: asyncio.Protocol) -> asyncio.Transport:
    """A TCP connection to `target` (created inside its namespace) driven by `protocol`."""
    loop = asyncio.get_running_loop()
    sock = netns.tcp_socket(target.netns)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (target.host, target.port)), 10)
        transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
    except BaseException:
        sock.close()
        raise
    assert isinstance(transport, asyncio.Transport)
    return transport


class _Downstream(_Half):
    def __init__(self, target: Endpoint) -> None:
        super().__init__()
        self.target = target

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        upstream = _Half()
        try:
            await connect(self.target, upstream)
        except (OSError, TimeoutError) as err:
            log.debug("relay to %s failed: %s", self.target, err)
            self.close()
            return
        upstream.link(self)
        self.link(upstream)


async def relay(listen: Endpoint, target: Endpoint) -> asyncio.Server:
    """Accept on `listen`, relay every connection to `target`. Raises OSError when `listen` is taken."""
    sock = netns.listen(listen.netns, listen.host, listen.port)
    try:
        return await asyncio.get_running_loop().create_server(lambda: _Downstream(target), sock=sock)
    except BaseException:
        sock.close()
        raise


# ---- VIPs -------------------------------------------------------------------------------------


def _target_port(port: dict[str, Any]) -> int:
    target = port.get("targetPort")
    if isinstance(target, int):
        return target
    return int(port["port"])  # unset (= port) or a named port, which a gateway pod does not declare here


class Allocator:
    """VIPs for one member's LoadBalancer Services; forwarding into `gateway_netns` when set."""

    def __init__(self, client: KubeClient, pool: list[str], gateway_netns: str | None = None) -> None:
        self.client = client
        self.pool = pool
        self.gateway_netns = gateway_netns
        self.used: dict[str, str] = {}  # ip -> service uid ("" = taken by something else on this machine)
        self.servers: dict[str, tuple[str, dict[int, int], list[asyncio.Server]]] = {}  # uid -> (ip, ports, servers)

    def _ingress(self, svc: dict[str, Any]) -> str | None:
        ing = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        return str(ing[0].get("ip")) if ing and ing[0].get("ip") else None

    def _ports(self, svc: dict[str, Any]) -> dict[int, int]:
        out: dict[int, int] = {}
        for port in (svc.get("spec") or {}).get("ports") or []:
            if (port.get("protocol") or "TCP") == "TCP" and isinstance(port.get("port"), int):
                out[int(port["port"])] = _target_port(port)
        return out

    def _close(self, uid: str) -> None:
        entry = self.servers.pop(uid, None)
        if entry is not None:
            for server in entry[2]:
                server.close()

    async def _bind(self, uid: str, ip: str, ports: dict[int, int]) -> bool:
        """Listeners ip:port -> gateway 127.0.0.1:targetPort for every port; False when one is taken."""
        if self.gateway_netns is None:
            return True
        current = self.servers.get(uid)
        if current is not None and current[0] == ip and current[1] == ports:
            return True
        self._close(uid)
        servers: list[asyncio.Server] = []
        try:
            for port, target in sorted(ports.items()):
                servers.append(await relay(Endpoint(None, ip, port), Endpoint(self.gateway_netns, "127.0.0.1", target)))
        except OSError as err:
            for server in servers:
                server.close()
            log.info("%s: %s not usable (%s)", self.client.name, ip, err)
            return False
        self.servers[uid] = (ip, dict(ports), servers)
        log.info("%s: %s forwards %s to the gateway", self.client.name, ip,
                 ", ".join(f"{p}->{t}" for p, t in sorted(ports.items())) or "no ports")
        return True

    async def handle(self, svc: dict[str, Any], deleted: bool = False) -> None:
        uid = svc["metadata"]["uid"]
        if deleted or (svc.get("spec") or {}).get("type") != "LoadBalancer":
            self._close(uid)
            for ip, owner in list(self.used.items()):
                if owner == uid:
                    del self.used[ip]
            return
        ports = self._ports(svc)
        current = self._ingress(svc)
        if current:
            self.used[current] = uid
            if not await self._bind(uid, current, ports):
                log.error("%s: VIP %s of %s/%s is held by something else on this machine", self.client.name,
                          current, svc["metadata"]["namespace"], svc["metadata"]["name"])
            return
        for ip in self.pool:
            if ip in self.used:
                continue
            if not await self._bind(uid, ip, ports):
                self.used[ip] = ""
                continue
            self.used[ip] = uid
            meta = svc["metadata"]
            path = f"/api/v1/namespaces/{meta['namespace']}/services/{meta['name']}/status"
            try:
                await self.client.merge_patch(path, {"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})
                log.info("%s: %s/%s -> %s", self.client.name, meta["namespace"], meta["name"], ip)
            except ApiError as err:
                self.used.pop(ip, None)
                self._close(uid)
                log.warning("%s: could not set VIP on %s/%s: %s", self.client.name, meta["namespace"],
                            meta["name"], err)
            return
        log.error("%s: VIP pool exhausted", self.client.name)

    async def run(self) -> None:
        while True:
            try:
                items, rv = await self.client.list("/api/v1/services")
                seen = {svc["metadata"]["uid"] for svc in items}
                for uid in [u for u in self.servers if u not in seen]:
                    self._close(uid)
                for svc in items:
                    await self.handle(svc)
                while True:
                    async for ev in self.client.watch("/api/v1/services", rv):
                        rv = ev.object["metadata"]["resourceVersion"]
                        if ev.type != "BOOKMARK":
                            await self.handle(ev.object, deleted=ev.type == "DELETED")
            except Gone:
                continue
            except ApiError as err:
                log.debug("%s: %s; retrying", self.client.name, err)
                await asyncio.sleep(1)


# ---- the daemon -------------------------------------------------------------------------------


def _endpoint(raw: dict[str, Any]) -> Endpoint:
    return Endpoint(raw.get("netns"), str(raw["host"]), int(raw["port"]))


async def plumbing(member: dict[str, Any]) -> list[asyncio.Server]:
    """The member's recorded forwards (istio.forwards: [{listen: {...}, target: {...}}])."""
    servers = []
    for fwd in (member.get("istio") or {}).get("forwards") or []:
        listen, target = _endpoint(fwd["listen"]), _endpoint(fwd["target"])
        servers.append(await relay(listen, target))
        log.info("%s: %s -> %s", member["name"], listen, target)
    return servers


async def main(root: Path) -> None:
    state = json.loads((root / "fleet.json").read_text())
    tasks = []
    keep: list[asyncio.Server] = []
    for index, member in enumerate(state["members"], start=1):
        istio = member.get("istio") or None
        keep += await plumbing(member)
        client = await KubeClient.from_kubeconfig_file(str(Path(member["dir"]) / "kubeconfig"), member["name"])
        allocator = Allocator(client, pool_for(index, int(state.get("vipBlock") or DEFAULT_VIP_BLOCK)),
                              istio["netns"] if istio else None)
        tasks.append(asyncio.create_task(allocator.run()))
    log.info("ready")
    try:
        await asyncio.gather(*tasks)
    finally:
        for server in keep:
            with contextlib.suppress(Exception):
                server.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    asyncio.run(main(Path(sys.argv[1])))
