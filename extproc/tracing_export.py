"""The decision service's spans to an OpenTelemetry collector, over OTLP/gRPC.

``OtlpExporter`` is what ``ccr.v1.tracing.configure`` is given: called with each finished request's
spans on the event loop, it only queues them; a thread of its own batches them (up to
``BATCH_SPANS``, or what came within ``FLUSH_S``) and sends one ``Export`` call per batch. A
collector that is away or slow costs spans, never requests: a full queue drops (counted in
``ccr_trace_spans_dropped_total``), a failed export is dropped and logged once per outage.

``configure_from`` follows the policy: the tracing its ``tracing:`` section names (endpoint, service
name, ratio), replaced when a new policy changes it, off when the section goes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable

import grpc
from prometheus_client import Counter

from ccr.v1 import tracing
from ccr.v1.otlp_trace_pb2 import (
    AnyValue,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
    InstrumentationScope,
    KeyValue,
    Resource,
    ResourceSpans,
    ScopeSpans,
    Span,
    Status,
)
from extproc.routing_table import TracingSettings

log = logging.getLogger("ccr.tracing")

BATCH_SPANS = 512
FLUSH_S = 1.0
QUEUE_SPANS = 8192  # a collector away for a while: this many spans wait, then new ones are dropped
EXPORT_TIMEOUT_S = 2.0
SCOPE = InstrumentationScope(name="ccr-gateway")
# OTLP's own method name: our messages are wire-compatible copies (protos/ccr/v1/otlp_trace.proto).
EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

SPANS_EXPORTED = Counter("ccr_trace_spans_exported_total", "Spans the collector accepted")
SPANS_DROPPED = Counter(
    "ccr_trace_spans_dropped_total",
    "Spans not exported, by reason (queue_full: the collector too slow or away; export_failed)",
    ["reason"],
)


def to_proto(spans: Iterable[tracing.Span]) -> list[Span]:
    out = []
    for span in spans:
        message = Span(
            trace_id=span.trace.trace_id,
            span_id=span.span_id,
            parent_span_id=span.parent_id,
            name=span.name,
            kind=span.kind,  # type: ignore[arg-type]  (OTLP's SpanKind values)
            start_time_unix_nano=span.start_ns,
            end_time_unix_nano=span.end_ns,
            attributes=[KeyValue(key=key, value=_any(value)) for key, value in span.attributes.items()],
        )
        if span.error is not None:
            message.status.code = Status.STATUS_CODE_ERROR
            message.status.message = span.error
        out.append(message)
    return out


def export_request(service_name: str, spans: list[Span]) -> ExportTraceServiceRequest:
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service_name))])
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(scope=SCOPE, spans=spans)])]
    )


def _any(value: tracing.AttributeValue) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


class OtlpExporter:
    def __init__(self, endpoint: str, service_name: str) -> None:
        self.endpoint = endpoint
        self.service_name = service_name
        self._queue: queue.Queue[list[tracing.Span] | None] = queue.Queue()
        self._queued = 0  # spans waiting (Queue counts batches, the bound is in spans)
        self._lock = threading.Lock()
        self._in_outage = False
        target = endpoint.split("://", 1)[-1]
        self._channel = (
            grpc.secure_channel(target, grpc.ssl_channel_credentials())
            if endpoint.startswith("https://")
            else grpc.insecure_channel(target)
        )
        self._export = self._channel.unary_unary(
            EXPORT_METHOD,
            request_serializer=ExportTraceServiceRequest.SerializeToString,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )
        self._thread = threading.Thread(target=self._run, name="otlp-export", daemon=True)
        self._thread.start()

    def __call__(self, spans: list[tracing.Span]) -> None:
        with self._lock:
            if self._queued + len(spans) > QUEUE_SPANS:
                SPANS_DROPPED.labels("queue_full").inc(len(spans))
                return
            self._queued += len(spans)
        self._queue.put(spans)

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (within ``timeout``), then stop."""
        self._queue.put(None)
        self._thread.join(timeout)
        self._channel.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[tracing.Span] = []
            deadline = time.monotonic() + FLUSH_S
            while len(batch) < BATCH_SPANS:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.extend(item)
            if batch:
                with self._lock:
                    self._queued -= len(batch)
                self._send(batch)

    def _send(self, batch: list[tracing.Span]) -> None:
        try:
            self._export(export_request(self.service_name, to_proto(batch)), timeout=EXPORT_TIMEOUT_S)
        except grpc.RpcError as error:
            SPANS_DROPPED.labels("export_failed").inc(len(batch))
            if not self._in_outage:
                self._in_outage = True
                log.warning(
                    "traces: the collector at %s did not take %d spans (%s)", self.endpoint, len(batch), error.code()
                )
            return
        SPANS_EXPORTED.inc(len(batch))
        if self._in_outage:
            self._in_outage = False
            log.warning("traces: the collector at %s takes spans again", self.endpoint)


class TracingFollower:
    """Keeps this process's tracing as the policy in force says (``install`` per policy)."""

    def __init__(self, role: str = "extproc") -> None:
        self.role = role
        self.settings: TracingSettings | None = None
        self.exporter: OtlpExporter | None = None

    def install(self, settings: TracingSettings | None) -> None:
        if settings == self.settings:
            return
        old = self.exporter
        self.settings, self.exporter = settings, None
        if settings is None:
            tracing.configure(None)
        else:
            service = f"{settings.service_name}-{self.role}"
            self.exporter = OtlpExporter(settings.otlp, service)
            tracing.configure(self.exporter, service, settings.sample)
            log.info("traces to %s as %s (%g of requests sampled by Envoy)", settings.otlp, service, settings.sample)
        if old is not None:
            threading.Thread(target=old.close, name="otlp-close", daemon=True).start()

    def close(self) -> None:
        tracing.configure(None)
        if self.exporter is not None:
            self.exporter.close()
