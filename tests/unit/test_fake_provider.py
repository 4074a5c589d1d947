"""The fake provider, driven by the official Anthropic and OpenAI SDKs (and raw HTTP for Gemini), so
its wire format is checked by the same parsers real clients use."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import anthropic
import openai
import orjson
import pytest

from fake_provider.api import last_user_text, without_reminders
from fake_provider.config import FakeConfig
from fake_provider.reply import THINKING_SIGNATURE, estimate_tokens, example_arguments, example_value, split_text
from fake_provider.server import FakeProvider, add_arguments, provider_of, start

WEATHER_TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "Current weather",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["location"],
    },
}
WEATHER_TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": WEATHER_TOOL_ANTHROPIC["input_schema"],
    },
}
WEATHER_TOOL_GEMINI = {
    "functionDeclarations": [
        {
            "name": "get_weather",
            "parameters": {
                "type": "OBJECT",
                "properties": {"location": {"type": "STRING"}},
                "required": ["location"],
            },
        }
    ]
}
# What Claude Code sends with a prompt hook (output_config.format): the answer must parse as this.
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "reason": {"type": "string"}},
    "required": ["ok"],
    "additionalProperties": False,
}
REMINDER = "<system-reminder>\nThe date is 2025-01-01.\n</system-reminder>"


@pytest.fixture(scope="session")
async def server() -> AsyncIterator[tuple[FakeProvider, str]]:
    runner, port = await start(FakeConfig(chunks=4))
    yield provider_of(runner), f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture(autouse=True)
async def fresh_state(server: tuple[FakeProvider, str]) -> None:
    provider, _ = server
    provider.config = provider.defaults.copy()
    provider.requests.clear()


@pytest.fixture
def base_url(server: tuple[FakeProvider, str]) -> str:
    return server[1]


@pytest.fixture
def provider(server: tuple[FakeProvider, str]) -> FakeProvider:
    return server[0]


@pytest.fixture
async def claude(base_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=base_url, api_key="sk-ant-client", max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def gpt(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="sk-openai-client", max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def sse_data(body: bytes) -> list[dict]:
    return [orjson.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: {")]


# --- Anthropic ---------------------------------------------------------------------------------


async def test_anthropic_reply_echoes_model_and_user_text(claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.create(model="claude-test", max_tokens=100, messages=user("Hi there"))

    assert message.model == "claude-test"
    assert message.content[0].text == "Hello from fake-anthropic model claude-test: Hi there"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens >= 1
    assert message.usage.output_tokens >= 1


async def test_anthropic_stream_assembles_the_same_text(claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(model="claude-test", max_tokens=100, messages=user("Hi there")) as stream:
        pieces = [text async for text in stream.text_stream]
        message = await stream.get_final_message()

    assert len(pieces) == 4
    assert "".join(pieces) == "Hello from fake-anthropic model claude-test: Hi there"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens >= 1


async def test_anthropic_stream_event_order(base_url: str, http: aiohttp.ClientSession) -> None:
    body = {"model": "m", "max_tokens": 100, "messages": user("hello"), "stream": True}
    async with http.post(f"{base_url}/v1/messages", json=body, headers={"x-fake-chunks": "2"}) as response:
        raw = await response.read()

    events = [line[7:].decode() for line in raw.split(b"\n") if line.startswith(b"event: ")]
    assert events == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


async def test_anthropic_tool_call_when_asked_about_weather(claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(
        model="claude-test", max_tokens=100, messages=user("What's the weather?"), tools=[WEATHER_TOOL_ANTHROPIC]
    ) as stream:
        message = await stream.get_final_message()

    assert message.stop_reason == "tool_use"
    [tool_use] = message.content
    assert tool_use.type == "tool_use"
    assert tool_use.name == "get_weather"
    assert tool_use.input == {"location": "Paris"}
    assert tool_use.id.startswith("toolu_")


async def test_anthropic_tool_call_forced_by_header(claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.create(
        model="m",
        max_tokens=100,
        messages=user("anything"),
        tools=[WEATHER_TOOL_ANTHROPIC],
        extra_headers={"x-fake-tool-call": "1"},
    )
    assert message.content[0].type == "tool_use"


async def test_anthropic_tool_result_gives_final_text(claude: anthropic.AsyncAnthropic) -> None:
    messages = [
        {"role": "user", "content": "What's the weather?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "Sunny"}]}
            ],
        },
    ]
    message = await claude.messages.create(model="m", max_tokens=100, messages=messages, tools=[WEATHER_TOOL_ANTHROPIC])

    assert message.stop_reason == "end_turn"
    assert message.content[0].text == "Tool result: Sunny"


async def test_anthropic_thinking_block_comes_signed(claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(
        model="m",
        max_tokens=2000,
        messages=user("ponder"),
        thinking={"type": "enabled", "budget_tokens": 1024},
    ) as stream:
        message = await stream.get_final_message()

    thinking, text = message.content
    assert thinking.type == "thinking"
    assert thinking.thinking == "Thinking about: ponder"
    assert thinking.signature == THINKING_SIGNATURE
    assert text.text.endswith(": ponder")


async def test_anthropic_max_tokens_truncates(claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.create(model="m", max_tokens=2, messages=user("a long question"))
    assert message.stop_reason == "max_tokens"
    assert message.content[0].text == "Hello fr"


async def test_anthropic_count_tokens(claude: anthropic.AsyncAnthropic) -> None:
    count = await claude.messages.count_tokens(model="m", messages=user("hello"))
    assert count.input_tokens >= 1


async def test_anthropic_injected_429_raises_rate_limit_error(claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as raised:
        await claude.messages.create(
            model="m", max_tokens=10, messages=user("hi"), extra_headers={"x-fake-status": "429"}
        )
    assert raised.value.response.headers["retry-after"] == "1"
    assert raised.value.body["error"]["type"] == "rate_limit_error"


async def test_anthropic_midstream_error_event_raises(claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        async with claude.messages.stream(
            model="m", max_tokens=100, messages=user("hi"), extra_headers={"x-fake-midstream-error": "1"}
        ) as stream:
            await stream.get_final_message()


async def test_cached_tokens_are_reported_beside_input(claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.create(
        model="m", max_tokens=10, messages=user("hi " * 100), extra_headers={"x-fake-cached-tokens": "50"}
    )
    assert message.usage.cache_read_input_tokens == 50
    assert message.usage.input_tokens >= 1


async def test_anthropic_system_reminder_blocks_are_not_echoed(claude: anthropic.AsyncAnthropic) -> None:
    content = [{"type": "text", "text": REMINDER}, {"type": "text", "text": "Hi there"}]
    message = await claude.messages.create(model="m", max_tokens=100, messages=[{"role": "user", "content": content}])
    assert message.content[0].text == "Hello from fake-anthropic model m: Hi there"


async def test_anthropic_structured_output_answers_with_schema_json(claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.create(
        model="m",
        max_tokens=100,
        messages=user("Is this command safe?"),
        output_config={"format": {"type": "json_schema", "schema": VERDICT_SCHEMA}},
    )
    assert message.stop_reason == "end_turn"
    assert orjson.loads(message.content[0].text) == {"ok": True}


async def test_anthropic_structured_output_replaces_the_tool_result_echo(claude: anthropic.AsyncAnthropic) -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"}]},
    ]
    message = await claude.messages.create(
        model="m",
        max_tokens=100,
        messages=messages,
        tools=[WEATHER_TOOL_ANTHROPIC],
        output_config={"format": {"type": "json_schema", "schema": VERDICT_SCHEMA}},
    )
    assert orjson.loads(message.content[0].text) == {"ok": True}


async def test_anthropic_planned_tool_call_wins_over_structured_output(claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.create(
        model="m",
        max_tokens=100,
        messages=user("What's the weather?"),
        tools=[WEATHER_TOOL_ANTHROPIC],
        output_config={"format": {"type": "json_schema", "schema": VERDICT_SCHEMA}},
    )
    assert message.stop_reason == "tool_use"
    assert [block.type for block in message.content] == ["tool_use"]


# --- OpenAI ------------------------------------------------------------------------------------


async def test_openai_reply(gpt: openai.AsyncOpenAI) -> None:
    completion = await gpt.chat.completions.create(model="gpt-test", messages=user("Hi there"))

    assert completion.model == "gpt-test"
    assert completion.choices[0].message.content == "Hello from fake-openai model gpt-test: Hi there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


async def test_openai_stream_with_usage_chunk(gpt: openai.AsyncOpenAI) -> None:
    stream = await gpt.chat.completions.create(
        model="gpt-test",
        messages=user("Hi there"),
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-fake-cached-tokens": "3"},
    )
    chunks = [chunk async for chunk in stream]

    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "Hello from fake-openai model gpt-test: Hi there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 3
    assert chunks[-1].usage.completion_tokens >= 1


async def test_openai_streamed_tool_call_reassembles(gpt: openai.AsyncOpenAI) -> None:
    stream = await gpt.chat.completions.create(
        model="gpt-test", messages=user("weather in Paris?"), tools=[WEATHER_TOOL_OPENAI], stream=True
    )
    name, arguments, call_id, finish = "", "", None, None
    async for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for call in choice.delta.tool_calls or []:
            assert call.index == 0
            call_id = call.id or call_id
            name += call.function.name or ""
            arguments += call.function.arguments or ""

    assert finish == "tool_calls"
    assert call_id.startswith("call_")
    assert name == "get_weather"
    assert orjson.loads(arguments) == {"location": "Paris"}


async def test_openai_tool_result_gives_final_text(gpt: openai.AsyncOpenAI) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Rain, 12C"},
    ]
    completion = await gpt.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL_OPENAI])

    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content == "Tool result: Rain, 12C"


async def test_openai_reasoning_content(gpt: openai.AsyncOpenAI) -> None:
    completion = await gpt.chat.completions.create(model="m", messages=user("ponder"), reasoning_effort="high")
    message = completion.choices[0].message
    assert message.model_extra["reasoning_content"] == "Thinking about: ponder"
    assert completion.usage.completion_tokens_details.reasoning_tokens >= 1


async def test_openai_length_finish(gpt: openai.AsyncOpenAI) -> None:
    completion = await gpt.chat.completions.create(model="m", messages=user("hi"), max_completion_tokens=1)
    assert completion.choices[0].finish_reason == "length"


async def test_openai_injected_errors_map_to_sdk_exceptions(gpt: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as raised:
        await gpt.chat.completions.create(model="m", messages=user("hi"), extra_headers={"x-fake-status": "429"})
    assert raised.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError):
        await gpt.chat.completions.create(model="m", messages=user("hi"), extra_headers={"x-fake-status": "503"})


async def test_openai_midstream_error_raises(gpt: openai.AsyncOpenAI) -> None:
    stream = await gpt.chat.completions.create(
        model="m", messages=user("hi"), stream=True, extra_headers={"x-fake-midstream-error": "1"}
    )
    with pytest.raises(openai.APIError, match="server had an error"):
        async for _ in stream:
            pass


async def test_openai_path_without_v1(base_url: str, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{base_url}/chat/completions", json={"model": "m", "messages": user("x")}) as response:
        assert response.status == 200
        assert (await response.json())["choices"][0]["message"]["content"].startswith("Hello from fake-openai")


async def test_models_listing_reads_in_both_sdks(gpt: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic) -> None:
    openai_ids = [model.id async for model in gpt.models.list()]
    anthropic_ids = [model.id async for model in claude.models.list()]
    assert openai_ids == anthropic_ids
    assert "gpt-4o-mini" in openai_ids


async def test_openai_system_reminder_parts_are_not_echoed(gpt: openai.AsyncOpenAI) -> None:
    content = [{"type": "text", "text": "Hi there"}, {"type": "text", "text": "  " + REMINDER}]
    completion = await gpt.chat.completions.create(model="m", messages=[{"role": "user", "content": content}])
    assert completion.choices[0].message.content == "Hello from fake-openai model m: Hi there"


async def test_openai_json_schema_response_format(gpt: openai.AsyncOpenAI) -> None:
    json_schema = {"name": "verdict", "schema": VERDICT_SCHEMA, "strict": True}
    response_format = {"type": "json_schema", "json_schema": json_schema}
    completion = await gpt.chat.completions.create(model="m", messages=user("safe?"), response_format=response_format)
    assert orjson.loads(completion.choices[0].message.content) == {"ok": True}
    assert completion.choices[0].finish_reason == "stop"


# --- Gemini ------------------------------------------------------------------------------------

GEMINI_PATH = "/v1beta/models/gemini-test:"


def gemini_user(text: str) -> list[dict]:
    return [{"role": "user", "parts": [{"text": text}]}]


async def test_gemini_generate_content(base_url: str, http: aiohttp.ClientSession) -> None:
    body = {"contents": gemini_user("Hi there")}
    async with http.post(f"{base_url}{GEMINI_PATH}generateContent", json=body) as response:
        reply = await response.json()

    candidate = reply["candidates"][0]
    assert candidate["content"]["parts"] == [{"text": "Hello from fake-gemini model gemini-test: Hi there"}]
    assert candidate["finishReason"] == "STOP"
    assert reply["modelVersion"] == "gemini-test"
    usage = reply["usageMetadata"]
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]


async def test_gemini_stream_sse(base_url: str, http: aiohttp.ClientSession) -> None:
    url = f"{base_url}/models/gemini-test:streamGenerateContent?alt=sse"  # also served without /v1beta
    async with http.post(url, json={"contents": gemini_user("Hi there")}) as response:
        assert response.content_type == "text/event-stream"
        chunks = sse_data(await response.read())

    assert len(chunks) == 4
    text = "".join(part["text"] for chunk in chunks for part in chunk["candidates"][0]["content"]["parts"])
    assert text == "Hello from fake-gemini model gemini-test: Hi there"
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] >= 1
    assert len({chunk["responseId"] for chunk in chunks}) == 1


async def test_gemini_function_call_and_response(base_url: str, http: aiohttp.ClientSession) -> None:
    body = {"contents": gemini_user("weather?"), "tools": [WEATHER_TOOL_GEMINI]}
    async with http.post(f"{base_url}{GEMINI_PATH}generateContent", json=body) as response:
        parts = (await response.json())["candidates"][0]["content"]["parts"]
    assert parts == [{"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}}]

    body["contents"] += [
        {"role": "model", "parts": parts},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"sky": "clear"}}}]},
    ]
    async with http.post(f"{base_url}{GEMINI_PATH}generateContent", json=body) as response:
        parts = (await response.json())["candidates"][0]["content"]["parts"]
    assert parts == [{"text": 'Tool result: {"sky":"clear"}'}]


async def test_gemini_thinking_part(base_url: str, http: aiohttp.ClientSession) -> None:
    body = {
        "contents": gemini_user("ponder"),
        "generationConfig": {"thinkingConfig": {"thinkingBudget": 512, "includeThoughts": True}},
    }
    async with http.post(f"{base_url}{GEMINI_PATH}generateContent", json=body) as response:
        reply = await response.json()
    assert reply["candidates"][0]["content"]["parts"][0] == {"text": "Thinking about: ponder", "thought": True}
    assert reply["usageMetadata"]["thoughtsTokenCount"] >= 1


async def test_gemini_injected_error_format(base_url: str, http: aiohttp.ClientSession) -> None:
    body = {"contents": gemini_user("x")}
    headers = {"x-fake-status": "429"}
    async with http.post(f"{base_url}{GEMINI_PATH}generateContent", json=body, headers=headers) as response:
        assert response.status == 429
        assert response.headers["retry-after"] == "1"
        error = (await response.json())["error"]
    assert error["code"] == 429
    assert error["status"] == "RESOURCE_EXHAUSTED"


async def test_gemini_system_reminder_parts_are_not_echoed(base_url: str, http: aiohttp.ClientSession) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": REMINDER}, {"text": "Hi there"}]}]}
    async with http.post(f"{base_url}{GEMINI_PATH}generateContent", json=body) as response:
        parts = (await response.json())["candidates"][0]["content"]["parts"]
    assert parts == [{"text": "Hello from fake-gemini model gemini-test: Hi there"}]


# The OpenAPI-style schema of responseSchema, with its upper-case type names.
VERDICT_SCHEMA_GEMINI = {
    "type": "OBJECT",
    "properties": {"ok": {"type": "BOOLEAN"}, "reason": {"type": "STRING"}},
    "required": ["ok"],
}


@pytest.mark.parametrize(
    ("schema_field", "schema"),
    [("responseJsonSchema", VERDICT_SCHEMA), ("responseSchema", VERDICT_SCHEMA_GEMINI)],
)
async def test_gemini_json_response_schema(
    base_url: str, http: aiohttp.ClientSession, schema_field: str, schema: dict
) -> None:
    body = {
        "contents": gemini_user("safe?"),
        "generationConfig": {"responseMimeType": "application/json", schema_field: schema},
    }
    async with http.post(f"{base_url}{GEMINI_PATH}generateContent", json=body) as response:
        [part] = (await response.json())["candidates"][0]["content"]["parts"]
    assert orjson.loads(part["text"]) == {"ok": True}


async def test_gemini_schema_without_json_mime_type_is_free_text(base_url: str, http: aiohttp.ClientSession) -> None:
    body = {"contents": gemini_user("safe?"), "generationConfig": {"responseJsonSchema": VERDICT_SCHEMA}}
    async with http.post(f"{base_url}{GEMINI_PATH}generateContent", json=body) as response:
        [part] = (await response.json())["candidates"][0]["content"]["parts"]
    assert part["text"].startswith("Hello from fake-gemini")


# --- faults, recording and control ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "error_of"),
    [
        ("/v1/messages", lambda body: body["error"]["type"]),
        ("/v1/chat/completions", lambda body: body["error"]["type"]),
        (f"{GEMINI_PATH}generateContent", lambda body: body["error"]["status"]),
    ],
)
async def test_malformed_json_is_a_400_in_the_api_format(
    base_url: str, http: aiohttp.ClientSession, path: str, error_of
) -> None:
    async with http.post(f"{base_url}{path}", data=b"{not json") as response:
        assert response.status == 400
        assert error_of(await response.json()) in ("invalid_request_error", "INVALID_ARGUMENT")


async def test_recorded_requests_show_what_arrived(
    base_url: str, http: aiohttp.ClientSession, claude: anthropic.AsyncAnthropic
) -> None:
    await claude.messages.create(model="claude-test", max_tokens=10, messages=user("hi"))
    async with http.get(f"{base_url}/_fake/requests") as response:
        [recorded] = await response.json()

    assert recorded["method"] == "POST"
    assert recorded["path"] == "/v1/messages"
    headers = recorded["headers"]
    # Depending on its version the SDK sends the key as x-api-key or as a bearer token.
    assert "sk-ant-client" in headers.get("x-api-key", headers.get("authorization", ""))
    assert "anthropic-version" in headers
    assert recorded["body"]["model"] == "claude-test"

    async with http.delete(f"{base_url}/_fake/requests") as response:
        assert (await response.json()) == {"cleared": 1}
    async with http.get(f"{base_url}/_fake/requests") as response:
        assert await response.json() == []


async def test_recorded_size_is_what_the_input_tokens_count(base_url: str, http: aiohttp.ClientSession) -> None:
    raw = orjson.dumps({"model": "m", "max_tokens": 10, "messages": user("hi " * 50)})
    async with http.post(f"{base_url}/v1/messages", data=raw) as response:
        usage = (await response.json())["usage"]
    async with http.get(f"{base_url}/_fake/requests") as response:
        [recorded] = await response.json()

    assert recorded["size"] == len(raw)
    assert usage["input_tokens"] == estimate_tokens(recorded["size"])


async def test_recorded_size_of_a_malformed_body(base_url: str, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{base_url}/v1/messages", data=b"{not json") as response:
        assert response.status == 400
    async with http.get(f"{base_url}/_fake/requests") as response:
        [recorded] = await response.json()
    assert (recorded["body"], recorded["size"]) == (None, 9)


async def test_fail_count_fails_only_the_next_requests(
    base_url: str, http: aiohttp.ClientSession, gpt: openai.AsyncOpenAI
) -> None:
    async with http.post(f"{base_url}/_fake/config", json={"status": 503, "fail_count": 2}) as response:
        assert (await response.json())["fail_count"] == 2

    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await gpt.chat.completions.create(model="m", messages=user("hi"))
    completion = await gpt.chat.completions.create(model="m", messages=user("hi"))
    assert completion.choices[0].message.content


async def test_config_rejects_unknown_fields(base_url: str, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{base_url}/_fake/config", json={"stauts": 500}) as response:
        assert response.status == 400
        assert "stauts" in (await response.json())["error"]


async def test_latency_and_chunk_delay(base_url: str, http: aiohttp.ClientSession) -> None:
    body = {"model": "m", "messages": user("hi"), "stream": True}
    headers = {"x-fake-latency-ms": "50", "x-fake-chunk-delay-ms": "10", "x-fake-chunks": "3"}
    started = time.monotonic()
    async with http.post(f"{base_url}/v1/chat/completions", json=body, headers=headers) as response:
        chunks = sse_data(await response.read())
    assert time.monotonic() - started >= 0.05 + 0.01 * 3
    assert len(chunks) == 5  # role, 3 text pieces, finish


async def test_hang_never_answers(base_url: str, http: aiohttp.ClientSession) -> None:
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(
            f"{base_url}/v1/chat/completions",
            json={"model": "m", "messages": user("hi")},
            headers={"x-fake-hang": "1"},
            timeout=aiohttp.ClientTimeout(total=0.2),
        ):
            pass


async def test_midstream_abort_breaks_the_body(base_url: str, http: aiohttp.ClientSession) -> None:
    body = {"model": "m", "max_tokens": 10, "messages": user("hi"), "stream": True}
    headers = {"x-fake-midstream-error": "abort"}
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(f"{base_url}/v1/messages", json=body, headers=headers) as response:
            await response.read()


async def test_healthz(base_url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{base_url}/healthz") as response:
        assert response.status == 200


# --- pure helpers and the command line -----------------------------------------------------------


def test_example_arguments_fill_required_properties_by_type() -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "count": {"type": "integer"},
            "metric": {"type": "boolean"},
            "unit": {"type": "string", "enum": ["c", "f"]},
            "optional": {"type": "string"},
        },
        "required": ["city", "count", "metric", "unit"],
    }
    assert example_arguments(schema) == {"city": "Paris", "count": 1, "metric": True, "unit": "c"}


def test_without_reminders_keeps_only_the_users_words() -> None:
    assert without_reminders("plain text ") == "plain text "
    assert without_reminders("  " + REMINDER + "\n") == ""
    assert without_reminders(REMINDER + "\n\n  Fix the bug  \n") == "Fix the bug"
    assert without_reminders(REMINDER + REMINDER + "\nFix it") == "Fix it"
    assert without_reminders("<system-reminder>never closed") == ""
    # A reminder appended after the prompt stays: the prompt still leads the echo.
    assert without_reminders("Fix it\n" + REMINDER) == "Fix it\n" + REMINDER


def test_last_user_text_skips_messages_that_are_only_reminders() -> None:
    messages = [
        {"role": "user", "content": "the real question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": REMINDER}]},
        {"role": "user", "content": REMINDER},
    ]
    assert last_user_text(messages) == "the real question"
    assert last_user_text([{"role": "user", "content": REMINDER + "\nnext step"}]) == "next step"


def test_example_value_of_non_object_schemas() -> None:
    assert example_value({"type": "array", "items": {"type": "STRING"}, "minItems": 2}) == ["Paris", "Paris"]
    assert example_value({"type": "array", "items": {"type": "string"}}) == []
    assert example_value({"properties": {"n": {"type": "integer"}}}) == {"n": 1}
    assert example_value({"type": ["null", "boolean"]}) is True


def test_split_text_keeps_every_character() -> None:
    assert split_text("abcdefg", 3) == ["abc", "de", "fg"]
    assert split_text("ab", 8) == ["a", "b"]
    assert split_text("", 4) == []


def test_cli_defaults() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--status", "503", "--fail-count", "2"])
    assert (args.host, args.port, args.status, args.fail_count) == ("127.0.0.1", 9100, 503, 2)


def test_module_entry_point_listens_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "fake_provider", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("fake provider listening on http://127.0.0.1:")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_script_of_tool_directives_is_called_one_after_another() -> None:
    from fake_provider.reply import Conversation, Tool, plan_reply

    tools = (Tool("a__echo", {"type": "object"}), Tool("b__add", {"type": "object"}))
    prompt = '[fake-tool a__echo {"text": "x"}] then [fake-tool b__add {"a": 1, "b": 2}]'

    def reply(made: int, results: tuple[str, ...]):
        conv = Conversation("m", prompt, tools, results, False, None, 10, tool_calls_made=made)
        return plan_reply("anthropic", conv, force_tool_call=False, cached_tokens=0)

    assert reply(0, ()).tool_call.name == "a__echo"
    assert reply(1, ("x",)).tool_call.name == "b__add"
    last = reply(2, ("3",))
    assert last.tool_call is None and last.text == "Tool result: 3"


def test_codex_environment_context_is_not_the_users_words() -> None:
    context = "<environment_context>\n  <cwd>/tmp/p</cwd>\n</environment_context>"
    assert without_reminders(f"{context}\n\nlist the files") == "list the files"
    assert without_reminders(context) == ""
    assert without_reminders("<environment_context> unclosed") == ""
