"""The Admin API's aiohttp app: the operations the routes modules declare (operations.py), the
middlewares every request goes through, the OpenAPI document and the console's static files.

Request path, outermost first:

1. ``_errors``: anything raised becomes the contract's JSON error (``ApiError`` as it says; an
   aiohttp HTTP error by its status; anything else a logged 500 naming a request id), so bad input
   never turns into a 5xx and nothing answers in HTML.
2. ``_body_limit``: a declared Content-Length over the limit is a 413 before any byte is read
   (aiohttp's ``client_max_size`` catches a chunked body that grows past it).
3. ``_authentication``: for an operation that needs a principal, a Bearer admin key or JWT, else
   the console's session cookie (401 without any); with the cookie, a method other than GET/HEAD
   needs ``X-CSRF-Token`` equal to the session's (403 ``csrf``); then ``roles.may`` (403).
4. the operation's handler, wrapped to validate its query and JSON body against the schemas it
   declared (400 with ``details``), so a handler only ever sees what the OpenAPI document allows.

Security headers go on every answer, static files and errors included (``_security_headers``, an
``on_response_prepare`` hook, which sees responses the middlewares never return themselves).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
from aiohttp import web
from jsonschema import Draft202012Validator

from control_plane.admin import http
from control_plane.admin.auditing import AdminAudit
from control_plane.admin.http import ApiError
from control_plane.admin.operations import PREFIX, Operation, openapi
from control_plane.admin.principals import (
    AdminKeyStoreUnavailable,
    Authenticator,
    JwtVerifier,
    NotAuthenticated,
    for_settings,
)
from control_plane.admin.roles import Principal, may
from control_plane.admin.sessions import COOKIE_NAME, CSRF_HEADER, Session, SessionStore, SignInLimiter
from control_plane.admin.settings import AdminSettings
from control_plane.admin.views_common import Invalid

log = logging.getLogger("ccr.admin")

DEFAULT_MODULES: tuple[str, ...] = (
    "control_plane.admin.routes_session",
    "control_plane.admin.routes_keys",
    "control_plane.admin.routes_audit",
    "control_plane.admin.routes_admin_keys",
    "control_plane.admin.routes_usage",
    "control_plane.admin.routes_policy",
    "control_plane.admin.routes_status",
)
MAX_BODY = 1024 * 1024
CONSOLE_DIR = Path(__file__).parent / "console"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REQUEST_ID: web.RequestKey[str] = web.RequestKey("ccr_admin_request_id")
_PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ccr-gateway console</title></head>
<body><main><h1>ccr-gateway console</h1><p>The console's files are not installed yet; the Admin API
is at <a href="/admin/v1/openapi.json">/admin/v1/openapi.json</a>.</p></main></body></html>
"""
OPERATIONS_KEY: web.AppKey[list[Operation]] = web.AppKey("ccr_admin_operations")
_OPERATION_OF: web.AppKey[dict[Any, Operation]] = web.AppKey("ccr_admin_operation_of_route")
Module = str | ModuleType


async def build_app(
    settings: AdminSettings,
    *,
    modules: Iterable[Module] = DEFAULT_MODULES,
    max_body: int = MAX_BODY,
    context: Mapping[web.AppKey[Any], Any] | None = None,
) -> web.Application:
    """The app, with every module's operations registered and its ``setup`` done (stores are
    opened lazily by them: a database down at start is a 503 later, not a control plane that
    cannot start). A module not written yet is skipped with a log line. ``context``: app entries
    the composition root provides before any ``setup`` runs (e.g. routes_usage.LEDGER, how to
    open the ledger, which the control plane may not import)."""
    app = web.Application(middlewares=[_errors, _body_limit(max_body), _authentication], client_max_size=max_body)
    for key, value in (context or {}).items():
        app[key] = value
    app[http.SETTINGS] = settings
    app[http.AUTHENTICATOR] = Authenticator(for_settings(settings), JwtVerifier(settings) if settings.jwks else None)
    app[http.SESSIONS] = SessionStore(settings.session_seconds)
    app[http.SIGN_IN_LIMITER] = SignInLimiter(settings.sign_in_per_minute)
    app[http.AUDIT] = AdminAudit.for_settings(settings)
    app.on_cleanup.append(_close_shared)
    app.on_response_prepare.append(_security_headers)

    operations: list[Operation] = []
    for module in _modules(modules):
        operations += getattr(module, "OPERATIONS", [])
        setup = getattr(module, "setup", None)
        if setup is not None:
            await setup(app, settings)
    app[OPERATIONS_KEY] = operations
    app[_OPERATION_OF] = {}
    seen: set[tuple[str, str]] = set()
    for op in operations:
        if (op.method, op.path) in seen:
            raise ValueError(f"two operations for {op.method} {op.full_path}")
        seen.add((op.method, op.path))
        route = app.router.add_route(op.method, op.full_path, _handler(op))
        app[_OPERATION_OF][route] = op

    document = orjson.dumps(openapi([*operations, _OPENAPI_OPERATION]))

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    app.router.add_get(PREFIX + "/openapi.json", openapi_json, allow_head=False)
    _console_routes(app)
    return app


