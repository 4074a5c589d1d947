"""JSON-RPC 2.0 as MCP's Streamable HTTP transport carries it: parse one POST body, encode replies.

Two kinds of failure, kept apart (as h11 does):

- the peer sent something wrong -> a ``ProtocolError`` *value* (code, message, HTTP status, the id
  when one could be read); ``parse_body`` returns it, never raises it, so no malformed body can
  escape as an exception and become a 500;
- we misused this module (e.g. encoding a non-JSON value) -> an ordinary Python exception: a bug.

HTTP statuses (MCP 2025-06-18 and 2025-11-25, basic/transports, "Sending Messages to the Server",
and the official SDK's ``mcp/server/streamable_http.py`` where the spec leaves it open):

- a body that is not JSON -> 400, -32700 parse error (the SDK does the same);
- JSON that is not one valid JSON-RPC message -> 400, -32600 invalid request (the SDK answers
  -32602 here; JSON-RPC 2.0 section 5.1 says -32600 for "not a valid Request object", we follow it);
- a body over the size limit -> 413, -32600 (the spec is silent; 413 is HTTP's own answer and the
  one Envoy's buffer filter gives, so the client sees the same status whichever layer refuses);
- a notification or a response accepted -> 202 with no body (spec: "MUST return HTTP status code
  202 Accepted with no body");
- a request -> its JSON-RPC response, 200, even when that response is a JSON-RPC error (unknown
  method -32601, bad params -32602): the transport did its job, the error is the method's answer,
  and the session stays intact.

Ids: MCP narrows JSON-RPC's ids to string or integer and forbids null in requests
(2025-06-18 basic, "Requests: ... MUST NOT be null"). Integers only: a float id is refused
rather than guessed at, as the SDK's ``RequestId = int (strict) | str`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import orjson

JSONRPC_VERSION = "2.0"

# The revisions this gateway speaks, oldest first (issue 23). Negotiation: the client's requested
# revision if it is one of these, else the latest (2025-06-18 basic/lifecycle, "Version Negotiation").
SUPPORTED_VERSIONS: tuple[str, ...] = ("2025-06-18", "2025-11-25")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]

# JSON-RPC batching: added in 2025-03-26, removed in 2025-06-18 (changelog of 2025-06-18: "Remove
# support for JSON-RPC batching", spec PR #416; its transport text: "The body of the POST request
# MUST be a single JSON-RPC request, notification, or response"). 2025-11-25 did not bring it back.
# So neither revision we serve allows a batch, and an array body is -32600 / HTTP 400. The parser
# still knows the one revision that did, so the rule is stated once, here, by revision.
BATCHING_VERSIONS: frozenset[str] = frozenset({"2025-03-26"})

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# Default largest POST body. Tool arguments can carry a file; Envoy's own buffer limit stays the
# outer bound, this is the one that answers in JSON-RPC.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024

RequestId: TypeAlias = str | int


@dataclass(frozen=True)
class Request:
    """A message with a method and an id: it wants exactly one response."""

    id: RequestId
    method: str
    params: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"jsonrpc": JSONRPC_VERSION, "id": self.id, "method": self.method}
        if self.params is not None:
            out["params"] = dict(self.params)
        return out


@dataclass(frozen=True)
class Notification:
    """A message with a method and no id: never answered."""

    method: str
    params: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"jsonrpc": JSONRPC_VERSION, "method": self.method}
        if self.params is not None:
            out["params"] = dict(self.params)
        return out


@dataclass(frozen=True)
class Response:
    """A successful answer to a request (``JSONRPCResultResponse`` in 2025-11-25's schema)."""

    id: RequestId
    result: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"jsonrpc": JSONRPC_VERSION, "id": self.id, "result": dict(self.result)}


@dataclass(frozen=True)
class ErrorResponse:
    """A failed answer; ``id`` is None only when the request's id could not be read."""

    id: RequestId | None
    code: int
    message: str
    data: Any = None

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return {"jsonrpc": JSONRPC_VERSION, "id": self.id, "error": error}


Message: TypeAlias = Request | Notification | Response | ErrorResponse


@dataclass(frozen=True)
class ProtocolError:
    """The peer sent something we refuse: what to answer, in JSON-RPC and in HTTP."""

    code: int
    message: str
    http_status: int
    id: RequestId | None = None
    data: Any = None
    headers: tuple[tuple[str, str], ...] = field(default=())

    def to_response(self) -> ErrorResponse:
        return ErrorResponse(self.id, self.code, self.message, self.data)

    def body(self) -> bytes:
        return encode(self.to_response())


