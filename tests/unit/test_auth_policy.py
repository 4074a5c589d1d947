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
