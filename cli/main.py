"""The `meshfed` command line: controller, local fleet, CRD generation, status, registration, dashboard.

Owns argument parsing and human-readable output; the work is done by federation's modules (and the
dashboard's: `meshfed dashboard` runs dashboard.server). `kubectl meshfed …` (cli.kubectl) reuses the
user-facing subcommands (status, rollout, dashboard). Errors are one line (cli.common.guard); `--debug`
shows tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from cli.common import (
    DEFAULT_FLEET_DIR,
    Parser,
    UsageError,
    UserError,
    add_hub_options,
    guard,
    host_port,
    http_url,
    hub_config,
    label_key_problem,
    label_pair,
    label_value,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run,
    table,
)
from cli.rollout import add_rollout_commands, render_rollout
from placement.models import not_placed_beyond

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# ---- controller ----

def cmd_controller(args: argparse.Namespace) -> None:
    from federation import operator, telemetry

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf").setLevel(logging.WARNING if args.log_level.upper() != "DEBUG" else logging.DEBUG)
    if args.kubeconfig:
        from federation.kube import load_kubeconfig

        load_kubeconfig(args.kubeconfig, args.context)  # a bad file or context fails here, in one line
    else:
        from federation.kube import InClusterError, in_cluster_config

        if args.context:
            raise UsageError("--context needs --kubeconfig (in a cluster the controller uses its ServiceAccount)")
        try:
            in_cluster_config()
        except InClusterError as exc:
            raise UserError(str(exc)) from None
    telemetry.setup(args.otel)
    if args.shards < 0:
        raise UsageError("--shards must be 0 (no Leases: a single process) or more")
    try:
        from federation.shards import LeaseTiming

        LeaseTiming(args.lease_duration, args.renew_deadline, args.retry_period)
    except ValueError as err:
        raise UsageError(str(err)) from None
    operator.run(args.kubeconfig, args.hub_id, context=args.context, workers=args.workers,
                 probe_interval=args.probe_interval,
                 resync_seconds=args.resync, liveness=args.liveness, istiod_interval=args.istiod_interval,
                 istiod_fast_interval=args.istiod_fast_interval, route_settle=args.route_settle,
                 shards=args.shards, identity=args.identity,
                 lease_namespace=args.lease_namespace, lease_duration=args.lease_duration,
                 renew_deadline=args.renew_deadline, retry_period=args.retry_period,
                 http_address=args.http_address, verify_interval=args.verify_interval)


# ---- fleet ----

def cmd_fleet(args: argparse.Namespace) -> None:
    from fleet import Fleet

    if args.action == "build":
        from fleet import apiserver_binary, istio_binaries

        print(f"kube-apiserver binary: {apiserver_binary()}")
        for name, path in istio_binaries().items():
            print(f"{name}: {path}")
        return
    fleet = Fleet(Path(args.dir))
    if args.action == "up":
        topology, remotes = None, None
        if args.remotes and fleet.state is None:  # a fleet that exists restarts in its own shape
            from fleet.core import default_topology, with_remotes

            try:
                topology, remotes = with_remotes(default_topology(args.members, args.regions, args.zones),
                                                 args.remotes)
            except ValueError as err:
                raise UserError(str(err)) from None
        member_crds = [k for k in args.member_crds.split(",") if k] if args.member_crds is not None else None
        try:
            state = asyncio.run(fleet.up(members=args.members, regions=args.regions, zones=args.zones,
                                         istio=args.istio, backends=args.backends, topology=topology,
                                         remotes=remotes, dense=args.dense, member_crds=member_crds,
                                         start_interval=args.start_interval))
        except ValueError as err:  # an unknown kind, or --member-crds with --istio: nothing was started
            raise UserError(str(err)) from None
        print(table([["CLUSTER", "ROLE", "REGION", "ZONE", "SERVER", "STATE"], *map(list, fleet.status_rows())]))
        if args.dense:
            costs = fleet.costs()
            print()
            print(table([["API SERVER", "READY AFTER", "RSS"], *(
                [name, f"{ready:.1f}s" if ready is not None else "-", f"{rss:.0f} MiB" if rss is not None else "-"]
                for name, ready, rss in costs)]))
            members = [rss for name, _, rss in costs if name != "hub" and rss is not None]
            if members:
                print(f"members: {len(members)}, RSS {sum(members):.0f} MiB in all, {sum(members) / len(members):.0f} "
                      f"MiB each on average (max {max(members):.0f})")
        if state.istio:
            print()
            print(table([["MEMBER", "ISTIOD", "GATEWAY ADMIN", "NETNS", "ECHO BACKENDS"],
                         *map(list, fleet.istio_rows())]))
        print(f"\nPoint kubectl at the hub:  export KUBECONFIG={state.hub.kubeconfig}")
    elif args.action == "down":
        fleet.down()
    elif args.action == "status":
        rows = fleet.status_rows()
        if not rows:
            print(f"no fleet in {args.dir} (run: meshfed fleet up)")
            return
        print(table([["CLUSTER", "ROLE", "REGION", "ZONE", "SERVER", "STATE"], *map(list, rows)]))
        if fleet.istio_rows():
            print()
            print(table([["MEMBER", "ISTIOD", "GATEWAY ADMIN", "NETNS", "ECHO BACKENDS"],
                         *map(list, fleet.istio_rows())]))
    elif args.action in ("stop-gateway", "start-gateway", "stop-istiod", "start-istiod"):
        if fleet.state is None or not args.cluster or not fleet.state.istio:
            raise UserError(f"fleet {args.action} needs a running fleet with Istio (in {args.dir}) and a member name")
        _fleet_member(fleet, args)
        verb, part = args.action.split("-")
        if verb == "stop":
            (fleet.stop_gateway if part == "gateway" else fleet.stop_istiod)(args.cluster)
        else:
            asyncio.run(fleet.start_gateway(args.cluster) if part == "gateway" else fleet.start_istiod(args.cluster))
        print(f"{args.cluster}: {part} {verb}ped" if verb == "stop" else f"{args.cluster}: {part} started")
    elif args.action == "echo-mode":
        if fleet.state is None or not fleet.state.istio or not args.cluster or not args.mode:
            raise UserError("fleet echo-mode needs a running fleet with Istio, a member name and --mode")
        _fleet_member(fleet, args)
        asyncio.run(fleet.set_echo_mode(args.mode, cluster=args.cluster))
        print(f"{args.cluster}: echo backends {args.mode}")
    elif args.action == "publish-backends":
        if fleet.state is None or not fleet.state.istio or not args.namespace or not args.host:
            raise UserError("fleet publish-backends needs a running fleet with Istio, --namespace and --host")
        asyncio.run(fleet.publish_backends(args.namespace, args.host, service=args.service, port=args.port))
        print(f"echo backends of every member published as {args.host} (ServiceEntry {args.namespace}/{args.service}"
              f" + WorkloadEntries) on every member")
    elif args.action == "kubeconfig":
        if fleet.state is None:
            raise UserError(f"no fleet in {args.dir} (run: meshfed fleet up)")
        target = fleet.state.hub if not args.cluster else next(
            (c for c in fleet.state.clusters() if c.name == args.cluster), None)
        if target is None:
            names = ", ".join(c.name for c in fleet.state.clusters())
            raise UserError(f"no cluster {args.cluster!r} in the fleet in {args.dir} (clusters: {names})")
        print(target.kubeconfig)
    elif args.action in ("stop-member", "start-member"):
        if fleet.state is None or not args.cluster:
            raise UserError(f"fleet {args.action} needs a running fleet (in {args.dir}) and a member name")
        member = _fleet_member(fleet, args)
        if args.action == "stop-member":
            member.stop()
        else:
            from fleet import apiserver_binary

            member.start(apiserver_binary(quiet=True))
            asyncio.run(member.wait_ready())
        fleet.save()
        print(f"{args.cluster}: {'stopped' if args.action == 'stop-member' else 'started'}")


def _fleet_member(fleet: Any, args: argparse.Namespace) -> Any:
    """The fleet member named on the command line, or one line listing the members."""
    member = next((m for m in fleet.state.members if m.name == args.cluster), None)
    if member is None:
        names = ", ".join(m.name for m in fleet.state.members) or "none"
        raise UserError(f"no member {args.cluster!r} in the fleet in {args.dir} (members: {names})")
    return member


# ---- sds ----

def cmd_sds(argv: list[str]) -> None:
    """`meshfed sds …`: federation.sds.main parses its own options (--listen, --kubeconfig | --dir, …)."""
    from federation.sds import main as sds_main

    sys.exit(sds_main(argv))


# ---- crds ----

def cmd_crds(args: argparse.Namespace) -> None:
    from federation.crdgen import all_crds

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for crd in all_crds():
        path = out / f"{crd['metadata']['name']}.yaml"
        path.write_text("# Generated by `meshfed crds` from the pydantic models; do not edit.\n"
                        + yaml.safe_dump(crd, sort_keys=False))
        print(f"wrote {path}")


# ---- status ----

def probe_cell(record: dict[str, Any] | None) -> str:
    """`Healthy 200 4ms`, `Unhealthy 503 3ms`, `Pending TimedOut 2000ms` (the PROBE column)."""
    if not record or not record.get("last"):
        return "-"
    last = record["last"]
    answer = str(last["code"]) if last.get("code") is not None else last.get("outcome", "?")
    return f"{record.get('verdict', '?')} {answer} {last.get('latencyMs', 0)}ms"


def probe_line(last: dict[str, Any]) -> str:
    """`GET https://shop.example/healthz via 127.100.1.1:443 -> 503 in 3 ms at ...`."""
    where = f"GET {last.get('url', '')}" + (f" via {last['via']}" if last.get("via") else "")
    if last.get("code") is not None:
        answer = f"{last['code']} in {last.get('latencyMs', 0)} ms"
    else:
        answer = f"{last.get('outcome')}: {last.get('message', '')}"
    return f"{where} -> {answer}" + (f" at {last['at']}" if last.get("at") else "")


def render_status(obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    meta = obj["metadata"]
    summary = status.get("summary") or {}
    lines = [
        f"AccessPoint {meta['namespace']}/{meta['name']}  generation {meta.get('generation')}  "
        f"observed {status.get('observedGeneration', '-')}  revision {status.get('revision', '-')}",
        f"Phase: {summary.get('phase', '-')}   Clusters ready: {summary.get('clusters', '-')}   "
        f"Routes: {summary.get('routes') or '-'}   Endpoints: {summary.get('endpoints') or '-'}   "
        f"FQDN: {status.get('fqdn') or '-'}   Cert: {status.get('certificate') or '-'}",
        "",
        "Conditions:",
    ]
    conditions = status.get("conditions") or []
    type_width = max((len(c["type"]) for c in conditions), default=0)
    reason_width = max([20, *(len(c.get("reason", "")) for c in conditions)])
    for c in conditions:
        lines.append(f"  {c['type']:<{type_width}} {c['status']:<8} {c.get('reason', ''):<{reason_width}} "
                     f"{c.get('message', '')}".rstrip())
    rows = [["CLUSTER", "REGION", "ZONE", "STATE", "REVISION", "OBJECTS", "VIP", "ROUTES", "PROXIES", "ISTIO",
             "PROBE", "LAST ERROR"]]
    details: list[str] = []
    probes: list[str] = []
    for c in status.get("clusters") or []:
        evaluated = c.get("routeMessage") is not None
        routes = {True: "True", False: "False", None: "Unknown"}[c.get("routeConfigured")] if evaluated else "-"
        messages = c.get("istioMessages") or []
        stale = c.get("noCurrentVerdict") or []
        istio = ",".join(sorted({m["code"] for m in messages})) or ("?" if stale else "-")
        rows.append([c["name"], c.get("region", ""), c.get("zone", ""), c["state"], c.get("revision") or "-",
                     str(c.get("objects", 0)), c.get("vip") or "-", routes,
                     (c.get("gatewayProxies") or "-") + (" synced" if c.get("gatewayProxies") else ""), istio,
                     probe_cell(c.get("probe")), (c.get("lastError") or "")[:100]])
        last = (c.get("probe") or {}).get("last")
        if last:
            probes.append(f"  {c['name']}: {probe_line(last)}")
        if evaluated and c.get("routeConfigured") is not True:
            details.append(f"  {c['name']}: routes: {c['routeMessage']}")
        for m in messages:
            details.append(f"  {c['name']}: {m['object']}: {m['code']} {m.get('level', '')}  "
                           f"{m.get('documentationUrl') or ''}".rstrip())
        for obj in stale:
            details.append(f"  {c['name']}: {obj}: no current verdict (Istio's messages are for an older generation)")
    lines += ["", table(rows) if len(rows) > 1 else "(no clusters)"]
    zones = [zone_line(c) for c in status.get("clusters") or [] if c.get("remotes") or c.get("endpoints")]
    if zones:
        lines += ["", "Zones (what each zone primary's istiod knows):", *zones]
    if details:
        lines += ["", "Istio:", *details]
    if probes:
        lines += ["", "Last probes:", *probes]
    placement = status.get("placement") or {}
    rejected = placement.get("rejected") or []
    if rejected:
        lines += ["", "Not placed:"] + [f"  {r['cluster']}: {r['reason']}" for r in rejected]
        more = not_placed_beyond(placement)
        if more:
            lines.append(f"  {more}")

    rollout = render_rollout(status)
    if rollout:
        lines.append(rollout)
    return "\n".join(lines)


def zone_line(c: dict[str, Any]) -> str:
    """One zone primary: its istiod's sync with each remote, and the endpoints of each routed host per cluster."""
    remotes = ", ".join(f"{r['cluster']} {r['state']}" + (f" ({r['message']})" if r.get("message") else "")
                        for r in c.get("remotes") or []) or "none"
    hosts = "; ".join(f"{e['host']}: " + (", ".join(f"{k}={v}" for k, v in sorted((e.get("clusters") or {}).items()))
                                           or "NO ENDPOINT")
                      for e in c.get("endpoints") or []) or "not read"
    return f"  {c['name']} (zone {c.get('zone', '')}): remotes {remotes}; endpoints {hosts}"


