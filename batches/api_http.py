"""What the two APIs' aiohttp routes share: the service's context (store, clock, entropy,
settings), the caller's tenant, bodies read with a size limit, errors in each API's own shape, and
JSONL streamed item by item.

An adapter: the sans-IO cores (anthropic_api, openai_api) decide what is valid and what an object
looks like; this module only moves bytes between aiohttp and them.
"""

from __future__ import annotations

import asyncio
import enum
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from aiohttp import web

from batches import anthropic_api, openai_api
from batches.api_common import ApiError
from batches.lanes import LANES
from batches.model import DEFAULT_LANE, Api, Batch
from batches.store import BatchPage, BatchStore

T = TypeVar("T")

# The header the gateway sets to the authenticated caller's tenant, after removing any copy the
# client sent (``x-ccr-`` is its internal prefix, never trusted from a client). Nothing here can
# tell who set it, so this service must be reachable through the gateway only.
DEFAULT_TENANT_HEADER = "x-ccr-tenant"
# Beside it, the caller's key id ("-" for none), kept with a batch it creates: its workers send the
# items for that key (Batch.owner_key).
DEFAULT_KEY_HEADER = "x-ccr-key"
# A client's choice of lane for the batch it creates (lanes.LANES); not an x-ccr- name: the gateway
# passes it on (its prefix is the gateway's own, never a client's).
LANE_HEADER = "x-batch-lane"
# The tenant of a request without one (the gateway does not require keys). No tenant the gateway
# names can be empty, so anonymous batches are never anyone else's.
ANONYMOUS_TENANT = ""
# What the gateway's decision hop sets the header to for a caller without a key
# (ccr.v1.contract.ANONYMOUS_TENANT_VALUE: always set, so a client's copy never passes): anonymous.
ANONYMOUS_HEADER_VALUE = "-"
# Bodies parsed on the event loop up to this size; larger ones in a thread (a 256 MB batch takes
# seconds to parse, and other clients' requests must not wait for it).
INLINE_PARSE_BYTES = 1024 * 1024
# JSONL is written in pieces of about this size: one write per line would cost a syscall per item.
STREAM_CHUNK_BYTES = 64 * 1024
# Kinds the cores do not raise but this service does (no tenant, wrong method, a bug of ours).
AUTHENTICATION, METHOD, SERVER = "authentication", "method_not_allowed", "server"
REQUEST_ID_HEADERS = ("request-id", "x-request-id")  # Anthropic's SDK reads the first, Envoy sets the second


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    tenant_header: str = DEFAULT_TENANT_HEADER
    key_header: str = DEFAULT_KEY_HEADER
    require_tenant: bool = False  # the gateway requires keys: a request without a tenant is a 401
    public_url: str | None = None  # where clients reach the API (results_url); None: from the request
    one_model: bool = True  # OpenAI's rule that every request of a batch names the same model


def random_entropy() -> bytes:
    """16 random bytes: one object id's worth (ids.new_id)."""
    return os.urandom(16)


@dataclass(frozen=True, slots=True)
class Context:
    """Everything a handler needs, on the app; ``clock`` and ``entropy`` are parameters so tests
    can predict times and ids (the cores take both as arguments)."""

    store: BatchStore
    config: ServiceConfig = ServiceConfig()
    clock: Callable[[], float] = time.time
    entropy: Callable[[], bytes] = random_entropy


CONTEXT_KEY = web.AppKey("batch_api_context", Context)


def context(request: web.Request) -> Context:
    return request.app[CONTEXT_KEY]


def tenant(request: web.Request) -> str:
    """The caller's tenant: the gateway's header, else the anonymous tenant, or a 401 when the
    gateway requires keys (the middleware asks first, so a handler never sees that)."""
    config = context(request).config
    value = request.headers.get(config.tenant_header, "").strip()
    if value and value != ANONYMOUS_HEADER_VALUE:
        return value
    if config.require_tenant:
        raise ApiError(401, "Authentication required: this gateway requires an API key", kind=AUTHENTICATION)
    return ANONYMOUS_TENANT


def lane(request: web.Request) -> str:
    """The lane a new batch's items run in: ``x-batch-lane`` (``batch``, the default: spare
    capacity; ``interactive``: ahead of every batch-lane item, for small urgent batches)."""
    value = request.headers.get(LANE_HEADER, "").strip().lower()
    if not value:
        return DEFAULT_LANE
    if value not in LANES:
        raise ApiError(400, f"{LANE_HEADER}: must be one of {', '.join(sorted(LANES))}, not {value!r}")
    return value


def owner_key(request: web.Request) -> str:
    """The caller's key id as the gateway named it; "" for a caller without a key."""
    value = request.headers.get(context(request).config.key_header, "").strip()
    return "" if value == ANONYMOUS_HEADER_VALUE else value


# --- errors -------------------------------------------------------------------------------------


class Flavor(enum.Enum):
    """Whose error shape a path answers in."""

    ANTHROPIC = "anthropic"
    OPENAI = "openai"


