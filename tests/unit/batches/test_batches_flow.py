"""The core's pieces together, the way the adapters will drive them, with a simulated provider and
no I/O: a feeder publishing in FairQueue order, a worker sending through the model and deciding by
the retry policy, a crash that redelivers, and the results read back by both SDKs' models."""

from __future__ import annotations

import heapq
import random
from collections import deque

import orjson
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from openai.types import Batch as SdkBatch

from batches import anthropic_api, openai_api
from batches.lanes import BATCH, Action, FairQueue, ItemMessage, RetryPolicy
from batches.model import Api, BatchState, Dispatch, Recorded, new_batch

T0 = 1_750_000_000.0


def anthropic_answer(custom_id: str, attempt: int) -> tuple[int, dict, dict]:
    """A provider that rate-limits some items once, fails others twice, and refuses a few."""
    n = int(custom_id.rsplit("-", 1)[1])
    if n % 7 == 0 and attempt == 1:
        return (
            429,
            {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
            {"retry-after": "2"},
        )
    if n % 5 == 0 and attempt <= 2:
        return 529, {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}, {}
    if n % 11 == 0:
        return 400, {"type": "error", "error": {"type": "invalid_request_error", "message": "bad prompt"}}, {}
    message = {
        "id": f"msg_{n}",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "text", "text": custom_id}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    return 200, message, {}


def run(states: dict[str, BatchState], *, window: int, crash_every: int = 0) -> list[str]:
    """Feed and work until every batch has ended; returns the tenants in the order they were picked."""
    policy = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=30.0)
    rng = random.Random(7)
    fair = FairQueue()
    queued = {batch_id: deque(range(state.batch.total)) for batch_id, state in states.items()}
    for batch_id, state in states.items():
        fair.add(state.batch.tenant, batch_id, state.batch.total)
    delayed: list[tuple[float, int, str, int]] = []  # (ready at, tiebreak, batch_id, index)
    order, now, sends = [], T0, 0
    while any(state.batch.ended_at is None for state in states.values()):
        now += 0.5
        while delayed and delayed[0][0] <= now:  # retries whose backoff is over go back to the feeder
            _, _, batch_id, index = heapq.heappop(delayed)
            queued[batch_id].append(index)
            fair.add(states[batch_id].batch.tenant, batch_id, 1)
        for pick in fair.take(window):
            order.append(pick.tenant)
            state = states[pick.batch_id]
            message = ItemMessage(pick.tenant, pick.batch_id, queued[pick.batch_id].popleft())
            delivery = ItemMessage.decode(message.encode())  # through the broker, as bytes
            # A crash between sending and recording: nothing stored, nothing acked, so the broker
            # delivers the message again and the item (still ``sent``) is sent a second time.
            crashed = bool(crash_every) and len(order) % crash_every == 0
            for delivery_number in range(2 if crashed else 1):
                sends += 1
                if state.send(delivery.index, now=now) is Dispatch.SKIP:
                    break
                if crashed and delivery_number == 0:
                    continue
                item = state.items[delivery.index]
                status, body, headers = anthropic_answer(item.custom_id, item.attempts)
                decision = policy.after_response(
                    status,
                    body,
                    attempts=item.attempts,
                    throttles=item.throttles,
                    headers=headers,
                    jitter=rng.random(),
                    now=now,
                )
                if decision.action is Action.FINISH:
                    assert state.record(delivery.index, decision.outcome, now=now) is Recorded.STORED
                    # the ack is lost too: the redelivered message finds the item final and is skipped
                    assert state.send(delivery.index, now=now) is Dispatch.SKIP
                else:
                    state.retry_later(delivery.index, throttled=decision.throttled, now=now)
                    heapq.heappush(delayed, (now + decision.delay, sends, pick.batch_id, delivery.index))
    return order


