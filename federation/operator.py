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
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import kopf

from federation.controller import Controller
from federation.gcpolicy import tune_gc
from federation.kube import SERVICE_ACCOUNT_DIR, KubeClient, in_cluster_config

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


def build_registry(options: dict[str, Any]) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    holder: dict[str, Controller] = {}

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        if options.get("kubeconfig"):
            return kopf.login_with_kubeconfig(**kwargs)
        return in_cluster_login()

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # meshfed posts its own Events, only on transitions
        settings.batching.batch_window = 0.01
        settings.watching.server_timeout = 300
        settings.persistence.finalizer = "meshfed.io/kopf"  # unused: no handler needs one
        if options.get("kubeconfig"):
            hub = await KubeClient.from_kubeconfig_file(options["kubeconfig"], "hub")
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
        )
        holder["controller"] = controller
        for feature in features():
            await feature.install(controller)
        await controller.start()
        log.info("meshfed controller started (hub id %r)", options["hub_id"])

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        controller = holder.pop("controller", None)
        if controller is not None:
            await controller.stop()
            await controller.hub.close()

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


def run(kubeconfig: str | None, hub_id: str, **options: Any) -> None:
    tune_gc()
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
    opts = {"kubeconfig": kubeconfig, "hub_id": hub_id, **options}
    asyncio.run(
        kopf.operator(
            registry=build_registry(opts),
            clusterwide=True,
            standalone=True,
            liveness_endpoint=options.get("liveness"),
        )
    )
