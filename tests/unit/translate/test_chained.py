"""Chained: two translators composed through the hub (Anthropic Messages). Checked against a pair
that has a direct translator of its own: Chained(OpenAIToAnthropic, AnthropicToGemini) must say what
OpenAIToGemini says, on the golden cases of tests/golden/openai_gemini/, up to the differences the
hub itself makes (listed in one test below); and the registry's chains."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest

from extproc.plan import response_context
from extproc.translate.anthropic_gemini import AnthropicToGemini
from extproc.translate.anthropic_openai import AnthropicToOpenAI
from extproc.translate.anthropic_responses import AnthropicToResponses
from extproc.translate.base import Api, ClientRequestError, Target
from extproc.translate.chained import Chained
from extproc.translate.client_request import parse_request
from extproc.translate.openai_anthropic import OpenAIToAnthropic
from extproc.translate.registry import TRANSLATORS, supports, translator_for
from tests.unit.golden_cases import CREATED, Case, all_cases, make_translator, replay
from tests.unit.stream_checks import accumulate_openai, check_openai_stream, sse_events
from tests.unit.translating import translate

GEMINI_CASES = [case for case in all_cases() if case.pair == "openai_gemini"]
# What the hub cannot carry, so the chain says it differently (each checked below):
# audio parts (Anthropic has none), response_format as a schema (Anthropic takes it as an
# instruction), arguments that are not JSON (kept under another key), and the tool-call ids.
REFUSED_BY_THE_HUB = {"image"}
SCHEMA_AS_INSTRUCTION = {"response_format_json_schema"}


def _chain() -> Chained:
    return Chained(OpenAIToAnthropic(clock=lambda: CREATED), AnthropicToGemini())


def _chain_replay(case: Case, pieces: list[bytes]) -> tuple[bytes, list[Any]]:
    chain = _chain()
    translate(chain, case.client_request, case.target())
    chain.response_headers(case.status, {"content-type": case.provider_content_type()})
    body, usages = b"", []
    for n, piece in enumerate(pieces):
        chunk = chain.response_body(piece, n == len(pieces) - 1)
        body += chunk.body
        if chunk.usage is not None:
            usages.append(chunk.usage)
    return body, usages


def _without_raw_arguments(contents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Unparseable arguments: the direct pair keeps them under "arguments", the hub under "_raw_arguments"."""
    text = orjson.dumps(contents).replace(b'"_raw_arguments"', b'"arguments"')
    return orjson.loads(text)


@pytest.mark.parametrize(
    "case", [c for c in GEMINI_CASES if c.path.name not in REFUSED_BY_THE_HUB], ids=lambda c: c.name
)
def test_a_chain_sends_the_provider_the_same_conversation_as_the_direct_translator(case: Case) -> None:
    direct = orjson.loads(translate(make_translator(case.pair), case.client_request, case.target()).body)
    chained = translate(_chain(), case.client_request, case.target())
    composed = orjson.loads(chained.body)
    assert chained.path == translate(make_translator(case.pair), case.client_request, case.target()).path
    assert _without_raw_arguments(composed["contents"]) == _without_raw_arguments(direct["contents"])
    assert composed.get("tools") == direct.get("tools")
    assert composed.get("toolConfig") == direct.get("toolConfig")
    if case.path.name not in SCHEMA_AS_INSTRUCTION:
        assert composed.get("systemInstruction") == direct.get("systemInstruction")


