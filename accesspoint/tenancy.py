"""Tenancy on a shared hub: the TenancyPolicy model, namespace confinement and host ownership.

Pure and deterministic (no I/O, no clock); imports accesspoint.meta, accesspoint.models and
accesspoint.render only. The hub wiring (watches, the index fed by hub events, the checks at the
AccessPoint, NameService and Certificate reconciles) is federation/tenancy.py.

**Namespace confinement.** Every object meshfed writes for an AccessPoint in hub namespace N lands
in namespace N of each member, unless a TenancyPolicy (cluster-scoped: tenants cannot edit it) lists
N in `spec.namespaces` and the target namespace in `spec.targetNamespaces` (optionally only for some
kinds). Generated TLS Secrets (certificates) land beside their Gateway, so they may go wherever a
Gateway of that AccessPoint may. Checked on the template (`template_problems`, naming
`spec.template[i].metadata.namespace`) and on every rendered per-cluster object
(`rendered_problems`: variables in a namespace, overrides, generated objects).

**Host ownership.** A *claim* is a host of a hub object: Gateway server hosts, VirtualService and
ServiceEntry hosts, Gateway API hostnames (AccessPoint templates and the hosts their overrides set),
a NameService's FQDN, a Certificate's hosts (once an AccessPoint of its name exists). Claims are
compared as patterns, on the template: the per-AccessPoint variables `${namespace}` / `${name}` are
substituted, while `${cluster}`, `${zone}` and `${region}` stand for any text (so ownership never
depends on the fleet: adding a region cannot move a host), as does Istio's leading `*` wildcard. Two
claims collide when some host matches both. A claim by namespace N is refused (`HostConflict`) when:

1. a TenancyPolicy assigns the host to other namespaces (`spec.domains`: `shop.example.com` exactly,
   `*.shop.example.com` every name below it, `*` everything; the most specific assignment covering
   the claim decides, and a more specific assignment to someone else inside it is theirs); or
2. it is a wildcard (`*.x`, `*`) that no TenancyPolicy assigns to N (wildcards only by policy); or
3. it is `<svc>.<ns>.svc.cluster.local` with ns != N (a Service name belongs to its namespace); or
4. an earlier claim of another namespace collides with it and is itself granted. "Earlier" is the
   claiming object's (creationTimestamp, namespace, name, kind, uid): the verdict is a function of
   the set of claims and policies, the same whatever order the events arrived in, and it survives a
   restart because it is recomputed from what the hub holds. Deleting the owner frees the host.

Claims of one namespace never conflict with each other (one team's AccessPoint, NameService and
Certificate share their hosts).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from accesspoint.meta import AGE, ApiModel, CRDInfo, PrinterColumn, Resource
from accesspoint.models import AccessPoint, TemplateKind

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DOMAIN_PATTERN = r"^(\*|(\*\.)?[a-zA-Z0-9_]([-a-zA-Z0-9_]*[a-zA-Z0-9])?(\.[a-zA-Z0-9_]([-a-zA-Z0-9_]*[a-zA-Z0-9])?)*)$"
HOST_CONFLICT = "HostConflict"
NAMESPACE_NOT_ALLOWED = "NamespaceNotAllowed"


# ---- the API ----


class TargetNamespace(ApiModel):
    namespace: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL,
                           description="A member namespace the AccessPoints of spec.namespaces may write to.")
    # The template kinds' enum (accesspoint.models.TemplateKind): a typo is refused by the API server.
    kinds: list[TemplateKind] = Field(default_factory=list, description=(
        "Template kinds allowed there (e.g. Gateway); empty: every kind. TLS Secrets follow their Gateway."))


class TenancyPolicySpec(ApiModel):
    namespaces: list[str] = Field(min_length=1, description="Hub namespaces this policy is for.")
    target_namespaces: list[TargetNamespace] = Field(
        default_factory=list, alias="targetNamespaces",
        description="Member namespaces besides their own that their objects may land in.")
    domains: list[str] = Field(default_factory=list, description=(
        "Hosts assigned to these namespaces: 'shop.example.com' exactly, '*.shop.example.com' every "
        "name below it (and wildcard hosts there), '*' every host. Other namespaces cannot claim them."))


class TenancyPolicy(Resource):
    crd = CRDInfo(
        kind="TenancyPolicy",
        plural="tenancypolicies",
        singular="tenancypolicy",
        scope="Cluster",
        short_names=("tnp",),
        printer_columns=(
            PrinterColumn("Namespaces", ".spec.namespaces", description="hub namespaces"),
            PrinterColumn("Targets", ".spec.targetNamespaces", description="extra member namespaces (and kinds)"),
            PrinterColumn("Domains", ".spec.domains", description="hosts assigned"),
            AGE,
        ),
        status_subresource=False,
    )
    kind: str = "TenancyPolicy"
    spec: TenancyPolicySpec


class Problem(str):
    """A refusal message (naming its field) with the condition reason it is reported under."""

    reason: str

    def __new__(cls, message: str, reason: str) -> Problem:
        obj = super().__new__(cls, message)
        obj.reason = reason
        return obj


# ---- patterns ----

_VARIABLE = re.compile(r"\$\{(cluster|zone|region)\}")


def host_glob(host: str, namespace: str, name: str) -> str:
    """A host as a pattern: lower case, `${namespace}`/`${name}` substituted, `${cluster}`,
    `${zone}`, `${region}` and Istio's leading `*` as `*` (any non-empty text)."""
    text = host.strip().lower().rstrip(".").replace("$${", "\x00")
    text = text.replace("${namespace}", namespace).replace("${name}", name)
    text = _VARIABLE.sub("*", text).replace("\x00", "${")
    return re.sub(r"\*+", "*", text)


