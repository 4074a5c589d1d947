"""The SSE decoder gives the same events however the bytes are split (h11-style: whole, byte by
byte, and at arbitrary points), with every line-ending style."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from extproc.sse import SSEDecoder, SSEEvent, encode_event

STREAM = (
    b": keep-alive comment\n"
    b'event: message_start\ndata: {"a": 1}\n\n'
    b"data: multi\ndata: line\n\n"
    b'event: content_block_delta\ndata: {"text": "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80"}\n\n'
    b"id: 7\ndata:no-space\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent(data='{"a": 1}', event="message_start"),
    SSEEvent(data="multi\nline"),
    SSEEvent(data='{"text": "café ✓ 😀"}', event="content_block_delta"),
    SSEEvent(data="no-space", id="7"),
    SSEEvent(data="[DONE]", id="7"),  # the last event id persists, as the SSE spec says
]


def decode(chunks: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events + decoder.close()


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({p % (len(data) + 1) for p in points})
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_whole_stream():
    assert decode([STREAM]) == EXPECTED


def test_byte_by_byte_including_inside_utf8_sequences():
    assert decode([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_crlf_and_cr_line_endings_byte_by_byte():
    for ending in (b"\r\n", b"\r"):
        data = STREAM.replace(b"\n", ending)
        assert decode([data]) == EXPECTED
        assert decode([data[i : i + 1] for i in range(len(data))]) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12), st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_any_split_gives_the_same_events(points, ending):
    data = STREAM.replace(b"\n", ending)
    assert decode(split_at(data, points)) == EXPECTED


def test_an_event_without_its_final_blank_line_is_delivered_at_close():
    assert decode([b"data: tail"]) == [SSEEvent(data="tail")]


@given(
    st.lists(
        st.tuples(
            st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=30),
            st.none() | st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
        ),
        max_size=8,
    ),
    st.lists(st.integers(min_value=0, max_value=500), max_size=6),
)
def test_decode_of_encode_is_identity(events, points):
    encoded = b"".join(encode_event(data, event) for data, event in events)
    assert decode(split_at(encoded, points)) == [SSEEvent(data=d, event=e) for d, e in events]
