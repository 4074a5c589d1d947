"""Connection strings kept in Vault (ccr.v1.vault_refs through ccr.v1.env_refs.expand_env), against
the Vault double; and the policy's connection fields that accept a ``vault:`` reference."""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Iterator

import pytest

from ccr.v1 import vault_refs
from ccr.v1.env_refs import EnvError, expand_env, redact_url
from ccr.v1.vault_client import VaultSettings
from control_plane.policy import load_policy
from control_plane.policy.yaml_check import PolicyError
from tests.vault_double import ManualClock, VaultDouble, threaded_double

DSN_REF = "vault:secret/data/ccr/postgres#dsn"
DSN = "postgresql://ccr:first-password@db.internal:5432/ccr"


@pytest.fixture
def vault() -> Iterator[VaultDouble]:
    with threaded_double() as double:
        double.put_secret("ccr/postgres", {"dsn": DSN})
        yield double


@pytest.fixture
def references(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[vault_refs.VaultReferences, ManualClock]]:
    """A fresh reader with a clock of the test's own, as the process's reader."""
    clock = ManualClock()
    reader = vault_refs.VaultReferences(clock=clock)
    monkeypatch.setattr(vault_refs, "_DEFAULT", reader)
    yield reader, clock


def environ(vault: VaultDouble) -> dict[str, str]:
    return {"VAULT_ADDR": vault.url, "VAULT_TOKEN": "root"}


def test_a_whole_vault_reference_is_read_from_vault_when_expanded(vault, references):
    assert expand_env(DSN_REF, environ(vault)) == DSN


def test_a_value_is_kept_briefly_then_read_again_so_a_rotation_reaches_the_next_connection(vault, references):
    _, clock = references
    assert expand_env(DSN_REF, environ(vault)) == DSN
    reads = len(vault.requests)
    vault.put_secret("ccr/postgres", {"dsn": DSN.replace("first", "second")})
    assert expand_env(DSN_REF, environ(vault)) == DSN  # a burst of reconnections: one read
    assert len(vault.requests) == reads
    clock.now += vault_refs.CACHE_S + 1
    assert expand_env(DSN_REF, environ(vault)) == DSN.replace("first", "second")


def test_ccr_vault_carries_the_policys_settings_to_every_child(vault, references):
    settings = VaultSettings(address=vault.url, token_env="CCR_TEST_VAULT_TOKEN")
    shared = vault_refs.settings_json(settings)
    assert "root" not in shared and json.loads(shared)["token_env"] == "CCR_TEST_VAULT_TOKEN"
    assert expand_env(DSN_REF, {"CCR_VAULT": shared, "CCR_TEST_VAULT_TOKEN": "root"}) == DSN


@pytest.mark.parametrize(
    ("reference", "env", "message"),
    [
        (DSN_REF, {}, "no Vault to read it from (set CCR_VAULT or VAULT_ADDR)"),
        ("vault:secret/data/ccr/postgres#password", None, "the secret has no field 'password'"),
        ("vault:secret/data/ccr/missing#dsn", None, "cannot read vault:secret/data/ccr/missing#dsn from Vault"),
        (DSN_REF, {"VAULT_TOKEN": "not-a-token"}, "permission denied"),
        ("vault:secret/ccr/postgres#dsn", None, "vault:secret/ccr/postgres#dsn"),
    ],
)
def test_a_reference_that_cannot_be_read_is_an_env_error_naming_it_never_a_value(
    vault, references, reference, env, message
):
    given = environ(vault) if env is None else ({"VAULT_ADDR": vault.url, **env} if env else {})
    with pytest.raises(EnvError) as caught:
        expand_env(reference, given)
    assert message in str(caught.value)
    assert "first-password" not in str(caught.value)


def test_a_reference_is_shown_as_it_is_written():
    assert redact_url(DSN_REF) == DSN_REF


POLICY = """\
providers:
  - {name: a, api: anthropic, base_url: 'https://api.anthropic.com', models: [m]}
storage:
  postgres: {dsn: "vault:secret/data/ccr/postgres#dsn"}
  rabbitmq: {url: "vault:secret/data/ccr/rabbitmq#url"}
auth:
  keys: {postgres: "vault:secret/data/ccr/keys#dsn"}
  limits: {redis: "vault:secret/data/ccr/redis#url"}
cache: {ttl: 1h, redis: "vault:secret/data/ccr/redis#url"}
"""
VAULT_SECTION = "vault:\n  address: http://127.0.0.1:8200\n"


def test_every_connection_field_takes_a_vault_reference_with_the_vault_section():
    policy = load_policy(POLICY + VAULT_SECTION)
    assert policy.storage is not None and policy.storage.postgres is not None
    assert policy.storage.postgres.dsn == "vault:secret/data/ccr/postgres#dsn"
    assert policy.cache is not None and policy.cache.redis == "vault:secret/data/ccr/redis#url"


def test_without_the_vault_section_every_reference_is_a_problem_at_its_line():
    with pytest.raises(PolicyError) as caught:
        load_policy(POLICY)
    found = [(p.line, p.path) for p in caught.value.problems]
    assert found == [
        (4, "storage.postgres.dsn"),
        (5, "storage.rabbitmq.url"),
        (7, "auth.keys.postgres"),
        (8, "auth.limits.redis"),
        (9, "cache.redis"),
    ]


def test_a_malformed_reference_in_a_connection_field_is_a_problem():
    text = textwrap.dedent(
        """\
        providers:
          - {name: a, api: anthropic, base_url: 'https://api.anthropic.com', models: [m]}
        storage:
          postgres: {dsn: "vault:secret/ccr/postgres"}
          rabbitmq: {url: "amqp://guest:guest@127.0.0.1:5672/"}
        """
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(text + VAULT_SECTION)
    (problem,) = caught.value.problems
    assert problem.path == "storage.postgres.dsn" and "vault:secret/ccr/postgres" in problem.message


def test_up_hands_the_policys_vault_settings_to_its_children(monkeypatch: pytest.MonkeyPatch):
    from ccr_gateway.supervisor import GatewayProcesses

    monkeypatch.setenv("CCR_VAULT", "")  # recorded: whatever up sets is undone after the test
    policy = load_policy(
        POLICY
        + "vault:\n  address: http://vault.internal:8200\n  auth: {method: approle, role_id: r1, secret_id_env: SID}\n"
    )
    GatewayProcesses(policy=policy, policy_path="p.yaml")._share_vault_settings()
    shared = json.loads(os.environ["CCR_VAULT"])
    assert (shared["address"], shared["method"], shared["role_id"], shared["secret_id_env"]) == (
        "http://vault.internal:8200",
        "approle",
        "r1",
        "SID",
    )


def test_the_audit_chains_key_can_be_kept_in_vault(vault, references):
    from audit.keys import AuditKeyError, load_key

    vault.put_secret("ccr/audit", {"key": "ab" * 32})
    env = {**environ(vault), "CCR_AUDIT_KEY": "vault:secret/data/ccr/audit#key"}
    assert load_key(environ=env).key_id == load_key(environ={"CCR_AUDIT_KEY": "ab" * 32}).key_id
    with pytest.raises(AuditKeyError, match="vault:secret/data/ccr/audit#missing"):
        load_key(environ={**env, "CCR_AUDIT_KEY": "vault:secret/data/ccr/audit#missing"})
