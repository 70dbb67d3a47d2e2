"""The local fleet as a whole: a hub and member clusters, optionally each member running Istio.

Owns the fleet's life cycle and its state file: `Fleet.up` starts the API servers (hub + members),
installs CRDs, registers the members; with `istio=True` every member also gets its own istiod, a
gateway Envoy in its own network namespace, the gateway's objects, its validation webhook, the L4
stand-in forwarding VIPs to that gateway, and echo backends (`backends` per member). State lives in
a directory (default `.fleet/` in the checkout) described by `fleet.json`, so `meshfed fleet down`
stops everything it started (istiods, agents and Envoys, relays, backends, API servers) and removes
the namespaces. Imports fleet.{apiserver,build,istio,netns} and federation.crdgen.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from federation.crdgen import all_crds
from federation.registration import HUB_NAMESPACE, ensure_namespace, register_member
from fleet import istio as mesh
from fleet import l4, netns
from fleet.apiserver import (
    APPROVAL_POLICY,
    ClusterProc,
    apply_crds,
    apply_manifests,
    free_port,
    install_finalizer_policy,
    load_member_crds,
    select_member_crds,
)
from fleet.build import REPO, apiserver_binary, istio_binaries, say


def default_topology(members: int, regions: int, zones: int) -> list[tuple[str, str, str]]:
    """(name, region, zone) for each member: zones spread over regions, members over zones."""
    region_names = [f"region-{chr(ord('a') + i)}" for i in range(regions)]
    zone_names = [(region_names[z % regions], f"{region_names[z % regions]}-{z // regions + 1}") for z in range(zones)]
    return [(f"member-{i + 1}", *zone_names[i % zones]) for i in range(members)]


def with_remotes(topology: Sequence[tuple[str, str, str]], count: int) -> tuple[list[tuple[str, str, str]],
                                                                                  dict[str, str]]:
    """The topology with an Istio remote `<member>-remote` in the zone of each of the first `count`
    members (their primaries), and the remotes map for `Fleet.up`."""
    if count > len(topology):
        raise ValueError(f"--remotes {count}: only {len(topology)} members can be primaries")
    added = [(f"{name}-remote", region, zone) for name, region, zone in topology[:count]]
    return [*topology, *added], {remote: name for (name, _, _), (remote, _, _) in zip(topology, added, strict=False)}


@dataclass
class FleetState:
    hub: ClusterProc
    members: list[ClusterProc]
    aux_pids: dict[str, int] = field(default_factory=dict)
    istio: bool = False
    echo_control: int = 0  # loopback port of the echo backends' control API
    vip_block: int = l4.DEFAULT_VIP_BLOCK  # VIPs are 127.<vip_block>.<member index>.0/24 (l4.pool_for)
    # Every primary's istiod reads every remote (not only its zone's): endpoints of all zones are known
    # to every zone's gateway, as in a multi-primary mesh whose zones each have remotes.
    mesh_wide: bool = False
    # The Istio and Gateway API kinds whose CRDs members get (None: all); fleet/apiserver.select_member_crds.
    member_crds: tuple[str, ...] | None = None

    def clusters(self) -> list[ClusterProc]:
        return [self.hub, *self.members]

    def member(self, name: str) -> ClusterProc:
        found = next((m for m in self.members if m.name == name), None)
        if found is None:
            raise LookupError(f"no member {name!r} in the fleet (members: {', '.join(m.name for m in self.members)})")
        return found


class Fleet:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_file = root / "fleet.json"
        self.state: FleetState | None = None
        self.ready_seconds: dict[str, float] = {}  # API server -> seconds from start to answering (last up)
        if self.state_file.exists():
            raw = json.loads(self.state_file.read_text())
            self.state = FleetState(
                hub=ClusterProc.from_dict(raw["hub"]),
                members=[ClusterProc.from_dict(m) for m in raw["members"]],
                aux_pids=raw.get("aux_pids", {}),
                istio=bool(raw.get("istio")),
                echo_control=int((raw.get("echo") or {}).get("control") or 0),
                vip_block=int(raw.get("vipBlock") or l4.DEFAULT_VIP_BLOCK),
                mesh_wide=bool(raw.get("meshWide")),
                member_crds=tuple(raw["memberCrds"]) if raw.get("memberCrds") is not None else None,
            )

    def save(self) -> None:
        assert self.state is not None
        self.root.mkdir(parents=True, exist_ok=True)
        data = {
            "hub": self.state.hub.to_dict(),
            "members": [m.to_dict() for m in self.state.members],
            "aux_pids": self.state.aux_pids,
            "istio": self.state.istio,
            "echo": {"control": self.state.echo_control} if self.state.echo_control else None,
            "vipBlock": self.state.vip_block,
            "meshWide": self.state.mesh_wide,
            "memberCrds": list(self.state.member_crds) if self.state.member_crds is not None else None,
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.state_file)

    def _new_cluster(self, name: str, role: str, region: str = "", zone: str = "",
                     labels: dict[str, str] | None = None, dense: bool = False) -> ClusterProc:
        return ClusterProc(
            name=name, role=role, dir=str(self.root / name), port=free_port(), etcd_port=free_port(),
            peer_port=free_port(), region=region, zone=zone, labels=dict(labels or {}), dense=dense,
        )

    # ---- up ------------------------------------------------------------------------------------

    async def up(self, members: int = 3, regions: int = 2, zones: int = 3,
                 topology: Sequence[tuple[str, str, str]] | None = None, vip_allocator: bool = True,
                 istio: bool = False, backends: int = 1, remotes: Mapping[str, str] | None = None,
                 mesh_wide: bool = False, dense: bool = False,
                 member_crds: Sequence[str] | None = None, start_interval: float = 0.0) -> FleetState:
        """Start (or restart) the fleet. `istio`: every member runs istiod + a gateway Envoy, VIPs
        forward to it, and `backends` echo instances per member answer behind it. `remotes` (member ->
        its primary): those members are Istio remotes (primary-remote zones): no istiod or gateway of
        their own, registered with spec.mesh, read by the primary's istiod through a remote secret, and
        with `istio` their echo backends live there as Pods on Nodes carrying their locality. `mesh_wide`:
        every primary's istiod reads every remote, so each zone's gateway knows the endpoints of all zones.
        `dense`: member API servers tuned for density (ClusterProc.dense); `ready_seconds` keeps how long
        each API server took to answer. `member_crds`: only the CRDs of these Istio and Gateway API kinds
        on members (select_member_crds; an API-only fleet, not with `istio`). `start_interval`: seconds
        between API server starts (fleet.apiserver MEMBERS_STARTED_APART: many members on one machine)."""
        if member_crds is not None and istio:
            raise ValueError("member CRDs chosen (--member-crds) are for API-only fleets: istiod needs every Istio CRD")
        if member_crds is not None:
            select_member_crds(load_member_crds(), member_crds)  # an unknown kind fails before anything starts
        binary = apiserver_binary()
        binaries = istio_binaries() if istio else {}
        if self.state is None:
            topo = list(topology) if topology else default_topology(members, regions, zones)
            self.state = FleetState(
                hub=self._new_cluster("hub", "hub"),
                members=[self._new_cluster(n, "member", r, z, {"env": "demo"}, dense=dense) for n, r, z in topo],
                istio=istio,
                vip_block=l4.claim_vip_block(self.root),
                mesh_wide=mesh_wide,
                member_crds=tuple(member_crds) if member_crds is not None else None,
            )
            names = {m.name for m in self.state.members}
            for member in self.state.members:
                primary = (remotes or {}).get(member.name, "")
                if primary and (primary not in names or primary in (remotes or {})):
                    raise ValueError(f"remote {member.name}: its primary {primary!r} must be a member, not a remote")
                member.mesh_primary = primary
        state = self.state
        if state.istio:
            for index, member in enumerate(state.members, start=1):
                if member.mesh_primary:
                    self._plan_remote(member, index, backends)
                else:
                    self._plan_istio(member, index, backends)
        apart = f", {start_interval:g} s apart" if start_interval > 0 else ""
        say(f"starting {len(state.clusters())} API servers (hub + {len(state.members)} members{apart}) ...")
        started = time.monotonic()

        async def ready(cluster: ClusterProc, index: int) -> None:
            await asyncio.sleep(max(0.0, started + index * start_interval - time.monotonic()))
            cluster.start(binary)
            self.save()  # its pid, for `down`, before waiting
            began = time.monotonic()
            await cluster.wait_ready()
            self.ready_seconds[cluster.name] = time.monotonic() - began

        await asyncio.gather(*(ready(c, i) for i, c in enumerate(state.clusters())))
        say("API servers ready; installing CRDs ...")
        await self.install_crds()
        for member in state.members:
            await self.register(member)
        if state.istio:
            await self._start_istio([m for m in state.members if not m.mesh_primary],
                                    binaries or istio_binaries(quiet=True))
        elif vip_allocator:
            self.start_vip_allocator()
        self.save()
        say(f"fleet up: hub kubeconfig {state.hub.kubeconfig}")
        return state

    def _netns_name(self, member: str) -> str:
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:8]
        return f"meshfed-{digest}-{member}"

    def _plan_istio(self, member: ClusterProc, index: int, backends: int) -> None:
        """Ports, namespace and backend addresses of `member`'s Istio (kept when already planned)."""
        if member.istio is not None:
            return
        member.istio = mesh.MemberIstio(
            netns=self._netns_name(member.name), dir=str(member.path),
            http_port=free_port(), grpc_port=free_port(), grpc_tls_port=free_port(), webhook_port=free_port(),
            monitoring_port=free_port(), ctrlz_port=free_port(), admin_port=free_port(), ready_port=free_port(),
            backends=[mesh.EchoBackend(name=f"{member.name}-echo-{k}", cluster=member.name, region=member.region,
                                       zone=member.zone, address=f"127.0.{10 + index}.{k}")
                      for k in range(1, backends + 1)],
        )

    def _plan_remote(self, member: ClusterProc, index: int, backends: int) -> None:
        """The echo backends of an Istio remote (kept when already planned): no istiod, no gateway."""
        if member.backends:
            return
        member.backends = [mesh.EchoBackend(name=f"{member.name}-echo-{k}", cluster=member.name,
                                            region=member.region, zone=member.zone, address=f"127.0.{10 + index}.{k}")
                           for k in range(1, backends + 1)]

    async def install_remote_secrets(self, primary: ClusterProc) -> None:
        """In the primary's istio-system, a remote secret for each of its remotes (every remote: mesh_wide)."""
        assert self.state is not None
        client = await primary.client()
        try:
            for remote in self.state.members:
                if remote.mesh_primary == primary.name or (self.state.mesh_wide and remote.mesh_primary):
                    await mesh.install_remote_secret(client, remote.name, remote.kubeconfig.read_text())
        finally:
            await client.close()

    async def _start_istio(self, members: Sequence[ClusterProc], binaries: dict[str, Path]) -> None:
        assert self.state is not None
        t0 = time.monotonic()
        ca = mesh.mesh_ca(self.root)
        for member in members:
            assert member.istio is not None
            netns.create(member.istio.netns)
            mesh.prepare_files(member.istio, ca, binaries["bootstrap"])

        async def objects(member: ClusterProc) -> None:
            client = await member.client()
            try:
                await mesh.install_gateway_objects(client, member.name, member.region, member.zone)
            finally:
                await client.close()
            await self.install_remote_secrets(member)

        await asyncio.gather(*(objects(m) for m in members))
        say(f"starting istiod and a gateway Envoy on {len(members)} member(s) ...")
        for member in members:
            self._start_istiod(member, binaries["pilot-discovery"])
        if not self.state.echo_control:
            self.state.echo_control = free_port()
        self.save()
        self.restart_aux("l4")
        if self.echo_backends():
            self.restart_aux("echo")
        await asyncio.gather(*(self.wait_istiod(m) for m in members))
        await asyncio.gather(*(self._register_webhook(m) for m in members))
        for member in members:
            self._start_agent(member, binaries["pilot-agent"], binaries["envoy"])
        self.save()
        await asyncio.gather(*(self.wait_gateway(m) for m in members), self.wait_echo())
        say(f"Istio up on {len(members)} member(s) in {time.monotonic() - t0:.1f}s "
            f"(istiod, gateway Envoy, VIP forwarding, {sum(len(m.istio.backends) for m in members if m.istio)} "
            "echo backends)")

    def _start_istiod(self, member: ClusterProc, binary: Path) -> None:
        istio = member.istio
        assert istio is not None
        if istio.istiod_pid and _alive(istio.istiod_pid):
            return
        istio.istiod_pid = mesh.spawn(mesh.istiod_command(istio, binary, member.kubeconfig), istio.istiod_dir,
                                      mesh.istiod_env(istio, member.name), istio.istiod_dir / "istiod.log")

    def _start_agent(self, member: ClusterProc, binary: Path, envoy: Path) -> None:
        istio = member.istio
        assert istio is not None
        if istio.agent_pid and _alive(istio.agent_pid):
            return
        istio.agent_pid = mesh.spawn(mesh.agent_command(istio, binary), istio.gateway_dir,
                                     mesh.agent_env(istio, member.name, member.region, member.zone, envoy),
                                     istio.gateway_dir / "gateway.log")

    async def _register_webhook(self, member: ClusterProc) -> None:
        assert member.istio is not None
        client = await member.client()
        try:
            await mesh.register_webhook(client, member.istio)
        finally:
            await client.close()

    async def wait_istiod(self, member: ClusterProc, timeout: float = 120.0) -> None:
        istio = member.istio
        assert istio is not None
        log = istio.istiod_dir / "istiod.log"
        try:
            await _wait_http(f"{istio.istiod_url}/ready", timeout, f"istiod of {member.name}", istio.istiod_pid, log)
        except TimeoutError as err:
            # Say which informers it waits for and whether the member's API server answers a list of their
            # kinds (istiod logs no error when a watch never completes its initial list: a CI run met a
            # GatewayClass informer that never synced while the other members' did within 3 s).
            stuck = mesh.unsynced_informers(await asyncio.to_thread(_tail, log, 1_000_000))
            if not stuck:
                raise
            answers = await self._list_kinds_of(member, stuck)
            raise TimeoutError(f"{err}; informers never synced: {', '.join(stuck)}"
                               + (f"; the member's API server: {'; '.join(answers)}" if answers else "")) from None

    async def _list_kinds_of(self, member: ClusterProc, informers: Sequence[str]) -> list[str]:
        """For each CRD kind an informer name ends with ("crdclient/informer/GatewayClass",
        "gateway/informer/GatewayClasses"): how the member's API server answers a consistent LIST of it."""
        by_name = {}
        for crd in load_member_crds():
            names = crd["spec"]["names"]
            by_name[names["kind"].lower()] = by_name[names["plural"].lower()] = crd
        crds = {id(c): c for c in (by_name.get(i.rsplit("/", 1)[-1].lower()) for i in informers) if c is not None}
        out = []
        client = await member.client()
        try:
            for crd in crds.values():
                version = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
                path = f"/apis/{crd['spec']['group']}/{version}/{crd['spec']['names']['plural']}"
                began = time.monotonic()
                try:
                    page = await client.request("GET", path, query={"limit": 1}, timeout=5.0, retry=False)
                    answer = f"{len(page.get('items') or [])} item(s)"
                except Exception as exc:  # a diagnosis: whatever it was is the answer
                    answer = f"{type(exc).__name__}: {exc}"
                out.append(f"LIST {path}: {answer} after {(time.monotonic() - began) * 1000:.0f} ms")
        finally:
            await client.close()
        return out

    async def wait_gateway(self, member: ClusterProc, timeout: float = 120.0) -> None:
        istio = member.istio
        assert istio is not None
        await _wait_http(istio.gateway_ready_url, timeout, f"gateway of {member.name}", istio.agent_pid,
                         istio.gateway_dir / "gateway.log")

    async def wait_echo(self, timeout: float = 60.0) -> None:
        assert self.state is not None
        if "echo" in self.state.aux_pids:
            await _wait_http(f"http://127.0.0.1:{self.state.echo_control}/backends", timeout, "echo backends",
                             self.state.aux_pids["echo"], self.root / "echo.log")

    # ---- hub / members ---------------------------------------------------------------------------

    async def install_crds(self) -> None:
        assert self.state is not None
        hub = await self.state.hub.client()
        try:
            await apply_crds(hub, all_crds())
            await ensure_namespace(hub, HUB_NAMESPACE)
            await apply_manifests(hub, APPROVAL_POLICY)
            await install_finalizer_policy(hub)
        finally:
            await hub.close()
        member_crds = select_member_crds(load_member_crds(), self.state.member_crds)
        # A few members at a time: 25 API servers each taking 40 CRDs at once on 2 cores answered none
        # of them within 30 s (each CRD starts storage, a watch cache and an OpenAPI rebuild).
        at_once = asyncio.Semaphore(max(2, 2 * (os.cpu_count() or 1)))

        async def install(member: ClusterProc) -> None:
            async with at_once:
                client = await member.client()
                try:
                    await apply_crds(client, member_crds)
                finally:
                    await client.close()

        await asyncio.gather(*(install(m) for m in self.state.members))

    async def register(self, member: ClusterProc) -> None:
        """Create the member's kubeconfig Secret and MemberCluster object on the hub."""
        assert self.state is not None
        hub = await self.state.hub.client()
        try:
            await register_member(hub, member.name, member.kubeconfig.read_text(), member.region, member.zone,
                                  member.labels, istiod_url=member.istio.istiod_url if member.istio else None,
                                  gateway_admin_url=member.istio.gateway_admin_url if member.istio else None,
                                  mesh_primary=member.mesh_primary or None)
        finally:
            await hub.close()

    async def add_member(self, name: str, region: str, zone: str, labels: dict[str, str] | None = None,
                         backends: int = 1) -> ClusterProc:
        assert self.state is not None
        member = self._new_cluster(name, "member", region, zone, labels or {"env": "demo"})
        self.state.members.append(member)
        if self.state.istio:
            self._plan_istio(member, len(self.state.members), backends)
        member.start(apiserver_binary(quiet=True))
        self.save()
        await member.wait_ready()
        client = await member.client()
        try:
            await apply_crds(client, select_member_crds(load_member_crds(), self.state.member_crds))
        finally:
            await client.close()
        await self.register(member)
        if self.state.istio:
            await self._start_istio([member], istio_binaries(quiet=True))
        else:
            self.restart_vip_allocator()
        return member

    # ---- Istio pieces one at a time (tests: a gateway or istiod stopped) ------------------------

    def stop_gateway(self, name: str) -> None:
        assert self.state is not None
        istio = self.state.member(name).istio
        assert istio is not None, f"{name} does not run Istio"
        stop_groups([istio.agent_pid])
        istio.agent_pid = 0
        self.save()

    async def start_gateway(self, name: str) -> None:
        assert self.state is not None
        member = self.state.member(name)
        bins = istio_binaries(quiet=True)
        self._start_agent(member, bins["pilot-agent"], bins["envoy"])
        self.save()
        await self.wait_gateway(member)

    def stop_istiod(self, name: str) -> None:
        assert self.state is not None
        istio = self.state.member(name).istio
        assert istio is not None, f"{name} does not run Istio"
        stop_groups([istio.istiod_pid])
        istio.istiod_pid = 0
        self.save()

    async def start_istiod(self, name: str) -> None:
        assert self.state is not None
        member = self.state.member(name)
        self._start_istiod(member, istio_binaries(quiet=True)["pilot-discovery"])
        self.save()
        await self.wait_istiod(member)

    def echo_backends(self) -> list[mesh.EchoBackend]:
        """Every member's echo backends (a remote's are published in the remote: publish_remote_backends)."""
        assert self.state is not None
        return [b for m in self.state.members for b in (m.istio.backends if m.istio else m.backends)]

    async def publish_remote_backends(self, namespace: str, *, service: str = "echo", port: int = 8080,
                                      clusters: Iterable[str] | None = None) -> None:
        """In every Istio remote: the Service `service` in `namespace` and a WorkloadEntry per echo backend
        with its locality (what the primary's istiod reads of a remote; fleet.istio.remote_backend_objects); only
        in `clusters` when given."""
        assert self.state is not None

        async def publish(member: ClusterProc) -> None:
            client = await member.client()
            try:
                await mesh.publish_remote_backends(client, namespace, member.backends, service=service, port=port)
            finally:
                await client.close()
            # The Service declared in the primary too, with no endpoint there (as Istio's multicluster
            # samples deploy a Service in every cluster): istiod's analyzer runs on the config cluster only and
            # flags a VirtualService whose destination Service it does not find there (IST0101), although
            # istiod routes to the remote's endpoints.
            client = await self.state.member(member.mesh_primary).client()  # type: ignore[union-attr]
            try:
                await mesh.publish_remote_backends(client, namespace, member.backends, service=service, port=port,
                                                   endpoints=False)
            finally:
                await client.close()

        wanted = set(clusters) if clusters is not None else None
        await asyncio.gather(*(publish(m) for m in self.state.members if m.mesh_primary and m.backends
                               and (wanted is None or m.name in wanted)))

    async def publish_backends(self, namespace: str, host: str, *, service: str = "echo", port: int = 8080,
                               clusters: Iterable[str] | None = None) -> None:
        """On every Istio member: a ServiceEntry `service` for `host` in `namespace`, selecting WorkloadEntries
        for the echo backends of `clusters` (default: all members'), each with its locality."""
        assert self.state is not None
        wanted = set(clusters) if clusters is not None else None
        chosen = [b for b in self.echo_backends() if wanted is None or b.cluster in wanted]

        async def publish(member: ClusterProc) -> None:
            client = await member.client()
            try:
                await mesh.publish_backends(client, namespace, host, chosen, service=service, port=port)
            finally:
                await client.close()

        await asyncio.gather(*(publish(m) for m in self.state.members if m.istio))

    async def set_echo_mode(self, mode: str, *, cluster: str | None = None, backend: str | None = None) -> None:
        """Switch the echo backends of `cluster` (or one `backend`) to ok | fail | hang | down."""
        assert self.state is not None
        if (cluster is None) == (backend is None):
            raise ValueError("name exactly one of cluster / backend")
        path = f"/clusters/{cluster}" if cluster else f"/backends/{backend}"
        status, body = await _http_put(self.state.echo_control, path, {"mode": mode})
        if status != 200:
            raise RuntimeError(f"echo control {path}: {status} {body.decode(errors='replace')}")

    # ---- auxiliary processes ----------------------------------------------------------------------

    _AUX = {"l4": ("fleet.l4", "l4.log"), "echo": ("fleet.echo", "echo.log")}

    def start_aux(self, name: str) -> None:
        assert self.state is not None
        old = self.state.aux_pids.get(name)
        if old and _alive(old):
            return
        module, log_name = self._AUX[name]
        with open(self.root / log_name, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", module, str(self.root)], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                    cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.state.aux_pids[name] = proc.pid
        self.save()

    def restart_aux(self, name: str) -> None:
        assert self.state is not None
        pid = self.state.aux_pids.pop(name, 0)
        if pid:
            stop_groups([pid])
        self.start_aux(name)

    def start_vip_allocator(self) -> None:
        self.start_aux("l4")

    def restart_vip_allocator(self) -> None:
        self.restart_aux("l4")

    # ---- down -------------------------------------------------------------------------------------

    def down(self, *, purge: bool = True) -> None:
        if self.state is None:
            say("no fleet here")
            return
        istios = [m.istio for m in self.state.members if m.istio]
        pids = [p for i in istios for p in (i.agent_pid, i.istiod_pid)] + list(self.state.aux_pids.values())
        for pid_file in self.root.glob("*.pid"):  # e.g. the demo's controller
            try:
                pids.append(int(pid_file.read_text().strip()))
            except ValueError:
                pass
            pid_file.unlink()
        stop_groups(pids)
        for i in istios:
            i.agent_pid = i.istiod_pid = 0
        self.state.aux_pids.clear()
        for cluster in self.state.clusters():
            cluster.stop()
        for i in istios:
            netns.delete(i.netns)
        self.save()
        if purge:
            l4.release_vip_block(self.root, self.state.vip_block)
            shutil.rmtree(self.root, ignore_errors=True)
        say("fleet down: nothing left running")

    def status_rows(self) -> list[tuple[str, str, str, str, str, str]]:
        if self.state is None:
            return []
        rows = []
        for c in self.state.clusters():
            state = "running" if c.running() else "stopped"
            if c.istio is not None:
                parts = [f"istiod {'up' if _alive(c.istio.istiod_pid) else 'down'}",
                         f"gateway {'up' if _alive(c.istio.agent_pid) else 'down'}"]
                state += f" ({', '.join(parts)})"
            role = f"remote of {c.mesh_primary}" if c.mesh_primary else c.role
            rows.append((c.name, role, c.region or "-", c.zone or "-", f"https://127.0.0.1:{c.port}", state))
        return rows

    def costs(self) -> list[tuple[str, float | None, float | None]]:
        """(API server, seconds until it answered in the last `up`, resident memory in MiB) of every cluster."""
        if self.state is None:
            return []
        return [(c.name, self.ready_seconds.get(c.name), c.rss_mib()) for c in self.state.clusters()]

    def istio_rows(self) -> list[tuple[str, str, str, str, str]]:
        """(member, istiod URL, gateway admin URL, netns, backends) of every Istio member."""
        if self.state is None:
            return []
        return [(m.name, m.istio.istiod_url, m.istio.gateway_admin_url, m.istio.netns,
                 ", ".join(f"{b.name}@{b.address}:{b.port}" for b in m.istio.backends) or "-")
                for m in self.state.members if m.istio]


# ---- helpers ------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours is not running
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def stop_groups(pids: Iterable[int], timeout: float = 8.0) -> None:
    """SIGTERM every process group in `pids` at once, SIGKILL what is left after `timeout`."""
    live = [p for p in pids if p and _alive(p)]
    for pid in live:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while live and time.monotonic() < deadline:
        live = [p for p in live if _alive(p)]
        if live:
            time.sleep(0.1)
    for pid in live:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in live:
        for _ in range(50):
            if not _alive(pid):
                break
            time.sleep(0.05)


async def _wait_http(url: str, timeout: float, what: str, pid: int, log: Path) -> None:
    deadline = time.monotonic() + timeout
    last: tuple[int, bytes] = (0, b"")
    while time.monotonic() < deadline:
        last = await mesh.http_get(url, timeout=3)
        if last[0] == 200:
            return
        if not _alive(pid):
            tail = _tail(log)
            raise RuntimeError(f"{what} exited during start:\n{tail}")
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s ({url}: {last[0]} {last[1][:200]!r}); see {log}")


def _tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else ""


async def _http_put(port: int, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        data = json.dumps(body).encode()
        writer.write(f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload
