"""Official SDK clients -> real Envoy -> ext_proc -> fake provider, same API format on both sides."""

from __future__ import annotations

import json

import anthropic
import openai

from tests.e2e.gateway import PROVIDER_KEYS, FakeProvider, Gateway, http

CLIENT_KEY = "sk-client-key-must-not-leak"


def _anthropic(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=CLIENT_KEY, max_retries=0)


def _openai(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=CLIENT_KEY, max_retries=0)


def _only_request(fake: FakeProvider) -> dict:
    received = fake.requests()
    assert len(received) == 1, received
    return received[0]


def _assert_provider_auth(received: dict, header: str, expected: str) -> None:
    headers = received["headers"]
    assert headers.get(header) == expected
    assert CLIENT_KEY not in json.dumps(headers), "the client's own key reached the provider"
    assert not any(name.startswith("x-ccr-") for name in headers), "internal headers leaked upstream"


def test_anthropic_sdk_message_reaches_the_anthropic_provider_with_its_model_id(gateway, fake):
    message = _anthropic(gateway).messages.create(
        model="claude-sonnet-4-5", max_tokens=200, messages=[{"role": "user", "content": "hello gateway"}]
    )
    assert message.content[0].text == "Hello from fake-anthropic model fake-sonnet: hello gateway"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    received = _only_request(fake)
    assert received["path"] == "/v1/messages"
    assert received["body"]["model"] == "fake-sonnet"
    _assert_provider_auth(received, "x-api-key", PROVIDER_KEYS["CCR_TEST_ANTHROPIC_KEY"])
    assert "authorization" not in received["headers"]


def test_anthropic_sdk_stream_passes_through_unchanged(gateway, fake):
    with _anthropic(gateway).messages.stream(
        model="claude-sonnet-4-5", max_tokens=200, messages=[{"role": "user", "content": "stream please"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from fake-anthropic model fake-sonnet: stream please"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0
    assert _only_request(fake)["body"]["stream"] is True


def test_max_tokens_is_clamped_to_the_model_limit(gateway, fake):
    _anthropic(gateway).messages.create(
        model="claude-sonnet-4-5", max_tokens=128000, messages=[{"role": "user", "content": "x"}], timeout=30
    )
    assert _only_request(fake)["body"]["max_tokens"] == 64000


def test_openai_sdk_chat_completion_reaches_the_openai_provider(gateway, fake):
    completion = _openai(gateway).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi from openai"}]
    )
    assert completion.choices[0].message.content == "Hello from fake-openai model fake-gpt-4o: hi from openai"
    received = _only_request(fake)
    assert received["path"] == "/v1/chat/completions"
    assert received["body"]["model"] == "fake-gpt-4o"
    _assert_provider_auth(received, "authorization", "Bearer " + PROVIDER_KEYS["CCR_TEST_OPENAI_KEY"])


def test_openai_sdk_stream_with_usage(gateway, fake):
    chunks = list(
        _openai(gateway).chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "stream it"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from fake-openai model fake-gpt-4o: stream it"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_models_endpoint_lists_the_policy_in_both_shapes(gateway):
    anthropic_models = _anthropic(gateway).models.list()
    assert "claude-sonnet-4-5" in [m.id for m in anthropic_models.data]
    openai_models = _openai(gateway).models.list()
    assert "gpt-4o" in [m.id for m in openai_models.data]


def test_provider_clusters_are_dynamic_from_ads(gateway):
    dump = json.loads(http("GET", f"{gateway.admin}/config_dump")[2])
    kinds = {c["@type"].rsplit(".", 1)[-1]: c for c in dump["configs"]}
    static = {c["cluster"]["name"] for c in kinds["ClustersConfigDump"].get("static_clusters", [])}
    # The xDS server, ext_proc (all workers), each worker alone (its own usage log stream), the
    # workers' decision hop servers, and each one's hop alone (the response cache's answers).
    alone = [f"ccr_extproc_{i}" for i in range(gateway.workers)] + [f"ccr_hop_{i}" for i in range(gateway.workers)]
    assert static == {"ccr_xds", "ccr_extproc", "ccr_hop", *alone}
    assert {"provider_fake-anthropic", "provider_fake-openai"} <= gateway.dynamic_clusters()
    listeners = kinds["ListenersConfigDump"]
    assert [entry["name"] for entry in listeners["dynamic_listeners"]] == ["ccr_listener"]


def test_count_tokens_is_forwarded_to_anthropic_providers_and_estimated_for_others(gateway, fake):
    client = _anthropic(gateway)
    counted = client.messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "count me"}]
    )
    assert counted.input_tokens > 0
    received = _only_request(fake)
    assert received["path"] == "/v1/messages/count_tokens" and received["body"]["model"] == "fake-sonnet"
    fake.clear()
    estimated = client.messages.count_tokens(model="gpt-4o", messages=[{"role": "user", "content": "count me"}])
    assert estimated.input_tokens > 0
    assert fake.requests() == []


def test_ext_proc_streams_end_cleanly_instead_of_being_reset(gateway, fake):
    """Envoy half-closes each ext_proc stream when done (ext_proc_graceful_grpc_close) and the
    server ends it: a reset stream would leak grpc.aio memory, ~100 bytes each."""
    resets = "cluster.ccr_extproc.upstream_rq_tx_reset"
    before = gateway.envoy_stat(resets)
    client = _anthropic(gateway)
    for model in ("claude-sonnet-4-5", "gpt-4o"):  # passthrough, then translated
        client.messages.create(model=model, max_tokens=50, messages=[{"role": "user", "content": "hi"}])
        with client.messages.stream(model=model, max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
            s.get_final_message()
    _anthropic(gateway).models.list()  # answered by ext_proc itself (an immediate response)
    assert gateway.envoy_stat(resets) == before
