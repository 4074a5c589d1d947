"""AWS Bedrock's Converse API (``POST /model/{modelId}/converse`` and ``/converse-stream``), the one
body Bedrock takes for every vendor's models: ``messages`` of text / image / document / toolUse /
toolResult blocks, ``system``, ``inferenceConfig``, ``toolConfig``. The answer is a
ConverseResponse; the stream AWS event-stream frames (messageStart, contentBlockStart / Delta /
Stop, messageStop, metadata), each payload the event's plain JSON.

Replies come from the shared planner (fake_provider.reply: "Hello from fake-converse model <id>:
..."; ``[fake-tool ...]`` directives make tool calls), so tests predict them as for every other
API. The request is checked as strictly as Converse checks it where a translator could get it
wrong: roles must alternate starting with a user turn, text blocks may not be blank, toolUse and
toolResult blocks need a toolConfig, ``model`` and ``stream`` are no body fields. SigV4 is checked
as for InvokeModel (BedrockApi.verify_request) when the fake is given AWS credentials.
"""

from __future__ import annotations

from typing import Any

import orjson

from extproc.translate.aws_eventstream import encode_message
from fake_provider.api import BadRequest, first_words
from fake_provider.bedrock_api import EVENTSTREAM_CONTENT_TYPE, BedrockApi
from fake_provider.reply import Conversation, Reply, Stop, Tool, estimate_tokens, split_text

_STOP_REASONS = {Stop.END: "end_turn", Stop.TOOL: "tool_use", Stop.LENGTH: "max_tokens"}
_KNOWN_FIELDS = frozenset(
    {
        "messages",
        "system",
        "inferenceConfig",
        "toolConfig",
        "guardrailConfig",
        "additionalModelRequestFields",
        "additionalModelResponseFieldPaths",
        "promptVariables",
        "requestMetadata",
        "performanceConfig",
        "serviceTier",
        "outputConfig",
    }
)
# Converse's own words for the mistakes a translator could make.
_STARTS_WITH_USER = (
    "A conversation must start with a user message. Try again with a conversation that starts with a user message."
)
_ALTERNATE = (
    "A conversation must alternate between user and assistant roles. Make sure the conversation alternates"
    " between user and assistant roles and try again."
)
_BLANK = "The text field in the ContentBlock object is blank. Add text to the text field, and try again."
_NO_TOOL_CONFIG = "The toolConfig field must be defined when using toolUse and toolResult content blocks."
# Converse pads each event with a "p" field of varying length (hiding the token lengths on the wire).
_PADDING = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


