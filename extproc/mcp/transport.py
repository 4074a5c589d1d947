"""The Streamable HTTP transport's rules on an HTTP request's method and headers (pure).

What each check answers, by the spec text (MCP 2025-06-18 and 2025-11-25, basic/transports) or,
where the spec says only SHOULD/MAY, by the official SDK's ``mcp/server/streamable_http.py``:

- a method other than POST, GET, DELETE -> 405 with ``Allow`` (SDK);
- Origin present and not allowed -> 403 (2025-11-25: "If the Origin header is present and invalid,
  servers MUST respond with HTTP 403 Forbidden"; 2025-06-18 only said "MUST validate");
- POST whose Accept lacks application/json or text/event-stream -> 406 (the client "MUST include
  an Accept header, listing both"; the SDK answers 406);
- POST whose Content-Type is not application/json -> 415 (SDK);
- no ``Mcp-Session-Id`` on a request other than initialize -> 400 ("Servers that require a session
  ID SHOULD respond ... without an Mcp-Session-Id header ... with HTTP 400 Bad Request");
- an unknown, expired or terminated session id -> 404 ("the server MUST respond to requests
  containing that session ID with HTTP 404 Not Found"; the client then re-initializes);
- ``MCP-Protocol-Version`` invalid or unsupported -> 400 ("the server MUST respond with 400 Bad
  Request"). Absent: the session's negotiated revision (the spec's fallback to 2025-03-26 applies
  only when the server "has no other way to identify the version"; we have the session).

Header names are lowercase (the decision hop lowercases them).
"""

from __future__ import annotations

from collections.abc import Mapping

from extproc.mcp.jsonrpc import INVALID_REQUEST, SUPPORTED_VERSIONS, ProtocolError

SESSION_HEADER = "mcp-session-id"
VERSION_HEADER = "mcp-protocol-version"
ALLOWED_METHODS = "GET, POST, DELETE"

JSON = "application/json"
SSE = "text/event-stream"


def check_method(method: str) -> ProtocolError | None:
    if method in ("POST", "GET", "DELETE"):
        return None
    return ProtocolError(INVALID_REQUEST, "Method Not Allowed", 405, headers=(("allow", ALLOWED_METHODS),))


def check_origin(headers: Mapping[str, str], allowed_origins: frozenset[str] | None) -> ProtocolError | None:
    """DNS-rebinding guard. None means the listener does not check (e.g. only non-browser clients)."""
    origin = headers.get("origin")
    if origin is None or allowed_origins is None or origin in allowed_origins:
        return None
    return ProtocolError(INVALID_REQUEST, "Forbidden: Origin not allowed", 403)


def _media_types(value: str) -> set[str]:
    return {part.split(";", 1)[0].strip().lower() for part in value.split(",") if part.strip()}


def accepts(accept_header: str, media_type: str) -> bool:
    types = _media_types(accept_header)
    major = media_type.split("/", 1)[0]
    return media_type in types or "*/*" in types or f"{major}/*" in types


def check_post_headers(headers: Mapping[str, str]) -> ProtocolError | None:
    accept = headers.get("accept", "")
    if not (accepts(accept, JSON) and accepts(accept, SSE)):
        return ProtocolError(
            INVALID_REQUEST, "Not Acceptable: Client must accept both application/json and text/event-stream", 406
        )
    if JSON not in _media_types(headers.get("content-type", "")):
        return ProtocolError(INVALID_REQUEST, "Unsupported Media Type: Content-Type must be application/json", 415)
    return None


def check_get_headers(headers: Mapping[str, str]) -> ProtocolError | None:
    if not accepts(headers.get("accept", ""), SSE):
        return ProtocolError(INVALID_REQUEST, "Not Acceptable: Client must accept text/event-stream", 406)
    return None


def missing_session() -> ProtocolError:
    return ProtocolError(INVALID_REQUEST, "Bad Request: Missing session ID", 400)


def unknown_session() -> ProtocolError:
    return ProtocolError(INVALID_REQUEST, "Not Found: Invalid or expired session ID", 404)


def check_version_header(headers: Mapping[str, str], negotiated: str) -> ProtocolError | None:
    """The header, when sent, must be a revision we speak and the one this session negotiated."""
    sent = headers.get(VERSION_HEADER)
    if sent is None:
        return None
    if sent not in SUPPORTED_VERSIONS:
        return ProtocolError(
            INVALID_REQUEST,
            f"Bad Request: Unsupported protocol version {sent!r} (supported: {', '.join(SUPPORTED_VERSIONS)})",
            400,
        )
    if sent != negotiated:
        return ProtocolError(
            INVALID_REQUEST, f"Bad Request: protocol version {sent!r} is not this session's ({negotiated})", 400
        )
    return None
