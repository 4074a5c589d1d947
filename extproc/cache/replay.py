"""Cached answers as streams and streams as cached answers, in the client's API (sans-IO).

The cache keeps one form of an answer: the JSON a non-streaming client gets (extproc.cache.entry).

- ``sse_from_answer`` replays it to a streaming client as the complete stream that client's SDK
  expects: every event in order, the original id, model, stop reason and usage, tool calls intact.
- ``answer_from_sse`` goes the other way for a stream the gateway sent a client, so a streamed
  answer can be stored. Only a finished stream is reassembled: no terminal event (Anthropic
  ``message_stop``; OpenAI a ``finish_reason`` on every choice; Responses ``response.completed``
  or ``response.incomplete``), an error event (Responses ``response.failed``), anything out of
  order or unparseable, or tool input that is not a JSON object -> None. A stream that cannot be
  stored faithfully is not stored at all: a miss costs one provider call, a wrong hit costs a
  wrong answer.

Text is replayed in pieces of at most ``PIECE_CHARS`` characters rather than in one delta. A hit
comes out at once anyway, so the pieces buy no latency; they bound the length of an SSE line (a
long answer, or a file written through a tool call, in one ``data:`` line breaks clients whose line
reader has a fixed buffer: Go's ``bufio.Scanner`` stops at 64 KiB; JSON escaping makes 4096
characters 24 KiB at most), for 100-200 bytes of framing a piece (3-5% of a long answer). Tool
input JSON is cut the same way, anywhere (clients join ``partial_json`` before parsing it).

A Responses answer (a ``response`` object) is replayed as the typed events the gateway's own
Responses stream writes (extproc.translate.responses_sse, framed by its ``event_frame``): the
same events, fields and ``sequence_number`` order for the items that stream makes (message,
reasoning summary, function call, custom tool call, web search), so that a stream replayed from
the JSON a translator wrote is the stream that translator would have sent; any other item (a
Responses provider's own: file search, an MCP call...) is sent whole in its added and done events.
The ``response`` object itself goes out as it was stored: the cached usage, ids and status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from extproc.sse import SSEDecoder, SSEEvent, encode_event
from extproc.translate.base import Api
from extproc.translate.responses_schema import event_frame

PIECE_CHARS = 4096

_PING_FRAME = b'event: ping\ndata: {"type":"ping"}\n\n'
_DONE_FRAME = b"data: [DONE]\n\n"
_TOOL_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})  # input streamed as partial_json
_DELTA_USAGE = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "server_tool_use")
_STREAMED_MESSAGE_KEYS = frozenset({"role", "content", "reasoning_content", "reasoning", "refusal", "tool_calls"})
_COMPLETION_EXTRAS = ("system_fingerprint", "service_tier")  # top-level fields every chunk repeats


def sse_from_answer(api: Api | str, answer: Mapping[str, Any], include_usage: bool = False) -> bytes:
    """The whole stream replaying ``answer`` (the non-streaming JSON answer of ``api``).
    ``include_usage``: the OpenAI client asked for ``stream_options.include_usage`` (a final chunk
    with the usage); Anthropic streams always carry usage. Raises ValueError when ``answer`` is not
    an answer of that API (a stored entry of the wrong shape: the caller treats it as a miss)."""
    api = Api(api)
    if api is Api.ANTHROPIC:
        return b"".join(_anthropic_frames(answer))
    if api is Api.OPENAI:
        return b"".join(_openai_frames(answer, include_usage))
    if api is Api.RESPONSES:
        return b"".join(_ResponsesReplay().frames(answer))
    raise ValueError(f"{api.value} is not a client API")


def answer_from_sse(api: Api | str, raw: bytes) -> dict[str, Any] | None:
    """The non-streaming answer a finished client stream of ``api`` adds up to; None for a stream
    that did not finish, failed, or cannot be reassembled exactly."""
    decoder = SSEDecoder()
    events = decoder.feed(raw) + decoder.close()
    try:
        if Api(api) is Api.ANTHROPIC:
            return _anthropic_answer(events)
        if Api(api) is Api.OPENAI:
            return _openai_answer(events)
        if Api(api) is Api.RESPONSES:
            return _responses_answer(events)
    except (_Unstorable, orjson.JSONDecodeError, orjson.JSONEncodeError):  # encode: nested past orjson's depth
        return None
    raise ValueError(f"{api} is not a client API")


def pieces(text: str) -> list[str]:
    return [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)]


class _Unstorable(Exception):
    """The stream is malformed, unfinished or failed: it is not stored."""


# --- Anthropic --------------------------------------------------------------------------------


def _frame(payload: dict[str, Any]) -> bytes:
    return encode_event(orjson.dumps(payload), event=payload["type"])


def _anthropic_frames(message: Mapping[str, Any]) -> list[bytes]:
    content = message.get("content") if isinstance(message, Mapping) else None
    if not isinstance(content, list) or message.get("type", "message") != "message":
        raise ValueError("not an Anthropic message")
    usage = message.get("usage")
    usage = dict(usage) if isinstance(usage, Mapping) else {"input_tokens": 0}
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 0},
    }
    if "stop_details" in message:
        start["stop_details"] = None
    frames = [_frame({"type": "message_start", "message": start}), _PING_FRAME]
    for index, block in enumerate(content):
        if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
            raise ValueError(f"content block {index} has no type")
        frames.extend(_block_frames(index, block))
    delta: dict[str, Any] = {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")}
    for key in ("stop_details", "container"):
        if key in message:
            delta[key] = message[key]
    # Usage counts on message_delta are cumulative totals (they overwrite message_start's).
    delta_usage = {key: usage[key] for key in _DELTA_USAGE if key in usage}
    delta_usage["output_tokens"] = usage.get("output_tokens", 0)
    frames.append(_frame({"type": "message_delta", "delta": delta, "usage": delta_usage}))
    frames.append(_frame({"type": "message_stop"}))
    return frames


def _block_frames(index: int, block: Mapping[str, Any]) -> list[bytes]:
    kind = block["type"]
    deltas: list[dict[str, Any]] = []
    if kind == "text":
        start = {**block, "text": ""}
        citations = block.get("citations")
        if isinstance(citations, list):
            start["citations"] = []
            deltas += [{"type": "citations_delta", "citation": citation} for citation in citations]
        deltas += [{"type": "text_delta", "text": piece} for piece in pieces(_text(block, "text"))]
    elif kind == "thinking":
        start = {**block, "thinking": "", "signature": ""}
        deltas += [{"type": "thinking_delta", "thinking": piece} for piece in pieces(_text(block, "thinking"))]
        signature = block.get("signature")
        if signature:  # an empty signature (thinking from a non-Anthropic provider) is never sent
            deltas.append({"type": "signature_delta", "signature": signature})
    elif kind in _TOOL_BLOCKS:
        start = {**block, "input": {}}
        partial_json = orjson.dumps(block.get("input", {})).decode()
        deltas += [{"type": "input_json_delta", "partial_json": piece} for piece in pieces(partial_json)]
    else:  # redacted_thinking, server tool results...: the API sends these whole in their start
        start = dict(block)
    frames = [_frame({"type": "content_block_start", "index": index, "content_block": start})]
    frames += [_frame({"type": "content_block_delta", "index": index, "delta": delta}) for delta in deltas]
    frames.append(_frame({"type": "content_block_stop", "index": index}))
    return frames


def _text(block: Mapping[str, Any], key: str) -> str:
    value = block.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"{block['type']} block: {key} is not a string")
    return value


def _anthropic_answer(events: list[SSEEvent]) -> dict[str, Any] | None:
    message: dict[str, Any] | None = None
    blocks: list[dict[str, Any]] = []
    partial_json: dict[int, list[str]] = {}
    open_index: int | None = None
    for event in events:
        if not event.data:
            continue
        payload = _object(orjson.loads(event.data))
        kind = payload.get("type")
        if event.event == "error" or kind == "error":
            return None
        if kind == "ping":
            continue
        if message is None:
            if kind != "message_start":
                raise _Unstorable
            message = dict(_object(payload.get("message")))
            message["usage"] = dict(_object(message.get("usage", {})))
        elif kind == "content_block_start":
            if open_index is not None or payload.get("index") != len(blocks):
                raise _Unstorable
            open_index = len(blocks)
            blocks.append(orjson.loads(orjson.dumps(_object(payload.get("content_block")))))  # a copy
        elif kind == "content_block_delta":
            index = payload.get("index")
            if index != open_index or index is None:
                raise _Unstorable
            _apply_block_delta(blocks[index], index, _object(payload.get("delta")), partial_json)
        elif kind == "content_block_stop":
            if payload.get("index") != open_index:
                raise _Unstorable
            open_index = None
        elif kind == "message_delta":
            if open_index is not None:
                raise _Unstorable
            message.update(_object(payload.get("delta")))
            usage = payload.get("usage")
            if usage is not None:
                message["usage"].update({k: v for k, v in _object(usage).items() if v is not None})
        elif kind == "message_stop":
            if open_index is not None:
                raise _Unstorable
            for index, parts in partial_json.items():
                blocks[index]["input"] = _tool_input("".join(parts), blocks[index].get("input"))
            message["content"] = blocks
            return message
        elif kind == "message_start":
            raise _Unstorable
        # Any other event type is one a client must ignore (the API may add some): so do we.
    return None  # no message_stop: unfinished


def _apply_block_delta(
    block: dict[str, Any], index: int, delta: Mapping[str, Any], partial_json: dict[int, list[str]]
) -> None:
    kind, block_kind = delta.get("type"), block.get("type")
    if kind == "text_delta" and block_kind == "text":
        block["text"] = _string(block.get("text")) + _string(delta.get("text"))
    elif kind == "thinking_delta" and block_kind == "thinking":
        block["thinking"] = _string(block.get("thinking")) + _string(delta.get("thinking"))
    elif kind == "signature_delta" and block_kind == "thinking":
        block["signature"] = _string(delta.get("signature"))
    elif kind == "input_json_delta" and block_kind in _TOOL_BLOCKS:
        partial_json.setdefault(index, []).append(_string(delta.get("partial_json")))
    elif kind == "citations_delta" and block_kind == "text":
        if block.get("citations") is None:
            block["citations"] = []
        block["citations"].append(delta.get("citation"))
    else:
        raise _Unstorable  # a delta we cannot add up would be lost from the stored answer


def _tool_input(raw: str, started_with: Any) -> Any:
    if not raw.strip():
        return started_with if started_with is not None else {}
    value = orjson.loads(raw)
    if not isinstance(value, dict):
        raise _Unstorable
    return value


def _object(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _Unstorable
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Unstorable
    return value


# --- OpenAI -----------------------------------------------------------------------------------


def _openai_frames(completion: Mapping[str, Any], include_usage: bool) -> list[bytes]:
    choices = completion.get("choices") if isinstance(completion, Mapping) else None
    if not isinstance(choices, list) or not all(isinstance(c, Mapping) for c in choices):
        raise ValueError("not a chat completion")
    completion_id, created, model = completion.get("id"), completion.get("created"), completion.get("model")
    if not isinstance(completion_id, str) or not isinstance(created, int) or not isinstance(model, str):
        raise ValueError("chat completion without id, created or model")
    base: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
    for key in _COMPLETION_EXTRAS:
        if key in completion:
            base[key] = completion[key]
    if include_usage:
        base["usage"] = None  # every chunk but the last says so, as OpenAI's do

    def chunk(index: int, delta: dict[str, Any], finish_reason: Any = None, logprobs: Any = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

    frames: list[bytes] = []
    for position, choice in enumerate(choices):
        index = choice.get("index", position)
        message = choice.get("message")
        if not isinstance(message, Mapping):
            raise ValueError(f"choice {position} has no message")
        frames += [chunk(index, delta) for delta in _message_deltas(message)]
        frames.append(chunk(index, {}, choice.get("finish_reason"), choice.get("logprobs")))
    if include_usage and completion.get("usage") is not None:
        frames.append(b"data: " + orjson.dumps({**base, "choices": [], "usage": completion["usage"]}) + b"\n\n")
    frames.append(_DONE_FRAME)
    return frames


def _message_deltas(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The deltas one choice's message is streamed as: the role first (with the fields that are
    null or empty, as OpenAI's first chunk carries them), then reasoning, content, refusal and
    tool calls in pieces, then any other field whole."""
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise ValueError("message content is neither a string nor null")
    first: dict[str, Any] = {"role": message.get("role", "assistant"), "content": "" if content is not None else None}
    rest: list[dict[str, Any]] = []
    for key, value in message.items():
        if key in ("role", "content"):
            continue
        if value is None or value == "" or value == [] or value == {}:
            first[key] = value
        elif key not in _STREAMED_MESSAGE_KEYS:
            rest.append({key: value})
    deltas = [first]
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str):
            deltas += [{key: piece} for piece in pieces(value)]
    deltas += [{"content": piece} for piece in pieces(content or "")]
    refusal = message.get("refusal")
    if isinstance(refusal, str):
        deltas += [{"refusal": piece} for piece in pieces(refusal)]
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for position, call in enumerate(calls):
            deltas += _tool_call_deltas(position, call)
    return deltas + rest


