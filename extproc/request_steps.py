"""The request half of the gateway's answer, whatever carries it to Envoy.

Two transports ask the same questions: the ext_proc stream (extproc.processor) and the unary
decision hop (extproc.hop). Both call these steps and only encode the result differently (ext_proc
mutations, or the hop's line format), so a request gets the same answer on either path:

- ``endpoint_step``: which endpoint the method and path name (the client's API with it), or the
  gateway's own answer when no body is needed (unknown endpoint, no policy yet, the model list);
- ``forward_rewrite`` / ``chain_rewrite``: what to change in the request a plan forwards (body,
  headers to set and remove, routing labels for the access and usage logs).

Pure: dicts and bytes in, frozen values out; the only side effect is the rejection counter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ccr.v1.contract import CHAIN_METADATA_KEY, CLUSTER_HEADER, INTERNAL_HEADER_PREFIX, encode_chain
from extproc.metrics import REJECTED, labelled
from extproc.plan import Chain, Forward
from extproc.router import Decision
from extproc.routing_table import ModelRoute, RoutingTable
from extproc.translate.base import Api
from extproc.translate.errors import error_body

# Credentials the client sent for the gateway; never forwarded to a provider.
CLIENT_CREDENTIALS = ("authorization", "x-api-key", "x-goog-api-key")
# Headers that only mean something to one API; dropped when the provider speaks another.
_API_HEADER_PREFIXES = {Api.ANTHROPIC: ("anthropic-",), Api.OPENAI: ("openai-",), Api.GEMINI: ("x-goog-",)}


@dataclass(frozen=True, slots=True)
class Endpoint:
    api: Api | None  # None: decided from the request's headers (GET /v1/models)
    kind: str  # "generate" | "count_tokens" | "models"


ENDPOINTS: dict[tuple[str, str], Endpoint] = {
    ("POST", "/v1/messages"): Endpoint(Api.ANTHROPIC, "generate"),
    ("POST", "/v1/chat/completions"): Endpoint(Api.OPENAI, "generate"),
    ("POST", "/chat/completions"): Endpoint(Api.OPENAI, "generate"),
    ("POST", "/v1/messages/count_tokens"): Endpoint(Api.ANTHROPIC, "count_tokens"),
    ("GET", "/v1/models"): Endpoint(None, "models"),
    ("GET", "/models"): Endpoint(Api.OPENAI, "models"),
}


@dataclass(frozen=True, slots=True)
class Reply:
    """The gateway answers the client itself: ``body`` is already in the client's format.
    ``details`` names the reason in access logs (``ccr_*``)."""

    status: int
    body: bytes
    details: str = ""
    content_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class Rewrite:
    """The request goes on, changed: ``body`` None keeps the client's body."""

    body: bytes | None
    set_headers: tuple[tuple[str, str], ...]
    remove_headers: tuple[str, ...]
    labels: Mapping[str, str]  # routing labels, dynamic metadata in ccr.v1.contract.METADATA_NAMESPACE


def error_reply(api: Api, status: int, message: str, details: str) -> Reply:
    """An error in the client's own format, answered without contacting any provider."""
    labelled(REJECTED, api.value, str(status), details).inc()
    return Reply(status, error_body(api, status, message), details)


def endpoint_step(
    table: RoutingTable | None, method: str, path: str, headers: Mapping[str, str], has_body: bool
) -> tuple[Api, Endpoint | Reply]:
    """The client's API and the endpoint it called, or the gateway's answer (no body needed)."""
    path = path.split("?", 1)[0]
    endpoint = ENDPOINTS.get((method, path))
    api = endpoint.api if endpoint and endpoint.api else _guess_api(path, headers)
    if endpoint is None:
        return api, error_reply(api, 404, f"no such endpoint: {method} {path}", "ccr_unknown_endpoint")
    if table is None:
        return api, error_reply(api, 503, "the gateway has no routing policy yet; retry shortly", "ccr_no_policy")
    if endpoint.kind == "models":
        return api, Reply(200, models_body(api, table))
    if not has_body:
        return api, error_reply(api, 400, "request body is required", "ccr_empty_body")
    return api, endpoint


def forward_rewrite(api: Api, outcome: Forward, headers: Mapping[str, str]) -> Rewrite:
    """One provider: the translated request, sent to that provider's cluster."""
    route, upstream, provider = outcome.route, outcome.upstream, outcome.route.provider
    set_headers = (
        (":path", upstream.path),
        ("content-length", str(len(upstream.body))),
        ("content-type", "application/json"),
        (CLUSTER_HEADER, provider.cluster),
        *provider.headers,
        *upstream.headers,
    )
    overwritten = {name for name, _ in set_headers}
    remove = tuple(name for name in headers if name not in overwritten and strip_before_egress(name, api, provider.api))
    body = None if upstream.unchanged else upstream.body  # None: the client's bytes stay in place
    return Rewrite(body, set_headers, remove, routing_labels(api, outcome.decision, route))


def chain_rewrite(api: Api, outcome: Chain, headers: Mapping[str, str]) -> Rewrite:
    """A fallback chain: Envoy retries across the chain's providers and the upstream ext_proc
    (extproc.attempt) rewrites each attempt, so the client's body goes on untranslated."""
    decision = outcome.decision
    set_headers: tuple[tuple[str, str], ...] = ((CLUSTER_HEADER, decision.chain_cluster or ""),)
    if outcome.body is not None:
        set_headers += (("content-length", str(len(outcome.body))),)
    # Credentials are dropped now; provider headers are set per attempt.
    remove = tuple(
        name
        for name in headers
        if name in CLIENT_CREDENTIALS or (name.startswith(INTERNAL_HEADER_PREFIX) and name != CLUSTER_HEADER)
    )
    labels = dict(routing_labels(api, decision, decision.route))
    # The chain travels as dynamic metadata, which Envoy forwards to every attempt's upstream
    # ext_proc: a header would be mutated in place by the first attempt (retries share it).
    labels[CHAIN_METADATA_KEY] = encode_chain(api.value, [(r.provider.name, r.model) for r in decision.chain])
    return Rewrite(outcome.body, set_headers, remove, labels)


def routing_labels(api: Api, decision: Decision | None, route: ModelRoute) -> dict[str, str]:
    """Routing labels for the access logs; the usage log (extproc.usage_log) reads them too."""
    labels = {
        "client_api": api.value,
        "scenario": decision.scenario if decision is not None else "model",
        "provider": route.provider.name,
        "model": route.target.model,
    }
    if decision is not None and decision.session:
        labels["session"] = decision.session
    return labels


def strip_before_egress(name: str, client: Api, provider: Api) -> bool:
    if name.startswith(":") or name == "content-length":
        return False
    if name in CLIENT_CREDENTIALS or name.startswith(INTERNAL_HEADER_PREFIX):
        return True
    return client is not provider and name.startswith(_API_HEADER_PREFIXES[client])


def models_body(api: Api, table: RoutingTable) -> bytes:
    names = table.model_names()
    if api is Api.OPENAI:
        data: Any = [
            {"id": n, "object": "model", "created": 0, "owned_by": table.models[n].provider.name} for n in names
        ]
        return orjson.dumps({"object": "list", "data": data})
    data = [{"type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"} for n in names]
    return orjson.dumps(
        {
            "data": data,
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }
    )


def _guess_api(path: str, headers: Mapping[str, str]) -> Api:
    if "chat/completions" in path or ("anthropic-version" not in headers and "authorization" in headers):
        return Api.OPENAI
    return Api.ANTHROPIC