async def _openapi_placeholder(request: web.Request, principal: Principal | None) -> web.Response:
    raise AssertionError("served by build_app's own route")  # declared only for the document


_OPENAPI_OPERATION = Operation(
    "GET",
    "/openapi.json",
    None,
    "This document (OpenAPI 3.1)",
    _openapi_placeholder,
    "getOpenapi",
    responses={200: {"type": "object", "required": ["openapi", "paths"]}},
    tags=("meta",),
)


def _modules(modules: Iterable[Module]) -> list[ModuleType]:
    loaded = []
    for module in modules:
        if isinstance(module, ModuleType):
            loaded.append(module)
            continue
        try:
            loaded.append(importlib.import_module(module))
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the module is there but imports something missing: a bug
                raise
            log.info("admin API: %s is not there yet; its routes are skipped", module)
    return loaded


async def _close_shared(app: web.Application) -> None:
    await app[http.AUTHENTICATOR].close()
    await app[http.AUDIT].close()


# -- middlewares ---------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[REQUEST_ID] = secrets.token_hex(8)
    try:
        return await handler(request)
    except ApiError as error:
        return http.error_response(error)
    except Invalid as error:
        return http.error_response(ApiError(400, error.message, details=error.details))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # a redirect
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        message = exc.reason if exc.status != 413 else "the body is too large"
        return http.error_response(ApiError(exc.status, message, headers=headers))
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception:
        request_id = request[REQUEST_ID]
        log.exception("admin API: %s %s failed (request id %s)", request.method, request.path, request_id)
        return http.json_response(
            {"error": {"code": "internal", "message": f"internal error (request id {request_id})"}}, 500
        )


def _body_limit(limit: int) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def body_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, f"the body is over {limit} bytes")
        return await handler(request)

    return body_limit


@web.middleware
async def _authentication(request: web.Request, handler: Handler) -> web.StreamResponse:
    op = request.app[_OPERATION_OF].get(request.match_info.route)
    if op is None or not op.needs_principal:
        return await handler(request)
    principal, session = await authenticate(request)
    if session is not None and request.method not in SAFE_METHODS:
        check_csrf(request, session)
    if op.action is not None and not may(principal, op.action):
        raise ApiError(403, f"the {principal.role.value} role may not {op.action.value}")
    request[http.PRINCIPAL] = principal
    request[http.SESSION] = session
    return await handler(request)


