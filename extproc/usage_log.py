"""Token usage and usage records from Envoy's gRPC access log (control_plane.resources.usage_capture
is the Envoy side).

Envoy reads each provider response's usage into the ``ccr.usage`` dynamic metadata and sends one
access log entry per request, in batches, on a long-lived stream per Envoy worker thread. This is
how usage of passthrough responses (whose bodies never reach Python) is known, and it is the one
place where ``ccr_tokens_total`` is counted, for translated responses too.

A response-cache hit is answered by Envoy with the decision service's cached copy, no provider
asked, yet Envoy's usage filters read the replayed answer's usage as they would a provider's: a hit
spends nothing (no tokens counted, no cost, nothing charged to a key) and its record carries what
the cached usage would have cost instead (``cost_avoided_usd``, from its CACHE_SAVED_LABEL).

Under ``up`` every worker receives its own copy of the log (for session memory). The counting copy
(log name USAGE_LOG_NAME) carries an entry for every client request, with usage or not, and each
becomes one ``UsageRecord`` for the ledger, handed to the ``UsageSink`` once per message; the other
copies carry only the entries with usage and only update session memory.

``provider_usage`` and ``usage_record`` are pure (entry in, value out); the servicer only loops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import grpc
from envoy.data.accesslog.v3.accesslog_pb2 import HTTPAccessLogEntry, ResponseFlags
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.accesslog.v3.als_pb2 import StreamAccessLogsMessage, StreamAccessLogsResponse
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Value

from ccr.v1.contract import (
    ANSWERED_BY_TAG,
    BATCH_LABEL,
    CACHE_LABEL,
    CACHE_SAVED_LABEL,
    CHAIN_METADATA_KEY,
    ENDPOINT_LABEL,
    ERROR_TYPE_LABEL,
    ESTIMATE_LABEL,
    KEY_ID_LABEL,
    MCP_CLIENT_API,
    METADATA_NAMESPACE,
    REQUESTED_MODEL_LABEL,
    SESSION_LOG_NAME,
    STREAM_LABEL,
    TENANT_LABEL,
    USAGE_NAMESPACE,
    decode_chain,
)
from ccr.v1.pricing import Prices, cost_usd
from ccr.v1.usage_record import USAGE_ESTIMATED, USAGE_FROM_PROVIDER, UsageRecord, time_of_timestamp
from extproc import genai_metrics
from extproc.auth.admission import Spent
from extproc.metrics import TOKENS, labelled
from extproc.routing_table import RoutingTable
from extproc.state import GatewayState
from extproc.tokens import SessionUsage
from extproc.translate.anthropic_responses import usage_from_responses
from extproc.translate.anthropic_schema import usage_from_anthropic, usage_from_openai
from extproc.translate.base import Usage
from extproc.translate.bedrock_converse import usage_of as usage_from_converse
from extproc.translate.errors import anthropic_error_type, openai_error_type
from extproc.translate.gemini_common import usage_of
from extproc.usage_sink import NullSink, UsageSink

# Error types of failures no HTTP status names (the ledger's, beside the client APIs' own types).
TIMEOUT_ERROR = "timeout"  # Envoy gave up waiting for the provider (route or stream idle timeout)
CLIENT_CLOSED_ERROR = "client_closed"  # the client went away before any answer (status 0)
CACHE_HIT = "hit"  # CACHE_LABEL's value on a request answered from the response cache


@dataclass(frozen=True, slots=True)
class ProviderUsage:
    provider: str  # the provider that answered (for a fallback chain: the attempt that succeeded)
    model: str
    session: str | None
    usage: Usage
    # Answered from the response cache: ``usage`` is the replayed answer's, which no provider was
    # paid for this time. It still tells session memory the prompt's size; it is never spent.
    cache_hit: bool = False


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
    if "inputTokens" in counts:  # Bedrock's Converse (its inputTokens leave the cache's out, as Anthropic's)
        return usage_from_converse(dict(counts))
    if "cached_tokens" in counts:  # the Responses API: its input_tokens include the cached ones
        return usage_from_responses(
            {
                "input_tokens": counts.get("input_tokens", 0),
                "output_tokens": counts.get("output_tokens", 0),
                "input_tokens_details": {"cached_tokens": counts["cached_tokens"]},
            }
        )
    return usage_from_anthropic(dict(counts))


def provider_usage(entry: HTTPAccessLogEntry) -> ProviderUsage | None:
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
    return ProviderUsage(
        provider,
        model,
        _string(labels, "session") or None,
        usage_from_counts(counts),
        _string(labels, CACHE_LABEL) == CACHE_HIT,
    )


def usage_record(
    entry: HTTPAccessLogEntry, table: RoutingTable | None, used: ProviderUsage | None = None
) -> UsageRecord | None:
    """The ledger's record of one client request; ``used``: ``provider_usage(entry)``, read once by
    the caller. None for an entry without a request id (Envoy always sets one), and for an MCP
    request the MCP service answered: that service records each tool call itself, under the same
    request id (extproc.mcp_observe); a refusal by the decision (401, 403) is recorded here.

    Entries come labelled by the decision service (routing labels, request_steps.request_labels),
    or unlabelled when Envoy answered before any decision (a body over the limit, the decision
    service down): then the path and the status are all there is. Without the provider's usage
    (an error, a stream cut short, an OpenAI stream without include_usage) a request sent to a
    provider is recorded with the gateway's estimate of its input and no output ("estimated"),
    never as a silent zero. A cache hit sent nothing to a provider: 0 tokens, cost 0, counted
    exactly ("provider"), whatever usage Envoy read from the replayed answer; its cost avoided is
    the cached usage priced at the route's prices."""
    request_id = entry.request.request_id
    if not request_id:
        return None
    common = entry.common_properties
    metadata = common.metadata.filter_metadata
    labels = metadata[METADATA_NAMESPACE].fields if METADATA_NAMESPACE in metadata else _NO_LABELS
    path = _string(labels, ENDPOINT_LABEL) or entry.request.path.partition("?")[0]
    client_api = _string(labels, "client_api") or _client_api_of(path)
    if client_api == MCP_CLIENT_API and common.HasField(_FIRST_UPSTREAM_TX):
        return None
    status = entry.response.response_code.value
    attempts = common.upstream_request_attempt_count
    provider, model = _answered(common.custom_tags, labels, table)
    cache = _string(labels, CACHE_LABEL)
    if cache == CACHE_HIT:
        usage, source = Usage(), USAGE_FROM_PROVIDER
    elif used is not None:
        usage, source = used.usage, USAGE_FROM_PROVIDER
    else:  # nothing spent unless the request reached a provider (refused connections did not)
        estimate = _string(labels, ESTIMATE_LABEL) if common.HasField(_FIRST_UPSTREAM_TX) else ""
        usage, source = Usage(input_tokens=int(estimate) if estimate.isdigit() else 0), USAGE_ESTIMATED
    route = table.explicit.get(f"{provider},{model}") if table is not None and provider else None
    prices = route.prices if route is not None else None
    cost = cost_usd(
        prices,
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_input_tokens,
        usage.cache_creation_input_tokens,
    )
    avoided = cost_avoided(_string(labels, CACHE_SAVED_LABEL), prices) if cache == CACHE_HIT else 0.0
    return UsageRecord(
        request_id=request_id,
        time=time_of_timestamp(common.start_time.seconds, common.start_time.nanos),
        client_api=client_api,
        endpoint=path,
        requested_model=_string(labels, REQUESTED_MODEL_LABEL),
        status=status,
        stream=_string(labels, STREAM_LABEL) == "1",
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_input_tokens,
        cache_creation_tokens=usage.cache_creation_input_tokens,
        cost_usd=cost,
        usage_source=source,
        duration_ms=_ms(common.time_to_last_downstream_tx_byte if common.HasField(_LAST_BYTE) else common.duration),
        scenario=_string(labels, "scenario") or None,
        provider=provider,
        model=model,
        attempts=attempts,
        error_type=error_type(status, client_api, _string(labels, ERROR_TYPE_LABEL), common.response_flags),
        ttfb_ms=_ms(common.time_to_first_upstream_rx_byte) if common.HasField(_FIRST_UPSTREAM_BYTE) else None,
        session_id=_string(labels, "session") or None,
        tenant=_string(labels, TENANT_LABEL) or None,
        key_id=_string(labels, KEY_ID_LABEL) or None,
        cache=cache or None,
        cost_avoided_usd=avoided,
        batch_id=_string(labels, BATCH_LABEL) or None,
    )


