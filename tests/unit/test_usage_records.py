"""extproc.usage_log.usage_record: one ledger record per client request, from Envoy's access log entry.

The routing labels come from the decision hop itself (hop.decide on a real request), so the entries
carry what Envoy would log: the labels the decision service set, the provider's usage as Envoy's
usage filters read it, and Envoy's own timings, attempt count, status and response flags.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from envoy.data.accesslog.v3.accesslog_pb2 import HTTPAccessLogEntry, ResponseFlags
from envoy.service.accesslog.v3.als_pb2 import StreamAccessLogsMessage
from google.protobuf import json_format

from ccr.v1.contract import (
    ANSWERED_BY_TAG,
    CACHE_LABEL,
    CACHE_SAVED_LABEL,
    METADATA_NAMESPACE,
    SESSION_LOG_NAME,
    USAGE_LOG_NAME,
    USAGE_NAMESPACE,
)
from ccr.v1.usage_record import USAGE_ESTIMATED, USAGE_FROM_PROVIDER, record_from_dict, time_of
from control_plane.policy import load_policy
from extproc import hop
from extproc.cache.answers import saved_usage
from extproc.routing_table import compile_policy
from extproc.state import GatewayState
from extproc.translate.base import Api
from extproc.usage_log import UsageLogService, cost_avoided, error_type, provider_usage, usage_record
from extproc.usage_sink import MemorySink

POLICY = """
providers:
  - {name: ant, api: anthropic, base_url: "http://10.0.0.1:8000", forward_count_tokens: true,
     models: [{name: claude-sonnet-4-5, id: claude-sonnet-4-5-20250929}, claude-haiku-4-5]}
  - {name: oai, api: openai, base_url: "http://10.0.0.2:8000/v1", models: [{name: gpt-4o, id: gpt-4o-2024-08-06}]}
  - {name: local, api: openai, base_url: "http://10.0.0.3:8000/v1",
     models: [{name: llama, id: llama-3.3-70b, pricing: {input: 0.5, output: 1.0}}, {name: free, id: mystery-1}]}
fallback:
  ant,claude-haiku-4-5: ["oai,gpt-4o"]
"""
START = 1_767_225_600.25  # 2026-01-01T00:00:00.250000Z
REQUEST_ID = "6f1c2d3e-0000-4000-8000-000000000001"


@pytest.fixture(scope="module")
def state() -> GatewayState:
    gateway = GatewayState()
    gateway.table = compile_policy(load_policy(POLICY).to_proto("1"))
    return gateway


def decided_labels(state: GatewayState, path: str, payload: Any) -> dict[str, str]:
    """The routing labels the decision hop gives this request (reply or forward)."""
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    client = {"authorization": "Bearer c"} if "chat" in path else {}
    answer = hop.decide(state, "POST", path, client, raw)
    head = answer.partition(b"\n\n")[0].decode().split("\n")[1:]
    ops = [line.split("\t", 2) for line in head]
    return {name: value for op, name, value in ops if op == "label" and name in _RECORD_LABELS}


# What Envoy's access log carries of the labels (all of them); the hop's context tokens are left
# out here only to keep failure messages readable.
_RECORD_LABELS = {
    "client_api",
    "endpoint",
    "requested_model",
    "stream",
    "estimate",
    "scenario",
    "provider",
    "model",
    "session",
    "chain",
    "details",
    "error_type",
}


def entry(
    labels: dict[str, str] | None,
    status: int = 200,
    usage: dict[str, int] | None = None,
    *,
    path: str = "/v1/messages",
    attempts: int = 1,
    answered_by: str = "",
    flags: dict[str, bool] | None = None,
    upstream: bool = True,
    request_id: str = REQUEST_ID,
) -> HTTPAccessLogEntry:
    """An access log entry as Envoy's http_grpc logger sends it (times relative to the start)."""
    metadata: dict[str, Any] = {}
    if labels is not None:
        metadata[METADATA_NAMESPACE] = labels
    if usage is not None:
        metadata[USAGE_NAMESPACE] = usage
    common: dict[str, Any] = {
        "start_time": "2026-01-01T00:00:00.250Z",  # START
        "time_to_last_rx_byte": "0.000400s",
        "time_to_last_downstream_tx_byte": "1.250000s",
        "duration": "1.250100s",
        "upstream_request_attempt_count": attempts,
        "metadata": {"filter_metadata": metadata},
        "response_flags": flags or {},
    }
    if upstream:
        common["time_to_first_upstream_tx_byte"] = "0.002000s"
        common["time_to_first_upstream_rx_byte"] = "0.350000s"
    if answered_by:
        common["custom_tags"] = {ANSWERED_BY_TAG: answered_by}
    return json_format.ParseDict(
        {
            "common_properties": common,
            "request": {"request_method": "POST", "path": path, "request_id": request_id},
            "response": {"response_code": status},
        },
        HTTPAccessLogEntry(),
    )


