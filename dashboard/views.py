"""What the dashboard's pages show, computed from the hub's objects and the gateways' answers (pure).

Owns the view models (plain JSON-able dicts) of the fleet map, the AccessPoint list (the facts of
`kubectl get ap`), one AccessPoint's page (clusters, rollout timeline, approvals) and the gateways'
side-by-side comparison: which routes each placed cluster's gateway holds for the AccessPoint
(parsed from istiod's config_dump of the gateway proxy) against the routes the expected revision's
VirtualServices ask for. No I/O, no clock (callers pass `now`).

Imports accesspoint (render substitution) and placement models only.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from accesspoint.render import substitute
from accesspoint.rollout import wave_states
from placement.models import not_placed_beyond

READY_STATES = {"Applied"}
WAITING_PHASES = {None, "Pending"}


# ---- small helpers -------------------------------------------------------------------------------


def _condition(obj: Mapping[str, Any], type_: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return {}


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def age(timestamp: str | None, now: float) -> str:
    """`kubectl`'s AGE: 42s, 5m, 3h, 2d."""
    if not timestamp:
        return "-"
    try:
        then = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "-"
    seconds = max(0, int(now - then))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def waiting_for_approval(ap: Mapping[str, Any], approvals: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The RolloutApprovals of `ap`'s current rollout revision that wait for a person's decision."""
    ro = (ap.get("status") or {}).get("rollout") or {}
    name, ns = ap["metadata"]["name"], ap["metadata"].get("namespace")
    out = []
    for a in approvals:
        spec = a.get("spec") or {}
        if (a["metadata"].get("namespace") == ns and spec.get("accessPoint") == name
                and spec.get("revision") == ro.get("revision") and not spec.get("decision")
                and (a.get("status") or {}).get("phase") in WAITING_PHASES):
            out.append(dict(a))
    return sorted(out, key=lambda a: (a["spec"].get("wave", 0), a["spec"].get("gate") != "Before"))


# ---- fleet map -----------------------------------------------------------------------------------


def cluster_card(mc: Mapping[str, Any], aps: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    name = mc["metadata"]["name"]
    spec, status = mc.get("spec") or {}, mc.get("status") or {}
    reach = _condition(mc, "Reachable")
    ready = _condition(mc, "Ready")
    reachable = {"True": True, "False": False}.get(str(reach.get("status")))
    carried = troubled = 0
    for ap in aps:
        for c in (ap.get("status") or {}).get("clusters") or []:
            if c.get("name") != name:
                continue
            carried += 1
            if c.get("state") not in READY_STATES or c.get("routeConfigured") is False or any(
                    m.get("level") == "ERROR" for m in c.get("istioMessages") or []):
                troubled += 1
    problems = []
    if reachable is False:
        problems.append(f"unreachable: {reach.get('message', '')}".rstrip(": "))
    elif reachable is None:
        problems.append("reachability not known yet")
    elif ready.get("status") != "True":
        problems.append(f"not ready: {ready.get('reason', '')} {ready.get('message', '')}".strip())
    if status.get("istioCRDs") is False:
        problems.append("Istio CRDs missing")
    if troubled:
        problems.append(f"{troubled} AccessPoint(s) not applied or not routed here")
    level = "bad" if reachable is False or (reachable and ready.get("status") != "True") else (
        "warn" if problems else "ok")
    return {
        "name": name,
        "region": spec.get("region", ""),
        "zone": spec.get("zone", ""),
        "reachable": reachable,
        "reachability": {True: "reachable", False: "unreachable", None: "unknown"}[reachable],
        "reachMessage": reach.get("message", ""),
        "ready": ready.get("status", "Unknown"),
        "version": status.get("kubernetesVersion") or "-",
        "istioCRDs": status.get("istioCRDs"),
        "istiod": "url" if (spec.get("istiod") or {}).get("url") else (
            "service" if (spec.get("istiod") or {}).get("service") else "none"),
        "gatewayStats": bool(spec.get("gatewayStats")),
        "lastProbeTime": status.get("lastProbeTime") or "-",
        "accessPoints": carried,
        "troubled": troubled,
        "problems": problems,
        "level": level,
    }


def fleet_map(memberclusters: Iterable[Mapping[str, Any]], aps: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """regions -> zones -> cluster cards (sorted by name), with totals."""
    aps = list(aps)
    cards = [cluster_card(mc, aps) for mc in memberclusters]
    regions: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for card in sorted(cards, key=lambda c: (c["region"], c["zone"], c["name"])):
        regions.setdefault(card["region"], {}).setdefault(card["zone"], []).append(card)
    levels = Counter(c["level"] for c in cards)
    return {
        "regions": [{"name": r, "zones": [{"name": z, "clusters": cs} for z, cs in zones.items()]}
                    for r, zones in regions.items()],
        "totals": {"clusters": len(cards), "ok": levels["ok"], "warn": levels["warn"], "bad": levels["bad"],
                   "accessPoints": len(aps)},
    }


# ---- AccessPoint list (kubectl get ap) -------------------------------------------------------------


def ap_row(ap: Mapping[str, Any], approvals: Iterable[Mapping[str, Any]], now: float) -> dict[str, Any]:
    meta, status = ap["metadata"], ap.get("status") or {}
    summary, ro = status.get("summary") or {}, status.get("rollout") or {}
    waiting = waiting_for_approval(ap, approvals)
    ready = _condition(ap, "Ready").get("status")
    if waiting or ro.get("phase") in ("Progressing", "Paused"):
        level = "warn"
    else:
        level = {"True": "ok", "False": "bad"}.get(str(ready), "warn")
    return {
        "namespace": meta.get("namespace", ""), "name": meta["name"],
        "clusters": summary.get("clusters", ""), "phase": summary.get("phase", ""), "vips": summary.get("vips", ""),
        "rollout": ro.get("phase", ""), "wave": ro.get("wave", ""), "updated": ro.get("updated", ""),
        "reason": ro.get("reason", ""), "revision": status.get("revision", ""), "routes": summary.get("routes", ""),
        "fqdn": status.get("fqdn", ""), "cert": status.get("certificate", ""),
        "age": age(meta.get("creationTimestamp"), now),
        "waiting": bool(waiting), "level": level,
    }


def ap_list(aps: Iterable[Mapping[str, Any]], approvals: Iterable[Mapping[str, Any]], now: float, *,
            namespace: str = "", phase: str = "", waiting: bool = False) -> dict[str, Any]:
    approvals = list(approvals)
    rows = [ap_row(ap, approvals, now) for ap in sorted(aps, key=_key)]
    namespaces = sorted({r["namespace"] for r in rows})
    phases = sorted({r["phase"] for r in rows if r["phase"]})
    rows = [r for r in rows if (not namespace or r["namespace"] == namespace) and (not phase or r["phase"] == phase)
            and (not waiting or r["waiting"])]
    return {"rows": rows, "namespaces": namespaces, "phases": phases}


# ---- one AccessPoint -------------------------------------------------------------------------------


def _gate_labels(items: list[dict[str, Any]], grant: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    for g in items:
        label = g.get("type", "?") + (f" {g['duration']}" if g.get("duration") else "")
        entry = {"label": label, "type": g.get("type"), "granted": None}
        if grant is not None:
            entry["granted"] = grant.get("approver") or grant.get("how") or "granted"
        out.append(entry)
    return out


def rollout_timeline(status: Mapping[str, Any], waiting: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The rollout as waves with their gates, the state of each, and the gate waiting for a person."""
    ro = status.get("rollout")
    if not ro:
        return None
    granted = {(g.get("wave"), g.get("gate")): g for g in ro.get("granted") or []}
    waves = []
    for i, (w, state) in enumerate(zip(ro.get("waves") or [], wave_states(ro), strict=True)):
        number = i + 1
        waits = [a["spec"].get("gate") for a in waiting if a["spec"].get("wave") == number]
        clusters = w.get("clusters")
        waves.append({
            "number": number, "name": w.get("name", ""), "state": state,
            "before": _gate_labels(w.get("before") or [], granted.get((number, "Before"))),
            "after": _gate_labels(w.get("after") or [], granted.get((number, "After"))),
            "clusters": clusters if clusters is not None else None,
            "released": w.get("released") or [],
            "waitingGates": waits,
        })
    pending = None
    if waiting:
        a = waiting[0]
        pending = {"name": a["metadata"]["name"], "wave": a["spec"].get("wave"), "waveName": a["spec"].get("waveName"),
                   "gate": a["spec"].get("gate"), "revision": a["spec"].get("revision")}
    return {
        "phase": ro.get("phase", ""), "reason": ro.get("reason", ""), "message": ro.get("message", ""),
        "revision": ro.get("revision", ""), "stable": ro.get("stable", ""), "wave": ro.get("wave", ""),
        "updated": ro.get("updated", ""), "waves": waves, "pending": pending,
        "inProgress": bool(ro.get("revision")) and ro.get("revision") != ro.get("stable"),
    }


def cluster_rows(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    target = status.get("revision")
    for c in status.get("clusters") or []:
        evaluated = c.get("routeMessage") is not None
        probe = c.get("probe") or {}
        last = probe.get("last") or {}
        messages = [{"object": m.get("object", ""), "code": m.get("code", ""), "level": m.get("level", ""),
                     "message": m.get("message", ""), "url": m.get("documentationUrl") or ""}
                    for m in c.get("istioMessages") or []]
        on_target = bool(target) and c.get("revision") == target
        level = "ok"
        if c.get("state") not in READY_STATES or c.get("routeConfigured") is False or any(
                m["level"] == "ERROR" for m in messages):
            level = "bad"
        elif not on_target or c.get("noCurrentVerdict") or probe.get("verdict") not in (None, "Healthy"):
            level = "warn"
        rows.append({
            "name": c["name"], "region": c.get("region", ""), "zone": c.get("zone", ""), "state": c.get("state", ""),
            "revision": c.get("revision") or "-", "onTarget": on_target, "objects": c.get("objects", 0),
            "vip": c.get("vip") or "-", "fqdn": c.get("fqdn") or status.get("fqdn") or "-",
            "certificate": c.get("certificate") or status.get("certificate") or "-",
            "routes": {True: "True", False: "False", None: "Unknown"}[c.get("routeConfigured")] if evaluated else "-",
            "routeMessage": c.get("routeMessage") or "",
            "proxies": c.get("gatewayProxies") or "-",
            "istio": messages, "noCurrentVerdict": c.get("noCurrentVerdict") or [],
            "probe": (f"{probe.get('verdict', '?')} {last.get('code', last.get('outcome', '?'))} "
                      f"{last.get('latencyMs', 0)}ms") if last else "-",
            "lastError": c.get("lastError") or "", "level": level,
        })
    return rows


def ap_detail(ap: Mapping[str, Any], approvals: Iterable[Mapping[str, Any]],
              history: list[dict[str, Any]] | None, history_error: str = "") -> dict[str, Any]:
    meta, status = ap["metadata"], ap.get("status") or {}
    approvals = [a for a in approvals if (a.get("spec") or {}).get("accessPoint") == meta["name"]
                 and a["metadata"].get("namespace") == meta.get("namespace")]
    waiting = waiting_for_approval(ap, approvals)
    summary = status.get("summary") or {}
    return {
        "namespace": meta.get("namespace", ""), "name": meta["name"], "generation": meta.get("generation"),
        "observedGeneration": status.get("observedGeneration"), "revision": status.get("revision", ""),
        "summary": {"phase": summary.get("phase", ""), "clusters": summary.get("clusters", ""),
                    "routes": summary.get("routes", ""), "vips": summary.get("vips", ""),
                    "fqdn": status.get("fqdn") or "", "certificate": status.get("certificate") or ""},
        "conditions": [{"type": c.get("type"), "status": c.get("status"), "reason": c.get("reason", ""),
                        "message": c.get("message", "")} for c in status.get("conditions") or []],
        "clusters": cluster_rows(status),
        "notPlaced": (status.get("placement") or {}).get("rejected") or [],
        "notPlacedMore": not_placed_beyond(status.get("placement") or {}),
        "rollout": rollout_timeline(status, waiting),
        "approvals": [{"name": a["metadata"]["name"], "revision": a["spec"].get("revision"),
                       "wave": a["spec"].get("wave"), "waveName": a["spec"].get("waveName", ""),
                       "gate": a["spec"].get("gate"), "decision": a["spec"].get("decision", ""),
                       "approver": a["spec"].get("approver", ""), "reason": a["spec"].get("reason", ""),
                       "phase": (a.get("status") or {}).get("phase", "Pending")}
                      for a in sorted(approvals, key=lambda a: a["metadata"].get("creationTimestamp", ""),
                                      reverse=True)],
        "history": history, "historyError": history_error,
    }


# ---- gateways side by side -----------------------------------------------------------------------


def _get(node: Mapping[str, Any], *names: str) -> Any:
    """A field of an Envoy config dump under either of its JSON spellings (camelCase or snake_case)."""
    for n in names:
        if n in node:
            return node[n]
    return None


def parse_cluster_name(name: str) -> tuple[str, int | None]:
    """`outbound|8080||echo.ns.svc.cluster.local` -> (host, 8080); anything else -> (name, None)."""
    parts = name.split("|")
    if len(parts) == 4 and parts[1].isdigit():
        return parts[3], int(parts[1])
    return name, None


def virtual_services(ap: Mapping[str, Any], variables: Mapping[str, str]) -> list[dict[str, Any]]:
    """The AccessPoint template's VirtualServices, with the cluster's variables substituted."""
    ns = ap["metadata"].get("namespace", "")
    out = []
    for i, obj in enumerate((ap.get("spec") or {}).get("template") or []):
        if obj.get("kind") != "VirtualService":
            continue
        try:
            vs = substitute(obj, variables, f"spec.template[{i}]")
        except ValueError:
            continue
        vs.setdefault("metadata", {}).setdefault("namespace", ns)
        out.append(vs)
    return out


def expected_routes(vss: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (host, destination): the weight the VirtualServices ask for (port None: any of the service's)."""
    out = []
    for vs in vss:
        meta, spec = vs.get("metadata") or {}, vs.get("spec") or {}
        for host in spec.get("hosts") or []:
            for http in spec.get("http") or []:
                dests = http.get("route") or []
                for d in dests:
                    dest = d.get("destination") or {}
                    port = (dest.get("port") or {}).get("number")
                    weight = d.get("weight", 100 if len(dests) == 1 else 0)
                    out.append({"host": host, "destination": dest.get("host", ""), "port": port,
                                "weight": int(weight), "config": f"{meta.get('namespace')}/{meta.get('name')}"})
    return sorted(out, key=lambda r: (r["host"], r["destination"], r["port"] or 0))


def route_configs(dump: Any) -> list[dict[str, Any]]:
    """The RouteConfigurations of a config dump: istiod's `/debug/config_dump?proxyID=` lists them as they are
    (`{"configs": [RouteConfiguration, ...]}`), Envoy's admin `/config_dump` inside a RoutesConfigDump."""
    out: list[dict[str, Any]] = []
    configs = _get(dump, "configs") if isinstance(dump, dict) else None
    for section in configs or []:
        if not isinstance(section, dict):
            continue
        if _get(section, "virtualHosts", "virtual_hosts") is not None:
            out.append(section)
            continue
        for holder in (_get(section, "dynamicRouteConfigs", "dynamic_route_configs") or []) + (
                _get(section, "staticRouteConfigs", "static_route_configs") or []):
            rc = _get(holder, "routeConfig", "route_config")
            if isinstance(rc, dict):
                out.append(rc)
    return out


def gateway_routes(dump: Any, vs_keys: Iterable[str]) -> list[dict[str, Any]]:
    """The routes of a gateway proxy's RDS config dump that come from the VirtualServices `vs_keys`
    (`ns/name`, matched against Istio's `istio.config` route metadata)."""
    wanted = {f"/namespaces/{k.split('/')[0]}/virtual-service/{k.split('/')[1]}": k for k in vs_keys}
    out = []
    for rc in route_configs(dump):
        for vh in _get(rc, "virtualHosts", "virtual_hosts") or []:
            vh_name = str(vh.get("name", ""))
            for route in vh.get("routes") or []:
                fm = _get(route.get("metadata") or {}, "filterMetadata", "filter_metadata") or {}
                path = str((fm.get("istio") or {}).get("config", ""))
                key = next((k for suffix, k in wanted.items() if path.endswith(suffix)), None)
                if key is None:
                    continue
                action = route.get("route") or {}
                clusters: list[tuple[str, int]] = []
                weighted = _get(action, "weightedClusters", "weighted_clusters")
                if weighted:
                    clusters = [(str(c.get("name", "")), int(c.get("weight", 0)))
                                for c in weighted.get("clusters") or []]
                elif action.get("cluster"):
                    clusters = [(str(action["cluster"]), 100)]
                match = route.get("match") or {}
                where = next((f"{k} {match[k]}" for k in ("prefix", "path", "safeRegex", "safe_regex")
                              if k in match), "")
                for cluster, weight in clusters:
                    host, port = parse_cluster_name(cluster)
                    out.append({"routeConfig": str(rc.get("name", "")), "virtualHost": vh_name,
                                "host": vh_name.rsplit(":", 1)[0], "match": where,
                                "cluster": cluster, "destination": host, "port": port, "weight": weight,
                                "config": key})
    return sorted(out, key=lambda r: (r["host"], r["destination"], r["port"] or 0, r["routeConfig"]))


def _matches(want: Mapping[str, Any], have: Mapping[str, Any]) -> bool:
    return (want["host"], want["destination"], want["weight"]) == (have["host"], have["destination"], have["weight"]) \
        and (want["port"] is None or have["port"] is None or want["port"] == have["port"])


def compare_routes(expected: list[dict[str, Any]], held: list[dict[str, Any]]) -> dict[str, list[str]]:
    """What the gateway lacks and what it holds beyond the expected routes (one line each; a destination
    without a port in the VirtualService matches any port)."""
    def line(r: Mapping[str, Any]) -> str:
        return f"{r['host']} -> {r['destination']}" + (f":{r['port']}" if r["port"] else "") + f" weight {r['weight']}"

    missing = {line(e) for e in expected if not any(_matches(e, h) for h in held)}
    extra = {line(h) for h in held if not any(_matches(e, h) for e in expected)}
    return {"missing": sorted(missing), "extra": sorted(extra)}


def proxy_sync(item: Mapping[str, Any]) -> dict[str, Any]:
    """One proxy of istiod's /debug/syncz: per xDS type synced / pending / NACK."""
    per_type: dict[str, str] = {}
    for url, res in (item.get("resources") or {}).items():
        short = url.rsplit(".", 1)[-1].replace("Configuration", "").lower() if "." in url else url
        short = {"listener": "LDS", "routeconfiguration": "RDS", "route": "RDS", "cluster": "CDS",
                 "clusterloadassignment": "EDS", "secret": "SDS"}.get(short, short.upper())
        if res.get("lastError"):
            per_type[short] = "NACK"
        elif res.get("sent") and res.get("sent") == res.get("acked"):
            per_type[short] = "synced"
        elif res.get("sent"):
            per_type[short] = "pending"
    for short, field in (("CDS", "cluster"), ("LDS", "listener"), ("RDS", "route"), ("EDS", "endpoint")):
        if short not in per_type and (item.get(f"{field}_sent") or item.get(f"{field}_acked")):
            sent, acked = item.get(f"{field}_sent"), item.get(f"{field}_acked")
            per_type[short] = "synced" if sent == acked else "pending"
    states = set(per_type.values())
    overall = "NACK" if "NACK" in states else "pending" if "pending" in states else "synced" if states else "unknown"
    return {"id": str(item.get("proxy", "")), "type": str(item.get("proxy_type", "")), "xds": per_type,
            "state": overall}


def localities(clusters_json: Any, names: Iterable[str]) -> dict[str, list[str]]:
    """Envoy admin `/clusters?format=json`: each named cluster's endpoints as `address (region/zone) health`."""
    wanted = set(names)
    out: dict[str, list[str]] = {}
    for cs in (clusters_json or {}).get("cluster_statuses") or []:
        if cs.get("name") not in wanted:
            continue
        hosts = []
        for h in cs.get("host_statuses") or []:
            sock = (h.get("address") or {}).get("socket_address") or {}
            loc = h.get("locality") or {}
            where = "/".join(x for x in (loc.get("region"), loc.get("zone"), loc.get("sub_zone")) if x) or "-"
            health = (h.get("health_status") or {}).get("eds_health_status", "HEALTHY")
            hosts.append(f"{sock.get('address', '?')}:{sock.get('port_value', '?')} ({where}) {health}")
        out[cs["name"]] = hosts
    return out


def gateway_column(cluster: Mapping[str, Any], target: str, expected: list[dict[str, Any]],
                   reading: Mapping[str, Any]) -> dict[str, Any]:
    """One placed cluster's column of the side-by-side view.

    `cluster` is the AccessPoint's status entry; `reading` what dashboard.gateways read: `error` (istiod
    not asked or not answering), `proxies` (syncz items of gateway proxies), `routes` (per proxy id:
    gateway_routes), `endpoints` (cluster -> endpoints), `stats` (requests/errors or an error)."""
    differences: list[str] = []
    revision = cluster.get("revision") or ""
    if target and revision != target:
        differences.append(f"carries revision {revision or '(none)'}, expected {target}")
    proxies = [proxy_sync(p) for p in reading.get("proxies") or []]
    routes: dict[str, list[dict[str, Any]]] = dict(reading.get("routes") or {})
    if reading.get("error"):
        differences.append(f"istiod: {reading['error']}")
    elif not proxies:
        differences.append("no gateway proxy connected to istiod")
    for p in proxies:
        if p["state"] != "synced":
            differences.append(f"proxy {p['id']}: {p['state']}")
        held = routes.get(p["id"])
        if held is None:
            continue
        diff = compare_routes(expected, held)
        differences += [f"{p['id']}: missing {m}" for m in diff["missing"]]
        differences += [f"{p['id']}: unexpected {x}" for x in diff["extra"]]
        p["routes"] = held
    return {"name": cluster.get("name"), "region": cluster.get("region", ""), "zone": cluster.get("zone", ""),
            "revision": revision or "-", "state": cluster.get("state", ""), "proxies": proxies,
            "endpoints": reading.get("endpoints") or {}, "stats": reading.get("stats"),
            "istiod": reading.get("istiod", ""), "gatewayAdmin": reading.get("gatewayAdmin", ""),
            "differences": differences, "different": bool(differences)}


def traffic_share(columns: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Measured requests per region from the gateway stats (where configured), as shares of the total."""
    per_region: Counter[str] = Counter()
    for col in columns:
        stats = col.get("stats") or {}
        if isinstance(stats.get("requests"), int):
            per_region[str(col.get("region", ""))] += int(stats["requests"])
    total = sum(per_region.values())
    return [{"region": r, "requests": n, "share": round(100.0 * n / total, 1) if total else 0.0}
            for r, n in sorted(per_region.items())]