def cost_avoided(saved: str, prices: Prices | None) -> float:
    """A hit's CACHE_SAVED_LABEL ("<input>,<output>,<cache read>,<cache creation>" tokens) at
    ``prices``; 0.0 for a label that is not four counts: a record is made whatever the label says."""
    counts = saved.split(",")
    # At most 12 digits each: no answer has a trillion tokens, and a longer number could price to
    # an infinite cost, which JSON cannot carry.
    if len(counts) != 4 or not all(count.isascii() and count.isdigit() and len(count) <= 12 for count in counts):
        return 0.0
    return cost_usd(prices, *(int(count) for count in counts))


def error_type(status: int, client_api: str, labelled_type: str, flags: ResponseFlags) -> str | None:
    """None for a success; else the type the decision service gave its own error, a timeout or a
    client gone (which no status names), or the type the client's API gives the status."""
    if 0 < status < 400:  # a stream cut short after its 200 is still a 200 to the client
        return None
    if labelled_type:
        return labelled_type
    if flags.upstream_request_timeout or flags.stream_idle_timeout or flags.duration_timeout:
        return TIMEOUT_ERROR
    if status == 0:
        return CLIENT_CLOSED_ERROR
    return openai_error_type(status) if client_api in _OPENAI_SHAPED else anthropic_error_type(status)


