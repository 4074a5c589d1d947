"""YAML with positions, and a checker that collects problems as ``file:line:col: path: message``.

Shared by every policy section's validator, so all of them report errors the same way.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

import yaml

from control_plane.policy.yaml_errors import describe


@dataclass(frozen=True, slots=True)
class Problem:
    source: str
    line: int  # 1-based; 0 when unknown
    column: int
    path: str
    message: str
    # A warning does not make the policy invalid: it is printed, and the policy is used.
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}:{self.column}" if self.line else self.source
        if self.warning:
            where += ": warning"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class PolicyError(ValueError):
    """The policy is invalid; ``problems`` lists every problem found, in file order."""

    def __init__(self, problems: list[Problem], warnings: list[Problem] | None = None) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line, p.column))
        # Found along the way; kept apart so that the message stays the problems alone.
        self.warnings = sorted(warnings or [], key=lambda p: (p.line, p.column))
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


def compose(text: str, check: Checker) -> Located | None:
    """The YAML tree with positions; a duplicate key is reported to ``check`` (PyYAML would keep
    the last one silently: two `limits:` sections would lose the first one's settings)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        return None if node is None else locate(node, "", check)
    except yaml.YAMLError as exc:
        line, col, message = describe(exc, text)
        raise PolicyError([Problem(check.source, line, col, "", f"invalid YAML: {message}")]) from None


def locate(node: yaml.Node, path: str, check: Checker) -> Located:
    line, col = node.start_mark.line + 1, node.start_mark.column + 1
    if isinstance(node, yaml.MappingNode):
        mapping: dict[str, tuple[Located, Located]] = {}
        keys: dict[str, list[Located]] = {}
        for key_node, value_node in node.value:
            key = locate(key_node, path, check)
            keys.setdefault(str(key.value), []).append(key)
            mapping[str(key.value)] = (key, locate(value_node, join(path, str(key.value)), check))
        for name, written in keys.items():
            if len(written) > 1:
                lines = [str(k.line) for k in written]
                times = "twice" if len(written) == 2 else f"{len(written)} times"
                where = ", ".join(lines[:-1]) + f" and {lines[-1]}"
                check.problem(written[-1], join(path, name), f"defined {times}, at lines {where}")
        return Located(mapping, line, col)
    if isinstance(node, yaml.SequenceNode):
        return Located([locate(item, join(path, index), check) for index, item in enumerate(node.value)], line, col)
    # PyYAML's own tag resolution: 8080 is an int, true a bool, "8080" a string.
    return Located(yaml.SafeLoader("").construct_object(node, deep=True), line, col)


# --- validation ---------------------------------------------------------------------------------


class Checker:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def problem(self, at: Located | None, path: str, message: str) -> None:
        line, col = (at.line, at.column) if at else (0, 0)
        self.problems.append(Problem(self.source, line, col, path, message))

    def warning(self, at: Located | None, path: str, message: str) -> None:
        line, col = (at.line, at.column) if at else (0, 0)
        self.warnings.append(Problem(self.source, line, col, path, message, warning=True))

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

    def choice(self, at: Located, path: str, choices: tuple[str, ...]) -> str | None:
        """One of ``choices``, as written."""
        value = at.value
        if isinstance(value, str) and value in choices:
            return value
        shown = repr(value) if isinstance(value, str) else kind_of(value)
        self.problem(at, path, f"must be one of {', '.join(choices)}, got {shown}")
        return None

    def non_empty_sequence(self, at: Located, path: str, what: str) -> list[Located]:
        """A list with at least one item; ``what`` names the items in the problem."""
        items = self.sequence(at, path)
        if not items and isinstance(at.value, list):
            self.problem(at, path, f"at least one {what} is required")
        return items


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
