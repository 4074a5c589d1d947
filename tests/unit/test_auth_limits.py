"""The sans-IO limit arithmetic (extproc.auth.limits) and the in-process limiter (local_limits)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.auth.limits import (
    Budget,
    Limit,
    gcra_adjust,
    gcra_step,
    hash_tag,
    period_window,
    redis_key,
)
from extproc.auth.local_limits import LocalLimiter

T0 = 1_700_000_000.0
arrival_gaps = st.lists(st.floats(min_value=0, max_value=20, allow_nan=False), min_size=1, max_size=120)


def rpm(limit: float, scope: str = "key:k_abc", burst: float | None = None) -> Limit:
    return Limit.of("rpm", scope, limit, burst=burst)


# -- GCRA ------------------------------------------------------------------------------------


def test_ten_rpm_admits_exactly_ten_then_refuses_with_the_exact_retry_after() -> None:
    limiter = LocalLimiter()
    decisions = [limiter.admit([rpm(10)], f"r{i}", now=T0) for i in range(11)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False]
    refused = decisions[-1]
    assert refused.limit == rpm(10)
    assert refused.retry_after_s == pytest.approx(6.0, abs=1e-9)
    assert not limiter.admit([rpm(10)], "early", now=T0 + 6.0 - 0.05).allowed
    assert limiter.admit([rpm(10)], "on time", now=T0 + 6.0).allowed


def test_remaining_and_reset_report_the_tightest_scope() -> None:
    limiter = LocalLimiter()
    admission = limiter.admit([rpm(10), rpm(3, "tenant:acme")], "r", now=T0)
    assert admission.remaining == {"rpm": 2}
    assert admission.reset_after_s["rpm"] == pytest.approx(20.0)


@settings(max_examples=200, deadline=None)
@given(gaps=arrival_gaps, limit=st.integers(1, 20), burst=st.integers(1, 20))
def test_gcra_never_admits_more_than_burst_plus_rate_in_any_window(gaps: list[float], limit: int, burst: int) -> None:
    """No fixed-window 2x burst: in any interval of length W at most burst + W/T pass, hence at
    most limit + burst in any period, and about burst (not 2 x limit) around a minute's edge."""
    limiter = LocalLimiter()
    rule = rpm(limit, burst=burst)
    now, admitted = T0, []
    for index, gap in enumerate(gaps):
        now += gap
        if limiter.admit([rule], f"r{index}", now=now).allowed:
            admitted.append(now)
    for first in range(len(admitted)):
        for last in range(first, len(admitted)):
            span = admitted[last] - admitted[first]
            assert last - first + 1 <= burst + span / rule.interval_s + 1e-6
            if span < rule.period_s:
                assert last - first + 1 <= limit + burst


@settings(max_examples=200, deadline=None)
@given(gaps=arrival_gaps, limit=st.integers(1, 30), costs=st.lists(st.integers(0, 40), min_size=120, max_size=120))
def test_a_refusals_retry_after_is_exact(gaps: list[float], limit: int, costs: list[int]) -> None:
    rule = Limit.of("tpm", "key:k_abc", limit)
    now, tat = T0, T0
    for gap, cost in zip(gaps, costs, strict=False):
        now += gap
        step = gcra_step(tat, now, rule.interval_s, rule.capacity_s, cost)
        if step.allowed:
            tat = step.tat
            continue
        assert step.retry_after_s > 0
        assert not gcra_step(tat, now + step.retry_after_s - 0.05, rule.interval_s, rule.capacity_s, cost).allowed
        assert gcra_step(tat, now + step.retry_after_s, rule.interval_s, rule.capacity_s, cost).allowed


def test_a_token_estimate_larger_than_the_limit_passes_only_when_idle_and_then_blocks() -> None:
    limiter = LocalLimiter()
    tpm = Limit.of("tpm", "key:k_abc", 1000)
    assert limiter.admit([tpm], "big", token_estimate=3000, now=T0).allowed
    blocked = limiter.admit([tpm], "next", token_estimate=1, now=T0 + 60)
    assert not blocked.allowed
    assert blocked.retry_after_s == pytest.approx(60.06, abs=1e-6)  # 3 minutes of debt, 1 paid off, room for 1


