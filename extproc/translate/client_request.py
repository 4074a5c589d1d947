"""Each client API's request as typed, frozen values: parsed once, read by every pair translator.

``parse_request(api, body)`` runs the client API's checks (extproc.translate.request_checks) and
then reads the top level of the checked body into an ``AnthropicRequest``, an ``OpenAIRequest`` or
a ``ResponsesRequest``:
the model, the output limit, sampling, stop sequences, the caller's user id, the tools offered and
the tool choice, thinking and effort, the answer's JSON schema. Every API's tools and tool choices
come out in one neutral shape (``Tool``, ``ToolChoice``), so a pair translator only says how its
provider spells them. The messages stay the checked JSON (``messages``): their content blocks are
converted block by block by each pair, and copying them into objects first would cost a walk of the
largest part of the body for nothing.

Values here are what the client asked for; clamping to a provider's limits and dropping what a
provider cannot do are the pair translator's. Pure: dicts in, values or ``ClientRequestError`` out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from extproc.translate import anthropic_schema as A
from extproc.translate.base import Api, ClientRequestError
from extproc.translate.request_checks import check_request

_NO_TOOLS: tuple[Tool, ...] = ()


@dataclass(frozen=True, slots=True)
class Tool:
    """A client-defined function the model may call."""

    name: str
    description: str = ""
    schema: Mapping[str, Any] | None = None  # JSON schema of the arguments; None: the client gave none
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """``mode``: "auto" (the model decides), "any" (it must call a tool, one of ``allowed`` when
    set), "tool" (it must call ``name``) or "none" (no tool call)."""

    mode: str
    name: str = ""
    allowed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Thinking:
    """Anthropic's ``thinking``: "enabled" with a token budget, "adaptive" or "disabled"."""

    mode: str
    budget: int | None = None
    shown: bool = True  # False: ``display: "omitted"``, the reasoning text is not sent on


@dataclass(frozen=True, slots=True)
class AnthropicRequest:
    body: Mapping[str, Any]  # the checked body (passthrough forwards it; fields no pair maps stay here)
    model: str
    stream: bool
    max_tokens: int | None  # None only in a count_tokens request
    messages: Sequence[Mapping[str, Any]]
    system: tuple[str, ...]  # the system prompt's texts, Claude Code's billing header left out
    temperature: float | None
    top_p: float | None
    top_k: int | None
    stop: tuple[str, ...]
    user_id: str | None
    tools: tuple[Tool, ...]  # offered this turn: deferred tools not yet loaded are left out
    dropped_tools: frozenset[str]  # deferred tools not yet loaded, and Anthropic's own server tools
    web_search: bool  # an Anthropic web search tool is offered
    tool_choice: ToolChoice | None
    parallel_tool_calls: bool
    thinking: Thinking | None
    effort: str | None  # output_config.effort
    answer_schema: Mapping[str, Any] | None  # structured output (output_config.format)
    turns: int  # assistant turns in the history
    raw: bytes = b""  # the client's bytes of ``body`` ("" when the body was changed or is not known)

    api = Api.ANTHROPIC


@dataclass(frozen=True, slots=True)
class OpenAIRequest:
    body: Mapping[str, Any]
    model: str
    stream: bool
    include_usage: bool  # stream_options.include_usage
    max_tokens: int | None  # max_completion_tokens, else the older max_tokens
    max_tokens_field: str  # which of the two the client used (named in errors)
    messages: Sequence[Mapping[str, Any]]
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: tuple[str, ...]
    user: str | None
    tools: tuple[Tool, ...]  # ``tools``, or the legacy ``functions``
    web_search: bool  # web_search_options is set
    tool_choice: ToolChoice | None  # ``tool_choice``, or the legacy ``function_call``
    parallel_tool_calls: bool
    reasoning_effort: str | None
    response_format: str | None  # "text", "json_object" or "json_schema"
    response_schema: Mapping[str, Any] | None
    turns: int
    raw: bytes = b""

    api = Api.OPENAI


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """OpenAI's Responses API. ``items``: the input as a list of items (a string input is one user
    message); ``hosted_tools``: the tool definitions that are no function (OpenAI's built-in
    tools, namespaces, freeform ``custom`` tools), kept as sent for the translator to map, drop or
    refuse."""

    body: Mapping[str, Any]
    model: str
    stream: bool
    max_tokens: int | None  # max_output_tokens
    items: Sequence[Mapping[str, Any]]
    instructions: str | None
    temperature: float | None
    top_p: float | None
    user: str | None
    tools: tuple[Tool, ...]  # function tools
    hosted_tools: tuple[Mapping[str, Any], ...]
    tool_choice: ToolChoice | None  # None also for a built-in tool's choice (``hosted_choice``)
    hosted_choice: str | None  # the type a tool_choice object names when it is no function's
    parallel_tool_calls: bool
    reasoning_effort: str | None
    reasoning_summary: str | None
    response_format: str | None  # text.format.type: "text", "json_object" or "json_schema"
    response_schema: Mapping[str, Any] | None
    turns: int  # assistant turns in the history (assistant messages and function calls, runs of them)
    raw: bytes = b""

    api = Api.RESPONSES


