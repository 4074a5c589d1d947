"""The policy's vault section and api_key: vault: references (control_plane.policy.vault)."""

from __future__ import annotations

import pytest

from ccr.v1.secret_ref import ReferenceError, SecretRef, parse_reference
from control_plane.policy import PolicyError, load_policy

PROVIDER = """\
providers:
  - name: openai
    api: openai
    base_url: https://api.openai.com/v1
    api_key: {key}
    models: [gpt-4o]
"""
VAULT = """\
vault:
  address: http://127.0.0.1:8200
  auth:
    method: approle
    role_id: r-1
    secret_id_env: CCR_VAULT_SECRET_ID
  rotation:
    interval: 24h
"""


def test_a_reference_names_mount_path_and_field():
    assert parse_reference("vault:secret/data/providers/openai#key") == SecretRef("secret", "providers/openai", "key")
    assert parse_reference("vault:kv/team/data/openai#api_key").mount == "kv/team"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vault:secret/data/providers/openai", "names no field"),
        ("vault:secret/providers/openai#key", "is not a KV v2 path"),
        ("vault:secret/data/a//b#key", "is empty"),
        ("vault:secret/data/../x#key", "is empty or holds"),
        ("env:X", "must start with"),
    ],
)
def test_a_reference_that_cannot_be_followed_says_why(text: str, message: str):
    with pytest.raises(ReferenceError, match=message):
        parse_reference(text)


def test_the_policy_carries_the_reference_and_login_settings_never_a_secret():
    policy = load_policy(VAULT + PROVIDER.format(key="vault:secret/data/providers/openai#key"))
    assert policy.providers[0].api_key_ref == "vault:secret/data/providers/openai#key"
    proto = policy.to_proto("v1")
    # Envoy injects the key (no fallback chain names the provider): ext_proc is not even told where it is.
    assert proto.providers[0].key_injected_by_envoy and proto.providers[0].api_key_ref == ""
    assert proto.providers[0].key_unavailable == ""
    assert proto.vault.auth_method == "approle" and proto.vault.secret_id_env == "CCR_VAULT_SECRET_ID"
    assert proto.vault.rotation_interval_s == 24 * 3600


def test_a_key_the_control_plane_has_not_read_is_unavailable_in_the_policy_sent_to_ext_proc():
    policy = load_policy(VAULT + PROVIDER.format(key="vault:secret/data/providers/openai#key"))
    proto = policy.to_proto("v1", {"openai": "cannot read it: permission denied"})
    assert proto.providers[0].key_unavailable == "provider 'openai' has no API key: cannot read it: permission denied"


def test_a_bad_reference_is_reported_at_its_line():
    with pytest.raises(PolicyError) as caught:
        load_policy(VAULT + PROVIDER.format(key="vault:secret/providers/openai#key"), source="p.yaml")
    assert "p.yaml:13:14: providers[0].api_key:" in str(caught.value)
    assert "is not a KV v2 path" in str(caught.value)


def test_a_reference_without_the_vault_section_is_refused():
    with pytest.raises(PolicyError, match="needs the policy's top-level vault: section"):
        load_policy(PROVIDER.format(key="vault:secret/data/providers/openai#key"))


def test_api_key_and_api_key_env_are_exclusive():
    text = VAULT + PROVIDER.format(key="vault:secret/data/p#key") + "    api_key_env: OPENAI_API_KEY\n"
    with pytest.raises(PolicyError, match="not both"):
        load_policy(text)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("vault:\n  auth: {method: ldap}\n", "vault.auth.method: must be one of token, approle, kubernetes"),
        ("vault:\n  auth: {method: approle, role_id: r}\n", "approle auth needs secret_id_env"),
        ("vault:\n  auth: {method: token, secret_id_env: X}\n", "secret_id_env"),
        ("vault:\n  rotation: {interval: soon}\n", "is not a duration"),
        ("vault:\n  rotation: {interval: 0s}\n", "between 1s and 366d"),
        ("vault:\n  address: vault.local\n", "must be an http:// or https:// URL"),
        ("vault:\n  token: hvs.abc\n", "token"),  # a secret has no place to be written
    ],
)
def test_the_vault_section_is_checked(section: str, message: str):
    with pytest.raises(PolicyError, match=message):
        load_policy(section + PROVIDER.format(key="vault:secret/data/p#key"))
