"""The usage, policy and status routes over HTTP (aiohttp's test client): a small app of their
own that registers their OPERATIONS and hands a fixed principal to each handler, a SQLite ledger,
a policy file or a Consul double, a fake Envoy admin; and once through the server's build_app."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from audit.stores import SqliteAuditStore
from ccr.v1.usage_record import time_of
from ccr_gateway.admin_ledger import open_reader
from control_plane.admin import routes_policy, routes_status, routes_usage
from control_plane.admin.errors import AdminError
from control_plane.admin.http import ApiError
from control_plane.admin.roles import Principal, Role, may
from control_plane.admin.settings import AdminSettings
from ledger.local import connect, write_records
from tests.consul_double import ConsulDouble
from tests.unit.ledger_records import BASE_SECONDS, make_record

EXAMPLE = (Path(__file__).resolve().parents[3] / "examples" / "gateway.yaml").read_text()
ADMIN = Principal("admin:adm1", "ops", Role.ADMIN)
ACME = Principal("admin:acm1", "acme admin", Role.TENANT_ADMIN, "acme")
VIEWER = Principal("admin:view", "viewer", Role.VIEWER)
MODULES = (routes_usage, routes_policy, routes_status)
AUDIT_ENV = (
    "CCR_AUDIT_POSTGRES",
    "CCR_AUTH_POSTGRES",
    "CCR_AUDIT_KEY",
    "CCR_AUDIT_KEY_FILE",
    "CCR_AUDIT",
    "CCR_ADMIN_POSTGRES",
)


def tiny_app(settings: AdminSettings, who: dict[str, Principal]) -> Callable[[], Awaitable[web.Application]]:
    """What server.py does, reduced: the role check, AdminError as the contract's JSON."""

    async def make() -> web.Application:
        app = web.Application()
        app[routes_usage.LEDGER] = open_reader
        for module in MODULES:
            await module.setup(app, settings)
            for op in module.OPERATIONS:

                async def handle(request: web.Request, op: Any = op) -> web.StreamResponse:
                    principal = who[request.headers.get("x-who", "admin")]
                    try:
                        if op.action is not None and not may(principal, op.action):
                            raise AdminError(403, "forbidden", "not allowed")
                        return await op.handler(request, principal)
                    except ApiError as exc:  # AdminError is one
                        return web.json_response(exc.body(), status=exc.status)

                app.router.add_route(op.method, op.full_path, handle)
        return app

    return make


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The audit log: a local file, its key made where XDG_DATA_HOME says (as for a local CLI).
    for name in AUDIT_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("CCR_AUDIT_SQLITE", str(tmp_path / "audit.db"))
    (tmp_path / "policy.yaml").write_text(EXAMPLE)
    records = [
        make_record(
            i, time=time_of(BASE_SECONDS - i * 3600), tenant=["acme", "globex", None][i % 3], cache=["hit", None][i % 2]
        )
        for i in range(12)
    ]
    connection = connect(tmp_path / "ledger.db")
    write_records(connection, records)
    connection.close()
    return tmp_path


def settings_in(path: Path, **changes: Any) -> AdminSettings:
    return replace(
        AdminSettings(
            ledger_sqlite=str(path / "ledger.db"),
            policy_path=str(path / "policy.yaml"),
            status_file=str(path / "status.json"),
        ),
        **changes,
    )


@pytest.fixture
async def client(env: Path) -> AsyncIterator[TestClient]:
    app = await tiny_app(settings_in(env), {"admin": ADMIN, "acme": ACME, "viewer": VIEWER})()
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


WINDOW = {"since": time_of(BASE_SECONDS - 86_400), "until": time_of(BASE_SECONDS + 1)}


# --- usage ------------------------------------------------------------------------------------


async def test_usage_groups_the_ledger_and_pages_with_cursors(client: TestClient) -> None:
    answer = await client.get("/admin/v1/usage", params={**WINDOW, "by": "tenant", "limit": "2"})
    assert answer.status == 200, await answer.text()
    body = await answer.json()
    assert [row["group"] for row in body["rows"]] == [{"tenant": "acme"}, {"tenant": "globex"}]
    assert [row["requests"] for row in body["rows"]] == [4, 4]
    assert body["total"]["requests"] == 12 and body["total"]["errors"] == 0 and body["total"]["cache_hits"] == 6
    following = await client.get("/admin/v1/usage", params={**WINDOW, "by": "tenant", "cursor": body["next_cursor"]})
    rest = await following.json()
    assert [row["group"] for row in rest["rows"]] == [{"tenant": None}] and rest["next_cursor"] is None


