"""Per-provider resilience: the policy's `resilience:` section and the cluster parts built from it.

Every cluster here goes through resources.parse_resource (json_format into Envoy's Cluster proto),
so a field Envoy does not know fails the test that builds it."""

from __future__ import annotations

import textwrap

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import UpstreamTlsContext
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions

from control_plane.policy import GatewayPolicy, load_policy
from control_plane.policy.resilience import HealthCheck, Http2, OutlierDetection, Resilience, RetryBudget, TlsSettings
from control_plane.policy.yaml_check import PolicyError
from control_plane.resources import gateway as resources
from control_plane.resources import resilience
from control_plane.resources.chains import chain_cluster

PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def policy_with(resilience_yaml: str = "", base_url: str = "https://api.example.com/v1") -> GatewayPolicy:
    section = (
        "    resilience:\n" + textwrap.indent(textwrap.dedent(resilience_yaml), "      ") if resilience_yaml else ""
    )
    return load_policy(
        f"providers:\n  - name: a\n    api: openai\n    base_url: {base_url}\n    models: [m]\n" + section
    )


def settings(resilience_yaml: str = "", base_url: str = "https://api.example.com/v1") -> Resilience:
    return policy_with(resilience_yaml, base_url).providers[0].resilience


def problems(resilience_yaml: str, base_url: str = "https://api.example.com/v1") -> list[str]:
    with pytest.raises(PolicyError) as caught:
        policy_with(resilience_yaml, base_url)
    return [str(p) for p in caught.value.problems]


def protocol_options(cluster: Cluster) -> HttpProtocolOptions:
    options = HttpProtocolOptions()
    assert cluster.typed_extension_protocol_options[PROTOCOL_OPTIONS].Unpack(options)
    return options


def tls_context(transport_socket) -> UpstreamTlsContext:
    context = UpstreamTlsContext()
    assert transport_socket.typed_config.Unpack(context)
    return context


# --- the policy section --------------------------------------------------------------------------


def test_a_provider_without_resilience_gets_the_saas_defaults():
    got = settings()
    assert got == Resilience()
    assert (got.max_connections, got.max_pending_requests, got.max_requests, got.max_retries) == (1024, 1024, 1024, 3)
    assert got.retry_budget == RetryBudget(budget_percent=20.0, min_retry_concurrency=3)
    assert got.outlier_detection == OutlierDetection(5, 3, 10_000, 30_000, 100)
    assert got.health_check is None  # active checks are for self-hosted pools only
    assert (got.connect_timeout_ms, got.idle_timeout_ms, got.http2) == (5_000, 60_000, Http2.AUTO)
    assert got.tls == TlsSettings()


def test_every_setting_is_read():
    got = settings(
        """
        max_connections: 10
        max_pending_requests: 1
        max_requests: 20
        max_retries: 1
        retry_budget: {budget_percent: 12.5, min_retry_concurrency: 2}
        outlier_detection:
          consecutive_5xx: 2
          consecutive_gateway_failure: 1
          interval: 500ms
          base_ejection_time: 2m
          max_ejection_percent: 50
        health_check:
          path: /v1/models
          interval: 1.5s
          timeout: 250ms
          unhealthy_threshold: 2
          healthy_threshold: 2
          expected_statuses: [204, 200, 200]
        connect_timeout: 1.5m
        idle_timeout: 0s
        http2: true
        tls: {sni: internal.example.com, ca_file: /etc/ccr/ca.pem}
        """
    )
    assert got == Resilience(
        max_connections=10,
        max_pending_requests=1,
        max_requests=20,
        max_retries=1,
        retry_budget=RetryBudget(12.5, 2),
        outlier_detection=OutlierDetection(2, 1, 500, 120_000, 50),
        health_check=HealthCheck("/v1/models", 1_500, 250, 2, 2, (200, 204)),
        connect_timeout_ms=90_000,
        idle_timeout_ms=0,
        http2=Http2.ALWAYS,
        tls=TlsSettings(sni="internal.example.com", ca_file="/etc/ccr/ca.pem"),
    )


