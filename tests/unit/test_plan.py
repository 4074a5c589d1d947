"""extproc.plan: one decision for ext_proc and `route --explain`, and the two agree on every outcome.

A corpus of requests (each scenario, a fallback chain, count_tokens counted and forwarded, unknown
model, provider without its key, untranslatable pair, bodies a translator refuses, bad JSON) goes
through the ext_proc processor and through explain's description of the same plan: the status the
client would get, the cluster and the upstream path must be the same.
"""

from __future__ import annotations

import hashlib

import orjson
import pytest

from ccr_gateway.explain import describe
from control_plane.policy import load_policy
from extproc.auth.decision import Authenticator
from extproc.auth.keys import VirtualKey
from extproc.auth.local_limits import LocalLimiter
from extproc.plan import COUNT_TOKENS, GENERATE, Answer, Chain, Forward, plan
from extproc.processor import RequestProcessor
from extproc.routing_table import compile_policy
from extproc.state import GatewayState
from extproc.translate.base import Api
from tests.unit.test_processor import body, headers, set_headers_of

TEAM_KEY = "team-key"
POLICY = f"""
providers:
  - {{name: ant, api: anthropic, base_url: "http://10.0.0.1:8000", api_key_env: ANT_KEY, forward_count_tokens: true,
      models: [claude-sonnet-4-5, claude-haiku-4-5, {{name: claude-opus-4-1, id: opus-up}}]}}
  - {{name: oai, api: openai, base_url: "https://api.example.com/v1", models: [gpt-4o, gpt-4o-mini]}}
  - {{name: gem, api: gemini, base_url: "https://g.example.com/v1beta", models: [gemini-2.5-pro]}}
  - {{name: nokey, api: anthropic, base_url: "http://10.0.0.2:8000", api_key_env: MISSING_KEY, models: [claude-nokey]}}
router:
  default: "ant,claude-sonnet-4-5"
  background: "oai,gpt-4o-mini"
  think: "ant,claude-opus-4-1"
  longContext: "gem,gemini-2.5-pro"
  longContextThreshold: 1000
fallback:
  "ant,claude-opus-4-1": ["oai,gpt-4o", "gem,gemini-2.5-pro"]
tenants:
  - {{name: team, api_key_sha256: [{hashlib.sha256(TEAM_KEY.encode()).hexdigest()}], router: {{default: "gem,gemini-2.5-pro"}}}}
"""
USER = [{"role": "user", "content": "hi"}]


def anthropic(model: str = "claude-sonnet-4-5", **fields) -> dict:
    return {"model": model, "max_tokens": 100, "messages": USER, **fields}


# (name, client api, endpoint kind, extra headers, body): the corpus both sides see.
CASES = [
    ("default", Api.ANTHROPIC, GENERATE, {}, anthropic("claude-unknown-model")),
    ("model", Api.ANTHROPIC, GENERATE, {}, anthropic()),
    ("explicit", Api.ANTHROPIC, GENERATE, {}, anthropic("gem,gemini-2.5-pro")),
    ("background", Api.ANTHROPIC, GENERATE, {}, anthropic("claude-3-5-haiku")),
    ("think-chain", Api.ANTHROPIC, GENERATE, {}, anthropic(thinking={"type": "enabled", "budget_tokens": 2048})),
    ("long-context", Api.ANTHROPIC, GENERATE, {}, anthropic(messages=[{"role": "user", "content": "word " * 2000}])),
    ("tenant", Api.ANTHROPIC, GENERATE, {"x-api-key": TEAM_KEY}, anthropic()),
    ("openai-client", Api.OPENAI, GENERATE, {}, {"model": "gpt-4o", "messages": USER}),
    ("openai-to-chain", Api.OPENAI, GENERATE, {}, {"model": "claude-opus-4-1", "messages": USER}),
    ("no-key", Api.ANTHROPIC, GENERATE, {}, anthropic("claude-nokey")),
    ("refused-by-translator", Api.ANTHROPIC, GENERATE, {}, {"model": "gpt-4o", "messages": USER}),
    ("openai-refused", Api.OPENAI, GENERATE, {}, {"model": "gpt-4o", "messages": []}),
    ("no-model", Api.ANTHROPIC, GENERATE, {}, {"messages": USER}),
    ("not-an-object", Api.ANTHROPIC, GENERATE, {}, [1, 2]),
    ("bad-json", Api.ANTHROPIC, GENERATE, {}, b"{not json"),
    ("count-local", Api.ANTHROPIC, COUNT_TOKENS, {}, {"model": "gpt-4o", "messages": USER}),
    ("count-forwarded", Api.ANTHROPIC, COUNT_TOKENS, {}, {"model": "claude-sonnet-4-5", "messages": USER}),
    ("count-unknown-model", Api.ANTHROPIC, COUNT_TOKENS, {}, {"model": "x", "messages": USER}),
    ("count-no-key", Api.ANTHROPIC, COUNT_TOKENS, {}, {"model": "claude-nokey", "messages": USER}),
    # count_tokens refuses what /v1/messages refuses.
    ("count-unknown-provider", Api.ANTHROPIC, COUNT_TOKENS, {}, {"model": "nope,x", "messages": USER}),
    ("count-no-messages", Api.ANTHROPIC, COUNT_TOKENS, {}, {"model": "claude-sonnet-4-5", "messages": []}),
    ("bad-utf8", Api.ANTHROPIC, GENERATE, {}, b'{"model": "claude-sonnet-4-5", "x": "\xff"}'),
    ("undecodable", Api.OPENAI, GENERATE, {"x-ccr-content-encoding": "gzip"}, b"\x1f\x8b not gzip"),
]
PATHS = {
    (Api.ANTHROPIC, GENERATE): "/v1/messages",
    (Api.ANTHROPIC, COUNT_TOKENS): "/v1/messages/count_tokens",
    (Api.OPENAI, GENERATE): "/v1/chat/completions",
    (Api.RESPONSES, GENERATE): "/v1/responses",
}


