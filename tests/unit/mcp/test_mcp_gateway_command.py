"""`ccr-gateway mcp-gateway` (ccr_gateway/mcp_gateway.py): its flags, and the audit entry each
tool call leaves in the hash-chained audit log (a local SQLite file here)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from audit.chain import verify
from audit.hooks import AuditLog
from audit.keys import load_key
from audit.stores import SqliteAuditStore
from ccr_gateway.cli import build_parser
from ccr_gateway.mcp_gateway import ToolCallAudit, run
from extproc.mcp_observe import ToolCall


def parse(*argv: str):
    return build_parser("mcp-gateway").parse_args(["mcp-gateway", *argv])


def test_the_command_takes_the_extproc_control_plane_and_ledger_options() -> None:
    args = parse(
        "--listen",
        "unix:/tmp/mcp.sock",
        "--control-plane",
        "127.0.0.1:18000",
        "--egress",
        "127.0.0.1:9193",
        "--redis",
        "redis://127.0.0.1:6379/0",
        "--metrics",
        "127.0.0.1:9464",
        "--ledger",
        "sqlite",
    )
    assert (args.listen, args.control_plane, args.egress, args.redis, args.metrics, args.ledger) == (
        "unix:/tmp/mcp.sock",
        "127.0.0.1:18000",
        "127.0.0.1:9193",
        "redis://127.0.0.1:6379/0",
        "127.0.0.1:9464",
        "sqlite",
    )
    assert args.func is run


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--listen", "nowhere"], "--listen takes HOST:PORT"),
        (["--listen", "127.0.0.1:1", "--metrics", "9464"], "--metrics takes HOST:PORT"),
        (["--listen", "127.0.0.1:1", "--control-plane-tls-ca", "x.pem"], "go together"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(parse(*argv)) == 2
    assert complaint in capsys.readouterr().err


async def test_each_tool_call_is_a_chained_audit_entry_without_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CCR_AUDIT_KEY", raising=False)  # the key file below, not the environment's
    key_file = tmp_path / "audit.key"
    key_file.write_text("12" * 32)
    audit = ToolCallAudit(AuditLog(SqliteAuditStore(tmp_path / "audit.db"), str(key_file)))
    for outcome, key in (("ok", "k1"), ("rate_limited", None)):
        audit.tool_call(ToolCall("req", 1.0, 0.25, "/mcp", "github", "search", outcome, "acme", key, "sess", False))
    await audit.close()
    store = SqliteAuditStore(tmp_path / "audit.db")
    try:
        entries = await store.entries()
    finally:
        await store.close()
    assert [(e.actor, e.action, e.target, e.details["outcome"]) for e in entries] == [
        ("key:k1", "mcp.tool_call", "github/search", "ok"),
        ("tenant:acme", "mcp.tool_call", "github/search", "rate_limited"),
    ]
    assert entries[0].details["duration_ms"] == 250.0 and "arguments" not in entries[0].details
    assert verify(load_key(str(key_file)), entries) is None  # an unbroken chain


async def test_the_tool_calls_of_a_window_go_in_one_audit_transaction() -> None:
    class Counting:
        def __init__(self) -> None:
            self.batches: list[int] = []

        async def append_many(self, drafts: list) -> list:
            self.batches.append(len(drafts))
            return []

        async def close(self) -> None:
            pass

    log = Counting()
    audit = ToolCallAudit(log, window_s=0.05)  # type: ignore[arg-type]
    for _ in range(3):  # one after another, as calls come at 200 calls/s
        audit.tool_call(ToolCall("req", 1.0, 0.001, "/mcp", "github", "search", "ok", "acme", "k", "sess", False))
        await asyncio.sleep(0.005)
    await audit.close()
    assert log.batches == [3]  # one transaction (one fsync), not three
