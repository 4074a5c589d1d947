"""Stored responses on the decision hop (extproc.hop with extproc.responses_store): a translated
answer kept, read back, continued with previous_response_id, listed, deleted; per tenant and key;
off when the policy says so. A translated stream is kept by ext_proc on the response
(extproc.processor) from its response.completed event."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from envoy.service.ext_proc.v3.external_processor_pb2 import HttpBody, ProcessingRequest
from google.protobuf.struct_pb2 import Struct

from ccr.v1.contract import HOP_CONTEXT_KEY, HOP_STREAM_KEY, METADATA_NAMESPACE
from extproc import hop
from extproc.hop import HopContext
from extproc.processor import STORED_ON_HOP_ONLY, RequestProcessor
from extproc.responses_store import SqliteResponseStore
from extproc.routing_table import ResponsesSettings
from extproc.state import GatewayState
from tests.unit.test_hop import parse
from tests.unit.test_plan import auth_state, presented
from tests.unit.test_processor import headers, response_headers

MODEL = "claude-sonnet-4-5"  # an Anthropic-format provider: the answer is translated
ACME = {"authorization": "Bearer " + presented("validkey")}
ACME_OTHER_KEY = {"authorization": "Bearer " + presented("onerpmxx")}
MESSAGE = {
    "id": "msg_01abc",
    "type": "message",
    "role": "assistant",
    "model": MODEL,
    "content": [{"type": "text", "text": "4"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 5, "output_tokens": 1},
}


@pytest.fixture
async def state(tmp_path):
    gateway = auth_state(False)
    store = SqliteResponseStore(tmp_path / "responses.db")
    gateway.keep_responses(store)
    yield gateway
    await store.close()


async def decide(state: GatewayState, method: str, path: str, client: dict, body: dict | None = None):
    answer = hop.decide(state, method, path, dict(client), orjson.dumps(body) if body is not None else b"")
    if isinstance(answer, hop.Pending):
        answer = await answer.answer
    return parse(answer)


def reply_of(parsed) -> tuple[int, dict]:
    action, ops, payload = parsed
    assert action == "reply", parsed
    return next(int(name) for op, name, _ in ops if op == "status"), orjson.loads(payload)


def label(parsed, name: str) -> str:
    return next(value for op, key, value in parsed[1] if op == "label" and key == name)


async def create(state: GatewayState, client: dict, **fields) -> dict:
    """A Responses request through decide and /respond; the saved halves written."""
    parsed = await decide(state, "POST", "/v1/responses", client, {"model": MODEL, **fields})
    assert parsed[0] == "forward", parsed
    token = label(parsed, HOP_CONTEXT_KEY)
    action, _, body = parse(hop.respond(state, token, 200, "application/json", orjson.dumps(MESSAGE)))
    assert action == "response"
    await state.saver.drain()
    return orjson.loads(body)


async def test_a_stored_response_is_read_continued_listed_and_deleted(state) -> None:
    first = await create(state, ACME, input="What is 2+2?", instructions="Answer in digits.")
    assert first["store"] is True and first["output"][0]["content"][0]["text"] == "4"
    rid = first["id"]

    status, got = reply_of(await decide(state, "GET", f"/v1/responses/{rid}", ACME))
    assert status == 200 and got == first

    parsed = await decide(
        state, "POST", "/v1/responses", ACME, {"model": MODEL, "previous_response_id": rid, "input": "Times 3?"}
    )
    assert parsed[0] == "forward"
    sent = orjson.loads(parsed[2])  # the Anthropic request: the whole conversation
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert "What is 2+2?" in orjson.dumps(sent["messages"][0]).decode()
    assert "Times 3?" in orjson.dumps(sent["messages"][2]).decode()
    assert "system" not in sent  # instructions are not inherited
    keep = HopContext.decode(label(parsed, HOP_CONTEXT_KEY)).keep
    assert keep is not None and keep.previous == rid

    status, page = reply_of(await decide(state, "GET", f"/v1/responses/{rid}/input_items?order=asc", ACME))
    assert status == 200 and page["object"] == "list" and page["has_more"] is False
    assert page["data"] == [{"type": "message", "role": "user", "content": "What is 2+2?"}]

    status, deleted = reply_of(await decide(state, "DELETE", f"/v1/responses/{rid}", ACME))
    assert (status, deleted) == (200, {"id": rid, "object": "response", "deleted": True})
    status, error = reply_of(await decide(state, "GET", f"/v1/responses/{rid}", ACME))
    assert status == 404 and rid in error["error"]["message"]


async def test_a_continued_answer_is_stored_with_the_whole_conversation(state) -> None:
    first = await create(state, ACME, input="What is 2+2?")
    second = await create(state, ACME, input="Times 3?", previous_response_id=first["id"])
    assert second["previous_response_id"] == first["id"]
    # Same provider message id in this test: the newest record of that id is the continued one.
    _, page = reply_of(await decide(state, "GET", f"/v1/responses/{second['id']}/input_items?order=asc", ACME))
    assert [item.get("role") for item in page["data"]] == ["user", "assistant", "user"]


async def test_another_keys_or_tenants_id_answers_404_like_an_unknown_one(state) -> None:
    rid = (await create(state, ACME, input="secret"))["id"]
    unknown = reply_of(await decide(state, "GET", "/v1/responses/resp_nope", ACME))
    for client in (ACME_OTHER_KEY, {}):  # another key of the tenant; an anonymous caller
        status, error = reply_of(await decide(state, "GET", f"/v1/responses/{rid}", client))
        assert status == 404 and error["error"]["type"] == unknown[1]["error"]["type"]
        assert reply_of(await decide(state, "DELETE", f"/v1/responses/{rid}", client))[0] == 404
        parsed = await decide(
            state, "POST", "/v1/responses", client, {"model": MODEL, "previous_response_id": rid, "input": "x"}
        )
        status, error = reply_of(parsed)
        assert status == 400 and error["error"]["message"] == f"previous response '{rid}' not found"
    assert reply_of(await decide(state, "GET", f"/v1/responses/{rid}", ACME))[0] == 200


async def test_store_false_keeps_nothing(state) -> None:
    parsed = await decide(state, "POST", "/v1/responses", ACME, {"model": MODEL, "input": "x", "store": False})
    assert HopContext.decode(label(parsed, HOP_CONTEXT_KEY)).keep is None
    _, _, body = parse(
        hop.respond(state, label(parsed, HOP_CONTEXT_KEY), 200, "application/json", orjson.dumps(MESSAGE))
    )
    assert orjson.loads(body)["store"] is False


async def test_storage_off_in_the_policy_refuses_previous_response_id_and_answers_404(state) -> None:
    rid = (await create(state, ACME, input="x"))["id"]
    assert state.table is not None
    state.table = dataclasses.replace(state.table, responses=ResponsesSettings(store=False))
    parsed = await decide(
        state, "POST", "/v1/responses", ACME, {"model": MODEL, "previous_response_id": rid, "input": "y"}
    )
    status, error = reply_of(parsed)
    assert status == 400 and "stored responses are not enabled" in error["error"]["message"]
    status, error = reply_of(await decide(state, "GET", f"/v1/responses/{rid}", ACME))
    assert status == 404 and "stored responses are not enabled" in error["error"]["message"]
    parsed = await decide(state, "POST", "/v1/responses", ACME, {"model": MODEL, "input": "z"})
    assert HopContext.decode(label(parsed, HOP_CONTEXT_KEY)).keep is None


async def test_a_translated_stream_is_kept_from_its_completed_event(state) -> None:
    parsed = await decide(state, "POST", "/v1/responses", ACME, {"model": MODEL, "input": "hi", "stream": True})
    context = label(parsed, HOP_STREAM_KEY)
    assert HopContext.decode(context).keep is not None
    processor = RequestProcessor(state)
    started = response_headers(200)
    labels = Struct()
    labels.update({HOP_STREAM_KEY: context})
    started.metadata_context.filter_metadata[METADATA_NAMESPACE].CopyFrom(labels)
    processor.handle(started)
    events = [
        ("message_start", {"type": "message_start", "message": {**MESSAGE, "content": [], "stop_reason": None}}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "4"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}},
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    sse = b"".join(b"event: %s\ndata: %s\n\n" % (name.encode(), orjson.dumps(data)) for name, data in events)
    out = b""
    for index in range(0, len(sse), 40):  # split anywhere
        chunk = sse[index : index + 40]
        message = ProcessingRequest(response_body=HttpBody(body=chunk, end_of_stream=index + 40 >= len(sse)))
        out += processor.handle(message).response_body.response.body_mutation.body
    assert b"response.completed" in out
    await state.saver.drain()
    rid = "resp_01abc"
    status, got = reply_of(await decide(state, "GET", f"/v1/responses/{rid}", ACME))
    assert status == 200 and got["output"][0]["content"][0]["text"] == "4" and got["store"] is True


async def test_the_ext_proc_decision_path_answers_501_for_a_stored_response(state) -> None:
    processor = RequestProcessor(state)
    answer = processor.handle(headers("GET", "/v1/responses/resp_1", end_of_stream=True, **ACME))
    assert answer.immediate_response.status.code == 501
    assert orjson.loads(answer.immediate_response.body)["error"]["message"] == STORED_ON_HOP_ONLY


async def test_input_tokens_counts_the_continued_conversation(state) -> None:
    rid = (await create(state, ACME, input="What is 2+2?"))["id"]
    alone = await decide(state, "POST", "/v1/responses/input_tokens", ACME, {"model": "gpt-4o", "input": "Times 3?"})
    continued = await decide(
        state,
        "POST",
        "/v1/responses/input_tokens",
        ACME,
        {"model": "gpt-4o", "input": "Times 3?", "previous_response_id": rid},
    )
    assert reply_of(continued)[1]["input_tokens"] > reply_of(alone)[1]["input_tokens"]
