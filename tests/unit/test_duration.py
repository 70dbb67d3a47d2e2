"""One duration type for the whole API (accesspoint.meta.Duration): every duration field takes the
same grammar (the union of the three the API had), old values keep validating, and the CRDs carry
one pattern and one description for all of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from accesspoint.health import AnalysisSpec
from accesspoint.meta import DURATION_DOC, DURATION_PATTERN, parse_duration
from accesspoint.rollout import Gate
from accesspoint.traffic import OutlierDetection
from certs.models import CertificateSpec
from federation.crdgen import all_crds

CERT = {"hosts": ["a.example.com"], "issuerRef": {"name": "ca"}}

# Every duration field of the API, as "build a model with this value".
FIELDS: dict[str, Callable[[str], Any]] = {
    "Gate.duration": lambda v: Gate.model_validate({"type": "Soak", "duration": v}),
    "AnalysisSpec.window": lambda v: AnalysisSpec.model_validate({"window": v, "maxWait": "10000h"}),
    "AnalysisSpec.interval": lambda v: AnalysisSpec.model_validate({"interval": v}),
    "AnalysisSpec.maxWait": lambda v: AnalysisSpec.model_validate({"window": "0s", "maxWait": v}),
    "OutlierDetection.interval": lambda v: OutlierDetection.model_validate({"interval": v}),
    "OutlierDetection.baseEjectionTime": lambda v: OutlierDetection.model_validate({"baseEjectionTime": v}),
    "CertificateSpec.duration": lambda v: CertificateSpec.model_validate({**CERT, "duration": v}),
    "CertificateSpec.renewBefore": lambda v: CertificateSpec.model_validate({**CERT, "renewBefore": v}),
}

# The values tests, examples and docs used with each of the old grammars, and what the union adds
# (`1.5m` for a gate, `500ms` for a certificate).
ACCEPTED = {
    "0s": timedelta(0), "1s": timedelta(seconds=1), "90s": timedelta(seconds=90), "5m": timedelta(minutes=5),
    "10m": timedelta(minutes=10), "1h30m": timedelta(minutes=90), "720h": timedelta(hours=720),
    "2160h": timedelta(hours=2160), "0.5h": timedelta(minutes=30), "1h1m1s": timedelta(seconds=3661),
    "1.5m": timedelta(seconds=90), "500ms": timedelta(milliseconds=500), "1s500ms": timedelta(seconds=1.5),
}
REJECTED = ["", "10", "h", "10d", "90d", "1h 30m", "-1h", "1hx", "5 minutes", "1.h", ".5h", "1us"]


def _cases(values: list[str]) -> Iterator[tuple[str, str]]:
    for field in FIELDS:
        for value in values:
            yield field, value


@pytest.mark.parametrize(("field", "value"), list(_cases(list(ACCEPTED))))
def test_every_duration_field_takes_the_whole_grammar(field: str, value: str) -> None:
    FIELDS[field](value)
    assert parse_duration(value) == ACCEPTED[value]


@pytest.mark.parametrize(("field", "value"), list(_cases(REJECTED)))
def test_every_duration_field_rejects_the_same_values(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match="pattern"):
        FIELDS[field](value)
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


def _duration_nodes(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if "pattern" in node and ("ms|" in node["pattern"] or "(h|m|s)" in node["pattern"]):
            yield path, node
        for key, value in node.items():
            yield from _duration_nodes(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _duration_nodes(value, f"{path}[{i}]")


def test_the_crds_carry_one_pattern_and_its_description_on_every_duration_field() -> None:
    nodes = [n for crd in all_crds() for n in _duration_nodes(crd)]
    names = {path.rsplit(".", 1)[-1] for path, _ in nodes}
    assert names == {"duration", "window", "interval", "maxWait", "baseEjectionTime", "renewBefore"}
    for path, node in nodes:
        assert node["pattern"] == DURATION_PATTERN, path
        assert node["description"].endswith(DURATION_DOC), path
        assert node["type"] == "string", path
