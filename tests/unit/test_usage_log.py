"""Usage read by Envoy (control_plane.resources.usage_capture) and counted from its access log (extproc.usage_log).

The golden check ties the two halves to the translators: applying Envoy's rules to every golden
provider response, as sse_to_metadata / json_to_metadata do, and normalising the result must give
the usage our translator reported to the client for that same response.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from envoy.data.accesslog.v3.accesslog_pb2 import HTTPAccessLogEntry
from envoy.service.accesslog.v3.als_pb2 import StreamAccessLogsMessage
from google.protobuf import json_format

from ccr.v1.contract import (
    ANSWERED_BY_TAG,
    CACHE_LABEL,
    ENDPOINT_LABEL,
    KEY_ID_LABEL,
    METADATA_NAMESPACE,
    SESSION_LOG_NAME,
    USAGE_LOG_NAME,
    USAGE_NAMESPACE,
    encode_chain,
)
from control_plane.resources.gateway import EXTPROC_CLUSTER, listener
from control_plane.resources.usage_capture import PROMPT_KEYS, USAGE_FIELDS, json_usage_filter, sse_usage_filter
from extproc.metrics import TOKENS
from extproc.sse import SSEDecoder
from extproc.state import GatewayState
from extproc.translate.base import Api, Usage
from extproc.usage_log import ProviderUsage, UsageLogService, provider_usage, record_usage, usage_from_counts
from tests.unit.cp_helpers import policy, provider

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


# --- Envoy's rules, applied here the way Envoy applies them --------------------------------------


def _rule_paths() -> list[tuple[str, tuple[str, ...]]]:
    """(metadata key, selector path) in the order of the filter's rules."""
    rules = json_usage_filter()["typed_config"]["response_rules"]["rules"]
    return [(rule["on_present"]["key"], tuple(selector["key"] for selector in rule["selectors"])) for rule in rules]