def test_a_partly_written_section_keeps_the_other_defaults():
    got = settings("outlier_detection: {consecutive_5xx: 2}\nhealth_check: {path: /healthz}")
    assert got.outlier_detection == OutlierDetection(consecutive_5xx=2)
    assert got.health_check == HealthCheck(path="/healthz")


@pytest.mark.parametrize(
    ("written", "section", "expected"),
    [
        ("outlier_detection: false", "outlier_detection", None),
        ("outlier_detection: true", "outlier_detection", OutlierDetection()),
        ("health_check: true", "health_check", HealthCheck()),
        ("health_check: false", "health_check", None),
        ("retry_budget: false", "retry_budget", None),
        ("retry_budget: true", "retry_budget", RetryBudget()),
    ],
)
def test_sections_are_switched_on_with_true_and_off_with_false(written, section, expected):
    assert getattr(settings(written), section) == expected


@pytest.mark.parametrize(("written", "http2"), [("auto", Http2.AUTO), ("true", Http2.ALWAYS), ("false", Http2.NEVER)])
def test_http2_is_auto_true_or_false(written, http2):
    assert settings(f"http2: {written}").http2 is http2


@pytest.mark.parametrize(
    ("written", "ms"), [("500ms", 500), ("10s", 10_000), ("1.5s", 1_500), ("2m", 120_000), ("1h", 3_600_000)]
)
def test_durations_are_written_with_a_unit(written, ms):
    assert settings(f"outlier_detection: {{interval: {written}}}").outlier_detection.interval_ms == ms


def test_a_bad_duration_is_reported_where_it_is_written():
    assert problems("outlier_detection:\n  interval: 10x") == [
        "<policy>:8:19: providers[0].resilience.outlier_detection.interval: '10x' is not a duration"
        " (like 500ms, 10s or 2m)"
    ]


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("connect_timeout: 5", "connect_timeout: must be a duration like 500ms, 10s or 2m, got an integer"),
        ("connect_timeout: 0s", "connect_timeout: must be between 1ms and 10m, got 0s"),
        ("connect_timeout: 0.5ms", "connect_timeout: '0.5ms' is finer than a millisecond"),
        ("idle_timeout: 2d", "idle_timeout: '2d' is not a duration (like 500ms, 10s or 2m)"),
        ("max_requests: 0", "max_requests: must be between 1 and 16777216, got 0"),
        ("max_pending_requests: 0", "max_pending_requests: must be between 1 and 16777216, got 0"),
        ("max_connections: many", "max_connections: must be an integer, got a string"),
        ("max_request: 4", "max_request: unknown field (did you mean 'max_requests'?)"),
        ("retry_budget: {budget_percent: 101}", "retry_budget.budget_percent: must be a number from 0 to 100, got 101"),
        ("outlier_detection: 5", "outlier_detection: must be a mapping, true or false, got an integer"),
        (
            "outlier_detection: {max_ejection_percent: 101}",
            "outlier_detection.max_ejection_percent: must be between 0 and 100, got 101",
        ),
        ("health_check: {path: health}", "health_check.path: 'health' must be a URL path starting with /"),
        ("health_check: {expected_statuses: []}", "health_check.expected_statuses: at least one status is required"),
        ("health_check: {expected_statuses: [200, 42]}", "health_check.expected_statuses[1]: must be between 100"),
        ("http2: h2", "http2: must be auto, true or false, got 'h2'"),
        ("tls: {sni: 'not a host'}", "tls.sni: 'not a host' is not a valid host name"),
        ("tls: {ca_file: certs/ca.pem}", "tls.ca_file: 'certs/ca.pem' must be an absolute path"),
        ("tls: {ca_file: /ca.pem, insecure_skip_verify: true}", "tls.insecure_skip_verify: contradicts ca_file"),
        ("resilience_typo: 1", "resilience_typo: unknown field"),
    ],
)
def test_invalid_settings_are_reported_with_their_path(written, message):
    found = problems(written)
    assert len(found) == 1, found
    assert f"providers[0].resilience.{message}" in found[0]


