"""SigV4 for Bedrock providers (control_plane.resources.aws_signing): the AWS request signing filter
in the provider cluster's upstream filter chain, its credential providers per ``credentials:``, and
the real Envoy accepting the cluster (``envoy --mode validate``)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.extensions.filters.http.aws_request_signing.v3.aws_request_signing_pb2 import AwsRequestSigning
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions
from google.protobuf import json_format

from control_plane.policy.credentials import credentials_problem
from control_plane.resources import aws_signing
from control_plane.resources import gateway as resources
from tests.unit.cp_helpers import provider

OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def bedrock(credentials: str = "", host: str = "bedrock-runtime.eu-west-3.amazonaws.com", **kwargs: object):
    spec = provider("bedrock", api="bedrock", host=host, port=443, scheme="https", **kwargs)  # type: ignore[arg-type]
    return replace(spec, credentials=credentials)


def upstream_filters(cluster: Cluster) -> HttpProtocolOptions:
    options = HttpProtocolOptions()
    assert cluster.typed_extension_protocol_options[OPTIONS].Unpack(options)
    return options


def signing_of(cluster: Cluster) -> AwsRequestSigning:
    signing = AwsRequestSigning()
    assert upstream_filters(cluster).http_filters[0].typed_config.Unpack(signing)
    return signing


def test_bedrock_cluster_signs_in_its_upstream_filter_chain_before_the_codec():
    cluster = resources.provider_cluster(bedrock())
    names = [f.name for f in upstream_filters(cluster).http_filters]
    assert names == [aws_signing.SIGNING_FILTER, "envoy.filters.http.upstream_codec"]


def test_signing_filter_golden_shape():
    signing = json_format.MessageToDict(
        signing_of(resources.provider_cluster(bedrock())), preserving_proto_field_name=True
    )
    assert signing == {
        "service_name": "bedrock",
        "region": "eu-west-3",
        "host_rewrite": "bedrock-runtime.eu-west-3.amazonaws.com",
        "match_excluded_headers": [
            {"exact": "x-request-id"},
            {"prefix": "x-envoy-"},
            {"prefix": "x-ccr-"},
            {"prefix": "x-forwarded-"},
            {"exact": "x-amzn-trace-id"},
            {"exact": "traceparent"},
            {"exact": "tracestate"},
            {"prefix": "x-b3-"},
            {"exact": "b3"},
            {"exact": "user-agent"},
        ],
    }  # use_unsigned_payload false (the default, so absent): the body is signed


def test_region_field_wins_over_the_host_and_defaults_to_us_east_1():
    class WithRegion:  # the bedrock provider's own field, whoever adds it to ProviderSpec
        api, host, region = "bedrock", "bedrock-runtime.eu-west-3.amazonaws.com", "ap-south-1"

    assert aws_signing.region_of(WithRegion()) == "ap-south-1"  # type: ignore[arg-type]
    assert aws_signing.region_of(bedrock(host="127.0.0.1")) == "us-east-1"


def test_other_providers_are_not_signed():
    cluster = resources.provider_cluster(provider("openai"))
    assert not upstream_filters(cluster).http_filters


@pytest.mark.parametrize(
    ("credentials", "expected"),
    [
        ("", None),
        ("env", {"custom_credential_provider_chain": True, "environment_credential_provider": {}}),
        (
            "profile:prod",
            {"custom_credential_provider_chain": True, "credentials_file_provider": {"profile": "prod"}},
        ),
    ],
)
def test_credentials_choose_envoys_credential_provider(credentials, expected):
    assert aws_signing.credential_provider(credentials, {}) == expected


def test_web_identity_uses_the_role_and_token_file_of_the_environment():
    env = {"AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/gw", "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token"}
    assert aws_signing.credential_provider("web_identity", env) == {
        "custom_credential_provider_chain": True,
        "assume_role_with_web_identity_provider": {
            "web_identity_token_data_source": {"filename": "/var/run/token"},
            "role_arn": "arn:aws:iam::123456789012:role/gw",
        },
    }
    # Without a role here: Envoy's default chain (which tries web identity from its own environment).
    assert aws_signing.credential_provider("web_identity", {}) is None


@pytest.mark.parametrize(
    ("api", "text", "ok"),
    [
        ("bedrock", "env", True),
        ("bedrock", "profile:prod", True),
        ("bedrock", "web_identity", True),
        ("bedrock", "profile:", False),
        ("bedrock", "metadata", False),
        ("vertex", "metadata", True),
        ("vertex", "env:VERTEX_TOKEN", True),
        ("vertex", "service_account:/etc/gcp/key.json", True),
        ("vertex", "service_account:${GOOGLE_APPLICATION_CREDENTIALS}", True),
        ("vertex", "service_account:key.json", False),
        ("vertex", "env", False),
        ("openai", "env", False),
    ],
)
def test_credentials_field_is_checked_per_api(api, text, ok):
    assert (credentials_problem(api, text) is None) is ok


def _validate(tmp_path, clusters: list[Cluster]) -> subprocess.CompletedProcess[str]:
    bootstrap = {
        "static_resources": {
            "clusters": [json_format.MessageToDict(c, preserving_proto_field_name=True) for c in clusters]
        }
    }
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    return subprocess.run(
        ["envoy", "--mode", "validate", "-c", str(path), "-l", "error"], capture_output=True, text=True, timeout=60
    )


def test_envoy_accepts_the_signed_clusters(tmp_path, monkeypatch):
    """Every credentials choice, through the real Envoy 1.40: the filter's fields exist and make
    sense to it as an upstream filter."""
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/gw")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(tmp_path / "token"))
    clusters = [
        resources.provider_cluster(replace(bedrock(c), name=f"b{i}"))
        for i, c in enumerate(["", "env", "profile:prod", "web_identity"])
    ]
    done = _validate(tmp_path, clusters)
    assert done.returncode == 0, done.stdout + done.stderr


CLOUD_POLICY = """
listener: {port: 8080}
providers:
  - name: bedrock
    api: bedrock
    base_url: https://bedrock-runtime.eu-west-3.amazonaws.com
    credentials: profile:prod
    models: [{name: claude, id: "anthropic.claude-sonnet-4-5-20250929-v1:0"}]
  - name: vertex
    api: vertex
    project: my-project-1
    region: us-east5
    credentials: metadata
    models: [{name: claude-v, id: "claude-sonnet-4-5@20250929"}]
