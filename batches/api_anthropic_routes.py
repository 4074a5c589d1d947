"""The Anthropic Message Batches API over HTTP (aiohttp), on ``anthropic_api`` and a BatchStore.

  POST   /v1/messages/batches               create (validated whole, as the API does: a 400 and no batch)
  GET    /v1/messages/batches               the tenant's Anthropic batches, newest first
  GET    /v1/messages/batches/{id}          one batch
  POST   /v1/messages/batches/{id}/cancel   start cancellation (queued items end canceled, sent ones finish)
  GET    /v1/messages/batches/{id}/results  JSONL in request order, streamed item by item
  DELETE /v1/messages/batches/{id}          an ended batch and its results

Every route acts for the tenant the middleware found (api_http.tenant); another tenant's batch,
or an OpenAI one, is a 404.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from batches import anthropic_api as api
from batches.api_http import (
    context,
    get_batch,
    json_reply,
    lane,
    list_batches,
    off_loop,
    owner_key,
    read_body,
    stream_lines,
    tenant,
)
from batches.model import DEFAULT_LANE, Api, Batch, CancelResult, Counts, Item, new_batch

PREFIX = "/v1/messages/batches"
RESULTS_CONTENT_TYPE = "application/binary"  # what the SDK asks for (Accept); it reads the body as JSONL


def routes() -> list[web.RouteDef]:
    return [
        web.post(PREFIX, create),
        web.get(PREFIX, list_),
        web.get(PREFIX + "/{batch_id}", retrieve),
        web.post(PREFIX + "/{batch_id}/cancel", cancel),
        web.get(PREFIX + "/{batch_id}/results", results),
        web.delete(PREFIX + "/{batch_id}", delete),
    ]


def base_url(request: web.Request) -> str:
    """Where the client reached us, for ``results_url`` (the SDK fetches it as given): the
    configured public URL, else the scheme and host the gateway forwarded."""
    configured = context(request).config.public_url
    if configured:
        return configured
    scheme = request.headers.get("x-forwarded-proto") or request.scheme
    host = request.headers.get("x-forwarded-host") or request.host
    return f"{scheme}://{host}"


async def _rendered(request: web.Request, batch: Batch, counts: Counts | None = None) -> dict:
    if counts is None:
        counts = await context(request).store.counts(batch.id)
    return api.render_batch(batch, counts, base_url=base_url(request))


async def _own(request: web.Request) -> Batch:
    batch_id = request.match_info["batch_id"]
    batch = await get_batch(request, batch_id, Api.ANTHROPIC)
    if batch is None:
        raise api.not_found(batch_id)
    return batch


async def create(request: web.Request) -> web.Response:
    ctx = context(request)
    raw = await read_body(request, limit=api.MAX_BODY_BYTES)
    batch_id, owner = api.new_batch_id(ctx.entropy()), tenant(request)
    batch, items = await off_loop(batch_of_body, raw, batch_id, owner, ctx.clock(), owner_key(request), lane(request))
    await ctx.store.create_batch(batch, items)
    return json_reply(await _rendered(request, batch, Counts(queued=len(items))))


def batch_of_body(
    raw: bytes, batch_id: str, owner: str, now: float, key: str = "", lane: str = DEFAULT_LANE
) -> tuple[Batch, list[Item]]:
    """A create body validated and made ``owner``'s batch (created with ``key``, run in ``lane``):
    pure, so a large one can run in a thread."""
    parsed = api.parse_create(raw)
    return new_batch(
        batch_id, tenant=owner, api=Api.ANTHROPIC, endpoint=api.ENDPOINT, requests=parsed.requests, now=now,
        owner_key=key, lane=lane,
    )  # fmt: skip


async def list_(request: web.Request) -> web.Response:
    query = api.parse_list_query(request.query)
    page = await list_batches(
        context(request).store,
        tenant(request),
        Api.ANTHROPIC,
        limit=query.limit,
        after_id=query.after_id,
        before_id=query.before_id,
    )
    data = [await _rendered(request, batch) for batch in page.batches]
    return json_reply(api.render_list(data, page.page))


async def retrieve(request: web.Request) -> web.Response:
    return json_reply(await _rendered(request, await _own(request)))


async def cancel(request: web.Request) -> web.Response:
    ctx = context(request)
    batch = await _own(request)
    api.check_cancelable(batch)
    batch, result = await ctx.store.request_cancel(batch.id, now=ctx.clock())
    if result is CancelResult.ENDED:  # it ended between the check and the cancel
        api.check_cancelable(batch)
    return json_reply(await _rendered(request, batch))


async def results(request: web.Request) -> web.StreamResponse:
    batch = await _own(request)
    api.check_results_available(batch)
    return await stream_lines(request, _result_lines(request, batch), content_type=RESULTS_CONTENT_TYPE)


async def _result_lines(request: web.Request, batch: Batch) -> AsyncIterator[bytes]:
    # Per item, not api.results_lines: that one sorts its input, so it would hold every item.
    async for item in context(request).store.results(batch.id):
        if not item.state.final:
            continue  # cannot happen in an ended batch; a result line needs an outcome
        yield orjson.dumps(api.render_result(item)) + b"\n"


async def delete(request: web.Request) -> web.Response:
    batch = await _own(request)
    api.check_deletable(batch)
    if not await context(request).store.delete_batch(batch.id):
        raise api.not_found(batch.id)  # deleted by someone else meanwhile
    return json_reply(api.render_deleted(batch.id))