def is_wildcard(host: str) -> bool:
    """Istio wildcard hosts (`*`, `*.example.com`), as opposed to variables."""
    return host.strip() == "*" or host.strip().startswith("*.")


def glob_match(glob: str, text: str) -> bool:
    return _compiled(glob).fullmatch(text) is not None


_REGEX: dict[str, re.Pattern[str]] = {}


def _compiled(glob: str) -> re.Pattern[str]:
    hit = _REGEX.get(glob)
    if hit is None:
        if len(_REGEX) > 65536:
            _REGEX.clear()
        hit = _REGEX[glob] = re.compile(".+".join(re.escape(p) for p in glob.split("*")), re.S)
    return hit


def overlap(a: str, b: str) -> bool:
    """Whether some non-empty-substituted string matches both globs (`*` = one or more chars)."""
    if a == b:
        return True
    if "*" not in a:
        return a == b if "*" not in b else glob_match(b, a)
    if "*" not in b:
        return glob_match(a, b)
    pa, pb = a.split("*")[0], b.split("*")[0]
    sa, sb = a.rsplit("*", 1)[1], b.rsplit("*", 1)[1]
    if not (pa.startswith(pb) or pb.startswith(pa)) or not (sa.endswith(sb) or sb.endswith(sa)):
        return False
    # Both have stars: a DP over the two patterns, `*` consuming one or more characters of the
    # other side (a literal, or the other's star), tracking whether the current star is satisfied.
    return _overlap_dp(a, b)


def _overlap_dp(a: str, b: str) -> bool:
    stack: list[tuple[int, int, bool, bool]] = [(0, 0, False, False)]
    seen: set[tuple[int, int, bool, bool]] = set()
    # Iterative search over states: (i, j, in_a_star, in_b_star) where in_x_star means a[i]/b[j] is
    # a star that has already consumed at least one character (so it may now end).
    while stack:
        state = stack.pop()
        if state in seen:
            continue
        seen.add(state)
        i, j, sa, sb = state
        if i == len(a) and j == len(b):
            return True
        ca = a[i] if i < len(a) else None
        cb = b[j] if j < len(b) else None
        nxt: list[tuple[int, int, bool, bool]] = []
        if ca == "*" and sa:
            nxt.append((i + 1, j, False, sb))  # a's star ends
        if cb == "*" and sb:
            nxt.append((i, j + 1, sa, False))  # b's star ends
        if ca is not None and cb is not None:
            if ca == "*" and cb == "*":
                nxt.append((i, j, True, True))  # both consume one common char
            elif ca == "*":
                nxt.append((i, j + 1, True, sb))  # a's star consumes b's literal
            elif cb == "*":
                nxt.append((i + 1, j, sa, True))  # b's star consumes a's literal
            elif ca == cb:
                nxt.append((i + 1, j + 1, False, False))
        stack.extend(s for s in nxt if s not in seen)
    return False