@pytest.fixture(scope="module")
def state() -> GatewayState:
    gateway = GatewayState()
    gateway.table = compile_policy(load_policy(POLICY).to_proto("1"), environ={"ANT_KEY": "k"})
    return gateway


def raw_of(value: object) -> bytes:
    return value if isinstance(value, bytes) else orjson.dumps(value)


def processor_outcome(state: GatewayState, api: Api, kind: str, extra: dict, raw: bytes) -> dict:
    processor = RequestProcessor(state)
    auth = {"authorization": "Bearer c"} if api is Api.OPENAI else {}
    processor.handle(headers("POST", PATHS[(api, kind)], **auth, **extra))
    response = processor.handle(body(raw))
    if response.HasField("immediate_response"):
        return {"status": int(response.immediate_response.status.code), "cluster": None, "path": None}
    set_headers = set_headers_of(response)
    return {"status": None, "cluster": set_headers["x-ccr-cluster"], "path": set_headers.get(":path")}


def explain_outcome(state: GatewayState, api: Api, kind: str, extra: dict, raw: bytes) -> dict:
    result = describe(plan(state.table, api, kind, extra, raw), api)
    upstream = result.get("upstream_request") or {}
    cluster = None if result["status"] is not None else result["cluster"]
    return {"status": result["status"], "cluster": cluster, "path": upstream.get("path")}


@pytest.mark.parametrize(("name", "api", "kind", "extra", "payload"), CASES, ids=[c[0] for c in CASES])
def test_explain_and_ext_proc_agree(state, name, api, kind, extra, payload) -> None:
    raw = raw_of(payload)
    assert explain_outcome(state, api, kind, extra, raw) == processor_outcome(state, api, kind, extra, raw)


def test_the_corpus_covers_every_outcome(state) -> None:
    outcomes = {type(plan(state.table, api, kind, extra, raw_of(payload))) for _, api, kind, extra, payload in CASES}
    assert outcomes == {Answer, Forward, Chain}
    statuses = {
        outcome.status
        for _, api, kind, extra, payload in CASES
        if isinstance(outcome := plan(state.table, api, kind, extra, raw_of(payload)), Answer)
    }
    assert statuses == {200, 400, 404, 503}


def test_a_provider_without_its_key_is_a_503_in_explain_too(state) -> None:
    outcome = plan(state.table, Api.ANTHROPIC, GENERATE, {}, orjson.dumps(anthropic("claude-nokey")))
    assert isinstance(outcome, Answer) and outcome.status == 503
    assert "MISSING_KEY" in describe(outcome, Api.ANTHROPIC)["problem"]


def test_count_tokens_is_refused_like_messages() -> None:
    table = compile_policy(load_policy(POLICY.replace('  default: "ant,claude-sonnet-4-5"\n', "")).to_proto("1"), {})
    for request in ({"model": "nope,x", "messages": USER}, {"model": "unknown-model", "messages": USER}):
        counted = plan(table, Api.ANTHROPIC, COUNT_TOKENS, {}, orjson.dumps(request))
        generated = plan(table, Api.ANTHROPIC, GENERATE, {}, orjson.dumps({**request, "max_tokens": 5}))
        assert isinstance(counted, Answer) and isinstance(generated, Answer)
        assert (counted.status, counted.message) == (generated.status, generated.message) == (404, generated.message)


