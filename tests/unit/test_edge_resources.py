"""control_plane.resources.edge and its place in the listener and routes: filter order, /health,
CORS, request ids, oversized headers, decompression, and the sentences of Envoy's own errors."""

from __future__ import annotations

import dataclasses
import re

import pytest
from google.protobuf import json_format

from ccr.v1.contract import DECODED_CONTENT_ENCODINGS, ENCODING_HEADER
from control_plane.policy import load_policy
from control_plane.policy.cors import CorsSpec
from control_plane.policy.yaml_check import PolicyError
from control_plane.resources import edge
from control_plane.resources import gateway as resources
from control_plane.resources.decision_hop import lua_source
from tests.unit.cp_helpers import policy, provider

BASE = 'providers: [{name: a, api: anthropic, base_url: "http://10.0.0.1:1", models: [m]}]\n'


def _hcm(gateway_policy) -> dict:
    listener = resources.listener(gateway_policy)
    return json_format.MessageToDict(
        listener.filter_chains[0].filters[0].typed_config, preserving_proto_field_name=True
    )


def _routes(cors: CorsSpec | None = None) -> dict:
    table = resources.route_configuration(None, resources.provider_routes(provider("a"), True), True, cors=cors)
    return json_format.MessageToDict(table, preserving_proto_field_name=True)["virtual_hosts"][0]


@pytest.mark.parametrize("decision", ["hop", "ext_proc"])
def test_the_edge_filters_come_before_any_decision(decision):
    names = [
        f["name"] for f in _hcm(dataclasses.replace(policy(provider("a")), decision_path=decision))["http_filters"]
    ]
    decide = names.index("envoy.filters.http.lua" if decision == "hop" else "envoy.filters.http.ext_proc")
    assert names[0] == "ccr.edge_headers"  # its response half sees every local reply
    assert names.index(edge.CORS_FILTER) < decide
    decompressors = [n for n in names if n.startswith("ccr.decompress_")]
    assert [n.removeprefix("ccr.decompress_") for n in decompressors] == list(DECODED_CONTENT_ENCODINGS)
    assert all(names.index(n) < decide for n in decompressors)


def test_decompressors_work_on_requests_only():
    for config in edge.decompressor_filters():
        typed = config["typed_config"]
        assert typed["response_direction_config"]["common_config"]["enabled"]["default_value"] is False
        assert typed["request_direction_config"]["advertise_accept_encoding"] is False


def test_the_listener_sets_request_ids_and_lets_big_headers_reach_the_decision():
    hcm = _hcm(policy(provider("a")))
    assert hcm["always_set_request_id_in_response"] is True
    # The policy's knob (listener.hardening), above the decision service's own 60 KB limit: a
    # request with big headers is still answered in the client's format by the decision service.
    assert hcm["max_request_headers_kb"] == 128 < edge.CODEC_MAX_REQUEST_HEADERS_KB
    mutations = hcm["http_filters"][0]["typed_config"]["mutations"]
    assert [m["append"]["header"]["key"] for m in mutations["response_mutations"]] == ["request-id"]
    assert mutations["request_mutations"][0] == {"remove": ENCODING_HEADER}  # never the client's own


def test_health_is_the_first_route_and_no_decision_filter_runs_on_it():
    health = _routes()["routes"][0]
    assert health["match"]["path"] == edge.HEALTH_PATH and health["direct_response"]["status"] == 200
    per_filter = health["typed_per_filter_config"]
    assert per_filter["envoy.filters.http.lua"]["disabled"] and per_filter["envoy.filters.http.ext_proc"]["disabled"]


def test_cors_is_configured_only_when_the_policy_asks():
    assert "typed_per_filter_config" not in _routes()
    assert not any(r.get("name") == "cors" for r in _routes()["routes"])
    vhost = _routes(CorsSpec(("https://app.example.com",), max_age_seconds=60))
    cors = vhost["typed_per_filter_config"][edge.CORS_FILTER]
    assert cors["allow_origin_string_match"] == [{"exact": "https://app.example.com"}]
    assert cors["max_age"] == "60" and "request-id" in cors["expose_headers"]
    names = [r.get("name") for r in vhost["routes"]]
    assert names.index("cors") == len(names) - 2  # just before the catch-all: the CORS filter needs a route entry
    wildcard = _routes(CorsSpec(("*",)))["typed_per_filter_config"][edge.CORS_FILTER]
    assert wildcard["allow_origin_string_match"] == [{"prefix": ""}]


