"""The secret store (extproc.secrets.store) on a fake clock, and the routing table's vault: keys."""

from __future__ import annotations

import pytest

from ccr.v1 import policy_pb2
from ccr.v1.secret_ref import parse_reference
from ccr.v1.vault_client import (
    VaultSettings,
)
from extproc.routing_table import PolicyCompileError, compile_policy
from extproc.secrets.store import RETRY_S, SecretStore
from tests.vault_double import FakeVaultClient, ManualClock, threaded_double

REF = parse_reference("vault:secret/data/providers/openai#key")


def store_with(
    fake: FakeVaultClient, clock: ManualClock, interval: float = 3600, method: str = "approle"
) -> SecretStore:
    store = SecretStore(clock, lambda settings, environ: fake)  # type: ignore[arg-type,return-value]
    store.configure(VaultSettings("http://vault", method=method, rotation_interval_s=interval))
    return store


def test_a_key_is_read_when_the_policy_names_it_and_reread_each_interval():
    clock, fake = ManualClock(100.0), FakeVaultClient({REF: "sk-one"})
    store = store_with(fake, clock, interval=60)
    key = store.handle(REF)
    store.read_new()
    assert key.value == "sk-one" and key.problem is None
    fake.values[REF] = "sk-two"
    clock.now += 59
    store.step()
    assert key.value == "sk-one"  # not due yet
    clock.now += 1
    assert store.next_due() == clock.now
    store.step()
    assert key.value == "sk-two"


def test_the_token_is_renewed_at_two_thirds_of_its_ttl():
    clock, fake = ManualClock(100.0), FakeVaultClient({REF: "sk"}, ttl=300)
    store = store_with(fake, clock)
    store.handle(REF)
    store.read_new()
    assert store.token_due == 100 + 200
    clock.now = 299
    store.step()
    assert "renew" not in fake.calls
    clock.now = 300
    store.step()
    assert fake.calls.count("renew") == 1 and store.token_due == 300 + 200


def test_a_token_that_cannot_be_renewed_logs_in_again_at_two_thirds():
    clock, fake = ManualClock(100.0), FakeVaultClient({REF: "sk"}, ttl=90, renewable=False)
    store = store_with(fake, clock)
    store.handle(REF)
    store.read_new()
    clock.now += 60
    store.step()
    assert fake.calls == ["login", "read", "login"] and store.token_due == clock.now + 60


def test_a_root_token_without_ttl_is_never_renewed():
    clock, fake = ManualClock(100.0), FakeVaultClient({REF: "sk"}, ttl=0)
    store = store_with(fake, clock, method="token")
    store.handle(REF)
    store.read_new()
    assert store.token_due is None


def test_vault_down_leaves_no_key_and_a_reason_then_recovers():
    clock, fake = ManualClock(100.0), FakeVaultClient({REF: "sk"}, down=True)
    store = store_with(fake, clock)
    key = store.handle(REF)
    store.read_new()
    assert key.value is None and "cannot log in to Vault" in (key.problem or "")
    fake.down = False
    clock.now += RETRY_S
    store.step()
    assert key.value == "sk"


def test_a_failed_reread_keeps_the_last_value():
    clock, fake = ManualClock(100.0), FakeVaultClient({REF: "sk"})
    store = store_with(fake, clock, interval=10)
    key = store.handle(REF)
    store.read_new()
    fake.down = True
    clock.now += 10
    store.step()
    assert key.value == "sk"


def test_a_provider_rejection_rereads_soon_but_not_in_a_loop():
    clock, fake = ManualClock(100.0), FakeVaultClient({REF: "sk-one"})
    store = store_with(fake, clock)
    key = store.handle(REF)
    store.read_new()
    fake.values[REF] = "sk-two"
    key.rejected()
    assert store.next_due() == 100 + 5  # at most every REREAD_MIN_S
    clock.now += 5
    store.step()
    assert key.value == "sk-two"


def _policy(address: str, interval: float = 0) -> policy_pb2.Policy:
    return policy_pb2.Policy(
        version="1",
        vault=policy_pb2.Vault(address=address, auth_method="token", rotation_interval_s=interval),
        providers=[
            policy_pb2.Provider(
                name="openai",
                api=policy_pb2.API_OPENAI,
                cluster="provider_openai",
                api_key_ref=str(REF),
                models=[policy_pb2.Model(name="gpt")],
            )
        ],
    )


def test_the_routing_table_sends_the_key_in_vault_and_follows_a_rotation():
    clock = ManualClock(100.0)
    with threaded_double() as vault:
        vault.put_secret("providers/openai", {"key": "sk-one"})
        store = SecretStore(clock)
        table = compile_policy(_policy(vault.url, 60), {"VAULT_TOKEN": "root"}, secrets=store)
        provider = table.providers["openai"]
        assert provider.headers == (("authorization", "Bearer sk-one"),) and provider.unavailable is None
        vault.put_secret("providers/openai", {"key": "sk-two"})
        clock.now += 60
        store.step()
        assert provider.headers == (("authorization", "Bearer sk-two"),)  # the same table, no new policy


def test_a_key_vault_refuses_fails_closed_with_the_reason():
    with threaded_double() as vault:
        table = compile_policy(_policy(vault.url), {"VAULT_TOKEN": "root"}, secrets=SecretStore())
        provider = table.providers["openai"]
        assert provider.headers == ()
        assert "has no API key: cannot read vault:secret/data/providers/openai#key" in (provider.unavailable or "")


def test_the_policy_names_no_vault_address():
    with pytest.raises(PolicyCompileError, match="no address"):
        compile_policy(_policy(""), {}, secrets=SecretStore())
