"""Each client API's request checked once, before any provider's translator sees it.

Whatever provider a request is routed to, the same malformed request gets the same 400 with the
same message (and a well-formed one is refused by none): the checks here run first (through
extproc.translate.client_request.parse_request, from extproc.plan), so the pair translators read
only requests that passed them and check nothing these check. They
check the shapes the client API defines (types, required fields, the values an enum allows) and
nothing a provider merely cannot do (that is the translator's to say). Unknown fields are not
errors: a client may send what a newer API version accepts.

Pure: dicts in, ``ClientRequestError`` out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from extproc.translate.anthropic_schema import answer_schema, system_texts
from extproc.translate.base import Api, ClientRequestError
from extproc.translate.wire import short

_ANTHROPIC_ROLES = ("user", "assistant", "system")
_ANTHROPIC_TOOL_CHOICES = ("auto", "any", "tool", "none")
_USER_ONLY_BLOCKS = ("image", "document", "tool_result", "search_result")
_THINKING_TYPES = ("enabled", "adaptive", "disabled")
_OPENAI_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_OPENAI_TOOL_CHOICES = ("auto", "required", "none")
_REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
_RESPONSE_FORMATS = ("text", "json_object", "json_schema")
_RESPONSES_ROLES = ("user", "assistant", "system", "developer")
_RESPONSES_TEXT_PARTS = ("input_text", "output_text")
_RESPONSES_PARTS = (*_RESPONSES_TEXT_PARTS, "refusal", "input_image", "input_file")
_REASONING_SUMMARIES = ("auto", "concise", "detailed")
# Stored state (previous_response_id, conversations, item references, background runs) comes later.
STORED_RESPONSES_DISABLED = "stored responses are not enabled on this gateway: send the whole conversation in input"


def check_request(api: Api, body: Mapping[str, Any], counting: bool = False) -> None:
    """Raise ClientRequestError for a request ``api`` itself would refuse. ``counting``: a
    count_tokens request (no max_tokens)."""
    if api is Api.ANTHROPIC or api is Api.BEDROCK:  # a Bedrock client's body is Anthropic's (from_bedrock)
        check_anthropic(body, counting)
    elif api is Api.OPENAI:
        check_openai(body)
    elif api is Api.RESPONSES:
        check_responses(body)


# --- Anthropic Messages ---------------------------------------------------------------------------


def check_anthropic(body: Mapping[str, Any], counting: bool = False) -> None:
    if not counting:
        _positive_int(body, "max_tokens", required=True)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ClientRequestError("messages: required, must be a non-empty array")
    called: set[str] = set()  # tool_use ids so far: a tool_result must answer one of them
    for i, message in enumerate(messages):
        _anthropic_message(i, message, called)
    system_texts(body.get("system"))
    _anthropic_tools(body.get("tools"))
    _anthropic_tool_choice(body.get("tool_choice"))
    _thinking(body.get("thinking"))
    for key in ("temperature", "top_p"):
        _number(body, key)
    top_k = body.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise ClientRequestError("top_k: must be a non-negative integer")
    _strings(body, "stop_sequences")
    _object(body, "metadata")
    output_config = _object(body, "output_config")
    if output_config is not None and not isinstance(output_config.get("effort", ""), str):
        raise ClientRequestError("output_config.effort: must be a string")
    answer_schema(body)


def _anthropic_message(i: int, message: Any, called: set[str]) -> None:
    if not isinstance(message, dict):
        raise ClientRequestError(f"messages.{i}: must be an object")
    role = message.get("role")
    if role not in _ANTHROPIC_ROLES:
        raise ClientRequestError(f"messages.{i}.role: must be 'user', 'assistant' or 'system', got {short(role)}")
    content = message.get("content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise ClientRequestError(f"messages.{i}.content: must be a string or an array of content blocks")
    # Per request this walks every block of the conversation (hundreds in a long agent session):
    # the usual blocks take the fewest tests, and a block's path is only spelled out for an error.
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise ClientRequestError(f"messages.{i}.content.{j}.text: required, must be a string")
        elif not isinstance(kind, str):
            raise ClientRequestError(f"messages.{i}.content.{j}: must be an object with a string 'type'")
        elif kind == "tool_use":
            well_formed = _is_name(block.get("id")) and _is_name(block.get("name"))
            if role == "assistant" and well_formed and isinstance(block.get("input", {}), dict):
                called.add(block["id"])
            else:
                _anthropic_tool_use(f"messages.{i}.content.{j}", block, role, called)
        elif kind == "tool_result":
            # The name test first: an unhashable id (a list) cannot be looked up in ``called``.
            if role == "assistant" or not _is_name(block.get("tool_use_id")) or block["tool_use_id"] not in called:
                _anthropic_tool_result(f"messages.{i}.content.{j}", block, role, called)
        elif kind in _USER_ONLY_BLOCKS:
            path = f"messages.{i}.content.{j}"
            if role == "assistant":
                raise ClientRequestError(f"{path}: {kind} blocks are only allowed in user messages")
            if kind in ("image", "document") and not isinstance(block.get("source"), dict):
                raise ClientRequestError(f"{path}.source: required, must be an object")


def _anthropic_tool_use(path: str, block: dict[str, Any], role: Any, called: set[str]) -> None:
    """A tool_use block that failed the quick test: raise what is wrong with it."""
    if role != "assistant":
        raise ClientRequestError(f"{path}: tool_use blocks belong in assistant messages")
    for field in ("id", "name"):
        _required_name(block.get(field), f"{path}.{field}")
    raise ClientRequestError(f"{path}.input: must be an object")


def _anthropic_tool_result(path: str, block: dict[str, Any], role: Any, called: set[str]) -> None:
    """A tool_result block that failed the quick test: raise what is wrong with it."""
    if role == "assistant":
        raise ClientRequestError(f"{path}: tool_result blocks are only allowed in user messages")
    answered = block.get("tool_use_id")
    _required_name(answered, f"{path}.tool_use_id")
    if answered not in called:
        raise ClientRequestError(f"{path}.tool_use_id: {short(answered)} answers no earlier tool_use block")


def _anthropic_tools(tools: Any) -> None:
    for k, tool in _objects(tools, "tools"):
        if tool.get("type") not in (None, "custom"):
            continue  # an Anthropic-defined tool (web search, bash...): its shape is Anthropic's to check
        _required_name(tool.get("name"), f"tools.{k}.name")
        if not isinstance(tool.get("input_schema"), dict):
            raise ClientRequestError(f"tools.{k}.input_schema: required, must be an object")


def _anthropic_tool_choice(choice: Any) -> None:
    if choice is None:
        return
    if not isinstance(choice, dict):
        raise ClientRequestError("tool_choice: must be an object")
    kind = choice.get("type")
    if kind not in _ANTHROPIC_TOOL_CHOICES:
        raise ClientRequestError(f"tool_choice.type: must be 'auto', 'any', 'tool' or 'none', got {short(kind)}")
    if kind == "tool" and (not isinstance(choice.get("name"), str) or not choice["name"]):
        raise ClientRequestError("tool_choice.name: required when type is 'tool'")


def _thinking(thinking: Any) -> None:
    if thinking is None:
        return
    if not isinstance(thinking, dict):
        raise ClientRequestError("thinking: must be an object")
    kind = thinking.get("type")
    if kind not in _THINKING_TYPES:
        raise ClientRequestError(f"thinking.type: must be 'enabled', 'adaptive' or 'disabled', got {short(kind)}")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
            raise ClientRequestError("thinking.budget_tokens: required, must be a non-negative integer")


# --- OpenAI Chat Completions ----------------------------------------------------------------------


def check_openai(body: Mapping[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ClientRequestError("messages: required, must be a non-empty array")
    called: set[str] = set()  # tool call ids so far: a tool message must answer one of them
    for i, message in enumerate(messages):
        _openai_message(i, message, called)
    for key in ("max_tokens", "max_completion_tokens"):
        _positive_int(body, key)
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ClientRequestError("seed: must be an integer")
    n = body.get("n")
    if n is not None and n != 1:
        raise ClientRequestError("n: only 1 choice is supported")
    _openai_tools(body.get("tools"))
    _openai_tool_choice(body.get("tool_choice"))
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        _number(body, key)
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str):
        _strings(body, "stop", "must be a string or an array of strings")
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in _REASONING_EFFORTS:
        raise ClientRequestError(
            f"reasoning_effort: must be one of {', '.join(_REASONING_EFFORTS)}, got {short(effort)}"
        )
    _response_format(body.get("response_format"))
    _object(body, "stream_options")


def _openai_message(i: int, message: Any, called: set[str]) -> None:
    if not isinstance(message, dict):
        raise ClientRequestError(f"messages.{i}: must be an object")
    role = message.get("role")
    if role not in _OPENAI_ROLES:
        raise ClientRequestError(f"messages.{i}.role: must be one of {', '.join(_OPENAI_ROLES)}, got {short(role)}")
    content = message.get("content")
    if content is None and role not in ("assistant", "function"):
        raise ClientRequestError(f"messages.{i}.content: required for role {short(role)}")
    if content is not None and not isinstance(content, str):
        if not isinstance(content, list):
            raise ClientRequestError(f"messages.{i}.content: must be a string, an array of parts or null")
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise ClientRequestError(f"messages.{i}.content.{j}: must be an object with a string 'type'")
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise ClientRequestError(f"messages.{i}.content.{j}.text: required, must be a string")
    if role == "tool":
        answered = message.get("tool_call_id")
        _required_name(answered, f"messages.{i}.tool_call_id")
        if answered not in called:
            raise ClientRequestError(f"messages.{i}.tool_call_id: {short(answered)} answers no earlier tool call")
    calls = message.get("tool_calls")
    if calls is None:
        return
    if not isinstance(calls, list):
        raise ClientRequestError(f"messages.{i}.tool_calls: must be an array")
    for k, call in enumerate(calls):
        path = f"messages.{i}.tool_calls.{k}"
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise ClientRequestError(f"{path}: must be a function tool call")
        _required_name(call.get("id"), f"{path}.id")
        function = call.get("function")
        _required_name(function.get("name") if isinstance(function, dict) else None, f"{path}.function.name")
        called.add(call["id"])


def _openai_tools(tools: Any) -> None:
    for k, tool in _objects(tools, "tools"):
        if tool.get("type", "function") != "function":
            raise ClientRequestError(f"tools.{k}.type: only 'function' tools are supported")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise ClientRequestError(f"tools.{k}.function: required, must be an object")
        _required_name(function.get("name"), f"tools.{k}.function.name")
        if function.get("parameters") is not None and not isinstance(function["parameters"], dict):
            raise ClientRequestError(f"tools.{k}.function.parameters: must be an object")


def _openai_tool_choice(choice: Any) -> None:
    if choice is None or choice in _OPENAI_TOOL_CHOICES:
        return
    if not isinstance(choice, dict):
        raise ClientRequestError(f"tool_choice: must be 'auto', 'required', 'none' or an object, got {short(choice)}")
    kind = choice.get("type")
    if kind == "function":
        function = choice.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise ClientRequestError("tool_choice.function.name: required when type is 'function'")
    elif kind != "allowed_tools":
        raise ClientRequestError(f"tool_choice.type: must be 'function' or 'allowed_tools', got {short(kind)}")


def _response_format(fmt: Any) -> None:
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") not in _RESPONSE_FORMATS:
        kind = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise ClientRequestError(
            f"response_format.type: must be one of {', '.join(_RESPONSE_FORMATS)}, got {short(kind)}"
        )
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise ClientRequestError("response_format.json_schema.schema: must be an object")


# --- OpenAI Responses -----------------------------------------------------------------------------


def check_responses(body: Mapping[str, Any]) -> None:
    """The Responses API's own rules. Which tools and items a provider can take (built-in tools,
    computer calls...) is the translator's to say: a Responses provider takes them all."""
    for key in ("previous_response_id", "conversation"):
        if body.get(key) is not None:
            raise ClientRequestError(f"{key}: {STORED_RESPONSES_DISABLED}")
    if body.get("background") is True:
        raise ClientRequestError(f"background: {STORED_RESPONSES_DISABLED}")
    items = body.get("input")
    if isinstance(items, str):
        if not items:
            raise ClientRequestError("input: must not be empty")
    elif isinstance(items, list) and items:
        called: set[str] = set()  # function_call ids so far: an output must answer one of them
        for i, item in enumerate(items):
            _responses_item(i, item, called)
    else:
        raise ClientRequestError("input: required, must be a string or a non-empty array of input items")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ClientRequestError("instructions: must be a string")
    _positive_int(body, "max_output_tokens")
    for key in ("temperature", "top_p"):
        _number(body, key)
    for key in ("stream", "store", "parallel_tool_calls"):
        if body.get(key) is not None and not isinstance(body[key], bool):
            raise ClientRequestError(f"{key}: must be a boolean")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise ClientRequestError("user: must be a string")
    _object(body, "metadata")
    _strings(body, "include")
    _responses_tools(body.get("tools"))
    _responses_tool_choice(body.get("tool_choice"))
    reasoning = _object(body, "reasoning") or {}
    effort, summary = reasoning.get("effort"), reasoning.get("summary")
    if effort is not None and effort not in _REASONING_EFFORTS:
        raise ClientRequestError(
            f"reasoning.effort: must be one of {', '.join(_REASONING_EFFORTS)}, got {short(effort)}"
        )
    if summary is not None and summary not in _REASONING_SUMMARIES:
        raise ClientRequestError(
            f"reasoning.summary: must be one of {', '.join(_REASONING_SUMMARIES)}, got {short(summary)}"
        )
    text = _object(body, "text") or {}
    fmt = text.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") not in _RESPONSE_FORMATS:
        kind = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise ClientRequestError(f"text.format.type: must be one of {', '.join(_RESPONSE_FORMATS)}, got {short(kind)}")
    if fmt["type"] == "json_schema":
        _required_name(fmt.get("name"), "text.format.name")
        if not isinstance(fmt.get("schema"), dict):
            raise ClientRequestError("text.format.schema: required, must be an object")