def test_invalid_utf8_is_named_with_its_byte_offset() -> None:
    raw = b'{"model": "m", "messages": "h\xc3i"}'
    outcome = plan(compile_policy(load_policy(POLICY).to_proto("1"), {}), Api.ANTHROPIC, GENERATE, {}, raw)
    assert isinstance(outcome, Answer) and outcome.status == 400
    assert outcome.message.startswith("request body is not valid UTF-8: byte 0xc3 at offset 29")


def test_a_body_envoy_could_not_decompress_is_named_as_such() -> None:
    table = compile_policy(load_policy(POLICY).to_proto("1"), {})
    outcome = plan(table, Api.ANTHROPIC, GENERATE, {"x-ccr-content-encoding": "br"}, b"\x8b\x00")
    assert isinstance(outcome, Answer) and outcome.status == 400
    assert "Content-Encoding 'br'" in outcome.message and outcome.details == "ccr_bad_encoding"


def test_without_a_policy_everything_is_503() -> None:
    outcome = plan(None, Api.ANTHROPIC, GENERATE, {}, orjson.dumps(anthropic()))
    assert isinstance(outcome, Answer) and (outcome.status, outcome.details) == (503, "ccr_no_policy")


# --- virtual keys: the auth corpus both decision paths see (tests/unit/test_hop.py) -----------------

SECRET = "s" * 43


def presented(key_id: str) -> str:
    return f"sk-ccr-{key_id}_{SECRET}"


class FakeKeys:
    """A key cache with fixed answers: valid keys by presented string, refusals by key id."""

    loaded = True

    def __init__(self, keys: dict[str, VirtualKey], refused: dict[str, str]) -> None:
        self.keys, self.refused = keys, refused

    def lookup(self, text: str) -> VirtualKey | None:
        return self.keys.get(text.removeprefix("Bearer "))

    def why_rejected(self, text: str) -> str | None:
        return self.refused.get(text.removeprefix("Bearer ")[7:15], "unknown key")


FAKE_KEYS = {
    presented("validkey"): VirtualKey("validkey", "acme", "laptop"),
    presented("onlygptx"): VirtualKey("onlygptx", "acme", "gpt only", models=("gpt-4o",)),
    presented("onerpmxx"): VirtualKey("onerpmxx", "acme", "slow", rpm=1),
}
FAKE_REFUSED = {"revokedx": "revoked", "expiredx": "expired", "wrongsec": "wrong secret"}


def auth_state(required: bool) -> GatewayState:
    """A fresh worker (its own limiter) on the corpus' policy, keys required or not."""
    proto = load_policy(POLICY).to_proto("1")
    proto.auth_required = required
    gateway = GatewayState(Authenticator(FakeKeys(FAKE_KEYS, FAKE_REFUSED), LocalLimiter(clock=lambda: 1000.0)))
    gateway.table = compile_policy(proto, environ={"ANT_KEY": "k"})
    return gateway