def is_request_id(value: object) -> bool:
    # bool is an int subclass; `true` is not an id.
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def parse_body(
    body: bytes, *, version: str | None = None, max_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> Message | tuple[Message, ...] | ProtocolError:
    """One POST body -> one message (or, under a batching revision only, a tuple) or the refusal.

    ``version`` is the session's negotiated revision (None before initialize); it decides only
    whether an array body is a batch or an invalid request.
    """
    if len(body) > max_bytes:
        return ProtocolError(INVALID_REQUEST, f"Message too large: over {max_bytes} bytes", 413)
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:  # also invalid UTF-8 and an empty body
        return ProtocolError(PARSE_ERROR, f"Parse error: {exc}", 400)
    if isinstance(raw, list):
        if version not in BATCHING_VERSIONS:
            return ProtocolError(
                INVALID_REQUEST, "Invalid Request: JSON-RPC batches are not allowed since MCP 2025-06-18", 400
            )
        if not raw:
            return ProtocolError(INVALID_REQUEST, "Invalid Request: empty batch", 400)
        parsed = [parse_message(item) for item in raw]
        for item in parsed:
            if isinstance(item, ProtocolError):
                return item
        return tuple(p for p in parsed if not isinstance(p, ProtocolError))
    return parse_message(raw)


def parse_message(raw: object) -> Message | ProtocolError:
    """One decoded JSON value -> a typed message, or why it is not one (HTTP 400)."""
    if not isinstance(raw, dict):
        return _invalid(None, "a JSON-RPC message must be a JSON object")
    has_id = "id" in raw
    msg_id = raw.get("id")
    readable_id = msg_id if is_request_id(msg_id) else None
    if raw.get("jsonrpc") != JSONRPC_VERSION:
        return _invalid(readable_id, 'the "jsonrpc" member must be exactly "2.0"')
    if "method" in raw:
        method = raw["method"]
        if not isinstance(method, str) or not method:
            return _invalid(readable_id, 'the "method" member must be a non-empty string')
        if "result" in raw or "error" in raw:
            return _invalid(readable_id, "a message cannot be both a request and a response")
        params = raw.get("params")
        if "params" in raw and not isinstance(params, dict):
            # MCP params are always an object (its schema); JSON-RPC's by-position arrays are not MCP.
            return ProtocolError(INVALID_PARAMS, 'Invalid params: "params" must be an object', 400, readable_id)
        if not has_id:
            return Notification(method, params)
        if not is_request_id(msg_id):
            return _invalid(None, 'a request "id" must be a string or an integer (never null)')
        return Request(msg_id, method, params)
    # No method: a response (the client answering a server-initiated request such as sampling).
    if not has_id:
        return _invalid(None, 'a message needs a "method" (request, notification) or an "id" (response)')
    if ("result" in raw) == ("error" in raw):
        return _invalid(readable_id, 'a response carries exactly one of "result" and "error"')
    if "result" in raw:
        if not is_request_id(msg_id):
            return _invalid(None, 'a response "id" must be a string or an integer')
        if not isinstance(raw["result"], dict):
            return _invalid(msg_id, 'a response "result" must be an object')
        return Response(msg_id, raw["result"])
    error = raw["error"]
    if msg_id is not None and not is_request_id(msg_id):
        return _invalid(None, 'an error response "id" must be a string, an integer or null')
    if (
        not isinstance(error, dict)
        or not isinstance(error.get("code"), int)
        or isinstance(error.get("code"), bool)
        or not isinstance(error.get("message"), str)
    ):
        return _invalid(readable_id, 'an "error" needs an integer "code" and a string "message"')
    return ErrorResponse(msg_id, error["code"], error["message"], error.get("data"))


def _invalid(msg_id: RequestId | None, why: str) -> ProtocolError:
    return ProtocolError(INVALID_REQUEST, f"Invalid Request: {why}", 400, msg_id)


def http_status_accepted(message: Message | tuple[Message, ...]) -> int | None:
    """202 when the POST carried no request (nothing to answer); None when an answer will follow."""
    items = message if isinstance(message, tuple) else (message,)
    return None if any(isinstance(m, Request) for m in items) else 202


def encode(message: Message | Mapping[str, Any]) -> bytes:
    """A message (typed or already a dict) -> its JSON bytes."""
    as_dict = message if isinstance(message, Mapping) else message.to_dict()
    return orjson.dumps(as_dict)


def error_response(msg_id: RequestId | None, code: int, message: str, data: Any = None) -> dict[str, Any]:
    return ErrorResponse(msg_id, code, message, data).to_dict()


def result_response(msg_id: RequestId, result: Mapping[str, Any]) -> dict[str, Any]:
    return Response(msg_id, result).to_dict()


def from_dict(raw: Mapping[str, Any]) -> Message | ProtocolError:
    """An upstream's already-decoded message (e.g. one SSE ``data:`` payload) -> a typed message."""
    return parse_message(dict(raw))


def negotiate_version(requested: object) -> str:
    """The revision to answer initialize with: the client's when we speak it, else our latest."""
    return requested if isinstance(requested, str) and requested in SUPPORTED_VERSIONS else LATEST_VERSION