def _responses_item(i: int, item: Any, called: set[str]) -> None:
    path = f"input.{i}"
    if not isinstance(item, dict):
        raise ClientRequestError(f"{path}: must be an object")
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if role not in _RESPONSES_ROLES:
            raise ClientRequestError(f"{path}.role: must be one of {', '.join(_RESPONSES_ROLES)}, got {short(role)}")
        content = item.get("content")
        if isinstance(content, str):
            return
        if not isinstance(content, list):
            raise ClientRequestError(f"{path}.content: required, must be a string or an array of content parts")
        for j, part in enumerate(content):
            _responses_part(f"{path}.content.{j}", part)
    elif kind == "function_call":
        for field in ("call_id", "name"):
            _required_name(item.get(field), f"{path}.{field}")
        if not isinstance(item.get("arguments"), str):
            raise ClientRequestError(f"{path}.arguments: required, must be a string")
        called.add(item["call_id"])
    elif kind == "custom_tool_call":
        for field in ("call_id", "name"):
            _required_name(item.get(field), f"{path}.{field}")
        if not isinstance(item.get("input"), str):
            raise ClientRequestError(f"{path}.input: required, must be a string")
        called.add(item["call_id"])
    elif kind in ("function_call_output", "custom_tool_call_output"):
        answered = item.get("call_id")
        _required_name(answered, f"{path}.call_id")
        if answered not in called:
            raise ClientRequestError(f"{path}.call_id: {short(answered)} answers no earlier tool call")
        output = item.get("output")
        if isinstance(output, list):
            for j, part in enumerate(output):
                _responses_part(f"{path}.output.{j}", part)
        elif not isinstance(output, str):
            raise ClientRequestError(f"{path}.output: required, must be a string or an array of content parts")
    elif kind == "reasoning":
        summary = item.get("summary", [])
        if not isinstance(summary, list) or not all(
            isinstance(part, dict) and isinstance(part.get("text"), str) for part in summary
        ):
            raise ClientRequestError(f"{path}.summary: must be an array of summary_text parts")
        if item.get("encrypted_content") is not None and not isinstance(item["encrypted_content"], str):
            raise ClientRequestError(f"{path}.encrypted_content: must be a string")
    elif kind == "item_reference":
        raise ClientRequestError(f"{path}: {STORED_RESPONSES_DISABLED}")
    elif not isinstance(kind, str) or not kind:
        raise ClientRequestError(f"{path}.type: required, must be a string")


