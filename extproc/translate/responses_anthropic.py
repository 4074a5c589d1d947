"""Client speaks the OpenAI Responses API, provider speaks Anthropic Messages.

This is the one codec between Responses and the hub format (Anthropic Messages) on the client
side: a Chat Completions or Gemini provider is reached through it too (extproc.translate.chained
runs this translator's Anthropic body through that provider's Anthropic translator, and this one
reads the Anthropic answer that translator gives back).

Request: ``instructions`` and system/developer messages -> ``system`` text blocks (hoisted, in
order); user and assistant messages -> text, image and document blocks; ``function_call`` ->
``tool_use`` (the call id kept as the block id); ``function_call_output`` -> ``tool_result``; items
merge into alternating turns as Anthropic requires (tool results first in their user turn).
Choices made where the formats differ:

- ``max_tokens`` is required by Anthropic: ``max_output_tokens``, else the target's own limit when
  known, else 4096 (plus the thinking budget); clamped to the target's limit.
- ``reasoning.effort`` -> ``thinking.budget_tokens`` on the OpenAI effort scale (as for Chat
  clients: extproc.translate.openai_anthropic), only for targets with the ``thinking`` capability,
  not with a forced tool, not in the middle of a tool loop (Anthropic then wants the previous turn's
  signed thinking, which never reached the client). With thinking on, temperature/top_p are dropped.
- Reasoning items are dropped: a summary is no signed thinking, and ``encrypted_content`` belongs to
  the provider that wrote it (logged).
- ``text.format`` json_schema / json_object -> an instruction appended to the system prompt (as for
  Chat clients: Anthropic has no JSON mode every model takes).
- Function tools -> tools (``strict`` dropped: Anthropic's schema check is its own). A
  ``namespace`` of tools is left out (logged). ``web_search`` (the Codex CLI offers it on every
  request) -> Anthropic's web search server tool for targets with the ``web_search`` capability
  (an organisation must enable it at Anthropic), else left out (logged), and always left out with
  ``external_web_access: false`` (Codex's cached search: Anthropic has no cached index). Each
  search comes back as a ``web_search_call`` item (its results stay at Anthropic), and
  ``web_search_call`` items in the input are left out. A freeform ``custom`` tool (Codex's
  ``apply_patch``) -> a tool taking ``{"input": string}``, its grammar told in the description,
  and its calls go back as ``custom_tool_call`` items; Codex's client-run ``tool_search`` is left
  out (logged: the tools it would load cannot be). Other built-in tools (file search, computer
  use...) are refused with a 400.
- ``tool_choice`` allowed_tools -> only those tools offered; ``parallel_tool_calls: false`` ->
  ``disable_parallel_tool_use``.
- ``input_image``: data URLs -> base64 images, other URLs -> URL images; ``input_file``: PDF data
  -> a base64 document, text data -> a text document, ``file_url`` -> a URL document; ``file_id``
  (OpenAI's file store) is refused.
- ``user`` -> ``metadata.user_id`` (SHA-256 hex when over 256 characters); ``store``, ``include``,
  ``metadata``, ``prompt_cache_key``, ``client_metadata``, ``truncation``... are accepted and not
  sent (stored responses come later).

Response: an Anthropic Message -> a ``response`` object (status completed, or incomplete with
``max_output_tokens`` / ``content_filter``), or its stream -> the typed events
(extproc.translate.responses_sse). Each text block is a ``message`` item, each thinking block a
``reasoning`` item with the thinking as its summary, each tool_use a ``function_call`` item, each
web search a ``web_search_call`` item.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from extproc.translate import anthropic_schema as A
from extproc.translate import openai_schema as O
from extproc.translate import responses_schema as R
from extproc.translate import to_anthropic as T
from extproc.translate.base import (
    Api,
    ClientRequestError,
    ResponseContext,
    Target,
    TranslatedChunk,
    UpstreamProtocolError,
    UpstreamRequest,
    Usage,
)
from extproc.translate.buffering import JsonOrSseResponse
from extproc.translate.client_request import ResponsesRequest
from extproc.translate.responses_sse import ResponsesStream
from extproc.translate.wire import error_message, short

log = logging.getLogger("ccr.extproc.translate")

_HEADERS = (("anthropic-version", A.ANTHROPIC_VERSION),)
_TEXT_PARTS = ("input_text", "output_text")
_WEB_SEARCH_TOOLS = ("web_search", "web_search_preview")
_WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search"}  # Anthropic's server tool


def anthropic_body(request: ResponsesRequest, target: Target) -> dict[str, Any]:
    """The Anthropic Messages body for ``request`` (also what the gateway counts for
    /v1/responses/input_tokens when no provider counts)."""
    return _RequestBuilder(target).build(request)


def custom_tools(request: ResponsesRequest) -> frozenset[str]:
    """Names of the freeform (``custom``) tools: their calls go back as custom_tool_call items."""
    return frozenset(tool["name"] for tool in request.hosted_tools if tool["type"] == "custom")


class _RequestBuilder:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.system: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.dropped: list[str] = []  # what was left out, for one log line

    def build(self, request: ResponsesRequest) -> dict[str, Any]:
        target = self.target
        if request.instructions:
            self.system.append({"type": "text", "text": request.instructions})
        for i, item in enumerate(request.items):
            self.item(f"input.{i}", item)
        if not self.messages:
            raise ClientRequestError("input: no user or assistant message with content")
        self.response_format(request)

        out: dict[str, Any] = {"model": target.model}
        if self.system:
            out["system"] = self.system
        out["messages"] = self.messages
        tools = self.tools(request)
        choice = T.tool_choice(request.tool_choice, request.parallel_tool_calls) if tools else None
        if tools:
            out["tools"] = tools
            if choice is not None:
                out["tool_choice"] = choice

        budget = T.thinking_budget(target, self.messages, request.reasoning_effort, choice)
        max_tokens = request.max_tokens or target.max_output_tokens or T.DEFAULT_MAX_TOKENS + (budget or 0)
        T.settle_limits(out, target, max_tokens, budget, request.temperature, request.top_p)
        metadata = T.user_metadata(request.user)
        if metadata is not None:
            out["metadata"] = metadata
        if target.stream:
            out["stream"] = True
        if self.dropped:
            log.info("responses request: left out for an Anthropic provider: %s", "; ".join(self.dropped))
        return out

    # --- input items --------------------------------------------------------------------------

    def push(self, role: str, blocks: list[dict[str, Any]]) -> None:
        """Blocks onto the conversation: consecutive items of one role make one turn, and a user
        turn's tool results come before its other blocks (Anthropic refuses them after)."""
        if not blocks:
            return
        if not self.messages or self.messages[-1]["role"] != role:
            self.messages.append({"role": role, "content": blocks})
            return
        content = self.messages[-1]["content"]
        if role == "user" and blocks[0]["type"] == "tool_result":
            at = 0
            while at < len(content) and content[at]["type"] == "tool_result":
                at += 1
            content[at:at] = blocks
        else:
            content.extend(blocks)

    def item(self, path: str, item: Mapping[str, Any]) -> None:
        kind = item.get("type", "message")
        if kind == "message":
            role, content = item["role"], item["content"]
            if role in ("system", "developer"):
                self.system.extend(self.blocks(path + ".content", content, text_only=True))
            elif role == "user":
                self.push("user", self.blocks(path + ".content", content, text_only=False))
            else:
                blocks = self.blocks(path + ".content", content, text_only=True)
                self.push("assistant", [b for b in blocks if b["text"].strip()])
        elif kind == "function_call":
            tool_use = {"type": "tool_use", "id": item["call_id"], "name": item["name"]}
            tool_use["input"] = O.parse_arguments(item["arguments"])
            self.push("assistant", [tool_use])
        elif kind == "custom_tool_call":
            tool_use = {
                "type": "tool_use",
                "id": item["call_id"],
                "name": item["name"],
                "input": {"input": item["input"]},
            }
            self.push("assistant", [tool_use])
        elif kind in ("function_call_output", "custom_tool_call_output"):
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": item["call_id"]}
            output = item["output"]
            if isinstance(output, str):
                if output:
                    result["content"] = output
            else:
                blocks = self.blocks(path + ".output", output, text_only=False)
                if blocks:
                    result["content"] = blocks
            self.push("user", [result])
        elif kind == "reasoning":
            if item.get("encrypted_content"):
                self.dropped.append(f"{path}: a reasoning item's encrypted_content (another provider's)")
        elif kind == "web_search_call":
            self.dropped.append(f"{path}: a web_search_call item")
        else:
            raise ClientRequestError(f"{path}.type: {short(kind)} items cannot be sent to this provider")

    def blocks(self, path: str, content: Any, text_only: bool) -> list[dict[str, Any]]:
        """A message's content (a string or parts) -> Anthropic blocks; empty texts left out
        (Anthropic refuses them)."""
        if isinstance(content, str):
            return [{"type": "text", "text": content}] if content else []
        out: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            kind = part["type"]
            if kind in _TEXT_PARTS or kind == "refusal":
                text = part["text" if kind != "refusal" else "refusal"]
                if text:
                    out.append({"type": "text", "text": text})
            elif text_only:
                raise ClientRequestError(f"{path}.{j}: {kind} parts are only allowed in user messages and tool outputs")
            elif kind == "input_image":
                out.append(_image(f"{path}.{j}", part))
            else:
                out.append(_document(f"{path}.{j}", part))
        return out

    def response_format(self, request: ResponsesRequest) -> None:
        instruction = T.json_instruction(request.response_format, request.response_schema)
        if instruction is not None:
            self.system.append(instruction)

    # --- tools --------------------------------------------------------------------------------

    def tools(self, request: ResponsesRequest) -> list[dict[str, Any]]:
        others: list[dict[str, Any]] = []
        for hosted in request.hosted_tools:
            kind = hosted["type"]
            if kind == "custom":
                others.append(_custom_tool(hosted))
            elif kind == "namespace":
                self.dropped.append(f"tool namespace {short(hosted.get('name'))}")
            elif kind == "tool_search" and hosted.get("execution") == "client":
                self.dropped.append("the tool_search tool (its deferred tools cannot be loaded)")
            elif kind in _WEB_SEARCH_TOOLS:
                if "web_search" in self.target.capabilities and hosted.get("external_web_access") is not False:
                    others.append(_WEB_SEARCH)
                else:
                    self.dropped.append(f"the {kind} tool")
            else:
                raise ClientRequestError(
                    f"tools: {short(kind)} tools cannot be served by this provider; only function tools can"
                )
        if request.hosted_choice is not None:
            raise ClientRequestError(
                f"tool_choice.type: {short(request.hosted_choice)} cannot be served by this provider; "
                "only function tools can"
            )
        choice = request.tool_choice
        allowed = set(choice.allowed) if choice is not None and choice.allowed else None
        functions = [T.tool(tool) for tool in request.tools if allowed is None or tool.name in allowed]
        return functions + [tool for tool in others if allowed is None or tool["name"] in allowed]


