"""Where virtual keys live: an embedded SQLite file (the default, one gateway) or PostgreSQL (many
gateways sharing keys). Both are async, with the same operations; SQLite's calls run in a thread.

Every change gives the key's row the next ``version`` of the whole table (1, 2, 3, ...), so a cache
that has seen version N reloads only the rows above N (``changes_since``). Writers are serialized
(SQLite: BEGIN IMMEDIATE; PostgreSQL: a transaction advisory lock held to commit) so versions are
committed in order and a reader can never see N+1 before N. Keys are never deleted, only revoked,
so "the rows above N" is every change.

PostgreSQL also NOTIFYs ``NOTIFY_CHANNEL`` (payload: the key id) in each change's transaction; a
cache LISTENs to reload at once instead of at its next poll (``listen``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from ccr.v1 import env_refs
from ccr.v1.sqlite_files import LockedConnection, write_transaction
from extproc.auth.keys import KeyRecord, SecretHash, VirtualKey, rotate, with_changes

NOTIFY_CHANNEL = "ccr_auth_keys"
# Arbitrary, fixed: serializes key writers (and migrations) across every gateway sharing the database.
COMMAND_TIMEOUT = 5.0
SQLITE_BUSY_TIMEOUT_MS = 5000


class KeyStoreUnavailable(Exception):
    """The store cannot be reached or read; the message names it (never with its password)."""


class KeyNotFound(LookupError):
    """No key with that id."""


class KeyStore(Protocol):
    description: str  # for messages: the file, or the DSN with its password masked
    poll_interval: float  # how often a cache should look for changes when nothing tells it

    async def create(self, record: KeyRecord) -> KeyRecord: ...
    async def get(self, key_id: str) -> KeyRecord | None: ...
    async def list(self, tenant: str | None = None) -> list[KeyRecord]: ...
    async def revoke(self, key_id: str) -> KeyRecord: ...
    async def rotate(self, key_id: str, grace_seconds: float) -> tuple[str, KeyRecord]: ...
    async def update_limits(self, key_id: str, changes: Mapping[str, object]) -> KeyRecord: ...

    async def changes_since(self, version: int) -> list[KeyRecord]:
        """Every key changed after ``version`` (all of them for 0), in version order."""
        ...

    async def close(self) -> None: ...


class Listening(Protocol):
    @property
    def alive(self) -> bool: ...
    async def close(self) -> None: ...


class ChangeNotifier(Protocol):
    """What a store that can push changes also does (PostgreSQL): call ``wake`` soon after each change."""

    async def listen(self, wake: Callable[[], None]) -> Listening: ...


# -- ${VAR} DSNs ---------------------------------------------------------------------------------
# Written here rather than imported from ledger.env: ext_proc does not import the ledger.


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Every ``${NAME}`` replaced by the variable's value (ccr.v1.env_refs), so a password lives in
    the environment, not in a command line or a log. KeyStoreUnavailable names an unset one."""
    try:
        return env_refs.expand_env(text, environ)
    except env_refs.EnvError as error:
        raise KeyStoreUnavailable(str(error)) from None


def redact_dsn(dsn: str) -> str:
    """The DSN with a literal password masked (``${VAR}`` references are left: they are names)."""
    return env_refs.redact_url(dsn)


