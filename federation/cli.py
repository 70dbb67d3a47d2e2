"""The `meshfed` command line: controller, local fleet, CRD generation, status, registration.

Owns argument parsing and human-readable output; the work is done by federation's modules.
`kubectl meshfed …` (federation/kubectl_plugin.py) reuses the user-facing subcommands.
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

DEFAULT_FLEET_DIR = Path(os.environ.get("MESHFED_FLEET_DIR", Path(__file__).resolve().parents[1] / ".fleet"))


def _hub_kubeconfig(args: argparse.Namespace) -> str:
    path = getattr(args, "kubeconfig", None) or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    path = path.split(os.pathsep)[0]
    if not os.path.exists(path):
        sys.exit(f"meshfed: no kubeconfig for the hub at {path!r} (use --kubeconfig or set KUBECONFIG)")
    return path


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


# ---- controller ----

def cmd_controller(args: argparse.Namespace) -> None:
    from federation import operator, telemetry

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf").setLevel(logging.WARNING if args.log_level.upper() != "DEBUG" else logging.DEBUG)
    if not args.kubeconfig:
        from federation.kube import InClusterError, in_cluster_config

        try:
            in_cluster_config()
        except InClusterError as exc:
            sys.exit(f"meshfed controller: {exc}")
    telemetry.setup(args.otel)
    if args.shards < 0:
        sys.exit("meshfed: --shards must be 0 (no Leases: a single process) or more")
    try:
        from federation.shards import LeaseTiming

        LeaseTiming(args.lease_duration, args.renew_deadline, args.retry_period)
    except ValueError as err:
        sys.exit(f"meshfed: {err}")
    operator.run(args.kubeconfig, args.hub_id, workers=args.workers, probe_interval=args.probe_interval,
                 resync_seconds=args.resync, liveness=args.liveness, istiod_interval=args.istiod_interval,
                 istiod_fast_interval=args.istiod_fast_interval, route_settle=args.route_settle,
                 shards=args.shards, identity=args.identity,
                 lease_namespace=args.lease_namespace, lease_duration=args.lease_duration,
                 renew_deadline=args.renew_deadline, retry_period=args.retry_period,
                 http_address=args.http_address, verify_interval=args.verify_interval)


# ---- fleet ----

def cmd_fleet(args: argparse.Namespace) -> None:
    from federation.fleet import Fleet

    if args.action == "build":
        from federation.fleet import apiserver_binary, istio_binaries

        print(f"kube-apiserver binary: {apiserver_binary()}")
        for name, path in istio_binaries().items():
            print(f"{name}: {path}")
        return
    fleet = Fleet(Path(args.dir))
    if args.action == "up":
        state = asyncio.run(fleet.up(members=args.members, regions=args.regions, zones=args.zones,
                                     istio=args.istio, backends=args.backends))
        print(table([["CLUSTER", "ROLE", "REGION", "ZONE", "SERVER", "STATE"], *map(list, fleet.status_rows())]))
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
            sys.exit(f"meshfed: fleet {args.action} needs a running fleet with Istio and a member name")
        verb, part = args.action.split("-")
        if verb == "stop":
            (fleet.stop_gateway if part == "gateway" else fleet.stop_istiod)(args.cluster)
        else:
            asyncio.run(fleet.start_gateway(args.cluster) if part == "gateway" else fleet.start_istiod(args.cluster))
        print(f"{args.cluster}: {part} {verb}ped" if verb == "stop" else f"{args.cluster}: {part} started")
    elif args.action == "echo-mode":
        if fleet.state is None or not args.cluster or not args.mode:
            sys.exit("meshfed: fleet echo-mode needs a running fleet with Istio, a member name and --mode")
        asyncio.run(fleet.set_echo_mode(args.mode, cluster=args.cluster))
        print(f"{args.cluster}: echo backends {args.mode}")
    elif args.action == "publish-backends":
        if fleet.state is None or not fleet.state.istio or not args.namespace or not args.host:
            sys.exit("meshfed: fleet publish-backends needs a running fleet with Istio, --namespace and --host")
        asyncio.run(fleet.publish_backends(args.namespace, args.host, service=args.service, port=args.port))
        print(f"echo backends of every member published as {args.host} (ServiceEntry {args.namespace}/{args.service}"
              f" + WorkloadEntries) on every member")
    elif args.action == "kubeconfig":
        if fleet.state is None:
            sys.exit(f"meshfed: no fleet in {args.dir} (run: meshfed fleet up)")
        target = fleet.state.hub if not args.cluster else next(
            (c for c in fleet.state.clusters() if c.name == args.cluster), None)
        if target is None:
            sys.exit(f"meshfed: no cluster {args.cluster!r} in the fleet")
        print(target.kubeconfig)
    elif args.action in ("stop-member", "start-member"):
        if fleet.state is None or not args.cluster:
            sys.exit("meshfed: fleet stop-member/start-member need a running fleet and a cluster name")
        member = fleet.state.member(args.cluster)
        if args.action == "stop-member":
            member.stop()
        else:
            from federation.fleet import apiserver_binary

            member.start(apiserver_binary(quiet=True))
            asyncio.run(member.wait_ready())
        fleet.save()
        print(f"{args.cluster}: {'stopped' if args.action == 'stop-member' else 'started'}")


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

async def _get_accesspoint(args: argparse.Namespace) -> dict[str, Any]:
    from federation.kube import KubeClient

    client = await KubeClient.from_kubeconfig_file(_hub_kubeconfig(args), "hub")
    try:
        obj = await client.get(f"/apis/meshfed.io/v1alpha1/namespaces/{args.namespace}/accesspoints/{args.name}")
    finally:
        await client.close()
    if obj is None:
        sys.exit(f"meshfed: AccessPoint {args.namespace}/{args.name} not found "
                 f"(list them with: kubectl get accesspoints -A)")
    return obj


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
        f"Routes: {summary.get('routes') or '-'}   "
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
    if details:
        lines += ["", "Istio:", *details]
    if probes:
        lines += ["", "Last probes:", *probes]
    rejected = (status.get("placement") or {}).get("rejected") or []
    if rejected:
        lines += ["", "Not placed:"] + [f"  {r['cluster']}: {r['reason']}" for r in rejected]
    from federation.kubectl_plugin import render_rollout

    rollout = render_rollout(status)
    if rollout:
        lines.append(rollout)
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> None:
    print(render_status(asyncio.run(_get_accesspoint(args))))


# ---- register ----

def cmd_register(args: argparse.Namespace) -> None:
    from federation.fleet import register_member
    from federation.kube import KubeClient

    labels = dict(kv.split("=", 1) for kv in args.label)
    text = Path(args.member_kubeconfig).read_text()

    async def go() -> None:
        probe = await KubeClient.from_kubeconfig_dict(yaml.safe_load(text), args.cluster, attempts=1)
        try:
            version = await probe.request("GET", "/version", timeout=5, retry=False)
            print(f"{args.cluster}: reachable, Kubernetes {version.get('gitVersion')}")
        finally:
            await probe.close()
        hub = await KubeClient.from_kubeconfig_file(_hub_kubeconfig(args), "hub")
        try:
            await register_member(hub, args.cluster, text, args.region, args.zone, labels)
        finally:
            await hub.close()
        print(f"registered MemberCluster {args.cluster} (region {args.region}, zone {args.zone})")

    asyncio.run(go())


def build_parser(prog: str = "meshfed", plugin: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="meshfed: federated Istio access points")
    sub = parser.add_subparsers(dest="command", required=True)

    status = sub.add_parser("status", help="per-cluster table of an AccessPoint")
    status.add_argument("name")
    status.add_argument("-n", "--namespace", default="default")
    status.add_argument("--kubeconfig")
    status.set_defaults(func=cmd_status)

    from federation.kubectl_plugin import add_rollout_commands

    add_rollout_commands(sub)
    if plugin:
        return parser

    ctl = sub.add_parser("controller", help="run the hub controller")
    ctl.add_argument("--kubeconfig", help="hub kubeconfig (default: in-cluster service account)")
    ctl.add_argument("--hub-id", default=os.environ.get("MESHFED_HUB_ID", "meshfed-hub"),
                     help="identity written into owner labels on members")
    ctl.add_argument("--workers", type=int, default=16)
    ctl.add_argument("--probe-interval", type=float, default=5.0)
    ctl.add_argument("--resync", type=float, default=600.0, help="safety-net resync period (seconds)")
    ctl.add_argument("--istiod-interval", type=float, default=10.0,
                     help="seconds between two /debug/syncz reads of a member's istiod when nothing is in flight")
    ctl.add_argument("--istiod-fast-interval", type=float, default=0.5,
                     help="seconds between two /debug/syncz reads while a change is in flight")
    ctl.add_argument("--route-settle", type=float, default=10.0,
                     help="after a write istiod pushes nothing for, routeConfigured may turn True this much later")
    ctl.add_argument("--verify-interval", type=float, default=60.0,
                     help="seconds between comparisons of each member cache with the member (0: off); bounds how "
                          "long a cache error can last")
    ctl.add_argument("--otel", choices=["none", "console", "otlp"], default=None)
    ctl.add_argument("--liveness", help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    ctl.add_argument("--http-address", default=os.environ.get("MESHFED_HTTP_ADDRESS"),
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
    ctl.add_argument("--log-level", default="info")
    ctl.set_defaults(func=cmd_controller)

    fleet = sub.add_parser("fleet", help="local fleet of real kube-apiservers (hub + members)")
    fleet.add_argument("action", choices=["build", "up", "down", "status", "kubeconfig", "stop-member", "start-member",
                                          "stop-gateway", "start-gateway", "stop-istiod", "start-istiod",
                                          "echo-mode", "publish-backends"])
    fleet.add_argument("cluster", nargs="?")
    fleet.add_argument("--dir", default=str(DEFAULT_FLEET_DIR))
    fleet.add_argument("--members", type=int, default=3)
    fleet.add_argument("--regions", type=int, default=2)
    fleet.add_argument("--zones", type=int, default=3)
    fleet.add_argument("--istio", action="store_true",
                       help="every member runs istiod + a gateway Envoy; VIPs forward to it (off: API servers only)")
    fleet.add_argument("--backends", type=int, default=1, help="echo backends per member (with --istio)")
    fleet.add_argument("--mode", choices=["ok", "fail", "hang", "down"], help="echo-mode: what the backends do")
    fleet.add_argument("--namespace", help="publish-backends: namespace of the ServiceEntry/WorkloadEntries")
    fleet.add_argument("--host", help="publish-backends: the host they serve, e.g. checkout.payments.svc.cluster.local")
    fleet.add_argument("--service", default="echo", help="publish-backends: ServiceEntry name")
    fleet.add_argument("--port", type=int, default=8080, help="publish-backends: service port")
    fleet.set_defaults(func=cmd_fleet)

    sds = sub.add_parser("sds", add_help=False,
                         help="serve certificates to Envoy over SDS (meshfed sds --help for options)")
    sds.set_defaults(func=lambda _args: cmd_sds([]))  # main() hands `sds …` over before parsing

    crds = sub.add_parser("crds", help="write the CRDs generated from the models")
    crds.add_argument("--out", default="deploy/crds")
    crds.set_defaults(func=cmd_crds)

    reg = sub.add_parser("register", help="register a member cluster on the hub")
    reg.add_argument("cluster")
    reg.add_argument("--member-kubeconfig", required=True)
    reg.add_argument("--region", required=True)
    reg.add_argument("--zone", required=True)
    reg.add_argument("--label", action="append", default=[], help="k=v, repeatable")
    reg.add_argument("--kubeconfig", help="hub kubeconfig")
    reg.set_defaults(func=cmd_register)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sds"]:
        cmd_sds(argv[1:])
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
