"""The official SDKs' batch methods against the batch API service, unchanged: the ``anthropic``
SDK's ``messages.batches`` and the ``openai`` SDK's ``files`` + ``batches``, pointed at the service
with ``base_url``. The service runs in this process on a thread of its own, over a SqliteBatchStore
in a temporary file and over a PostgresBatchStore (skipped when PostgreSQL is not there); items are completed through the same store, as the worker would, and the
SDKs must read back every result exactly as it was recorded (a 1,000-request batch for each API).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import anthropic
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletion

from batches.api_service import build_app, start
from batches.model import Outcome
from batches.pg_store import PostgresBatchStore
from batches.sqlite_store import SqliteBatchStore
from batches.store import BatchStore

T = TypeVar("T")
N = 1000


class ServiceThread:
    """The service on an event loop of its own thread (the SDKs used here are synchronous)."""

    def __init__(self, store: BatchStore) -> None:
        self.store = store
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="batch-api", daemon=True)
        self.thread.start()
        self.runner, port = self.call(start(build_app(store), "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{port}"

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=120)

    def complete(self, batch_id: str, total: int, outcome: Callable[[int], Outcome]) -> None:
        """Every item recorded with ``outcome(index)``, as workers would (in reverse: order of
        completion must not matter to the results' order)."""

        async def record_all() -> None:
            for index in reversed(range(total)):
                await self.store.record_item(batch_id, index, outcome(index), now=1.0)

        self.call(record_all())

    def close(self) -> None:
        self.call(self.runner.cleanup())
        self.call(self.store.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    """The embedded store, and PostgreSQL (the session's throwaway database; skipped without one)."""
    store: BatchStore
    if request.param == "sqlite":
        store = SqliteBatchStore(tmp_path_factory.mktemp("batch-api") / "batches.db")
    else:
        store = PostgresBatchStore(request.getfixturevalue("postgres_dsn"))
    running = ServiceThread(store)
    yield running
    running.close()


@pytest.fixture
def claude(service: ServiceThread) -> anthropic.Anthropic:
    # The tenant header stands in for the gateway, which sets it after authenticating the key.
    return anthropic.Anthropic(
        base_url=service.url, api_key="sk-test", max_retries=0, default_headers={"x-ccr-tenant": "acme"}
    )


@pytest.fixture
def gpt(service: ServiceThread) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=service.url + "/v1", api_key="sk-test", max_retries=0, default_headers={"x-ccr-tenant": "acme"}
    )


def message(index: int) -> dict[str, Any]:
    return {
        "id": f"msg_{index:04d}",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": f"answer {index}"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10 + index, "output_tokens": index % 7 + 1},
    }


def completion(index: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{index}",
        "object": "chat.completion",
        "created": 1_750_000_000,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": f"answer {index}"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def anthropic_outcome(index: int) -> Outcome:
    if index % 10 == 3:
        return Outcome.from_response(529, OVERLOADED, f"req_{index}")
    return Outcome.from_response(200, message(index), f"req_{index}")


def test_the_anthropic_sdk_runs_a_1000_request_batch_and_reads_every_result(service, claude):
    requests = [
        {
            "custom_id": f"req-{i}",
            "params": {
                "model": "claude-sonnet-4-5",
                "max_tokens": 32,
                "messages": [{"role": "user", "content": f"{i}"}],
            },
        }
        for i in range(N)
    ]
    batch = claude.messages.batches.create(requests=requests)
    assert batch.processing_status == "in_progress" and batch.request_counts.processing == N
    assert claude.messages.batches.retrieve(batch.id) == batch
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        claude.messages.batches.results(batch.id)  # not ended: the SDK itself refuses

    service.complete(batch.id, N, anthropic_outcome)
    ended = claude.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and ended.results_url.startswith(service.url)
    assert (ended.request_counts.succeeded, ended.request_counts.errored) == (N - N // 10, N // 10)

    results = list(claude.messages.batches.results(batch.id))
    assert [result.custom_id for result in results] == [f"req-{i}" for i in range(N)]
    for index, result in enumerate(results):
        if index % 10 == 3:
            assert result.result.type == "errored"
            assert result.result.error.error.type == "overloaded_error"
            assert result.result.error.request_id == f"req_{index}"
        else:
            assert result.result.type == "succeeded"
            assert result.result.message.model_dump(mode="json", exclude_unset=True) == message(index)


def test_the_anthropic_sdk_cancels_lists_and_deletes(service, claude):
    params = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    batch = claude.messages.batches.create(requests=[{"custom_id": f"c{i}", "params": params} for i in range(3)])
    service.call(service.store.send_item(batch.id, 0, now=1.0))  # in flight: it finishes
    canceling = claude.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    service.complete(batch.id, 1, anthropic_outcome)
    assert [result.result.type for result in claude.messages.batches.results(batch.id)] == [
        "succeeded",
        "canceled",
        "canceled",
    ]

    listed = [listed.id for listed in claude.messages.batches.list(limit=1)]  # auto-paging, a page per batch
    assert listed[0] == batch.id and len(listed) == len(set(listed)) >= 2

    assert claude.messages.batches.delete(batch.id).id == batch.id
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.batches.retrieve(batch.id)


def test_the_anthropic_sdk_sees_refusals_and_other_tenants_as_the_real_api_does(service, claude):
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.batches.create(requests=[])
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    params = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    mine = claude.messages.batches.create(requests=[{"custom_id": "a", "params": params}])
    other = anthropic.Anthropic(base_url=service.url, api_key="k", max_retries=0, default_headers={"x-ccr-tenant": "b"})
    with pytest.raises(anthropic.NotFoundError):
        other.messages.batches.retrieve(mine.id)
    assert mine.id not in [batch.id for batch in other.messages.batches.list()]


def input_file(total: int) -> bytes:
    lines = (
        {
            "custom_id": f"task-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{i}"}]},
        }
        for i in range(total)
    )
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def openai_outcome(index: int) -> Outcome:
    if index % 10 == 7:
        return Outcome.from_response(500, {"error": {"message": "upstream failed", "type": "server_error"}})
    return Outcome.from_response(200, completion(index), f"req_{index}")