ClientRequest = AnthropicRequest | OpenAIRequest | ResponsesRequest


def parse_request(api: Api, body: Mapping[str, Any], counting: bool = False, raw: bytes = b"") -> ClientRequest:
    """``body`` checked against ``api`` and read into typed values. ``counting``: a count_tokens
    request (no max_tokens). ``raw``: the bytes ``body`` was parsed from, when a translator may
    forward them untouched. Raises ClientRequestError for what the client API refuses."""
    if not isinstance(body, Mapping):
        raise ClientRequestError("request body must be a JSON object")
    check_request(api, body, counting)
    return read_request(api, body, raw)


# Body fields of Vertex AI's rawPredict for Anthropic models that Anthropic's own Messages API does
# not take: dropped when such a request is read as an Anthropic one (from_vertex).
VERTEX_ONLY_FIELDS = ("anthropic_version", "anthropic_beta")


def from_vertex(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """A Vertex rawPredict request (model in the path, ``anthropic_version`` in the body) as the
    Anthropic Messages request it is: ``model`` set from the path ("" keeps the body's: Vertex's
    count-tokens names it there), Vertex's own fields dropped. Betas come in the
    ``anthropic-beta`` header from the Anthropic SDKs' Vertex clients and Claude Code; an
    ``anthropic_beta`` body field is dropped (Anthropic's API refuses it; a Vertex provider gets
    the header)."""
    out = {name: value for name, value in body.items() if name not in VERTEX_ONLY_FIELDS}
    if model:
        out["model"] = model
    return out


class BedrockCall(NamedTuple):
    """What a Bedrock InvokeModel path says of its request (extproc.request_steps.bedrock_endpoint):
    the model id (URL-decoded) and whether it is ``invoke-with-response-stream``."""

    model: str
    stream: bool


# Body fields of Bedrock's InvokeModel for Anthropic models that are no Anthropic request's.
BEDROCK_ONLY_FIELDS = ("anthropic_version",)


def from_bedrock(body: Mapping[str, Any], call: BedrockCall) -> dict[str, Any]:
    """A Bedrock InvokeModel request (model and stream in the path, ``anthropic_version`` in the
    body) as the Anthropic Messages request it is. The ``anthropic_beta`` list stays in the body:
    Bedrock clients send their betas only there (the Anthropic SDKs' Bedrock clients move the
    ``anthropic-beta`` header into it), and the Bedrock client's codec
    (extproc.translate.bedrock_client) turns it into the header an Anthropic provider reads,
    keeps it for a Bedrock or Vertex provider (both take it in the body), and drops it for the rest."""
    out = {name: value for name, value in body.items() if name not in BEDROCK_ONLY_FIELDS}
    out["model"] = call.model
    if call.stream:
        out["stream"] = True
    else:
        out.pop("stream", None)
    return out


def read_request(api: Api, body: Mapping[str, Any], raw: bytes = b"") -> ClientRequest:
    """The typed values of a body ``parse_request`` already checked (e.g. after the router changed
    its system prompt, or on a fallback attempt). A Bedrock client's is an Anthropic request."""
    if api is Api.ANTHROPIC or api is Api.BEDROCK:
        return _anthropic(body, raw)
    if api is Api.OPENAI:
        return _openai(body, raw)
    if api is Api.RESPONSES:
        return _responses(body, raw)
    raise ValueError(f"{api} is not a client API")


def _anthropic(body: Mapping[str, Any], raw: bytes) -> AnthropicRequest:
    messages = body["messages"]
    raw_tools = body.get("tools") or []
    hidden = A.hidden_tools(raw_tools, messages)
    tools: list[Tool] = []
    dropped: set[str] = set(hidden)
    web_search = False
    for tool in raw_tools:
        name = tool.get("name")
        if tool.get("type") not in (None, "custom"):  # Anthropic's own (web search, bash...)
            dropped.add(str(name))
            web_search = web_search or str(tool["type"]).startswith("web_search_")
        elif name not in hidden:
            strict = tool.get("strict")
            description = tool.get("description")
            tools.append(
                Tool(
                    name,
                    description if isinstance(description, str) else "",
                    tool["input_schema"],
                    strict if isinstance(strict, bool) else None,
                )
            )
    choice = body.get("tool_choice")
    thinking = body.get("thinking")
    output_config = body.get("output_config") or {}
    metadata = body.get("metadata") or {}
    user_id = metadata.get("user_id")
    return AnthropicRequest(
        body=body,
        model=_model(body),
        stream=body.get("stream") is True,
        max_tokens=body.get("max_tokens"),
        messages=messages,
        system=tuple(A.system_texts(body.get("system"))),
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        top_k=body.get("top_k"),
        stop=tuple(body.get("stop_sequences") or ()),
        user_id=user_id if isinstance(user_id, str) and user_id else None,
        tools=tuple(tools) or _NO_TOOLS,
        dropped_tools=frozenset(dropped),
        web_search=web_search,
        tool_choice=ToolChoice(choice["type"], choice.get("name", "")) if choice is not None else None,
        parallel_tool_calls=not (choice is not None and choice.get("disable_parallel_tool_use") is True),
        thinking=(
            Thinking(thinking["type"], thinking.get("budget_tokens"), A.thinking_shown(thinking))
            if thinking is not None
            else None
        ),
        effort=output_config.get("effort"),
        answer_schema=A.answer_schema(body),
        turns=_turns(messages),
        raw=raw,
    )


def _openai(body: Mapping[str, Any], raw: bytes) -> OpenAIRequest:
    messages = body["messages"]
    max_tokens, field = body.get("max_completion_tokens"), "max_completion_tokens"
    if max_tokens is None:
        max_tokens, field = body.get("max_tokens"), "max_tokens"
    stop = body.get("stop")
    options = body.get("stream_options") or {}
    fmt = body.get("response_format")
    spec = fmt.get("json_schema") if fmt is not None else None
    user = body.get("user")
    return OpenAIRequest(
        body=body,
        model=_model(body),
        stream=body.get("stream") is True,
        include_usage=options.get("include_usage") is True,
        max_tokens=max_tokens,
        max_tokens_field=field,
        messages=messages,
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        seed=body.get("seed"),
        stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
        user=user if isinstance(user, str) and user else None,
        tools=_openai_tools(body),
        web_search=body.get("web_search_options") is not None,
        tool_choice=_openai_tool_choice(body),
        parallel_tool_calls=body.get("parallel_tool_calls") is not False,
        reasoning_effort=body.get("reasoning_effort"),
        response_format=fmt["type"] if fmt is not None else None,
        response_schema=spec.get("schema") if isinstance(spec, dict) else None,
        turns=_turns(messages),
        raw=raw,
    )


def _openai_tools(body: Mapping[str, Any]) -> tuple[Tool, ...]:
    tools = body.get("tools")
    if tools is not None:
        return tuple(_function(tool["function"]) for tool in tools) or _NO_TOOLS
    functions = body.get("functions")  # the API's older spelling, still sent by some clients
    if functions is None:
        return _NO_TOOLS
    if not isinstance(functions, list):
        raise ClientRequestError("functions: must be an array")
    out = []
    for k, function in enumerate(functions):
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise ClientRequestError(f"functions.{k}.name: required, must be a non-empty string")
        if function.get("parameters") is not None and not isinstance(function["parameters"], dict):
            raise ClientRequestError(f"functions.{k}.parameters: must be an object")
        out.append(_function(function))
    return tuple(out)


def _function(function: Mapping[str, Any]) -> Tool:
    description = function.get("description")
    strict = function.get("strict")
    return Tool(
        function["name"],
        description if isinstance(description, str) else "",
        function.get("parameters"),
        strict if isinstance(strict, bool) else None,
    )


def _openai_tool_choice(body: Mapping[str, Any]) -> ToolChoice | None:
    choice = body.get("tool_choice")
    if choice is None:
        legacy = body.get("function_call")  # "auto", "none" or {"name": ...}
        if isinstance(legacy, dict) and isinstance(legacy.get("name"), str) and legacy["name"]:
            return ToolChoice("tool", legacy["name"])
        choice = legacy if legacy in ("auto", "none") else None
    if choice is None:
        return None
    if choice == "required":
        return ToolChoice("any")
    if isinstance(choice, str):
        return ToolChoice(choice)
    if choice["type"] == "function":
        return ToolChoice("tool", choice["function"]["name"])
    allowed = choice.get("allowed_tools")  # type "allowed_tools": a mode and the tools it allows
    mode = allowed.get("mode") if isinstance(allowed, dict) else None
    tools = allowed.get("tools") if isinstance(allowed, dict) else None
    if mode not in ("auto", "required") or not isinstance(tools, list):
        raise ClientRequestError("tool_choice.allowed_tools: needs mode auto|required and a tools array")
    names = tuple(
        t["function"]["name"]
        for t in tools
        if isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)
    )
    return ToolChoice("any" if mode == "required" else "auto", allowed=names)


