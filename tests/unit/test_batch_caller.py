"""A batch worker's items are the batch owner's requests (extproc.auth.batch_caller): believed
from a worker key the policy lists only, under the owner's limits, labelled with the batch."""

from __future__ import annotations

import pytest

from ccr.v1.contract import BATCH_ITEM_HEADER, BATCH_KEY_HEADER, BATCH_LABEL, BATCH_TENANT_HEADER
from control_plane.policy import load_policy
from extproc.auth.batch_caller import BatchCaller
from extproc.auth.decision import Authenticator
from extproc.auth.keys import VirtualKey
from extproc.auth.local_limits import LocalLimiter
from extproc.routing_table import compile_policy
from extproc.state import GatewayState
from extproc.translate.base import Api
from tests.unit.test_hop_batches import decide
from tests.unit.test_plan import FAKE_KEYS, FAKE_REFUSED, POLICY, FakeKeys, presented

WORKER = presented("workerxx")
KEYS = {**FAKE_KEYS, WORKER: VirtualKey("workerxx", "ops", "batch worker")}
BODY = b'{"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}'


class Keys(FakeKeys):
    def by_id(self, key_id: str) -> VirtualKey | None:
        return next((key for key in self.keys.values() if key.key_id == key_id), None)


def state(required: bool = True, workers: str = "[workerxx]") -> GatewayState:
    proto = load_policy(POLICY + f"\nbatches: {{api: 127.0.0.1:9180, workers: {workers}}}\n").to_proto("1")
    proto.auth_required = required
    gateway = GatewayState(Authenticator(Keys(KEYS, FAKE_REFUSED), LocalLimiter(clock=lambda: 1000.0)))
    gateway.table = compile_policy(proto, environ={"ANT_KEY": "k"})
    return gateway


def item(owner: str = "validkey", tenant: str = "acme", key: str = WORKER, index: int = 0) -> dict[str, str]:
    return {
        "x-api-key": key,
        "anthropic-version": "2023-06-01",
        BATCH_ITEM_HEADER: f"msgbatch_1:{index}",
        BATCH_KEY_HEADER: owner,
        BATCH_TENANT_HEADER: tenant,
    }


def test_a_workers_item_is_sent_as_the_batch_owners_request_labelled_with_the_batch():
    answer = decide(state(), "POST", "/v1/messages", item(), BODY)
    assert answer["action"] == "forward"
    assert answer["labels"]["tenant"] == "acme" and answer["labels"]["key_id"] == "validkey"
    assert answer["labels"][BATCH_LABEL] == "msgbatch_1"


def test_the_owners_limits_apply_not_the_workers():
    gateway = state()
    first = decide(gateway, "POST", "/v1/messages", item("onerpmxx", index=0), BODY)
    second = decide(gateway, "POST", "/v1/messages", item("onerpmxx", index=1), BODY)
    assert first["action"] == "forward"
    assert second["status"] == 429  # onerpmxx may send 1 request a minute; the worker backs off on it


def test_an_item_whose_owner_key_is_gone_is_a_401_in_the_clients_format():
    answer = decide(state(), "POST", "/v1/messages", item("revokedx"), BODY)
    assert answer["status"] == 401
    assert answer["body"]["error"]["type"] == "authentication_error"
    assert "created this batch" in answer["body"]["error"]["message"]


def test_the_batch_headers_of_a_key_the_policy_does_not_list_are_ignored():
    answer = decide(state(), "POST", "/v1/messages", item(key=presented("onlygptx")), BODY)
    assert answer["status"] == 403  # onlygptx's own model list: it stays itself, not validkey
    answer = decide(state(workers="[]"), "POST", "/v1/messages", item(), BODY)
    assert answer["labels"]["key_id"] == "workerxx" and BATCH_LABEL not in answer["labels"]


def test_a_workers_own_request_without_an_item_header_is_its_own():
    headers = {"x-api-key": WORKER, "anthropic-version": "2023-06-01"}
    answer = decide(state(), "POST", "/v1/messages", headers, BODY)
    assert answer["labels"]["key_id"] == "workerxx" and BATCH_LABEL not in answer["labels"]


@pytest.mark.parametrize("required", [False, True])
def test_an_anonymous_batchs_items_are_anonymous_where_the_policy_lets_anonymous_requests_in(required):
    answer = decide(state(required), "POST", "/v1/messages", item("-", "-"), BODY)
    if required:
        assert answer["status"] == 401
    else:
        assert answer["action"] == "forward" and "tenant" not in answer["labels"]


def test_a_batch_of_a_certificate_or_jwt_caller_runs_under_its_tenant():
    answer = decide(state(), "POST", "/v1/messages", item("cert:0123456789abcdef", "globex"), BODY)
    assert answer["labels"]["tenant"] == "globex" and answer["labels"]["key_id"] == "cert:0123456789abcdef"
    assert answer["labels"][BATCH_LABEL] == "msgbatch_1"
    assert decide(state(), "POST", "/v1/messages", item("jwt:someone", "-"), BODY)["status"] == 401


def test_a_batch_callers_limits_are_its_owners_made_once():
    auth = state().auth
    caller = auth.authenticate(Api.ANTHROPIC, "/v1/messages", item(), True, batch_workers=frozenset({"workerxx"}))
    again = auth.authenticate(Api.ANTHROPIC, "/v1/messages", item(index=1), True, batch_workers=frozenset({"workerxx"}))
    assert isinstance(caller, BatchCaller) and isinstance(again, BatchCaller) and caller is not again
    assert auth.limits_of(caller) == auth.limits_of(again)
    assert auth._limits["validkey"][0] is KEYS[presented("validkey")]
