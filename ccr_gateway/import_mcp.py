"""`ccr-gateway import-mcp .mcp.json`: Claude Code's MCP servers -> the policy's ``mcp:`` section.

Claude Code's file (project ``.mcp.json``; ``mcpServers`` of ``~/.claude.json`` too)::

    {"mcpServers": {"github": {"type": "http", "url": "https://api.githubcopilot.com/mcp/",
                               "headers": {"Authorization": "Bearer ${GITHUB_TOKEN}"}},
                    "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/srv"],
                              "env": {"LOG_LEVEL": "info"}}}}

``type`` is ``stdio`` (the default with ``command``), ``http`` (the default with ``url``) or ``sse``
(the older HTTP+SSE transport: imported as a url server, with a note). Claude Code expands
``${VAR}`` and ``${VAR:-default}`` in command, args, env, url and headers; the gateway expands
``${VAR}`` from its own environment (a default is dropped, with a note).

What the importer never does: copy a secret. A credential written out (a header or variable whose
name says token, key, secret, password or auth; a value shaped like a known token; a
``--token VALUE`` argument) becomes a ``${NAME}`` reference, and a warning lists the variables to
export for the gateway, never their values. Server names are normalised to the MCP core's rule
(control_plane.policy.mcp.SERVER_NAME_RE); a header the gateway sets itself is dropped, and a server
the policy would still refuse (a URL with credentials in it) is skipped, each with a note saying
why. Everything but ``run`` is pure; ``import_text`` checks its result with the policy validator, so
an import yields a section the gateway accepts or is a bug.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import yaml

from ccr_gateway.generated_file import fail, hand_over, output_path
from control_plane.policy import PolicyError, load_policy
from control_plane.policy.mcp import TOKEN_SHAPES as _TOKEN
from control_plane.policy.mcp import (
    credential_problem,
    env_name_valid,
    header_allowed,
    is_credential_name,
    looks_like_token,
)

_DEFAULTED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-[^}]*\}")  # Claude Code's ${VAR:-default}
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_AUTH_SCHEMES = ("bearer", "basic", "token", "bot")
_KNOWN_FIELDS = {"type", "command", "args", "env", "url", "headers"}
# A policy around the section, only to validate it with the gateway's own validator.
_HOST_POLICY = "providers:\n  - {name: p, api: anthropic, base_url: 'http://127.0.0.1:9', models: [m]}\n"


class ImportError_(ValueError):
    """The file cannot be imported at all (not JSON, no mcpServers, no usable server)."""


@dataclass
class Result:
    section: dict[str, Any]
    exports: dict[str, str] = field(default_factory=dict)  # variable -> where its value was (never the value)
    notes: list[str] = field(default_factory=list)


def normalise_name(name: str) -> str:
    """A server name under the core's rule: letters and digits in runs joined by single - or _."""
    text = re.sub(r"[^A-Za-z0-9_-]+", "-", name)
    text = re.sub(r"[-_]{2,}", lambda m: m.group(0)[0], text).strip("-_")
    return text or "server"


def _prefixed(server: str, name: str) -> str:
    """A stdio server's variable in the gateway's environment: prefixed with the server's name
    (two servers' API_KEY must not meet there), unless it already is (GITHUB_TOKEN of github)."""
    prefix = _variable(server)
    return name.upper() if name.upper().startswith(prefix + "_") else _variable(server, name)


def _variable(*parts: str) -> str:
    text = re.sub(r"[^A-Za-z0-9]+", "_", "_".join(parts)).strip("_").upper()
    return text if not text[:1].isdigit() else f"V_{text}"