# ---- policies ----


@dataclass(frozen=True)
class Assignment:
    domain: str  # as written, lower case
    glob: str
    namespaces: frozenset[str]
    policies: tuple[str, ...]

    @property
    def specificity(self) -> tuple[int, int]:
        if self.domain == "*":
            return (0, 0)
        labels = self.domain.count(".") + 1
        return (labels - (1 if self.domain.startswith("*.") else 0), 0 if self.domain.startswith("*.") else 1)

    def covers(self, glob: str) -> bool:
        """Every host the claim `glob` can be is inside this assignment."""
        if self.domain == "*":
            return True
        if not self.domain.startswith("*."):
            return glob == self.domain
        suffix = self.domain[1:]  # ".shop.example.com"
        tail = glob.rsplit("*", 1)[-1]
        if "*" not in glob:
            return glob.endswith(suffix) and len(glob) > len(suffix)
        return tail.endswith(suffix) and (len(tail) > len(suffix) or glob != tail)


@dataclass(frozen=True)
class Policies:
    """The TenancyPolicies of the hub, indexed (build once per policy change)."""

    targets: Mapping[str, Mapping[str, frozenset[str] | None]] = field(default_factory=dict)
    assignments: tuple[Assignment, ...] = ()
    by_namespace: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @staticmethod
    def build(policies: Iterable[TenancyPolicy]) -> Policies:
        targets: dict[str, dict[str, frozenset[str] | None]] = {}
        domains: dict[str, tuple[set[str], set[str]]] = {}
        names: dict[str, list[str]] = {}
        for pol in sorted(policies, key=lambda p: p.name):
            for ns in pol.spec.namespaces:
                names.setdefault(ns, []).append(pol.name)
                allowed = targets.setdefault(ns, {})
                for t in pol.spec.target_namespaces:
                    have = allowed.get(t.namespace, frozenset())
                    if not t.kinds or have is None:
                        allowed[t.namespace] = None
                    else:
                        allowed[t.namespace] = have | frozenset(t.kinds)
            for d in pol.spec.domains:
                key = d.strip().lower().rstrip(".")
                entry = domains.setdefault(key, (set(), set()))
                entry[0].update(pol.spec.namespaces)
                entry[1].add(pol.name)
        assignments = tuple(
            Assignment(d, "*" if d == "*" else d, frozenset(nss), tuple(sorted(pols)))
            for d, (nss, pols) in sorted(domains.items())
        )
        return Policies(targets, assignments, {k: tuple(v) for k, v in names.items()})

    def allowed(self, hub_namespace: str, target: str, kind: str) -> bool:
        if target == hub_namespace:
            return True
        kinds = self.targets.get(hub_namespace, {}).get(target, frozenset())
        return kinds is None or kind in kinds

    def describe(self, hub_namespace: str) -> str:
        names = self.by_namespace.get(hub_namespace)
        return f"TenancyPolicy {', '.join(names)}" if names else "no TenancyPolicy"


def namespace_message(hub_namespace: str, target: str, kind: str, policies: Policies) -> str:
    allowed = policies.targets.get(hub_namespace, {}).get(target, frozenset())
    if allowed:
        return (f"namespace {target} is not allowed for {kind} objects of AccessPoints in {hub_namespace} "
                f"({policies.describe(hub_namespace)} allows only {', '.join(sorted(allowed))} there)")
    return f"namespace {target} is not allowed for AccessPoints in {hub_namespace}"