def test_the_openai_sdk_runs_a_1000_line_batch_and_reads_its_output_and_error_files(service, gpt):
    content = input_file(N)
    uploaded = gpt.files.create(file=("input.jsonl", content), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(content)
    assert gpt.files.retrieve(uploaded.id) == uploaded
    assert gpt.files.content(uploaded.id).content == content

    batch = gpt.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert batch.status == "in_progress" and batch.request_counts.total == N and batch.metadata == {"job": "nightly"}
    assert gpt.batches.retrieve(batch.id) == batch
    assert batch.id in [listed.id for listed in gpt.batches.list()]

    service.complete(batch.id, N, openai_outcome)
    done = gpt.batches.retrieve(batch.id)
    assert done.status == "completed" and done.completed_at is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (N - N // 10, N // 10)

    output = gpt.files.content(done.output_file_id).content
    lines = [orjson.loads(line) for line in output.splitlines()]
    assert [line["custom_id"] for line in lines] == [f"task-{i}" for i in range(N) if i % 10 != 7]
    for line in lines:
        index = int(line["custom_id"].removeprefix("task-"))
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"] == f"req_{index}"
        assert ChatCompletion.model_validate(line["response"]["body"]).choices[0].message.content == f"answer {index}"
        assert line["response"]["body"] == completion(index)
    assert gpt.files.retrieve(done.output_file_id).bytes == len(output)

    errors = [orjson.loads(line) for line in gpt.files.content(done.error_file_id).content.splitlines()]
    assert [line["custom_id"] for line in errors] == [f"task-{i}" for i in range(N) if i % 10 == 7]
    assert {line["response"]["status_code"] for line in errors} == {500}

    assert gpt.files.delete(uploaded.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        gpt.files.retrieve(uploaded.id)


def test_the_openai_sdk_cancels_and_sees_refusals(service, gpt):
    uploaded = gpt.files.create(file=("small.jsonl", input_file(3)), purpose="batch")
    batch = gpt.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    cancelled = gpt.batches.cancel(batch.id)
    assert cancelled.status == "cancelled" and cancelled.output_file_id is None
    codes = [
        orjson.loads(line)["error"]["code"] for line in gpt.files.content(cancelled.error_file_id).content.splitlines()
    ]
    assert codes == ["batch_cancelled"] * 3

    with pytest.raises(openai.BadRequestError) as refused:
        gpt.files.create(file=("tune.jsonl", b"{}\n"), purpose="fine-tune")
    assert refused.value.param == "purpose"
    with pytest.raises(openai.NotFoundError):
        gpt.batches.retrieve("batch_nothing")
    other = openai.OpenAI(
        base_url=service.url + "/v1", api_key="k", max_retries=0, default_headers={"x-ccr-tenant": "b"}
    )
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(cancelled.error_file_id)


def test_ccr_gateway_batch_api_serves_until_sigterm(tmp_path):
    """The command: opens its store, says where it listens (port 0: a free one), stops on SIGTERM."""
    database = tmp_path / "cli.db"
    process = subprocess.Popen(
        [sys.executable, "-m", "ccr_gateway", "batch-api", "--listen", "127.0.0.1:0", "--sqlite", str(database)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        banner = process.stdout.readline()
        assert banner.startswith("batch API listening on http://127.0.0.1:") and str(database) in banner
        url = banner.split()[4]
        with urllib.request.urlopen(url + "/healthz", timeout=10) as answer:
            assert orjson.loads(answer.read()) == {"status": "ok", "store": str(database)}
        assert database.exists()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