def default_keys_path() -> Path:
    """``$XDG_DATA_HOME/ccr-gateway/keys.db``, i.e. ``~/.local/share/ccr-gateway/keys.db``."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "ccr-gateway" / "keys.db"


# -- rows <-> records ----------------------------------------------------------------------------

COLUMNS = (
    "key_id", "tenant", "name", "models", "rpm", "tpm", "max_parallel", "budget_usd", "budget_period",
    "expires_at", "revoked", "salt", "secret_hash", "previous_salt", "previous_secret_hash",
    "previous_valid_until", "created_at", "changed_at", "version", "rph", "rpd", "tpd",
)  # fmt: skip


def _row_values(record: KeyRecord, version: int, encode_models: Callable[[tuple[str, ...]], Any]) -> tuple[Any, ...]:
    key, previous = record.key, record.previous_secret
    return (
        key.key_id, key.tenant, key.name, encode_models(key.models), key.rpm, key.tpm, key.max_parallel,
        key.budget_usd, key.budget_period, key.expires_at, key.revoked, record.secret.salt, record.secret.digest,
        previous.salt if previous else None, previous.digest if previous else None, record.previous_valid_until,
        record.created_at, record.changed_at, version, key.rph, key.rpd, key.tpd,
    )  # fmt: skip


def _record_of(row: Mapping[str, Any], models: tuple[str, ...]) -> KeyRecord:
    key = VirtualKey(
        key_id=row["key_id"],
        tenant=row["tenant"],
        name=row["name"],
        models=models,
        rpm=row["rpm"],
        tpm=row["tpm"],
        max_parallel=row["max_parallel"],
        budget_usd=row["budget_usd"],
        budget_period=row["budget_period"],
        expires_at=row["expires_at"],
        revoked=bool(row["revoked"]),
        rph=row["rph"],
        rpd=row["rpd"],
        tpd=row["tpd"],
    )
    previous = None
    if row["previous_salt"] is not None:
        previous = SecretHash(bytes(row["previous_salt"]), bytes(row["previous_secret_hash"]))
    return KeyRecord(
        key=key,
        secret=SecretHash(bytes(row["salt"]), bytes(row["secret_hash"])),
        created_at=row["created_at"],
        changed_at=row["changed_at"],
        previous_secret=previous,
        previous_valid_until=row["previous_valid_until"],
        version=row["version"],
    )


# -- SQLite --------------------------------------------------------------------------------------

# Both stores: requests per hour and day, tokens per day (a key without them: NULL, no limit).
_DAILY_LIMITS = """
        ALTER TABLE virtual_keys ADD COLUMN rph INTEGER;
        ALTER TABLE virtual_keys ADD COLUMN rpd INTEGER;
        ALTER TABLE virtual_keys ADD COLUMN tpd INTEGER
        """

_SQLITE_MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "virtual keys",
        """
        CREATE TABLE virtual_keys (
            key_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            name TEXT NOT NULL,
            models TEXT NOT NULL,                -- JSON array, [] = any model
            rpm INTEGER,
            tpm INTEGER,
            max_parallel INTEGER,
            budget_usd REAL,
            budget_period TEXT,
            expires_at REAL,
            revoked INTEGER NOT NULL,
            salt BLOB NOT NULL,
            secret_hash BLOB NOT NULL,
            previous_salt BLOB,
            previous_secret_hash BLOB,
            previous_valid_until REAL,
            created_at REAL NOT NULL,
            changed_at REAL NOT NULL,
            version INTEGER NOT NULL
        );
        CREATE UNIQUE INDEX virtual_keys_version ON virtual_keys (version);
        CREATE INDEX virtual_keys_tenant ON virtual_keys (tenant)
        """,
    ),
    (2, "hourly and daily limits", _DAILY_LIMITS),
)


class _Modifications:
    """The edits both stores make the same way: read the record, change it, write it back with the
    next version (``_modify``, each store's own transaction)."""

    _clock: Callable[[], float]

    async def _modify(self, key_id: str, change: Callable[[KeyRecord], KeyRecord]) -> KeyRecord:
        raise NotImplementedError

    async def revoke(self, key_id: str) -> KeyRecord:
        now = self._clock()
        return await self._modify(key_id, lambda record: _revoked(record, now))

    async def rotate(self, key_id: str, grace_seconds: float) -> tuple[str, KeyRecord]:
        presented: list[str] = []
        stored = await self._modify(key_id, _rotation(grace_seconds, self._clock(), presented))
        return presented[0], stored

    async def update_limits(self, key_id: str, changes: Mapping[str, object]) -> KeyRecord:
        now = self._clock()
        return await self._modify(key_id, lambda record: _edited(record, changes, now))


class SqliteKeyStore(_Modifications):
    """The embedded store: one file, WAL mode (readers never wait for the writer). One connection,
    used from one thread at a time (the lock), in ``asyncio.to_thread`` so a busy file never
    stalls the event loop."""

    poll_interval = 0.5

    def __init__(self, path: Path | str | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path).expanduser() if path else default_keys_path()
        self.description = str(self.path)
        self._clock = clock
        # The file holds hashes only, but nobody else needs it (LockedConnection makes it 0600).
        self._connection = LockedConnection(
            self.path,
            busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS,
            setup=self._migrate,
            unavailable=lambda exc: KeyStoreUnavailable(f"key store {self.description}: {exc}"),
        )

    async def _run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        return await self._connection.run(work)

    @staticmethod
    def _migrate(connection: sqlite3.Connection) -> None:
        with write_transaction(connection):
            connection.execute(
                "CREATE TABLE IF NOT EXISTS auth_schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            done = {row[0] for row in connection.execute("SELECT version FROM auth_schema_migrations")}
            known = {version for version, _, _ in _SQLITE_MIGRATIONS}
            if done - known:
                raise sqlite3.DatabaseError(
                    f"schema version {max(done)} is newer than this ccr-gateway knows ({max(known)}); upgrade ccr-gateway"
                )
            for version, name, sql in _SQLITE_MIGRATIONS:
                if version not in done:
                    for statement in filter(str.strip, sql.split(";")):
                        connection.execute(statement)
                    connection.execute(
                        "INSERT INTO auth_schema_migrations VALUES (?, ?, ?)", (version, name, time.time())
                    )

    @staticmethod
    def _record(row: sqlite3.Row) -> KeyRecord:
        return _record_of(row, tuple(json.loads(row["models"])))

    def _write(self, connection: sqlite3.Connection, record: KeyRecord, *, insert: bool) -> KeyRecord:
        """Inside BEGIN IMMEDIATE: the record stored with the table's next version."""
        version = connection.execute("SELECT coalesce(max(version), 0) + 1 FROM virtual_keys").fetchone()[0]
        values = _row_values(record, version, lambda models: json.dumps(list(models)))
        if insert:
            marks = ", ".join("?" for _ in COLUMNS)
            connection.execute(f"INSERT INTO virtual_keys ({', '.join(COLUMNS)}) VALUES ({marks})", values)
        else:
            assignments = ", ".join(f"{column} = ?" for column in COLUMNS[1:])
            connection.execute(f"UPDATE virtual_keys SET {assignments} WHERE key_id = ?", (*values[1:], values[0]))
        return replace(record, version=version)

    async def _modify(self, key_id: str, change: Callable[[KeyRecord], KeyRecord]) -> KeyRecord:
        def work(connection: sqlite3.Connection) -> KeyRecord:
            with write_transaction(connection):
                row = connection.execute("SELECT * FROM virtual_keys WHERE key_id = ?", (key_id,)).fetchone()
                if row is None:
                    raise KeyNotFound(key_id)
                return self._write(connection, change(self._record(row)), insert=False)

        return await self._run(work)

    async def create(self, record: KeyRecord) -> KeyRecord:
        def work(connection: sqlite3.Connection) -> KeyRecord:
            with write_transaction(connection):
                return self._write(connection, record, insert=True)

        return await self._run(work)

    async def get(self, key_id: str) -> KeyRecord | None:
        def work(connection: sqlite3.Connection) -> KeyRecord | None:
            row = connection.execute("SELECT * FROM virtual_keys WHERE key_id = ?", (key_id,)).fetchone()
            return None if row is None else self._record(row)

        return await self._run(work)

    async def list(self, tenant: str | None = None) -> list[KeyRecord]:
        def work(connection: sqlite3.Connection) -> list[KeyRecord]:
            if tenant is None:
                rows = connection.execute("SELECT * FROM virtual_keys ORDER BY tenant, created_at, key_id")
            else:
                rows = connection.execute(
                    "SELECT * FROM virtual_keys WHERE tenant = ? ORDER BY created_at, key_id", (tenant,)
                )
            return [self._record(row) for row in rows]

        return await self._run(work)

    async def changes_since(self, version: int) -> list[KeyRecord]:
        def work(connection: sqlite3.Connection) -> list[KeyRecord]:
            rows = connection.execute("SELECT * FROM virtual_keys WHERE version > ? ORDER BY version", (version,))
            return [self._record(row) for row in rows]

        return await self._run(work)

    async def close(self) -> None:
        await self._connection.close()


# The changes both stores make, as functions of the stored record (applied inside the write's
# transaction, so two admins rotating at once do not both win).


def _revoked(record: KeyRecord, now: float) -> KeyRecord:
    return replace(record, key=replace(record.key, revoked=True), changed_at=now)


def _edited(record: KeyRecord, changes: Mapping[str, object], now: float) -> KeyRecord:
    return replace(record, key=with_changes(record.key, changes), changed_at=now)


def _rotation(grace_seconds: float, now: float, presented: list[str]) -> Callable[[KeyRecord], KeyRecord]:
    def change(record: KeyRecord) -> KeyRecord:
        presented.clear()  # a retried transaction makes a new secret; only the stored one is shown
        key, rotated = rotate(record, grace_seconds, now)
        presented.append(key)
        return rotated

    return change


def open_key_store(sqlite_path: Path | str | None = None, postgres_dsn: str | None = None) -> KeyStore:
    """PostgreSQL when a DSN is given, else SQLite (default: ``default_keys_path()``). Nothing is
    connected yet: the first operation does it (and raises KeyStoreUnavailable if it cannot)."""
    if postgres_dsn:
        from extproc.auth.key_store_pg import PostgresKeyStore  # asyncpg only for PostgreSQL users

        return PostgresKeyStore(postgres_dsn)
    return SqliteKeyStore(sqlite_path)