def _lookup(document: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(document, dict) or key not in document:
            return None
        document = document[key]
    return document


def envoy_counts(documents: list[Any]) -> dict[str, int]:
    """Every rule against every document in order; a later match overwrites (stop_processing 0)."""
    counts: dict[str, int] = {}
    for document in documents:
        for key, path in _rule_paths():
            value = _lookup(document, path)
            if isinstance(value, int | float) and not isinstance(value, bool):
                counts[key] = int(value)
    return counts


def _documents(path: Path) -> list[Any]:
    raw = path.read_bytes()
    if path.suffix == ".json":
        return [orjson.loads(raw)]
    decoder = SSEDecoder()
    events = decoder.feed(raw) + decoder.close()
    return [orjson.loads(e.data) for e in events if e.data and e.data != "[DONE]"]


def _has_usage(path: Path) -> bool:
    return any(key in envoy_counts(_documents(path)) for key in PROMPT_KEYS)


def _golden_cases() -> list[Path]:
    """Cases where the provider reported usage and the client was told it (an OpenAI stream client
    that did not ask for include_usage is told nothing; an error carries no usage)."""
    return sorted(
        case
        for pair in GOLDEN.iterdir()
        if pair.is_dir()
        for case in pair.iterdir()
        if case.is_dir()
        and any(case.glob("provider_response.*"))
        and _has_usage(next(case.glob("provider_response.*")))
        and _has_usage(next(case.glob("client_response.*")))
    )


def test_the_golden_check_covers_every_pair() -> None:
    pairs = {f"{client}_{provider}" for client in Api for provider in Api}  # not the Claude Code corpus
    assert {case.parent.name for case in _golden_cases()} == {p.name for p in GOLDEN.iterdir() if p.name in pairs}
    assert len(_golden_cases()) >= 30


@pytest.mark.parametrize("case", _golden_cases(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_envoy_rules_read_the_usage_the_translator_reported(case: Path) -> None:
    provider = envoy_counts(_documents(next(case.glob("provider_response.*"))))
    client = envoy_counts(_documents(next(case.glob("client_response.*"))))
    # OpenAI's shape has no cache-creation count (the translator folds it into prompt_tokens):
    # compare the prompt as a whole, the cache reads and the output.
    ours, told = usage_from_counts(provider), usage_from_counts(client)
    assert (ours.prompt_tokens, ours.cache_read_input_tokens, ours.output_tokens) == (
        told.prompt_tokens,
        told.cache_read_input_tokens,
        told.output_tokens,
    )


def test_every_usage_field_has_a_rule_in_both_filters() -> None:
    sse_rules = sse_usage_filter()["typed_config"]["value"]["response_rules"]["content_parser"]["typed_config"]
    assert [entry["rule"] for entry in sse_rules["rules"]] == json_usage_filter()["typed_config"]["response_rules"][
        "rules"
    ]
    assert {key for key, _ in _rule_paths()} == set(USAGE_FIELDS)


def test_usage_from_counts_normalises_each_api_to_anthropic_meaning() -> None:
    assert usage_from_counts({"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 5}) == Usage(
        10, 3, 5, 0
    )
    openai = usage_from_counts({"prompt_tokens": 100, "completion_tokens": 7, "cached_tokens": 60})
    assert openai == Usage(input_tokens=40, output_tokens=7, cache_read_input_tokens=60)
    gemini = usage_from_counts(
        {"promptTokenCount": 50, "candidatesTokenCount": 4, "thoughtsTokenCount": 6, "cachedContentTokenCount": 20}
    )
    assert gemini == Usage(input_tokens=30, output_tokens=10, cache_read_input_tokens=20)


# --- the access log entry -> record --------------------------------------------------------------


def _entry(usage: dict[str, float] | None, labels: dict[str, str] | None, answered_by: str = "") -> HTTPAccessLogEntry:
    metadata: dict[str, Any] = {}
    if usage is not None:
        metadata[USAGE_NAMESPACE] = usage
    if labels is not None:
        metadata[METADATA_NAMESPACE] = labels
    common: dict[str, Any] = {"metadata": {"filter_metadata": metadata}}
    if answered_by:
        common["custom_tags"] = {ANSWERED_BY_TAG: answered_by}
    return json_format.ParseDict({"common_properties": common}, HTTPAccessLogEntry())


LABELS = {"client_api": "anthropic", "scenario": "default", "provider": "p1", "model": "m1", "session": "s-1"}


def test_a_routed_entry_becomes_a_record_of_the_routed_provider() -> None:
    used = provider_usage(_entry({"input_tokens": 12, "output_tokens": 4}, LABELS))
    assert used == ProviderUsage("p1", "m1", "s-1", Usage(input_tokens=12, output_tokens=4))


def test_a_chain_entry_is_credited_to_the_provider_that_answered_with_its_model() -> None:
    labels = {**LABELS, "chain": encode_chain("anthropic", [("p1", "m1"), ("p2", "m2")])}
    used = provider_usage(_entry({"prompt_tokens": 9, "completion_tokens": 2}, labels, answered_by="p2"))
    assert used is not None and (used.provider, used.model) == ("p2", "m2")
    assert used.usage == Usage(input_tokens=9, output_tokens=2)


@pytest.mark.parametrize(
    "usage, labels",
    [
        (None, LABELS),  # no usage read (error response, OpenAI stream without include_usage)
        ({"input_tokens": 5}, None),  # not routed by ext_proc
        ({}, LABELS),
        ({"input_tokens": 5}, {**LABELS, "provider": ""}),
    ],
)
def test_entries_without_usage_or_routing_labels_are_skipped(usage, labels) -> None:
    assert provider_usage(_entry(usage, labels)) is None


def test_a_record_counts_tokens_and_remembers_the_sessions_prompt_size() -> None:
    sessions = GatewayState().sessions
    before = TOKENS.labels("p-unit", "m-unit", "cache_read")._value.get()
    record_usage(ProviderUsage("p-unit", "m-unit", "s-9", Usage(10, 2, 30, 5)), sessions)
    assert sessions.last("s-9") == 45  # the whole prompt, cached parts included
    assert TOKENS.labels("p-unit", "m-unit", "cache_read")._value.get() - before == 30


def test_a_cache_hit_remembers_the_sessions_prompt_size_but_counts_no_provider_tokens() -> None:
    # Envoy's usage filters read the replayed answer's usage; no provider produced it this time.
    used = provider_usage(
        _entry({"input_tokens": 12, "output_tokens": 4}, {**LABELS, "provider": "p-hit", CACHE_LABEL: "hit"})
    )
    assert used is not None and used.cache_hit and used.usage == Usage(input_tokens=12, output_tokens=4)
    sessions = GatewayState().sessions
    record_usage(used, sessions)
    assert sessions.last("s-1") == 12  # the prompt was that big all the same: the next turn's routing needs it
    assert TOKENS.labels("p-hit", "m1", "input")._value.get() == 0
    assert TOKENS.labels("p-hit", "m1", "output")._value.get() == 0
    miss = provider_usage(_entry({"input_tokens": 12}, {**LABELS, CACHE_LABEL: "miss"}))
    assert miss is not None and not miss.cache_hit


async def test_the_service_consumes_a_batched_stream() -> None:
    state = GatewayState()
    message = StreamAccessLogsMessage()
    message.http_logs.log_entry.extend(
        [
            _entry({"input_tokens": 7, "output_tokens": 1}, {**LABELS, "session": "a"}),
            _entry(None, {**LABELS, "session": "b"}),
            _entry({"promptTokenCount": 70}, {**LABELS, "session": "c"}),
        ]
    )

    async def stream():
        yield message

    await UsageLogService(state).StreamAccessLogs(stream(), context=None)
    sessions = state.sessions
    assert (sessions.last("a"), sessions.last("b"), sessions.last("c")) == (7, None, 70)


async def test_a_session_only_copy_of_the_log_remembers_sessions_without_counting_tokens() -> None:
    state = GatewayState()
    first = StreamAccessLogsMessage()
    first.identifier.log_name = SESSION_LOG_NAME
    first.http_logs.log_entry.append(_entry({"input_tokens": 11, "output_tokens": 2}, {**LABELS, "provider": "p-copy"}))

    async def stream():
        yield first

    await UsageLogService(state).StreamAccessLogs(stream(), context=None)
    assert state.sessions.last("s-1") == 11
    assert TOKENS.labels("p-copy", "m1", "input")._value.get() == 0


def test_with_one_usage_log_per_worker_only_the_first_counts_tokens() -> None:
    hcm = json_format.MessageToDict(
        listener(policy(provider("p1")), ("ccr_extproc_0", "ccr_extproc_1")).filter_chains[0].filters[0].typed_config
    )
    logs = [(log["typedConfig"]["commonConfig"]) for log in hcm["accessLog"][1:]]
    assert [(c["logName"], c["grpcService"]["envoyGrpc"]["clusterName"]) for c in logs] == [
        (USAGE_LOG_NAME, "ccr_extproc_0"),
        (SESSION_LOG_NAME, "ccr_extproc_1"),
    ]


# --- the Envoy resources -------------------------------------------------------------------------


def test_the_usage_filters_follow_ext_proc_and_the_usage_log_reaches_ext_proc() -> None:
    hcm = json_format.MessageToDict(listener(policy(provider("p1"))).filter_chains[0].filters[0].typed_config)
    assert [f["name"] for f in hcm["httpFilters"]] == [
        "ccr.edge_headers",  # request ids on every answer, the client's Content-Encoding noted
        "envoy.filters.http.cors",
        "ccr.decompress_gzip",
        "ccr.decompress_br",
        "ccr.decompress_zstd",
        "ccr.jwt_claims",  # client-sent x-ccr-jwt-* headers removed, verified claims set
        "envoy.filters.http.lua",  # the decision hop
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.sse_to_metadata",  # response path: these see the provider's own bytes
        "envoy.filters.http.json_to_metadata",
        "envoy.filters.http.router",
    ]
    usage_log = hcm["accessLog"][1]
    assert usage_log["name"] == "envoy.access_loggers.http_grpc"
    common = usage_log["typedConfig"]["commonConfig"]
    assert common["grpcService"] == {"envoyGrpc": {"clusterName": EXTPROC_CLUSTER}}
    assert common["customTags"][0]["tag"] == ANSWERED_BY_TAG


def test_the_counting_copy_passes_every_client_request_and_the_session_copies_usage_and_keyed_requests() -> None:
    hcm = json_format.MessageToDict(
        listener(policy(provider("p1")), ("ccr_extproc_0", "ccr_extproc_1")).filter_chains[0].filters[0].typed_config
    )
    counting, session = (log["filter"] for log in hcm["accessLog"][1:])
    decided, undecided = counting["orFilter"]["filters"]
    # Every request the decision service saw on one of its endpoints, on both decision paths...
    assert decided["metadataFilter"]["matcher"] == {
        "filter": METADATA_NAMESPACE,
        "path": [{"key": ENDPOINT_LABEL}],
        "value": {"presentMatch": True},
    }
    # ...and every one Envoy answered before any decision (413, the decision service down).
    expression = undecided["extensionFilter"]["typedConfig"]["expression"]
    assert "response.code >= 400" in expression and f"'{METADATA_NAMESPACE}' in metadata.filter_metadata" in expression
    matchers = [f["metadataFilter"]["matcher"] for f in session["orFilter"]["filters"]]
    assert [m["filter"] for m in matchers] == [USAGE_NAMESPACE] * 4 + [METADATA_NAMESPACE]
    assert matchers[-1]["path"] == [{"key": KEY_ID_LABEL}]  # the worker that admitted it settles its limits


def test_what_a_keyed_request_spent_comes_from_its_record_or_else_its_usage_alone() -> None:
    from dataclasses import replace

    from ccr.v1.pricing import Prices
    from control_plane.policy.model import ModelSpec
    from extproc.auth.admission import Spent
    from extproc.routing_table import compile_policy
    from extproc.usage_log import spent_of

    priced = replace(provider("p1"), models=(ModelSpec("m1", "m1", pricing=Prices(3.0, 15.0)),))
    table = compile_policy(policy(priced).to_proto("1"), environ={})
    used = ProviderUsage("p1", "m1", None, usage_from_counts({"input_tokens": 1000, "output_tokens": 500}))
    spent = spent_of(None, used, table)
    assert (spent.tokens, spent.cost_usd) == (1500, pytest.approx((1000 * 3.0 + 500 * 15.0) / 1e6))
    assert spent_of(None, None, table).tokens == 0  # no usage: nothing to correct
    hit = ProviderUsage("p1", "m1", None, used.usage, cache_hit=True)
    assert spent_of(None, hit, table) == Spent(0, 0.0)  # a cache hit costs its key nothing


@pytest.mark.parametrize("path", ["/v1/responses", "/responses", "/responses/input_tokens"])
def test_an_unlabelled_responses_request_is_recorded_as_responses_on_either_path(path: str) -> None:
    from extproc.usage_log import usage_record

    entry = _entry(None, None)
    entry.request.request_id, entry.request.path = "r-responses", path
    entry.response.response_code.value = 413
    record = usage_record(entry, None)
    assert record is not None and record.client_api == "responses"
    assert record.error_type == "invalid_request_error"  # OpenAI's type, not Anthropic's


def test_a_responses_cache_hit_spends_nothing_and_remembers_the_whole_prompt() -> None:
    """Envoy's rules read a replayed Responses stream's usage (its terminal event) like a
    provider's: the session's prompt size counts the cached tokens; nothing is counted or spent;
    the record's cost avoided is the cached usage at the route's prices."""
    from ccr.v1.contract import CACHE_SAVED_LABEL
    from extproc.cache.answers import saved_usage
    from extproc.cache.replay import sse_from_answer
    from extproc.usage_log import cost_avoided, spent_of, usage_record
    from tests.unit.test_cache_replay import RESPONSES_NATIVE

    decoder = SSEDecoder()
    events = decoder.feed(sse_from_answer(Api.RESPONSES, RESPONSES_NATIVE)) + decoder.close()
    counts = envoy_counts([orjson.loads(event.data) for event in events if event.data])
    saved = saved_usage(Api.RESPONSES, RESPONSES_NATIVE["usage"])
    labels = {**LABELS, "client_api": "responses", "provider": "p-rhit", CACHE_LABEL: "hit", CACHE_SAVED_LABEL: saved}
    entry = _entry({k: float(v) for k, v in counts.items()}, labels)
    entry.request.request_id = "r-hit"
    used = provider_usage(entry)
    assert used is not None and used.cache_hit
    assert used.usage == Usage(input_tokens=52, output_tokens=40, cache_read_input_tokens=2048)
    sessions = GatewayState().sessions
    record_usage(used, sessions)
    assert sessions.last("s-1") == 2100
    assert TOKENS.labels("p-rhit", "m1", "input")._value.get() == 0
    record = usage_record(entry, None, used)
    assert record is not None and (record.input_tokens, record.output_tokens, record.cost_usd) == (0, 0, 0.0)
    assert spent_of(record, used, None).tokens == 0
    assert saved == "52,40,2048,0" and cost_avoided(saved, None) == 0.0  # no prices known: nothing priced
