"""GenAI metrics from usage records (extproc.genai_metrics): what each kind of request adds, the
bounded labels, and the timing read off Envoy's access log entry (extproc.usage_log.request_timing)."""

from __future__ import annotations

import dataclasses

import pytest
from envoy.data.accesslog.v3.accesslog_pb2 import HTTPAccessLogEntry
from prometheus_client import REGISTRY

from ccr.v1.usage_record import USAGE_ESTIMATED, UsageRecord
from control_plane.policy import load_policy
from extproc import genai_metrics
from extproc.routing_table import compile_policy
from extproc.usage_log import request_timing

TABLE = compile_policy(
    load_policy(
        "providers:\n  - {name: ant, api: anthropic, base_url: 'http://10.0.0.1:8000', models: [claude-sonnet-4-5]}\n",
        "gw.yaml",
    ).to_proto("1"),
    environ={},
)
RECORD = UsageRecord(
    request_id="r1",
    time="2026-12-07T00:00:00.000000Z",
    client_api="anthropic",
    endpoint="/v1/messages",
    requested_model="claude-sonnet-4-5",
    status=200,
    stream=True,
    input_tokens=100,
    output_tokens=11,
    cache_read_tokens=900,
    cache_creation_tokens=0,
    cost_usd=0.01,
    usage_source="provider",
    duration_ms=2000.0,
    tenant="acme",
    provider="ant",
    model="claude-sonnet-4-5",
    attempts=1,
)
GENAI = {
    "gen_ai_operation_name": "chat",
    "gen_ai_provider_name": "ant",
    "gen_ai_request_model": "claude-sonnet-4-5",
    "gen_ai_response_model": "claude-sonnet-4-5",
}


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def before():
    names = [
        ("gen_ai_client_token_usage_sum", {**GENAI, "gen_ai_token_type": "input"}),
        ("gen_ai_client_token_usage_sum", {**GENAI, "gen_ai_token_type": "output"}),
        ("gen_ai_server_request_duration_seconds_count", {**GENAI, "error_type": ""}),
        ("gen_ai_server_time_to_first_token_seconds_sum", GENAI),
        ("gen_ai_server_time_per_output_token_seconds_sum", GENAI),
        ("ccr_cost_usd_total", {"provider": "ant", "model": "claude-sonnet-4-5", "tenant": "acme"}),
        ("ccr_cost_avoided_usd_total", {"provider": "ant", "model": "claude-sonnet-4-5", "tenant": "acme"}),
        ("ccr_gateway_overhead_seconds_sum", {"client_api": "anthropic"}),
        ("ccr_requests_total", {"client_api": "anthropic", "status_class": "2xx"}),
    ]
    start = {(name, tuple(sorted(labels.items()))): value(name, **labels) for name, labels in names}

    def added() -> dict[str, float]:
        return {
            f"{name}{dict(labels).get('gen_ai_token_type', '')}": round(value(name, **dict(labels)) - seen, 6)
            for (name, labels), seen in start.items()
        }

    return added


def test_a_streamed_answer_counts_its_tokens_times_cost_and_overhead(before) -> None:
    genai_metrics.observe(RECORD, TABLE, first_byte_out_s=0.5, upstream_s=1.9)
    added = before()
    assert added["gen_ai_client_token_usage_suminput"] == 1000  # the whole prompt, cache reads included
    assert added["gen_ai_client_token_usage_sumoutput"] == 11
    assert added["gen_ai_server_request_duration_seconds_count"] == 1
    assert added["gen_ai_server_time_to_first_token_seconds_sum"] == 0.5
    assert added["gen_ai_server_time_per_output_token_seconds_sum"] == 0.15  # 1.5 s over 10 tokens
    assert added["ccr_cost_usd_total"] == 0.01 and added["ccr_cost_avoided_usd_total"] == 0
    assert added["ccr_gateway_overhead_seconds_sum"] == 0.1
    assert added["ccr_requests_total"] == 1


def test_a_cache_hit_counts_the_cost_it_avoided_and_no_tokens(before) -> None:
    hit = dataclasses.replace(
        RECORD, cache="hit", input_tokens=0, output_tokens=0, cache_read_tokens=0, cost_usd=0, cost_avoided_usd=0.02
    )
    genai_metrics.observe(hit, TABLE, first_byte_out_s=0.002, upstream_s=None)
    added = before()
    assert added["ccr_cost_avoided_usd_total"] == 0.02 and added["ccr_cost_usd_total"] == 0
    assert added["gen_ai_client_token_usage_suminput"] == 0
    assert added["ccr_gateway_overhead_seconds_sum"] == 2.0  # no provider: all of it is the gateway's


def test_estimated_usage_counts_no_tokens_but_the_request(before) -> None:
    genai_metrics.observe(dataclasses.replace(RECORD, usage_source=USAGE_ESTIMATED), TABLE, 0.5, 1.0)
    added = before()
    assert added["gen_ai_client_token_usage_suminput"] == 0
    assert added["gen_ai_server_request_duration_seconds_count"] == 1


def test_a_requested_model_the_policy_does_not_know_is_other() -> None:
    record = dataclasses.replace(RECORD, requested_model="made-up-by-a-client-1234")
    genai_metrics.observe(record, TABLE, 0.5, 1.0)
    labels = {**GENAI, "gen_ai_request_model": "_OTHER", "error_type": ""}
    assert value("gen_ai_server_request_duration_seconds_count", **labels) >= 1


def test_the_model_list_counts_only_as_a_request(before) -> None:
    genai_metrics.observe(dataclasses.replace(RECORD, endpoint="/v1/models", provider=None), TABLE, 0.001, None)
    added = before()
    assert added["ccr_requests_total"] == 1 and added["gen_ai_server_request_duration_seconds_count"] == 0


def test_timing_is_read_off_the_access_log_entry() -> None:
    entry = HTTPAccessLogEntry()
    common = entry.common_properties
    common.time_to_first_downstream_tx_byte.FromMilliseconds(300)
    common.time_to_first_upstream_tx_byte.FromMilliseconds(20)
    common.time_to_last_upstream_rx_byte.FromMilliseconds(1020)
    assert request_timing(entry) == (0.3, 1.0)
    assert request_timing(HTTPAccessLogEntry()) == (None, None)
