"""The one Server-Sent Events decoder/encoder (sans-IO), shared by every translator.

Feed it bytes as they arrive, split anywhere: inside a line, inside a ``\\r\\n`` pair, inside a
multi-byte UTF-8 sequence. Line ends may be ``\\n``, ``\\r\\n`` or ``\\r`` (the SSE spec allows all
three). Lines are only decoded once complete, and no line break byte can occur inside a UTF-8
sequence, so text is never cut mid-character.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    event: str | None = None
    id: str | None = None


class SSEDecoder:
    """Incremental SSE parser. ``feed(chunk)`` returns the events completed by that chunk;
    ``close()`` returns a final event the stream ended without a blank line for."""

    __slots__ = ("_buffer", "_data", "_event", "_id", "_pending_cr")

    def __init__(self) -> None:
        self._buffer = b""
        self._pending_cr = False  # last chunk ended in "\r": a following "\n" belongs to it
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._pending_cr = False
        if not chunk:
            return []
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):
                self._pending_cr = True
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[SSEEvent] = []
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            event = self._line(buffer[start:end])
            if event is not None:
                events.append(event)
            start = end + 1
        self._buffer = buffer[start:]
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: a trailing line without its newline still counts, as does an event
        missing its terminating blank line (lenient, as browsers are)."""
        events: list[SSEEvent] = []
        if self._buffer:
            event = self._line(self._buffer)
            self._buffer = b""
            if event is not None:
                events.append(event)
        event = self._line(b"")
        if event is not None:
            events.append(event)
        return events

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            return self._dispatch()
        line = raw.decode("utf-8", "replace")
        if line[0] == ":":
            return None  # comment / keep-alive
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._data and self._event is None:
            return None
        event = SSEEvent(data="\n".join(self._data), event=self._event, id=self._id)
        self._data = []
        self._event = None
        return event


def encode_event(data: str | bytes, event: str | None = None) -> bytes:
    """One SSE frame. ``data`` must not contain line breaks (JSON from orjson never does)."""
    payload = data if isinstance(data, bytes) else data.encode()
    if event is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"
