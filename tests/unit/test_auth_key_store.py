"""extproc.auth.key_store (SQLite) and extproc.auth.key_cache over it; the `keys` CLI."""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import time
from pathlib import Path

import pytest

from extproc.auth import keys_cli
from extproc.auth.key_cache import STORE_UP, KeyCache
from extproc.auth.key_store import (
    KeyNotFound,
    KeyStoreUnavailable,
    SqliteKeyStore,
    default_keys_path,
    expand_env,
    redact_dsn,
)
from extproc.auth.keys import KeyFormatError, new_key, parse_presented


@pytest.fixture
async def store(tmp_path: Path):
    store = SqliteKeyStore(tmp_path / "keys.db")
    yield store
    await store.close()


async def add(store: SqliteKeyStore, tenant: str = "acme", name: str = "ci", **limits: object) -> tuple[str, object]:
    presented, record = new_key(tenant, name, time.time(), **limits)
    return presented, await store.create(record)


async def eventually(condition, within: float = 1.0) -> float:
    """Seconds until ``condition()`` held; fails the test after ``within``."""
    import asyncio

    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            pytest.fail(f"not true within {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


# -- the store -------------------------------------------------------------------------------------


def test_the_default_path_is_under_xdg_data_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_keys_path() == tmp_path / "ccr-gateway" / "keys.db"


async def test_create_then_get_returns_the_same_record_with_a_version(store: SqliteKeyStore) -> None:
    presented, stored = await add(store, models=("a", "b"), rpm=10, budget_usd=2.5, budget_period="week")
    assert stored.version == 1
    got = await store.get(stored.key_id)
    assert got == stored
    assert got.verify(parse_presented(presented)[1], time.time())
    assert await store.get("zzzzzzzz") is None


async def test_the_file_is_in_wal_mode_and_has_a_migration_row(store: SqliteKeyStore) -> None:
    await add(store)
    connection = sqlite3.connect(store.path)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("SELECT version, name FROM auth_schema_migrations").fetchall() == [
        (1, "virtual keys"),
        (2, "hourly and daily limits"),
    ]
    connection.close()


async def test_list_filters_by_tenant(store: SqliteKeyStore) -> None:
    _, a = await add(store, "acme")
    _, b = await add(store, "globex")
    _, c = await add(store, "acme")
    assert {r.key_id for r in await store.list()} == {a.key_id, b.key_id, c.key_id}
    assert [r.key_id for r in await store.list("acme")] == [a.key_id, c.key_id]
    assert await store.list("nobody") == []


async def test_every_change_bumps_the_version_and_changes_since_returns_it(store: SqliteKeyStore) -> None:
    _, a = await add(store)
    _, b = await add(store)
    revoked = await store.revoke(a.key_id)
    assert revoked.key.revoked and revoked.version == 3
    _, rotated = await store.rotate(b.key_id, 60)
    edited = await store.update_limits(b.key_id, {"rpm": 7, "models": ("m",)})
    assert (rotated.version, edited.version) == (4, 5)
    assert edited.key.rpm == 7 and edited.key.models == ("m",)
    assert edited.previous_secret == rotated.previous_secret  # an edit keeps the rotation's grace
    assert [r.version for r in await store.changes_since(0)] == [3, 5]  # latest row per key
    assert [r.key_id for r in await store.changes_since(3)] == [b.key_id]
    assert await store.changes_since(5) == []


async def test_rotate_stores_the_new_secret_and_the_old_one_with_its_grace(store: SqliteKeyStore) -> None:
    old, record = await add(store)
    new, rotated = await store.rotate(record.key_id, 3600)
    stored = await store.get(record.key_id)
    now = time.time()
    assert stored == rotated
    assert stored.verify(parse_presented(new)[1], now) and stored.verify(parse_presented(old)[1], now)
    assert not stored.verify(parse_presented(old)[1], now + 3601)


async def test_changing_a_missing_key_is_key_not_found(store: SqliteKeyStore) -> None:
    for change in (store.revoke("zzzzzzzz"), store.rotate("zzzzzzzz", 0), store.update_limits("zzzzzzzz", {"rpm": 1})):
        with pytest.raises(KeyNotFound):
            await change


async def test_an_invalid_edit_is_refused_and_changes_nothing(store: SqliteKeyStore) -> None:
    _, record = await add(store)
    with pytest.raises(KeyFormatError):
        await store.update_limits(record.key_id, {"tenant": "other"})
    with pytest.raises(KeyFormatError):
        await store.update_limits(record.key_id, {"rpm": 0})
    assert await store.get(record.key_id) == record


async def test_an_unopenable_file_is_key_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(KeyStoreUnavailable, match=r"dir\.db"):
        await SqliteKeyStore(tmp_path / "dir.db").list()


def test_dsn_variables_are_expanded_and_passwords_redacted() -> None:
    assert expand_env("postgresql://gw:${PW}@db/k", {"PW": "s3cret"}) == "postgresql://gw:s3cret@db/k"
    with pytest.raises(KeyStoreUnavailable, match="PW") as raised:
        expand_env("postgresql://gw:${PW}@db/k", {})
    assert "s3cret" not in str(raised.value)
    assert redact_dsn("postgresql://gw:s3cret@db:5432/k") == "postgresql://gw:***@db:5432/k"
    assert redact_dsn("postgresql://gw@db/k") == "postgresql://gw@db/k"


# -- the cache -------------------------------------------------------------------------------------


async def test_the_cache_finds_valid_keys_and_nothing_else(store: SqliteKeyStore) -> None:
    presented, record = await add(store, rpm=3)
    cache = KeyCache(store)
    assert await cache.start()
    try:
        assert cache.lookup(presented) == record.key
        assert cache.lookup(f"Bearer {presented}") == record.key
        assert cache.lookup(presented) is cache.lookup(presented)
        wrong = presented[:-1] + ("A" if presented[-1] != "A" else "B")
        assert cache.lookup(wrong) is None and cache.why_rejected(wrong) == "wrong secret"
        assert cache.lookup("sk-ccr-zzzzzzzz_" + "a" * 43) is None
        assert cache.why_rejected("sk-ccr-zzzzzzzz_" + "a" * 43) == "unknown key"
        assert cache.lookup("nonsense") is None
        assert cache.why_rejected(presented) is None
    finally:
        await cache.close()


async def test_the_hash_is_computed_once_per_key(store: SqliteKeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    presented, record = await add(store)
    cache = KeyCache(store)
    await cache.refresh()
    calls = []
    real = type(record.secret).matches
    monkeypatch.setattr(type(record.secret), "matches", lambda self, s: calls.append(s) or real(self, s))
    for _ in range(100):
        assert cache.lookup(presented) is not None
    assert len(calls) == 1


async def test_revoke_rotate_and_edits_reach_a_running_cache_within_a_second(store: SqliteKeyStore) -> None:
    presented, record = await add(store)
    other_store = SqliteKeyStore(store.path)  # as the CLI: another connection to the same file
    cache = KeyCache(store)
    await cache.start()
    try:
        assert cache.lookup(presented) is not None
        await other_store.update_limits(record.key_id, {"rpm": 42})
        await eventually(lambda: cache.lookup(presented).rpm == 42)

        new, _ = await other_store.rotate(record.key_id, 0)
        await eventually(lambda: cache.lookup(presented) is None)
        assert cache.lookup(new).rpm == 42

        await other_store.revoke(record.key_id)
        await eventually(lambda: cache.lookup(new) is None)
        assert cache.why_rejected(new) == "revoked"

        late, _ = await add(other_store)
        await eventually(lambda: cache.lookup(late) is not None)
    finally:
        await cache.close()
        await other_store.close()


async def test_a_rotated_secret_works_in_the_cache_until_its_grace_ends(store: SqliteKeyStore) -> None:
    now = [time.time()]
    old, record = await add(store)
    new, _ = await store.rotate(record.key_id, 60)
    cache = KeyCache(store, clock=lambda: now[0])
    await cache.refresh()
    assert cache.lookup(old) is not None and cache.lookup(new) is not None
    now[0] += 61
    assert cache.lookup(old) is None  # the cached verification has the deadline
    assert cache.lookup(new) is not None


async def test_an_expired_key_stops_working_even_when_cached(store: SqliteKeyStore) -> None:
    now = [time.time()]
    presented, _ = await add(store, expires_at=now[0] + 10)
    cache = KeyCache(store, clock=lambda: now[0])
    await cache.refresh()
    assert cache.lookup(presented) is not None
    now[0] += 10
    assert cache.lookup(presented) is None and cache.why_rejected(presented) == "expired"


async def test_verified_forms_per_key_are_bounded(store: SqliteKeyStore) -> None:
    presented, _ = await add(store)
    cache = KeyCache(store)
    await cache.refresh()
    forms = [f"Bearer{' ' * n}{presented}" for n in range(1, 30)]
    assert all(cache.lookup(form) is not None for form in forms)
    assert len(cache._verified) <= 8


async def test_a_cache_keeps_its_keys_while_the_store_is_broken(
    store: SqliteKeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    presented, record = await add(store)
    cache = KeyCache(store, poll_interval=0.05)
    await cache.start()
    try:
        assert STORE_UP._value.get() == 1
        locked = store._connection  # the store's LockedConnection: its open connection swapped
        broken = locked._connection
        locked._connection = sqlite3.connect(":memory:", check_same_thread=False)  # no virtual_keys table
        with caplog.at_level(logging.WARNING, logger="extproc.auth.key_cache"):
            await eventually(lambda: STORE_UP._value.get() == 0)
            import asyncio

            await asyncio.sleep(0.3)  # several failed polls
            assert cache.lookup(presented) == record.key
            locked._connection.close()
            locked._connection = broken
            await eventually(lambda: STORE_UP._value.get() == 1)
        outage_lines = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(outage_lines) == 1
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        await cache.close()


async def test_a_cache_that_never_loaded_rejects_every_key(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    cache = KeyCache(SqliteKeyStore(tmp_path / "dir.db"))
    assert not await cache.refresh()
    key = "sk-ccr-abcdefgh_" + "a" * 43
    assert cache.lookup(key) is None and "not loaded" in cache.why_rejected(key)


# -- the CLI ---------------------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], db: Path, *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    keys_cli.add_arguments(parser)
    args = parser.parse_args([*argv, "--sqlite", str(db)])
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def presented_in(out: str) -> str:
    return next(word for word in out.split() if word.startswith("sk-ccr-"))


async def test_cli_create_prints_the_key_once_and_list_never_shows_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    db = tmp_path / "keys.db"
    code, out, err = await asyncio.to_thread(
        cli,
        capsys,
        db,
        "create",
        "--tenant",
        "acme",
        "--name",
        "ci",
        "--models",
        "a,b",
        "--rpm",
        "5",
        "--expires",
        "30d",
    )
    assert code == 0 and "not shown again" in err
    presented = presented_in(out)
    secret = parse_presented(presented)[1]
    key_id = parse_presented(presented)[0]

    store = SqliteKeyStore(db)
    record = await store.get(key_id)
    await store.close()
    assert record.key.models == ("a", "b") and record.key.rpm == 5
    assert record.key.expires_at == pytest.approx(time.time() + 30 * 86400, abs=60)

    for argv in (("list",), ("list", "--format", "json"), ("show", key_id), ("show", key_id, "--format", "json")):
        code, out, _ = await asyncio.to_thread(cli, capsys, db, *argv)
        assert code == 0 and key_id in out
        assert secret not in out and "sk-ccr-" not in out
        assert record.secret.digest.hex() not in out and record.secret.salt.hex() not in out
    _, out, _ = await asyncio.to_thread(cli, capsys, db, "list", "--format", "json")
    assert json.loads(out)[0]["tenant"] == "acme"


async def test_cli_revoke_makes_lookup_fail_and_rotate_prints_a_new_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    db = tmp_path / "keys.db"
    _, out, _ = await asyncio.to_thread(cli, capsys, db, "create", "--tenant", "acme", "--name", "ci")
    first = presented_in(out)
    key_id = parse_presented(first)[0]
    cache = KeyCache(SqliteKeyStore(db))
    await cache.refresh()
    assert cache.lookup(first) is not None

    code, out, err = await asyncio.to_thread(cli, capsys, db, "rotate", key_id, "--grace", "1h")
    second = presented_in(out)
    assert code == 0 and second != first and "old secret works until" in err
    await cache.refresh()
    assert cache.lookup(first) is not None and cache.lookup(second) is not None

    code, _, _ = await asyncio.to_thread(cli, capsys, db, "update", key_id, "--tpm", "1000")
    assert code == 0
    code, out, _ = await asyncio.to_thread(cli, capsys, db, "revoke", key_id)
    assert code == 0 and "revoked" in out
    await cache.refresh()
    assert cache.lookup(first) is None and cache.lookup(second) is None
    _, out, _ = await asyncio.to_thread(cli, capsys, db, "list")
    assert "revoked" in out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (("revoke", "zzzzzzzz"), 1, "no key 'zzzzzzzz'"),
        (("show", "zzzzzzzz"), 1, "no key"),
        (("create", "--tenant", "t", "--name", "n", "--budget-period", "day"), 2, "budget_period needs budget_usd"),
        (("create", "--tenant", "t", "--name", "n", "--rpm", "0"), 2, "rpm"),
        (("create", "--tenant", "t", "--name", "n", "--expires", "soon"), 2, "not a duration"),
        (("update", "abcdefgh"), 2, "at least one"),
    ],
)
def test_cli_errors_are_clear_with_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], code: int, message: str
) -> None:
    got, _, err = cli(capsys, tmp_path / "keys.db", *argv)
    assert got == code and message in err


