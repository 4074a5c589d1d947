"""One cached answer and its stored form (sans-IO: bytes in, bytes out, no clock, no store).

An entry holds the answer exactly as the client received it, in the client's API and in its
non-streaming form: a streaming client is answered by replaying it (extproc.cache.replay), a
buffered one gets the bytes as they are. The provider and model that served it, the usage it
reported and when it was made travel with it, so a hit can be logged and priced as the original
answer was.

Stored form, version 1 (all integers big-endian)::

    b"CCRC"  version:u8  flags:u8  meta_len:u32  meta (JSON)  body

``meta`` holds api, status, created_at, provider, model, usage and the body's length before
compression (``size``); ``flags`` bit 0 says the body is zlib-compressed, done only above
``COMPRESS_ABOVE`` bytes (below it zlib saves little and costs a few microseconds per hit). A
store shared by gateways of several versions must never serve an answer it cannot read, so
``decode`` answers None for anything it does not fully understand: another magic or version,
truncated or trailing bytes, a body that does not inflate to ``size``, a field of the wrong
type. A corrupt entry is a miss, never an error.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

VERSION = 1
MAGIC = b"CCRC"
COMPRESS_ABOVE = 4096  # bytes of body; JSON answers this size shrink 3-6x
COMPRESSION_LEVEL = 6  # zlib's default: level 9 costs ~2x the CPU for a few percent less
FLAG_ZLIB = 0x01
MAX_BODY_BYTES = 64 * 1024 * 1024  # inflating more than this is a corrupt (or hostile) entry
CLIENT_APIS = frozenset({"anthropic", "openai", "responses"})

_HEAD = struct.Struct(">4sBBI")  # magic, version, flags, meta length


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    api: str  # the client API value: "anthropic" | "openai" | "responses" (extproc.translate.base.Api)
    status: int
    body: bytes  # the JSON answer in the client's format, non-streaming form
    created_at: float  # Unix time the provider's answer arrived (a hit's age is measured from it)
    provider: str
    model: str
    usage: dict[str, Any]  # token counts as the answer reported them (input/output/cache)


def encode(answer: CachedAnswer) -> bytes:
    body = answer.body
    flags = 0
    if len(body) > COMPRESS_ABOVE:
        flags |= FLAG_ZLIB
        body = zlib.compress(body, COMPRESSION_LEVEL)
    meta = orjson.dumps(
        {
            "api": answer.api,
            "status": answer.status,
            "created_at": answer.created_at,
            "provider": answer.provider,
            "model": answer.model,
            "usage": answer.usage,
            "size": len(answer.body),
        }
    )
    return _HEAD.pack(MAGIC, VERSION, flags, len(meta)) + meta + body


def decode(raw: bytes) -> CachedAnswer | None:
    if not isinstance(raw, bytes | bytearray | memoryview) or len(raw) < _HEAD.size:
        return None
    magic, version, flags, meta_len = _HEAD.unpack_from(raw)
    if magic != MAGIC or version != VERSION or flags & ~FLAG_ZLIB:
        return None
    meta_end = _HEAD.size + meta_len
    if meta_end > len(raw):
        return None
    try:
        meta = orjson.loads(raw[_HEAD.size : meta_end])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(meta, dict):
        return None
    api, status, created_at = meta.get("api"), meta.get("status"), meta.get("created_at")
    provider, model, usage, size = meta.get("provider"), meta.get("model"), meta.get("usage"), meta.get("size")
    if (
        api not in CLIENT_APIS
        or not _is_int(status)
        or not (_is_int(created_at) or isinstance(created_at, float))
        or not isinstance(provider, str)
        or not isinstance(model, str)
        or not isinstance(usage, dict)
        or not _is_int(size)
        or not 0 <= size <= MAX_BODY_BYTES
    ):
        return None
    body = bytes(raw[meta_end:])
    if flags & FLAG_ZLIB:
        body = _inflate(body, size)
        if body is None:
            return None
    if len(body) != size:
        return None
    return CachedAnswer(
        api=api, status=status, body=body, created_at=float(created_at), provider=provider, model=model, usage=usage
    )


def cacheable_answer(status: int, content_type: str | None, body: bytes) -> bool:
    """Only a successful JSON answer is stored: a 2xx status, a JSON media type, and a body that is
    a JSON object which is not an error (some servers answer errors with a 200), nor a Responses
    ``response`` that did not finish (failed, or still queued or in progress)."""
    if not 200 <= status < 300 or not content_type or not body:
        return False
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        return False
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(answer, dict) or answer.get("type") == "error" or answer.get("error") is not None:
        return False
    return answer.get("object") != "response" or answer.get("status") in ("completed", "incomplete")


def _inflate(data: bytes, size: int) -> bytes | None:
    inflater = zlib.decompressobj()
    try:
        body = inflater.decompress(data, size + 1)  # one byte more than promised: enough to see a lie
    except zlib.error:
        return None
    if not inflater.eof or inflater.unused_data or inflater.unconsumed_tail:
        return None  # truncated, or bytes after the compressed stream
    return body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
