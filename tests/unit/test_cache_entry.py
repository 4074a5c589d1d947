"""The stored form of a cached answer (extproc.cache.entry): what goes in comes out, large bodies
are compressed, and anything damaged, foreign or of another version reads as a miss (None)."""

from __future__ import annotations

import struct
import zlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.cache import entry
from extproc.cache.entry import CachedAnswer, cacheable_answer, decode, encode

USAGE = {"input_tokens": 388, "output_tokens": 60, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 512}
SMALL = CachedAnswer(
    api="anthropic",
    status=200,
    body=b'{"id":"msg_1","type":"message","content":[{"type":"text","text":"hi"}]}',
    created_at=1_756_315_657.25,
    provider="deepseek",
    model="deepseek-reasoner",
    usage=USAGE,
)
LARGE = CachedAnswer(
    api="openai",
    status=200,
    body=orjson.dumps({"choices": [{"message": {"content": "café ✓ " * 4000}}]}),
    created_at=1_756_315_700.0,
    provider="openai",
    model="gpt-4.1",
    usage={"prompt_tokens": 9, "completion_tokens": 4000, "total_tokens": 4009},
)


def test_a_small_answer_round_trips_uncompressed() -> None:
    raw = encode(SMALL)
    assert decode(raw) == SMALL
    assert raw[5] & entry.FLAG_ZLIB == 0 and raw.endswith(SMALL.body)


def test_a_large_answer_round_trips_compressed_and_smaller() -> None:
    raw = encode(LARGE)
    assert decode(raw) == LARGE
    assert raw[5] & entry.FLAG_ZLIB and len(raw) < len(LARGE.body) // 5


def test_the_threshold_is_the_body_size() -> None:
    at = CachedAnswer("openai", 200, b"x" * entry.COMPRESS_ABOVE, 0.0, "p", "m", {})
    above = CachedAnswer("openai", 200, b"x" * (entry.COMPRESS_ABOVE + 1), 0.0, "p", "m", {})
    assert encode(at)[5] & entry.FLAG_ZLIB == 0
    assert encode(above)[5] & entry.FLAG_ZLIB
    assert decode(encode(at)) == at and decode(encode(above)) == above


@given(
    st.sampled_from(["anthropic", "openai"]),
    st.integers(min_value=200, max_value=299),
    st.binary(max_size=10_000) | st.text(max_size=6000).map(str.encode),
    st.floats(min_value=0, max_value=4e9),
    st.text(max_size=20),
    st.text(max_size=40),
    st.dictionaries(st.text(max_size=30), st.integers(min_value=0, max_value=2**53), max_size=5),
)
def test_any_answer_round_trips(api, status, body, created_at, provider, model, usage) -> None:
    answer = CachedAnswer(api, status, body, created_at, provider, model, usage)
    assert decode(encode(answer)) == answer


def test_every_truncation_is_a_miss() -> None:
    for answer in (SMALL, LARGE):
        raw = encode(answer)
        for end in range(len(raw)):
            assert decode(raw[:end]) is None, end


@given(st.data())
def test_any_damage_is_a_miss_or_the_same_answer(data: st.DataObject) -> None:
    """Flipped bytes never raise: a miss, or (a changed digit in the metadata, a changed byte of an
    uncompressed body: the envelope has no checksum of its own) an answer with well-typed fields."""
    raw = bytearray(encode(data.draw(st.sampled_from([SMALL, LARGE]))))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    result = decode(bytes(raw))
    assert result is None or isinstance(result, CachedAnswer)


def test_damage_inside_a_compressed_body_is_a_miss() -> None:
    raw = bytearray(encode(LARGE))
    raw[-10] ^= 0xFF  # inside the deflate stream or its adler32 checksum
    assert decode(bytes(raw)) is None


def _envelope(
    meta: dict, body: bytes, *, version: int = entry.VERSION, flags: int = 0, magic: bytes = entry.MAGIC
) -> bytes:
    encoded = orjson.dumps(meta)
    return struct.pack(">4sBBI", magic, version, flags, len(encoded)) + encoded + body


