"""`ccr-gateway doctor`: each check as a pure function of injected probes, and what it prints."""

from __future__ import annotations

import argparse
import dataclasses
import socket
import ssl
import textwrap
import urllib.error
from pathlib import Path

import pytest

from ccr_gateway import doctor
from ccr_gateway.doctor import Check, Outcome, Probes, Reach
from control_plane.policy import ProviderSpec, load_policy

POLICY = textwrap.dedent(
    """\
    listener: {address: 127.0.0.1, port: 8080}
    providers:
      - name: anthropic
        api: anthropic
        base_url: https://api.anthropic.com
        api_key_env: ANTHROPIC_API_KEY
        models: [claude-sonnet-4-5]
      - name: local
        api: openai
        base_url: http://127.0.0.1:9100/v1
        models: [{name: m, pricing: {input: 0, output: 0}}]   # a local model: free, so no price warning
    """
)


def write_policy(tmp_path: Path, text: str = POLICY) -> str:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    return str(path)


def probes(**overrides) -> Probes:
    """Everything fine unless told otherwise; no socket is opened."""
    values = {
        "environ": {"ANTHROPIC_API_KEY": "sk-ant-secret-value"},
        "port_free": lambda address, port: True,
        "running_gateways": lambda: [],
        "reach": lambda provider, timeout: Reach(status=404, milliseconds=12),
        "tcp": lambda host, port, timeout: None,
        "envoy": lambda: ("/venv/bin/envoy", "1.40.0"),
        "python": "3.11.7",
    }
    return Probes(**(values | overrides))


def outcomes(checks: list[Check], topic: str) -> list[tuple[Outcome, str]]:
    return [(c.outcome, c.detail) for c in checks if c.topic == topic]


def test_everything_fine_is_all_pass(tmp_path):
    path = write_policy(tmp_path)
    checks = doctor.run_checks(path, 9901, probes())
    assert all(c.outcome is Outcome.PASS for c in checks), checks
    assert [c.topic for c in checks] == [
        "policy",
        "key",
        "key",
        "port",
        "port",
        "provider",
        "provider",
        "storage",
        "envoy",
        "python",
    ]
    assert doctor.summary(checks) == "10 passed, 0 warnings, 0 failed: ready"


def test_an_invalid_policy_fails_with_each_problem_and_skips_the_checks_that_need_it(tmp_path):
    path = write_policy(tmp_path, POLICY.replace("api: openai", "api: openia"))
    checks = doctor.run_checks(path, 9901, probes())
    assert outcomes(checks, "policy") == [
        (Outcome.FAIL, f"{path}: invalid (1 problem)"),
        (Outcome.FAIL, f"  {path}:9:10: providers[1].api: must be one of anthropic, openai, gemini, responses, vertex, bedrock (got 'openia')"),
    ]
    assert [c.topic for c in checks[2:]] == ["envoy", "python"]


def test_policy_warnings_are_warn_lines(tmp_path):
    path = write_policy(tmp_path, POLICY.replace("http://127.0.0.1:9100/v1", "http://127.0.0.1:9100"))
    (valid, warning) = outcomes(doctor.run_checks(path, 9901, probes()), "policy")
    assert valid[0] is Outcome.PASS
    assert warning[0] is Outcome.WARN and "providers[1].base_url: OpenAI-format requests go to" in warning[1]


def test_key_checks_never_print_the_secret_only_its_length():
    policy = load_policy(POLICY)
    checks = doctor.key_checks(policy, {"ANTHROPIC_API_KEY": "sk-ant-secret-value"})
    assert [(c.outcome, c.detail) for c in checks] == [
        (Outcome.PASS, "anthropic: ANTHROPIC_API_KEY is set (19 characters)"),
        (Outcome.PASS, "local: no key needed (no api_key_env)"),
    ]
    assert not any("secret" in str(c) for c in checks)
    (unset, _) = doctor.key_checks(policy, {"ANTHROPIC_API_KEY": ""})
    assert (unset.outcome, unset.detail) == (
        Outcome.FAIL,
        "anthropic: ANTHROPIC_API_KEY is not set (requests to it would get a 503)",
    )