def _essentials(case: Case, body: bytes) -> dict[str, Any]:
    """What a client reads off an OpenAI answer: text, reasoning, calls (name and arguments),
    finish reason and token counts."""
    if case.target().stream:
        answer = accumulate_openai(check_openai_stream(body))
        tools = [(t["name"], orjson.loads(t["arguments"] or b"{}")) for _, t in sorted(answer["tools"].items())]
        usage = answer["usage"]
        finish = answer["finish_reason"]
        text, reasoning = answer["content"], answer["reasoning"]
    else:
        completion = orjson.loads(body)
        choice = completion["choices"][0]
        message = choice["message"]
        calls = message.get("tool_calls") or []
        tools = [(c["function"]["name"], orjson.loads(c["function"]["arguments"])) for c in calls]
        usage, finish = completion["usage"], choice["finish_reason"]
        text, reasoning = message.get("content"), message.get("reasoning_content")
    counts = (
        (usage["prompt_tokens"], usage["completion_tokens"], usage["prompt_tokens_details"]["cached_tokens"])
        if usage
        else None
    )
    return {"text": text, "reasoning": reasoning, "tools": tools, "finish": finish, "usage": counts}


@pytest.mark.parametrize(
    "case",
    [c for c in GEMINI_CASES if c.status < 300 and c.path.name not in REFUSED_BY_THE_HUB],
    ids=lambda c: c.name,
)
def test_a_chain_answers_the_client_what_the_direct_translator_answers(case: Case) -> None:
    direct = replay(case, [case.provider_response()])
    chained = _chain_replay(case, [case.provider_response()])
    if case.target().stream and "error" in sse_events(direct.body)[-2][1]:
        # A failed stream: the same error (message, type) in the client's last frame before [DONE].
        direct_error, chained_error = sse_events(direct.body)[-2][1], sse_events(chained[0])[-2][1]
        assert chained_error["error"]["message"] == direct_error["error"]["message"]
        assert chained_error["error"]["type"] == direct_error["error"]["type"]
        return
    assert _essentials(case, chained[0]) == _essentials(case, direct.body)
    assert chained[1] == direct.usages, "the usage reported is the provider's own, once"


@pytest.mark.parametrize("status", [400, 429, 503])
def test_a_chain_answers_a_provider_error_like_the_direct_translator(status: int) -> None:
    body = orjson.dumps({"error": {"code": status, "message": "quota exhausted", "status": "RESOURCE_EXHAUSTED"}})
    direct = make_translator("openai_gemini").response_error(status, body)
    chained = _chain().response_error(status, body)
    assert (chained.status, orjson.loads(chained.body)) == (direct.status, orjson.loads(direct.body))


@pytest.mark.parametrize("case", [c for c in GEMINI_CASES if c.streams and c.status < 300], ids=lambda c: c.name)
def test_a_chained_stream_fed_one_byte_at_a_time_translates_identically(case: Case) -> None:
    data = case.provider_response()
    assert _chain_replay(case, [data[i : i + 1] for i in range(len(data))]) == _chain_replay(case, [data])


def test_what_the_hub_cannot_carry_is_refused_or_said_another_way() -> None:
    [image] = [c for c in GEMINI_CASES if c.path.name in REFUSED_BY_THE_HUB]
    with pytest.raises(ClientRequestError, match="audio input is not supported"):
        translate(_chain(), image.client_request, image.target())
    [schema] = [c for c in GEMINI_CASES if c.path.name in SCHEMA_AS_INSTRUCTION]
    composed = orjson.loads(translate(_chain(), schema.client_request, schema.target()).body)
    assert "JSON schema" in composed["systemInstruction"]["parts"][0]["text"]


def test_a_json_schema_for_the_answer_crosses_the_hub_as_structured_output() -> None:
    """The outer asks for JSON in words; the hub also carries the schema (output_config.format), so
    the provider gets its own structured output, as from the direct translator."""
    [schema] = [c for c in GEMINI_CASES if c.path.name in SCHEMA_AS_INSTRUCTION]
    direct = orjson.loads(translate(make_translator(schema.pair), schema.client_request, schema.target()).body)
    composed = orjson.loads(translate(_chain(), schema.client_request, schema.target()).body)
    for key in ("responseMimeType", "responseSchema"):
        assert composed["generationConfig"][key] == direct["generationConfig"][key]
    responses = {
        "model": "m",
        "input": "hi",
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
    }
    chat = orjson.loads(translate(translator_for(Api.RESPONSES, Api.OPENAI), responses, Target(model="gpt-4o")).body)
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}},
    }
    plain = {**responses, "text": {"format": {"type": "json_object"}}}
    chat = orjson.loads(translate(translator_for(Api.RESPONSES, Api.OPENAI), plain, Target(model="gpt-4o")).body)
    assert "response_format" not in chat and "JSON" in chat["messages"][0]["content"]


