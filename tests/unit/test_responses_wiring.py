"""Where a worker keeps stored responses (ccr_gateway.responses_wiring)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ccr_gateway.responses_wiring import opened_responses, postgres_dsn, sqlite_path
from extproc.responses_store import SqliteResponseStore


def test_the_responses_dsn_is_its_own_else_the_ledgers() -> None:
    assert postgres_dsn({}) == ""
    assert postgres_dsn({"CCR_LEDGER_POSTGRES": "postgresql://l"}) == "postgresql://l"
    both = {"CCR_LEDGER_POSTGRES": "postgresql://l", "CCR_RESPONSES_POSTGRES": "postgresql://r"}
    assert postgres_dsn(both) == "postgresql://r"


def test_the_sqlite_file_is_beside_the_local_ledger(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert sqlite_path(None) == tmp_path / "ccr-gateway" / "responses.db"
    assert sqlite_path(str(tmp_path / "x" / "ledger.db")) == tmp_path / "x" / "responses.db"


async def test_a_worker_opens_the_sqlite_store_without_a_dsn(monkeypatch, tmp_path) -> None:
    for name in ("CCR_LEDGER_POSTGRES", "CCR_RESPONSES_POSTGRES"):
        monkeypatch.delenv(name, raising=False)
    async with opened_responses(argparse.Namespace(ledger_sqlite=str(tmp_path / "ledger.db"))) as store:
        assert isinstance(store, SqliteResponseStore) and store.path == Path(tmp_path / "responses.db")


async def test_a_store_that_cannot_be_opened_leaves_the_worker_without_one(monkeypatch) -> None:
    monkeypatch.setenv("CCR_RESPONSES_POSTGRES", "postgresql://nobody@127.0.0.1:1/none")
    async with opened_responses(argparse.Namespace(ledger_sqlite=None)) as store:
        assert store is None
