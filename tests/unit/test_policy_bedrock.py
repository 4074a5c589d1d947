"""A ``bedrock`` provider in the policy (control_plane.policy.bedrock) on its way to the workers'
routing table: its region (written, or read from the standard host), no key, and no key header
sent by ext_proc (Envoy signs its requests with SigV4)."""

from __future__ import annotations

import pytest

from ccr.v1 import policy_pb2
from control_plane.policy import PolicyError, load_policy
from control_plane.policy.bedrock import bedrock_region, region_in_host
from extproc.routing_table import auth_headers, compile_policy
from extproc.translate.base import Api

MODEL_ID = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"


def provider(fields: str, base_url: str = "https://bedrock-runtime.us-east-1.amazonaws.com") -> str:
    return (
        "providers:\n"
        f'  - {{name: aws, api: bedrock, base_url: "{base_url}", {fields}'
        f'models: [{{name: claude-sonnet-4-5, id: "{MODEL_ID}"}}]}}\n'
    )


def test_a_bedrock_provider_reads_its_region_from_the_standard_host() -> None:
    policy = load_policy(provider(""))
    [spec] = policy.providers
    assert (spec.api, spec.region, spec.host, spec.base_path) == ("bedrock", "us-east-1", spec.host, "")
    assert spec.models[0].id == MODEL_ID
    message = policy.to_proto("1")
    assert message.providers[0].api == policy_pb2.API_BEDROCK
    table = compile_policy(message, environ={})
    route = table.route("claude-sonnet-4-5")
    assert route is not None
    assert route.provider.api is Api.BEDROCK
    assert route.target.model == MODEL_ID
    assert route.provider.headers == ()  # no key header: Envoy signs
    assert route.provider.unavailable is None


def test_a_bedrock_provider_elsewhere_names_its_region() -> None:
    [spec] = load_policy(provider("region: eu-central-1, ", "http://127.0.0.1:9100")).providers
    assert spec.region == "eu-central-1"
    [fips] = load_policy(provider("", "https://bedrock-runtime-fips.us-gov-west-1.amazonaws.com")).providers
    assert fips.region == "us-gov-west-1"


@pytest.mark.parametrize(
    ("fields", "base_url", "path", "words"),
    [
        ("", "http://127.0.0.1:9100", "providers[0].region", "required"),
        ("region: Europe, ", "http://127.0.0.1:9100", "providers[0].region", "not an AWS region"),
        ("region: us-west-2, ", "https://bedrock-runtime.us-east-1.amazonaws.com", "providers[0].region", "differs"),
        (
            "api_key_env: AWS_KEY, ",
            "https://bedrock-runtime.us-east-1.amazonaws.com",
            "providers[0].api_key_env",
            "no key",
        ),
        (
            "",
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/x/invoke",
            "providers[0].base_url",
            "write it without /model/x/invoke: https://bedrock-runtime.us-east-1.amazonaws.com",
        ),
    ],
)
def test_a_bad_bedrock_provider_is_refused_at_its_field(fields: str, base_url: str, path: str, words: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(provider(fields, base_url))
    problems = [p for p in caught.value.problems if p.path == path]
    assert problems, caught.value.problems
    assert words in problems[0].message


def test_region_is_refused_on_other_providers() -> None:
    text = (
        "providers:\n"
        '  - {name: ant, api: anthropic, base_url: "https://api.anthropic.com", region: us-east-1, '
        "api_key_env: K, models: [claude]}\n"
    )
    with pytest.raises(PolicyError):
        load_policy(text)


def test_region_helpers() -> None:
    assert region_in_host("bedrock-runtime.ap-southeast-2.amazonaws.com") == "ap-southeast-2"
    assert region_in_host("bedrock-runtime.cn-north-1.amazonaws.com.cn") == "cn-north-1"
    assert region_in_host("bedrock.example.com") == ""
    assert bedrock_region("proxy.internal", None)[1] is not None
    assert bedrock_region("proxy.internal", "us-east-2") == ("us-east-2", None)


def test_no_key_header_is_ever_made_for_bedrock() -> None:
    assert auth_headers(Api.BEDROCK, "anything") == ()