"""


def test_a_policys_bedrock_cluster_signs_and_its_vertex_cluster_injects_the_token(tmp_path):
    """From the YAML: Bedrock signed by Envoy (no key anywhere); Vertex's token injected by Envoy
    as Authorization from its SDS secret, as a Vault key would be; both clusters accepted by Envoy."""
    from envoy.extensions.filters.http.credential_injector.v3.credential_injector_pb2 import CredentialInjector
    from envoy.extensions.http.injected_credentials.generic.v3.generic_pb2 import Generic

    from control_plane.policy import load_policy
    from control_plane.resources import provider_keys

    policy = load_policy(CLOUD_POLICY)
    assert policy.envoy_injected_keys == {"vertex"}
    bedrock_spec, vertex_spec = policy.providers
    signing = signing_of(resources.provider_cluster(bedrock_spec, bedrock_spec.name in policy.envoy_injected_keys))
    assert (signing.region, signing.credential_provider.credentials_file_provider.profile) == ("eu-west-3", "prod")
    vertex_cluster = resources.provider_cluster(vertex_spec, True)
    injector, generic = CredentialInjector(), Generic()
    assert upstream_filters(vertex_cluster).http_filters[0].typed_config.Unpack(injector)
    assert injector.credential.typed_config.Unpack(generic)
    assert (generic.header, generic.credential.name) == ("Authorization", "provider_vertex_key")
    assert provider_keys.header_value(vertex_spec, "ya29.t") == "Bearer ya29.t"
    done = _validate(tmp_path, [resources.provider_cluster(bedrock_spec)])  # the vertex one names an ADS secret
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_chain_signs_or_injects_per_attempt_only_for_its_bedrock_and_vertex_members():
    """A chain cluster's upstream filters are shared by its attempts: the composite filter applies
    a member's own signing or injecting filter only to the attempts the rewrite names for it."""
    from envoy.extensions.common.matching.v3.extension_matcher_pb2 import ExtensionWithMatcher
    from envoy.extensions.filters.http.composite.v3.composite_pb2 import ExecuteFilterAction
    from envoy.extensions.filters.http.credential_injector.v3.credential_injector_pb2 import CredentialInjector

    from ccr.v1.contract import ATTEMPT_PROVIDER_HEADER
    from control_plane.policy import load_policy
    from control_plane.resources import attempt_credentials
    from control_plane.resources.chains import ATTEMPT_FILTER, chain_cluster

    text = CLOUD_POLICY.replace("providers:\n", "providers:\n" + DIRECT_PROVIDER) + CHAIN_SECTION
    policy = load_policy(text)
    assert policy.envoy_injected_keys == {"vertex"}  # chained, its token is still Envoy's alone
    (spec,) = policy.routing.fallbacks
    cluster = chain_cluster(spec, {p.name: p for p in policy.providers})
    chain_filters = upstream_filters(cluster).http_filters
    assert [f.name for f in chain_filters] == [
        ATTEMPT_FILTER,
        attempt_credentials.COMPOSITE_FILTER,
        attempt_credentials.DROP_FILTER,
        "envoy.filters.http.upstream_codec",
    ]
    matcher = ExtensionWithMatcher()
    assert chain_filters[1].typed_config.Unpack(matcher)
    tree = matcher.xds_matcher.matcher_tree
    assert tree.input.typed_config.value.endswith(ATTEMPT_PROVIDER_HEADER.encode())
    actions = {name: on_match.action for name, on_match in tree.exact_match_map.map.items()}
    assert set(actions) == {"bedrock", "vertex"}  # the Anthropic member's key is ext_proc's
    signing, injector = AwsRequestSigning(), CredentialInjector()
    bedrock_action, vertex_action = ExecuteFilterAction(), ExecuteFilterAction()
    assert actions["bedrock"].typed_config.Unpack(bedrock_action)
    assert bedrock_action.typed_config.typed_config.Unpack(signing) and signing.region == "eu-west-3"
    assert actions["vertex"].typed_config.Unpack(vertex_action)
    assert vertex_action.typed_config.typed_config.Unpack(injector) and not injector.allow_request_without_credential


def test_a_chain_of_providers_whose_keys_ext_proc_sets_has_no_credential_filters():
    from control_plane.policy import load_policy
    from control_plane.resources.chains import ATTEMPT_FILTER, chain_cluster

    policy = load_policy(
        "listener: {port: 8080}\nproviders:\n"
        + DIRECT_PROVIDER
        + DIRECT_PROVIDER.replace("direct", "other")
        + 'fallback:\n  direct,claude-direct: ["other,claude-other"]\n'
    )
    (spec,) = policy.routing.fallbacks
    names = [f.name for f in upstream_filters(chain_cluster(spec, {p.name: p for p in policy.providers})).http_filters]
    assert names == [ATTEMPT_FILTER, "envoy.filters.http.upstream_codec"]


DIRECT_PROVIDER = """  - name: direct
    api: anthropic
    base_url: https://api.anthropic.com
    api_key_env: ANT_KEY
    models: [claude-direct]
"""
CHAIN_SECTION = 'fallback:\n  direct,claude-direct: ["bedrock,claude", "vertex,claude-v"]\n'