def record_of(state: GatewayState, log_entry: HTTPAccessLogEntry):
    record = usage_record(log_entry, state.table, provider_usage(log_entry))
    assert record is not None
    assert record_from_dict(record.as_dict()) == record  # the ledger can read what ext_proc makes
    return record


MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hello"}]}


def test_a_passthrough_success_is_recorded_with_the_providers_usage_and_its_cost(state):
    labels = decided_labels(state, "/v1/messages", MESSAGE)
    usage = {"input_tokens": 12, "output_tokens": 4, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 10}
    record = record_of(state, entry(labels, 200, usage))
    assert record.as_dict() == {
        "request_id": REQUEST_ID,
        "time": "2026-01-01T00:00:00.250000Z",
        "client_api": "anthropic",
        "endpoint": "/v1/messages",
        "requested_model": "claude-sonnet-4-5",
        "status": 200,
        "stream": False,
        "input_tokens": 12,
        "output_tokens": 4,
        "cache_read_tokens": 100,
        "cache_creation_tokens": 10,
        # claude-sonnet-4-5 in the bundled table: 3 / 15 / 0.3 / 3.75 USD per million tokens
        "cost_usd": (12 * 3 + 4 * 15 + 100 * 0.3 + 10 * 3.75) / 1e6,
        "usage_source": USAGE_FROM_PROVIDER,
        "duration_ms": 1250.0,
        "tenant": None,
        "key_id": None,
        "scenario": "model",
        "provider": "ant",
        "model": "claude-sonnet-4-5-20250929",
        "attempts": 1,
        "error_type": None,
        "ttfb_ms": 350.0,
        "session_id": None,
        "cache": None,
        "cost_avoided_usd": 0.0,
        "batch_id": None,
    }


# --- response-cache hits -----------------------------------------------------------------------

CACHED_USAGE = {
    "input_tokens": 12,
    "output_tokens": 4,
    "cache_read_input_tokens": 100,
    "cache_creation_input_tokens": 10,
}
SONNET_COST = (12 * 3 + 4 * 15 + 100 * 0.3 + 10 * 3.75) / 1e6  # the bundled table's claude-sonnet-4-5


def hit_entry(state: GatewayState, saved: str | None, usage: dict[str, int] | None = CACHED_USAGE):
    """A hit as Envoy logs it: answered by the Lua filter (no upstream, no attempt), labelled by
    the decision hop, and with the replayed answer's usage read by Envoy's usage filters."""
    hit_labels = {**decided_labels(state, "/v1/messages", MESSAGE), CACHE_LABEL: "hit"}
    if saved is not None:
        hit_labels[CACHE_SAVED_LABEL] = saved
    return entry(hit_labels, 200, usage, attempts=0, upstream=False)


