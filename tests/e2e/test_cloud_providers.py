"""Bedrock and Vertex as providers through the real gateway: in fallback chains, in the usage log,
refusing the gateway's credentials, and Gemini on Vertex.

One gateway (`ccr-gateway up`, one worker), the fake provider checking Vertex's token and Bedrock's
SigV4 (fake_provider.sigv4) on every test.

- Chains (control_plane.resources.attempt_credentials) start at a provider nobody listens for
  (connect refused: Envoy's router tries the next priority) and continue to a Bedrock provider (a
  local "Bedrock" that checks SigV4 with botocore, tests/e2e/bedrock_support.py), to Claude or
  Gemini on Vertex, and, the other way round, from a dead Bedrock provider to the fake Anthropic
  one. What a provider receives says whose credentials the attempt carried: a valid signature, the
  control plane's token, nothing left over from the attempt before (no SigV4 header, no internal
  header, no client key).
- A Bedrock stream is AWS event-stream frames, which Envoy's usage filters cannot read: ext_proc
  hands the usage it read to Envoy's usage log (extproc.processor), so the tokens are counted.
- Bedrock refusing the gateway's signature (a key rotated elsewhere, a clock too far off) reaches
  the client as a 502 that says so, not a 401 that would blame its own key.
- Gemini on Vertex (``publisher: google``): Gemini's generateContent under Vertex's path and token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.e2e.bedrock_support import CREDENTIALS, REGION, FakeBedrock, FakeBedrockInvoke, serving
from tests.e2e.gateway import FakeProvider, Gateway, base_policy, environment, free_port, settled, wait_until

VERTEX_TOKEN = "ya29.e2e-chain-token"
TOKEN_VAR = "CCR_TEST_CHAIN_VERTEX_TOKEN"
CLIENT_KEY = "sk-ant-chain-client"
BEDROCK_ID = "anthropic.claude-sonnet-4-5-20250929-v1:0"
VERTEX_ID = "claude-sonnet-4-5@20250929"
FAKE_BEDROCK_ID = "anthropic.claude-haiku-4-5-20251001-v1:0"
GEMINI_ID = "gemini-2.5-flash"
GEMINI_MODELS = "/v1/projects/chain-project/locations/us-central1/publishers/google/models"
USER = [{"role": "user", "content": "Hello through a chain"}]


def chain_policy(listener_port: int, fake: FakeProvider, bedrock_port: int) -> dict:
    policy = base_policy(listener_port, fake)
    dead = f"http://127.0.0.1:{free_port()}"
    policy["providers"] += [
        {
            "name": "dead",
            "api": "anthropic",
            "base_url": dead,
            "models": ["claude-dead-b", "claude-dead-v", "claude-dead-g"],
        },
        {
            "name": "bedrock",
            "api": "bedrock",
            "base_url": f"http://127.0.0.1:{bedrock_port}",
            "region": REGION,
            "credentials": "env",
            "models": [{"name": "claude-bedrock", "id": BEDROCK_ID}],
        },
        {
            "name": "bedrock-dead",
            "api": "bedrock",
            "base_url": dead,
            "region": REGION,
            "credentials": "env",
            "models": [{"name": "claude-bedrock-dead", "id": BEDROCK_ID}],
        },
        {
            "name": "fake-bedrock",
            "api": "bedrock",
            "base_url": fake.url,
            "region": REGION,
            "credentials": "env",
            "models": [{"name": "claude-fake-bedrock", "id": FAKE_BEDROCK_ID}],
        },
        {
            "name": "vertex-gemini",
            "api": "vertex",
            "publisher": "google",
            "project": "chain-project",
            "region": "us-central1",
            "base_url": fake.url,
            "credentials": f"env:{TOKEN_VAR}",
            "models": [{"name": "gemini-on-vertex", "id": GEMINI_ID}, {"name": "gemini-fallback", "id": GEMINI_ID}],
        },
        {
            "name": "vertex",
            "api": "vertex",
            "project": "chain-project",
            "region": "us-east5",
            "base_url": fake.url,
            "credentials": f"env:{TOKEN_VAR}",
            "models": [{"name": "claude-vertex", "id": VERTEX_ID}],
        },
    ]
    policy["fallback"] = {
        "dead,claude-dead-b": ["bedrock,claude-bedrock"],
        "dead,claude-dead-v": ["vertex,claude-vertex"],
        "bedrock-dead,claude-bedrock-dead": ["fake-anthropic,claude-sonnet-4-5"],
        "dead,claude-dead-g": ["vertex-gemini,gemini-fallback"],
    }
    return policy


@pytest.fixture(scope="module")
def gw(workdir: Path, fake: FakeProvider) -> Iterator[Gateway]:
    # Envoy's AWS credentials (credentials: env) and the control plane's token, never a client's.
    with environment({**CREDENTIALS, TOKEN_VAR: VERTEX_TOKEN}), serving(FakeBedrockInvoke) as bedrock_port:
        gateway = Gateway.start(workdir, chain_policy(free_port(), fake, bedrock_port), name="chains", workers=1)
        yield gateway
        gateway.stop()
        assert gateway.process.returncode == 0, gateway.log()[-4000:]


@pytest.fixture(autouse=True)
def checking_fake(fake: FakeProvider) -> Iterator[None]:
    """The fake checks Vertex's token and Bedrock's signature (after conftest's per-test reset)."""
    fake.configure(vertex_token=VERTEX_TOKEN, aws_credentials=",".join([*CREDENTIALS.values(), REGION]))
    yield
    fake.configure(reset=True)


@pytest.fixture
def claude(gw: Gateway) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0)
    yield client
    client.close()


