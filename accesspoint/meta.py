"""API primitives shared by every meshfed CRD: conditions, label selectors, durations, RFC 3339 times,
references (SecretKeyRef, AccessPointRef), CRD descriptors.

Pure and dependency-free (pydantic only); every other meshfed module may import it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

GROUP = "meshfed.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields rejected, dumps drop None."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=False)

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# ---- Durations: one grammar for every duration field of the API ----
# The union of the grammars the API used before (certificates: decimals; soak and analysis gates:
# milliseconds), all of them valid Go durations, so a value is also what Istio's own fields accept.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
DURATION_DOC = (
    "A duration: one or more parts, each a number (integer or decimal) and a unit (h, m, s or ms), "
    "e.g. 500ms, 90s, 1.5m, 1h30m, 2160h."
)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

# A duration field (the CRD generator adds DURATION_DOC to its description).
Duration = Annotated[str, Field(pattern=DURATION_PATTERN)]


def parse_duration(text: str) -> timedelta:
    """A Duration as a timedelta ("1h30m", "1.5m", "500ms"); ValueError naming the bad input."""
    text = text.strip()
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r} (expected e.g. '500ms', '90s', '1.5m', '1h30m', '2160h')")
    return timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text)))


def format_duration(d: timedelta) -> str:
    """Whole seconds as a Duration ("1h1m1s"; "0s" for nothing)."""
    total = int(d.total_seconds())
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"


# ---- Times in status: RFC 3339, UTC, whole seconds ----


def rfc3339(t: datetime) -> str:
    """`t` as status writes times ("2026-01-01T00:00:00Z")."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str) -> datetime:
    """An RFC 3339 time ("...Z" or with an offset); ValueError when unreadable."""
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def parse_time_or_none(s: str | None) -> datetime | None:
    """An RFC 3339 time from status, or None when absent or unreadable."""
    if not s:
        return None
    try:
        return parse_time(s)
    except ValueError:
        return None


# ---- References shared by several kinds ----


class SecretKeyRef(ApiModel):
    """A key of a Secret on the hub."""

    name: str = Field(min_length=1)
    namespace: str = Field(default="meshfed-system", min_length=1)
    key: str = Field(min_length=1)


class AccessPointRef(ApiModel):
    """An AccessPoint in the namespace of the object that refers to it."""

    name: str = Field(min_length=1, max_length=253)


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A metav1.Condition."""

    type: str
    status: ConditionStatus
    reason: str = Field(min_length=1)
    message: str = ""
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    last_transition_time: str | None = Field(default=None, alias="lastTransitionTime")


def set_condition(existing: Iterable[Condition], new: Condition, now: str) -> list[Condition]:
    """Upsert `new` by type; keep lastTransitionTime unless the status flips (metav1 semantics)."""
    out: list[Condition] = []
    placed = False
    for cond in existing:
        if cond.type != new.type:
            out.append(cond)
            continue
        placed = True
        since = cond.last_transition_time if cond.status == new.status else now
        out.append(new.model_copy(update={"last_transition_time": since or now}))
    if not placed:
        out.append(new.model_copy(update={"last_transition_time": now}))
    return out


def merge_conditions(previous: Iterable[Condition], fresh: Iterable[Condition], now: str) -> list[Condition]:
    """Apply every fresh condition over the previous ones, preserving transition times."""
    result = list(previous)
    fresh_list = list(fresh)
    for cond in fresh_list:
        result = set_condition(result, cond, now)
    order = {c.type: i for i, c in enumerate(fresh_list)}
    return sorted((c for c in result if c.type in order), key=lambda c: order[c.type])


def condition(conditions: Iterable[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


SelectorOperator = Literal["In", "NotIn", "Exists", "DoesNotExist"]


class LabelSelectorRequirement(ApiModel):
    key: str = Field(min_length=1)
    operator: SelectorOperator
    values: list[str] = Field(default_factory=list)


class LabelSelector(ApiModel):
    """A metav1.LabelSelector; an empty selector matches everything."""

    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, alias="matchExpressions")

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and not (present and labels[req.key] in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    priority: int = 0
    description: str = ""

    def wire(self) -> dict[str, Any]:
        col: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.priority:
            col["priority"] = self.priority
        if self.description:
            col["description"] = self.description
        return col


AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")


@dataclass(frozen=True)
class CRDInfo:
    """How a pydantic model is published as a CustomResourceDefinition."""

    kind: str
    plural: str
    singular: str
    scope: Literal["Namespaced", "Cluster"] = "Namespaced"
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ("meshfed",)
    printer_columns: tuple[PrinterColumn, ...] = ()
    # Extra CEL rules on the root object (x-kubernetes-validations), e.g. name length limits.
    root_rules: tuple[dict[str, str], ...] = ()
    status_subresource: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class Resource(ApiModel):
    """A top-level custom resource: apiVersion/kind/metadata plus the model's spec and status."""

    crd: ClassVar[CRDInfo]
    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    kind: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", ""))

    @property
    def generation(self) -> int:
        return int(self.metadata.get("generation", 0))

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.metadata.get("labels") or {})


def json_copy(value: Any) -> Any:
    """A deep copy of JSON data (dicts, lists, scalars), without copy.deepcopy's memo bookkeeping."""
    if isinstance(value, dict):
        return {k: json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_copy(v) for v in value]
    return value
