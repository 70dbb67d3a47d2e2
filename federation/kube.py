"""A small async Kubernetes REST client over kubernetes-asyncio's configuration and session.

Owns: the one kubeconfig loader (`load_kubeconfig`: kubectl's rules — `--kubeconfig` or every file of
the KUBECONFIG path list merged (the first file to set a name or current-context wins), `--context`,
the context's namespace, relative file paths resolved against the directory of the file that names
them), used by the controller (its KubeClient and kopf's login), the CLI and `meshfed register`
(`flatten`, `portability_problem`); loading a kubeconfig (file or dict, any auth kubernetes-asyncio
supports) or a Pod's in-cluster
service-account configuration (`in_cluster_config`: KUBERNETES_SERVICE_HOST/PORT and the mounted
token, CA and namespace, as client-go's rest.InClusterConfig), generic REST calls by path
(get/list/watch/create/apply/merge-patch/delete), and the retry policy for
transient failures (tenacity lives here and in other client modules only). One KubeClient per
API server; never the global default configuration (kopf logs the hub into it).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import os
import random
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
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
                 *, timed_out: bool = False, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else f"unreachable: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = dict(body or {})
        self.timed_out = timed_out
        # Seconds the server asked us to wait before trying again (its Retry-After header), on a 429:
        # the request was not processed (API Priority and Fairness, a watch cache (re)initializing).
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return self.status in (0, 429, 500, 502, 503, 504)


def _is_transient(exc: BaseException) -> bool:
    # A timeout is not retried: its deadline is spent (a retry would multiply it), and a write the
    # server has received but not answered may still be applied; the next plan sees it. A 429 with
    # Retry-After is left to `KubeClient.request`'s server-directed retries, which wait as asked.
    return isinstance(exc, ApiError) and exc.transient and not exc.timed_out and exc.retry_after is None


# As client-go (rest.Request's checkWait, maxRetries 10): a 429 carrying Retry-After is tried again after
# the pause the server names, whatever the caller's own retry count; the pause is capped, and the whole
# call stays within its deadline.
SERVER_DIRECTED_RETRIES = 10
LONGEST_RETRY_AFTER = 10.0


def retry_after_seconds(status: int, header: str | None) -> float | None:
    """The pause a 429 answer asks for (Retry-After in whole seconds, as the API server sends it), or None."""
    if status != 429 or not header:
        return None
    try:
        seconds = float(header.strip())
    except ValueError:
        return None  # an HTTP-date: the API server never sends one; treat as an ordinary 429
    return min(max(seconds, 0.0), LONGEST_RETRY_AFTER)


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
# Connections for a member's requests (its watches have their own, one each). Each TLS connection held a
# 256 KiB read buffer (asyncio's SSLProtocol; now TLS_READ_BUFFER): with kubernetes-asyncio's pool of 100, a bulk of 16
# AccessPoints in flight left ~100 connections per member open, 137 MiB of the controller's 214 MiB
# traced with 10 members (e2e/bench/scale.py, PYTHONTRACEMALLOC). More requests wait for a free one.
# 16, not 8: at 5 members x 2,500 objects (e2e/bench/propagation.py, back to back) a pool of 8 made the
# bulk 61.3 s instead of 51.2 s and 1,803 status applies instead of 1,144 (flights landing later);
# peak RSS 340 vs 346 MB.
MEMBER_CONNECTIONS = 16
# Requests in flight to all members together, shared out evenly (`member_request_slots`): each in flight
# holds a pooled TLS connection (97 KiB), and aiohttp keeps a pooled connection open while requests
# keep coming (it hands out the oldest idle one first), so a pool grows to the most requests ever in
# flight at once. Up to 16 members each get all 16; 50 members 5 each; from 64 members on, 4 each.
MEMBER_REQUEST_BUDGET = 256
MEMBER_REQUESTS_MIN = 4


def member_request_slots(members: int) -> int:
    """Requests in flight to one member at once when `members` members share the budget."""
    return max(MEMBER_REQUESTS_MIN, min(MEMBER_CONNECTIONS, MEMBER_REQUEST_BUDGET // max(1, members)))


class Slots:
    """At most `size` holders at once, first come first served; the size may change at any time (a
    smaller one lets nobody new in until enough holders have left)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.held = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    def resize(self, size: int) -> None:
        self.size = size
        self._grant()

    async def __aenter__(self) -> None:
        if self.held < self.size and not self._waiting:
            self.held += 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # granted, then cancelled before it ran: the slot goes to the next
            raise

    async def __aexit__(self, *_: object) -> None:
        self._release()

    def _release(self) -> None:
        self.held -= 1
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self.held < self.size:
            turn = self._waiting.popleft()
            if not turn.done():  # a waiter cancelled meanwhile is skipped
                self.held += 1
                turn.set_result(None)