def test_tokens_reconcile_down_give_back_what_the_estimate_overcharged() -> None:
    limiter = LocalLimiter()
    tpm = Limit.of("tpm", "key:k_abc", 1000)
    assert limiter.admit([tpm], "a", token_estimate=900, now=T0).allowed
    assert not limiter.admit([tpm], "b", token_estimate=500, now=T0).allowed
    limiter.reconcile_tokens([tpm], estimated=900, actual=100, now=T0)
    assert limiter.admit([tpm], "b", token_estimate=500, now=T0).allowed
    limiter.reconcile_tokens([tpm], estimated=500, actual=1500, now=T0)  # the provider used more
    assert not limiter.admit([tpm], "c", token_estimate=1, now=T0).allowed


def test_reconciling_down_never_banks_credit_beyond_the_limit() -> None:
    assert gcra_adjust(T0 + 5, T0, 0.06, -1_000_000) == T0


def test_all_or_nothing_when_one_limit_refuses_none_is_charged() -> None:
    limiter = LocalLimiter()
    roomy, tight = rpm(100), rpm(1, "tenant:acme")
    assert limiter.admit([roomy, tight], "a", now=T0).allowed
    for index in range(5):
        assert not limiter.admit([roomy, tight], f"refused{index}", now=T0).allowed
    assert limiter.admit([roomy], "b", now=T0).remaining["rpm"] == 98


def test_parallel_slots_are_released_and_leases_expire() -> None:
    limiter = LocalLimiter()
    slots = Limit("parallel", "key:k_abc", 2, period_s=30)
    assert limiter.admit([slots], "a", now=T0).allowed
    assert limiter.admit([slots], "b", now=T0).allowed
    assert limiter.admit([slots], "a", now=T0).allowed  # the same request again holds one slot
    assert not limiter.admit([slots], "c", now=T0).allowed
    limiter.release([slots], "a")
    assert limiter.admit([slots], "c", now=T0).allowed
    assert not limiter.admit([slots], "d", now=T0 + 29).allowed
    assert limiter.admit([slots], "d", now=T0 + 30).allowed  # b and c crashed: their leases lapsed


def test_memory_is_bounded_by_evicting_the_least_recently_used_scopes() -> None:
    limiter = LocalLimiter(max_scopes=10)
    for index in range(1000):
        limiter.admit([rpm(5, f"key:k{index}")], "r", now=T0)
    assert len(limiter._tats) == 10


def test_a_limit_at_rest_takes_no_memory() -> None:
    limiter = LocalLimiter()
    limiter.admit([rpm(60)], "r", now=T0)
    limiter.admit([rpm(60, "key:other")], "r", now=T0 + 10)
    assert list(limiter._tats) == [("key:other", "rpm")]


def test_dividing_a_limit_among_gateways_keeps_its_rate_per_gateway() -> None:
    share = rpm(100).divided(4)
    assert share.limit == 25
    assert share.interval_s == pytest.approx(2.4)


# -- scopes ----------------------------------------------------------------------------------


def test_a_keys_limits_share_one_hash_tag_and_tenants_get_their_own() -> None:
    assert hash_tag("key:k_abc") == hash_tag("key_model:k_abc:gpt-4o") == "ccr:key:k_abc"
    assert hash_tag("tenant_model:acme:gpt-4o") == hash_tag("tenant:acme") == "ccr:tenant:acme"
    assert redis_key("p:", "key_model:k_abc:gpt-4o", "tpm") == "p:{ccr:key:k_abc}:key_model:k_abc:gpt-4o:tpm"


@pytest.mark.parametrize("scope", ["k_abc", "key:", ":x", "key:{x}"])
def test_malformed_scopes_are_refused(scope: str) -> None:
    with pytest.raises(ValueError):
        Limit.of("rpm", scope, 1)