def _responses_part(path: str, part: Any) -> None:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in _RESPONSES_TEXT_PARTS:
        if not isinstance(part.get("text"), str):
            raise ClientRequestError(f"{path}.text: required, must be a string")
    elif kind == "refusal":
        if not isinstance(part.get("refusal"), str):
            raise ClientRequestError(f"{path}.refusal: required, must be a string")
    elif kind == "input_image":
        if not any(isinstance(part.get(key), str) and part[key] for key in ("image_url", "file_id")):
            raise ClientRequestError(f"{path}: an input_image needs an image_url or a file_id")
    elif kind == "input_file":
        if not any(isinstance(part.get(key), str) and part[key] for key in ("file_data", "file_url", "file_id")):
            raise ClientRequestError(f"{path}: an input_file needs file_data, file_url or a file_id")
    elif not isinstance(kind, str):
        raise ClientRequestError(f"{path}: must be an object with a string 'type'")
    else:
        raise ClientRequestError(f"{path}.type: must be one of {', '.join(_RESPONSES_PARTS)}, got {short(kind)}")


def _responses_tools(tools: Any) -> None:
    for k, tool in _objects(tools, "tools"):
        kind = tool.get("type")
        if kind == "function":
            _responses_function(f"tools.{k}", tool)
        elif kind == "namespace":
            for n, inner in _objects(tool.get("tools"), f"tools.{k}.tools"):
                _responses_function(f"tools.{k}.tools.{n}", inner)
        elif kind == "custom":
            _required_name(tool.get("name"), f"tools.{k}.name")
            if tool.get("format") is not None and not isinstance(tool["format"], dict):
                raise ClientRequestError(f"tools.{k}.format: must be an object")
        elif not isinstance(kind, str) or not kind:
            raise ClientRequestError(f"tools.{k}.type: required, must be a string")


