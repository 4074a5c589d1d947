"""Edge hardening through real Envoy (policy ``listener.hardening``, docs/edge-hardening.md): header
size (431), underscores in header names, escaped slashes, headers that never finish, an SSE answer
longer than request_timeout, and the connection limit. One gateway with tight knobs, for this module."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path

import pytest

from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port, http

MAX_CONNECTIONS = 6
HEADERS_TIMEOUT_S = 1
REQUEST_TIMEOUT_S = 1
MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def hardened(workdir: Path, fake: FakeProvider) -> Iterator[Gateway]:
    policy = base_policy(free_port(), fake)
    policy["listener"]["hardening"] = {
        "max_connections": MAX_CONNECTIONS,
        "request_headers_timeout": HEADERS_TIMEOUT_S,
        "request_timeout": REQUEST_TIMEOUT_S,
        "reject_escaped_slashes": True,
        "headers_with_underscores": "drop",
    }
    gateway = Gateway.start(workdir, policy, name="hardened", workers=1)
    yield gateway
    gateway.stop()


def _post(gateway: Gateway, path: str, body: dict, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    sent = {"content-type": "application/json", "authorization": "Bearer k", **(headers or {})}
    status, _, raw = http("POST", gateway.url + path, json.dumps(body).encode(), sent)
    return status, json.loads(raw) if raw else {}


def _anthropic_error(body: dict) -> str:
    assert body["type"] == "error" and isinstance(body["error"]["type"], str)
    return body["error"]["message"]


def _openai_error(body: dict) -> str:
    error = body["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    return error["message"]


@pytest.mark.parametrize(("path", "body"), [("/v1/messages", MESSAGE), ("/v1/chat/completions", CHAT)])
def test_headers_over_the_decision_limit_get_a_431_in_the_clients_format(hardened, path, body):
    status, error = _post(hardened, path, body, {"x-big": "a" * 70 * 1024})  # under Envoy's 128 KB
    assert status == 431
    assert "gateway limit" in (_openai_error(error) if "chat" in path else _anthropic_error(error))


def test_headers_over_envoys_limit_close_the_connection(hardened):
    """Known limit (docs/edge-hardening.md): Envoy's codec refusal passes ext_proc's response phase,
    which holds it while the connection closes: the client gets no answer."""
    assert _post(hardened, "/v1/messages", MESSAGE, {"x-big": "a" * 200 * 1024})[0] == 0


def test_a_header_name_with_an_underscore_is_dropped(hardened):
    assert _post(hardened, "/v1/messages", MESSAGE, {"x_tenant": "a"})[0] == 200


def test_an_escaped_slash_in_the_path_is_refused_in_the_clients_format(hardened):
    status, error = _post(hardened, "/v1/chat%2Fcompletions", CHAT)
    assert status == 400 and "escaped slash" in _openai_error(error)
    status, error = _post(hardened, "/v1%2Fmessages", MESSAGE)
    assert status == 400 and "escaped slash" in _anthropic_error(error)
    # Dot segments and doubled slashes are normalized, not refused.
    assert _post(hardened, "/v1/./x/..//messages", MESSAGE)[0] == 200


def test_a_client_that_never_finishes_its_headers_is_cut(hardened):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", hardened.listener_port), timeout=10) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert HEADERS_TIMEOUT_S * 0.8 <= waited < HEADERS_TIMEOUT_S + 5
    assert "did not arrive" in _anthropic_error(json.loads(answer.split(b"\r\n\r\n", 1)[1]))


def test_an_sse_answer_longer_than_request_timeout_is_not_cut(hardened):
    body = {**MESSAGE, "stream": True}
    headers = {"x-fake-chunks": "12", "x-fake-chunk-delay-ms": "200"}  # ~2.4 s > request_timeout
    started = time.monotonic()
    status, _, raw = http(
        "POST",
        hardened.url + "/v1/messages",
        json.dumps(body).encode(),
        {"content-type": "application/json", **headers},
    )
    assert status == 200 and time.monotonic() - started > REQUEST_TIMEOUT_S * 1.5
    assert b"event: message_stop" in raw


def test_past_the_connection_limit_new_connections_are_refused_and_open_ones_still_work(hardened):
    connections = []
    try:
        for _ in range(MAX_CONNECTIONS):
            connection = HTTPConnection("127.0.0.1", hardened.listener_port, timeout=5)
            connection.request("GET", "/health")
            assert connection.getresponse().read() == b'{"status":"ok"}'  # kept open (HTTP/1.1)
            connections.append(connection)
        with socket.create_connection(("127.0.0.1", hardened.listener_port), timeout=5) as extra:
            try:
                extra.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
                assert extra.recv(100) == b""  # closed without an answer
            except ConnectionResetError:
                pass
        for connection in connections:  # the ones already open still work
            connection.request("GET", "/health")
            assert connection.getresponse().status == 200
    finally:
        for connection in connections:
            connection.close()
    assert hardened.envoy_stat(f"listener.127.0.0.1_{hardened.listener_port}.downstream_global_cx_overflow") >= 1