def _tool_call_deltas(position: int, call: Any) -> list[dict[str, Any]]:
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping):
        raise ValueError(f"tool call {position} has no function")
    arguments = function.get("arguments") or ""
    if not isinstance(arguments, str):
        raise ValueError(f"tool call {position}: arguments are not a string")
    head = {
        "index": position,
        "id": call.get("id"),
        "type": call.get("type", "function"),
        "function": {"name": function.get("name"), "arguments": ""},
    }
    deltas = [{"tool_calls": [head]}]
    deltas += [{"tool_calls": [{"index": position, "function": {"arguments": p}}]} for p in pieces(arguments)]
    return deltas


def _openai_answer(events: list[SSEEvent]) -> dict[str, Any] | None:
    completion: dict[str, Any] | None = None
    choices: dict[int, dict[str, Any]] = {}
    calls: dict[int, dict[int, dict[str, Any]]] = {}  # choice index -> tool-call index -> call
    usage: Any = None
    for event in events:
        data = event.data
        if not data:
            continue
        if data == "[DONE]":
            break
        chunk = _object(orjson.loads(data))
        if event.event == "error" or chunk.get("error") is not None:
            return None
        if completion is None:
            completion = {"id": chunk.get("id"), "object": "chat.completion", "created": chunk.get("created")}
            completion["model"] = chunk.get("model")
            completion.update({key: chunk[key] for key in _COMPLETION_EXTRAS if key in chunk})
        if chunk.get("usage") is not None:
            usage = chunk["usage"]
        chunk_choices = chunk.get("choices") or []
        if not isinstance(chunk_choices, list):
            raise _Unstorable
        for choice in chunk_choices:
            _add_choice(_object(choice), choices, calls)
    if completion is None or not choices or any(c["finish_reason"] is None for c in choices.values()):
        return None  # no finish_reason: unfinished
    completion["choices"] = [choices[index] for index in sorted(choices)]
    if usage is not None:
        completion["usage"] = usage
    return completion


