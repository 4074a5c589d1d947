"""{(client API, provider API): translator}: the whole translation table on one screen.

A translator is named by its class ("module:Class"), or, for a pair with no code of its own, by a
chain of two through the hub format, Anthropic Messages: (client -> Anthropic, Anthropic ->
provider), composed by extproc.translate.chained. Classes are imported on first use so that a
process only loads the translators its policy needs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache, partial

from extproc.translate.base import Api, Translator
from extproc.translate.chained import Chained

_ANTHROPIC_TO_OPENAI = "extproc.translate.anthropic_openai:AnthropicToOpenAI"
_ANTHROPIC_TO_GEMINI = "extproc.translate.anthropic_gemini:AnthropicToGemini"
_ANTHROPIC_TO_RESPONSES = "extproc.translate.anthropic_responses:AnthropicToResponses"
_ANTHROPIC_TO_VERTEX = "extproc.translate.anthropic_vertex:AnthropicToVertex"
_ANTHROPIC_TO_BEDROCK = "extproc.translate.anthropic_bedrock:AnthropicToBedrock"
_OPENAI_TO_ANTHROPIC = "extproc.translate.openai_anthropic:OpenAIToAnthropic"
_RESPONSES_TO_ANTHROPIC = "extproc.translate.responses_anthropic:ResponsesToAnthropic"
_BEDROCK_CLIENT = "extproc.translate.bedrock_client:BedrockClient"  # Bedrock InvokeModel clients

TRANSLATORS: dict[tuple[Api, Api], str | tuple[str, str]] = {
    (Api.ANTHROPIC, Api.ANTHROPIC): "extproc.translate.passthrough:AnthropicPassthrough",
    (Api.OPENAI, Api.OPENAI): "extproc.translate.passthrough:OpenAIPassthrough",
    (Api.RESPONSES, Api.RESPONSES): "extproc.translate.passthrough:ResponsesPassthrough",
    (Api.ANTHROPIC, Api.OPENAI): _ANTHROPIC_TO_OPENAI,
    (Api.ANTHROPIC, Api.GEMINI): _ANTHROPIC_TO_GEMINI,
    (Api.ANTHROPIC, Api.RESPONSES): _ANTHROPIC_TO_RESPONSES,
    (Api.OPENAI, Api.ANTHROPIC): _OPENAI_TO_ANTHROPIC,
    (Api.OPENAI, Api.GEMINI): "extproc.translate.openai_gemini:OpenAIToGemini",
    (Api.OPENAI, Api.RESPONSES): (_OPENAI_TO_ANTHROPIC, _ANTHROPIC_TO_RESPONSES),
    (Api.RESPONSES, Api.ANTHROPIC): _RESPONSES_TO_ANTHROPIC,
    (Api.RESPONSES, Api.OPENAI): (_RESPONSES_TO_ANTHROPIC, _ANTHROPIC_TO_OPENAI),
    (Api.RESPONSES, Api.GEMINI): (_RESPONSES_TO_ANTHROPIC, _ANTHROPIC_TO_GEMINI),
    (Api.ANTHROPIC, Api.VERTEX): _ANTHROPIC_TO_VERTEX,
    (Api.OPENAI, Api.VERTEX): (_OPENAI_TO_ANTHROPIC, _ANTHROPIC_TO_VERTEX),
    (Api.RESPONSES, Api.VERTEX): (_RESPONSES_TO_ANTHROPIC, _ANTHROPIC_TO_VERTEX),
    (Api.ANTHROPIC, Api.BEDROCK): _ANTHROPIC_TO_BEDROCK,
    (Api.OPENAI, Api.BEDROCK): (_OPENAI_TO_ANTHROPIC, _ANTHROPIC_TO_BEDROCK),
    (Api.RESPONSES, Api.BEDROCK): (_RESPONSES_TO_ANTHROPIC, _ANTHROPIC_TO_BEDROCK),
    (Api.BEDROCK, Api.BEDROCK): "extproc.translate.bedrock_client:BedrockPassthrough",
    (Api.BEDROCK, Api.ANTHROPIC): (_BEDROCK_CLIENT, "extproc.translate.passthrough:AnthropicPassthrough"),
    (Api.BEDROCK, Api.OPENAI): (_BEDROCK_CLIENT, _ANTHROPIC_TO_OPENAI),
    (Api.BEDROCK, Api.GEMINI): (_BEDROCK_CLIENT, _ANTHROPIC_TO_GEMINI),
    (Api.BEDROCK, Api.RESPONSES): (_BEDROCK_CLIENT, _ANTHROPIC_TO_RESPONSES),
    (Api.BEDROCK, Api.VERTEX): (_BEDROCK_CLIENT, _ANTHROPIC_TO_VERTEX),
}


# POST /v1/messages/count_tokens, forwarded to providers that count (policy: forward_count_tokens).
COUNT_TOKENS: dict[Api, str] = {
    Api.ANTHROPIC: "extproc.translate.passthrough:CountTokensPassthrough",
    Api.GEMINI: "extproc.translate.anthropic_gemini:AnthropicToGeminiCountTokens",
    Api.VERTEX: "extproc.translate.anthropic_vertex:AnthropicToVertexCountTokens",
}


@cache
def translator_class(client: Api, provider: Api) -> Callable[[], Translator] | None:
    """What makes a fresh translator for the pair (a class, or a chain's factory); None if none."""
    entry = TRANSLATORS.get((client, provider))
    if isinstance(entry, tuple):
        return partial(_chain, _load(entry[0]), _load(entry[1]))
    return _load(entry)


def count_tokens_translator(provider: Api) -> Translator | None:
    """A fresh count_tokens translator for an Anthropic client, or None when ``provider`` cannot count."""
    cls = _load(COUNT_TOKENS.get(provider))
    return cls() if cls is not None else None


@cache
def _load(dotted: str | None) -> type[Translator] | None:
    if dotted is None:
        return None
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


def _chain(outer: type[Translator] | None, inner: type[Translator] | None) -> Translator:
    assert outer is not None and inner is not None
    return Chained(outer(), inner())


def supports(client: Api, provider: Api) -> bool:
    return (client, provider) in TRANSLATORS


def translator_for(client: Api, provider: Api) -> Translator | None:
    """A fresh translator for one request, or None when the pair is not supported."""
    factory = translator_class(client, provider)
    return factory() if factory is not None else None
