"""OpenTelemetry tracing, Prometheus metrics and JSON logs for every service.

`setup_telemetry` is called once by a service's `main()`. Tests install their own tracer provider (an
in-memory exporter) instead; everything else here works with whichever provider is global.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import Counter, Gauge, Histogram

from shared.events import TraceContext

tracer = trace.get_tracer("seed-idp")

EVENTS_PUBLISHED = Counter("idp_events_published", "Events the outbox relay published to JetStream", ["service"])
EVENTS_CONSUMED = Counter("idp_events_consumed", "Events a durable consumer processed", ["consumer", "outcome"])
OUTBOX_PENDING = Gauge("idp_outbox_pending", "Outbox rows not yet acknowledged by JetStream", ["service"])
HTTP_DURATION = Histogram(
    "idp_http_request_duration_seconds", "HTTP request duration in seconds", ["route", "method", "status"]
)


def setup_telemetry(service: str, log_level: str = "INFO") -> None:
    """JSON logs, instrumentation, and span recording when an OTLP endpoint is configured.

    Without `OTEL_EXPORTER_OTLP_ENDPOINT` there is nowhere to send spans, so none are recorded: the API's
    non-recording spans still carry an incoming `traceparent` through HTTP, NATS and the event envelope
    (logs and audit rows keep the trace id) at a fraction of the cost of building spans to drop them.
    """
    configure_logging(service, log_level)
    exporting = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if exporting:
        # The SDK, and the psutil its resource detection imports, load only in a process that exports spans.
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if not isinstance(trace.get_tracer_provider(), TracerProvider):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider = TracerProvider(
                resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)})
            )
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            trace.set_tracer_provider(provider)
    instrument_libraries()


def spans_recorded() -> bool:
    """Whether an SDK tracer provider is installed, so spans are recorded (and exported) rather than dropped."""
    # The SDK is imported only where spans are recorded (`setup_telemetry`, tests): not loaded, not installed.
    sdk_trace = sys.modules.get("opentelemetry.sdk.trace")
    return sdk_trace is not None and isinstance(trace.get_tracer_provider(), sdk_trace.TracerProvider)


def instrument_libraries() -> None:
    """Patch aiohttp's client to carry the trace context on every call and, when spans are recorded, aiohttp's
    server and asyncpg to emit spans; idempotent. Unrecorded server and query spans cost a fifth of a cached read
    for nothing: `shared.http` then only takes up the caller's `traceparent` (`server_spans_instrumented`)."""
    instrumentors = [AioHttpClientInstrumentor()]
    if spans_recorded():
        instrumentors += [AioHttpServerInstrumentor(), AsyncPGInstrumentor()]
    for instrumentor in instrumentors:
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


def server_spans_instrumented() -> bool:
    return AioHttpServerInstrumentor().is_instrumented_by_opentelemetry


# Messages carry W3C trace context only; the direct propagator avoids the composite one's per-call cost,
# which shows up at tens of thousands of messages a second.
_w3c = TraceContextTextMapPropagator()


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Add the current span's `traceparent`/`tracestate` to message headers."""
    headers = {} if headers is None else headers
    _w3c.inject(headers)
    return headers


def context_from_headers(headers: Mapping[str, str] | None) -> otel_context.Context:
    return _w3c.extract(headers or {})


def current_trace() -> TraceContext:
    """The current span as a TraceContext, to be copied into an event envelope."""
    carrier: dict[str, str] = {}
    _w3c.inject(carrier)
    return TraceContext(traceparent=carrier.get("traceparent", ""), tracestate=carrier.get("tracestate", ""))


def trace_headers(trace_context: TraceContext) -> dict[str, str]:
    headers = {"traceparent": trace_context.traceparent} if trace_context.traceparent else {}
    if trace_context.tracestate:
        headers["tracestate"] = trace_context.tracestate
    return headers


def trace_id_of(trace_context: TraceContext) -> str:
    """The 32-hex trace id inside a traceparent (`00-<trace>-<span>-<flags>`), or ''."""
    parts = trace_context.traceparent.split("-")
    return parts[1] if len(parts) == 4 else ""


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line with the service name and the active trace and span ids."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log repeats what the request span and the duration histogram already record.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
