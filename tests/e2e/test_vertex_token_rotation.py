"""Issue 25's acceptance: a Vertex token rotates while requests flow, and none of them fails.

A local "metadata server" (the source ``credentials: metadata`` reads, found through
GCE_METADATA_HOST as Google's libraries do) hands out a new token on every call, each valid for a
few seconds; a local "Vertex" accepts a token only while it is valid (401 otherwise, as Google
does). The gateway's control plane refreshes the token at half its life and pushes it to Envoy as
a new version of the provider's SDS secret (control_plane.gcp_tokens): no restart, no drained
connection. Clients keep sending through the real gateway the whole time; every answer must be a
200, and the provider must have seen several tokens, each one only while it was valid.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.gateway import Gateway, environment, free_port, http, wait_until

TOKEN_LIFE_S = 6  # refreshed at half its life: three seconds of margin for the push to Envoy
FLOW_S = 12.0
CLIENTS = 3
VERTEX_ID = "claude-sonnet-4-5@20250929"

_issued: dict[str, float] = {}  # token -> when it expires
_counter = itertools.count(1)
_seen: list[tuple[str, bool]] = []  # (token, valid when it arrived)
_lock = threading.Lock()
_metadata_down = threading.Event()  # the metadata server answers 503 (a GKE node losing it)


class MetadataServer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.headers.get("Metadata-Flavor") != "Google" or not self.path.endswith("/token"):
            self.send_error(404)
            return
        if _metadata_down.is_set():
            self._json(503, {"error": "metadata server unavailable"})
            return
        token = f"ya29.rotating-{next(_counter)}"
        with _lock:
            _issued[token] = time.time() + TOKEN_LIFE_S
        self._json(200, {"access_token": token, "expires_in": TOKEN_LIFE_S, "token_type": "Bearer"})

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


class RotatingVertex(MetadataServer):
    """rawPredict for an Anthropic model, answered only to a token the metadata server issued and
    that has not expired."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        token = self.headers.get("authorization", "").removeprefix("Bearer ")
        with _lock:
            valid = _issued.get(token, 0.0) > time.time()
            _seen.append((token, valid))
        if not valid:
            self._json(
                401, {"error": {"code": 401, "message": "invalid or expired token", "status": "UNAUTHENTICATED"}}
            )
            return
        self._json(
            200,
            {
                "id": "msg_vertex",
                "type": "message",
                "role": "assistant",
                "model": VERTEX_ID,
                "content": [{"type": "text", "text": "rotated"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 3, "output_tokens": 1},
            },
        )


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def gw(workdir: Path) -> Iterator[Gateway]:
    metadata, vertex = _serve(MetadataServer), _serve(RotatingVertex)
    policy = {
        "listener": {"address": "127.0.0.1", "port": free_port()},
        "providers": [
            {
                "name": "vertex",
                "api": "vertex",
                "project": "rotation-project",
                "region": "us-east5",
                "base_url": f"http://127.0.0.1:{vertex.server_address[1]}",
                "credentials": "metadata",
                "models": [{"name": "claude-vertex", "id": VERTEX_ID}],
            }
        ],
    }
    try:
        with environment({"GCE_METADATA_HOST": f"127.0.0.1:{metadata.server_address[1]}"}):  # the control plane's
            gateway = Gateway.start(workdir, policy, name="vertex-rotation", workers=1)
            yield gateway
            gateway.stop()
    finally:
        metadata.shutdown()
        vertex.shutdown()


def _ask(gateway: Gateway) -> tuple[int, bytes]:
    request = {"model": "claude-vertex", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    status, _, body = http(
        "POST",
        gateway.url + "/v1/messages",
        json.dumps(request).encode(),
        {"content-type": "application/json", "anthropic-version": "2023-06-01"},
    )
    return status, body


def test_requests_flow_without_a_failure_while_the_token_rotates(gw: Gateway) -> None:
    wait_until(lambda: _ask(gw)[0] == 200, 30, "the first token in Envoy")
    with _lock:
        _seen.clear()
    failures: list[tuple[int, bytes]] = []
    answered = [0]
    deadline = time.monotonic() + FLOW_S

    def client() -> None:
        while time.monotonic() < deadline:
            status, body = _ask(gw)
            with _lock:
                answered[0] += 1
                if status != 200:
                    failures.append((status, body[:300]))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with _lock:
        tokens = list(dict.fromkeys(token for token, _ in _seen))
        refused = [token for token, valid in _seen if not valid]
    print(f"\n{answered[0]} requests in {FLOW_S:.0f} s, {len(tokens)} tokens, {len(failures)} failed")
    assert failures == [], f"{len(failures)} of {answered[0]} requests failed: {failures[:3]}"
    assert refused == []
    # 12 s of tokens living 6 s, each replaced at half its life: about four of them.
    assert len(tokens) >= 3, tokens
    assert answered[0] >= 30


def test_once_the_last_token_expired_unrenewed_requests_get_a_clear_503_and_vertex_no_stale_token(
    gw: Gateway,
) -> None:
    """Expired credentials: the control plane keeps the last token until it expires, then empties
    the secret; Envoy refuses to send without one, answered as a 503 in the client's format, at
    once (no hang), and the provider never sees an expired token."""
    _metadata_down.set()
    try:
        with _lock:
            _seen.clear()
        time.sleep(TOKEN_LIFE_S)  # the last token issued is past its life now

        def refused() -> tuple[int, bytes] | None:
            started = time.monotonic()
            status, body = _ask(gw)
            assert time.monotonic() - started < 5, "the refusal took too long"
            return (status, body) if status == 503 else None

        _, body = wait_until(refused, 30, "the refusal once no token is left")
        error = json.loads(body)
        assert error["type"] == "error" and error["error"]["type"] == "api_error", error
        assert "has no API key" in error["error"]["message"] and "ya29" not in body.decode()
        with _lock:
            assert [token for token, valid in _seen if not valid] == []
    finally:
        _metadata_down.clear()
    wait_until(lambda: _ask(gw)[0] == 200, 60, "a new token once the metadata server is back")