GOOD_META = {"api": "openai", "status": 200, "created_at": 1.0, "provider": "p", "model": "m", "usage": {}, "size": 2}


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{}",
        b'{"api":"openai"}',
        _envelope(GOOD_META, b"{}", version=entry.VERSION + 1),
        _envelope(GOOD_META, b"{}", version=0),
        _envelope(GOOD_META, b"{}", magic=b"XXXX"),
        _envelope(GOOD_META, b"{}", flags=0x80),
        _envelope({**GOOD_META, "api": "gemini"}, b"{}"),
        _envelope({**GOOD_META, "status": "200"}, b"{}"),
        _envelope({**GOOD_META, "status": True}, b"{}"),
        _envelope({**GOOD_META, "created_at": "yesterday"}, b"{}"),
        _envelope({**GOOD_META, "usage": []}, b"{}"),
        _envelope({**GOOD_META, "model": None}, b"{}"),
        _envelope({k: v for k, v in GOOD_META.items() if k != "provider"}, b"{}"),
        _envelope({**GOOD_META, "size": 3}, b"{}"),
        _envelope(GOOD_META, b"{}  "),  # bytes after the body
        _envelope({**GOOD_META, "size": 2}, zlib.compress(b"{}") + b"tail", flags=entry.FLAG_ZLIB),
        _envelope({**GOOD_META, "size": 2}, zlib.compress(b"{}{}"), flags=entry.FLAG_ZLIB),  # inflates past size
        _envelope({**GOOD_META, "size": 2}, b"not zlib", flags=entry.FLAG_ZLIB),
        _envelope({**GOOD_META, "size": entry.MAX_BODY_BYTES + 1}, b"{}"),
        struct.pack(">4sBBI", entry.MAGIC, entry.VERSION, 0, 10**6) + b"{}",  # meta longer than the entry
        struct.pack(">4sBBI", entry.MAGIC, entry.VERSION, 0, 2) + b"[]{}",  # meta not an object
    ],
)
def test_foreign_damaged_or_other_version_entries_are_misses(raw: bytes) -> None:
    assert decode(raw) is None


def test_a_responses_entry_round_trips() -> None:
    answer = CachedAnswer("responses", 200, b'{"object":"response"}', 1.0, "p", "m", {"input_tokens": 3})
    assert decode(encode(answer)) == answer


def test_the_envelope_itself_is_version_one() -> None:
    assert decode(_envelope(GOOD_META, b"{}")) == CachedAnswer("openai", 200, b"{}", 1.0, "p", "m", {})


@pytest.mark.parametrize(
    ("status", "content_type", "body", "cacheable"),
    [
        (200, "application/json", b'{"id":"msg_1","type":"message"}', True),
        (200, "application/json; charset=utf-8", b'{"id":"chatcmpl-1","choices":[]}', True),
        (201, "Application/JSON", b"{}", True),
        (200, "application/problem+json", b'{"id":"x"}', True),
        (200, "text/event-stream", b"data: {}\n\n", False),  # streams are stored as answers (replay)
        (200, None, b"{}", False),
        (200, "text/plain", b"{}", False),
        (200, "application/json", b"", False),
        (200, "application/json", b"[1, 2]", False),
        (200, "application/json", b"{truncated", False),
        (200, "application/json", b'{"type":"error","error":{"type":"overloaded_error","message":"x"}}', False),
        (200, "application/json", b'{"error":{"message":"quota","type":"insufficient_quota"}}', False),
        # A Responses answer: only a finished one (completed, or incomplete at its output limit).
        (200, "application/json", b'{"object":"response","status":"completed","error":null}', True),
        (200, "application/json", b'{"object":"response","status":"incomplete","error":null}', True),
        (200, "application/json", b'{"object":"response","status":"in_progress","error":null}', False),
        (200, "application/json", b'{"object":"response","status":"queued"}', False),
        (200, "application/json", b'{"object":"response","status":"failed","error":{"code":"server_error"}}', False),
        (204, "application/json", b"", False),
        (301, "application/json", b"{}", False),
        (429, "application/json", b'{"type":"error"}', False),
        (500, "application/json", b"{}", False),
    ],
)
def test_only_successful_json_answers_are_cacheable(status, content_type, body, cacheable) -> None:
    assert cacheable_answer(status, content_type, body) is cacheable
