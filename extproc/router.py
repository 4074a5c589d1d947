"""Per-request scenario routing on the compiled RoutingTable: CCR's order, CCR's semantics.

`decide()` is pure apart from reading the SessionUsage cache and calling the policy's custom hook.
It runs once per request on the hot path: every check is a dict lookup or a short loop over
top-level lists, and only checks whose scenario is configured run at all. The token count is
estimated from the body's size and counted exactly only near the threshold (extproc.tokens).

The order is load-bearing (it is what CCR users expect) and lives in `decide` alone:

    custom hook -> explicit "provider,model" -> longContext -> <CCR-SUBAGENT-MODEL> tag
    -> background (haiku-class model) -> webSearch -> think -> image -> alias / model name -> default

Bodies of every client API are read alike (Anthropic Messages, OpenAI Chat Completions, OpenAI
Responses: a body with ``input`` and no ``messages``), each fact from the fields its API names:

- think: Anthropic ``thinking`` enabled/adaptive; Chat ``reasoning_effort``, Responses
  ``reasoning.effort``, other than "none" ("minimal" is still reasoning, as for Chat);
- webSearch: an Anthropic ``web_search*`` tool, Chat ``web_search_options``; a Responses request
  only when its ``tool_choice`` forces web search (``{"type": "web_search"}`` or
  ``web_search_preview``, or ``allowed_tools`` required to use only those). The Codex CLI offers
  a ``web_search`` tool on every request: its mere presence would send all Codex traffic there;
- image: an image in a user message (Anthropic ``image``, Chat ``image_url``, Responses
  ``input_image``), also inside tool results;
- the session (weighted splits, long-context memory): Claude Code's ``metadata.user_id``, else
  ``user``, else, for a Responses request, ``prompt_cache_key`` (the Codex CLI's session id);
- long context: the token count reads each API's conversation (extproc.tokens).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import Counter

from extproc import tokens as token_count
from extproc.routing_table import ModelRoute, RoutingTable, ScenarioRouter, TenantRouter, WeightedChoice
from extproc.tokens import SessionUsage

log = logging.getLogger("ccr.extproc.router")

HOOK_ERRORS = Counter(
    "ccr_router_hook_errors",
    "Calls of the policy's custom routing hook that raised or returned something naming no target",
)

SUBAGENT_OPEN = "<CCR-SUBAGENT-MODEL>"
SUBAGENT_CLOSE = "</CCR-SUBAGENT-MODEL>"
# How many system blocks after the first may carry the subagent tag (CCR: the second only).
SUBAGENT_BLOCKS = 3
# CCR keeps a session on longContext while its previous turn was over the threshold and the
# current request is still over this many tokens.
SESSION_LONG_CONTEXT_TOKENS = 20_000


class RoutingError(Exception):
    """The request cannot be routed; answered to the client with ``status`` in its API's format."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class HookContext:
    """What a custom hook gets besides the parsed body (which it must not mutate)."""

    headers: Mapping[str, str]
    tokens: int
    session: str | None
    scenarios: frozenset[str]  # the scenarios configured for this request's router (CCR names)
    tenant: str | None


@dataclass(frozen=True, slots=True)
class Decision:
    scenario: str  # explicit longContext subagent background webSearch think image model alias custom default
    route: ModelRoute
    chain: tuple[ModelRoute, ...]  # fallback chain, `route` first; (route,) without one
    chain_cluster: str | None  # the chain's Envoy cluster, None without a chain
    body: dict  # what to forward: the request's own dict, or a shallow copy without the subagent tag
    tokens: int
    session: str | None
    reason: str  # one sentence, for `ccr-gateway route --explain` and logs
    tenant: str | None


