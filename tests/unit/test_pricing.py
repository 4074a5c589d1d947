"""Model prices: the policy's `pricing:`, the bundled table, the warning for a model priced nowhere,
their way to ext_proc in the Policy, and the one cost formula (ccr.v1.pricing)."""

from __future__ import annotations

import pytest

from ccr.v1.pricing import Prices, cost_usd
from control_plane.policy import PolicyError, load_policy
from control_plane.policy.pricing import DEFAULT_PRICES, default_prices
from extproc.routing_table import compile_policy

SONNET = Prices(3.0, 15.0, 0.3, 3.75)


def policy_with(models: str):
    return load_policy(
        f"providers:\n  - name: p\n    api: anthropic\n    base_url: http://10.0.0.1:8000\n    models:\n{models}",
        "gw.yaml",
    )


@pytest.mark.parametrize(
    ("model_id", "family"),
    [
        ("claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),  # Vertex
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),  # Bedrock
        ("anthropic/claude-sonnet-4-5", "claude-sonnet-4-5"),  # a router's vendor prefix
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("claude-haiku-4-5", "claude-haiku-4-5"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("Claude-3-7-Sonnet-20250219", "claude-3-7-sonnet"),
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-search-preview", "gpt-4o"),
        ("gpt-4.1", "gpt-4.1"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-5", "gpt-5"),
        ("gpt-5.1", "gpt-5"),
        ("gpt-5-mini", "gpt-5-mini"),
        ("o3", "o3"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("o4-mini", "o4-mini"),
        ("o1-2024-12-17", "o1"),
        ("gemini-2.5-pro", "gemini-2.5-pro"),
        ("models/gemini-2.5-flash", "gemini-2.5-flash"),
        ("gemini-2.5-flash-lite-preview-06-17", "gemini-2.5-flash-lite"),
        ("gemini-2.0-flash-001", "gemini-2.0-flash"),
    ],
)
def test_the_bundled_table_prices_a_model_by_its_longest_family(model_id, family):
    assert default_prices(model_id) == DEFAULT_PRICES[family]


@pytest.mark.parametrize(
    "model_id",
    ["llama-3.3-70b", "deepseek-chat", "gpt-4", "gpt-4oo", "o10", "claude-sonnet", "gemini-1.5-pro", "fake-sonnet"],
)
def test_a_model_outside_the_known_families_has_no_bundled_price(model_id):
    assert default_prices(model_id) is None


def test_the_bundled_prices_are_sane():
    for family, prices in DEFAULT_PRICES.items():
        assert 0 < prices.input <= prices.output, family
        assert 0 <= prices.cache_read <= prices.input, family  # reading a cache is never dearer than input
    assert DEFAULT_PRICES["claude-sonnet-4-5"] == SONNET


def test_a_models_own_pricing_wins_over_the_table():
    policy = policy_with(
        "      - {name: s, id: claude-sonnet-4-5, pricing: {input: 2.5, output: 12, cache_read: 0.25, cache_write: 3}}\n"
    )
    assert policy.providers[0].models[0].pricing == Prices(2.5, 12.0, 0.25, 3.0)
    assert policy.warnings == ()


def test_cache_prices_default_to_zero_and_shorthand_models_use_the_table():
    policy = policy_with("      - {name: local, pricing: {input: 0, output: 0}}\n      - claude-haiku-4-5\n")
    local, haiku = policy.providers[0].models
    assert local.pricing == Prices(0.0, 0.0, 0.0, 0.0)
    assert haiku.pricing == DEFAULT_PRICES["claude-haiku-4-5"]
    assert policy.warnings == ()  # a free model, priced at 0 on purpose, is no warning


def test_a_model_priced_nowhere_is_valid_with_a_warning_at_its_line():
    policy = policy_with("      - claude-sonnet-4-5\n      - {name: mine, id: llama-3.3-70b}\n      - mystery\n")
    assert [str(w) for w in policy.warnings] == [
        "gw.yaml:7:9: warning: providers[0].models[1]: model 'llama-3.3-70b' has no price (no pricing: here, and "
        "the bundled table does not know it): its usage is recorded at cost 0; write pricing: {input: 0, output: 0} "
        "for a free model",
        "gw.yaml:8:9: warning: providers[0].models[2]: model 'mystery' has no price (no pricing: here, and the "
        "bundled table does not know it): its usage is recorded at cost 0; write pricing: {input: 0, output: 0} "
        "for a free model",
    ]
    assert policy.providers[0].models[2].pricing is None


@pytest.mark.parametrize(
    ("pricing", "message"),
    [
        ("{input: 3}", "gw.yaml:6:44: providers[0].models[0].pricing.output: is required"),
        ("{input: 3, output: cheap}", "pricing.output: must be a price in USD per million tokens, got a string"),
        ("{input: -1, output: 2}", "pricing.input: must be between 0 and 100000 USD per million tokens"),
        ("{input: true, output: 2}", "pricing.input: must be a price in USD per million tokens, got a boolean"),
        ("{input: 1, output: 2, cache_writes: 3}", "pricing.cache_writes: unknown field (did you mean 'cache_write'?)"),
        ("[3, 15]", "pricing: must be a mapping, got a list"),
    ],
)
def test_pricing_mistakes_are_reported_with_their_line(pricing, message):
    with pytest.raises(PolicyError) as caught:
        policy_with(f"      - {{name: claude-sonnet-4-5, pricing: {pricing}}}\n")
    assert message in str(caught.value)


def test_prices_reach_ext_proc_in_the_policy_and_an_unpriced_model_stays_unpriced():
    policy = policy_with(
        "      - claude-sonnet-4-5-20250929\n      - {name: mine, pricing: {input: 1.5, output: 2}}\n      - x\n"
    )
    table = compile_policy(policy.to_proto("1"))
    assert table.route("claude-sonnet-4-5-20250929").prices == SONNET
    assert table.route("mine").prices == Prices(1.5, 2.0, 0.0, 0.0)
    assert table.route("x").prices is None


def test_cost_is_the_sum_of_each_kind_of_token_at_its_price():
    assert cost_usd(SONNET, 1_000_000, 0, 0, 0) == 3.0
    assert cost_usd(SONNET, 0, 1_000_000, 0, 0) == 15.0
    assert cost_usd(SONNET, 12, 4, 100, 10) == pytest.approx(163.5e-6)
    assert cost_usd(SONNET, 0, 0, 0, 0) == 0.0
    assert cost_usd(None, 10**9, 10**9, 0, 0) == 0.0  # priced nowhere


def test_cost_carries_no_float_noise():
    assert cost_usd(Prices(0.1, 0.2), 1, 1, 0, 0) == 3e-7
    assert cost_usd(Prices(0.1, 0.2), 1, 1, 0, 0) == round(cost_usd(Prices(0.1, 0.2), 1, 1, 0, 0), 8)
