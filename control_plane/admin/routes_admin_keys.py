"""Admin keys over HTTP (admin role only): list, create (the key shown once), revoke. The first
admin key comes from `ccr-gateway admin keys create` on the control plane's machine."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from control_plane.admin import http
from control_plane.admin.http import ApiError, body_of, json_response, query_of
from control_plane.admin.operations import Operation
from control_plane.admin.principals import (
    AdminKeyNotFound,
    AdminKeyStoreUnavailable,
    new_admin_key_record,
)
from control_plane.admin.roles import Action, Principal, Role
from control_plane.admin.views_common import (
    CURSOR_SCHEMA,
    NULLABLE_CURSOR,
    decode_cursor,
    encode_cursor,
    iso,
    limit_schema,
    page,
)
from control_plane.admin.views_keys import TEXT

ADMIN_KEY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name", "role", "tenant", "created_at", "revoked", "state"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "role": {"enum": [role.value for role in Role]},
        "tenant": {"type": ["string", "null"]},
        "created_at": {"type": "string"},
        "revoked": {"type": "boolean"},
        "state": {"enum": ["active", "revoked"]},
    },
}
CREATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "role"],
    "properties": {
        "name": TEXT,
        "role": {"enum": [role.value for role in Role]},
        "tenant": {"oneOf": [TEXT, {"type": "null"}]},
    },
    "additionalProperties": False,
}
CREATED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["key", "record"],
    "properties": {"key": {"type": "string"}, "record": ADMIN_KEY_SCHEMA},
}
LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data", "next_cursor"],
    "properties": {"data": {"type": "array", "items": ADMIN_KEY_SCHEMA}, "next_cursor": NULLABLE_CURSOR},
}


def _render(public: dict[str, Any]) -> dict[str, Any]:
    return {**public, "created_at": iso(public["created_at"])}


async def _call(awaitable: Any) -> Any:
    try:
        return await awaitable
    except AdminKeyStoreUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    except AdminKeyNotFound:
        raise ApiError(404, "no such admin key") from None


async def list_admin_keys(request: web.Request, principal: Principal) -> web.Response:
    query = query_of(request)
    records = await _call(request.app[http.AUTHENTICATOR].store.list())

    def sort_key(record: Any) -> list[Any]:
        return [float(record.created_at), record.key_id]

    chunk, last = page(records, sort_key, decode_cursor(query.get("cursor"), (float, str)), query.get("limit", 50))
    return json_response(
        {"data": [_render(r.public()) for r in chunk], "next_cursor": encode_cursor(last) if last else None}
    )


async def create_admin_key(request: web.Request, principal: Principal) -> web.Response:
    body = body_of(request)
    role = Role(body["role"])
    tenant = (body.get("tenant") or "").strip() or None
    if (role is Role.TENANT_ADMIN) != (tenant is not None):
        raise ApiError(
            400, "tenant goes with the tenant-admin role, and only with it",
            details=[{"path": "tenant", "message": "required for tenant-admin, not allowed otherwise"}],
        )  # fmt: skip
    presented, record = new_admin_key_record(body["name"], role, tenant, time.time())
    audit = request.app[http.AUDIT]
    await audit.ready()
    store = request.app[http.AUTHENTICATOR].store
    await _call(store.create(record))
    details = {"name": record.name, "role": role.value, "tenant": tenant, "via": "admin-api"}
    await audit.record(principal, "admin_key.create", record.key_id, details, store.description)
    return json_response({"key": presented, "record": _render(record.public())}, 201)


async def revoke_admin_key(request: web.Request, principal: Principal) -> web.Response:
    audit = request.app[http.AUDIT]
    store = request.app[http.AUTHENTICATOR].store
    await audit.ready()
    record = await _call(store.revoke(request.match_info["id"], time.time()))
    details = {"name": record.name, "role": record.role.value, "via": "admin-api"}
    await audit.record(principal, "admin_key.revoke", record.key_id, details, store.description)
    return json_response(_render(record.public()))


OPERATIONS = [
    Operation(
        "GET", "/admin-keys", Action.ADMIN_KEYS_MANAGE, "List admin keys", list_admin_keys, "listAdminKeys",
        query={"cursor": CURSOR_SCHEMA, "limit": limit_schema()}, responses={200: LIST_SCHEMA}, tags=("admin keys",),
    ),
    Operation(
        "POST", "/admin-keys", Action.ADMIN_KEYS_MANAGE, "Create an admin key (shown this once)", create_admin_key,
        "createAdminKey", body=CREATE_SCHEMA, responses={201: CREATED_SCHEMA}, tags=("admin keys",),
    ),
    Operation(
        "POST", "/admin-keys/{id}/revoke", Action.ADMIN_KEYS_MANAGE, "Revoke an admin key (its sessions end too)",
        revoke_admin_key, "revokeAdminKey", responses={200: ADMIN_KEY_SCHEMA}, tags=("admin keys",),
    ),
]  # fmt: skip
