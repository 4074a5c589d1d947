"""The response cache's key (extproc.cache.key): what does not change a request's meaning never
changes its key (key order, whitespace, metadata, the stream flag, 0 vs 0.0), anything that may
change the answer always does, and the key is scoped to the tenant."""

from __future__ import annotations

import json
import random

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from extproc.cache.key import _NOT_IN_KEY, cache_key, is_deterministic
from extproc.translate.base import Api

# --- strategies -----------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
texts = st.text(max_size=40)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant"]),
            "content": texts
            | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}), min_size=1, max_size=3),
        }
    ),
    min_size=1,
    max_size=4,
)
tools = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.text("abcdefgh_", min_size=1, max_size=10),
            "description": texts,
            "input_schema": st.dictionaries(st.text(max_size=6), json_values, max_size=3),
        }
    ),
    max_size=3,
)
tool_choices = st.sampled_from(
    [{"type": "auto"}, {"type": "any"}, {"type": "none"}, {"type": "tool", "name": "a"}, {"type": "tool", "name": "b"}]
)
temperatures = st.floats(0, 2, allow_nan=False) | st.integers(0, 2)
anthropic_bodies = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["claude-sonnet-4-5", "sonnet"]),
        "max_tokens": st.integers(1, 64_000),
        "messages": messages,
    },
    optional={
        "system": texts,
        "temperature": temperatures,
        "top_p": st.floats(0, 1),
        "top_k": st.integers(0, 500),
        "tools": tools,
        "tool_choice": tool_choices,
        "stop_sequences": st.lists(texts, max_size=3),
        "thinking": st.fixed_dictionaries({"type": st.just("enabled"), "budget_tokens": st.integers(1024, 32_000)}),
        "metadata": st.fixed_dictionaries({"user_id": texts}),
        "stream": st.booleans(),
    },
)
openai_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-4o", "gpt-4o-2024-08-06"]), "messages": messages},
    optional={
        "temperature": temperatures,
        "max_completion_tokens": st.integers(1, 64_000),
        "seed": st.integers(0, 2**31),
        "stop": texts | st.lists(texts, max_size=3),
        "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
        "reasoning_effort": st.sampled_from(["low", "medium", "high"]),
        "presence_penalty": st.floats(-2, 2),
        "logit_bias": st.dictionaries(st.integers(0, 100_000).map(str), st.integers(-100, 100), max_size=3),
        "user": texts,
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    },
)
responses_inputs = texts | st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "developer"]), "content": texts | json_values}
    ),
    min_size=1,
    max_size=3,
)
responses_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-5.5", "gateway-default"]), "input": responses_inputs},
    optional={
        "instructions": texts,
        "temperature": temperatures,
        "max_output_tokens": st.integers(16, 64_000),
        "reasoning": st.fixed_dictionaries({"effort": st.sampled_from(["low", "medium", "high"])}),
        "text": st.fixed_dictionaries({"verbosity": st.sampled_from(["low", "high"])}),
        "include": st.lists(st.sampled_from(["reasoning.encrypted_content"]), max_size=1),
        "parallel_tool_calls": st.booleans(),
        "tool_choice": st.sampled_from(["auto", "none", "required"]),
        "prompt_cache_key": texts,
        "client_metadata": st.dictionaries(texts, texts, max_size=2),
        "store": st.booleans(),
        "stream": st.booleans(),
    },
)
bodies = (
    st.tuples(st.just(Api.ANTHROPIC), anthropic_bodies)
    | st.tuples(st.just(Api.OPENAI), openai_bodies)
    | st.tuples(st.just(Api.RESPONSES), responses_bodies)
)
tenants = st.none() | st.text(min_size=1, max_size=12)


def key(api: Api, body: dict, tenant: str | None = "acme", provider: str = "prov", model_id: str = "m-1") -> str:
    return cache_key(tenant, api, provider, model_id, body)


