"""Spans of the gateway's Python processes, continuing the trace Envoy started (W3C trace context).

Sans-IO: spans are plain values collected per request; what sends them (OTLP/gRPC) is plugged in
by the process (``configure``). Every process and package may call it (ext_proc, the ledger's
publisher in a worker), so it lives with the contract.

A request's spans:

- ``begin(name, traceparent)`` opens the process's root span of a request, the child of the
  caller's span (Envoy's Lua ``httpCall`` or gRPC stream, whose ``traceparent`` it was sent), and
  makes it current (a ``contextvars`` value: asyncio tasks started meanwhile inherit it);
- ``span(name)`` opens a child of the current span, in a ``with`` block;
- ``end(root, error=...)`` closes the root: the request's spans go to the exporter when its trace is
  sampled (the flag Envoy sent) or when the request failed, sampled or not ("always on for
  errors": the gateway's own spans of every failure are kept).

``background(name)`` starts a trace of its own (a ledger batch published, a key store refresh),
sampled at the policy's ratio. With tracing off (no ``configure``, the default) every call is a
global read and returns a shared no-op: nothing per request.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from ccr.v1 import log_context

SERVER, INTERNAL, CLIENT, PRODUCER = 2, 1, 3, 4  # OTLP's Span.SpanKind values
TRACE_ID_HEADER = "x-ccr-trace-id"  # the trace id on the answer (the hop's answer headers)
AttributeValue = str | bool | int | float


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: bytes  # 16 bytes
    span_id: bytes  # 8 bytes: the caller's span, the parent of ours
    sampled: bool


def parse_traceparent(value: str | None) -> TraceContext | None:
    """``00-<32 hex>-<16 hex>-<2 hex flags>``; None for anything else (then a new trace starts)."""
    if not value or len(value) < 55:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or parts[0] == "ff" or len(parts[0]) != 2:
        return None
    try:
        trace_id, span_id, flags = bytes.fromhex(parts[1]), bytes.fromhex(parts[2]), int(parts[3][:2], 16)
    except ValueError:
        return None
    if len(trace_id) != 16 or len(span_id) != 8 or not any(trace_id) or not any(span_id):
        return None
    return TraceContext(trace_id, span_id, bool(flags & 1))


def format_traceparent(trace_id: bytes, span_id: bytes, sampled: bool) -> str:
    return f"00-{trace_id.hex()}-{span_id.hex()}-{'01' if sampled else '00'}"


@dataclass(slots=True)
class _Trace:
    """One request's spans in this process, sent together when its root ends."""

    trace_id: bytes
    sampled: bool
    spans: list[Span] = field(default_factory=list)
    failed: bool = False


@dataclass(slots=True)
class Span:
    name: str
    trace: _Trace
    span_id: bytes
    parent_id: bytes
    kind: int
    start_ns: int
    end_ns: int = 0
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    error: str | None = None  # the status message of a failed span (None: OK)

    @property
    def trace_id(self) -> bytes:
        return self.trace.trace_id

    def set(self, key: str, value: AttributeValue | None) -> None:
        if value is not None and value != "":
            self.attributes[key] = value

    def fail(self, message: str) -> None:
        self.error = message
        self.trace.failed = True

    def traceparent(self) -> str:
        return format_traceparent(self.trace.trace_id, self.span_id, self.trace.sampled)


class _NoSpan:
    """What every call returns with tracing off, or outside a traced request."""

    __slots__ = ()

    def set(self, key: str, value: object) -> None:
        return None

    def fail(self, message: str) -> None:
        return None

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


NO_SPAN = _NoSpan()
Export = Callable[[list[Span]], None]


@dataclass(slots=True)
class _Settings:
    export: Export
    service_name: str
    sample: float  # for traces started here (background work)


_settings: _Settings | None = None
_current: ContextVar[Span | None] = ContextVar("ccr_span", default=None)