def test_cli_reports_an_unusable_store_with_exit_code_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "dir.db").mkdir()
    code, _, err = cli(capsys, tmp_path / "dir.db", "list")
    assert code == 1 and "dir.db" in err


async def test_a_store_of_the_first_schema_gains_the_daily_limits_and_keeps_its_keys(tmp_path) -> None:
    """A keys.db written before rph/rpd/tpd existed is migrated in place on first use."""
    import sqlite3
    import time as time_module

    from extproc.auth.key_store import _SQLITE_MIGRATIONS
    from extproc.auth.keys import new_key

    path = tmp_path / "old.db"
    connection = sqlite3.connect(path)
    connection.execute(
        "CREATE TABLE auth_schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    version, name, sql = _SQLITE_MIGRATIONS[0]
    for statement in filter(str.strip, sql.split(";")):
        connection.execute(statement)
    connection.execute("INSERT INTO auth_schema_migrations VALUES (?, ?, ?)", (version, name, time_module.time()))
    _, record = new_key("acme", "old", time_module.time(), rpm=5)
    key = record.key
    connection.execute(
        "INSERT INTO virtual_keys VALUES (?, ?, ?, '[]', ?, NULL, NULL, NULL, NULL, NULL, 0, ?, ?, NULL, NULL, NULL, ?, ?, 1)",
        (key.key_id, key.tenant, key.name, key.rpm, record.secret.salt, record.secret.digest, 1.0, 1.0),
    )
    connection.commit()
    connection.close()
    store = SqliteKeyStore(path)
    try:
        (stored,) = await store.list()
        assert (stored.key.rpm, stored.key.rph, stored.key.tpd) == (5, None, None)
        await store.update_limits(key.key_id, {"rpd": 100, "tpd": 10_000})
        assert (await store.get(key.key_id)).key.rpd == 100
    finally:
        await store.close()