def _leftovers(headers: dict[str, str]) -> list[str]:
    """Headers no provider should get from an attempt: internal ones and the client's key."""
    return [name for name in headers if name.startswith("x-ccr-") or CLIENT_KEY in headers[name]]


def test_a_chain_falls_back_to_bedrock_with_a_signature_botocore_accepts(claude: anthropic.Anthropic) -> None:
    FakeBedrock.seen.clear()
    message = claude.messages.create(model="claude-dead-b", max_tokens=64, messages=USER)
    assert message.content[0].text == "signed and verified"  # type: ignore[union-attr]
    (seen,) = FakeBedrock.seen
    assert seen["problem"] is None
    assert seen["path"].startswith("/model/anthropic.claude-sonnet-4-5-20250929-v1")
    assert _leftovers(seen["headers"]) == [] and "x-api-key" not in seen["headers"]


def test_a_chain_falls_back_to_vertex_with_the_control_planes_token(
    claude: anthropic.Anthropic, fake: FakeProvider
) -> None:
    fake.clear()
    message = claude.messages.create(model="claude-dead-v", max_tokens=64, messages=USER)
    assert f"Hello from fake-vertex model {VERTEX_ID}" in message.content[0].text  # type: ignore[union-attr]
    (sent,) = [r for r in fake.requests() if r["method"] == "POST"]
    assert sent["path"].endswith(f"/models/{VERTEX_ID}:rawPredict")
    assert sent["headers"]["authorization"] == f"Bearer {VERTEX_TOKEN}"
    assert _leftovers(sent["headers"]) == []


def test_after_a_signed_attempt_the_next_provider_gets_no_aws_header(
    claude: anthropic.Anthropic, fake: FakeProvider
) -> None:
    """The attempts share one header map: the dead Bedrock attempt's signature must not travel on."""
    fake.clear()
    message = claude.messages.create(model="claude-bedrock-dead", max_tokens=64, messages=USER)
    assert "Hello from fake-anthropic model fake-sonnet" in message.content[0].text  # type: ignore[union-attr]
    (sent,) = [r for r in fake.requests() if r["method"] == "POST"]
    assert sent["path"] == "/v1/messages"
    assert [name for name in sent["headers"] if name.startswith("x-amz-")] == []
    assert not sent["headers"].get("authorization", "").startswith("AWS4-HMAC-SHA256")
    assert sent["headers"]["x-api-key"] == "sk-ant-provider-key"
    assert _leftovers(sent["headers"]) == []