_PER_CLUSTER = re.compile(r"\$\{(cluster|zone|region)\}")


def template_problems(ap: AccessPoint, policies: Policies) -> list[Problem]:
    """Template objects aimed at a namespace the AccessPoint may not write to (decidable before
    rendering: namespaces without per-cluster variables)."""
    out: list[Problem] = []
    for i, obj in enumerate(ap.spec.template):
        raw = obj.metadata.namespace
        if raw is None:
            continue
        target = raw.replace("${namespace}", ap.namespace).replace("${name}", ap.name)
        if _PER_CLUSTER.search(target) or "$" in target:
            continue  # decided per cluster (rendered_problems)
        if not policies.allowed(ap.namespace, target, obj.kind):
            out.append(Problem(f"spec.template[{i}].metadata.namespace: "
                               f"{namespace_message(ap.namespace, target, obj.kind, policies)}",
                               NAMESPACE_NOT_ALLOWED))
    return out


def rendered_problems(ap: AccessPoint, cluster: str, objects: Sequence[Mapping[str, Any]], policies: Policies,
                      claims: Sequence[str]) -> list[Problem]:
    """One cluster's rendered objects (template, generated, overridden): every namespace allowed,
    every host within the AccessPoint's own claims (`claims`: its host globs)."""
    index: dict[tuple[str, str], int] = {(str(o.kind), o.metadata.name): i for i, o in enumerate(ap.spec.template)}
    gateway_ns = {str((o.get("metadata") or {}).get("namespace") or ap.namespace)
                  for o in objects if o.get("kind") == "Gateway"}
    out: list[Problem] = []
    for obj in objects:
        meta = obj.get("metadata") or {}
        kind, name = str(obj.get("kind", "")), str(meta.get("name", ""))
        target = str(meta.get("namespace") or ap.namespace)
        ok = policies.allowed(ap.namespace, target, kind) or (
            kind == "Secret" and target in gateway_ns and policies.allowed(ap.namespace, target, "Gateway"))
        i = _template_index(index, kind, name, ap)
        where = f"spec.template[{i}]" if i is not None else f"generated {kind} {name}"
        if not ok:
            out.append(Problem(f"{where}.metadata.namespace: in cluster {cluster}: "
                               f"{namespace_message(ap.namespace, target, kind, policies)}", NAMESPACE_NOT_ALLOWED))
        if i is None:
            continue  # generated objects carry meshfed's own hosts (federated names), never a tenant's
        for host in object_hosts(obj):
            glob = host_glob(host, ap.namespace, ap.name)
            if _ignored(glob):
                continue
            if not any(glob == c or (("*" in c) and glob_match(c, glob)) for c in claims):
                out.append(Problem(f"{where}: in cluster {cluster}: host {host} is not among the AccessPoint's "
                                   f"hosts (spec.template and spec.overrides hosts are claimed, nothing else)",
                                   HOST_CONFLICT))
    return out


def _template_index(index: Mapping[tuple[str, str], int], kind: str, name: str, ap: AccessPoint) -> int | None:
    hit = index.get((kind, name))
    if hit is not None:
        return hit
    for (k, raw), i in index.items():  # names with variables: compare as patterns
        if k == kind and "$" in raw and glob_match(host_glob(raw, ap.namespace, ap.name), name.lower()):
            return i
    return None


# ---- hosts of objects ----


