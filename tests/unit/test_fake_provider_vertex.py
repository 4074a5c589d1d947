"""The fake provider's Vertex AI endpoints (fake_provider.vertex_api), read by the Anthropic SDK's
own Vertex client: rawPredict, streamRawPredict and count-tokens behind a bearer token, refusals
in Google's error shape, every request recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import anthropic
import pytest

from fake_provider.config import FakeConfig
from fake_provider.server import FakeProvider, provider_of, start

TOKEN = "ya29.fake-access-token"
MODEL = "claude-sonnet-4-5@20250929"
USER = [{"role": "user", "content": "Hello Vertex"}]


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[tuple[FakeProvider, str]]:
    runner, port = await start(FakeConfig(chunks=3, vertex_token=TOKEN))
    yield provider_of(runner), f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture(autouse=True)
async def fresh_state(server: tuple[FakeProvider, str]) -> None:
    provider, _ = server
    provider.config = provider.defaults.copy()
    provider.requests.clear()


def vertex_client(base_url: str, token: str = TOKEN) -> anthropic.AsyncAnthropicVertex:
    # An access token given: the SDK asks google-auth for nothing.
    return anthropic.AsyncAnthropicVertex(
        access_token=token, region="us-east5", project_id="my-project", base_url=f"{base_url}/v1", max_retries=0
    )


async def test_the_vertex_sdk_gets_a_message_from_raw_predict(server: tuple[FakeProvider, str]) -> None:
    provider, base_url = server
    message = await vertex_client(base_url).messages.create(model=MODEL, max_tokens=200, messages=USER)
    assert message.content[0].type == "text"
    assert f"fake-vertex model {MODEL}" in message.content[0].text
    assert message.usage.input_tokens > 0
    recorded = provider.requests[-1]
    assert (
        recorded["path"] == f"/v1/projects/my-project/locations/us-east5/publishers/anthropic/models/{MODEL}:rawPredict"
    )
    assert recorded["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert "model" not in recorded["body"] and recorded["body"]["anthropic_version"]


async def test_the_vertex_sdk_streams_from_stream_raw_predict(server: tuple[FakeProvider, str]) -> None:
    provider, base_url = server
    async with vertex_client(base_url).messages.stream(model=MODEL, max_tokens=200, messages=USER) as stream:
        text = await stream.get_final_text()
        final = await stream.get_final_message()
    assert "Hello Vertex" in text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert provider.requests[-1]["path"].endswith(f"/{MODEL}:streamRawPredict")


async def test_the_vertex_sdk_counts_tokens(server: tuple[FakeProvider, str]) -> None:
    provider, base_url = server
    count = await vertex_client(base_url).messages.count_tokens(model=MODEL, messages=USER)
    assert count.input_tokens > 0
    recorded = provider.requests[-1]
    assert recorded["path"].endswith("/models/count-tokens:rawPredict")
    assert recorded["body"]["model"] == MODEL


async def test_a_wrong_token_is_a_401_in_googles_shape_and_recorded(server: tuple[FakeProvider, str]) -> None:
    provider, base_url = server
    with pytest.raises(anthropic.AuthenticationError) as refused:
        await vertex_client(base_url, "ya29.stale").messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert refused.value.body == {
        "error": {
            "code": 401,
            "message": "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            "status": "UNAUTHENTICATED",
        }
    }
    assert provider.requests[-1]["headers"]["authorization"] == "Bearer ya29.stale"


async def test_no_token_at_all_is_a_401(server: tuple[FakeProvider, str]) -> None:
    _, base_url = server
    path = f"/v1/projects/p/locations/global/publishers/anthropic/models/{MODEL}:rawPredict"
    body = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 5, "messages": USER}
    async with aiohttp.ClientSession() as http, http.post(base_url + path, json=body) as response:
        assert response.status == 401
        assert (await response.json())["error"]["status"] == "UNAUTHENTICATED"


async def test_two_tokens_are_taken_while_one_rotates_in(server: tuple[FakeProvider, str]) -> None:
    provider, base_url = server
    provider.config.update({"vertex_token": f"{TOKEN}, ya29.next"})
    for token in (TOKEN, "ya29.next"):
        message = await vertex_client(base_url, token).messages.create(model=MODEL, max_tokens=10, messages=USER)
        assert message.content


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"max_tokens": 5, "messages": USER}, "anthropic_version: Field required"),
        ({"anthropic_version": "vertex-2023-10-16", "model": MODEL, "max_tokens": 5, "messages": USER}, "model: Extra"),
    ],
)
async def test_a_body_vertex_refuses_is_a_400_in_googles_shape(
    server: tuple[FakeProvider, str], body: dict, message: str
) -> None:
    _, base_url = server
    path = f"/v1/projects/p/locations/global/publishers/anthropic/models/{MODEL}:rawPredict"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http, http.post(base_url + path, json=body, headers=headers) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["status"] == "INVALID_ARGUMENT" and error["message"].startswith(message)


async def test_injected_faults_answer_in_googles_shape(server: tuple[FakeProvider, str]) -> None:
    _, base_url = server
    client = vertex_client(base_url).with_options(default_headers={"x-fake-status": "429"})
    with pytest.raises(anthropic.RateLimitError) as refused:
        await client.messages.create(model=MODEL, max_tokens=10, messages=USER)
    assert refused.value.body["error"]["status"] == "RESOURCE_EXHAUSTED"  # type: ignore[index]