def flavor_of(path: str) -> Flavor:
    return Flavor.ANTHROPIC if path.startswith("/v1/messages") else Flavor.OPENAI


_ANTHROPIC_TYPES = {AUTHENTICATION: "authentication_error", METHOD: "invalid_request_error", SERVER: "api_error"}


def error_reply(error: ApiError, flavor: Flavor, *, request_id: str | None = None) -> web.Response:
    """An ``ApiError`` in the API's own shape: Anthropic ``{"type":"error","error":{...}}``,
    OpenAI ``{"error":{"message","type","param","code"}}``."""
    body: dict[str, Any]
    if flavor is Flavor.ANTHROPIC:
        body = anthropic_api.error_body(error, request_id=request_id)
        if error.kind in _ANTHROPIC_TYPES:
            body["error"]["type"] = _ANTHROPIC_TYPES[error.kind]
    else:
        body = openai_api.error_body(error)
        if error.kind == AUTHENTICATION:
            body["error"]["code"] = "invalid_api_key"
        elif error.kind == SERVER:
            body["error"]["type"] = "server_error"
    return json_reply(body, status=error.status)


def json_reply(body: Mapping[str, Any] | list[Any], *, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def request_id_of(request: web.Request) -> str | None:
    """Envoy's request id, when the request came through the gateway."""
    return request.headers.get("x-request-id")


# --- bodies -------------------------------------------------------------------------------------


async def read_body(request: web.Request, *, limit: int, what: str = "request body") -> bytes:
    """The whole body, refused with a 413 as soon as it is known to pass ``limit`` (from its
    Content-Length, before reading, or while reading a chunked one)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large(what, declared, limit)
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise too_large(what, len(body), limit, at_least=True)
    return bytes(body)


def too_large(what: str, size: int, limit: int, *, at_least: bool = False) -> ApiError:
    over = "over " if at_least else ""
    return ApiError(413, f"{what} is {over}{size} bytes; the limit is {limit}", kind="too_large")


async def off_loop(function: Callable[..., T], raw: bytes, *args: Any, **kwargs: Any) -> T:
    """``function(raw, ...)`` inline for small bodies, in a thread for large ones."""
    if len(raw) <= INLINE_PARSE_BYTES:
        return function(raw, *args, **kwargs)
    return await asyncio.to_thread(function, raw, *args, **kwargs)


# --- streaming ----------------------------------------------------------------------------------


async def stream_lines(request: web.Request, lines: AsyncIterator[bytes], *, content_type: str) -> web.StreamResponse:
    """JSONL as the store yields it, never the whole file in memory. The first line is read
    before the status is sent, so a batch that vanished is still a proper 404; a failure later
    can only cut the response short (the client sees a truncated body, not a wrong one)."""
    pending = bytearray()
    async for line in lines:
        pending += line
        break
    response = web.StreamResponse(status=200, headers={"content-type": content_type})
    await response.prepare(request)
    try:
        async for line in lines:
            pending += line
            if len(pending) >= STREAM_CHUNK_BYTES:
                await response.write(bytes(pending))
                pending.clear()
        if pending:
            await response.write(bytes(pending))
        await response.write_eof()
    except Exception as exc:
        raise StreamCut(f"{request.method} {request.path}: the response was cut short: {exc!r}") from exc
    return response


class StreamCut(Exception):
    """A streamed response failed after its status was sent: there is no error to answer with,
    only a connection to drop (aiohttp does, so the client sees a truncated body)."""


# --- batches of one API -------------------------------------------------------------------------


async def get_batch(request: web.Request, batch_id: str, api: Api) -> Batch | None:
    """The caller's batch of this API, or None: another tenant's batch, or one submitted through
    the other API, is not there for this caller."""
    batch = await context(request).store.get_batch(batch_id, tenant=tenant(request))
    return batch if batch is not None and batch.api is api else None


async def list_batches(
    store: BatchStore, tenant: str, api: Api, *, limit: int, after_id: str | None, before_id: str | None
) -> BatchPage:
    """A page of the tenant's batches of one API, newest first, paged as ``api_common.paginate``.

    The store lists a tenant's batches of both APIs, so this walks its pages in the direction of
    travel and keeps this API's, reading until the page is full and one more is known to exist
    (``has_more``). A tenant that uses one API reads exactly what it would without the filter.
    """
    forward = before_id is None  # after_id or no cursor: towards older batches
    kept: list[Batch] = []
    while True:
        page = await store.list_batches(tenant, limit=limit, after_id=after_id, before_id=before_id)
        # Nearest to the cursor first: the page's head going older, its tail going newer.
        for batch in page.batches if forward else reversed(page.batches):
            if batch.api is not api:
                continue
            if len(kept) == limit:
                return _in_order(kept, forward, has_more=True)
            kept.append(batch)
        if not page.has_more or not page.batches:
            return _in_order(kept, forward, has_more=False)
        if forward:
            after_id = page.batches[-1].id
        else:
            before_id = page.batches[0].id


def _in_order(kept: list[Batch], forward: bool, *, has_more: bool) -> BatchPage:
    return BatchPage(kept if forward else kept[::-1], has_more)
