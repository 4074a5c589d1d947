"""Cross-format requests through real Envoy: the client speaks one API, the provider another."""

from __future__ import annotations

import base64
import json

import anthropic
import openai
import orjson

from fake_provider.reply import estimate_tokens
from tests.e2e.gateway import PROVIDER_KEYS, FakeProvider, Gateway, http

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"location": {"type": "string"}, "days": {"type": "integer", "exclusiveMinimum": 0}},
        "required": ["location"],
        "additionalProperties": False,
    },
}
PIXEL = base64.b64encode(bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")).decode()


def _anthropic(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="client-key", max_retries=0)


def _openai(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client-key", max_retries=0)


def _last(fake: FakeProvider) -> dict:
    received = fake.requests()
    assert received, "the provider received nothing"
    return received[-1]


def _provider_usage(fake: FakeProvider, received: dict) -> tuple[int, int]:
    """(input, output) tokens the provider itself counts for the exact request it received: the
    fake counts input from the body's size, output from the reply (replayed without streaming)."""
    input_tokens = estimate_tokens(len(orjson.dumps(received["body"])))
    body = {k: v for k, v in received["body"].items() if k not in ("stream", "stream_options")}
    raw = http("POST", fake.url + received["path"], orjson.dumps(body), {"content-type": "application/json"})[2]
    return input_tokens, json.loads(raw)["usage"]["completion_tokens"]


def test_claude_code_tool_loop_streams_through_an_openai_provider(gateway: Gateway, fake: FakeProvider):
    client = _anthropic(gateway)
    messages: list = [{"role": "user", "content": "What's the weather in Paris?"}]
    with client.messages.stream(
        model="gpt-4o",
        max_tokens=1024,
        system=[{"type": "text", "text": "You are Claude Code."}],
        tools=[WEATHER_TOOL],
        messages=messages,
    ) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    tool_use = next(block for block in first.content if block.type == "tool_use")
    assert tool_use.name == "get_weather" and tool_use.input == {"location": "Paris"}
    received = _last(fake)
    assert received["path"] == "/v1/chat/completions"
    assert received["body"]["model"] == "fake-gpt-4o"
    assert received["headers"]["authorization"] == "Bearer " + PROVIDER_KEYS["CCR_TEST_OPENAI_KEY"]
    assert not any(name.startswith("anthropic-") for name in received["headers"])
    assert (first.usage.input_tokens, first.usage.output_tokens) == _provider_usage(fake, received)

    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "18°C, sunny"}]},
    ]
    with client.messages.stream(model="gpt-4o", max_tokens=1024, tools=[WEATHER_TOOL], messages=messages) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Tool result: 18°C, sunny"
    assert final.stop_reason == "end_turn"
    sent = _last(fake)["body"]["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == tool_use.id and sent[-1]["role"] == "tool"
    assert (final.usage.input_tokens, final.usage.output_tokens) == _provider_usage(fake, _last(fake))


def test_anthropic_image_reaches_openai_as_a_data_url(gateway: Gateway, fake: FakeProvider):
    message = _anthropic(gateway).messages.create(
        model="gpt-4o",
        max_tokens=100,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
                    {"type": "text", "text": "describe"},
                ],
            }
        ],
    )
    assert message.content[0].text.endswith("describe")
    parts = _last(fake)["body"]["messages"][-1]["content"]
    assert parts[0]["image_url"]["url"] == f"data:image/png;base64,{PIXEL}"


def test_anthropic_client_to_gemini_with_thinking(gateway: Gateway, fake: FakeProvider):
    with _anthropic(gateway).messages.stream(
        model="gemini-2.5-pro",
        max_tokens=4096,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=[{"role": "user", "content": "think about it"}],
    ) as stream:
        final = stream.get_final_message()
    kinds = [block.type for block in final.content]
    assert kinds == ["thinking", "text"]
    assert final.content[1].text == "Hello from fake-gemini model fake-gemini-pro: think about it"
    received = _last(fake)
    assert received["path"] == "/v1beta/models/fake-gemini-pro:streamGenerateContent"
    assert received["headers"]["x-goog-api-key"] == PROVIDER_KEYS["CCR_TEST_GEMINI_KEY"]
    assert received["body"]["generationConfig"]["thinkingConfig"]["thinkingBudget"] == 2048


def test_anthropic_client_to_gemini_non_stream_tool_call(gateway: Gateway, fake: FakeProvider):
    message = _anthropic(gateway).messages.create(
        model="gemini-2.5-pro",
        max_tokens=256,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "weather in Paris?"}],
    )
    assert message.stop_reason == "tool_use"
    declaration = _last(fake)["body"]["tools"][0]["functionDeclarations"][0]
    assert "$schema" not in json.dumps(declaration) and "additionalProperties" not in json.dumps(declaration)


def test_openai_client_to_anthropic_provider(gateway: Gateway, fake: FakeProvider):
    completion = _openai(gateway).chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
    )
    assert completion.choices[0].message.content == "Hello from fake-anthropic model fake-sonnet: hello"
    assert completion.choices[0].finish_reason == "stop"
    received = _last(fake)
    assert received["path"] == "/v1/messages" and received["body"]["system"]
    assert received["headers"]["x-api-key"] == PROVIDER_KEYS["CCR_TEST_ANTHROPIC_KEY"]
    assert received["headers"]["anthropic-version"]


def test_openai_client_streams_from_anthropic_provider_with_usage(gateway: Gateway, fake: FakeProvider):
    chunks = list(
        _openai(gateway).chat.completions.create(
            model="claude-sonnet-4-5",
            messages=[{"role": "user", "content": "stream"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from fake-anthropic model fake-sonnet: stream"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_openai_client_to_gemini(gateway: Gateway, fake: FakeProvider):
    completion = _openai(gateway).chat.completions.create(
        model="gemini-2.5-pro", messages=[{"role": "user", "content": "hi gemini"}]
    )
    assert completion.choices[0].message.content == "Hello from fake-gemini model fake-gemini-pro: hi gemini"


def test_provider_errors_are_translated_to_the_client_format(gateway: Gateway):
    try:
        _anthropic(gateway).messages.create(
            model="gpt-4o",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-fake-status": "429"},
        )
    except anthropic.RateLimitError as exc:
        assert exc.body["type"] == "error" and exc.body["error"]["type"] == "rate_limit_error"
    else:
        raise AssertionError("expected a 429")