# The read buffer of each TLS connection. asyncio's SSLProtocol allocates (and zeroes) 256 KiB per
# connection (`max_size`, Python 3.11 and 3.12) although OpenSSL hands over at most one TLS record,
# 16 KiB, per read: a controller with 11 connections to each of 50 members held 140 MiB of mostly
# empty buffers. 32 KiB per connection: RSS per connection 97 KiB instead of 321 (0.30x,
# e2e/bench/tls_buffers.py, 2026-12-05).
TLS_READ_BUFFER = 32 * 1024


def limit_tls_read_buffers(size: int = TLS_READ_BUFFER) -> None:
    """Make asyncio's TLS connections opened from now on in this process read through `size` bytes
    instead of 256 KiB. Process-wide (asyncio has no per-connection setting); a Python without the
    attribute keeps its own buffers."""
    protocol = getattr(asyncio, "sslproto", None)
    cls = getattr(protocol, "SSLProtocol", None)
    if cls is not None and isinstance(getattr(cls, "max_size", None), int) and cls.max_size > size:
        cls.max_size = size


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


# A watch ends after a random 5 to 10 minutes (client-go's reflector does the same): the watches of a
# fleet's members start together (a bulk plans a kind on every member at once), and with one fixed
# timeout they all ended, re-watched and, from a compacted revision, relisted at the same instant —
# measured at 50 dense members: 10.6 CPU-seconds of the members' API servers within 5 s, an edit then
# took 5.4 s to reach every member instead of 0.3 s.
MIN_WATCH_TIMEOUT = 300


def watch_timeout(draw: Callable[[], float] = random.random) -> int:
    """Seconds a watch asks the server to run: MIN_WATCH_TIMEOUT x [1, 2)."""
    return int(MIN_WATCH_TIMEOUT * (1.0 + draw()))


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


# ---- the kubeconfig loader (kubectl's rules) ----

class KubeconfigError(Exception):
    """A kubeconfig that cannot be used; the message names the file, the entry and what to do."""


# Fields holding a file name, per kubeconfig section (client-go's ResolvePaths): resolved against the
# directory of the file that names them. `exec.command` only when it contains a path separator.
_FILE_FIELDS = {"cluster": ("certificate-authority",),
                "user": ("client-certificate", "client-key", "tokenFile")}
# What `kubectl config view --flatten` embeds: file field -> data field.
_EMBEDDED = {"certificate-authority": "certificate-authority-data",
             "client-certificate": "client-certificate-data", "client-key": "client-key-data"}


@dataclass(frozen=True)
class Kubeconfig:
    """One context of a (merged) kubeconfig with its cluster and user, every file name absolute:
    what kubectl uses for a command. `as_dict()` is the minified kubeconfig (`kubectl config view --minify`)."""

    context: str
    cluster_name: str
    cluster: Mapping[str, Any]
    user_name: str
    user: Mapping[str, Any]
    namespace: str | None  # the context's namespace (kubectl's default for -n)
    sources: tuple[str, ...] = field(default=())  # the files it was merged from, for messages

    @property
    def where(self) -> str:
        return ", ".join(self.sources) or "the kubeconfig"

    def as_dict(self) -> dict[str, Any]:
        context: dict[str, Any] = {"cluster": self.cluster_name}
        if self.user_name:
            context["user"] = self.user_name
        if self.namespace:
            context["namespace"] = self.namespace
        return {"apiVersion": "v1", "kind": "Config", "current-context": self.context,
                "clusters": [{"name": self.cluster_name, "cluster": dict(self.cluster)}],
                "users": [{"name": self.user_name or "user", "user": dict(self.user)}],
                "contexts": [{"name": self.context,
                              "context": {**context, "user": self.user_name or "user"}}]}


