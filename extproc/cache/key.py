"""The response cache's key, and whether a request's answer is deterministic enough to share.

A key is the hex SHA-256 of one canonical JSON document: the key format's version, the tenant (""
for an anonymous request), the client API, the provider that serves the request and its upstream
model id, and the client's body without the few fields known not to change the answer. The key is
scoped to the tenant: two tenants never share an entry, even for byte-identical requests.

The requested ``model`` is not part of it: the served provider and model id are. Two names routed
to one model (an alias and the policy name, say) share entries; one name routed to two models (a
weighted split, a scenario) never does.

Canonical means that what does not change the request's meaning does not change the key: key order
and whitespace (orjson with sorted keys writes one form), and an integral float in the sampling
parameters (``temperature: 0`` and ``temperature: 0.0``). Every field of the body not listed in
``_NOT_IN_KEY`` is part of the key, including fields this gateway does not know: an unknown field
may change the answer, and a miss costs a provider call where a wrong hit would cost a wrong answer.
For the same reason the conversation itself (``_CONTENT``) is hashed exactly as parsed: a model may
well read ``1.0`` in a tool's input differently from ``1``.

Bodies are what orjson parsed (the decision hop's parser), so they hold no NaN and no integer
beyond 64 bits; other bodies still get a key (never an exception), see ``_exact``.

Pure: dicts in, strings and booleans out.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import orjson

from extproc.translate.base import Api

# Bumped whenever the canonical form changes, so that entries written under an older form are
# never read under the new one (they expire unread).
KEY_FORMAT = "ccr-cache-1"

# Fields known not to change the answer, per client API; everything else is in the key.
_NOT_IN_KEY: Mapping[Api, frozenset[str]] = {
    Api.ANTHROPIC: frozenset(
        {
            "model",  # replaced by the served provider and upstream model id (module docstring)
            "stream",  # the same answer, framed differently: a hit is replayed in either shape
            # metadata.user_id: an opaque id for Anthropic's abuse detection, never shown to the model
            "metadata",
            # "auto" | "standard_only": which capacity serves the request (latency, price), not
            # which model or what it writes.
            "service_tier",
        }
    ),
    Api.OPENAI: frozenset(
        {
            "model",  # replaced by the served provider and upstream model id
            "stream",  # as for Anthropic
            # include_usage: whether a stream ends with a usage chunk (the cached answer keeps its
            # usage either way; replay follows the asking request); include_obfuscation: padding.
            "stream_options",
            # Tags for OpenAI's stored completions (dashboard filters), never shown to the model.
            "metadata",
            # The end user's id (and its successor) for OpenAI's abuse monitoring, not the prompt.
            "user",
            "safety_identifier",
            # Whether OpenAI keeps the completion for its dashboard and evals: a side effect at the
            # provider that a hit does not repeat, not part of the answer.
            "store",
            # The processing tier (default, flex, priority): latency and price, same model.
            "service_tier",
            # Hints for the provider's own prompt cache (which machine, how long): cost only.
            "prompt_cache_key",
            "prompt_cache_retention",
        }
    ),
    Api.RESPONSES: frozenset(
        {
            "model",  # replaced by the served provider and upstream model id
            "stream",  # as for Anthropic
            # include_obfuscation: padding on the stream's delta events, not the answer.
            "stream_options",
            # As for Chat Completions: dashboard tags, the end user's id for abuse monitoring.
            "metadata",
            "user",
            "safety_identifier",
            # Whether the response is kept: a request the gateway keeps never uses the cache (its
            # own stored response: extproc.cache.answers.cache_step), and no provider is asked to
            # keep one, so among the requests that reach a key it changes nothing.
            "store",
            "service_tier",
            # Cost hints for the provider's prompt cache. The Codex CLI sends its session id here:
            # in the key, no request of one session would ever hit for another.
            "prompt_cache_key",
            "prompt_cache_retention",
            # The Codex CLI's per-turn ids (turn, session, installation), never shown to the model.
            "client_metadata",
            # In the key, on purpose: ``include`` changes what the answer carries (a reasoning
            # item's encrypted_content, which a stateless client replays on its next turn;
            # logprobs), ``parallel_tool_calls``, ``truncation``, ``reasoning`` and ``text`` what
            # the model may write.
        }
    ),
    # Not a client API today (providers only); a generateContent body carries neither the model nor
    # the stream flag (both are in its URL). labels: Vertex AI billing labels, never shown to the model.
    Api.GEMINI: frozenset({"labels"}),
}

# The conversation and the tools as the model reads them: hashed exactly as parsed (numbers kept as
# written). Everything else is parameters, where an integral float is the integer. Responses: the
# conversation is ``input`` and ``instructions``.
_CONTENT = frozenset(
    {"messages", "system", "tools", "functions", "contents", "systemInstruction", "input", "instructions"}
)

# Floats in this range that are whole numbers become ints (beyond it a float is no longer exact).
_EXACT_FLOAT = float(2**53)
_INT64 = (-(2**63), 2**64 - 1)  # what orjson writes as an integer

# Temperature when the request sets none, per client API. None: it depends on the model (Gemini's
# models differ), so an unset temperature is never deterministic there. No API defaults to 0: an
# unset temperature is never deterministic, whichever provider serves the request (a translator
# leaves an unset temperature unset, so the provider's default applies, and none of them is 0).
_DEFAULT_TEMPERATURE: Mapping[Api, float | None] = {
    Api.ANTHROPIC: 1.0,  # Anthropic Messages: "Defaults to 1.0"
    Api.OPENAI: 1.0,  # Chat Completions: "Defaults to 1"
    # Responses: "Defaults to 1" (the Codex CLI sends none: its requests are cached under
    # ``when: always`` only).
    Api.RESPONSES: 1.0,
    Api.GEMINI: None,  # generationConfig.temperature: the model's own default (1.0 for 2.x)
}


def cache_key(
    tenant: str | None, api: Api, provider: str, model_id: str, body: Mapping[str, Any], features: str = ""
) -> str:
    """The hex SHA-256 key of ``body`` sent by ``tenant`` (None: anonymous, "") in client API
    ``api``, served by ``provider`` as upstream model ``model_id``. ``features``: request headers
    that change the answer, as the caller found them (Anthropic's ``anthropic-beta``, which the
    gateway forwards: Claude Code sends one on every request)."""
    excluded = _NOT_IN_KEY[api]
    canonical: dict[str, Any] = {}
    for name, value in body.items():
        if name in excluded:
            continue
        canonical[name] = value if name in _CONTENT else _normalized(value)
    document = [KEY_FORMAT, tenant or "", api.value, provider, model_id, canonical]
    if features:
        document.append(features)
    try:
        encoded = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # an integer orjson cannot write (not from orjson's own parser)
        encoded = orjson.dumps(_exact(document), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(encoded).hexdigest()


def is_deterministic(api: Api, body: Mapping[str, Any]) -> bool:
    """Whether the request asks for one answer at temperature 0 (set, or the API's default). Several
    choices (OpenAI's ``n``, Gemini's ``candidateCount``) above 1 never are."""
    if api is Api.GEMINI:
        config = body.get("generationConfig")
        config = config if isinstance(config, Mapping) else {}
        temperature, choices = config.get("temperature"), config.get("candidateCount")
    else:
        temperature, choices = body.get("temperature"), body.get("n")
    if _number(choices) and choices > 1:
        return False
    if temperature is None:
        temperature = _DEFAULT_TEMPERATURE[api]
    return _number(temperature) and temperature == 0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _normalized(value: Any) -> Any:
    """``value`` with every integral float as an int (0.0 -> 0, -0.0 -> 0, 1.0 -> 1), and whatever
    orjson cannot write exactly made exact (``_exact``)."""
    if isinstance(value, float):
        if value.is_integer() and -_EXACT_FLOAT <= value <= _EXACT_FLOAT:
            return int(value)
        return value if math.isfinite(value) else _exact(value)
    if isinstance(value, Mapping):
        return {name: _normalized(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_normalized(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
        return _exact(value)
    return value


def _exact(value: Any) -> Any:
    """``value`` with the numbers orjson would refuse (integers beyond 64 bits) or blur (NaN and
    the infinities, written as null) spelled out as JSON fragments, so that distinct bodies keep
    distinct keys. Only bodies that did not come from orjson's parser ever need it."""
    if isinstance(value, float) and not math.isfinite(value):
        return orjson.Fragment(repr(value).encode())  # nan, inf, -inf: no JSON value spells these
    if isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
        return orjson.Fragment(str(value).encode())
    if isinstance(value, Mapping):
        return {name: _exact(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_exact(item) for item in value]
    return value
