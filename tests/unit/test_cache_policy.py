"""The response cache in the policy (control_plane.policy.cache): a top-level default, each model's
and each tenant's override, mistakes reported with their line; carried in the policy proto and
resolved by ext_proc's routing table (RoutingTable.cache_rules: tenant > model > default)."""

from __future__ import annotations

import re

import pytest

from ccr.v1 import policy_pb2
from control_plane.policy import PolicyError, load_policy
from control_plane.policy.cache import CacheSpec
from extproc.cache.rules import DEFAULT_MAX_ENTRY_BYTES, DEFAULT_TTL_S, CacheRules
from extproc.routing_table import PolicyCompileError, compile_policy

MODELS = (
    "models: [claude-sonnet-4-5, {name: claude-haiku-4-5, cache: false}, {name: claude-opus-4-1, cache: {ttl: 10m}}]"
)


def load(text: str, models: str = MODELS):
    providers = f"providers:\n  - {{name: ant, api: anthropic, base_url: 'http://10.0.0.1:8000', {models}}}\n"
    return load_policy(providers + text, "gw.yaml")


def problems(text: str, models: str = "models: [claude-sonnet-4-5]") -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(text, models)
    return [str(problem) for problem in caught.value.problems]


def table(text: str, models: str = MODELS):
    return compile_policy(load(text, models).to_proto("1"))


# --- parsing ----------------------------------------------------------------------------------


def test_without_a_cache_section_nothing_is_cached():
    policy = load("", "models: [claude-sonnet-4-5]")
    assert policy.cache is None
    assert not policy.to_proto("1").HasField("cache")
    routes = table("", "models: [claude-sonnet-4-5]")
    assert routes.cache_rules(None, routes.models["claude-sonnet-4-5"]) is None


def test_the_default_section_is_read_with_its_units():
    policy = load("cache: {ttl: 1h, max_entry_bytes: 1MiB, when: deterministic}\n")
    assert policy.cache == CacheSpec(False, 3600.0, 1024 * 1024, "deterministic")


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("90s", 90.0), ("30m", 1800.0), ("1h", 3600.0), ("1d", 86400.0), ("1.5h", 5400.0), ("45", 45.0), ("2.5", 2.5)],
)
def test_a_ttl_is_a_duration_or_a_number_of_seconds(written, seconds):
    assert load(f"cache: {{ttl: {written}}}\n").cache == CacheSpec(ttl_s=seconds)


@pytest.mark.parametrize(
    ("written", "size"), [("262144", 262144), ("256KiB", 262144), ("1MiB", 1 << 20), ("2MB", 2_000_000)]
)
def test_an_entry_size_is_bytes_or_a_size_with_its_unit(written, size):
    assert load(f"cache: {{max_entry_bytes: {written}}}\n").cache == CacheSpec(max_entry_bytes=size)


def test_levels_are_read_as_written():
    policy = load(
        "cache: {when: always}\n"
        "tenants:\n"
        "  - {name: acme, cache: {ttl: 90s}}\n"
        "  - {name: audit, cache: false}\n"
        "  - {name: plain, cache: true}\n"
        "  - {name: other}\n"
    )
    models = {m.name: m.cache for m in policy.providers[0].models}
    assert models == {
        "claude-sonnet-4-5": None,
        "claude-haiku-4-5": CacheSpec(off=True),
        "claude-opus-4-1": CacheSpec(ttl_s=600.0),
    }
    assert [t.cache for t in policy.routing.tenants] == [CacheSpec(ttl_s=90.0), CacheSpec(off=True), CacheSpec(), None]


# --- mistakes, with their line -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "cache: 5\n",
            "gw.yaml:3:8: cache: must be false, true or a mapping of ttl, max_entry_bytes, when, dedup_wait, got an integer",
        ),
        (
            "cache: {ttl: 1w}\n",
            "gw.yaml:3:14: cache.ttl: must be a duration like 90s, 30m, 1h or 1d, or a number of seconds, got '1w'",
        ),
        ("cache: {ttl: 0}\n", "gw.yaml:3:14: cache.ttl: must be between 1s and 30d, got 0"),
        ("cache: {ttl: 31d}\n", "gw.yaml:3:14: cache.ttl: must be between 1s and 30d, got 31d"),
        (
            "cache: {ttl: .nan}\n",
            "gw.yaml:3:14: cache.ttl: must be a duration like 90s, 30m, 1h or 1d, or a number of seconds, got float",
        ),
        (
            "cache: {ttl: true}\n",
            "gw.yaml:3:14: cache.ttl: must be a duration like 90s, 30m, 1h or 1d, or a number of seconds, got a boolean",
        ),
        (
            "cache: {max_entry_bytes: 1 MiBs}\n",
            "gw.yaml:3:26: cache.max_entry_bytes: must be a size like 268435456, 256MiB or 1GB, got '1 MiBs'",
        ),
        (
            "cache: {max_entry_bytes: 100}\n",
            "gw.yaml:3:26: cache.max_entry_bytes: must be between 1KiB and 512MiB, got 100 bytes",
        ),
        (
            "cache: {max_entry_bytes: 1GiB}\n",
            "gw.yaml:3:26: cache.max_entry_bytes: must be between 1KiB and 512MiB, got 1073741824 bytes",
        ),
        (
            "cache: {when: sometimes}\n",
            "gw.yaml:3:15: cache.when: must be one of deterministic, always, got 'sometimes'",
        ),
        ("cache: {tll: 1h}\n", "gw.yaml:3:9: cache.tll: unknown field (did you mean 'ttl'?)"),
        (
            "tenants:\n  - name: acme\n    cache: {when: 1}\n",
            "gw.yaml:5:19: tenants[0].cache.when: must be one of deterministic, always, got an integer",
        ),
        (
            "tenants:\n  - name: acme\n    cache: sometimes\n",
            "gw.yaml:5:12: tenants[0].cache: must be false, true or a mapping of ttl, max_entry_bytes, when, dedup_wait, got a string",
        ),
    ],
)
def test_cache_mistakes_are_reported_with_their_line(text, expected):
    assert problems(text) == [expected]