def reordered(value, rng: random.Random):
    """``value`` with every object's keys in another order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {name: reordered(item, rng) for name, item in items}
    if isinstance(value, list):
        return [reordered(item, rng) for item in value]
    return value


# --- what never changes the key -------------------------------------------------------------------


def test_a_key_is_a_hex_sha256():
    found = key(Api.ANTHROPIC, {"max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
    assert len(found) == 64 and int(found, 16) >= 0


@given(bodies, st.randoms(use_true_random=False))
def test_the_order_of_keys_never_changes_the_key(api_body, rng):
    api, body = api_body
    assert key(api, reordered(body, rng)) == key(api, body)


@given(bodies, st.integers(0, 4), st.sampled_from([(",", ":"), (", ", ": "), (" ,  ", " :\t")]))
def test_whitespace_in_the_json_never_changes_the_key(api_body, indent, separators):
    api, body = api_body
    spaced = json.dumps(body, indent=indent or None, separators=separators, ensure_ascii=indent % 2 == 0)
    assert key(api, orjson.loads(spaced)) == key(api, orjson.loads(orjson.dumps(body)))


@given(bodies, st.data())
def test_fields_that_do_not_change_the_answer_never_change_the_key(api_body, data):
    api, body = api_body
    changed = dict(body)
    for name in data.draw(st.lists(st.sampled_from(sorted(_NOT_IN_KEY[api])), min_size=1, unique=True)):
        changed[name] = data.draw(json_values)
    assert key(api, changed) == key(api, body)


@pytest.mark.parametrize(
    ("api", "fields"),
    [
        (Api.ANTHROPIC, {"metadata": {"user_id": "u-2"}, "stream": True, "service_tier": "standard_only"}),
        (
            Api.OPENAI,
            {
                "metadata": {"run": "7"},
                "stream": True,
                "stream_options": {"include_usage": True},
                "user": "someone-else",
                "safety_identifier": "hash",
                "store": True,
                "service_tier": "flex",
                "prompt_cache_key": "k",
                "prompt_cache_retention": "24h",
            },
        ),
        (
            Api.RESPONSES,
            {
                "metadata": {"run": "7"},
                "stream": True,
                "stream_options": {"include_obfuscation": False},
                "user": "someone-else",
                "safety_identifier": "hash",
                "store": True,
                "service_tier": "flex",
                # The Codex CLI's session id and per-turn ids: every Codex request differs in these.
                "prompt_cache_key": "019a-session",
                "prompt_cache_retention": "24h",
                "client_metadata": {"turn_id": "t-2"},
            },
        ),
    ],
)
def test_the_known_fields_that_do_not_change_the_answer(api, fields):
    body = {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    assert key(api, {**body, **fields}) == key(api, body)


def test_the_requested_model_name_is_not_in_the_key_the_served_model_is():
    body = {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    assert key(Api.ANTHROPIC, {**body, "model": "sonnet"}) == key(Api.ANTHROPIC, {**body, "model": "claude-sonnet-4-5"})
    assert key(Api.ANTHROPIC, body, model_id="claude-sonnet-4-5") != key(
        Api.ANTHROPIC, body, model_id="claude-opus-4-1"
    )


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({"temperature": 0}, {"temperature": 0.0}),
        ({"temperature": 0}, {"temperature": -0.0}),
        ({"temperature": 1}, {"temperature": 1.0}),
        ({"top_p": 1}, {"top_p": 1.0}),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 2048}},
            {"thinking": {"type": "enabled", "budget_tokens": 2048.0}},
        ),
    ],
)
def test_an_integral_float_parameter_is_its_integer(one, other):
    body = {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    assert key(Api.ANTHROPIC, {**body, **one}) == key(Api.ANTHROPIC, {**body, **other})


@given(bodies, st.sampled_from([0, 0.0, -0.0]), st.sampled_from([0, 0.0, -0.0]))
def test_temperature_zero_is_one_key_however_it_is_written(api_body, one, other):
    api, body = api_body
    assert key(api, {**body, "temperature": one}) == key(api, {**body, "temperature": other})


def test_an_anonymous_request_is_the_empty_tenant():
    body = {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    assert key(Api.ANTHROPIC, body, tenant=None) == key(Api.ANTHROPIC, body, tenant="")


# --- what always changes the key ------------------------------------------------------------------


@given(bodies, tenants, tenants)
def test_two_tenants_never_share_an_entry(api_body, one, other):
    api, body = api_body
    assume((one or "") != (other or ""))
    assert key(api, body, tenant=one) != key(api, body, tenant=other)


# The APIs a cache key is made in (the client's; Gemini's too): Vertex and Bedrock are providers only.
KEYED_APIS = [Api.ANTHROPIC, Api.OPENAI, Api.RESPONSES, Api.GEMINI]


@given(bodies, st.sampled_from(KEYED_APIS), st.sampled_from(KEYED_APIS))
def test_the_client_api_is_in_the_key(api_body, one, other):
    _, body = api_body
    assume(one is not other)
    assert cache_key("t", one, "p", "m", body) != cache_key("t", other, "p", "m", body)


@given(bodies, st.text(max_size=10), st.text(max_size=10), st.text(max_size=10), st.text(max_size=10))
def test_the_served_provider_and_model_id_are_in_the_key(api_body, provider, other_provider, model_id, other_id):
    api, body = api_body
    assume((provider, model_id) != (other_provider, other_id))
    assert key(api, body, provider=provider, model_id=model_id) != key(
        api, body, provider=other_provider, model_id=other_id
    )


ANSWER_FIELDS = {
    Api.ANTHROPIC: {
        "messages": messages,
        "system": texts | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}), max_size=2),
        "tools": tools,
        "tool_choice": tool_choices,
        "temperature": temperatures,
        "max_tokens": st.integers(1, 64_000),
        "stop_sequences": st.lists(texts, max_size=3),
        "thinking": st.fixed_dictionaries({"type": st.just("enabled"), "budget_tokens": st.integers(1024, 32_000)}),
        "top_k": st.integers(0, 500),
    },
    Api.OPENAI: {
        "messages": messages,
        "temperature": temperatures,
        "max_completion_tokens": st.integers(1, 64_000),
        "max_tokens": st.integers(1, 64_000),
        "tools": st.lists(
            st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries({"name": texts})}),
            max_size=2,
        ),
        "tool_choice": st.sampled_from(["auto", "none", "required"]),
        "seed": st.integers(0, 2**31),
        "n": st.integers(1, 4),
        "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
        "frequency_penalty": st.floats(-2, 2),
        "logit_bias": st.dictionaries(st.integers(0, 100_000).map(str), st.integers(-100, 100), max_size=3),
        "reasoning_effort": st.sampled_from(["low", "medium", "high"]),
    },
    Api.RESPONSES: {
        "input": responses_inputs,
        "instructions": texts,
        "temperature": temperatures,
        "max_output_tokens": st.integers(16, 64_000),
        "tools": st.lists(st.fixed_dictionaries({"type": st.just("function"), "name": texts}), max_size=2),
        "tool_choice": st.sampled_from(["auto", "none", "required"]),
        "reasoning": st.fixed_dictionaries({"effort": st.sampled_from(["low", "medium", "high"])}),
        "text": st.fixed_dictionaries({"verbosity": st.sampled_from(["low", "medium", "high"])}),
        # What the answer carries (encrypted reasoning, logprobs) and what the model may write.
        "include": st.lists(st.sampled_from(["reasoning.encrypted_content", "message.output_text.logprobs"])),
        "parallel_tool_calls": st.booleans(),
        "truncation": st.sampled_from(["auto", "disabled"]),
    },
}


def _same(one, other) -> bool:
    """Whether two values are one JSON value once integral floats are integers (what the key reads)."""
    return orjson.dumps(_ints(one), option=orjson.OPT_SORT_KEYS) == orjson.dumps(
        _ints(other), option=orjson.OPT_SORT_KEYS
    )


def _ints(value):
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {name: _ints(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_ints(item) for item in value]
    return value


@given(bodies, st.data())
def test_any_change_of_a_field_that_changes_the_answer_changes_the_key(api_body, data):
    api, body = api_body
    name = data.draw(st.sampled_from(sorted(ANSWER_FIELDS[api])))
    value = data.draw(ANSWER_FIELDS[api][name])
    changed = {**body, name: value}
    assume(name not in body or not _same(body[name], value))
    assert key(api, changed) != key(api, body)


@given(bodies, st.text(min_size=1, max_size=12), json_values)
def test_a_field_the_gateway_does_not_know_is_in_the_key(api_body, name, value):
    api, body = api_body
    assume(name not in body and name not in _NOT_IN_KEY[api])
    assert key(api, {**body, name: value}) != key(api, body)


def test_numbers_in_a_responses_conversation_are_kept_as_written():
    body = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "x", "n": 1}]}]}
    floated = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "x", "n": 1.0}]}]}
    assert key(Api.RESPONSES, body) != key(Api.RESPONSES, floated)
    assert key(Api.RESPONSES, {**body, "instructions": "a"}) != key(Api.RESPONSES, {**body, "instructions": "b"})


def test_numbers_in_the_conversation_are_kept_as_written():
    def body(x):
        return {
            "max_tokens": 10,
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"x": x}}]},
            ],
        }

    assert key(Api.ANTHROPIC, body(1)) != key(Api.ANTHROPIC, body(1.0))


def test_values_orjson_cannot_write_still_get_distinct_keys():
    body = {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    found = {
        key(Api.OPENAI, {**body, "seed": 2**70}),
        key(Api.OPENAI, {**body, "seed": 2**70 + 1}),
        key(Api.OPENAI, {**body, "seed": float(2**70)}),
        key(Api.OPENAI, {**body, "temperature": float("nan")}),
        key(Api.OPENAI, {**body, "temperature": None}),
        key(Api.OPENAI, {**body, "temperature": float("inf")}),
        key(Api.OPENAI, {**body, "messages": [{"role": "user", "content": [2**80]}]}),
    }
    assert len(found) == 7


# --- is_deterministic -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "body", "expected"),
    [
        (Api.ANTHROPIC, {"temperature": 0}, True),
        (Api.ANTHROPIC, {"temperature": 0.0}, True),
        (Api.OPENAI, {"temperature": 0}, True),
        (Api.OPENAI, {"temperature": -0.0, "n": 1}, True),
        # Unset: the API's default applies, 1 for both client APIs.
        (Api.ANTHROPIC, {}, False),
        (Api.OPENAI, {}, False),
        (Api.OPENAI, {"temperature": None}, False),
        (Api.ANTHROPIC, {"temperature": 0.2}, False),
        (Api.OPENAI, {"temperature": 1}, False),
        # Several choices are never one answer.
        (Api.OPENAI, {"temperature": 0, "n": 2}, False),
        # Not a number: false is not 0.
        (Api.OPENAI, {"temperature": False}, False),
        (Api.ANTHROPIC, {"temperature": "0"}, False),
        (Api.RESPONSES, {"temperature": 0}, True),
        (Api.RESPONSES, {"temperature": 0.0, "reasoning": {"effort": "low"}}, True),
        (Api.RESPONSES, {}, False),  # "Defaults to 1": the Codex CLI's requests (no temperature)
        (Api.RESPONSES, {"temperature": 0.7}, False),
        (Api.GEMINI, {"generationConfig": {"temperature": 0}}, True),
        (Api.GEMINI, {"generationConfig": {"temperature": 0, "candidateCount": 2}}, False),
        (Api.GEMINI, {"generationConfig": {}}, False),  # the model's own default
        (Api.GEMINI, {}, False),
    ],
)
def test_only_temperature_zero_and_one_choice_is_deterministic(api, body, expected):
    assert is_deterministic(api, body) is expected
