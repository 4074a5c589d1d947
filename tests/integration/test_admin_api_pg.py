"""The Admin API on the real PostgreSQL: admin keys in ``admin_keys``, virtual keys in the key
store the gateways share, the audit chain beside them; a throwaway database per session
(tests/integration/conftest.py)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from ccr_gateway.admin_wiring import app_context
from control_plane.admin.principals import AdminKeyNotFound, new_admin_key_record, open_admin_key_store
from control_plane.admin.principals_pg import PostgresAdminKeyStore, migrate
from control_plane.admin.roles import Role
from control_plane.admin.server import build_app
from control_plane.admin.settings import AdminSettings
from extproc.auth.key_store_pg import PostgresKeyStore

API = "/admin/v1"
MODULES = (
    "control_plane.admin.routes_session",
    "control_plane.admin.routes_keys",
    "control_plane.admin.routes_audit",
    "control_plane.admin.routes_admin_keys",
)


@pytest.fixture
async def app_on_postgres(
    postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[TestClient, str]]:
    for name in ("CCR_AUDIT_POSTGRES", "CCR_AUTH_POSTGRES", "CCR_AUDIT_KEY_FILE", "CCR_AUDIT", "CCR_ADMIN_POSTGRES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CCR_AUDIT_KEY", secrets.token_hex(32))  # a shared log's key comes from outside
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    settings = AdminSettings(admin_postgres=postgres_dsn, keys_postgres=postgres_dsn)
    store = open_admin_key_store(postgres_dsn=postgres_dsn)
    assert isinstance(store, PostgresAdminKeyStore)
    presented, record = new_admin_key_record("pg-admin", Role.ADMIN, None, time.time())
    await store.create(record)
    await store.close()
    client = TestClient(TestServer(await build_app(settings, modules=MODULES, context=app_context())))
    await client.start_server()
    try:
        yield client, presented
    finally:
        await client.close()


async def test_keys_and_admin_keys_through_the_api_on_postgres(
    app_on_postgres: tuple[TestClient, str], postgres_dsn: str
) -> None:
    client, admin_key = app_on_postgres
    auth = {"Authorization": f"Bearer {admin_key}"}
    made = await client.post(
        f"{API}/keys", json={"tenant": "pg-acme", "name": "ci", "rpm": 60, "models": ["m"]}, headers=auth
    )
    assert made.status == 201, await made.text()
    key_id = (await made.json())["record"]["id"]
    patched = await client.patch(f"{API}/keys/{key_id}", json={"rpm": 2147483647, "models": None}, headers=auth)
    assert (await patched.json())["rpm"] == 2147483647
    rotated = await client.post(f"{API}/keys/{key_id}/rotate", json={"grace_seconds": 60}, headers=auth)
    assert rotated.status == 200
    revoked = await client.post(f"{API}/keys/{key_id}/revoke", headers=auth)
    assert (await revoked.json())["state"] == "revoked"

    # What the gateways read sees the same key, revoked.
    keys = PostgresKeyStore(postgres_dsn)
    try:
        stored = await keys.get(key_id)
    finally:
        await keys.close()
    assert stored is not None and stored.key.revoked and stored.key.rpm == 2147483647

    created = await client.post(
        f"{API}/admin-keys", json={"name": "ops", "role": "tenant-admin", "tenant": "pg-acme"}, headers=auth
    )
    assert created.status == 201
    scoped = {"Authorization": f"Bearer {(await created.json())['key']}"}
    assert (await (await client.get(f"{API}/me", headers=scoped)).json())["tenant"] == "pg-acme"
    listing = await (await client.get(f"{API}/keys", headers=scoped)).json()
    assert [k["id"] for k in listing["data"]] == [key_id]
    await client.post(f"{API}/admin-keys/{(await created.json())['record']['id']}/revoke", headers=auth)
    assert (await client.get(f"{API}/me", headers=scoped)).status == 401

    audit = await (await client.get(f"{API}/audit?limit=200", headers=auth)).json()
    actions = [e["action"] for e in audit["data"]]
    for action in ("key.create", "key.update", "key.rotate", "key.revoke", "admin_key.create", "admin_key.revoke"):
        assert action in actions
    connection = await asyncpg.connect(postgres_dsn)
    try:
        rows = await connection.fetch("SELECT salt, secret_hash FROM admin_keys")
        assert rows and all(admin_key.split("_")[1].encode() not in bytes(r["secret_hash"]) for r in rows)
        assert await connection.fetchval("SELECT count(*) FROM audit_log WHERE actor LIKE 'admin:%'") >= 6
    finally:
        await connection.close()


async def test_admin_key_migrations_are_safe_to_run_at_once_and_again(postgres_dsn: str) -> None:
    connections = [await asyncpg.connect(postgres_dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(connection) for connection in connections))
        assert sum(len(applied) for applied in results) <= 1  # once at most (a test before may have)
        assert await migrate(connections[0]) == []
    finally:
        for connection in connections:
            await connection.close()


async def test_revoking_an_unknown_admin_key_is_not_found(postgres_dsn: str) -> None:
    store = PostgresAdminKeyStore(postgres_dsn)
    try:
        with pytest.raises(AdminKeyNotFound):
            await store.revoke("aaaaaaaa", time.time())
    finally:
        await store.close()
