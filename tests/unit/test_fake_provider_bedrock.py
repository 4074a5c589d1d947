"""The fake provider's Bedrock InvokeModel endpoints (``POST /model/{modelId}/invoke`` and
``/invoke-with-response-stream``), driven by botocore's own ``bedrock-runtime`` client (dummy
credentials, endpoint_url at the fake): its request signing, its event-stream parser and its error
parsing are the real AWS client's, so the framing and the error shapes are checked against them."""

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
from tests.unit.stream_checks import accumulate_anthropic

MODEL_ID = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-5-20250929-v1:0"


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


def body(text: str = "hello there", **extra: Any) -> str:
    request = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }
    return json.dumps(request)


def stream_events(bedrock: Any, model_id: str, request: str) -> list[dict[str, Any]]:
    answer = bedrock.invoke_model_with_response_stream(modelId=model_id, body=request)
    events = []
    for event in answer["body"]:
        events.append(json.loads(event["chunk"]["bytes"]))
    return events


async def test_invoke_model_answers_the_anthropic_message(bedrock: Any, server: tuple[FakeProvider, str]) -> None:
    answer = await asyncio.to_thread(bedrock.invoke_model, modelId=MODEL_ID, body=body())
    assert answer["contentType"] == "application/json"
    message = json.loads(answer["body"].read())
    assert message["type"] == "message" and message["model"] == MODEL_ID
    assert message["content"][0]["text"].endswith("hello there")
    [recorded] = server[0].requests
    assert recorded["path"] == f"/model/{MODEL_ID}/invoke"
    assert recorded["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "x-amz-date" in recorded["headers"]
    assert recorded["body"]["anthropic_version"] == "bedrock-2023-05-31"


async def test_the_stream_is_event_stream_frames_botocore_reads(bedrock: Any, server: tuple[FakeProvider, str]) -> None:
    events = await asyncio.to_thread(stream_events, bedrock, PROFILE_ARN, body(tools=[], anthropic_beta=["x"]))
    types = [event["type"] for event in events]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    message = accumulate_anthropic(events)
    assert message["content"][0]["text"].endswith("hello there")
    metrics = events[-1]["amazon-bedrock-invocationMetrics"]
    assert metrics["outputTokenCount"] == events[-2]["usage"]["output_tokens"]
    assert server[0].requests[-1]["path"] == f"/model/{PROFILE_ARN}/invoke-with-response-stream"


async def test_a_throttled_request_is_botocores_throttling_exception(
    bedrock: Any, server: tuple[FakeProvider, str]
) -> None:
    server[0].config.update({"status": 429})
    with pytest.raises(ClientError) as caught:
        await asyncio.to_thread(bedrock.invoke_model, modelId=MODEL_ID, body=body())
    error = caught.value.response
    assert error["Error"]["Code"] == "ThrottlingException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert "injected HTTP 429" in error["Error"]["Message"]


async def test_a_body_naming_the_model_is_a_validation_exception(bedrock: Any) -> None:
    with pytest.raises(ClientError) as caught:
        await asyncio.to_thread(bedrock.invoke_model, modelId=MODEL_ID, body=body(model="claude"))
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert "extraneous key [model]" in caught.value.response["Error"]["Message"]


async def test_a_midstream_failure_is_a_model_stream_error_exception(bedrock: Any) -> None:
    def midstream_error(request: Any, **_: Any) -> None:
        request.headers["x-fake-midstream-error"] = "error"  # the fake's fault header, sent by botocore

    bedrock.meta.events.register("before-sign.bedrock-runtime.InvokeModelWithResponseStream", midstream_error)
    with pytest.raises(EventStreamError) as caught:
        await asyncio.to_thread(stream_events, bedrock, MODEL_ID, body())
    assert caught.value.response["Error"]["Code"] == "modelStreamErrorException"


@pytest.mark.parametrize(
    ("credentials", "refused"),
    [
        ("AKIDEXAMPLE,wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY,,us-east-1", False),
        ("AKIDEXAMPLE,another-secret,,us-east-1", True),
        ("AKIDEXAMPLE,wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY,,eu-west-1", True),
    ],
    ids=["same-credentials", "other-secret", "other-region"],
)
async def test_with_credentials_the_fake_checks_botocores_signature_as_bedrock_does(
    bedrock: Any, server: tuple[FakeProvider, str], credentials: str, refused: bool
) -> None:
    server[0].config.aws_credentials = credentials
    if not refused:
        answer = await asyncio.to_thread(bedrock.invoke_model, modelId=MODEL_ID, body=body())
        assert json.loads(answer["body"].read())["type"] == "message"
        return
    with pytest.raises(ClientError) as caught:
        await asyncio.to_thread(bedrock.invoke_model, modelId=MODEL_ID, body=body())
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert server[0].requests[-1]["path"] == f"/model/{MODEL_ID}/invoke"  # recorded, though refused
    assert server[0].requests[-1]["headers"]["authorization"].startswith("AWS4-HMAC-SHA256")
