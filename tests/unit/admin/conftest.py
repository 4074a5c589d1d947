"""The Admin API in process: SQLite stores and an audit log in tmp, aiohttp's test client; the
app gets what the composition root hands it (admin_wiring.app_context: the key store's adapter)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ccr_gateway.admin_wiring import app_context
from control_plane.admin.principals import SqliteAdminKeyStore, new_admin_key_record
from control_plane.admin.roles import Role
from control_plane.admin.server import build_app
from control_plane.admin.settings import AdminSettings

AUDIT_ENV = (
    "CCR_AUDIT_POSTGRES",
    "CCR_AUTH_POSTGRES",
    "CCR_AUDIT_KEY",
    "CCR_AUDIT_KEY_FILE",
    "CCR_AUDIT",
    "CCR_ADMIN_POSTGRES",
)


@dataclass
class Admin:
    client: TestClient
    settings: AdminSettings
    keys: dict[str, str] = field(default_factory=dict)  # name -> presented admin key

    def bearer(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    async def entries(self) -> list[dict[str, Any]]:
        answer = await self.client.get("/admin/v1/audit?limit=200", headers=self.bearer("admin"))
        assert answer.status == 200, await answer.text()
        return (await answer.json())["data"]


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in AUDIT_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("CCR_AUDIT_SQLITE", str(tmp_path / "audit.db"))
    return tmp_path


async def admin_keys(path: Path) -> dict[str, str]:
    """One admin key per role (two tenant-admins), made in the store as the CLI does."""
    store = SqliteAdminKeyStore(path)
    keys = {}
    for name, role, tenant in (
        ("admin", Role.ADMIN, None),
        ("operator", Role.OPERATOR, None),
        ("viewer", Role.VIEWER, None),
        ("acme", Role.TENANT_ADMIN, "acme"),
        ("globex", Role.TENANT_ADMIN, "globex"),
    ):
        presented, record = new_admin_key_record(name, role, tenant, time.time())
        await store.create(record)
        keys[name] = presented
    await store.close()
    return keys


@pytest.fixture
async def admin(isolated: Path) -> AsyncIterator[Admin]:
    policy = isolated / "policy.yaml"
    settings = AdminSettings(
        admin_sqlite=str(isolated / "admin.db"),
        keys_sqlite=str(isolated / "keys.db"),
        policy_path=str(policy),
        sign_in_per_minute=3,
    )
    keys = await admin_keys(isolated / "admin.db")
    app = await build_app(settings, modules=DEFAULT_TEST_MODULES, context=app_context())
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Admin(client, settings, keys)
    finally:
        await client.close()


DEFAULT_TEST_MODULES = (
    "control_plane.admin.routes_session",
    "control_plane.admin.routes_keys",
    "control_plane.admin.routes_audit",
    "control_plane.admin.routes_admin_keys",
)