def make(batch_id: str, tenant: str, n: int) -> BatchState:
    body = {
        "requests": [
            {
                "custom_id": f"{tenant}-{i}",
                "params": {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]},
            }
            for i in range(n)
        ]
    }
    created = anthropic_api.parse_create(orjson.dumps(body))
    batch, items = new_batch(
        batch_id, tenant=tenant, api=Api.ANTHROPIC, endpoint=anthropic_api.ENDPOINT, requests=created.requests, now=T0
    )
    return BatchState(batch, items)


def test_a_huge_batch_and_a_small_one_both_finish_and_the_small_one_is_not_starved():
    states = {"msgbatch_big": make("msgbatch_big", "big", 400), "msgbatch_small": make("msgbatch_small", "small", 10)}
    order = run(states, window=BATCH.prefetch)
    # picks alternate while both have work: the small tenant's ten items go out among the first 20
    # picks, not after the big one's 400 (their retries come back when their backoff is over)
    assert order[:20].count("small") == 10
    for state in states.values():
        assert state.batch.ended_at is not None
        parsed = MessageBatch.model_validate(
            anthropic_api.render_batch(state.batch, state.counts, base_url="http://gw")
        )
        assert parsed.processing_status == "ended"
        counts = parsed.request_counts
        assert counts.processing == 0 and counts.succeeded + counts.errored == state.batch.total
        lines = [
            MessageBatchIndividualResponse.model_validate(orjson.loads(raw))
            for raw in anthropic_api.results_lines(state.items)
        ]
        # every result once, matching its custom_id
        assert [line.custom_id for line in lines] == [item.custom_id for item in state.items]
        for line in lines:
            n = int(line.custom_id.rsplit("-", 1)[1])
            if n % 11 == 0:
                assert line.result.type == "errored" and line.result.error.error.message == "bad prompt"
            else:  # 429s backed off, 529s retried: all got through
                assert line.result.type == "succeeded" and line.result.message.content[0].text == line.custom_id


def test_redelivery_after_a_crash_still_ends_every_item_exactly_once():
    states = {"msgbatch_a": make("msgbatch_a", "a", 60)}
    run(states, window=5, crash_every=3)
    state = states["msgbatch_a"]
    assert state.counts.total == 60 and state.counts.unfinished == 0
    assert all(item.outcome is not None for item in state.items)


def test_the_same_core_serves_an_openai_batch():
    raw = b"".join(
        orjson.dumps(
            {"custom_id": f"o-{i}", "method": "POST", "url": "/v1/responses", "body": {"model": "m", "input": "x"}}
        )
        + b"\n"
        for i in range(5)
    )
    validated = openai_api.validate_input(raw, endpoint="/v1/responses")
    batch, items = new_batch(
        openai_api.new_batch_id(b"\x05" * 16),
        tenant="o",
        api=Api.OPENAI,
        endpoint="/v1/responses",
        requests=validated.requests,
        now=T0,
        input_file_id="file-x",
    )
    state = BatchState(batch, items)
    policy = RetryPolicy()
    for index in range(5):
        state.send(index, now=T0 + 1)
        status = 200 if index % 2 == 0 else 422
        decision = policy.after_response(
            status, {"id": f"resp_{index}", "status": "completed"}, attempts=1, throttles=0, jitter=0.5, now=T0 + 1
        )
        state.record(index, decision.outcome, now=T0 + 2)
    parsed = SdkBatch.model_validate(openai_api.render_batch(state.batch, state.counts))
    assert parsed.status == "completed" and parsed.request_counts.model_dump() == {
        "total": 5,
        "completed": 3,
        "failed": 2,
    }
    outputs = [orjson.loads(line) for line in openai_api.output_lines(batch.id, state.items)]
    errors = [orjson.loads(line) for line in openai_api.error_lines(batch.id, state.items)]
    assert [line["custom_id"] for line in outputs] == ["o-0", "o-2", "o-4"]
    assert [(line["custom_id"], line["response"]["status_code"]) for line in errors] == [("o-1", 422), ("o-3", 422)]
