"""The AWS event-stream framing (``application/vnd.amazon.eventstream``), sans-IO, both ways.

Bedrock's InvokeModelWithResponseStream (and every other AWS streaming API) sends binary frames:

    prelude   total length (uint32 BE), headers length (uint32 BE), CRC32 of those 8 bytes
    headers   repeated: name length (uint8), name (UTF-8), value type (uint8), value
    payload   total length - headers length - 16 bytes
    trailer   CRC32 of everything before it

Header value types: 0 true, 1 false (no value bytes), 2 int8, 3 int16, 4 int32, 5 int64 (big
endian), 6 bytes and 7 string (uint16 length + bytes), 8 timestamp (int64 milliseconds since the
epoch), 9 UUID (16 bytes).

``EventStreamDecoder.feed(chunk)`` takes bytes split anywhere and returns the messages they complete;
``close()`` says the stream ended, raising if a frame was cut short. ``encode_message`` makes one frame
(the fake provider's streams, and a gateway answering Bedrock clients).

Errors, as in h11: ``EventStreamError`` is the peer's fault (a malformed frame, a CRC mismatch, an
oversize frame, a truncated stream); ``ValueError`` from ``encode_message`` is ours (a header value
that has no wire type). The decoder is not usable after an ``EventStreamError``: once framing is lost,
nothing after it can be trusted.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

PRELUDE_BYTES = 12  # total length, headers length, prelude CRC
_OVERHEAD = PRELUDE_BYTES + 4  # the prelude and the message CRC
MAX_HEADERS_BYTES = 128 * 1024  # botocore's limits (botocore.eventstream)
MAX_PAYLOAD_BYTES = 24 * 1024 * 1024
MAX_MESSAGE_BYTES = _OVERHEAD + MAX_HEADERS_BYTES + MAX_PAYLOAD_BYTES

_PRELUDE = struct.Struct(">II")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_INTS = {2: struct.Struct(">b"), 3: struct.Struct(">h"), 4: struct.Struct(">i"), 5: struct.Struct(">q")}
_INT32_RANGE = range(-(2**31), 2**31)


@dataclass(frozen=True, slots=True)
class Timestamp:
    """A header of type 8: milliseconds since the Unix epoch (kept as sent, no time zone games)."""

    millis: int

    @classmethod
    def of(cls, moment: datetime) -> Timestamp:
        return cls(int(moment.timestamp() * 1000))


# What a decoded header value is: bool (0, 1), int (2-5), bytes (6), str (7), a timestamp as
# int64 milliseconds wrapped in ``Timestamp`` (8), uuid.UUID (9).
HeaderValue = bool | int | bytes | str | Timestamp | uuid.UUID


@dataclass(frozen=True, slots=True)
class Message:
    """One frame: its headers (in wire order, names unique) and its payload bytes."""

    headers: Mapping[str, HeaderValue] = field(default_factory=dict)
    payload: bytes = b""

    @property
    def message_type(self) -> str:
        """``event``, ``exception`` or ``error`` (``:message-type``; ``event`` when absent)."""
        value = self.headers.get(":message-type", "event")
        return value if isinstance(value, str) else "event"

    @property
    def event_type(self) -> str:
        """``:event-type`` of an event (``chunk`` for Bedrock), ``:exception-type`` of an
        exception, ``:error-code`` of an error; "" when absent."""
        name = {"exception": ":exception-type", "error": ":error-code"}.get(self.message_type, ":event-type")
        value = self.headers.get(name, "")
        return value if isinstance(value, str) else ""


class EventStreamError(Exception):
    """The peer sent something that is not a well-formed event stream."""


class EventStreamDecoder:
    """Incremental decoder: ``feed`` bytes split anywhere, get the messages they complete.

    One instance per stream; not thread-safe. ``max_message_bytes`` bounds one frame (its prelude's
    total length is checked before the frame is buffered, so an oversize frame costs no memory)."""

    __slots__ = ("_buffer", "_failed", "_max")

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_message_bytes
        self._failed = False

    def feed(self, chunk: bytes) -> list[Message]:
        if self._failed:
            raise EventStreamError("the event stream already failed")
        self._buffer += chunk
        messages: list[Message] = []
        start = 0
        buffer = self._buffer
        try:
            while len(buffer) - start >= PRELUDE_BYTES:
                total = self._check_prelude(buffer, start)
                if len(buffer) - start < total:
                    break
                messages.append(_parse(bytes(buffer[start : start + total])))
                start += total
        except EventStreamError:
            self._failed = True
            raise
        del buffer[:start]
        return messages

    def close(self) -> list[Message]:
        """End of stream: nothing may be left over (a cut frame is an error)."""
        if self._failed:
            raise EventStreamError("the event stream already failed")
        if self._buffer:
            left = len(self._buffer)
            self._failed = True
            raise EventStreamError(f"event stream truncated: {left} bytes of an incomplete frame at its end")
        return []

    def _check_prelude(self, buffer: bytearray, start: int) -> int:
        total, headers = _PRELUDE.unpack_from(buffer, start)
        (crc,) = _U32.unpack_from(buffer, start + 8)
        if zlib.crc32(bytes(buffer[start : start + 8])) != crc:
            raise EventStreamError("event stream prelude CRC mismatch")
        if total < _OVERHEAD or headers > total - _OVERHEAD:
            raise EventStreamError(f"malformed event stream prelude: total length {total}, headers length {headers}")
        if total > self._max or headers > MAX_HEADERS_BYTES:
            raise EventStreamError(f"event stream frame of {total} bytes is over the limit of {self._max}")
        return total


def _parse(frame: bytes) -> Message:
    """One whole frame whose prelude is already checked."""
    (crc,) = _U32.unpack_from(frame, len(frame) - 4)
    if zlib.crc32(frame[:-4]) != crc:
        raise EventStreamError("event stream message CRC mismatch")
    (headers_length,) = _U32.unpack_from(frame, 4)
    end = PRELUDE_BYTES + headers_length
    return Message(_headers(frame[PRELUDE_BYTES:end]), frame[end:-4])


def _headers(data: bytes) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    at = 0
    try:
        while at < len(data):
            name_length = data[at]
            name = data[at + 1 : at + 1 + name_length].decode()
            at += 1 + name_length
            kind = data[at]
            at += 1
            value: HeaderValue
            if kind in (0, 1):
                value = kind == 0
            elif kind in _INTS:
                (value,) = _INTS[kind].unpack_from(data, at)
                at += _INTS[kind].size
            elif kind in (6, 7):
                (length,) = _U16.unpack_from(data, at)
                raw = data[at + 2 : at + 2 + length]
                if len(raw) != length:
                    raise EventStreamError("event stream header value runs past the headers")
                value = raw if kind == 6 else raw.decode()
                at += 2 + length
            elif kind == 8:
                (millis,) = _INTS[5].unpack_from(data, at)
                value = Timestamp(millis)
                at += 8
            elif kind == 9:
                raw = data[at : at + 16]
                if len(raw) != 16:
                    raise EventStreamError("event stream header value runs past the headers")
                value = uuid.UUID(bytes=raw)
                at += 16
            else:
                raise EventStreamError(f"event stream header {name!r} has unknown value type {kind}")
            if at > len(data) or not name:
                raise EventStreamError("malformed event stream header")
            if name in headers:
                raise EventStreamError(f"event stream header {name!r} appears twice")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError):
        raise EventStreamError("malformed event stream headers") from None
    return headers


def encode_message(headers: Mapping[str, HeaderValue], payload: bytes = b"") -> bytes:
    """One frame. Python values pick their wire type: bool, int (int32 when it fits, else int64),
    bytes, str, Timestamp, uuid.UUID; anything else is a ValueError."""
    encoded = b"".join(_header(name, value) for name, value in headers.items())
    if len(encoded) > MAX_HEADERS_BYTES or len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError("event stream frame over the size limits")
    total = _OVERHEAD + len(encoded) + len(payload)
    prelude = _PRELUDE.pack(total, len(encoded))
    head = prelude + _U32.pack(zlib.crc32(prelude)) + encoded + payload
    return head + _U32.pack(zlib.crc32(head))


def _header(name: str, value: HeaderValue) -> bytes:
    raw_name = name.encode()
    if not 0 < len(raw_name) < 256:
        raise ValueError(f"event stream header name {name!r} must be 1-255 bytes")
    head = bytes((len(raw_name),)) + raw_name
    if isinstance(value, bool):
        return head + (b"\x00" if value else b"\x01")
    if isinstance(value, int):
        kind = 4 if value in _INT32_RANGE else 5
        return head + bytes((kind,)) + _INTS[kind].pack(value)
    if isinstance(value, bytes | str):
        raw = value if isinstance(value, bytes) else value.encode()
        if len(raw) > 0xFFFF:
            raise ValueError(f"event stream header {name!r} value is over 65535 bytes")
        return head + (b"\x06" if isinstance(value, bytes) else b"\x07") + _U16.pack(len(raw)) + raw
    if isinstance(value, Timestamp):
        return head + b"\x08" + _INTS[5].pack(value.millis)
    if isinstance(value, uuid.UUID):
        return head + b"\x09" + value.bytes
    raise ValueError(f"event stream header {name!r}: no wire type for {type(value).__name__}")
