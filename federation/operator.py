"""kopf wiring: hub watch streams feed the Controller; nothing else happens in handlers.

Only `on.event` handlers are used, so kopf stores no handler progress on hub objects (no hub
writes of its own); meshfed manages its own finalizer. kopf connects to the hub only; members
are reached with our own clients (federation/members.py).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import kopf

from federation import metrics as prom
from federation.controller import Controller
from federation.gcpolicy import observe_pauses, tune_gc
from federation.kube import (
    SERVICE_ACCOUNT_DIR,
    KubeClient,
    Kubeconfig,
    in_cluster_config,
    load_configuration,
    load_kubeconfig,
)
from federation.members import VERIFY_INTERVAL
from federation.metrics import HttpServer, sample_loop_lag
from federation.shards import LeaseTiming, Shards

log = logging.getLogger("meshfed.operator")


class Feature(Protocol):
    """A feature module (traffic, rollout, DNS, certificates) plugged into the controller.

    `register` adds the feature's own kopf handlers (its hub resources); `install` attaches its
    hooks to the Controller (validators, context providers, spec selector, status contributors and
    listeners) and may start its own tasks. `holder["controller"]` is the running Controller.
    """

    register: Callable[[kopf.OperatorRegistry, dict[str, Any]], None]
    install: Callable[[Controller], Awaitable[None]]


# Modules exposing `register(registry, holder)` and `async install(controller)`; listed here once.
FEATURES: list[str] = ["federation.tenancy", "federation.traffic", "federation.dns", "federation.rollouts",
                       "federation.certificates"]


def features() -> list[Any]:
    return [importlib.import_module(name) for name in FEATURES]


class NoDiffBase(kopf.DiffBaseStorage):
    """No "essence" of hub objects. kopf builds one on every event (a deep copy of the whole body,
    status and managedFields included, then trimmed) to tell create/update handlers what changed;
    meshfed has none, only on.event handlers. The copy was 13 % of the controller's CPU in a
    5-member bulk (cProfile of e2e/bench/propagation.py, 2026-12-05)."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        raise RuntimeError("meshfed registers no kopf change-detecting handler: no essence to store")


def build_registry(options: dict[str, Any]) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    holder: dict[str, Controller] = {}

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        if options.get("kubeconfig"):
            return await kubeconfig_login(load_kubeconfig(options["kubeconfig"], options.get("context")))
        return in_cluster_login()

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # meshfed posts its own Events, only on transitions
        settings.batching.batch_window = 0.01
        settings.watching.server_timeout = 300
        settings.persistence.finalizer = "meshfed.io/kopf"  # unused: no handler needs one
        settings.persistence.diffbase_storage = NoDiffBase()
        if options.get("kubeconfig"):
            hub = await KubeClient.from_kubeconfig(load_kubeconfig(options["kubeconfig"], options.get("context")),
                                                   "hub")
        else:
            hub = await KubeClient.in_cluster("hub")
        controller = Controller(
            hub,
            options["hub_id"],
            workers=options.get("workers", 16),
            probe_interval=options.get("probe_interval", 5.0),
            resync_seconds=options.get("resync_seconds", 600.0),
            istiod_options={"idle": options.get("istiod_interval", 10.0),
                            "fast": options.get("istiod_fast_interval", 0.5)},
            route_settle=options.get("route_settle", 10.0),
            gateway_namespace=options.get("gateway_namespace")
            or os.environ.get("MESHFED_GATEWAY_NAMESPACE", "istio-system"),
            verify_interval=options.get("verify_interval", VERIFY_INTERVAL),
        )
        if options.get("shards", 0):
            controller.shards = Shards(
                hub, options["hub_id"], shards=options["shards"], identity=options.get("identity"),
                namespace=options.get("lease_namespace") or "meshfed-system",
                timing=LeaseTiming(options.get("lease_duration", 15), options.get("renew_deadline", 10.0),
                                   options.get("retry_period", 2.0)))
            prom.shards_total.set(options["shards"])
        holder["controller"] = controller
        started: dict[str, bool] = {}
        try:
            background.append(asyncio.create_task(sample_loop_lag(), name="loop-lag"))
            if options.get("http_address"):
                server = HttpServer(options["http_address"], lambda: _healthy(controller),
                                    lambda: _ready(controller, started))
                await server.start()
                servers.append(server)
            for feature in features():
                await feature.install(controller)
            await controller.start()
        except BaseException:
            # kopf tries a failed startup again (after 60 s): nothing of this attempt may stay behind (its
            # /metrics port bound, its hub client, its tasks), else the next attempt fails on those
            # ("address already in use") and the log no longer shows why the first one failed.
            try:
                await teardown()
            except Exception:
                log.exception("startup failed, and so did releasing what it had started")
            raise
        started["done"] = True
        if controller.shards is not None:
            log.info("meshfed controller started (hub id %r, replica %s, %d of %d shards)", options["hub_id"],
                     controller.shards.identity, len(controller.shards.held_shards), controller.shards.count)
        else:
            log.info("meshfed controller started (hub id %r)", options["hub_id"])

    servers: list[HttpServer] = []
    background: list[asyncio.Task[None]] = []

    async def teardown() -> None:
        controller = holder.pop("controller", None)
        if controller is not None:
            await controller.stop()
            await controller.hub.close()
        for server in servers:
            await server.stop()
        servers.clear()
        for task in background:
            task.cancel()
        background.clear()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await teardown()

    @kopf.on.event("meshfed.io", "v1alpha1", "memberclusters", registry=registry)
    async def membercluster_event(event: kopf.RawEvent, **_: Any) -> None:
        await holder["controller"].on_membercluster(event.get("type") or "ADDED", dict(event["object"]))

    @kopf.on.event("meshfed.io", "v1alpha1", "placementpolicies", registry=registry)
    async def policy_event(event: kopf.RawEvent, **_: Any) -> None:
        holder["controller"].on_policy(event.get("type") or "ADDED", dict(event["object"]))

    @kopf.on.event("meshfed.io", "v1alpha1", "accesspoints", registry=registry)
    async def accesspoint_event(event: kopf.RawEvent, **_: Any) -> None:
        holder["controller"].on_accesspoint(event.get("type") or "ADDED", dict(event["object"]))

    for feature in features():
        feature.register(registry, holder)
    return registry


