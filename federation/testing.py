"""Test and benchmark harness: real API servers, the local fleet, the controller as a subprocess,
and write counts read from each API server's own /metrics (an independent witness).

Used by tests/integration, e2e/ and e2e/bench; never by the controller itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from federation.crdgen import all_crds
from federation.fleet import REPO, ClusterProc, Fleet, apiserver_binary, apply_crds, free_port, load_member_crds
from federation.kube import KubeClient

T = TypeVar("T")

# Resources meshfed writes; other writes (the API server's own leases, endpoints) are not ours.
WATCHED_RESOURCES = {
    "services", "gateways", "virtualservices", "destinationrules", "serviceentries", "workloadentries",
    "secrets", "namespaces", "accesspoints", "memberclusters", "events", "rolloutapprovals",
    "placementpolicies", "nameservices", "dnsproviders", "certificates", "certificateissuers",
    "controllerrevisions",
}
MUTATING = {"POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE", "DELETECOLLECTION"}
_LINE = re.compile(r'^apiserver_request_total\{([^}]*)\}\s+([0-9.e+]+)$')


async def request_breakdown(client: KubeClient, verbs: Iterable[str] | None = None,
                            resources: Iterable[str] | None = None) -> dict[str, int]:
    """Requests this API server has served since it started, by "verb resource[/subresource]"
    (all verbs / resources when None), from its /metrics."""
    text = await client.request_text("/metrics")
    wanted_verbs = set(verbs) if verbs is not None else None
    wanted = set(resources) if resources is not None else None
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if (wanted_verbs is None or labels.get("verb") in wanted_verbs) and \
                (wanted is None or labels.get("resource") in wanted):
            sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
            key = f"{labels['verb']} {labels.get('resource', '')}{sub}"
            out[key] = out.get(key, 0) + int(float(m.group(2)))
    return out


async def write_breakdown(client: KubeClient, resources: Iterable[str] = WATCHED_RESOURCES) -> dict[str, int]:
    """Mutating requests this API server has served on `resources` since it started, by
    "verb resource[/subresource]"."""
    return await request_breakdown(client, MUTATING, resources)


def diff_breakdown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after))
            if after.get(k, 0) != before.get(k, 0)}


async def write_count(client: KubeClient, resources: Iterable[str] = WATCHED_RESOURCES) -> int:
    """Total mutating requests this API server has served on `resources` since it started."""
    return sum((await write_breakdown(client, resources)).values())


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 30.0, interval: float = 0.2,
                     message: str = "condition not met") -> T:
    """Poll `check` until it returns a truthy value; fail with the last value and `message`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await check()
            if last:
                return last  # type: ignore[no-any-return]
        except AssertionError as err:
            last = err
        await asyncio.sleep(interval)
    raise AssertionError(f"{message} (after {timeout:.0f}s; last: {last!r})")


# ---- hub object status: get, condition by type, wait -------------------------------------------

ACCESSPOINTS = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"


def condition(status: Mapping[str, Any], type_: str) -> dict[str, Any]:
    """The condition of type `type_` in `status` ({} when there is none)."""
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


async def get_object(client: KubeClient, path: str) -> dict[str, Any]:
    """The object at `path` ({} when it does not exist)."""
    return await client.get(path) or {}


async def get_status(client: KubeClient, path: str) -> dict[str, Any]:
    """The status of the object at `path` ({} when it has none or does not exist)."""
    return (await get_object(client, path)).get("status") or {}


async def accesspoint_status(client: KubeClient, ns: str, name: str) -> dict[str, Any]:
    return await get_status(client, f"{ACCESSPOINTS.format(ns=ns)}/{name}")


async def wait_object(client: KubeClient, path: str, ok: Callable[[dict[str, Any]], bool], *, timeout: float = 60.0,
                      interval: float = 0.2, message: str = "condition not met",
                      show: Iterable[str] = ("conditions", "clusters")) -> dict[str, Any]:
    """Poll the object at `path` until `ok(object)`; return the object. A timeout fails with `message`
    and the status fields named in `show` as last seen."""
    fields = tuple(show)

    async def check() -> dict[str, Any]:
        obj = await get_object(client, path)
        if not ok(obj):
            st = obj.get("status") or {}
            raise AssertionError({k: st.get(k) for k in fields})
        return obj

    return await eventually(check, timeout, interval, message)


async def wait_status(client: KubeClient, path: str, ok: Callable[[dict[str, Any]], bool], *, timeout: float = 60.0,
                      interval: float = 0.2, message: str = "condition not met",
                      show: Iterable[str] = ("conditions", "clusters")) -> dict[str, Any]:
    """`wait_object` on the object's status: poll until `ok(status)`; return the status."""
    obj = await wait_object(client, path, lambda o: ok(o.get("status") or {}), timeout=timeout, interval=interval,
                            message=message, show=show)
    return obj.get("status") or {}


