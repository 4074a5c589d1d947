"""The Admin API against its own OpenAPI document, with schemathesis: every operation the document
declares is called with generated valid and invalid input, as an admin; no answer may be a 5xx,
and every answer must match the document (status, content type, body schema). The app runs in
process (a thread of its own) on SQLite stores in tmp; examples are limited to keep this under a
minute. The document itself must be a valid OpenAPI 3.1 document."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from ccr_gateway.admin_wiring import app_context
from control_plane.admin.principals import SqliteAdminKeyStore, new_admin_key_record
from control_plane.admin.roles import Role
from control_plane.admin.server import build_app
from control_plane.admin.settings import AdminSettings
from extproc.auth.key_store import SqliteKeyStore
from extproc.auth.keys import new_key
from ledger import local as local_ledger

EXAMPLES = int(os.environ.get("CCR_ADMIN_SCHEMATHESIS_EXAMPLES", "12"))
POLICY = Path(__file__).parents[2] / "examples" / "gateway.yaml"
# positive_data_acceptance wants every schema-valid request accepted, but a cursor is opaque: a
# string the API did not make is a 400 by the contract. Every other check applies.
EXCLUDED: list[Any] = [positive_data_acceptance]
# A schema-violating body over the size limit is rightly refused with 413 before it is parsed.
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 403, 404, 405, 409, 413, 415, 422, 429]}}}
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, settings: AdminSettings) -> None:
        self.settings = settings
        self.url = f"http://{settings.listen}"
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> None:
        app = await build_app(self.settings, context=app_context())
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        host, _, port = self.settings.listen.rpartition(":")
        await web.TCPSite(self.runner, host, int(port)).start()

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def _seed(settings: AdminSettings) -> str:
    """An admin key to call with, and a few virtual keys for the read operations to find."""
    admins = SqliteAdminKeyStore(settings.admin_sqlite)
    presented, record = new_admin_key_record("schemathesis", Role.ADMIN, None, time.time())
    await admins.create(record)
    await admins.close()
    keys = SqliteKeyStore(settings.keys_sqlite)
    for tenant in ("acme", "globex"):
        await keys.create(new_key(tenant, "seed", time.time(), rpm=10)[1])
    await keys.close()
    local_ledger.connect(settings.ledger_sqlite).close()  # an empty ledger: the usage reads find one
    return presented


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    tmp = tmp_path_factory.mktemp("admin-openapi")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("CCR_AUDIT_POSTGRES", "CCR_AUTH_POSTGRES", "CCR_AUDIT_KEY", "CCR_AUDIT_KEY_FILE", "CCR_AUDIT"):
            patch.delenv(name, raising=False)
        patch.setenv("XDG_DATA_HOME", str(tmp / "data"))
        patch.setenv("CCR_AUDIT_SQLITE", str(tmp / "audit.db"))
        settings = AdminSettings(
            listen=f"127.0.0.1:{_free_port()}",
            admin_sqlite=str(tmp / "admin.db"),
            keys_sqlite=str(tmp / "keys.db"),
            ledger_sqlite=str(tmp / "ledger.db"),
            policy_path=str(POLICY),
            status_file=str(tmp / "control-plane.json"),
            sign_in_per_minute=100_000,  # generated sign-ins must not turn into 429s mid-run
        )
        admin_key = asyncio.run(_seed(settings))
        server = Server(settings)
        server.start()
        try:
            yield server, admin_key
        finally:
            server.stop()


@pytest.fixture(scope="module")
def document(admin_server: tuple[Server, str]) -> dict[str, Any]:
    server, _ = admin_server
    return requests.get(f"{server.url}/admin/v1/openapi.json", timeout=10).json()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_answers_as_documented_and_never_5xx(
    admin_server: tuple[Server, str], document: dict[str, Any], mode: GenerationMode
) -> None:
    """Each operation in turn (schemathesis' pytest loader does not run under this pytest, so
    the operations are walked here); failures are collected, then reported together."""
    server, admin_key = admin_server
    schema = schemathesis.openapi.from_dict(document, config=CONFIG)
    headers = {"Authorization": f"Bearer {admin_key}"}
    failures: dict[str, str] = {}
    covered = []
    for result in schema.get_all_operations():
        operation = result.ok()
        covered.append(operation.label)

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def check(case: Any) -> None:
            case.call_and_validate(base_url=server.url, headers=headers, excluded_checks=EXCLUDED)

        try:
            check()
        except Unsatisfiable:  # nothing to get wrong (no parameters, no body): positive mode covers it
            assert mode is GenerationMode.NEGATIVE
        except Exception as exc:  # schemathesis' failure group names the check, the case and the answer
            failures[operation.label] = str(exc)[:3000]
    assert len(covered) == sum(len(item) for item in document["paths"].values())
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    from openapi_spec_validator import validate

    validate(document)


def test_the_document_covers_every_operation_of_the_contract(document: dict[str, Any]) -> None:
    declared = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    mine = {
        ("POST", "/admin/v1/session"), ("DELETE", "/admin/v1/session"), ("GET", "/admin/v1/me"),
        ("GET", "/admin/v1/keys"), ("POST", "/admin/v1/keys"), ("GET", "/admin/v1/keys/{id}"),
        ("PATCH", "/admin/v1/keys/{id}"), ("POST", "/admin/v1/keys/{id}/revoke"),
        ("POST", "/admin/v1/keys/{id}/rotate"), ("GET", "/admin/v1/tenants"), ("GET", "/admin/v1/audit"),
        ("GET", "/admin/v1/admin-keys"), ("POST", "/admin/v1/admin-keys"),
        ("POST", "/admin/v1/admin-keys/{id}/revoke"), ("GET", "/admin/v1/openapi.json"),
    }  # fmt: skip
    assert mine <= declared, mine - declared
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
