"""The batch API through the gateway's own listener: `ccr-gateway batch-api` (a subprocess on a
SQLite file) behind a gateway whose policy has ``batches: {api: ...}`` and requires virtual keys.
The official SDKs are pointed at the GATEWAY: every request is authenticated by the decision hop and
forwarded to the batch API with the key's tenant. Items are completed through the store, as a
worker would, and read back through the gateway."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from batches.model import Outcome
from batches.sqlite_store import SqliteBatchStore
from extproc.auth.key_store import SqliteKeyStore
from extproc.auth.keys import new_key
from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port, http, wait_until

PARAMS = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


async def _create_keys(path: Path) -> dict[str, str]:
    store = SqliteKeyStore(path)
    made: dict[str, str] = {}
    try:
        for tenant in ("acme", "globex"):
            presented, record = new_key(tenant, "batches", time.time())
            await store.create(record)
            made[tenant] = presented
    finally:
        await store.close()
    return made


class Setup:
    def __init__(self, gateway: Gateway, database: Path, keys: dict[str, str]) -> None:
        self.gateway, self.database, self.keys = gateway, database, keys

    def claude(self, tenant: str | None = "acme", **kwargs: Any) -> anthropic.Anthropic:
        key = self.keys[tenant] if tenant else "no-key"
        return anthropic.Anthropic(base_url=self.gateway.url, api_key=key, max_retries=0, **kwargs)

    def gpt(self, tenant: str | None = "acme", **kwargs: Any) -> openai.OpenAI:
        key = self.keys[tenant] if tenant else "no-key"
        return openai.OpenAI(base_url=f"{self.gateway.url}/v1", api_key=key, max_retries=0, **kwargs)

    def complete(self, batch_id: str, outcomes: list[Outcome]) -> None:
        """Every item recorded, as the workers would, on the batch API's own file."""

        async def record() -> None:
            store = SqliteBatchStore(self.database)
            try:
                for index, outcome in enumerate(outcomes):
                    await store.record_item(batch_id, index, outcome, now=time.time())
            finally:
                await store.close()

        asyncio.run(record())


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, fake: FakeProvider) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("batch-gateway")
    database = directory / "batches.db"
    api_port = free_port()
    service = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ccr_gateway",
            "batch-api",
            "--listen",
            f"127.0.0.1:{api_port}",
            "--sqlite",
            str(database),
        ],
        stdout=open(directory / "batch-api.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    gateway = None
    try:
        wait_until(lambda: _healthy(api_port), 20, "ccr-gateway batch-api")
        keys = asyncio.run(_create_keys(directory / "keys.db"))
        policy = base_policy(free_port(), fake)
        policy["auth"] = {"required": True, "keys": {"sqlite": str(directory / "keys.db")}}
        policy["batches"] = {"api": f"127.0.0.1:{api_port}"}
        gateway = Gateway.start(directory, policy, name="batch-gateway", workers=1, args=["--no-batch-services"])
        yield Setup(gateway, database, keys)
    finally:
        if gateway is not None:
            gateway.stop()
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=15)


def _healthy(port: int) -> bool:
    try:
        return http("GET", f"http://127.0.0.1:{port}/healthz", timeout=1)[0] == 200
    except OSError:
        return False


def message(index: int) -> dict[str, Any]:
    return {
        "id": f"msg_{index}",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": f"answer {index}"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }


def test_the_anthropic_sdk_runs_a_batch_through_the_gateway(setup):
    claude = setup.claude()
    batch = claude.messages.batches.create(requests=[{"custom_id": f"r{i}", "params": PARAMS} for i in range(3)])
    assert batch.processing_status == "in_progress" and batch.request_counts.processing == 3
    assert claude.messages.batches.retrieve(batch.id) == batch
    assert batch.id in [listed.id for listed in claude.messages.batches.list()]

    setup.complete(batch.id, [Outcome.from_response(200, message(i), f"req_{i}") for i in range(3)])
    ended = claude.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and ended.request_counts.succeeded == 3
    assert ended.results_url.startswith(setup.gateway.url)  # the SDK reads the results there, through Envoy
    results = list(claude.messages.batches.results(batch.id))
    assert [r.custom_id for r in results] == ["r0", "r1", "r2"]
    assert [r.result.message.content[0].text for r in results] == ["answer 0", "answer 1", "answer 2"]

    other = claude.messages.batches.create(requests=[{"custom_id": "c", "params": PARAMS}])
    assert claude.messages.batches.cancel(other.id).processing_status in ("canceling", "ended")
    assert [r.result.type for r in claude.messages.batches.results(other.id)] == ["canceled"]


def test_the_openai_sdk_uploads_runs_and_cancels_batches_through_the_gateway(setup):
    gpt = setup.gpt()
    lines = [
        {
            "custom_id": f"t{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": f"{i}"}]},
        }
        for i in range(2)
    ]
    content = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    uploaded = gpt.files.create(file=("input.jsonl", content), purpose="batch")  # multipart, untouched
    assert uploaded.bytes == len(content)
    assert gpt.files.content(uploaded.id).content == content
    batch = gpt.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "in_progress" and batch.request_counts.total == 2
    assert gpt.batches.retrieve(batch.id) == batch
    assert batch.id in [listed.id for listed in gpt.batches.list()]

    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    }
    setup.complete(batch.id, [Outcome.from_response(200, answer, f"req_{i}") for i in range(2)])
    done = gpt.batches.retrieve(batch.id)
    assert done.status == "completed"
    output = [orjson.loads(line) for line in gpt.files.content(done.output_file_id).content.splitlines()]
    assert [line["custom_id"] for line in output] == ["t0", "t1"]

    second = gpt.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert gpt.batches.cancel(second.id).status == "cancelled"


