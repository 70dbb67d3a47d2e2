"""Istio's own verdict on an AccessPoint in one member: routes pushed and ACKed, analyzer messages.

Owns the decisions, as pure functions over pydantic models (no I/O; the facts come from
federation/istiod.py, which asks the member's istiod, and from the member caches):

- which gateway proxies an AccessPoint's Gateways select (`selected_proxies`): the Pods matching each
  Gateway's `spec.selector` (any namespace: Istio's default, PILOT_SCOPE_GATEWAY_TO_NAMESPACE=false);
  a Pod `name` in `namespace` is the proxy `name.namespace` in istiod's /debug/syncz (pilot-agent
  derives the proxy ID from POD_NAME and POD_NAMESPACE);
- whether its routes are configured (`route_verdict`): True only when every selected proxy is
  connected to istiod, ACKed the last CDS/LDS/RDS push (sent nonce == ACKed nonce, no error), the
  config istiod generated for that proxy (/debug/config_dump, read between two identical syncz
  samples) holds a route of every VirtualService of the AccessPoint bound to a Gateway selecting it
  (Istio tags each route with `istio.config = /apis/<g>/<v>/namespaces/<ns>/virtual-service/<name>`),
  and istiod pushed to that proxy after meshfed's last write of the AccessPoint's objects there (or
  the write is older than `settle` seconds: a change Istio deems irrelevant to the proxy is pushed to
  nobody). False with the reason otherwise; None (Unknown) when istiod cannot be asked;
- the Gateway API part of the same verdict (`gateway_api_verdict`), from Istio's own status on the
  member objects, written by istiod's gateway controller: every Gateway API `Gateway` of the
  AccessPoint `Programmed=True`, every `HTTPRoute`/`GRPCRoute` `Accepted=True` and `ResolvedRefs=True`
  for each of its parents (status.parents[] of controller istio.io/gateway-controller); a condition
  counts only at `observedGeneration == metadata.generation`. `route_verdict` combines both parts: False
  when either is False, None when either cannot be decided, True when every evaluated part is True;
- per zone (a primary and its Istio remotes; `zone_verdict`): the primary's istiod's sync state with
  each remote (/debug/clusterz) and the endpoints it knows of each host the AccessPoint's gateway routes
  to, per cluster (/debug/endpointShardz); a routed host with no endpoint makes the zone not ready;
- the analyzer's messages on member objects (`analyzer_messages`, every *.istio.io kind):
  `status.validationMessages` counts only when `status.observedGeneration` equals `metadata.generation`;
  otherwise the object has "no current verdict" (istiod keeps stale messages after an in-place fix)
  and no code is reported.

Imports accesspoint.meta and accesspoint.kinds only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import Field

from accesspoint.kinds import GATEWAY_API, display_name, group_of
from accesspoint.meta import ApiModel

ISTIO_GROUP = "networking.istio.io"
# The controller name istiod writes into Gateway API route status.parents[].
ISTIO_GATEWAY_CONTROLLER = "istio.io/gateway-controller"
GATEWAY_API_ROUTES = ("HTTPRoute", "GRPCRoute")
# xDS types whose ACK a route depends on (short names as in istiod's debug API).
ROUTE_TYPES = ("cds", "lds", "rds")
TYPE_URLS = {
    "type.googleapis.com/envoy.config.cluster.v3.Cluster": "cds",
    "type.googleapis.com/envoy.config.listener.v3.Listener": "lds",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration": "rds",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment": "eds",
}
TYPE_NAMES = {"cds": "CDS (clusters)", "lds": "LDS (listeners)", "rds": "RDS (routes)", "eds": "EDS (endpoints)"}


# ---- facts (built by federation/istiod.py from istiod's debug API and the member API server) ----

class XdsSync(ApiModel):
    """One xDS type of one proxy, from /debug/syncz: last nonce sent, last nonce ACKed, last NACK."""

    sent: str = ""
    acked: str = ""
    last_error: str = Field(default="", alias="lastError")


class ProxySync(ApiModel):
    id: str
    type: str = ""
    xds: dict[str, XdsSync] = Field(default_factory=dict)
    # monotonic time (the observer's clock) when this proxy's sent/acked nonces last changed
    changed_at: float = Field(default=0.0, alias="changedAt")

    def signature(self) -> str:
        return "|".join(f"{t}:{s.sent}:{s.acked}:{s.last_error}" for t, s in sorted(self.xds.items()))


class ProxyConfig(ApiModel):
    """What istiod generated for one proxy (its last push context), read between two syncz samples
    that showed the same `signature`: the Istio config objects its listeners and routes came from."""

    signature: str
    configs: list[str] = Field(default_factory=list)


class WorkloadPod(ApiModel):
    name: str
    namespace: str
    labels: dict[str, str] = Field(default_factory=dict)


class IstiodView(ApiModel):
    """The hub's view of one member's istiod at one moment."""

    reachable: bool | None = None
    error: str = ""
    proxies: dict[str, ProxySync] = Field(default_factory=dict)
    configs: dict[str, ProxyConfig] = Field(default_factory=dict)
    # Pods per Gateway selector (key: `selector_key`); a missing key means "not listed yet".
    pods: dict[str, list[WorkloadPod]] = Field(default_factory=dict)
    pods_error: str = ""
    # /debug/clusterz: cluster ID -> syncStatus (synced | syncing | timeout | closed), the config cluster
    # included; None: not read (yet).
    clusters: dict[str, str] | None = None
    # /debug/endpointShardz, for the hosts asked about: host -> cluster ID -> endpoints istiod knows there;
    # None: not read (yet). A host absent from the dict has no endpoint in any cluster.
    endpoints: dict[str, dict[str, int]] | None = None


def selector_key(selector: Mapping[str, str]) -> str:
    """The label selector string for a Gateway's `spec.selector` (also the API's labelSelector)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


