"""The official openai SDK's Responses client through the real gateway, to every provider format.

One gateway for the module (the shared e2e policy plus a Responses-format provider, ``api:
responses``, and no stored responses), one worker. Each case runs against an Anthropic-format, a
Chat-format, a Gemini and a Responses-format provider of the fake provider, and checks both sides:
what the SDK reads (typed objects and events) and what the provider was asked, in its own format
(path and body).

The fake model's replies are predictable (fake_provider.reply): "Hello from fake-<api> model <id>:
<the user's text>", a call of the first tool when the user says "weather", "Tool result: <the
result>" after a tool result, and JSON made from the schema when the request carries one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port, wait_until


@dataclass(frozen=True)
class Format:
    """One provider format: the model name a client asks for and what the provider is asked."""

    api: str  # the fake's name for its API, as its replies say it ("Hello from fake-<api> ...")
    model: str  # the gateway's model name
    model_id: str  # the provider's id of that model
    path: str  # where the provider is asked (without a query)
    provider: str  # the policy's provider name

    def generations(self, fake: FakeProvider) -> list[dict]:
        """What the provider was asked to generate, in order (count_tokens left out)."""
        return [r for r in fake.requests() if r["method"] == "POST" and "count" not in r["path"].lower()]


FORMATS = {
    "anthropic": Format("anthropic", "claude-sonnet-4-5", "fake-sonnet", "/v1/messages", "fake-anthropic"),
    "chat": Format("openai", "gpt-4o", "fake-gpt-4o", "/v1/chat/completions", "fake-openai"),
    "gemini": Format("gemini", "gemini-2.5-pro", "fake-gemini-pro", "/v1beta/models/fake-gemini-pro:{}", "fake-gemini"),
    "responses": Format("responses", "gpt-5-resp", "fake-gpt-5", "/v1/responses", "fake-responses"),
}
CLIENT_KEY = "sk-responses-sdk-client"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
        "additionalProperties": False,
    },
    "strict": True,
}
CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "population": {"type": "integer"},
        "capital": {"type": "boolean"},
    },
    "required": ["city", "population", "capital"],
    "additionalProperties": False,
}


def responses_policy(listener_port: int, fake: FakeProvider) -> dict:
    """The shared e2e policy plus a provider that speaks only the Responses API. It keeps no
    responses (stored responses have tests of their own): previous_response_id and the stored
    response's paths are refused here, and every case is the translation alone."""
    policy = base_policy(listener_port, fake)
    policy["responses"] = {"store": False}
    policy["providers"].append(
        {
            "name": "fake-responses",
            "api": "responses",
            "base_url": f"{fake.url}/v1",
            "api_key_env": "CCR_TEST_OPENAI_KEY",
            "models": [
                {"name": "gpt-5-resp", "id": "fake-gpt-5", "max_output_tokens": 32000, "capabilities": ["tools"]}
            ],
        }
    )
    return policy


@pytest.fixture(scope="module")
def gw(workdir: Path, fake: FakeProvider) -> Iterator[Gateway]:
    gateway = Gateway.start(workdir, responses_policy(free_port(), fake), name="responses-sdk", workers=1)
    yield gateway
    gateway.stop()
    assert gateway.process.returncode == 0, gateway.log()[-4000:]


@pytest.fixture
def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0)


@pytest.fixture(params=list(FORMATS), ids=lambda name: f"to-{name}")
def fmt(request: pytest.FixtureRequest) -> Format:
    return FORMATS[request.param]


# --- reading the provider's request, whatever its format -------------------------------------------


def _texts(content: Any) -> list[str]:
    """The texts of a content value in any of the four formats (a string, or parts of any kind)."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, dict):
        content = content.get("parts", [content])
    out = []
    for part in content or ():
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            out.append(part["text"])
    return out


def system_prompt(f: Format, body: dict) -> str:
    """The provider's system prompt, all of it, as one text."""
    if f.api == "anthropic":
        texts = _texts(body.get("system"))
    elif f.api == "openai":
        texts = [t for m in body["messages"] if m["role"] in ("system", "developer") for t in _texts(m["content"])]
    elif f.api == "gemini":
        texts = _texts(body.get("systemInstruction"))
    else:
        texts = [body["instructions"]] if body.get("instructions") else []
        texts += [
            t for item in body["input"] if item.get("role") in ("system", "developer") for t in _texts(item["content"])
        ]
    return "\n".join(texts)


