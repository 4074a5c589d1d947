"""Where the audit chain is kept: a local SQLite file (embedded mode, the default) or PostgreSQL.

Both keep two tables: ``audit_log`` (one row per entry, ``seq`` the primary key) and
``audit_head`` (one row: the last seq and hash). An append reads the head, seals the entry after it
(audit.chain) and writes both in one transaction, serialized between writers, so two writers never
fork the chain: SQLite takes its write lock up front (BEGIN IMMEDIATE); PostgreSQL takes a
transaction-level advisory lock, held to commit. ``details`` is stored as the JSON text it was
hashed from (not jsonb, which would reorder keys and renormalize numbers).

The DSN, in order: ``--postgres``, ``$CCR_AUDIT_POSTGRES``, ``$CCR_AUTH_POSTGRES`` (the key
store's, from the policy's ``auth.keys.postgres``: `up` puts it in every child's environment, and
the key CLI reads it, so the control plane and `keys` agree on one chain). ``${VAR}`` references
are expanded from the environment; the password is never echoed.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from audit.chain import ChainKey, Draft, Entry, Head, empty_head, seal
from ccr.v1 import env_refs
from ccr.v1.sqlite_files import LockedConnection

AUDIT_POSTGRES_ENV = "CCR_AUDIT_POSTGRES"
AUDIT_SQLITE_ENV = "CCR_AUDIT_SQLITE"
KEY_STORE_POSTGRES_ENV = "CCR_AUTH_POSTGRES"
CONNECT_TIMEOUT = 5.0
_LOCK_ID = 0x63637261756474  # "ccraudt": the advisory lock every PostgreSQL writer takes
_BUSY_TIMEOUT_MS = 10_000
_COLUMNS = (
    "seq",
    "at",
    "actor",
    "action",
    "target",
    "host",
    "source",
    "xds_version",
    "details",
    "key_id",
    "prev_hash",
    "hash",
)

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    target TEXT NOT NULL, host TEXT NOT NULL, source TEXT NOT NULL, xds_version TEXT NOT NULL,
    details TEXT NOT NULL, key_id TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head (one INTEGER PRIMARY KEY CHECK (one = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at)
"""
_POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq bigint PRIMARY KEY, at text NOT NULL, actor text NOT NULL, action text NOT NULL,
    target text NOT NULL, host text NOT NULL, source text NOT NULL, xds_version text NOT NULL,
    details text NOT NULL, key_id text NOT NULL, prev_hash text NOT NULL, hash text NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head (one int PRIMARY KEY CHECK (one = 1), seq bigint NOT NULL, hash text NOT NULL);
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at)
"""


class AuditUnavailable(Exception):
    """The store could not be opened, read or written (the message never holds a password)."""


class AuditStore(Protocol):
    description: str
    embedded: bool  # True: the local file (a missing key file may be created)

    async def append(self, key: ChainKey, draft: Draft) -> Entry: ...
    # Several entries in one transaction (one fsync), in order: for writers that queue many.
    async def append_many(self, key: ChainKey, drafts: Sequence[Draft]) -> list[Entry]: ...
    async def entries(self, since: str | None = None) -> list[Entry]: ...  # by seq; since: ISO time
    async def head(self) -> Head: ...
    async def close(self) -> None: ...


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_audit_path() -> Path:
    """``$XDG_DATA_HOME/ccr-gateway/audit.db``, i.e. ``~/.local/share/ccr-gateway/audit.db``."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "ccr-gateway" / "audit.db"