def _custom_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A freeform tool: its input is one string, in the grammar the tool names (told to the model)."""
    description = tool.get("description") if isinstance(tool.get("description"), str) else ""
    fmt = tool.get("format") or {}
    if fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
        syntax = fmt.get("syntax", "lark")
        description += f"\n\nPass that text itself as the `input` string; it follows this {syntax} grammar:\n"
        description += fmt["definition"]
    schema = {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}
    out: dict[str, Any] = {"name": tool["name"]}
    if description:
        out["description"] = description.strip()
    out["input_schema"] = schema
    return out


def _data_url(path: str, url: str) -> tuple[str, str]:
    parsed = O.parse_data_url(url)
    if parsed is None:
        raise ClientRequestError(f"{path}: a data URL must be data:<media type>;base64,<data>")
    return parsed


def _image(path: str, part: Mapping[str, Any]) -> dict[str, Any]:
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        raise ClientRequestError(f"{path}.file_id: uploaded files are not served by this gateway; send image_url")
    if url.startswith("data:"):
        media_type, data = _data_url(path + ".image_url", url)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _document(path: str, part: Mapping[str, Any]) -> dict[str, Any]:
    filename = part.get("filename")
    block: dict[str, Any] = {"type": "document"}
    data, url = part.get("file_data"), part.get("file_url")
    if isinstance(data, str) and data:
        if data.startswith("data:"):
            media_type, data = _data_url(path + ".file_data", data)
        else:  # bare base64, as OpenAI also takes it: a PDF
            media_type = "application/pdf"
        if media_type == "application/pdf":
            block["source"] = {"type": "base64", "media_type": media_type, "data": data}
        elif media_type.startswith("text/"):
            try:
                text = base64.b64decode(data, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise ClientRequestError(f"{path}.file_data: not base64 of UTF-8 text") from None
            block["source"] = {"type": "text", "media_type": "text/plain", "data": text}
        else:
            raise ClientRequestError(
                f"{path}.file_data: {short(media_type)} files cannot be sent to this provider (PDF and text can)"
            )
    elif isinstance(url, str) and url:
        block["source"] = {"type": "url", "url": url}
    else:
        raise ClientRequestError(f"{path}.file_id: uploaded files are not served by this gateway; send file_data")
    if isinstance(filename, str) and filename:
        block["title"] = filename
    return block


# --- the answer ---------------------------------------------------------------------------------


def response_from_message(
    message: Any, created_at: int, fallback_model: str, custom: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], Usage]:
    """A whole Anthropic Message -> a ``response`` object (and the provider's usage). ``custom``:
    the freeform tools' names."""
    if not isinstance(message, dict):
        raise UpstreamProtocolError("message is not a JSON object")
    if message.get("type") == "error":
        raise UpstreamProtocolError(f"upstream error: {error_message(message) or 'unknown'}")
    content = message.get("content")
    if not isinstance(content, list):
        raise UpstreamProtocolError("message has no content array")
    rid = R.response_id(message.get("id"))
    output: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        position = len(output)
        if kind == "text" and isinstance(block.get("text"), str):
            output.append(R.message_item(R.item_id("msg", rid, position), [R.text_part(block["text"])]))
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            output.append(R.reasoning_item(R.item_id("rs", rid, position), [R.summary_part(block["thinking"])]))
        elif kind == "tool_use" and block.get("name") in custom:
            call_id = block.get("id")
            text = R.custom_input(block.get("input"))
            iid = R.item_id("ctc", rid, position)
            output.append(R.custom_call_item(iid, call_id if isinstance(call_id, str) else "", block["name"], text))
        elif kind == "tool_use":
            arguments = block.get("input")
            text = orjson.dumps(arguments).decode() if isinstance(arguments, dict) and arguments else "{}"
            call_id, name = block.get("id"), block.get("name")
            output.append(
                R.function_call_item(
                    R.item_id("fc", rid, position),
                    call_id if isinstance(call_id, str) else "",
                    name if isinstance(name, str) else "",
                    text,
                )
            )
        elif kind == "server_tool_use" and block.get("name") == "web_search":
            query = R.search_query(block.get("input"))
            output.append(R.web_search_item(R.item_id("ws", rid, position), query))
    usage = A.usage_from_anthropic(message.get("usage"))
    model = message.get("model")
    reason = R.incomplete_reason(message.get("stop_reason"))
    response = R.response_object(
        rid,
        created_at,
        model if isinstance(model, str) and model else fallback_model,
        "incomplete" if reason else "completed",
        output,
        usage,
        reason,
    )
    return response, usage


class ResponsesToAnthropic(JsonOrSseResponse[ResponsesStream]):
    """One instance per request; not thread-safe. ``clock`` gives ``created_at`` (injectable for
    tests). Works as the outer translator of a chain (extproc.translate.chained): its request is an
    Anthropic body, and its response phases read Anthropic JSON or SSE, split anywhere."""

    client_api = Api.RESPONSES
    provider_api = Api.ANTHROPIC
    rewrites_response = True

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._clock = clock
        # Freeform tools' names: from the request, or from the ResponseContext a translator primed
        # for a fallback chain's answer (or the decision hop's /respond) is given.
        self._custom: frozenset[str] = frozenset()

    def request(self, request: ResponsesRequest, target: Target) -> UpstreamRequest:
        upstream = anthropic_body(request, target)
        self._custom = custom_tools(request)
        self._model = target.model
        self._stream = self._upstream_sse = target.stream
        return UpstreamRequest(path=target.base_path + "/v1/messages", body=orjson.dumps(upstream), headers=_HEADERS)

    def prime(self, context: ResponseContext) -> None:
        self._model = context.model
        self._stream = self._upstream_sse = context.stream
        self._custom = context.custom_tools

    def _new_stream_machine(self) -> ResponsesStream:
        return ResponsesStream(self._model, int(self._clock()), self._custom)

    def _replay_as_stream(self, machine: ResponsesStream, message: Any) -> TranslatedChunk:
        return machine.replay(A.events_from_message, message)

    def _whole(self, message: Any) -> TranslatedChunk:
        response, usage = response_from_message(message, int(self._clock()), self._model, self._custom)
        return TranslatedChunk(body=orjson.dumps(response), usage=usage)
