"""`ccr-gateway bench --mcp`'s pure parts: the load generator's HTTP and JSON-RPC reading (no sockets),
the statistics and budget verdicts, and how the MCP section is put into docs/performance.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from typing import Any

import pytest

from bench import cli, mcp_report
from bench.document import NOTES_MARKER
from bench.environment import BenchError
from bench.mcp import QUICK, command_line, gateway_policy, settings_from_args
from bench.mcp_load import AnswerError, Connection, answer_of

# --- the load generator's reading ------------------------------------------------------------------


class _Writer:
    def __init__(self) -> None:
        self.sent = b""

    def write(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        pass


async def _exchange(chunks: list[bytes]) -> tuple[int, dict[bytes, bytes], bytes, bool]:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    return await Connection(reader, _Writer()).request(b"POST / HTTP/1.1\r\n\r\n", b"{}")  # type: ignore[arg-type]


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


SSE_ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nmcp-session-id: abc\r\ntransfer-encoding: chunked\r\n\r\n"
    + _chunk(b'event: message\r\ndata: {"jsonrpc":"2.0","method":"x"}\r\n\r\n')
    + _chunk(b'event: message\ndata: {"jsonrpc":"2.0","id":3,"result":{}}\n\n')
    + b"0\r\n\r\n"
)


@pytest.mark.parametrize("split", ["whole", "bytewise", "random"])
async def test_a_chunked_sse_answer_reads_the_same_however_it_arrives(split: str) -> None:
    if split == "whole":
        chunks = [SSE_ANSWER]
    elif split == "bytewise":
        chunks = [SSE_ANSWER[i : i + 1] for i in range(len(SSE_ANSWER))]
    else:
        cuts = sorted(random.Random(3).sample(range(1, len(SSE_ANSWER)), 7))
        chunks = [SSE_ANSWER[a:b] for a, b in zip([0, *cuts], [*cuts, len(SSE_ANSWER)], strict=True)]
    status, headers, body, keep = await _exchange(chunks)
    assert status == 200 and keep and headers[b"mcp-session-id"] == b"abc"
    assert answer_of(body, headers[b"content-type"], 3) == {"jsonrpc": "2.0", "id": 3, "result": {}}


async def test_a_json_answer_and_a_bodyless_202_keep_the_connection() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"result":{"ok":true}}'
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
    status, headers, data, keep = await _exchange([head + body])
    assert (status, keep) == (200, True) and answer_of(data, headers[b"content-type"], 1)["result"] == {"ok": True}
    assert (await _exchange([b"HTTP/1.1 202 Accepted\r\n\r\n"]))[::3] == (202, True)


def test_an_answer_to_another_request_is_an_error_of_its_own_kind() -> None:
    with pytest.raises(AnswerError) as wrong:
        answer_of(b'{"jsonrpc":"2.0","id":2,"result":{}}', b"application/json", 1)
    assert wrong.value.kind == "wrong_answer"
    with pytest.raises(AnswerError) as missing:
        answer_of(b'data: {"jsonrpc":"2.0","method":"notifications/progress"}\n\n', b"text/event-stream", 1)
    assert missing.value.kind == "no_answer"


# --- statistics and verdicts ----------------------------------------------------------------------


def _calls(latency_s: float, failed: int = 0) -> dict[str, Any]:
    samples = [(i / 200, latency_s, 1) for i in range(200)] + [(1.0, 0.0, 0)] * failed
    load = {"errors": {"status": failed} if failed else {}, "exchanges": 210, "max_schedule_lag_ms": 1.0}
    cpu = {"envoy": 0.21, "mcp_service": 0.42, "upstream": 0.21, "other": 0.1, "wall_s": 1.0}
    return mcp_report.call_stats(samples, [load], cpu, 1.0)


def _sessions(setup_s: float, first_s: float) -> dict[str, Any]:
    return mcp_report.session_stats([(setup_s, first_s, 1)] * 5, {}, [])


def _result(gateway_s: float, session_s: float, other_cpu_s: float = 0.1) -> dict[str, Any]:
    calls = {"direct": _calls(0.002), "gateway": _calls(gateway_s)}
    calls["gateway"]["cpu_s"]["other"] = other_cpu_s
    return {
        "settings": {"rate": 200.0, "duration_s": 1, "rounds": 1, "warmup_s": 0, "connections": 8, "sessions": 5},
        "upstream": {"answers": "JSON"},
        "machine": {
            "nproc": 2,
            "cpu_model": "cpu",
            "memory_gb": 1,
            "envoy": "1.40.0",
            "python": "3.11",
            "loadavg_at_start": [0.5, 0.5, 0.5],
            "loadavg_at_end": [0.6, 0.5, 0.5],
            "python_loop_s": 0.3,
        },
        "calls": calls,
        "sessions": {"direct": _sessions(0.004, 0.001), "gateway": _sessions(session_s, 0.012)},
        "at_rest": {"rss_mb": {"envoy": 70.0}},
        "started": "2026-12-07 12:00:00 UTC",
        "elapsed_s": 10.0,
        "command": "ccr-gateway bench --mcp",
    }


def test_the_verdicts_compare_the_gateway_with_the_direct_calls_of_the_same_run() -> None:
    summary = mcp_report.summarize(_result(gateway_s=0.0035, session_s=0.006))
    assert summary["added_ms"]["p50"] == pytest.approx(1.5) and summary["added_ms"]["p99"] == pytest.approx(1.5)
    assert [v["status"] for v in summary["verdicts"]] == ["met", "met", "met", "not met"]  # +2 setup, +13 with the call
    assert summary["session_added_ms"] == {"setup": pytest.approx(2.0), "setup_and_first_call": pytest.approx(13.0)}
    slow = mcp_report.summarize(_result(gateway_s=0.008, session_s=0.02))
    assert [v["status"] for v in slow["verdicts"]] == ["not met"] * 4


def test_cpu_per_call_counts_every_exchange_and_sums_the_gateways_components() -> None:
    per_call = mcp_report.cpu_per_call(_calls(0.002))
    assert per_call["envoy"] == pytest.approx(1.0) and per_call["mcp_service"] == pytest.approx(2.0)
    assert per_call["gateway"] == pytest.approx(3.0)  # not the upstream's, not the load generator's


def test_a_busy_machine_and_failed_calls_are_said_in_the_report() -> None:
    quiet = mcp_report.summarize(_result(0.003, 0.005))
    assert quiet["warnings"] == []
    busy = _result(0.003, 0.005, other_cpu_s=1.2)
    busy["calls"]["gateway"] = _calls(0.003, failed=2)
    busy["calls"]["gateway"]["cpu_s"]["other"] = 1.2
    notes = mcp_report.summarize(busy)["warnings"]
    assert any("gateway: 2 calls failed" in note for note in notes)
    assert any("busy with other work" in note and "60%" in note for note in notes)


# --- the docs section -----------------------------------------------------------------------------

EXISTING = f"""# Performance