def cmd_status(args: argparse.Namespace) -> None:
    async def work(client: Any) -> str:
        obj = await client.get(f"/apis/meshfed.io/v1alpha1/namespaces/{args.namespace}/accesspoints/{args.name}")
        if obj is None:
            raise UserError(f"AccessPoint {args.namespace}/{args.name} not found "
                            f"(list them with: kubectl get accesspoints -A)")
        return render_status(obj)

    run(args, work)


# ---- dashboard ----

def cmd_dashboard(args: argparse.Namespace) -> None:
    from dashboard.server import serve
    from federation.kube import ApiError

    def ready(url: str, user: str) -> None:
        print(f"meshfed dashboard for {user} (acting with your kubeconfig; Ctrl-C stops it):\n  {url}", flush=True)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        namespace = args.namespace  # "" = every namespace you may list, not the context's (like Kiali)
        asyncio.run(serve(hub_config(args), namespace=namespace, address=args.address, port=args.port,
                          open_browser=not args.no_browser, ready=ready))
    except KeyboardInterrupt:
        pass
    except ApiError as err:
        sys.exit(f"meshfed: dashboard: hub refused or unreachable ({err.status} {err.reason}): {err.message}")
    except OSError as err:
        sys.exit(f"meshfed: dashboard: cannot listen on {args.address}:{args.port}: {err}")