def test_unknown_limits_and_non_positive_values_are_refused() -> None:
    with pytest.raises(ValueError):
        Limit.of("rps", "key:k", 1)
    with pytest.raises(ValueError):
        Limit.of("rpm", "key:k", 0)
    with pytest.raises(ValueError):
        Budget("key:k", 1, "year")  # type: ignore[arg-type]


# -- budget periods --------------------------------------------------------------------------

instants = st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False)  # 1970..2100


@given(now=instants)
def test_a_day_starts_at_utc_midnight_and_holds_now(now: float) -> None:
    start, end = period_window("day", now)
    assert start <= now < end
    assert end - start == 86400
    assert start % 86400 == 0


@given(now=instants)
def test_a_week_is_an_iso_week_from_monday(now: float) -> None:
    start, end = period_window("week", now)
    assert start <= now < end
    assert end - start == 7 * 86400
    assert datetime.fromtimestamp(start, UTC).isoweekday() == 1
    assert start % 86400 == 0


@given(now=instants)
def test_a_month_runs_from_the_first_to_the_next_first(now: float) -> None:
    start, end = period_window("month", now)
    assert start <= now < end
    first, following = datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
    assert first.day == following.day == 1 and first.hour == 0
    assert (following.year * 12 + following.month) - (first.year * 12 + first.month) == 1
    assert period_window("month", end)[0] == end


# -- budgets in process ------------------------------------------------------------------------


def test_fifty_requests_against_a_budget_for_ten_serve_exactly_ten() -> None:
    limiter = LocalLimiter()
    budget = Budget("key:k_abc", 1.0, "day")
    admitted = [limiter.reserve(budget, f"r{i}", 0.1, now=T0).allowed for i in range(50)]
    assert sum(admitted) == 10
    refused = limiter.reserve(budget, "late", 0.1, now=T0)
    assert refused.limit == budget
    assert refused.retry_after_s == pytest.approx(period_window("day", T0)[1] - T0)
    for index in range(10):
        limiter.settle(budget, f"r{index}", 0.02, now=T0)
    assert limiter.spent_usd(budget, now=T0) == (pytest.approx(0.2), 0.0)
    assert sum(limiter.reserve(budget, f"s{i}", 0.1, now=T0).allowed for i in range(50)) == 8


def test_settle_is_idempotent_and_reservations_that_never_finish_lapse() -> None:
    limiter = LocalLimiter(reservation_ttl_s=300)
    budget = Budget("tenant:acme", 1.0, "month")
    assert limiter.reserve(budget, "lost", 1.0, now=T0).allowed
    assert not limiter.reserve(budget, "next", 0.5, now=T0 + 299).allowed
    assert limiter.reserve(budget, "next", 0.5, now=T0 + 300).allowed  # "lost" crashed: lapsed
    limiter.settle(budget, "next", 0.25, now=T0 + 301)
    limiter.settle(budget, "next", 0.25, now=T0 + 302)
    assert limiter.spent_usd(budget, now=T0 + 303) == (0.25, 0.0)
    assert limiter.reserve(budget, "next", 0.5, now=T0 + 304).allowed  # already settled: no new hold
    assert limiter.spent_usd(budget, now=T0 + 305) == (0.25, 0.0)


@pytest.mark.parametrize("per_minute", [7, 50, 60, 1000])
def test_a_limit_admits_exactly_its_count_at_todays_epoch_times(per_minute: int) -> None:
    """Float steps at epoch seconds (~1.8e9) are ~2.4e-7 s: the slack must absorb their sum."""
    from extproc.auth.local_limits import LocalLimiter

    now = 1_796_000_000.123457
    limiter = LocalLimiter(clock=lambda: now)
    limit = Limit.of("rpm", "key:abcdefgh", per_minute)
    admitted = sum(limiter.admit([limit], f"r{i}").allowed for i in range(per_minute + 5))
    assert admitted == per_minute
