"""The local fleet's stand-in for a cloud load-balancer controller.

For every member of a fleet it gives Services of type LoadBalancer an address from a per-cluster
loopback pool (127.100.<member>.0/24) in status.loadBalancer.ingress, so VIPs can be reported
end to end. Only used by the local fleet (`python -m federation.vipalloc FLEET_DIR`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import sys
from pathlib import Path
from typing import Any

from federation.kube import ApiError, Gone, KubeClient

log = logging.getLogger("meshfed.vipalloc")
FIELD_MANAGER = "meshfed-fleet-lb"


def pool_for(index: int) -> list[str]:
    net = ipaddress.ip_network(f"127.100.{index}.0/24")
    return [str(ip) for ip in list(net.hosts())]


class Allocator:
    def __init__(self, client: KubeClient, pool: list[str]) -> None:
        self.client = client
        self.pool = pool
        self.used: dict[str, str] = {}  # ip -> service uid

    def _ingress(self, svc: dict[str, Any]) -> str | None:
        ing = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        return str(ing[0].get("ip")) if ing and ing[0].get("ip") else None

    async def handle(self, svc: dict[str, Any], deleted: bool = False) -> None:
        uid = svc["metadata"]["uid"]
        if deleted or (svc.get("spec") or {}).get("type") != "LoadBalancer":
            for ip, owner in list(self.used.items()):
                if owner == uid:
                    del self.used[ip]
            return
        current = self._ingress(svc)
        if current:
            self.used.setdefault(current, uid)
            return
        free = next((ip for ip in self.pool if ip not in self.used), None)
        if free is None:
            log.error("%s: VIP pool exhausted", self.client.name)
            return
        self.used[free] = uid
        meta = svc["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/services/{meta['name']}/status"
        try:
            await self.client.merge_patch(path, {"status": {"loadBalancer": {"ingress": [{"ip": free}]}}})
            log.info("%s: %s/%s -> %s", self.client.name, meta["namespace"], meta["name"], free)
        except ApiError as err:
            self.used.pop(free, None)
            log.warning("%s: could not set VIP on %s/%s: %s", self.client.name, meta["namespace"], meta["name"], err)

    async def run(self) -> None:
        while True:
            try:
                items, rv = await self.client.list("/api/v1/services")
                for svc in items:
                    await self.handle(svc)
                while True:
                    async for ev in self.client.watch("/api/v1/services", rv):
                        if ev.type == "BOOKMARK":
                            rv = ev.object["metadata"]["resourceVersion"]
                            continue
                        rv = ev.object["metadata"]["resourceVersion"]
                        await self.handle(ev.object, deleted=ev.type == "DELETED")
            except Gone:
                continue
            except ApiError as err:
                log.debug("%s: %s; retrying", self.client.name, err)
                await asyncio.sleep(1)


async def main(root: Path) -> None:
    state = json.loads((root / "fleet.json").read_text())
    tasks = []
    for index, member in enumerate(state["members"], start=1):
        client = await KubeClient.from_kubeconfig_file(str(Path(member["dir"]) / "kubeconfig"), member["name"])
        tasks.append(asyncio.create_task(Allocator(client, pool_for(index)).run()))
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    asyncio.run(main(Path(sys.argv[1])))
