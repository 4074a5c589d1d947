"""PyYAML's syntax errors in plain words, at the line and column where the fix goes.

PyYAML says what its parser expected ("expected <block end>, but found '<block mapping start>'");
someone editing a policy needs to hear what is wrong with the file ("this line is not lined up with
the entries of the mapping that starts at line 2"). Unrecognised errors keep PyYAML's own words.
"""

from __future__ import annotations

import re

import yaml

_FOUND = re.compile(r"but found '([^']*)'")
_CANNOT_START = re.compile(r"found character '(.+)' that cannot start any token")
_UNDEFINED_ALIAS = re.compile(r"found undefined alias '([^']*)'")
_UNKNOWN_ESCAPE = re.compile(r"found unknown escape character '([^']*)'")
_TAG = re.compile(r"could not determine a constructor for the tag '(?:tag:yaml.org,2002:)?([^']*)'")

_COLLECTION = {"while parsing a block collection": "list", "while parsing a block mapping": "mapping"}
_UNCLOSED = {"while parsing a flow sequence": ("[", "]"), "while parsing a flow mapping": ("{", "}")}


def describe(error: yaml.YAMLError, text: str = "") -> tuple[int, int, str]:
    """(line, column, message) for a YAML error in ``text``; line 0 when there is no position."""
    if isinstance(error, yaml.reader.ReaderError):
        character = chr(error.character) if isinstance(error.character, int) else error.character
        position = error.position
        line, column = text.count("\n", 0, position) + 1, position - text.rfind("\n", 0, position)
        return line, column, f"the character {character!r} is not allowed in YAML (a control character)"
    if not isinstance(error, yaml.MarkedYAMLError):
        return 0, 0, str(error)
    problem, context = error.problem or "", error.context or ""
    at, opened = _position(error.problem_mark), _position(error.context_mark)
    where_opened = f"line {opened[0]}, column {opened[1]}" if opened[0] else "above"

    if "that cannot start any token" in problem:
        character = _CANNOT_START.search(problem)
        if character and character[1] == "\\t":
            return *at, "a tab character: YAML indents with spaces only"
        start = character[1] if character else "this character"
        return *at, f"a value cannot start with {start!r}: quote it ('...')"
    if context in _COLLECTION and problem.startswith("expected <block end>"):
        found = _FOUND.search(problem)
        token = found[1] if found else ""
        collection = _COLLECTION[context]
        if token in ("]", "}"):
            return *at, f"a {token!r} that closes nothing"
        if token == "?" and collection == "list":
            return *at, (
                f"wrong indentation: a 'key: value' line in line with the '- ' entries of the list that starts "
                f"at {where_opened}: indent it like the keys of the entry above, or start a new entry with '- '"
            )
        if token == "-" and collection == "mapping":
            return *at, (
                f"wrong indentation: a list entry ('- ') among the keys of the mapping that starts at "
                f"{where_opened}: indent it under a key"
            )
        return *at, (
            f"wrong indentation: column {at[1]} lines up with nothing above it (the {collection} that starts at "
            f"{where_opened} has its entries at column {opened[1]}; line this one up with an entry or with "
            "the keys inside one)"
        )
    if problem == "mapping values are not allowed here":
        return *at, (
            "a ':' where no key can start: this line may be indented deeper than the entries above it, "
            "or a value contains ': ' and needs quotes"
        )
    if context in _UNCLOSED:
        opening, closing = _UNCLOSED[context]
        return *opened, f"the {opening!r} here is not closed with {closing!r} (or a ',' is missing between entries)"
    if context == "while scanning a quoted scalar" and "end of stream" in problem:
        return *opened, "this quoted string is never closed"
    if context == "while scanning a simple key":
        return *opened, "a key without ':' after it (write 'key: value')"
    if "found '<stream end>'" in problem:
        return *at, "the file ends inside a '[' or '{' that is never closed"
    if (alias := _UNDEFINED_ALIAS.search(problem)) is not None:
        name = alias[1]
        return *at, f"'*{name}' refers to no anchor '&{name}' (quote the value if '*' is meant literally)"
    if (escape := _UNKNOWN_ESCAPE.search(problem)) is not None:
        return *at, f"'\\{escape[1]}' is not an escape double quotes allow: use single quotes, or write '\\\\'"
    if (tag := _TAG.search(problem)) is not None:
        return *at, f"the tag '!!{tag[1]}' is not allowed in a policy (plain values only)"
    if context.startswith("found duplicate anchor"):
        return *at, f"{context.removesuffix('; first occurrence')} (first at {where_opened})"
    if context == "expected a single document in the stream":
        return *at, "a second YAML document ('---'): a policy is one document"
    words = f"{problem} ({context} at {where_opened})" if context and opened[0] else problem or context
    return *at, words


def _position(mark: yaml.Mark | None) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
