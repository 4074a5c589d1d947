"""What every routes module shares: the contract's error (``ApiError``, turned into JSON by the
server's error middleware), JSON answers, the request's validated body and query, and the app keys
under which ``setup`` functions leave what they opened (the server and the routes read them).

A handler raises ``ApiError`` for anything the caller did wrong or cannot have; anything else
escaping a handler is a bug and becomes a logged 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

# Cursors live in the sans-IO views_common (a bad one raises its Invalid, a 400); re-exported here
# for the routes and views that import them from this module.
from control_plane.admin.views_common import decode_cursor, encode_cursor

if TYPE_CHECKING:
    from control_plane.admin.auditing import AdminAudit
    from control_plane.admin.principals import Authenticator
    from control_plane.admin.roles import Principal
    from control_plane.admin.sessions import Session, SessionStore, SignInLimiter
    from control_plane.admin.settings import AdminSettings

__all__ = ["ApiError", "body_of", "decode_cursor", "encode_cursor", "json_response", "query_of"]

SETTINGS: web.AppKey[AdminSettings] = web.AppKey("ccr_admin_settings")
AUTHENTICATOR: web.AppKey[Authenticator] = web.AppKey("ccr_admin_authenticator")
SESSIONS: web.AppKey[SessionStore] = web.AppKey("ccr_admin_sessions")
SIGN_IN_LIMITER: web.AppKey[SignInLimiter] = web.AppKey("ccr_admin_sign_in_limiter")
AUDIT: web.AppKey[AdminAudit] = web.AppKey("ccr_admin_audit")

# Where the server leaves what it checked, for the handler (request[...]).
BODY: web.RequestKey[Any] = web.RequestKey("ccr_admin_body")  # the JSON body, validated against the schema
QUERY: web.RequestKey[dict[str, Any]] = web.RequestKey("ccr_admin_query")  # typed per the operation's schemas
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("ccr_admin_principal")
SESSION: web.RequestKey[Session | None] = web.RequestKey("ccr_admin_session")  # with the console's cookie

CODES = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(Exception):
    """An answer of the contract's error shape: ``{"error": {"code", "message", "details"?}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        details: list[dict[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, "error")
        self.message = message
        self.details = details
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


def not_found(what: str = "no such object") -> ApiError:
    return ApiError(404, what)


def unavailable(message: str) -> ApiError:
    return ApiError(503, message)


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=dict(headers or {})
    )


def error_response(error: ApiError) -> web.Response:
    return json_response(error.body(), error.status, error.headers)


def body_of(request: web.Request) -> dict[str, Any]:
    """The validated JSON body ({} for an operation without one)."""
    return request.get(BODY) or {}


def query_of(request: web.Request) -> dict[str, Any]:
    """The declared query parameters given, typed (an integer schema gives an int)."""
    return request.get(QUERY) or {}