def test_a_cache_hit_spends_nothing_and_records_the_cost_it_avoided(state):
    saved = saved_usage(Api.ANTHROPIC, CACHED_USAGE)  # what the decision service labels a hit with
    record = record_of(state, hit_entry(state, saved))
    assert (record.cache, record.provider, record.model) == ("hit", "ant", "claude-sonnet-4-5-20250929")
    tokens = (record.input_tokens, record.output_tokens, record.cache_read_tokens, record.cache_creation_tokens)
    assert tokens == (0, 0, 0, 0)  # not the replayed answer's usage, which Envoy read all the same
    spent = (record.cost_usd, record.usage_source, record.attempts, record.ttfb_ms)
    assert spent == (0.0, USAGE_FROM_PROVIDER, 0, None)  # counted exactly: nothing, not an estimate
    assert record.cost_avoided_usd == pytest.approx(SONNET_COST)


def test_a_cache_hit_whose_answer_carried_no_usage_is_not_estimated_either(state):
    record = record_of(state, hit_entry(state, "12,4,100,10", usage=None))  # e.g. an OpenAI stream
    assert (record.input_tokens, record.cost_usd, record.usage_source) == (0, 0.0, USAGE_FROM_PROVIDER)
    assert record.cost_avoided_usd == pytest.approx(SONNET_COST)


def test_a_cache_hit_of_a_model_priced_nowhere_avoided_nothing_it_could_price(state):
    labels = {**decided_labels(state, "/v1/messages", {**MESSAGE, "model": "free"})}
    labels.update({CACHE_LABEL: "hit", CACHE_SAVED_LABEL: "1000,100,0,0"})
    record = record_of(state, entry(labels, 200, attempts=0, upstream=False))
    assert (record.model, record.cost_usd, record.cost_avoided_usd) == ("mystery-1", 0.0, 0.0)


@pytest.mark.parametrize(
    "saved",
    [
        None,  # a hit labelled by an older decision service
        "",
        "12,4,100",
        "12,4,100,10,1",
        "12,4,,10",
        "a,b,c,d",
        "-12,4,100,10",
        "12.5,4,100,10",
        " 12,4,100,10",
        "\uff11\uff12,4,100,10",  # fullwidth digits: str.isdigit() says yes, they are not ours
        "²,4,100,10",  # isdigit() too, and int() refuses it
        "9" * 400 + ",4,100,10",  # would price to an infinite cost
    ],
)
def test_a_hit_with_a_malformed_saved_label_avoided_nothing_and_is_still_recorded(state, saved):
    record = record_of(state, hit_entry(state, saved))
    assert (record.cache, record.input_tokens, record.cost_usd, record.cost_avoided_usd) == ("hit", 0, 0.0, 0.0)


def test_only_a_hit_has_a_cost_avoided(state):
    miss = {**decided_labels(state, "/v1/messages", MESSAGE), CACHE_LABEL: "miss", CACHE_SAVED_LABEL: "12,4,100,10"}
    record = record_of(state, entry(miss, 200, CACHED_USAGE))
    assert (record.cache, record.cost_usd, record.cost_avoided_usd) == ("miss", pytest.approx(SONNET_COST), 0.0)


def test_the_saved_label_is_priced_like_any_usage():
    from ccr.v1.pricing import Prices

    prices = Prices(input=2.0, output=10.0, cache_read=0.5, cache_write=4.0)
    assert cost_avoided("1000000,100000,2000000,10", prices) == pytest.approx(2.0 + 1.0 + 1.0 + 0.00004)
    assert cost_avoided("1000000,100000,2000000,10", None) == 0.0
    assert cost_avoided("999999999999,0,0,0", prices) == pytest.approx(1_999_999.999998)


def test_a_stream_is_recorded_as_one_with_its_session(state):
    session = "user_abc_account__session_1b2c3d4e-0000-4000-8000-000000000000"
    labels = decided_labels(state, "/v1/messages", {**MESSAGE, "stream": True, "metadata": {"user_id": session}})
    record = record_of(state, entry(labels, 200, {"input_tokens": 30, "output_tokens": 9}))
    assert (record.stream, record.input_tokens, record.output_tokens) == (True, 30, 9)
    assert record.session_id == labels["session"] and record.session_id


