"""Provider keys from Vault (the double) through a real gateway: rotation without a restart, and
no unauthenticated request to the provider when Vault is down."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from http import server
from pathlib import Path

import pytest

from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port, http, wait_until
from tests.vault_double import VaultDouble, threaded_double

ROOT_TOKEN = "hvs.e2e-root-token"


def _ask(gateway: Gateway) -> tuple[int, dict]:
    body = json.dumps({"model": "gpt-4o", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]})
    status, _, raw = http("POST", f"{gateway.url}/v1/messages", body.encode(), {"content-type": "application/json"})
    return status, json.loads(raw) if raw else {}


def _vault_policy(fake: FakeProvider, address: str) -> dict:
    policy = copy.deepcopy(base_policy(free_port(), fake))
    openai = next(p for p in policy["providers"] if p["name"] == "fake-openai")
    del openai["api_key_env"]
    openai["api_key"] = "vault:secret/data/providers/openai#key"
    policy["vault"] = {"address": address, "auth": {"method": "token"}, "rotation": {"interval": "1s"}}
    return policy


@pytest.fixture
def vault() -> Iterator[VaultDouble]:
    with threaded_double(root_token=ROOT_TOKEN) as double:
        yield double


@pytest.fixture
def vault_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_TOKEN", ROOT_TOKEN)  # Gateway.start passes its environment to `up`


def test_a_key_rotated_in_vault_is_used_by_the_next_request_without_a_restart(
    vault: VaultDouble, vault_env: None, fake: FakeProvider, workdir: Path
):
    vault.put_secret("providers/openai", {"key": "sk-vault-one"})
    gateway = Gateway.start(workdir, _vault_policy(fake, vault.url), name="vault-rotation")
    try:
        status, _ = _ask(gateway)
        assert status == 200
        assert fake.requests()[-1]["headers"]["authorization"] == "Bearer sk-vault-one"
        vault.put_secret("providers/openai", {"key": "sk-vault-two"})
        time.sleep(1.5)  # the rotation interval (1s) and a margin: every worker has re-read it
        for _ in range(4):  # whichever worker answers
            fake.clear()
            assert _ask(gateway)[0] == 200
            assert fake.requests()[-1]["headers"]["authorization"] == "Bearer sk-vault-two"
        assert "rotated: version 2 now in use" in gateway.log()
        assert "sk-vault-" not in gateway.log()
    finally:
        gateway.stop()


def _log_lines(gateway: Gateway) -> list[dict]:
    lines = []
    for line in gateway.log().splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


def test_envoy_injects_the_vault_key_from_sds_and_ext_proc_never_holds_it(
    vault: VaultDouble, vault_env: None, fake: FakeProvider, workdir: Path
):
    """The control plane reads the key and serves it to Envoy as an SDS generic secret; the provider
    cluster's credential_injector adds it; a rotation in Vault is a new secret version, used by the
    next request after the control plane's re-read, without a restart. config_dump shows the secret
    redacted, and no ext_proc worker ever reads Vault."""
    vault.put_secret("providers/openai", {"key": "sk-vault-sds-one"})
    gateway = Gateway.start(workdir, _vault_policy(fake, vault.url), name="vault-sds")
    try:
        fake.clear()
        assert _ask(gateway)[0] == 200
        assert fake.requests()[-1]["headers"]["authorization"] == "Bearer sk-vault-sds-one"

        dump = http("GET", f"{gateway.admin}/config_dump?include_eds")[2].decode()
        assert "sk-vault-sds-" not in dump
        secrets = json.loads(http("GET", f"{gateway.admin}/config_dump?resource=dynamic_active_secrets")[2])
        by_name = {c["name"]: c for c in secrets["configs"]}
        generic = by_name["provider_fake-openai_key"]["secret"]["generic_secret"]["secret"]
        assert generic == {"inline_string": "[redacted]"}
        clusters = json.loads(http("GET", f"{gateway.admin}/config_dump?resource=dynamic_active_clusters")[2])
        cluster = next(c["cluster"] for c in clusters["configs"] if c["cluster"]["name"] == "provider_fake-openai")
        options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert [f["name"] for f in options["http_filters"]] == [
            "envoy.filters.http.credential_injector",
            "envoy.filters.http.upstream_codec",
        ]

        vault.put_secret("providers/openai", {"key": "sk-vault-sds-two"})

        def rotated() -> bool:
            fake.clear()
            assert _ask(gateway)[0] == 200
            return fake.requests()[-1]["headers"]["authorization"] == "Bearer sk-vault-sds-two"

        wait_until(rotated, 10, "the rotated key used by Envoy")
        for _ in range(4):  # every worker, every connection: the key is Envoy's, not a worker's
            fake.clear()
            assert _ask(gateway)[0] == 200
            assert fake.requests()[-1]["headers"]["authorization"] == "Bearer sk-vault-sds-two"

        lines = _log_lines(gateway)
        reads = [line for line in lines if "vault:secret/data/providers/openai#key" in line.get("message", "")]
        assert reads and {line["process"] for line in reads} == {"control-plane"}
        assert any("rotated: version 2 now in use" in line["message"] for line in reads)
        assert "sk-vault-sds-" not in gateway.log()
    finally:
        gateway.stop()


def test_a_chained_providers_vault_key_stays_with_ext_proc_which_injects_it_per_attempt(
    vault: VaultDouble, vault_env: None, fake: FakeProvider, workdir: Path
):
    """A fallback chain is one cluster for several providers: Envoy's injector cannot tell their keys
    apart, so the chain's attempts get the key from ext_proc (extproc.attempt), as before."""
    vault.put_secret("providers/openai", {"key": "sk-vault-chain"})
    policy = _vault_policy(fake, vault.url)
    policy["fallback"] = {"fake-openai,gpt-4o": ["fake-anthropic,claude-sonnet-4-5"]}
    gateway = Gateway.start(workdir, policy, name="vault-chain")
    try:
        fake.clear()
        assert _ask(gateway)[0] == 200
        assert fake.requests()[-1]["headers"]["authorization"] == "Bearer sk-vault-chain"
        clusters = json.loads(http("GET", f"{gateway.admin}/config_dump?resource=dynamic_active_clusters")[2])
        openai = next(c["cluster"] for c in clusters["configs"] if c["cluster"]["name"] == "provider_fake-openai")
        options = openai["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert "http_filters" not in options  # no injector: the key is ext_proc's
        readers = {
            line["process"]
            for line in _log_lines(gateway)
            if "vault:secret/data/providers/openai#key read" in line.get("message", "")
        }
        assert readers and all(process.startswith("extproc") for process in readers)
    finally:
        gateway.stop()


def test_a_reference_changed_to_an_unreadable_one_never_sends_a_request_without_the_key(
    vault: VaultDouble, vault_env: None, fake: FakeProvider, workdir: Path
):
    """The new reference has no value: Envoy's secret goes empty at once, ext_proc hears of it a
    grace period later. In between Envoy's injector refuses (its 401 mapped to the 503 ext_proc
    gives, in the client's format); after, ext_proc answers 503 itself. Never a keyless request."""
    vault.put_secret("providers/openai", {"key": "sk-vault-keep"})
    policy = _vault_policy(fake, vault.url)
    gateway = Gateway.start(workdir, policy, name="vault-unreadable")
    try:
        assert _ask(gateway)[0] == 200
        openai = next(p for p in policy["providers"] if p["name"] == "fake-openai")
        openai["api_key"] = "vault:secret/data/providers/missing#key"
        gateway.write_policy(policy)
        answers: list[tuple[int, dict]] = []

        def ext_proc_refuses() -> bool:
            answers.append(_ask(gateway))
            return answers[-1][0] == 503 and "cannot read" in answers[-1][1]["error"]["message"]

        wait_until(ext_proc_refuses, 20, "ext_proc's 503 for the unreadable key")
        refused = [body for status, body in answers if status != 200]
        assert all(body["type"] == "error" and body["error"]["type"] == "api_error" for body in refused)
        assert all("has no API key" in body["error"]["message"] for body in refused)
        by_envoy = [b for b in refused if "Envoy has not received it" in b["error"]["message"]]
        assert by_envoy, "Envoy's own refusal was not seen between the two pushes"
        assert by_envoy[0]["error"]["message"].startswith("provider 'fake-openai' has no API key")
        assert all(r["headers"].get("authorization") == "Bearer sk-vault-keep" for r in fake.requests())
    finally:
        gateway.stop()


def test_vault_down_at_startup_answers_503_and_sends_nothing_unauthenticated(
    vault: VaultDouble, vault_env: None, fake: FakeProvider, workdir: Path
):
    vault.put_secret("providers/openai", {"key": "sk-vault-late"})
    vault.call(vault.stop())
    gateway = Gateway.start(workdir, _vault_policy(fake, vault.url), name="vault-down")
    try:
        fake.clear()
        status, body = _ask(gateway)
        assert status == 503
        assert body["type"] == "error" and "has no API key" in body["error"]["message"]
        assert "Vault" in body["error"]["message"]
        assert fake.requests() == []  # never an unauthenticated request to the provider
        vault.call(vault.start())  # Vault back: the key is read on the next retry, no restart

        def served() -> bool:
            return _ask(gateway)[0] == 200

        wait_until(served, 20, "the key read once Vault is back")
        assert fake.requests()[-1]["headers"]["authorization"] == "Bearer sk-vault-late"
    finally:
        gateway.stop()


# --- Envoy 1.40: credential_injector as an upstream (per-cluster) filter ---------------------------

_INJECTOR_CONFIG = """
static_resources:
  secrets:
  - name: provider_key
    generic_secret: {secret: {inline_string: "Bearer sk-from-sds"}}
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: LISTEN}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          route_config:
            virtual_hosts:
            - {name: v, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: provider}}]}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: provider
    type: STATIC
    load_assignment:
      cluster_name: provider
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: UPSTREAM}}}}]}]
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http_protocol_options: {}}
        http_filters:
        - name: envoy.filters.http.credential_injector
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector
            overwrite: true
            credential:
              name: envoy.http.injected_credentials.generic
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic
                credential: {name: provider_key}
                header: Authorization
        - name: envoy.filters.http.upstream_codec
          typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: ADMIN}}
"""


def test_envoy_credential_injector_works_as_a_per_cluster_upstream_filter(tmp_path: Path):
    """The finding of docs/security-vault.md: on Envoy 1.40 credential_injector runs in a cluster's
    upstream filter chain (HttpProtocolOptions.http_filters) with a generic secret, and overwrites
    what the client sent. Here the secret is static; over SDS it would be pushed and rotated."""
    import subprocess
    import threading

    from ccr_gateway.envoy_bootstrap import envoy_binary

    seen: list[str | None] = []

    class Upstream(server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    upstream = server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    listen, admin = free_port(), free_port()
    config = tmp_path / "injector.yaml"
    text = _INJECTOR_CONFIG.replace("LISTEN", str(listen)).replace("ADMIN", str(admin))
    config.write_text(text.replace("UPSTREAM", str(upstream.server_address[1])))
    binary = envoy_binary()
    assert subprocess.run([binary, "--mode", "validate", "-c", str(config)], capture_output=True).returncode == 0
    envoy = subprocess.Popen(
        [binary, "-c", str(config), "--base-id", str(listen), "-l", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def answered() -> bool:
            return http("GET", f"http://127.0.0.1:{listen}/v1/models", headers={"authorization": "client"})[0] == 200

        wait_until(answered, 15, "envoy with credential_injector")
        assert seen[-1] == "Bearer sk-from-sds"
    finally:
        envoy.terminate()
        envoy.wait(10)
        upstream.shutdown()
