"""OAuth 2.0 Protected Resource Metadata (RFC 9728) for the MCP endpoint, as MCP's authorization
spec (2025-06-18, 2025-11-25) asks of a server: a client that got a 401 reads the metadata URL in
``WWW-Authenticate: Bearer resource_metadata="..."`` (or tries the well-known URIs itself, the path
form first), and learns from the document which authorization servers issue tokens for it.

The gateway answers it itself, from the decision (extproc.request_steps), with no authentication:

    GET /.well-known/oauth-protected-resource<mcp path>    (RFC 9728 section 3.1: the path form)
    GET /.well-known/oauth-protected-resource              (the root form, older clients)

The resource identifier is the URL the client called: its scheme and host, as Envoy saw them, and
the policy's MCP path. The gateway takes its own virtual keys (and JWTs of the policy's identity
provider) as bearer tokens in a header only, hence ``bearer_methods_supported: ["header"]``; it
names no scope (none is checked), so ``scopes_supported`` is left out.

Sans-IO: headers and settings in, bytes and strings out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import orjson

WELL_KNOWN = "/.well-known/oauth-protected-resource"
# Where each decision path carries the host the client called: ext_proc sees the pseudo-header; the
# decision hop gets it from the Lua filter under this name (its own call goes to "ccr-hop").
HOP_AUTHORITY_HEADER = "x-ccr-hop-authority"
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")
_FALLBACK_HOST = "localhost"


def metadata_paths(mcp_path: str) -> tuple[str, str]:
    """The two paths the metadata is served on (no query): the path form, then the root form."""
    return WELL_KNOWN + mcp_path, WELL_KNOWN


def origin(headers: Mapping[str, str]) -> str:
    """``scheme://host[:port]`` of the request: the scheme Envoy recorded (x-forwarded-proto, else
    :scheme), the host the client called. A host that is not one (missing, or holding characters a
    URL's host cannot) becomes "localhost": the value goes into a header and a JSON document."""
    proto = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower() or headers.get(":scheme", "")
    scheme = proto if proto in ("http", "https") else "http"
    host = headers.get(":authority") or headers.get(HOP_AUTHORITY_HEADER) or ""
    host = host.strip().lower()
    if not _HOST.match(host):
        host = _FALLBACK_HOST
    return f"{scheme}://{host}"


def resource_url(headers: Mapping[str, str], mcp_path: str) -> str:
    """The protected resource's identifier: the MCP endpoint's URL (RFC 9728 ``resource``)."""
    return origin(headers) + mcp_path


def metadata_url(headers: Mapping[str, str], mcp_path: str) -> str:
    """Where the metadata of the endpoint is (the well-known path inserted before the resource's
    path, RFC 9728 section 3.1)."""
    return origin(headers) + WELL_KNOWN + mcp_path


def metadata(resource: str, authorization_servers: tuple[str, ...] = ()) -> dict[str, object]:
    """The metadata document. ``authorization_servers`` is left out when the policy names none
    (RFC 9728: OPTIONAL): a client then has to come with a key of its own (x-api-key or Bearer)."""
    document: dict[str, object] = {"resource": resource}
    if authorization_servers:
        document["authorization_servers"] = list(authorization_servers)
    document["bearer_methods_supported"] = ["header"]
    document["resource_name"] = "ccr-gateway MCP endpoint"
    return document


def metadata_body(headers: Mapping[str, str], mcp_path: str, authorization_servers: tuple[str, ...] = ()) -> bytes:
    return orjson.dumps(metadata(resource_url(headers, mcp_path), authorization_servers))


def www_authenticate(headers: Mapping[str, str], mcp_path: str, invalid_token: bool = False) -> str:
    """The 401's challenge (RFC 6750 section 3, RFC 9728 section 5.1): where the metadata is, and
    ``error="invalid_token"`` when a token was presented and refused."""
    challenge = f'Bearer resource_metadata="{metadata_url(headers, mcp_path)}"'
    return challenge + ', error="invalid_token"' if invalid_token else challenge