async def authenticate(request: web.Request) -> tuple[Principal, Session | None]:
    """(the principal, the session when it came from the console's cookie); ApiError 401/503."""
    authenticator = request.app[http.AUTHENTICATOR]
    authorization = request.headers.get("Authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthenticated("Authorization must be Bearer <admin key or JWT>")
        try:
            return await authenticator.bearer(token.strip()), None
        except NotAuthenticated as exc:
            raise _unauthenticated(str(exc)) from None
        except AdminKeyStoreUnavailable as exc:
            raise ApiError(503, str(exc)) from None
    sessions = request.app[http.SESSIONS]
    session = sessions.get(request.cookies.get(COOKIE_NAME))
    if session is None:
        raise _unauthenticated("sign in, or send Authorization: Bearer <admin key or JWT>")
    try:
        valid = await authenticator.still_valid(session.principal)
    except AdminKeyStoreUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    if not valid:  # its admin key was revoked after sign-in: the session goes with it
        sessions.delete(session.id)
        raise _unauthenticated("the session's admin key is revoked")
    return session.principal, session


def check_csrf(request: web.Request, session: Session) -> None:
    if not session.csrf_matches(request.headers.get(CSRF_HEADER)):
        raise ApiError(403, f"a cookie-authenticated change needs the session's {CSRF_HEADER} header", code="csrf")


def _unauthenticated(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": 'Bearer realm="ccr-gateway admin"'})


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Frame-Options"] = "DENY"  # older browsers' frame-ancestors
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    if request.path.startswith("/admin/"):
        headers["Cache-Control"] = "no-store"
    else:
        headers.setdefault("Cache-Control", "no-cache")  # the console: revalidate, so an upgrade shows at once
    if request.secure:
        headers["Strict-Transport-Security"] = "max-age=31536000"
    if REQUEST_ID in request:
        headers["X-Request-Id"] = request[REQUEST_ID]


# -- operations: validation around the handler ---------------------------------------------------


def _handler(op: Operation) -> Handler:
    body_validator = Draft202012Validator(op.body) if op.body is not None else None
    query_validators = {name: Draft202012Validator(schema) for name, schema in op.query.items()}

    async def handle(request: web.Request) -> web.StreamResponse:
        request[http.QUERY] = _query(request, op, query_validators)
        if body_validator is not None:
            request[http.BODY] = await _body(request, body_validator)
        return await op.handler(request, request.get(http.PRINCIPAL))

    handle.__name__ = op.operation_id
    return handle


def _query(request: web.Request, op: Operation, validators: dict[str, Draft202012Validator]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    details: list[dict[str, str]] = []
    for name, schema in op.query.items():
        if name not in request.query:
            continue
        text = request.query[name]
        value = _typed(text, schema)
        for error in validators[name].iter_errors(value):
            details.append({"path": name, "message": _short(error.message)})
        values[name] = value
    if details:
        raise ApiError(400, "invalid query parameters", details=details)
    return values


def _typed(text: str, schema: dict[str, Any]) -> Any:
    """A query string as the type its schema wants (left a string if it is not one: the
    validator then says so)."""
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "integer" in kinds:
        try:
            return int(text)
        except ValueError:
            return text
    if "number" in kinds:
        try:
            number = float(text)
        except ValueError:
            return text
        return number if number == number and abs(number) != float("inf") else text
    if "boolean" in kinds and text in ("true", "false"):
        return text == "true"
    return text


async def _body(request: web.Request, validator: Draft202012Validator) -> Any:
    raw = await request.read()
    if not raw.strip():
        body: Any = {}  # a body-less POST (revoke, rotate with the default grace) means "no options"
    else:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"the body is not JSON: {exc}") from None
    details = [
        {"path": "/".join(str(part) for part in error.absolute_path) or "(body)", "message": _short(error.message)}
        for error in validator.iter_errors(body)
    ]
    if details:
        raise ApiError(400, "the body does not match the schema", details=details)
    return body


def _short(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


# -- the console ---------------------------------------------------------------------------------


def _console_routes(app: web.Application) -> None:
    root = ensure_console_dir().resolve()

    async def home(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/console/")

    async def console_file(request: web.Request) -> web.StreamResponse:
        relative = request.match_info.get("path", "") or "index.html"
        target = (root / relative).resolve()
        # No directory listing, nothing outside the directory, no dotfiles.
        if (
            not target.is_relative_to(root)
            or not target.is_file()
            or any(part.startswith(".") for part in target.relative_to(root).parts)
        ):
            raise ApiError(404, "no such file")
        return web.FileResponse(target)

    app.router.add_get("/", home)
    app.router.add_get("/console", home)
    app.router.add_get("/console/", console_file)
    app.router.add_get("/console/{path:.+}", console_file)


def ensure_console_dir(directory: Path = CONSOLE_DIR) -> Path:
    """The console's directory, with a placeholder index.html when its files are not there yet."""
    index = directory / "index.html"
    if not index.exists():
        try:
            directory.mkdir(parents=True, exist_ok=True)
            index.write_text(_PLACEHOLDER, encoding="utf-8")
        except OSError as exc:  # an installed, read-only package: serve 404s rather than fail
            log.warning("admin API: no console at %s: %s", directory, exc)
    return directory


# -- serving -------------------------------------------------------------------------------------


def listen_address(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9190`` for IPv6) -> (host, port); ValueError otherwise."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"the admin listen address must be host:port, not {listen!r}")
    return host.strip("[]"), int(port)


def ssl_context(settings: AdminSettings) -> ssl.SSLContext | None:
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ValueError("--admin-tls-cert and --admin-tls-key go together")
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


async def serve(
    settings: AdminSettings,
    stop: asyncio.Event,
    *,
    modules: Iterable[Module] = DEFAULT_MODULES,
    context: Mapping[web.AppKey[Any], Any] | None = None,
) -> None:
    """Run the Admin API until ``stop`` is set."""
    host, port = listen_address(settings.listen)
    tls = ssl_context(settings)
    app = await build_app(settings, modules=modules, context=context)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=tls)
        await site.start()
        scheme = "https" if tls is not None else "http"
        log.info("admin API and console on %s://%s:%d/console/", scheme, host, port)
        await stop.wait()
    finally:
        await runner.cleanup()