async def test_a_tenant_admin_sees_its_own_tenant_whatever_it_asks(client: TestClient) -> None:
    answer = await client.get(
        "/admin/v1/usage", params={**WINDOW, "by": "tenant", "tenant": "globex"}, headers={"x-who": "acme"}
    )
    body = await answer.json()
    assert body["tenant"] == "acme" and [row["group"] for row in body["rows"]] == [{"tenant": "acme"}]
    series = await client.get("/admin/v1/usage/series", params={**WINDOW, "step": "hour"}, headers={"x-who": "acme"})
    assert sum(point["requests"] for point in (await series.json())["points"]) == 4


async def test_usage_as_csv(client: TestClient) -> None:
    answer = await client.get("/admin/v1/usage", params={**WINDOW, "by": "model", "format": "csv"})
    assert answer.status == 200 and answer.content_type == "text/csv"
    lines = (await answer.text()).splitlines()
    assert lines[0].startswith("line,model,requests") and lines[-1].startswith("total,,12,")


async def test_usage_series_per_hour(client: TestClient) -> None:
    answer = await client.get("/admin/v1/usage/series", params={**WINDOW, "step": "hour", "by": "tenant"})
    body = await answer.json()
    assert body["step"] == "hour" and len(body["points"]) == 12
    assert all(point["t"].endswith(":00:00Z") for point in body["points"])
    too_long = await client.get("/admin/v1/usage/series", params={"step": "hour", "since": "30d"})
    assert too_long.status == 400 and (await too_long.json())["error"]["code"] == "invalid_request"


async def test_a_missing_ledger_is_a_503(env: Path) -> None:
    app = await tiny_app(settings_in(env, ledger_sqlite=str(env / "none.db")), {"admin": ADMIN})()
    async with TestClient(TestServer(app)) as test_client:
        answer = await test_client.get("/admin/v1/usage")
        assert answer.status == 503 and (await answer.json())["error"]["code"] == "unavailable"
    app = await tiny_app(settings_in(env), {"admin": ADMIN})()
    del app[routes_usage.LEDGER]
    async with TestClient(TestServer(app)) as test_client:
        assert (await test_client.get("/admin/v1/usage/series")).status == 503


# --- policy (file) ----------------------------------------------------------------------------


async def test_get_policy_gives_source_version_text_and_validity(client: TestClient, env: Path) -> None:
    body = await (await client.get("/admin/v1/policy")).json()
    assert body["source"] == f"file:{env / 'policy.yaml'}"
    assert body["version"] == hashlib.sha256(EXAMPLE.encode()).hexdigest() == body["sha256"]
    assert body["yaml"] == EXAMPLE and body["valid"] is True


async def test_validate_and_diff(client: TestClient) -> None:
    broken = EXAMPLE.replace("port: 8080", "port: 99999")
    result = await (await client.post("/admin/v1/policy/validate", json={"yaml": broken})).json()
    assert result["valid"] is False and result["errors"][0]["path"] == "listener.port"
    assert result["errors"][0]["line"] == 6
    diff = await (await client.post("/admin/v1/policy/diff", json={"yaml": broken})).json()
    assert "-  port: 8080\n+  port: 99999\n" in diff["diff"]
    assert (await client.post("/admin/v1/policy/validate", data=b"{")).status == 400


async def test_a_push_writes_the_file_and_is_audited_with_the_principal(client: TestClient, env: Path) -> None:
    version = (await (await client.get("/admin/v1/policy")).json())["version"]
    edited = EXAMPLE.replace("port: 8080", "port: 8081")
    answer = await client.put("/admin/v1/policy", json={"yaml": edited, "expected_version": version})
    assert answer.status == 200, await answer.text()
    assert (await answer.json()) == {"version": hashlib.sha256(edited.encode()).hexdigest(), "changed": True}
    assert (env / "policy.yaml").read_text() == edited
    assert not list(env.glob(".policy.yaml.*"))  # no temporary file left behind
    store = SqliteAuditStore(env / "audit.db")
    entries = await store.entries()
    await store.close()
    assert [(e.actor, e.action) for e in entries] == [("admin:adm1", "policy.push")]
    assert entries[0].details["previous_version"] == version
    stale = await client.put("/admin/v1/policy", json={"yaml": EXAMPLE, "expected_version": version})
    assert stale.status == 409 and (await stale.json())["error"]["code"] == "conflict"
    assert (env / "policy.yaml").read_text() == edited


