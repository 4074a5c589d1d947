"""What to do with one request (extproc.cache.rules.directive): the policy's rules, the request's
determinism, and its cache-control and x-ccr-cache-ttl headers; and how the policy's levels merge
into rules (resolve)."""

from __future__ import annotations

import pytest

from extproc.cache.rules import (
    DEFAULT_MAX_ENTRY_BYTES,
    DEFAULT_TTL_S,
    DEFAULT_WHEN,
    CacheDirective,
    CacheRules,
    CacheSetting,
    directive,
    resolve,
)
from extproc.translate.base import Api

RULES = CacheRules(ttl_s=3600.0, max_entry_bytes=1 << 20, when="deterministic")
ALWAYS = CacheRules(ttl_s=600.0, max_entry_bytes=1 << 20, when="always")
COLD = {"max_tokens": 10, "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
WARM = {"max_tokens": 10, "temperature": 0.7, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("rules", "headers", "body", "expected"),
    [
        (None, {}, COLD, CacheDirective(False, False, 0.0, "off")),
        (None, {"x-ccr-cache-ttl": "60"}, COLD, CacheDirective(False, False, 0.0, "off")),
        (RULES, {}, COLD, CacheDirective(True, True, 3600.0, "on")),
        (RULES, {}, WARM, CacheDirective(False, False, 0.0, "not deterministic")),
        (RULES, {}, {**COLD, "temperature": None}, CacheDirective(False, False, 0.0, "not deterministic")),
        (ALWAYS, {}, WARM, CacheDirective(True, True, 600.0, "on")),
        (RULES, {"cache-control": "no-store"}, COLD, CacheDirective(False, False, 0.0, "no-store")),
        (RULES, {"cache-control": "no-cache"}, COLD, CacheDirective(False, True, 3600.0, "no-cache")),
        (RULES, {"cache-control": "No-Cache, max-age=0"}, COLD, CacheDirective(False, True, 3600.0, "no-cache")),
        # no-store wins over no-cache: nothing may be kept
        (RULES, {"cache-control": "no-cache, no-store"}, COLD, CacheDirective(False, False, 0.0, "no-store")),
        (RULES, {"cache-control": "max-age=60"}, COLD, CacheDirective(True, True, 3600.0, "on")),
        (RULES, {"x-ccr-cache-ttl": "60"}, COLD, CacheDirective(True, True, 60.0, "on")),
        (RULES, {"x-ccr-cache-ttl": " 1.5 "}, COLD, CacheDirective(True, True, 1.5, "on")),
        (RULES, {"x-ccr-cache-ttl": "3600"}, COLD, CacheDirective(True, True, 3600.0, "on")),
        (
            RULES,
            {"cache-control": "no-cache", "x-ccr-cache-ttl": "30"},
            COLD,
            CacheDirective(False, True, 30.0, "no-cache"),
        ),
    ],
)
def test_a_directive_follows_the_rules_and_the_request(rules, headers, body, expected):
    assert directive(rules, Api.ANTHROPIC, headers, body) == expected


@pytest.mark.parametrize("ttl", ["3601", "0", "-5", "abc", "", "1e3", "inf", "nan", "60s"])
def test_a_ttl_outside_the_policys_bound_is_ignored_and_the_reason_says_so(ttl):
    found = directive(RULES, Api.OPENAI, {"x-ccr-cache-ttl": ttl}, COLD)
    assert found == CacheDirective(True, True, 3600.0, "on, x-ccr-cache-ttl ignored")


def test_an_ignored_ttl_keeps_no_cache():
    found = directive(RULES, Api.OPENAI, {"cache-control": "no-cache", "x-ccr-cache-ttl": "9999"}, COLD)
    assert found == CacheDirective(False, True, 3600.0, "no-cache, x-ccr-cache-ttl ignored")


def test_a_request_for_several_choices_is_not_cached_when_only_deterministic_answers_are():
    assert directive(RULES, Api.OPENAI, {}, {**COLD, "n": 2}).reason == "not deterministic"


def test_the_policys_ttl_is_the_most_a_request_may_ask_for():
    assert RULES.max_ttl_s == RULES.ttl_s


@pytest.mark.parametrize(
    "fields",
    [
        {"ttl_s": 0, "max_entry_bytes": 1, "when": "always"},
        {"ttl_s": -1, "max_entry_bytes": 1, "when": "always"},
        {"ttl_s": float("nan"), "max_entry_bytes": 1, "when": "always"},
        {"ttl_s": 1, "max_entry_bytes": 0, "when": "always"},
        {"ttl_s": 1, "max_entry_bytes": 1, "when": "sometimes"},
    ],
)
def test_rules_are_checked_when_made(fields):
    with pytest.raises(ValueError):
        CacheRules(**fields)


# --- resolve: the tenant's level over the model's over the default ---------------------------------

DEFAULT = CacheSetting(ttl_s=3600.0, max_entry_bytes=2048)
OFF = CacheSetting(off=True)


@pytest.mark.parametrize(
    ("tenant", "model", "default", "expected"),
    [
        (None, None, None, None),
        (None, None, DEFAULT, CacheRules(3600.0, 2048, DEFAULT_WHEN)),
        (None, None, OFF, None),
        (None, CacheSetting(), None, CacheRules(DEFAULT_TTL_S, DEFAULT_MAX_ENTRY_BYTES, DEFAULT_WHEN)),
        (None, CacheSetting(ttl_s=60.0), DEFAULT, CacheRules(60.0, 2048, DEFAULT_WHEN)),
        (None, OFF, DEFAULT, None),
        (OFF, CacheSetting(ttl_s=60.0), DEFAULT, None),
        (CacheSetting(when="always"), CacheSetting(ttl_s=60.0), DEFAULT, CacheRules(60.0, 2048, "always")),
        # The tenant's setting wins over a model's false; its missing fields skip the level that is off.
        (CacheSetting(when="always"), OFF, DEFAULT, CacheRules(3600.0, 2048, "always")),
        (CacheSetting(ttl_s=5.0), None, OFF, CacheRules(5.0, DEFAULT_MAX_ENTRY_BYTES, DEFAULT_WHEN)),
    ],
)
def test_the_nearest_level_decides_and_each_field_comes_from_the_nearest_that_sets_it(tenant, model, default, expected):
    assert resolve(tenant, model, default) == expected
