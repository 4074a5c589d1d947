"""The decision hop: the gateway's answer for one request in one unary HTTP call from Envoy.

A gRPC ext_proc stream costs the Python side several times what the decision itself costs, however
few messages it carries (docs/performance.md, "Why the hop"). So Envoy's Lua filter
(control_plane/resources/decision_hop.lua) buffers the request, POSTs it to ``/decide`` with the
client's headers and applies the answer; for a translated non-streaming response it POSTs the
provider's answer to ``/respond`` and sends the client what comes back. A translated stream is
forwarded here too, and marked so that its route runs ext_proc on the response only (each chunk is
rewritten there, primed with the stream context this answer labels it with). Fallback chains, whose
attempts are each rewritten by the upstream ext_proc filter, are deferred to the ext_proc path.

Both calls are answered here, from the same steps the ext_proc processor uses (extproc.plan,
extproc.request_steps): only the encoding differs. An answer is a few lines, then the payload:

    ccr1 <action>\\n                    reply | forward | defer | response
    <op>\\t<name>\\t<value>\\n ...       status, header, set, remove, label
    \\n
    <payload>                         the reply's or the response's body, the upstream request body

Line-based because the Lua side has no JSON parser and splitting a few lines costs nothing there.
Values never hold a tab or a newline (header values cannot; anything else is cleaned, ``_clean``).
Sans-IO: bytes in, bytes out; extproc.hop_server carries them.
"""

from __future__ import annotations

import base64
import enum
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

from ccr.v1.contract import HOP_CONTEXT_KEY, HOP_DETAILS_KEY, HOP_ROUTE_KEY, HOP_STREAM_KEY, REWRITE_HEADER
from extproc.metrics import RESPONSES, ROUTED, labelled
from extproc.plan import Answer, Chain, Forward, Outcome, plan
from extproc.request_steps import Reply, endpoint_step, error_reply, forward_rewrite
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
        ]
        return base64.urlsafe_b64encode(orjson.dumps(fields)).decode()

    @classmethod
    def decode(cls, token: str) -> HopContext:
        client, provider, counting, stream, model, estimate, shown, usage, turn, name, session = orjson.loads(
            base64.urlsafe_b64decode(token)
        )
        context = ResponseContext(model, stream, estimate, show_thinking=shown, include_usage=usage, turn=turn)
        return cls(Api(client), Api(provider), counting, context, name, session)


class Carriage(enum.Enum):
    """How the decision hop carries a planned request (``route --explain`` prints it)."""

    REPLY = "hop: 1 call, the gateway answers"
    FORWARD = "hop: 1 call, the provider's answer goes back as it is"
    RESPOND = "hop: 2 calls, the answer translated whole (/respond)"
    STREAM = "hop: 1 call, then ext_proc on the response, translating each chunk"
    DEFER = "hop: 1 call, then the ext_proc path (a fallback chain is rewritten per attempt)"


def carriage_of(outcome: Outcome) -> Carriage:
    if isinstance(outcome, Answer):
        return Carriage.REPLY
    if isinstance(outcome, Chain):
        return Carriage.DEFER
    if not outcome.translator.rewrites_response:
        return Carriage.FORWARD
    return Carriage.STREAM if outcome.stream else Carriage.RESPOND


def decide(state: GatewayState, method: str, path: str, headers: Mapping[str, str], raw: bytes) -> bytes:
    """``POST /decide``: the request's answer (reply), its rewrite (forward), or ``defer`` to ext_proc."""
    api, step = endpoint_step(state.table, method, path, headers, has_body=bool(raw))
    if isinstance(step, Reply):
        return _reply(step)
    outcome = plan(state.table, api, step.kind, headers, raw, state.sessions)
    if isinstance(outcome, Answer):
        if outcome.is_error:
            return _reply(error_reply(api, outcome.status, outcome.message, outcome.details))
        return _reply(Reply(outcome.status, outcome.body))
    carriage = carriage_of(outcome)
    if carriage is Carriage.DEFER:
        return _encode("defer", ())
    assert isinstance(outcome, Forward)
    decision = outcome.decision
    labelled(ROUTED, api.value, decision.scenario, outcome.route.provider.name, outcome.route.model).inc()
    rewrite = forward_rewrite(api, outcome, headers)
    labels = dict(rewrite.labels)
    route = outcome.route
    labels[HOP_ROUTE_KEY] = f"scenario={decision.scenario}; provider={route.provider.name}; model={route.model}"
    set_headers = rewrite.set_headers
    if outcome.translator.rewrites_response:
        context = HopContext(
            api,
            outcome.route.provider.api,
            step.kind == "count_tokens",
            outcome.context,
            outcome.route.provider.name,
            decision.session or "",
        ).encode()
        if carriage is Carriage.STREAM:
            labels[HOP_STREAM_KEY] = context
            set_headers = (*set_headers, (REWRITE_HEADER, "stream"))
        else:
            labels[HOP_CONTEXT_KEY] = context
    return _forward(set_headers, rewrite.remove_headers, labels, rewrite.body or b"")


def respond(state: GatewayState, token: str, status: int, content_type: str, raw: bytes) -> bytes:
    """``POST /respond``: a provider's non-streaming answer in the client's format."""
    hop = HopContext.decode(token)
    translator = hop.translator()
    if translator is None:  # the policy changed under the request: nothing can read this answer
        return _response(502, error_reply(hop.client, 502, "the gateway cannot read this provider's answer", ""))
    labelled(RESPONSES, hop.provider_name, f"{status // 100}xx", "1").inc()
    if not 200 <= status < 300:
        error = translator.response_error(status, raw)
        return _encode("response", [("status", str(error.status), ""), *_headers(error.headers)], error.body)
    headers = translator.response_headers(status, {"content-type": content_type})
    try:
        out = translator.response_body(raw, True)
    except UpstreamProtocolError as exc:
        log.warning("provider %s broke its API: %s", hop.provider_name, exc)
        message = f"the provider sent an invalid response: {exc}"
        return _response(502, error_reply(hop.client, 502, message, "ccr_bad_upstream"))
    if out.usage is not None:
        state.sessions.record(hop.session or None, out.usage.prompt_tokens)
    return _encode("response", [("status", str(status), ""), *_headers(headers)], out.body)


# --- encoding ---------------------------------------------------------------------------------------


def _reply(reply: Reply) -> bytes:
    ops = [("status", str(reply.status), ""), ("header", "content-type", reply.content_type)]
    if reply.details:
        ops.append(("label", HOP_DETAILS_KEY, reply.details))
    return _encode("reply", ops, reply.body)


def _forward(
    set_headers: Iterable[tuple[str, str]], remove: Iterable[str], labels: Mapping[str, str], body: bytes
) -> bytes:
    ops = [("set", name, value) for name, value in set_headers]
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
