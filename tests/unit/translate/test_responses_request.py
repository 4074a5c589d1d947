"""A Responses request: checked and typed once (request_checks, client_request), refused in the
Responses error shape, mapped to the Anthropic hub body (what the provider cannot take refused
by ResponsesToAnthropic), and its endpoints: /v1/responses, /v1/responses/input_tokens, and a 404
that says so for the stored-response paths."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from control_plane.policy import load_policy
from extproc.plan import COUNT_TOKENS, Answer, plan
from extproc.request_steps import Endpoint, Reply, endpoint_step
from extproc.routing_table import ResponsesSettings, compile_policy
from extproc.tokens import count_for_client
from extproc.translate.anthropic_openai import AnthropicToOpenAI
from extproc.translate.base import Api, ClientRequestError, Target
from extproc.translate.chained import Chained
from extproc.translate.client_request import ResponsesRequest, ToolChoice, parse_request
from extproc.translate.errors import error_body
from extproc.translate.passthrough import ResponsesPassthrough
from extproc.translate.responses_anthropic import ResponsesToAnthropic, anthropic_body
from tests.unit.test_plan import POLICY
from tests.unit.translate.test_responses_anthropic import check_responses_stream

TARGET = Target(model="claude-sonnet-4-5", capabilities=frozenset({"tools", "thinking"}))
CALL = {"type": "function_call", "call_id": "call_1", "name": "shell", "arguments": '{"cmd": "ls"}'}
OUTPUT = {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"}
SHELL = {"type": "function", "name": "shell", "parameters": {"type": "object", "properties": {}}}


def request(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-5", "input": "hi", **fields}


def hub(target: Target = TARGET, **fields: Any) -> dict[str, Any]:
    """The Anthropic body a Responses request becomes."""
    parsed = parse_request(Api.RESPONSES, request(**fields))
    assert isinstance(parsed, ResponsesRequest)
    return anthropic_body(parsed, target)


# --- what the Responses API itself refuses (any provider) --------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"input": None}, "input: required, must be a string or a non-empty array of input items"),
        ({"input": []}, "input: required, must be a string or a non-empty array of input items"),
        ({"input": ""}, "input: must not be empty"),
        ({"previous_response_id": "resp_1"}, "previous_response_id: stored responses are not enabled"),
        ({"conversation": "conv_1"}, "conversation: stored responses are not enabled"),
        ({"background": True}, "background: stored responses are not enabled"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0: stored responses are not enabled"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input.0.role: must be one of user, assistant, system"),
        ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input.0.content.0.text: required"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input.0.content.0.type: must be one of"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input.0.content.0: an input_image needs",
        ),
        ({"input": [OUTPUT]}, "input.0.call_id: 'call_1' answers no earlier tool call"),
        ({"input": [{**CALL, "arguments": {}}]}, "input.0.arguments: required, must be a string"),
        ({"input": [{"type": "reasoning", "summary": "x"}]}, "input.0.summary: must be an array of summary_text"),
        ({"tools": [{"type": "function"}]}, "tools.0.name: required"),
        ({"tools": [{"type": "function", "name": "f", "parameters": []}]}, "tools.0.parameters: must be an object"),
        ({"tools": [{"type": "namespace", "tools": [{"type": "function"}]}]}, "tools.0.tools.0.name: required"),
        ({"tool_choice": "any"}, "tool_choice: must be 'auto', 'required', 'none' or an object"),
        ({"tool_choice": {"type": "function"}}, "tool_choice.name: required"),
        ({"reasoning": {"effort": "max"}}, "reasoning.effort: must be one of"),
        ({"reasoning": {"summary": "long"}}, "reasoning.summary: must be one of"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type: must be one of"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema: required"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name: required"),
        ({"max_output_tokens": 0}, "max_output_tokens: must be a positive integer"),
        ({"stream": "yes"}, "stream: must be a boolean"),
        ({"instructions": ["x"]}, "instructions: must be a string"),
    ],
)
def test_a_malformed_request_is_refused_before_any_translator(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ClientRequestError) as caught:
        parse_request(Api.RESPONSES, request(**fields))
    assert caught.value.message.startswith(message), caught.value.message
    assert caught.value.status == 400


def test_a_refusal_is_in_the_responses_error_shape_with_the_param_named() -> None:
    body = orjson.loads(error_body(Api.RESPONSES, 400, "input.3.content.0.text: required, must be a string"))
    assert body == {
        "error": {
            "message": "input.3.content.0.text: required, must be a string",
            "type": "invalid_request_error",
            "param": "input[3].content[0].text",
            "code": None,
        }
    }
    assert orjson.loads(error_body(Api.RESPONSES, 404, "stored responses are not enabled"))["error"]["param"] is None


def test_the_typed_request_reads_what_a_translator_needs() -> None:
    parsed = parse_request(
        Api.RESPONSES,
        request(
            input=[{"role": "user", "content": "q"}, CALL, OUTPUT, {"role": "assistant", "content": "a"}],
            tools=[SHELL, {"type": "web_search"}],
            tool_choice={"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "shell"}]},
            parallel_tool_calls=False,
            max_output_tokens=500,
            reasoning={"effort": "low", "summary": "auto"},
            text={"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}}},
            stream=True,
            user="u",
        ),
    )
    assert isinstance(parsed, ResponsesRequest)
    assert (parsed.stream, parsed.max_tokens, parsed.user, parsed.turns) == (True, 500, "u", 2)
    assert [tool.name for tool in parsed.tools] == ["shell"] and parsed.hosted_tools == ({"type": "web_search"},)
    assert parsed.tool_choice == ToolChoice("any", allowed=("shell",)) and not parsed.parallel_tool_calls
    assert (parsed.reasoning_effort, parsed.reasoning_summary) == ("low", "auto")
    assert (parsed.response_format, parsed.response_schema) == ("json_schema", {"type": "object"})
    string = parse_request(Api.RESPONSES, request())
    assert isinstance(string, ResponsesRequest)
    assert list(string.items) == [{"type": "message", "role": "user", "content": "hi"}]


# --- the hub body, and what an Anthropic provider cannot take ----------------------------------------


def test_items_become_alternating_turns_with_tool_results_first() -> None:
    body = hub(
        input=[
            {"role": "developer", "content": "be terse"},
            {"role": "user", "content": "list files"},
            {"type": "reasoning", "summary": [], "encrypted_content": "gAAA"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Sure."}]},
            CALL,
            {"role": "user", "content": "and quickly"},
            OUTPUT,
        ],
        instructions="You are Codex.",
    )
    assert body["system"] == [{"type": "text", "text": "You are Codex."}, {"type": "text", "text": "be terse"}]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "list files"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Sure."},
                {"type": "tool_use", "id": "call_1", "name": "shell", "input": {"cmd": "ls"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "a.txt"},
                {"type": "text", "text": "and quickly"},
            ],
        },
    ]
    parse_request(Api.ANTHROPIC, body)  # a chain's inner translator takes it


def test_reasoning_effort_becomes_a_thinking_budget_only_where_anthropic_allows_it() -> None:
    assert hub(reasoning={"effort": "medium"})["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert "thinking" not in hub(reasoning={"effort": "none"})
    assert "thinking" not in hub(Target(model="m"), reasoning={"effort": "high"})  # no thinking capability
    assert "thinking" not in hub(input=[CALL, OUTPUT], reasoning={"effort": "high"})  # mid tool loop
    forced = hub(tools=[SHELL], tool_choice={"type": "function", "name": "shell"}, reasoning={"effort": "high"})
    assert "thinking" not in forced and forced["tool_choice"] == {"type": "tool", "name": "shell"}
    small = hub(max_output_tokens=3000, reasoning={"effort": "high"}, temperature=0.5)
    assert small["thinking"] == {"type": "enabled", "budget_tokens": 1500} and "temperature" not in small


def test_tools_and_tool_choice() -> None:
    body = hub(
        tools=[SHELL, {"type": "function", "name": "other"}],
        tool_choice={"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "shell"}]},
        parallel_tool_calls=False,
    )
    assert [tool["name"] for tool in body["tools"]] == ["shell"]
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert hub(tools=[SHELL], tool_choice="none")["tool_choice"] == {"type": "none"}
    assert hub(tools=[SHELL], tool_choice="required")["tool_choice"] == {"type": "any"}
    assert hub(tools=[{"type": "function", "name": "bare"}])["tools"] == [
        {"name": "bare", "input_schema": {"type": "object", "properties": {}}}
    ]


def test_codex_tools_a_provider_cannot_run_are_left_out() -> None:
    codex = [SHELL, {"type": "namespace", "name": "multi_agent_v1", "tools": [SHELL]}, {"type": "web_search"}]
    assert [tool["name"] for tool in hub(tools=codex)["tools"]] == ["shell"]
    searching = Target(model="m", capabilities=frozenset({"web_search"}))
    assert hub(searching, tools=codex)["tools"][-1] == {"type": "web_search_20250305", "name": "web_search"}
    cached = [{"type": "web_search", "external_web_access": False}]
    assert "tools" not in hub(searching, tools=cached)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]},
            "tools: 'file_search' tools cannot be served",
        ),
        ({"tools": [SHELL], "tool_choice": {"type": "web_search_preview"}}, "tool_choice.type: 'web_search_preview'"),
        ({"input": [{"type": "computer_call", "id": "c"}]}, "input.0.type: 'computer_call' items cannot be sent"),
        (
            {"input": [{"role": "assistant", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
            "input.0.content.0: input_image parts are only allowed in user messages",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
            "input.0.content.0.file_id: uploaded files are not served",
        ),
        (
            {
                "input": [
                    {"role": "user", "content": [{"type": "input_file", "file_data": "data:image/png;base64,AA=="}]}
                ]
            },
            "input.0.content.0.file_data: 'image/png' files cannot be sent",
        ),
        ({"input": [{"role": "system", "content": "only a system prompt"}]}, "input: no user or assistant message"),
    ],
)
def test_what_an_anthropic_provider_cannot_take_is_a_400(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ClientRequestError) as caught:
        hub(**fields)
    assert caught.value.message.startswith(message), caught.value.message


def test_the_request_is_not_changed_and_goes_to_the_messages_path() -> None:
    body = request(input=[{"role": "user", "content": "hi"}], stream=True, max_output_tokens=99999)
    snapshot = orjson.dumps(body)
    upstream = ResponsesToAnthropic().request(
        parse_request(Api.RESPONSES, body),
        Target(model="m", base_path="/anthropic", stream=True, max_output_tokens=8000),
    )
    assert orjson.dumps(body) == snapshot
    sent = orjson.loads(upstream.body)
    assert upstream.path == "/anthropic/v1/messages" and sent["stream"] is True and sent["max_tokens"] == 8000


def test_a_chat_provider_is_reached_through_the_hub() -> None:
    """As the registry composes it: ResponsesToAnthropic outside, AnthropicToOpenAI inside."""
    chained = Chained(ResponsesToAnthropic(clock=lambda: 1), AnthropicToOpenAI())
    parsed = parse_request(Api.RESPONSES, request(input=[{"role": "user", "content": "ls"}, CALL, OUTPUT], stream=True))
    upstream = chained.request(parsed, Target(model="gpt-4o", stream=True))
    sent = orjson.loads(upstream.body)
    assert upstream.path == "/chat/completions"
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool"]
    assert sent["messages"][1]["tool_calls"][0]["id"] == "call_1"
    chunks = [
        {"id": "c1", "model": "gpt-4o", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Done"}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"content": "."}, "finish_reason": "stop"}]},
        {"id": "c1", "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22}},
    ]
    sse = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    chained.response_headers(200, {"content-type": "text/event-stream"})
    answer = chained.response_body(sse, True)
    payloads = check_responses_stream(answer.body)
    final = payloads[-1]["response"]
    assert payloads[-1]["type"] == "response.completed"
    assert final["output"][0]["content"][0]["text"] == "Done."
    assert final["usage"]["input_tokens"] == 20 and answer.usage is not None


def test_responses_passthrough_forwards_the_body_to_the_responses_path() -> None:
    raw = orjson.dumps(request(tools=[{"type": "web_search"}], include=["reasoning.encrypted_content"], store=False))
    parsed = parse_request(Api.RESPONSES, orjson.loads(raw), raw=raw)
    same = ResponsesPassthrough().request(parsed, Target(model="gpt-5", base_path="/v1"))
    assert (same.path, same.body, same.unchanged) == ("/v1/responses", raw, True)
    renamed = ResponsesPassthrough().request(parsed, Target(model="gpt-5.1", base_path="/v1"))
    assert orjson.loads(renamed.body)["model"] == "gpt-5.1" and not renamed.unchanged


@pytest.mark.parametrize("store", [None, True])
def test_responses_passthrough_never_asks_the_provider_to_store(store: bool | None) -> None:
    fields = {} if store is None else {"store": store}
    raw = orjson.dumps(request(**fields))
    parsed = parse_request(Api.RESPONSES, orjson.loads(raw), raw=raw)
    sent = ResponsesPassthrough().request(parsed, Target(model="gpt-5", base_path="/v1"))
    assert orjson.loads(sent.body) == {**request(), "store": False} and not sent.unchanged


# --- endpoints ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table():
    return compile_policy(load_policy(POLICY).to_proto("1"), environ={"ANT_KEY": "k"})


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/responses", "generate"),
        ("/responses", "generate"),
        ("/v1/responses/input_tokens", "count_tokens"),
        ("/responses/input_tokens?x=1", "count_tokens"),
    ],
)
def test_the_responses_endpoints(table, path: str, kind: str) -> None:
    api, step = endpoint_step(table, "POST", path, {"authorization": "Bearer k"}, has_body=True)
    assert api is Api.RESPONSES
    assert isinstance(step, Endpoint) and (step.api, step.kind) == (Api.RESPONSES, kind)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/responses/resp_1"), ("DELETE", "/v1/responses/resp_1"), ("POST", "/v1/responses/resp_1/cancel")],
)
def test_stored_response_paths_are_a_404_that_says_why_when_the_policy_keeps_none(
    table, method: str, path: str
) -> None:
    off = dataclasses.replace(table, responses=ResponsesSettings(store=False))
    api, reply = endpoint_step(off, method, path, {}, has_body=False)
    assert api is Api.RESPONSES and isinstance(reply, Reply) and reply.status == 404
    error = orjson.loads(reply.body)["error"]
    assert error["type"] == "not_found_error" and "stored responses are not enabled" in error["message"]


def test_the_wrong_method_on_a_responses_endpoint_is_a_405(table) -> None:
    for path in ("/v1/responses", "/v1/responses/input_tokens"):
        _, reply = endpoint_step(table, "GET", path, {}, has_body=False)
        assert isinstance(reply, Reply) and reply.status == 405 and dict(reply.headers)["allow"] == "POST"
        assert set(orjson.loads(reply.body)["error"]) == {"message", "type", "param", "code"}


def test_input_tokens_is_counted_by_the_gateway(table) -> None:
    body = request(
        input=[{"role": "user", "content": "count these words please"}],
        instructions="You are terse.",
        tools=[SHELL, {"type": "web_search"}],
    )
    outcome = plan(table, Api.RESPONSES, COUNT_TOKENS, {}, orjson.dumps(body))
    assert isinstance(outcome, Answer) and outcome.status == 200
    counted = orjson.loads(outcome.body)
    assert counted["object"] == "response.input_tokens"
    parsed = parse_request(Api.RESPONSES, {**body, "tools": [SHELL]})
    assert isinstance(parsed, ResponsesRequest)
    assert counted["input_tokens"] == count_for_client(anthropic_body(parsed, Target(model="m"))) > 5
    refused = plan(table, Api.RESPONSES, COUNT_TOKENS, {}, orjson.dumps(request(previous_response_id="resp_1")))
    assert isinstance(refused, Answer) and refused.status == 400


def test_freeform_tools_take_one_string_and_their_calls_replay_as_tool_use() -> None:
    patch = "*** Begin Patch\n*** End Patch\n"
    apply_patch = {
        "type": "custom",
        "name": "apply_patch",
        "description": "Edit files.",
        "format": {"type": "grammar", "syntax": "lark", "definition": "start: x"},
    }
    body = hub(
        input=[
            {"role": "user", "content": "patch it"},
            {"type": "custom_tool_call", "call_id": "call_p", "name": "apply_patch", "input": patch},
            {"type": "custom_tool_call_output", "call_id": "call_p", "output": "Done!"},
        ],
        tools=[apply_patch, {"type": "tool_search", "execution": "client", "parameters": {"type": "object"}}],
        tool_choice={"type": "custom", "name": "apply_patch"},
    )
    assert body["tools"] == [
        {
            "name": "apply_patch",
            "description": "Edit files.\n\nPass that text itself as the `input` string; it follows this lark grammar:\n"
            "start: x",
            "input_schema": {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]},
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "apply_patch"}
    assert body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "call_p", "name": "apply_patch", "input": {"input": patch}}
    ]
    assert body["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "call_p", "content": "Done!"}]


def test_encrypted_reasoning_is_dropped_with_a_logged_note(caplog: pytest.LogCaptureFixture) -> None:
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA", "content": None}
    with caplog.at_level("INFO", logger="ccr.extproc.translate"):
        body = hub(input=[{"role": "user", "content": "a"}, reasoning, {"role": "assistant", "content": "b"}])
    assert body["messages"][1] == {"role": "assistant", "content": [{"type": "text", "text": "b"}]}
    assert "input.1: a reasoning item's encrypted_content" in caplog.text


def test_an_anthropic_tool_result_with_a_list_for_its_id_is_a_400_not_a_crash() -> None:
    """Found by test_chat_properties' fuzzing while this check was being extended."""
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": [1]}]}],
    }
    with pytest.raises(ClientRequestError, match="tool_use_id: required, must be a non-empty string"):
        parse_request(Api.ANTHROPIC, body)
