"""Anthropic stream events -> the Responses API's typed SSE events (what a Responses client reads).

One Anthropic content block becomes one output item:

- text -> a ``message`` item with one ``output_text`` part: output_item.added, content_part.added,
  output_text.delta..., output_text.done, content_part.done, output_item.done;
- thinking -> a ``reasoning`` item whose one summary part is the thinking text:
  output_item.added, reasoning_summary_part.added, reasoning_summary_text.delta..., .done,
  reasoning_summary_part.done, output_item.done (signatures stay at Anthropic);
- tool_use -> a ``function_call`` item: output_item.added, function_call_arguments.delta...,
  .done, output_item.done; a freeform tool's (``custom``) -> a ``custom_tool_call`` item whose
  input is sent whole when the block ends (custom_tool_call_input.delta and .done: the text sits
  inside Anthropic's JSON fragments);
- server_tool_use of Anthropic's web search -> a ``web_search_call`` item: output_item.added,
  web_search_call.in_progress, .searching, .completed, output_item.done (with the query);
- other blocks (redacted thinking, search results, other server tools) -> nothing.

The stream opens with response.created and response.in_progress and ends with exactly one of
response.completed, response.incomplete (max_tokens, refusal) or response.failed (an upstream
error event, an invalid event, a stream cut short), each carrying the whole response so far.
Every event carries the next ``sequence_number`` from 0. All stream state lives in one object.
"""

from __future__ import annotations

from typing import Any

import orjson

from extproc.sse import SSEEvent
from extproc.translate import anthropic_schema as A
from extproc.translate import responses_schema as R
from extproc.translate.base import Usage
from extproc.translate.buffering import SseStreamMachine
from extproc.translate.wire import error_message, error_status

_TEXT, _REASONING, _CALL, _SEARCH, _CUSTOM = 1, 2, 3, 4, 5


class _Item:
    """The output item of one open Anthropic block."""

    __slots__ = ("call_id", "iid", "kind", "name", "output_index", "pieces", "where")

    def __init__(self, kind: int, iid: str, output_index: int) -> None:
        self.kind = kind
        self.iid = iid
        self.output_index = output_index
        self.where = {"item_id": iid, "output_index": output_index}  # what every event of the item names
        self.call_id = ""
        self.name = ""
        self.pieces: list[str] = []