def test_a_primed_chain_reads_the_answer_as_one_that_translated() -> None:
    case = next(c for c in GEMINI_CASES if c.path.name == "stream_text_split")
    translated = _chain()
    translate(translated, case.client_request, case.target())
    primed = _chain()
    context = response_context(parse_request(Api.OPENAI, case.client_request), translated.estimate)
    primed.prime(replace(context, model=case.target().model))
    answers = []
    for chain in (translated, primed):
        chain.response_headers(200, {"content-type": "text/event-stream"})
        answers.append(_essentials(case, chain.response_body(case.provider_response(), True).body))
    assert answers[0] == answers[1]


def test_only_translators_meeting_at_the_hub_chain() -> None:
    with pytest.raises(ValueError, match="cannot chain"):
        Chained(AnthropicToOpenAI(), AnthropicToGemini())


# --- the registry -----------------------------------------------------------------------------------


def test_every_client_reaches_every_provider_format() -> None:
    for client in (Api.ANTHROPIC, Api.OPENAI, Api.RESPONSES, Api.BEDROCK):
        for provider in Api:
            assert supports(client, provider), (client, provider)


def test_pairs_without_code_of_their_own_are_chains_through_the_hub() -> None:
    chains = {pair for pair, entry in TRANSLATORS.items() if isinstance(entry, tuple)}
    assert chains == {
        (Api.OPENAI, Api.RESPONSES),
        (Api.RESPONSES, Api.OPENAI),
        (Api.RESPONSES, Api.GEMINI),
        (Api.OPENAI, Api.BEDROCK),
        (Api.RESPONSES, Api.BEDROCK),
        (Api.OPENAI, Api.VERTEX),
        (Api.RESPONSES, Api.VERTEX),
        # A Bedrock client's codec: the request as it is, the answer re-framed (bedrock_client).
        *((Api.BEDROCK, provider) for provider in Api if provider is not Api.BEDROCK),
    }
    for pair in chains:
        outer, inner = TRANSLATORS[pair]
        to_hub = TRANSLATORS[(pair[0], Api.ANTHROPIC)]  # a Bedrock client's is its codec and passthrough
        assert (to_hub[0] if isinstance(to_hub, tuple) else to_hub) == outer
        assert TRANSLATORS[(Api.ANTHROPIC, pair[1])] == inner


def test_the_registry_makes_a_fresh_chain_per_request() -> None:
    first, second = translator_for(Api.OPENAI, Api.RESPONSES), translator_for(Api.OPENAI, Api.RESPONSES)
    assert isinstance(first, Chained) and isinstance(second, Chained) and first is not second
    assert isinstance(first.outer, OpenAIToAnthropic) and isinstance(first.inner, AnthropicToResponses)
    assert (first.client_api, first.provider_api, first.rewrites_response) == (Api.OPENAI, Api.RESPONSES, True)
    assert isinstance(translator_for(Api.ANTHROPIC, Api.RESPONSES), AnthropicToResponses)


def test_a_hub_request_the_anthropic_checks_refuse_is_a_client_error() -> None:
    """The outer's hub body is checked like an Anthropic client's: a tool message answering no call
    is refused before the inner sees it."""
    body = {
        "model": "gpt",
        "messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "nope", "content": "x"}],
    }
    with pytest.raises(ClientRequestError):
        translate(_chain(), body, Target(model="gemini-2.5-pro", base_path="/v1beta"))
