"""The requests the real Codex CLI sent (tests/fixtures/codex, captured by tests.codex.capture) are
valid Responses API requests by the openai SDK's own types, say what shape Codex sends (summarised
in docs/responses.md), and hold nothing that must not be committed. The capture server's canned
answers are valid Responses stream events by the same SDK.

The SDK's request types are TypedDicts: pydantic validates them (types, literals, the item and tool
unions) but ignores keys it does not know, so the keys are checked here one by one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from openai.types.responses import ResponseInputItemParam, ResponseStreamEvent, ToolParam
from openai.types.responses.response_create_params import ResponseCreateParamsStreaming
from pydantic import TypeAdapter, ValidationError

from tests.codex import scenarios
from tests.codex.answers import ENCRYPTED_REASONING, encode_sse, function_call_answer, text_answer
from tests.codex.capture import DROPPED_HEADERS, CaptureServer
from tests.codex.cli import CLIENT_KEY, PINNED_VERSION
from tests.codex.scrub import DATE, HOME_DIR, PROJECT_DIR, SecretLeft, scrub

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "codex"
PATHS = sorted(FIXTURES.glob("*/*.json"))
CREATE = TypeAdapter(ResponseCreateParamsStreaming)
ITEM = TypeAdapter(ResponseInputItemParam)
TOOL = TypeAdapter(ToolParam)
EVENT = TypeAdapter(ResponseStreamEvent)
STAND_IN = re.compile(r"00000000-0000-4000-8000-\d{12}")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# Top-level fields, by the kind of model name Codex was given (tests.codex.scenarios).
ALWAYS = {
    "model", "input", "tools", "tool_choice", "parallel_tool_calls", "reasoning", "store", "stream",
    "include", "prompt_cache_key", "client_metadata",
}  # fmt: skip
KNOWN_MODEL_ONLY = {"text"}  # text.verbosity
NOT_IN_THE_SDK = {"client_metadata"}  # Codex's own: ids of the installation, session, turn, window


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def by_scenario(name: str) -> list[dict]:
    return [load(p) for p in sorted((FIXTURES / name).glob("*.json"), key=lambda p: int(p.stem))]


def tools_by_name(body: dict) -> dict[str, dict]:
    return {t["name"]: t for t in body["tools"] if "name" in t}


def test_every_scenario_was_captured() -> None:
    captured = {p.parent.name: [] for p in PATHS}
    for path in PATHS:
        captured[path.parent.name].append(int(path.stem))
    assert {name: sorted(numbers) for name, numbers in captured.items()} == {
        "text": [1],
        "shell_loop": [1, 2],
        "known_model_shell_loop": [1, 2],
    }


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_fixture_is_a_codex_exec_request_of_the_pinned_version(path: Path) -> None:
    fixture = load(path)
    assert fixture["cli_version"] == PINNED_VERSION, "re-capture after bumping tests/codex/package.json"
    assert (fixture["method"], fixture["path"]) == ("POST", "/v1/responses")
    headers = fixture["headers"]
    assert headers["user-agent"].startswith(f"codex_exec/{PINNED_VERSION} (Linux; ")
    assert headers["originator"] == "codex_exec"
    assert headers["x-codex-beta-features"] == "remote_compaction_v2"
    assert headers["x-client-request-id"] == headers["session-id"]
    assert headers["accept"] == "text/event-stream"
    assert headers["content-type"] == "application/json"
    # Codex takes compressed answers; a gateway may not send zstd to a client that did not ask.
    assert headers["accept-encoding"] == "zstd,gzip"
    # The session is named three ways: headers, the cache key, and the turn metadata.
    body = fixture["body"]
    assert headers["session-id"] == headers["thread-id"] == body["prompt_cache_key"]
    assert json.loads(headers["x-codex-turn-metadata"])["session_id"] == headers["session-id"]
    assert body["client_metadata"]["x-codex-turn-metadata"] == headers["x-codex-turn-metadata"]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_fixture_holds_no_secret_and_no_machine_identity(path: Path) -> None:
    text = path.read_text()
    fixture = json.loads(text)
    assert not DROPPED_HEADERS & set(fixture["headers"])
    assert CLIENT_KEY not in text and "Bearer" not in text
    assert "/tmp/" not in text
    assert PROJECT_DIR in text and HOME_DIR in text  # the stand-ins took the capture's directories' place
    assert set(UUID.findall(text)) == set(STAND_IN.findall(text)), "a UUID was not scrubbed"
    assert f"<current_date>{DATE}</current_date>" in text
    assert json.loads(fixture["headers"]["x-codex-turn-metadata"])["turn_started_at_unix_ms"] == 0


def as_the_sdk_types_allow(body: dict) -> dict:
    """``body`` without the one thing Codex sends that the SDK's types refuse: ``"content": null``
    on a replayed reasoning item (the types say an optional list; the API takes null)."""
    items = [
        {k: v for k, v in item.items() if not (k == "content" and v is None)} if item["type"] == "reasoning" else item
        for item in body["input"]
    ]
    return {**body, "input": items}


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_body_is_a_valid_responses_request_by_the_openai_sdk_types(path: Path) -> None:
    body = as_the_sdk_types_allow(load(path)["body"])
    CREATE.validate_python(body)
    # Lists of unions are validated one by one too, so a failure names the item.
    for item in body["input"]:
        ITEM.validate_python(item)
    for tool in body["tools"]:
        TOOL.validate_python(tool)
    unknown = set(body) - set(ResponseCreateParamsStreaming.__annotations__)
    assert unknown == NOT_IN_THE_SDK


def test_codex_replays_reasoning_with_a_null_content_the_sdk_types_refuse() -> None:
    [reasoning] = [i for i in by_scenario("shell_loop")[1]["body"]["input"] if i["type"] == "reasoning"]
    assert reasoning["content"] is None
    with pytest.raises(ValidationError, match="content"):
        ITEM.validate_python(reasoning)
    ITEM.validate_python({k: v for k, v in reasoning.items() if k != "content"})


def test_the_sdk_validation_rejects_what_is_not_a_responses_request() -> None:
    # Guard against a vacuous check: pydantic really does validate the TypedDict unions.
    with pytest.raises(ValidationError):
        ITEM.validate_python({"type": "message", "role": "robot", "content": "hi"})
    with pytest.raises(ValidationError):
        ITEM.validate_python({"type": "function_call", "call_id": "c", "arguments": "{}"})  # no name
    with pytest.raises(ValidationError):
        TOOL.validate_python({"type": "function", "description": "no name"})
    with pytest.raises(ValidationError):
        CREATE.validate_python({"model": "m", "input": [], "stream": "yes"})


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_codex_sends_these_fields(path: Path) -> None:
    fixture = load(path)
    body = fixture["body"]
    known_model = fixture["scenario"].startswith("known_model")
    assert set(body) == ALWAYS | (KNOWN_MODEL_ONLY if known_model else set())
    assert "instructions" not in body  # the base prompt is the first developer message instead
    assert body["stream"] is True and body["store"] is False
    assert body["include"] == ["reasoning.encrypted_content"]
    assert (body["tool_choice"], body["parallel_tool_calls"]) == ("auto", True)
    if known_model:
        assert body["model"] == scenarios.KNOWN_MODEL
        assert body["reasoning"] == {"effort": "medium"}
        assert body["text"] == {"verbosity": "low"}
    else:
        assert body["model"] == scenarios.GATEWAY_MODEL
        assert body["reasoning"] == {"summary": "auto"}


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_input_opens_with_two_developer_messages_and_the_environment(path: Path) -> None:
    items = load(path)["body"]["input"]
    assert [(i["type"], i["role"]) for i in items[:4]] == [
        ("message", "developer"),  # the base instructions (~17 KB)
        ("message", "developer"),  # the skills list
        ("message", "user"),  # <environment_context>
        ("message", "user"),  # the prompt
    ]
    for item in items[:4]:
        assert item["id"].startswith("msg_")  # ids on input messages: not OpenAI ids, must not be forwarded as such
        assert {part["type"] for part in item["content"]} == {"input_text"}
    # The base prompt is the model's own (a known model) or Codex's generic one.
    assert items[0]["content"][0]["text"].startswith(
        ("You are a coding agent running in the Codex CLI", "You are Codex")
    )
    heads = [part["text"].split("\n", 1)[0] for part in items[1]["content"]]
    if load(path)["scenario"].startswith("known_model"):
        # Its multi-agent tools are deferred (found with tool_search): named here instead of in `tools`.
        assert heads == ["<skills_instructions>", "<permissions instructions>", "<tools>"]
        assert "- multi_agent_v1: " in items[1]["content"][2]["text"]
    else:
        assert heads == ["<skills_instructions>", "<permissions instructions>"]
    assert items[2]["content"][0]["text"].startswith("<environment_context>")


def test_text_turn_is_one_request_ending_with_the_prompt() -> None:
    [request] = by_scenario("text")
    items = request["body"]["input"]
    assert len(items) == 4
    assert items[-1]["content"] == [{"type": "input_text", "text": scenarios.TEXT_PROMPT}]


@pytest.mark.parametrize("scenario", ["shell_loop", "known_model_shell_loop"])
def test_shell_loop_sends_the_call_back_with_the_commands_output(scenario: str) -> None:
    first, second = by_scenario(scenario)
    shell = tools_by_name(first["body"])[scenarios.SHELL_TOOL]
    assert shell["type"] == "function" and shell["strict"] is False
    assert shell["parameters"]["required"] == ["cmd"]
    assert first["body"]["input"][-1]["content"][0]["text"] == scenarios.shell_loop().prompt

    # The second request is the first one's input, then the answer's items as the model sent them
    # (reasoning, a commentary message, the call), then the call's output.
    items = second["body"]["input"]
    assert items[:-4] == first["body"]["input"]
    reasoning, commentary, call, output = items[-4:]
    assert reasoning == {
        "type": "reasoning",
        "id": "rs_resp_capture_1_0",
        "summary": [{"type": "summary_text", "text": f"Calling {scenarios.SHELL_TOOL} as asked."}],
        "content": None,  # an explicit null: a translator must take it
        "encrypted_content": ENCRYPTED_REASONING,  # replayed whole, as `include` asked for it
    }
    assert (commentary["role"], commentary["phase"], commentary["status"]) == ("assistant", "commentary", "completed")
    assert commentary["content"] == [{"type": "output_text", "text": "Running exec_command.", "annotations": []}]
    assert call["type"] == "function_call" and call["name"] == scenarios.SHELL_TOOL
    assert call["status"] == "completed" and call["id"].startswith("fc_")  # echoed from the answer
    assert json.loads(call["arguments"]) == {"cmd": "echo ccr-tool-ok-$((6*7))"}
    assert output["type"] == "function_call_output" and output["call_id"] == call["call_id"]
    assert output["id"].startswith("fco_")
    assert output["output"].startswith("Chunk ID: 000000\nWall time: 0.0000 seconds\nProcess exited with code 0\n")
    assert output["output"].endswith(f"Output:\n{scenarios.TOOL_MARKER}\n")  # the command really ran
    assert second["body"]["tools"] == first["body"]["tools"]


def test_tools_by_model_kind() -> None:
    gateway = by_scenario("text")[0]["body"]["tools"]
    known = by_scenario("known_model_shell_loop")[0]["body"]["tools"]
    shared = {
        "exec_command",
        "write_stdin",
        "request_user_input",
        "view_image",
        "get_goal",
        "create_goal",
        "update_goal",
    }

    assert {t["type"] for t in gateway} == {"function", "namespace", "web_search"}
    assert shared == {t["name"] for t in gateway if t["type"] == "function"}
    [namespace] = [t for t in gateway if t["type"] == "namespace"]
    assert namespace["name"] == "multi_agent_v1"
    assert {t["type"] for t in namespace["tools"]} == {"function"}
    assert {t["name"] for t in namespace["tools"]} == {
        "spawn_agent",
        "send_input",
        "resume_agent",
        "wait_agent",
        "close_agent",
    }
    assert [t for t in gateway if t["type"] == "web_search"] == [{"type": "web_search", "external_web_access": True}]

    assert {t["type"] for t in known} == {"function", "custom", "tool_search", "web_search"}
    assert shared == {t["name"] for t in known if t["type"] == "function"}
    [patch] = [t for t in known if t["type"] == "custom"]
    assert patch["name"] == "apply_patch" and patch["format"]["type"] == "grammar"  # freeform: no JSON
    assert patch["format"]["syntax"] == "lark"
    [search] = [t for t in known if t["type"] == "tool_search"]
    assert search["execution"] == "client" and search["parameters"]["required"] == ["query"]
    assert [t for t in known if t["type"] == "web_search"] == [
        {"type": "web_search", "external_web_access": True, "search_content_types": ["text", "image"]}
    ]
    for tool in [t for t in gateway + known if t["type"] == "function"]:
        assert tool["strict"] is False and tool["parameters"]["additionalProperties"] is False


# --- the capture server's answers ---------------------------------------------------------------


def events_of(stream: list[dict]) -> list:
    return [EVENT.validate_python(event) for event in stream]


def test_canned_text_answer_is_a_valid_responses_stream() -> None:
    events = events_of(text_answer("resp_1", "m", "Hello there, gateway", 100, pieces=3))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello there, gateway"
    assert kinds.count("response.output_text.delta") == 3
    done = events[-1].response
    assert done.output_text == "Hello there, gateway"
    assert done.usage.input_tokens == 100 and done.usage.total_tokens == 100 + done.usage.output_tokens


def test_canned_function_call_is_a_valid_responses_stream() -> None:
    events = events_of(function_call_answer("resp_2", "m", "exec_command", {"cmd": "echo hi"}, 50))
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(deltas) == {"cmd": "echo hi"}
    reasoning, commentary, call = events[-1].response.output
    assert reasoning.summary[0].text == "Calling exec_command as asked."
    assert reasoning.encrypted_content == ENCRYPTED_REASONING
    assert (commentary.phase, commentary.content[0].text) == ("commentary", "Running exec_command.")
    assert (call.type, call.name, call.call_id, json.loads(call.arguments)) == (
        "function_call",
        "exec_command",
        "call_resp_2",
        {"cmd": "echo hi"},
    )


def test_sse_framing_names_each_event() -> None:
    frames = encode_sse(text_answer("resp_3", "m", "hi", 1)).decode().split("\n\n")
    assert frames[-1] == ""
    for frame in frames[:-1]:
        event, data = frame.split("\n")
        assert event == "event: " + json.loads(data.removeprefix("data: "))["type"]


def test_capture_server_answers_codex_like_the_fake_model() -> None:
    server = CaptureServer()
    try:
        first, second = (r["body"] for r in by_scenario("shell_loop"))
        call = server.answer(first)[-1]["response"]["output"][-1]
        assert (call["type"], call["name"], json.loads(call["arguments"])) == (
            "function_call",
            scenarios.SHELL_TOOL,
            {"cmd": "echo ccr-tool-ok-$((6*7))"},
        )
        text = server.answer(second)[-1]["response"]["output"][0]["content"][0]["text"]
        assert text.startswith("Tool result: ") and scenarios.TOOL_MARKER in text
        greeting = server.answer(by_scenario("text")[0]["body"])[-1]["response"]["output"][0]["content"][0]["text"]
        assert greeting == f"Hello from the capture server: {scenarios.TEXT_PROMPT}"
    finally:
        server.close()


# --- scrubbing ----------------------------------------------------------------------------------


def test_scrub_numbers_uuids_in_order_and_keeps_which_are_equal() -> None:
    a, b = "0a1b2c3d-0000-7000-8000-aaaaaaaaaaaa", "99999999-1111-7111-8111-bbbbbbbbbbbb"
    request = {"headers": {"session-id": a}, "body": {"prompt_cache_key": a, "input": [{"id": f"msg_{b}"}]}}
    assert scrub(request, project="/p", home="/h") == {
        "headers": {"session-id": "00000000-0000-4000-8000-000000000001"},
        "body": {
            "prompt_cache_key": "00000000-0000-4000-8000-000000000001",
            "input": [{"id": "msg_00000000-0000-4000-8000-000000000002"}],
        },
    }


def test_scrub_replaces_directories_dates_and_command_timing() -> None:
    text = (
        "<cwd>/tmp/x/project</cwd> <root>/tmp/x/home/.codex</root> <current_date>2031-05-06</current_date> "
        "Chunk ID: 4f2a9c\nWall time: 0.0123 seconds"
    )
    scrubbed = scrub({"t": text}, project="/tmp/x/project", home="/tmp/x/home")["t"]
    assert scrubbed == (
        f"<cwd>{PROJECT_DIR}</cwd> <root>{HOME_DIR}/.codex</root> <current_date>{DATE}</current_date> "
        "Chunk ID: 000000\nWall time: 0.0000 seconds"
    )


def test_scrub_sorts_client_metadata_whatever_order_codex_sent() -> None:
    scrubbed = scrub({"body": {"client_metadata": {"b": "1", "a": "2"}}}, project="/p", home="/h")
    assert list(scrubbed["body"]["client_metadata"]) == ["a", "b"]


def test_scrub_refuses_a_request_holding_a_secret() -> None:
    with pytest.raises(SecretLeft):
        scrub({"body": {"note": f"key {CLIENT_KEY}"}}, project="/p", home="/h", secrets=(CLIENT_KEY,))