def test_a_batch_item_is_recorded_with_its_owner_and_its_batch(state):
    labels = {**decided_labels(state, "/v1/messages", MESSAGE), "tenant": "acme", "key_id": "abcdefgh"}
    record = record_of(state, entry({**labels, "batch": "msgbatch_01"}, 200, {"input_tokens": 3, "output_tokens": 1}))
    assert (record.tenant, record.key_id, record.batch_id) == ("acme", "abcdefgh", "msgbatch_01")
    assert record_of(state, entry(labels, 200)).batch_id is None


def test_a_translated_request_is_recorded_with_the_providers_own_counts_normalised(state):
    labels = decided_labels(state, "/v1/messages", {**MESSAGE, "model": "gpt-4o"})
    usage = {"prompt_tokens": 1000, "completion_tokens": 50, "cached_tokens": 600}
    record = record_of(state, entry(labels, 200, usage))
    assert (record.client_api, record.provider, record.model) == ("anthropic", "oai", "gpt-4o-2024-08-06")
    assert (record.input_tokens, record.cache_read_tokens, record.output_tokens) == (400, 600, 50)
    assert record.cost_usd == pytest.approx((400 * 2.5 + 600 * 1.25 + 50 * 10) / 1e6)


def test_a_fallback_chain_is_credited_to_the_provider_that_answered_at_its_price(state):
    labels = decided_labels(state, "/v1/messages", {**MESSAGE, "model": "claude-haiku-4-5"})
    assert labels["provider"] == "ant" and "chain" in labels
    usage = {"prompt_tokens": 100, "completion_tokens": 10}
    record = record_of(state, entry(labels, 200, usage, attempts=2, answered_by="oai"))
    assert (record.provider, record.model, record.attempts) == ("oai", "gpt-4o-2024-08-06", 2)
    assert record.requested_model == "claude-haiku-4-5"
    assert record.cost_usd == pytest.approx((100 * 2.5 + 10 * 10) / 1e6)


def test_a_provider_error_without_usage_is_recorded_with_the_gateways_estimate(state):
    labels = decided_labels(state, "/v1/messages", MESSAGE)
    record = record_of(state, entry(labels, 529))
    assert record.usage_source == USAGE_ESTIMATED
    assert record.input_tokens == int(labels["estimate"]) > 0 and record.output_tokens == 0
    assert record.cost_usd == pytest.approx(record.input_tokens * 3 / 1e6)
    assert (record.status, record.error_type, record.provider) == (529, "overloaded_error", "ant")


def test_a_provider_never_reached_cost_nothing(state):
    labels = decided_labels(state, "/v1/messages", MESSAGE)
    refused = entry(labels, 503, upstream=False, flags={"upstream_connection_failure": True})
    record = record_of(state, refused)
    assert (record.input_tokens, record.cost_usd, record.ttfb_ms) == (0, 0.0, None)
    assert (record.usage_source, record.error_type, record.attempts) == (USAGE_ESTIMATED, "api_error", 1)


def test_a_gateway_reply_before_routing_is_recorded_without_a_provider(state):
    labels = decided_labels(state, "/v1/messages", b"{not json")
    record = record_of(state, entry(labels, 400, attempts=0, upstream=False))
    assert (record.status, record.error_type, record.endpoint) == (400, "invalid_request_error", "/v1/messages")
    assert (record.provider, record.model, record.scenario, record.attempts) == (None, None, None, 0)
    assert (record.requested_model, record.input_tokens, record.cost_usd) == ("", 0, 0.0)


