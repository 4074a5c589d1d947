"""JSON Schema cleanup for Gemini function declarations and response schemas."""

from __future__ import annotations

import copy

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.translate.client_request import Tool
from extproc.translate.gemini_schema import clean_schema, declaration, memoized_tools

ALLOWED_KEYS = {
    "type",
    "format",
    "description",
    "nullable",
    "enum",
    "items",
    "properties",
    "required",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "minimum",
    "maximum",
    "propertyOrdering",
    "anyOf",
}


def _walk(schema: dict) -> None:
    """Every node of a cleaned schema uses only keys Gemini's Schema message knows."""
    assert isinstance(schema, dict)
    assert set(schema) <= ALLOWED_KEYS, set(schema) - ALLOWED_KEYS
    assert not isinstance(schema.get("type"), list)
    assert schema.get("type") != "null"
    if "enum" in schema:
        assert schema.get("type") == "string" and all(isinstance(v, str) for v in schema["enum"])
    if "properties" in schema:
        assert schema["properties"], "empty properties objects are rejected by Gemini"
        for sub in schema["properties"].values():
            _walk(sub)
    if "required" in schema:
        assert set(schema["required"]) <= set(schema.get("properties", {}))
    if "items" in schema:
        _walk(schema["items"])
    for sub in schema.get("anyOf", ()):
        _walk(sub)


def test_claude_code_style_schema_loses_only_what_gemini_rejects() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "pattern": {"type": "string", "description": "glob"},
            "head_limit": {"type": "integer", "exclusiveMinimum": 0},
            "multiline": {"type": "boolean", "default": False},
        },
        "required": ["pattern"],
    }
    assert clean_schema(schema) == {
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "description": "glob"},
            "head_limit": {"type": "integer", "minimum": 1},
            "multiline": {"type": "boolean"},
        },
        "required": ["pattern"],
    }


def test_type_array_with_null_becomes_nullable() -> None:
    assert clean_schema({"type": ["string", "null"]}) == {"type": "string", "nullable": True}


def test_type_array_of_several_types_becomes_any_of() -> None:
    assert clean_schema({"type": ["string", "integer", "null"], "description": "d"}) == {
        "anyOf": [{"type": "string", "description": "d"}, {"type": "integer", "description": "d"}],
        "description": "d",
        "nullable": True,
    }


def test_any_of_with_null_branch_collapses_to_a_nullable_branch() -> None:
    assert clean_schema({"anyOf": [{"type": "number"}, {"type": "null"}], "description": "n"}) == {
        "type": "number",
        "description": "n",
        "nullable": True,
    }


def test_one_of_becomes_any_of() -> None:
    assert clean_schema({"oneOf": [{"type": "string"}, {"type": "integer"}]}) == {
        "anyOf": [{"type": "string"}, {"type": "integer"}]
    }


def test_refs_are_inlined_and_cycles_cut() -> None:
    schema = {
        "type": "object",
        "properties": {"tree": {"$ref": "#/definitions/Tree", "description": "root"}},
        "definitions": {
            "Tree": {"type": "object", "properties": {"child": {"$ref": "#/definitions/Tree"}}},
        },
    }
    assert clean_schema(schema) == {
        "type": "object",
        "properties": {"tree": {"type": "object", "properties": {"child": {"type": "object"}}, "description": "root"}},
    }


def test_unresolvable_ref_becomes_a_bare_object() -> None:
    assert clean_schema({"$ref": "https://example.com/schema.json"}) == {"type": "object"}


def test_const_becomes_a_one_value_enum() -> None:
    assert clean_schema({"const": "a"}) == {"type": "string", "enum": ["a"]}


def test_non_string_enum_moves_into_the_description() -> None:
    assert clean_schema({"type": "integer", "enum": [1, 2]}) == {
        "type": "integer",
        "description": "Allowed values: 1, 2",
    }