_OPENAI_SHAPED = ("openai", "responses")  # client APIs whose errors have OpenAI's types


def _client_api_of(path: str) -> str:
    """The client API of a request no decision labelled, from its path alone."""
    if "chat/completions" in path:
        return "openai"
    return "responses" if path.startswith(("/v1/responses", "/responses")) else "anthropic"  # both are served


def _answered(
    tags: Mapping[str, str], labels: Mapping[str, Value], table: RoutingTable | None
) -> tuple[str | None, str | None]:
    """The provider and model id that answered (None: not routed): the route's, or for a fallback
    chain the member Envoy's endpoint metadata names (the chain label holds model names; the table
    knows their ids)."""
    provider, model = _string(labels, "provider") or None, _string(labels, "model") or None
    answered = tags.get(ANSWERED_BY_TAG, "")
    if not answered or answered == provider:
        return provider, model
    chain = _string(labels, CHAIN_METADATA_KEY)
    name = decode_chain(chain)[1].get(answered) if chain else None
    if name is None:
        return provider, model
    route = table.target(answered, name) if table is not None else None
    return answered, route.target.model if route is not None else name


_NO_LABELS: Mapping[str, Value] = {}
_LAST_BYTE = "time_to_last_downstream_tx_byte"  # duration_ms: until the client had the whole answer
_FIRST_UPSTREAM_BYTE = "time_to_first_upstream_rx_byte"  # ttfb_ms: until the provider's first byte
_FIRST_UPSTREAM_TX = "time_to_first_upstream_tx_byte"  # set once a provider was sent the request
_LAST_UPSTREAM_BYTE = "time_to_last_upstream_rx_byte"
_FIRST_BYTE_OUT = "time_to_first_downstream_tx_byte"


def request_timing(entry: HTTPAccessLogEntry) -> tuple[float | None, float | None]:
    """(first byte in to the client's first byte out, the provider's part of the request: first
    byte sent to it to last byte received from it), in seconds; None where it never happened."""
    common = entry.common_properties
    first_out = _seconds(common.time_to_first_downstream_tx_byte) if common.HasField(_FIRST_BYTE_OUT) else None
    upstream = None
    if common.HasField(_FIRST_UPSTREAM_TX) and common.HasField(_LAST_UPSTREAM_BYTE):
        upstream = _seconds(common.time_to_last_upstream_rx_byte) - _seconds(common.time_to_first_upstream_tx_byte)
    return first_out, upstream


