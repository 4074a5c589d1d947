"""The fake provider's Bedrock Converse endpoints (``POST /model/{modelId}/converse`` and
``/converse-stream``), driven by botocore's own ``bedrock-runtime`` client (dummy credentials,
endpoint_url at the fake): its serialisation of Converse requests, its event-stream parser and its
error parsing are the real AWS client's, so the fake's shapes are checked against them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError

from fake_provider.config import FakeConfig
from fake_provider.server import FakeProvider, provider_of, start

MODEL_ID = "amazon.nova-pro-v1:0"
PROFILE_ID = "us.amazon.nova-lite-v1:0"
WEATHER = {
    "toolSpec": {
        "name": "get_weather",
        "description": "The weather in a city",
        "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    }
}


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[tuple[FakeProvider, str]]:
    runner, port = await start(FakeConfig(chunks=3))
    yield provider_of(runner), f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture(autouse=True)
async def fresh_state(server: tuple[FakeProvider, str]) -> None:
    provider, _ = server
    provider.config = provider.defaults.copy()
    provider.requests.clear()


@pytest.fixture
def bedrock(server: tuple[FakeProvider, str]) -> Iterator[Any]:
    client = botocore.session.get_session().create_client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=server[1],
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    yield client
    client.close()


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"text": text}]}]


def stream_events(bedrock: Any, **request: Any) -> list[dict[str, Any]]:
    answer = bedrock.converse_stream(**request)
    return list(answer["stream"])


async def test_converse_answers_with_the_planned_reply(bedrock: Any, server: tuple[FakeProvider, str]) -> None:
    answer = await asyncio.to_thread(
        bedrock.converse,
        modelId=MODEL_ID,
        messages=user("hello there"),
        system=[{"text": "be brief"}],
        inferenceConfig={"maxTokens": 200, "temperature": 0.5},
    )
    assert answer["stopReason"] == "end_turn"
    [block] = answer["output"]["message"]["content"]
    assert block["text"] == f"Hello from fake-converse model {MODEL_ID}: hello there"
    usage = answer["usage"]
    assert usage["inputTokens"] > 0 and usage["outputTokens"] > 0
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    [recorded] = server[0].requests
    assert recorded["path"] == f"/model/{MODEL_ID}/converse"
    assert recorded["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")


async def test_a_tool_call_and_its_result_round_trip(bedrock: Any) -> None:
    tools = {"tools": [WEATHER], "toolChoice": {"auto": {}}}
    first = await asyncio.to_thread(
        bedrock.converse, modelId=MODEL_ID, messages=user("what is the weather?"), toolConfig=tools
    )
    assert first["stopReason"] == "tool_use"
    [use] = [b["toolUse"] for b in first["output"]["message"]["content"] if "toolUse" in b]
    assert use["name"] == "get_weather" and use["input"] == {"city": "Paris"}
    result = {"toolResult": {"toolUseId": use["toolUseId"], "content": [{"json": {"temp": 21}}], "status": "success"}}
    messages = [*user("what is the weather?"), first["output"]["message"], {"role": "user", "content": [result]}]
    second = await asyncio.to_thread(bedrock.converse, modelId=MODEL_ID, messages=messages, toolConfig=tools)
    assert second["stopReason"] == "end_turn"
    assert second["output"]["message"]["content"][0]["text"] == 'Tool result: {"temp":21}'


async def test_the_stream_is_converse_events_botocore_reads(bedrock: Any, server: tuple[FakeProvider, str]) -> None:
    events = await asyncio.to_thread(stream_events, bedrock, modelId=PROFILE_ID, messages=user("hello there"))
    names = [next(iter(event)) for event in events]
    assert names[0] == "messageStart" and names[-2:] == ["messageStop", "metadata"]
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text == f"Hello from fake-converse model {PROFILE_ID}: hello there"
    assert events[-2]["messageStop"]["stopReason"] == "end_turn"
    assert events[-1]["metadata"]["usage"]["outputTokens"] > 0
    assert server[0].requests[-1]["path"] == f"/model/{PROFILE_ID}/converse-stream"


async def test_a_streamed_tool_call_arrives_as_tool_use_start_and_input_deltas(bedrock: Any) -> None:
    events = await asyncio.to_thread(
        stream_events,
        bedrock,
        modelId=MODEL_ID,
        messages=user('use it [fake-tool get_weather {"city": "Oslo"}]'),
        toolConfig={"tools": [WEATHER]},
    )
    [start] = [e["contentBlockStart"] for e in events if "contentBlockStart" in e]
    assert start["start"]["toolUse"]["name"] == "get_weather"
    pieces = [e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events if "contentBlockDelta" in e]
    assert json.loads("".join(pieces)) == {"city": "Oslo"}
    assert events[-2]["messageStop"]["stopReason"] == "tool_use"


@pytest.mark.parametrize(
    ("messages", "tool_config", "said"),
    [
        ([{"role": "assistant", "content": [{"text": "hi"}]}], None, "must start with a user message"),
        ([*user("a"), *user("b")], None, "must alternate"),
        (user(" "), None, "is blank"),
        (
            [{"role": "user", "content": [{"toolResult": {"toolUseId": "t", "content": [{"text": "x"}]}}]}],
            None,
            "toolConfig field must be defined",
        ),
    ],
    ids=["assistant-first", "not-alternating", "blank-text", "tool-result-without-tool-config"],
)
async def test_what_converse_refuses_is_a_validation_exception(
    bedrock: Any, messages: list[dict[str, Any]], tool_config: Any, said: str
) -> None:
    extra = {"toolConfig": tool_config} if tool_config else {}
    with pytest.raises(ClientError) as caught:
        await asyncio.to_thread(bedrock.converse, modelId=MODEL_ID, messages=messages, **extra)
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert said in caught.value.response["Error"]["Message"]


async def test_a_throttled_request_is_botocores_throttling_exception(
    bedrock: Any, server: tuple[FakeProvider, str]
) -> None:
    server[0].config.update({"status": 429})
    with pytest.raises(ClientError) as caught:
        await asyncio.to_thread(bedrock.converse, modelId=MODEL_ID, messages=user("hi"))
    assert caught.value.response["Error"]["Code"] == "ThrottlingException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429


async def test_a_midstream_failure_is_a_model_stream_error_exception(bedrock: Any) -> None:
    def midstream_error(request: Any, **_: Any) -> None:
        request.headers["x-fake-midstream-error"] = "error"  # the fake's fault header, sent by botocore

    bedrock.meta.events.register("before-sign.bedrock-runtime.ConverseStream", midstream_error)
    with pytest.raises(EventStreamError) as caught:
        await asyncio.to_thread(stream_events, bedrock, modelId=MODEL_ID, messages=user("hi"))
    assert caught.value.response["Error"]["Code"] == "modelStreamErrorException"


@pytest.mark.parametrize(("secret", "refused"), [("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", False), ("other", True)])
async def test_with_credentials_the_fake_checks_botocores_signature(
    bedrock: Any, server: tuple[FakeProvider, str], secret: str, refused: bool
) -> None:
    server[0].config.aws_credentials = f"AKIDEXAMPLE,{secret},,us-east-1"
    if not refused:
        answer = await asyncio.to_thread(bedrock.converse, modelId=MODEL_ID, messages=user("hi"))
        assert answer["stopReason"] == "end_turn"
        return
    with pytest.raises(ClientError) as caught:
        await asyncio.to_thread(bedrock.converse, modelId=MODEL_ID, messages=user("hi"))
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"
