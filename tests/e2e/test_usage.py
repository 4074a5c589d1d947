"""Token usage read by Envoy (sse_to_metadata / json_to_metadata) and counted by ext_proc from the
gRPC access log: passthrough responses, whose bodies never reach Python, included."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from tests.e2e.gateway import FakeProvider, Gateway, free_port, wait_until

TOKENS = "ccr_tokens_total"


def counted(gateway: Gateway, provider: str, model: str) -> dict[str, float]:
    return {
        kind: gateway.extproc_metric(TOKENS, provider=provider, model=model, kind=kind)
        for kind in ("input", "output", "cache_read")
    }


def settled(gateway: Gateway, provider: str, model: str) -> dict[str, float]:
    """The counts once earlier tests' usage has arrived: the shared gateway's access log is flushed
    every 100 ms per Envoy thread, so an earlier request to the same model may still be on its way
    (counting it here would make the next delta wrong). Stable over 300 ms = settled."""
    last = counted(gateway, provider, model)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = counted(gateway, provider, model)
        if now == last:
            return now
        last = now
    return last


def wait_for_count(gateway: Gateway, provider: str, model: str, before: dict[str, float], expected: dict[str, int]):
    """The access log is flushed every 100 ms: wait for the output count to move (ext_proc counts it
    last), then compare every count exactly."""

    def delta() -> dict[str, float]:
        now = counted(gateway, provider, model)
        return {kind: now[kind] - before[kind] for kind in now}

    wait_until(lambda: delta()["output"] > 0, 5, f"usage of {provider}/{model} in {TOKENS}")
    assert delta() == {kind: float(expected.get(kind, 0)) for kind in ("input", "output", "cache_read")}


def test_a_passthrough_anthropic_stream_is_counted_without_its_body_reaching_python(gateway, fake):
    before = settled(gateway, "fake-anthropic", "fake-sonnet")
    client = anthropic.Anthropic(base_url=gateway.url, api_key="k", max_retries=0)
    with client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=100,
        messages=[{"role": "user", "content": "count me"}],
        extra_headers={"x-fake-cached-tokens": "4"},
    ) as stream:
        usage = stream.get_final_message().usage
    assert usage.cache_read_input_tokens == 4
    expected = {"input": usage.input_tokens, "output": usage.output_tokens, "cache_read": 4}
    wait_for_count(gateway, "fake-anthropic", "fake-sonnet", before, expected)


def test_a_passthrough_anthropic_message_is_counted(gateway, fake):
    before = settled(gateway, "fake-anthropic", "fake-sonnet")
    client = anthropic.Anthropic(base_url=gateway.url, api_key="k", max_retries=0)
    usage = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "json body"}]
    ).usage
    wait_for_count(
        gateway, "fake-anthropic", "fake-sonnet", before, {"input": usage.input_tokens, "output": usage.output_tokens}
    )


def test_a_stream_is_measured_by_the_genai_conventions_on_the_gateways_one_page(gateway, fake):
    genai = 'gen_ai_operation_name="chat",gen_ai_provider_name="fake-anthropic"'
    before = gateway.extproc_metric("gen_ai_server_time_to_first_token_seconds_count")
    client = anthropic.Anthropic(base_url=gateway.url, api_key="any", max_retries=0)
    with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "measure me"}]
    ) as stream:
        stream.get_final_message()
    wait_until(
        lambda: gateway.extproc_metric("gen_ai_server_time_to_first_token_seconds_count") > before,
        10,
        "the stream's time to first token",
    )
    page = gateway.metrics()
    for family in (
        "gen_ai_client_token_usage_bucket",
        "gen_ai_server_request_duration_seconds_bucket",
        "gen_ai_server_time_per_output_token_seconds_bucket",
        "ccr_gateway_overhead_seconds_bucket",
        "ccr_requests_total",
    ):
        assert any(line.startswith(family) for line in page.splitlines()), family
    assert f"gen_ai_client_token_usage_count{{{genai}," in page
    assert 'gen_ai_token_type="output"' in page


def test_an_openai_stream_is_counted_when_the_client_asked_for_usage(gateway, fake):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="k", max_retries=0)
    before = settled(gateway, "fake-openai", "fake-gpt-4o")
    # Without include_usage the provider reports nothing, so nothing can be counted; the gateway
    # does not ask on the client's behalf (that would add a chunk the client did not ask for).
    for _ in client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "no usage"}], stream=True
    ):
        pass
    usage = None
    for chunk in client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "usage please"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-fake-cached-tokens": "3"},
    ):
        usage = chunk.usage or usage
    assert usage is not None
    expected = {"input": usage.prompt_tokens - 3, "output": usage.completion_tokens, "cache_read": 3}
    wait_for_count(gateway, "fake-openai", "fake-gpt-4o", before, expected)


def test_a_translated_gemini_stream_is_counted_from_the_providers_own_fields(gateway, fake):
    before = settled(gateway, "fake-gemini", "fake-gemini-pro")
    client = anthropic.Anthropic(base_url=gateway.url, api_key="k", max_retries=0)
    with client.messages.stream(
        model="gemini-2.5-pro", max_tokens=100, messages=[{"role": "user", "content": "to gemini"}]
    ) as stream:
        usage = stream.get_final_message().usage
    expected = {"input": usage.input_tokens, "output": usage.output_tokens}
    wait_for_count(gateway, "fake-gemini", "fake-gemini-pro", before, expected)


# --- a passthrough turn's usage steers the session's next turn --------------------------------

SESSION = '{"device_id":"d","account_uuid":"a","session_id":"%s"}'
THRESHOLD = 30_000


@pytest.fixture(scope="module")
def remembering(workdir: Path, fake: FakeProvider) -> Iterator[Gateway]:
    """Two ext_proc workers: each receives the usage log, so either one routes the next turn."""
    policy = {
        "listener": {"address": "127.0.0.1", "port": free_port()},
        "providers": [
            {"name": "ant", "api": "anthropic", "base_url": fake.url, "models": ["claude-sonnet-4-5"]},
            {"name": "gem", "api": "gemini", "base_url": f"{fake.url}/v1beta", "models": ["gemini-2.5-pro"]},
        ],
        "router": {
            "default": "ant,claude-sonnet-4-5",
            "longContext": "gem,gemini-2.5-pro",
            "longContextThreshold": THRESHOLD,
        },
    }
    gw = Gateway.start(workdir, policy, name="remembering", workers=2)
    yield gw
    gw.stop()


def _turn(gateway: Gateway, session: str, text: str, **headers: str) -> str:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="k", max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-5-20250929",  # not a policy model name: the router's scenarios decide
        max_tokens=50,
        messages=[{"role": "user", "content": text}],
        metadata={"user_id": SESSION % session},
        extra_headers=headers,
    )
    return dict(part.strip().split("=", 1) for part in raw.headers["x-ccr-route"].split(";"))["scenario"]


def test_a_passthrough_turn_over_the_threshold_sends_the_sessions_next_big_turn_to_long_context(remembering):
    # " information" is one token per 12 bytes: the router's exact count (~10,500) is under the
    # threshold while the provider (the fake counts 4 bytes a token) reports ~31,500. Only Envoy's
    # usage log can tell ext_proc so: the response is passthrough, its body never reaches Python.
    text = " information" * 10_500
    assert _turn(remembering, "s-long", text) == "default"
    wait_until(lambda: remembering.extproc_metric(TOKENS, provider="ant", kind="input") > THRESHOLD, 5, "the usage log")
    # CCR: after a turn over the threshold, a session's request over 20,000 tokens stays long-context.
    assert _turn(remembering, "s-long", text) == "longContext"
    assert _turn(remembering, "s-fresh", text) == "default"  # no history: the threshold applies