def test_tls_settings_need_an_https_provider():
    assert problems("tls: {sni: x.example.com}", base_url="http://127.0.0.1:9100") == [
        "<policy>:7:12: providers[0].resilience.tls: only an https:// base_url uses TLS"
    ]


def test_every_problem_of_the_section_is_reported_at_once():
    found = problems("max_requests: -1\noutlier_detection: {interval: soon, consecutive_5xx: 0}\nhttp2: yes please")
    assert [p.split(": ", 2)[1] for p in found] == [
        "providers[0].resilience.max_requests",
        "providers[0].resilience.outlier_detection.interval",
        "providers[0].resilience.outlier_detection.consecutive_5xx",
        "providers[0].resilience.http2",
    ]


# --- builders ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ms", "text"), [(5_000, "5s"), (500, "0.5s"), (1_250, "1.25s"), (1, "0.001s"), (0, "0s")])
def test_durations_are_written_for_envoy_in_seconds(ms, text):
    assert resilience.duration(ms) == text


def test_a_default_provider_cluster_has_circuit_breakers_and_outlier_detection():
    cluster = resources.provider_cluster(policy_with().providers[0])
    (threshold,) = cluster.circuit_breakers.thresholds
    assert (
        threshold.max_connections.value,
        threshold.max_pending_requests.value,
        threshold.max_requests.value,
        threshold.max_retries.value,
    ) == (1024, 1024, 1024, 3)
    assert threshold.retry_budget.budget_percent.value == 20.0
    assert threshold.retry_budget.min_retry_concurrency.value == 3
    assert threshold.track_remaining
    detection = cluster.outlier_detection
    assert (detection.consecutive_5xx.value, detection.consecutive_gateway_failure.value) == (5, 3)
    # Envoy enforces no gateway-failure ejection unless told to.
    assert detection.enforcing_consecutive_gateway_failure.value == 100
    assert (detection.interval.seconds, detection.base_ejection_time.seconds) == (10, 30)
    assert detection.max_ejection_percent.value == 100
    assert not cluster.health_checks
    assert cluster.connect_timeout.seconds == 5
    assert protocol_options(cluster).common_http_protocol_options.idle_timeout.seconds == 60


def test_a_provider_cluster_keeps_envoys_panic_threshold_so_a_lone_ejected_host_still_gets_requests():
    cluster = resources.provider_cluster(policy_with().providers[0])
    assert not cluster.common_lb_config.HasField("healthy_panic_threshold")  # Envoy's 50 %


def test_outlier_detection_and_retry_budget_can_be_switched_off():
    cluster = resources.provider_cluster(policy_with("outlier_detection: false\nretry_budget: false").providers[0])
    assert not cluster.HasField("outlier_detection")
    assert not cluster.circuit_breakers.thresholds[0].HasField("retry_budget")
    assert cluster.circuit_breakers.thresholds[0].max_retries.value == 3


def test_a_health_checked_pool_is_checked_over_http_with_its_own_host_header():
    provider = policy_with(
        "health_check: {path: /health, interval: 5s, timeout: 1s, expected_statuses: [200, 204]}",
        base_url="http://10.0.0.7:8000/v1",
    ).providers[0]
    cluster = resources.provider_cluster(provider)
    (check,) = cluster.health_checks
    assert (check.interval.seconds, check.timeout.seconds) == (5, 1)
    assert (check.unhealthy_threshold.value, check.healthy_threshold.value) == (3, 1)
    assert check.http_health_check.path == "/health"
    assert check.http_health_check.host == "10.0.0.7"
    assert [(r.start, r.end) for r in check.http_health_check.expected_statuses] == [(200, 201), (204, 205)]


