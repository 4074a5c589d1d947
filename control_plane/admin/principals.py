"""Who is calling the Admin API: admin keys (ours, in a store) and JWTs (someone else's IdP).

An admin key is ``sk-ccr-adm-<id>_<secret>``: the id 8 characters of a-z, 2-7 (not secret: lists
and the audit log show it), the secret 32 random bytes as urlsafe base64 (43 characters). Only a
random salt and sha256(salt + secret) are stored, the approach of the virtual keys
(extproc/auth/keys.py, ``SecretHash``), written again here because the control plane does not
import ext_proc (pyproject's import contracts): a plain hash on purpose, the secrets are 256 random
bits, not passwords, so there is no dictionary for a slow KDF to slow down.

Stores: SQLite by default (``$XDG_DATA_HOME/ccr-gateway/admin.db``), PostgreSQL (table
``admin_keys``) with ``--admin-postgres`` / ``$CCR_ADMIN_POSTGRES`` (principals_pg.py). Keys are
never deleted, only revoked, so the audit log's ids keep meaning something.

A JWT is verified against a JWKS (a file or an URL, PyJWT), its issuer and audience when
configured; its role comes from ``role_claim``, a tenant-admin's tenant from ``tenant_claim``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from ccr.v1.sqlite_files import LockedConnection, write_transaction
from control_plane.admin.roles import Principal, Role
from control_plane.admin.settings import AdminSettings

ADMIN_KEY_PREFIX = "sk-ccr-adm-"
ADMIN_POSTGRES_ENV = "CCR_ADMIN_POSTGRES"
SALT_BYTES = 16
SQLITE_BUSY_TIMEOUT_MS = 5000
_KEY_ID = re.compile(r"[a-z2-7]{8}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")
# Asymmetric algorithms only: an HMAC "key" taken from a public JWKS would let anyone sign.
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


class AdminKeyStoreUnavailable(Exception):
    """The admin key store cannot be reached or read (the message never holds a password)."""


class AdminKeyNotFound(LookupError):
    """No admin key with that id."""


class NotAuthenticated(Exception):
    """The credentials presented prove nothing; the message says why, never echoing them."""


# -- the key format ----------------------------------------------------------------------------


def new_admin_key() -> tuple[str, str]:
    """(key id, secret)."""
    key_id = base64.b32encode(secrets.token_bytes(5)).decode("ascii").lower()  # 5 bytes: 8 chars
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
    return key_id, secret


def format_admin_key(key_id: str, secret: str) -> str:
    return f"{ADMIN_KEY_PREFIX}{key_id}_{secret}"


def parse_admin_key(text: object) -> tuple[str, str] | None:
    """(key id, secret) of a presented admin key, None for anything else. Never raises."""
    if not isinstance(text, str) or not text.startswith(ADMIN_KEY_PREFIX):
        return None
    key_id, separator, secret = text[len(ADMIN_KEY_PREFIX) :].partition("_")
    if separator != "_" or not _KEY_ID.fullmatch(key_id) or not _SECRET.fullmatch(secret):
        return None
    return key_id, secret


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode("ascii", "replace")).digest()


@dataclass(frozen=True, slots=True)
class AdminKeyRecord:
    key_id: str
    name: str
    role: Role
    tenant: str | None
    salt: bytes
    digest: bytes
    created_at: float
    revoked_at: float | None = None

    def __post_init__(self) -> None:
        if not _KEY_ID.fullmatch(self.key_id):
            raise ValueError(f"admin key id {self.key_id!r} is not 8 characters of a-z, 2-7")
        if not self.name or not self.name.strip():
            raise ValueError("an admin key needs a name")
        if (self.role is Role.TENANT_ADMIN) != bool(self.tenant):
            raise ValueError("a tenant-admin key needs a tenant, and only a tenant-admin key has one")

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def matches(self, secret: str) -> bool:
        # compare_digest: the time taken does not tell how many leading bytes were right.
        return hmac.compare_digest(_digest(self.salt, secret), self.digest)

    def principal(self) -> Principal:
        return Principal(f"admin:{self.key_id}", self.name, self.role, self.tenant)

    def public(self) -> dict[str, Any]:
        """For lists and answers: never the salt or the hash."""
        return {
            "id": self.key_id,
            "name": self.name,
            "role": self.role.value,
            "tenant": self.tenant,
            "created_at": self.created_at,
            "revoked": self.revoked,
            "state": "revoked" if self.revoked else "active",
        }


def new_admin_key_record(name: str, role: Role, tenant: str | None, now: float) -> tuple[str, AdminKeyRecord]:
    """(the presented key, shown once; the record to store). ValueError for a bad name/role/tenant."""
    key_id, secret = new_admin_key()
    salt = secrets.token_bytes(SALT_BYTES)
    record = AdminKeyRecord(key_id, name.strip(), role, tenant or None, salt, _digest(salt, secret), now)
    return format_admin_key(key_id, secret), record


# -- stores ------------------------------------------------------------------------------------


class AdminKeyStore(Protocol):
    description: str

    async def create(self, record: AdminKeyRecord) -> AdminKeyRecord: ...
    async def get(self, key_id: str) -> AdminKeyRecord | None: ...
    async def list(self) -> list[AdminKeyRecord]: ...  # by created_at, key_id
    async def revoke(self, key_id: str, now: float) -> AdminKeyRecord: ...  # AdminKeyNotFound
    async def close(self) -> None: ...


def default_admin_path() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "ccr-gateway" / "admin.db"


def open_admin_key_store(sqlite_path: str | None = None, postgres_dsn: str | None = None) -> AdminKeyStore:
    """PostgreSQL when a DSN is given (or ``$CCR_ADMIN_POSTGRES`` and no file), else SQLite.
    Nothing is connected yet: the first operation does it."""
    dsn = postgres_dsn or (None if sqlite_path else os.environ.get(ADMIN_POSTGRES_ENV))
    if dsn:
        from control_plane.admin.principals_pg import PostgresAdminKeyStore  # asyncpg only when used

        return PostgresAdminKeyStore(dsn)
    return SqliteAdminKeyStore(sqlite_path or default_admin_path())


def for_settings(settings: AdminSettings) -> AdminKeyStore:
    return open_admin_key_store(settings.admin_sqlite or None, settings.admin_postgres or None)


COLUMNS = ("key_id", "name", "role", "tenant", "salt", "secret_hash", "created_at", "revoked_at")


def row_values(record: AdminKeyRecord) -> tuple[Any, ...]:
    return (
        record.key_id,
        record.name,
        record.role.value,
        record.tenant,
        record.salt,
        record.digest,
        record.created_at,
        record.revoked_at,
    )


def record_of(row: Any) -> AdminKeyRecord:
    return AdminKeyRecord(
        key_id=row["key_id"],
        name=row["name"],
        role=Role(row["role"]),
        tenant=row["tenant"],
        salt=bytes(row["salt"]),
        digest=bytes(row["secret_hash"]),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


_SQLITE_MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "admin keys",
        """
        CREATE TABLE admin_keys (
            key_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            role TEXT NOT NULL,
            tenant TEXT,
            salt BLOB NOT NULL,
            secret_hash BLOB NOT NULL,
            created_at REAL NOT NULL,
            revoked_at REAL
        )
        """,
    ),
)


class SqliteAdminKeyStore:
    """One file, WAL; one connection used under a lock in a worker thread (as the key store)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser()
        self.description = str(self.path)
        # Hashes only, but nobody else needs them (LockedConnection makes the file 0600). OSError
        # too: a folder that cannot be made is the store unavailable.
        self._connection = LockedConnection(
            self.path,
            busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS,
            setup=_migrate_sqlite,
            unavailable=lambda exc: AdminKeyStoreUnavailable(f"admin key store {self.description}: {exc}"),
            errors=(sqlite3.Error, OSError),
        )

    async def _run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        return await self._connection.run(work)

    async def create(self, record: AdminKeyRecord) -> AdminKeyRecord:
        def work(connection: sqlite3.Connection) -> AdminKeyRecord:
            with write_transaction(connection):
                marks = ", ".join("?" for _ in COLUMNS)
                connection.execute(
                    f"INSERT INTO admin_keys ({', '.join(COLUMNS)}) VALUES ({marks})", row_values(record)
                )
            return record

        return await self._run(work)

    async def get(self, key_id: str) -> AdminKeyRecord | None:
        def work(connection: sqlite3.Connection) -> AdminKeyRecord | None:
            row = connection.execute("SELECT * FROM admin_keys WHERE key_id = ?", (key_id,)).fetchone()
            return None if row is None else record_of(row)

        return await self._run(work)

    async def list(self) -> list[AdminKeyRecord]:
        def work(connection: sqlite3.Connection) -> list[AdminKeyRecord]:
            rows = connection.execute("SELECT * FROM admin_keys ORDER BY created_at, key_id")
            return [record_of(row) for row in rows]

        return await self._run(work)

    async def revoke(self, key_id: str, now: float) -> AdminKeyRecord:
        def work(connection: sqlite3.Connection) -> AdminKeyRecord:
            with write_transaction(connection):
                row = connection.execute("SELECT * FROM admin_keys WHERE key_id = ?", (key_id,)).fetchone()
                if row is None:
                    raise AdminKeyNotFound(key_id)
                record = record_of(row)
                if record.revoked_at is None:  # revoking twice keeps the first time
                    record = replace(record, revoked_at=now)
                    connection.execute("UPDATE admin_keys SET revoked_at = ? WHERE key_id = ?", (now, key_id))
                return record

        return await self._run(work)

    async def close(self) -> None:
        await self._connection.close()


