"""Token usage from Envoy's gRPC access log (see control_plane.resources.usage_capture for the Envoy side).

Envoy reads each provider response's usage into the ``ccr.usage`` dynamic metadata and sends one
access log entry per request, in batches, on a long-lived stream per Envoy worker thread. This is
how usage of passthrough responses (whose bodies never reach Python) is known, and it is the one
place where ``ccr_tokens_total`` is counted, for translated responses too.

``usage_record`` is pure (entry in, record out); the servicer only loops and records.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import grpc
from envoy.data.accesslog.v3.accesslog_pb2 import HTTPAccessLogEntry
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.accesslog.v3.als_pb2 import StreamAccessLogsMessage, StreamAccessLogsResponse
from google.protobuf.struct_pb2 import Value

from ccr.v1.contract import (
    ANSWERED_BY_TAG,
    CHAIN_METADATA_KEY,
    METADATA_NAMESPACE,
    SESSION_LOG_NAME,
    USAGE_NAMESPACE,
    decode_chain,
)
from extproc.metrics import TOKENS, labelled
from extproc.tokens import SessionUsage
from extproc.translate.anthropic_schema import usage_from_anthropic, usage_from_openai
from extproc.translate.base import Usage
from extproc.translate.gemini_common import usage_of


@dataclass(frozen=True, slots=True)
class UsageRecord:
    provider: str  # the provider that answered (for a fallback chain: the attempt that succeeded)
    model: str
    session: str | None
    usage: Usage


def usage_from_counts(counts: Mapping[str, int]) -> Usage:
    """The provider's own field names (as usage_capture keeps them) -> Anthropic-meaning Usage."""
    if "prompt_tokens" in counts:
        return usage_from_openai(
            {
                "prompt_tokens": counts["prompt_tokens"],
                "completion_tokens": counts.get("completion_tokens", 0),
                "prompt_tokens_details": {"cached_tokens": counts.get("cached_tokens", 0)},
                "prompt_cache_hit_tokens": counts.get("prompt_cache_hit_tokens", 0),
            }
        )
    if "promptTokenCount" in counts:
        return usage_of(dict(counts))
    return usage_from_anthropic(dict(counts))


def usage_record(entry: HTTPAccessLogEntry) -> UsageRecord | None:
    """None for an entry without usage or without ext_proc's routing labels (not a routed request)."""
    metadata = entry.common_properties.metadata.filter_metadata
    if USAGE_NAMESPACE not in metadata or METADATA_NAMESPACE not in metadata:
        return None
    counts = {
        key: int(value.number_value)
        for key, value in metadata[USAGE_NAMESPACE].fields.items()
        if value.WhichOneof("kind") == "number_value" and value.number_value >= 0
    }
    labels = metadata[METADATA_NAMESPACE].fields
    provider, model = _string(labels, "provider"), _string(labels, "model")
    if not provider or not counts:
        return None
    answered = entry.common_properties.custom_tags.get(ANSWERED_BY_TAG, "")
    chain = _string(labels, CHAIN_METADATA_KEY)
    if chain and answered and answered != provider:
        _, models = decode_chain(chain)
        provider, model = answered, models.get(answered, model)
    return UsageRecord(provider, model, _string(labels, "session") or None, usage_from_counts(counts))


def _string(fields: Mapping[str, Value], key: str) -> str:
    """Only the labels read here (a Struct's values are costly to walk, and this runs per request)."""
    return fields[key].string_value if key in fields else ""


def record_usage(record: UsageRecord, sessions: SessionUsage, count_tokens: bool = True) -> None:
    usage = record.usage
    sessions.record(record.session, usage.prompt_tokens)
    if not count_tokens:  # another worker's copy of the log counts them
        return
    # Output last: a reader that sees a response's output counted sees the rest of it counted too.
    for kind, count in (
        ("input", usage.input_tokens),
        ("cache_read", usage.cache_read_input_tokens),
        ("cache_creation", usage.cache_creation_input_tokens),
        ("output", usage.output_tokens),
    ):
        if count:
            labelled(TOKENS, record.provider, record.model, kind).inc(count)


class UsageLogService(als_pb2_grpc.AccessLogServiceServicer):
    def __init__(self, sessions: SessionUsage) -> None:
        self.sessions = sessions

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[StreamAccessLogsMessage], context: grpc.aio.ServicerContext
    ) -> StreamAccessLogsResponse:
        count_tokens = True
        async for message in request_iterator:
            if message.HasField("identifier"):  # the stream's first message names the log
                count_tokens = message.identifier.log_name != SESSION_LOG_NAME
            for entry in message.http_logs.log_entry:
                record = usage_record(entry)
                if record is not None:
                    record_usage(record, self.sessions, count_tokens)
        return StreamAccessLogsResponse()