class _Converter:
    def __init__(self) -> None:
        self.result = Result({})

    def forget(self, where: str) -> None:
        """A skipped server's variables are not needed after all."""
        prefixes = (where + ".", where + " ")
        for name, found in list(self.result.exports.items()):
            if found.startswith(prefixes):
                del self.result.exports[name]

    def _need(self, name: str, where: str) -> str:
        """A fresh variable name for a secret found at ``where``."""
        base, count = name, 2
        while name in self.result.exports and self.result.exports[name] != where:
            name, count = f"{base}_{count}", count + 1
        self.result.exports[name] = where
        return f"${{{name}}}"

    def _references(self, text: str, where: str) -> str:
        """Claude Code's ${VAR:-default} becomes ${VAR} (the gateway takes no default); every
        variable named is one the gateway needs."""
        if _DEFAULTED.search(text):
            self.result.notes.append(
                f"{where}: a ${{VAR:-default}} lost its default; the gateway needs the variable set"
            )
            text = _DEFAULTED.sub(lambda m: f"${{{m.group(1)}}}", text)
        for match in _REFERENCE.finditer(text):
            self.result.exports.setdefault(match.group(1), f"{where} (already a reference)")
        return text

    def _value(self, name: str, value: str, variable: str, where: str) -> str:
        """A header's or a variable's value, its literal credential replaced by a reference."""
        value = self._references(value, where)
        if looks_like_token(value):  # only the token goes: "Bearer ghp_..." keeps its "Bearer "
            value = _TOKEN.sub(lambda _: self._need(variable, where), value)
        if credential_problem(name, value) is None:
            return value
        scheme, _, rest = value.partition(" ")
        if rest and scheme.lower() in _AUTH_SCHEMES:
            return f"{scheme} {self._need(variable, where)}"
        return self._need(variable, where)

    def server(self, original: str, name: str, entry: Any) -> dict[str, Any] | None:
        where = f"mcpServers.{original}"
        if not isinstance(entry, dict):
            self.result.notes.append(f"{where}: not an object; skipped")
            return None
        kind = entry.get("type") or ("stdio" if "command" in entry else "http")
        for extra in sorted(set(entry) - _KNOWN_FIELDS):
            self.result.notes.append(f"{where}.{extra}: not something the gateway's policy has; dropped")
        out: dict[str, Any] = {"name": name}
        if kind == "stdio":
            command = entry.get("command")
            args = entry.get("args") or []
            if not isinstance(command, str) or not command or not isinstance(args, list):
                self.result.notes.append(f"{where}: a stdio server needs a command (and args as a list); skipped")
                return None
            out["command"] = [command, *self._args(name, [str(a) for a in args], where)]
            env = entry.get("env") or {}
            if isinstance(env, dict) and env:
                kept = {}
                for key, value in env.items():
                    if not env_name_valid(key):
                        self.result.notes.append(f"{where}.env.{key}: not an environment variable name; dropped")
                        continue
                    kept[key] = self._value(key, str(value), _prefixed(name, key), f"{where}.env.{key}")
                if kept:
                    out["env"] = kept
        elif kind in ("http", "sse"):
            url = entry.get("url")
            if not isinstance(url, str) or not url:
                self.result.notes.append(f"{where}: an {kind} server needs a url; skipped")
                return None
            if kind == "sse":
                self.result.notes.append(
                    f"{where}: the older HTTP+SSE transport; the gateway speaks Streamable HTTP to it: "
                    "check that the server serves it (often at /mcp rather than /sse)"
                )
            out["url"] = self._url(name, url, f"{where}.url")
            headers = entry.get("headers") or {}
            if isinstance(headers, dict) and headers:
                kept = {}
                for key, value in headers.items():
                    if not header_allowed(key):
                        self.result.notes.append(f"{where}.headers.{key}: set by the gateway itself; dropped")
                        continue
                    # Authorization: Bearer <token> -> GITHUB_TOKEN, the name people give it anyway.
                    variable = _variable(name, "token" if key.lower() == "authorization" else key)
                    kept[key] = self._value(key, str(value), variable, f"{where}.headers.{key}")
                if kept:
                    out["headers"] = kept
        else:
            self.result.notes.append(f"{where}: unknown type {kind!r} (stdio, http or sse); skipped")
            return None
        return out

    def _args(self, server: str, args: list[str], where: str) -> list[str]:
        out: list[str] = []
        for index, arg in enumerate(args):
            arg_where = f"{where}.args[{index}]"
            arg = self._references(arg, arg_where)
            flag, eq, value = arg.partition("=")
            previous = out[-1] if out else ""
            if eq and flag.startswith("-") and is_credential_name(flag.lstrip("-")) and value and "${" not in value:
                arg = f"{flag}={self._need(_variable(server, flag.lstrip('-')), arg_where)}"
            elif previous.startswith("-") and is_credential_name(previous.lstrip("-")) and "${" not in arg:
                arg = self._need(_variable(server, previous.lstrip("-")), arg_where)
            elif looks_like_token(arg):
                arg = _TOKEN.sub(lambda _, where=arg_where: self._need(_variable(server, "token"), where), arg)
            out.append(arg)
        return out

    def _url(self, server: str, url: str, where: str) -> str:
        url = self._references(url, where)
        parts = urlsplit(url)
        if not parts.query:
            return url
        query = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if credential_problem(key, value) is not None:
                value = self._need(_variable(server, key), f"{where} (query {key})")
            query.append((key, value))
        # urlencode would escape ${...}: the references are written back as they are.
        text = "&".join(f"{k}={v}" if "${" in v else urlencode([(k, v)]) for k, v in query)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, text, parts.fragment))


