"""The AWS event-stream codec (extproc.translate.aws_eventstream): every stream decoded whole, one
byte at a time and at hypothesis-chosen split points, with identical messages; frames we encode are
decoded by botocore's own decoder (botocore.eventstream.EventStreamBuffer) to the same headers and
payload; the spec's published test vectors decode and encode byte for byte; malformed, corrupt,
truncated and oversize streams fail with EventStreamError, never with anything else."""

from __future__ import annotations

import struct
import uuid
import zlib

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.translate.aws_eventstream import (
    EventStreamDecoder,
    EventStreamError,
    Message,
    Timestamp,
    encode_message,
)
from tests.unit.stream_checks import split_at

# The AWS event-stream test suite's vectors (aws-c-event-stream; botocore's tests use them too).
EMPTY_MESSAGE = bytes.fromhex("000000100000000005c248eb7d98c8ff")
ONE_STRING_HEADER = (
    b"\x00\x00\x00=\x00\x00\x00 \x07\xfd\x83\x96\x0ccontent-type\x07\x00\x10application/json"
    b"{'foo':'bar'}\x8d\x9c\x08\xb1"
)

CHUNK_HEADERS = {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}
EVERY_TYPE = {
    "true": True,
    "false": False,
    "int32": -5,
    "int64": 2**40,
    "bytes": b"\x00\xff",
    "string": "caf\u00e9",
    "timestamp": Timestamp(1_700_000_000_123),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
}


def decode_all(pieces: list[bytes], decoder: EventStreamDecoder | None = None) -> list[Message]:
    decoder = decoder or EventStreamDecoder()
    out: list[Message] = []
    for piece in pieces:
        out += decoder.feed(piece)
    return out + decoder.close()


def botocore_messages(data: bytes) -> list[tuple[dict, bytes]]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return [(message.headers, message.payload) for message in buffer]


def as_botocore_sees(headers: dict) -> dict:
    """botocore gives a UUID as its 16 bytes and a timestamp as its milliseconds."""
    out = {}
    for name, value in headers.items():
        if isinstance(value, uuid.UUID):
            value = value.bytes
        elif isinstance(value, Timestamp):
            value = value.millis
        out[name] = value
    return out


# --- the wire format ------------------------------------------------------------------------------


def test_the_specs_vectors_decode_and_encode_byte_for_byte() -> None:
    assert decode_all([EMPTY_MESSAGE]) == [Message({}, b"")]
    assert encode_message({}) == EMPTY_MESSAGE
    [message] = decode_all([ONE_STRING_HEADER])
    assert message == Message({"content-type": "application/json"}, b"{'foo':'bar'}")
    assert encode_message(message.headers, message.payload) == ONE_STRING_HEADER


def test_every_header_type_decodes_with_botocore_as_we_encoded_it() -> None:
    frame = encode_message(EVERY_TYPE, b"payload")
    assert botocore_messages(frame) == [(as_botocore_sees(EVERY_TYPE), b"payload")]
    assert decode_all([frame]) == [Message(EVERY_TYPE, b"payload")]


def test_small_ints_of_other_widths_decode() -> None:
    body = b"\x01a\x02\xff" + b"\x01b\x03\x01\x00"  # int8 -1, int16 256
    prelude = struct.pack(">II", 16 + len(body), len(body))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + body
    frame = head + struct.pack(">I", zlib.crc32(head))
    assert decode_all([frame]) == [Message({"a": -1, "b": 256}, b"")]
    assert botocore_messages(frame) == [({"a": -1, "b": 256}, b"")]


def test_message_type_and_event_type_read_the_right_headers() -> None:
    assert Message(CHUNK_HEADERS).message_type == "event"
    assert Message(CHUNK_HEADERS).event_type == "chunk"
    exception = Message({":message-type": "exception", ":exception-type": "throttlingException"})
    assert (exception.message_type, exception.event_type) == ("exception", "throttlingException")
    assert Message().message_type == "event" and Message().event_type == ""


@pytest.mark.parametrize(
    "value",
    [1.5, None, "x" * 70_000],
)
def test_a_header_value_without_a_wire_type_is_our_error(value: object) -> None:
    with pytest.raises(ValueError):
        encode_message({"h": value})  # type: ignore[dict-item]


def test_a_header_name_over_255_bytes_is_our_error() -> None:
    with pytest.raises(ValueError):
        encode_message({"n" * 256: "x"})


# --- however the stream is cut --------------------------------------------------------------------

