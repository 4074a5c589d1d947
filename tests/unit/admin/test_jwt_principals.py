"""JWT principals of the Admin API: a token signed by a key of the configured JWKS (a file here)
names a role and, for a tenant-admin, its tenant; anything else is a 401."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import rsa

from ccr_gateway.admin_wiring import app_context
from control_plane.admin.server import build_app
from control_plane.admin.settings import AdminSettings
from tests.unit.admin.conftest import DEFAULT_TEST_MODULES

ISSUER, AUDIENCE = "https://idp.example", "ccr-admin"


@pytest.fixture
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def client(isolated: Path, signing_key: rsa.RSAPrivateKey) -> AsyncIterator[TestClient]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key()))
    (isolated / "jwks.json").write_text(json.dumps({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    settings = AdminSettings(
        admin_sqlite=str(isolated / "admin.db"),
        keys_sqlite=str(isolated / "keys.db"),
        jwks=str(isolated / "jwks.json"),
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
    )
    app = await build_app(settings, modules=DEFAULT_TEST_MODULES, context=app_context())
    test_client = TestClient(TestServer(app))
    await test_client.start_server()
    try:
        yield test_client
    finally:
        await test_client.close()


def token(key: Any, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300, **claims}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


async def test_a_token_of_the_jwks_names_its_role(client: TestClient, signing_key) -> None:
    answer = await client.get("/admin/v1/me", headers=bearer(token(signing_key, ccr_role="viewer", name="Alice")))
    assert answer.status == 200, await answer.text()
    assert await answer.json() == {"id": "jwt:alice", "name": "Alice", "role": "viewer", "tenant": None}
    refused = await client.post("/admin/v1/keys", json={"tenant": "acme", "name": "x"}, headers=bearer(
        token(signing_key, ccr_role="viewer")))  # fmt: skip
    assert refused.status == 403  # a viewer reads only


async def test_a_tenant_admin_token_carries_its_tenant(client: TestClient, signing_key) -> None:
    answer = await client.get(
        "/admin/v1/me", headers=bearer(token(signing_key, ccr_role="tenant-admin", ccr_tenant="acme"))
    )
    assert (await answer.json())["tenant"] == "acme"
    no_tenant = await client.get("/admin/v1/me", headers=bearer(token(signing_key, ccr_role="tenant-admin")))
    assert no_tenant.status == 401


@pytest.mark.parametrize(
    "why",
    ["another key", "expired", "wrong issuer", "wrong audience", "no role", "unknown role", "hmac", "no exp"],
)
async def test_a_token_that_does_not_verify_is_a_401(client: TestClient, signing_key, why: str) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    made = {
        "another key": lambda: token(other, ccr_role="admin"),
        "expired": lambda: token(signing_key, ccr_role="admin", iat=now - 600, exp=now - 300),
        "wrong issuer": lambda: token(signing_key, ccr_role="admin", iss="https://evil.example"),
        "wrong audience": lambda: token(signing_key, ccr_role="admin", aud="someone-else"),
        "no role": lambda: token(signing_key),
        "unknown role": lambda: token(signing_key, ccr_role="root"),
        # An HMAC token "signed" with a public key's text: asymmetric algorithms only.
        "hmac": lambda: jwt.encode(
            {"sub": "x", "ccr_role": "admin", "exp": now + 60}, "s" * 32, algorithm="HS256", headers={"kid": "k1"}
        ),
        "no exp": lambda: jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "ccr_role": "admin"},
            signing_key,
            algorithm="RS256",
            headers={"kid": "k1"},
        ),
    }[why]()
    answer = await client.get("/admin/v1/me", headers=bearer(made))
    assert answer.status == 401, (why, await answer.text())
    assert (await answer.json())["error"]["code"] == "unauthenticated"