def test_an_unknown_model_is_recorded_with_the_model_the_client_asked_for(state):
    labels = decided_labels(
        state,
        "/v1/chat/completions",
        {"model": "nope", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    )
    record = record_of(state, entry(labels, 404, path="/v1/chat/completions", attempts=0, upstream=False))
    assert (record.client_api, record.requested_model, record.stream) == ("openai", "nope", True)
    assert record.error_type == "not_found_error"


def test_a_stream_cut_short_keeps_what_the_provider_reported_and_its_200(state):
    labels = decided_labels(state, "/v1/messages", {**MESSAGE, "stream": True})
    cut = entry(labels, 200, {"input_tokens": 25, "output_tokens": 1}, flags={"upstream_remote_reset": True})
    record = record_of(state, cut)
    assert (record.status, record.error_type, record.usage_source) == (200, None, USAGE_FROM_PROVIDER)
    assert (record.input_tokens, record.output_tokens) == (25, 1)


def test_an_openai_stream_without_usage_is_estimated_never_zero(state):
    payload = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "count " * 50}]}
    labels = decided_labels(state, "/v1/chat/completions", payload)
    record = record_of(state, entry(labels, 200, path="/v1/chat/completions"))
    assert record.usage_source == USAGE_ESTIMATED and record.input_tokens > 50


def test_a_forwarded_count_tokens_costs_nothing(state):
    labels = decided_labels(state, "/v1/messages/count_tokens", {"model": "claude-sonnet-4-5", "messages": []})
    assert "estimate" not in labels
    labels = decided_labels(state, "/v1/messages/count_tokens", {**MESSAGE})
    record = record_of(state, entry(labels, 200, path="/v1/messages/count_tokens"))
    assert (record.endpoint, record.input_tokens, record.cost_usd) == ("/v1/messages/count_tokens", 0, 0.0)


def test_envoys_own_answer_before_any_decision_is_recorded_from_its_path(state):
    record = record_of(state, entry(None, 413, path="/v1/chat/completions?x=1", attempts=0, upstream=False))
    assert (record.client_api, record.endpoint, record.requested_model) == ("openai", "/v1/chat/completions", "")
    assert (record.error_type, record.provider, record.usage_source) == ("invalid_request_error", None, USAGE_ESTIMATED)


def test_a_model_priced_nowhere_is_recorded_at_cost_zero_and_a_priced_one_at_its_policy_price(state):
    free = record_of(state, entry(decided_labels(state, "/v1/messages", {**MESSAGE, "model": "free"}), 200, {}))
    assert free.model == "mystery-1" and free.cost_usd == 0.0
    llama = decided_labels(state, "/v1/messages", {**MESSAGE, "model": "llama"})
    record = record_of(state, entry(llama, 200, {"prompt_tokens": 2_000_000, "completion_tokens": 1_000_000}))
    assert record.cost_usd == pytest.approx(2 * 0.5 + 1 * 1.0)


def test_without_a_policy_a_record_is_still_made_at_cost_zero():
    labels = {"client_api": "anthropic", "endpoint": "/v1/messages", "provider": "ant", "model": "m", "estimate": "7"}
    record = usage_record(entry(labels, 500), None)
    assert record is not None and (record.input_tokens, record.cost_usd) == (7, 0.0)


def test_an_entry_without_a_request_id_makes_no_record(state):
    assert usage_record(entry({"client_api": "anthropic"}, request_id=""), state.table) is None


@pytest.mark.parametrize(
    ("status", "api", "labelled", "flags", "expected"),
    [
        (200, "anthropic", "", {}, None),
        (206, "openai", "", {"upstream_remote_reset": True}, None),
        (400, "anthropic", "invalid_request_error", {}, "invalid_request_error"),
        (429, "anthropic", "", {}, "rate_limit_error"),
        (429, "openai", "", {}, "rate_limit_error"),
        (529, "anthropic", "", {}, "overloaded_error"),
        (529, "openai", "", {}, "server_error"),
        (502, "anthropic", "", {}, "api_error"),
        (504, "anthropic", "", {"upstream_request_timeout": True}, "timeout"),
        (504, "openai", "", {"stream_idle_timeout": True}, "timeout"),
        (0, "anthropic", "", {"downstream_connection_termination": True}, "client_closed"),
        (503, "openai", "", {"no_healthy_upstream": True}, "server_error"),
    ],
)
def test_error_types(status, api, labelled, flags, expected):
    assert error_type(status, api, labelled, ResponseFlags(**flags)) == expected


