"""A small async Kubernetes REST client over kubernetes-asyncio's configuration and session.

Owns: loading a kubeconfig (file or dict, any auth kubernetes-asyncio supports) or a Pod's in-cluster
service-account configuration (`in_cluster_config`: KUBERNETES_SERVICE_HOST/PORT and the mounted
token, CA and namespace, as client-go's rest.InClusterConfig), generic REST calls by path
(get/list/watch/create/apply/merge-patch/delete), and the retry policy for
transient failures (tenacity lives here and in other client modules only). One KubeClient per
API server; never the global default configuration (kopf logs the hub into it).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import yaml
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import kube_config
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)
from tenacity.stop import stop_base

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A failed API call. status 0 means the server could not be reached (`timed_out`: it was
    reached, or being reached, and did not answer within a deadline)."""

    def __init__(self, status: int, reason: str, message: str, body: Mapping[str, Any] | None = None,
                 *, timed_out: bool = False) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else f"unreachable: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = dict(body or {})
        self.timed_out = timed_out

    @property
    def transient(self) -> bool:
        return self.status in (0, 429, 500, 502, 503, 504)


def _is_transient(exc: BaseException) -> bool:
    # A timeout is not retried: its deadline is spent (a retry would multiply it), and a write the
    # server has received but not answered may still be applied; the next plan sees it.
    return isinstance(exc, ApiError) and exc.transient and not exc.timed_out


@dataclass(frozen=True)
class Deadlines:
    """How long one request may take: to connect (TCP), to the first byte of the answer (and between
    reads), and in all, retries included (a retry gets what is left, never a fresh budget)."""

    connect: float = 10.0
    first_byte: float = 30.0
    total: float = 30.0


# A member's API server: a hung one is noticed within seconds (federation/lanes.py opens its circuit
# breaker on the first timeout), while one answering 2 s late still gets its writes through.
MEMBER_DEADLINES = Deadlines(connect=3.0, first_byte=6.0, total=10.0)


class stop_before_deadline(stop_base):  # named like tenacity's own stop conditions
    """Stop retrying once the whole-request deadline (monotonic) has passed."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() >= self.deadline


@dataclass
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED | BOOKMARK
    object: dict[str, Any]


# Accept headers asking the API server for metadata only (what client-go's metadata client sends).
METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


class Gone(Exception):
    """The watch's resourceVersion is too old (410): relist."""


def _ssl_context(cfg: Configuration) -> ssl.SSLContext:
    """The TLS settings kubernetes-asyncio's REST client derives from a Configuration."""
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, keyfile=cfg.key_file)
    if not cfg.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.disable_strict_ssl_verification:
        ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return ctx


def _proxy_for(host: str, configured: str | None) -> str | None:
    """The proxy for `host`: the kubeconfig's proxy-url, else HTTPS_PROXY/HTTP_PROXY unless
    NO_PROXY exempts the host. Decided once per client: aiohttp's trust_env would look it up (and
    read ~/.netrc) in a worker thread on every request, which costs more CPU than the request."""
    if configured:
        return configured
    parsed = urllib.parse.urlsplit(host)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parsed.scheme or "https")
    if not proxy or not parsed.hostname or urllib.request.proxy_bypass(parsed.hostname):
        return None
    return proxy


SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class InClusterError(Exception):
    """No usable in-cluster configuration; the message names what is missing."""


@dataclass(frozen=True)
class InClusterConfig:
    """Where a Pod reaches its API server, and the files of its ServiceAccount (the token is re-read
    from `token_path` by each client: the kubelet rotates it)."""

    server: str
    token_path: str
    ca_path: str
    namespace: str | None

    def token(self) -> str:
        with open(self.token_path) as fh:
            token = fh.read().strip()
        if not token:
            raise InClusterError(f"service-account token file {self.token_path} is empty")
        return token


