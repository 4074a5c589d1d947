"""The MCP gateway's spans through the real gateway, into an OTLP receiver started here: a tools/call
sent with the client's traceparent is one trace holding Envoy's spans (the request, the hop, the
call to the MCP service) and the MCP service's (``mcp.tools/call``, the child of Envoy's call to
it; ``mcp.upstream.tools/call``, the upstream call). The MCP service follows the policy's
``tracing:`` like an ext_proc worker (service name ``<name>-mcp``). Envoy's MCP egress listener
traces nothing (control_plane/resources/mcp.py gives it no tracing): it passes the upstream call's
traceparent on untouched, which tests/integration/test_mcp_tracing.py checks at the server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port, http, wait_until
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def gateway(workdir: Path, fake: FakeProvider, receiver: OtlpReceiver) -> Iterator[Gateway]:
    port = free_port()
    log = open(workdir / "mcp-tracing-server.log", "wb")  # noqa: SIM115
    command = [sys.executable, "-m", "fake_provider.mcp_servers", "http", "--port", str(port), "--json-response"]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    started = None
    try:
        wait_until(lambda: http("GET", f"http://127.0.0.1:{port}/mcp", timeout=1)[0] > 0, 30, "the MCP server")
        policy = base_policy(free_port(), fake)
        policy["mcp"] = {
            "api": f"127.0.0.1:{free_port()}",
            "egress": f"127.0.0.1:{free_port()}",
            "servers": [{"name": "example", "url": f"http://127.0.0.1:{port}/mcp"}],
            "grants": [{"tenant": "-", "allow": ["example"]}],
        }
        policy["tracing"] = {"otlp": receiver.endpoint, "sample": 1.0, "service_name": "ccr-test"}
        started = Gateway.start(workdir, policy, name="mcp-tracing", workers=1)
        yield started
    finally:
        if started is not None:
            started.stop()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)
        log.close()


def post(url: str, message: dict, session: str = "", traceparent: str = "") -> tuple[int, dict, bytes]:
    headers = dict(HEADERS)
    if session:
        headers |= {"mcp-session-id": session, "mcp-protocol-version": "2025-06-18"}
    if traceparent:
        headers["traceparent"] = traceparent
    return http("POST", url, json.dumps(message).encode(), headers, timeout=30)


def trace_of(receiver: OtlpReceiver, names: set[str]) -> list[ReceivedSpan]:
    """The client's trace once the MCP service's spans of these names and every parent but the
    client's have arrived (Envoy exports every 5 s, the MCP service every second: not together)."""

    def arrived() -> list[ReceivedSpan] | None:
        spans = receiver.traces().get(CLIENT_TRACE, [])
        ids, seen = {span.span_id for span in spans}, {span.name for span in spans}
        parents = {span.parent_id for span in spans} - {CLIENT_SPAN}
        return spans if names <= seen and parents <= ids else None

    return wait_until(arrived, 20, f"the spans of trace {CLIENT_TRACE}", interval=0.25)


def test_a_tool_call_is_one_trace_across_envoy_the_mcp_service_and_the_upstream_call(gateway, receiver) -> None:
    url = f"{gateway.url}/mcp"
    init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}

    def ready() -> bool:  # `up` is ready before the MCP service has its policy
        return post(url, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init})[0] == 200

    wait_until(ready, 30, "the MCP endpoint")
    status, headers, _ = post(url, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init})
    session = {k.lower(): v for k, v in headers.items()}["mcp-session-id"]
    assert status == 200
    assert post(url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)[0] == 202
    call = {"name": "example__echo", "arguments": {"text": "traced"}}
    status, _, body = post(
        url,
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call},
        session,
        f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
    )
    assert status == 200 and json.loads(body)["result"]["content"][0]["text"] == "traced"

    spans = trace_of(receiver, {"mcp.tools/call", "mcp.upstream.tools/call"})
    by_id = {span.span_id: span for span in spans}
    (server,) = [s for s in spans if s.name == "mcp.tools/call"]
    (client,) = [s for s in spans if s.name == "mcp.upstream.tools/call"]
    assert server.service == client.service == "ccr-test-mcp"
    assert server.attribute("mcp.server") == "example" and server.attribute("mcp.tool") == "echo"
    assert server.attribute("ccr.mcp.outcome") == "ok" and server.attribute("ccr.tenant") == "-"
    # The service's span is the child of Envoy's call to it, in the client's trace.
    assert by_id[server.parent_id].service == "ccr-test"
    assert client.parent_id == server.span_id
    # Every parent is in the trace but the client's own span: nothing in between went untraced.
    assert all(s.parent_id in by_id for s in spans if s.parent_id != CLIENT_SPAN)
