"""An Anthropic Messages request -> the body of Bedrock's Converse API (extproc.translate.bedrock_converse
sends it and reads the answer).

Request: ``system`` -> ``system`` text blocks; messages -> ``messages`` (user/assistant; consecutive
messages of one role merged, as Converse wants the roles to alternate; ``system``-role messages
inside ``messages`` (Claude Code's environment block) -> text of the user turn where they stand);
text / base64 image / base64 document (PDF, text types) -> text / image / document blocks, text
documents and search results -> text; assistant ``tool_use`` -> ``toolUse``; ``tool_result`` ->
``toolResult`` (text, images, documents; ``status: error`` for ``is_error``); tools ->
``toolConfig.tools[].toolSpec``; tool_choice auto / any / tool -> ``toolChoice`` (none: no tools,
unless the history needs them); max_tokens (clamped) / temperature / top_p / stop_sequences ->
``inferenceConfig``; ``output_config.format`` -> ``outputConfig.textFormat`` (Converse's structured
output). What Converse cannot take is refused with a 400 (image or document URLs other than
``s3://``, ``file`` sources, image types other than png/jpeg/gif/webp). What every other non-Anthropic
translator drops is dropped here too: thinking and Anthropic server-tool blocks in the history,
Anthropic's server tools, ``thinking`` and ``top_k`` (no vendor-neutral Converse field), metadata,
cache_control, citations.

Pure: the typed request in, a dict out, or ClientRequestError for what Converse cannot take.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from extproc.translate import anthropic_schema as A
from extproc.translate.base import ClientRequestError, Target
from extproc.translate.client_request import AnthropicRequest, Tool
from extproc.translate.wire import short

IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
DOCUMENT_FORMATS = {
    "application/pdf": "pdf",
    "text/plain": "txt",
    "text/csv": "csv",
    "text/html": "html",
    "text/markdown": "md",
}
# Converse allows a document name only these characters, and no run of whitespace.
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9\s()\[\]-]+")
_SPACES = re.compile(r"\s+")


class ConverseRequest:
    """An Anthropic request -> a Converse body. Counts base64 payload characters and images so the
    caller can estimate input tokens without counting a megabyte of base64 as text."""

    def __init__(self) -> None:
        self.binary_chars = 0
        self.images = 0
        self._documents = 0

    def build(self, request: AnthropicRequest, target: Target) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": self.messages(request.messages)}
        if request.system:
            out["system"] = [{"text": text} for text in request.system]
        config: dict[str, Any] = {}
        max_tokens = request.max_tokens
        if max_tokens is not None and target.max_output_tokens is not None:
            max_tokens = min(max_tokens, target.max_output_tokens)
        if max_tokens is not None:
            config["maxTokens"] = max_tokens
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.top_p is not None:
            config["topP"] = request.top_p
        stops = [stop for stop in request.stop if stop]  # Converse refuses blank ones
        if stops:
            config["stopSequences"] = stops
        if config:
            out["inferenceConfig"] = config
        tool_config = _tool_config(request, _history_tools(out["messages"]))
        if tool_config is not None:
            out["toolConfig"] = tool_config
        if request.answer_schema is not None:
            schema = orjson.dumps(request.answer_schema).decode()  # Converse takes the schema as a string
            structure = {"jsonSchema": {"schema": schema, "name": "answer"}}
            out["outputConfig"] = {"textFormat": {"type": "json_schema", "structure": structure}}
        return out

    def messages(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, message in enumerate(messages):
            role, content = message["role"], message["content"]
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            if role == "assistant":
                blocks = self.assistant(i, content)
            elif role == "user":
                blocks = self.user(i, content)
            else:  # "system": Claude Code's environment block after the first user turn
                blocks = [{"text": text} for text in A.system_texts(content, f"messages.{i}.content")]
                role = "user"
            if not blocks:
                continue  # e.g. a turn that only held thinking: Converse refuses an empty content
            if out and out[-1]["role"] == role:
                out[-1]["content"].extend(blocks)  # Converse wants user and assistant turns to alternate
            else:
                out.append({"role": role, "content": blocks})
        if not out:
            raise ClientRequestError("messages: no message has any content Bedrock's Converse API can take")
        return out

    def assistant(self, i: int, content: Sequence[Any]) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            kind = block["type"]
            if kind == "text":
                if block["text"].strip():  # Converse refuses a blank text block
                    blocks.append({"text": block["text"]})
            elif kind == "tool_use":
                use = {"toolUseId": block["id"], "name": block["name"], "input": block.get("input") or {}}
                blocks.append({"toolUse": use})
            elif kind not in A.DROPPED_BLOCKS:
                raise ClientRequestError(f"messages.{i}.content.{j}: unknown block type {short(kind)}")
        return blocks

    def user(self, i: int, content: Sequence[Any]) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            kind = block["type"]
            path = f"messages.{i}.content.{j}"
            if kind == "tool_result":
                blocks.append(self.tool_result(path, block))
            elif kind in ("text", "image", "document", "search_result"):
                blocks.extend(self.content(path, block))
            elif kind not in A.DROPPED_BLOCKS:
                raise ClientRequestError(f"{path}: unknown block type {short(kind)}")
        return blocks

    def content(self, path: str, block: Any) -> list[dict[str, Any]]:
        """A user-side block (text, image, document, search result, tool reference) -> Converse blocks."""
        if not isinstance(block, dict):
            raise ClientRequestError(f"{path}: must be an object")
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise ClientRequestError(f"{path}.text: required, must be a string")
            return [{"text": text}] if text.strip() else []  # Converse refuses a blank text block
        if kind == "image":
            return [{"image": self.image(path, block.get("source"))}]
        if kind == "document":
            return self.document(path, block)
        if kind == "search_result":
            pieces = [block.get("title"), block.get("source")]
            pieces += [b.get("text") for b in block.get("content") or () if isinstance(b, dict)]
            text = "\n".join(p for p in pieces if isinstance(p, str) and p)
            return [{"text": text}] if text else []
        if kind == "tool_reference":
            return [{"text": A.tool_reference_text(path, block)}]
        raise ClientRequestError(f"{path}: unknown block type {short(kind)}")

    def image(self, path: str, source: Any) -> dict[str, Any]:
        if not isinstance(source, dict):
            raise ClientRequestError(f"{path}.source: required, must be an object")
        self.images += 1
        media_type = source.get("media_type")
        fmt = IMAGE_FORMATS.get(media_type) if isinstance(media_type, str) else None
        if source.get("type") == "url":
            url = _s3_url(path, source)
            fmt = IMAGE_FORMATS.get(_guess_type(url, "image/jpeg"))
            if fmt is None:
                raise ClientRequestError(
                    f"{path}.source.url: Bedrock's Converse API takes png, jpeg, gif or webp images"
                )
            return {"format": fmt, "source": {"s3Location": {"uri": url}}}
        data = self._base64(path, source)
        if fmt is None:
            raise ClientRequestError(
                f"{path}.source.media_type: {short(media_type)} is not an image type Bedrock's Converse API takes"
                " (image/png, image/jpeg, image/gif, image/webp)"
            )
        return {"format": fmt, "source": {"bytes": data}}

    def document(self, path: str, block: Mapping[str, Any]) -> list[dict[str, Any]]:
        source = block.get("source")
        if not isinstance(source, dict):
            raise ClientRequestError(f"{path}.source: required, must be an object")
        title = block.get("title") if isinstance(block.get("title"), str) else None
        kind = source.get("type")
        if kind == "text":
            data = source.get("data")
            if not isinstance(data, str):
                raise ClientRequestError(f"{path}.source.data: required, must be a string")
            text = f"{title}\n\n{data}" if title else data
            return [{"text": text}] if text else []
        if kind == "content":
            inner = source.get("content")
            if isinstance(inner, str):
                return [{"text": inner}] if inner else []
            if not isinstance(inner, list):
                raise ClientRequestError(f"{path}.source.content: must be a string or an array of blocks")
            return [b for k, item in enumerate(inner) for b in self.content(f"{path}.source.content.{k}", item)]
        self._documents += 1
        name = _document_name(title, self._documents)
        if kind == "url":
            url = _s3_url(path, source)
            fmt = DOCUMENT_FORMATS.get(_guess_type(url, "application/pdf"), "pdf")
            return [{"document": {"format": fmt, "name": name, "source": {"s3Location": {"uri": url}}}}]
        media_type = source.get("media_type")
        data = self._base64(path, source)
        fmt = DOCUMENT_FORMATS.get(media_type) if isinstance(media_type, str) else None
        if fmt is None:
            raise ClientRequestError(
                f"{path}.source.media_type: {short(media_type)} is not a document type Converse takes"
            )
        self.images += 1  # a page or so of tokens: the estimate only
        return [{"document": {"format": fmt, "name": name, "source": {"bytes": data}}}]

    def tool_result(self, path: str, block: Mapping[str, Any]) -> dict[str, Any]:
        content = block.get("content")
        parts: list[dict[str, Any]] = []
        if isinstance(content, str):
            parts = [{"text": content}] if content else []
        elif isinstance(content, list):
            for k, inner in enumerate(content):
                parts.extend(self.content(f"{path}.content.{k}", inner))
        elif content is not None:
            raise ClientRequestError(f"{path}.content: must be a string or an array of content blocks")
        if not parts:
            # A command that printed nothing is a common result; Converse refuses an empty one.
            parts = [{"text": "(no output)"}]
        result: dict[str, Any] = {"toolUseId": block["tool_use_id"], "content": parts}
        if block.get("is_error") is True:
            result["status"] = "error"  # "success" is the default, and not every model takes the field
        return {"toolResult": result}

    def _base64(self, path: str, source: Mapping[str, Any]) -> str:
        kind = source.get("type")
        if kind == "file":
            raise ClientRequestError(f"{path}.source: file_id sources cannot be sent to Bedrock's Converse API")
        if kind != "base64":
            raise ClientRequestError(f"{path}.source.type: {short(kind)} is not supported for Bedrock's Converse API")
        data = source.get("data")
        if not isinstance(data, str) or not data:
            raise ClientRequestError(f"{path}.source.data: required, must be a base64 string")
        self.binary_chars += len(data)
        return data


def _s3_url(path: str, source: Mapping[str, Any]) -> str:
    """Converse reads media as bytes or from S3, never from the web."""
    url = source.get("url")
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise ClientRequestError(
            f"{path}.source.url: Bedrock's Converse API cannot fetch URLs (only s3:// locations); send the data as base64"
        )
    return url


def _guess_type(url: str, default: str) -> str:
    extension = url.rpartition(".")[2].lower()
    known = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}
    known |= {
        "pdf": "application/pdf",
        "txt": "text/plain",
        "csv": "text/csv",
        "html": "text/html",
        "md": "text/markdown",
    }
    return known.get(extension, default)


def _document_name(title: str | None, n: int) -> str:
    name = _SPACES.sub(" ", _NAME_UNSAFE.sub(" ", title or "")).strip()[:100]
    return f"{name} {n}" if name else f"document {n}"  # numbered: names must differ within a request


def _history_tools(messages: Iterable[Mapping[str, Any]]) -> list[str]:
    """Names of the tools the history's toolUse blocks called, in order."""
    names: list[str] = []
    for message in messages:
        for block in message["content"]:
            use = block.get("toolUse")
            if use is not None and use["name"] not in names:
                names.append(use["name"])
    return names


def _tool_config(request: AnthropicRequest, history: list[str]) -> dict[str, Any] | None:
    """Converse's toolConfig. Converse refuses toolUse and toolResult blocks without one, so a
    history with tool calls keeps the specs of the tools it called even when no tools (or tool
    choice none, which Converse cannot say) are offered this turn."""
    choice = request.tool_choice
    tools: Sequence[Tool] = request.tools if choice is None or choice.mode != "none" else ()
    offered = {tool.name for tool in tools}
    specs = [_tool_spec(tool) for tool in tools]
    if not specs:
        specs = [_tool_spec(Tool(name)) for name in history]
    if not specs:
        return None
    config: dict[str, Any] = {"tools": specs}
    if tools and choice is not None and choice.mode in ("auto", "any"):
        config["toolChoice"] = {choice.mode: {}}
    elif tools and choice is not None and choice.mode == "tool" and choice.name in offered:
        config["toolChoice"] = {"tool": {"name": choice.name}}
    return config


def _tool_spec(tool: Tool) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": tool.name}
    if tool.description:
        spec["description"] = tool.description  # Converse refuses an empty one
    spec["inputSchema"] = {"json": dict(tool.schema) if tool.schema is not None else {"type": "object"}}
    return {"toolSpec": spec}
