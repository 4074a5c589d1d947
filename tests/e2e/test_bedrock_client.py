"""The Anthropic SDK's Bedrock client (``AnthropicBedrock``) and Claude Code in Bedrock mode through
the real gateway, to a Bedrock-format and an Anthropic-format provider.

One gateway per decision path (the hop, the default, and ext_proc): the shared e2e policy plus a
``bedrock`` provider on the fake provider's InvokeModel endpoints (fake_provider.bedrock_api), which
Envoy signs with SigV4 from credentials in its environment (``credentials: env``). The SDK's
Bedrock client calls the gateway's InvokeModel paths (its base URL the gateway, signing with dummy
credentials the gateway ignores, the gateway key as ``x-api-key`` in its default headers) and gets
a JSON Message, or an AWS event-stream it decodes with botocore, whichever provider answered. The
real Claude Code CLI in Bedrock mode (CLAUDE_CODE_USE_BEDROCK, CLAUDE_CODE_SKIP_BEDROCK_AUTH, the
gateway key in ANTHROPIC_CUSTOM_HEADERS) does a text turn and a Bash tool loop to either provider.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.claude_code import scenarios
from tests.claude_code.cli import ClaudeCode, installed_or_skip
from tests.claude_code.scenarios import TOOL_MARKER
from tests.e2e.gateway import FakeProvider, Gateway, base_policy, environment, free_port, wait_until

pytest.importorskip("boto3", reason="the SDK's Bedrock client signs with boto3 (dev extra)")

CLIENT_KEY = "sk-bedrock-sdk-client"
BEDROCK_ID = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
GATEWAY_AWS = {  # the gateway's own AWS credentials, read by Envoy: never the client's
    "AWS_ACCESS_KEY_ID": "AKIDGATEWAYE2E",
    "AWS_SECRET_ACCESS_KEY": "gateway-e2e-secret-access-key",
    "AWS_SESSION_TOKEN": "gateway-e2e-session-token",
}
CLIENT_AWS = {"aws_access_key": "AKIDCLIENTDUMMY", "aws_secret_key": "client-dummy-secret"}
USER = [{"role": "user", "content": "Hello through Bedrock"}]
# (model the client names, what the fake answers with, the provider path it is sent to)
TARGETS = {
    # The fake records the path decoded (":" where the gateway sent "%3A").
    "to-bedrock": (BEDROCK_ID, f"Hello from fake-anthropic model {BEDROCK_ID}", f"/model/{BEDROCK_ID}/invoke"),
    "to-anthropic": ("claude-sonnet-4-5", "Hello from fake-anthropic model fake-sonnet", "/v1/messages"),
}


def bedrock_policy(listener_port: int, fake: FakeProvider, decision: str) -> dict:
    policy = base_policy(listener_port, fake)
    policy["listener"]["decision"] = decision
    policy["providers"].append(
        {
            "name": "fake-bedrock",
            "api": "bedrock",
            "base_url": fake.url,
            "region": "us-east-1",
            "credentials": "env",
            "models": [
                {
                    "name": BEDROCK_ID,
                    "id": BEDROCK_ID,
                    "max_output_tokens": 64000,
                    "capabilities": ["tools", "vision", "thinking"],
                }
            ],
        }
    )
    return policy


@pytest.fixture(scope="module", params=["hop", "ext_proc"])
def gw(request: pytest.FixtureRequest, workdir: Path, fake: FakeProvider) -> Iterator[Gateway]:
    decision = request.param
    with environment(GATEWAY_AWS):  # read by the gateway's Envoy, never by a client
        policy = bedrock_policy(free_port(), fake, decision)
        gateway = Gateway.start(workdir, policy, name=f"bedrock-client-{decision}", workers=1)
        yield gateway
        gateway.stop()
        assert gateway.process.returncode == 0, gateway.log()[-4000:]


@pytest.fixture(autouse=True)
def checking_fake(fake: FakeProvider) -> Iterator[None]:
    """The fake checks every Bedrock request's SigV4 signature against the gateway's credentials
    (fake_provider.sigv4), as Bedrock would: the client's own signature never reaches it."""
    fake.configure(aws_credentials=",".join([*GATEWAY_AWS.values(), "us-east-1"]))
    yield
    fake.configure(reset=True)


