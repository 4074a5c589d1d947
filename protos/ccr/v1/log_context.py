"""The request a log line is about: request id, trace id, span id and tenant, for every process.

Every process's JSON formatter (ccr_gateway/logs.py) reads :func:`current` when it writes a line,
so a log call anywhere below a request's entry point (a translator, the key store, a Redis client)
carries that request's ids without passing them down. The fields live in one ``ContextVar``: each
asyncio task and each thread sees its own values, and a task started inside a request (asyncio
copies the context into every new task) inherits them.

How a request path uses it (e.g. the ext_proc ``Process`` stream, the decision hop's handler)::

    from ccr.v1 import log_context

    token = log_context.bind(request_id=request_id, trace_id=trace_id, span_id=span_id)
    try:
        ...  # tenant known after auth: a nested bind adds it, and its reset removes it again
        tenant_token = log_context.bind(tenant=tenant)
        ...
        log_context.reset(tenant_token)
    finally:
        log_context.reset(token)

or, the same with a ``with`` block::

    with log_context.bound(request_id=request_id, trace_id=trace_id):
        ...

Rules that keep the fields right:

- Reset what you bound, in the same task, in reverse order (``ContextVar.reset`` raises
  ``ValueError`` in another context). A server that handles several requests one after another in
  one task (a keep-alive HTTP connection, a gRPC stream of several requests) must reset after each,
  or request 2's lines would carry request 1's ids.
- Tasks: ``asyncio.create_task`` and ``TaskGroup`` copy the context when the task is *created*;
  a bind inside the task stays in the task, a bind in the parent after creation does not reach it.
- Threads: ``threading.Thread`` and ``loop.run_in_executor`` start from an empty context; use
  ``asyncio.to_thread`` (it copies) or ``contextvars.copy_context().run(fn)``.
- ``None`` leaves a field as it was; an empty string is not written. Values are strings:
  ``trace_id`` in the W3C form (32 lowercase hex digits: ``format(span_context.trace_id, "032x")``),
  ``span_id`` 16 (``format(span_context.span_id, "016x")``); the log schema rejects other forms.
- Never bind a secret. The formatter redacts these fields too (a request id comes from a client's
  header), but a value is meant to be searched for as it is: a key id, not the key.

Standard library only: every process imports it (``ccr.v1`` is the contract between them).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import MappingProxyType

FIELDS = ("request_id", "trace_id", "span_id", "tenant")

_EMPTY: Mapping[str, str] = MappingProxyType({})
# One variable holding an immutable mapping: a bind is one set(), a log line one get().
_fields: ContextVar[Mapping[str, str]] = ContextVar("ccr_log_context", default=_EMPTY)


def bind(
    *,
    request_id: str | None = None,
    trace_id: str | None = None,
    span_id: str | None = None,
    tenant: str | None = None,
) -> Token[Mapping[str, str]]:
    """Add the given fields to the current context (the others stay); pass the token to
    :func:`reset` to undo exactly this bind."""
    given = {"request_id": request_id, "trace_id": trace_id, "span_id": span_id, "tenant": tenant}
    merged = dict(_fields.get())
    merged.update((name, value) for name, value in given.items() if value is not None)
    return _fields.set(MappingProxyType(merged))


def reset(token: Token[Mapping[str, str]]) -> None:
    """Back to the fields as they were before the :func:`bind` that returned ``token``."""
    _fields.reset(token)


@contextmanager
def bound(
    *,
    request_id: str | None = None,
    trace_id: str | None = None,
    span_id: str | None = None,
    tenant: str | None = None,
) -> Iterator[None]:
    """:func:`bind` for the duration of a ``with`` block."""
    token = bind(request_id=request_id, trace_id=trace_id, span_id=span_id, tenant=tenant)
    try:
        yield
    finally:
        reset(token)


def current() -> Mapping[str, str]:
    """The fields bound in this context (read-only; only those that were set)."""
    return _fields.get()