def _migrate_sqlite(connection: sqlite3.Connection) -> None:
    with write_transaction(connection):
        connection.execute(
            "CREATE TABLE IF NOT EXISTS admin_schema_migrations"
            " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        done = {row[0] for row in connection.execute("SELECT version FROM admin_schema_migrations")}
        known = {version for version, _, _ in _SQLITE_MIGRATIONS}
        if done - known:
            raise sqlite3.DatabaseError(f"admin schema version {max(done)} is newer than this ccr-gateway knows")
        for version, name, sql in _SQLITE_MIGRATIONS:
            if version not in done:
                connection.execute(sql)
                connection.execute("INSERT INTO admin_schema_migrations VALUES (?, ?, ?)", (version, name, time.time()))


# -- JWT ---------------------------------------------------------------------------------------


class JwtVerifier:
    """Verifies a bearer JWT against a JWKS file or URL (fetched and cached by PyJWT's client,
    in a thread: its fetch blocks). Asymmetric algorithms only; ``exp`` required."""

    def __init__(self, settings: AdminSettings) -> None:
        import jwt  # PyJWT: only a control plane configured with --admin-jwks loads it

        self._jwt = jwt
        self.settings = settings
        self._keys: Any = None  # PyJWKSet from a file
        self._client: Any = None  # PyJWKClient for an URL
        source = settings.jwks
        if source.startswith(("http://", "https://")):
            self._client = jwt.PyJWKClient(source, cache_jwk_set=True, lifespan=300, timeout=5)
        else:
            with open(source, encoding="utf-8") as file:
                self._keys = jwt.PyJWKSet.from_dict(json.load(file))

    async def verify(self, token: str) -> Principal:
        jwt = self._jwt
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") not in JWT_ALGORITHMS:
                raise NotAuthenticated("the token's algorithm is not accepted")
            key = await self._signing_key(header.get("kid"))
            options = {"require": ["exp"], "verify_aud": bool(self.settings.jwt_audience)}
            claims = jwt.decode(
                token,
                key,
                algorithms=list(JWT_ALGORITHMS),
                audience=self.settings.jwt_audience or None,
                issuer=self.settings.jwt_issuer or None,
                options=options,
            )
        except jwt.PyJWKClientConnectionError as exc:
            raise AdminKeyStoreUnavailable(f"JWKS {self.settings.jwks}: {exc}") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise NotAuthenticated(f"the token does not verify: {type(exc).__name__}") from None
        return principal_of_claims(claims, self.settings.role_claim, self.settings.tenant_claim)

    async def _signing_key(self, kid: str | None) -> Any:
        if self._client is not None:
            if kid is None:
                raise NotAuthenticated("the token names no key (kid)")
            signing = await asyncio.to_thread(self._client.get_signing_key, kid)
            return signing.key
        for key in self._keys.keys:
            if kid is None or key.key_id == kid:
                return key.key
        raise NotAuthenticated("no key in the JWKS matches the token's kid")


def principal_of_claims(claims: dict[str, Any], role_claim: str, tenant_claim: str) -> Principal:
    """The principal verified claims name; NotAuthenticated without a subject or a known role."""
    subject, role_text, tenant = claims.get("sub"), claims.get(role_claim), claims.get(tenant_claim)
    if not isinstance(subject, str) or not subject:
        raise NotAuthenticated("the token has no subject")
    try:
        role = Role(role_text)
    except ValueError:
        raise NotAuthenticated(f"the token's {role_claim} claim is not a role of this API") from None
    if role is Role.TENANT_ADMIN and not (isinstance(tenant, str) and tenant):
        raise NotAuthenticated(f"a tenant-admin token needs the {tenant_claim} claim")
    name = claims.get("name") if isinstance(claims.get("name"), str) else subject
    return Principal(f"jwt:{subject}", name, role, tenant if role is Role.TENANT_ADMIN else None)


# -- both --------------------------------------------------------------------------------------


class Authenticator:
    """A bearer credential -> a Principal: an admin key from the store, else a JWT when a JWKS is
    configured. Raises NotAuthenticated, or AdminKeyStoreUnavailable (a 503, not a 401: the
    caller's key may be fine)."""

    def __init__(self, store: AdminKeyStore, jwt: JwtVerifier | None = None) -> None:
        self.store = store
        self.jwt = jwt

    async def admin_key(self, presented: str) -> AdminKeyRecord:
        parsed = parse_admin_key(presented)
        if parsed is None:
            raise NotAuthenticated("not an admin key")
        key_id, secret = parsed
        record = await self.store.get(key_id)
        if record is None or not record.matches(secret):
            raise NotAuthenticated("unknown admin key")
        if record.revoked:
            raise NotAuthenticated("the admin key is revoked")
        return record

    async def bearer(self, token: str) -> Principal:
        if token.startswith(ADMIN_KEY_PREFIX):
            return (await self.admin_key(token)).principal()
        if self.jwt is not None and token.count(".") == 2:
            return await self.jwt.verify(token)
        raise NotAuthenticated("not an admin key" + (" or a JWT" if self.jwt is not None else ""))

    async def still_valid(self, principal: Principal) -> bool:
        """For a console session: the admin key it was made from has not been revoked since."""
        if not principal.id.startswith("admin:"):
            return True
        record = await self.store.get(principal.id.removeprefix("admin:"))
        return record is not None and not record.revoked

    async def close(self) -> None:
        await self.store.close()