def conversation(f: Format, body: dict) -> list[tuple[str, str]]:
    """(role, text) of each user or assistant text in the provider's conversation, in order."""
    if f.api == "anthropic":
        return [(m["role"], t) for m in body["messages"] for t in _texts(m["content"])]
    if f.api == "openai":
        return [
            (m["role"], t) for m in body["messages"] if m["role"] in ("user", "assistant") for t in _texts(m["content"])
        ]
    if f.api == "gemini":
        return [("assistant" if c["role"] == "model" else c["role"], t) for c in body["contents"] for t in _texts(c)]
    if isinstance(body["input"], str):  # passed through as the client sent it
        return [("user", body["input"])]
    return [
        (item["role"], t)
        for item in body["input"]
        if item.get("type", "message") == "message" and item["role"] in ("user", "assistant")
        for t in _texts(item["content"])
    ]


def tool_names(f: Format, body: dict) -> list[str]:
    tools = body.get("tools") or []
    if f.api == "anthropic":
        return [t["name"] for t in tools]
    if f.api == "openai":
        return [t["function"]["name"] for t in tools]
    if f.api == "gemini":
        return [d["name"] for t in tools for d in t.get("functionDeclarations", [])]
    return [t["name"] for t in tools if t["type"] == "function"]


def call_and_result(f: Format, body: dict) -> tuple[str, dict, str]:
    """(tool name, arguments, result text) of the tool call the conversation ends with."""
    if f.api == "anthropic":
        [call] = [b for b in body["messages"][-2]["content"] if b["type"] == "tool_use"]
        [result] = [b for b in body["messages"][-1]["content"] if b["type"] == "tool_result"]
        assert result["tool_use_id"] == call["id"]
        return call["name"], call["input"], "".join(_texts(result["content"]))
    if f.api == "openai":
        assistant, tool = body["messages"][-2:]
        [call] = assistant["tool_calls"]
        assert (tool["role"], tool["tool_call_id"]) == ("tool", call["id"])
        return call["function"]["name"], json.loads(call["function"]["arguments"]), "".join(_texts(tool["content"]))
    if f.api == "gemini":
        model, user = body["contents"][-2:]
        [call] = [p["functionCall"] for p in model["parts"] if "functionCall" in p]
        [result] = [p["functionResponse"] for p in user["parts"] if "functionResponse" in p]
        assert result["name"] == call["name"]
        return call["name"], call["args"], json.dumps(result["response"], ensure_ascii=False)
    call, output = body["input"][-2:]
    assert (call["type"], output["type"], output["call_id"]) == (
        "function_call",
        "function_call_output",
        call["call_id"],
    )
    return call["name"], json.loads(call["arguments"]), output["output"]


def check_provider_got_its_format(f: Format, request: dict, stream: bool) -> None:
    body = request["body"]
    assert CLIENT_KEY not in json.dumps(request["headers"])  # the provider's own key went instead
    if f.api == "gemini":
        assert request["path"] == f.path.format("streamGenerateContent" if stream else "generateContent")
    else:
        assert request["path"] == f.path
        assert body["model"] == f.model_id
        assert bool(body.get("stream")) is stream
    if f.api == "responses":
        assert body["store"] is False  # the gateway never asks a provider to keep state
        assert isinstance(body["input"], (str, list))


# --- the cases -----------------------------------------------------------------------------------


def test_create_answers_with_text_and_usage(client: openai.OpenAI, fake: FakeProvider, fmt: Format) -> None:
    response = client.responses.create(model=fmt.model, input="hi there")
    assert response.output_text == f"Hello from fake-{fmt.api} model {fmt.model_id}: hi there"
    assert response.status == "completed" and response.object == "response"
    [message] = response.output
    assert (message.type, message.role, message.status) == ("message", "assistant", "completed")
    assert response.usage is not None
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens

    [request] = fmt.generations(fake)
    check_provider_got_its_format(fmt, request, stream=False)
    assert conversation(fmt, request["body"]) == [("user", "hi there")]


def _stream_kinds(kinds: list[str]) -> None:
    """The typed events of a text answer, in the order the Responses API sends them."""
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    text = [k for k in kinds[2:-1] if k != "response.output_text.delta"]
    assert text == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    first_delta = kinds.index("response.output_text.delta")
    assert kinds.index("response.content_part.added") < first_delta < kinds.index("response.output_text.done")


