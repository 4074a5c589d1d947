"""listener.per_ip_limits: the policy section (control_plane.policy.edge_limits) and Envoy's local
rate limit filter built from it (control_plane.resources.edge_limits), checked by Envoy itself."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import pytest
from envoy.extensions.filters.http.local_ratelimit.v3.local_rate_limit_pb2 import LocalRateLimit
from google.protobuf import json_format

from ccr.v1.contract import EXTPROC_CLUSTER
from control_plane.policy import load_policy
from control_plane.policy.edge_limits import DEFAULT, PerIpLimits, Window
from control_plane.policy.yaml_check import PolicyError
from control_plane.resources import edge, edge_limits
from control_plane.resources import gateway as resources
from tests.unit.cp_helpers import policy, provider

BASE = 'providers: [{name: a, api: anthropic, base_url: "http://10.0.0.1:1", models: [m]}]\n'


def _limits(section: str) -> PerIpLimits | None:
    return load_policy(f"listener:\n  per_ip_limits: {section}\n" + BASE).per_ip_limits


def _limited(limits: PerIpLimits | None = DEFAULT, decision: str = "hop"):
    return dataclasses.replace(policy(provider("a")), per_ip_limits=limits, decision_path=decision)


def _hcm(gateway_policy) -> dict:
    listener = resources.listener(gateway_policy)
    return json_format.MessageToDict(
        listener.filter_chains[0].filters[0].typed_config, preserving_proto_field_name=True
    )


def _routes() -> dict:
    table = resources.route_configuration(None, resources.provider_routes(provider("a"), True), True)
    return json_format.MessageToDict(table, preserving_proto_field_name=True)


# --- the policy section ---------------------------------------------------------------------------


def test_the_limits_are_off_unless_the_policy_turns_them_on():
    assert load_policy(BASE).per_ip_limits is None
    assert _limits("false") is None


def test_true_gives_the_seeds_nginx_and_kong_numbers():
    assert _limits("true") == DEFAULT
    assert [(w.name, w.seconds, w.rate, w.burst) for w in DEFAULT.windows] == [
        ("second", 1, 100, 200),
        ("minute", 60, 1000, 1000),
        ("hour", 3600, 50_000, 50_000),
    ]
    assert DEFAULT.trusted_proxies == 0


@pytest.mark.parametrize(
    "section, windows, trusted",
    [
        ("{per_second: 5, burst: 5}", [Window("second", 1, 5, 5)], 0),
        ("{per_second: 10}", [Window("second", 1, 10, 10)], 0),  # no burst: the bucket holds one second
        ("{per_second: 10, burst: false}", [Window("second", 1, 10, 10)], 0),
        (
            "{per_second: false, per_minute: 60, per_hour: 600, trusted_proxies: 1}",
            [Window("minute", 60, 60, 60), Window("hour", 3600, 600, 600)],
            1,
        ),
    ],
)
def test_a_mapping_keeps_only_the_buckets_it_writes(section, windows, trusted):
    assert _limits(section) == PerIpLimits(tuple(windows), trusted)


@pytest.mark.parametrize(
    "section, where, words",
    [
        ('"yes"', "2:18: listener.per_ip_limits", "must be true, false or a mapping"),
        ("{}", "2:18: listener.per_ip_limits", "sets no limit"),
        ("{per_second: false}", "2:18: listener.per_ip_limits", "sets no limit"),
        ("{per_second: 0}", "2:31: listener.per_ip_limits.per_second", "between 1 and"),
        ("{per_minute: fast}", "2:31: listener.per_ip_limits.per_minute", "positive integer or false"),
        ("{per_hour: true}", "2:29: listener.per_ip_limits.per_hour", "positive integer or false"),
        ("{burst: 20, per_minute: 5}", "2:26: listener.per_ip_limits.burst", "set per_second"),
        ("{per_second: false, burst: 20}", "listener.per_ip_limits.burst", "set per_second"),
        ("{per_second: 5, trusted_proxies: 99}", "listener.per_ip_limits.trusted_proxies", "between 0 and 16"),
        ("{per_secnd: 5}", "2:19: listener.per_ip_limits.per_secnd", "did you mean 'per_second'"),
    ],
)
def test_mistakes_are_reported_with_their_line(section, where, words):
    with pytest.raises(PolicyError) as caught:
        _limits(section)
    text = str(caught.value)
    assert where in text and words in text, text


def test_every_problem_of_the_section_is_reported_at_once():
    with pytest.raises(PolicyError) as caught:
        _limits("{per_second: -1, per_hour: x, trusted_proxies: -2}")
    assert len(caught.value.problems) == 3


@pytest.mark.parametrize(
    "limits, seconds",
    [
        (DEFAULT, 1),  # every default bucket gives a token back within a second
        (PerIpLimits((Window("second", 1, 5, 5),)), 1),
        (PerIpLimits((Window("second", 1, 5, 5), Window("hour", 3600, 10, 10))), 360),
        (PerIpLimits((Window("minute", 60, 7, 7),)), 9),
    ],
)
def test_retry_after_is_the_slowest_buckets_time_per_request(limits, seconds):
    assert limits.retry_after_seconds == seconds


# --- the Envoy resources --------------------------------------------------------------------------


def test_the_filter_is_envoys_local_rate_limit_with_one_bucket_per_address_and_window():
    typed = edge_limits.rate_limit_filter(DEFAULT)["typed_config"]
    assert typed["@type"].endswith("local_ratelimit.v3.LocalRateLimit")
    config = resources.parse_resource(LocalRateLimit(), {k: v for k, v in typed.items() if k != "@type"})
    assert not config.HasField("token_bucket")  # no shared bucket: only the per-address ones
    assert config.always_consume_default_token_bucket.value is False
    assert config.max_dynamic_descriptors.value == edge_limits.MAX_TRACKED_CLIENTS
    assert [(d.entries[0].value, d.entries[1].key, d.entries[1].value) for d in config.descriptors] == [
        ("second", edge_limits.ADDRESS_KEY, ""),  # an empty value: a bucket per distinct address
        ("minute", edge_limits.ADDRESS_KEY, ""),
        ("hour", edge_limits.ADDRESS_KEY, ""),
    ]
    second = config.descriptors[0].token_bucket
    assert (second.max_tokens, second.tokens_per_fill.value, second.fill_interval.seconds) == (200, 100, 1)
    hour = config.descriptors[2].token_bucket
    assert (hour.max_tokens, hour.tokens_per_fill.value, hour.fill_interval.seconds) == (50_000, 50_000, 3600)
    for rate_limit, descriptor in zip(config.rate_limits, config.descriptors, strict=True):
        window, address = rate_limit.actions
        assert window.generic_key.descriptor_value == descriptor.entries[0].value
        assert address.masked_remote_address.v6_prefix_mask_len.value == edge_limits.IPV6_PREFIX
    headers = {h.header.key: h.header.value for h in config.response_headers_to_add}
    assert headers == {"retry-after": "1"}
    assert config.enable_x_ratelimit_headers == 1  # DRAFT_VERSION_03


@pytest.mark.parametrize("decision", ["hop", "ext_proc"])
def test_the_filter_runs_right_after_cors_and_before_any_decision(decision):
    names = [f["name"] for f in _hcm(_limited(decision=decision))["http_filters"]]
    limit = names.index(edge_limits.RATE_LIMIT_FILTER)
    assert names[limit - 1] == edge.CORS_FILTER  # preflights are answered before they could count
    decide = names.index("envoy.filters.http.lua" if decision == "hop" else "envoy.filters.http.ext_proc")
    assert limit < decide and all(limit < i for i, n in enumerate(names) if n.startswith("ccr.decompress_"))


def test_without_limits_the_listener_is_as_before():
    hcm = _hcm(_limited(None))
    assert edge_limits.RATE_LIMIT_FILTER not in [f["name"] for f in hcm["http_filters"]]
    # The client's address is the connection's (listener.hardening's default), no proxy trusted.
    assert hcm["use_remote_address"] is True and hcm.get("xff_num_trusted_hops", 0) == 0


@pytest.mark.parametrize("trusted", [0, 2])
def test_the_client_address_is_the_peer_or_the_trusted_hop_of_xff_never_the_clients_claim(trusted):
    hcm = _hcm(_limited(dataclasses.replace(DEFAULT, trusted_proxies=trusted)))
    assert hcm["use_remote_address"] is True  # else Envoy believes the client's own X-Forwarded-For
    assert hcm.get("xff_num_trusted_hops", 0) == trusted
    assert hcm["skip_xff_append"] is True and hcm["preserve_external_request_id"] is True
    vhost = _routes()["virtual_hosts"][0]
    assert set(edge_limits.CLIENT_ADDRESS_HEADERS) <= set(vhost["request_headers_to_remove"])


def test_health_is_never_limited():
    health = _routes()["virtual_hosts"][0]["routes"][0]
    assert health["match"]["path"] == edge.HEALTH_PATH
    assert health["typed_per_filter_config"][edge_limits.RATE_LIMIT_FILTER]["disabled"] is True
    assert health["typed_per_filter_config"]["envoy.filters.http.lua"]["disabled"]  # the edge's own stay


def test_the_refusal_is_worded_for_the_client_in_its_apis_format():
    known, message = edge.local_reply_messages(1024)
    assert "'local_rate_limited'" in known and "per-IP limit" in message
    mappers = _hcm(_limited())["local_reply_config"]["mappers"]
    # The first OpenAI-shaped body that is not the missing-provider-key 503 (a status of its own).
    openai = next(m for m in mappers if "error" in m["body_format_override"]["json_format"] and "status_code" not in m)
    error = openai["body_format_override"]["json_format"]["error"]
    assert "response.code == 429 ? 'requests'" in error["type"]
    assert "response.code == 429 ? 'rate_limit_exceeded'" in error["code"]


@pytest.mark.skipif(shutil.which("envoy") is None, reason="needs the envoy binary")
@pytest.mark.parametrize("limits", [DEFAULT, PerIpLimits((Window("second", 1, 5, 5),), trusted_proxies=1)])
def test_envoy_accepts_the_listener_and_routes(tmp_path, limits):
    """The whole listener and route table, in a static bootstrap (routes inline instead of RDS),
    through ``envoy --mode validate``: the filter's fields exist in this Envoy and make sense to it."""
    listener = json_format.MessageToDict(resources.listener(_limited(limits)), preserving_proto_field_name=True)
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["rds"]
    hcm["route_config"] = {**_routes(), "validate_clusters": False}
    bootstrap = {"static_resources": {"listeners": [listener], "clusters": [_cluster(EXTPROC_CLUSTER)]}}
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    done = subprocess.run(
        ["envoy", "--mode", "validate", "-c", str(path), "-l", "error"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _cluster(name: str) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": resources.TYPE_PREFIX + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}
                    ]
                }
            ],
        },
    }
