"""What the fake model answers, decided once per request and independent of any wire format.

Each API module pulls the same few facts out of its own request shape (a ``Conversation``), then
``plan_reply`` turns them into a ``Reply`` which that module renders as JSON or as SSE events. Keeping
the decision here means the three APIs answer the same question the same way, so a test can send a
request through a translating gateway and still predict the exact text that comes back.
"""

from __future__ import annotations

import enum
import itertools
import re
from dataclasses import dataclass

import orjson

# How many characters of the user's text the greeting repeats: enough to tell requests apart,
# short enough that a reply stays a handful of tokens.
ECHO_CHARS = 40
# Tool results are echoed so tests can check they reached the model; long ones are cut.
TOOL_RESULT_CHARS = 200
TOOL_TRIGGER_WORD = "weather"
# A user text can script the model's next tool call, so that a real agent (Claude Code) can be driven
# through a tool loop: `[fake-tool Bash {"command": "echo hi"}]` calls the request's tool "Bash" with
# those arguments. The JSON object ends the directive: `]` may not appear inside it.
TOOL_DIRECTIVE = re.compile(r"\[fake-tool ([A-Za-z0-9_.:-]+) (\{[^\]]*\})\]")
THINKING_SIGNATURE = "ZmFrZS10aGlua2luZy1zaWduYXR1cmU="  # base64("fake-thinking-signature")

# Ids only need to be unique within one process; a counter is cheaper than uuid4.
_ids = itertools.count(1)


def next_id() -> int:
    return next(_ids)


class Stop(enum.Enum):
    END = "end"
    TOOL = "tool"
    LENGTH = "length"


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    schema: dict  # JSON schema of the arguments (Gemini's upper-case type names are accepted too)


@dataclass(frozen=True, slots=True)
class Conversation:
    """The facts of a request that decide the reply, whichever API it came in."""

    model: str
    last_user_text: str
    tools: tuple[Tool, ...]  # the client tools offered, in request order
    # Contents of the tool results the request ends with; empty unless the last turn is tool output.
    tool_results: tuple[str, ...]
    wants_thinking: bool
    max_tokens: int | None
    input_tokens: int
    # JSON schema the text answer must satisfy (structured output), None for free text.
    answer_schema: dict | None = None
    # Tool calls the assistant made earlier in the conversation: how far a script of several
    # `[fake-tool ...]` directives has got (the next call is the directive after them).
    tool_calls_made: int = 0

    @property
    def first_tool(self) -> Tool | None:
        return self.tools[0] if self.tools else None


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str  # unique suffix; each API adds its own prefix ("toolu_", "call_")
    name: str
    arguments: dict
    arguments_json: str


@dataclass(frozen=True, slots=True)
class Reply:
    model: str
    text: str  # empty when the reply is only a tool call
    thinking: str | None
    tool_call: ToolCall | None
    stop: Stop
    input_tokens: int  # the whole prompt, cached part included
    cached_tokens: int
    output_tokens: int  # text + tool call + thinking
    thinking_tokens: int

    @property
    def uncached_input_tokens(self) -> int:
        """Anthropic reports cache reads beside input_tokens rather than inside it."""
        return self.input_tokens - self.cached_tokens