# ---- register ----

def taint(text: str) -> dict[str, str]:
    """`--taint KEY[=VALUE][:EFFECT]` (kubectl taint's syntax; EFFECT NoSchedule, the default, or NoExecute)."""
    body, _, effect = text.partition(":")
    effect = effect or "NoSchedule"
    if effect not in ("NoSchedule", "NoExecute"):
        raise argparse.ArgumentTypeError(f"taint {text!r}: the effect must be NoSchedule or NoExecute")
    key, _, value = body.partition("=")
    problem = label_key_problem(key)
    if problem:
        raise argparse.ArgumentTypeError(f"taint {text!r}: {problem}")
    if value:
        label_pair(f"x={value}")
    return {"key": key, "value": value, "effect": effect} if value else {"key": key, "effect": effect}


def istiod_service(text: str) -> dict[str, Any]:
    """`--istiod-service [NAMESPACE/]NAME[:PORT]` (default istio-system/istiod:15014)."""
    rest, _, port = text.partition(":")
    namespace, _, name = rest.rpartition("/")
    out: dict[str, Any] = {"namespace": namespace or "istio-system", "name": name or "istiod"}
    if port:
        out["port"] = positive_int(port)
    return out


def gateway_stats(text: str) -> dict[str, Any]:
    """`--gateway-stats URL` (an Envoy admin the hub reaches) or `pods[:NAMESPACE[:K=V,…[:PORT]]]` (the
    gateway pods through the member API server; defaults istio-system, istio=ingressgateway, 15000)."""
    if text.startswith(("http://", "https://")):
        return {"url": text}
    kind, *parts = text.split(":")
    if kind != "pods" or len(parts) > 3:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an http(s) URL nor pods[:NAMESPACE[:K=V,...[:PORT]]]")
    pods: dict[str, Any] = {}
    if parts and parts[0]:
        pods["namespace"] = parts[0]
    if len(parts) > 1 and parts[1]:
        pods["selector"] = dict(label_pair(kv) for kv in parts[1].split(","))
    if len(parts) > 2 and parts[2]:
        pods["port"] = positive_int(parts[2])
    return {"pods": pods}