# ---- the AccessPoint's objects in the member ----

def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _describe(obj: Mapping[str, Any]) -> str:
    meta = _meta(obj)
    kind = display_name(group_of(str(obj.get("apiVersion", ""))), str(obj.get("kind", "")))
    return f"{kind} {meta.get('namespace', '')}/{meta.get('name', '')}"


def _is_istio(obj: Mapping[str, Any]) -> bool:
    return str(obj.get("apiVersion", "")).startswith(ISTIO_GROUP + "/")


def _is_istio_kind(obj: Mapping[str, Any]) -> bool:
    """Any Istio API group (networking, security, telemetry, extensions): the analyzer judges them all."""
    return group_of(str(obj.get("apiVersion", ""))).endswith(".istio.io")


def _is_gateway_api(obj: Mapping[str, Any]) -> bool:
    return group_of(str(obj.get("apiVersion", ""))) == GATEWAY_API


def gateways_of(objects: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted((o for o in objects if o.get("kind") == "Gateway" and _is_istio(o)), key=_describe)


def gateway_selectors(objects: Iterable[Mapping[str, Any]]) -> set[str]:
    """The selectors (as `selector_key`) whose Pods the verdict needs."""
    return {selector_key(_selector(g)) for g in gateways_of(objects) if _selector(g)}


def _selector(gateway: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in ((gateway.get("spec") or {}).get("selector") or {}).items()}


def vs_config_path(namespace: str, name: str) -> str:
    """The tail of the `istio.config` metadata Istio puts on every route built from a VirtualService."""
    return f"/namespaces/{namespace}/virtual-service/{name}"


def bound_virtualservices(objects: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """Gateway (namespace, name) of the AccessPoint -> its VirtualServices bound to it."""
    objs = list(objects)
    gateways = {(_meta(g).get("namespace", ""), _meta(g).get("name", "")) for g in gateways_of(objs)}
    out: dict[tuple[str, str], list[Mapping[str, Any]]] = {g: [] for g in gateways}
    for vs in objs:
        if vs.get("kind") != "VirtualService" or not _is_istio(vs):
            continue
        ns = str(_meta(vs).get("namespace", ""))
        for ref in (vs.get("spec") or {}).get("gateways") or []:
            ref = str(ref)
            if ref == "mesh":
                continue
            gw_ns, _, gw_name = ref.rpartition("/")
            key = (gw_ns or ns, gw_name)
            if key in out and vs not in out[key]:
                out[key].append(vs)
    return out


class SelectedProxies(ApiModel):
    """Per proxy ID, the Gateways (namespace/name) of the AccessPoint that select it."""

    proxies: dict[str, list[str]] = Field(default_factory=dict)
    # Gateways whose selector matches no Pod, with the reason.
    unmatched: list[str] = Field(default_factory=list)
    # Selectors whose Pods are not known yet.
    unknown: list[str] = Field(default_factory=list)


def selected_proxies(objects: Iterable[Mapping[str, Any]],
                     pods: Mapping[str, Sequence[WorkloadPod]]) -> SelectedProxies:
    out = SelectedProxies()
    for gw in gateways_of(objects):
        name = f"{_meta(gw).get('namespace', '')}/{_meta(gw).get('name', '')}"
        selector = _selector(gw)
        if not selector:
            out.unmatched.append(f"Gateway {name} has no spec.selector (it selects no gateway workload)")
            continue
        key = selector_key(selector)
        if key not in pods:
            out.unknown.append(key)
            continue
        matching = [p for p in pods[key] if all(p.labels.get(k) == v for k, v in selector.items())]
        if not matching:
            out.unmatched.append(f"no gateway workload matches the selector {key} of Gateway {name}")
        for pod in matching:
            out.proxies.setdefault(f"{pod.name}.{pod.namespace}", []).append(name)
    return out


# ---- the verdict ----

class RouteVerdict(ApiModel):
    configured: bool | None
    message: str
    synced: int = 0
    total: int = 0

    @property
    def proxies(self) -> str:
        return f"{self.synced}/{self.total}"


def _proxy_problem(pid: str, proxy: ProxySync | None, config: ProxyConfig | None, vss: Sequence[Mapping[str, Any]],
                   changed_at: float | None, settle: float, now: float) -> str | None:
    """Why `pid` does not serve the AccessPoint's routes, or None when it does."""
    if proxy is None:
        return f"gateway proxy {pid} is not connected to istiod"
    for t in ROUTE_TYPES:
        s = proxy.xds.get(t)
        if s is None:
            continue
        if s.last_error:
            return f"gateway proxy {pid} rejected (NACK) the {TYPE_NAMES[t]} push: {s.last_error}"
    for t in ROUTE_TYPES:
        s = proxy.xds.get(t)
        if s is not None and s.sent != s.acked:
            return f"gateway proxy {pid} has not ACKed the {TYPE_NAMES[t]} push yet"
    if "lds" not in proxy.xds:
        return f"gateway proxy {pid} has not subscribed to listeners yet"
    if changed_at is not None and proxy.changed_at < changed_at and now - changed_at < settle:
        return f"istiod has not pushed to gateway proxy {pid} since the last change"
    if config is None or config.signature != proxy.signature():
        return f"the config istiod generated for gateway proxy {pid} is not read yet"
    paths = set(config.configs)
    for vs in vss:
        meta = _meta(vs)
        tail = vs_config_path(str(meta.get("namespace", "")), str(meta.get("name", "")))
        if not any(p.endswith(tail) and f"/{ISTIO_GROUP}/" in p for p in paths):
            return (f"no route of VirtualService {meta.get('namespace')}/{meta.get('name')} in the config "
                    f"istiod pushed to gateway proxy {pid}")
    return None


# Kinds whose writes change nothing istiod pushes as clusters, listeners or routes: a Secret (a gateway's
# credentialName certificate) reaches the gateway over SDS only, so its write moves no CDS/LDS/RDS nonce and
# must not start the `settle` wait (else every certificate renewal reads as "routes not configured" for
# `settle` seconds while the gateway serves the new certificate on the routes it has).
NOT_ROUTE_KINDS = frozenset({("", "Secret")})


def moves_routes(written: Iterable[tuple[str, str]]) -> bool:
    """Whether writes of these (API group, kind) can change what istiod pushes to a gateway as CDS/LDS/RDS,
    i.e. whether they count as "meshfed's last write" for `route_verdict(changed_at=...)`."""
    return any((group, kind) not in NOT_ROUTE_KINDS for group, kind in written)


def route_verdict(objects: Iterable[Mapping[str, Any]], view: IstiodView | None, *, changed_at: float | None = None,
                  settle: float = 10.0, now: float = 0.0) -> RouteVerdict | None:
    """routeConfigured of one AccessPoint in one member (None: not evaluated — it has no Istio Gateway
    and no Gateway API Gateway or route).

    `objects`: what the AccessPoint owns in the member (the member cache, status included);
    `changed_at`: when meshfed last wrote them (monotonic, same clock as ProxySync.changed_at), None if
    unknown. The Istio part (proxies, pushes, ACKs) and the Gateway API part (Istio's status on the
    Gateway API objects, `gateway_api_verdict`) are combined by `combine_verdicts`.
    """
    objs = list(objects)
    return combine_verdicts(_istio_route_verdict(objs, view, changed_at=changed_at, settle=settle, now=now),
                            gateway_api_verdict(objs), analyzer_route_errors(objs))


ROUTE_KINDS = ("Gateway", "VirtualService")


def analyzer_route_errors(objs: Iterable[Mapping[str, Any]]) -> RouteVerdict | None:
    """False when Istio's analyzer reports an ERROR, current for the object's generation, on one of the
    AccessPoint's Istio Gateways or VirtualServices (e.g. IST0101: a VirtualService naming a Gateway that
    does not exist — its route is on no gateway, and the pushes alone cannot show that when the Gateway
    it names is not the AccessPoint's); None otherwise (the other parts decide)."""
    route_objs = [o for o in objs if o.get("kind") in ROUTE_KINDS and _is_istio(o)]
    errors = [m for m in analyzer_messages(route_objs).messages if m.level.upper() == "ERROR"]
    if not errors:
        return None
    return RouteVerdict(configured=False, message="Istio's analyzer reports " + ", ".join(
        f"{m.code} on {m.object}" for m in errors))


def combine_verdicts(*parts: RouteVerdict | None) -> RouteVerdict | None:
    """False when any evaluated part is False, else None when any is undecided, else True; the messages
    of the parts that are not True (or all of them when every part is True), joined; proxy counts added."""
    evaluated = [p for p in parts if p is not None]
    if not evaluated:
        return None
    if len(evaluated) == 1:
        return evaluated[0]
    if any(p.configured is False for p in evaluated):
        configured: bool | None = False
    elif any(p.configured is None for p in evaluated):
        configured = None
    else:
        configured = True
    shown = evaluated if configured is True else [p for p in evaluated if p.configured is not True]
    return RouteVerdict(configured=configured, message="; ".join(p.message for p in shown),
                        synced=sum(p.synced for p in evaluated), total=sum(p.total for p in evaluated))


def _condition(obj: Mapping[str, Any], conditions: Sequence[Mapping[str, Any]], type_: str) -> tuple[str, str]:
    """(problem or "", state) of condition `type_`: "" when it is True for the object's generation."""
    generation = _meta(obj).get("generation")
    cond = next((c for c in conditions if c.get("type") == type_), None)
    if cond is None:
        return f"{type_} not reported by istiod yet", "missing"
    observed = cond.get("observedGeneration")
    try:
        current = observed is None or generation is None or int(observed) == int(generation)
    except (TypeError, ValueError):
        current = False
    if not current:
        return f"{type_} reported for generation {observed}, not yet for {generation}", "stale"
    if cond.get("status") != "True":
        detail = ": ".join(str(x) for x in (cond.get("reason"), cond.get("message")) if x)
        return f"{type_}={cond.get('status')}" + (f" {detail}" if detail else ""), "false"
    return "", "true"


def _parent_name(ref: Mapping[str, Any], namespace: str) -> str:
    return f"{ref.get('namespace') or namespace}/{ref.get('name', '')}"


def gateway_api_verdict(objects: Iterable[Mapping[str, Any]]) -> RouteVerdict | None:
    """Istio's status on the AccessPoint's Gateway API objects (None: it has none).

    True when every Gateway is Programmed and every HTTPRoute/GRPCRoute is Accepted with ResolvedRefs for
    each of its spec.parentRefs, all reported by istiod for the object's current generation; False with
    each object's reason otherwise (a route istiod has not reported on yet counts as not configured).
    """
    objs = sorted((o for o in objects if _is_gateway_api(o)), key=_describe)
    gateways = [o for o in objs if o.get("kind") == "Gateway"]
    routes = [o for o in objs if o.get("kind") in GATEWAY_API_ROUTES]
    if not gateways and not routes:
        return None
    problems: list[str] = []
    for gw in gateways:
        problem, _ = _condition(gw, (gw.get("status") or {}).get("conditions") or [], "Programmed")
        if problem:
            problems.append(f"{_describe(gw)}: {problem}")
    for route in routes:
        namespace = str(_meta(route).get("namespace", ""))
        parents = [p for p in (route.get("status") or {}).get("parents") or []
                   if p.get("controllerName") == ISTIO_GATEWAY_CONTROLLER]
        reported = {_parent_name(p.get("parentRef") or {}, namespace): p for p in parents}
        refs = [_parent_name(r, namespace) for r in (route.get("spec") or {}).get("parentRefs") or []]
        for ref in refs or sorted(reported):
            parent = reported.get(ref)
            if parent is None:
                problems.append(f"{_describe(route)}: parent {ref}: not reported by istiod yet")
                continue
            for type_ in ("Accepted", "ResolvedRefs"):
                problem, _ = _condition(route, parent.get("conditions") or [], type_)
                if problem:
                    problems.append(f"{_describe(route)}: parent {ref}: {problem}")
    if problems:
        return RouteVerdict(configured=False, message="; ".join(problems))
    parts = []
    if gateways:
        parts.append(f"{len(gateways)} Gateway API Gateway(s) Programmed")
    if routes:
        parts.append(f"{len(routes)} route(s) Accepted with references resolved")
    return RouteVerdict(configured=True, message=f"Istio reports {' and '.join(parts)}")


def _istio_route_verdict(objs: list[Mapping[str, Any]], view: IstiodView | None, *, changed_at: float | None,
                         settle: float, now: float) -> RouteVerdict | None:
    """The Istio Gateway part of `route_verdict` (None: the AccessPoint has no Istio Gateway)."""
    if not gateways_of(objs):
        return None
    if view is None or view.reachable is None:
        return RouteVerdict(configured=None, message="istiod not asked yet")
    if not view.reachable:
        return RouteVerdict(configured=None, message=f"istiod cannot be asked: {view.error}")
    selected = selected_proxies(objs, view.pods)
    if selected.unknown:
        why = f": {view.pods_error}" if view.pods_error else ""
        return RouteVerdict(configured=None,
                            message=f"gateway workloads ({', '.join(sorted(selected.unknown))}) not listed yet{why}")
    bound = bound_virtualservices(objs)
    problems: list[str] = list(selected.unmatched)
    synced = 0
    for pid, gws in sorted(selected.proxies.items()):
        vss: list[Mapping[str, Any]] = []
        for gw in gws:
            gw_ns, _, gw_name = gw.partition("/")
            for vs in bound.get((gw_ns, gw_name), []):
                if vs not in vss:
                    vss.append(vs)
        problem = _proxy_problem(pid, view.proxies.get(pid), view.configs.get(pid), vss, changed_at, settle, now)
        if problem is None:
            synced += 1
        else:
            problems.append(problem)
    total = len(selected.proxies)
    if problems:
        return RouteVerdict(configured=False, message="; ".join(problems), synced=synced, total=total)
    return RouteVerdict(configured=True, message=f"routes ACKed by {synced}/{total} gateway proxies",
                        synced=synced, total=total)


# ---- the analyzer ----

class IstioMessage(ApiModel):
    """One Istio analyzer message on a member object (status.validationMessages)."""

    object: str = Field(description="Kind namespace/name of the member object")
    code: str = Field(description="Istio analyzer code, e.g. IST0101")
    level: str = ""
    documentation_url: str | None = Field(default=None, alias="documentationUrl")


class AnalyzerVerdict(ApiModel):
    messages: list[IstioMessage] = Field(default_factory=list)
    # Objects whose messages are for an older generation ("no current verdict").
    stale: list[str] = Field(default_factory=list)


def analyzer_messages(objects: Iterable[Mapping[str, Any]]) -> AnalyzerVerdict:
    out = AnalyzerVerdict()
    for obj in sorted(objects, key=_describe):
        if not _is_istio_kind(obj):
            continue
        status = obj.get("status") or {}
        messages = status.get("validationMessages") or []
        if not messages:
            continue
        generation = _meta(obj).get("generation")
        observed = status.get("observedGeneration")
        try:
            current = observed is not None and generation is not None and int(observed) == int(generation)
        except (TypeError, ValueError):
            current = False
        if not current:
            out.stale.append(_describe(obj))
            continue
        for m in messages:
            code = str(((m or {}).get("type") or {}).get("code") or "")
            if not code:
                continue
            msg = IstioMessage(object=_describe(obj), code=code, level=str(m.get("level") or ""),
                               documentation_url=m.get("documentationUrl"))
            if msg not in out.messages:
                out.messages.append(msg)
    return out


# ---- zones: the primary's istiod, its remotes and the endpoints it knows ----

SYNC_STATES = {"synced": "Synced", "syncing": "Syncing", "timeout": "Timeout", "closed": "Closed"}


class RemoteSync(ApiModel):
    """The zone primary's istiod and one of its remotes."""

    cluster: str
    state: str = Field(description="Synced, Syncing, Timeout, Closed (istiod's /debug/clusterz), Stale (istiod "
                       "says synced, but the remote's API server does not answer the hub), NotRead (no remote "
                       "secret for it in istiod), Unknown (istiod not asked)")
    message: str = ""


class HostEndpoints(ApiModel):
    host: str
    clusters: dict[str, int] = Field(default_factory=dict,
                                     description="cluster ID -> endpoints of the host the zone's istiod knows there")

    @property
    def total(self) -> int:
        return sum(self.clusters.values())


class ZoneVerdict(ApiModel):
    remotes: list[RemoteSync] = Field(default_factory=list)
    endpoints: list[HostEndpoints] | None = None  # None: istiod not read
    missing: list[str] = Field(default_factory=list)  # routed hosts without any endpoint


def fqdn(host: str, namespace: str) -> str:
    """A VirtualService destination host as istiod names the service: a short name is relative to the
    VirtualService's namespace (`name` -> name.ns.svc.cluster.local, `name.ns` -> name.ns.svc.cluster.local)."""
    parts = host.split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.svc.cluster.local"
    if len(parts) == 2:
        return f"{host}.svc.cluster.local"
    return host


def routed_hosts(objects: Iterable[Mapping[str, Any]]) -> list[str]:
    """Destination hosts of the AccessPoint's VirtualServices bound to its Gateways (sorted, FQDN)."""
    out: set[str] = set()
    for vss in bound_virtualservices(objects).values():
        for vs in vss:
            ns = str(_meta(vs).get("namespace", ""))
            spec = vs.get("spec") or {}
            for kind in ("http", "tcp", "tls"):
                for route in spec.get(kind) or []:
                    for dest in route.get("route") or []:
                        host = str((dest.get("destination") or {}).get("host") or "")
                        if host and "*" not in host:
                            out.add(fqdn(host, ns))
    return sorted(out)


def remote_sync(view: IstiodView | None, remotes: Sequence[str], unreachable: Iterable[str]) -> list[RemoteSync]:
    """The primary's istiod and each remote. Istio latches a remote's syncStatus at `synced` once its first
    sync is done (pkg/kube/multicluster/cluster.go HasSynced), and keeps serving the endpoints it last
    saw when the remote's API server goes away; so a remote the hub cannot reach is reported Stale."""
    down = set(unreachable)
    out = []
    for remote in sorted(remotes):
        if view is None or view.clusters is None:
            why = view.error if view is not None and view.error else "the primary's istiod was not read yet"
            out.append(RemoteSync(cluster=remote, state="Unknown", message=why))
            continue
        raw = view.clusters.get(remote)
        if raw is None:
            out.append(RemoteSync(cluster=remote, state="NotRead", message=(
                f"the primary's istiod has no remote secret for {remote} (absent from /debug/clusterz): its "
                "Services and endpoints are not seen")))
        elif raw == "synced" and remote in down:
            out.append(RemoteSync(cluster=remote, state="Stale", message=(
                f"istiod reports {remote} synced, but its API server does not answer the hub: istiod serves "
                "the endpoints it last saw there")))
        else:
            state = SYNC_STATES.get(raw, raw)
            out.append(RemoteSync(cluster=remote, state=state,
                                  message="" if state == "Synced" else f"istiod's sync with {remote}: {raw}"))
    return out


def zone_verdict(objects: Iterable[Mapping[str, Any]], view: IstiodView | None, remotes: Sequence[str],
                 unreachable: Iterable[str] = ()) -> ZoneVerdict | None:
    """The zone's verdict for one AccessPoint; None when there is nothing to judge (no remote and no
    routed host)."""
    hosts = routed_hosts(objects)
    if not hosts and not remotes:
        return None
    verdict = ZoneVerdict(remotes=remote_sync(view, remotes, unreachable))
    if view is not None and view.endpoints is not None and hosts:
        verdict.endpoints = [HostEndpoints(host=h, clusters=dict(sorted(view.endpoints.get(h, {}).items())))
                             for h in hosts]
        verdict.missing = [e.host for e in verdict.endpoints if e.total == 0]
    return verdict
