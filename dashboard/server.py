"""The dashboard's local web server: the hub followed by watches, pages pushed live, buttons acting as the user.

Owns: the watches of MemberClusters, AccessPoints and RolloutApprovals on the hub with the user's own
kubeconfig (`HubCache`; a refusal is kept and shown as the API server's answer, e.g. 403), the HTTP
API the page uses (`/api/view` and its live form `/api/stream`, Server-Sent Events re-sent whenever a
watch delivers a change, and every 2 s for the gateways' view, which is read from istiod and Envoy),
the actions (`/api/action`: federation.useractions, with the user's client: the API server and the
approval admission policy decide), and the guard of the local server against other local users and
web pages: a random token in the printed URL (exchanged for an HttpOnly SameSite=Strict cookie named
after the port), a Host check (DNS rebinding) and, for every POST, an Origin check plus the token in a
header (CSRF). The dashboard holds no credentials other than the user's kubeconfig.

Imports dashboard.views/gateways, federation (kube, rollouts, useractions); imported by cli.main only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from dashboard.gateways import GatewayReader
from dashboard.views import ap_detail, ap_list, fleet_map
from federation.kube import ApiError, Gone, KubeClient, Kubeconfig
from federation.rollouts import read_history, whoami
from federation.useractions import ActionError, annotate, decide, undo_to

log = logging.getLogger("meshfed.dashboard")

GROUP = "/apis/meshfed.io/v1alpha1"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
GATEWAYS_PERIOD = 2.0
KEEPALIVE = 15.0
ACTIONS = ("approve", "reject", "abort", "promote", "undo")


def refusal(err: ApiError) -> str:
    if err.status == 0:
        return f"hub not reachable: {err.message}"
    return f"refused by the API server ({err.status} {err.reason}): {err.message}"


class HubCache:
    """MemberClusters, AccessPoints, RolloutApprovals as the user may see them, kept by list + watch."""

    def __init__(self, client: KubeClient, namespace: str = "") -> None:
        self.client = client
        scope = f"/namespaces/{namespace}" if namespace else ""
        self.paths = {
            "memberclusters": f"{GROUP}/memberclusters",
            "accesspoints": f"{GROUP}{scope}/accesspoints",
            "rolloutapprovals": f"{GROUP}{scope}/rolloutapprovals",
        }
        self.objects: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in self.paths}
        self.errors: dict[str, str] = dict.fromkeys(self.paths, "")
        self.synced: dict[str, bool] = dict.fromkeys(self.paths, False)
        self.version = 0
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._follow(kind), name=f"watch-{kind}") for kind in self.paths]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed_since(self, version: int, timeout: float) -> None:
        if self.version != version:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    @staticmethod
    def _key(obj: dict[str, Any]) -> str:
        meta = obj.get("metadata") or {}
        return f"{meta.get('namespace', '')}/{meta.get('name', '')}"

    async def _follow(self, kind: str) -> None:
        path = self.paths[kind]
        while True:
            try:
                items, rv = await self.client.list(path)
                self.objects[kind] = {self._key(i): i for i in items}
                self.errors[kind], self.synced[kind] = "", True
                self._bump()
                while True:
                    async for ev in self.client.watch(path, rv, timeout_seconds=120):
                        rv = str((ev.object.get("metadata") or {}).get("resourceVersion") or rv)
                        if ev.type == "BOOKMARK":
                            continue
                        if ev.type == "DELETED":
                            self.objects[kind].pop(self._key(ev.object), None)
                        else:
                            self.objects[kind][self._key(ev.object)] = ev.object
                        self._bump()
            except asyncio.CancelledError:
                raise
            except Gone:
                continue
            except ApiError as err:
                message = refusal(err)
                if self.errors[kind] != message:
                    log.info("watch %s: %s", kind, message)
                    self.errors[kind] = message
                    if err.status != 0:  # refused: what was listed before is not the user's to see
                        self.objects[kind] = {}
                    self._bump()
                await asyncio.sleep(2.0)


class Dashboard:
    def __init__(self, client: KubeClient, user: str, *, namespace: str = "", address: str = "127.0.0.1",
                 port: int = 0, token: str | None = None) -> None:
        self.client = client
        self.user = user
        self.namespace = namespace
        self.address = address
        self.port = port
        self.token = token or secrets.token_urlsafe(32)
        self.cache = HubCache(client, namespace)
        self.gateways = GatewayReader()
        self._history: dict[tuple[str, str], tuple[list[dict[str, Any]] | None, str]] = {}
        self._runner: web.AppRunner | None = None

    # ---- the guard ----

    @property
    def cookie(self) -> str:
        return f"meshfed-dashboard-{self.port}"

    def allowed_hosts(self) -> set[str]:
        """Host headers this server answers: its own address and, when it listens on loopback or on every
        address (a container's port published on the host's loopback), the loopback names."""
        names = {self.address}
        if self.address in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "::"):
            names |= set(LOOPBACK_NAMES)
        return {f"{n}:{self.port}" for n in names} | {f"[{self.address}]:{self.port}"}

    @web.middleware
    async def guard(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.headers.get("Host", "") not in self.allowed_hosts():
            return web.Response(status=403, text="meshfed dashboard: unexpected Host header (DNS rebinding guard)\n")
        given = request.query.get("token")
        if given is not None:
            if not hmac.compare_digest(given, self.token):
                return web.Response(status=401, text="meshfed dashboard: wrong token\n")
            query = {k: v for k, v in request.query.items() if k != "token"}
            found = web.HTTPFound(str(request.rel_url.with_query(query)))
            found.set_cookie(self.cookie, self.token, httponly=True, samesite="Strict", path="/")
            return found
        if not hmac.compare_digest(request.cookies.get(self.cookie, ""), self.token):
            return web.Response(status=401, text="meshfed dashboard: open the URL printed by `kubectl meshfed "
                                "dashboard` (it carries the access token)\n")
        if request.method not in ("GET", "HEAD"):
            origins = {f"http://{h}" for h in self.allowed_hosts()}
            if request.headers.get("Origin") not in origins:
                return web.json_response({"ok": False, "message": "cross-origin request refused"}, status=403)
            if not hmac.compare_digest(request.headers.get("X-Meshfed-Token", ""), self.token):
                return web.json_response({"ok": False, "message": "missing or wrong X-Meshfed-Token"}, status=403)
        resp = await handler(request)
        resp.headers.setdefault("Cache-Control", "no-store")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
        return resp

    # ---- pages and views ----

    async def index(self, request: web.Request) -> web.Response:
        html = resources.files("dashboard").joinpath("static/index.html").read_text()
        html = html.replace("{{TOKEN}}", self.token).replace("{{USER}}", _escape(self.user)).replace(
            "{{NAMESPACE}}", _escape(self.namespace or "all namespaces"))
        return web.Response(text=html, content_type="text/html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        types = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
        ext = name.rsplit(".", 1)[-1]
        if "/" in name or ext not in types:
            raise web.HTTPNotFound()
        path = resources.files("dashboard").joinpath(f"static/{name}")
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=path.read_bytes(), content_type=types[ext])

    async def _history_rows(self, ap: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str]:
        meta = ap["metadata"]
        key = (str(meta.get("uid", "")), str(meta.get("resourceVersion", "")))
        if key not in self._history:
            ro = (ap.get("status") or {}).get("rollout") or {}
            try:
                history = await read_history(self.client, ap)
                rows: list[dict[str, Any]] | None = [
                    {"number": r.number, "hash": r.hash, "created": r.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "undoOf": r.undo_of, "stable": r.hash == ro.get("stable"),
                     "current": r.hash == ro.get("revision")} for r in history.records]
                self._history = {key: (rows, "")}
            except ApiError as err:
                self._history = {key: (None, refusal(err))}
        return self._history[key]

    def _ap(self, ns: str, name: str) -> dict[str, Any] | None:
        return self.cache.objects["accesspoints"].get(f"{ns}/{name}")

    async def view(self, query: dict[str, str]) -> dict[str, Any]:
        kind = query.get("v", "fleet")
        objs, errors = self.cache.objects, self.cache.errors
        base: dict[str, Any] = {"view": kind, "user": self.user, "errors": {k: v for k, v in errors.items() if v},
                                "synced": all(self.cache.synced.values()) or any(errors.values())}
        if kind == "fleet":
            return {**base, **fleet_map(objs["memberclusters"].values(), objs["accesspoints"].values())}
        if kind == "aps":
            return {**base, **ap_list(objs["accesspoints"].values(), objs["rolloutapprovals"].values(), time.time(),
                                      namespace=query.get("ns", ""), phase=query.get("phase", ""),
                                      waiting=query.get("waiting") in ("1", "true"))}
        ns, name = query.get("ns", ""), query.get("name", "")
        ap = self._ap(ns, name)
        if ap is None:
            return {**base, "missing": f"AccessPoint {ns}/{name} not found (or not visible to {self.user})"}
        if kind == "ap":
            rows, error = await self._history_rows(ap)
            return {**base, **ap_detail(ap, objs["rolloutapprovals"].values(), rows, error)}
        if kind == "gateways":
            mcs = {mc["metadata"]["name"]: mc for mc in objs["memberclusters"].values()}
            return {**base, **await self.gateways.side_by_side(ap, mcs)}
        raise web.HTTPBadRequest(text=f"unknown view {kind!r}")

    async def api_view(self, request: web.Request) -> web.Response:
        return web.json_response(await self.view(dict(request.query)))

    async def api_stream(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await resp.prepare(request)
        last = ""
        quiet_since = time.monotonic()
        period = GATEWAYS_PERIOD if query.get("v") == "gateways" else KEEPALIVE
        try:
            while True:
                version = self.cache.version
                data = json.dumps(await self.view(query), separators=(",", ":"))
                if data != last:
                    await resp.write(f"data: {data}\n\n".encode())
                    last, quiet_since = data, time.monotonic()
                elif time.monotonic() - quiet_since >= KEEPALIVE:
                    await resp.write(b": keepalive\n\n")
                    quiet_since = time.monotonic()
                await self.cache.changed_since(version, period)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    async def api_gateway_detail(self, request: web.Request) -> web.Response:
        q = request.query
        ap = self._ap(q.get("ns", ""), q.get("name", ""))
        if ap is None:
            return web.json_response({"error": "AccessPoint not found"}, status=404)
        mc = self.cache.objects["memberclusters"].get(f"/{q.get('cluster', '')}")
        try:
            return web.json_response(await self.gateways.detail(ap, mc, q.get("cluster", "")))
        except LookupError as err:
            return web.json_response({"error": str(err)}, status=404)

    async def api_action(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            ns, name, action = str(body["namespace"]), str(body["name"]), str(body["action"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"ok": False, "message": "expected JSON {namespace, name, action}"}, status=400)
        if action not in ACTIONS:
            return web.json_response({"ok": False, "message": f"unknown action {action!r}"}, status=400)
        try:
            if action in ("approve", "reject"):
                message = await decide(self.client, ns, name, action == "approve", message=str(body.get("message", "")))
            elif action == "undo":
                message = await undo_to(self.client, ns, name, int(body.get("toRevision") or 0))
            else:
                message = await annotate(self.client, ns, name, action)
        except ApiError as err:
            log.info("%s %s/%s as %s: %s", action, ns, name, self.user, refusal(err))
            return web.json_response({"ok": False, "status": err.status, "message": refusal(err)},
                                     status=err.status if 400 <= err.status < 600 else 502)
        except (ActionError, ValueError) as err:
            return web.json_response({"ok": False, "message": str(err)}, status=409)
        log.info("%s %s/%s as %s: %s", action, ns, name, self.user, message)
        return web.json_response({"ok": True, "message": message})

    # ---- running ----

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.guard])
        app.router.add_get("/", self.index)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/api/view", self.api_view)
        app.router.add_get("/api/stream", self.api_stream)
        app.router.add_get("/api/gateway", self.api_gateway_detail)
        app.router.add_post("/api/action", self.api_action)
        return app

    async def start(self) -> str:
        """Serve; returns the URL with the token."""
        self.cache.start()
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.address, self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/?token={self.token}"

    async def stop(self) -> None:
        await self.cache.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.gateways.close()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


async def serve(kubeconfig: Kubeconfig, *, namespace: str = "", address: str = "127.0.0.1", port: int = 0,
                open_browser: bool = True, ready: Callable[[str, str], None] | None = None) -> None:
    """Run until cancelled (Ctrl-C). `ready(url, user)` is called once the server listens. `kubeconfig`
    is the hub's, as kubectl chooses it (KUBECONFIG merged, --context)."""
    client = await KubeClient.from_kubeconfig(kubeconfig, "hub", attempts=1)
    try:
        user = await whoami(client)
        dash = Dashboard(client, user, namespace=namespace, address=address, port=port)
        url = await dash.start()
        try:
            if ready is not None:
                ready(url, user)
            if open_browser:
                import webbrowser

                with contextlib.suppress(Exception):
                    webbrowser.open(url)
            await asyncio.Event().wait()
        finally:
            await dash.stop()
    finally:
        await client.close()