def test_ports_free_busy_or_held_by_a_running_gateway():
    policy = load_policy(POLICY)
    free = doctor.port_checks(policy, 9901, probes())
    assert [(c.outcome, c.detail) for c in free] == [
        (Outcome.PASS, "listener 127.0.0.1:8080 is free"),
        (Outcome.PASS, "admin 127.0.0.1:9901 is free"),
    ]
    ours = probes(
        port_free=lambda address, port: port != 8080,
        running_gateways=lambda: [(77, "http://127.0.0.1:8080", "http://127.0.0.1:9911")],
    )
    listener, admin = doctor.port_checks(policy, 9901, ours)
    assert listener.outcome is Outcome.WARN and "in use by the running gateway (pid 77)" in listener.detail
    assert admin.outcome is Outcome.PASS
    theirs = probes(port_free=lambda address, port: port != 9901)
    _, admin = doctor.port_checks(policy, 9901, theirs)
    assert (admin.outcome, admin.detail) == (Outcome.FAIL, "admin 127.0.0.1:9901 is in use by another program")


def test_providers_any_http_answer_passes_no_answer_fails():
    policy = load_policy(POLICY)
    answers = {"anthropic": Reach(status=404, milliseconds=80), "local": Reach(error="connection refused")}
    checks = doctor.provider_checks(policy, lambda provider, timeout: answers[provider.name], 3.0)
    assert [(c.outcome, c.detail) for c in checks] == [
        (Outcome.PASS, "anthropic: https://api.anthropic.com answered (HTTP 404 in 80 ms)"),
        (Outcome.FAIL, "local: http://127.0.0.1:9100/v1 unreachable: connection refused"),
    ]


def test_a_consul_catalog_provider_is_not_probed():
    policy = load_policy(
        "providers:\n  - {name: pool, api: openai, base_url: 'http://pool/v1', consul_service: vllm, models: [m]}\n"
    )

    def never(provider: ProviderSpec, timeout: float) -> Reach:
        raise AssertionError("probed")

    (check,) = doctor.provider_checks(policy, never, 3.0)
    assert check.outcome is Outcome.PASS and "Consul's catalog (vllm)" in check.detail


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (urllib.error.URLError(socket.gaierror(-2, "Name or service not known")), "cannot resolve 'h.example' (DNS)"),
        (urllib.error.URLError(ConnectionRefusedError(111, "refused")), "connection refused"),
        (urllib.error.URLError(TimeoutError("timed out")), "no answer within 3 s"),
        (TimeoutError("timed out"), "no answer within 3 s"),
        (urllib.error.URLError(ssl.SSLCertVerificationError(1, "x")), "TLS certificate not trusted"),
        (urllib.error.URLError(OSError(101, "Network is unreachable")), "Network is unreachable"),
    ],
)
def test_network_errors_are_said_in_plain_words(error, words):
    assert words in doctor.describe_network_error(error, "h.example", 3.0)


def test_envoy_and_python_checks():
    assert doctor.envoy_checks(("/e", "1.40.0")) == [Check("envoy", Outcome.PASS, "/e: Envoy 1.40.0")]
    assert doctor.envoy_checks(("", ""))[0].outcome is Outcome.FAIL
    assert doctor.envoy_checks(("/e", ""))[0].outcome is Outcome.WARN
    assert doctor.python_checks("3.12.1")[0].outcome is Outcome.PASS
    assert doctor.python_checks("3.10.9")[0].outcome is Outcome.FAIL


def test_a_backend_check_is_one_function_added_to_the_list(tmp_path, monkeypatch):
    def redis(policy, found: Probes) -> list[Check]:
        return [Check("redis", Outcome.FAIL, "127.0.0.1:6379 refused")]

    monkeypatch.setattr(doctor, "BACKEND_CHECKS", [redis])
    checks = doctor.run_checks(write_policy(tmp_path), 9901, probes())
    assert Check("redis", Outcome.FAIL, "127.0.0.1:6379 refused") in checks


def test_run_prints_one_line_per_check_and_exits_1_on_any_failure(tmp_path, capsys):
    args = argparse.Namespace(config=write_policy(tmp_path), admin_port=9901, timeout=1.0)
    assert doctor.run(args, probes()) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("PASS  policy    ") and out[-1] == "10 passed, 0 warnings, 0 failed: ready"
    assert doctor.run(args, probes(environ={})) == 1
    out = capsys.readouterr().out.splitlines()
    assert "FAIL  key       anthropic: ANTHROPIC_API_KEY is not set (requests to it would get a 503)" in out
    assert out[-1] == "9 passed, 0 warnings, 1 failed: not ready: fix the FAIL lines"