def test_a_models_cache_mistake_is_reported_where_it_is_written():
    models = "models: [{name: claude-sonnet-4-5, cache: {ttl: soon}}]"
    line = f"  - {{name: ant, api: anthropic, base_url: 'http://10.0.0.1:8000', {models}}}"
    assert problems("", models) == [
        f"gw.yaml:2:{line.index('soon') + 1}: providers[0].models[0].cache.ttl: must be a duration like 90s, 30m, "
        "1h or 1d, or a number of seconds, got 'soon'"
    ]


def test_yaml_off_is_false():
    assert load("cache: off\n").cache == CacheSpec(off=True)


def test_every_mistake_is_reported_at_once():
    found = problems("cache: {ttl: 0, max_entry_bytes: 1, when: never}\n")
    assert [line.split(": ")[1] for line in found] == ["cache.ttl", "cache.max_entry_bytes", "cache.when"]


# --- the proto, and the routing table's resolved rules --------------------------------------------


def test_unset_fields_travel_as_zero_and_empty():
    assert CacheSpec(ttl_s=60.0).to_proto() == policy_pb2.CacheRules(ttl_s=60.0)
    assert CacheSpec(off=True).to_proto() == policy_pb2.CacheRules(off=True)
    proto = load("cache: {ttl: 1h}\ntenants:\n  - {name: acme, cache: false}\n").to_proto("1")
    assert proto.cache == policy_pb2.CacheRules(ttl_s=3600.0)
    assert proto.tenants[0].cache == policy_pb2.CacheRules(off=True)
    assert [m.HasField("cache") for m in proto.providers[0].models] == [False, True, True]
    assert policy_pb2.Policy.FromString(proto.SerializeToString()) == proto


POLICY = (
    "cache: {ttl: 1h, max_entry_bytes: 256KiB}\n"
    "tenants:\n"
    "  - {name: acme, cache: {when: always, ttl: 90s}}\n"
    "  - {name: audit, cache: false}\n"
    "  - {name: plain}\n"
)


@pytest.mark.parametrize(
    ("tenant", "model", "expected"),
    [
        # Anonymous and tenants without a setting: the model's, else the default.
        (None, "claude-sonnet-4-5", CacheRules(3600.0, 256 * 1024, "deterministic")),
        ("plain", "claude-sonnet-4-5", CacheRules(3600.0, 256 * 1024, "deterministic")),
        ("no-such-tenant", "claude-sonnet-4-5", CacheRules(3600.0, 256 * 1024, "deterministic")),
        (None, "claude-haiku-4-5", None),  # the model's false
        (None, "claude-opus-4-1", CacheRules(600.0, 256 * 1024, "deterministic")),  # its ttl, the default's size
        # The tenant's setting wins over the model's, and its missing fields come from the levels above.
        ("acme", "claude-sonnet-4-5", CacheRules(90.0, 256 * 1024, "always")),
        ("acme", "claude-haiku-4-5", CacheRules(90.0, 256 * 1024, "always")),
        ("acme", "claude-opus-4-1", CacheRules(90.0, 256 * 1024, "always")),
        ("audit", "claude-sonnet-4-5", None),
        ("audit", "claude-opus-4-1", None),
    ],
)
def test_the_routing_table_resolves_tenant_over_model_over_default(tenant, model, expected):
    routes = table(POLICY)
    assert routes.cache_rules(tenant, routes.models[model]) == expected


