"""What the MCP gateway service records about each tool call: a usage record, an audit entry, metrics.

One ``ToolCall`` value is built per ``tools/call`` the service handles (forwarded, refused by the
call limit or by access, or failed upstream) and handed to ``Recorder.tool_call``, which fans it out:

- the usage ledger (``UsageRecord`` through the same ``UsageSink`` the ext_proc worker uses):
  ``client_api`` "mcp", ``requested_model`` ``<server>__<tool>``, ``provider`` the server and
  ``model`` the tool, no tokens and no cost. ``status`` is the call's outcome in HTTP terms,
  because the client's HTTP status is 200 for every JSON-RPC answer and says nothing: 200 done
  (a tool result, even one with ``isError``), 429 over the key's call limit, 502 the upstream
  failed or answered a JSON-RPC error, 504 it timed out; ``error_type`` names it (``OUTCOMES``);
- the audit log (an ``AuditSink``: the composition root plugs in the audit package's chain):
  caller, tenant, server, tool, duration, outcome; never the arguments or the result;
- Prometheus, per server and tool: calls by outcome, errors by type, latency.

Nothing here blocks or raises into the request path: the sinks queue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter, Histogram

from ccr.v1.usage_record import USAGE_FROM_PROVIDER, UsageRecord, time_of
from extproc.usage_sink import NullSink, UsageSink

log = logging.getLogger("ccr.mcp.calls")

# outcome -> (status in the usage record, error_type); "ok" has no error type.
OUTCOMES: dict[str, tuple[int, str | None]] = {
    "ok": (200, None),
    "tool_error": (200, "tool_error"),  # the tool ran and said it failed (result.isError)
    "rate_limited": (429, "rate_limited"),
    "upstream_error": (502, "upstream_error"),  # unreachable, 5xx, a JSON-RPC error, a lost session
    "upstream_timeout": (504, "upstream_timeout"),
    "cancelled": (499, "cancelled"),  # the client cancelled it (nginx's 499: client closed request)
    # Unknown or not granted: one outcome, as the client gets one answer for both (docs/mcp.md,
    # "Access"); nothing went upstream. Its metrics carry no tool label (a client names any tool).
    "refused": (403, "refused"),
}
REFUSED_TOOL_LABEL = "(refused)"

CALLS = Counter("ccr_mcp_tool_calls_total", "MCP tool calls through the gateway", ["server", "tool", "outcome"])
ERRORS = Counter(
    "ccr_mcp_tool_call_errors_total", "MCP tool calls that did not succeed", ["server", "tool", "error_type"]
)
LATENCY = Histogram(
    "ccr_mcp_tool_call_duration_seconds",
    "MCP tool calls: the client's request in to its answer out",
    ["server", "tool"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


@dataclass(frozen=True, slots=True)
class ToolCall:
    request_id: str
    started: float  # unix seconds
    duration_s: float
    endpoint: str  # the MCP path, e.g. /mcp
    server: str
    tool: str
    outcome: str  # a key of OUTCOMES
    tenant: str | None
    key_id: str | None
    session_id: str | None
    stream: bool  # the client got an SSE answer

    @property
    def error_type(self) -> str | None:
        return OUTCOMES[self.outcome][1]

    def usage_record(self) -> UsageRecord:
        status, error_type = OUTCOMES[self.outcome]
        return UsageRecord(
            request_id=self.request_id,
            time=time_of(self.started),
            client_api="mcp",
            endpoint=self.endpoint,
            requested_model=f"{self.server}__{self.tool}",
            status=status,
            stream=self.stream,
            input_tokens=0,
            output_tokens=0,
            cache_read_tokens=0,
            cache_creation_tokens=0,
            cost_usd=0.0,
            usage_source=USAGE_FROM_PROVIDER,  # exact: a tool call has no tokens
            duration_ms=round(self.duration_s * 1000, 3),
            tenant=self.tenant,
            key_id=self.key_id,
            provider=self.server,
            model=self.tool,
            attempts=0 if self.outcome == "rate_limited" else 1,
            error_type=error_type,
            session_id=self.session_id,
        )

    def audit_details(self) -> dict[str, object]:
        """What the audit entry says: never arguments or results (issue 23: not stored unless a
        policy opts in, which no policy can yet)."""
        return {
            "tenant": self.tenant,
            "key_id": self.key_id,
            "server": self.server,
            "tool": self.tool,
            "duration_ms": round(self.duration_s * 1000, 3),
            "outcome": self.outcome,
            "session_id": self.session_id,
            "request_id": self.request_id,
        }


class AuditSink(Protocol):
    def tool_call(self, call: ToolCall) -> None:
        """Queue the entry; never blocks, never raises."""
        ...

    async def close(self) -> None: ...


class NoAudit:
    def tool_call(self, call: ToolCall) -> None:
        pass

    async def close(self) -> None:
        pass


class Recorder:
    def __init__(self, sink: UsageSink | None = None, audit: AuditSink | None = None) -> None:
        self.sink: UsageSink = sink if sink is not None else NullSink()
        self.audit: AuditSink = audit if audit is not None else NoAudit()

    def tool_call(self, call: ToolCall) -> None:
        tool = REFUSED_TOOL_LABEL if call.outcome == "refused" else call.tool
        CALLS.labels(call.server, tool, call.outcome).inc()
        LATENCY.labels(call.server, tool).observe(call.duration_s)
        if call.error_type is not None:
            ERRORS.labels(call.server, tool, call.error_type).inc()
        try:
            self.sink.put([call.usage_record()])
            self.audit.tool_call(call)
        except Exception:  # a sink's bug must not fail the client's call
            log.exception("MCP tool call %s/%s not recorded", call.server, call.tool)
        log.info("MCP tool call %s/%s: %s in %.1f ms", call.server, call.tool, call.outcome, call.duration_s * 1000)

    async def close(self) -> None:
        await self.sink.close()
        await self.audit.close()
