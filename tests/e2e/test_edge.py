"""The HTTP edge through real Envoy: /health, request ids, oversized headers and bodies, encoded and
broken bodies, CORS, methods a path does not answer."""

from __future__ import annotations

import copy
import gzip
import json
import struct
import zlib
from http.client import HTTPConnection

import pytest

from tests.e2e.gateway import Gateway, http, wait_until

MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
RAW = json.dumps(MESSAGE).encode()
ORIGIN = "https://app.example.com"


def _post(gateway: Gateway, path: str, body: bytes, **headers: str) -> tuple[int, dict, dict]:
    sent = {"content-type": "application/json", **{k.replace("_", "-"): v for k, v in headers.items()}}
    status, got, raw = http("POST", gateway.url + path, body, sent)
    return status, {k.lower(): v for k, v in got.items()}, json.loads(raw) if raw else {}


def _message(error: dict) -> str:
    return error["error"]["message"]


def brotli_stored(data: bytes) -> bytes:
    """``data`` as a brotli stream of one uncompressed meta-block (RFC 7932 9.2), so the test needs
    no brotli library: WBITS=16, then ISLAST=0, MNIBBLES, MLEN-1, ISUNCOMPRESSED=1, the bytes at
    the next byte boundary, then an empty last meta-block."""
    assert 0 < len(data) <= 1 << 24
    nibbles = next(n for n in (4, 5, 6) if len(data) - 1 < 1 << (4 * n))  # the fewest: a 0 top nibble is invalid
    bits = 0  # WBITS: 16 (bit 0), ISLAST: 0 (bit 1)
    bits |= (nibbles - 4) << 2
    bits |= (len(data) - 1) << 4
    bits |= 1 << (4 + 4 * nibbles)  # ISUNCOMPRESSED
    header = bits.to_bytes((5 + 4 * nibbles + 7) // 8, "little")  # padded with zeros to the byte boundary
    return header + data + b"\x03"  # ISLAST=1, ISLASTEMPTY=1


def zstd_raw(data: bytes) -> bytes:
    """``data`` as a zstd frame of one raw block (RFC 8878): no zstd library needed."""
    assert len(data) < 1 << 21
    descriptor = 0b0110_0000  # content size in 2 bytes (+256), single segment
    frame = struct.pack("<IBH", 0xFD2FB528, descriptor, len(data) - 256) if len(data) >= 256 else b""
    if not frame:
        frame = struct.pack("<IBB", 0xFD2FB528, 0b0010_0000, len(data))  # 1-byte content size
    block = (len(data) << 3) | 0b001  # last block, raw
    return frame + block.to_bytes(3, "little") + data


def test_health_is_answered_by_envoy_and_never_counted_as_rejected(gateway):
    rejected = gateway.extproc_metric("ccr_rejected_requests_total")
    status, headers, body = http("GET", gateway.url + "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert headers["content-type"] == "application/json"
    assert http("HEAD", gateway.url + "/health")[0] == 200
    assert http("POST", gateway.url + "/health", b"{}", {"content-type": "application/json"})[0] == 404
    assert gateway.extproc_metric("ccr_rejected_requests_total") == rejected + 1  # the POST only


def test_every_answer_carries_the_access_logs_request_id(gateway):
    answers = [
        _post(gateway, "/v1/messages", RAW),  # the provider's
        _post(gateway, "/v1/messages", b"{"),  # the decision hop's
        _post(gateway, "/v1/messages", RAW.replace(b"claude-sonnet-4-5", b"claude-unreachable")),  # Envoy's
    ]
    assert [status for status, _, _ in answers] == [200, 400, 503]

    def logged(request_id: str) -> bool:
        return f'"request_id":"{request_id}"' in gateway.log()

    for _, headers, _ in answers:
        assert headers["request-id"] == headers["x-request-id"]
        # Envoy flushes its stdout access log every few seconds.
        wait_until(lambda h=headers: logged(h["request-id"]), 30, "the access log entry")


@pytest.mark.parametrize("size", [61 * 1024, 100 * 1024])
def test_oversized_headers_get_a_431_in_the_clients_format(gateway, size):
    status, headers, body = _post(gateway, "/v1/messages", RAW, x_big="a" * size)
    assert status == 431 and body["type"] == "error" and "gateway limit" in _message(body)
    assert headers["request-id"]
    openai = RAW.replace(b"claude-sonnet-4-5", b"gpt-4o")
    status, _, body = _post(gateway, "/v1/chat/completions", openai, x_big="a" * size, authorization="Bearer k")
    assert status == 431 and set(body) == {"error"}


def test_a_body_over_the_limit_is_a_413_naming_it_in_the_clients_format(gateway):
    big = RAW.replace(b'"hi"', b'"' + b"x" * (2 << 20) + b'"')
    status, headers, body = _post(gateway, "/v1/chat/completions", big, authorization="Bearer k")
    assert status == 413 and set(body) == {"error"} and headers["request-id"]
    assert _message(body) == "request body is larger than the gateway limit of 1048576 bytes"


@pytest.mark.parametrize(
    "encoding, encode", [("gzip", gzip.compress), ("br", brotli_stored), ("zstd", zstd_raw)], ids=["gzip", "br", "zstd"]
)
def test_encoded_bodies_are_decoded_before_the_decision(gateway, fake, encoding, encode):
    status, _, body = _post(gateway, "/v1/messages", encode(RAW), content_encoding=encoding)
    assert status == 200, body
    forwarded = fake.requests()[-1]
    assert forwarded["body"]["messages"] == MESSAGE["messages"]
    assert "content-encoding" not in {k.lower() for k in forwarded["headers"]}


def test_an_encoding_envoy_does_not_decode_is_a_415(gateway, fake):
    status, _, body = _post(gateway, "/v1/messages", zlib.compress(RAW), content_encoding="deflate")
    assert status == 415 and "deflate" in _message(body)
    assert fake.requests() == []


@pytest.mark.parametrize("body", [RAW, gzip.compress(RAW)[:20]], ids=["plain", "truncated"])
def test_a_body_that_is_not_what_its_encoding_says_is_a_clear_400(gateway, fake, body):
    status, headers, error = _post(gateway, "/v1/messages", body, content_encoding="gzip")
    assert status == 400 and headers["content-type"] == "application/json"
    assert "labelled Content-Encoding 'gzip'" in _message(error)
    assert fake.requests() == []


def test_invalid_utf8_is_a_400_naming_the_byte_offset(gateway):
    raw = RAW.replace(b'"hi"', b'"h\xffi"')
    status, _, body = _post(gateway, "/v1/messages", raw)
    assert status == 400
    offset = raw.index(b"\xff")
    assert _message(body).startswith(f"request body is not valid UTF-8: byte 0xff at offset {offset}")


def test_options_without_cors_is_a_405_with_allow(gateway):
    status, got, raw = http("OPTIONS", gateway.url + "/v1/messages")
    headers = {k.lower(): v for k, v in got.items()}
    assert status == 405 and headers["allow"] == "POST" and json.loads(raw)["type"] == "error"
    assert http("HEAD", gateway.url + "/v1/models")[0] == 200


def _preflight(gateway: Gateway, origin: str) -> tuple[int, dict]:
    connection = HTTPConnection("127.0.0.1", gateway.listener_port, timeout=5)
    try:
        connection.request(
            "OPTIONS",
            "/v1/messages",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,x-api-key",
            },
        )
        response = connection.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


@pytest.fixture
def cors_gateway(gateway):
    """The shared gateway with CORS on for one test, then as it was (a live policy edit each way)."""
    original = copy.deepcopy(gateway.policy)
    policy = copy.deepcopy(original)
    policy["listener"]["cors"] = {"allow_origins": [ORIGIN], "max_age": 300}
    gateway.write_policy(policy)
    wait_until(lambda: _preflight(gateway, ORIGIN)[0] == 200, 20, "the CORS policy to be live")
    yield gateway
    gateway.write_policy(original)
    wait_until(lambda: _preflight(gateway, ORIGIN)[0] == 405, 20, "the CORS policy to be gone")


def test_cors_preflights_are_answered_by_envoy_and_answers_expose_the_ids(cors_gateway, fake):
    rejected = cors_gateway.extproc_metric("ccr_rejected_requests_total")
    status, headers = _preflight(cors_gateway, ORIGIN)
    assert status == 200 and headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in headers["access-control-allow-methods"] and headers["access-control-max-age"] == "300"
    assert "x-api-key" in headers["access-control-allow-headers"]
    status, headers = _preflight(cors_gateway, "https://elsewhere.example.com")
    assert status == 200 and "access-control-allow-origin" not in headers  # the browser refuses
    assert cors_gateway.extproc_metric("ccr_rejected_requests_total") == rejected
    status, headers, _ = _post(cors_gateway, "/v1/messages", RAW, origin=ORIGIN)
    assert status == 200 and headers["access-control-allow-origin"] == ORIGIN
    assert "request-id" in headers["access-control-expose-headers"]
