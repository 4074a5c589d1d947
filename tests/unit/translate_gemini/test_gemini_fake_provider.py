"""Round trips through the project's fake Gemini upstream (its own reading of the wire format): what
the translators send parses there, and what it answers translates into SDK-valid client answers,
streamed or not, with and without a tool call."""

from __future__ import annotations

import json

import anthropic.types
import openai.types.chat
import orjson
import pytest

from extproc.translate.anthropic_gemini import AnthropicToGemini
from extproc.translate.base import Api
from extproc.translate.openai_gemini import OpenAIToGemini
from fake_provider.gemini_api import GeminiApi
from fake_provider.reply import plan_reply
from tests.unit.golden_cases import CREATED, make_target
from tests.unit.stream_checks import check_anthropic_stream, check_openai_stream
from tests.unit.translating import translate

SCHEMA = {
    "type": "object",
    "properties": {"path": {"type": "string"}},
    "required": ["path"],
    "additionalProperties": False,
}
BODIES = {
    Api.ANTHROPIC: {
        "model": "claude",
        "max_tokens": 1000,
        "thinking": {"type": "enabled", "budget_tokens": 500},
        "tools": [{"name": "Read", "description": "read", "input_schema": SCHEMA}],
        "messages": [{"role": "user", "content": "read the file please"}],
    },
    Api.OPENAI: {
        "model": "gpt",
        "reasoning_effort": "low",
        "stream_options": {"include_usage": True},
        "tools": [{"type": "function", "function": {"name": "Read", "parameters": SCHEMA}}],
        "messages": [{"role": "user", "content": "read the file please"}],
    },
}


@pytest.mark.parametrize("client", [Api.ANTHROPIC, Api.OPENAI])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("tool_call", [False, True])
def test_fake_gemini_round_trip(client: Api, stream: bool, tool_call: bool) -> None:
    body = {**BODIES[client], "stream": stream}
    translator = AnthropicToGemini() if client is Api.ANTHROPIC else OpenAIToGemini(clock=lambda: CREATED)
    target = make_target(body, {"model": "gemini-2.5-flash"})
    upstream = translate(translator, body, target)
    api = GeminiApi()
    conversation = api.parse(orjson.loads(upstream.body), len(upstream.body), target.model)
    assert conversation.first_tool is not None and conversation.wants_thinking
    reply = plan_reply("gemini", conversation, force_tool_call=tool_call, cached_tokens=7)
    if stream:
        raw = b"".join(api.render_stream(reply, body, 3))
        out = translator.response_body(raw, False).body + translator.response_body(b"", True).body
        if client is Api.ANTHROPIC:
            events = check_anthropic_stream(out)
            assert events[-2]["delta"]["stop_reason"] == ("tool_use" if tool_call else "end_turn")
            assert events[-2]["usage"]["cache_read_input_tokens"] == 7
        else:
            chunks = check_openai_stream(out, include_usage=True)
            assert chunks[-2]["choices"][0]["finish_reason"] == ("tool_calls" if tool_call else "stop")
            assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 7
    else:
        result = translator.response_body(api.render_json(reply), True)
        answer = json.loads(result.body)
        if client is Api.ANTHROPIC:
            message = anthropic.types.Message.model_validate(answer)
            assert message.stop_reason == ("tool_use" if tool_call else "end_turn")
            assert message.content[0].type == "thinking"
        else:
            completion = openai.types.chat.ChatCompletion.model_validate(answer)
            assert completion.choices[0].finish_reason == ("tool_calls" if tool_call else "stop")
        assert result.usage is not None and result.usage.cache_read_input_tokens == 7
