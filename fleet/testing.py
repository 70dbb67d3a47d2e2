"""Test and benchmark harness: real API servers, the local fleet, the controller as a subprocess,
and write counts read from each API server's own /metrics (an independent witness).

Used by tests/integration, e2e/ and e2e/bench; never by the controller itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import math
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509

from federation.crdgen import all_crds
from federation.kube import KubeClient
from fleet import REPO, ClusterProc, Fleet, apiserver_binary, apply_crds, free_port, load_member_crds

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
                            resources: Iterable[str] | None = None, code: str | None = None) -> dict[str, int]:
    """Requests this API server has served since it started, by "verb resource[/subresource]"
    (all verbs / resources / response codes when None), from its /metrics."""
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
                (wanted is None or labels.get("resource") in wanted) and (code is None or labels.get("code") == code):
            sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
            key = f"{labels['verb']} {labels.get('resource', '')}{sub}"
            out[key] = out.get(key, 0) + int(float(m.group(2)))
    return out


# Controllers inside kube-apiserver that post Events of their own: the ClusterIP and NodePort repair loops
# ("ClusterIPNotAllocated", "PortNotAllocated") when a Service was created while they took their snapshot.
APISERVER_EVENT_SOURCES = frozenset({"ipallocator-repair-controller", "portallocator-repair-controller"})


_LONGRUNNING = re.compile(r'^apiserver_longrunning_requests\{([^}]*)\}\s+([0-9.e+]+)$')


async def open_watches(client: KubeClient) -> dict[str, int]:
    """Watches the API server is serving now, by resource (its own apiserver_longrunning_requests gauge;
    its own loopback informers included)."""
    out: dict[str, int] = {}
    for line in (await client.request_text("/metrics")).splitlines():
        m = _LONGRUNNING.match(line)
        if m and 'verb="WATCH"' in m.group(1) and float(m.group(2)) > 0:
            resource = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))).get("resource", "")
            out[resource] = out.get(resource, 0) + int(float(m.group(2)))
    return out


async def write_breakdown(client: KubeClient, resources: Iterable[str] = WATCHED_RESOURCES) -> dict[str, int]:
    """Mutating requests this API server has served on `resources` since it started, by
    "verb resource[/subresource]"; the Events the API server posted itself (APISERVER_EVENT_SOURCES, found
    by listing them) are not counted: they are nobody's writes but its own."""
    out = await request_breakdown(client, MUTATING, resources)
    if out.get("POST events"):
        own = 0
        for source in sorted(APISERVER_EVENT_SOURCES):  # only those Events, not every Event of a busy hub
            events, _ = await client.list("/api/v1/events", field_selector=f"reportingComponent={source}")
            own += len(events)
        out["POST events"] -= own
        if out["POST events"] <= 0:
            del out["POST events"]
    return out


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


async def events_until(hub: KubeClient, ns: str, check: Callable[[list[dict[str, Any]]], None],
                       timeout: float = 30.0) -> list[dict[str, Any]]:
    """The Events of namespace `ns` once `check` (asserting over them) passes. The controller sends Events
    from a queue after the reconcile that made them, so one may reach the hub after the status that
    followed it: a test that reads Events once, right after that status, may miss it."""
    async def listed() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (await hub.request("GET", f"/api/v1/namespaces/{ns}/events"))["items"]
        check(items)
        return items or [{}]  # truthy even when `check` accepts none

    found = await eventually(listed, timeout, message=f"Events in {ns}")
    return [e for e in found if e]


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


TENANCY_POLICIES = "/apis/meshfed.io/v1alpha1/tenancypolicies"


async def grant_tenancy(client: KubeClient, namespace: str, *, target_namespaces: Iterable[str] = (),
                        domains: Iterable[str] = ()) -> str:
    """A TenancyPolicy (issue 13) letting hub `namespace` write to `target_namespaces` on members (every
    kind) and own `domains` (needed for wildcard hosts): the platform team's grant for a test's tenant.
    Returns the policy's name (cluster-scoped; delete it with `client.delete(f"{TENANCY_POLICIES}/NAME")`)."""
    name = f"test-{namespace}"
    body = {"apiVersion": "meshfed.io/v1alpha1", "kind": "TenancyPolicy", "metadata": {"name": name},
            "spec": {"namespaces": [namespace], "targetNamespaces": [{"namespace": n} for n in target_namespaces],
                     "domains": list(domains)}}
    await client.apply(f"{TENANCY_POLICIES}/{name}", body, field_manager="e2e")  # idempotent per namespace
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