def member_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The MemberCluster spec fields the flags set, checked against the API model (one line naming the flag)."""
    from pydantic import ValidationError

    from placement.models import MemberClusterSpec

    extra: dict[str, Any] = {}
    if args.istiod_url and args.istiod_service:
        raise UsageError("pass one of --istiod-url and --istiod-service")
    if args.istiod_url:
        extra["istiod"] = {"url": args.istiod_url}
    elif args.istiod_service:
        extra["istiod"] = {"service": args.istiod_service}
    if args.gateway_stats:
        extra["gatewayStats"] = args.gateway_stats
    if args.taint:
        extra["taints"] = args.taint
    flags = {"istiod": "--istiod-url/--istiod-service", "gatewayStats": "--gateway-stats", "taints": "--taint",
             "region": "--region", "zone": "--zone"}
    try:
        MemberClusterSpec.model_validate({"kubeconfigSecretRef": {"name": "x", "namespace": "x", "key": "x"},
                                          "region": args.region, "zone": args.zone, **extra})
    except ValidationError as err:
        first = err.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        message = (f"{first['input']!r} is not an http(s)://HOST[:PORT] base URL"
                   if first["type"] == "string_pattern_mismatch" else first["msg"])
        raise UsageError(f"{flags.get(field, field)}: {message}") from None
    return extra


def cmd_register(args: argparse.Namespace) -> None:
    from federation.kube import ApiError, KubeClient, flatten, load_kubeconfig, portability_problem
    from federation.registration import register_member

    labels = dict(args.label)
    extra = member_spec(args)
    member = flatten(load_kubeconfig(args.member_kubeconfig, args.member_context, flag="--member-kubeconfig"))
    problem = portability_problem(member)
    if problem:
        raise UserError(f"--member-kubeconfig {args.member_kubeconfig} (context {member.context!r}): {problem}")
    hub_cfg = hub_config(args)

    async def go() -> None:
        probe = await KubeClient.from_kubeconfig(member, args.cluster, attempts=1)
        try:
            version = await probe.request("GET", "/version", timeout=5, retry=False)
        except ApiError as err:
            raise UserError(f"member cluster {args.cluster} ({probe.host}, context {member.context!r} of "
                            f"{args.member_kubeconfig}): "
                            + (f"unreachable: {err.message}" if err.status == 0 else f"{err.status} {err.message}")
                            + " (check --member-kubeconfig/--member-context)") from None
        finally:
            await probe.close()
        print(f"{args.cluster}: reachable, Kubernetes {version.get('gitVersion')}")
        hub = await KubeClient.from_kubeconfig(hub_cfg, "hub", attempts=1)
        try:
            await register_member(hub, args.cluster, yaml.safe_dump(member.as_dict(), sort_keys=False),
                                  args.region, args.zone, labels, istiod=extra.get("istiod"),
                                  gateway_stats=extra.get("gatewayStats"), taints=extra.get("taints"))
        except ApiError as err:
            from cli.common import api_error_line

            raise UserError(api_error_line(err, hub.host, hub_cfg.context)) from None
        finally:
            await hub.close()
        parts = [f"region {args.region}", f"zone {args.zone}"]
        if "istiod" in extra:
            parts.append("istiod " + (extra["istiod"].get("url") or "service {namespace}/{name}".format(
                **extra["istiod"]["service"])))
        if "gatewayStats" in extra:
            parts.append("gateway stats " + (extra["gatewayStats"].get("url") or "from the gateway pods"))
        if "taints" in extra:
            parts.append(f"{len(extra['taints'])} taint(s)")
        print(f"registered MemberCluster {args.cluster} ({', '.join(parts)})")
        if "istiod" not in extra:
            print("note: without --istiod-url/--istiod-service the cluster's routeConfigured is not evaluated",
                  file=sys.stderr)

    asyncio.run(go())


def build_parser(prog: str = "meshfed", plugin: bool = False) -> argparse.ArgumentParser:
    parser = Parser(prog=prog, description="meshfed: federated Istio access points")
    parser.add_argument("--debug", action="store_true", help="show a Python traceback on errors (any position)")
    sub = parser.add_subparsers(dest="command", required=True)

    status = sub.add_parser("status", help="per-cluster table of an AccessPoint")
    status.add_argument("name")
    add_hub_options(status)
    status.set_defaults(func=cmd_status)

    add_rollout_commands(sub)
    dash = sub.add_parser("dashboard", help="the fleet and its AccessPoints in a browser (a local web UI acting "
                          "with your kubeconfig's identity)")
    dash.add_argument("-n", "--namespace", default="",
                      help="follow only this namespace's AccessPoints (default: all you may list)")
    add_hub_options(dash, namespaced=False)
    dash.add_argument("--address", default="127.0.0.1", help="listen address (default: loopback only)")
    dash.add_argument("--port", type=int, default=0, help="listen port (default: a free one)")
    dash.add_argument("--no-browser", action="store_true", help="print the URL, do not open a browser")
    dash.set_defaults(func=cmd_dashboard)
    if plugin:
        return parser

    ctl = sub.add_parser("controller", help="run the hub controller")
    ctl.add_argument("--kubeconfig", help="hub kubeconfig (default: in-cluster service account)")
    ctl.add_argument("--context", help="context of --kubeconfig (default: its current-context)")
    ctl.add_argument("--hub-id", default=os.environ.get("MESHFED_HUB_ID", "meshfed-hub"), type=label_value,
                     help="identity written into owner labels on members")
    ctl.add_argument("--workers", type=positive_int, default=16)
    ctl.add_argument("--probe-interval", type=positive_float, default=5.0)
    ctl.add_argument("--resync", type=positive_float, default=600.0, help="safety-net resync period (seconds)")
    ctl.add_argument("--istiod-interval", type=positive_float, default=10.0,
                     help="seconds between two /debug/syncz reads of a member's istiod when nothing is in flight")
    ctl.add_argument("--istiod-fast-interval", type=positive_float, default=0.5,
                     help="seconds between two /debug/syncz reads while a change is in flight")
    ctl.add_argument("--verify-interval", type=float, default=600.0,
                     help="seconds between comparisons of each member cache with the member, a LIST per kind "
                          "(0: off); bounds how long a cache error can last")
    ctl.add_argument("--route-settle", type=float, default=10.0,
                     help="after a write istiod pushes nothing for, routeConfigured may turn True this much later")
    ctl.add_argument("--otel", choices=["none", "console", "otlp"], default=None)
    ctl.add_argument("--liveness", type=http_url, help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    ctl.add_argument("--http-address", default=os.environ.get("MESHFED_HTTP_ADDRESS"), type=host_port,
                     help="serve /metrics (Prometheus), /healthz and /readyz here, e.g. 0.0.0.0:8081")
    ctl.add_argument("--shards", type=int, default=32,
                     help="virtual shards held through hub Leases, so several replicas share the work "
                     "(0: no Leases, this process does everything)")
    ctl.add_argument("--identity", default=None, help="replica identity in the Leases (default: POD_NAME or "
                     "host name, plus a random suffix)")
    ctl.add_argument("--lease-namespace", default="meshfed-system", help="hub namespace of the Leases")
    ctl.add_argument("--lease-duration", type=int, default=15,
                     help="seconds a Lease lasts without renewal before another replica may take it")
    ctl.add_argument("--renew-deadline", type=float, default=10.0,
                     help="seconds after its last successful renewal a replica stops writing for a Lease "
                     "(< --lease-duration: fencing)")
    ctl.add_argument("--retry-period", type=float, default=2.0, help="seconds between Lease rounds")
    ctl.add_argument("--log-level", default="info", type=str.lower, choices=LOG_LEVELS)
    ctl.set_defaults(func=cmd_controller)

    fleet = sub.add_parser("fleet", help="local fleet of real kube-apiservers (hub + members)")
    fleet.add_argument("action", choices=["build", "up", "down", "status", "kubeconfig", "stop-member", "start-member",
                                          "stop-gateway", "start-gateway", "stop-istiod", "start-istiod",
                                          "echo-mode", "publish-backends"])
    fleet.add_argument("cluster", nargs="?")
    fleet.add_argument("--dir", default=str(DEFAULT_FLEET_DIR))
    fleet.add_argument("--members", type=positive_int, default=3)
    fleet.add_argument("--regions", type=positive_int, default=2)
    fleet.add_argument("--zones", type=positive_int, default=3)
    fleet.add_argument("--istio", action="store_true",
                       help="every member runs istiod + a gateway Envoy; VIPs forward to it (off: API servers only)")
    fleet.add_argument("--backends", type=positive_int, default=1, help="echo backends per member (with --istio)")
    fleet.add_argument("--dense", action="store_true",
                       help="new member API servers tuned for density (watch cache and priority-and-fairness off, "
                       "GOGC=50, GOMAXPROCS=1): many members on one machine; prints startup time and RSS per API "
                       "server")
    fleet.add_argument("--start-interval", metavar="SECONDS", type=non_negative_float, default=0.0,
                       help="up: start the API servers this many seconds apart (default 0: together). Each one's "
                       "CRD informer resyncs every 5 minutes from its start; many members started together burst "
                       "together (a few seconds apart is enough: the scale bench uses 6)")
    fleet.add_argument("--member-crds", metavar="KIND[,KIND...]",
                       help="up: only the CRDs of these Istio and Gateway API kinds (KIND or KIND.GROUP) on members "
                       "(default: all); "
                       "each CRD costs every member API server an OpenAPI rebuild at every 5-minute resync. A "
                       "member is Ready with Gateway,VirtualService,DestinationRule,ServiceEntry,WorkloadEntry. "
                       "API-only fleets (not with --istio)")
    fleet.add_argument("--remotes", type=non_negative_int, default=0,
                       help="the first N members get an Istio remote in their zone (<member>-remote, registered "
                       "with spec.mesh.primary): a zone of a primary + a remote, the zone's backends in the remote")
    fleet.add_argument("--mode", choices=["ok", "fail", "hang", "down"], help="echo-mode: what the backends do")
    fleet.add_argument("--namespace", help="publish-backends: namespace of the ServiceEntry/WorkloadEntries")
    fleet.add_argument("--host", help="publish-backends: the host they serve, e.g. checkout.payments.svc.cluster.local")
    fleet.add_argument("--service", default="echo", help="publish-backends: ServiceEntry name")
    fleet.add_argument("--port", type=positive_int, default=8080, help="publish-backends: service port")
    fleet.set_defaults(func=cmd_fleet)

    sds = sub.add_parser("sds", add_help=False,
                         help="serve certificates to Envoy over SDS (meshfed sds --help for options)")
    sds.set_defaults(func=lambda _args: cmd_sds([]))  # main() hands `sds …` over before parsing

    crds = sub.add_parser("crds", help="write the CRDs generated from the models")
    crds.add_argument("--out", default="deploy/crds")
    crds.set_defaults(func=cmd_crds)

    reg = sub.add_parser("register", help="register a member cluster on the hub")
    reg.add_argument("cluster")
    reg.add_argument("--member-kubeconfig", required=True,
                     help="the member's kubeconfig; its certificates are embedded (kubectl config view --flatten "
                     "--minify), exec plugins, auth providers and token files are refused (the controller's Pod "
                     "cannot use them)")
    reg.add_argument("--member-context", help="context of --member-kubeconfig (default: its current-context)")
    reg.add_argument("--region", required=True)
    reg.add_argument("--zone", required=True)
    reg.add_argument("--label", action="append", default=[], type=label_pair, help="KEY=VALUE, repeatable")
    ist = reg.add_mutually_exclusive_group()
    ist.add_argument("--istiod-url", help="istiod's debug server as the hub reaches it directly, e.g. "
                     "http://10.0.0.5:15014 (spec.istiod.url)")
    ist.add_argument("--istiod-service", nargs="?", const="istio-system/istiod:15014", type=istiod_service,
                     metavar="[NAMESPACE/]NAME[:PORT]", help="istiod's Service, reached through the member API "
                     "server's service proxy (spec.istiod.service; default istio-system/istiod:15014)")
    reg.add_argument("--gateway-stats", type=gateway_stats, metavar="URL|pods[:NAMESPACE[:K=V,...[:PORT]]]",
                     help="where Analysis gates read the gateway Envoy's stats: an admin URL the hub reaches, or "
                     "the gateway pods through the member API server (spec.gatewayStats)")
    reg.add_argument("--taint", action="append", default=[], type=taint, metavar="KEY[=VALUE][:EFFECT]",
                     help="spec.taints entry, repeatable (EFFECT: NoSchedule (default) or NoExecute)")
    add_hub_options(reg, namespaced=False)
    reg.set_defaults(func=cmd_register)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sds"]:
        guard("meshfed sds", argv[1:], cmd_sds)
    guard("meshfed", argv, _run)


def _run(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
