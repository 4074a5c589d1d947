"""{(client API, provider API): translator factory}: the whole translation table on one screen.

A new provider format is one new module and one line here.
"""

from __future__ import annotations

from collections.abc import Callable

from extproc.translate.base import Api, Translator
from extproc.translate.passthrough import PassthroughTranslator

TranslatorFactory = Callable[[], Translator]

TRANSLATORS: dict[tuple[Api, Api], TranslatorFactory] = {
    (Api.ANTHROPIC, Api.ANTHROPIC): lambda: PassthroughTranslator(Api.ANTHROPIC),
    (Api.OPENAI, Api.OPENAI): lambda: PassthroughTranslator(Api.OPENAI),
}


def translator_for(client: Api, provider: Api) -> Translator | None:
    """A fresh translator for one request, or None when the pair is not supported."""
    factory = TRANSLATORS.get((client, provider))
    return factory() if factory is not None else None