def in_cluster_login(environ: dict[str, str] | None = None,
                     directory: str = SERVICE_ACCOUNT_DIR) -> kopf.ConnectionInfo:
    """kopf's credentials in a Pod: the API server of KUBERNETES_SERVICE_HOST/PORT (what KubeClient.in_cluster
    and client-go use; kopf's own login_with_service_account assumes https://kubernetes.default.svc:443,
    which needs the cluster's DNS) and the mounted ServiceAccount token, read again on each login: kopf
    logs in again after a 401, so a rotated token is picked up."""
    found = in_cluster_config(environ, directory)
    return kopf.ConnectionInfo(server=found.server, ca_path=found.ca_path, token=found.token(),
                               default_namespace=found.namespace)


async def kubeconfig_login(config: Kubeconfig) -> kopf.ConnectionInfo:
    """kopf's credentials from the same loader as the controller's own hub client (`load_configuration`:
    kubectl's merge and context, relative file names against the kubeconfig's directory, exec plugins
    run), read again on each login: kopf logs in again after a 401, so renewed credentials are picked
    up. kopf has no tls-server-name; proxy-url is passed on."""
    cfg = await load_configuration(config)
    header = str(cfg.api_key.get("BearerToken") or "")
    scheme, _, token = header.partition(" ") if " " in header else ("", "", header)
    return kopf.ConnectionInfo(
        server=str(cfg.host), ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
        certificate_path=cfg.cert_file, private_key_path=cfg.key_file,
        scheme=scheme or None, token=token or None,  # basic auth too: kubernetes-asyncio's "Basic <b64>"
        default_namespace=config.namespace, proxy_url=cfg.proxy or None)


def _healthy(controller: Controller) -> tuple[bool, str]:
    """Liveness: the event loop answers (this handler runs) and the Lease loop has not died."""
    task = controller.shards._task if controller.shards is not None else None
    if task is not None and task.done():
        return False, "the Lease loop stopped"
    return True, "ok"


def _ready(controller: Controller, started: dict[str, bool]) -> tuple[bool, str]:
    """Readiness: started, this replica holds its share of the shards, and its member caches are synced
    for them (every member listed with the current shard filter)."""
    if not started.get("done"):
        return False, "starting"
    sh = controller.shards
    if sh is not None and not sh.balanced():
        return False, f"holds {len(sh.held_shards)} of its {sh.target()} shards"
    if not controller.registry.warm():
        return False, "member caches not synced"
    if sh is not None:
        return True, f"ok: {len(sh.held_shards)} of {sh.count} shards, {len(sh.live)} replicas"
    return True, "ok"


def run(kubeconfig: str | None, hub_id: str, **options: Any) -> None:
    tune_gc()
    observe_pauses(lambda generation, seconds: prom.gc_pauses.labels(generation=str(generation)).observe(seconds))
    opts = {"kubeconfig": kubeconfig, "hub_id": hub_id, **options}
    asyncio.run(
        kopf.operator(
            registry=build_registry(opts),
            clusterwide=True,
            standalone=True,
            liveness_endpoint=options.get("liveness"),
        )
    )