def test_formats_gemini_does_not_document_are_dropped() -> None:
    assert clean_schema({"type": "string", "format": "uri"}) == {"type": "string"}
    assert clean_schema({"type": "string", "format": "date-time"}) == {"type": "string", "format": "date-time"}
    assert clean_schema({"type": "integer", "format": "int64"}) == {"type": "integer", "format": "int64"}


def test_all_of_members_are_merged() -> None:
    schema = {"allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]}, {"type": "object"}]}
    assert clean_schema(schema) == {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a"],
    }


def test_tuple_items_keep_the_first_item_schema() -> None:
    assert clean_schema({"type": "array", "items": [{"type": "string"}, {"type": "number"}]}) == {
        "type": "array",
        "items": {"type": "string"},
    }


def test_a_tool_without_properties_gets_no_parameters() -> None:
    assert declaration("Now", "time", {"type": "object", "properties": {}}) == {"name": "Now", "description": "time"}
    assert declaration("Now", "", None) == {"name": "Now"}


def test_clean_schema_does_not_mutate_its_input() -> None:
    schema = {"type": "object", "properties": {"a": {"type": ["string", "null"]}}, "required": ["a", "b"]}
    before = copy.deepcopy(schema)
    clean_schema(schema)
    assert schema == before


def test_tool_lists_are_converted_once_per_distinct_content() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "string"}}}
    first = memoized_tools((Tool("A", "", schema),), web_search=False)
    again = memoized_tools((Tool("A", "", copy.deepcopy(schema)),), web_search=False)
    assert first is again
    expected = [{"functionDeclarations": [declaration("A", "", schema)]}]
    assert orjson.loads(orjson.dumps({"tools": first}))["tools"] == expected
    searching = memoized_tools((Tool("A", "", schema),), web_search=True)
    assert orjson.loads(orjson.dumps(searching)) == [*expected, {"googleSearch": {}}]
    assert memoized_tools((), web_search=False) is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "properties",
                    "items",
                    "anyOf",
                    "oneOf",
                    "allOf",
                    "$ref",
                    "$defs",
                    "enum",
                    "const",
                    "required",
                    "format",
                    "nullable",
                    "description",
                    "additionalProperties",
                    "default",
                    "minimum",
                    "exclusiveMinimum",
                    "exclusiveMaximum",
                    "title",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)
TYPES = st.sampled_from(["string", "number", "integer", "boolean", "array", "object", "null"])
SCHEMA = st.recursive(
    st.fixed_dictionaries({"type": TYPES | st.lists(TYPES, max_size=3)}),
    lambda children: st.fixed_dictionaries(
        {},
        optional={
            "type": TYPES | st.lists(TYPES, max_size=3),
            "properties": st.dictionaries(st.text(max_size=3), children, max_size=3),
            "items": children,
            "anyOf": st.lists(children, max_size=3),
            "oneOf": st.lists(children, max_size=3),
            "allOf": st.lists(children, max_size=2),
            "enum": st.lists(st.text(max_size=3) | st.integers(-(2**63), 2**63 - 1) | st.none(), max_size=3),
            "const": st.text(max_size=3),
            "required": st.lists(st.text(max_size=3), max_size=3),
            "$ref": st.sampled_from(["#/$defs/A", "#/$defs/missing", "other"]),
            "$defs": st.fixed_dictionaries({"A": children}),
            "format": st.sampled_from(["uri", "date-time", "int64", "enum"]),
            "exclusiveMinimum": st.integers(-3, 3),
            "additionalProperties": st.booleans(),
            "default": st.integers(-(2**63), 2**63 - 1),
        },
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(JSON)
def test_cleanup_never_raises_on_any_json(value: object) -> None:
    assert isinstance(clean_schema(value), dict)


@settings(max_examples=200, deadline=None)
@given(SCHEMA)
def test_cleaned_schemas_use_only_what_gemini_accepts(schema: dict) -> None:
    _walk(clean_schema(schema))
