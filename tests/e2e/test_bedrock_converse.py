"""Bedrock's non-Anthropic models through the real gateway: Converse and ConverseStream.

One gateway (`ccr-gateway up`, one worker) with a Bedrock provider on the fake provider (`credentials:
env`, the fake checking Envoy's SigV4 signature on every test), serving Amazon Nova Pro
(``amazon.nova-pro-v1:0``). Such a model takes no Anthropic body: the gateway speaks Converse to it
(extproc.translate.bedrock_converse), and the fake answers in Converse's shapes
(fake_provider.converse_api: "Hello from fake-converse model <id>: ..."). Checked: the Anthropic SDK
buffered and streaming, a tool call and its result, the OpenAI SDK reaching the same model through
the Anthropic hub, and the tokens counted in ``ccr_tokens_total``: a buffered answer's by Envoy's
usage filters (control_plane.resources.usage_capture knows Converse's ``usage.inputTokens``), a
ConverseStream's by ext_proc (its event-stream frames are binary: ext_proc hands Envoy the usage it
read).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from tests.e2e.bedrock_support import CREDENTIALS, REGION
from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port, settled, wait_until

MODEL_ID = "amazon.nova-pro-v1:0"
PROVIDER = "bedrock-converse"
HELLO = f"Hello from fake-converse model {MODEL_ID}: "
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def gw(workdir: Path, fake: FakeProvider) -> Iterator[Gateway]:
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)  # Envoy's (credentials: env), never a client's
    policy = base_policy(free_port(), fake)
    policy["providers"].append(
        {
            "name": PROVIDER,
            "api": "bedrock",
            "base_url": fake.url,
            "region": REGION,
            "credentials": "env",
            "models": [{"name": "nova-pro", "id": MODEL_ID}],
        }
    )
    try:
        gateway = Gateway.start(workdir, policy, name="converse", workers=1)
        yield gateway
        gateway.stop()
        assert gateway.process.returncode == 0, gateway.log()[-4000:]
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(autouse=True)
def checking_fake(fake: FakeProvider) -> Iterator[None]:
    """The fake checks Bedrock's signature (after conftest's per-test reset)."""
    fake.configure(aws_credentials=",".join([*CREDENTIALS.values(), REGION]))
    yield
    fake.configure(reset=True)


@pytest.fixture
def claude(gw: Gateway) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=gw.url, api_key="sk-ant-converse-client", max_retries=0)
    yield client
    client.close()


@pytest.fixture
def gpt(gw: Gateway) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-converse-client", max_retries=0)
    yield client
    client.close()


def converse_requests(fake: FakeProvider) -> list[dict]:
    return [r for r in fake.requests() if r["method"] == "POST" and r["path"].startswith("/model/")]


def counted(gw: Gateway) -> dict[str, float]:
    return {
        kind: gw.extproc_metric("ccr_tokens_total", provider=PROVIDER, model=MODEL_ID, kind=kind)
        for kind in ("input", "output")
    }


def test_a_nova_model_is_asked_through_converse_with_a_valid_signature(
    claude: anthropic.Anthropic, fake: FakeProvider
) -> None:
    message = claude.messages.create(
        model="nova-pro", max_tokens=64, system="be brief", messages=[{"role": "user", "content": "Hello Nova"}]
    )
    assert message.content[0].text == HELLO + "Hello Nova"  # type: ignore[union-attr]
    assert message.model == MODEL_ID and message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    (sent,) = converse_requests(fake)
    assert sent["path"] == f"/model/{MODEL_ID}/converse"
    assert sent["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 ")  # the fake checked it
    assert "x-api-key" not in sent["headers"]
    assert sent["body"]["system"] == [{"text": "be brief"}]
    assert sent["body"]["messages"] == [{"role": "user", "content": [{"text": "Hello Nova"}]}]
    assert sent["body"]["inferenceConfig"] == {"maxTokens": 64}


def test_a_buffered_converse_answer_is_counted(claude: anthropic.Anthropic, gw: Gateway) -> None:
    before = settled(lambda: counted(gw))
    message = claude.messages.create(model="nova-pro", max_tokens=64, messages=[{"role": "user", "content": "Count"}])
    wait_until(lambda: counted(gw)["output"] > before["output"], 10, "the answer's tokens in ccr_tokens_total")
    after = counted(gw)
    assert after["input"] - before["input"] == message.usage.input_tokens
    assert after["output"] - before["output"] == message.usage.output_tokens


def test_a_converse_stream_reaches_the_client_as_anthropic_events_and_is_counted(
    claude: anthropic.Anthropic, fake: FakeProvider, gw: Gateway
) -> None:
    before = settled(lambda: counted(gw))
    with claude.messages.stream(
        model="nova-pro", max_tokens=64, messages=[{"role": "user", "content": "Stream please"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == HELLO + "Stream please"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    (sent,) = converse_requests(fake)
    assert sent["path"] == f"/model/{MODEL_ID}/converse-stream"
    wait_until(lambda: counted(gw)["output"] > before["output"], 10, "the stream's tokens in ccr_tokens_total")
    after = counted(gw)
    assert after["input"] - before["input"] == final.usage.input_tokens
    assert after["output"] - before["output"] == final.usage.output_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_round_trip(claude: anthropic.Anthropic, fake: FakeProvider, stream: bool) -> None:
    question = {"role": "user", "content": 'Weather? [fake-tool get_weather {"city": "Oslo"}]'}
    request = {"model": "nova-pro", "max_tokens": 200, "tools": [WEATHER]}
    if stream:
        with claude.messages.stream(**request, messages=[question]) as events:  # type: ignore[arg-type]
            first = events.get_final_message()
    else:
        first = claude.messages.create(**request, messages=[question])  # type: ignore[arg-type]
    assert first.stop_reason == "tool_use"
    [call] = [block for block in first.content if block.type == "tool_use"]
    assert call.name == "get_weather" and call.input == {"city": "Oslo"}
    answer = {"type": "tool_result", "tool_use_id": call.id, "content": "snow, -3 C"}
    history = [question, {"role": "assistant", "content": first.content}, {"role": "user", "content": [answer]}]
    second = claude.messages.create(**request, messages=history)  # type: ignore[arg-type]
    assert second.content[0].text == "Tool result: snow, -3 C"  # type: ignore[union-attr]
    sent = converse_requests(fake)[-1]["body"]
    assert sent["toolConfig"]["tools"][0]["toolSpec"]["name"] == "get_weather"
    assert sent["messages"][1]["content"] == [
        {"toolUse": {"toolUseId": call.id, "name": "get_weather", "input": {"city": "Oslo"}}}
    ]
    result = {"toolUseId": call.id, "content": [{"text": "snow, -3 C"}]}
    assert sent["messages"][2]["content"] == [{"toolResult": result}]


def test_the_openai_sdk_reaches_the_same_model(gpt: openai.OpenAI, fake: FakeProvider) -> None:
    completion = gpt.chat.completions.create(
        model="nova-pro", max_tokens=64, messages=[{"role": "user", "content": "Hello from OpenAI"}]
    )
    assert completion.choices[0].message.content == HELLO + "Hello from OpenAI"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    chunks = list(
        gpt.chat.completions.create(
            model="nova-pro",
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Stream from OpenAI"}],
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == HELLO + "Stream from OpenAI"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert [r["path"].rsplit("/", 1)[1] for r in converse_requests(fake)] == ["converse", "converse-stream"]


def test_a_throttled_converse_call_is_the_clients_429(claude: anthropic.Anthropic, fake: FakeProvider) -> None:
    fake.configure(status=429, fail_count=1)
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude.messages.create(model="nova-pro", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 429
    assert isinstance(caught.value.body, dict) and caught.value.body["error"]["type"] == "rate_limit_error"