def _responses_function(path: str, tool: Mapping[str, Any]) -> None:
    _required_name(tool.get("name"), f"{path}.name")
    if tool.get("parameters") is not None and not isinstance(tool["parameters"], dict):
        raise ClientRequestError(f"{path}.parameters: must be an object")
    if tool.get("strict") is not None and not isinstance(tool["strict"], bool):
        raise ClientRequestError(f"{path}.strict: must be a boolean")


def _responses_tool_choice(choice: Any) -> None:
    if choice is None or choice in _OPENAI_TOOL_CHOICES:
        return
    if not isinstance(choice, dict):
        raise ClientRequestError(f"tool_choice: must be 'auto', 'required', 'none' or an object, got {short(choice)}")
    kind = choice.get("type")
    if kind in ("function", "custom"):
        _required_name(choice.get("name"), "tool_choice.name")
    elif kind == "allowed_tools":
        if choice.get("mode") not in ("auto", "required") or not isinstance(choice.get("tools"), list):
            raise ClientRequestError("tool_choice: allowed_tools needs mode 'auto' or 'required' and a tools array")
    elif not isinstance(kind, str) or not kind:
        raise ClientRequestError("tool_choice.type: required, must be a string")


# --- shared ---------------------------------------------------------------------------------------


def _objects(value: Any, path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """An optional array of objects (tools), each with its index, checked as it goes (an earlier
    item's own error is reported before a later malformed one); nothing when absent."""
    if value is None:
        return
    if not isinstance(value, list):
        raise ClientRequestError(f"{path}: must be an array")
    for k, item in enumerate(value):
        if not isinstance(item, dict):
            raise ClientRequestError(f"{path}.{k}: must be an object")
        yield k, item


def _is_name(value: Any) -> bool:
    """Ids and names: a non-empty string."""
    return isinstance(value, str) and value != ""


def _required_name(value: Any, path: str) -> None:
    if not _is_name(value):
        raise ClientRequestError(f"{path}: required, must be a non-empty string")


def _positive_int(body: Mapping[str, Any], key: str, required: bool = False) -> None:
    value = body.get(key)
    if value is None and not required:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ClientRequestError(f"{key}: {'required, ' if required else ''}must be a positive integer")


def _number(body: Mapping[str, Any], key: str) -> None:
    value = body.get(key)
    if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
        raise ClientRequestError(f"{key}: must be a number")


def _strings(body: Mapping[str, Any], key: str, message: str = "must be an array of strings") -> None:
    value = body.get(key)
    if value is not None and (not isinstance(value, list) or not all(isinstance(s, str) for s in value)):
        raise ClientRequestError(f"{key}: {message}")


def _object(body: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = body.get(key)
    if value is not None and not isinstance(value, dict):
        raise ClientRequestError(f"{key}: must be an object")
    return value
