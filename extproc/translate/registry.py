"""{(client API, provider API): translator class}: the whole translation table on one screen.

A new provider format is one new module and one line here. Classes are imported on first use so
that a process only loads the translators its policy needs.
"""

from __future__ import annotations

import importlib
from functools import cache

from extproc.translate.base import Api, Translator

TRANSLATORS: dict[tuple[Api, Api], str] = {
    (Api.ANTHROPIC, Api.ANTHROPIC): "extproc.translate.passthrough:AnthropicPassthrough",
    (Api.OPENAI, Api.OPENAI): "extproc.translate.passthrough:OpenAIPassthrough",
    (Api.ANTHROPIC, Api.OPENAI): "extproc.translate.anthropic_openai:AnthropicToOpenAI",
    (Api.ANTHROPIC, Api.GEMINI): "extproc.translate.anthropic_gemini:AnthropicToGemini",
    (Api.OPENAI, Api.ANTHROPIC): "extproc.translate.openai_anthropic:OpenAIToAnthropic",
    (Api.OPENAI, Api.GEMINI): "extproc.translate.openai_gemini:OpenAIToGemini",
}


# POST /v1/messages/count_tokens, forwarded to providers that count (policy: forward_count_tokens).
COUNT_TOKENS: dict[Api, str] = {
    Api.ANTHROPIC: "extproc.translate.passthrough:CountTokensPassthrough",
    Api.GEMINI: "extproc.translate.anthropic_gemini:AnthropicToGeminiCountTokens",
}


@cache
def translator_class(client: Api, provider: Api) -> type[Translator] | None:
    return _load(TRANSLATORS.get((client, provider)))


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


def supports(client: Api, provider: Api) -> bool:
    return (client, provider) in TRANSLATORS


def translator_for(client: Api, provider: Api) -> Translator | None:
    """A fresh translator for one request, or None when the pair is not supported."""
    cls = translator_class(client, provider)
    return cls() if cls is not None else None