def test_a_model_or_a_tenant_turns_the_cache_on_without_a_default():
    routes = table("tenants:\n  - {name: acme, cache: true}\n")
    defaults = CacheRules(DEFAULT_TTL_S, DEFAULT_MAX_ENTRY_BYTES, "deterministic")
    assert routes.cache_rules(None, routes.models["claude-sonnet-4-5"]) is None
    assert routes.cache_rules(None, routes.models["claude-opus-4-1"]) == CacheRules(
        600.0, DEFAULT_MAX_ENTRY_BYTES, "deterministic"
    )
    assert routes.cache_rules("acme", routes.models["claude-sonnet-4-5"]) == defaults


def test_a_default_of_false_is_off_where_nothing_else_says():
    routes = table("cache: false\n")
    assert routes.cache_rules(None, routes.models["claude-sonnet-4-5"]) is None
    assert routes.cache_rules(None, routes.models["claude-opus-4-1"]) == CacheRules(
        600.0, DEFAULT_MAX_ENTRY_BYTES, "deterministic"
    )


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            policy_pb2.CacheRules(when="sometimes"),
            "the default: cache.when 'sometimes' is not one of deterministic, always",
        ),
        (policy_pb2.CacheRules(ttl_s=-1), "the default: cache.ttl_s must be a number of seconds > 0, got -1.0"),
        (
            policy_pb2.CacheRules(ttl_s=float("inf")),
            "the default: cache.ttl_s must be a number of seconds > 0, got inf",
        ),
    ],
)
def test_rules_this_ext_proc_cannot_honour_are_refused(rules, message):
    proto = load("", "models: [claude-sonnet-4-5]").to_proto("1")
    proto.cache.CopyFrom(rules)
    with pytest.raises(PolicyCompileError, match=re.escape(message)):
        compile_policy(proto)


def test_a_refused_level_is_named():
    proto = load("", "models: [claude-sonnet-4-5]").to_proto("1")
    proto.providers[0].models[0].cache.when = "x"
    with pytest.raises(PolicyCompileError, match=re.escape("model 'claude-sonnet-4-5': cache.when")):
        compile_policy(proto)


# --- in-flight deduplication's wait -------------------------------------------------------------


def test_dedup_wait_is_a_duration_zero_included_and_travels_as_set():
    policy = load("cache: {dedup_wait: 10s}\ntenants: [{name: acme, cache: {dedup_wait: 0}}]\n")
    assert policy.cache == CacheSpec(dedup_wait_s=10.0)
    assert policy.to_proto("1").cache.dedup_wait_s == 10.0
    acme = next(t for t in policy.to_proto("1").tenants if t.name == "acme")
    assert acme.cache.HasField("dedup_wait_s") and acme.cache.dedup_wait_s == 0  # "never wait", not unset
    assert not policy.to_proto("1").providers[0].models[0].HasField("cache")


def test_dedup_wait_is_inherited_and_defaults_to_thirty_seconds():
    routes = table("cache: {dedup_wait: 5s}\ntenants: [{name: acme, cache: {dedup_wait: 0}}]\n")
    opus, sonnet = routes.models["claude-opus-4-1"], routes.models["claude-sonnet-4-5"]
    assert routes.cache_rules(None, opus).dedup_wait_s == 5.0  # the model's cache: sets ttl only
    assert routes.cache_rules("acme", sonnet).dedup_wait_s == 0.0
    assert table("cache: {}\n").cache_rules(None, sonnet).dedup_wait_s == 30.0


@pytest.mark.parametrize("written", ["-1", "11m", "soon"])
def test_a_dedup_wait_out_of_bounds_is_reported_with_its_line(written):
    (problem,) = problems(f"cache: {{dedup_wait: {written}}}\n")
    assert problem.startswith("gw.yaml:3:21: cache.dedup_wait: must be")


def test_the_lua_filter_lets_decide_wait_as_long_as_the_longest_dedup_wait():
    from control_plane.resources.decision_hop import HOP_TIMEOUT_MS, lua_filter

    policy = load("cache: {dedup_wait: 20s}\ntenants: [{name: acme, cache: {dedup_wait: 45s}}]\n")
    assert policy.longest_dedup_wait_s == 45.0
    source = lua_filter(policy.longest_dedup_wait_s)["typed_config"]["default_source_code"]["inline_string"]
    assert f"local DECIDE_TIMEOUT_MS = {HOP_TIMEOUT_MS + 45_000}\n" in source
    assert f"local TIMEOUT_MS = {HOP_TIMEOUT_MS}\n" in source
    assert load("", "models: [claude-sonnet-4-5]").longest_dedup_wait_s == 0.0


def test_the_redis_timeout_is_read_and_bounded():
    assert load("cache: {redis: 'redis://127.0.0.1:6379/0', redis_timeout: 250ms}\n").cache.redis_timeout_s == 0.25
    assert load("cache: {redis: 'redis://127.0.0.1:6379/0', redis_timeout: 0.5s}\n").cache.redis_timeout_s == 0.5
    assert load("cache: {ttl: 1h}\n").cache.redis_timeout_s == 0.05
    (problem,) = problems("cache: {redis_timeout: 20s}\n")
    assert "cache.redis_timeout: must be between 1ms and 10s" in problem