def test_stream_sends_the_typed_events_in_order(client: openai.OpenAI, fake: FakeProvider, fmt: Format) -> None:
    with client.responses.stream(model=fmt.model, input="stream me a greeting please") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    _stream_kinds(kinds)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    expected = f"Hello from fake-{fmt.api} model {fmt.model_id}: stream me a greeting please"
    assert deltas == expected == final.output_text
    [done] = [e for e in events if e.type == "response.output_text.done"]
    assert done.text == expected
    assert final.status == "completed" and final.usage is not None and final.usage.output_tokens > 0
    assert events[-1].response.id == events[0].response.id == final.id

    [request] = fmt.generations(fake)
    check_provider_got_its_format(fmt, request, stream=True)


def test_create_with_stream_true_yields_the_same_events(client: openai.OpenAI, fake: FakeProvider, fmt: Format) -> None:
    events = list(client.responses.create(model=fmt.model, input="raw stream", stream=True))
    _stream_kinds([event.type for event in events])
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == f"Hello from fake-{fmt.api} model {fmt.model_id}: raw stream"
    completed = events[-1].response
    assert completed.output_text == deltas and completed.usage.input_tokens > 0
    [request] = fmt.generations(fake)
    check_provider_got_its_format(fmt, request, stream=True)


def test_instructions_and_a_developer_message_become_the_system_prompt(
    client: openai.OpenAI, fake: FakeProvider, fmt: Format
) -> None:
    response = client.responses.create(
        model=fmt.model,
        instructions="You are terse.",
        input=[
            {"type": "message", "role": "developer", "content": "Answer in French."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "bonjour"}]},
        ],
    )
    assert response.output_text.endswith(": bonjour")
    [request] = fmt.generations(fake)
    system = system_prompt(fmt, request["body"])
    assert "You are terse." in system and "Answer in French." in system
    assert system.index("You are terse.") < system.index("Answer in French.")
    assert conversation(fmt, request["body"]) == [("user", "bonjour")]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_function_tool_loop(client: openai.OpenAI, fake: FakeProvider, fmt: Format, stream: bool) -> None:
    conversation_items: list[Any] = [{"role": "user", "content": "What's the weather in Paris?"}]

    def ask() -> Any:
        if not stream:
            return client.responses.create(model=fmt.model, input=conversation_items, tools=[WEATHER])
        with client.responses.stream(model=fmt.model, input=conversation_items, tools=[WEATHER]) as events:
            return events.get_final_response()

    first = ask()
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"location": "Paris"}
    assert call.call_id and call.status == "completed"
    assert first.output_text == ""
    first_request = fmt.generations(fake)[-1]
    check_provider_got_its_format(fmt, first_request, stream=stream)
    assert tool_names(fmt, first_request["body"]) == ["get_weather"]

    conversation_items += [item.model_dump(exclude_none=True) for item in first.output]
    conversation_items.append({"type": "function_call_output", "call_id": call.call_id, "output": "18°C, sunny"})
    second = ask()
    # The fake quotes the result as it received it (Gemini's functionResponse is an object).
    expected = 'Tool result: {"content":"18°C, sunny"}' if fmt.api == "gemini" else "Tool result: 18°C, sunny"
    assert second.output_text == expected
    first_again, second_request = fmt.generations(fake)
    assert first_again == first_request
    name, arguments, result = call_and_result(fmt, second_request["body"])
    assert (name, arguments) == ("get_weather", {"location": "Paris"})
    assert "18°C, sunny" in result