def test_envoys_own_errors_get_sentences_naming_the_provider():
    known, message = edge.local_reply_messages(1024)
    assert "connection_failure" in known and "no_healthy_upstream" in known and "ext_proc" in known
    assert message.count("%CEL(") == 3  # before the name, the name, after it: Envoy's CEL cannot concatenate
    assert "'provider \\''" in message and "could not be reached: the connection failed" in message
    assert "larger than the gateway limit of 1024 bytes" in message
    assert ":'" not in message.replace("'provider '", "")  # no message ends in a dangling colon
    mappers = _hcm(policy(provider("a")))["local_reply_config"]["mappers"]
    # A provider key Envoy lacks first (control_plane.resources.provider_keys), then known failures,
    # then Envoy's own text, per client API (and the MCP endpoint's JSON-RPC), then either.
    assert len(mappers) == 23
    bedrock = [m for m in mappers if set(m["body_format_override"]["json_format"]) == {"message"}]
    assert len(bedrock) == 6  # by the decision's label, then by the InvokeModel path
    mcp = [m for m in mappers if "jsonrpc" in m["body_format_override"]["json_format"]]
    assert len(mcp) == 2 and mcp[0]["body_format_override"]["json_format"]["error"]["code"] == -32603


def test_the_lua_filter_hands_the_decoded_encoding_and_the_request_id_to_the_hop():
    source = lua_source()
    assert re.search(r"@[A-Z_]+@", source.replace("@NAMES@", "")) is None  # every placeholder filled
    assert f'local ENCODING_HEADER = "{ENCODING_HEADER}"' in source
    assert 'local REQUEST_ID_HEADER = "x-request-id"' in source


@pytest.mark.parametrize(
    "cors, expected",
    [
        (
            '{allow_origins: ["https://a.example", "https://b.example:8443"]}',
            ("https://a.example", "https://b.example:8443"),
        ),
        ('{allow_origins: ["*"], allow_headers: [Content-Type], max_age: 0}', ("*",)),
    ],
)
def test_a_valid_cors_section_is_read(cors, expected):
    spec = load_policy(f"listener: {{cors: {cors}}}\n" + BASE).cors
    assert spec is not None and spec.allow_origins == expected


@pytest.mark.parametrize(
    "cors, where, words",
    [
        ("{}", "1:18: listener.cors.allow_origins", "is required"),
        ('{allow_origins: ["https://a.example/path"]}', "1:35: listener.cors.allow_origins[0]", "not an origin"),
        ('{allow_origins: ["*", "https://a.example"]}', "1:34: listener.cors.allow_origins", "alone"),
        ('{allow_origins: ["*"], allow_credentials: true}', "listener.cors.allow_credentials", "credentials"),
        ('{allow_origins: ["*"], max_age: 100000}', "listener.cors.max_age", "between 0 and 86400"),
        ('{allow_origins: ["*"], allow_headers: ["bad header"]}', "listener.cors.allow_headers[0]", "header name"),
        ('{allow_origin: ["*"]}', "listener.cors.allow_origin", "did you mean 'allow_origins'"),
    ],
)
def test_cors_mistakes_are_reported_with_their_line(cors, where, words):
    with pytest.raises(PolicyError) as caught:
        load_policy(f"listener: {{cors: {cors}}}\n" + BASE)
    text = str(caught.value)
    assert where in text and words in text, text


def test_what_only_the_gateway_reads_never_reaches_a_provider():
    """The client's verified certificate and the batch worker's item header are removed on every
    route to a provider: its own and a fallback chain's."""
    from ccr.v1.contract import BATCH_HEADERS
    from control_plane.policy import load_policy
    from control_plane.resources.chains import chain_route
    from control_plane.resources.gateway import CLIENT_CERT_HEADER, provider_route

    provider = load_policy("providers:\n  - {name: a, api: openai, base_url: 'http://10.0.0.1/v1', models: [m]}\n")
    for route in (provider_route(provider.providers[0]), chain_route("60s", 2)):
        assert {CLIENT_CERT_HEADER, *BATCH_HEADERS} <= set(route["request_headers_to_remove"])