def _add_choice(
    choice: Mapping[str, Any], choices: dict[int, dict[str, Any]], calls: dict[int, dict[int, dict[str, Any]]]
) -> None:
    index = choice.get("index", 0)
    if not isinstance(index, int):
        raise _Unstorable
    state = choices.get(index)
    if state is None:
        state = choices[index] = {"index": index, "message": {}, "logprobs": None, "finish_reason": None}
    message = state["message"]
    for key, value in _object(choice.get("delta") or {}).items():
        if key == "role":
            if value is not None:
                message["role"] = value  # some servers repeat it: set, never joined
        elif key == "tool_calls" and isinstance(value, list):
            _add_tool_calls(message, value, calls.setdefault(index, {}))
        else:
            _merge(message, key, value)
    if choice.get("logprobs") is not None:
        _merge(state, "logprobs", choice["logprobs"])
    if choice.get("finish_reason") is not None:
        state["finish_reason"] = choice["finish_reason"]


def _add_tool_calls(message: dict[str, Any], fragments: list[Any], calls: dict[int, dict[str, Any]]) -> None:
    if not isinstance(message.get("tool_calls"), list):
        message["tool_calls"] = []
    for fragment in fragments:
        fragment = _object(fragment)
        index = fragment.get("index")
        if not isinstance(index, int):
            raise _Unstorable
        call = calls.get(index)
        if call is None:
            call = calls[index] = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            message["tool_calls"].append(call)
        if fragment.get("id"):
            call["id"] = fragment["id"]
        if fragment.get("type"):
            call["type"] = fragment["type"]
        function = _object(fragment.get("function") or {})
        name = function.get("name")
        if name and not call["function"]["name"]:
            call["function"]["name"] = _string(name)  # sent once; a repeat is not appended
        arguments = function.get("arguments")
        if arguments:
            call["function"]["arguments"] += _string(arguments)