def _resolve(value: Any, base: str | None) -> Any:
    if base is None or not isinstance(value, str) or not value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def _resolved_entry(kind: str, entry: Mapping[str, Any], base: str | None) -> dict[str, Any]:
    out = dict(entry)
    for key in _FILE_FIELDS[kind]:
        if key in out:
            out[key] = _resolve(out[key], base)
    exec_ = out.get("exec")
    if kind == "user" and isinstance(exec_, Mapping) and os.sep in str(exec_.get("command", "")):
        out["exec"] = {**exec_, "command": _resolve(exec_["command"], base)}
    return out


def merge_kubeconfigs(documents: Sequence[tuple[str | None, Mapping[str, Any]]]) -> dict[str, Any]:
    """kubectl's merge of the KUBECONFIG files, in order: the first file to define a cluster, user or
    context name wins it whole (later ones are ignored, not merged into it); the first non-empty
    current-context wins. File names are made absolute against the directory of the file that names
    them (a document whose path is None keeps its names). Pure."""
    merged: dict[str, dict[str, tuple[dict[str, Any], str]]] = {"clusters": {}, "users": {}, "contexts": {}}
    current = ""
    for path, doc in documents:
        if not isinstance(doc, Mapping):
            raise KubeconfigError(f"kubeconfig {path or '(inline)'} is not a kubeconfig (a YAML mapping with "
                                  "clusters, users, contexts)")
        base = os.path.dirname(os.path.abspath(path)) if path else None
        for section, kind in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            entries = doc.get(section) or []
            if not isinstance(entries, list):
                raise KubeconfigError(f"kubeconfig {path or '(inline)'}: {section} must be a list")
            for item in entries:
                if not isinstance(item, Mapping) or not item.get("name"):
                    raise KubeconfigError(f"kubeconfig {path or '(inline)'}: an entry of {section} has no name")
                if item["name"] in merged[section]:
                    continue
                body = item.get(kind) or {}
                if not isinstance(body, Mapping):
                    raise KubeconfigError(f"kubeconfig {path or '(inline)'}: {section} {item['name']!r} "
                                          f"has no {kind} mapping")
                if kind != "context":
                    body = _resolved_entry(kind, body, base)
                merged[section][str(item["name"])] = (dict(body), path or "(inline)")
        if not current and doc.get("current-context"):
            current = str(doc["current-context"])
    return {"current-context": current, **merged}


def select_context(merged: Mapping[str, Any], context: str | None, sources: Sequence[str] = ()) -> Kubeconfig:
    """The context `context` (else the merged current-context) with its cluster and user. Pure."""
    where = ", ".join(sources) or "the kubeconfig"
    contexts: Mapping[str, tuple[dict[str, Any], str]] = merged["contexts"]
    known = ", ".join(sorted(contexts)) or "none"
    name = context or merged.get("current-context") or ""
    if not name:
        raise KubeconfigError(f"{where} sets no current-context: pass --context (contexts: {known})")
    if name not in contexts:
        raise KubeconfigError(f"context {name!r} is not in {where} (contexts: {known})")
    ctx, ctx_source = contexts[name]
    cluster_name, user_name = str(ctx.get("cluster") or ""), str(ctx.get("user") or "")
    if cluster_name not in merged["clusters"]:
        raise KubeconfigError(f"context {name!r} ({ctx_source}) names cluster {cluster_name!r}, which is not in "
                              f"{where}")
    if user_name and user_name not in merged["users"]:
        raise KubeconfigError(f"context {name!r} ({ctx_source}) names user {user_name!r}, which is not in {where}")
    cluster = merged["clusters"][cluster_name][0]
    if not cluster.get("server"):
        raise KubeconfigError(f"cluster {cluster_name!r} in {where} has no server")
    user = merged["users"][user_name][0] if user_name else {}
    return Kubeconfig(context=name, cluster_name=cluster_name, cluster=cluster, user_name=user_name, user=user,
                      namespace=str(ctx["namespace"]) if ctx.get("namespace") else None, sources=tuple(sources))


