"""YAML with positions, and a checker that collects problems as ``file:line:col: path: message``.

Shared by every policy section's validator, so all of them report errors the same way.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

import yaml


@dataclass(frozen=True, slots=True)
class Problem:
    source: str
    line: int  # 1-based; 0 when unknown
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}:{self.column}" if self.line else self.source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class PolicyError(ValueError):
    """The policy is invalid; ``problems`` lists every problem found, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line, p.column))
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def single(cls, source: str, message: str) -> PolicyError:
        return cls([Problem(source, 0, 0, "", message)])


# --- YAML with positions -------------------------------------------------------------------------


class Located:
    """A YAML value together with where it was written."""

    __slots__ = ("column", "line", "value")

    def __init__(self, value: Any, line: int, column: int) -> None:
        self.value = value
        self.line = line
        self.column = column


def compose(text: str, source: str) -> Located | None:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise PolicyError([Problem(source, line, col, "", f"invalid YAML: {exc.problem}")]) from None
    if node is None:
        return None
    return locate(node)


def locate(node: yaml.Node) -> Located:
    line, col = node.start_mark.line + 1, node.start_mark.column + 1
    if isinstance(node, yaml.MappingNode):
        mapping: dict[str, tuple[Located, Located]] = {}
        for key_node, value_node in node.value:
            key = locate(key_node)
            mapping[str(key.value)] = (key, locate(value_node))
        return Located(mapping, line, col)
    if isinstance(node, yaml.SequenceNode):
        return Located([locate(item) for item in node.value], line, col)
    # PyYAML's own tag resolution: 8080 is an int, true a bool, "8080" a string.
    return Located(yaml.SafeLoader("").construct_object(node, deep=True), line, col)


# --- validation ---------------------------------------------------------------------------------


class Checker:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def problem(self, at: Located | None, path: str, message: str) -> None:
        line, col = (at.line, at.column) if at else (0, 0)
        self.problems.append(Problem(self.source, line, col, path, message))

    def mapping(
        self, at: Located, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict[str, Located]:
        if not isinstance(at.value, dict):
            self.problem(at, path, f"must be a mapping, got {kind_of(at.value)}")
            return {}
        out: dict[str, Located] = {}
        for key, (key_at, value_at) in at.value.items():
            if key not in allowed:
                hint = closest(key, allowed)
                self.problem(key_at, join(path, key), "unknown field" + (f" (did you mean '{hint}'?)" if hint else ""))
                continue
            out[key] = value_at
        for key in required:
            if key not in out and key in allowed and key not in at.value:
                self.problem(at, join(path, key), "is required")
        return out

    def string(self, at: Located, path: str, pattern: re.Pattern[str] | None = None, what: str = "") -> str | None:
        if not isinstance(at.value, str) or not at.value:
            self.problem(at, path, f"must be a non-empty string, got {kind_of(at.value)}")
            return None
        if pattern is not None and not pattern.match(at.value):
            self.problem(at, path, f"{at.value!r} is not a valid {what or 'value'}")
            return None
        return at.value

    def integer(self, at: Located, path: str, low: int, high: int) -> int | None:
        if isinstance(at.value, bool) or not isinstance(at.value, int):
            self.problem(at, path, f"must be an integer, got {kind_of(at.value)}")
            return None
        if not low <= at.value <= high:
            self.problem(at, path, f"must be between {low} and {high}, got {at.value}")
            return None
        return at.value

    def sequence(self, at: Located, path: str) -> list[Located]:
        if not isinstance(at.value, list):
            self.problem(at, path, f"must be a list, got {kind_of(at.value)}")
            return []
        return at.value


def kind_of(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer"}.get(
        type(value), type(value).__name__
    )


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def closest(word: str, options: tuple[str, ...]) -> str | None:
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return match[0] if match else None