def _seconds(duration: Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _string(fields: Mapping[str, Value], key: str) -> str:
    """Only the labels read here (a Struct's values are costly to walk, and this runs per request)."""
    return fields[key].string_value if key in fields else ""


def _ms(duration: Duration) -> float:
    return duration.seconds * 1000 + duration.nanos / 1e6


def spent_of(record: UsageRecord | None, used: ProviderUsage | None, table: RoutingTable | None) -> Spent:
    """What a finished request used, for its key's limits: from its usage record when this copy of
    the log made one, else from the provider's usage alone (the other copies make no record: a
    whole record is several times the work). No usage (an error, a stream cut short): nothing."""
    if record is not None:
        tokens = record.input_tokens + record.cache_read_tokens + record.cache_creation_tokens + record.output_tokens
        return Spent(tokens, record.cost_usd)
    if used is None or used.cache_hit:
        return Spent(0, 0.0)
    usage = used.usage
    route = table.explicit.get(f"{used.provider},{used.model}") if table is not None else None
    cache_read, cache_creation = usage.cache_read_input_tokens, usage.cache_creation_input_tokens
    cost = cost_usd(
        route.prices if route else None, usage.input_tokens, usage.output_tokens, cache_read, cache_creation
    )
    return Spent(usage.input_tokens + cache_read + cache_creation + usage.output_tokens, cost)


def record_usage(used: ProviderUsage, sessions: SessionUsage, count_tokens: bool = True) -> None:
    usage = used.usage
    sessions.record(used.session, usage.prompt_tokens)
    if not count_tokens or used.cache_hit:  # another worker's copy counts them; a hit has none to count
        return
    # Output last: a reader that sees a response's output counted sees the rest of it counted too.
    for kind, count in (
        ("input", usage.input_tokens),
        ("cache_read", usage.cache_read_input_tokens),
        ("cache_creation", usage.cache_creation_input_tokens),
        ("output", usage.output_tokens),
    ):
        if count:
            labelled(TOKENS, used.provider, used.model, kind).inc(count)


def key_rejected(table: RoutingTable | None, provider: str | None) -> None:
    """A provider answered 401/403 (its answer reached the client as it came: passthrough, a
    stream): a key from Vault is read again soon, it may have been rotated. The translated whole
    answers are seen by the decision hop's /respond, which does the same."""
    if table is not None and provider and (route := table.providers.get(provider)) is not None:
        route.key_rejected()


class UsageLogService(als_pb2_grpc.AccessLogServiceServicer):
    """``sink`` takes the usage records of the counting copy of the log, one ``put`` per message."""

    def __init__(self, state: GatewayState, sink: UsageSink | None = None) -> None:
        self.state = state
        self.sink: UsageSink = sink if sink is not None else NullSink()

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[StreamAccessLogsMessage], context: grpc.aio.ServicerContext
    ) -> StreamAccessLogsResponse:
        counting = True
        sessions = self.state.sessions
        held = self.state.auth.held
        async for message in request_iterator:
            if message.HasField("identifier"):  # the stream's first message names the log
                counting = message.identifier.log_name != SESSION_LOG_NAME
            records = []
            settled: list[tuple[str, Spent]] = []
            table = self.state.table
            for entry in message.http_logs.log_entry:
                used = provider_usage(entry)
                if used is not None:
                    record_usage(used, sessions, counting)
                record = None
                if counting and (record := usage_record(entry, table, used)) is not None:
                    records.append(record)
                    genai_metrics.observe(record, table, *request_timing(entry))
                    if record.status in (401, 403) and record.ttfb_ms is not None:
                        key_rejected(table, record.provider)
                if held and (request_id := entry.request.request_id) in held:  # a keyed request admitted here
                    settled.append((request_id, spent_of(record, used, table)))
            if records:
                self.sink.put(records)
            if settled:
                await self.state.auth.settle_many(settled)
        return StreamAccessLogsResponse()
