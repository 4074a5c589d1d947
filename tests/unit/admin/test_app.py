"""The Admin API app through aiohttp's test client: authentication, roles, tenant isolation,
sessions and CSRF, security headers, errors, and an audit entry for every change."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ccr_gateway.admin_wiring import app_context
from control_plane.admin.server import CONTENT_SECURITY_POLICY, build_app
from control_plane.admin.settings import AdminSettings
from tests.unit.admin.conftest import DEFAULT_TEST_MODULES, Admin, admin_keys

API = "/admin/v1"


async def create_key(admin: Admin, who: str = "admin", **body: object) -> dict:
    answer = await admin.client.post(
        f"{API}/keys", json={"tenant": "acme", "name": "ci", **body}, headers=admin.bearer(who)
    )
    assert answer.status == 201, await answer.text()
    return await answer.json()


async def test_without_credentials_it_is_401_json_with_security_headers(admin: Admin) -> None:
    answer = await admin.client.get(f"{API}/keys")
    assert answer.status == 401
    assert (await answer.json())["error"]["code"] == "unauthenticated"
    assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    assert answer.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "authorization",
    ["Bearer sk-ccr-adm-aaaaaaaa_" + "a" * 43, "Basic Zm9vOmJhcg==", "Bearer", "Bearer a.b.c", "Bearer sk-ccr-x"],
)
async def test_a_wrong_credential_is_401(admin: Admin, authorization: str) -> None:
    answer = await admin.client.get(f"{API}/me", headers={"Authorization": authorization})
    assert answer.status == 401
    assert "WWW-Authenticate" in answer.headers


async def test_me_names_the_principal(admin: Admin) -> None:
    answer = await admin.client.get(f"{API}/me", headers=admin.bearer("acme"))
    body = await answer.json()
    assert body["role"] == "tenant-admin" and body["tenant"] == "acme" and body["id"].startswith("admin:")


async def test_roles_decide_what_is_allowed(admin: Admin) -> None:
    created = await create_key(admin)
    key_id = created["record"]["id"]
    for who, method, path, expected in [
        ("viewer", "post", "/keys", 403),
        ("viewer", "get", "/keys", 200),
        ("viewer", "post", f"/keys/{key_id}/revoke", 403),
        ("operator", "post", "/keys", 403),
        ("operator", "patch", f"/keys/{key_id}", 403),
        ("operator", "post", f"/keys/{key_id}/rotate", 200),
        ("operator", "get", "/admin-keys", 403),
        ("acme", "get", "/audit", 403),
        ("viewer", "get", "/audit", 200),
    ]:
        body = {"tenant": "acme", "name": "x"} if path == "/keys" else ({"rpm": 3} if method == "patch" else {})
        answer = await admin.client.request(method, API + path, json=body, headers=admin.bearer(who))
        assert answer.status == expected, (who, method, path, await answer.text())
        if expected == 403:
            assert (await answer.json())["error"]["code"] == "forbidden"


async def test_a_created_key_is_shown_once_and_never_listed_with_a_secret(admin: Admin) -> None:
    created = await create_key(admin, rpm=10, models=["m"])
    assert created["key"].startswith("sk-ccr-") and created["record"]["rpm"] == 10
    listing = await (await admin.client.get(f"{API}/keys", headers=admin.bearer("viewer"))).text()
    shown = await (
        await admin.client.get(f"{API}/keys/{created['record']['id']}", headers=admin.bearer("viewer"))
    ).text()
    secret = created["key"].split("_", 1)[1]
    assert secret not in listing and secret not in shown and created["record"]["id"] in listing


async def test_keys_update_revoke_rotate_and_their_audit_entries(admin: Admin) -> None:
    key_id = (await create_key(admin))["record"]["id"]
    patched = await admin.client.patch(
        f"{API}/keys/{key_id}", json={"rpm": 7, "name": "renamed"}, headers=admin.bearer("admin")
    )
    assert (await patched.json())["rpm"] == 7
    cleared = await admin.client.patch(f"{API}/keys/{key_id}", json={"rpm": None}, headers=admin.bearer("admin"))
    assert (await cleared.json())["rpm"] is None
    budget = await admin.client.patch(
        f"{API}/keys/{key_id}", json={"budget_usd": 5, "budget_period": "day"}, headers=admin.bearer("admin")
    )
    assert budget.status == 200
    rotated = await admin.client.post(
        f"{API}/keys/{key_id}/rotate", json={"grace_seconds": 0}, headers=admin.bearer("admin")
    )
    assert (await rotated.json())["key"].startswith(f"sk-ccr-{key_id}_")
    revoked = await admin.client.post(f"{API}/keys/{key_id}/revoke", headers=admin.bearer("admin"))
    assert (await revoked.json())["state"] == "revoked"
    entries = [e for e in await admin.entries() if e["target"] == key_id]
    actions = [e["action"] for e in reversed(entries)]
    assert actions == ["key.create", "key.update", "key.update", "budget.change", "key.rotate", "key.revoke"]
    assert {e["actor"] for e in entries} == {"admin:" + admin.keys["admin"][11:19]}
    assert all("sk-ccr-" not in str(e["details"]) for e in entries)


async def test_a_tenant_admin_sees_only_its_own_tenant(admin: Admin) -> None:
    theirs = (await create_key(admin, tenant="globex"))["record"]["id"]
    mine = (await create_key(admin, "acme", tenant="acme"))["record"]["id"]
    listing = await (await admin.client.get(f"{API}/keys?tenant=globex", headers=admin.bearer("acme"))).json()
    assert [k["id"] for k in listing["data"]] == [mine]
    for method, path in [("get", ""), ("patch", ""), ("post", "/revoke"), ("post", "/rotate")]:
        body = {"rpm": 1} if method == "patch" else {}
        answer = await admin.client.request(
            method, f"{API}/keys/{theirs}{path}", json=body, headers=admin.bearer("acme")
        )
        assert answer.status == 404, (method, path)
    other = await admin.client.post(f"{API}/keys", json={"tenant": "globex", "name": "x"}, headers=admin.bearer("acme"))
    assert other.status == 403
    tenants = await (await admin.client.get(f"{API}/tenants", headers=admin.bearer("acme"))).json()
    assert [t["name"] for t in tenants["data"]] == ["acme"]
    everyone = await (await admin.client.get(f"{API}/tenants", headers=admin.bearer("viewer"))).json()
    assert [t["name"] for t in everyone["data"]] == ["acme", "globex"]


async def test_keys_page_with_cursors(admin: Admin) -> None:
    for index in range(5):
        await create_key(admin, name=f"k{index}")
    seen, cursor = [], ""
    while True:
        answer = await admin.client.get(f"{API}/keys?limit=2&cursor={cursor}", headers=admin.bearer("viewer"))
        body = await answer.json()
        seen += [k["id"] for k in body["data"]]
        if body["next_cursor"] is None:
            break
        cursor = body["next_cursor"]
    assert len(seen) == len(set(seen)) == 5


@pytest.mark.parametrize(
    ("method", "path", "body", "query"),
    [
        ("post", "/keys", {"tenant": "acme"}, ""),
        ("post", "/keys", {"tenant": "acme", "name": "x", "rpm": 0}, ""),
        ("post", "/keys", {"tenant": "acme", "name": "x", "surprise": 1}, ""),
        ("post", "/keys", {"tenant": "acme", "name": "x", "budget_period": "day"}, ""),
        ("post", "/keys", {"tenant": "a\u0000b", "name": "x"}, ""),
        ("post", "/keys", [1, 2], ""),
        ("get", "/keys", None, "?limit=0"),
        ("get", "/keys", None, "?limit=abc"),
        ("get", "/keys", None, "?cursor=%21%21"),
        ("get", "/audit", None, "?since=yesterday"),
    ],
)
async def test_bad_input_is_a_400_with_details(admin: Admin, method: str, path: str, body: object, query: str) -> None:
    answer = await admin.client.request(method, API + path + query, json=body, headers=admin.bearer("admin"))
    assert answer.status == 400, await answer.text()
    error = (await answer.json())["error"]
    assert error["code"] == "invalid_request" and error["details"]


async def test_not_json_is_a_400_and_a_large_body_a_413(admin: Admin) -> None:
    headers = {**admin.bearer("admin"), "Content-Type": "application/json"}
    answer = await admin.client.post(f"{API}/keys", data=b"{nope", headers=headers)
    assert answer.status == 400
    answer = await admin.client.post(f"{API}/keys", data=b"x" * (1024 * 1024 + 1), headers=headers)
    assert answer.status == 413 and (await answer.json())["error"]["code"] == "too_large"


async def test_unknown_paths_and_methods_answer_json(admin: Admin) -> None:
    missing = await admin.client.get(f"{API}/nothing", headers=admin.bearer("admin"))
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found"
    wrong = await admin.client.put(f"{API}/keys", headers=admin.bearer("admin"))
    assert wrong.status == 405 and "Allow" in wrong.headers
    unknown = await admin.client.get(f"{API}/keys/nosuchid", headers=admin.bearer("admin"))
    assert unknown.status == 404


async def sign_in(admin: Admin, who: str = "admin") -> str:
    answer = await admin.client.post(f"{API}/session", json={"key": admin.keys[who]})
    assert answer.status == 200, await answer.text()
    cookie = answer.cookies["ccr_admin_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert not cookie["secure"]  # no TLS in this test
    return (await answer.json())["csrf_token"]


async def test_a_session_cookie_needs_the_csrf_token_for_changes(admin: Admin) -> None:
    csrf = await sign_in(admin)
    me = await admin.client.get(f"{API}/me")  # a GET needs no token
    assert me.status == 200 and (await me.json())["csrf_token"] == csrf  # a reloaded console gets it again
    with_bearer = await (await admin.client.get(f"{API}/me", headers=admin.bearer("admin"))).json()
    assert "csrf_token" not in with_bearer  # a bearer caller has no session, so no token
    body = {"tenant": "acme", "name": "x"}
    refused = await admin.client.post(f"{API}/keys", json=body)
    assert refused.status == 403 and (await refused.json())["error"]["code"] == "csrf"
    wrong = await admin.client.post(f"{API}/keys", json=body, headers={"X-CSRF-Token": "nope"})
    assert wrong.status == 403
    allowed = await admin.client.post(f"{API}/keys", json=body, headers={"X-CSRF-Token": csrf})
    assert allowed.status == 201
    assert (await admin.client.delete(f"{API}/session")).status == 403  # sign-out is a change too
    out = await admin.client.delete(f"{API}/session", headers={"X-CSRF-Token": csrf})
    assert out.status == 204
    assert (await admin.client.get(f"{API}/me")).status == 401


async def test_a_session_ends_when_its_admin_key_is_revoked(admin: Admin) -> None:
    await sign_in(admin, "viewer")
    me = await (await admin.client.get(f"{API}/me")).json()
    key_id = me["id"].removeprefix("admin:")
    admin.client.session.cookie_jar.clear()
    revoked = await admin.client.post(f"{API}/admin-keys/{key_id}/revoke", headers=admin.bearer("admin"))
    assert revoked.status == 200
    assert (await admin.client.post(f"{API}/session", json={"key": admin.keys["viewer"]})).status == 401


async def test_failed_sign_ins_are_rate_limited_and_audited_without_the_key(admin: Admin) -> None:
    wrong = admin.keys["viewer"][:-4] + "AAAA"
    for _ in range(3):
        assert (await admin.client.post(f"{API}/session", json={"key": wrong})).status == 401
    limited = await admin.client.post(f"{API}/session", json={"key": admin.keys["admin"]})
    assert limited.status == 429 and int(limited.headers["Retry-After"]) > 0
    assert (await limited.json())["error"]["code"] == "rate_limited"
    failures = [e for e in await admin.entries() if e["action"] == "admin.sign_in_failed"]
    assert len(failures) == 3
    assert all(wrong not in str(e) and wrong.partition("_")[2] not in str(e) for e in failures)


async def test_sign_in_is_audited(admin: Admin) -> None:
    await sign_in(admin, "operator")
    assert any(e["action"] == "admin.sign_in" for e in await admin.entries())


async def test_admin_keys_are_admin_only_created_once_and_audited(admin: Admin) -> None:
    made = await admin.client.post(
        f"{API}/admin-keys", json={"name": "ci", "role": "viewer"}, headers=admin.bearer("admin")
    )
    assert made.status == 201
    created = await made.json()
    assert created["key"].startswith("sk-ccr-adm-")
    assert (await admin.client.get(f"{API}/me", headers={"Authorization": f"Bearer {created['key']}"})).status == 200
    bad = await admin.client.post(
        f"{API}/admin-keys", json={"name": "t", "role": "tenant-admin"}, headers=admin.bearer("admin")
    )
    assert bad.status == 400
    listing = await (await admin.client.get(f"{API}/admin-keys", headers=admin.bearer("admin"))).text()
    assert created["key"].partition("_")[2] not in listing
    key_id = created["record"]["id"]
    await admin.client.post(f"{API}/admin-keys/{key_id}/revoke", headers=admin.bearer("admin"))
    assert (await admin.client.get(f"{API}/me", headers={"Authorization": f"Bearer {created['key']}"})).status == 401
    actions = {e["action"] for e in await admin.entries() if e["target"] == key_id}
    assert actions == {"admin_key.create", "admin_key.revoke"}


async def test_an_unusable_audit_log_refuses_changes_and_changes_nothing(
    admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audit.stores import AuditUnavailable
    from control_plane.admin import http as admin_http

    audit = admin.client.app[admin_http.AUDIT]

    async def down() -> None:
        raise AuditUnavailable("audit log: down for the test")

    monkeypatch.setattr(audit.log, "ready", down)
    answer = await admin.client.post(f"{API}/keys", json={"tenant": "acme", "name": "x"}, headers=admin.bearer("admin"))
    assert answer.status == 503 and (await answer.json())["error"]["code"] == "unavailable"
    listing = await (await admin.client.get(f"{API}/keys", headers=admin.bearer("admin"))).json()
    assert listing["data"] == []


async def test_an_unexpected_failure_is_a_json_500_with_a_request_id(
    admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    from control_plane.admin import routes_keys

    keys = admin.client.app[routes_keys.KEY_ADMIN]

    async def broken(tenant: object = None) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(keys, "list_keys", broken)
    answer = await admin.client.get(f"{API}/keys", headers=admin.bearer("admin"))
    assert answer.status == 500
    body = await answer.json()
    assert answer.headers["X-Request-Id"] in body["error"]["message"] and "a bug" not in body["error"]["message"]


async def test_the_console_and_its_headers(admin: Admin) -> None:
    home = await admin.client.get("/", allow_redirects=False)
    assert home.status == 302 and home.headers["Location"] == "/console/"
    index = await admin.client.get("/console/")
    assert index.status == 200 and "text/html" in index.headers["Content-Type"]
    assert index.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert index.headers["X-Frame-Options"] == "DENY"
    for path in ("/console/../server.py", "/console/%2e%2e/server.py", "/console/pages", "/console/nothing.js"):
        answer = await admin.client.get(path)
        assert answer.status == 404, path
        assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


async def test_the_openapi_document_needs_no_principal(admin: Admin) -> None:
    answer = await admin.client.get(f"{API}/openapi.json")
    document = await answer.json()
    assert document["openapi"] == "3.1.0" and f"{API}/keys" in document["paths"]


async def test_a_change_the_key_format_refuses_is_a_400_and_changes_nothing(admin: Admin) -> None:
    key_id = (await create_key(admin, budget_usd=5, budget_period="day"))["record"]["id"]
    answer = await admin.client.patch(f"{API}/keys/{key_id}", json={"budget_usd": None}, headers=admin.bearer("admin"))
    assert answer.status == 400, await answer.text()
    assert (await answer.json())["error"]["details"][0]["path"] == "(body)"
    shown = await (await admin.client.get(f"{API}/keys/{key_id}", headers=admin.bearer("admin"))).json()
    assert shown["budget_usd"] == 5 and shown["budget_period"] == "day"


async def test_the_key_store_is_named_in_the_audit_entries(admin: Admin) -> None:
    key_id = (await create_key(admin))["record"]["id"]
    entry = next(e for e in await admin.entries() if e["target"] == key_id)
    assert entry["details"]["via"] == "admin-api" and entry["details"]["tenant"] == "acme"
    assert admin.settings.keys_sqlite in str(entry)


async def test_an_unreadable_key_store_is_a_503(isolated: Path) -> None:
    settings = AdminSettings(admin_sqlite=str(isolated / "admin.db"), keys_sqlite=str(isolated))  # a directory
    keys = await admin_keys(isolated / "admin.db")
    app = await build_app(settings, modules=DEFAULT_TEST_MODULES, context=app_context())
    async with TestClient(TestServer(app)) as client:
        answer = await client.get(f"{API}/keys", headers={"Authorization": f"Bearer {keys['admin']}"})
        assert answer.status == 503 and (await answer.json())["error"]["code"] == "unavailable"


async def test_without_a_key_store_wired_in_the_key_routes_answer_503(isolated: Path) -> None:
    settings = AdminSettings(admin_sqlite=str(isolated / "admin.db"), keys_sqlite=str(isolated / "keys.db"))
    keys = await admin_keys(isolated / "admin.db")
    headers = {"Authorization": f"Bearer {keys['admin']}"}
    async with TestClient(TestServer(await build_app(settings, modules=DEFAULT_TEST_MODULES))) as client:
        for method, path, body in (
            ("GET", "/keys", None),
            ("POST", "/keys", {"tenant": "acme", "name": "x"}),
            ("GET", "/keys/abcdefgh", None),
            ("POST", "/keys/abcdefgh/revoke", None),
            ("GET", "/tenants", None),
        ):
            answer = await client.request(method, f"{API}{path}", json=body, headers=headers)
            assert answer.status == 503, (method, path, await answer.text())
            assert (await answer.json())["error"]["code"] == "unavailable"
        assert (await client.get(f"{API}/me", headers=headers)).status == 200  # the rest still answers
    assert not (isolated / "keys.db").exists()