# --- the servicer ---------------------------------------------------------------------------------


def message(*entries: HTTPAccessLogEntry, log_name: str = "") -> StreamAccessLogsMessage:
    out = StreamAccessLogsMessage()
    if log_name:
        out.identifier.log_name = log_name
    out.http_logs.log_entry.extend(entries)
    return out


async def _consume(service: UsageLogService, *messages: StreamAccessLogsMessage) -> None:
    async def stream():
        for item in messages:
            yield item

    await service.StreamAccessLogs(stream(), context=None)


async def test_the_counting_copy_hands_each_messages_records_to_the_sink_in_one_put(state):
    sink = MemorySink()
    ok = decided_labels(state, "/v1/messages", MESSAGE)
    bad = decided_labels(state, "/v1/messages", b"[")
    first = message(
        entry(ok, 200, {"input_tokens": 5, "output_tokens": 1}, request_id="a"),
        entry(bad, 400, attempts=0, upstream=False, request_id="b"),
        log_name=USAGE_LOG_NAME,
    )
    second = message(entry(ok, 529, request_id="c"))
    await _consume(UsageLogService(state, sink), first, second)
    assert sink.puts == 2
    assert [(r.request_id, r.status, r.usage_source) for r in sink.records] == [
        ("a", 200, USAGE_FROM_PROVIDER),
        ("b", 400, USAGE_ESTIMATED),
        ("c", 529, USAGE_ESTIMATED),
    ]
    assert {r.time for r in sink.records} == {time_of(START)}


async def test_the_session_copies_make_no_records_but_remember_sessions(state):
    sink = MemorySink()
    session = "user_x_account__session_aaaaaaaa-0000-4000-8000-000000000000"
    labels = decided_labels(state, "/v1/messages", {**MESSAGE, "metadata": {"user_id": session}})
    copy = message(entry(labels, 200, {"input_tokens": 41, "output_tokens": 1}), log_name=SESSION_LOG_NAME)
    await _consume(UsageLogService(state, sink), copy)
    assert sink.puts == 0 and sink.records == []
    assert state.sessions.last(labels["session"]) == 41


async def test_a_message_without_records_is_not_handed_to_the_sink(state):
    sink = MemorySink()
    await _consume(UsageLogService(state, sink), message(entry(None, 413, request_id=""), log_name=USAGE_LOG_NAME))
    assert sink.puts == 0


async def test_a_provider_answering_401_or_403_has_its_key_read_again(state, monkeypatch):
    """Passthrough answers and streams reach the client as they came: the usage log is where the
    worker learns that the provider refused its key (a Vault key is then re-read soon)."""
    from extproc.routing_table import ProviderRoute

    rejected: list[str] = []
    monkeypatch.setattr(ProviderRoute, "key_rejected", lambda route: rejected.append(route.name))
    labels = decided_labels(state, "/v1/messages", MESSAGE)
    answers = message(
        entry(labels, 401, request_id="a"),
        entry(labels, 403, request_id="b"),
        entry(labels, 500, request_id="c"),
        entry(labels, 401, attempts=0, upstream=False, request_id="d"),  # the gateway's own refusal
        log_name=USAGE_LOG_NAME,
    )
    await _consume(UsageLogService(state, MemorySink()), answers)
    assert len(rejected) == 2 and len(set(rejected)) == 1  # a and b, from the provider that answered
