"""Error bodies in the client's own API format.

Anthropic: ``{"type":"error","error":{"type":...,"message":...}}``
OpenAI:    ``{"error":{"message":...,"type":...,"param":null,"code":...}}``
Responses: OpenAI's shape; a request the gateway refuses names the offending field in ``param``
           (``input[2].content``), read off the message's leading path (``input.2.content: ...``).
Bedrock:   ``{"message":...}`` (InvokeModel's own; the type, e.g. ``ValidationException``, is in
           Bedrock's x-amzn-ErrorType header, which no Bedrock SDK needs to tell the errors apart).
The same builders are used by ext_proc immediate responses and, as literal templates, by Envoy's
local_reply_config (see control_plane.resources.gateway) so every error a client sees has one shape.
"""

from __future__ import annotations

import re

import orjson

from extproc.translate.base import Api

# Anthropic's documented error types by HTTP status.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "api_error",
    529: "overloaded_error",
}

# OpenAI's error "type" by HTTP status (its SDK maps status to exception class; type is informative).
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


# Bedrock's error names (x-amzn-ErrorType) by HTTP status, as InvokeModel documents them.
_BEDROCK_TYPES = {
    400: "ValidationException",
    401: "UnrecognizedClientException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
    529: "ThrottlingException",
}


# Client APIs whose errors take OpenAI's shape.
OPENAI_SHAPED = frozenset({Api.OPENAI, Api.RESPONSES})
# The field path a ClientRequestError message starts with ("input.2.content.0.text: required ...").
_PARAM = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*): ")


def anthropic_error_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def openai_error_type(status: int) -> str:
    return _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def bedrock_error_type(status: int) -> str:
    return _BEDROCK_TYPES.get(status, "InternalServerException" if status >= 500 else "ValidationException")


def error_type(api: Api, status: int) -> str:
    """The error type a client of ``api`` reads in an error of ``status``."""
    if api is Api.BEDROCK:
        return bedrock_error_type(status)
    return openai_error_type(status) if api in OPENAI_SHAPED else anthropic_error_type(status)


def error_body(api: Api, status: int, message: str, code: str | None = None) -> bytes:
    """The JSON error body a client of ``api`` expects for ``status``."""
    if api is Api.OPENAI:
        return orjson.dumps(
            {"error": {"message": message, "type": openai_error_type(status), "param": None, "code": code}}
        )
    if api is Api.RESPONSES:
        return orjson.dumps(
            {"error": {"message": message, "type": openai_error_type(status), "param": param_of(message), "code": code}}
        )
    if api is Api.BEDROCK:
        return orjson.dumps({"message": message})
    return orjson.dumps({"type": "error", "error": {"type": anthropic_error_type(status), "message": message}})


def param_of(message: str) -> str | None:
    """The request field a refusal names first, in OpenAI's spelling (``input[2].content``)."""
    found = _PARAM.match(message)
    if found is None:
        return None
    head, *rest = found.group(1).split(".")
    return head + "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in rest)