def decide(
    table: RoutingTable,
    body: dict,
    headers: Mapping[str, str],
    raw_size: int,
    sessions: SessionUsage | None = None,
    tenant_of_key: str | None = None,
) -> Decision:
    """Pick the target for one parsed request body. Raises RoutingError (404/400). The tenant's
    router applies: the virtual key's tenant (``tenant_of_key``), else the one whose API key
    digest matches the presented key (CCR-style tenants)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RoutingError(400, "model: a model name (string) is required")
    tenant = table.tenants_by_name.get(tenant_of_key) if tenant_of_key else None
    if tenant is None and table.tenants:
        tenant = _tenant(table.tenants, headers)
    router = tenant.router if tenant is not None else table.router
    tenant_name = tenant.name if tenant is not None else None
    session = session_id(body)

    # The subagent tag is a routing instruction, never meant for the model: it is stripped from
    # what is forwarded whichever scenario wins (CCR strips it only when the tag decides). The
    # input dict is never changed: on a fallback attempt the same parsed body is translated again.
    forward = body
    subagent: str | None = None
    subagent_block = 0
    system = body.get("system")
    if isinstance(system, list) and len(system) > 1:
        # CCR reads the second system block. Claude Code 2.1 sends a billing attribution block
        # first, so there the agent's prompt is the third: a block after the first is looked at,
        # the first tagged one wins (a startswith per block, no scan of any text).
        for index in range(1, min(len(system), 1 + SUBAGENT_BLOCKS)):
            tagged = _subagent_tag(system[index])
            if tagged is not None:
                subagent, rest = tagged
                subagent_block = index
                stripped = {**system[index], "text": rest}
                forward = {**body, "system": [*system[:index], stripped, *system[index + 1 :]]}
                break

    def done(scenario: str, route: ModelRoute, tokens: int, reason: str) -> Decision:
        fallback = table.fallbacks.get((route.provider.name, route.model))
        if tenant_name is not None:
            reason = f"{reason} (tenant {tenant_name!r})"
        if fallback is None:
            return Decision(scenario, route, (route,), None, forward, tokens, session, reason, tenant_name)
        return Decision(
            scenario, route, fallback.chain, fallback.cluster, forward, tokens, session, reason, tenant_name
        )

    # The threshold this request's count is compared with: CCR's own, or 20000 while the session's
    # previous turn was over it.
    limit: int | None = None
    session_over: int | None = None
    if router.long_context is not None:
        limit = router.long_context_threshold
        if sessions is not None and session:
            last = sessions.last(session)
            if last is not None and last > limit:
                session_over = last
                limit = min(limit, SESSION_LONG_CONTEXT_TOKENS)
    tokens = -1  # counted when first needed: an explicit model never needs the exact count

    # 0. The custom hook, before everything else (as CCR's CUSTOM_ROUTER_PATH).
    if router.hook is not None:
        tokens = token_count.count(body, raw_size, limit)
        picked = _run_hook(table, router, body, HookContext(headers, tokens, session, router.scenarios(), tenant_name))
        if picked is not None:
            route, how = picked
            return done("custom", route, tokens, f"the custom hook {router.hook_path} chose {how}")

    # 1. Explicit "provider,model" (Claude Code's `/model provider,model`).
    if "," in model:
        route = _explicit(table, model)
        return done(
            "explicit",
            route,
            tokens if tokens >= 0 else token_count.estimate(raw_size),
            f"the request names {model!r} explicitly",
        )

    if tokens < 0:
        tokens = token_count.count(body, raw_size, limit)

    # 2. longContext.
    if limit is not None and tokens > limit:
        choice = router.long_context
        assert choice is not None
        if session_over is not None and tokens <= router.long_context_threshold:
            why = (
                f"the session's previous turn had {session_over} input tokens, over the long-context "
                f"threshold of {router.long_context_threshold}, and this request has {tokens} "
                f"(over {SESSION_LONG_CONTEXT_TOKENS})"
            )
        else:
            why = f"{tokens} tokens is over the long-context threshold of {router.long_context_threshold}"
        return _scenario(done, "longContext", choice, session, tokens, why)

    # 3. The subagent tag at the start of a system block after the first (CCR: the second).
    if subagent:
        route = _resolve(table, subagent, session)
        if route is None:
            raise RoutingError(404, f"the {SUBAGENT_OPEN} tag names {subagent!r}, which is not served by this gateway")
        return done(
            "subagent", route, tokens, f"system block {subagent_block}'s {SUBAGENT_OPEN} tag names {subagent!r}"
        )

    # 4. background: a haiku-class model.
    if router.background is not None and "haiku" in model.lower():
        return _scenario(done, "background", router.background, session, tokens, f"{model!r} is a haiku-class model")

    # 5. webSearch (before think: CCR gives web search the higher priority).
    if router.web_search is not None and wants_web_search(body):
        why = "the request forces web search" if is_responses(body) else "the request carries a web_search tool"
        return _scenario(done, "webSearch", router.web_search, session, tokens, why)

    # 6. think.
    if router.think is not None and wants_thinking(body):
        return _scenario(done, "think", router.think, session, tokens, "the request asks for thinking")

    # 7. image.
    if router.image is not None and has_image(body):
        return _scenario(done, "image", router.image, session, tokens, "the request carries an image")

    # 8. The model field itself: an alias, or a model a provider serves.
    alias = table.aliases.get(model)
    if alias is not None:
        return _scenario(done, "alias", alias, session, tokens, f"{model!r} is an alias")
    route = table.models.get(model)
    if route is not None:
        return done("model", route, tokens, f"{model!r} is served by provider {route.provider.name!r}")

    # 9. default.
    if router.default is not None:
        return _scenario(
            done, "default", router.default, session, tokens, f"{model!r} matches no scenario, alias or model"
        )
    raise RoutingError(404, f"model {model!r} is not served by this gateway")


def _scenario(done: Any, scenario: str, choice: WeightedChoice, session: str | None, tokens: int, why: str) -> Decision:
    route = choice.pick(session)
    if choice.is_split:
        how = "stable for the session" if session else "at random: no session id"
        why = f"{why}; {route} won the weighted split ({how})"
    return done(scenario, route, tokens, f"{why}: {scenario} -> {route}")


# --- request inspection (cheap, top-level only) ----------------------------------------------------


def session_id(body: Mapping[str, Any]) -> str | None:
    """The client's session key: Claude Code's session id, else its user id, else OpenAI's "user".

    Claude Code sends metadata.user_id as a JSON string holding "session_id"; older versions as
    "user_<hash>_account_<uuid>_session_<uuid>".
    """
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        user_id = metadata.get("user_id")
        if isinstance(user_id, str) and user_id:
            return _session_of(user_id)
    user = body.get("user")
    if isinstance(user, str) and user:
        return user
    if is_responses(body):  # the Codex CLI sends no user: its session id is its prompt cache key
        key = body.get("prompt_cache_key")
        if isinstance(key, str) and key:
            return key
    return None


def is_responses(body: Mapping[str, Any]) -> bool:
    """An OpenAI Responses body: ``input``, never ``messages`` (Anthropic's and Chat's)."""
    return "input" in body and "messages" not in body


def _session_of(user_id: str) -> str:
    if user_id[0] == "{":
        try:
            parsed = orjson.loads(user_id)
        except orjson.JSONDecodeError:
            return user_id
        if isinstance(parsed, dict):
            session = parsed.get("session_id")
            if isinstance(session, str) and session:
                return session
        return user_id
    _, sep, session = user_id.partition("_session_")
    return session if sep and session else user_id


def wants_web_search(body: Mapping[str, Any]) -> bool:
    """An Anthropic/OpenAI web_search* tool, or OpenAI's web_search_options; a Responses request
    only when its tool_choice forces web search (an offered tool is not an ask: the Codex CLI
    offers one on every request)."""
    if body.get("web_search_options") is not None:
        return True
    if is_responses(body):
        return _forces_web_search(body.get("tool_choice"))
    tools = body.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict):
                kind = tool.get("type")
                if isinstance(kind, str) and kind.startswith("web_search"):
                    return True
    return False


def _forces_web_search(choice: Any) -> bool:
    """A Responses tool_choice that leaves the model web search alone: ``{"type": "web_search"}``
    (or ``web_search_preview``...), or ``allowed_tools`` in mode "required" with only such tools."""
    if not isinstance(choice, dict):
        return False
    kind = choice.get("type")
    if isinstance(kind, str) and kind.startswith("web_search"):
        return True
    if kind != "allowed_tools" or choice.get("mode") != "required":
        return False
    tools = choice.get("tools")
    return (
        isinstance(tools, list)
        and bool(tools)
        and all(isinstance(t, dict) and str(t.get("type", "")).startswith("web_search") for t in tools)
    )


def wants_thinking(body: Mapping[str, Any]) -> bool:
    """Anthropic thinking enabled/adaptive, or an OpenAI reasoning effort (Chat's reasoning_effort,
    Responses' reasoning.effort) other than "none"."""
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        return True
    effort = body.get("reasoning_effort")
    reasoning = body.get("reasoning")
    if effort is None and isinstance(reasoning, dict):
        effort = reasoning.get("effort")
    return isinstance(effort, str) and effort != "none"


def has_image(body: Mapping[str, Any]) -> bool:
    """An image in a user message (Anthropic image blocks, also inside tool results; OpenAI image_url).

    Walks from the newest message, where a fresh screenshot sits, and stops at the first image.
    """
    if is_responses(body):
        return _responses_image(body.get("input"))
    messages = body.get("messages")
    if not isinstance(messages, list):
        return False
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "image" or kind == "image_url":
                return True
            if kind == "tool_result":
                inner = block.get("content")
                if isinstance(inner, list):
                    for part in inner:
                        if isinstance(part, dict) and part.get("type") == "image":
                            return True
    return False


def _responses_image(items: Any) -> bool:
    """An ``input_image`` in a Responses user message or tool output, newest first."""
    if not isinstance(items, list):
        return False
    for item in reversed(items):
        if not isinstance(item, dict):
            continue
        if item.get("type", "message") == "message":
            parts = item.get("content") if item.get("role") == "user" else None
        else:
            parts = item.get("output") if str(item.get("type")).endswith("_output") else None
        if isinstance(parts, list) and any(isinstance(p, dict) and p.get("type") == "input_image" for p in parts):
            return True
    return False


def _subagent_tag(block: Any) -> tuple[str, str] | None:
    """(what the tag names, the text after it) when ``block``'s text starts with the tag."""
    if not isinstance(block, dict):
        return None
    text = block.get("text")
    if not isinstance(text, str) or not text.startswith(SUBAGENT_OPEN):
        return None
    end = text.find(SUBAGENT_CLOSE, len(SUBAGENT_OPEN))
    if end < 0:
        return None
    return text[len(SUBAGENT_OPEN) : end].strip(), text[end + len(SUBAGENT_CLOSE) :].lstrip()


def _tenant(tenants: Mapping[str, TenantRouter], headers: Mapping[str, str]) -> TenantRouter | None:
    key = headers.get("x-api-key")
    if not key:
        authorization = headers.get("authorization", "")
        if authorization[:7].lower() == "bearer ":
            key = authorization[7:].strip()
    if not key:
        return None
    return tenants.get(hashlib.sha256(key.encode()).hexdigest())


# --- resolving names -------------------------------------------------------------------------------


def _explicit(table: RoutingTable, text: str) -> ModelRoute:
    route = table.explicit.get(text)
    if route is not None:
        return route
    provider, _, model = text.partition(",")
    provider, model = provider.strip(), model.strip()
    tidy = f"{provider},{model}"
    route = table.explicit.get(tidy) or table.explicit.get(tidy.lower())
    if route is not None:
        return route
    if not any(name.lower() == provider.lower() for name in table.providers):
        raise RoutingError(404, f"unknown provider {provider!r} in {text!r}")
    raise RoutingError(404, f"provider {provider!r} has no model {model!r}")


def _resolve(table: RoutingTable, name: str, session: str | None) -> ModelRoute | None:
    """ "provider,model", an alias or a model name; None when it names nothing served here."""
    if "," in name:
        try:
            return _explicit(table, name)
        except RoutingError:
            return None
    alias = table.aliases.get(name)
    if alias is not None:
        return alias.pick(session)
    return table.models.get(name)


def _run_hook(
    table: RoutingTable, router: ScenarioRouter, body: dict, context: HookContext
) -> tuple[ModelRoute, str] | None:
    """The hook's choice, or None to route on; its failures never fail the request."""
    assert router.hook is not None
    try:
        result = router.hook(body, context)
    except Exception:
        HOOK_ERRORS.inc()
        log.exception("custom routing hook %s raised; routing on without it", router.hook_path)
        return None
    if result is None:
        return None
    route = _resolve(table, result, context.session) if isinstance(result, str) and result else None
    if route is None:
        HOOK_ERRORS.inc()
        log.warning(
            "custom routing hook %s returned %.200r, which names no target served here; routing on without it",
            router.hook_path,
            result,
        )
        return None
    how = repr(result) if str(route) == result else f"{result!r} ({route})"
    return route, how
