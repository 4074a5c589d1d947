"""JWT/OIDC through the real gateway: Envoy's jwt_authn verifies tokens signed here, the decision
service maps their claims to the caller. One gateway (one worker) whose policy requires credentials
and trusts two issuers: one whose JWKS a local HTTP server serves (fetched by Envoy), one whose JWKS
is a file read with the policy. Each bad token is a 401 in each SDK's own error type; a virtual key
still works beside tokens; forged claim headers grant nothing; the usage record names the tenant."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anthropic
import jwt
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from extproc.auth.key_store import SqliteKeyStore
from extproc.auth.keys import new_key
from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port, http, wait_until

HELLO = [{"role": "user", "content": "hi"}]
REMOTE_ISSUER = "https://idp.test"
FILE_ISSUER = "https://file-idp.test"
AUDIENCE = "ccr-gateway"


class Signer:
    """An RSA key and its JWKS; tokens with the claims a test asks for (defaults: valid for an hour)."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict:
        public = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "alg": "RS256", "use": "sig"}]}

    def token(self, issuer: str = REMOTE_ISSUER, **claims: object) -> str:
        now = int(time.time())
        payload = {"iss": issuer, "aud": AUDIENCE, "sub": "alice", "org": "acme", "iat": now, "exp": now + 3600}
        payload.update(claims)
        payload = {name: value for name, value in payload.items() if value is not None}
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": self.kid})


class JwksServer:
    """The identity provider's JWKS endpoint, counting the fetches."""

    def __init__(self, jwks: dict) -> None:
        body = json.dumps(jwks).encode()
        owner = self
        self.fetches = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def signers() -> dict[str, Signer]:
    return {"remote": Signer("remote-1"), "file": Signer("file-1"), "stranger": Signer("remote-1")}


async def _create_keys(path: Path) -> dict[str, str]:
    """Virtual key ids: one of tenant acme that may use gpt-4o only, one of another tenant."""
    store = SqliteKeyStore(path)
    now = time.time()
    made: dict[str, str] = {}
    try:
        for name, tenant, limits in (("gpt-only", "acme", {"models": ("gpt-4o",)}), ("globex", "globex", {})):
            presented, record = new_key(tenant, name, now, **limits)
            await store.create(record)
            made[name] = presented
    finally:
        await store.close()
    return made


@pytest.fixture(scope="module")
def keys(workdir: Path) -> dict[str, str]:
    return asyncio.run(_create_keys(workdir / "jwt-keys.db"))


@pytest.fixture(scope="module")
def jwks_server(signers: dict[str, Signer]) -> Iterator[JwksServer]:
    server = JwksServer(signers["remote"].jwks())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def jwt_gateway(workdir: Path, fake: FakeProvider, keys, jwks_server: JwksServer, signers) -> Iterator[Gateway]:
    (workdir / "jwt-jwks.json").write_text(json.dumps(signers["file"].jwks()))
    policy = base_policy(free_port(), fake)
    policy["auth"] = {
        "required": True,
        "keys": {"sqlite": str(workdir / "jwt-keys.db")},
        "jwt": {
            "providers": [
                {
                    "name": "remote",
                    "issuer": REMOTE_ISSUER,
                    "audiences": [AUDIENCE],
                    "jwks": {"uri": jwks_server.url, "cache_s": 300},
                    "claims": {"tenant": "org", "key": "ccr_key"},
                },
                {
                    "name": "filed",
                    "issuer": FILE_ISSUER,
                    "audiences": ["other-app", AUDIENCE],
                    "jwks": {"file": "jwt-jwks.json"},  # beside the policy file
                    "from": ["authorization"],
                    "claims": {"tenant": "company.name", "subject": "email"},
                },
            ]
        },
    }
    gateway = Gateway.start(workdir, policy, name="jwt", workers=1)
    yield gateway
    gateway.stop()
    assert gateway.process.returncode == 0, gateway.log()[-4000:]


def key_id(presented: str) -> str:
    return presented[len("sk-ccr-") :].split("_", 1)[0]


def test_a_valid_token_is_answered_through_both_sdks(jwt_gateway, signers, jwks_server, fake) -> None:
    token = signers["remote"].token()
    bearer = anthropic.Anthropic(base_url=jwt_gateway.url, api_key=None, auth_token=token, max_retries=0)
    assert bearer.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=HELLO).content[0].text
    as_api_key = anthropic.Anthropic(base_url=jwt_gateway.url, api_key=token, max_retries=0)  # x-api-key
    assert as_api_key.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=HELLO).content[0].text
    gpt = openai.OpenAI(base_url=f"{jwt_gateway.url}/v1", api_key=token, max_retries=0)
    assert gpt.chat.completions.create(model="gpt-4o", messages=HELLO).choices[0].message.content
    assert jwks_server.fetches >= 1  # Envoy fetched the keys from the issuer's URL
    # The token went no further than the gateway, nor did any claim header.
    sent = [request["headers"] for request in fake.requests()]
    assert len(sent) == 3
    assert all(token not in json.dumps(headers) for headers in sent)
    assert all(not name.startswith("x-ccr-") for headers in sent for name in headers)


def test_a_token_of_the_file_jwks_is_answered(jwt_gateway, signers) -> None:
    token = signers["file"].token(FILE_ISSUER, company={"name": "initech"}, email="bob@initech.test")
    status, _, body = http(
        "POST",
        f"{jwt_gateway.url}/v1/messages",
        json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": HELLO}).encode(),
        {"authorization": f"Bearer {token}", "content-type": "application/json", "anthropic-version": "2023-06-01"},
    )
    assert status == 200, body