def _merge(target: dict[str, Any], key: str, value: Any) -> None:
    """A delta's field into the accumulated object: strings and lists are appended, objects merged
    field by field, null never overwrites."""
    old = target.get(key)
    if old is None:
        target[key] = orjson.loads(orjson.dumps(value)) if isinstance(value, dict | list) else value
    elif value is None:
        return
    elif isinstance(old, str) and isinstance(value, str):
        target[key] = old + value
    elif isinstance(old, list) and isinstance(value, list):
        old.extend(value)
    elif isinstance(old, dict) and isinstance(value, dict):
        for inner_key, inner_value in value.items():
            _merge(old, inner_key, inner_value)
    else:
        target[key] = value


# --- OpenAI Responses -------------------------------------------------------------------------

_RESPONSE_ENDS = {"completed": "response.completed", "incomplete": "response.incomplete"}


class _ResponsesReplay:
    """One ``response`` object as its typed events, ``sequence_number`` from 0."""

    def __init__(self) -> None:
        self.sequence = 0
        self.frames_out: list[bytes] = []

    def emit(self, kind: str, **fields: Any) -> None:
        payload = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        self.frames_out.append(event_frame(kind, payload))

    def frames(self, response: Mapping[str, Any]) -> list[bytes]:
        if not isinstance(response, Mapping) or response.get("object") != "response":
            raise ValueError("not a Responses response object")
        output = response.get("output")
        if not isinstance(output, list):
            raise ValueError("a response without its output list")
        status = response.get("status")
        end = _RESPONSE_ENDS.get(status) if isinstance(status, str) else None
        if end is None:
            raise ValueError(f"a response with status {response.get('status')!r} is no finished answer")
        opening = {**response, "status": "in_progress", "output": [], "usage": None}
        opening.update(incomplete_details=None, error=None)
        self.emit("response.created", response=opening)
        self.emit("response.in_progress", response=opening)
        for index, item in enumerate(output):
            if not isinstance(item, Mapping) or not isinstance(item.get("type"), str):
                raise ValueError(f"output item {index} has no type")
            self.item(index, item)
        self.emit(end, response=dict(response))
        return self.frames_out

    def item(self, index: int, item: Mapping[str, Any]) -> None:
        kind, where = item["type"], {"item_id": item.get("id"), "output_index": index}
        if kind == "message" and isinstance(item.get("content"), list):
            self.emit(
                "response.output_item.added", output_index=index, item={**item, "content": [], "status": "in_progress"}
            )
            for part_index, part in enumerate(item["content"]):
                self.message_part(where, part_index, part)
        elif kind == "reasoning" and isinstance(item.get("summary"), list):
            added = {**item, "summary": []}
            if isinstance(item.get("content"), list):
                added["content"] = []
            self.emit("response.output_item.added", output_index=index, item=added)
            for summary_index, part in enumerate(item["summary"]):
                text = _text(part, "text")
                self.emit(
                    "response.reasoning_summary_part.added",
                    **where,
                    summary_index=summary_index,
                    part={**part, "text": ""},
                )
                for piece in pieces(text):
                    self.emit(
                        "response.reasoning_summary_text.delta", **where, summary_index=summary_index, delta=piece
                    )
                self.emit("response.reasoning_summary_text.done", **where, summary_index=summary_index, text=text)
                self.emit("response.reasoning_summary_part.done", **where, summary_index=summary_index, part=part)
            for content_index, part in enumerate(item.get("content") or []):
                text = _text(part, "text")
                for piece in pieces(text):
                    self.emit("response.reasoning_text.delta", **where, content_index=content_index, delta=piece)
                self.emit("response.reasoning_text.done", **where, content_index=content_index, text=text)
        elif kind == "function_call":
            arguments = _text(item, "arguments")
            self.emit(
                "response.output_item.added",
                output_index=index,
                item={**item, "arguments": "", "status": "in_progress"},
            )
            # A call without arguments ("{}") is all in its done event, as the gateway streams it.
            for piece in pieces(arguments) if arguments != "{}" else ():
                self.emit("response.function_call_arguments.delta", **where, delta=piece)
            self.emit("response.function_call_arguments.done", **where, arguments=arguments)
        elif kind == "custom_tool_call":
            text = _text(item, "input")
            self.emit("response.output_item.added", output_index=index, item={**item, "input": ""})
            for piece in pieces(text):
                self.emit("response.custom_tool_call_input.delta", **where, delta=piece)
            self.emit("response.custom_tool_call_input.done", **where, input=text)
        elif kind == "web_search_call":
            added = {**item, "status": "in_progress"}
            action = item.get("action")
            if isinstance(action, Mapping) and action.get("type") == "search":
                added["action"] = {**action, "query": ""}  # the query is known once the search is done
            self.emit("response.output_item.added", output_index=index, item=added)
            self.emit("response.web_search_call.in_progress", **where)
            self.emit("response.web_search_call.searching", **where)
            self.emit("response.web_search_call.completed", **where)
        else:  # a Responses provider's own item: whole in both events
            self.emit("response.output_item.added", output_index=index, item=dict(item))
        self.emit("response.output_item.done", output_index=index, item=dict(item))

    def message_part(self, where: dict[str, Any], content_index: int, part: Any) -> None:
        if not isinstance(part, Mapping):
            raise ValueError("message content part is not an object")
        kind = part.get("type")
        if kind == "refusal":
            text = _text(part, "refusal")
            self.emit("response.content_part.added", **where, content_index=content_index, part={**part, "refusal": ""})
            for piece in pieces(text):
                self.emit("response.refusal.delta", **where, content_index=content_index, delta=piece)
            self.emit("response.refusal.done", **where, content_index=content_index, refusal=text)
        else:
            text = _text(part, "text")
            started = {**part, "text": ""}
            if "annotations" in part:
                started["annotations"] = []
            self.emit("response.content_part.added", **where, content_index=content_index, part=started)
            for piece in pieces(text):
                self.emit("response.output_text.delta", **where, content_index=content_index, delta=piece, logprobs=[])
            for annotation_index, annotation in enumerate(part.get("annotations") or []):
                self.emit(
                    "response.output_text.annotation.added",
                    **where,
                    content_index=content_index,
                    annotation_index=annotation_index,
                    annotation=annotation,
                )
            logprobs = part.get("logprobs")
            self.emit(
                "response.output_text.done",
                **where,
                content_index=content_index,
                text=text,
                logprobs=logprobs if isinstance(logprobs, list) else [],
            )
        self.emit("response.content_part.done", **where, content_index=content_index, part=dict(part))


def _responses_answer(events: list[SSEEvent]) -> dict[str, Any] | None:
    """The ``response`` of a stream's terminal event (it carries the whole answer: output and
    usage), checked against the items the stream said were done."""
    done: dict[int, Any] = {}
    for event in events:
        if not event.data:
            continue
        payload = _object(orjson.loads(event.data))
        kind = payload.get("type")
        if event.event == "error" or kind in ("error", "response.failed"):
            return None
        if kind == "response.output_item.done":
            index = payload.get("output_index")
            if not isinstance(index, int) or index < 0:
                raise _Unstorable
            done[index] = payload.get("item")
        elif kind in ("response.completed", "response.incomplete"):
            response = dict(_object(payload.get("response")))
            output = response.get("output")
            if response.get("object") != "response" or not isinstance(output, list):
                raise _Unstorable
            if not output and done:  # a server that leaves the output out of its terminal event
                if sorted(done) != list(range(len(done))):
                    raise _Unstorable
                response["output"] = [done[index] for index in range(len(done))]
            elif any(index >= len(output) or output[index] != item for index, item in done.items()):
                raise _Unstorable  # the items streamed are not the answer's
            return response
    return None  # no terminal event: unfinished