def in_cluster_config(environ: Mapping[str, str] | None = None,
                      directory: str = SERVICE_ACCOUNT_DIR) -> InClusterConfig:
    """The in-cluster configuration of a Pod: https://KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT
    (an IPv6 host in brackets) with the ServiceAccount token, CA and namespace mounted in `directory`."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise InClusterError("not running in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must "
                             "both be set (outside a cluster pass --kubeconfig)")
    token_path, ca_path = os.path.join(directory, "token"), os.path.join(directory, "ca.crt")
    for path, what in ((token_path, "token"), (ca_path, "CA certificate")):
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            raise InClusterError(f"service-account {what} {path} is missing or empty (is the ServiceAccount "
                                 "token mounted? automountServiceAccountToken must not be false)")
    ns_path = os.path.join(directory, "namespace")
    namespace = None
    if os.path.isfile(ns_path):
        with open(ns_path) as fh:
            namespace = fh.read().strip() or None
    hostport = f"[{host}]:{port}" if ":" in host or "%" in host else f"{host}:{port}"
    return InClusterConfig(server=f"https://{hostport}", token_path=token_path, ca_path=ca_path, namespace=namespace)


class KubeClient:
    def __init__(self, api: ApiClient, name: str, *, attempts: int = 3, deadlines: Deadlines | None = None) -> None:
        self.api = api
        self.name = name
        self.host = str(api.configuration.host or "").rstrip("/")
        self.attempts = attempts
        self.deadlines = deadlines or Deadlines()
        # Requests in flight (id -> monotonic start) and when an answer last came back: `stalled()`
        # tells a hung or slow server from a busy one without waiting for a deadline.
        self._inflight: dict[int, float] = {}
        self._next_request = 0
        self.last_answer = 0.0
        cfg = api.configuration
        # Per-request options kubernetes-asyncio would pass (aiohttp takes them per request).
        self.request_options: dict[str, Any] = {"proxy": _proxy_for(self.host, cfg.proxy)}
        if cfg.proxy_headers:
            self.request_options["proxy_headers"] = cfg.proxy_headers
        if cfg.tls_server_name:
            self.request_options["server_hostname"] = cfg.tls_server_name
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """Our own session (created lazily inside the running loop) with trust_env off; the proxy
        is resolved once (`_proxy_for`). Same TLS settings and pool size as kubernetes-asyncio's."""
        if self._session is None:
            cfg = self.api.configuration
            connector = aiohttp.TCPConnector(limit=cfg.connection_pool_maxsize or 64, ssl=_ssl_context(cfg))
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False, read_bufsize=2**21)
        return self._session

    def stalled(self, after: float, now: float | None = None) -> float | None:
        """Since when (monotonic) a request has waited more than `after` seconds with no answer to any
        request in that time; None when the server answers (or nothing is in flight)."""
        if not self._inflight:
            return None
        now = time.monotonic() if now is None else now
        oldest = min(self._inflight.values())
        if now - oldest > after and now - self.last_answer > after:
            return oldest
        return None

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @classmethod
    async def from_kubeconfig_dict(cls, config: Mapping[str, Any], name: str, *, attempts: int = 3,
                                   deadlines: Deadlines | None = None) -> KubeClient:
        cfg = type.__call__(Configuration)
        loader = kube_config.KubeConfigLoader(config_dict=dict(config), config_base_path=None)
        await loader.load_and_set(cfg)
        cfg.connection_pool_maxsize = 64
        return cls(ApiClient(configuration=cfg), name, attempts=attempts, deadlines=deadlines)

    @classmethod
    async def from_kubeconfig_file(cls, path: str, name: str, *, attempts: int = 3) -> KubeClient:
        with open(path) as fh:
            config = yaml.safe_load(fh)
        return await cls.from_kubeconfig_dict(config, name, attempts=attempts)

    @classmethod
    async def in_cluster(cls, name: str, *, environ: Mapping[str, str] | None = None,
                         directory: str = SERVICE_ACCOUNT_DIR) -> KubeClient:
        """The service-account configuration of a Pod (the controller's Deployment): `in_cluster_config`;
        kubernetes-asyncio's loader re-reads the token file every minute (the kubelet rotates it)."""
        from kubernetes_asyncio.config import incluster_config

        found = in_cluster_config(environ, directory)
        cfg = type.__call__(Configuration)
        incluster_config.InClusterConfigLoader(
            token_filename=found.token_path,
            cert_filename=found.ca_path,
            environ=dict(os.environ if environ is None else environ),
        ).load_and_set(cfg)
        cfg.connection_pool_maxsize = 64
        return cls(ApiClient(configuration=cfg), name)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self.api.close()

    async def _headers(self, content_type: str, accept: str = "application/json") -> dict[str, str]:
        headers = {"Content-Type": content_type, "Accept": accept}
        await self.api.update_params_for_auth(headers, [], ["BearerToken"])
        return headers

    async def _once(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None,
        body: Any,
        content_type: str,
        timeout: float,
        accept: str = "application/json",
    ) -> dict[str, Any]:
        headers = await self._headers(content_type, accept)
        session = self.session
        data = None if body is None else json.dumps(body)
        limits = self.deadlines
        request_id = self._next_request
        self._next_request += 1
        self._inflight[request_id] = time.monotonic()
        try:
            async with session.request(
                method,
                self.host + path,
                params={k: str(v) for k, v in (query or {}).items()},
                headers=headers,
                data=data,
                timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(limits.connect, timeout),
                                              sock_read=min(limits.first_byte, timeout)),
                **self.request_options,
            ) as resp:
                raw = await resp.read()
                status = resp.status
            self.last_answer = time.monotonic()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            timed_out = isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError)
            what = f"no answer within {timeout:.0f}s" if timed_out and not str(exc) else f"{type(exc).__name__}: {exc}"
            raise ApiError(0, "Unreachable", f"{self.name}: {what}", timed_out=timed_out) from None
        finally:
            self._inflight.pop(request_id, None)
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {"message": raw.decode(errors="replace")[:500]}
        if status >= 300:
            raise ApiError(status, str(payload.get("reason", "")), str(payload.get("message", payload)), payload)
        return payload if isinstance(payload, dict) else {"value": payload}

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
        retry: bool = True,
        accept: str = "application/json",
    ) -> dict[str, Any]:
        """One call within `timeout` seconds (default: the client's whole-request deadline), retries
        of transient failures included: each attempt gets what is left of it."""
        budget = timeout if timeout is not None else self.deadlines.total
        if not retry or self.attempts <= 1:
            return await self._once(method, path, query, body, content_type, budget, accept)
        deadline = time.monotonic() + budget
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_is_transient),
            stop=stop_after_attempt(self.attempts) | stop_before_deadline(deadline),
            wait=wait_exponential(multiplier=0.1, max=2.0),
            reraise=True,
        ):
            with attempt:
                left = deadline - time.monotonic()
                if left <= 0.05:
                    raise ApiError(0, "Unreachable", f"{self.name}: no answer within {budget:.0f}s", timed_out=True)
                return await self._once(method, path, query, body, content_type, left, accept)
        raise AssertionError("unreachable")  # pragma: no cover

    async def request_text(self, path: str, timeout: float = 30.0) -> str:
        """GET a non-JSON endpoint such as /metrics."""
        headers = await self._headers("application/json")
        headers["Accept"] = "text/plain"
        session = self.session
        try:
            async with session.get(self.host + path, headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=timeout), **self.request_options) as resp:
                text = await resp.text()
                if resp.status >= 300:
                    raise ApiError(resp.status, resp.reason or "", text[:500])
                return text
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ApiError(0, "Unreachable", f"{self.name}: {type(exc).__name__}: {exc}") from None

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def list(self, path: str, *, label_selector: str | None = None, field_selector: str | None = None,
                   metadata_only: bool = False) -> tuple[list[dict[str, Any]], str]:
        """Every item (paged). `metadata_only`: PartialObjectMetadata, e.g. Secrets without their data."""
        query: dict[str, Any] = {"limit": 500}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        accept = METADATA_LIST if metadata_only else "application/json"
        items: list[dict[str, Any]] = []
        while True:
            page = await self.request("GET", path, query=query, accept=accept)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                return items, str(meta.get("resourceVersion", ""))
            query["continue"] = meta["continue"]

    async def watch(
        self,
        path: str,
        resource_version: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        metadata_only: bool = False,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[WatchEvent]:
        """Stream watch events from `resource_version`; raises Gone on 410, ApiError otherwise.
        `metadata_only`: the objects are PartialObjectMetadata (no spec, data or status)."""
        query: dict[str, Any] = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
        }
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        headers = await self._headers("application/json", METADATA if metadata_only else "application/json")
        session = self.session
        try:
            async with session.get(
                self.host + path,
                params=query,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_seconds + 30),
                **self.request_options,
            ) as resp:
                if resp.status == 410:
                    raise Gone()
                if resp.status >= 300:
                    raise ApiError(resp.status, resp.reason or "", (await resp.text())[:500])
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone()
                        raise ApiError(int(obj.get("code", 500)), str(obj.get("reason", "")),
                                       str(obj.get("message", "")))
                    yield WatchEvent(str(event.get("type")), obj)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ApiError(0, "Unreachable", f"{self.name}: {type(exc).__name__}: {exc}") from None

    async def create(self, path: str, body: Mapping[str, Any], *, field_manager: str) -> dict[str, Any]:
        return await self.request("POST", path, query={"fieldManager": field_manager}, body=body)

    async def apply(
        self, path: str, body: Mapping[str, Any], *, field_manager: str, force: bool = True, subresource: str = ""
    ) -> dict[str, Any]:
        """Server-side apply (the body is JSON, which is YAML)."""
        query = {"fieldManager": field_manager, "force": "true" if force else "false"}
        return await self.request(
            "PATCH",
            path + (f"/{subresource}" if subresource else ""),
            query=query,
            body=body,
            content_type="application/apply-patch+yaml",
        )

    async def merge_patch(
        self, path: str, body: Mapping[str, Any], *, subresource: str = "", field_manager: str | None = None
    ) -> dict[str, Any]:
        query = {"fieldManager": field_manager} if field_manager else None
        return await self.request(
            "PATCH",
            path + (f"/{subresource}" if subresource else ""),
            query=query,
            body=body,
            content_type="application/merge-patch+json",
        )

    async def delete(self, path: str, *, uid: str = "", resource_version: str = "") -> bool:
        """Delete conditionally on uid/resourceVersion; False when it was already gone."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        preconditions = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v}
        if preconditions:
            body["preconditions"] = preconditions
        try:
            await self.request("DELETE", path, body=body)
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return True