def test_structured_output_follows_the_schema(client: openai.OpenAI, fake: FakeProvider, fmt: Format) -> None:
    text = {"format": {"type": "json_schema", "name": "city", "schema": CITY_SCHEMA, "strict": True}}
    response = client.responses.create(model=fmt.model, input="Tell me about Paris", text=text)
    [request] = fmt.generations(fake)
    body = request["body"]
    if fmt.api == "responses":
        assert body["text"]["format"] == text["format"]  # passed through as sent
    else:
        # Through the hub: asked for in the system prompt (docs/responses.md), and, for the formats
        # that have structured output of their own, with it.
        instruction = "Respond with a single valid JSON object and nothing else, matching this JSON schema: "
        assert instruction + json.dumps(CITY_SCHEMA, separators=(",", ":")) in system_prompt(fmt, body)
    if fmt.api == "openai":
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": CITY_SCHEMA},
        }
    elif fmt.api == "gemini":
        config = body["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        assert config["responseSchema"]["required"] == CITY_SCHEMA["required"]
    elif fmt.api == "anthropic":
        # An Anthropic provider gets the instruction only (no JSON mode every model takes): the
        # fake model, which reads no instructions, answers in words.
        assert "output_config" not in body
        assert response.output_text == f"Hello from fake-anthropic model {fmt.model_id}: Tell me about Paris"
        return
    assert json.loads(response.output_text) == {"city": "Paris", "population": 1, "capital": True}


def test_reasoning_effort_becomes_the_providers_thinking(
    client: openai.OpenAI, fake: FakeProvider, fmt: Format
) -> None:
    response = client.responses.create(
        model=fmt.model, input="think first", reasoning={"effort": "low", "summary": "auto"}
    )
    [request] = fmt.generations(fake)
    body = request["body"]
    if fmt.api == "openai":
        # gpt-4o has no "thinking" capability in the policy: no reasoning is asked for.
        assert "reasoning_effort" not in body
        assert [item.type for item in response.output] == ["message"]
        return
    if fmt.api == "anthropic":
        assert body["thinking"]["type"] == "enabled" and body["thinking"]["budget_tokens"] > 0
    elif fmt.api == "gemini":
        assert body["generationConfig"]["thinkingConfig"]["thinkingBudget"] > 0
    else:
        assert body["reasoning"] == {"effort": "low", "summary": "auto"}
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and message.type == "message"
    assert [part.text for part in reasoning.summary] == ["Thinking about: think first"]
    assert response.output_text.endswith(": think first")


def test_cached_tokens_are_counted_inside_input_tokens(client: openai.OpenAI, fmt: Format) -> None:
    cached = {"x-fake-cached-tokens": "5"}
    response = client.responses.create(model=fmt.model, input="cache me", extra_headers=cached)
    usage = response.usage
    assert usage is not None and usage.input_tokens_details.cached_tokens == 5
    assert usage.input_tokens > 5 and usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_a_provider_error_reaches_the_client_in_openai_shape(client: openai.OpenAI, fmt: Format) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=fmt.model, input="hi", extra_headers={"x-fake-status": "400"})
    error = raised.value.response.json()["error"]
    assert set(error) >= {"message", "type"} and error["type"] == "invalid_request_error"
    assert "fake provider injected HTTP 400" in error["message"]


def test_a_stream_that_fails_midway_ends_with_an_error_event(client: openai.OpenAI, fmt: Format) -> None:
    headers = {"x-fake-midstream-error": "1", "x-fake-chunks": "8"}
    events = list(client.responses.create(model=fmt.model, input="fail me", stream=True, extra_headers=headers))
    assert events[0].type == "response.created"
    last = events[-1]
    if fmt.api == "responses":
        # Passed through as the provider sent it: OpenAI's error event.
        assert (last.type, last.code) == ("error", "server_error")
        return
    assert last.type == "response.failed", [e.type for e in events]
    assert last.response.status == "failed" and last.response.error is not None
    assert last.response.error.message
    assert not [e for e in events if e.type == "response.completed"]


def test_an_unknown_model_is_not_found_in_openai_shape(client: openai.OpenAI, fake: FakeProvider) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.create(model="no-such-model", input="hi")
    error = raised.value.response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert "no-such-model" in error["message"]
    assert fake.requests() == []


def test_a_malformed_input_item_is_refused_naming_the_field(
    client: openai.OpenAI, fake: FakeProvider, fmt: Format
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=fmt.model, input=[{"type": "bogus"}])  # type: ignore[list-item]
    error = raised.value.response.json()["error"]
    assert error["param"] == "input[0].type" or "input[0].type" in error["message"], error
    assert "bogus" in error["message"]


def test_previous_response_id_is_refused_clearly(client: openai.OpenAI, fake: FakeProvider) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="gpt-4o", input="and then?", previous_response_id="resp_123")
    error = raised.value.response.json()["error"]
    assert "previous_response_id" in error["message"] and "stored responses are not enabled" in error["message"]
    assert fake.requests() == []


def test_a_stored_response_cannot_be_read_or_deleted(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="stored responses are not enabled"):
        client.responses.retrieve("resp_123")
    with pytest.raises(openai.NotFoundError, match="stored responses are not enabled"):
        client.responses.delete("resp_123")


def test_store_true_stores_nothing(client: openai.OpenAI, fake: FakeProvider, fmt: Format) -> None:
    response = client.responses.create(model=fmt.model, input="keep this", store=True)
    assert response.store is False and response.status == "completed"
    [request] = fmt.generations(fake)
    assert request["body"].get("store", False) is False