@pytest.fixture
def bedrock(gw: Gateway) -> Iterator[anthropic.AnthropicBedrock]:
    client = anthropic.AnthropicBedrock(
        **CLIENT_AWS,
        aws_region="us-east-1",
        base_url=gw.url,
        default_headers={"x-api-key": CLIENT_KEY},
        max_retries=0,
    )
    yield client
    client.close()


def generations(fake: FakeProvider) -> list[dict]:
    return [r for r in fake.requests() if r["method"] == "POST"]


def assert_no_client_credentials(fake: FakeProvider) -> None:
    for sent in fake.requests():
        text = str(sent["headers"])
        assert CLIENT_KEY not in text and CLIENT_AWS["aws_access_key"] not in text


@pytest.mark.parametrize("target", list(TARGETS))
def test_the_bedrock_client_gets_a_message(
    bedrock: anthropic.AnthropicBedrock, fake: FakeProvider, target: str
) -> None:
    model, greeting, path = TARGETS[target]
    message = bedrock.messages.create(model=model, max_tokens=200, messages=USER)
    assert greeting in message.content[0].text  # type: ignore[union-attr]
    (sent,) = generations(fake)
    assert sent["path"] == path
    if target == "to-bedrock":  # signed by Envoy with the gateway's credentials
        assert sent["headers"]["authorization"].startswith(
            f"AWS4-HMAC-SHA256 Credential={GATEWAY_AWS['AWS_ACCESS_KEY_ID']}/"
        )
        assert sent["body"]["anthropic_version"] == "bedrock-2023-05-31" and "model" not in sent["body"]
    else:
        assert sent["headers"]["x-api-key"] == "sk-ant-provider-key"
        assert sent["body"]["model"] == "fake-sonnet" and "anthropic_version" not in sent["body"]
    assert_no_client_credentials(fake)


@pytest.mark.parametrize("target", list(TARGETS))
def test_the_bedrock_client_streams_an_event_stream(
    bedrock: anthropic.AnthropicBedrock, fake: FakeProvider, target: str
) -> None:
    model, greeting, path = TARGETS[target]
    with bedrock.messages.stream(model=model, max_tokens=200, messages=USER) as stream:
        text = stream.get_final_text()
        final = stream.get_final_message()
    assert greeting in text and "Hello through Bedrock" in text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    (sent,) = generations(fake)
    assert sent["path"] == (f"{path}-with-response-stream" if target == "to-bedrock" else path)
    assert_no_client_credentials(fake)


def test_a_bedrock_providers_stream_to_a_bedrock_client_is_counted(
    bedrock: anthropic.AnthropicBedrock, gw: Gateway
) -> None:
    """Its frames go back untouched, and are read on the way: Envoy's usage capture cannot."""

    def counted() -> dict[str, float]:
        return {
            kind: gw.extproc_metric("ccr_tokens_total", provider="fake-bedrock", model=BEDROCK_ID, kind=kind)
            for kind in ("input", "output")
        }

    before = counted()
    with bedrock.messages.stream(model=BEDROCK_ID, max_tokens=200, messages=USER) as stream:
        final = stream.get_final_message()
    wait_until(lambda: counted()["output"] > before["output"], 10, "the stream's tokens in ccr_tokens_total")
    after = counted()
    assert after["input"] - before["input"] == final.usage.input_tokens
    assert after["output"] - before["output"] == final.usage.output_tokens


@pytest.mark.parametrize("target", list(TARGETS))
def test_an_error_reaches_the_bedrock_client_in_bedrocks_shape(
    bedrock: anthropic.AnthropicBedrock, target: str
) -> None:
    model, _, _ = TARGETS[target]
    failing = bedrock.with_options(default_headers={"x-api-key": CLIENT_KEY, "x-fake-status": "429"})
    with pytest.raises(anthropic.RateLimitError) as refused:
        failing.messages.create(model=model, max_tokens=10, messages=USER)
    body = refused.value.body
    assert isinstance(body, dict) and set(body) == {"message"}, body


