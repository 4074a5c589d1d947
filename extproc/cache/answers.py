"""The response cache on the decision hop: what a routed request's cache step decides, the answer a
hit gets, and what /store does with an answer Envoy's Lua filter hands back.

One request, one hop call, as before: the lookup rides the hop's ``/decide`` (awaited with the
limits when there are any). A hit is answered there, in the client's format, without a provider: a
JSON answer as it was, or, for a client that asked for a stream, the answer replayed as a complete
SSE stream (extproc.cache.replay) with the original usage and stop reason. A miss goes to the
provider with a store token in its labels; Envoy's Lua filter copies the 200 answer the client got
(the JSON, or the stream as it passed) to ``/store`` in an asynchronous call, so the client never
waits for the cache. Streams are stored only when complete (a terminal event, no error).

Only the store (``CacheStore``) does I/O; the rest is pure.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from ccr.v1 import tracing
from ccr.v1.contract import (
    CACHE_CAP_KEY,
    CACHE_CLUSTER_KEY,
    CACHE_HEADER,
    CACHE_LABEL,
    CACHE_SAVED_LABEL,
    CACHE_STORE_KEY,
)
from extproc.cache.entry import CachedAnswer, cacheable_answer, decode, encode
from extproc.cache.inflight import Flights
from extproc.cache.key import cache_key
from extproc.cache.metrics import REQUESTS
from extproc.cache.replay import answer_from_sse, sse_from_answer
from extproc.cache.rules import KEPT, CacheDirective, directive
from extproc.cache.store import CacheStore, LocalLruStore
from extproc.metrics import labelled
from extproc.plan import Forward
from extproc.request_steps import Reply
from extproc.routing_table import RoutingTable
from extproc.translate.anthropic_responses import usage_from_responses
from extproc.translate.anthropic_schema import usage_from_anthropic, usage_from_openai
from extproc.translate.base import Api

log = logging.getLogger("ccr.cache")

SSE_CONTENT_TYPE = "text/event-stream"


@dataclass(frozen=True, slots=True)
class CacheStep:
    """The cache's part in one routed request: its key and what the rules allow."""

    key: str
    directive: CacheDirective
    max_entry_bytes: int
    stream: bool
    include_usage: bool
    dedup_wait_s: float = 0.0  # how long to wait for an identical request in flight (0: never)

    @property
    def dedups(self) -> bool:
        """Whether a miss may wait for an identical request in flight: only a request that may be
        answered from the cache (not a no-cache refresh, which wants its own answer)."""
        return self.directive.lookup and self.dedup_wait_s > 0

    def header(self, hit: bool = False) -> tuple[str, str]:
        """``x-ccr-cache``: hit; miss (looked up in vain: the answer will be stored); store (not
        looked up, a no-cache refresh: the answer will be stored); bypass (this request may not
        use the cache)."""
        return (CACHE_HEADER, self.outcome(hit))

    def outcome(self, hit: bool = False) -> str:
        if hit:
            return "hit"
        if not self.directive.store:
            return "bypass"
        return "miss" if self.directive.lookup else "store"

    def store_labels(
        self, api: Api, provider: str, model: str, cluster: str = "", flight_id: str = ""
    ) -> dict[str, str]:
        """The labels that have Envoy's Lua filter copy a 200 answer to /store (through
        ``cluster``: this worker's hop alone, whose memory may be the store, and whose flight for
        this key ``flight_id`` ends there); none when the answer is not to be stored."""
        if not self.directive.store:
            return {}
        token = [self.key, self.directive.ttl_s, api.value, provider, model, flight_id]
        labels = {
            CACHE_STORE_KEY: base64.urlsafe_b64encode(orjson.dumps(token)).decode(),
            CACHE_CAP_KEY: str(self.max_entry_bytes),
            CACHE_LABEL: self.outcome(),
        }
        if cluster:
            labels[CACHE_CLUSTER_KEY] = cluster
        return labels


def count(provider: str, model: str, outcome: str) -> None:
    """One request the cache applied to, for the hit ratio per model."""
    labelled(REQUESTS, provider, model, outcome).inc()


def cache_step(
    table: RoutingTable, api: Api, kind: str, outcome: Forward, headers: Mapping[str, str], tenant: str | None
) -> CacheStep | None:
    """None when the policy caches nothing for this request (no header on its answer either). A
    Bedrock client's request is never cached: its stream is event-stream framed, and entries are
    kept and replayed as JSON and SSE."""
    if kind != "generate" or api is Api.BEDROCK:
        return None
    route = outcome.route
    rules = table.cache_rules(tenant, route)
    if rules is None:
        return None
    body = outcome.decision.body
    if api is Api.RESPONSES and table.responses.store and body.get("store") is not False:
        decided = CacheDirective(False, False, 0.0, KEPT)  # its own stored response, never another's
    else:
        decided = directive(rules, api, headers, body)
    beta = ",".join(sorted(flag.strip() for flag in headers.get("anthropic-beta", "").split(",") if flag.strip()))
    key = cache_key(tenant, api, route.provider.name, route.target.model, body, beta)
    include_usage = _include_usage(body)
    return CacheStep(key, decided, rules.max_entry_bytes, body.get("stream") is True, include_usage, rules.dedup_wait_s)