@pytest.mark.parametrize(
    ("http2", "base_url", "config", "alpn"),
    [
        ("auto", "https://api.example.com", "auto_config", ["h2", "http/1.1"]),
        ("auto", "http://127.0.0.1:9100", "explicit_http_config.http_protocol_options", None),
        ("true", "https://api.example.com", "explicit_http_config.http2_protocol_options", ["h2"]),
        ("true", "http://127.0.0.1:9100", "explicit_http_config.http2_protocol_options", None),
        ("false", "https://api.example.com", "explicit_http_config.http_protocol_options", ["http/1.1"]),
    ],
)
def test_http2_picks_the_upstream_protocol_and_the_alpn_offer(http2, base_url, config, alpn):
    cluster = resources.provider_cluster(policy_with(f"http2: {http2}", base_url=base_url).providers[0])
    options = protocol_options(cluster)
    first, _, second = config.partition(".")
    assert options.HasField(first)
    if second:
        assert getattr(options, first).HasField(second)
    if alpn is None:
        assert not cluster.HasField("transport_socket")
    else:
        assert list(tls_context(cluster.transport_socket).common_tls_context.alpn_protocols) == alpn


def test_tls_settings_override_sni_ca_and_verification():
    cluster = resources.provider_cluster(
        policy_with("tls: {sni: gw.internal, ca_file: /etc/ccr/ca.pem}", base_url="https://10.1.2.3").providers[0]
    )
    context = tls_context(cluster.transport_socket)
    assert context.sni == "gw.internal"
    validation = context.common_tls_context.validation_context
    assert validation.trusted_ca.filename == "/etc/ccr/ca.pem"
    assert validation.match_typed_subject_alt_names[0].matcher.exact == "gw.internal"

    insecure = resources.provider_cluster(policy_with("tls: {insecure_skip_verify: true}").providers[0])
    context = tls_context(insecure.transport_socket)
    assert context.sni == "api.example.com"
    assert not context.common_tls_context.HasField("validation_context")


def test_a_client_certificate_is_presented_to_a_provider_that_asks_for_one():
    provider = policy_with("tls: {client_cert: /etc/ccr/gw.pem, client_key: /etc/ccr/gw.key}").providers[0]
    certificates = tls_context(resources.provider_cluster(provider).transport_socket).common_tls_context
    (pair,) = certificates.tls_certificates
    assert (pair.certificate_chain.filename, pair.private_key.filename) == ("/etc/ccr/gw.pem", "/etc/ccr/gw.key")
    assert certificates.validation_context.trusted_ca.filename  # still verified
    assert problems("tls: {client_cert: /etc/ccr/gw.pem}") == [
        "<policy>:7:12: providers[0].resilience.tls: client_key is required with client_cert"
    ]
    assert problems("tls: {client_cert: gw.pem, client_key: /k}") == [
        "<policy>:7:26: providers[0].resilience.tls.client_cert: 'gw.pem' must be an absolute path"
    ]


def test_cluster_serialization_is_deterministic_with_every_setting():
    provider = policy_with(
        "health_check: {expected_statuses: [503, 200, 204]}\ntls: {sni: a.example.com}\nretry_budget: {budget_percent: 5}"
    ).providers[0]
    first = resources.provider_cluster(provider).SerializeToString(deterministic=True)
    assert all(resources.provider_cluster(provider).SerializeToString(deterministic=True) == first for _ in range(5))


# --- fallback chains -----------------------------------------------------------------------------

CHAIN_POLICY = """
providers:
  - name: local
    api: openai
    base_url: http://127.0.0.1:8000/v1
    models: [llama]
    resilience: {primary}
  - name: saas
    api: anthropic
    base_url: https://api.anthropic.com
    models: [claude]
    resilience: {fallback}
  - name: other
    api: openai
    base_url: https://api.openai.com/v1
    models: [gpt]
    resilience: {third}
fallback:
  local,llama: {chain}
"""


def chain(primary="{}", fallback="{}", third="{}", chain='["saas,claude"]') -> Cluster:
    gateway = load_policy(CHAIN_POLICY.format(primary=primary, fallback=fallback, third=third, chain=chain))
    (spec,) = gateway.routing.fallbacks
    return chain_cluster(spec, {p.name: p for p in gateway.providers})


def test_a_chain_cluster_has_no_panic_mode_so_an_ejected_primary_is_skipped():
    assert chain().common_lb_config.healthy_panic_threshold.value == 0.0