def convert(data: Any) -> Result:
    """Claude Code's MCP config (parsed JSON) -> the ``mcp:`` section, the variables to export, notes."""
    if not isinstance(data, dict) or not isinstance(data.get("mcpServers"), dict):
        raise ImportError_('no "mcpServers" object: not a Claude Code MCP config (.mcp.json)')
    converter = _Converter()
    servers: list[dict[str, Any]] = []
    taken: set[str] = set()
    for original, entry in data["mcpServers"].items():
        name = normalise_name(str(original))
        base, count = name, 2
        while name in taken:
            name, count = f"{base}-{count}", count + 1
        if name != original:
            converter.result.notes.append(f"mcpServers.{original}: named {name!r} (the gateway's server-name rule)")
        server = converter.server(str(original), name, entry)
        problems = _problems(server) if server is not None else []
        if problems:
            converter.result.notes.append(f"mcpServers.{original}: skipped: " + "; ".join(problems))
            converter.forget(f"mcpServers.{original}")
        elif server is not None:
            taken.add(name)
            servers.append(server)
    if not servers:
        raise ImportError_("no server could be imported")
    converter.result.section = {"mcp": {"servers": servers}}
    return converter.result


def _problems(server: dict[str, Any]) -> list[str]:
    """What the policy validator says about one converted server, without file positions."""
    text = yaml.safe_dump({"mcp": {"servers": [server], "grants": []}}, sort_keys=False)
    try:
        load_policy(_HOST_POLICY + text, source="<import-mcp>")
    except PolicyError as exc:
        return [f"{p.path.removeprefix('mcp.servers[0].')}: {p.message}" for p in exc.problems]
    return []


def render(result: Result, source: str) -> str:
    body = yaml.safe_dump(result.section, sort_keys=False, default_flow_style=False, width=1000, allow_unicode=True)
    header = (
        f"# Imported from {source} by `ccr-gateway import-mcp`: paste it into the gateway policy.\n"
        "# Credentials are ${VAR} references, read by the gateway from its own environment.\n"
    )
    grants = (
        '  # Who may use them (nobody until a grant says so; docs/mcp.md, "Policy"):\n'
        "  # grants:\n"
        "  #   - tenant: my-team\n"
        f"  #     allow: [{', '.join(s['name'] for s in result.section['mcp']['servers'])}]\n"
    )
    return header + body + grants


def import_text(text: str, source: str) -> tuple[str, Result]:
    """The rendered section and what the user must know; checked with the policy validator."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportError_(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    result = convert(data)
    rendered = render(result, source)
    load_policy(_HOST_POLICY + rendered, source="<import-mcp>")  # PolicyError: a bug here
    return rendered, result


def messages(result: Result) -> list[str]:
    """What to tell the user (stderr): the variables to export (names and where their value was,
    never a value), then the notes."""
    lines: list[str] = []
    replaced = {name: where for name, where in result.exports.items() if "(already a reference)" not in where}
    referenced = sorted(set(result.exports) - set(replaced))
    if replaced:
        lines.append("warning: literal credentials were replaced by ${VAR} references; export these for the gateway:")
        lines += [f"  {name}  (the value written at {where})" for name, where in sorted(replaced.items())]
    if referenced:
        lines.append("the gateway also needs these variables set (referenced in the file): " + ", ".join(referenced))
    lines += [f"note: {note}" for note in result.notes]
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="Claude Code's MCP config (.mcp.json)")
    parser.add_argument("-o", "--output", help="file to write the mcp: section to (default: stdout)")
    parser.add_argument("--force", action="store_true", help="overwrite --output if it exists")


def run(args: argparse.Namespace) -> int:
    """0: printed or written; 1: the section does not validate (a bug); 2: the input or output is unusable."""
    path = os.path.expanduser(args.path)
    output = output_path(args)
    if output and os.path.exists(output) and not getattr(args, "force", False):
        return fail(f"error: {args.output} exists; use --force to overwrite it")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return fail(f"error: cannot read {args.path}: {reason}")
    try:
        rendered, result = import_text(text, args.path)
    except ImportError_ as exc:
        return fail(f"error: {args.path}: {exc}")
    except PolicyError as exc:
        return fail(f"internal error: import-mcp produced a section that does not validate (a bug):\n{exc}", 1)
    for line in messages(result):
        print(line, file=sys.stderr)
    return hand_over(rendered, output, args.output)