async def test_an_invalid_push_is_a_400_with_its_problems_and_writes_nothing(client: TestClient, env: Path) -> None:
    version = hashlib.sha256(EXAMPLE.encode()).hexdigest()
    answer = await client.put("/admin/v1/policy", json={"yaml": "providers: []\n", "expected_version": version})
    body = await answer.json()
    assert answer.status == 400 and body["error"]["details"][0]["path"] == "providers"
    assert (env / "policy.yaml").read_text() == EXAMPLE


async def test_a_push_the_audit_log_cannot_record_is_a_503_and_writes_nothing(
    client: TestClient, env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CCR_AUDIT_KEY_FILE", str(env / "missing" / "audit.key"))
    version = hashlib.sha256(EXAMPLE.encode()).hexdigest()
    edited = EXAMPLE.replace("port: 8080", "port: 8081")
    app = await tiny_app(settings_in(env), {"admin": ADMIN})()
    async with TestClient(TestServer(app)) as test_client:
        answer = await test_client.put("/admin/v1/policy", json={"yaml": edited, "expected_version": version})
        assert answer.status == 503, await answer.text()
    assert (env / "policy.yaml").read_text() == EXAMPLE


async def test_a_viewer_may_read_but_not_push_and_a_tenant_admin_neither(client: TestClient) -> None:
    assert (await client.get("/admin/v1/policy", headers={"x-who": "viewer"})).status == 200
    push = await client.put(
        "/admin/v1/policy", json={"yaml": EXAMPLE, "expected_version": "x"}, headers={"x-who": "viewer"}
    )
    assert push.status == 403
    assert (await client.get("/admin/v1/status", headers={"x-who": "acme"})).status == 403


async def test_the_rejected_policy_is_read_from_the_status_file(client: TestClient, env: Path) -> None:
    assert await (await client.get("/admin/v1/policy/rejected")).json() == {"rejected": None}
    status = {
        "version": "2",
        "source": str(env / "policy.yaml"),
        "accepted_at": "2026-12-05T10:00:00+00:00",
        "providers": [],
        "last_rejected": {"at": "2026-12-05T11:00:00+00:00", "message": "policy.yaml:3:1: bad"},
    }
    (env / "status.json").write_text(json.dumps(status))
    body = await (await client.get("/admin/v1/policy/rejected")).json()
    assert body["rejected"]["error"] == "policy.yaml:3:1: bad" and body["rejected"]["pending"] is True


# --- policy (Consul) --------------------------------------------------------------------------


async def test_a_consul_policy_is_versioned_by_modify_index_and_pushed_with_cas(env: Path) -> None:
    consul = ConsulDouble()
    address = await consul.start()
    try:
        index = consul.put("ccr/policy", EXAMPLE)
        settings = settings_in(env, policy_path="", consul_address=address, consul_prefix="ccr")
        app = await tiny_app(settings, {"admin": ADMIN})()
        async with TestClient(TestServer(app)) as test_client:
            body = await (await test_client.get("/admin/v1/policy")).json()
            assert body["source"] == f"consul:{address}/ccr/" and body["version"] == str(index)
            assert body["yaml"] == EXAMPLE and body["valid"]
            edited = EXAMPLE.replace("port: 8080", "port: 8082")
            answer = await test_client.put("/admin/v1/policy", json={"yaml": edited, "expected_version": str(index)})
            assert answer.status == 200, await answer.text()
            written = (await answer.json())["version"]
            assert int(written) > index and consul.get("ccr/policy") == edited.encode()
            consul.put("ccr/policy", EXAMPLE)  # someone else, meanwhile
            stale = await test_client.put("/admin/v1/policy", json={"yaml": edited, "expected_version": written})
            assert stale.status == 409
            assert consul.get("ccr/policy") == EXAMPLE.encode()
        await consul.stop()
        app = await tiny_app(settings, {"admin": ADMIN})()
        async with TestClient(TestServer(app)) as test_client:
            assert (await test_client.get("/admin/v1/policy")).status == 503
    finally:
        await consul.stop()


# --- status -----------------------------------------------------------------------------------


@pytest.fixture
async def envoy_admin() -> AsyncIterator[str]:
    async def clusters(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "cluster_statuses": [
                    {"name": "provider_a", "host_statuses": [{"health_status": {"eds_health_status": "HEALTHY"}}]},
                    {"name": "provider_b", "host_statuses": [{"health_status": {"failed_active_health_check": True}}]},
                ]
            }
        )

    async def stats(request: web.Request) -> web.Response:
        assert "outlier_detection" in request.query["filter"]
        return web.json_response(
            {"stats": [{"name": "cluster.provider_a.outlier_detection.ejections_active", "value": 1}]}
        )

    app = web.Application()
    app.router.add_get("/clusters", clusters)
    app.router.add_get("/stats", stats)
    async with TestServer(app) as server:
        yield str(server.make_url("")).rstrip("/")


