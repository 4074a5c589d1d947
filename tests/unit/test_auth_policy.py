"""The policy's `auth:` section (control_plane.policy.auth): defaults, the key store, mistakes with
their line, and `required` carried to the workers in the policy proto."""

from __future__ import annotations

import pytest

from control_plane.policy import PolicyError, load_policy
from control_plane.policy.auth import AuthSpec
from extproc.routing_table import compile_policy
from tests.unit.test_storage_policy import PROVIDERS


def load(auth: str):
    return load_policy(PROVIDERS + auth, "gw.yaml")


def problems(auth: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(auth)
    return [str(problem) for problem in caught.value.problems]


def test_without_an_auth_section_keys_are_optional_and_in_the_default_store():
    assert load("").auth == AuthSpec(required=False, keys_sqlite=None, keys_postgres=None)


def test_a_section_names_its_store_with_references_unexpanded():
    assert load("auth: {required: true, keys: {sqlite: /tmp/k.db}}\n").auth == AuthSpec(True, "/tmp/k.db")
    dsn = "postgresql://ccr:${PGPASSWORD}@db/ccr"
    assert load(f"auth:\n  keys: {{postgres: '{dsn}'}}\n").auth == AuthSpec(False, None, dsn)


def test_mistakes_are_reported_with_their_line():
    assert problems("auth:\n  required: yes please\n") == [
        "gw.yaml:4:13: auth.required: must be true or false, got a string"
    ]
    found = problems("auth:\n  keys: {sqlite: /a, postgres: 'postgresql://db/x'}\n")
    assert found == ["gw.yaml:4:9: auth.keys: name one key store: sqlite or postgres"]
    assert "unknown field" in problems("auth:\n  requird: true\n")[0]


def test_required_reaches_the_routing_table_through_the_policy_proto():
    policy = load("auth: {required: true}\n")
    assert compile_policy(policy.to_proto("1"), environ={}).auth_required
    assert not compile_policy(load("").to_proto("1"), environ={}).auth_required


def test_up_warns_about_an_open_listener_only_without_keys_and_auth():
    from ccr_gateway.auth_wiring import open_listener_warning, worker_arguments

    warning = open_listener_warning(AuthSpec(), "127.0.0.1:8080", 0)
    assert warning is not None and "anyone who can reach 127.0.0.1:8080 can use your providers' keys" in warning
    assert "ccr-gateway keys create" in warning and "auth.required" in warning
    assert open_listener_warning(AuthSpec(required=True), "127.0.0.1:8080", 0) is None
    assert open_listener_warning(AuthSpec(), "127.0.0.1:8080", 3) is None
    assert worker_arguments(AuthSpec(keys_sqlite="/k.db"), 4) == ["--auth-workers", "4", "--auth-keys-sqlite", "/k.db"]
    assert worker_arguments(AuthSpec(keys_postgres="postgresql://db/x"), 1) == ["--auth-workers", "1"]


def test_limits_name_their_redis_gateways_and_failure_policy_per_limit_type():
    from control_plane.policy.auth_limits import LimitsSpec

    text = (
        "auth:\n  limits:\n    redis: 'redis+sentinel://s1:26379,s2:26379/mymaster'\n    gateways: 3\n"
        "    on_redis_failure: {rpm: fail_open, budget: local}\n    budget_alert_at: 0.9\n"
    )
    limits = load(text).auth.limits
    assert limits == LimitsSpec(
        "redis+sentinel://s1:26379,s2:26379/mymaster", 3, 50, (("rpm", "fail_open"), ("budget", "local")), 0.9
    )
    assert limits.failure_argument() == "rpm=fail_open,budget=local"
    assert load("").auth.limits == LimitsSpec()  # in process


def test_limit_mistakes_are_reported_with_their_line_and_never_echo_a_password():
    found = problems("auth:\n  limits:\n    redis: 'http://:hunter2@r:6379'\n    on_redis_failure: {rpm: maybe}\n")
    assert any(p.startswith("gw.yaml:5:12:") and "redis://" in p for p in found), found
    assert any(p.startswith("gw.yaml:6:29:") and "fail_closed, fail_open, local" in p for p in found), found
    assert not any("hunter2" in p for p in found)
    assert "must be a fraction" in problems("auth:\n  limits: {budget_alert_at: 2}\n")[0]
    assert "unknown field" in problems("auth:\n  limits: {on_redis_failure: {rpq: local}}\n")[0]


def test_the_workers_are_told_where_the_limits_are_the_url_only_in_their_environment():
    from ccr_gateway.auth_wiring import AUTH_REDIS_ENV, environment, failure_policies, worker_arguments
    from extproc.auth.redis_limits import FailurePolicy

    auth = load("auth:\n  limits: {redis: 'redis://:${REDIS_PASSWORD}@r:6379/0', gateways: 2, timeout_ms: 20}\n").auth
    arguments = worker_arguments(auth, 2)
    assert arguments == ["--auth-workers", "2", "--auth-gateways", "2", "--auth-redis-timeout-ms", "20"]
    assert environment(auth) == {AUTH_REDIS_ENV: "redis://:${REDIS_PASSWORD}@r:6379/0"}
    assert failure_policies("rpm=fail_open,budget=local") == {
        "rpm": FailurePolicy.FAIL_OPEN,
        "budget": FailurePolicy.LOCAL,
    }
