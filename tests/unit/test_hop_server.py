"""extproc.hop_server: the decision hop's HTTP/1.1 server on a real Unix socket.

Envoy keeps connections open and sends one request after another on each (keep-alive); requests
may arrive split anywhere or several in one read; a bug answers 500 (the Lua filter turns it into a
503 in the client's format) and the connection stays usable.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from extproc import hop_server
from extproc.state import GatewayState
from tests.unit.test_hop import parse


def request(path: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: ccr-hop", f"content-length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return status, await reader.readexactly(length)


@pytest.fixture
async def server(tmp_path: Path):
    path = tmp_path / "hop.sock"
    state = GatewayState()
    served = await hop_server.start(f"unix:{path}", state)
    yield path, state
    await served.drain(timeout=1)


async def test_decisions_are_answered_one_after_another_on_one_connection(server):
    path, _ = server
    reader, writer = await asyncio.open_unix_connection(str(path))
    decide = request("/decide", b"{}", x_ccr_hop_method="POST", x_ccr_hop_path="/v1/messages")
    # Two requests in one write, the second split across two more writes.
    writer.write(decide + decide[:10])
    writer.write(decide[10:])
    for _ in range(2):
        status, answer = await read_response(reader)
        action, ops, payload = parse(answer)
        assert (status, action) == (200, "reply")  # no policy yet: a 503 in the client's format
        assert ("status", "503", "") in ops
        assert orjson.loads(payload)["error"]["type"] == "api_error"
    writer.close()


async def test_health_follows_the_policy_and_unknown_routes_are_404(server):
    path, state = server
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 503
    state.table = object()  # type: ignore[assignment]
    writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    assert await read_response(reader) == (200, b"ok")
    writer.write(request("/elsewhere"))
    assert (await read_response(reader))[0] == 404
    writer.close()


async def test_a_bug_is_a_500_and_the_connection_survives(server):
    path, _ = server
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(request("/respond", b"{}", x_ccr_context="not-base64!", x_ccr_status="200"))
    assert (await read_response(reader))[0] == 500
    writer.write(request("/decide", b"", x_ccr_hop_method="GET", x_ccr_hop_path="/nowhere"))
    status, answer = await read_response(reader)
    assert status == 200 and ("status", "404", "") in parse(answer)[1]
    writer.close()


async def test_garbage_closes_the_connection(server):
    path, _ = server
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    assert await reader.read() == b""
    writer.close()


async def test_draining_refuses_new_connections_and_closes_each_one_after_its_answer(tmp_path: Path):
    path = tmp_path / "hop.sock"
    served = await hop_server.start(f"unix:{path}", GatewayState())
    busy_reader, busy_writer = await asyncio.open_unix_connection(str(path))
    idle_reader, idle_writer = await asyncio.open_unix_connection(str(path))
    decide = request("/decide", b"{}", x_ccr_hop_method="POST", x_ccr_hop_path="/v1/messages")
    busy_writer.write(decide[:20])  # a request half sent when the drain starts
    await asyncio.sleep(0.05)
    draining = asyncio.create_task(served.drain(timeout=2, idle_grace=0.1))
    await asyncio.sleep(0.02)
    with pytest.raises(OSError):  # the listening socket is closed: Envoy's connect is refused
        await asyncio.open_unix_connection(str(path))
    busy_writer.write(decide[20:])
    head = await busy_reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head.lower()
    await draining
    assert await idle_reader.read() == b""  # the idle connection was closed, not left to a reset
    assert not served.connections
    for writer in (busy_writer, idle_writer):
        writer.close()