def kubeconfig_paths(explicit: str | None, environ: Mapping[str, str] | None = None,
                     flag: str = "--kubeconfig") -> list[str]:
    """kubectl's precedence: --kubeconfig (one file, must exist), else every existing file of the
    KUBECONFIG path list (empty and missing entries skipped), else ~/.kube/config."""
    env = os.environ if environ is None else environ
    if explicit:
        path = os.path.expanduser(explicit)
        if not os.path.isfile(path):
            raise KubeconfigError(f"kubeconfig {explicit} does not exist (check {flag})")
        return [path]
    listed = [os.path.expanduser(p) for p in env.get("KUBECONFIG", "").split(os.pathsep) if p.strip()]
    if listed:
        found = [p for p in listed if os.path.isfile(p)]
        if not found:
            raise KubeconfigError(f"none of the KUBECONFIG files exists ({os.pathsep.join(listed)}): "
                                  "set KUBECONFIG or pass --kubeconfig")
        return found
    home = os.path.join(env.get("HOME") or os.path.expanduser("~"), ".kube", "config")
    if not os.path.isfile(home):
        raise KubeconfigError(f"no kubeconfig: KUBECONFIG is not set and {home} does not exist "
                              "(pass --kubeconfig or set KUBECONFIG)")
    return [home]


