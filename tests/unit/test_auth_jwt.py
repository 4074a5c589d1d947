"""JWT/OIDC: the policy's ``auth.jwt`` (mistakes with their line, the JWKS file read with the
policy), the Envoy filters and clusters built from it, the claims -> identity mapping, and both
decision paths authenticating a request by the headers Envoy's claims filter sets."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)

from ccr.v1.contract import KEY_ID_LABEL, TENANT_LABEL
from control_plane.policy import PolicyError, load_policy
from control_plane.policy.jwt import DEFAULT_FROM, JwksSpec, JwtProviderSpec, JwtSpec
from control_plane.resources import gateway
from control_plane.resources import jwt as jwt_resources
from control_plane.xds.envoy_snapshot import envoy_snapshot
from control_plane.xds.snapshot import CLUSTER
from extproc.auth import jwt_identity
from extproc.auth.decision import Authenticator
from extproc.auth.jwt_identity import JwtCaller, JwtRefusal, VerifiedClaims, identity, read_claims
from extproc.auth.key_cache import KeyCache
from extproc.auth.keys import VirtualKey, new_key
from extproc.auth.local_limits import LocalLimiter
from extproc.translate.base import Api
from tests.unit.test_hop import auth_via_ext_proc, auth_via_hop
from tests.unit.test_plan import FAKE_KEYS, FAKE_REFUSED, GENERATE, USER, FakeKeys, anthropic, auth_state, raw_of
from tests.unit.test_storage_policy import PROVIDERS

JWKS = {"keys": [{"kty": "RSA", "kid": "k1", "n": "sXch", "e": "AQAB"}]}
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln"
REMOTE = """auth:
  jwt:
    providers:
      - name: corp
        issuer: https://idp.example.com/
        audiences: [ccr-gateway]
        jwks: {uri: https://idp.example.com/keys, cache_s: 600}
        claims: {tenant: org.id, key: ccr_key}
"""


def load(auth: str, source: str = "gw.yaml"):
    return load_policy(PROVIDERS + auth, source)


def problems(auth: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(auth)
    return [str(problem) for problem in caught.value.problems]


# --- the policy ----------------------------------------------------------------------------------


def test_a_provider_with_a_jwks_url_takes_the_defaults_it_does_not_name():
    (corp,) = load(REMOTE).auth.jwt.providers
    assert corp == JwtProviderSpec(
        "corp",
        "https://idp.example.com/",
        ("ccr-gateway",),
        JwksSpec(uri="https://idp.example.com/keys", cache_seconds=600),
        from_headers=DEFAULT_FROM,
        tenant_claim="org.id",
        key_claim="ccr_key",
        subject_claim="sub",
    )
    assert (corp.jwks.host, corp.jwks.port, corp.jwks.tls, corp.cluster) == ("idp.example.com", 443, True, "jwks_corp")
    assert load("").auth.jwt == JwtSpec()


def test_a_jwks_file_is_read_beside_the_policy_file(tmp_path: Path):
    (tmp_path / "keys.json").write_text(json.dumps(JWKS))
    policy_file = tmp_path / "gw.yaml"
    text = REMOTE.replace("{uri: https://idp.example.com/keys, cache_s: 600}", "{file: keys.json}")
    policy_file.write_text(PROVIDERS + text)
    jwks = load(text, str(policy_file)).auth.jwt.providers[0].jwks
    assert jwks.file == str(tmp_path / "keys.json") and json.loads(jwks.inline) == JWKS and not jwks.uri


def test_mistakes_are_reported_with_their_line():
    found = problems(
        """auth:
  jwt:
    providers:
      - name: Corp
        issuer: https://idp
        audiences: []
        jwks: {uri: ftp://idp/keys}
        from: [x-ccr-jwt-tenant]
        claims: {tenant: "https://idp/tenant", sub: x}
      - {name: b, issuer: https://idp, audiences: [a], jwks: {uri: http://idp/k, file: k.json}, claims: {}}
"""
    )
    assert found == [
        "gw.yaml:6:15: auth.jwt.providers[0].name: 'Corp' is not a valid name (a-z, 0-9, _ and -)",
        "gw.yaml:8:20: auth.jwt.providers[0].audiences: at least one audience is required",
        "gw.yaml:9:21: auth.jwt.providers[0].jwks.uri: 'ftp://idp/keys' is not an http(s) URL like https://idp/jwks.json",
        "gw.yaml:10:16: auth.jwt.providers[0].from[0]: 'x-ccr-jwt-tenant' is the gateway's own header: clients cannot set it",
        "gw.yaml:11:26: auth.jwt.providers[0].claims.tenant: 'https://idp/tenant' is not a claim name"
        " (a name, or a dotted path into nested claims like org.id)",
        "gw.yaml:11:48: auth.jwt.providers[0].claims.sub: unknown field (did you mean 'subject'?)",
        "gw.yaml:12:62: auth.jwt.providers[1].jwks: name one source of keys: uri or file",
        "gw.yaml:12:105: auth.jwt.providers[1].claims.tenant: is required",
    ]


def test_names_and_issuers_are_unique_and_a_file_is_not_cached():
    second = REMOTE.split("      - ", 1)[1]
    found = problems(REMOTE + "      - " + second)
    assert found == [
        "gw.yaml:11:9: auth.jwt.providers[1].name: name 'corp' is already used by auth.jwt.providers[0]",
        "gw.yaml:11:9: auth.jwt.providers[1].issuer: issuer 'https://idp.example.com/' is already used by"
        " auth.jwt.providers[0]",
    ]
    cached_file = REMOTE.replace("{uri: https://idp.example.com/keys, cache_s: 600}", "{file: /k.json, cache_s: 5}")
    found = problems(cached_file)
    assert (
        "gw.yaml:9:40: auth.jwt.providers[0].jwks.cache_s: only a uri is cached (a file is read with the policy)"
        in found
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("{not json", "is not JSON"),
        ('{"keys": []}', "is not a JSON Web Key Set"),
        ('[{"kty": "RSA"}]', "is not a JSON Web Key Set"),
    ],
)
def test_a_jwks_file_that_is_no_key_set_is_a_mistake_of_the_policy(tmp_path: Path, content, message):
    path = tmp_path / "keys.json"
    if content is not None:
        path.write_text(content)
    found = problems(REMOTE.replace("{uri: https://idp.example.com/keys, cache_s: 600}", f"{{file: '{path}'}}"))
    assert len(found) == 1 and found[0].startswith("gw.yaml:9:") and message in found[0]


# --- the Envoy resources -------------------------------------------------------------------------


def _filters(policy) -> list:
    manager = HttpConnectionManager()
    gateway.listener(policy).filter_chains[0].filters[0].typed_config.Unpack(manager)
    return list(manager.http_filters)


def test_jwt_authn_and_the_claims_filter_go_before_the_decision_filters():
    names = [f.name for f in _filters(load(REMOTE))]
    jwt_at, claims_at = names.index(jwt_resources.JWT_FILTER), names.index(jwt_resources.CLAIMS_FILTER)
    assert jwt_at + 1 == claims_at < names.index("envoy.filters.http.lua") < names.index("envoy.filters.http.ext_proc")
    # Without auth.jwt only the claims filter is there: the client's x-ccr-jwt-* go all the same.
    names = [f.name for f in _filters(load(""))]
    assert jwt_resources.JWT_FILTER not in names and jwt_resources.CLAIMS_FILTER in names
    (only,) = jwt_resources.filters(JwtSpec())
    assert only["typed_config"]["mutations"]["request_mutations"] == [
        {"remove_on_match": {"key_matcher": {"prefix": "x-ccr-jwt-"}}}
    ]


def test_the_jwt_filter_verifies_and_leaves_the_decision_to_the_decision_service():
    config = jwt_resources.jwt_authn_filter(load(REMOTE).auth.jwt)["typed_config"]
    assert config["rules"] == [{"match": {"prefix": "/"}, "requires": {"allow_missing_or_failed": {}}}]
    corp = config["providers"]["corp"]
    assert corp["from_headers"] == [{"name": "authorization", "value_prefix": "Bearer "}, {"name": "x-api-key"}]
    assert corp["forward"] is False and corp["audiences"] == ["ccr-gateway"]
    assert corp["remote_jwks"]["http_uri"] == {
        "uri": "https://idp.example.com/keys",
        "cluster": "jwks_corp",
        "timeout": "5s",
    }
    assert corp["remote_jwks"]["cache_duration"] == "600s"
    inline = JwtSpec((JwtProviderSpec("f", "i", ("a",), JwksSpec(file="/k", inline='{"keys": []}')),))
    assert jwt_resources.jwt_authn_filter(inline)["typed_config"]["providers"]["f"]["local_jwks"] == {
        "inline_string": '{"keys": []}'
    }


def test_the_claims_filter_removes_the_clients_copies_first_then_sets_the_policys_claims():
    mutations = jwt_resources.claims_filter(load(REMOTE).auth.jwt)["typed_config"]["mutations"]["request_mutations"]
    assert mutations[0] == {"remove_on_match": {"key_matcher": {"prefix": "x-ccr-jwt-"}}}
    values = {m["append"]["header"]["key"]: m["append"]["header"]["value"] for m in mutations[1:]}
    metadata = "envoy.filters.http.jwt_authn"
    assert values == {
        "x-ccr-jwt-from": "authorization,x-api-key",
        "x-ccr-jwt-issuer": f"%DYNAMIC_METADATA({metadata}:payload/corp:iss)%",
        "x-ccr-jwt-tenant": f"%DYNAMIC_METADATA({metadata}:payload/corp:org:id)%",
        "x-ccr-jwt-key": f"%DYNAMIC_METADATA({metadata}:payload/corp:ccr_key)%",
        "x-ccr-jwt-subject": f"%DYNAMIC_METADATA({metadata}:payload/corp:sub)%",
        "x-ccr-jwt-error": f"%DYNAMIC_METADATA({metadata}:failure/corp:message)%",
    }


def test_a_jwks_url_gets_a_cluster_in_the_snapshot_with_tls_for_https():
    policy = load(REMOTE)
    snapshot = envoy_snapshot("1", policy, policy.providers, {}, gateway.provider_endpoints, ("ccr_extproc",))
    cluster = snapshot.get(CLUSTER).by_name["jwks_corp"]
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == ("idp.example.com", 443)
    assert cluster.transport_socket.name == "envoy.transport_sockets.tls"
    (plain,) = jwt_resources.jwks_clusters(
        load(REMOTE.replace("https://idp.example.com/keys", "http://10.0.0.9:8080/k")).auth.jwt
    )
    address = plain.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == ("10.0.0.9", 8080) and not plain.HasField("transport_socket")


def test_both_processes_name_the_claim_headers_alike():
    for name in (
        "JWT_HEADER_PREFIX",
        "FROM_HEADER",
        "ISSUER_HEADER",
        "TENANT_HEADER",
        "KEY_HEADER",
        "SUBJECT_HEADER",
        "ERROR_HEADER",
    ):
        assert getattr(jwt_resources, name) == getattr(jwt_identity, name), name
    assert jwt_resources.SYSTEM_CA_BUNDLE == gateway.SYSTEM_CA_BUNDLE


# --- claims -> identity --------------------------------------------------------------------------

ON = {jwt_identity.FROM_HEADER: "authorization,x-api-key"}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),  # JWT off
        ({"authorization": f"Bearer {TOKEN}"}, None),  # JWT off: a token is a foreign key, as before
        (ON, None),  # no token
        ({**ON, "authorization": "Bearer sk-ccr-abcdefgh_" + "s" * 43}, None),  # a virtual key is no token
        ({**ON, "x-api-key": "sk-ant-provider"}, None),
        ({**ON, "x-goog-api-key": TOKEN}, None),  # not a header tokens are read from
        ({**ON, "authorization": f"Basic {TOKEN}"}, None),
    ],
)
def test_without_a_token_in_the_from_headers_there_is_nothing_to_judge(headers, expected):
    assert read_claims(headers) is expected


def test_a_token_envoy_did_not_verify_is_a_401_with_envoys_reason():
    assert read_claims({**ON, "authorization": f"bearer {TOKEN}", "x-ccr-jwt-error": "Jwt is expired"}) == JwtRefusal(
        401, "invalid token: Jwt is expired", "ccr_auth_jwt_invalid"
    )
    unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."
    refused = read_claims({**ON, "x-api-key": unsigned})
    assert isinstance(refused, JwtRefusal) and refused.message == "invalid token: Jwt verification fails"


def test_verified_claims_are_read_from_the_issuer_header_on():
    headers = {"x-ccr-jwt-issuer": "https://idp", "x-ccr-jwt-tenant": "acme", "x-ccr-jwt-subject": "alice"}
    assert read_claims(headers) == VerifiedClaims("https://idp", "acme", "", "alice")


KEYS = {"validkey": VirtualKey("validkey", "acme", "laptop", models=("gpt-4o",), rpm=5)}


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        (
            VerifiedClaims("https://idp", "acme", subject="alice"),
            JwtCaller("jwt:alice", "acme", "alice", subject="alice", issuer="https://idp"),
        ),
        (VerifiedClaims("https://idp", "acme", key="validkey"), KEYS["validkey"]),
        (VerifiedClaims("https://idp", "", subject="alice"), 403),
        (VerifiedClaims("https://idp", "ac\tme"), 403),
        (VerifiedClaims("https://idp", "globex", key="validkey"), 403),
        (VerifiedClaims("https://idp", "acme", key="nobodyxx"), 403),
    ],
)
def test_claims_name_a_tenant_and_maybe_a_virtual_key_of_it(claims, expected):
    caller = identity(claims, KEYS.get)
    if isinstance(expected, int):
        assert isinstance(caller, JwtRefusal) and caller.status == expected
    else:
        assert caller == expected


def test_a_jwt_caller_is_labelled_by_its_subject_and_has_no_limits():
    caller = identity(VerifiedClaims("https://idp", "acme", subject="bob"), KEYS.get)
    assert isinstance(caller, VirtualKey) and (caller.key_id, caller.rpm, caller.models) == ("jwt:bob", None, ())
    assert Authenticator().limits_of(caller) == ((), None)


def test_the_key_cache_finds_a_usable_key_by_id_only():
    now = time.time()
    usable = new_key("acme", "ok", now)[1]
    revoked = new_key("acme", "gone", now, revoked=True)[1]
    expired = new_key("acme", "old", now, expires_at=now - 1)[1]
    cache = KeyCache(store=None, poll_interval=1)  # type: ignore[arg-type]
    cache.apply([usable, revoked, expired])
    assert cache.by_id(usable.key_id) == usable.key
    assert cache.by_id(revoked.key_id) is None and cache.by_id(expired.key_id) is None
    assert cache.by_id("nobodyxx") is None


# --- both decision paths -------------------------------------------------------------------------


class JwtKeys(FakeKeys):
    def by_id(self, key_id: str) -> VirtualKey | None:
        return next((k for k in self.keys.values() if k.key_id == key_id), None)


def _state(required: bool):
    state = auth_state(required)
    state.auth = Authenticator(JwtKeys(FAKE_KEYS, FAKE_REFUSED), LocalLimiter(clock=lambda: 1000.0))
    return state


VERIFIED = {**ON, "x-ccr-jwt-issuer": "https://idp", "x-ccr-jwt-tenant": "acme", "x-ccr-jwt-subject": "alice"}
OPENAI_BODY = {"model": "gpt-4o", "messages": USER}


def _both(required: bool, api: Api, headers: dict, payload) -> dict:
    raw = raw_of(payload)
    via_hop = auth_via_hop(_state(required), api, GENERATE, dict(headers), raw)
    via_ext_proc = auth_via_ext_proc(_state(required), api, GENERATE, dict(headers), raw)
    assert via_hop == via_ext_proc
    return via_hop


def test_a_verified_token_is_admitted_with_its_tenant_and_subject_on_both_paths():
    answer = _both(True, Api.ANTHROPIC, VERIFIED, anthropic())
    assert (answer["labels"][TENANT_LABEL], answer["labels"][KEY_ID_LABEL]) == ("acme", "jwt:alice")
    assert all(name in answer["forward"] for name in VERIFIED)  # no claim header goes upstream


def test_a_key_claim_brings_that_keys_models():
    refused = _both(False, Api.ANTHROPIC, {**VERIFIED, "x-ccr-jwt-key": "onlygptx"}, anthropic())
    assert refused["reply"][0] == 403 and refused["reply"][1]["error"]["type"] == "permission_error"
    admitted = _both(False, Api.OPENAI, {**VERIFIED, "x-ccr-jwt-key": "onlygptx"}, OPENAI_BODY)
    assert admitted["labels"][KEY_ID_LABEL] == "onlygptx"


@pytest.mark.parametrize("required", [True, False])
def test_a_failed_token_is_a_401_in_the_clients_format_whether_or_not_keys_are_required(required):
    failed = {**ON, "authorization": f"Bearer {TOKEN}", "x-ccr-jwt-error": "Jwt is expired"}
    status, body, _ = _both(required, Api.ANTHROPIC, failed, anthropic())["reply"]
    assert status == 401
    assert body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid token: Jwt is expired"},
    }
    status, body, _ = _both(required, Api.OPENAI, failed, OPENAI_BODY)["reply"]
    assert status == 401
    assert (body["error"]["type"], body["error"]["code"]) == ("invalid_request_error", "invalid_api_key")


def test_without_a_credential_the_401_says_a_jwt_is_welcome_too():
    status, body, _ = _both(True, Api.ANTHROPIC, ON, anthropic())["reply"]
    assert status == 401 and body["error"]["message"].endswith("or a JWT of the gateway's identity provider")


def test_a_virtual_key_still_works_beside_jwt():
    answer = _both(True, Api.OPENAI, {**ON, "authorization": "Bearer sk-ccr-validkey_" + "s" * 43}, OPENAI_BODY)
    assert answer["labels"][KEY_ID_LABEL] == "validkey"
