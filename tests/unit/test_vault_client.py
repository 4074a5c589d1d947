"""The Vault client (ccr.v1.vault_client) against the Vault double: logins, KV v2, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ccr.v1.secret_ref import parse_reference
from ccr.v1.vault_client import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    Unavailable,
    VaultClient,
    VaultSettings,
)
from tests.e2e.gateway import free_port
from tests.vault_double import VaultDouble, threaded_double

REF = parse_reference("vault:secret/data/providers/openai#key")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def vault(clock: Clock) -> Iterator[VaultDouble]:
    with threaded_double(clock=clock) as double:
        yield double


def client(vault: VaultDouble, **settings: object) -> VaultClient:
    environ = settings.pop("environ", {"VAULT_TOKEN": "root"})
    return VaultClient(VaultSettings(address=vault.url, **settings), environ)  # type: ignore[arg-type]


def test_token_login_looks_the_token_up(vault: VaultDouble):
    assert client(vault).login().ttl_s == 0  # the root token never expires


def test_token_login_without_the_variable_is_refused_before_any_request(vault: VaultDouble):
    with pytest.raises(PermissionDenied, match="VAULT_TOKEN is not set"):
        client(vault, environ={}).login()
    assert vault.requests == []


def test_an_unknown_token_is_permission_denied(vault: VaultDouble):
    with pytest.raises(PermissionDenied, match="permission denied"):
        client(vault, environ={"VAULT_TOKEN": "hvs.nope"}).login()


def test_kv_reads_the_latest_or_a_given_version(vault: VaultDouble):
    vault.put_secret("providers/openai", {"key": "sk-one"})
    vault.put_secret("providers/openai", {"key": "sk-two"})
    c = client(vault)
    c.login()
    latest = c.read(REF)
    assert (latest.data["key"], latest.version) == ("sk-two", 2)
    assert c.read(REF, version=1).data["key"] == "sk-one"
    with pytest.raises(NotFound):
        c.read(REF, version=3)


def test_write_with_cas(vault: VaultDouble):
    c = client(vault)
    c.login()
    assert c.write(REF, {"key": "a"}, cas=0) == 1
    with pytest.raises(InvalidRequest, match="check-and-set"):
        c.write(REF, {"key": "b"}, cas=0)
    assert c.write(REF, {"key": "c"}, cas=1) == 2
    assert c.metadata(REF)["current_version"] == 2


def test_a_missing_secret_is_not_found(vault: VaultDouble):
    c = client(vault)
    c.login()
    with pytest.raises(NotFound):
        c.read(REF)


def test_approle_login_gets_a_renewable_token_with_its_ttl(vault: VaultDouble):
    vault.auth_mounts.add("approle")
    vault.approles["gw"] = {"name": "gw", "role_id": "role-1", "secret_ids": {"s3cr3t"}, "policies": ["p"], "ttl": 600}
    vault.acl["p"] = [("secret/data/providers/*", frozenset({"read"}))]
    vault.put_secret("providers/openai", {"key": "sk-one"})
    c = client(vault, method="approle", role_id="role-1", secret_id_env="SID", environ={"SID": "s3cr3t"})
    info = c.login()
    assert (info.ttl_s, info.renewable) == (600, True)
    assert c.read(REF).data["key"] == "sk-one"
    with pytest.raises(PermissionDenied):  # outside what its policy grants
        c.read(parse_reference("vault:secret/data/other#key"))


def test_approle_with_a_wrong_secret_id_is_refused(vault: VaultDouble):
    vault.auth_mounts.add("approle")
    vault.approles["gw"] = {"name": "gw", "role_id": "role-1", "secret_ids": {"s3cr3t"}, "policies": [], "ttl": 60}
    c = client(vault, method="approle", role_id="role-1", secret_id_env="SID", environ={"SID": "wrong"})
    with pytest.raises(InvalidRequest, match="invalid role or secret ID"):
        c.login()


def test_kubernetes_login_reads_the_service_account_token(vault: VaultDouble, tmp_path: Path):
    vault.kubernetes_role("ccr", "jwt-abc", ttl=300)
    jwt = tmp_path / "token"
    jwt.write_text("jwt-abc\n")
    info = client(vault, method="kubernetes", role="ccr", jwt_path=str(jwt), environ={}).login()
    assert info.ttl_s == 300
    jwt.write_text("jwt-other")
    with pytest.raises(PermissionDenied):
        client(vault, method="kubernetes", role="ccr", jwt_path=str(jwt), environ={}).login()


def test_renew_self_extends_an_expiring_token(vault: VaultDouble, clock: Clock):
    token = vault._issue(None, ["root"], 90, True)
    c = client(vault, environ={"VAULT_TOKEN": token.id})
    assert c.login().ttl_s == 90
    clock.now += 60
    assert c.renew_token().ttl_s == 90
    clock.now += 80  # past the first expiry, inside the renewed one
    c.login()
    clock.now += 11
    with pytest.raises(PermissionDenied):
        c.login()


def test_lease_renewal(vault: VaultDouble):
    vault.add_lease("database/creds/ro/abc", 60)
    c = client(vault)
    c.login()
    assert c.renew_lease("database/creds/ro/abc", 120) == 120
    with pytest.raises(InvalidRequest, match="lease not found"):
        c.renew_lease("database/creds/ro/nope")


def test_vault_down_is_unavailable():
    c = VaultClient(VaultSettings(address=f"http://127.0.0.1:{free_port()}", timeout_s=1), {"VAULT_TOKEN": "t"})
    with pytest.raises(Unavailable, match="cannot reach Vault"):
        c.login()


def test_a_sealed_vault_is_unavailable(vault: VaultDouble):
    vault.fail_next(1, 503)
    with pytest.raises(Unavailable):
        client(vault).login()