def test_base_url_is_written_back_as_the_policy_gives_it():
    policy = load_policy(
        "providers:\n"
        "  - {name: a, api: anthropic, base_url: 'https://h.example:443', models: [m1]}\n"
        "  - {name: b, api: openai, base_url: 'http://[::1]:9000/v1', models: [m2]}\n"
    )
    assert [doctor.base_url(p) for p in policy.providers] == ["https://h.example", "http://[::1]:9000/v1"]


STORAGE = """
storage:
  postgres: {dsn: "postgresql://ledger:${PGPASSWORD}@db.internal:6432/ccr"}
  rabbitmq: {url: "amqp://ccr:${MQPASSWORD}@mq.internal/"}
"""


def test_storage_backends_are_reached_with_their_secrets_unset_or_set(tmp_path):
    path = write_policy(tmp_path, POLICY + STORAGE)
    reached: list[tuple[str, int]] = []

    def tcp(host: str, port: int, timeout: float) -> str | None:
        reached.append((host, port))
        return None if host == "mq.internal" else "Connection refused"

    checks = doctor.run_checks(path, 9901, probes(tcp=tcp))
    (outcome, detail), *_ = outcomes(checks, "rabbitmq")
    assert outcome is Outcome.FAIL and "MQPASSWORD" in detail
    environ = {"ANTHROPIC_API_KEY": "sk-ant-secret-value", "PGPASSWORD": "pg-secret", "MQPASSWORD": "mq-secret"}
    checks = doctor.run_checks(path, 9901, probes(tcp=tcp, environ=environ))
    assert reached[-2:] == [("mq.internal", 5672), ("db.internal", 6432)]
    assert outcomes(checks, "rabbitmq")[0][0] is Outcome.PASS
    assert outcomes(checks, "postgres")[0] == (
        Outcome.FAIL,
        "postgresql://ledger:${PGPASSWORD}@db.internal:6432/ccr: Connection refused",  # the name, not the value
    )
    assert "secret" not in "\n".join(str(c) for c in checks if c.topic in ("rabbitmq", "postgres"))


def test_a_pool_is_probed_host_by_host():
    policy = load_policy(
        "providers:\n  - name: pool\n    api: openai\n    base_url: http://vllm.internal:8000/v1\n    models: [m]\n"
        "    endpoints: [{address: 10.0.0.1, region: a}, {address: 10.0.0.2, port: 8001, region: b}]\n"
    )
    answers = {"10.0.0.1": Reach(status=200, milliseconds=3), "10.0.0.2": Reach(error="connection refused")}
    checks = doctor.provider_checks(policy, lambda provider, timeout: answers[provider.host], 3.0)
    assert [(c.outcome, c.detail) for c in checks] == [
        (Outcome.PASS, "pool: http://10.0.0.1:8000/v1 answered (HTTP 200 in 3 ms)"),
        (Outcome.FAIL, "pool: http://10.0.0.2:8001/v1 unreachable: connection refused"),
    ]


def test_every_vault_reference_is_read_with_the_policys_login(tmp_path):
    from tests.vault_double import threaded_double

    policy = load_policy(
        "providers:\n  - {name: a, api: openai, base_url: 'https://api.openai.com/v1', models: [m],"
        " api_key: 'vault:secret/data/providers/a#key'}\n"
        "auth: {keys: {postgres: 'vault:secret/data/ccr/keys#dsn'}}\n"
        "vault: {address: http://127.0.0.1:1}\n"
    )
    with threaded_double() as vault:
        vault.put_secret("providers/a", {"key": "sk-a"})
        policy = dataclasses.replace(policy, vault=dataclasses.replace(policy.vault, address=vault.url))
        checks = doctor.vault_checks(policy, Probes(environ={"VAULT_TOKEN": "root"}))
    assert [(c.outcome, c.detail.split(":")[0]) for c in checks] == [
        (Outcome.PASS, "providers.a.api_key"),
        (Outcome.FAIL, "auth.keys.postgres"),
    ]
    assert "sk-a" not in "".join(c.detail for c in checks)
    failed = doctor.vault_checks(policy, Probes(environ={}))  # no token: said, nothing read
    assert {c.outcome for c in failed} == {Outcome.FAIL} and "VAULT_TOKEN is not set" in failed[0].detail
