"""A policy file edited under a running control plane leaves hash-chained audit entries."""

from __future__ import annotations

import asyncio

import pytest

from audit.chain import verify
from audit.keys import load_key
from audit.stores import SqliteAuditStore
from control_plane.server import ControlPlane, ControlPlaneConfig

POLICY = "providers:\n  - {{name: {name}, api: anthropic, base_url: 'http://127.0.0.1:9100', models: [m]}}\n"


@pytest.fixture
def audit_env(tmp_path, monkeypatch):
    for name in ("CCR_AUDIT_POSTGRES", "CCR_AUTH_POSTGRES", "CCR_AUDIT_KEY", "CCR_AUDIT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CCR_AUDIT_SQLITE", str(tmp_path / "audit.db"))
    monkeypatch.setenv("CCR_AUDIT_KEY_FILE", str(tmp_path / "audit.key"))
    (tmp_path / "audit.key").write_text("ef" * 32)
    return tmp_path / "audit.db"


async def _entries(path):
    store = SqliteAuditStore(path)
    try:
        return await store.head(), await store.entries()
    finally:
        await store.close()


async def _until(predicate, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_policy_file_edit_under_a_running_control_plane_appends_entries(tmp_path, audit_env):
    policy_file = tmp_path / "gw.yaml"
    policy_file.write_text(POLICY.format(name="a"))
    plane = ControlPlane(ControlPlaneConfig(policy_path=str(policy_file), poll_interval=0.05))
    await plane.load_initial()
    watcher = asyncio.create_task(plane.source.watch(plane._apply, plane._reject))
    try:
        await asyncio.sleep(0.2)
        policy_file.write_text(POLICY.format(name="b") + "# edited\n")
        await _until(lambda: _count(audit_env, 2))
        policy_file.write_text("providers: [oops\n")
        await _until(lambda: _count(audit_env, 3))
    finally:
        watcher.cancel()
        await plane.audit.close()
        await plane.source.close()
    head, entries = await _entries(audit_env)
    assert [(e.action, e.xds_version) for e in entries] == [
        ("policy.accepted", "1"),
        ("policy.accepted", "2"),
        ("policy.rejected", ""),
    ]
    assert all(e.actor == "control-plane" and e.source == str(policy_file) and e.host for e in entries)
    assert entries[2].details["error"]
    assert verify(load_key(), entries, head) is None


async def _count(path, n: int) -> bool:
    return path.exists() and len((await _entries(path))[1]) >= n


def test_with_the_audit_store_unusable_a_policy_still_applies(tmp_path, monkeypatch, caplog):
    for name in ("CCR_AUDIT_POSTGRES", "CCR_AUTH_POSTGRES", "CCR_AUDIT_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CCR_AUDIT_SQLITE", str(tmp_path / "audit.db"))
    monkeypatch.setenv("CCR_AUDIT_KEY_FILE", str(tmp_path / "no-such.key"))  # an explicit, missing key
    policy_file = tmp_path / "gw.yaml"
    policy_file.write_text(POLICY.format(name="a"))
    plane = ControlPlane(ControlPlaneConfig(policy_path=str(policy_file)))
    from control_plane.policy import load_policy

    plane._apply(load_policy(POLICY.format(name="a"), source=str(policy_file)))
    assert plane.rollout.desired is not None and plane.rollout.desired.version == "1"
    assert "policy.accepted not recorded (the change still applies)" in caplog.text


async def test_a_listener_certificate_rotation_is_an_audited_change(tmp_path, audit_env):
    from control_plane.policy.tls import TlsSpec
    from control_plane.resources.tls import TlsMaterial

    policy_file = tmp_path / "gw.yaml"
    policy_file.write_text(POLICY.format(name="a"))
    plane = ControlPlane(ControlPlaneConfig(policy_path=str(policy_file)))
    plane.tls_files.spec = TlsSpec(cert_file=str(tmp_path / "server.pem"), key_file=str(tmp_path / "server.key"))
    plane._audit_rotation(TlsMaterial(cert=b"-----BEGIN CERTIFICATE-----new", key=b"the private key"))
    await plane.audit.close()
    head, entries = await _entries(audit_env)
    (entry,) = entries
    assert (entry.action, entry.source, entry.details["secret"]) == (
        "secret.rotated",
        str(tmp_path / "server.pem"),
        "listener certificate",
    )
    assert len(entry.details["certificate_sha256"]) == 64 and "private key" not in str(entry.details)
    assert verify(load_key(), entries, head) is None


async def test_a_provider_key_rotated_in_vault_is_pushed_to_envoy_and_audited(tmp_path, audit_env, monkeypatch):
    from tests.vault_double import threaded_double

    with threaded_double(root_token="root") as vault:
        vault.put_secret("providers/openai", {"key": "sk-before"})
        monkeypatch.setenv("VAULT_TOKEN", "root")
        policy_file = tmp_path / "gw.yaml"
        policy_file.write_text(
            f"vault: {{address: '{vault.url}', rotation: {{interval: 1h}}}}\n"
            "providers:\n  - {name: openai, api: openai, base_url: 'http://127.0.0.1:9100/v1', models: [m],\n"
            "     api_key: 'vault:secret/data/providers/openai#key'}\n"
        )
        plane = ControlPlane(ControlPlaneConfig(policy_path=str(policy_file)))
        try:
            await plane.load_initial()
            ref = "vault:secret/data/providers/openai#key"
            assert plane.rollout.provider_keys == {ref: "sk-before"}
            vault.put_secret("providers/openai", {"key": "sk-after"})
            store = plane.provider_keys.store
            # What the refresher's task does once the interval is over (a fake "later", not a wait).
            plane.provider_keys._changed(await asyncio.to_thread(store.step, store.clock() + 3600))
            assert plane.rollout.provider_keys == {ref: "sk-after"}
        finally:
            plane.provider_keys.store.stop()
            await plane.audit.close()
            await plane.source.close()
    head, entries = await _entries(audit_env)
    assert [e.action for e in entries] == ["policy.accepted", "secret.rotated"]
    rotated = entries[1]
    assert rotated.source == "vault:secret/data/providers/openai#key"
    assert rotated.details == {"secret": "provider key", "providers": ["openai"], "version": 2, "previous_version": 1}
    assert "sk-" not in str(rotated.to_json())
    assert verify(load_key(), entries, head) is None
