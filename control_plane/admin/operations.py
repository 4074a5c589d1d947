"""Every Admin API operation declared once: the route, the action it needs and its JSON schemas.
The server registers the routes from these declarations and the OpenAPI document is generated
from them (``openapi``), so the two cannot drift apart. No I/O here: handlers are referenced, not
called.

A routes module exports ``OPERATIONS: list[Operation]`` and ``setup(app, settings)``; the server
collects them (server.py). A handler is ``async def handler(request, principal) -> web.StreamResponse``
(principal None only for operations that need none: ``needs_principal`` False).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from control_plane.admin.roles import Action

PREFIX = "/admin/v1"
API_VERSION = "1.0.0"
Handler = Callable[..., Awaitable[Any]]  # (aiohttp web.Request, Principal | None) -> web.StreamResponse

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
            },
        }
    },
}
# The statuses every authenticated operation may answer besides its own (middlewares' answers).
COMMON_ERRORS = (400, 401, 403, 429, 503)


@dataclass(frozen=True)
class Operation:
    method: str  # GET | POST | PUT | PATCH | DELETE
    path: str  # under PREFIX, aiohttp style: "/keys/{id}"
    action: Action | None  # what the principal must be allowed; None: no principal needed
    summary: str
    handler: Handler
    operation_id: str
    query: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # name -> JSON schema (optional params)
    body: dict[str, Any] | None = None  # the JSON body's schema
    responses: Mapping[int, dict[str, Any] | None] = field(default_factory=dict)  # status -> schema (None: empty)
    # status -> media type (default JSON), or {media type: schema} for an answer in more than one
    # format (GET /usage: JSON, or CSV with format=csv); the latter replaces responses[status].
    content_types: Mapping[int, str | Mapping[str, dict[str, Any]]] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    # With action None: still needs a principal, of any role (GET /me). An action implies it.
    authenticated: bool = False

    @property
    def needs_principal(self) -> bool:
        return self.action is not None or self.authenticated

    @property
    def full_path(self) -> str:
        return PREFIX + self.path


def openapi(operations: Iterable[Operation], *, title: str = "ccr-gateway Admin API") -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``."""
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        item = paths.setdefault(op.full_path, {})
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
            for name in _path_names(op.path)
        ]
        parameters += [
            {"name": name, "in": "query", "required": False, "schema": schema} for name, schema in op.query.items()
        ]
        responses: dict[str, Any] = {}
        for status, schema in op.responses.items():
            media = op.content_types.get(status, "application/json")
            described: dict[str, Any] = {"description": _REASONS.get(status, "answer")}
            if isinstance(media, Mapping):
                described["content"] = {kind: {"schema": alternative} for kind, alternative in media.items()}
            elif schema is not None:
                described["content"] = {media: {"schema": schema}}
            responses[str(status)] = described
        errors = COMMON_ERRORS if op.needs_principal else (400, 429)
        for status in (*errors, 404, 409, 413):
            if str(status) not in responses and (status in errors or status in _declared_errors(op)):
                responses[str(status)] = {
                    "description": _REASONS.get(status, "error"),
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
        operation: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "responses": responses,
        }
        if op.tags:
            operation["tags"] = list(op.tags)
        if parameters:
            operation["parameters"] = parameters
        if op.body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": op.body}}}
        if op.needs_principal:
            operation["security"] = [{"bearer": []}, {"session": []}]
        if op.action is not None:
            operation["x-ccr-action"] = op.action.value
        item[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": API_VERSION},
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "an admin key or a JWT"},
                "session": {"type": "apiKey", "in": "cookie", "name": "ccr_admin_session"},
            },
        },
    }


def _declared_errors(op: Operation) -> set[int]:
    """404 for operations on one object (a path parameter), 409/413 where the body may conflict or be large."""
    declared = set()
    if "{" in op.path:
        declared.add(404)
    if op.method in ("PUT",):
        declared.add(409)
    if op.body is not None:
        declared.add(413)
    return declared


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


_REASONS = {
    200: "OK",
    201: "created",
    204: "no content",
    400: "invalid request",
    401: "no valid credentials",
    403: "not allowed",
    404: "no such object (or not yours)",
    409: "the current version is not the one expected",
    413: "body too large",
    429: "too many attempts",
    503: "a store is unavailable",
}