async def wait_condition(client: KubeClient, path: str, type_: str, status: str = "True", reason: str | None = None,
                         *, timeout: float = 60.0, message: str | None = None,
                         show: Iterable[str] = ("conditions",)) -> dict[str, Any]:
    """Poll until the object's condition `type_` has `status` (and `reason`, when given); return the status."""

    def ok(st: dict[str, Any]) -> bool:
        c = condition(st, type_)
        return c.get("status") == status and (reason is None or c.get("reason") == reason)

    return await wait_status(client, path, ok, timeout=timeout, show=show,
                             message=message or f"{path}: {type_}={status} {reason or ''}")


# ---- hub namespaces for tests ------------------------------------------------------------------


async def create_namespace(client: KubeClient, prefix: str = "t-") -> str:
    """A fresh namespace named `prefix` + 8 hex digits."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    await client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
                        field_manager="e2e")
    return name


async def delete_accesspoints(client: KubeClient, ns: str, *, timeout: float = 20.0, also_gone: Iterable[str] = (),
                              strict: bool = False) -> None:
    """Delete every AccessPoint in `ns` and wait up to `timeout` until they (and whatever is listed at the
    `also_gone` paths) are gone; a timeout fails only when `strict` (namespaces themselves never finish
    deleting without a controller-manager, so tests clean up what keeps the controller busy)."""
    path = ACCESSPOINTS.format(ns=ns)
    for item in (await client.list(path))[0]:
        await client.delete(f"{path}/{item['metadata']['name']}")
    paths = (path, *also_gone)

    async def gone() -> bool:
        for p in paths:
            if (await client.list(p))[0]:
                return False
        return True

    try:
        await eventually(gone, timeout, message=f"objects in {ns} should be deleted: {', '.join(paths)}")
    except AssertionError:
        if strict:
            raise


async def single_apiserver(root: Path, name: str = "hub", *, meshfed_crds: bool = True,
                           istio_crds: bool = False) -> ClusterProc:
    cluster = ClusterProc(name=name, role="hub", dir=str(root / name), port=free_port(), etcd_port=free_port(),
                          peer_port=free_port())
    cluster.start(apiserver_binary())
    await cluster.wait_ready()
    client = await cluster.client()
    try:
        crds = (all_crds() if meshfed_crds else []) + (load_member_crds() if istio_crds else [])
        if crds:
            await apply_crds(client, crds)
    finally:
        await client.close()
    return cluster


class ControllerProcess:
    """`meshfed controller` as a real subprocess against a fleet's hub."""

    def __init__(self, hub_kubeconfig: Path, log_path: Path, *, hub_id: str = "meshfed-hub",
                 extra: Iterable[str] = ()) -> None:
        self.args = [sys.executable, "-m", "federation.cli", "controller", "--kubeconfig", str(hub_kubeconfig),
                     "--hub-id", hub_id, "--probe-interval", "0.5", *extra]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                     start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""


async def start_fleet(root: Path, members: int = 3, regions: int = 2, zones: int = 3,
                      topology: list[tuple[str, str, str]] | None = None) -> Fleet:
    fleet = Fleet(root)
    await fleet.up(members=members, regions=regions, zones=zones, topology=topology)
    return fleet


# ---- a fleet, its clients and the controller, for tests (e2e/conftest.py makes them fixtures) ----


@contextlib.asynccontextmanager
async def running_fleet(root: Path, members: int = 3, regions: int = 2, zones: int = 3,
                        topology: list[tuple[str, str, str]] | None = None) -> AsyncIterator[Fleet]:
    """`start_fleet`, brought down (state kept on disk for post-mortems) on exit."""
    fleet = await start_fleet(root, members=members, regions=regions, zones=zones, topology=topology)
    try:
        yield fleet
    finally:
        fleet.down(purge=False)


@contextlib.asynccontextmanager
async def hub_client(fleet: Fleet) -> AsyncIterator[KubeClient]:
    assert fleet.state is not None
    client = await fleet.state.hub.client()
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def member_clients(fleet: Fleet) -> AsyncIterator[dict[str, KubeClient]]:
    """A client per member, by member name."""
    assert fleet.state is not None
    clients: dict[str, KubeClient] = {}
    try:
        for m in fleet.state.members:
            clients[m.name] = await m.client(attempts=1)
        yield clients
    finally:
        for c in clients.values():
            await c.close()


@contextlib.contextmanager
def running_controller(fleet: Fleet, *, hub_id: str = "meshfed-hub",
                       extra: Iterable[str] = ()) -> Iterator[ControllerProcess]:
    """The controller process against the fleet's hub (log in the fleet's root), stopped on exit."""
    assert fleet.state is not None
    ctl = ControllerProcess(fleet.state.hub.kubeconfig, fleet.root / "controller.log", hub_id=hub_id, extra=extra)
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.stop()