generated part

{NOTES_MARKER}

## Message batches: items/s per worker

<!-- bench --batches sqlite-in-process-w1: start -->
batch block
<!-- bench --batches sqlite-in-process-w1: end -->
"""


def test_the_mcp_section_goes_below_the_notes_and_a_rerun_replaces_only_its_block() -> None:
    first = mcp_report.with_mcp_block(EXISTING, "json", "run one")
    assert first.startswith(EXISTING.rstrip("\n"))  # everything there before is kept, in place
    assert first.index(NOTES_MARKER) < first.index(mcp_report.SECTION_HEADING) < first.index("run one")
    noted = first + "\n### Reading this run (added by hand)\n\nkept\n"
    second = mcp_report.with_mcp_block(noted, "json", "run two")
    assert "run one" not in second and second.count("run two") == 1
    assert second.count(mcp_report.SECTION_HEADING) == 1 and second.endswith("kept\n")
    assert "batch block" in second
    other = mcp_report.with_mcp_block(second, "json-no-audit", "without audit")  # a block of its own
    assert other.index("run two") < other.index("without audit") < other.index("(added by hand)")


def test_a_file_without_notes_gets_the_marker_before_the_section() -> None:
    text = mcp_report.with_mcp_block("# Performance\n", "json", "block")
    assert text.index(NOTES_MARKER) < text.index(mcp_report.SECTION_HEADING) < text.index("block")
    assert mcp_report.with_mcp_block(None, "json", "block") == text


def test_the_markdown_block_holds_the_verdicts_and_the_tables() -> None:
    block = mcp_report.markdown_block(mcp_report.summarize(_result(0.0035, 0.006)))
    assert "- **met**: tools/call added p50" in block and "| added by the gateway |" in block
    assert "load average at start / end: 0.5 0.5 0.5 / 0.6 0.5 0.5" in block


# --- settings -------------------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_quick_settings_and_the_command_that_reproduces_a_run() -> None:
    quick = settings_from_args(_args("--mcp", "--quick"))
    assert (quick.duration_s, quick.rounds, quick.sessions) == (QUICK["duration_s"], QUICK["rounds"], QUICK["sessions"])
    args = _args("--mcp", "--duration", "30", "--mcp-sse", "--write-docs", "docs/performance.md")
    assert command_line(args) == "ccr-gateway bench --mcp --duration 30 --mcp-sse --write-docs docs/performance.md"
    with pytest.raises(BenchError):
        settings_from_args(_args("--mcp", "--mcp-rounds", "0"))


def test_the_gateway_policy_grants_the_server_to_callers_without_a_key() -> None:
    policy = gateway_policy(1000, "http://127.0.0.1:2000/mcp", 3000, 4000)
    assert policy["mcp"]["servers"] == [{"name": "example", "url": "http://127.0.0.1:2000/mcp"}]
    assert policy["mcp"]["grants"] == [{"tenant": "-", "allow": ["example"]}]
    assert json.dumps(policy)  # plain data: written as YAML for `up`
