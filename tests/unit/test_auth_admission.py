"""What a keyed request is charged, held and settled (extproc.auth.admission), on both limiters:
in process and through the shared-limiter interface the Redis one implements; and the decision
hop's answer when the admission has to wait for it (``hop.Pending``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
import pytest

from extproc import hop
from extproc.auth.admission import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    Charge,
    HeldCharges,
    Spent,
    admit_local,
    admit_shared,
    budget_of,
    limits_of,
    settle_local,
    worst_case_usd,
)
from extproc.auth.decision import Authenticator
from extproc.auth.keys import VirtualKey
from extproc.auth.limits import Admission, Budget, Limit
from extproc.auth.local_limits import LocalLimiter
from extproc.plan import Forward, plan
from extproc.state import GatewayState
from extproc.translate.base import Api
from tests.unit.test_hop import parse
from tests.unit.test_plan import FAKE_KEYS, FAKE_REFUSED, FakeKeys, auth_state, presented

NOW = 1_000_000.0
KEY = VirtualKey("budgetkk", "acme", "k", rpm=5, tpm=1000, max_parallel=2, budget_usd=1.0, budget_period="day")


class InMemoryShared:
    """The shared-limiter interface over a LocalLimiter: what redis_limits.GuardedLimiter does
    with Redis, without it (its own tests run against a real Redis)."""

    def __init__(self) -> None:
        self.local = LocalLimiter(clock=lambda: NOW)
        self.calls: list[str] = []

    async def admit(self, limits: Sequence[Limit], request_id: str, *, token_estimate: float = 0.0) -> Admission:
        self.calls.append("admit")
        return self.local.admit(limits, request_id, token_estimate=token_estimate)

    async def release(self, limits: Sequence[Limit], request_id: str) -> None:
        self.calls.append("release")
        self.local.release(limits, request_id)

    async def reconcile_tokens(self, limits: Sequence[Limit], estimated: float, actual: float) -> None:
        self.calls.append("reconcile")
        self.local.reconcile_tokens(limits, estimated, actual)

    async def reserve(self, budget: Budget, request_id: str, worst_case_usd: float) -> Admission:
        self.calls.append("reserve")
        return self.local.reserve(budget, request_id, worst_case_usd)

    async def settle(self, budget: Budget, request_id: str, real_usd: float) -> None:
        self.calls.append("settle")
        self.local.settle(budget, request_id, real_usd)


def charge(request_id: str, worst_case: float = 0.3, estimate: int = 100, parallel: bool = True) -> Charge:
    limits = limits_of(KEY) if parallel else limits_of(KEY)[:2]
    return Charge(KEY, request_id, limits, (budget_of(KEY),), estimate, worst_case)  # type: ignore[arg-type]


def test_a_keys_charge_holds_its_rates_parallel_slots_and_budget() -> None:
    assert [(limit.name, limit.limit) for limit in limits_of(KEY)] == [("rpm", 5), ("tpm", 1000), ("parallel", 2)]
    assert [limit.limit for limit in limits_of(KEY, workers=2)] == [2.5, 500, 1]
    assert budget_of(KEY) == Budget("key:budgetkk", 1.0, "day")
    assert budget_of(VirtualKey("budgetkk", "acme", "k", budget_usd=2.0)) == Budget("key:budgetkk", 2.0, "never")
    assert budget_of(VirtualKey("budgetkk", "acme", "k")) is None


def test_the_budget_refuses_what_would_overspend_and_a_refusal_holds_nothing() -> None:
    limiter = LocalLimiter(clock=lambda: NOW)
    for request_id in ("r1", "r2", "r3"):  # 0.9 of 1.0 reserved
        assert admit_local(limiter, charge(request_id, parallel=False)).allowed
    refused = admit_local(limiter, charge("r4", parallel=False))
    assert not refused.allowed and refused.limit == budget_of(KEY)
    assert limiter.spent_usd(budget_of(KEY)) == (0.0, pytest.approx(0.9))
    # r4 took no request from the rpm limit: 2 of 5 were left after r1..r3, one after this probe.
    assert limiter.admit(limits_of(KEY)[:1], "probe").remaining["rpm"] == 1


def test_a_rate_refusal_cancels_the_budget_reservation() -> None:
    limiter = LocalLimiter(clock=lambda: NOW)
    assert admit_local(limiter, charge("r1", worst_case=0.1)).allowed
    assert admit_local(limiter, charge("r2", worst_case=0.1)).allowed
    refused = admit_local(limiter, charge("r3", worst_case=0.1))  # the third parallel request
    assert not refused.allowed and refused.limit is not None and refused.limit.name == "parallel"
    assert limiter.spent_usd(budget_of(KEY)) == (0.0, pytest.approx(0.2))


def test_settling_gives_back_the_slot_charges_the_real_cost_and_the_real_tokens() -> None:
    limiter = LocalLimiter(clock=lambda: NOW)
    held = charge("r1", worst_case=0.5, estimate=100)
    assert admit_local(limiter, held).allowed
    settle_local(limiter, held, Spent(tokens=900, cost_usd=0.02))
    assert limiter.spent_usd(budget_of(KEY)) == (pytest.approx(0.02), 0.0)
    # 900 tokens of 1000 used: a 200-token estimate no longer fits, a 100-token one does.
    tpm = limits_of(KEY)[1]
    assert not limiter.admit([tpm], "probe", token_estimate=200).allowed
    assert limiter.admit([tpm], "probe", token_estimate=100).allowed
    # r1's parallel slot is free again: two more fit (with no tokens: the tpm limit is full).
    assert admit_local(limiter, charge("r2", worst_case=0.1, estimate=0)).allowed
    assert admit_local(limiter, charge("r3", worst_case=0.1, estimate=0)).allowed


def test_the_shared_limiter_is_asked_in_the_same_order() -> None:
    shared = InMemoryShared()
    assert asyncio.run(admit_shared(shared, charge("r1"))).allowed
    assert shared.calls == ["reserve", "admit"]
    shared.calls.clear()
    for request_id in ("r2", "r3"):
        asyncio.run(admit_shared(shared, charge(request_id, worst_case=0.1)))
    assert shared.calls == ["reserve", "admit", "reserve", "admit", "settle"]  # r3: no parallel slot, cancelled


def test_held_charges_are_taken_once_and_forgotten_when_their_record_never_comes() -> None:
    held = HeldCharges(held_for_s=10)
    held.hold(charge("r1"), now=0)
    held.hold(charge("r2"), now=5)
    assert "r1" in held and len(held) == 2
    assert held.take("r1") is not None and held.take("r1") is None
    held.hold(charge("r3"), now=16)  # r2 is 11 s old: its record is not coming
    assert "r2" not in held and "r3" in held


def test_the_worst_case_is_the_output_cap_at_the_dearest_price() -> None:
    state = auth_state(True)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}
    outcome = plan(state.table, Api.ANTHROPIC, "generate", {}, orjson.dumps(body), state.sessions)
    assert isinstance(outcome, Forward)
    prices = outcome.route.prices
    assert prices is not None
    estimate = outcome.context.estimate
    expected = (estimate * prices.input + 1000 * prices.output) / 1e6
    assert worst_case_usd(outcome, body) == pytest.approx(expected)
    no_cap = {k: v for k, v in body.items() if k != "max_tokens"}
    assert worst_case_usd(outcome, no_cap) == pytest.approx(
        (estimate * prices.input + DEFAULT_MAX_OUTPUT_TOKENS * prices.output) / 1e6
    )


def shared_state() -> tuple[GatewayState, InMemoryShared]:
    state = auth_state(True)
    shared = InMemoryShared()
    keys = {**FAKE_KEYS, presented("budgetkk"): KEY}
    state.auth = Authenticator(FakeKeys(keys, FAKE_REFUSED), LocalLimiter(clock=lambda: NOW), shared_limiter=shared)
    return state, shared


def decide(state: GatewayState, request_id: str, api: Api = Api.ANTHROPIC) -> tuple[str, list, bytes]:
    if api is Api.OPENAI:
        path, body = "/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"authorization": "Bearer " + presented("budgetkk")}
    else:
        path = "/v1/messages"
        body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
        headers = {"x-api-key": presented("budgetkk")}
    headers |= {"content-type": "application/json", "x-request-id": request_id}
    answer = hop.decide(state, "POST", path, headers, orjson.dumps(body))
    assert isinstance(answer, hop.Pending)  # the limits are shared: the server awaits them
    return parse(asyncio.run(answer.answer))


def test_the_hop_waits_for_shared_limits_and_puts_their_headers_on_the_answer() -> None:
    state, shared = shared_state()
    action, ops, _ = decide(state, "req-1")
    assert action == "forward" and shared.calls == ["reserve", "admit"]
    answer_headers = {name: value for op, name, value in ops if op == "answer"}
    assert answer_headers["anthropic-ratelimit-requests-limit"] == "5"
    assert answer_headers["anthropic-ratelimit-requests-remaining"] == "4"
    assert "req-1" in state.auth.held
    assert asyncio.run(state.auth.settle("req-1", Spent(10, 0.0))) is True
    assert shared.calls[2:] == ["reconcile", "release", "settle"]
    assert asyncio.run(state.auth.settle("req-1", Spent(10, 0.0))) is False  # another worker's, or done


def test_a_spent_budget_is_a_429_in_each_clients_format() -> None:
    state, shared = shared_state()
    asyncio.run(shared.reserve(budget_of(KEY), "earlier", 0.999999))
    action, ops, payload = decide(state, "req-2")
    assert action == "reply" and ("status", "429", "") in ops
    error = orjson.loads(payload)["error"]
    assert error["type"] == "rate_limit_error" and "budget of this API key is spent" in error["message"]
    assert any(op == "header" and name == "retry-after" for op, name, _ in ops)
    action, ops, payload = decide(state, "req-3", Api.OPENAI)
    assert ("status", "429", "") in ops
    assert orjson.loads(payload)["error"]["type"] == orjson.loads(payload)["error"]["code"] == "insufficient_quota"
    assert "req-2" not in state.auth.held and "req-3" not in state.auth.held


def test_limits_that_cannot_be_checked_fail_closed_with_a_503() -> None:
    state, shared = shared_state()

    async def unreachable(budget: Budget, request_id: str, worst_case_usd: float) -> Admission:
        return Admission(False, budget, 1.0, degraded=True)  # GuardedLimiter's fail_closed answer

    shared.reserve = unreachable  # type: ignore[method-assign]
    action, ops, payload = decide(state, "req-4")
    assert action == "reply" and ("status", "503", "") in ops
    assert "cannot check this API key's limits" in orjson.loads(payload)["error"]["message"]


def test_a_budget_that_never_resets_names_no_wait() -> None:
    state, _shared = shared_state()
    forever = VirtualKey("budgetkk", "acme", "k", budget_usd=0.000001)
    state.auth.keys = FakeKeys({presented("budgetkk"): forever}, FAKE_REFUSED)
    _action, ops, payload = decide(state, "req-5")
    assert ("status", "429", "") in ops and not any(name == "retry-after" for _, name, _ in ops)
    assert orjson.loads(payload)["error"]["message"] == "the budget of this API key is spent"


def test_a_budget_crossing_its_alert_fraction_warns_once_a_period(caplog: pytest.LogCaptureFixture) -> None:
    from extproc.metrics import BUDGET_ALERTS, BUDGET_REMAINING

    state, _ = shared_state()
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    outcome = plan(state.table, Api.ANTHROPIC, "generate", {}, orjson.dumps(body), state.sessions)
    worst = worst_case_usd(outcome, body)  # type: ignore[arg-type]
    key = VirtualKey("budgetkk", "acme", "k", budget_usd=3.5 * worst, budget_period="day")
    state.auth.keys = FakeKeys({presented("budgetkk"): key}, FAKE_REFUSED)
    alerts = BUDGET_ALERTS.labels("acme", "budgetkk")
    before = alerts._value.get()
    with caplog.at_level("WARNING", logger="ccr.auth"):
        for index in range(3):  # 2 of 3.5 reserved: 43% left; 3: 14% left, past the 80% line; once only
            decide(state, f"alert-{index}")
    assert alerts._value.get() == before + 1
    assert [r.message for r in caplog.records if "budget alert" in r.message] == [
        next(r.message for r in caplog.records if "budget alert" in r.message)
    ]
    assert "key budgetkk (tenant acme)" in caplog.records[-1].message
    assert BUDGET_REMAINING.labels("acme", "budgetkk")._value.get() == pytest.approx(0.5 * worst, abs=1e-6)


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"x-api-key": presented("revokedx")}, 401), ({"x-api-key": presented("validkey")}, 200)],
)
def test_the_model_list_needs_a_key_when_keys_are_required(headers: dict, status: int) -> None:
    action, ops, _ = parse(hop.decide(auth_state(True), "GET", "/v1/models", headers, b""))  # type: ignore[arg-type]
    assert action == "reply" and ("status", str(status), "") in ops
    action, ops, _ = parse(hop.decide(auth_state(False), "GET", "/v1/models", {}, b""))  # type: ignore[arg-type]
    assert ("status", "200", "") in ops  # anonymous callers are served when keys are optional


def test_a_batch_of_usage_records_corrects_each_set_of_limits_once() -> None:
    state, shared = shared_state()
    for index in range(2):  # the key holds two parallel slots
        decide(state, f"batch-{index}")
    shared.calls.clear()
    settled = asyncio.run(
        state.auth.settle_many(
            [(f"batch-{index}", Spent(500, 0.001)) for index in range(2)] + [("unknown", Spent(1, 0))]
        )
    )
    assert settled == 2
    # one token correction for the key's limits; each request's parallel slot and budget its own
    assert shared.calls == ["reconcile"] + ["release", "settle"] * 2


def test_a_fail_closed_rate_limit_is_a_503_and_a_local_fallbacks_refusal_a_429() -> None:
    state, shared = shared_state()

    async def closed(limits, request_id, *, token_estimate=0.0):  # GuardedLimiter, fail_closed on rpm
        return Admission(False, limits[0], 1.0, degraded=True)

    async def local(limits, request_id, *, token_estimate=0.0):  # its local fallback, over the limit
        return Admission(False, limits[0], 12.0, {"rpm": 0}, {"rpm": 12.0}, degraded=True)

    shared.admit = closed  # type: ignore[method-assign]
    assert ("status", "503", "") in decide(state, "closed-1")[1]
    shared.admit = local  # type: ignore[method-assign]
    assert ("status", "429", "") in decide(state, "local-1")[1]
