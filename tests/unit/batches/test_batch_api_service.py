"""The batch HTTP API service (batches.api_service) on a MemoryStore, through aiohttp's test client:
both APIs' routes, tenants, streamed results and error shapes. Item outcomes are driven through
the store directly, as the worker would. Every object is parsed with the official SDKs' models."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer
from anthropic.types.messages import DeletedMessageBatch, MessageBatch, MessageBatchIndividualResponse
from openai.types import Batch as OpenAIBatch
from openai.types import FileObject

from batches import anthropic_api, api_anthropic_routes, api_http, api_openai_routes, openai_api
from batches.api_http import ServiceConfig
from batches.api_service import build_app
from batches.model import Outcome
from batches.store import MemoryStore

T0 = 1_750_000_000.0
MESSAGE = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "Hello"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 3, "output_tokens": 1},
}
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1711471533,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
}
TENANT = {"x-ccr-tenant": "acme"}
OTHER = {"x-ccr-tenant": "globex"}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        self.now += 1.0  # every call a second later: creation order is listing order
        return self.now


def counter_entropy():
    counter = itertools.count(1)
    return lambda: next(counter).to_bytes(16, "big")


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


async def make_client(store: MemoryStore, config: ServiceConfig | None = None) -> TestClient:
    client = TestClient(TestServer(build_app(store, config, clock=Clock(), entropy=counter_entropy())))
    await client.start_server()
    return client


@pytest.fixture
async def client(store: MemoryStore) -> AsyncIterator[TestClient]:
    client = await make_client(store)
    yield client
    await client.close()


def anthropic_body(n: int = 3, **params) -> dict:
    return {
        "requests": [
            {
                "custom_id": f"req-{i}",
                "params": {
                    "model": "claude-sonnet-4-5",
                    "max_tokens": 64,
                    "messages": [{"role": "user", "content": f"{i}"}],
                    **params,
                },
            }
            for i in range(n)
        ]
    }


def jsonl_file(n: int = 3, *, model: str = "gpt-4o-mini") -> bytes:
    lines = (
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"{i}"}]},
        }
        for i in range(n)
    )
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def upload_form(content: bytes, *, purpose: str = "batch", filename: str = "input.jsonl") -> FormData:
    form = FormData()
    form.add_field("purpose", purpose)
    form.add_field("file", content, filename=filename, content_type="application/jsonl")
    return form


async def anthropic_batch(client: TestClient, n: int = 3, headers=TENANT) -> MessageBatch:
    response = await client.post("/v1/messages/batches", json=anthropic_body(n), headers=headers)
    assert response.status == 200, await response.text()
    return MessageBatch.model_validate(await response.json())


async def openai_batch(client: TestClient, content: bytes, headers=TENANT) -> OpenAIBatch:
    uploaded = await client.post("/v1/files", data=upload_form(content), headers=headers)
    assert uploaded.status == 200, await uploaded.text()
    file_id = (await uploaded.json())["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    response = await client.post("/v1/batches", json=body, headers=headers)
    assert response.status == 200, await response.text()
    return OpenAIBatch.model_validate(await response.json())


def anthropic_error(body: dict, error_type: str) -> str:
    assert body["type"] == "error" and body["error"]["type"] == error_type, body
    return body["error"]["message"]


def openai_error(body: dict) -> dict:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# --- Anthropic ----------------------------------------------------------------------------------


async def test_an_anthropic_batch_is_created_in_progress_and_retrieved_as_created(client):
    created = await anthropic_batch(client)
    assert created.id.startswith("msgbatch_") and created.processing_status == "in_progress"
    assert created.request_counts.processing == 3 and created.results_url is None
    fetched = await client.get(f"/v1/messages/batches/{created.id}", headers=TENANT)
    assert MessageBatch.model_validate(await fetched.json()) == created


async def test_results_stream_in_request_order_once_the_batch_ended(client, store):
    created = await anthropic_batch(client, n=4)
    await store.record_item(created.id, 2, Outcome.from_response(200, MESSAGE, "req_2"), now=T0)
    await store.record_item(created.id, 0, Outcome.from_response(529, None), now=T0)
    await store.record_item(created.id, 3, Outcome.from_response(200, MESSAGE), now=T0)
    await store.expire_item(created.id, 1, now=T0)
    ended = MessageBatch.model_validate(
        await (await client.get(f"/v1/messages/batches/{created.id}", headers=TENANT)).json()
    )
    assert ended.processing_status == "ended"
    assert ended.results_url == f"http://{client.host}:{client.port}/v1/messages/batches/{created.id}/results"
    response = await client.get(f"/v1/messages/batches/{created.id}/results", headers=TENANT)
    assert response.status == 200
    lines = [MessageBatchIndividualResponse.model_validate_json(line) for line in (await response.read()).splitlines()]
    assert [line.custom_id for line in lines] == ["req-0", "req-1", "req-2", "req-3"]
    assert [line.result.type for line in lines] == ["errored", "expired", "succeeded", "succeeded"]
    assert lines[0].result.error.error.type == "overloaded_error"
    assert lines[2].result.message.content[0].text == "Hello"


async def test_results_are_rendered_item_by_item_never_with_the_sorting_list_renderer(client, store, monkeypatch):
    def sorting(*_args, **_kwargs):
        raise AssertionError("the list renderer holds every item")

    monkeypatch.setattr(anthropic_api, "results_lines", sorting)
    monkeypatch.setattr(api_http, "STREAM_CHUNK_BYTES", 1000)  # many writes
    created = await anthropic_batch(client, n=1200)  # more than two store pages of results
    for index in range(1200):
        await store.record_item(created.id, index, Outcome.from_response(200, MESSAGE), now=T0)
    body = await (await client.get(f"/v1/messages/batches/{created.id}/results", headers=TENANT)).read()
    custom_ids = [orjson.loads(line)["custom_id"] for line in body.splitlines()]
    assert custom_ids == [f"req-{i}" for i in range(1200)]


async def test_results_before_the_batch_ended_are_a_400(client):
    created = await anthropic_batch(client)
    response = await client.get(f"/v1/messages/batches/{created.id}/results", headers=TENANT)
    assert response.status == 400
    assert "has not ended" in anthropic_error(await response.json(), "invalid_request_error")


async def test_cancel_ends_queued_items_canceled_and_a_second_cancel_is_refused(client, store):
    created = await anthropic_batch(client, n=3)
    await store.send_item(created.id, 1, now=T0)  # in flight: it finishes
    response = await client.post(f"/v1/messages/batches/{created.id}/cancel", headers=TENANT)
    canceling = MessageBatch.model_validate(await response.json())
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    await store.record_item(created.id, 1, Outcome.from_response(200, MESSAGE), now=T0)
    ended = MessageBatch.model_validate(
        await (await client.get(f"/v1/messages/batches/{created.id}", headers=TENANT)).json()
    )
    assert ended.processing_status == "ended"
    assert (ended.request_counts.canceled, ended.request_counts.succeeded) == (2, 1)
    again = await client.post(f"/v1/messages/batches/{created.id}/cancel", headers=TENANT)
    assert again.status == 400
    anthropic_error(await again.json(), "invalid_request_error")


async def test_delete_refuses_a_running_batch_and_removes_an_ended_one(client):
    created = await anthropic_batch(client)
    refused = await client.delete(f"/v1/messages/batches/{created.id}", headers=TENANT)
    assert refused.status == 400
    await client.post(f"/v1/messages/batches/{created.id}/cancel", headers=TENANT)
    deleted = await client.delete(f"/v1/messages/batches/{created.id}", headers=TENANT)
    assert DeletedMessageBatch.model_validate(await deleted.json()).id == created.id
    gone = await client.get(f"/v1/messages/batches/{created.id}", headers=TENANT)
    assert gone.status == 404
    anthropic_error(await gone.json(), "not_found_error")


async def test_anthropic_list_pages_newest_first_and_leaves_out_openai_batches(client):
    ids = []
    for n in range(5):
        ids.append((await anthropic_batch(client, n=1)).id)
        if n % 2 == 0:
            await openai_batch(client, jsonl_file(1))  # interleaved: the list must skip them
    newest_first = ids[::-1]
    first = await (await client.get("/v1/messages/batches?limit=2", headers=TENANT)).json()
    assert [batch["id"] for batch in first["data"]] == newest_first[:2] and first["has_more"] is True
    assert first["first_id"] == newest_first[0] and first["last_id"] == newest_first[1]
    rest = await (await client.get(f"/v1/messages/batches?limit=3&after_id={first['last_id']}", headers=TENANT)).json()
    assert [batch["id"] for batch in rest["data"]] == newest_first[2:] and rest["has_more"] is False
    back = await (await client.get(f"/v1/messages/batches?limit=2&before_id={newest_first[3]}", headers=TENANT)).json()
    assert [batch["id"] for batch in back["data"]] == newest_first[1:3] and back["has_more"] is True
    for batch in first["data"] + rest["data"]:
        MessageBatch.model_validate(batch)


@pytest.mark.parametrize(
    ("body", "status", "error_type", "says"),
    [
        (b"{not json", 400, "invalid_request_error", "not valid JSON"),
        (b"[]", 400, "invalid_request_error", "JSON object"),
        (orjson.dumps({"requests": []}), 400, "invalid_request_error", "at least 1 item"),
        (orjson.dumps(anthropic_body(1, stream=True)), 400, "invalid_request_error", "requests.0.params.stream"),
    ],
)
async def test_a_bad_anthropic_create_body_is_a_400_in_the_anthropic_shape(client, body, status, error_type, says):
    response = await client.post(
        "/v1/messages/batches", data=body, headers={**TENANT, "content-type": "application/json"}
    )
    assert response.status == status
    assert says in anthropic_error(await response.json(), error_type)


async def test_an_oversized_anthropic_body_is_a_413_before_it_is_parsed(client, monkeypatch):
    monkeypatch.setattr(anthropic_api, "MAX_BODY_BYTES", 100)
    response = await client.post("/v1/messages/batches", json=anthropic_body(3), headers=TENANT)
    assert response.status == 413
    anthropic_error(await response.json(), "request_too_large")

    async def chunked():  # no content-length: refused while reading
        yield orjson.dumps(anthropic_body(3))

    response = await client.post("/v1/messages/batches", data=chunked(), headers=TENANT)
    assert response.status == 413
    anthropic_error(await response.json(), "request_too_large")


async def test_a_large_body_is_parsed_off_the_event_loop(client, monkeypatch):
    threads = []
    real_to_thread = api_http.asyncio.to_thread

    async def spy(function, *args, **kwargs):
        threads.append(function)
        return await real_to_thread(function, *args, **kwargs)

    monkeypatch.setattr(api_http, "INLINE_PARSE_BYTES", 10)
    monkeypatch.setattr(api_http.asyncio, "to_thread", spy)
    await anthropic_batch(client, n=2)
    await openai_batch(client, jsonl_file(2))
    assert threads == [api_anthropic_routes.batch_of_body, api_openai_routes.batch_of_file]


async def test_unknown_anthropic_paths_and_methods_answer_in_the_anthropic_shape(client):
    missing = await client.get("/v1/messages/batches/x/nothing", headers=TENANT)
    assert missing.status == 404
    anthropic_error(await missing.json(), "not_found_error")
    wrong = await client.put("/v1/messages/batches", headers=TENANT)
    assert wrong.status == 405
    anthropic_error(await wrong.json(), "invalid_request_error")


# --- OpenAI -------------------------------------------------------------------------------------


async def test_an_uploaded_file_is_retrieved_read_back_and_deleted(client):
    content = jsonl_file(2)
    uploaded = FileObject.model_validate(
        await (await client.post("/v1/files", data=upload_form(content), headers=TENANT)).json()
    )
    assert uploaded.purpose == "batch" and uploaded.bytes == len(content) and uploaded.filename == "input.jsonl"
    fetched = await client.get(f"/v1/files/{uploaded.id}", headers=TENANT)
    assert FileObject.model_validate(await fetched.json()) == uploaded
    assert await (await client.get(f"/v1/files/{uploaded.id}/content", headers=TENANT)).read() == content
    deleted = await (await client.delete(f"/v1/files/{uploaded.id}", headers=TENANT)).json()
    assert deleted == {"id": uploaded.id, "object": "file", "deleted": True}
    gone = await client.get(f"/v1/files/{uploaded.id}/content", headers=TENANT)
    assert gone.status == 404
    assert openai_error(await gone.json())["message"] == f"No such File object: {uploaded.id}"


async def test_an_openai_batch_runs_to_completed_with_output_and_error_files(client, store):
    created = await openai_batch(client, jsonl_file(3))
    assert created.status == "in_progress" and created.request_counts.total == 3
    await store.record_item(created.id, 0, Outcome.from_response(200, COMPLETION, "req_a"), now=T0)
    await store.record_item(created.id, 1, Outcome.from_response(400, {"error": {"message": "bad"}}), now=T0)
    await store.record_item(created.id, 2, Outcome.from_response(200, COMPLETION), now=T0)
    done = OpenAIBatch.model_validate(await (await client.get(f"/v1/batches/{created.id}", headers=TENANT)).json())
    assert done.status == "completed" and done.request_counts.completed == 2
    output = await (await client.get(f"/v1/files/{done.output_file_id}/content", headers=TENANT)).read()
    lines = [orjson.loads(line) for line in output.splitlines()]
    assert [line["custom_id"] for line in lines] == ["line-0", "line-2"]
    assert lines[0]["response"] == {"status_code": 200, "request_id": "req_a", "body": COMPLETION}
    errors = [
        orjson.loads(line)
        for line in (
            await (await client.get(f"/v1/files/{done.error_file_id}/content", headers=TENANT)).read()
        ).splitlines()
    ]
    assert [(line["custom_id"], line["response"]["status_code"]) for line in errors] == [("line-1", 400)]
    described = FileObject.model_validate(
        await (await client.get(f"/v1/files/{done.output_file_id}", headers=TENANT)).json()
    )
    assert described.purpose == "batch_output" and described.bytes == len(output)
    refused = await client.delete(f"/v1/files/{done.output_file_id}", headers=TENANT)
    assert refused.status == 400
    openai_error(await refused.json())


async def test_an_input_file_with_bad_lines_makes_a_failed_batch_naming_them(client):
    content = jsonl_file(1) + b"{oops\n" + jsonl_file(1, model="gpt-4o")
    failed = await openai_batch(client, content)
    assert failed.status == "failed" and failed.output_file_id is None
    assert [(error.code, error.line) for error in failed.errors.data] == [
        ("invalid_json_line", 2),
        ("duplicate_custom_id", 3),
    ]


async def test_openai_cancel_ends_queued_items_and_the_error_file_lists_them(client):
    created = await openai_batch(client, jsonl_file(2))
    cancelled = OpenAIBatch.model_validate(
        await (await client.post(f"/v1/batches/{created.id}/cancel", headers=TENANT)).json()
    )
    assert cancelled.status == "cancelled" and cancelled.output_file_id is None
    errors = await (await client.get(f"/v1/files/{cancelled.error_file_id}/content", headers=TENANT)).read()
    assert [orjson.loads(line)["error"]["code"] for line in errors.splitlines()] == ["batch_cancelled"] * 2
    again = await client.post(f"/v1/batches/{created.id}/cancel", headers=TENANT)
    assert again.status == 400
    openai_error(await again.json())


async def test_openai_list_pages_with_after_and_skips_anthropic_batches(client):
    ids = []
    for _ in range(3):
        ids.append((await openai_batch(client, jsonl_file(1))).id)
        await anthropic_batch(client, n=1)
    page = await (await client.get("/v1/batches?limit=2", headers=TENANT)).json()
    assert page["object"] == "list" and [batch["id"] for batch in page["data"]] == ids[::-1][:2] and page["has_more"]
    rest = await (await client.get(f"/v1/batches?limit=2&after={page['last_id']}", headers=TENANT)).json()
    assert [batch["id"] for batch in rest["data"]] == [ids[0]] and rest["has_more"] is False


@pytest.mark.parametrize(
    ("form", "status", "param"),
    [
        (upload_form(b"{}\n", purpose="fine-tune"), 400, "purpose"),
        (upload_form(b"{}\n", filename="input.csv"), 400, "file"),
    ],
)
async def test_a_refused_upload_is_an_openai_error(client, form, status, param):
    response = await client.post("/v1/files", data=form, headers=TENANT)
    assert response.status == status
    assert openai_error(await response.json())["param"] == param


async def test_an_upload_must_be_multipart_and_not_too_large(client, monkeypatch):
    plain = await client.post("/v1/files", data=b"{}", headers={**TENANT, "content-type": "application/json"})
    assert plain.status == 400
    openai_error(await plain.json())
    monkeypatch.setattr(openai_api, "MAX_FILE_BYTES", 10)
    # Found while reading the file part; from the Content-Length, before reading anything.
    for content, says in ((jsonl_file(2), "The file is over 10 bytes"), (jsonl_file(1000), "The upload is")):
        big = await client.post("/v1/files", data=upload_form(content), headers=TENANT)
        assert big.status == 413
        error = openai_error(await big.json())
        assert error["code"] == "file_too_large" and error["message"].startswith(says)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"no boundary"),
        ("multipart/form-data; boundary=xyz", b"no parts"),
        (
            "multipart/form-data; boundary=xyz",
            b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\nabc',
        ),
    ],
)
async def test_a_malformed_multipart_body_is_a_400(client, content_type, body):
    response = await client.post("/v1/files", data=body, headers={**TENANT, "content-type": content_type})
    assert response.status == 400
    assert "multipart body could not be read" in openai_error(await response.json())["message"]


async def test_bad_openai_create_bodies_are_openai_errors(client):
    bad_json = await client.post("/v1/batches", data=b"{", headers={**TENANT, "content-type": "application/json"})
    assert bad_json.status == 400
    openai_error(await bad_json.json())
    body = {"input_file_id": "file-nope", "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    missing = await client.post("/v1/batches", json=body, headers=TENANT)
    assert missing.status == 404
    assert openai_error(await missing.json())["param"] == "input_file_id"
    window = await client.post("/v1/batches", json={**body, "completion_window": "1h"}, headers=TENANT)
    assert window.status == 400
    assert openai_error(await window.json())["param"] == "completion_window"


# --- tenants, health, request ids ---------------------------------------------------------------


async def test_another_tenants_batches_and_files_are_404s(client):
    mine = await anthropic_batch(client)
    theirs_to_see = [
        client.get(f"/v1/messages/batches/{mine.id}", headers=OTHER),
        client.post(f"/v1/messages/batches/{mine.id}/cancel", headers=OTHER),
        client.get(f"/v1/messages/batches/{mine.id}/results", headers=OTHER),
        client.delete(f"/v1/messages/batches/{mine.id}", headers=OTHER),
        client.get(f"/v1/messages/batches/{mine.id}"),  # anonymous is a tenant too
    ]
    for request in theirs_to_see:
        response = await request
        assert response.status == 404
        anthropic_error(await response.json(), "not_found_error")
    assert (await (await client.get("/v1/messages/batches", headers=OTHER)).json())["data"] == []
    through_the_other_api = await client.get(f"/v1/batches/{mine.id}", headers=TENANT)  # mine, but Anthropic's
    assert through_the_other_api.status == 404
    openai_error(await through_the_other_api.json())
    batch = await openai_batch(client, jsonl_file(1))
    await client.post(f"/v1/batches/{batch.id}/cancel", headers=TENANT)
    ended = await (await client.get(f"/v1/batches/{batch.id}", headers=TENANT)).json()
    for path in (
        f"/v1/batches/{batch.id}",
        f"/v1/files/{batch.input_file_id}",
        f"/v1/files/{batch.input_file_id}/content",
        f"/v1/files/{ended['error_file_id']}/content",
    ):
        response = await client.get(path, headers=OTHER)
        assert response.status == 404, path
        openai_error(await response.json())
    assert (await client.delete(f"/v1/files/{batch.input_file_id}", headers=OTHER)).status == 404
    body = {"input_file_id": batch.input_file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    assert (await client.post("/v1/batches", json=body, headers=OTHER)).status == 404


async def test_a_gateway_that_requires_keys_makes_a_missing_tenant_a_401(store):
    client = await make_client(store, ServiceConfig(require_tenant=True, tenant_header="x-tenant"))
    try:
        anthropic = await client.get("/v1/messages/batches")
        assert anthropic.status == 401
        anthropic_error(await anthropic.json(), "authentication_error")
        openai = await client.get("/v1/batches")
        assert openai.status == 401
        assert openai_error(await openai.json())["code"] == "invalid_api_key"
        ok = await client.get("/v1/batches", headers={"x-tenant": "acme"})
        assert ok.status == 200
        assert (await client.get("/healthz")).status == 200
    finally:
        await client.close()


async def test_the_gateways_anonymous_value_is_the_anonymous_tenant(store):
    """The decision hop always sets the header, to "-" for a caller without a key: that is the
    anonymous tenant (a 401 when keys are required), never a tenant named "-"."""
    client = await make_client(store, ServiceConfig())
    try:
        mine = await anthropic_batch(client)
        anonymous = await anthropic_batch(client, 1, headers={"x-ccr-tenant": "-"})
        listed = await (await client.get("/v1/messages/batches")).json()  # no header: anonymous too
        assert [batch["id"] for batch in listed["data"]] == [anonymous.id]
        assert mine.id not in [batch["id"] for batch in listed["data"]]
    finally:
        await client.close()
    strict = await make_client(store, ServiceConfig(require_tenant=True))
    try:
        assert (await strict.get("/v1/batches", headers={"x-ccr-tenant": "-"})).status == 401
    finally:
        await strict.close()


async def test_the_gateways_request_id_comes_back_under_both_names(client):
    response = await client.get("/v1/messages/batches/msgbatch_x", headers={**TENANT, "x-request-id": "rid-1"})
    assert response.headers["request-id"] == response.headers["x-request-id"] == "rid-1"
    assert (await response.json())["request_id"] == "rid-1"


async def test_healthz_names_the_store(client):
    response = await client.get("/healthz")
    assert await response.json() == {"status": "ok", "store": "memory"}


# --- what the gateway and the client tell the service beyond the APIs ----------------------------


async def test_a_batch_keeps_the_key_that_created_it_for_its_workers(client, store):
    anthropic = await anthropic_batch(client, headers={**TENANT, "x-ccr-key": "abcdefgh"})
    openai = await openai_batch(client, jsonl_file(2), headers={**TENANT, "x-ccr-key": "ijklmnop"})
    anonymous = await anthropic_batch(client, headers={**TENANT, "x-ccr-key": "-"})
    assert (await store.get_batch(anthropic.id)).owner_key == "abcdefgh"
    assert (await store.get_batch(openai.id)).owner_key == "ijklmnop"
    assert (await store.get_batch(anonymous.id)).owner_key == ""


async def test_a_client_picks_the_interactive_lane_with_a_header_and_a_bad_lane_is_a_400(client, store):
    default = await anthropic_batch(client)
    urgent = await anthropic_batch(client, headers={**TENANT, "x-batch-lane": "interactive"})
    file_batch = await openai_batch(client, jsonl_file(1), headers={**TENANT, "x-batch-lane": "Interactive"})
    assert (await store.get_batch(default.id)).lane == "batch"
    assert (await store.get_batch(urgent.id)).lane == "interactive"
    assert (await store.get_batch(file_batch.id)).lane == "interactive"
    refused = await client.post(
        "/v1/messages/batches", json=anthropic_body(1), headers={**TENANT, "x-batch-lane": "fast"}
    )
    assert refused.status == 400
    assert "x-batch-lane" in anthropic_error(await refused.json(), "invalid_request_error")
