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
