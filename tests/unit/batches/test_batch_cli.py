"""`ccr-gateway batch list | show | cancel` against a SQLite batch store, the cancel audited."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from audit.hooks import AuditLog
from audit.stores import SqliteAuditStore
from batches.model import Api, Outcome, new_batch
from batches.sqlite_store import SqliteBatchStore
from ccr_gateway import cli


@pytest.fixture
def store_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CCR_AUDIT_SQLITE", str(tmp_path / "audit.db"))
    monkeypatch.setenv("CCR_AUDIT_KEY", "ef" * 32)
    monkeypatch.setenv("CCR_AUDIT_ACTOR", "oncall")
    monkeypatch.delenv("CCR_AUDIT", raising=False)
    path = str(tmp_path / "batches.db")

    async def fill() -> None:
        store = SqliteBatchStore(path)
        now = time.time()
        requests = [(f"req-{i}", {"model": "m", "max_tokens": 8, "messages": []}) for i in range(5)]
        for batch_id, tenant in (("msgbatch_one", "acme"), ("msgbatch_two", "acme"), ("msgbatch_three", "other")):
            batch, items = new_batch(
                batch_id, tenant=tenant, api=Api.ANTHROPIC, endpoint="/v1/messages", requests=requests, now=now
            )
            await store.create_batch(batch, items)
        await store.send_item("msgbatch_one", 0, now=now)
        await store.record_item("msgbatch_one", 0, Outcome.from_response(200, {"id": "msg_1"}), now=now)
        await store.send_item("msgbatch_one", 1, now=now)
        await store.close()

    asyncio.run(fill())
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    args = cli.build_parser("batch").parse_args(["batch", *argv])
    status = args.func(args)
    out, err = capsys.readouterr()
    return status, out, err


def test_list_shows_a_tenants_batches_and_active_shows_everyones(store_path, capsys):
    status, out, _ = run(capsys, "list", "--sqlite", store_path, "--tenant", "acme", "--json")
    assert status == 0
    assert sorted(json.loads(line)["id"] for line in out.splitlines()) == ["msgbatch_one", "msgbatch_two"]
    status, out, _ = run(capsys, "list", "--sqlite", store_path, "--active")
    assert status == 0 and {"msgbatch_one", "msgbatch_two", "msgbatch_three"} <= set(out.split())


def test_show_gives_the_counts(store_path, capsys):
    status, out, _ = run(capsys, "show", "msgbatch_one", "--sqlite", store_path, "--json")
    shown = json.loads(out)
    assert status == 0 and (shown["succeeded"], shown["sent"], shown["queued"], shown["status"]) == (
        1,
        1,
        3,
        "in_progress",
    )
    status, _, err = run(capsys, "show", "msgbatch_nope", "--sqlite", store_path)
    assert status == 1 and "no batch msgbatch_nope" in err


def test_cancel_cancels_the_queued_items_lets_the_sent_one_finish_and_is_audited(store_path, tmp_path, capsys):
    status, out, _ = run(capsys, "cancel", "msgbatch_one", "--sqlite", store_path)
    assert status == 0 and "started; 3 canceled, 1 still finishing" in out
    status, out, _ = run(capsys, "show", "msgbatch_one", "--sqlite", store_path, "--json")
    assert json.loads(out)["status"] == "canceling"

    async def entries() -> list:
        log = AuditLog(SqliteAuditStore(str(tmp_path / "audit.db")))
        try:
            return [(e.action, e.actor, e.target, e.details["canceled"]) for e in await log.store.entries()]
        finally:
            await log.close()

    assert asyncio.run(entries()) == [("batch.cancel", "oncall", "msgbatch_one", 3)]
