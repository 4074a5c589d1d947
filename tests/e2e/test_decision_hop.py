"""The decision hop's Envoy half (control_plane/resources/decision_hop.lua) in a real Envoy, against a
scripted decision service: what it applies, and that it fails closed.

The Envoy here has only the Lua filter and a route table like the gateway's (a route per cluster
header, a 404 for an undecided request); the upstream echoes what reached it. The scripted hop
answers what the test's ``x-test-answer`` header names, so each failure is exact: the service down,
too slow, answering 500, answering garbage.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ccr.v1.contract import CLUSTER_HEADER
from ccr_gateway.supervisor import envoy_binary, free_port
from control_plane.resources.decision_hop import HOP_CLUSTER, lua_source

HOP_TIMEOUT_MS = 400
FORWARD = (
    b"ccr1 forward\nset\t:path\t/v1/chat/completions\nset\t" + CLUSTER_HEADER.encode() + b"\techo\n"
    b"remove\tx-api-key\t\nlabel\tclient_api\tanthropic\n\n" + b'{"translated": true}'
)
ANSWERS = {
    "forward": (200, FORWARD),
    "reply": (200, b'ccr1 reply\nstatus\t429\t\nheader\tcontent-type\tapplication/json\n\n{"answered": "here"}'),
    "forward-unrouted": (200, b"ccr1 forward\n\n"),
    "garbage": (200, b"this is not an answer"),
    "unknown-action": (200, b"ccr1 teleport\n\n"),
    "error": (500, b"internal error"),
}


class _Servers:
    """The scripted hop and the echoing upstream, on one asyncio loop in a thread."""

    def __init__(self) -> None:
        self.hop_port, self.echo_port = free_port(), free_port()
        self.loop = asyncio.new_event_loop()
        self.seen: list[dict] = []  # what the hop received: method, path, headers
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait(5)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(asyncio.start_server(self._hop, "127.0.0.1", self.hop_port))
        self.loop.run_until_complete(asyncio.start_server(self._echo, "127.0.0.1", self.echo_port))
        started.set()
        self.loop.run_forever()

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        first, *lines = head.strip().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return first, headers, body

    async def _hop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                first, headers, body = await self._read(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            self.seen.append({"line": first, "headers": headers, "body": body})
            answer = headers.get("x-test-answer", "forward")
            if answer == "slow":
                await asyncio.sleep(HOP_TIMEOUT_MS / 1000 * 5)
                continue
            status, payload = ANSWERS[answer]
            writer.write(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n" % (status, len(payload)) + payload)
            await writer.drain()

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first, headers, body = await self._read(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        echoed = json.dumps({"line": first, "headers": headers, "body": body.decode()}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(echoed))
        writer.write(echoed)
        await writer.drain()
        writer.close()


def _cluster(name: str, port: int) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
                    ]
                }
            ],
        },
    }


def _config(listen: int, hop_port: int, echo_port: int) -> dict:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "hoptest",
        "http_filters": [
            {
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": {"inline_string": lua_source(HOP_TIMEOUT_MS)},
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {
                                "prefix": "/",
                                "headers": [{"name": CLUSTER_HEADER, "string_match": {"exact": "echo"}}],
                            },
                            "route": {"cluster": "echo"},
                        },
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 404, "body": {"inline_string": "undecided"}},
                        },
                    ],
                }
            ]
        },
    }
    return {
        "static_resources": {
            "listeners": [
                {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": [_cluster(HOP_CLUSTER, hop_port), _cluster("echo", echo_port)],
        }
    }


@pytest.fixture(scope="module")
def envoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, _Servers]]:
    servers = _Servers()
    listen = free_port()
    path = Path(tmp_path_factory.mktemp("hop")) / "envoy.yaml"
    path.write_text(yaml.safe_dump(_config(listen, servers.hop_port, servers.echo_port)))
    process = subprocess.Popen(
        [envoy_binary(), "-c", str(path), "--base-id", str(listen), "-l", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            http.client.HTTPConnection("127.0.0.1", listen, timeout=1).connect()
            break
        except OSError:
            time.sleep(0.1)
    yield listen, servers
    process.terminate()
    process.wait(10)


def _post(port: int, path: str, body: bytes, **headers: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", path, body, {k.replace("_", "-"): v for k, v in headers.items()})
    response = connection.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def test_a_forward_answer_rewrites_the_request_and_routes_it(envoy):
    port, servers = envoy
    status, _, body = _post(
        port, "/v1/messages", b'{"model": "m"}', x_api_key="secret", content_type="application/json"
    )
    assert status == 200
    echoed = json.loads(body)
    assert echoed["line"] == "POST /v1/chat/completions HTTP/1.1"
    assert echoed["body"] == '{"translated": true}'
    assert echoed["headers"]["content-length"] == str(len(b'{"translated": true}'))
    assert "x-api-key" not in echoed["headers"]
    asked = servers.seen[-1]
    assert asked["line"] == "POST /decide HTTP/1.1"
    assert asked["headers"]["x-ccr-hop-path"] == "/v1/messages" and asked["headers"]["x-api-key"] == "secret"
    assert asked["body"] == b'{"model": "m"}'


def test_a_reply_answer_reaches_the_client_untouched(envoy):
    port, _ = envoy
    status, headers, body = _post(port, "/v1/messages", b"{}", x_test_answer="reply")
    assert (status, headers["content-type"], json.loads(body)) == (429, "application/json", {"answered": "here"})


def test_a_client_cannot_route_itself_with_internal_headers(envoy):
    port, servers = envoy
    # The hop forwards without naming a cluster: the client's own x-ccr-cluster is gone, so nothing
    # routes the request.
    status, _, body = _post(
        port, "/v1/messages", b"{}", x_test_answer="forward-unrouted", **{CLUSTER_HEADER.replace("-", "_"): "echo"}
    )
    assert (status, body) == (404, b"undecided")
    assert CLUSTER_HEADER not in servers.seen[-1]["headers"]


@pytest.mark.parametrize("answer", ["garbage", "unknown-action", "error"])
def test_a_bad_answer_fails_closed_in_the_clients_format(envoy, answer):
    port, _ = envoy
    status, _, body = _post(port, "/v1/messages", b"{}", x_test_answer=answer)
    assert status == 503
    assert json.loads(body)["type"] == "error"  # Anthropic's shape
    status, _, body = _post(port, "/v1/chat/completions", b"{}", x_test_answer=answer)
    assert status == 503
    assert json.loads(body)["error"]["code"] == "ccr_hop_unavailable"  # OpenAI's shape


def test_a_slow_decision_service_fails_closed_within_the_timeout(envoy):
    port, _ = envoy
    started = time.monotonic()
    status, _, body = _post(port, "/v1/messages", b"{}", x_test_answer="slow")
    elapsed = time.monotonic() - started
    assert status == 503 and "unavailable" in json.loads(body)["error"]["message"]
    assert elapsed < HOP_TIMEOUT_MS / 1000 + 2  # bounded by the hop timeout, not by the service


def test_a_decision_service_that_is_down_fails_closed(tmp_path):
    servers_port, echo_port, listen = free_port(), free_port(), free_port()  # nothing listens on the first
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(_config(listen, servers_port, echo_port)))
    process = subprocess.Popen(
        [envoy_binary(), "-c", str(path), "--base-id", str(listen), "-l", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, _, body = _post(listen, "/v1/chat/completions", b"{}")
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert status == 503
        assert json.loads(body)["error"]["type"] == "server_error"
    finally:
        process.terminate()
        process.wait(10)


# --- the gateway: which path each request takes, and both paths answer alike -----------------------


def _ask_gateway(gateway, model: str, stream: bool = False, api: str = "anthropic") -> tuple[int, bytes]:
    from tests.e2e.gateway import http

    message = [{"role": "user", "content": "hi"}]
    if api == "anthropic":
        payload = {"model": model, "max_tokens": 20, "stream": stream, "messages": message}
        url, headers = f"{gateway.url}/v1/messages", {"anthropic-version": "2023-06-01"}
    else:
        payload = {"model": model, "stream": stream, "messages": message}
        url, headers = f"{gateway.url}/v1/chat/completions", {"authorization": "Bearer client"}
    status, _, body = http("POST", url, json.dumps(payload).encode(), {"content-type": "application/json", **headers})
    return status, body


def _counts(gateway) -> tuple[int, int, int]:
    return (
        gateway.envoy_stat("cluster.ccr_hop.upstream_rq_total"),
        gateway.envoy_stat("http.ccr.ext_proc.streams_started"),
        gateway.envoy_stat("http.ccr.ext_proc.stream_msgs_sent"),
    )


def _delta(gateway, ask) -> tuple[int, int, int]:
    before = _counts(gateway)
    ask()
    after = _counts(gateway)
    return tuple(a - b for a, b in zip(after, before, strict=True))  # type: ignore[return-value]


def test_each_request_kind_takes_the_cheapest_path(gateway):
    # Passthrough: one decision, no gRPC stream.
    assert _delta(gateway, lambda: _ask_gateway(gateway, "claude-haiku-4-5")) == (1, 0, 0)
    # Translated whole answer: the decision, then the answer through /respond; no stream.
    assert _delta(gateway, lambda: _ask_gateway(gateway, "gpt-4o")) == (2, 0, 0)
    # Translated stream: one decision, then ext_proc on the response only (headers and chunks).
    hops, streams, messages = _delta(gateway, lambda: _ask_gateway(gateway, "gpt-4o", stream=True))
    assert (hops, streams) == (1, 1) and messages >= 2
    # The gateway's own answers (a bad request, the model list) open no stream either.
    assert _delta(gateway, lambda: _ask_gateway(gateway, "gpt-4o", api="openai-without-messages"))[1] == 0


def test_switching_the_decision_path_live_changes_no_answer(gateway):
    from tests.e2e.gateway import wait_until

    asks = [
        ("claude-haiku-4-5", False, "anthropic"),
        ("gpt-4o", False, "anthropic"),
        ("gpt-4o", True, "anthropic"),
        ("gemini-2.5-pro", True, "openai"),
        ("claude-sonnet-4-5", False, "openai"),
    ]
    on_hop = [_ask_gateway(gateway, *ask) for ask in asks]
    original = gateway.policy
    gateway.write_policy({**original, "listener": {**original["listener"], "decision": "ext_proc"}})
    try:
        wait_until(lambda: _delta(gateway, lambda: _ask_gateway(gateway, "gpt-4o"))[0] == 0, 20, "ext_proc path")
        on_ext_proc = [_ask_gateway(gateway, *ask) for ask in asks]
    finally:
        gateway.write_policy(original)
        wait_until(lambda: _delta(gateway, lambda: _ask_gateway(gateway, "gpt-4o"))[0] == 2, 20, "hop path")
    for (status_hop, body_hop), (status_ext, body_ext), ask in zip(on_hop, on_ext_proc, asks, strict=True):
        assert status_hop == status_ext == 200, ask
        assert _normalized(body_hop) == _normalized(body_ext), ask


def _normalized(body: bytes) -> str:
    """Answers minus what differs per response (ids, timestamps, the fake's counters)."""
    import re

    text = body.decode()
    text = re.sub(r'"(id|created)":\s*("[^"]*"|\d+)', r'"\1":_', text)
    return re.sub(r"(msg_|chatcmpl-)[A-Za-z0-9_-]+", r"\1_", text)