class ConverseApi(BedrockApi):
    """Converse on the InvokeModel fake's signature check, error types and exception frames."""

    name = "converse"  # the reply text names the format the model was asked in
    stream_content_type = EVENTSTREAM_CONTENT_TYPE

    def parse(self, body: Any, body_size: int, path_model: str | None) -> Conversation:
        if not isinstance(body, dict):
            raise BadRequest("Malformed input request, please reformat your input and try again.")
        extra = sorted(set(body) - _KNOWN_FIELDS)
        if extra:
            raise BadRequest(f"Malformed input request: extraneous key [{extra[0]}] is not permitted")
        messages = _messages(body.get("messages"), "toolConfig" in body)
        config = body.get("inferenceConfig") or {}
        max_tokens = config.get("maxTokens") if isinstance(config, dict) else None
        return Conversation(
            model=path_model or "",
            last_user_text=_last_user_text(messages),
            tools=_tools(body.get("toolConfig")),
            tool_results=_trailing_tool_results(messages),
            tool_calls_made=sum(1 for m in messages for block in m["content"] if "toolUse" in block),
            wants_thinking=False,  # Converse has no vendor-neutral reasoning switch
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
            input_tokens=estimate_tokens(body_size),
            answer_schema=_answer_schema(body.get("outputConfig")),
        )

    def render_json(self, reply: Reply, body: Any = None) -> bytes:
        content: list[dict[str, Any]] = []
        if reply.text:
            content.append({"text": reply.text})
        if reply.tool_call is not None:
            call = reply.tool_call
            content.append({"toolUse": {"toolUseId": "tooluse_" + call.id, "name": call.name, "input": call.arguments}})
        answer = {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": _STOP_REASONS[reply.stop],
            "usage": _usage(reply),
            "metrics": {"latencyMs": 1},
        }
        return orjson.dumps(answer)

    def render_stream(self, reply: Reply, body: Any, chunks: int) -> list[bytes]:
        events: list[tuple[str, dict[str, Any]]] = [("messageStart", {"role": "assistant"})]
        index = 0
        if reply.text:  # Converse opens no text block with a contentBlockStart: its first delta does
            events += [
                ("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": piece}})
                for piece in split_text(reply.text, chunks)
            ]
            events.append(("contentBlockStop", {"contentBlockIndex": index}))
            index += 1
        if reply.tool_call is not None:
            call = reply.tool_call
            start = {"toolUse": {"toolUseId": "tooluse_" + call.id, "name": call.name}}
            events.append(("contentBlockStart", {"contentBlockIndex": index, "start": start}))
            events += [
                ("contentBlockDelta", {"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}})
                for piece in split_text(call.arguments_json, chunks)
            ]
            events.append(("contentBlockStop", {"contentBlockIndex": index}))
        events.append(("messageStop", {"stopReason": _STOP_REASONS[reply.stop]}))
        events.append(("metadata", {"usage": _usage(reply), "metrics": {"latencyMs": 1}}))
        return [event_frame(name, payload, n) for n, (name, payload) in enumerate(events)]


def event_frame(name: str, payload: dict[str, Any], n: int = 0) -> bytes:
    """One ConverseStream event: its type in ``:event-type``, its JSON (padded) as the payload."""
    headers = {":event-type": name, ":content-type": "application/json", ":message-type": "event"}
    return encode_message(headers, orjson.dumps({**payload, "p": _PADDING[: 1 + n % len(_PADDING)]}))


def _usage(reply: Reply) -> dict[str, int]:
    usage = {
        "inputTokens": reply.uncached_input_tokens,
        "outputTokens": reply.output_tokens,
        "totalTokens": reply.input_tokens + reply.output_tokens,
    }
    if reply.cached_tokens:
        usage["cacheReadInputTokens"] = reply.cached_tokens
    return usage


def _messages(messages: Any, has_tool_config: bool) -> list[dict[str, Any]]:
    first = messages[0] if isinstance(messages, list) and messages else None
    if not isinstance(first, dict) or first.get("role") != "user":
        raise BadRequest(_STARTS_WITH_USER)
    expected = "user"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), list) or not message["content"]:
            raise BadRequest(f"messages.{i}: a message needs a role and a non-empty content list")
        if message.get("role") != expected:
            raise BadRequest(_ALTERNATE)
        expected = "assistant" if expected == "user" else "user"
        for j, block in enumerate(message["content"]):
            if not isinstance(block, dict) or len(block) != 1:
                raise BadRequest(f"messages.{i}.content.{j}: a content block holds exactly one member")
            text = block.get("text")
            if text is not None and (not isinstance(text, str) or not text.strip()):
                raise BadRequest(_BLANK)
            if ("toolUse" in block or "toolResult" in block) and not has_tool_config:
                raise BadRequest(_NO_TOOL_CONFIG)
    return messages


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message["role"] == "user":
            text = first_words([block["text"] for block in message["content"] if isinstance(block.get("text"), str)])
            if text:
                return text
    return ""


def _trailing_tool_results(messages: list[dict[str, Any]]) -> tuple[str, ...]:
    last = messages[-1]
    if last["role"] != "user":
        return ()
    results = []
    for block in last["content"]:
        result = block.get("toolResult")
        if isinstance(result, dict):
            parts = result.get("content") if isinstance(result.get("content"), list) else []
            texts = [
                p["text"] if isinstance(p.get("text"), str) else orjson.dumps(p["json"]).decode()
                for p in parts
                if isinstance(p, dict) and ("text" in p or "json" in p)
            ]
            results.append("".join(texts))
    return tuple(results)


def _tools(config: Any) -> tuple[Tool, ...]:
    if config is None:
        return ()
    tools = config.get("tools") if isinstance(config, dict) else None
    if not isinstance(tools, list) or not tools:
        raise BadRequest("toolConfig.tools: at least one tool is required")
    out = []
    for tool in tools:
        spec = tool.get("toolSpec") if isinstance(tool, dict) else None
        schema = spec.get("inputSchema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict) or not isinstance(schema.get("json"), dict) or not spec.get("name"):
            raise BadRequest("toolConfig.tools: each tool needs a toolSpec with a name and inputSchema.json")
        if "description" in spec and not spec["description"]:
            raise BadRequest("toolConfig.tools.toolSpec.description: must not be empty")
        out.append(Tool(str(spec["name"]), schema["json"]))
    return tuple(out)


def _answer_schema(config: Any) -> dict | None:
    fmt = config.get("textFormat") if isinstance(config, dict) else None
    structure = fmt.get("structure") if isinstance(fmt, dict) else None
    spec = structure.get("jsonSchema") if isinstance(structure, dict) else None
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, str):
        return None
    try:
        parsed = orjson.loads(schema)
    except orjson.JSONDecodeError:
        raise BadRequest("outputConfig.textFormat: the JSON schema is not valid JSON") from None
    return parsed if isinstance(parsed, dict) else None