def test_a_chain_cluster_takes_limits_and_outlier_detection_from_its_primary():
    cluster = chain(
        primary="{max_requests: 7, outlier_detection: {consecutive_5xx: 2}, connect_timeout: 2s, idle_timeout: 30s}",
        fallback="{max_requests: 99, outlier_detection: false}",
    )
    assert cluster.circuit_breakers.thresholds[0].max_requests.value == 7
    assert cluster.outlier_detection.consecutive_5xx.value == 2
    assert cluster.connect_timeout.seconds == 2
    assert protocol_options(cluster).common_http_protocol_options.idle_timeout.seconds == 30
    assert not chain(primary="{outlier_detection: false}").HasField("outlier_detection")


@pytest.mark.parametrize(("providers", "cap"), [(2, 50), (3, 67)])
def test_a_chain_never_ejects_all_its_providers(providers, cap):
    then = '["saas,claude"]' if providers == 2 else '["saas,claude", "other,gpt"]'
    assert chain(chain=then).outlier_detection.max_ejection_percent.value == cap
    # A lower setting of the primary's is kept.
    assert (
        chain(
            primary="{outlier_detection: {max_ejection_percent: 10}}", chain=then
        ).outlier_detection.max_ejection_percent.value
        == 10
    )


@pytest.mark.parametrize("hosts", range(1, 9))
def test_the_ejection_cap_allows_exactly_all_hosts_but_one_under_envoys_rule(hosts):
    cap = resilience.chain_ejection_cap(hosts, 100)
    ejected = 0
    # outlier_detection_impl.cc: eject while 100 * (ejected + 1) / hosts <= max_ejection_percent.
    while ejected < hosts and 100.0 * (ejected + 1) / hosts <= cap:
        ejected += 1
    assert ejected == hosts - 1


def test_a_chain_checks_health_only_when_all_its_providers_are_checked_alike():
    same = "{health_check: {path: /health}}"
    cluster = chain(primary=same, fallback=same)
    (check,) = cluster.health_checks
    assert check.http_health_check.path == "/health"
    assert not check.http_health_check.host  # per endpoint instead:
    hostnames = [e.lb_endpoints[0].endpoint.health_check_config.hostname for e in cluster.load_assignment.endpoints]
    assert hostnames == ["127.0.0.1", "api.anthropic.com"]
    assert not chain(primary=same).health_checks


def test_each_chain_member_keeps_its_own_tls_settings():
    cluster = chain(
        fallback="{tls: {sni: proxy.example.com}}",
        third="{tls: {insecure_skip_verify: true}}",
        chain='["saas,claude", "other,gpt"]',
    )
    contexts = {m.name: tls_context(m.transport_socket) for m in cluster.transport_socket_matches}
    assert contexts["tls-saas"].sni == "proxy.example.com"
    assert list(contexts["tls-saas"].common_tls_context.alpn_protocols) == ["http/1.1"]
    assert not contexts["tls-other"].common_tls_context.HasField("validation_context")


def test_each_provider_gets_a_route_with_its_own_timeouts():
    from control_plane.policy import load_policy

    policy = load_policy(
        "providers:\n"
        "  - {name: slow, api: openai, base_url: 'http://10.0.0.1/v1', models: [m1],"
        " resilience: {request_timeout: 20m, stream_idle_timeout: 90s}}\n"
        "  - {name: fast, api: openai, base_url: 'http://10.0.0.2/v1', models: [m2]}\n"
    )
    routes = {p.name: resources.provider_route(p) for p in policy.providers}
    assert routes["slow"]["route"]["timeout"] == "1200s" and routes["slow"]["route"]["idle_timeout"] == "90s"
    assert routes["fast"]["route"]["timeout"] == "600s" and routes["fast"]["route"]["idle_timeout"] == "300s"
    table = resources.route_configuration(None, list(routes.values()))
    health, *provider_routes = table.virtual_hosts[0].routes  # /health first: answered by Envoy itself
    assert health.match.path == "/health"
    assert [r.route.cluster for r in provider_routes[:2]] == ["provider_slow", "provider_fast"]