def test_a_bedrock_stream_is_counted_from_its_event_stream(claude: anthropic.Anthropic, gw: Gateway) -> None:
    def counted() -> dict[str, float]:
        return {
            kind: gw.extproc_metric("ccr_tokens_total", provider="fake-bedrock", model=FAKE_BEDROCK_ID, kind=kind)
            for kind in ("input", "output")
        }

    before = settled(counted)
    with claude.messages.stream(model="claude-fake-bedrock", max_tokens=64, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "Hello from fake-anthropic" in text and final.usage.output_tokens > 0
    wait_until(lambda: counted()["output"] > before["output"], 10, "the stream's tokens in ccr_tokens_total")
    after = counted()
    assert after["input"] - before["input"] == final.usage.input_tokens
    assert after["output"] - before["output"] == final.usage.output_tokens


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"aws_credentials": "AKIDEXAMPLE,a-rotated-secret,session-token-example," + REGION}, "does not match"),
        ({"aws_clock_offset_s": 20 * 60}, "Signature expired"),
    ],
    ids=["credentials-refused", "clock-skew"],
)
def test_bedrock_refusing_the_gateways_signature_is_a_clear_502_at_once(
    claude: anthropic.Anthropic, fake: FakeProvider, settings: dict, said: str
) -> None:
    """A key rotated at AWS but not here, or this host's clock 20 minutes off: the client is told
    at once, in its format, that the provider refused the gateway's credentials."""
    fake.configure(**settings)
    started = time.monotonic()
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude.messages.create(model="claude-fake-bedrock", max_tokens=64, messages=USER)
    assert time.monotonic() - started < 10
    error = caught.value
    assert error.status_code == 502
    assert isinstance(error.body, dict) and error.body["error"]["type"] == "api_error"
    message = error.body["error"]["message"]
    assert message.startswith("Bedrock refused the gateway's AWS credentials") and said in message


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_on_vertex_is_reached_with_the_control_planes_token(
    claude: anthropic.Anthropic, fake: FakeProvider, stream: bool
) -> None:
    fake.clear()
    ask = {"model": "gemini-on-vertex", "max_tokens": 64, "messages": USER}
    if stream:
        with claude.messages.stream(**ask) as answer:  # type: ignore[arg-type]
            text = "".join(answer.text_stream)
    else:
        text = claude.messages.create(**ask).content[0].text  # type: ignore[arg-type,union-attr]
    assert f"Hello from fake-gemini model {GEMINI_ID}" in text
    (sent,) = [r for r in fake.requests() if r["method"] == "POST"]
    verb = "streamGenerateContent" if stream else "generateContent"
    assert sent["path"] == f"{GEMINI_MODELS}/{GEMINI_ID}:{verb}"
    assert sent["headers"]["authorization"] == f"Bearer {VERTEX_TOKEN}" and "x-goog-api-key" not in sent["headers"]
    assert "contents" in sent["body"] and _leftovers(sent["headers"]) == []


def test_a_chain_falls_back_to_gemini_on_vertex_with_the_token(claude: anthropic.Anthropic, fake: FakeProvider) -> None:
    fake.clear()
    message = claude.messages.create(model="claude-dead-g", max_tokens=64, messages=USER)
    assert f"Hello from fake-gemini model {GEMINI_ID}" in message.content[0].text  # type: ignore[union-attr]
    (sent,) = [r for r in fake.requests() if r["method"] == "POST"]
    assert sent["path"] == f"{GEMINI_MODELS}/{GEMINI_ID}:generateContent"
    assert sent["headers"]["authorization"] == f"Bearer {VERTEX_TOKEN}"
