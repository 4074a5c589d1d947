"""What the gateway relies on in Vault's HTTP API, checked against the double and a real Vault.

Every case runs against the double (tests/vault_double.py) and, when VAULT_ADDR and VAULT_TOKEN (a
root or admin token) are set, against that Vault too: the double cannot drift from Vault without a
test saying so. The real run writes under secret/data/ccr-contract-<random>/ and enables AppRole at
a mount of its own. Kubernetes login needs a cluster's TokenReview: double only.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.vault_double import threaded_double


@dataclass
class Backend:
    kind: str
    url: str
    token: str
    prefix: str  # a KV path of this test's own

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        headers = {} if token == "" else {"X-Vault-Token": token or self.token}
        response = requests.request(method, f"{self.url}/v1/{path}", json=body, headers=headers, timeout=10)
        return response.status_code, response.json() if response.content.strip() else None


@pytest.fixture(params=["double", "real"])
def vault(request: pytest.FixtureRequest) -> Iterator[Backend]:
    prefix = f"ccr-contract-{uuid.uuid4().hex[:8]}"
    if request.param == "real":
        if not os.environ.get("VAULT_ADDR") or not os.environ.get("VAULT_TOKEN"):
            pytest.skip("VAULT_ADDR/VAULT_TOKEN not set: contract tests need a real Vault")
        yield Backend("real", os.environ["VAULT_ADDR"].rstrip("/"), os.environ["VAULT_TOKEN"], prefix)
        return
    with threaded_double(root_token="contract-root") as double:
        yield Backend("double", double.url, "contract-root", prefix)


def test_kv_v2_versions_and_metadata(vault: Backend):
    path = f"secret/data/{vault.prefix}/openai"
    assert vault.call("POST", path, {"data": {"key": "one"}})[0] == 200
    status, answer = vault.call("POST", path, {"data": {"key": "two"}})
    assert status == 200 and answer["data"]["version"] == 2
    status, answer = vault.call("GET", path)
    assert status == 200 and answer["data"]["data"] == {"key": "two"}
    assert answer["data"]["metadata"]["version"] == 2 and answer["lease_duration"] == 0
    assert vault.call("GET", path + "?version=1")[1]["data"]["data"] == {"key": "one"}
    status, meta = vault.call("GET", f"secret/metadata/{vault.prefix}/openai")
    assert status == 200 and meta["data"]["current_version"] == 2 and set(meta["data"]["versions"]) == {"1", "2"}


def test_cas_mismatch_is_400_with_the_error_envelope(vault: Backend):
    path = f"secret/data/{vault.prefix}/cas"
    assert vault.call("POST", path, {"data": {"k": "a"}, "options": {"cas": 0}})[0] == 200
    status, answer = vault.call("POST", path, {"data": {"k": "b"}, "options": {"cas": 0}})
    assert status == 400 and "check-and-set parameter did not match the current version" in answer["errors"][0]
    assert vault.call("POST", path, {"data": {"k": "c"}, "options": {"cas": 1}})[0] == 200


def test_a_missing_secret_is_404_with_no_errors(vault: Backend):
    status, answer = vault.call("GET", f"secret/data/{vault.prefix}/absent")
    assert status == 404 and answer == {"errors": []}


def test_no_or_a_wrong_token_is_403_permission_denied(vault: Backend):
    for token in ("", "hvs.not-a-token"):
        status, answer = vault.call("GET", f"secret/data/{vault.prefix}/x", token=token)
        assert status == 403 and "permission denied" in " ".join(answer["errors"])


def test_token_create_lookup_renew_and_policy(vault: Backend):
    policy = f'path "secret/data/{vault.prefix}/*" {{ capabilities = ["read"] }}'
    assert vault.call("PUT", f"sys/policies/acl/{vault.prefix}", {"policy": policy})[0] == 204
    status, created = vault.call(
        "POST", "auth/token/create", {"policies": [vault.prefix], "ttl": "1h", "renewable": True, "no_parent": True}
    )
    assert status == 200
    token = created["auth"]["client_token"]
    assert created["auth"]["lease_duration"] == 3600 and created["auth"]["renewable"] is True
    status, looked = vault.call("GET", "auth/token/lookup-self", token=token)
    assert status == 200 and 3590 <= looked["data"]["ttl"] <= 3600 and looked["data"]["renewable"] is True
    status, renewed = vault.call("POST", "auth/token/renew-self", {"increment": "2h"}, token=token)
    assert status == 200 and renewed["auth"]["lease_duration"] > 0
    vault.call("POST", f"secret/data/{vault.prefix}/granted", {"data": {"k": "v"}})
    assert vault.call("GET", f"secret/data/{vault.prefix}/granted", token=token)[0] == 200
    assert vault.call("POST", f"secret/data/{vault.prefix}/granted", {"data": {"k": "w"}}, token=token)[0] == 403


def test_approle_login(vault: Backend):
    mount = f"approle-{vault.prefix}" if vault.kind == "real" else "approle"
    assert vault.call("POST", f"sys/auth/{mount}", {"type": "approle"})[0] == 204
    base = f"auth/{mount}/role/gw" if vault.kind == "real" else "auth/approle/role/gw"
    assert vault.call("POST", base, {"token_policies": ["default"], "token_ttl": "10m"})[0] == 204
    role_id = vault.call("GET", f"{base}/role-id")[1]["data"]["role_id"]
    secret_id = vault.call("POST", f"{base}/secret-id")[1]["data"]["secret_id"]
    login = f"auth/{mount}/login" if vault.kind == "real" else "auth/approle/login"
    status, answer = vault.call("POST", login, {"role_id": role_id, "secret_id": secret_id}, token="")
    assert status == 200 and answer["auth"]["lease_duration"] == 600 and answer["auth"]["renewable"] is True
    status, answer = vault.call("POST", login, {"role_id": role_id, "secret_id": "wrong"}, token="")
    assert status == 400 and "invalid role or secret ID" in answer["errors"][0]


def test_an_unknown_lease_cannot_be_renewed(vault: Backend):
    status, answer = vault.call("PUT", "sys/leases/renew", {"lease_id": f"{vault.prefix}/nope"})
    assert status == 400 and "lease not found" in answer["errors"][0]


def test_kubernetes_login_double_only(vault: Backend):
    if vault.kind == "real":
        pytest.skip("Kubernetes login needs a cluster's TokenReview API")
    # The double's roles are test hooks; the wire shape is Vault's.
    status, answer = vault.call("POST", "auth/kubernetes/login", {"role": "r", "jwt": "x"}, token="")
    assert status == 403 and answer["errors"] == ["permission denied"]  # no kubernetes mount
