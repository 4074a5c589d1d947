"""A verified client certificate as the caller (extproc.auth.cert_identity): the XFCC parser, the
policy's SAN -> tenant map from the policy file to the routing table, and ``authenticate`` on both
decision paths (a gateway key wins, an unknown SAN is nobody, ``auth.required`` still refuses)."""

from __future__ import annotations

import hashlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccr.v1.contract import KEY_ID_LABEL, TENANT_LABEL
from control_plane.policy import load_policy
from extproc.auth.cert_identity import CertCaller, cert_caller, nearest_sans, parse_xfcc
from extproc.auth.decision import Authenticator
from extproc.request_steps import Reply
from extproc.routing_table import compile_policy
from extproc.translate.base import Api
from tests.unit.test_hop import auth_via_ext_proc, auth_via_hop
from tests.unit.test_plan import GENERATE, POLICY, anthropic, auth_state, presented, raw_of
from tests.unit.test_tls import BASE, _mtls, certs  # noqa: F401  (certs: the fixture _mtls needs)

CI = "spiffe://ccr-gateway/ci"
ENVOY_XFCC = f'By=spiffe://gw;Hash=abc123;Subject="CN=ci,O=acme; \\"dev\\"";URI={CI};DNS=ci.internal'
IDENTITIES = {CI: "team", "build.internal": "acme"}


# --- the header ----------------------------------------------------------------------------------


def test_envoys_element_parses_into_its_pairs_with_quotes_and_escapes_removed():
    assert parse_xfcc(ENVOY_XFCC) == (
        (
            ("by", "spiffe://gw"),
            ("hash", "abc123"),
            ("subject", 'CN=ci,O=acme; "dev"'),
            ("uri", CI),
            ("dns", "ci.internal"),
        ),
    )


def test_the_last_element_is_the_nearest_clients():
    header = f"URI=spiffe://far/away;DNS=far,{ENVOY_XFCC}"
    assert nearest_sans(header) == (CI, "ci.internal")


def test_uris_come_before_dns_names_and_every_san_is_kept():
    assert nearest_sans("DNS=b;URI=spiffe://x/1;DNS=c;URI=spiffe://x/2") == ("spiffe://x/1", "spiffe://x/2", "b", "c")


@pytest.mark.parametrize("header", ["", ",", ";;", "URI", "=", 'Subject="unterminated;URI=spiffe://x/1', "\\"])
def test_odd_headers_name_no_san(header: str):
    assert nearest_sans(header) == ()


_VALUES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@given(st.lists(st.tuples(st.sampled_from(["By", "Hash", "Subject", "URI", "DNS"]), _VALUES), max_size=6), _VALUES)
def test_any_quoted_value_reads_back_as_written(pairs: list[tuple[str, str]], before: str):
    header = ";".join(f"{key}={_quote(value)}" for key, value in pairs)
    parsed = parse_xfcc(f"Hash={_quote(before)},{header}")
    assert parsed[-1] == tuple((key.lower(), value.strip()) for key, value in pairs)


@given(st.text(max_size=60))
def test_the_parser_never_raises(header: str):
    parse_xfcc(header)
    nearest_sans(header)


# --- the lookup ----------------------------------------------------------------------------------


def test_a_known_uri_san_is_its_tenants_caller():
    caller = cert_caller({"x-forwarded-client-cert": ENVOY_XFCC}, IDENTITIES)
    digest = hashlib.sha256(CI.encode()).hexdigest()[:16]
    assert caller == CertCaller(f"cert:{digest}", "team", CI, san=CI)
    assert (caller.models, caller.rpm, caller.budget_usd) == ((), None, None)  # the tenant's rules apply


def test_a_dns_san_matches_whatever_its_case():
    caller = cert_caller({"x-forwarded-client-cert": "Hash=x;DNS=Build.Internal"}, {"build.internal": "acme"})
    assert caller is not None and caller.tenant == "acme" and caller.name == "Build.Internal"


def test_without_a_map_or_a_known_san_there_is_no_caller():
    headers = {"x-forwarded-client-cert": ENVOY_XFCC}
    assert cert_caller(headers, {}) is None
    assert cert_caller(headers, {"spiffe://ccr-gateway/other": "team"}) is None
    assert cert_caller({}, IDENTITIES) is None
    # Only the last element counts: an earlier proxy's (or a forged) element names nobody.
    assert cert_caller({"x-forwarded-client-cert": f"URI={CI},URI=spiffe://x/y"}, IDENTITIES) is None


# --- from the policy to the table ----------------------------------------------------------------