HEADER_VALUES = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.binary(max_size=20),
    st.text(max_size=20),
    st.builds(Timestamp, st.integers(-(2**63), 2**63 - 1)),
    st.uuids(),
)
MESSAGES = st.lists(
    st.builds(
        Message,
        st.dictionaries(
            st.text(min_size=1, max_size=10).filter(lambda n: len(n.encode()) < 256), HEADER_VALUES, max_size=4
        ),
        st.binary(max_size=200),
    ),
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(messages=MESSAGES, data=st.data())
def test_any_split_decodes_to_the_messages_encoded(messages: list[Message], data: st.DataObject) -> None:
    raw = b"".join(encode_message(m.headers, m.payload) for m in messages)
    assert decode_all([raw]) == messages
    points = data.draw(st.lists(st.integers(0, len(raw)), max_size=20), label="split points")
    assert decode_all(split_at(raw, points)) == messages
    expected = [(as_botocore_sees(dict(m.headers)), m.payload) for m in messages]
    assert botocore_messages(raw) == expected


def test_one_byte_at_a_time_decodes_the_same() -> None:
    raw = encode_message(EVERY_TYPE, b"x" * 300) + encode_message(CHUNK_HEADERS, b"{}") + EMPTY_MESSAGE
    whole = decode_all([raw])
    assert len(whole) == 3
    assert decode_all([raw[i : i + 1] for i in range(len(raw))]) == whole


# --- a peer that breaks the format ----------------------------------------------------------------


def _frame(total: int, headers: int, rest: bytes = b"") -> bytes:
    prelude = struct.pack(">II", total, headers)
    return prelude + struct.pack(">I", zlib.crc32(prelude)) + rest


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (_frame(8, 0), "malformed event stream prelude"),
        (_frame(20, 8, b"\x00" * 8), "malformed event stream prelude"),
        (bytes([EMPTY_MESSAGE[0] ^ 1]) + EMPTY_MESSAGE[1:], "prelude CRC mismatch"),
        (EMPTY_MESSAGE[:-1] + bytes([EMPTY_MESSAGE[-1] ^ 1]), "message CRC mismatch"),
        (ONE_STRING_HEADER[:20] + b"X" + ONE_STRING_HEADER[21:], "message CRC mismatch"),
    ],
)
def test_a_malformed_or_corrupt_frame_is_an_event_stream_error(raw: bytes, why: str) -> None:
    with pytest.raises(EventStreamError, match=why):
        decode_all([raw])
    with pytest.raises(EventStreamError, match=why):
        decode_all([raw[i : i + 1] for i in range(len(raw))])


def _with_headers(body: bytes) -> bytes:
    prelude = struct.pack(">II", 16 + len(body), len(body))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + body
    return head + struct.pack(">I", zlib.crc32(head))


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        (b"\x01a\x0a", "unknown value type 10"),
        (b"\x01a\x07\x00\x09abc", "runs past the headers"),
        (b"\x01a\x04\x00\x00", "malformed event stream headers"),
        (b"\x01a\x00\x01a\x01", "appears twice"),
        (b"\x00\x00", "malformed event stream header"),
        (b"\x01a\x07\x00\x01\xff", "malformed event stream headers"),
    ],
)
def test_malformed_headers_are_an_event_stream_error(headers: bytes, why: str) -> None:
    with pytest.raises(EventStreamError, match=why):
        decode_all([_with_headers(headers)])


def test_a_truncated_stream_fails_at_close() -> None:
    raw = encode_message(CHUNK_HEADERS, b"{}")
    decoder = EventStreamDecoder()
    assert decoder.feed(EMPTY_MESSAGE + raw[:-3]) == [Message({}, b"")]
    with pytest.raises(EventStreamError, match=f"truncated: {len(raw) - 3} bytes"):
        decoder.close()


def test_an_oversize_frame_fails_as_soon_as_its_prelude_is_seen() -> None:
    decoder = EventStreamDecoder(max_message_bytes=64)
    assert decoder.feed(encode_message({}, b"x" * 48)) != []  # 64 bytes: at the limit
    with pytest.raises(EventStreamError, match="over the limit of 64"):
        decoder.feed(encode_message({}, b"x" * 49)[:12])  # the prelude alone


def test_a_failed_decoder_stays_failed() -> None:
    decoder = EventStreamDecoder()
    with pytest.raises(EventStreamError):
        decoder.feed(b"\x00" * 12)
    with pytest.raises(EventStreamError, match="already failed"):
        decoder.feed(EMPTY_MESSAGE)
    with pytest.raises(EventStreamError, match="already failed"):
        decoder.close()