# Short Leases for tests of many replicas (the deploy defaults are 15 s / 10 s / 2 s, as client-go's).
FAST_LEASES = ("--lease-duration", "5", "--renew-deadline", "3", "--retry-period", "0.5")


class ControllerProcess:
    """`meshfed controller` as a real subprocess against a fleet's hub. Each start is a new replica
    (identity `<name>-<4 hex>`), serving /metrics, /healthz and /readyz on `http_port`."""

    def __init__(self, hub_kubeconfig: Path, log_path: Path, *, hub_id: str = "meshfed-hub",
                 extra: Iterable[str] = (), name: str = "controller") -> None:
        self.base_args = [sys.executable, "-m", "cli.main", "controller", "--kubeconfig", str(hub_kubeconfig),
                          "--hub-id", hub_id, "--probe-interval", "0.5", *extra]
        self.args = list(self.base_args)
        self.log_path = log_path
        self.name = name
        self.identity = ""
        self.http_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.identity = f"{self.name}-{uuid.uuid4().hex[:4]}"
        self.http_port = free_port()
        # MESHFED_PROFILE=<prefix>: the replica runs under cProfile and writes <prefix>-<identity>.prof when
        # it stops (benchmarks: `python -m pstats` reads it).
        profile = os.environ.get("MESHFED_PROFILE")
        profiler = ["-m", "cProfile", "-o", f"{profile}-{self.identity}.prof"] if profile else []
        python, *command = self.base_args
        self.args = [python, *profiler, *command, "--identity", self.identity,
                     "--http-address", f"127.0.0.1:{self.http_port}"]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                     start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the process group (SIGKILL: a crash, nothing released; SIGSTOP/SIGCONT: a freeze)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait()
            self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def http(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET one of the controller's own endpoints (/metrics, /healthz, /readyz)."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=timeout) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as err:
            return int(err.code), err.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of metric `name` (matching `labels`) on /metrics."""
        _, text = self.http("/metrics")
        return metric_value(text, name, **labels)

    def metric_by(self, name: str, by: str, **labels: str) -> dict[str, float]:
        """The samples of metric `name` (matching `labels`) on /metrics, summed by the value of label `by`."""
        _, text = self.http("/metrics")
        return metric_by(text, name, by, **labels)

    def ready(self) -> bool:
        try:
            return self.http("/readyz", timeout=2.0)[0] == 200
        except OSError:
            return False

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


async def wait_caught_up(controller: ControllerProcess, hub: KubeClient, *, timeout: float = 120.0) -> dict[str, float]:
    """Positive evidence that a (re)started controller has looked at everything the hub holds, to be had
    before asserting that it wrote nothing: it is ready; it finished at least one reconcile per
    AccessPoint, Certificate and NameService the hub holds (it enqueues each at start); no work queue
    holds a key; and its reconcile counters stand still across two scrapes 0.5 s apart (nothing in
    flight). Returns the reconcile counts by kind. Fails, with the controller's log, after `timeout`."""
    wanted: dict[str, int] = {}
    for kind, plural in (("accesspoint", "accesspoints"), ("certificate", "certificates"),
                         ("nameservice", "nameservices")):
        items, _ = await hub.list(f"/apis/meshfed.io/v1alpha1/{plural}")
        wanted[kind] = len(items)
    deadline = time.monotonic() + timeout
    previous: dict[str, float] | None = None
    seen: dict[str, float] = {}
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        if not controller.alive or not controller.ready():
            previous = None
            continue
        _, text = await asyncio.to_thread(controller.http, "/metrics")
        seen = {kind: metric_value(text, "meshfed_reconciles_total", kind=kind) for kind in wanted}
        depth = metric_value(text, "meshfed_queue_depth")
        if depth == 0 and all(seen[k] >= n for k, n in wanted.items()) and seen == previous:
            return seen
        previous = seen
    raise AssertionError(f"controller not caught up after {timeout}s: reconciles {seen}, wanted at least "
                         f"{wanted}\n{controller.log_tail()}")


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` in Prometheus text `text` whose labels include `labels`."""
    return sum(metric_by(text, name, None, **labels).values())


def metric_by(text: str, name: str, by: str | None, **labels: str) -> dict[str, float]:
    """The samples of `name` in Prometheus text `text` whose labels include `labels`, summed by the
    value of label `by` (None: all under "")."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            group = have.get(by, "") if by is not None else ""
            out[group] = out.get(group, 0.0) + float(m.group(3))
    return out


LEASES_PATH = "/apis/coordination.k8s.io/v1/namespaces/meshfed-system/leases"


async def lease_holders(hub: KubeClient, hub_id: str = "meshfed-hub", kind: str = "shard") -> dict[str, str]:
    """Lease key ("shard-07", "members") -> holder identity, for the Leases of `kind` with a holder."""
    items, _ = await hub.list(LEASES_PATH, label_selector=f"meshfed.io/lease-of={hub_id},meshfed.io/lease-kind={kind}")
    out = {}
    for item in items:
        holder = (item.get("spec") or {}).get("holderIdentity")
        if holder:
            out[item["metadata"]["name"][len(hub_id) + 1:]] = str(holder)
    return out


async def lease_transitions(hub: KubeClient, hub_id: str = "meshfed-hub") -> dict[str, int]:
    items, _ = await hub.list(LEASES_PATH, label_selector=f"meshfed.io/lease-of={hub_id}")
    return {i["metadata"]["name"][len(hub_id) + 1:]: int((i.get("spec") or {}).get("leaseTransitions") or 0)
            for i in items}


@contextlib.contextmanager
def running_replicas(fleet: Fleet, count: int = 3, *, hub_id: str = "meshfed-hub",
                     extra: Iterable[str] = FAST_LEASES) -> Iterator[list[ControllerProcess]]:
    """`count` controller replicas against the fleet's hub (logs replica-N.log in the fleet's root),
    stopped on exit."""
    assert fleet.state is not None
    procs = [ControllerProcess(fleet.state.hub.kubeconfig, fleet.root / f"replica-{i}.log", hub_id=hub_id,
                               extra=extra, name=f"replica-{i}") for i in range(count)]
    try:
        for p in procs:
            p.start()
        yield procs
    finally:
        for p in procs:
            if p.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.proc.pid, signal.SIGCONT)
            p.stop()


async def wait_balanced(hub: KubeClient, replicas: Iterable[ControllerProcess], shards: int = 32,
                        timeout: float = 60.0, hub_id: str = "meshfed-hub") -> dict[str, str]:
    """Wait until the live `replicas` hold every shard between them, evenly (exact targets), and are Ready."""
    procs = [p for p in replicas if p.alive]
    ids = {p.identity for p in procs}

    async def check() -> dict[str, str]:
        holders = await lease_holders(hub, hub_id)
        counts = {i: sum(1 for h in holders.values() if h == i) for i in ids}
        base, extra = divmod(shards, len(ids))
        if len(holders) != shards or set(holders.values()) - ids or \
                sorted(counts.values()) != sorted([base + 1] * extra + [base] * (len(ids) - extra)):
            raise AssertionError(counts)
        if not all(p.ready() for p in procs):
            raise AssertionError("not every replica is Ready")
        return holders

    return await eventually(check, timeout, 0.5, message="shards should be spread over the replicas")

async def start_fleet(root: Path, members: int = 3, regions: int = 2, zones: int = 3,
                      topology: list[tuple[str, str, str]] | None = None, istio: bool = False,
                      backends: int = 1, remotes: dict[str, str] | None = None, mesh_wide: bool = False,
                      vip_allocator: bool = True) -> Fleet:
    """A fleet in `root`; with `istio`, every member runs istiod + a gateway Envoy and `backends` echo backends
    (`remotes`: member -> primary, Istio remotes in primary-remote zones; `mesh_wide`, `vip_allocator`: see
    Fleet.up)."""
    fleet = Fleet(root)
    try:
        await fleet.up(members=members, regions=regions, zones=zones, topology=topology, istio=istio,
                       backends=backends, remotes=remotes, mesh_wide=mesh_wide, vip_allocator=vip_allocator)
    except BaseException:
        fleet.down(purge=False)
        raise
    return fleet


# ---- a fleet, its clients and the controller, for tests (e2e/conftest.py makes them fixtures) ----


@contextlib.asynccontextmanager
async def running_fleet(root: Path, members: int = 3, regions: int = 2, zones: int = 3,
                        topology: list[tuple[str, str, str]] | None = None, istio: bool = False,
                        backends: int = 1, remotes: dict[str, str] | None = None,
                        mesh_wide: bool = False, vip_allocator: bool = True) -> AsyncIterator[Fleet]:
    """`start_fleet`, brought down (state kept on disk for post-mortems) on exit."""
    fleet = await start_fleet(root, members=members, regions=regions, zones=zones, topology=topology, istio=istio,
                              backends=backends, remotes=remotes, mesh_wide=mesh_wide, vip_allocator=vip_allocator)
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


# ---- deploy/ manifests applied as they are, ServiceAccount tokens, audited API servers ---------------
# (tests/integration/test_deploy_rbac.py: the controller runs with exactly the RBAC in deploy/.)

DEPLOY = REPO / "deploy"
# REST collection of each kind deploy/ holds ({ns}: namespaced).
MANIFEST_PATHS: dict[str, str] = {
    "Namespace": "/api/v1/namespaces",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "CustomResourceDefinition": "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "ValidatingAdmissionPolicy": "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies",
    "ValidatingAdmissionPolicyBinding": "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings",
}


def kustomize_objects(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize DIRECTORY` builds, for kustomizations that only list `resources`
    (files, or directories with their own kustomization.yaml) — all deploy/ uses; anything else fails."""
    import yaml

    (k,) = [d for d in yaml.safe_load_all((directory / "kustomization.yaml").read_text()) if d]
    unsupported = set(k) - {"apiVersion", "kind", "resources"}
    if unsupported:
        raise ValueError(f"{directory}/kustomization.yaml uses {sorted(unsupported)}: only `resources` is supported")
    out: list[dict[str, Any]] = []
    for entry in k.get("resources") or []:
        target = directory / entry
        if target.is_dir():
            out += kustomize_objects(target)
        else:
            out += [d for d in yaml.safe_load_all(target.read_text()) if d]
    return out


def manifest_path(obj: dict[str, Any]) -> str:
    kind = obj["kind"]
    if kind not in MANIFEST_PATHS:
        raise ValueError(f"no REST path known for kind {kind} (add it to fleet.testing.MANIFEST_PATHS)")
    meta = obj["metadata"]
    return f"{MANIFEST_PATHS[kind].format(ns=meta.get('namespace', ''))}/{meta['name']}"


async def apply_objects(client: KubeClient, objs: Iterable[dict[str, Any]],
                        field_manager: str = "meshfed-test") -> None:
    """Server-side apply `objs` as an administrator would: Namespaces first, then CRDs (waiting until
    they are Established), then everything else in order."""
    items = list(objs)
    for obj in (o for o in items if o["kind"] == "Namespace"):
        await client.apply(manifest_path(obj), obj, field_manager=field_manager)
    crds = [dict(o) for o in items if o["kind"] == "CustomResourceDefinition"]
    if crds:
        await apply_crds(client, crds)
    for obj in (o for o in items if o["kind"] not in ("Namespace", "CustomResourceDefinition")):
        await client.apply(manifest_path(obj), obj, field_manager=field_manager)


async def service_account_token(client: KubeClient, namespace: str, name: str, seconds: int = 3600) -> str:
    """A bound token for ServiceAccount namespace/name (TokenRequest API, as `kubectl create token`)."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": seconds}}
    resp = await client.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body=body)
    return str(resp["status"]["token"])