def object_hosts(obj: Mapping[str, Any]) -> list[str]:
    """The hosts a (template or rendered) object claims: Istio Gateway server hosts (the part after
    `namespace/`), VirtualService / ServiceEntry hosts, Gateway API listener hostnames and route
    hostnames."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    api = str(obj.get("apiVersion", ""))
    out: list[str] = []
    if kind == "Gateway" and api.startswith("gateway.networking.k8s.io/"):
        out += [str(li["hostname"]) for li in spec.get("listeners") or []
                if isinstance(li, dict) and li.get("hostname")]
    elif kind == "Gateway":
        for server in spec.get("servers") or []:
            if isinstance(server, dict):
                out += [str(h).split("/", 1)[-1] for h in server.get("hosts") or []]
    elif kind in ("VirtualService", "ServiceEntry"):
        out += [str(h) for h in spec.get("hosts") or []]
    elif api.startswith("gateway.networking.k8s.io/"):
        out += [str(h) for h in spec.get("hostnames") or []]
    return [h for h in out if h]


_HOST_KEYS = ("hosts", "hostnames", "hostname")


def _strings_under_host_keys(value: Any, inside: bool = False) -> Iterator[str]:
    if isinstance(value, str):
        if inside:
            yield value.split("/", 1)[-1] if "/" in value else value
    elif isinstance(value, list):
        for v in value:
            yield from _strings_under_host_keys(v, inside)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings_under_host_keys(v, inside or k in _HOST_KEYS)


def accesspoint_hosts(ap: AccessPoint) -> list[tuple[str, str]]:
    """(field path, host) of every host an AccessPoint claims: its template objects' hosts and the
    hosts its overrides set."""
    out: list[tuple[str, str]] = []
    for i, obj in enumerate(ap.spec.template):
        for host in object_hosts(obj.wire()):
            out.append((f"spec.template[{i}]", host))
    for i, ov in enumerate(ap.spec.overrides):
        if ov.merge_patch is not None:
            out += [(f"spec.overrides[{i}].mergePatch", h) for h in _strings_under_host_keys(ov.merge_patch)]
        for j, op in enumerate(ov.json_patch or []):
            host_path = any(part in _HOST_KEYS for part in op.path.split("/"))
            out += [(f"spec.overrides[{i}].jsonPatch[{j}]", h)
                    for h in _strings_under_host_keys(op.value, host_path)]
    return out


def _ignored(glob: str) -> bool:
    """Short names (Istio qualifies them with the object's namespace, which confinement decides)."""
    return "." not in glob and glob != "*"


_SERVICE_HOST = re.compile(r"^[^.*]+\.([^.*]+)\.svc\.cluster\.local$")


# ---- the ownership index ----


@dataclass(frozen=True, order=True)
class Source:
    """A hub object that claims hosts, in claim order."""

    created: str  # RFC 3339 (UTC, 'Z'): string order is time order
    namespace: str
    name: str
    kind: str
    uid: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


@dataclass(frozen=True)
class Claim:
    source: Source
    glob: str
    host: str  # as written
    field: str
    wildcard: bool


@dataclass(frozen=True)
class Verdict:
    """A refused claim: why, and who holds the host (or the policy assigning it)."""

    claim: Claim
    message: str


def source_of(body: Mapping[str, Any], kind: str) -> Source:
    meta = body.get("metadata") or {}
    return Source(str(meta.get("creationTimestamp") or "9999"), str(meta.get("namespace", "")),
                  str(meta.get("name", "")), kind, str(meta.get("uid", "")))


def claims_of(source: Source, hosts: Iterable[tuple[str, str]]) -> tuple[Claim, ...]:
    out: dict[tuple[str, str], Claim] = {}
    for path, host in hosts:
        glob = host_glob(host, source.namespace, source.name)
        if not glob or _ignored(glob):
            continue
        out.setdefault((glob, path), Claim(source, glob, host, path, is_wildcard(host)))
    return tuple(out[k] for k in sorted(out))


def _keys(glob: str) -> tuple[str, str | None]:
    """Where a claim is filed: (its tail, its head). The tail is the last (at most two) complete
    labels after the last `*` ("" when none), the head the first complete label before the first
    `*` (None when none). Two claims can only collide when one tail is a label-suffix of the other
    and their heads are equal or one is None."""
    if "*" not in glob:
        labels = glob.split(".")
        return ".".join(labels[-2:]) if len(labels) > 1 else "", labels[0] if len(labels) > 1 else None
    tail_text = glob.rsplit("*", 1)[1]
    tail = tail_text.split(".")[1:]  # the first piece follows the star: not a complete label
    head_text = glob.split("*", 1)[0]
    head = head_text.split(".", 1)[0] if "." in head_text else None
    return ".".join(tail[-2:]), head


class OwnershipIndex:
    """Every claim the hub holds, updated incrementally (`put`/`remove` per source), answering
    `refusals(source)` with memoised verdicts (recomputed lazily after a change)."""

    def __init__(self, policies: Policies | None = None) -> None:
        self.policies = policies or Policies()
        self._claims: dict[tuple[str, str, str], tuple[Claim, ...]] = {}
        self._exact: dict[str, list[Claim]] = {}
        # tail -> head -> claims (patterns and exact hosts); last label -> the tails ending with it
        self._filed: dict[str, dict[str | None, list[Claim]]] = {}
        self._tails: dict[str, set[str]] = {}
        self._granted: dict[Claim, bool] = {}
        self._owner: dict[Claim, Claim | None] = {}
        self._policy_memo: dict[Claim, tuple[str | None, bool]] = {}

    # ---- updates ----

    def set_policies(self, policies: Policies) -> None:
        self.policies = policies
        self._policy_memo.clear()
        self._invalidate()

    def put(self, source: Source, hosts: Iterable[tuple[str, str]]) -> bool:
        """Set the claims of `source` (replacing its earlier ones); True when they changed."""
        claims = claims_of(source, hosts)
        old = self._claims.get(source.key)
        if old == claims:
            return False
        if old is not None:
            self._drop(old)
        self._claims[source.key] = claims
        for c in claims:
            tail, head = _keys(c.glob)
            self._filed.setdefault(tail, {}).setdefault(head, []).append(c)
            self._tails.setdefault(tail.rsplit(".", 1)[-1], set()).add(tail)
            if "*" not in c.glob:
                self._exact.setdefault(c.glob, []).append(c)
        self._invalidate()
        return True

    def remove(self, kind: str, namespace: str, name: str) -> bool:
        old = self._claims.pop((kind, namespace, name), None)
        if old is None:
            return False
        self._drop(old)
        self._invalidate()
        return True

    def _drop(self, claims: Iterable[Claim]) -> None:
        for c in claims:
            tail, head = _keys(c.glob)
            heads = self._filed.get(tail, {})
            filed = heads.get(head, [])
            if c in filed:
                filed.remove(c)
                if not filed:
                    del heads[head]
                    if not heads:
                        del self._filed[tail]
                        last = tail.rsplit(".", 1)[-1]
                        self._tails.get(last, set()).discard(tail)
            exact = self._exact.get(c.glob)
            if exact is not None and c in exact:
                exact.remove(c)
                if not exact:
                    del self._exact[c.glob]

    def _invalidate(self) -> None:
        self._granted.clear()
        self._owner.clear()

    # ---- queries ----

    def claims(self, kind: str, namespace: str, name: str) -> tuple[Claim, ...]:
        return self._claims.get((kind, namespace, name), ())

    def sources(self) -> list[tuple[str, str, str]]:
        return list(self._claims)

    def colliding(self, globs: Iterable[str]) -> set[tuple[str, str, str]]:
        """Sources with a claim colliding with any of `globs` (whose verdicts may change with them)."""
        out: set[tuple[str, str, str]] = set()
        for glob in globs:
            out.update(c.source.key for c in self._candidates(glob))
        return out

    def _candidates(self, glob: str) -> Iterator[Claim]:
        """Every claim colliding with `glob` (each at most once)."""
        tail, head = _keys(glob)
        exact = "*" not in glob
        if exact:
            yield from self._exact.get(glob, ())
        labels = tail.split(".") if tail else []
        tails = {".".join(labels[i:]) for i in range(len(labels))} | {""}  # shorter (suffix) tails
        if len(labels) < 2:  # longer tails ending with ours
            tails |= self._tails.get(tail, set()) if tail else set(self._filed)
        for t in tails:
            heads = self._filed.get(t)
            if not heads:
                continue
            pools = [heads.get(head, []), heads.get(None, [])] if head is not None else list(heads.values())
            for pool in pools:
                for c in pool:
                    if exact and "*" not in c.glob:
                        continue  # exact against exact: the dict above
                    if overlap(c.glob, glob):
                        yield c

    def _policy_refusal(self, c: Claim) -> str | None:
        return self._policy(c)[0]

    def _policy(self, c: Claim) -> tuple[str | None, bool]:
        """(why the policies refuse `c`, or None; whether they assign it to its namespace)."""
        hit = self._policy_memo.get(c)
        if hit is None:
            hit = self._policy_memo[c] = self._policy_uncached(c)
        return hit

    def _policy_uncached(self, c: Claim) -> tuple[str | None, bool]:
        ns = c.source.namespace
        m = _SERVICE_HOST.match(c.glob)
        if m and m.group(1) != ns:
            return f"host {c.host} is a Service name of namespace {m.group(1)}: only that namespace may claim it", \
                False
        covering = [a for a in self.policies.assignments if a.covers(c.glob)]
        best = max(covering, key=lambda a: a.specificity) if covering else None
        if best is not None and ns not in best.namespaces:
            return (f"host {c.host} is assigned to namespace {', '.join(sorted(best.namespaces))} "
                    f"by TenancyPolicy {', '.join(best.policies)} (domain {best.domain})"), False
        floor = best.specificity if best is not None else (-1, -1)
        for a in self.policies.assignments:
            if a is best or ns in a.namespaces or a.specificity <= floor or (c.wildcard and best is not None):
                continue  # a wildcard the policy gives us: Istio routes the more specific host elsewhere
            if overlap(a.glob, c.glob):
                return (f"host {c.host} overlaps {a.domain}, assigned to namespace "
                        f"{', '.join(sorted(a.namespaces))} by TenancyPolicy {', '.join(a.policies)}"), False
        if c.wildcard and (best is None or ns not in best.namespaces):
            return f"wildcard host {c.host} needs a TenancyPolicy assigning it (spec.domains) to namespace {ns}", \
                False
        return None, best is not None

    def _earlier_rivals(self, c: Claim) -> list[Claim]:
        return sorted({o for o in self._candidates(c.glob)
                       if o.source.namespace != c.source.namespace and o.source < c.source},
                      key=lambda o: (o.source, o.glob, o.field))

    def granted(self, c: Claim) -> bool:
        """Iterative (no recursion limit): a claim is granted when policy allows it and no earlier
        granted claim of another namespace collides with it."""
        stack = [c]
        while stack:
            top = stack[-1]
            if top in self._granted:
                stack.pop()
                continue
            refusal, assigned = self._policy(top)
            if refusal is not None or assigned:  # the policy decides alone (no first-claim race)
                self._granted[top], self._owner[top] = refusal is None, None
                stack.pop()
                continue
            pending: Claim | None = None
            owner: Claim | None = None
            for rival in self._earlier_rivals(top):
                known = self._granted.get(rival)
                if known is None:
                    pending = rival
                    break
                if known:
                    owner = rival
                    break
            if pending is not None:
                stack.append(pending)
                continue
            self._granted[top], self._owner[top] = owner is None, owner
            stack.pop()
        return self._granted[c]

    def verdict(self, c: Claim) -> Verdict | None:
        """None when `c` is granted; else why not."""
        if self.granted(c):
            return None
        why = self._policy_refusal(c)
        if why is None:
            owner = self._owner[c]
            assert owner is not None
            same = f" ({owner.host})" if owner.host != c.host else ""
            why = (f"host {c.host} is owned by namespace {owner.source.namespace}{same}: claimed first by "
                   f"{owner.source} at {owner.source.created}")
        return Verdict(c, why)

    def refusals(self, kind: str, namespace: str, name: str) -> list[Verdict]:
        out = []
        for c in self._claims.get((kind, namespace, name), ()):
            v = self.verdict(c)
            if v is not None:
                out.append(v)
        return out


def refusal_problems(verdicts: Iterable[Verdict]) -> list[Problem]:
    return [Problem(f"{v.claim.field}: {v.message}", HOST_CONFLICT) for v in verdicts]
