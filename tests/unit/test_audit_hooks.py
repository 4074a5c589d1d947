"""The admin hooks: `keys create|update|revoke|rotate` and `policy push` append entries, never a
secret, and refuse to change anything when the audit log cannot record it."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from audit.chain import verify
from audit.keys import load_key
from audit.stores import SqliteAuditStore
from ccr_gateway import consul_cli
from extproc.auth import keys_cli
from tests.consul_double import ConsulDouble, running_double
from tests.unit.cp_helpers import EXAMPLE_POLICY


@pytest.fixture
def audit_db(tmp_path, monkeypatch) -> Path:
    for name in ("CCR_AUDIT_POSTGRES", "CCR_AUTH_POSTGRES", "CCR_AUDIT_KEY", "CCR_AUDIT", "CCR_AUDIT_ACTOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CCR_AUDIT_SQLITE", str(tmp_path / "audit.db"))
    monkeypatch.setenv("CCR_AUDIT_KEY_FILE", str(tmp_path / "audit.key"))
    (tmp_path / "audit.key").write_text("12" * 32)
    return tmp_path / "audit.db"


async def entries(path: Path):
    store = SqliteAuditStore(path)
    try:
        return await store.head(), await store.entries()
    finally:
        await store.close()


def keys(db: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    keys_cli.add_arguments(parser)
    args = parser.parse_args([*argv, "--sqlite", str(db)])
    return args.func(args)


async def test_key_changes_are_audited_without_the_secret(tmp_path, audit_db, capsys):
    db = tmp_path / "keys.db"
    assert await asyncio.to_thread(keys, db, "create", "--tenant", "acme", "--name", "ci", "--actor", "alice") == 0
    presented = next(word for word in capsys.readouterr().out.split() if word.startswith("sk-ccr-"))
    key_id = presented.split("_")[0].removeprefix("sk-ccr-")
    assert await asyncio.to_thread(keys, db, "update", key_id, "--rpm", "5") == 0
    assert await asyncio.to_thread(keys, db, "update", key_id, "--budget-usd", "10") == 0
    assert await asyncio.to_thread(keys, db, "rotate", key_id, "--grace", "0s") == 0
    rotated = next(word for word in capsys.readouterr().out.split() if word.startswith("sk-ccr-"))
    assert await asyncio.to_thread(keys, db, "revoke", key_id) == 0
    assert await asyncio.to_thread(keys, db, "list") == 0  # reads are not audited
    head, logged = await entries(audit_db)
    assert [e.action for e in logged] == ["key.create", "key.update", "budget.change", "key.rotate", "key.revoke"]
    assert {e.target for e in logged} == {key_id}
    assert logged[0].actor == "alice" and logged[0].details["tenant"] == "acme"
    assert logged[2].details["changes"] == {"budget_usd": 10.0}
    text = b"".join(orjson.dumps(e.to_json()) for e in logged).decode()
    for secret in (presented, rotated, presented.split("_", 1)[1], rotated.split("_", 1)[1]):
        assert secret not in text
    assert verify(load_key(), logged, head) is None


async def test_a_key_change_the_audit_log_cannot_record_is_refused(tmp_path, audit_db, monkeypatch, capsys):
    monkeypatch.setenv("CCR_AUDIT_KEY_FILE", str(tmp_path / "missing.key"))
    db = tmp_path / "keys.db"
    assert await asyncio.to_thread(keys, db, "create", "--tenant", "acme", "--name", "ci") == 1
    assert "nothing changed" in capsys.readouterr().err
    assert await asyncio.to_thread(keys, db, "list") == 0
    assert "acme" not in capsys.readouterr().out  # no key was made


async def test_with_the_audit_log_off_keys_still_work(tmp_path, audit_db, monkeypatch):
    monkeypatch.setenv("CCR_AUDIT", "off")
    assert await asyncio.to_thread(keys, tmp_path / "keys.db", "create", "--tenant", "t", "--name", "n") == 0
    assert not audit_db.exists()


@pytest.fixture
async def double() -> AsyncIterator[ConsulDouble]:
    async with running_double(acl_token="t0ken") as running:
        yield running


def push(double: ConsulDouble, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    consul_cli.add_arguments(parser)
    args = parser.parse_args(["push", "--consul", double.url, "--token", "t0ken", *argv])
    return consul_cli.run(args)


async def test_a_consul_push_is_audited_with_its_modify_index(tmp_path, audit_db, double, capsys):
    policy = tmp_path / "gw.yaml"
    policy.write_text(EXAMPLE_POLICY.read_text())
    assert await asyncio.to_thread(push, double, str(policy), "--actor", "bob") == 0
    index = int(capsys.readouterr().out.split("ModifyIndex ")[1].split(";")[0])
    assert await asyncio.to_thread(push, double, str(policy)) == 0  # nothing pushed: nothing audited
    _, logged = await entries(audit_db)
    assert [(e.action, e.actor, e.target) for e in logged] == [("policy.pushed", "bob", "consul:ccr-gateway/policy")]
    assert logged[0].details["modify_index"] == index and logged[0].source == str(policy)


async def test_a_push_the_audit_log_cannot_record_is_not_made(tmp_path, audit_db, double, monkeypatch, capsys):
    monkeypatch.setenv("CCR_AUDIT_KEY_FILE", str(tmp_path / "missing.key"))
    policy = tmp_path / "gw.yaml"
    policy.write_text(EXAMPLE_POLICY.read_text())
    assert await asyncio.to_thread(push, double, str(policy)) == 1
    assert "audit log: no audit key" in capsys.readouterr().err
    assert double.get("ccr-gateway/policy") is None