def token_kubeconfig(cluster: ClusterProc, user: str, token: str) -> dict[str, Any]:
    """A kubeconfig for `cluster` authenticating with a bearer token."""
    import base64

    ca = base64.b64encode((cluster.path / "pki" / "ca.crt").read_bytes()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster.name, "cluster": {"server": f"https://127.0.0.1:{cluster.port}",
                                                        "certificate-authority-data": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": cluster.name, "context": {"cluster": cluster.name, "user": user}}],
        "current-context": cluster.name,
    }


AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
"""


class AuditedClusterProc(ClusterProc):
    """An API server that also writes an audit log (every request at level Metadata: who, verb,
    resource, response code, authorization decision) to `audit.log` in its directory."""

    @property
    def audit_log(self) -> Path:
        return self.path / "audit.log"

    def prepare(self) -> None:
        super().prepare()
        (self.path / "audit-policy.yaml").write_text(AUDIT_POLICY)

    def command(self, binary: Path) -> list[str]:
        return [*super().command(binary), f"--audit-policy-file={self.path / 'audit-policy.yaml'}",
                f"--audit-log-path={self.audit_log}", "--audit-log-format=json", "--audit-log-mode=blocking"]

    def audit_events(self, username: str | None = None) -> list[dict[str, Any]]:
        """The completed requests in the audit log (of `username` only, when given)."""
        import json

        if not self.audit_log.exists():
            return []
        out = []
        for line in self.audit_log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written
            if event.get("stage") not in ("ResponseComplete", "ResponseStarted", "Panic"):
                continue
            if username is None or (event.get("user") or {}).get("username") == username:
                out.append(event)
        return out


def describe_request(event: dict[str, Any]) -> str:
    """`verb group/resource[/subresource] namespace/name -> code` of one audit event."""
    ref = event.get("objectRef") or {}
    res = f"{ref.get('apiGroup') or 'core'}/{ref.get('resource', '')}" if ref else event.get("requestURI", "")
    sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
    where = "/".join(x for x in (ref.get("namespace"), ref.get("name")) if x)
    code = (event.get("responseStatus") or {}).get("code")
    return f"{event.get('verb')} {res}{sub} {where} -> {code}".replace("  ", " ")


def denied_requests(events: Iterable[dict[str, Any]]) -> list[str]:
    """The requests among audit `events` the API server refused as unauthorized (403 or an RBAC forbid)."""
    return [describe_request(e) for e in events
            if (e.get("responseStatus") or {}).get("code") == 403
            or (e.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid"]


async def authorization_refusals(client: KubeClient) -> dict[str, int]:
    """Requests this API server's authorizer did not allow since it started, by result ("no-opinion": no
    RBAC rule matched; "denied"), from authorization_attempts_total in its /metrics. A request refused
    by RBAC is answered 403 before it reaches a handler, so apiserver_request_total never counts it:
    this is the metric that does. It has no user label (the audit log has)."""
    text = await client.request_text("/metrics")
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r'^authorization_attempts_total\{result="([^"]*)"\}\s+([0-9.e+]+)$', line)
        if m and m.group(1) != "allowed" and float(m.group(2)):
            out[m.group(1)] = out.get(m.group(1), 0) + int(float(m.group(2)))
    return out


async def requests_with_code(client: KubeClient, code: str) -> dict[str, int]:
    """Requests this API server's handlers answered with HTTP `code` since it started, by "VERB resource[/sub]"
    (apiserver_request_total in its /metrics; no user label). Requests refused by the authorizer never
    reach a handler and are not counted here: see `authorization_refusals`."""
    out = await request_breakdown(client, code=code)
    return {k: v for k, v in out.items() if v}


async def audited_apiserver(root: Path, name: str, *, istio_crds: bool = False) -> AuditedClusterProc:
    """One API server with an audit log and nothing installed but (optionally) Istio's and Gateway API's
    CRDs: apply deploy/ with `apply_objects(kustomize_objects(...))`."""
    cluster = AuditedClusterProc(name=name, role="hub", dir=str(root / name), port=free_port(),
                                 etcd_port=free_port(), peer_port=free_port())
    cluster.start(apiserver_binary())
    try:
        await cluster.wait_ready()
        if istio_crds:
            client = await cluster.client()
            try:
                await apply_crds(client, load_member_crds())
            finally:
                await client.close()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def tls_gateway_template(host: str, credential: str, extra_servers: Iterable[dict[str, Any]] = (),
                         name: str = "${name}-gw") -> list[dict[str, Any]]:
    """The AccessPoint template objects the tests share: a LoadBalancer Service `name` (443 -> 8443)
    and an Istio Gateway `name` terminating TLS for `host` with `credential`."""
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
         "spec": {"type": "LoadBalancer", "selector": {"app": "gw"},
                  "ports": [{"name": "https", "port": 443, "targetPort": 8443}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": name},
         "spec": {"selector": {"app": "gw"},
                  "servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                               "hosts": [host], "tls": {"mode": "SIMPLE", "credentialName": credential}},
                              *extra_servers]}},
    ]


# ---- traffic through the fleet's VIPs (fleets started with istio=True) ---------------------------


@dataclasses.dataclass
class Tally:
    """What a bounded request loop got back: answers per cluster/region/zone (from the echo backends'
    headers), HTTP statuses, and transport errors by kind."""

    clusters: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    regions: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    zones: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def failed(self) -> int:
        """Requests that did not get a 200: other statuses and transport errors."""
        return self.total - self.ok

    def add(self, status: int, headers: Mapping[str, str]) -> None:
        self.statuses[status] += 1
        if status == 200:
            self.clusters[headers.get("x-echo-cluster", "?")] += 1
            self.regions[headers.get("x-echo-region", "?")] += 1
            self.zones[headers.get("x-echo-zone", "?")] += 1

    def __str__(self) -> str:
        return (f"{self.total} requests in {self.seconds:.1f}s: regions {dict(self.regions)}, "
                f"clusters {dict(self.clusters)}, statuses {dict(self.statuses)}, errors {dict(self.errors)}")


def binomial_band(n: int, p: float, sigmas: float = 4.0) -> tuple[float, float]:
    """[low, high] count of successes with probability `p` over `n` trials, `sigmas` standard deviations wide."""
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    return mean - sigmas * sd, mean + sigmas * sd


def client_tls(ca_pem: bytes | None = None) -> ssl.SSLContext:
    """A client TLS context trusting `ca_pem` (None: no verification, for reading what a gateway serves)."""
    if ca_pem is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cadata=ca_pem.decode())


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.read()
        headers["connection"] = "close"
    return status, headers, body


# What a request loop reports per request as it goes: (monotonic time of the answer, HTTP status or 0
# for a transport error, the answer's headers; for an error {"error": <exception class name>}).
ResponseObserver = Callable[[float, int, Mapping[str, str]], None]


async def request_loop(address: str, host: str, count: int, *, port: int = 443, path: str = "/", tls: bool = True,
                       ca_pem: bytes | None = None, connections: int = 2, timeout: float = 5.0,
                       headers: Mapping[str, str] | None = None, on_response: ResponseObserver | None = None,
                       stop: asyncio.Event | None = None) -> Tally:
    """`count` GET requests for `host` (SNI and Host) to address:port (a VIP), over `connections`
    keep-alive connections; a transport error or timeout is counted and the connection re-opened.
    `on_response` sees every answer (or error) with its time; `stop` ends the loop early (the requests
    in flight finish), so a loop can run "until told" with a large `count`."""
    ctx = client_tls(ca_pem) if tls else None
    tally = Tally()
    remaining = count
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meshfed-e2e\r\n{extra}\r\n".encode()

    async def worker() -> None:
        nonlocal remaining
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while remaining > 0 and not (stop is not None and stop.is_set()):
            remaining -= 1
            try:
                if conn is None:
                    conn = await asyncio.wait_for(
                        asyncio.open_connection(address, port, ssl=ctx, server_hostname=host if ctx else None),
                        timeout)
                conn[1].write(request)
                status, hdrs, _ = await asyncio.wait_for(_read_response(conn[0]), timeout)
                tally.add(status, hdrs)
                if on_response is not None:
                    on_response(time.monotonic(), status, hdrs)
                if hdrs.get("connection", "").lower() == "close":
                    conn[1].close()
                    conn = None
            except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError, ValueError, IndexError) as err:
                tally.errors[type(err).__name__] += 1
                if on_response is not None:
                    on_response(time.monotonic(), 0, {"error": type(err).__name__})
                if conn is not None:
                    conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(max(1, min(connections, count)))))
    tally.seconds = time.monotonic() - start
    return tally


async def served_certificate(address: str, host: str, port: int = 443, timeout: float = 5.0) -> x509.Certificate:
    """The leaf certificate a TLS server at address:port presents for SNI `host`."""
    _, writer = await asyncio.wait_for(
        asyncio.open_connection(address, port, ssl=client_tls(None), server_hostname=host), timeout)
    try:
        obj = writer.get_extra_info("ssl_object")
        der = obj.getpeercert(binary_form=True) if obj is not None else None
    finally:
        writer.close()
    if not der:
        raise AssertionError(f"{address}:{port} presented no certificate for {host}")
    return x509.load_der_x509_certificate(der)


async def gateway_vip(member: KubeClient, namespace: str, service: str) -> str:
    """The VIP the fleet's load-balancer stand-in gave Service namespace/service on a member."""
    svc = await member.get(f"/api/v1/namespaces/{namespace}/services/{service}") or {}
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return str(ingress[0]["ip"]) if ingress else ""
