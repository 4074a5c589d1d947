"""The OpenAI Files + Batch API over HTTP (aiohttp), on ``openai_api`` and a BatchStore.

  POST   /v1/files                  multipart upload, purpose "batch" (the input file, stored as sent)
  GET    /v1/files/{id}             an input file, or a batch's output / error file
  GET    /v1/files/{id}/content     its bytes; output and error files rendered from the items, streamed
  DELETE /v1/files/{id}             an input file (the batches made from it keep their items)
  POST   /v1/batches                validate the input file now: a batch in_progress, or failed with errors.data
  GET    /v1/batches                the tenant's OpenAI batches, newest first
  GET    /v1/batches/{id}           one batch
  POST   /v1/batches/{id}/cancel    start cancellation

Output and error files are never stored (openai_api: their ids name the batch), so they exist for
as long as the batch's results do, and cannot be deleted on their own. Everything acts for the
tenant the middleware found; another tenant's file or batch is a 404.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from aiohttp import BodyPartReader, web

from batches import openai_api as api
from batches.api_common import ApiError
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
from batches.model import (
    DEFAULT_LANE,
    FINAL,
    Api,
    Batch,
    CancelResult,
    Counts,
    Item,
    ItemState,
    failed_batch,
    new_batch,
)

CONTENT_TYPE = "application/octet-stream"  # what the API serves file content as
MAX_FIELD_BYTES = 1024  # a form field other than the file (purpose): a word, not a document
MAX_FORM_OVERHEAD = 64 * 1024  # boundaries, part headers and small fields around the file
_STATES = {"output": frozenset({ItemState.SUCCEEDED}), "error": FINAL - {ItemState.SUCCEEDED}}


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/files", upload),
        web.get("/v1/files/{file_id}", retrieve_file),
        web.get("/v1/files/{file_id}/content", file_content),
        web.delete("/v1/files/{file_id}", delete_file),
        web.post("/v1/batches", create),
        web.get("/v1/batches", list_),
        web.get("/v1/batches/{batch_id}", retrieve),
        web.post("/v1/batches/{batch_id}/cancel", cancel),
    ]


def file_not_found(file_id: str) -> ApiError:
    return ApiError(404, f"No such File object: {file_id}", kind="not_found", param="id")


# --- files --------------------------------------------------------------------------------------


async def upload(request: web.Request) -> web.Response:
    ctx = context(request)
    if request.content_type != "multipart/form-data":
        raise ApiError(400, "POST /v1/files takes multipart/form-data with a file and its purpose")
    declared = request.content_length
    if declared is not None and declared > api.MAX_FILE_BYTES + MAX_FORM_OVERHEAD:
        raise ApiError(
            413,
            f"The upload is {declared} bytes; a batch input file may be at most {api.MAX_FILE_BYTES}",
            kind="too_large",
            param="file",
        )
    try:
        filename, content, purpose = await _read_form(request)
    except ValueError as exc:  # aiohttp's multipart reader on a malformed body
        raise ApiError(400, f"the multipart body could not be read: {exc}") from None
    if content is None or filename is None:
        raise ApiError(400, "Missing required parameter: 'file'.", param="file")
    if purpose is None:
        raise ApiError(400, "Missing required parameter: 'purpose'.", param="purpose")
    api.check_upload(filename=filename, purpose=purpose, size=len(content))
    record = api.new_file(
        api.new_file_id(ctx.entropy()), tenant=tenant(request), filename=filename, size=len(content), now=ctx.clock()
    )
    await ctx.store.put_file(record, content)
    return json_reply(api.render_file(record))


async def _read_form(request: web.Request) -> tuple[str | None, bytes | None, str | None]:
    """The upload's file (name and bytes, refused past the API's limit while reading) and purpose."""
    filename = content = purpose = None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise ApiError(400, "nested multipart bodies are not supported")
        if part.name == "file":
            filename = part.filename or "upload"
            content = await _read_part(part, api.MAX_FILE_BYTES, "file")
        elif part.name == "purpose":
            purpose = (await _read_part(part, MAX_FIELD_BYTES, "purpose")).decode("utf-8", "replace").strip()
        else:
            await part.release()  # fields this API does not take (expires_after[...]) are ignored
    return filename, content, purpose


async def _read_part(part: BodyPartReader, limit: int, field: str) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(256 * 1024):
        data += chunk
        if len(data) > limit:
            raise ApiError(413, f"The {field} is over {limit} bytes", kind="too_large", param=field)
    return bytes(data)


async def retrieve_file(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    found = await _result_file(request, file_id)
    if found is not None:
        batch, kind = found
        size = 0
        async for line in _result_lines(request, batch, kind):
            size += len(line)
        return json_reply(api.render_file(api.result_file(batch, kind, size=size)))
    record = await context(request).store.get_file(file_id, tenant=tenant(request))
    if record is None:
        raise file_not_found(file_id)
    return json_reply(api.render_file(record))


async def file_content(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    file_id = request.match_info["file_id"]
    found = await _result_file(request, file_id)
    if found is not None:
        batch, kind = found
        return await stream_lines(request, _result_lines(request, batch, kind), content_type=CONTENT_TYPE)
    if await ctx.store.get_file(file_id, tenant=tenant(request)) is None:
        raise file_not_found(file_id)
    content = await ctx.store.file_content(file_id)
    if content is None:
        raise file_not_found(file_id)
    return web.Response(body=content, content_type=CONTENT_TYPE)


async def delete_file(request: web.Request) -> web.Response:
    ctx = context(request)
    file_id = request.match_info["file_id"]
    if await _result_file(request, file_id) is not None:
        raise ApiError(
            400,
            f"{file_id} is a batch's output or error file: it is kept as long as the batch's results and "
            "cannot be deleted on its own",
            param="file_id",
        )
    if await ctx.store.get_file(file_id, tenant=tenant(request)) is None or not await ctx.store.delete_file(file_id):
        raise file_not_found(file_id)
    return json_reply({"id": file_id, "object": "file", "deleted": True})


async def _result_file(request: web.Request, file_id: str) -> tuple[Batch, str] | None:
    """``(batch, "output"|"error")`` when ``file_id`` names a result file of the caller's batch
    that exists now (as the batch object names it); None for any other kind of id; 404 for a
    result file id that names nothing (yet, or any more)."""
    parsed = api.parse_result_file_id(file_id)
    if parsed is None:
        return None
    batch_id, kind = parsed
    batch = await get_batch(request, batch_id, Api.OPENAI)
    if batch is None or batch.archived_at is not None:
        raise file_not_found(file_id)
    rendered = api.render_batch(batch, await context(request).store.counts(batch.id))
    if rendered[f"{kind}_file_id"] != file_id:
        raise file_not_found(file_id)
    return batch, kind


async def _result_lines(request: web.Request, batch: Batch, kind: str) -> AsyncIterator[bytes]:
    # Per item, not api.output_lines / error_lines: those sort their input, so would hold every item.
    async for item in context(request).store.results(batch.id, states=_STATES[kind]):
        yield orjson.dumps(api.render_output_line(batch.id, item)) + b"\n"


# --- batches ------------------------------------------------------------------------------------


async def _own(request: web.Request) -> Batch:
    batch_id = request.match_info["batch_id"]
    batch = await get_batch(request, batch_id, Api.OPENAI)
    if batch is None:
        raise api.not_found(batch_id)
    return batch


async def _rendered(request: web.Request, batch: Batch) -> dict:
    return api.render_batch(batch, await context(request).store.counts(batch.id))


async def create(request: web.Request) -> web.Response:
    ctx = context(request)
    caller = tenant(request)
    created = api.parse_create(await read_body(request, limit=api.MAX_CREATE_BODY_BYTES))
    stored = await ctx.store.get_file(created.input_file_id, tenant=caller)
    record = api.check_input_file(stored, created.input_file_id, tenant=caller)
    content = await ctx.store.file_content(record.id)
    if content is None:  # deleted since we looked
        raise ApiError(404, f"No such File object: {record.id}", kind="not_found", param="input_file_id")
    batch_id, now = api.new_batch_id(ctx.entropy()), ctx.clock()
    batch, items = await off_loop(
        batch_of_file, content, created, record.id, batch_id, caller, now,
        one_model=ctx.config.one_model, key=owner_key(request), lane=lane(request),
    )  # fmt: skip
    await ctx.store.create_batch(batch, items)
    return json_reply(api.render_batch(batch, Counts(queued=len(items))))


def batch_of_file(
    content: bytes,
    created: api.CreateBatch,
    file_id: str,
    batch_id: str,
    owner: str,
    now: float,
    *,
    one_model: bool,
    key: str = "",
    lane: str = DEFAULT_LANE,
) -> tuple[Batch, list[Item]]:
    """The input file validated and made ``owner``'s batch (created with ``key``, run in ``lane``):
    pure, so a large one can run in a thread. Bad lines make a failed batch, as OpenAI's does: accepted, then failed
    with errors.data."""
    validated = api.validate_input(content, endpoint=created.endpoint, one_model=one_model)
    common = {"tenant": owner, "api": Api.OPENAI, "endpoint": created.endpoint, "now": now}
    if validated.errors:
        failed = failed_batch(
            batch_id, errors=validated.errors, metadata=created.metadata, input_file_id=file_id, **common
        )
        return failed, []
    return new_batch(
        batch_id,
        requests=validated.requests,
        metadata=created.metadata,
        input_file_id=file_id,
        owner_key=key,
        lane=lane,
        **common,
    )


async def list_(request: web.Request) -> web.Response:
    query = api.parse_list_query(request.query)
    page = await list_batches(
        context(request).store, tenant(request), Api.OPENAI, limit=query.limit, after_id=query.after, before_id=None
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
