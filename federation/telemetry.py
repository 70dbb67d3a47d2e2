"""OpenTelemetry for the controller: spans around reconciles and member applies, and metrics.

Exporters are off by default; `--otel console|otlp` (or MESHFED_OTEL_EXPORTER) turns them on
(OTLP honours the standard OTEL_EXPORTER_OTLP_* variables). Counters are also kept in-process so
the CLI and benchmarks can read them without an exporter, and fed to the Prometheus metrics of
federation.metrics (served on /metrics).
"""

from __future__ import annotations

import os
from collections import Counter

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from federation import metrics as prom

tracer = trace.get_tracer("meshfed.federation")
_meter = metrics.get_meter("meshfed.federation")

member_writes = _meter.create_counter("meshfed_member_writes", description="create/apply/delete calls to members")
member_errors = _meter.create_counter("meshfed_member_errors", description="failed member calls")
hub_writes = _meter.create_counter("meshfed_hub_writes", description="status/finalizer writes to the hub")
reconciles = _meter.create_counter("meshfed_reconciles", description="AccessPoint reconciles")
propagation_latency = _meter.create_histogram(
    "meshfed_propagation_latency_seconds", unit="s", description="hub change seen -> member object written"
)

# Plain in-process counters (the same events), for `meshfed` CLI output and benchmarks.
counts: Counter[str] = Counter()


def count(name: str, n: int = 1, **attrs: str) -> None:
    counts[name] += n
    instrument = {"member_writes": member_writes, "member_errors": member_errors, "hub_writes": hub_writes,
                  "reconciles": reconciles}.get(name)
    if instrument is not None:
        instrument.add(n, attrs)
    if name == "hub_writes":
        prom.hub_writes.labels(kind=attrs.get("kind", "")).inc(n)
    elif name == "member_errors":
        prom.member_errors.labels(cluster=attrs.get("cluster", "")).inc(n)


def setup(exporter: str | None = None) -> None:
    exporter = exporter or os.environ.get("MESHFED_OTEL_EXPORTER", "none")
    if exporter in ("", "none"):
        return
    resource = Resource.create({"service.name": "meshfed-controller"})
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
        metric_exporter = ConsoleMetricExporter()
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()  # type: ignore[assignment]
        metric_exporter = OTLPMetricExporter()  # type: ignore[assignment]
    else:
        raise ValueError(f"unknown OpenTelemetry exporter {exporter!r}: use none, console or otlp")
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(
        MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(metric_exporter, 30_000)])
    )
