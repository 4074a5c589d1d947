"""A ``vertex`` provider in the policy (control_plane.policy.vertex): project and region required and
checked at their lines, base_url derived from the region, the base path compiled to the
publisher's model collection, no key of any kind."""

from __future__ import annotations

import pytest

from control_plane.policy import load_policy
from control_plane.policy.yaml_check import PolicyError
from extproc.routing_table import compile_policy
from extproc.translate.base import Api


def vertex_policy(fields: str) -> str:
    return f"""
providers:
  - name: vx
    api: vertex
{fields}
    models: [{{name: claude-sonnet-4-5, id: "claude-sonnet-4-5@20250929"}}]
"""


@pytest.mark.parametrize(
    ("region", "host"),
    [
        ("us-east5", "us-east5-aiplatform.googleapis.com"),
        ("europe-west1", "europe-west1-aiplatform.googleapis.com"),
        ("global", "aiplatform.googleapis.com"),
        ("us", "aiplatform.us.rep.googleapis.com"),
    ],
)
def test_the_base_url_follows_from_the_region(region: str, host: str) -> None:
    policy = load_policy(vertex_policy(f"    project: my-project\n    region: {region}"))
    (provider,) = policy.providers
    assert (provider.scheme, provider.host, provider.port) == ("https", host, 443)
    assert provider.base_path == f"/v1/projects/my-project/locations/{region}/publishers/anthropic/models"


def test_a_base_url_of_its_own_keeps_its_path_before_the_model_collection() -> None:
    fields = "    project: my-project\n    region: us-east5\n    base_url: http://127.0.0.1:9100/vertex"
    (provider,) = load_policy(vertex_policy(fields)).providers
    assert (provider.host, provider.port) == ("127.0.0.1", 9100)
    assert provider.base_path == "/vertex/v1/projects/my-project/locations/us-east5/publishers/anthropic/models"


def test_a_vertex_provider_compiles_to_the_vertex_api_with_no_key_header() -> None:
    policy = load_policy(vertex_policy("    project: my-project\n    region: global\n    forward_count_tokens: true"))
    table = compile_policy(policy.to_proto("1"), environ={})
    provider = table.providers["vx"]
    assert provider.api is Api.VERTEX
    assert provider.forward_count_tokens
    assert provider.headers == ()  # Envoy injects the OAuth token; ext_proc sends no credential
    assert provider.base_path.endswith("/locations/global/publishers/anthropic/models")


def problems(fields: str) -> str:
    with pytest.raises(PolicyError) as refused:
        load_policy(vertex_policy(fields))
    return str(refused.value)


def test_project_and_region_are_required() -> None:
    text = problems("    base_url: https://us-east5-aiplatform.googleapis.com")
    assert "providers[0].project: is required for a vertex provider" in text
    assert "providers[0].region: is required for a vertex provider" in text


def test_a_bad_project_and_region_are_named_at_their_lines() -> None:
    text = problems("    project: My_Project\n    region: us_east5")
    assert "<policy>:5:14: providers[0].project: 'My_Project' is not a Google Cloud project id" in text
    assert "<policy>:6:13: providers[0].region: 'us_east5' is not a Vertex AI region" in text


@pytest.mark.parametrize("field", ["api_key_env: VERTEX_KEY", 'api_key: "vault:secret/data/x#key"'])
def test_a_vertex_provider_takes_no_key(field: str) -> None:
    text = problems(f"    project: my-project\n    region: global\n    {field}")
    assert "a vertex provider takes no key" in text


@pytest.mark.parametrize(
    "url", ["https://us-east5-aiplatform.googleapis.com/v1", "https://x.example/proxy/projects/p/locations/l"]
)
def test_a_base_url_holding_the_path_the_gateway_appends_is_refused(url: str) -> None:
    text = problems(f"    project: my-project\n    region: us-east5\n    base_url: {url}")
    assert "providers[0].base_url: Vertex requests go to base_url + /v1/projects/PROJECT" in text


def test_project_and_region_belong_to_vertex_providers_only() -> None:
    text = """
providers:
  - {name: ant, api: anthropic, base_url: "https://api.anthropic.com", project: p-123456, region: us-east5,
     models: [claude-sonnet-4-5]}
"""
    with pytest.raises(PolicyError) as refused:
        load_policy(text)
    assert "providers[0].project: only a vertex provider (api: vertex) takes it" in str(refused.value)
    assert "providers[0].region: only a vertex provider (api: vertex) takes it" in str(refused.value)


def test_an_unknown_api_names_vertex_among_the_choices() -> None:
    text = "providers:\n  - {name: x, api: vertexai, base_url: 'https://x', models: [m]}\n"
    with pytest.raises(PolicyError) as refused:
        load_policy(text)
    assert "vertex" in str(refused.value).split("must be one of", 1)[1]


# --- Gemini on Vertex (publisher: google) -----------------------------------------------------------


def test_gemini_on_vertex_is_a_gemini_provider_to_ext_proc_with_the_token_from_envoy() -> None:
    fields = "    project: my-project\n    region: us-central1\n    publisher: google"
    policy = load_policy(vertex_policy(fields).replace('id: "claude-sonnet-4-5@20250929"', "id: gemini-2.5-pro"))
    (spec,) = policy.providers
    assert spec.base_path == "/v1/projects/my-project/locations/us-central1/publishers/google"
    assert policy.envoy_injected_keys == {"vx"}  # the OAuth token, as for Claude on Vertex
    table = compile_policy(policy.to_proto("1"), environ={})
    provider = table.providers["vx"]
    assert provider.api is Api.GEMINI  # Gemini's generateContent: {base_path}/models/{model}:...
    assert provider.headers == () and provider.credentials_by_envoy  # no x-goog-api-key: Envoy's token
    assert provider.unavailable is None


def test_a_publisher_is_anthropic_or_google_named_at_its_line() -> None:
    text = problems("    project: my-project\n    region: global\n    publisher: meta")
    assert "<policy>:7:16: providers[0].publisher: must be anthropic (Claude, rawPredict) or google" in text


def test_gemini_on_vertex_does_not_forward_count_tokens() -> None:
    text = problems(
        "    project: my-project\n    region: global\n    publisher: google\n    forward_count_tokens: true"
    )
    assert "providers[0].forward_count_tokens: Gemini on Vertex counts no tokens for the gateway yet" in text


def test_a_publisher_belongs_to_vertex_providers_only() -> None:
    text = "providers:\n  - {name: x, api: gemini, base_url: 'https://x', publisher: google, models: [m]}\n"
    with pytest.raises(PolicyError) as refused:
        load_policy(text)
    assert "providers[0].publisher: only a vertex provider (api: vertex) takes it" in str(refused.value)