class ResponsesStream(SseStreamMachine):
    """Anthropic SSE in, Responses SSE out. Not thread-safe; one per response."""

    __slots__ = (
        "created_at",
        "custom",
        "done",
        "model",
        "open",
        "output",
        "rid",
        "sequence",
        "started",
        "stop_reason",
        "usage",
    )

    def __init__(self, model: str, created_at: int, custom: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.model = model
        self.custom = custom  # names of the freeform tools
        self.created_at = created_at
        self.rid = "resp_unknown"
        self.sequence = 0
        self.started = False
        self.done = False
        self.open: dict[int, _Item | None] = {}  # Anthropic block index -> its item (None: not shown)
        self.output: list[dict[str, Any] | None] = []  # by output_index; None while the item is open
        self.stop_reason: Any = None
        self.usage = Usage()

    # --- framing ------------------------------------------------------------------------------

    def emit(self, out: list[bytes], kind: str, **fields: Any) -> None:
        payload = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        out.append(R.event_frame(kind, payload))

    def snapshot(self, status: str, **extra: Any) -> dict[str, Any]:
        items = [item for item in self.output if item is not None]
        return R.response_object(self.rid, self.created_at, self.model, status, items, **extra)

    # --- input --------------------------------------------------------------------------------

    def sse_event(self, event: SSEEvent, out: list[bytes]) -> Usage | None:
        if self.done or not event.data:
            return None
        try:
            obj = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            self.fail(out, 502, "upstream sent an invalid stream event")
            return None
        return self.event(obj, out)

    def event(self, obj: dict[str, Any], out: list[bytes]) -> Usage | None:
        """One Anthropic stream event (also the events a JSON answer is replayed as)."""
        if self.done:
            return None
        kind = obj.get("type")
        if kind == "error":
            self.fail(out, error_status(obj), error_message(obj) or "upstream stream error")
            return None
        if kind == "ping":
            return None
        if not self.started:
            self.start(obj.get("message") if kind == "message_start" else None, out)
            if kind == "message_start":
                return None
        if kind == "content_block_delta":
            self.delta(obj.get("index"), obj.get("delta"), out)
        elif kind == "content_block_start":
            self.block_start(obj.get("index"), obj.get("content_block"), out)
        elif kind == "content_block_stop":
            self.block_stop(obj.get("index"), out)
        elif kind == "message_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self.stop_reason = delta["stop_reason"]
            self.usage = A.usage_from_anthropic(obj.get("usage"), self.usage)
        elif kind == "message_stop":
            return self.complete(out)
        return None

    def start(self, message: Any, out: list[bytes]) -> None:
        self.started = True
        message = message if isinstance(message, dict) else {}
        model = message.get("model")
        if isinstance(model, str) and model:
            self.model = model
        self.rid = R.response_id(message.get("id"))
        self.usage = A.usage_from_anthropic(message.get("usage"))
        self.emit(out, "response.created", response=self.snapshot("in_progress"))
        self.emit(out, "response.in_progress", response=self.snapshot("in_progress"))

    # --- blocks -------------------------------------------------------------------------------

    def block_start(self, index: Any, block: Any, out: list[bytes]) -> None:
        if not isinstance(index, int) or not isinstance(block, dict):
            return
        for other in [i for i, item in self.open.items() if item is not None]:  # Anthropic never interleaves
            self.block_stop(other, out)
        kind = block.get("type")
        if kind == "text":
            item = self.new_item(_TEXT, "msg")
            self.added(item, R.message_item(item.iid, [], "in_progress"), out)
            self.emit(out, "response.content_part.added", **item.where, content_index=0, part=R.text_part(""))
        elif kind == "thinking":
            item = self.new_item(_REASONING, "rs")
            self.added(item, R.reasoning_item(item.iid, []), out)
            part = R.summary_part("")
            self.emit(out, "response.reasoning_summary_part.added", **item.where, summary_index=0, part=part)
        elif kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            freeform = name in self.custom
            item = self.new_item(_CUSTOM if freeform else _CALL, "ctc" if freeform else "fc")
            item.call_id = call_id if isinstance(call_id, str) else ""
            item.name = name if isinstance(name, str) else ""
            if freeform:
                self.added(item, R.custom_call_item(item.iid, item.call_id, item.name, ""), out)
            else:
                self.added(item, R.function_call_item(item.iid, item.call_id, item.name, "", "in_progress"), out)
        elif kind == "server_tool_use" and block.get("name") == "web_search":
            item = self.new_item(_SEARCH, "ws")
            self.added(item, R.web_search_item(item.iid, "", "in_progress"), out)
            self.emit(out, "response.web_search_call.in_progress", **item.where)
            self.emit(out, "response.web_search_call.searching", **item.where)
        else:
            self.open[index] = None  # redacted thinking, search results: nothing a Responses client can use
            return
        self.open[index] = item
        # A JSON answer replayed as a stream carries the content in the start event.
        if item.kind in (_CALL, _SEARCH, _CUSTOM):
            arguments = block.get("input")
            self.add(item, orjson.dumps(arguments).decode() if isinstance(arguments, dict) and arguments else None, out)
        else:
            self.add(item, block.get(kind), out)

    def new_item(self, kind: int, prefix: str) -> _Item:
        position = len(self.output)
        self.output.append(None)  # its place, filled when it is done
        return _Item(kind, R.item_id(prefix, self.rid, position), position)

    def added(self, item: _Item, shape: dict[str, Any], out: list[bytes]) -> None:
        self.emit(out, "response.output_item.added", output_index=item.output_index, item=shape)

    def delta(self, index: Any, delta: Any, out: list[bytes]) -> None:
        item = self.open.get(index) if isinstance(index, int) else None
        if item is None or not isinstance(delta, dict):
            return
        kind = delta.get("type")
        if kind == "text_delta" and item.kind == _TEXT:
            self.add(item, delta.get("text"), out)
        elif kind == "thinking_delta" and item.kind == _REASONING:
            self.add(item, delta.get("thinking"), out)
        elif kind == "input_json_delta" and item.kind in (_CALL, _SEARCH, _CUSTOM):
            self.add(item, delta.get("partial_json"), out)
        # signature_delta, citations_delta: nothing to show

    def add(self, item: _Item, text: Any, out: list[bytes]) -> None:
        if not text or not isinstance(text, str):
            return
        item.pieces.append(text)
        if item.kind in (_SEARCH, _CUSTOM):
            return  # shown once the call is done: the query, the text inside the JSON
        where = item.where
        if item.kind == _TEXT:
            self.emit(out, "response.output_text.delta", **where, content_index=0, delta=text, logprobs=[])
        elif item.kind == _REASONING:
            self.emit(out, "response.reasoning_summary_text.delta", **where, summary_index=0, delta=text)
        else:
            self.emit(out, "response.function_call_arguments.delta", **where, delta=text)

    def block_stop(self, index: Any, out: list[bytes], status: str = "completed") -> None:
        """Close a block's item; ``status`` "incomplete" when the stream failed with it open."""
        item = self.open.pop(index, None) if isinstance(index, int) else None
        if item is None:
            return
        text = "".join(item.pieces)
        where = item.where
        if item.kind == _TEXT:
            part = R.text_part(text)
            self.emit(out, "response.output_text.done", **where, content_index=0, text=text, logprobs=[])
            self.emit(out, "response.content_part.done", **where, content_index=0, part=part)
            done = R.message_item(item.iid, [part], status)
        elif item.kind == _REASONING:
            part = R.summary_part(text)
            self.emit(out, "response.reasoning_summary_text.done", **where, summary_index=0, text=text)
            self.emit(out, "response.reasoning_summary_part.done", **where, summary_index=0, part=part)
            done = R.reasoning_item(item.iid, [part])
        elif item.kind == _CUSTOM:
            text = R.custom_input(text)
            if text:
                self.emit(out, "response.custom_tool_call_input.delta", **where, delta=text)
            self.emit(out, "response.custom_tool_call_input.done", **where, input=text)
            done = R.custom_call_item(item.iid, item.call_id, item.name, text)
        elif item.kind == _SEARCH:
            self.emit(out, "response.web_search_call.completed", **where)
            done = R.web_search_item(item.iid, R.search_query(text), "completed" if status == "completed" else "failed")
        else:
            text = text or "{}"  # a call without arguments
            self.emit(out, "response.function_call_arguments.done", **where, arguments=text)
            done = R.function_call_item(item.iid, item.call_id, item.name, text, status)
        self.output[item.output_index] = done
        self.emit(out, "response.output_item.done", output_index=item.output_index, item=done)

    # --- the end ------------------------------------------------------------------------------

    def close_blocks(self, out: list[bytes], status: str = "completed") -> None:
        for index in list(self.open):
            self.block_stop(index, out, status)

    def complete(self, out: list[bytes]) -> Usage | None:
        self.close_blocks(out)
        self.done = True
        reason = R.incomplete_reason(self.stop_reason)
        if reason is None:
            self.emit(out, "response.completed", response=self.snapshot("completed", usage=self.usage))
        else:
            response = self.snapshot("incomplete", usage=self.usage, incomplete=reason)
            self.emit(out, "response.incomplete", response=response)
        return self.usage

    def fail(self, out: list[bytes], status: int, message: str) -> None:
        """An error: the stream ends with response.failed (after response.created when nothing
        was sent yet: the SDK reads no event before it)."""
        if not self.started:
            self.start(None, out)
        self.close_blocks(out, "incomplete")
        self.done = True
        self.emit(out, "response.failed", response=self.snapshot("failed", error=R.failed_error(status, message)))

    def finish(self, out: list[bytes]) -> Usage | None:
        """End of the upstream stream. Anthropic always ends with message_stop; a stream that
        stopped after its message_delta (some Anthropic-compatible servers) still completes."""
        if self.done:
            return None
        if self.started and self.stop_reason is not None:
            return self.complete(out)
        self.fail(out, 502, "upstream closed the stream before the response completed")
        return None
