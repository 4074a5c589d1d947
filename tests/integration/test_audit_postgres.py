"""The audit log in the real PostgreSQL: concurrent writers keep one chain; verify names a
deleted row."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from audit.chain import ChainKey, Draft, verify
from audit.stores import PostgresAuditStore, open_audit_store
from ccr_gateway.cli import main

KEY_HEX = "5a" * 32
KEY = ChainKey(bytes.fromhex(KEY_HEX))


@pytest.fixture
async def audit_dsn(postgres_dsn: str) -> AsyncIterator[str]:
    connection = await asyncpg.connect(postgres_dsn)
    try:
        await connection.execute("DROP TABLE IF EXISTS audit_log, audit_head")
    finally:
        await connection.close()
    yield postgres_dsn


async def _fill(store: PostgresAuditStore, writer: str, n: int) -> None:
    for i in range(n):
        await store.append(KEY, Draft(writer, "key.update", f"k{i}", "pg", "host", "", {"i": i}))


async def test_two_writers_appending_at_once_keep_one_chain(audit_dsn):
    stores = [PostgresAuditStore(audit_dsn) for _ in range(3)]
    try:
        await asyncio.gather(*(_fill(store, f"w{n}", 25) for n, store in enumerate(stores)))
        head, entries = await stores[0].head(), await stores[0].entries()
    finally:
        for store in stores:
            await store.close()
    assert [e.seq for e in entries] == list(range(1, 76)) and head.seq == 75
    assert {e.actor for e in entries} == {"w0", "w1", "w2"}
    assert verify(KEY, entries, head) is None


async def test_batches_and_single_entries_interleaved_keep_one_chain(audit_dsn):
    store = PostgresAuditStore(audit_dsn)
    try:
        drafts = [Draft("w", "mcp.tool_call", f"s/t{i}", "pg", "host", "", {"i": i}) for i in range(5)]
        first = await store.append_many(KEY, drafts[:3])
        await store.append(KEY, drafts[3])
        assert await store.append_many(KEY, []) == []
        await store.append_many(KEY, drafts[4:])
        head, entries = await store.head(), await store.entries()
    finally:
        await store.close()
    assert [e.seq for e in first] == [1, 2, 3] and [e.target for e in entries] == [d.target for d in drafts]
    assert head.seq == 5 and verify(KEY, entries, head) is None


def cli(*argv: str) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(["audit", *argv])
    return int(exit_.value.code)


async def test_verify_passes_then_names_the_deleted_row(audit_dsn, monkeypatch, capsys):
    monkeypatch.setenv("CCR_AUDIT_KEY", KEY_HEX)
    monkeypatch.setenv("AUDIT_TEST_DSN", audit_dsn)
    store = open_audit_store(postgres="${AUDIT_TEST_DSN}")  # ${VAR} expanded from the environment
    assert isinstance(store, PostgresAuditStore)
    try:
        await _fill(store, "alice", 10)
    finally:
        await store.close()
    assert await asyncio.to_thread(cli, "verify", "--postgres", audit_dsn) == 0
    assert "ok: 10 entries, head seq 10" in capsys.readouterr().out

    connection = await asyncpg.connect(audit_dsn)
    try:
        await connection.execute("DELETE FROM audit_log WHERE seq = 7")
    finally:
        await connection.close()
    assert await asyncio.to_thread(cli, "verify", "--postgres", audit_dsn) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "FAILED at seq 7: entry 7 is missing (deleted)" in lines[0]


async def test_export_since_reads_postgres_as_json_lines(audit_dsn, monkeypatch, capsys):
    monkeypatch.setenv("CCR_AUDIT_POSTGRES", audit_dsn)
    store = PostgresAuditStore(audit_dsn)
    try:
        await _fill(store, "bob", 3)
    finally:
        await store.close()
    assert await asyncio.to_thread(cli, "export", "--since", "1h") == 0
    import json

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3] and lines[0]["actor"] == "bob"


async def test_an_unreachable_database_is_a_clear_error_without_the_password(capsys):
    store = PostgresAuditStore("postgresql://u:hunter2@127.0.0.1:1/x")
    from audit.stores import AuditUnavailable

    with pytest.raises(AuditUnavailable) as error:
        await store.head()
    assert "hunter2" not in str(error.value) and "***" in str(error.value)