def test_without_a_valid_key_every_batch_call_is_a_401_in_the_clients_format(setup):
    with pytest.raises(anthropic.AuthenticationError) as claude_refused:
        setup.claude(None).messages.batches.list()
    assert claude_refused.value.body["type"] == "error"
    with pytest.raises(openai.AuthenticationError) as gpt_refused:
        setup.gpt(None).files.create(file=("input.jsonl", b"{}\n"), purpose="batch")
    assert gpt_refused.value.code is not None or gpt_refused.value.body is not None


def test_two_tenants_never_see_each_others_batches_whatever_tenant_header_they_send(setup):
    mine = setup.claude().messages.batches.create(requests=[{"custom_id": "a", "params": PARAMS}])
    # globex names acme in the gateway's own header: the hop overwrites it with globex.
    intruder = setup.claude("globex", default_headers={"x-ccr-tenant": "acme"})
    with pytest.raises(anthropic.NotFoundError):
        intruder.messages.batches.retrieve(mine.id)
    assert mine.id not in [batch.id for batch in intruder.messages.batches.list()]
    with pytest.raises(openai.NotFoundError):
        setup.gpt("globex", default_headers={"x-ccr-tenant": "acme"}).files.content("file-nothing")


def test_a_body_over_the_listeners_limit_is_a_413_in_the_clients_format(setup):
    too_large = b"x" * (setup.gateway.policy["limits"]["max_request_bytes"] + 1)
    with pytest.raises(openai.APIStatusError) as gpt_refused:
        setup.gpt().files.create(file=("input.jsonl", too_large), purpose="batch")
    assert gpt_refused.value.status_code == 413
    assert gpt_refused.value.body["type"] == "invalid_request_error"  # the SDK hands over body["error"]
    with pytest.raises(anthropic.APIStatusError) as claude_refused:
        setup.claude().messages.batches.create(
            requests=[{"custom_id": "big", "params": {**PARAMS, "system": too_large.decode()}}]
        )
    assert claude_refused.value.status_code == 413
    assert claude_refused.value.body["error"]["type"] == "request_too_large"


def test_the_ext_proc_decision_path_forwards_batch_calls_the_same_way(setup):
    gateway, original = setup.gateway, setup.gateway.policy
    gateway.write_policy({**original, "listener": {**original["listener"], "decision": "ext_proc"}})
    try:
        wait_until(lambda: "envoy.filters.http.lua" not in _listeners(gateway), 20, "the ext_proc path")
        streams = gateway.envoy_stat("cluster.ccr_extproc.upstream_rq_total")
        claude = setup.claude()
        batch = claude.messages.batches.create(requests=[{"custom_id": "e", "params": PARAMS}])
        assert gateway.envoy_stat("cluster.ccr_extproc.upstream_rq_total") > streams  # decided by ext_proc
        assert claude.messages.batches.retrieve(batch.id) == batch
        setup.complete(batch.id, [Outcome.from_response(200, message(0), "req_e")])
        assert [r.result.type for r in claude.messages.batches.results(batch.id)] == ["succeeded"]
        uploaded = setup.gpt().files.create(file=("in.jsonl", b'{"custom_id":"x"}\n'), purpose="batch")
        assert setup.gpt().files.content(uploaded.id).content == b'{"custom_id":"x"}\n'
        with pytest.raises(anthropic.AuthenticationError):
            setup.claude(None).messages.batches.list()
        with pytest.raises(anthropic.NotFoundError):
            setup.claude("globex", default_headers={"x-ccr-tenant": "acme"}).messages.batches.retrieve(batch.id)
    finally:
        gateway.write_policy(original)
        wait_until(lambda: "envoy.filters.http.lua" in _listeners(gateway), 20, "the hop path")


def _listeners(gateway: Gateway) -> str:
    return http("GET", f"{gateway.admin}/config_dump?resource=dynamic_listeners")[2].decode()
