"""An OpenTelemetry collector's OTLP/gRPC trace endpoint, for tests: it keeps every span it is sent.

Runs its own gRPC server in a thread (tests are synchronous); ``spans()`` flattens what arrived
into (service name, span) pairs, ``traces()`` groups them by trace id.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from concurrent import futures
from dataclasses import dataclass

import grpc

from ccr.v1.otlp_trace_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse, Span


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    span: Span

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def name(self) -> str:
        return self.span.name

    def attribute(self, key: str) -> object:
        for item in self.span.attributes:
            if item.key == key:
                value = item.value
                return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None
        return None


class OtlpReceiver:
    """OTLP's TraceService/Export, served with the gateway's wire-compatible messages
    (protos/ccr/v1/otlp_trace.proto): what Envoy and the workers send is parsed for real."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[ReceivedSpan] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        export = grpc.unary_unary_rpc_method_handler(
            self.Export,
            request_deserializer=ExportTraceServiceRequest.FromString,
            response_serializer=ExportTraceServiceResponse.SerializeToString,
        )
        service = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": export}
        )
        self._server.add_generic_rpc_handlers((service,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    def Export(self, request: ExportTraceServiceRequest, context: grpc.ServicerContext) -> ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
                )
                for scope_spans in resource_spans.scope_spans:
                    self._received.extend(ReceivedSpan(service, span) for span in scope_spans.spans)
        return ExportTraceServiceResponse()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._received)

    def traces(self) -> dict[str, list[ReceivedSpan]]:
        grouped: dict[str, list[ReceivedSpan]] = defaultdict(list)
        for span in self.spans():
            grouped[span.trace_id].append(span)
        return dict(grouped)

    def __enter__(self) -> OtlpReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)
