"""The decision hop: the gateway's answer for one request in one unary HTTP call from Envoy.

A gRPC ext_proc stream costs the Python side several times what the decision itself costs, however
few messages it carries (docs/performance.md, "Why the hop"). So Envoy's Lua filter
(control_plane/resources/decision_hop.lua) buffers the request, POSTs it to ``/decide`` with the
client's headers and applies the answer; for a translated non-streaming response it POSTs the
provider's answer to ``/respond`` and sends the client what comes back. A translated stream and a
fallback chain are forwarded here too, and marked so that their route runs ext_proc on the response
only: each chunk is rewritten there, primed with the context this answer labels the request with
(for a chain, the translator of the provider that answered; each attempt's request is rewritten by
the chain cluster's upstream ext_proc filter).

Both calls are answered here, from the same steps the ext_proc processor uses (extproc.plan,
extproc.request_steps): only the encoding differs. An answer is a few lines, then the payload:

    ccr1 <action>\\n                    reply | forward | response
    <op>\\t<name>\\t<value>\\n ...       status, header, set, remove, label, answer (a header for
                                      the client's answer: rate-limit headers)
    \\n
    <payload>                         the reply's or the response's body, the upstream request body

Line-based because the Lua side has no JSON parser and splitting a few lines costs nothing there.
Values never hold a tab or a newline (header values cannot; anything else is cleaned, ``_clean``).
Sans-IO: bytes in, bytes out; extproc.hop_server carries them.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import logging
import secrets
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from ccr.v1 import log_context, tracing
from ccr.v1.contract import (
    ANONYMOUS_TENANT_VALUE,
    CACHE_STORE_KEY,
    HOP_CONTEXT_KEY,
    HOP_ROUTE_KEY,
    HOP_STREAM_KEY,
    REWRITE_HEADER,
    REWRITE_RESPONSE,
    TRACEPARENT_LABEL,
)
from extproc.auth.admission import Charge
from extproc.auth.keys import VirtualKey
from extproc.auth.limits import Admission
from extproc.cache.answers import CacheStep, cache_step, hit_reply, lookup, store_answer
from extproc.cache.answers import count as count_cache
from extproc.cache.entry import CachedAnswer
from extproc.cache.entry import decode as decode_entry
from extproc.cache.inflight import Flights
from extproc.cache.repeats import Repeat
from extproc.cache.store import LocalLruStore
from extproc.metrics import RESPONSES, ROUTED, labelled
from extproc.plan import Answer, Chain, Forward, Outcome, plan
from extproc.request_steps import (
    STORED_ENDPOINT,
    STORED_RESPONSES_MESSAGE,
    Endpoint,
    Reply,
    answer_reply,
    batch_rewrite,
    chain_rewrite,
    endpoint_step,
    error_reply,
    forward_rewrite,
    mcp_step,
    request_labels,
)
from extproc.responses_state import (
    continued_body,
    deleted_body,
    input_items,
    input_items_page,
    query_order,
    response_of,
    stored_path,
)
from extproc.responses_store import SAVE_FAILURES, AnswerHalf, RequestHalf, Saver
from extproc.routing_table import RoutingTable
from extproc.state import GatewayState
from extproc.translate.base import Api, ResponseContext, Translator, UpstreamProtocolError
from extproc.translate.registry import count_tokens_translator, translator_for

log = logging.getLogger("ccr.extproc")

MAGIC = b"ccr1 "


@dataclass(frozen=True, slots=True)
class HopContext:
    """What ``/respond`` needs to read a provider's answer: the pair, the plan's response context,
    and who answered (for metrics and the session's usage)."""

    client: Api
    provider: Api
    counting: bool  # a count_tokens answer
    context: ResponseContext
    provider_name: str
    session: str
    # A fallback chain's providers, (name, API, model id, model name) each: the one that answered
    # (Envoy's x-ccr-provider response header) says which translator reads the answer.
    chain: tuple[tuple[str, str, str, str], ...] = ()
    # A Responses answer to keep (``Keep``): whoever reads the answer writes its half of the record.
    keep: Keep | None = None

    def translator(self) -> Translator | None:
        """The pair's translator, primed to read the answer; None if the pair has none (the
        policy changed under the request)."""
        if self.counting:
            translator = count_tokens_translator(self.provider)
        else:
            translator = translator_for(self.client, self.provider)
        # Not isinstance(translator, Primable): a runtime Protocol check walks its attributes.
        prime = getattr(translator, "prime", None)
        if prime is not None:
            prime(self.context)
        return translator

    def answered_by(self, provider_name: str | None) -> HopContext:
        """This context for the chain member that answered (the first when unknown)."""
        if not self.chain:
            return self
        name, api, model_id, _ = next((m for m in self.chain if m[0] == provider_name), self.chain[0])
        return replace(self, provider=Api(api), provider_name=name, context=replace(self.context, model=model_id))

    def route_header(self, scenario: str) -> str:
        """The x-ccr-route value (but the attempts) for the provider of this context."""
        model = next((m[3] for m in self.chain if m[0] == self.provider_name), self.context.model)
        return f"scenario={scenario}; provider={self.provider_name}; model={model}"

    def encode(self) -> str:
        c = self.context
        fields = [
            self.client.value,
            self.provider.value,
            self.counting,
            c.stream,
            c.model,
            c.estimate,
            c.show_thinking,
            c.include_usage,
            c.turn,
            self.provider_name,
            self.session,
            self.chain,
            sorted(c.custom_tools),
        ]
        if self.keep is not None:
            k = self.keep
            fields.append([k.token, k.tenant, k.key_id, k.created_at, k.expires_at, k.previous])
        return base64.urlsafe_b64encode(orjson.dumps(fields)).decode()

    @classmethod
    def decode(cls, token: str) -> HopContext:
        client, provider, counting, stream, model, estimate, shown, usage, turn, name, session, chain, *rest = (
            orjson.loads(base64.urlsafe_b64decode(token))
        )
        custom = frozenset(rest[0]) if rest else frozenset()
        context = ResponseContext(
            model, stream, estimate, show_thinking=shown, include_usage=usage, turn=turn, custom_tools=custom
        )
        members = tuple(tuple(member) for member in chain)
        keep = Keep(*rest[1]) if len(rest) > 1 else None
        return cls(Api(client), Api(provider), counting, context, name, session, members, keep)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Keep:
    """A Responses answer the gateway keeps (extproc.responses_store): the record's token, whose
    it is, when it expires, and the previous response it continues ("" for none)."""

    token: str
    tenant: str
    key_id: str
    created_at: float
    expires_at: float
    previous: str = ""

    def answer(self, response: dict[str, Any]) -> AnswerHalf:
        """The answer's half of the record: the response object as the client gets it."""
        return AnswerHalf(
            self.token, self.tenant, self.key_id, self.created_at, self.expires_at, response["id"], response
        )

    def stamp(self, response: dict[str, Any]) -> dict[str, Any]:
        """The response object as a stored one reads: ``store`` true, its previous response named."""
        return {**response, "store": True, "previous_response_id": self.previous or None}


class Carriage(enum.Enum):
    """How the decision hop carries a planned request (``route --explain`` prints it)."""

    REPLY = "hop: 1 call, the gateway answers"
    FORWARD = "hop: 1 call, the provider's answer goes back as it is"
    RESPOND = "hop: 2 calls, the answer translated whole (/respond)"
    STREAM = "hop: 1 call, then ext_proc on the response, translating each chunk"
    CHAIN = (
        "hop: 1 call; Envoy tries the chain's providers, each attempt rewritten by the upstream ext_proc; "
        "ext_proc reads the answer of the provider that gave it"
    )


def carriage_of(outcome: Outcome) -> Carriage:
    if isinstance(outcome, Answer):
        return Carriage.REPLY
    if isinstance(outcome, Chain):
        return Carriage.CHAIN
    if not outcome.translator.rewrites_response:
        return Carriage.FORWARD
    return Carriage.STREAM if outcome.stream else Carriage.RESPOND


@dataclass(frozen=True, slots=True)
class Pending:
    """An answer that waits on a store: the keys' limits in Redis, or the response cache. The
    server awaits ``answer`` (the steps around the store's calls stay the pure ones below)."""

    answer: Coroutine[Any, Any, bytes]


def decide(state: GatewayState, method: str, path: str, headers: Mapping[str, str], raw: bytes) -> bytes | Pending:
    """``POST /decide``: the request's answer (reply) or its rewrite (forward); ``Pending`` when
    a store must be asked first (the limits in Redis, the response cache)."""
    api, step = endpoint_step(state.table, method, path, headers, has_body=bool(raw))
    auth = state.auth
    if isinstance(step, Reply):
        if step.public:  # the MCP endpoint's RFC 9728 metadata: for anyone
            return _reply(step)
        required = state.table is not None and state.table.auth_required
        return _reply(auth.gate(api, path.partition("?")[0], headers, required, step))
    table = state.table
    assert table is not None  # endpoint_step answered 503 otherwise
    key = auth.authenticate(api, step.path, headers, table.auth_required, table.cert_identities, table.batch_workers)
    if step.kind == "mcp":  # to the MCP service as it came, with the caller's tenant (or its refusal)
        assert table.mcp is not None  # endpoint_step names the MCP endpoint only then
        answer = mcp_step(table.mcp, step, headers, key)
        if isinstance(answer, Reply):
            return _reply(answer)
        return _forward(answer.set_headers, answer.remove_headers, answer.labels, b"")
    if isinstance(key, Reply):
        return _reply(key)
    if step.kind == "batch":  # to the batch API as it came, with the caller's tenant
        rewrite = batch_rewrite(api, step, headers, key)
        return _forward(rewrite.set_headers, rewrite.remove_headers, rewrite.labels, b"")
    if step.kind == "stored":  # a stored response: from the store, never from a provider
        return _stored(state, method, path, key)
    if api is Api.RESPONSES and _PREVIOUS in raw:  # the conversation so far comes from the store
        continued = _continued(state, api, step, headers, raw, key)
        if continued is not None:
            return continued
    # The request's log lines name its tenant while it is decided here (and in its task, if any).
    logged = log_context.bind(tenant=key.tenant) if key is not None else None
    try:
        repeats = state.repeats
        if repeats is not None and table.caches and step.kind == "generate" and _unrestricted(table, key):
            if repeats.may_hold(len(raw)) and (digest := repeats.digest(table, step.path, headers, raw)) is not None:
                seen = repeats.get(digest)
                if seen is not None:  # these bytes were looked up before: look their entry up at once
                    return _repeated(state, api, step, headers, raw, key, seen)
            return _decide_routed(state, api, step, headers, raw, key, raw)  # may be remembered
        return _decide_routed(state, api, step, headers, raw, key, None)
    finally:
        if logged is not None:
            log_context.reset(logged)


def _decide_routed(
    state: GatewayState,
    api: Api,
    step: Endpoint,
    headers: Mapping[str, str],
    raw: bytes,
    key: VirtualKey | None,
    rememberable: bytes | None,
    previous: str = "",
) -> bytes | Pending:
    """``decide`` past authentication: parsed, checked, routed, then answered or rewritten.
    ``rememberable``: the body, when a cache lookup of it may be remembered among repeats;
    ``previous``: the stored response a Responses request continues (its input expanded already)."""
    table, auth = state.table, state.auth
    assert table is not None
    tenant = key.tenant if key else None
    outcome = plan(table, api, step.kind, headers, raw, state.sessions, tenant, step.vertex_model, step.bedrock)
    if isinstance(outcome, Answer):
        return _reply(answer_reply(api, step.path, outcome, key))
    charge = None
    if key is not None:
        charge = auth.charge(api, step, key, outcome, headers, table.tenant_rules.get(key.tenant))
        if isinstance(charge, Reply):
            return _reply(charge)
    cache = None
    if state.cache is not None and isinstance(outcome, Forward):
        cache = cache_step(table, api, step.kind, outcome, headers, tenant)
    routed = _Routed(api, step, outcome, headers, key, rememberable, previous)
    if (cache is not None and cache.directive.lookup) or (charge is not None and auth.shared):
        return Pending(_decide_later(state, routed, charge, cache))
    admission = auth.admit_local(charge) if charge is not None else None
    return _admitted(state, routed, charge, cache, admission)


@dataclass(frozen=True, slots=True)
class _Routed:
    """A routed request on its way to a rewrite: what ``_routed`` needs of it."""

    api: Api
    step: Endpoint
    outcome: Forward | Chain
    headers: Mapping[str, str]
    key: VirtualKey | None
    rememberable: bytes | None = None  # the body, when its lookup may be remembered (extproc.cache.repeats)
    previous: str = ""  # the stored response it continues (previous_response_id, expanded)


def _unrestricted(table: RoutingTable, key: VirtualKey | None) -> bool:
    """No model list to check the routed model against (a repeat is not routed again)."""
    if key is None:
        return True
    rules = table.tenant_rules.get(key.tenant)
    return not key.models and (rules is None or not rules.models)


def _repeated(
    state: GatewayState,
    api: Api,
    step: Endpoint,
    headers: Mapping[str, str],
    raw: bytes,
    key: VirtualKey | None,
    seen: Repeat,
) -> bytes | Pending:
    """A repeat's entry looked up by the key it led to before: a hit without parsing or routing
    (at once from this worker's memory), else the full path, as if it had never been seen."""
    store = state.cache
    if isinstance(store, LocalLruStore):
        entry = decode_entry(store.peek(seen.step.key))
        hit = _repeat_hit(api, seen, entry)
        return hit if hit is not None else _decide_routed(state, api, step, headers, raw, key, raw)

    async def later() -> bytes:
        assert store is not None
        hit = _repeat_hit(api, seen, await lookup(store, seen.step))
        if hit is not None:
            return hit
        answer = _decide_routed(state, api, step, headers, raw, key, raw)
        return await answer.answer if isinstance(answer, Pending) else answer

    return Pending(later())


def _repeat_hit(api: Api, seen: Repeat, entry: CachedAnswer | None) -> bytes | None:
    reply = hit_reply(seen.step, api, entry, seen.labels) if entry is not None else None
    if reply is None:
        return None
    count_cache(seen.provider, seen.model, "hit")
    if (root := tracing.current()) is not None:
        root.set("ccr.cache.repeat", True)
    return _reply(reply)


async def _decide_later(state: GatewayState, routed: _Routed, charge: Charge | None, cache: CacheStep | None) -> bytes:
    """``decide``'s end when a store is asked: the cache first (a hit needs no limit: it costs no
    provider anything; a miss may wait for an identical request in flight and be a hit after all),
    then the limits."""
    if routed.key is not None:  # this task's own context: gone with it
        log_context.bind(tenant=routed.key.tenant)
    flight_id, flights = "", state.flights
    if cache is not None and cache.directive.lookup and state.cache is not None:
        _remember(state, routed, cache)
        hit = await _hit(state, routed, cache)
        if hit is None and cache.dedups and flights is not None:
            led = await flights.join(cache.key, cache.dedup_wait_s)
            if led is None:  # followed an identical request's flight: its answer may be stored now
                hit = await _hit(state, routed, cache)
            else:
                flight_id = led
        if hit is not None:
            return hit
    admission = None
    if charge is not None:
        admission = await state.auth.admit_shared(charge) if state.auth.shared else state.auth.admit_local(charge)
    try:
        return _admitted(state, routed, charge, cache, admission, flight_id)
    except BaseException:
        if flight_id and flights is not None and cache is not None:  # nobody will store: don't keep
            await flights.end(cache.key, flight_id)  # followers waiting for it
        raise


def _remember(state: GatewayState, routed: _Routed, cache: CacheStep) -> None:
    """The next time these bytes come, their key is known (extproc.cache.repeats)."""
    raw, repeats, table = routed.rememberable, state.repeats, state.table
    if raw is None or repeats is None or table is None or not isinstance(routed.outcome, Forward):
        return
    digest = repeats.digest(table, routed.step.path, routed.headers, raw)
    if digest is None:
        return
    route = routed.outcome.route
    labels = request_labels(routed.api, routed.step.path, routed.outcome.decision, key=routed.key)
    state.repeats.put(digest, Repeat(cache, labels, route.provider.name, route.target.model, len(raw)))


async def _hit(state: GatewayState, routed: _Routed, cache: CacheStep) -> bytes | None:
    assert state.cache is not None
    entry = await lookup(state.cache, cache)
    if entry is None:
        return None
    labels = request_labels(routed.api, routed.step.path, routed.outcome.decision, key=routed.key)
    hit = hit_reply(cache, routed.api, entry, labels)
    if hit is None:
        return None
    route = routed.outcome.route
    count_cache(route.provider.name, route.target.model, "hit")
    return _reply(hit)


def _admitted(
    state: GatewayState,
    routed: _Routed,
    charge: Charge | None,
    cache: CacheStep | None,
    admission: Admission | None,
    flight_id: str = "",
) -> bytes:
    """The rewrite of a request the limits admitted (or the limits' refusal), with the headers of
    its answer (rate limits, x-ccr-cache) and the cache's store instruction (which ends the
    request's flight, ``flight_id``, when it leads one)."""
    api, outcome = routed.api, routed.outcome
    answer_headers: tuple[tuple[str, str], ...] = ()
    if charge is not None and admission is not None:
        verdict = state.auth.verdict(api, routed.step, outcome, charge, admission)
        if isinstance(verdict, Reply):
            if flight_id and state.flights is not None and cache is not None:
                _end_soon(state.flights, cache.key, flight_id)  # refused: nothing will be stored
            return _reply(verdict)
        answer_headers = verdict
    labels: dict[str, str] = {}
    if cache is not None:
        answer_headers = (*answer_headers, cache.header())
        route = outcome.route
        count_cache(route.provider.name, route.target.model, cache.outcome())
        labels = cache.store_labels(api, route.provider.name, route.target.model, state.hop_cluster, flight_id)
    keep = _keep(state, routed)
    return _routed(api, routed.step, outcome, routed.headers, routed.key, answer_headers, labels, keep)


def _end_soon(flights: Flights, key: str, flight_id: str) -> None:
    task = asyncio.get_running_loop().create_task(flights.end(key, flight_id))
    _ENDING.add(task)
    task.add_done_callback(_ENDING.discard)


_ENDING: set[asyncio.Task[None]] = set()  # flights ended in the background (a task needs a holder)


def _routed(
    api: Api,
    step: Endpoint,
    outcome: Forward | Chain,
    headers: Mapping[str, str],
    key: VirtualKey | None,
    answer_headers: tuple[tuple[str, str], ...] = (),
    extra_labels: Mapping[str, str] | None = None,
    keep: Keep | None = None,
) -> bytes:
    """The rewrite of an admitted request; ``answer_headers`` go on its answer (rate-limit headers,
    x-ccr-cache), ``extra_labels`` with its labels (the cache's store instruction); ``keep``: the
    answer is a stored response (its reader writes the answer's half)."""
    if isinstance(outcome, Chain):
        return _chain(api, step, outcome, headers, key, answer_headers, keep)
    carriage = carriage_of(outcome)
    decision = outcome.decision
    labelled(ROUTED, api.value, decision.scenario, outcome.route.provider.name, outcome.route.model).inc()
    rewrite = forward_rewrite(api, step, outcome, headers, key)
    labels = dict(rewrite.labels)
    if extra_labels:
        labels.update(extra_labels)
    route = outcome.route
    labels[HOP_ROUTE_KEY] = f"scenario={decision.scenario}; provider={route.provider.name}; model={route.model}"
    if (root := tracing.current()) is not None:
        _describe(root, api, decision.scenario, route.provider.name, route.target.model)
        labels[TRACEPARENT_LABEL] = root.traceparent()
    set_headers = rewrite.set_headers
    if outcome.translator.rewrites_response:
        context = HopContext(
            api,
            outcome.route.provider.api,
            step.kind == "count_tokens",
            outcome.context,
            outcome.route.provider.name,
            decision.session or "",
            keep=keep,
        ).encode()
        if carriage is Carriage.STREAM:
            labels[HOP_STREAM_KEY] = context
            set_headers = (*set_headers, (REWRITE_HEADER, REWRITE_RESPONSE))
        else:
            labels[HOP_CONTEXT_KEY] = context
    remove = rewrite.remove_headers
    if extra_labels and CACHE_STORE_KEY in extra_labels:
        # The answer is stored as it comes: asked for unencoded (a gzip body would not be read back).
        remove = (*remove, "accept-encoding")
    return _forward(set_headers, remove, labels, rewrite.body or b"", answer_headers)


def _chain(
    api: Api,
    endpoint: Endpoint,
    outcome: Chain,
    headers: Mapping[str, str],
    key: VirtualKey | None,
    answer_headers: tuple[tuple[str, str], ...],
    keep: Keep | None = None,
) -> bytes:
    """A fallback chain: the client's body goes to the chain cluster (each attempt is rewritten by
    the upstream ext_proc); ext_proc reads the answer, on the response only, with the translator of
    the provider that answered."""
    decision = outcome.decision
    route = decision.route
    labelled(ROUTED, api.value, decision.scenario, route.provider.name, route.model).inc()
    if (root := tracing.current()) is not None:
        _describe(root, api, decision.scenario, route.provider.name, route.target.model)
        root.set("ccr.fallback_chain", ",".join(r.provider.name for r in decision.chain))
    rewrite = chain_rewrite(api, endpoint, outcome, headers, key)
    members = tuple((r.provider.name, r.provider.api.value, r.target.model, r.model) for r in decision.chain)
    context = HopContext(
        api, route.provider.api, False, outcome.context, route.provider.name, decision.session or "", members, keep
    )
    labels = {**rewrite.labels, HOP_STREAM_KEY: context.encode()}
    set_headers = (*rewrite.set_headers, (REWRITE_HEADER, REWRITE_RESPONSE))
    return _forward(set_headers, rewrite.remove_headers, labels, rewrite.body or b"", answer_headers)


def _describe(span: tracing.Span, api: Api, scenario: str, provider: str, model: str) -> None:
    """A routed request's span, by the GenAI conventions (and the gateway's own: its scenario)."""
    span.set("gen_ai.operation.name", "chat")
    span.set("gen_ai.provider.name", provider)
    span.set("gen_ai.request.model", model)
    span.set("ccr.client_api", api.value)
    span.set("ccr.scenario", scenario)


def respond(state: GatewayState, token: str, status: int, content_type: str, raw: bytes, request_id: str = "") -> bytes:
    """``POST /respond``: a provider's non-streaming answer in the client's format."""
    hop = HopContext.decode(token)
    translator = hop.translator()
    if translator is None:  # the policy changed under the request: nothing can read this answer
        return _response(502, error_reply(hop.client, 502, "the gateway cannot read this provider's answer", ""))
    labelled(RESPONSES, hop.provider_name, f"{status // 100}xx", "1").inc()
    if status in (401, 403) and state.table is not None and (provider := state.table.providers.get(hop.provider_name)):
        provider.key_rejected()  # a key from Vault may have been rotated: read again soon
    if status >= 500 and (root := tracing.current()) is not None:
        root.fail(f"provider {hop.provider_name} answered {status}")
    if not 200 <= status < 300:
        error = translator.response_error(status, raw)
        return _encode("response", [("status", str(error.status), ""), *_headers(error.headers)], error.body)
    headers = translator.response_headers(status, {"content-type": content_type})
    try:
        out = translator.response_body(raw, True)
    except UpstreamProtocolError as exc:
        log.warning("request %s: provider %s broke its API: %s", request_id or "-", hop.provider_name, exc)
        message = f"the provider sent an invalid response: {exc}"
        return _response(502, error_reply(hop.client, 502, message, "ccr_bad_upstream"))
    if out.usage is not None:
        state.sessions.record(hop.session or None, out.usage.prompt_tokens)
    body = out.body
    if hop.keep is not None and state.saver is not None:
        body = _kept(state.saver, hop.keep, body)
    return _encode("response", [("status", str(status), ""), *_headers(headers)], body)


def _kept(saver: Saver, keep: Keep, body: bytes) -> bytes:
    """A whole translated answer that is a stored response: saved in the background, and the
    client's copy says it is stored (what GET /v1/responses/{id} gives back later)."""
    response = response_of(body)
    if response is None:
        return body
    response = keep.stamp(response)
    saver.answer(keep.answer(response))
    return orjson.dumps(response)


async def store(state: GatewayState, token: str, status: int, content_type: str, raw: bytes) -> bytes:
    """``POST /store``: the answer of a miss Envoy's Lua filter copied for the response cache (a
    200's body), or the status of one that will not be stored; either ends the miss's flight."""
    if state.cache is not None:
        await store_answer(state.cache, state.flights, token, status, content_type, raw)
    return b"stored"


# --- stored responses (extproc.responses_store) ------------------------------------------------------

_PREVIOUS = b'"previous_response_id"'


def _owner(key: VirtualKey | None) -> tuple[str, str]:
    """Whose stored responses a caller reads: its tenant and key (anonymous callers share one)."""
    return (key.tenant, key.key_id) if key is not None else (ANONYMOUS_TENANT_VALUE, ANONYMOUS_TENANT_VALUE)


def _keep(state: GatewayState, routed: _Routed) -> Keep | None:
    """Whether this request's answer is kept, and if so its request's half written (in the
    background): a Responses request with ``store`` not false (OpenAI's default is true), storage
    on, to a provider whose answer the gateway reads. A Responses-format provider's answer goes to
    the client untouched (passthrough): not kept (docs/responses.md, "Stored responses")."""
    table, saver, outcome = state.table, state.saver, routed.outcome
    if saver is None or table is None or routed.api is not Api.RESPONSES or routed.step.kind != "generate":
        return None
    if not table.responses.store or (isinstance(outcome, Forward) and not outcome.translator.rewrites_response):
        return None
    body = outcome.decision.body
    if body.get("store") is False:
        return None
    tenant, key_id = _owner(routed.key)
    now = time.time()
    keep = Keep(secrets.token_urlsafe(16), tenant, key_id, now, now + table.responses.retention_s, routed.previous)
    instructions = body.get("instructions")
    saver.request(
        RequestHalf(
            keep.token,
            tenant,
            key_id,
            now,
            keep.expires_at,
            input_items(body.get("input")),
            instructions if isinstance(instructions, str) else None,
        )
    )
    return keep


def _continued(
    state: GatewayState, api: Api, step: Endpoint, headers: Mapping[str, str], raw: bytes, key: VirtualKey | None
) -> bytes | Pending | None:
    """A Responses request naming ``previous_response_id``: decided as if the client had sent the
    whole conversation (the stored input and output, then its own input); None when it names none
    after all (the bytes only mentioned it)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None  # the plan says what is wrong with it
    previous = body.get("previous_response_id") if isinstance(body, dict) else None
    if previous is None:
        return None
    labels = request_labels(api, step.path, key=key)
    if not isinstance(previous, str) or not previous:
        message = "previous_response_id: must be a response id (a non-empty string)"
        return _reply(error_reply(api, 400, message, "ccr_bad_request", labels=labels))
    table, store = state.table, state.responses
    if table is None or not table.responses.store or store is None:
        message = (
            f"previous_response_id cannot be used: {STORED_RESPONSES_MESSAGE}; send the whole conversation in input"
        )
        return _reply(error_reply(api, 400, message, "ccr_stored_responses_disabled", labels=labels))
    tenant, key_id = _owner(key)

    async def later() -> bytes:
        if key is not None:
            log_context.bind(tenant=key.tenant)
        try:
            record = await store.get(tenant, key_id, previous, time.time())
        except Exception:
            SAVE_FAILURES.labels("get").inc()
            log.exception("stored responses: reading %s failed", previous)
            message = "stored responses are unavailable right now; retry, or send the whole conversation in input"
            return _reply(error_reply(api, 503, message, "ccr_stored_responses_unavailable", labels=labels))
        if record is None:
            message = f"previous response '{previous}' not found"
            return _reply(error_reply(api, 400, message, "ccr_previous_response_not_found", labels=labels))
        expanded = orjson.dumps(continued_body(body, record.input_items, record.response))
        answer = _decide_routed(state, api, step, headers, expanded, key, None, previous)
        return await answer.answer if isinstance(answer, Pending) else answer

    return Pending(later())


def _stored(state: GatewayState, method: str, path: str, key: VirtualKey | None) -> bytes | Pending:
    """``GET``/``DELETE /v1/responses/{id}``, ``GET .../input_items``: the caller's own stored
    response (another tenant's or key's is not found, like an unknown id)."""
    api = Api.RESPONSES
    labels = request_labels(api, STORED_ENDPOINT.path, key=key)
    store = state.responses
    found = stored_path(path)
    if store is None or found is None:
        message = f"{STORED_RESPONSES_MESSAGE}: no response can be read, cancelled or deleted ({method} {path})"
        return _reply(error_reply(api, 404, message, "ccr_stored_responses_disabled", labels=labels))
    rid, suffix = found
    tenant, key_id = _owner(key)
    missing = f"Response with id '{rid}' not found."

    async def later() -> bytes:
        if key is not None:
            log_context.bind(tenant=key.tenant)
        now = time.time()
        try:
            if method == "DELETE":
                if suffix or not await store.delete(tenant, key_id, rid, now):
                    return _reply(error_reply(api, 404, missing, "ccr_stored_response_not_found", labels=labels))
                return _reply(Reply(200, deleted_body(rid), labels=labels))
            record = await store.get(tenant, key_id, rid, now)
        except Exception:
            SAVE_FAILURES.labels("delete" if method == "DELETE" else "get").inc()
            log.exception("stored responses: %s %s failed", method, rid)
            message = "stored responses are unavailable right now; retry shortly"
            return _reply(error_reply(api, 503, message, "ccr_stored_responses_unavailable", labels=labels))
        if record is None:
            return _reply(error_reply(api, 404, missing, "ccr_stored_response_not_found", labels=labels))
        if suffix:
            return _reply(Reply(200, input_items_page(record.input_items, query_order(path)), labels=labels))
        return _reply(Reply(200, orjson.dumps(record.response), labels=labels))

    return Pending(later())


# --- encoding ---------------------------------------------------------------------------------------


def _reply(reply: Reply) -> bytes:
    ops = [("status", str(reply.status), ""), ("header", "content-type", reply.content_type)]
    ops += _headers(reply.headers)
    if (root := tracing.current()) is not None:  # the request is traced: say so on its answer
        root.set("http.response.status_code", reply.status)
        if reply.status >= 500:
            root.fail(reply.details or f"status {reply.status}")
        ops.append(("header", tracing.TRACE_ID_HEADER, root.trace_id.hex()))
    ops += [("label", key, value) for key, value in reply.labels.items()]  # the reason (details) among them
    return _encode("reply", ops, reply.body)


def _forward(
    set_headers: Iterable[tuple[str, str]],
    remove: Iterable[str],
    labels: Mapping[str, str],
    body: bytes,
    answer_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    ops = [("set", name, value) for name, value in set_headers]
    ops += [("answer", name, value) for name, value in answer_headers]
    if (root := tracing.current()) is not None:
        ops.append(("answer", tracing.TRACE_ID_HEADER, root.trace_id.hex()))
    ops += [("remove", name, "") for name in remove]
    ops += [("label", key, value) for key, value in labels.items()]
    return _encode("forward", ops, body)


def _response(status: int, reply: Reply) -> bytes:
    return _encode(
        "response", [("status", str(status), ""), ("header", "content-type", reply.content_type)], reply.body
    )


def _headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str, str]]:
    return [("header", name, value) for name, value in headers]


def _encode(action: str, ops: Iterable[tuple[str, str, str]], payload: bytes = b"") -> bytes:
    lines = [MAGIC + action.encode()]
    for op, name, value in ops:
        lines.append(f"{op}\t{name}\t{_clean(value)}".encode())
    lines.append(b"")
    return b"\n".join(lines) + b"\n" + payload


def _clean(value: str) -> str:
    """A value on one line: tabs and newlines (never in a header value) become spaces."""
    return value.replace("\t", " ").replace("\n", " ").replace("\r", " ") if "\t" in value or "\n" in value else value
