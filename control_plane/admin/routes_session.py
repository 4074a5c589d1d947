"""The console's sign-in (POST /session, from an admin key), sign-out and GET /me.

Sign-in failures are counted per client address (sessions.SignInLimiter, 429 beyond the limit)
and audited as ``admin.sign_in_failed`` with the key id when the text had one, never the key. A
successful sign-in is audited before the session is handed out (fail closed: 503, no session).
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from control_plane.admin import http
from control_plane.admin.http import ApiError, body_of, json_response
from control_plane.admin.operations import Operation
from control_plane.admin.principals import AdminKeyStoreUnavailable, NotAuthenticated, parse_admin_key
from control_plane.admin.roles import Principal
from control_plane.admin.server import check_csrf
from control_plane.admin.sessions import COOKIE_NAME

ERROR: dict[str, Any] = {"$ref": "#/components/schemas/Error"}
PRINCIPAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name", "role", "tenant"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "role": {"enum": ["admin", "operator", "viewer", "tenant-admin"]},
        "tenant": {"type": ["string", "null"]},
    },
}
ME_SCHEMA: dict[str, Any] = {
    **PRINCIPAL_SCHEMA,
    "properties": {**PRINCIPAL_SCHEMA["properties"], "csrf_token": {"type": "string"}},
}
SIGN_IN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["key"],
    "properties": {"key": {"type": "string", "maxLength": 200}},
    "additionalProperties": False,
}
SIGNED_IN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["principal", "csrf_token"],
    "properties": {"principal": PRINCIPAL_SCHEMA, "csrf_token": {"type": "string"}},
}


async def sign_in(request: web.Request, principal: Principal | None) -> web.Response:
    address = request.remote or "unknown"
    limiter = request.app[http.SIGN_IN_LIMITER]
    audit = request.app[http.AUDIT]
    wait = limiter.retry_after(address)
    if wait is not None:
        raise ApiError(429, "too many failed sign-ins; try again later", headers={"Retry-After": str(math.ceil(wait))})
    presented = body_of(request)["key"]
    try:
        record = await request.app[http.AUTHENTICATOR].admin_key(presented)
    except NotAuthenticated as exc:
        limiter.failed(address)
        parsed = parse_admin_key(presented)
        details = {"address": address, "reason": str(exc), "key_id": parsed[0] if parsed else None}
        await audit.record_quietly("admin.sign_in_failed", details["key_id"] or "", details, actor="anonymous")
        raise ApiError(401, "that admin key does not sign in") from None
    except AdminKeyStoreUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    who = record.principal()
    await audit.ready()
    sessions = request.app[http.SESSIONS]
    session = sessions.create(who)
    try:
        await audit.record(who, "admin.sign_in", who.id, {"address": address, "role": who.role.value})
    except ApiError:
        sessions.delete(session.id)  # not audited: not signed in
        raise
    response = json_response({"principal": who.as_dict(), "csrf_token": session.csrf_token})
    response.set_cookie(
        COOKIE_NAME,
        session.id,
        max_age=int(sessions.ttl),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=bool(request.app[http.SETTINGS].tls_cert),
    )
    return response


async def sign_out(request: web.Request, principal: Principal | None) -> web.Response:
    sessions = request.app[http.SESSIONS]
    session = sessions.get(request.cookies.get(COOKIE_NAME))
    if session is not None:
        check_csrf(request, session)  # else a forged page could sign an operator out
        sessions.delete(session.id)
    response = web.Response(status=204)
    response.del_cookie(
        COOKIE_NAME, path="/", secure=bool(request.app[http.SETTINGS].tls_cert), httponly=True, samesite="Strict"
    )
    return response


async def me(request: web.Request, principal: Principal) -> web.Response:
    """The principal; for a cookie session also its CSRF token, so a reloaded console (which keeps
    the cookie, not the token) can make changes without signing in again. Safe to hand out on a
    GET: a page of another origin cannot read this answer, and the cookie is SameSite=Strict."""
    answer: dict[str, Any] = principal.as_dict()
    session = request.app[http.SESSIONS].get(request.cookies.get(COOKIE_NAME))
    if session is not None and not request.headers.get("Authorization"):
        answer["csrf_token"] = session.csrf_token
    return json_response(answer)


OPERATIONS = [
    Operation(
        "POST",
        "/session",
        None,
        "Sign in with an admin key: a session cookie and the CSRF token to send with changes",
        sign_in,
        "signIn",
        body=SIGN_IN_SCHEMA,
        responses={200: SIGNED_IN_SCHEMA, 401: ERROR, 503: ERROR},
        tags=("session",),
    ),
    Operation(
        "DELETE",
        "/session",
        None,
        "Sign out (with the cookie, X-CSRF-Token is needed)",
        sign_out,
        "signOut",
        responses={204: None, 403: ERROR},
        tags=("session",),
    ),
    Operation(
        "GET",
        "/me",
        None,
        "Who the caller is",
        me,
        "getMe",
        responses={200: ME_SCHEMA},
        tags=("session",),
        authenticated=True,
    ),
]