def estimate_tokens(size: int) -> int:
    """~4 bytes per token, as the usual rule of thumb; never 0 so usage always looks real."""
    return max(1, (size + 3) // 4)


def plan_reply(api_name: str, conv: Conversation, *, force_tool_call: bool, cached_tokens: int) -> Reply:
    thinking = f"Thinking about: {conv.last_user_text[:ECHO_CHARS]}" if conv.wants_thinking else None
    thinking_tokens = estimate_tokens(len(thinking)) if thinking else 0
    cached = min(max(cached_tokens, 0), conv.input_tokens)

    # A trailing tool result wins over a new tool call, or a "weather" question would loop forever;
    # only a script of several directives goes on to its next call.
    planned = _scripted_call(conv) if conv.tool_results else _planned_call(conv, force_tool_call)
    if planned is not None:
        name, arguments = planned
        arguments_json = orjson.dumps(arguments).decode()
        call = ToolCall(f"fake_{next_id()}", name, arguments, arguments_json)
        output = thinking_tokens + estimate_tokens(len(call.name) + len(arguments_json))
        return Reply(conv.model, "", thinking, call, Stop.TOOL, conv.input_tokens, cached, output, thinking_tokens)

    if conv.answer_schema is not None:
        # A structured-output client parses the answer, so a greeting or an echo would break it.
        text = orjson.dumps(example_value(conv.answer_schema)).decode()
    elif conv.tool_results:
        text = "Tool result: " + " | ".join(r[:TOOL_RESULT_CHARS] for r in conv.tool_results)
    else:
        text = f"Hello from fake-{api_name} model {conv.model}: {conv.last_user_text[:ECHO_CHARS]}"
    stop = Stop.END
    if conv.max_tokens is not None and estimate_tokens(len(text)) > conv.max_tokens:
        text = text[: max(conv.max_tokens, 1) * 4]
        stop = Stop.LENGTH
    output = thinking_tokens + estimate_tokens(len(text))
    return Reply(conv.model, text, thinking, None, stop, conv.input_tokens, cached, output, thinking_tokens)


def _directives(conv: Conversation) -> list[tuple[str, dict]]:
    """The ``[fake-tool ...]`` directives of the last user text that name an offered tool, in order."""
    offered = {tool.name for tool in conv.tools}
    calls = []
    for match in TOOL_DIRECTIVE.finditer(conv.last_user_text):
        if match[1] in offered:
            try:
                arguments = orjson.loads(match[2])
            except orjson.JSONDecodeError:
                continue
            if isinstance(arguments, dict):
                calls.append((match[1], arguments))
    return calls


def _scripted_call(conv: Conversation) -> tuple[str, dict] | None:
    """After a tool result: the script's next call, None once every directive has been called."""
    script = _directives(conv)
    return script[conv.tool_calls_made] if len(script) > 1 and conv.tool_calls_made < len(script) else None


def _planned_call(conv: Conversation, force_tool_call: bool) -> tuple[str, dict] | None:
    """(tool name, arguments) of the call the model makes now, or None to answer in text."""
    script = _directives(conv)
    if script:
        return script[0]
    first = conv.first_tool
    if first is not None and (force_tool_call or TOOL_TRIGGER_WORD in conv.last_user_text.lower()):
        return first.name, example_arguments(first.schema)
    return None


def example_arguments(schema: dict) -> dict:
    """Deterministic arguments satisfying an object schema: required properties (or all, if none are
    marked required) filled with "Paris", 1, true, [] or a nested object."""
    properties = schema.get("properties") or {}
    names = schema.get("required") or list(properties)
    return {name: example_value(properties.get(name) or {}) for name in names}


def example_value(schema: dict) -> object:
    """A deterministic value of any schema type; objects are filled as ``example_arguments`` does."""
    if enum_values := schema.get("enum"):
        return enum_values[0]
    # A schema with properties but no type is an object in practice (and in OpenAPI).
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):  # e.g. ["string", "null"]
        kind = next((k for k in kind if k != "null"), "null")
    kind = str(kind).lower()
    if kind in ("number", "integer"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return _example_items(schema)
    if kind == "object":
        return example_arguments(schema)
    if kind == "null":
        return None
    return "Paris"


def _example_items(schema: dict) -> list:
    """As few items as the array schema allows: none, unless minItems asks for some."""
    min_items = schema.get("minItems")
    if not isinstance(min_items, int) or min_items <= 0:
        return []
    items = schema.get("items")
    return [example_value(items if isinstance(items, dict) else {})] * min_items


def split_text(text: str, pieces: int) -> list[str]:
    """Cut ``text`` into at most ``pieces`` non-empty consecutive parts of near-equal length."""
    if not text:
        return []
    pieces = max(1, min(pieces, len(text)))
    size, extra = divmod(len(text), pieces)
    parts = []
    start = 0
    for index in range(pieces):
        end = start + size + (1 if index < extra else 0)
        parts.append(text[start:end])
        start = end
    return parts