# (name, keys required, client api, endpoint kind, headers, body, times sent: the last answer is compared)
AUTH_CASES = [
    ("anonymous", False, Api.ANTHROPIC, GENERATE, {}, anthropic(), 1),
    ("anonymous-required", True, Api.ANTHROPIC, GENERATE, {}, anthropic(), 1),
    ("anonymous-required-openai", True, Api.OPENAI, GENERATE, {}, {"model": "gpt-4o", "messages": USER}, 1),
    ("foreign-key", False, Api.ANTHROPIC, GENERATE, {"x-api-key": "sk-ant-x"}, anthropic(), 1),
    ("foreign-key-required", True, Api.ANTHROPIC, GENERATE, {"x-api-key": "sk-ant-x"}, anthropic(), 1),
    ("valid", True, Api.ANTHROPIC, GENERATE, {"x-api-key": presented("validkey")}, anthropic(), 1),
    (
        "valid-bearer-openai",
        True,
        Api.OPENAI,
        GENERATE,
        {"authorization": "Bearer " + presented("validkey")},
        {"model": "gpt-4o", "messages": USER},
        1,
    ),
    (
        "valid-chain",
        False,
        Api.ANTHROPIC,
        GENERATE,
        {"x-api-key": presented("validkey")},
        anthropic(thinking={"type": "enabled", "budget_tokens": 2048}),
        1,
    ),
    ("valid-bad-body", True, Api.ANTHROPIC, GENERATE, {"x-api-key": presented("validkey")}, b"{not json", 1),
    ("unknown", False, Api.ANTHROPIC, GENERATE, {"x-api-key": presented("nobodyxx")}, anthropic(), 1),
    (
        "wrong-secret-openai",
        False,
        Api.OPENAI,
        GENERATE,
        {"authorization": "Bearer " + presented("wrongsec")},
        {"model": "gpt-4o", "messages": USER},
        1,
    ),
    ("revoked", False, Api.ANTHROPIC, GENERATE, {"x-api-key": presented("revokedx")}, anthropic(), 1),
    (
        "expired-openai",
        False,
        Api.OPENAI,
        GENERATE,
        {"authorization": "Bearer " + presented("expiredx")},
        {"model": "gpt-4o", "messages": USER},
        1,
    ),
    (
        "model-allowed",
        False,
        Api.OPENAI,
        GENERATE,
        {"authorization": "Bearer " + presented("onlygptx")},
        {"model": "gpt-4o", "messages": USER},
        1,
    ),
    ("model-refused", False, Api.ANTHROPIC, GENERATE, {"x-api-key": presented("onlygptx")}, anthropic(), 1),
    ("rate-limited", False, Api.ANTHROPIC, GENERATE, {"x-api-key": presented("onerpmxx")}, anthropic(), 2),
    (
        "rate-limited-openai",
        False,
        Api.OPENAI,
        GENERATE,
        {"authorization": "Bearer " + presented("onerpmxx")},
        {"model": "gpt-4o", "messages": USER},
        2,
    ),
    # A Responses client (the Codex CLI, the openai SDK's client.responses) is answered as an
    # OpenAI client is: Bearer in the missing-key message, OpenAI's 401/403/429 shapes and headers.
    ("anonymous-required-responses", True, Api.RESPONSES, GENERATE, {}, {"model": "gpt-4o", "input": "hi"}, 1),
    (
        "valid-bearer-responses",
        True,
        Api.RESPONSES,
        GENERATE,
        {"authorization": "Bearer " + presented("validkey")},
        {"model": "claude-sonnet-4-5", "input": "hi"},
        1,
    ),
    (
        "wrong-secret-responses",
        False,
        Api.RESPONSES,
        GENERATE,
        {"authorization": "Bearer " + presented("wrongsec")},
        {"model": "gpt-4o", "input": "hi"},
        1,
    ),
    (
        "model-refused-responses",
        False,
        Api.RESPONSES,
        GENERATE,
        {"authorization": "Bearer " + presented("onlygptx")},
        {"model": "claude-sonnet-4-5", "input": "hi"},
        1,
    ),
    (
        "rate-limited-responses",
        False,
        Api.RESPONSES,
        GENERATE,
        {"authorization": "Bearer " + presented("onerpmxx")},
        {"model": "claude-sonnet-4-5", "input": "hi"},
        2,
    ),
    (
        "count-tokens-not-limited",
        False,
        Api.ANTHROPIC,
        COUNT_TOKENS,
        {"x-api-key": presented("onerpmxx")},
        {"model": "gpt-4o", "messages": USER},
        3,
    ),
]


# --- Responses requests: what reading their answer needs ---------------------------------------

APPLY_PATCH = {
    "type": "custom",
    "name": "apply_patch",
    "format": {"type": "grammar", "syntax": "lark", "definition": "x"},
}


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "claude-opus-4-1"])
def test_a_responses_requests_context_names_its_freeform_tools(state: GatewayState, model: str) -> None:
    """One provider or a fallback chain (claude-opus-4-1's): the translator that reads the answer,
    primed from the context, writes the freeform tools' calls as custom_tool_call items."""
    body = {"model": model, "input": "patch it", "tools": [APPLY_PATCH, {"type": "function", "name": "ls"}]}
    outcome = plan(state.table, Api.RESPONSES, GENERATE, {}, orjson.dumps(body))
    assert isinstance(outcome, Chain if model == "claude-opus-4-1" else Forward)
    assert outcome.context.custom_tools == frozenset({"apply_patch"})
    chat = plan(state.table, Api.OPENAI, GENERATE, {}, orjson.dumps({"model": model, "messages": USER}))
    assert isinstance(chat, Forward | Chain) and chat.context.custom_tools == frozenset()


def test_the_hop_carries_a_responses_contexts_freeform_tools_to_respond() -> None:
    """/respond reads the answer with a translator primed from the context the hop encoded: the
    freeform tools survive the encoding, so a Codex apply_patch call comes back as a
    custom_tool_call item on the hop path too."""
    from extproc.hop import HopContext
    from extproc.translate.base import ResponseContext

    context = ResponseContext("m", False, custom_tools=frozenset({"apply_patch"}))
    hop = HopContext.decode(HopContext(Api.RESPONSES, Api.ANTHROPIC, False, context, "ant", "").encode())
    assert hop.context.custom_tools == context.custom_tools
    translator = hop.translator()
    assert translator is not None
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "apply_patch", "input": {"input": "*** Begin"}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 5, "output_tokens": 2},
    }
    translator.response_headers(200, {"content-type": "application/json"})
    [item] = orjson.loads(translator.response_body(orjson.dumps(message), True).body)["output"]
    assert (item["type"], item["name"], item["input"]) == ("custom_tool_call", "apply_patch", "*** Begin")