def hit_reply(step: CacheStep, api: Api, entry: CachedAnswer, labels: Mapping[str, str]) -> Reply | None:
    """The cached answer in the form the client asked for; None when it cannot be given (an
    entry of another API or unreadable: a miss)."""
    if entry.api != api.value:
        return None
    headers = (step.header(hit=True), ("age", str(max(0, int(time.time() - entry.created_at)))))
    hit_labels = {**labels, CACHE_LABEL: "hit", CACHE_SAVED_LABEL: saved_usage(api, entry.usage)}
    if not step.stream:
        return Reply(200, entry.body, "ccr_cache_hit", headers=headers, labels=hit_labels)
    try:
        answer = orjson.loads(entry.body)
        body = sse_from_answer(api, answer, include_usage=step.include_usage)
    except ValueError:  # not JSON (orjson's error is one), or not an answer a stream can replay
        return None
    return Reply(200, body, "ccr_cache_hit", headers=headers, labels=hit_labels, content_type=SSE_CONTENT_TYPE)


async def lookup(store: CacheStore, step: CacheStep) -> CachedAnswer | None:
    with tracing.span("ccr.cache.lookup", tracing.CLIENT, {"db.system": store_system(store)}) as span:
        raw = await store.get(step.key)
        span.set("ccr.cache.hit", raw is not None)
    return decode(raw) if raw is not None else None


def store_system(store: CacheStore) -> str:
    """What a span says the store is (OTel's ``db.system``)."""
    return "memory" if isinstance(store, LocalLruStore) else "redis"


async def store_answer(
    store: CacheStore, flights: Flights | None, token: str, status: int, content_type: str, raw: bytes
) -> bool:
    """``POST /store``: keep the 200 answer a client got (JSON, or a complete SSE stream turned
    into its JSON form) under the token's key, then end the request's flight (its followers look
    the key up again). Any other ``status`` (the answer failed, or was too large to copy) stores
    nothing and only ends the flight. False when nothing was stored."""
    try:
        key, ttl_s, api_value, provider, model, flight_id = orjson.loads(base64.urlsafe_b64decode(token))
        api = Api(api_value)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        log.warning("cache: a store token that does not decode; nothing stored")
        return False
    stored = False
    if status == 200:
        stored = await _store(store, key, float(ttl_s), api, provider, model, content_type, raw)
    if flight_id and flights is not None:
        await flights.end(key, flight_id)
    return stored


async def _store(
    store: CacheStore, key: str, ttl_s: float, api: Api, provider: str, model: str, content_type: str, raw: bytes
) -> bool:
    if content_type.startswith(SSE_CONTENT_TYPE):
        answer: Any = answer_from_sse(api, raw)
        if answer is None:  # cut short, or an error event: never stored
            return False
        if not isinstance(answer.get("usage"), dict):
            # An OpenAI stream without stream_options.include_usage (a Responses stream always
            # ends with its usage): a hit must give the original
            # usage (a JSON client, or a stream that asks for it, would get none), never an invented one.
            return False
        body = orjson.dumps(answer)
    else:
        if not cacheable_answer(200, content_type, raw):
            return False
        body = raw
        answer = orjson.loads(raw)
    usage = answer.get("usage") if isinstance(answer, dict) and isinstance(answer.get("usage"), dict) else {}
    entry = CachedAnswer(api.value, 200, body, time.time(), provider, model, usage)
    return await store.put(key, encode(entry), ttl_s)


def saved_usage(api: Api, usage: Mapping[str, Any]) -> str:
    """``CACHE_SAVED_LABEL``'s value: the cached answer's usage, in Anthropic's meaning (cached
    input tokens apart from the rest: OpenAI's and Responses' input counts include them)."""
    if api is Api.OPENAI:
        counts = usage_from_openai(usage)
    elif api is Api.RESPONSES:
        counts = usage_from_responses(dict(usage))
        # The gateway's own Responses answers also say how many input tokens were written to the
        # provider's cache (input_tokens_details.cache_write_tokens): priced as cache writes.
        details = usage.get("input_tokens_details")
        written = details.get("cache_write_tokens") if isinstance(details, Mapping) else None
        if isinstance(written, int) and not isinstance(written, bool) and 0 < written <= counts.input_tokens:
            counts = replace(counts, input_tokens=counts.input_tokens - written, cache_creation_input_tokens=written)
    else:
        counts = usage_from_anthropic(usage)
    return (
        f"{counts.input_tokens},{counts.output_tokens},"
        f"{counts.cache_read_input_tokens},{counts.cache_creation_input_tokens}"
    )


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