def configure(export: Export | None, service_name: str = "ccr-gateway-extproc", sample: float = 0.0) -> None:
    """Turn tracing on (``export`` takes each finished request's spans; it must not block) or off."""
    global _settings
    _settings = _Settings(export, service_name, sample) if export is not None else None


def enabled() -> bool:
    return _settings is not None


def service_name() -> str:
    return _settings.service_name if _settings is not None else ""


# A root span and what to restore when it ends: the current span, and the log lines' trace ids.
Opened = tuple[Span, Token[Span | None], Token[Mapping[str, str]]]


def begin(name: str, traceparent: str | None, kind: int = SERVER) -> Opened | None:
    """The root span of a request in this process, made current; None with tracing off."""
    if _settings is None:
        return None
    parent = parse_traceparent(traceparent)
    if parent is None:  # no caller's trace: a trace of our own, sampled at the policy's ratio
        trace = _Trace(_new_id(16), random.random() < _settings.sample)
        parent_id = b""
    else:
        trace, parent_id = _Trace(parent.trace_id, parent.sampled), parent.span_id
    root = Span(name, trace, _new_id(8), parent_id, kind, time.time_ns())
    # Every log line written while it is current names the trace (ccr.v1.log_context).
    logged = log_context.bind(trace_id=trace.trace_id.hex(), span_id=root.span_id.hex())
    return root, _current.set(root), logged


def detach(opened: Opened | None) -> None:
    """The root stays open (a task carries on with it, in its own copy of the context) but is no
    longer current here: the next request on this connection starts clean."""
    if opened is not None:
        _restore(opened)


def end(opened: Opened | None, error: str | None = None) -> None:
    """Close a root ``begin`` opened; its request's spans go out if sampled or failed."""
    if opened is None:
        return
    root = opened[0]
    _restore(opened)
    if error is not None:
        root.fail(error)
    _finish(root)
    trace = root.trace
    settings = _settings
    if settings is not None and (trace.sampled or trace.failed):
        settings.export(trace.spans)


def _restore(opened: Opened) -> None:
    # Ended from a task after ``detach`` (another context, tokens used): nothing to restore there.
    with suppress(ValueError, RuntimeError):
        _current.reset(opened[1])
    with suppress(ValueError, RuntimeError):
        log_context.reset(opened[2])


def current() -> Span | None:
    return _current.get()


def trace_id() -> str:
    """The current request's trace id (hex), or ""."""
    span = _current.get()
    return span.trace.trace_id.hex() if span is not None else ""


@contextmanager
def _child(parent: Span, name: str, kind: int, attributes: dict[str, AttributeValue]) -> Iterator[Span]:
    span = Span(name, parent.trace, _new_id(8), parent.span_id, kind, time.time_ns(), attributes=attributes)
    token = _current.set(span)
    try:
        yield span
    except BaseException as exc:
        # The span's own status; the request as a whole failed only if its root says so (a
        # routing error is a client's 4xx, not a failure to keep every trace of).
        span.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _current.reset(token)
        _finish(span)


def span(name: str, kind: int = INTERNAL, attributes: dict[str, AttributeValue] | None = None) -> Any:
    """``with span("ccr.cache.lookup", attributes={"db.system": "redis"}) as s:`` a child of the
    current span (a no-op outside a traced request)."""
    parent = _current.get()
    if parent is None:
        return NO_SPAN
    return _child(parent, name, kind, dict(attributes) if attributes else {})


@contextmanager
def background(
    name: str, kind: int = INTERNAL, attributes: dict[str, AttributeValue] | None = None
) -> Iterator[Span | _NoSpan]:
    """A trace of its own for work no request waits on (sampled at the policy's ratio)."""
    opened = begin(name, None, kind)
    if opened is None:
        yield NO_SPAN
        return
    root = opened[0]
    root.attributes.update(attributes or {})
    error = None
    try:
        yield root
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        end(opened, error)


def _finish(span: Span) -> None:
    span.end_ns = time.time_ns()
    span.trace.spans.append(span)


def _new_id(size: int) -> bytes:
    while True:
        value = os.urandom(size)
        if any(value):
            return value