def configured_dsn(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return explicit or env.get(AUDIT_POSTGRES_ENV) or env.get(KEY_STORE_POSTGRES_ENV) or None


def open_audit_store(
    postgres: str | None = None, sqlite: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> AuditStore:
    """PostgreSQL when a DSN is given or configured (module docstring), else the local file
    (``sqlite``, ``$CCR_AUDIT_SQLITE``, default ``default_audit_path()``). Nothing is opened yet."""
    env = os.environ if environ is None else environ
    dsn = None if sqlite else configured_dsn(postgres, env)
    if dsn:
        return PostgresAuditStore(dsn, environ=env)
    return SqliteAuditStore(sqlite or env.get(AUDIT_SQLITE_ENV) or default_audit_path())


def _row(entry: Entry) -> tuple[Any, ...]:
    values = entry.to_json()
    values["details"] = orjson.dumps(values["details"], option=orjson.OPT_SORT_KEYS).decode()
    return tuple(values[name] for name in _COLUMNS)


def _entry(row: Mapping[str, Any] | sqlite3.Row) -> Entry:
    data = {name: row[name] for name in _COLUMNS}
    data["details"] = orjson.loads(data["details"])
    data["seq"] = int(data["seq"])
    return Entry.from_json(data)


class SqliteAuditStore:
    """The embedded store: one file, WAL, one connection used under a lock in a worker thread."""

    embedded = True

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser()
        self.description = str(self.path)
        self._connection = LockedConnection(
            self.path,
            busy_timeout_ms=_BUSY_TIMEOUT_MS,
            setup=_sqlite_setup,
            unavailable=lambda exc: AuditUnavailable(f"audit log {self.description}: {exc}"),
        )

    async def _run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        return await self._connection.run(work)

    async def append(self, key: ChainKey, draft: Draft) -> Entry:
        (entry,) = await self.append_many(key, (draft,))
        return entry

    async def append_many(self, key: ChainKey, drafts: Sequence[Draft]) -> list[Entry]:
        if not drafts:
            return []

        def work(connection: sqlite3.Connection) -> list[Entry]:
            connection.execute("BEGIN IMMEDIATE")  # the write lock first: no other writer reads this head
            try:
                head, entries = _sqlite_head(connection), []
                for draft in drafts:
                    entry = seal(key, draft, head, now_iso())
                    connection.execute(
                        f"INSERT INTO audit_log VALUES ({', '.join('?' for _ in _COLUMNS)})", _row(entry)
                    )
                    entries.append(entry)
                    head = Head(entry.seq, entry.hash)
                connection.execute(
                    "INSERT INTO audit_head VALUES (1, ?, ?) ON CONFLICT (one) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                    (head.seq, head.hash),
                )
                connection.execute("COMMIT")
                return entries
            except BaseException:
                connection.execute("ROLLBACK")
                raise

        return await self._run(work)

    async def entries(self, since: str | None = None) -> list[Entry]:
        def work(connection: sqlite3.Connection) -> list[Entry]:
            if since is None:
                rows = connection.execute("SELECT * FROM audit_log ORDER BY seq")
            else:
                rows = connection.execute("SELECT * FROM audit_log WHERE at >= ? ORDER BY seq", (since,))
            return [_entry(row) for row in rows]

        return await self._run(work)

    async def head(self) -> Head:
        return await self._run(_sqlite_head)

    async def close(self) -> None:
        await self._connection.close()


def _sqlite_setup(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA synchronous = FULL")
    for statement in filter(str.strip, _SQLITE_SCHEMA.split(";")):
        connection.execute(statement)


def _sqlite_head(connection: sqlite3.Connection) -> Head:
    row = connection.execute("SELECT seq, hash FROM audit_head WHERE one = 1").fetchone()
    return empty_head() if row is None else Head(int(row["seq"]), row["hash"])


class PostgresAuditStore:
    """The shared store: one connection, opened (and the tables created) on first use."""

    embedded = False

    def __init__(self, dsn: str, *, environ: Mapping[str, str] | None = None) -> None:
        self._dsn = dsn
        self._environ = os.environ if environ is None else environ
        self.description = redact_dsn(dsn)
        self._connection: Any = None

    async def _connect(self) -> Any:
        import asyncpg  # only PostgreSQL users pay for it

        if self._connection is None or self._connection.is_closed():
            connection = await asyncpg.connect(expand_env(self._dsn, self._environ), timeout=CONNECT_TIMEOUT)
            try:
                async with connection.transaction():
                    await connection.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
                    await connection.execute(_POSTGRES_SCHEMA)
            except BaseException:
                await connection.close()
                raise
            self._connection = connection
        return self._connection

    async def _call(self, work: Callable[[Any], Any]) -> Any:
        import asyncpg

        try:
            return await work(await self._connect())
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            raise AuditUnavailable(f"audit log {self.description}: {type(exc).__name__}: {exc}") from None

    async def append(self, key: ChainKey, draft: Draft) -> Entry:
        (entry,) = await self.append_many(key, (draft,))
        return entry

    async def append_many(self, key: ChainKey, drafts: Sequence[Draft]) -> list[Entry]:
        if not drafts:
            return []

        async def work(connection: Any) -> list[Entry]:
            async with connection.transaction():
                # Held to commit: the next writer reads the head this one writes.
                await connection.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
                head, entries = await _postgres_head(connection), []
                placeholders = ", ".join(f"${i}" for i in range(1, len(_COLUMNS) + 1))
                for draft in drafts:
                    entry = seal(key, draft, head, now_iso())
                    await connection.execute(f"INSERT INTO audit_log VALUES ({placeholders})", *_row(entry))
                    entries.append(entry)
                    head = Head(entry.seq, entry.hash)
                await connection.execute(
                    "INSERT INTO audit_head VALUES (1, $1, $2) ON CONFLICT (one) DO UPDATE SET seq = $1, hash = $2",
                    head.seq,
                    head.hash,
                )
                return entries

        return await self._call(work)

    async def entries(self, since: str | None = None) -> list[Entry]:
        async def work(connection: Any) -> list[Entry]:
            if since is None:
                rows = await connection.fetch("SELECT * FROM audit_log ORDER BY seq")
            else:
                rows = await connection.fetch("SELECT * FROM audit_log WHERE at >= $1 ORDER BY seq", since)
            return [_entry(row) for row in rows]

        return await self._call(work)

    async def head(self) -> Head:
        return await self._call(_postgres_head)

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()


async def _postgres_head(connection: Any) -> Head:
    row = await connection.fetchrow("SELECT seq, hash FROM audit_head WHERE one = 1")
    return empty_head() if row is None else Head(int(row["seq"]), row["hash"])


# -- ${VAR} DSNs (ccr.v1.env_refs: the audit package imports neither ext_proc nor the ledger) ------


def expand_env(text: str, environ: Mapping[str, str]) -> str:
    try:
        return env_refs.expand_env(text, environ)
    except env_refs.EnvError as error:
        raise AuditUnavailable(str(error)) from None


def redact_dsn(dsn: str) -> str:
    return env_refs.redact_url(dsn)