async def test_status_reads_envoy_the_status_file_and_the_ledger_and_never_fails_on_a_dead_admin(
    env: Path, envoy_admin: str
) -> None:
    (env / "status.json").write_text(
        json.dumps(
            {
                "version": "3",
                "source": "p.yaml",
                "accepted_at": "2026-12-05T10:00:00+00:00",
                "policy_sha256": "ab",
                "last_rejected": None,
                "xds_clients": [{"group": "ccr-gateway", "node": "envoy-0", "generation": "3", "acked": {}}],
            }
        )
    )
    settings = settings_in(env, envoy_admins=(envoy_admin, "http://127.0.0.1:1"))
    app = await tiny_app(settings, {"admin": ADMIN})()
    async with TestClient(TestServer(app)) as test_client:
        started = time.monotonic()
        answer = await test_client.get("/admin/v1/status")
        assert time.monotonic() - started < routes_status.ENVOY_TIMEOUT + 2
        assert answer.status == 200, await answer.text()
        body = await answer.json()
    assert body["policy"]["generation"] == "3" and body["gateways"][0]["acked_version"] == "3"
    assert [(c["name"], c["state"], c["ejected"]) for c in body["clusters"]] == [
        ("provider_a", "amber", 1),
        ("provider_b", "red", 0),
    ]
    assert [e["reachable"] for e in body["envoy"]] == [True, False] and body["envoy"][1]["error"]
    assert (
        body["ledger"]["lag_seconds"] is not None
        and body["ledger"]["newest_record_at"] == time_of(BASE_SECONDS)[:19] + "Z"
    )


async def test_status_with_nothing_readable_still_answers(env: Path) -> None:
    settings = settings_in(env, ledger_sqlite=str(env / "none.db"), status_file="")
    app = await tiny_app(settings, {"admin": ADMIN})()
    async with TestClient(TestServer(app)) as test_client:
        body = await (await test_client.get("/admin/v1/status")).json()
    assert body["policy"]["generation"] is None and body["ledger"]["lag_seconds"] is None and body["envoy"] == []


# --- through the server -----------------------------------------------------------------------


async def test_the_server_app_serves_these_routes_with_an_admin_key(env: Path) -> None:
    from control_plane.admin.principals import SqliteAdminKeyStore, new_admin_key_record
    from control_plane.admin.server import build_app

    store = SqliteAdminKeyStore(env / "admin.db")
    presented, record = new_admin_key_record("ops", Role.OPERATOR, None, time.time())
    await store.create(record)
    await store.close()
    settings = settings_in(env, admin_sqlite=str(env / "admin.db"), keys_sqlite=str(env / "keys.db"))
    app = await build_app(settings, modules=MODULES, context={routes_usage.LEDGER: open_reader})
    async with TestClient(TestServer(app)) as test_client:
        headers = {"Authorization": f"Bearer {presented}"}
        usage = await test_client.get("/admin/v1/usage", params={**WINDOW, "by": "tenant"}, headers=headers)
        assert usage.status == 200, await usage.text()
        assert (await usage.json())["total"]["requests"] == 12
        policy = await (await test_client.get("/admin/v1/policy", headers=headers)).json()
        edited = EXAMPLE.replace("port: 8080", "port: 8083")
        push = await test_client.put(
            "/admin/v1/policy", json={"yaml": edited, "expected_version": policy["version"]}, headers=headers
        )
        assert push.status == 200, await push.text()
        bad = await test_client.get("/admin/v1/usage", params={"limit": "0"}, headers=headers)
        assert bad.status == 400
        assert (await test_client.get("/admin/v1/status", headers=headers)).status == 200
        document = await (await test_client.get("/admin/v1/openapi.json")).json()
        assert {"/admin/v1/usage", "/admin/v1/policy", "/admin/v1/status"} <= set(document["paths"])