def _bad_tokens(signers: dict[str, Signer]) -> dict[str, str]:
    remote = signers["remote"]
    unsigned = jwt.encode({"iss": REMOTE_ISSUER, "aud": AUDIENCE, "org": "acme"}, None, algorithm="none")
    return {
        "expired": remote.token(exp=int(time.time()) - 3600),
        "wrong-audience": remote.token(aud="some-other-app"),
        "wrong-key": signers["stranger"].token(),  # the same kid, another key
        "unknown-issuer": remote.token(issuer="https://elsewhere.test"),
        "unsigned": unsigned,
        "malformed": "eyJhbGciOiJSUzI1NiJ9.eyJvcmciOiJhY21lIn0.c2lnbmF0dXJl",
    }


@pytest.mark.parametrize(
    ("which", "reason"),
    [
        ("expired", "expired"),
        ("wrong-audience", "Audiences"),
        ("wrong-key", "invalid token"),
        ("unknown-issuer", "invalid token"),
        ("unsigned", "invalid token"),
        ("malformed", "invalid token"),
        ("none", "x-api-key header is required"),
    ],
)
def test_a_bad_token_or_none_is_a_401_in_each_clients_format(jwt_gateway, signers, which, reason) -> None:
    token = _bad_tokens(signers).get(which)
    if token is None:  # the SDK refuses to send a request without a credential
        status, _, raw = http(
            "POST",
            f"{jwt_gateway.url}/v1/messages",
            json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": HELLO}).encode(),
            {"content-type": "application/json", "anthropic-version": "2023-06-01"},
        )
        assert status == 401
        body = json.loads(raw)
    else:
        claude = anthropic.Anthropic(base_url=jwt_gateway.url, api_key=None, auth_token=token, max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as refused:
            claude.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=HELLO)
        assert refused.value.status_code == 401
        body = refused.value.body
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert reason in body["error"]["message"]
    openai_headers = {"authorization": f"Bearer {token}"} if token else {}
    status, _, raw = http(
        "POST",
        f"{jwt_gateway.url}/v1/chat/completions",
        json.dumps({"model": "gpt-4o", "messages": HELLO}).encode(),
        {"content-type": "application/json", **openai_headers},
    )
    error = json.loads(raw)["error"]
    assert status == 401 and error["type"] == "invalid_request_error"
    assert error["code"] == ("invalid_api_key" if token else None)
    if token:
        gpt = openai.OpenAI(base_url=f"{jwt_gateway.url}/v1", api_key=token, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            gpt.chat.completions.create(model="gpt-4o", messages=HELLO)


def test_forged_claim_headers_without_a_token_grant_nothing(jwt_gateway, fake) -> None:
    forged = {
        "x-ccr-jwt-issuer": REMOTE_ISSUER,
        "x-ccr-jwt-tenant": "acme",
        "x-ccr-jwt-subject": "mallory",
        "x-ccr-jwt-from": "nothing",
        "content-type": "application/json",
        "anthropic-version": "2023-06-01",
    }
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": HELLO}).encode()
    status, _, raw = http("POST", f"{jwt_gateway.url}/v1/messages", body, forged)
    assert status == 401, raw
    assert json.loads(raw)["error"]["type"] == "authentication_error"
    assert fake.requests() == []


def test_forged_claim_headers_beside_a_token_do_not_change_its_tenant(jwt_gateway, signers) -> None:
    token = signers["remote"].token(sub="carol")
    headers = {
        "x-ccr-jwt-tenant": "globex",
        "x-ccr-jwt-subject": "mallory",
        "authorization": f"Bearer {token}",
        "content-type": "application/json",
        "anthropic-version": "2023-06-01",
    }
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": HELLO}).encode()
    status, answer_headers, raw = http("POST", f"{jwt_gateway.url}/v1/messages", body, headers)
    assert status == 200, raw
    record = _usage_record(answer_headers["request-id"])
    assert (record["tenant"], record["key_id"]) == ("acme", "jwt:carol")


def test_a_key_claim_applies_that_keys_models_and_must_be_of_the_same_tenant(jwt_gateway, signers, keys) -> None:
    gpt_only = signers["remote"].token(ccr_key=key_id(keys["gpt-only"]))
    claude = anthropic.Anthropic(base_url=jwt_gateway.url, api_key=None, auth_token=gpt_only, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError):
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=HELLO)
    gpt = openai.OpenAI(base_url=f"{jwt_gateway.url}/v1", api_key=gpt_only, max_retries=0)
    answer = gpt.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    record = _usage_record(answer.headers["x-request-id"])
    assert (record["tenant"], record["key_id"]) == ("acme", key_id(keys["gpt-only"]))
    other_tenant = signers["remote"].token(ccr_key=key_id(keys["globex"]))
    gpt = openai.OpenAI(base_url=f"{jwt_gateway.url}/v1", api_key=other_tenant, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        gpt.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert "another tenant" in refused.value.body["message"]


def test_a_virtual_key_as_a_bearer_token_still_works_beside_jwt(jwt_gateway, keys) -> None:
    gpt = openai.OpenAI(base_url=f"{jwt_gateway.url}/v1", api_key=keys["gpt-only"], max_retries=0)
    assert gpt.chat.completions.create(model="gpt-4o", messages=HELLO).choices[0].message.content


def _usage_record(request_id: str) -> dict:
    def record() -> dict | None:
        command = [sys.executable, "-m", "ccr_gateway.cli", "usage", "export", "--since", "1h"]
        out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout
        return next((r for r in map(json.loads, out.splitlines()) if r["request_id"] == request_id), None)

    return wait_until(record, 15, f"the usage record of {request_id}", interval=0.3)