@pytest.mark.parametrize("target", list(TARGETS))
def test_an_error_in_the_middle_of_a_stream_is_an_exception_the_client_raises(
    bedrock: anthropic.AnthropicBedrock, target: str
) -> None:
    model, _, _ = TARGETS[target]
    failing = bedrock.with_options(default_headers={"x-api-key": CLIENT_KEY, "x-fake-midstream-error": "error"})
    seen: list[str] = []
    streaming = failing.messages.stream(model=model, max_tokens=200, messages=USER)
    with pytest.raises(anthropic.APIStatusError) as failed, streaming as stream:
        seen.extend(event.type for event in stream)
    assert seen[0] == "message_start"  # the stream had begun: the error came in it, as an exception frame
    assert failed.value.body["error"]["type"].endswith("Exception"), failed.value.body  # type: ignore[index]


def test_envoys_own_error_reaches_the_bedrock_client_in_bedrocks_shape(bedrock: anthropic.AnthropicBedrock) -> None:
    """The provider cannot be reached: Envoy answers, in the shape the decision labelled the request with."""
    with pytest.raises(anthropic.APIStatusError) as failed:
        bedrock.messages.create(model="claude-unreachable", max_tokens=10, messages=USER)
    body = failed.value.body
    assert failed.value.status_code == 503
    assert isinstance(body, dict) and set(body) == {"message"} and "could not be reached" in body["message"], body


def test_the_bedrock_client_with_an_api_key_presents_it_as_a_bearer_token(gw: Gateway, fake: FakeProvider) -> None:
    """A Bedrock API key (``api_key=``, or AWS_BEARER_TOKEN_BEDROCK) is sent as ``Authorization:
    Bearer`` instead of a signature: the gateway key goes there as well."""
    client = anthropic.AnthropicBedrock(api_key=CLIENT_KEY, aws_region="us-east-1", base_url=gw.url, max_retries=0)
    try:
        message = client.messages.create(model=BEDROCK_ID, max_tokens=200, messages=USER)
    finally:
        client.close()
    assert BEDROCK_ID in message.content[0].text  # type: ignore[union-attr]
    assert_no_client_credentials(fake)


# --- Claude Code in Bedrock mode ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def claude(tmp_path_factory: pytest.TempPathFactory) -> ClaudeCode:
    return installed_or_skip(tmp_path_factory.mktemp("claude-code-bedrock"))


def bedrock_mode(claude: ClaudeCode, gw: Gateway, model: str, scenario: scenarios.Scenario) -> dict:
    """``claude -p`` with CLAUDE_CODE_USE_BEDROCK against the gateway: no SigV4
    (SKIP_BEDROCK_AUTH), the gateway key as a custom header (Claude Code sends it as it is)."""
    env = {
        "CLAUDE_CODE_USE_BEDROCK": "1",
        "CLAUDE_CODE_SKIP_BEDROCK_AUTH": "1",
        "ANTHROPIC_BEDROCK_BASE_URL": gw.url,
        "AWS_REGION": "us-east-1",
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_CUSTOM_HEADERS": f"x-api-key: {CLIENT_KEY}",
        "ANTHROPIC_API_KEY": "",
    }
    done = claude.run(scenario.prompt, gw.url, env=env)
    assert done.returncode == 0, f"claude exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.json()


@pytest.mark.parametrize("target", list(TARGETS))
def test_claude_code_in_bedrock_mode_answers(claude: ClaudeCode, gw: Gateway, fake: FakeProvider, target: str) -> None:
    model, greeting, path = TARGETS[target]
    result = bedrock_mode(claude, gw, model, scenarios.text())
    assert result["is_error"] is False
    assert result["result"] == f"{greeting}: Say hello to the gateway"
    sent = generations(fake)
    assert sent and all(r["path"].startswith(path) for r in sent)
    assert_no_client_credentials(fake)


@pytest.mark.parametrize("target", list(TARGETS))
def test_claude_code_in_bedrock_mode_runs_a_bash_tool_loop(
    claude: ClaudeCode, gw: Gateway, fake: FakeProvider, target: str
) -> None:
    model, _, path = TARGETS[target]
    result = bedrock_mode(claude, gw, model, scenarios.tool_loop())
    assert result["result"].startswith("Tool result: ") and TOOL_MARKER in result["result"]
    first, second = generations(fake)
    assert first["path"].startswith(path) and second["path"].startswith(path)
    assert second["body"]["messages"][-1]["content"][0]["type"] == "tool_result"
