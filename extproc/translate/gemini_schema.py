"""JSON Schema -> the OpenAPI-3.0 subset Gemini accepts in ``functionDeclarations[].parameters`` and
``generationConfig.responseSchema``.

Gemini's ``Schema`` is a protobuf message, so any key it does not know is a 400 ("Invalid JSON payload
received. Unknown name ...") and ``type`` cannot be a list ("Proto field is not repeating"). Tool
schemas written for Anthropic / OpenAI (Claude Code's, MCP servers', Pydantic's) routinely carry
``$schema``, ``additionalProperties``, ``$ref``/``$defs``, ``default``, ``examples``,
``exclusiveMinimum``, ``const``, type arrays and ``oneOf``. The cleanup is therefore an allow-list:
keys Gemini knows are kept (after fixing their values), everything else is rewritten or dropped.

Rewrites (semantics kept where Gemini can express them):
- ``type: [T, "null"]`` -> ``type: T, nullable: true``; ``type: [A, B]`` -> ``anyOf`` of both.
- ``anyOf``/``oneOf`` of ``[X, {type: null}]`` -> X with ``nullable: true``; other ``oneOf`` -> ``anyOf``;
  ``allOf`` -> its members merged.
- ``$ref`` to ``#/$defs/..`` or ``#/definitions/..`` is inlined (a cycle becomes a bare ``object``).
- ``const: v`` -> ``enum: [v]``; enums are string-only in Gemini: non-string enum values are moved into
  the description instead.
- ``exclusiveMinimum: n`` on an integer -> ``minimum: n + 1`` (exact); on a number it is dropped.
- ``format`` kept only where Gemini documents it (string: enum/date-time, number: float/double,
  integer: int32/int64).
- ``required`` names only properties that exist (Gemini rejects the others); an empty ``properties``
  object is dropped (Gemini rejects it), and a tool without parameters gets no ``parameters`` at all.

Pure functions over parsed JSON; the input is never mutated. ``memoized_tools`` memoizes whole
tool lists by their serialized bytes: a client such as Claude Code sends the same ~20 tool schemas on
every request, and cleaning them costs far more than hashing their bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import orjson

from extproc.translate.client_request import Tool

_KEEP_AS_IS = frozenset(
    {
        "description",
        "nullable",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "minProperties",
        "maxProperties",
        "minimum",
        "maximum",
        "propertyOrdering",
    }
)
_FORMATS = {
    "string": frozenset({"enum", "date-time"}),
    "number": frozenset({"float", "double"}),
    "integer": frozenset({"int32", "int64"}),
}
_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object"})
_MAX_DEPTH = 32  # deeper schemas are cut to a bare type (Gemini caps nesting anyway)


def clean_schema(schema: Any) -> dict[str, Any]:
    """A Gemini ``Schema`` equivalent (as far as Gemini can say it) to the JSON Schema ``schema``."""
    if not isinstance(schema, dict):
        return {"type": "object"}
    defs: dict[str, Any] = {}
    for key in ("definitions", "$defs"):
        table = schema.get(key)
        if isinstance(table, dict):
            defs.update(table)
    return _Cleaner(defs).clean(schema, 0, ())


def is_empty_object(schema: dict[str, Any]) -> bool:
    """True for an object schema with nothing in it (Gemini wants no ``parameters`` then)."""
    return schema.get("type", "object") == "object" and not schema.get("properties") and "anyOf" not in schema


class _Cleaner:
    __slots__ = ("defs",)

    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs

    def clean(self, node: Any, depth: int, refs: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(node, dict):
            return {}
        if depth > _MAX_DEPTH:
            return {"type": "object"}
        ref = node.get("$ref")
        if isinstance(ref, str):
            return self._inline(node, ref, depth, refs)
        all_of = node.get("allOf")
        if isinstance(all_of, list) and all_of:
            node = _merge_all_of(node, all_of)
        union = node.get("anyOf")
        if not isinstance(union, list):
            union = node.get("oneOf")
        if isinstance(union, list) and union:
            return self._union(node, union, depth, refs)

        out: dict[str, Any] = {}
        type_ = node.get("type")
        nullable = False
        if isinstance(type_, list):
            types = [t for t in type_ if isinstance(t, str)]
            nullable = "null" in types
            types = [t for t in types if t in _TYPES]
            if len(types) > 1:
                branches = [self.clean({**node, "type": t}, depth + 1, refs) for t in types]
                out = {"anyOf": branches}
                if isinstance(node.get("description"), str):
                    out["description"] = node["description"]
                if nullable:
                    out["nullable"] = True
                return out
            type_ = types[0] if types else None
        elif type_ == "null":
            return {"type": "string", "nullable": True}
        if not isinstance(type_, str) or type_ not in _TYPES:
            type_ = _infer_type(node)
        if type_ is not None:
            out["type"] = type_

        for key, value in node.items():
            if key in _KEEP_AS_IS:
                out[key] = value
            elif key == "properties" and isinstance(value, dict):
                props = {name: self.clean(sub, depth + 1, refs) for name, sub in value.items() if isinstance(name, str)}
                if props:
                    out["properties"] = props
            elif key == "items":
                if isinstance(value, dict):
                    out["items"] = self.clean(value, depth + 1, refs)
                elif isinstance(value, list) and value:  # tuple form: Gemini has one item schema
                    out["items"] = self.clean(value[0], depth + 1, refs)
            elif key == "format" and isinstance(value, str):
                if value in _FORMATS.get(type_ or "", ()):
                    out["format"] = value
            elif key == "exclusiveMinimum" and type_ == "integer" and _is_number(value):
                out.setdefault("minimum", int(value) + 1)
            elif key == "exclusiveMaximum" and type_ == "integer" and _is_number(value):
                out.setdefault("maximum", int(value) - 1)
        if "required" in node and "properties" in out and isinstance(node["required"], list):
            required = [n for n in node["required"] if isinstance(n, str) and n in out["properties"]]
            if required:
                out["required"] = list(dict.fromkeys(required))
        enum = node.get("enum")
        if not isinstance(enum, list) and "const" in node:
            enum = [node["const"]]
        if isinstance(enum, list) and enum:
            _set_enum(out, enum, type_)
            nullable = nullable or None in enum
        if nullable:
            out["nullable"] = True
        return out

    def _inline(self, node: dict[str, Any], ref: str, depth: int, refs: tuple[str, ...]) -> dict[str, Any]:
        name = ref.rsplit("/", 1)[-1]
        target = self.defs.get(name) if ref.startswith(("#/$defs/", "#/definitions/")) else None
        if not isinstance(target, dict) or ref in refs:
            out: dict[str, Any] = {"type": "object"}  # unresolvable or recursive: the loosest shape
        else:
            out = self.clean(target, depth + 1, (*refs, ref))
        if isinstance(node.get("description"), str):  # a description next to $ref describes the use
            out = {**out, "description": node["description"]}
        return out

    def _union(self, node: dict[str, Any], union: list[Any], depth: int, refs: tuple[str, ...]) -> dict[str, Any]:
        nullable = False
        branches: list[dict[str, Any]] = []
        for branch in union:
            if isinstance(branch, dict) and branch.get("type") == "null" and len(branch) <= 2:
                nullable = True
                continue
            branches.append(self.clean(branch, depth + 1, refs))
        if not branches:
            out: dict[str, Any] = {"type": "string"}
        elif len(branches) == 1:
            out = dict(branches[0])
        else:
            out = {"anyOf": branches}
        if isinstance(node.get("description"), str):
            out["description"] = node["description"]
        if nullable:
            out["nullable"] = True
        return out


def _infer_type(node: dict[str, Any]) -> str | None:
    if "properties" in node or "additionalProperties" in node:
        return "object"
    if "items" in node:
        return "array"
    if "enum" in node or "const" in node:
        return "string"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _set_enum(out: dict[str, Any], enum: list[Any], type_: str | None) -> None:
    values = [v for v in enum if v is not None]
    if values and all(isinstance(v, str) for v in values) and type_ in (None, "string"):
        out["type"] = "string"
        out["enum"] = values
    elif values:  # Gemini enums are strings only: say it in words instead
        allowed = "Allowed values: " + ", ".join(orjson.dumps(v).decode() for v in values)
        description = out.get("description")
        out["description"] = f"{description}\n{allowed}" if isinstance(description, str) else allowed


def _merge_all_of(node: dict[str, Any], members: list[Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {k: v for k, v in node.items() if k != "allOf"}
    own_props, own_required = merged.get("properties"), merged.get("required")
    props: dict[str, Any] = dict(own_props) if isinstance(own_props, dict) else {}
    required: list[Any] = list(own_required) if isinstance(own_required, list) else []
    for member in members:
        if not isinstance(member, dict):
            continue
        for key, value in member.items():
            if key == "properties" and isinstance(value, dict):
                props.update(value)
            elif key == "required" and isinstance(value, list):
                required.extend(value)
            else:
                merged.setdefault(key, value)
    if props:
        merged["properties"] = props
    if required:
        merged["required"] = required
    return merged


def declaration(name: str, description: Any, schema: Any) -> dict[str, Any]:
    """One ``functionDeclarations`` entry."""
    out: dict[str, Any] = {"name": name}
    if isinstance(description, str) and description:
        out["description"] = description
    if schema is not None:
        params = clean_schema(schema)
        if not is_empty_object(params):
            params.setdefault("type", "object")
            out["parameters"] = params
    return out


@lru_cache(maxsize=64)
def _memoized(raw: bytes, web_search: bool) -> orjson.Fragment | None:
    declarations = [declaration(name, description, schema) for name, description, schema in orjson.loads(raw)]
    tools: list[dict[str, Any]] = [{"functionDeclarations": declarations}] if declarations else []
    if web_search:
        tools.append({"googleSearch": {}})
    return orjson.Fragment(orjson.dumps(tools)) if tools else None


def memoized_tools(tools: Sequence[Tool], web_search: bool) -> orjson.Fragment | None:
    """Gemini's ``tools`` array for the client's function tools (and Google Search when the client
    offered a web search), serialized once per distinct tool list; None when there is nothing to
    offer.

    The result is an ``orjson.Fragment`` so the final ``orjson.dumps`` of the request body embeds the
    cached bytes without serializing the schemas again.
    """
    if not tools and not web_search:
        return None
    return _memoized(orjson.dumps([(t.name, t.description, t.schema) for t in tools]), web_search)