def read_kubeconfig_file(path: str) -> dict[str, Any]:
    try:
        with open(path) as fh:
            doc = yaml.safe_load(fh)
    except OSError as err:
        raise KubeconfigError(f"cannot read kubeconfig {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise KubeconfigError(f"kubeconfig {path} is not valid YAML{at}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise KubeconfigError(f"kubeconfig {path} is not a kubeconfig (a YAML mapping with clusters, users, "
                              "contexts)")
    return doc


def load_kubeconfig(explicit: str | None = None, context: str | None = None,
                    environ: Mapping[str, str] | None = None, flag: str = "--kubeconfig") -> Kubeconfig:
    """The kubeconfig kubectl would use: see `kubeconfig_paths`, `merge_kubeconfigs`, `select_context`.
    Referenced files must exist (KubeconfigError names the first missing one). `flag` names the
    option that gave `explicit`, for messages."""
    paths = kubeconfig_paths(explicit, environ, flag)
    merged = merge_kubeconfigs([(p, read_kubeconfig_file(p)) for p in paths])
    found = select_context(merged, context, paths)
    for kind, entry, name in (("cluster", found.cluster, found.cluster_name), ("user", found.user, found.user_name)):
        for key in _FILE_FIELDS[kind]:
            data_key = _EMBEDDED.get(key, "token" if key == "tokenFile" else "")
            if entry.get(key) and not entry.get(data_key) and not os.path.isfile(entry[key]):
                raise KubeconfigError(f"{kind} {name!r} in {found.where}: {key} {entry[key]} does not exist")
    return found


def kubeconfig_from_dict(config: Mapping[str, Any], context: str | None = None,
                         source: str = "(inline)") -> Kubeconfig:
    """A kubeconfig held in memory (a member's Secret): file names are kept as written."""
    return select_context(merge_kubeconfigs([(None, config)]), context, [source])


def flatten(config: Kubeconfig) -> Kubeconfig:
    """`kubectl config view --flatten`: certificate and key files embedded as their *-data fields."""
    def embed(entry: Mapping[str, Any], what: str) -> dict[str, Any]:
        out = dict(entry)
        for key, data_key in _EMBEDDED.items():
            if key in out:
                path = out.pop(key)
                if not out.get(data_key):
                    try:
                        with open(path, "rb") as fh:
                            out[data_key] = base64.b64encode(fh.read()).decode()
                    except OSError as err:
                        raise KubeconfigError(f"{what}: cannot read {key} {path}: {err.strerror or err}") from None
        return out

    return replace(config, cluster=embed(config.cluster, f"cluster {config.cluster_name!r}"),
                   user=embed(config.user, f"user {config.user_name!r}"))


def portability_problem(config: Kubeconfig) -> str | None:
    """Why the controller's Pod could not use these credentials (None: it can): they run a program or
    an auth provider of this machine, or name a file the Pod does not have (after `flatten`: a token
    file). Pure."""
    user, name = config.user, config.user_name
    if user.get("exec"):
        command = (user["exec"] or {}).get("command", "?") if isinstance(user["exec"], Mapping) else "?"
        return (f"user {name!r} gets its credentials from the exec plugin {command!r}, which the controller's "
                "Pod cannot run: use a ServiceAccount token or a client certificate (README: Registering a real "
                "cluster)")
    if user.get("auth-provider"):
        provider = (user["auth-provider"] or {}).get("name", "?") if isinstance(user["auth-provider"], Mapping) \
            else "?"
        return (f"user {name!r} uses the {provider!r} auth provider, which the controller's Pod cannot use: use a "
                "ServiceAccount token or a client certificate (README: Registering a real cluster)")
    for key in ("tokenFile", *_EMBEDDED):
        if config.user.get(key) or (key == "certificate-authority" and config.cluster.get(key)):
            return (f"{key} {config.user.get(key) or config.cluster.get(key)} is a file of this machine, which the "
                    "controller's Pod does not have: embed it (a token as `token:`)")
    return None


async def load_configuration(config: Kubeconfig) -> Configuration:
    """kubernetes-asyncio's Configuration for `config` (runs an exec plugin or auth provider if the
    user has one): the one place a kubeconfig becomes connection settings, for KubeClient and kopf."""
    from kubernetes_asyncio.config.config_exception import ConfigException

    cfg: Configuration = type.__call__(Configuration)
    loader = kube_config.KubeConfigLoader(config_dict=config.as_dict(), config_base_path="")
    try:
        await loader.load_and_set(cfg)
        _ssl_context(cfg)  # a bad certificate or key file fails here, naming the kubeconfig
    except (ConfigException, ssl.SSLError, OSError, ValueError) as err:
        raise KubeconfigError(f"context {config.context!r} in {config.where}: {err}") from None
    cfg.connection_pool_maxsize = 64
    if config.user.get("exec") and "BearerToken" in cfg.api_key and hasattr(loader, "exec_plugin_expiry"):
        cfg.refresh_api_key_hook = _exec_token_refresher(loader)
    return cfg


def _exec_token_refresher(loader: Any) -> Callable[[Configuration], Awaitable[None]]:
    """A hook kubernetes-asyncio calls before each request's credentials are read: runs the user's exec
    plugin again once the token it gave has expired (its `expirationTimestamp`, as client-go does), so
    a long-running controller keeps a short-lived token (EKS, GKE, OIDC helpers) fresh. A token without
    an expiry is kept for the life of the client, also as client-go does."""
    lock = asyncio.Lock()

    async def refresh(cfg: Configuration) -> None:
        async with lock:  # one plugin run for the requests that find the token expired together
            await loader.load_from_exec_plugin()  # returns at once while the token is still valid
            cfg.api_key["BearerToken"] = loader.token

    return refresh


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
    def __init__(self, api: ApiClient, name: str, *, attempts: int = 3, deadlines: Deadlines | None = None,
                 connections: int | None = None) -> None:
        self.api = api
        self.name = name
        self.host = str(api.configuration.host or "").rstrip("/")
        self.attempts = attempts
        # Connections for requests (None: kubernetes-asyncio's pool size); watches do not count.
        self.connections = connections or api.configuration.connection_pool_maxsize or 64
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
        self._watch_session: aiohttp.ClientSession | None = None
        self._probe_session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None
        # Requests in flight at once beyond the pool's own bound (a member's share of
        # MEMBER_REQUEST_BUDGET); probes do not count. None: the pool's bound only.
        self.slots: Slots | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """Our own session for requests (created lazily inside the running loop) with trust_env off; the
        proxy is resolved once (`_proxy_for`). kubernetes-asyncio's TLS settings; `connections` at most."""
        if self._session is None:
            limit_tls_read_buffers()
            connector = aiohttp.TCPConnector(limit=self.connections, ssl=self._ssl_context())
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False, read_bufsize=2**21)
        return self._session

    @property
    def watch_session(self) -> aiohttp.ClientSession:
        """The session of watches: a connection each, for as long as the watch lasts, apart from the
        requests' pool (a watch never waits for a request's connection, nor a request for a watch's)."""
        if self._watch_session is None:
            limit_tls_read_buffers()
            connector = aiohttp.TCPConnector(limit=0, ssl=self._ssl_context())
            self._watch_session = aiohttp.ClientSession(connector=connector, trust_env=False, read_bufsize=2**21)
        return self._watch_session

    @property
    def probe_session(self) -> aiohttp.ClientSession:
        """One connection for a member's probe (its periodic reads), apart from the requests' pool. A
        probe then never waits behind a bulk's writes for a connection, so its latency is the server's.
        And the pool empties when the writes stop: aiohttp hands out its idle connections first in,
        first out, so a probe's four requests every 5 s through the pool kept
        all 16 of each member's pooled connections from ever idling out (20 members, idle: 368 TLS
        connections, 35 of the controller's 151 MiB)."""
        if self._probe_session is None:
            limit_tls_read_buffers()
            connector = aiohttp.TCPConnector(limit=1, ssl=self._ssl_context())
            self._probe_session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._probe_session

    def _ssl_context(self) -> ssl.SSLContext:
        """One TLS context for all sessions (each holds its CA bundle and client certificate)."""
        if self._ssl is None:
            self._ssl = _ssl_context(self.api.configuration)
        return self._ssl

    def stalled(self, after: float, now: float | None = None,
                own_stall: Callable[[float], float] | None = None) -> float | None:
        """Since when (monotonic) a request has waited more than `after` seconds with no answer to any
        request in that time; None when the server answers (or nothing is in flight). `own_stall(t)`:
        how long this process's own event loop could not run since monotonic time `t`, left out of both
        waits (an answer that came while the loop was starved of CPU is not read yet, and the member
        is not the one to blame)."""
        if not self._inflight:
            return None
        now = time.monotonic() if now is None else now
        oldest = min(self._inflight.values())

        def waited(since: float) -> float:
            if own_stall is None or now - since <= after:  # most calls: no need to ask
                return now - since
            return now - since - own_stall(since)

        if waited(oldest) > after and waited(self.last_answer) > after:
            return oldest
        return None

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @classmethod
    async def from_kubeconfig(cls, config: Kubeconfig, name: str, *, attempts: int = 3,
                              deadlines: Deadlines | None = None, connections: int | None = None) -> KubeClient:
        return cls(ApiClient(configuration=await load_configuration(config)), name, attempts=attempts,
                   deadlines=deadlines, connections=connections)

    @classmethod
    async def from_kubeconfig_dict(cls, config: Mapping[str, Any], name: str, *, attempts: int = 3,
                                   deadlines: Deadlines | None = None,
                                   connections: int | None = None) -> KubeClient:
        return await cls.from_kubeconfig(kubeconfig_from_dict(config, source=name), name, attempts=attempts,
                                         deadlines=deadlines, connections=connections)

    @classmethod
    async def from_kubeconfig_file(cls, path: str, name: str, *, attempts: int = 3, context: str | None = None,
                                   deadlines: Deadlines | None = None) -> KubeClient:
        return await cls.from_kubeconfig(load_kubeconfig(path, context), name, attempts=attempts, deadlines=deadlines)

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
        for session in (self._session, self._watch_session, self._probe_session):
            if session is not None:
                await session.close()
        await self.api.close()

    async def _headers(self, content_type: str, accept: str = "application/json") -> dict[str, str]:
        headers = {"Content-Type": content_type, "Accept": accept}
        await self.api.update_params_for_auth(headers, [], ["BearerToken"])
        return headers

    async def _exchange(self, method: str, path: str, query: Mapping[str, Any] | None, body: Any,
                        content_type: str, timeout: float, accept: str = "application/json",
                        if_none_match: str | None = None,
                        probe: bool = False) -> tuple[int, bytes, str | None, float | None]:
        """One HTTP exchange: (status, body, ETag, Retry-After seconds). `probe`: through the probe
        connection (`probe_session`), not the requests' pool. A request waits for one of the client's
        `slots` first (not counted in its timeout, nor in flight: `stalled()` is about the server)."""
        if self.slots is None or probe:
            return await self._send(method, path, query, body, content_type, timeout, accept, if_none_match, probe)
        async with self.slots:
            return await self._send(method, path, query, body, content_type, timeout, accept, if_none_match, probe)

    async def _send(self, method: str, path: str, query: Mapping[str, Any] | None, body: Any, content_type: str,
                    timeout: float, accept: str, if_none_match: str | None,
                    probe: bool) -> tuple[int, bytes, str | None, float | None]:
        """The exchange itself, counted in flight meanwhile."""
        headers = await self._headers(content_type, accept)
        if if_none_match:
            headers["If-None-Match"] = if_none_match
        session = self.probe_session if probe else self.session
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
                etag = resp.headers.get("ETag")
                retry_after = retry_after_seconds(status, resp.headers.get("Retry-After"))
            self.last_answer = time.monotonic()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            timed_out = isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError)
            what = f"no answer within {timeout:.0f}s" if timed_out and not str(exc) else f"{type(exc).__name__}: {exc}"
            raise ApiError(0, "Unreachable", f"{self.name}: {what}", timed_out=timed_out) from None
        finally:
            self._inflight.pop(request_id, None)
        return status, raw, etag, retry_after

    @staticmethod
    def _payload(status: int, raw: bytes, retry_after: float | None) -> dict[str, Any]:
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {"message": raw.decode(errors="replace")[:500]}
        if status >= 300:
            raise ApiError(status, str(payload.get("reason", "")), str(payload.get("message", payload)), payload,
                           retry_after=retry_after)
        return payload if isinstance(payload, dict) else {"value": payload}

    async def _once(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None,
        body: Any,
        content_type: str,
        timeout: float,
        accept: str = "application/json",
        probe: bool = False,
    ) -> dict[str, Any]:
        status, raw, _, retry_after = await self._exchange(method, path, query, body, content_type, timeout, accept,
                                                           probe=probe)
        return self._payload(status, raw, retry_after)

    async def get_unless_unchanged(self, path: str, etag: str | None, *, timeout: float,
                                   accept: str = "application/json",
                                   probe: bool = False) -> tuple[dict[str, Any] | None, str | None]:
        """GET `path` once, unless it still has `etag` (If-None-Match; the API server answers 304 and no
        body): (None, etag) then, else (the object, its ETag, None if the server gave none)."""
        status, raw, answered, retry_after = await self._exchange("GET", path, None, None, "application/json",
                                                                  timeout, accept, if_none_match=etag, probe=probe)
        if status == 304 and etag:
            return None, etag
        return self._payload(status, raw, retry_after), answered

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
        probe: bool = False,
    ) -> dict[str, Any]:
        """One call within `timeout` seconds (default: the client's whole-request deadline), retries
        included: each attempt gets what is left of it. Transient failures are retried `attempts` times;
        a 429 with Retry-After up to SERVER_DIRECTED_RETRIES times, after the pause it asks for.
        `retry=False` (probes, leases): one attempt, the answer as it is. `probe=True`: through the probe
        connection (`probe_session`)."""
        budget = timeout if timeout is not None else self.deadlines.total
        if not retry:
            return await self._once(method, path, query, body, content_type, budget, accept, probe=probe)
        deadline = time.monotonic() + budget
        for asked in range(SERVER_DIRECTED_RETRIES + 1):
            try:
                return await self._attempts(method, path, query, body, content_type, budget, deadline, accept,
                                            probe)
            except ApiError as exc:
                pause = exc.retry_after
                if pause is None or asked == SERVER_DIRECTED_RETRIES or time.monotonic() + pause > deadline - 0.05:
                    raise
                log.debug("%s: %s %s answered 429, trying again in %.0fs as asked", self.name, method, path, pause)
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempts(self, method: str, path: str, query: Mapping[str, Any] | None, body: Any,
                        content_type: str, budget: float, deadline: float, accept: str,
                        probe: bool = False) -> dict[str, Any]:
        """Up to `attempts` tries until `deadline`, backing off between transient failures."""
        if self.attempts <= 1:
            return await self._once(method, path, query, body, content_type, deadline - time.monotonic(), accept,
                                    probe=probe)
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
                return await self._once(method, path, query, body, content_type, left, accept, probe=probe)
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
        timeout_seconds: int | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """Stream watch events from `resource_version`; raises Gone on 410, ApiError otherwise.
        `metadata_only`: the objects are PartialObjectMetadata (no spec, data or status).
        `timeout_seconds`: how long the server runs the watch; by default `watch_timeout()`."""
        if timeout_seconds is None:
            timeout_seconds = watch_timeout()
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
        session = self.watch_session
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

    async def json_patch(self, path: str, operations: Sequence[Mapping[str, Any]], *, field_manager: str
                         ) -> dict[str, Any]:
        """A JSON patch (RFC 6902); a failing `test` operation answers 422 and changes nothing."""
        return await self.request("PATCH", path, query={"fieldManager": field_manager}, body=list(operations),
                                  content_type="application/json-patch+json")

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

