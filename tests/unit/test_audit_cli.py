"""`ccr-gateway audit verify|export|list` on the local store, and the key file."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
from datetime import UTC, datetime

import pytest

from audit.chain import Draft
from audit.cli import since_time
from audit.hooks import AuditLog, PolicyAudit
from audit.keys import AuditKeyError, load_key
from audit.stores import SqliteAuditStore
from ccr_gateway.cli import main


def cli(*argv: str) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(["audit", *argv])
    return int(exit_.value.code)


@pytest.fixture
def log_files(tmp_path, monkeypatch):
    monkeypatch.delenv("CCR_AUDIT_POSTGRES", raising=False)
    monkeypatch.delenv("CCR_AUTH_POSTGRES", raising=False)
    monkeypatch.delenv("CCR_AUDIT_KEY", raising=False)
    db, key = tmp_path / "audit.db", tmp_path / "audit.key"
    monkeypatch.setenv("CCR_AUDIT_KEY_FILE", str(key))
    key.write_text(os.urandom(32).hex())
    audit = AuditLog(SqliteAuditStore(db))

    async def fill() -> None:
        for i in range(5):
            await audit.append(Draft("alice", "key.create", f"k{i}", "keys.db", "h", "", {"rpm": i}))
        await audit.close()

    asyncio.run(fill())
    return db, key


def test_verify_passes_on_an_untouched_log(log_files, capsys):
    db, _ = log_files
    assert cli("verify", "--sqlite", str(db)) == 0
    assert "ok: 5 entries, head seq 5" in capsys.readouterr().out


def test_verify_fails_with_one_line_naming_a_deleted_row(log_files, capsys):
    db, _ = log_files
    with sqlite3.connect(db) as connection:
        connection.execute("DELETE FROM audit_log WHERE seq = 3")
    assert cli("verify", "--sqlite", str(db)) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "FAILED at seq 3: entry 3 is missing" in out[0]


def test_verify_fails_when_the_newest_row_is_deleted(log_files, capsys):
    db, _ = log_files
    with sqlite3.connect(db) as connection:
        connection.execute("DELETE FROM audit_log WHERE seq = 5")
    assert cli("verify", "--sqlite", str(db)) == 1
    assert "FAILED at seq 5" in capsys.readouterr().out


def test_verify_fails_on_an_edited_row(log_files, capsys):
    db, _ = log_files
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
    assert cli("verify", "--sqlite", str(db)) == 1
    assert "FAILED at seq 2: entry 2 was edited" in capsys.readouterr().out


def test_verify_with_another_key_names_the_key(log_files, tmp_path, capsys):
    db, _ = log_files
    other = tmp_path / "other.key"
    other.write_text(os.urandom(32).hex())
    assert cli("verify", "--sqlite", str(db), "--key-file", str(other)) == 1
    assert "not this key" in capsys.readouterr().out


def test_verify_without_a_key_fails_without_creating_one(log_files, tmp_path, capsys):
    db, _ = log_files
    assert cli("verify", "--sqlite", str(db), "--key-file", str(tmp_path / "none.key")) == 1
    assert "no audit key" in capsys.readouterr().err
    assert not (tmp_path / "none.key").exists()


def test_export_since_writes_json_lines(log_files, capsys):
    db, _ = log_files
    assert cli("export", "--sqlite", str(db), "--since", "1d") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3, 4, 5]
    assert {"at", "actor", "action", "target", "host", "source", "xds_version", "prev_hash", "hash"} <= set(lines[0])
    assert cli("export", "--sqlite", str(db), "--since", "2999-01-01T00:00:00Z") == 0
    assert capsys.readouterr().out == ""


def test_list_prints_one_line_per_entry(log_files, capsys):
    db, _ = log_files
    assert cli("list", "--sqlite", str(db), "--limit", "2") == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "key.create k4" in out[-1]


def test_a_bad_since_is_a_usage_error(log_files, capsys):
    db, _ = log_files
    assert cli("export", "--sqlite", str(db), "--since", "yesterday") == 2


def test_since_accepts_durations_and_iso_times():
    now = datetime(2025, 1, 2, 12, 0, tzinfo=UTC)
    assert since_time("1d", now) == "2025-01-01T12:00:00.000000Z"
    assert since_time("90m", now) == "2025-01-02T10:30:00.000000Z"
    assert since_time("2025-01-01T00:00:00Z") == "2025-01-01T00:00:00.000000Z"


def test_embedded_mode_creates_the_key_file_0600_once(tmp_path, monkeypatch):
    monkeypatch.delenv("CCR_AUDIT_KEY", raising=False)
    monkeypatch.delenv("CCR_AUDIT_KEY_FILE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    with pytest.raises(AuditKeyError):
        load_key(create=False)
    first = load_key(create=True)
    path = tmp_path / "ccr-gateway" / "audit.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(create=False).key_id == first.key_id


def test_the_key_can_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CCR_AUDIT_KEY", "ab" * 32)
    assert load_key().key_id == load_key(environ={"CCR_AUDIT_KEY": "ab" * 32}).key_id
    with pytest.raises(AuditKeyError):
        load_key(environ={"CCR_AUDIT_KEY": "not a key!"})


def test_policy_audit_without_a_loop_appends_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("CCR_AUDIT_KEY_FILE", str(tmp_path / "k"))
    (tmp_path / "k").write_text("cd" * 32)
    recorder = PolicyAudit(AuditLog(SqliteAuditStore(tmp_path / "a.db")))
    recorder.accepted("/etc/policy.yaml", "7", providers=["a"])
    recorder.rejected("consul:ccr-gateway/policy", "bad", consul_index=42)

    async def read():
        store = SqliteAuditStore(tmp_path / "a.db")
        try:
            return await store.entries()
        finally:
            await store.close()

    entries = asyncio.run(read())
    assert [(e.action, e.xds_version, e.actor) for e in entries] == [
        ("policy.accepted", "7", "control-plane"),
        ("policy.rejected", "", "control-plane"),
    ]
    assert entries[1].details == {"consul_index": 42, "error": "bad"}


def test_policy_audit_with_a_broken_store_warns_and_counts(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CCR_AUDIT_KEY_FILE", str(tmp_path / "missing.key"))
    recorder = PolicyAudit(AuditLog(SqliteAuditStore(tmp_path / "a.db")))
    recorder.accepted("/etc/policy.yaml", "1")  # no key: logged, not raised
    assert "not recorded" in caplog.text
