"""The fake provider's OpenAI Responses endpoint (``POST /v1/responses``), driven by the official
openai SDK (``client.responses.create`` / ``client.responses.stream``), so its wire format is checked
by the same parser a real client uses."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import openai
import orjson
import pytest

from fake_provider.config import FakeConfig
from fake_provider.reply import estimate_tokens
from fake_provider.server import FakeProvider, provider_of, start
from tests.unit.responses_events import validate_event

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
    "strict": False,
}


@pytest.fixture(scope="module")
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
async def gpt(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="sk-openai-client", max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_a_text_answer_echoes_the_model_and_the_users_words(gpt: openai.AsyncOpenAI) -> None:
    response = await gpt.responses.create(model="gpt-test", input="Hi there", instructions="Be brief.")

    assert response.model == "gpt-test"
    assert response.status == "completed"
    assert response.output_text == "Hello from fake-responses model gpt-test: Hi there"
    assert response.instructions == "Be brief."
    assert response.usage is not None
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


async def test_input_items_with_parts_are_read_like_messages(gpt: openai.AsyncOpenAI) -> None:
    response = await gpt.responses.create(
        model="gpt-test",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "first"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi again"}]},
        ],
    )
    assert response.output_text.endswith(": Hi again")


async def test_a_stream_assembles_the_same_text_with_typed_events(gpt: openai.AsyncOpenAI) -> None:
    async with gpt.responses.stream(model="gpt-test", input="Hi there") as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()

    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert types.count("response.output_text.delta") == 4
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text == "Hello from fake-responses model gpt-test: Hi there"
    assert final.usage is not None and final.usage.output_tokens >= 1


async def test_a_weather_question_calls_the_first_tool(gpt: openai.AsyncOpenAI) -> None:
    response = await gpt.responses.create(model="gpt-test", input="weather in Paris?", tools=[WEATHER_TOOL])

    [call] = response.output
    assert call.type == "function_call"
    assert call.name == "get_weather"
    assert call.call_id.startswith("call_")
    assert orjson.loads(call.arguments) == {"location": "Paris"}


async def test_a_streamed_function_call_reassembles(gpt: openai.AsyncOpenAI) -> None:
    async with gpt.responses.stream(model="gpt-test", input="weather in Paris?", tools=[WEATHER_TOOL]) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()

    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert orjson.loads(arguments) == {"location": "Paris"}
    [call] = final.output
    assert call.type == "function_call" and call.arguments == arguments


async def test_a_directive_scripts_the_call_and_the_output_gives_the_final_text(gpt: openai.AsyncOpenAI) -> None:
    shell = {**WEATHER_TOOL, "name": "shell", "parameters": {"type": "object", "properties": {}}}
    prompt = 'run it [fake-tool shell {"command": "echo hi"}]'
    first = await gpt.responses.create(model="gpt-test", input=prompt, tools=[shell])
    [call] = first.output
    assert (call.name, orjson.loads(call.arguments)) == ("shell", {"command": "echo hi"})

    second = await gpt.responses.create(
        model="gpt-test",
        tools=[shell],
        input=[
            {"role": "user", "content": prompt},
            {"type": "function_call", "call_id": call.call_id, "name": "shell", "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "hi\n"},
        ],
    )
    assert second.output_text == "Tool result: hi\n"


async def test_reasoning_comes_as_a_summary_and_encrypted_only_when_included(gpt: openai.AsyncOpenAI) -> None:
    plain = await gpt.responses.create(model="gpt-test", input="Hi", reasoning={"effort": "low", "summary": "auto"})
    reasoning = plain.output[0]
    assert reasoning.type == "reasoning"
    assert reasoning.summary[0].text == "Thinking about: Hi"
    assert reasoning.encrypted_content is None
    assert plain.usage is not None and plain.usage.output_tokens_details.reasoning_tokens > 0

    included = await gpt.responses.create(
        model="gpt-test", input="Hi", reasoning={"effort": "low"}, include=["reasoning.encrypted_content"]
    )
    assert included.output[0].encrypted_content


async def test_streamed_reasoning_summary_deltas(gpt: openai.AsyncOpenAI) -> None:
    async with gpt.responses.stream(model="gpt-test", input="Hi", reasoning={"effort": "low"}) as stream:
        events = [event async for event in stream]
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert summary == "Thinking about: Hi"
    assert "response.reasoning_summary_part.added" in [e.type for e in events]


async def test_cached_tokens_are_counted_inside_input_tokens(gpt: openai.AsyncOpenAI) -> None:
    response = await gpt.responses.create(model="m", input="Hi", extra_headers={"x-fake-cached-tokens": "3"})
    assert response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens == 3
    assert response.usage.input_tokens >= 3


async def test_max_output_tokens_makes_an_incomplete_response(gpt: openai.AsyncOpenAI) -> None:
    response = await gpt.responses.create(model="m", input="Hi there, a long question", max_output_tokens=1)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"

    async with gpt.responses.stream(model="m", input="Hi there, a long question", max_output_tokens=1) as stream:
        events = [event async for event in stream]
    assert events[-1].type == "response.incomplete"


async def test_structured_output_answers_with_json_of_the_schema(gpt: openai.AsyncOpenAI) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    response = await gpt.responses.create(
        model="m", input="Is it fine?", text={"format": {"type": "json_schema", "name": "verdict", "schema": schema}}
    )
    assert orjson.loads(response.output_text) == {"ok": True}


async def test_injected_errors_map_to_sdk_exceptions(gpt: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await gpt.responses.create(model="m", input="Hi", extra_headers={"x-fake-status": "429"})
    assert caught.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.BadRequestError):
        await gpt.responses.create(model="m", input=[])


async def test_an_unknown_input_item_type_is_refused_naming_it(gpt: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match=r"'input\[1\]\.type': 'bogus'"):
        await gpt.responses.create(model="m", input=[{"role": "user", "content": "Hi"}, {"type": "bogus"}])  # type: ignore[list-item]


async def test_a_midstream_error_is_an_error_event(gpt: openai.AsyncOpenAI) -> None:
    headers = {"x-fake-midstream-error": "1"}
    async with gpt.responses.stream(model="m", input="Hi", extra_headers=headers) as stream:
        events = [event async for event in stream]
    assert events[0].type == "response.created"
    assert events[-1].type == "error"
    assert events[-1].code == "server_error"
    assert "response.completed" not in [e.type for e in events]


async def test_every_streamed_event_validates_as_the_sdks_event_union(
    base_url: str, http: aiohttp.ClientSession
) -> None:
    body = {"model": "m", "input": "weather?", "tools": [WEATHER_TOOL], "reasoning": {"effort": "low"}, "stream": True}
    async with http.post(f"{base_url}/v1/responses", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = await response.read()
    frames = [frame for frame in raw.split(b"\n\n") if frame]
    for frame in frames:
        name_line, data_line = frame.split(b"\n")
        data = orjson.loads(data_line.removeprefix(b"data: "))
        assert name_line == b"event: " + data["type"].encode()
        validate_event(data)


async def test_requests_are_recorded_as_the_other_apis_record_them(
    base_url: str, http: aiohttp.ClientSession, gpt: openai.AsyncOpenAI
) -> None:
    await gpt.responses.create(model="gpt-test", input="hi", store=False)
    async with http.get(f"{base_url}/_fake/requests") as response:
        [recorded] = await response.json()

    assert (recorded["method"], recorded["path"]) == ("POST", "/v1/responses")
    assert recorded["headers"]["authorization"] == "Bearer sk-openai-client"
    assert recorded["body"] == {"model": "gpt-test", "input": "hi", "store": False}
    raw = orjson.dumps(recorded["body"])
    async with http.post(f"{base_url}/responses", data=raw) as response:  # the path without /v1 too
        usage = (await response.json())["usage"]
    assert usage["input_tokens"] == estimate_tokens(len(raw))
