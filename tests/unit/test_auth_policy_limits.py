"""Limits the policy sets beside each key's own (control_plane.policy.limit_sets): per tenant
(shared by its keys), per model (every caller), per key on a model; the tenant's budget and model
list. Parsed with their lines, carried in the policy proto, enforced by the same admission."""

from __future__ import annotations

import orjson
import pytest

from control_plane.policy import PolicyError, load_policy
from extproc import hop
from extproc.auth.decision import Authenticator
from extproc.auth.keys import VirtualKey
from extproc.auth.local_limits import LocalLimiter
from extproc.routing_table import TenantRules, compile_policy
from extproc.state import GatewayState
from tests.unit.test_hop import parse
from tests.unit.test_plan import FAKE_REFUSED, FakeKeys, presented

POLICY = """
providers:
  - {name: ant, api: anthropic, base_url: "http://10.0.0.1:8000", api_key_env: ANT_KEY,
     models: [claude-sonnet-4-5, {name: claude-haiku-4-5, limits: {rpm: 3}}]}
router: {default: "ant,claude-sonnet-4-5"}
tenants:
  - name: acme
    limits: {rpm: 4, max_parallel: 100}
    budget: {usd: 5, period: day}
    models: [claude-sonnet-4-5, claude-haiku-4-5]
    key_model_limits:
      claude-sonnet-4-5: {rpm: 2}
  - name: narrow
    models: [claude-haiku-4-5]
"""
KEYS = {
    presented("acmekeya"): VirtualKey("acmekeya", "acme", "one"),
    presented("acmekeyb"): VirtualKey("acmekeyb", "acme", "two"),
    presented("narrowkk"): VirtualKey("narrowkk", "narrow", "n"),
    presented("otherkey"): VirtualKey("otherkey", "other", "o"),
}


def state() -> GatewayState:
    gateway = GatewayState(Authenticator(FakeKeys(KEYS, FAKE_REFUSED), LocalLimiter(clock=lambda: 1000.0)))
    gateway.table = compile_policy(load_policy(POLICY, "gw.yaml").to_proto("1"), environ={"ANT_KEY": "k"})
    return gateway


def ask(gateway: GatewayState, key_id: str, model: str = "claude-sonnet-4-5", request_id: str = "") -> tuple:
    body = {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-api-key": presented(key_id), "x-request-id": request_id or f"{key_id}-{model}-{id(body)}"}
    action, ops, payload = parse(hop.decide(gateway, "POST", "/v1/messages", headers, orjson.dumps(body)))  # type: ignore[arg-type]
    status = next((int(name) for op, name, _ in ops if op == "status"), 200)
    return status, (orjson.loads(payload)["error"]["message"] if action == "reply" else "")


def test_the_policy_rules_reach_the_routing_table() -> None:
    table = state().table
    assert table is not None
    assert table.tenant_rules["acme"] == TenantRules(
        "acme",
        (("rpm", 4), ("parallel", 100)),
        (5.0, "day"),
        ("claude-sonnet-4-5", "claude-haiku-4-5"),
        {"claude-sonnet-4-5": (("rpm", 2),)},
    )
    assert table.models["claude-haiku-4-5"].limits == (("rpm", 3),)
    assert table.models["claude-sonnet-4-5"].limits == ()


def test_each_key_on_a_model_has_its_own_limit_and_the_tenant_shares_one() -> None:
    gateway = state()
    assert [ask(gateway, "acmekeya")[0] for _ in range(3)] == [200, 200, 429]  # key on sonnet: 2/min
    status, message = ask(gateway, "acmekeya")
    assert "this API key on model 'claude-sonnet-4-5'" in message
    assert [ask(gateway, "acmekeyb")[0] for _ in range(2)] == [200, 200]  # the other key has its own 2
    status, message = ask(gateway, "acmekeyb", "claude-haiku-4-5")  # the tenant's 4/min are spent
    assert status == 429 and "tenant 'acme'" in message


def test_a_model_limit_counts_every_caller() -> None:
    gateway = state()
    statuses = [ask(gateway, key, "claude-haiku-4-5")[0] for key in ("narrowkk", "otherkey", "narrowkk", "otherkey")]
    assert statuses == [200, 200, 200, 429]
    assert "model 'claude-haiku-4-5' (all callers)" in ask(gateway, "otherkey", "claude-haiku-4-5")[1]


def test_a_tenant_model_list_is_a_403() -> None:
    status, message = ask(state(), "narrowkk", "claude-sonnet-4-5")
    assert status == 403 and "this API key's tenant may not use model 'claude-sonnet-4-5'" in message


def test_a_tenant_budget_is_shared_and_refused_in_the_tenants_name() -> None:
    gateway = state()
    assert gateway.table is not None
    rules = gateway.table.tenant_rules["acme"]
    tight = TenantRules("acme", (), (1e-9, "day"), (), {})
    gateway.table.tenant_rules["acme"] = tight  # type: ignore[index]
    status, message = ask(gateway, "acmekeya", "claude-haiku-4-5")
    assert status == 429 and "the budget of tenant 'acme' is spent" in message
    gateway.table.tenant_rules["acme"] = rules  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tenants:\n  - name: a\n    limits: {rpx: 1}\n", "gw.yaml:6:14: tenants[0].limits.rpx: unknown field"),
        ("tenants:\n  - name: a\n    limits: {}\n", "gw.yaml:6:13: tenants[0].limits: sets no limit"),
        ("tenants:\n  - name: a\n    budget: {usd: 5, period: year}\n", "tenants[0].budget.period: must be one of"),
        ("tenants:\n  - name: a\n    models: [gpt-9]\n", "tenants[0].models[0]: no provider serves a model 'gpt-9'"),
        (
            "tenants:\n  - name: a\n    key_model_limits: {gpt-9: {rpm: 1}}\n",
            "tenants[0].key_model_limits.gpt-9: no provider serves a model 'gpt-9'",
        ),
    ],
)
def test_policy_limit_mistakes_name_their_line(text: str, expected: str) -> None:
    base = (
        'providers:\n  - {name: ant, api: anthropic, base_url: "http://h:1", models: [m]}\nrouter: {default: "ant,m"}\n'
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(base + text, "gw.yaml")
    assert any(expected in str(problem) for problem in caught.value.problems), caught.value.problems


def test_a_virtual_keys_tenant_gets_that_tenants_routing_overrides() -> None:
    from tests.unit.test_plan import auth_state

    gateway = auth_state(True)  # the corpus policy: tenant "team" routes its default to gemini
    keys = {
        presented("teamkeyx"): VirtualKey("teamkeyx", "team", "t"),
        presented("otherkey"): KEYS[presented("otherkey")],
    }
    gateway.auth.keys = FakeKeys(keys, FAKE_REFUSED)
    body = orjson.dumps({"model": "claude-unknown", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})

    def routed(key_id: str) -> str:
        headers = {"x-api-key": presented(key_id), "x-request-id": key_id}
        _, ops, _ = parse(hop.decide(gateway, "POST", "/v1/messages", headers, body))  # type: ignore[arg-type]
        return next(value for op, name, value in ops if op == "label" and name == "provider")

    assert routed("teamkeyx") == "gem"
    assert routed("otherkey") == "ant"
