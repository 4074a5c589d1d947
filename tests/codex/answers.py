"""Canned Responses API answers, as the SSE stream Codex reads (``wire_api = "responses"``).

Only what a capture needs: a streamed text answer, and a streamed tool turn shaped like a real
reasoning model's (a reasoning item with a summary and ``encrypted_content``, a short
``commentary`` message, then the function call), so the next request shows how Codex replays
each kind of output item. Every answer is a complete event sequence (response.created,
response.in_progress, per item: output_item.added, its deltas and ``.done`` events,
output_item.done; then response.completed with usage) and every event carries the fields the
openai SDK's types require (openai.types.responses.ResponseStreamEvent);
tests/unit/test_codex_fixtures.py validates them against those types.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

ENCRYPTED_REASONING = "Y2NyLWNhcHR1cmUtZW5jcnlwdGVkLXJlYXNvbmluZw=="  # base64("ccr-capture-encrypted-reasoning")


@dataclass
class Stream:
    """One answer's events, numbered in order (``sequence_number``), and its finished output items."""

    response_id: str
    model: str
    events: list[dict[str, Any]] = field(default_factory=list)
    output: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.add("response.created", response=self.response("in_progress"))
        self.add("response.in_progress", response=self.response("in_progress"))

    def add(self, kind: str, **fields: Any) -> None:
        self.events.append({"type": kind, "sequence_number": len(self.events), **fields})

    def response(self, status: str, usage: dict | None = None) -> dict[str, Any]:
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "model": self.model,
            "output": list(self.output) if status == "completed" else [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": usage,
        }

    def reasoning(self, summary: str) -> None:
        index, item_id = len(self.output), f"rs_{self.response_id}_{len(self.output)}"
        item = {"id": item_id, "type": "reasoning", "summary": []}
        self.add("response.output_item.added", output_index=index, item=item)
        place = {"output_index": index, "item_id": item_id, "summary_index": 0}
        self.add("response.reasoning_summary_part.added", **place, part={"type": "summary_text", "text": ""})
        self.add("response.reasoning_summary_text.delta", **place, delta=summary)
        self.add("response.reasoning_summary_text.done", **place, text=summary)
        self.add("response.reasoning_summary_part.done", **place, part={"type": "summary_text", "text": summary})
        done = {
            **item,
            "summary": [{"type": "summary_text", "text": summary}],
            "encrypted_content": ENCRYPTED_REASONING,
        }
        self._done(index, done)

    def message(self, text: str, pieces: int = 3, phase: str | None = None) -> None:
        """An assistant message; ``text`` cut into ``pieces`` output_text deltas."""
        index, item_id = len(self.output), f"msg_{self.response_id}_{len(self.output)}"
        item = {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress", "content": []}
        if phase:
            item["phase"] = phase
        self.add("response.output_item.added", output_index=index, item=item)
        place = {"output_index": index, "item_id": item_id, "content_index": 0}
        part = {"type": "output_text", "text": "", "annotations": []}
        self.add("response.content_part.added", **place, part=part)
        size = max(1, -(-len(text) // pieces))
        for start in range(0, len(text), size):
            self.add("response.output_text.delta", **place, delta=text[start : start + size], logprobs=[])
        self.add("response.output_text.done", **place, text=text, logprobs=[])
        self.add("response.content_part.done", **place, part={**part, "text": text})
        self._done(index, {**item, "status": "completed", "content": [{**part, "text": text}]})

    def function_call(self, name: str, arguments: dict) -> None:
        """A function call; the arguments arrive in two deltas, as real ones are split."""
        index, item_id = len(self.output), f"fc_{self.response_id}_{len(self.output)}"
        encoded = json.dumps(arguments)
        item = {"id": item_id, "type": "function_call", "status": "in_progress", "call_id": f"call_{self.response_id}"}
        item["name"] = name
        self.add("response.output_item.added", output_index=index, item={**item, "arguments": ""})
        half = len(encoded) // 2
        for delta in (encoded[:half], encoded[half:]):
            self.add("response.function_call_arguments.delta", output_index=index, item_id=item_id, delta=delta)
        self.add("response.function_call_arguments.done", output_index=index, item_id=item_id, arguments=encoded)
        self._done(index, {**item, "status": "completed", "arguments": encoded})

    def complete(self, input_tokens: int) -> list[dict[str, Any]]:
        output_tokens = max(1, len(json.dumps(self.output)) // 16)
        self.add("response.completed", response=self.response("completed", usage(input_tokens, output_tokens)))
        return self.events

    def _done(self, index: int, item: dict[str, Any]) -> None:
        self.output.append(item)
        self.add("response.output_item.done", output_index=index, item=item)


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def text_answer(response_id: str, model: str, text: str, input_tokens: int, pieces: int = 3) -> list[dict]:
    """A streamed final answer."""
    stream = Stream(response_id, model)
    stream.message(text, pieces)
    return stream.complete(input_tokens)


def function_call_answer(response_id: str, model: str, name: str, arguments: dict, input_tokens: int) -> list[dict]:
    """Reasoning, a commentary message, then a call of ``name``: a reasoning model's tool turn."""
    stream = Stream(response_id, model)
    stream.reasoning(f"Calling {name} as asked.")
    stream.message(f"Running {name}.", pieces=1, phase="commentary")
    stream.function_call(name, arguments)
    return stream.complete(input_tokens)


def encode_sse(events: list[dict]) -> bytes:
    """``event: <type>`` + ``data: <json>`` per event, as OpenAI frames them."""
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)
