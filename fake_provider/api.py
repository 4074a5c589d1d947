"""The one interface each API module (anthropic_api, openai_api, gemini_api, responses_api) implements.

Parsing and rendering are pure (no I/O), so the server owns every await and every API module can be
tested, or read, without a socket in sight.
"""

from __future__ import annotations

from typing import Any, Protocol

from fake_provider.reply import Conversation, Reply

SSE_CONTENT_TYPE = "text/event-stream"
JSON_CONTENT_TYPE = "application/json"
_REMINDER_OPEN = "<system-reminder>"
_REMINDER_CLOSE = "</system-reminder>"
_BLOCKS = {_REMINDER_OPEN: _REMINDER_CLOSE, "<environment_context>": "</environment_context>"}


class BadRequest(ValueError):
    """The request is not a valid call of the API; answered with 400 in the API's error format."""


class ProviderApi(Protocol):
    name: str  # "anthropic" | "openai" | "gemini" | "responses", also the word used in the reply text

    def parse(self, body: Any, body_size: int, path_model: str | None) -> Conversation:
        """Pull the reply-deciding facts out of a request body; raises BadRequest."""
        ...

    def wants_stream(self, body: Any) -> bool: ...

    def render_json(self, reply: Reply, body: Any = None) -> bytes:
        """The whole answer; ``body`` is the request, for what the answer echoes (the Responses API's)."""
        ...

    def render_stream(self, reply: Reply, body: Any, chunks: int) -> list[bytes]:
        """The complete SSE body as a list of encoded events, the text split into ``chunks``;
        ``body`` is the request, for stream options such as OpenAI's include_usage."""
        ...

    def error_body(self, status: int, message: str) -> bytes: ...

    def stream_error_event(self) -> bytes:
        """The event this API sends when it fails after a stream has begun."""
        ...


def text_of(content: Any) -> str:
    """Text of a message content that is either a string or a list of typed parts (Anthropic and
    OpenAI share this shape: parts with ``"type": "text"``)."""
    return "".join(_texts(content))


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "input_text")
        ]
    return []


def last_user_text(messages: list) -> str:
    """The user's own words: the first text of the latest user message that has any (Anthropic and
    OpenAI message lists alike), system reminders left out (see ``without_reminders``). Later texts
    of the message are what a client attached after the prompt (Claude Code's environment block,
    when a gateway folds it into the turn)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            text = first_words(_texts(message.get("content")))
            if text:
                return text
    return ""


def first_words(texts: list[str]) -> str:
    """The first of ``texts`` that is not only system reminders, without them."""
    for text in texts:
        words = without_reminders(text)
        if words:
            return words
    return ""


def without_reminders(text: str) -> str:
    """``text`` without the ``<system-reminder>`` or ``<environment_context>`` blocks it starts with.

    Claude Code adds reminders to user messages (as text blocks of their own or ahead of the prompt),
    and Codex sends its environment as a user message before the prompt (which a translation to
    Anthropic merges into one turn); they are not the user's words, and echoing them would push the
    prompt a test looks for out of the reply. A text that is all such blocks gives "", and an
    unclosed block runs to the end."""
    rest = text.lstrip()
    while (closing := _BLOCKS.get(rest[: rest.find(">") + 1])) is not None:
        _, closed, rest = rest.partition(closing)
        if not closed:
            return ""
        rest = rest.strip()
    return rest
