"""Stored responses through the real gateway with the official openai SDK (docs/responses.md,
"Stored responses"): virtual keys required, one worker, the embedded SQLite store beside the local
ledger. A response is created with store, retrieved, continued with previous_response_id (the
provider's second request holds the first turn), its input items listed, deleted; another
tenant's key (and another key of the same tenant) finds nothing; a gateway whose policy keeps no
responses refuses previous_response_id."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from extproc.auth.key_store import SqliteKeyStore
from extproc.auth.keys import new_key
from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port

MODELS = {"anthropic": ("claude-sonnet-4-5", "/v1/messages"), "chat": ("gpt-4o", "/v1/chat/completions")}


async def _create_keys(path: Path) -> dict[str, str]:
    store = SqliteKeyStore(path)
    made: dict[str, str] = {}
    try:
        for name, tenant in (("acme", "acme"), ("acme-2", "acme"), ("globex", "globex")):
            presented, record = new_key(tenant, name, time.time())
            await store.create(record)
            made[name] = presented
    finally:
        await store.close()
    return made


class Setup:
    def __init__(self, gateway: Gateway, keys: dict[str, str]) -> None:
        self.gateway, self.keys = gateway, keys

    def client(self, key: str = "acme") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.gateway.url}/v1", api_key=self.keys[key], max_retries=0)


def _start(directory: Path, fake: FakeProvider, name: str, store: bool) -> tuple[Gateway, dict[str, str]]:
    keys = asyncio.run(_create_keys(directory / f"{name}-keys.db"))
    policy = base_policy(free_port(), fake)
    policy["auth"] = {"required": True, "keys": {"sqlite": str(directory / f"{name}-keys.db")}}
    policy["responses"] = {"store": store, "retention": "1d"}
    return Gateway.start(directory, policy, name=name, workers=1, args=["--no-batch-services"]), keys


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, fake: FakeProvider) -> Iterator[Setup]:
    gateway, keys = _start(tmp_path_factory.mktemp("responses-store"), fake, "responses-store", True)
    try:
        yield Setup(gateway, keys)
    finally:
        gateway.stop()
    assert gateway.process.returncode == 0, gateway.log()[-4000:]


def generations(fake: FakeProvider, path: str) -> list[dict]:
    return [r for r in fake.requests() if r["method"] == "POST" and r["path"].split("?")[0] == path]


def retrieve_when_saved(client: openai.OpenAI, rid: str) -> openai.types.responses.Response:
    """The record is written in the background, just after the answer went out."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return client.responses.retrieve(rid)
        except openai.NotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.parametrize("provider", list(MODELS))
def test_a_stored_conversation_is_retrieved_continued_listed_and_deleted(
    setup: Setup, fake: FakeProvider, provider: str
) -> None:
    model, path = MODELS[provider]
    client = setup.client()
    first = client.responses.create(model=model, input="remember the word pelican", instructions="Be brief.")
    assert first.store is True and first.status == "completed" and first.output_text
    got = retrieve_when_saved(client, first.id)
    assert got.id == first.id and got.output_text == first.output_text

    fake.clear()
    second = client.responses.create(model=model, input="which word?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    [request] = generations(fake, path)
    sent = str(request["body"])
    assert "remember the word pelican" in sent and first.output_text in sent and "which word?" in sent
    assert "Be brief." not in sent  # instructions are not inherited

    items = client.responses.input_items.list(first.id, order="asc")
    assert [item.role for item in items.data] == ["user"] and not items.has_more
    retrieve_when_saved(client, second.id)
    later = client.responses.input_items.list(second.id, order="asc")
    assert [item.type for item in later.data] == ["message", "message", "message"]

    deleted = client.responses.with_raw_response.delete(first.id).http_response.json()
    assert deleted == {"id": first.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_a_streamed_answer_is_stored_too(setup: Setup) -> None:
    client = setup.client()
    with client.responses.stream(model="claude-sonnet-4-5", input="stream and keep this") as stream:
        final = stream.get_final_response()
    got = retrieve_when_saved(client, final.id)
    assert got.output_text == final.output_text and got.store is True


def test_another_tenants_or_keys_client_finds_nothing(setup: Setup, fake: FakeProvider) -> None:
    owner = setup.client("acme")
    rid = owner.responses.create(model="claude-sonnet-4-5", input="private").id
    retrieve_when_saved(owner, rid)
    for other in ("globex", "acme-2"):
        client = setup.client(other)
        with pytest.raises(openai.NotFoundError) as raised:
            client.responses.retrieve(rid)
        with pytest.raises(openai.NotFoundError) as unknown:
            client.responses.retrieve("resp_does_not_exist")
        assert raised.value.body == {**unknown.value.body, "message": raised.value.body["message"]}  # type: ignore[dict-item]
        with pytest.raises(openai.NotFoundError):
            client.responses.delete(rid)
        fake.clear()
        with pytest.raises(openai.BadRequestError, match=f"previous response '{rid}' not found"):
            client.responses.create(model="claude-sonnet-4-5", input="x", previous_response_id=rid)
        assert fake.requests() == []
    assert owner.responses.retrieve(rid).id == rid


def test_a_policy_without_stored_responses_refuses_previous_response_id(
    tmp_path_factory: pytest.TempPathFactory, fake: FakeProvider
) -> None:
    gateway, keys = _start(tmp_path_factory.mktemp("responses-off"), fake, "responses-off", False)
    try:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=keys["acme"], max_retries=0)
        response = client.responses.create(model="claude-sonnet-4-5", input="hi")
        assert response.store is False
        with pytest.raises(openai.BadRequestError, match="stored responses are not enabled"):
            client.responses.create(model="claude-sonnet-4-5", input="x", previous_response_id=response.id)
        with pytest.raises(openai.NotFoundError, match="stored responses are not enabled"):
            client.responses.retrieve(response.id)
    finally:
        gateway.stop()
