"""Vertex OAuth tokens obtained and refreshed by the control plane (control_plane.gcp_tokens): the
JWT-bearer grant against a local token endpoint (claims and RS256 signature checked with the public
key), the metadata server, the refresh schedule, short-lived tokens refreshed while the SDS secret
changes version (no restart, no cluster rebuilt), and failures (last good token kept until it
expires, then an empty secret: the missing-key 503)."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from dataclasses import replace
from urllib.parse import parse_qs

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ccr.v1.contract import ENVOY_GROUP, EXTPROC_GROUP
from control_plane import gcp_token_sources, gcp_tokens
from control_plane.gcp_token_sources import JWT_BEARER, MetadataSource, ServiceAccountSource
from control_plane.gcp_tokens import (
    EnvTokenSource,
    Token,
    TokenError,
    TokenRefresher,
    refresh_delay,
    source_for,
    token_ref,
)
from control_plane.policy import GatewayPolicy
from control_plane.xds.snapshot import CLUSTER, ENDPOINT, POLICY, SECRET
from tests.unit.cp_helpers import provider
from tests.unit.test_rollout import FakeClock, Harness, fake_clock  # noqa: F401 (fixture)


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_file(tmp_path, private_key, token_uri: str = "https://oauth2.googleapis.com/token"):
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path = tmp_path / "key.json"
    key = {
        "type": "service_account",
        "client_email": "gw@proj.iam.gserviceaccount.com",
        "private_key_id": "kid-1",
        "private_key": pem,
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(key))
    return path


class FakeTokenEndpoint:
    """Google's token endpoint, as far as the JWT-bearer grant goes; checks every assertion."""

    def __init__(self, public_key, expires_in: float = 3600) -> None:
        self.public_key, self.expires_in = public_key, expires_in
        self.claims: list[dict] = []
        self.fail = False

    async def token(self, request: web.Request) -> web.Response:
        form = parse_qs(await request.text())
        assert form["grant_type"] == [JWT_BEARER]
        header, claims, signature = form["assertion"][0].split(".")
        try:
            self.public_key.verify(
                _b64decode(signature), f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            return web.json_response({"error": "invalid_grant"}, status=400)
        assert json.loads(_b64decode(header)) == {"alg": "RS256", "typ": "JWT", "kid": "kid-1"}
        self.claims.append(json.loads(_b64decode(claims)))
        if self.fail:
            return web.json_response({"error": "unavailable"}, status=503)
        n = len(self.claims)
        return web.json_response(
            {"access_token": f"ya29.token-{n}", "expires_in": self.expires_in, "token_type": "Bearer"}
        )

    async def metadata(self, request: web.Request) -> web.Response:
        if request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(status=403)
        return web.json_response({"access_token": "ya29.from-metadata", "expires_in": 1799, "token_type": "Bearer"})


@pytest.fixture
async def endpoint(private_key):
    fake = FakeTokenEndpoint(private_key.public_key())
    app = web.Application()
    app.router.add_post("/token", fake.token)
    app.router.add_get(gcp_token_sources.METADATA_TOKEN_PATH, fake.metadata)
    server = TestServer(app)
    await server.start_server()
    fake.url = str(server.make_url(""))  # type: ignore[attr-defined]
    yield fake
    await server.close()


async def test_the_jwt_bearer_grant_signs_an_assertion_the_public_key_verifies(tmp_path, private_key, endpoint):
    token_uri = endpoint.url + "/token"
    source = ServiceAccountSource(str(key_file(tmp_path, private_key)), token_uri=token_uri)
    token = await source.fetch(1_000_000.0)
    assert token == Token("ya29.token-1", 1_000_000.0 + 3600, 3600)
    assert endpoint.claims == [
        {
            "iss": "gw@proj.iam.gserviceaccount.com",
            "scope": "https://www.googleapis.com/auth/cloud-platform",
            "aud": token_uri,
            "iat": 1_000_000,
            "exp": 1_003_600,
        }
    ]


async def test_the_key_files_token_uri_is_used_unless_overridden(tmp_path, private_key, endpoint):
    path = key_file(tmp_path, private_key, token_uri=endpoint.url + "/token")
    source = source_for("service_account:${KEY}", {"KEY": str(path)})
    assert (await source.fetch(0.0)).value == "ya29.token-1"
    assert endpoint.claims[0]["aud"] == endpoint.url + "/token"


async def test_a_refused_grant_is_a_token_error_without_the_key(tmp_path, private_key, endpoint):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    source = ServiceAccountSource(str(key_file(tmp_path, other)), token_uri=endpoint.url + "/token")
    with pytest.raises(TokenError) as caught:
        await source.fetch(0.0)
    assert "400" in str(caught.value) and "PRIVATE" not in str(caught.value)


async def test_an_unreadable_key_file_is_a_token_error(tmp_path):
    with pytest.raises(TokenError, match="cannot read"):
        await ServiceAccountSource(str(tmp_path / "missing.json")).fetch(0.0)


async def test_the_metadata_server_is_asked_with_its_flavor_header(endpoint):
    token = await MetadataSource(endpoint.url).fetch(10.0)
    assert token == Token("ya29.from-metadata", 10.0 + 1799, 1799)


async def test_an_env_token_is_reread_at_each_fetch():
    env = {"VERTEX_TOKEN": "t1"}
    source = EnvTokenSource("VERTEX_TOKEN", env, lifetime_s=60)
    assert (await source.fetch(0.0)).value == "t1"
    env["VERTEX_TOKEN"] = "t2"
    assert (await source.fetch(0.0)).value == "t2"
    del env["VERTEX_TOKEN"]
    with pytest.raises(TokenError, match="not set"):
        await source.fetch(0.0)


@pytest.mark.parametrize(
    ("lifetime", "refresh_after"),
    [(3600, 2880), (1200, 900), (10, 5)],  # 80 % of an hour; 5 min before 20 min; half of 10 s
)
def test_tokens_are_refreshed_at_80_percent_or_5_minutes_before_expiry(lifetime, refresh_after):
    assert refresh_delay(Token("t", 100.0 + lifetime, lifetime), 100.0) == refresh_after


def test_a_token_never_shows_its_value():
    assert "secret" not in repr(Token("secret", 1.0, 1.0))


def vertex(name: str = "a", credentials: str = "env:VERTEX_TOKEN"):
    return replace(provider(name, api="vertex", host="127.0.0.1"), credentials=credentials)


def _secret_value(h: Harness) -> str:
    snapshot = h.cache.get(ENVOY_GROUP)
    assert snapshot is not None
    return snapshot.get(SECRET).by_name["provider_a_key"].generic_secret.secret.inline_string


async def test_short_lived_tokens_are_refreshed_and_pushed_as_new_secret_versions(fake_clock):  # noqa: F811
    """Tokens of 0.4 s: refreshed at half their life, each refresh a new version of the provider's
    SDS secret with the clusters untouched (nothing restarted, nothing drained)."""
    h = Harness(fake_clock)
    counter = iter(range(1, 100))
    env: dict[str, str] = {}

    class Counting:
        async def fetch(self, now: float) -> Token:
            env["VERTEX_TOKEN"] = f"tok-{next(counter)}"
            return await EnvTokenSource("VERTEX_TOKEN", env, lifetime_s=0.4).fetch(now)

    refresher = TokenRefresher(source_factory=lambda _: Counting())
    seen: list[tuple[str, str, str]] = []

    def pushed(tokens: dict[str, str], problems: dict[str, str]) -> None:
        h.rollout.set_provider_keys(tokens, problems)
        snapshot = h.cache.get(ENVOY_GROUP)
        assert snapshot is not None
        seen.append((_secret_value(h), snapshot.get(SECRET).version, snapshot.get(CLUSTER).version))

    refresher.on_change = pushed
    policy = GatewayPolicy(providers=(vertex(),))
    assert policy.envoy_injected_keys == {"a"}
    h.rollout.update(policy)
    assert _secret_value(h) == ""  # no token yet: Envoy refuses to send (the missing-key 503)
    refresher.follow(policy)
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            if len(seen) >= 3:
                break
    finally:
        refresher.stop()
    values = [value for value, _, _ in seen]
    assert values[:3] == ["Bearer tok-1", "Bearer tok-2", "Bearer tok-3"]
    assert len({version for _, version, _ in seen[:3]}) == 3  # a new secret version each time
    assert len({cluster for _, _, cluster in seen[:3]}) == 1  # the cluster was never rebuilt
    assert token_ref(vertex()) == "gcp:env:VERTEX_TOKEN"


class Flaky:
    def __init__(self) -> None:
        self.fail = False

    async def fetch(self, now: float) -> Token:
        if self.fail:
            raise TokenError("the token endpoint answered 503")
        return Token("tok", now + 100, 100)


async def test_a_failed_refresh_keeps_the_last_token_until_it_expires_then_empties_the_secret():
    now = [1000.0]
    refresher = TokenRefresher(clock=lambda: now[0])
    refresher.providers = {"gcp:metadata": ("a",)}
    changes: list[tuple[dict, dict]] = []
    refresher.on_change = lambda tokens, problems: changes.append((tokens, problems))
    source = Flaky()
    before = gcp_tokens.REFRESH_FAILURES.labels("a")._value.get()
    assert await refresher.refresh("gcp:metadata", source) == 50.0  # half of a 100 s life
    assert refresher.values() == {"gcp:metadata": "tok"}
    source.fail = True
    now[0] += 50
    wait = await refresher.refresh("gcp:metadata", source)
    assert 0 < wait <= 50  # retried before the token expires
    assert refresher.values() == {"gcp:metadata": "tok"} and refresher.problems() == {}
    assert len(changes) == 1  # nothing changed for Envoy
    now[0] += 50  # expired
    await refresher.refresh("gcp:metadata", source)
    assert refresher.values() == {}
    assert refresher.problems() == {"gcp:metadata": "no OAuth token: the token endpoint answered 503"}
    assert changes[-1] == ({}, {"gcp:metadata": "no OAuth token: the token endpoint answered 503"})
    assert gcp_tokens.REFRESH_FAILURES.labels("a")._value.get() == before + 2


async def test_a_provider_without_a_token_is_unavailable_to_ext_proc_and_its_secret_is_empty(fake_clock):  # noqa: F811
    h = Harness(fake_clock)
    h.rollout.set_provider_keys({}, {"gcp:env:VERTEX_TOKEN": "no OAuth token: the variable VERTEX_TOKEN is not set"})
    h.rollout.update(GatewayPolicy(providers=(vertex(),)))
    h.envoy_connects()
    h.extproc_connects()
    h.envoy_acks(types=(CLUSTER, ENDPOINT, SECRET))
    assert _secret_value(h) == ""  # Envoy refuses to send without it: the missing-key 503
    offered = h.cache.get(EXTPROC_GROUP)
    assert offered is not None
    provider_a = offered.get(POLICY).by_name["policy"].providers[0]
    assert provider_a.key_injected_by_envoy  # ext_proc never holds the token
    assert "VERTEX_TOKEN is not set" in provider_a.key_unavailable  # ext_proc's 503 says why


VERTEX_POLICY = """
listener: {port: 8080}
providers:
  - name: a
    api: vertex
    project: my-project-1
    region: us-east5
    credentials: env:CCR_TEST_VERTEX_TOKEN
    models: [{name: claude-v, id: "claude-sonnet-4-5@20250929"}]
"""


async def test_the_control_plane_follows_a_vertex_providers_token_into_envoys_secret(tmp_path, monkeypatch):
    """The wiring in control_plane.server: a policy naming a vertex provider starts its refresher;
    the token it gets becomes the provider's SDS secret; a new token, a new secret version."""
    from control_plane.server import ControlPlane, ControlPlaneConfig

    for name in ("CCR_AUDIT_POSTGRES", "CCR_AUTH_POSTGRES", "CCR_AUDIT_KEY", "CCR_AUDIT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CCR_AUDIT_SQLITE", str(tmp_path / "audit.db"))
    monkeypatch.setenv("CCR_AUDIT_KEY_FILE", str(tmp_path / "audit.key"))
    (tmp_path / "audit.key").write_text("ef" * 32)
    monkeypatch.setenv("CCR_TEST_VERTEX_TOKEN", "ya29.first")
    policy_file = tmp_path / "gw.yaml"
    policy_file.write_text(VERTEX_POLICY)
    plane = ControlPlane(ControlPlaneConfig(policy_path=str(policy_file)))
    try:
        await plane.load_initial()

        def secret() -> str:
            snapshot = plane.cache.get(ENVOY_GROUP)
            assert snapshot is not None
            return snapshot.get(SECRET).by_name["provider_a_key"].generic_secret.secret.inline_string

        for _ in range(100):
            if secret():
                break
            await asyncio.sleep(0.02)
        assert secret() == "Bearer ya29.first"
        monkeypatch.setenv("CCR_TEST_VERTEX_TOKEN", "ya29.second")
        ref = "gcp:env:CCR_TEST_VERTEX_TOKEN"
        await plane.gcp_tokens.refresh(ref, source_for("env:CCR_TEST_VERTEX_TOKEN"))
        assert secret() == "Bearer ya29.second"
    finally:
        plane.gcp_tokens.stop()
        await plane.audit.close()
        await plane.source.close()


def test_a_control_plane_without_vertex_providers_loads_neither_aiohttp_nor_cryptography():
    """~16 MB of every control plane's memory (docs/performance.md: the gateway's RSS budget)."""
    probe = "import sys, control_plane.server; print(sorted({m.split('.')[0] for m in sys.modules} & {'aiohttp', 'cryptography'}))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