def test_the_policys_identities_reach_the_routing_table(certs):  # noqa: F811
    source = "listener:\n  tls:\n" + _mtls(certs, f"    identities: {{{CI}: acme, Build.Internal: beta}}\n") + BASE
    loaded = load_policy(source)
    assert not [w for w in loaded.warnings if "identities" in w.path]  # enforced now: no warning
    proto = loaded.to_proto("1")
    assert dict(proto.cert_identities) == {CI: "acme", "Build.Internal": "beta"}
    table = compile_policy(proto, environ={})
    assert table.cert_identities == {CI: "acme", "build.internal": "beta"}
    assert table.auth_required is False


def test_a_policy_without_tls_sends_no_identities():
    assert dict(load_policy(POLICY).to_proto("1").cert_identities) == {}


# --- authenticate --------------------------------------------------------------------------------


def _authenticate(headers: dict, required: bool, identities: dict | None = None):
    identities = IDENTITIES if identities is None else identities
    return Authenticator().authenticate(Api.ANTHROPIC, "/v1/messages", headers, required, identities)


XFCC = {"x-forwarded-client-cert": ENVOY_XFCC}


@pytest.mark.parametrize("required", [True, False])
def test_a_known_certificate_without_a_key_authenticates_as_its_tenant(required: bool):
    caller = _authenticate(XFCC, required)
    assert isinstance(caller, CertCaller) and caller.tenant == "team"


def test_a_foreign_key_beside_a_known_certificate_is_not_ours_and_the_certificate_counts():
    caller = _authenticate({**XFCC, "x-api-key": "placeholder"}, True)
    assert isinstance(caller, CertCaller) and caller.tenant == "team"


def test_without_the_map_the_header_is_not_trusted():
    assert _authenticate(XFCC, False, {}) is None
    refused = _authenticate(XFCC, True, {})
    assert isinstance(refused, Reply) and refused.status == 401
    # A bare bool (a table made by hand) carries no identities.
    assert Authenticator().authenticate(Api.ANTHROPIC, "/v1/messages", XFCC, False) is None


def test_an_unknown_san_is_anonymous_or_refused_when_identities_are_required():
    stranger = {"x-forwarded-client-cert": "Hash=x;URI=spiffe://ccr-gateway/stranger;DNS=stranger"}
    assert _authenticate(stranger, False) is None
    refused = _authenticate(stranger, True)
    assert isinstance(refused, Reply) and refused.status == 401
    message = orjson.loads(refused.body)["error"]["message"]
    assert message.endswith("or a client certificate the gateway maps to a tenant")


# --- both decision paths -------------------------------------------------------------------------


def _state(required: bool):
    state = auth_state(required)
    proto = load_policy(POLICY).to_proto("1")
    proto.auth_required = required
    proto.cert_identities.update(IDENTITIES)
    state.table = compile_policy(proto, environ={"ANT_KEY": "k"})
    return state


def _both(required: bool, headers: dict, payload) -> dict:
    raw = raw_of(payload)
    via_hop = auth_via_hop(_state(required), Api.ANTHROPIC, GENERATE, dict(headers), raw)
    via_ext_proc = auth_via_ext_proc(_state(required), Api.ANTHROPIC, GENERATE, dict(headers), raw)
    assert via_hop == via_ext_proc
    return via_hop


def test_a_certificate_caller_is_admitted_with_its_tenant_and_its_tenants_routing_on_both_paths():
    answer = _both(True, XFCC, anthropic("claude-unknown-model"))
    digest = hashlib.sha256(CI.encode()).hexdigest()[:16]
    assert (answer["labels"][TENANT_LABEL], answer["labels"][KEY_ID_LABEL]) == ("team", f"cert:{digest}")
    assert "gemini" in str(answer["set"]).lower()  # tenant team's router: default gem,gemini-2.5-pro


def test_a_gateway_key_wins_over_the_certificate_on_both_paths():
    answer = _both(True, {**XFCC, "x-api-key": presented("validkey")}, anthropic())
    assert (answer["labels"][TENANT_LABEL], answer["labels"][KEY_ID_LABEL]) == ("acme", "validkey")
    refused = _both(True, {**XFCC, "x-api-key": presented("revokedx")}, anthropic())
    assert refused["reply"][0] == 401  # a key of ours that is wrong is judged as a key


def test_no_key_and_an_unknown_certificate_is_refused_when_required_on_both_paths():
    stranger = {"x-forwarded-client-cert": "Hash=x;URI=spiffe://ccr-gateway/stranger"}
    status, body, _ = _both(True, stranger, anthropic())["reply"]
    assert status == 401 and body["error"]["type"] == "authentication_error"