def _responses(body: Mapping[str, Any], raw: bytes) -> ResponsesRequest:
    items = body["input"]
    if isinstance(items, str):
        items = ({"type": "message", "role": "user", "content": items},)
    functions: list[Tool] = []
    hosted: list[Mapping[str, Any]] = []
    for tool in body.get("tools") or ():
        if tool["type"] == "function":
            functions.append(_function(tool))
        else:
            hosted.append(tool)
    choice = body.get("tool_choice")
    hosted_choice = None
    if choice == "required":
        tool_choice: ToolChoice | None = ToolChoice("any")
    elif isinstance(choice, str):
        tool_choice = ToolChoice(choice)
    elif choice is None:
        tool_choice = None
    elif choice["type"] in ("function", "custom"):
        tool_choice = ToolChoice("tool", choice["name"])
    elif choice["type"] == "allowed_tools":
        names = tuple(
            tool["name"]
            for tool in choice["tools"]
            if isinstance(tool, dict)
            and tool.get("type") in ("function", "custom")
            and isinstance(tool.get("name"), str)
        )
        tool_choice = ToolChoice("any" if choice["mode"] == "required" else "auto", allowed=names)
    else:
        tool_choice, hosted_choice = None, choice["type"]
    reasoning = body.get("reasoning") or {}
    fmt = (body.get("text") or {}).get("format")
    user = body.get("user")
    instructions = body.get("instructions")
    return ResponsesRequest(
        body=body,
        model=_model(body),
        stream=body.get("stream") is True,
        max_tokens=body.get("max_output_tokens"),
        items=items,
        instructions=instructions if instructions else None,
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        user=user if isinstance(user, str) and user else None,
        tools=tuple(functions) or _NO_TOOLS,
        hosted_tools=tuple(hosted),
        tool_choice=tool_choice,
        hosted_choice=hosted_choice,
        parallel_tool_calls=body.get("parallel_tool_calls") is not False,
        reasoning_effort=reasoning.get("effort"),
        reasoning_summary=reasoning.get("summary"),
        response_format=fmt["type"] if fmt is not None else None,
        response_schema=fmt.get("schema") if fmt is not None and fmt["type"] == "json_schema" else None,
        turns=_responses_turns(items),
        raw=raw,
    )


def _responses_turns(items: Sequence[Mapping[str, Any]]) -> int:
    """Assistant turns: runs of assistant messages and function calls (one Anthropic assistant
    message each, as the translators merge them)."""
    turns, in_turn = 0, False
    for item in items:
        kind = item.get("type", "message")
        assistant = kind in ("function_call", "custom_tool_call") or (
            kind == "message" and item.get("role") == "assistant"
        )
        if assistant and not in_turn:
            turns += 1
        if kind != "reasoning":
            in_turn = assistant
    return turns


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")  # extproc.plan answers a request without one before parsing it
    return model if isinstance(model, str) else ""


def _turns(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(1 for message in messages if message["role"] == "assistant")