def test_input_tokens_are_counted(client: openai.OpenAI, fake: FakeProvider, fmt: Format) -> None:
    counted = client.responses.input_tokens.count(model=fmt.model, input="count these words for me", tools=[WEATHER])
    assert isinstance(counted.input_tokens, int) and counted.input_tokens > 0
    assert counted.object == "response.input_tokens"
    longer = client.responses.input_tokens.count(model=fmt.model, input="count these words for me " * 20)
    assert longer.input_tokens > counted.input_tokens - 40  # the tools count too, the text most
    assert fake.requests() == []  # counted by the gateway: no provider is asked


# --- other clients to the Responses-format provider ------------------------------------------------

RESPONSES = FORMATS["responses"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_an_anthropic_client_reaches_the_responses_provider(gw: Gateway, fake: FakeProvider, stream: bool) -> None:
    claude = anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0)
    request: dict[str, Any] = {
        "model": RESPONSES.model,
        "max_tokens": 256,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "hello claude"}],
    }
    if stream:
        with claude.messages.stream(**request) as events:
            text = "".join(events.text_stream)
            message = events.get_final_message()
        assert text == message.content[0].text
    else:
        message = claude.messages.create(**request)
    assert message.content[0].text == f"Hello from fake-responses model {RESPONSES.model_id}: hello claude"
    assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0
    [sent] = RESPONSES.generations(fake)
    check_provider_got_its_format(RESPONSES, sent, stream=stream)
    assert sent["body"]["instructions"] == "Be brief."
    assert sent["body"]["input"] == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello claude"}]}
    ]
    assert sent["body"]["max_output_tokens"] == 256


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_chat_client_reaches_the_responses_provider(client: openai.OpenAI, fake: FakeProvider, stream: bool) -> None:
    messages: list[Any] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello chat"}]
    if stream:
        chunks = list(
            client.chat.completions.create(
                model=RESPONSES.model, messages=messages, stream=True, stream_options={"include_usage": True}
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        completion = client.chat.completions.create(model=RESPONSES.model, messages=messages)
        text, usage = completion.choices[0].message.content, completion.usage
    assert text == f"Hello from fake-responses model {RESPONSES.model_id}: hello chat"
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    [sent] = RESPONSES.generations(fake)
    check_provider_got_its_format(RESPONSES, sent, stream=stream)
    assert system_prompt(RESPONSES, sent["body"]) == "Be brief."
    assert conversation(RESPONSES, sent["body"]) == [("user", "hello chat")]


# --- the ledger ------------------------------------------------------------------------------------


def _exported() -> dict[str, dict]:
    # The gateway's worker and this command both find the local ledger through $XDG_DATA_HOME
    # (tests/conftest.py).
    command = [sys.executable, "-m", "ccr_gateway.cli", "usage", "export", "--since", "1h"]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout
    return {record["request_id"]: record for record in map(json.loads, out.splitlines())}


def test_responses_usage_lands_in_the_ledger(client: openai.OpenAI) -> None:
    """Each format, answered whole and streamed, with cached tokens: one record per request."""
    cached = {"x-fake-cached-tokens": "5"}
    answers = {}
    for f in FORMATS.values():
        raw = client.responses.with_raw_response.create(model=f.model, input="count me", extra_headers=cached)
        answers[raw.headers["request-id"]] = (f, False, raw.parse())
        with client.responses.with_streaming_response.create(
            model=f.model, input="count me", stream=True, extra_headers=cached
        ) as streamed:
            events = [event for event in streamed.parse() if event.type == "response.completed"]
        answers[streamed.headers["request-id"]] = (f, True, events[-1].response)

    def all_recorded() -> dict[str, dict] | None:
        found = _exported()
        return found if set(answers) <= set(found) else None

    records = wait_until(all_recorded, 15, "the requests' usage records", interval=0.5)
    for request_id, (f, stream, response) in answers.items():
        record = records[request_id]
        assert (record["client_api"], record["endpoint"], record["status"]) == ("responses", "/v1/responses", 200)
        assert (record["provider"], record["model"], record["stream"]) == (f.provider, f.model_id, stream)
        assert (record["usage_source"], record["requested_model"]) == ("provider", f.model)
        usage = response.usage
        assert record["output_tokens"] == usage.output_tokens > 0
        assert record["cache_read_tokens"] == usage.input_tokens_details.cached_tokens == 5
        assert record["input_tokens"] + record["cache_read_tokens"] == usage.input_tokens
