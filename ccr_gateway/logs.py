"""JSON log lines for every process the CLI starts, one schema, with secrets taken out of every line.

The schema is deploy/observability/logging/log-line.schema.json (docs/logging.md explains each
field): ``time`` (RFC 3339 UTC, milliseconds), ``level``, ``logger``, ``message``, ``process`` (the
role: ``up``, ``control-plane``, ``extproc-N``, ``ledger``, ``envoy``...), ``pid``, then when known
``request_id``, ``trace_id``, ``span_id``, ``tenant`` (from ccr.v1.log_context, bound by the
request path) and ``exception``.

Redaction happens once, here, in the formatter every logger's records pass through, so a log call
anywhere (a header map in a warning, an exception that quotes a request) cannot leak a credential:
- values of the environment's secret variables (names ending in KEY, TOKEN, SECRET or PASSWORD:
  the provider keys the policy names live there), whatever their shape;
- credential-shaped tokens (REDACTION_RULES below, one per shape: provider keys, virtual keys,
  JWTs, Vault tokens, AWS keys, passwords in URLs);
- the value after a credential header or field name (authorization, x-api-key, api-key, ...), in
  ``name: value``, ``name=value``, ``'name': 'value'`` and ``('name', 'value')`` forms.
The rules are written in the regex subset Python and Logstash (Ruby) share, because the Logstash
pipeline (deploy/observability/logging/logstash/pipeline/ccr-gateway.conf) applies the same list
again as defence in depth; tests/unit/test_logs_shipping.py checks that both lists are equal.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import orjson

from ccr.v1 import log_context

MASK = "[redacted]"
_SECRET_VARIABLE = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)$", re.IGNORECASE)
_MIN_SECRET = 8  # shorter values would mask ordinary words

# Rules are written to be cheap as well as portable: a pattern that starts with a literal is found
# by a fast scan (a leading \b or alternation makes the engine try every position, 5-10x slower), so
# the word boundary before a token is a lookbehind placed after its literal prefix:
# ``sk-(?<![A-Za-z0-9_]sk-)`` reads "sk-, not preceded by a word character".

# A value already masked is not masked again (redaction is idempotent: a line that passes through
# the formatter and then Logstash reads the same).
_NOT_MASKED = r"(?!\[redacted\])"
_VIRTUAL_KEY_HEAD = r"sk-ccr-[a-z2-7]{8}_"  # extproc/auth/keys.py: sk-ccr-<key id>_<secret>
# Header and field names whose value is a credential. Quotes are written \x22 and \x27 so that the
# same text can sit in a Logstash string.
_NAMES = (
    r"(?:proxy-)?authorization|x-api-key|x-goog-api-key|api[_-]?key|ocp-apim-subscription-key"
    r"|x-amz-security-token|aws_secret_access_key|aws_session_token|secret_access_key"
    r"|x-vault-token|vault[_-]token|access[_-]token|refresh[_-]token|id[_-]token|client[_-]secret"
    r"|accountkey|sharedaccesskey|secret|token|password|passwd"
    r"|[A-Za-z0-9_]*_(?:api_?key|secret|secret_key|password|token)"
)
# The name, then the separator: ``: `` or ``=`` (JSON and repr put a closing quote before it, a
# tuple of header pairs a comma, a repr of a repr a backslash).
_FIELD = r"(\b(?i:" + _NAMES + r")(?:\\?[\x22\x27]\s*[:=,]|\s*[:=])\s*"
_SCHEMES = r"(?i:bearer|basic|token|digest|negotiate|apikey|aws4-hmac-sha256)\s+"
# What a field's value must not start with: a scheme (kept, the value follows it), a mask (already
# done), a virtual key (its own rule keeps the key id).
_VALUE_GUARD = r"(?!" + _SCHEMES + r")" + _NOT_MASKED + r"(?!" + _VIRTUAL_KEY_HEAD + r")"
_FIELD_HINTS = ("auth", "key", "token", "secret", "passw")


@dataclass(frozen=True)
class RedactionRule:
    """One secret shape. ``hints``: lowercase strings of which at least one is in any text the
    pattern matches; a line containing none skips the regex (most lines: redaction stays cheap).
    ``pattern`` and ``replacement`` use the regex syntax Python and Ruby share (Logstash runs them)."""

    shape: str
    pattern: str
    replacement: str
    hints: tuple[str, ...]
    gate: str = ""  # a cheaper regex, on the lowercased text, that any text the pattern matches matches


# Order matters: a field's whole value before the shapes inside it (``authorization: AWS4-HMAC-SHA256
# Credential=AKIA...`` loses all of its credential, not its middle), quoted field values before bare
# ones, virtual keys before the generic ``sk-`` (the key id stays readable).
REDACTION_RULES: tuple[RedactionRule, ...] = (
    RedactionRule(
        "private key (PEM)",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[A-Za-z0-9+/=\s]*(?:-----END [A-Z ]*PRIVATE KEY-----)?",
        MASK,
        ("private key-----",),
    ),
    RedactionRule(
        "credential field (authorization: ..., 'x-api-key': '...', api_key=...)",
        # A quoted value ends at its quote (a password may hold spaces); a bare one at a space,
        # a quote or the punctuation that follows it in a dict, a header list or a query string.
        _FIELD
        + r"(?:\\?[\x22\x27])?(?:"
        + _SCHEMES
        + r")?)"
        + _VALUE_GUARD
        + r"(?:(?<=[\x22\x27])[^\x22\x27\\\r\n]+|(?<![\x22\x27])[^\s\x22\x27\\,;&}\[\]]+)",
        r"\1" + MASK,
        _FIELD_HINTS,
        # Every name in _NAMES ends with one of these words, and a separator follows it.
        gate=r"(?:authorization|key|token|secret|passwd|password)\\?[\x22\x27]?\s*[:=,]",
    ),
    # The key id is what logs and usage records show (not secret); the secret after it is.
    RedactionRule(
        "virtual key (sk-ccr-)",
        r"sk-ccr-(?<![A-Za-z0-9_]sk-ccr-)([a-z2-7]{8}_)" + _NOT_MASKED + r"[A-Za-z0-9_-]+",
        r"sk-ccr-\1" + MASK,
        ("sk-ccr-",),
    ),
    # Anthropic sk-ant-..., OpenAI sk-..., sk-proj-..., sk-svcacct-..., OpenRouter sk-or-..., DeepSeek.
    RedactionRule(
        "provider key (sk-)",
        r"sk-(?<![A-Za-z0-9_]sk-)(?!ccr-[a-z2-7]{8}_\[redacted\])[A-Za-z0-9_-]{6,}",
        MASK,
        ("sk-",),
    ),
    RedactionRule(
        "JWT (eyJ...)",
        r"eyJ(?<![A-Za-z0-9_]eyJ)[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*",
        MASK,
        ("eyj",),
    ),
    RedactionRule("Google API key (AIza)", r"AIza(?<![A-Za-z0-9_]AIza)[0-9A-Za-z_-]{20,}", MASK, ("aiza",)),
    RedactionRule("Google OAuth token (ya29.)", r"ya29\.(?<![A-Za-z0-9_]ya29\.)[0-9A-Za-z_-]{20,}", MASK, ("ya29.",)),
    RedactionRule(
        "AWS access key id (AKIA, ASIA)",
        r"A(?:KIA|SIA|BIA|CCA)(?<![A-Za-z0-9_]A...)[0-9A-Z]{16}\b",
        MASK,
        ("akia", "asia", "abia", "acca"),
    ),
    RedactionRule("AWS SigV4 signature", r"([Ss]ignature=)[0-9a-f]{16,}", r"\1" + MASK, ("signature=",)),
    RedactionRule(
        "Vault token (hvs. hvb. hvr.)",
        r"hv[sbr]\.(?<![A-Za-z0-9_]hv[sbr]\.)[A-Za-z0-9_-]{20,}",
        MASK,
        ("hvs.", "hvb.", "hvr."),
    ),
    # Before Vault 1.10: s.<24 characters> (service), b.<...> (batch). The letter stays.
    RedactionRule(
        "Vault token, legacy (s. b.)",
        r"\.(?<![A-Za-z0-9_][sb]\.)(?<=[sb]\.)[A-Za-z0-9]{24,}\b",
        "." + MASK,
        ("s.", "b."),
    ),
    RedactionRule(
        "password in a URL (scheme://user:password@host)",
        # ``***`` is how ledger/ masks a URL's password already.
        r"(://[^\s:/@\x22\x27]*:)" + _NOT_MASKED + r"(?!\*+@)[^\s@\x22\x27]+(@)",
        r"\1" + MASK + r"\2",
        ("://",),
    ),
    RedactionRule(
        "Bearer token",
        r"([Bb](?i:earer)\s+)" + _NOT_MASKED + r"(?!" + _VIRTUAL_KEY_HEAD + r")[A-Za-z0-9._~+/=-]{8,}",
        r"\1" + MASK,
        ("bearer",),
    ),
    RedactionRule(
        "credential in a query string (?key=...)",
        r"([?&](?i:key|api_key|apikey|access_token|token|sig|x-amz-signature|x-amz-security-token)=)"
        + _NOT_MASKED
        + r"(?!"
        + _VIRTUAL_KEY_HEAD
        + r")[^&\s#\x22\x27]+",
        r"\1" + MASK,
        ("key=", "token=", "sig=", "signature="),
    ),
)

_COMPILED = tuple(
    (re.compile(rule.pattern), rule.replacement, rule.hints, re.compile(rule.gate) if rule.gate else None)
    for rule in REDACTION_RULES
)


def secret_values(environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """Values of the environment variables that hold secrets, longest first."""
    values = {v for k, v in environ.items() if _SECRET_VARIABLE.search(k) and len(v) >= _MIN_SECRET}
    return tuple(sorted(values, key=len, reverse=True))


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with every secret value of ``secrets`` and every credential shape masked."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    lowered = text.lower()
    for pattern, replacement, hints, gate in _COMPILED:
        for hint in hints:
            if hint in lowered:
                if gate is None or gate.search(lowered):
                    text = pattern.sub(replacement, text)
                break
    return text


# --- the line ------------------------------------------------------------------------------------

LEVELS = ("debug", "info", "warning", "error", "critical")
_LEVEL_OF = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error"}


def level_name(levelno: int) -> str:
    """The schema's level for a record's number (custom levels fall to the standard one below)."""
    name = _LEVEL_OF.get(levelno)
    if name is not None:
        return name
    for threshold, candidate in (
        (logging.CRITICAL, "critical"),
        (logging.ERROR, "error"),
        (logging.WARNING, "warning"),
    ):
        if levelno >= threshold:
            return candidate
    return "info" if levelno >= logging.INFO else "debug"


_second: tuple[int, str] = (-1, "")  # the last second formatted: lines come many per second


def utc_time(created: float) -> str:
    """``2026-01-31T12:00:00.123Z``: RFC 3339, UTC, milliseconds."""
    global _second
    whole, millisecond = divmod(int(created * 1000), 1000)  # one rounding for both parts
    if _second[0] != whole:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{millisecond:03d}Z"


# Commands of ccr_gateway.cli whose process has a role of its own under `up` (ccr_gateway/supervisor.py).
_ROLES = ("up", "control-plane", "extproc", "ledger", "fake-provider")
_WORKER_SOCKET = re.compile(r"extproc-(\d+)\.sock$")


def process_role(argv: Sequence[str]) -> str:
    """The ``process`` field for a CLI command line (without the program): ``extproc-2`` for the
    worker `up` started third (its socket is ``RUN_DIR/extproc-2.sock``), ``control-plane``,
    ``ledger``, ``up``; another command is named by itself (``keys``), nothing at all ``ccr-gateway``."""
    command = next((word for word in argv if not word.startswith("-") and word not in LEVELS), None)
    if command is None:
        return "ccr-gateway"
    if command == "extproc":
        for option, value in pairwise(argv):
            if option == "--listen" and (match := _WORKER_SOCKET.search(value)):
                return f"extproc-{match[1]}"
    return command if command in _ROLES or command.replace("-", "").isalnum() else "ccr-gateway"


_CLEANED_MAX = 4096  # context values remembered redacted: a few per request in flight


class JsonFormatter(logging.Formatter):
    """One JSON object per line, in the schema above; secrets masked in the message, the exception
    and the request's fields."""

    def __init__(self, environ: Mapping[str, str] = os.environ, process: str = "ccr-gateway") -> None:
        super().__init__()
        self.secrets = secret_values(environ)
        self.process = process
        self._cleaned: dict[str, str] = {}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": utc_time(record.created),
            "level": level_name(record.levelno),
            "logger": record.name,
            "message": redact(record.getMessage(), self.secrets),
            "process": self.process,
            "pid": record.process or os.getpid(),
        }
        # A field passed with extra= (or copied onto the record before a queue handler) wins over the
        # context: the context is that of the thread formatting, the record's that of the caller.
        for name, value in log_context.current().items():
            if value:
                entry[name] = self._field_value(str(value))
        for name in log_context.FIELDS:
            value = record.__dict__.get(name)
            if value:
                entry[name] = self._field_value(str(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        trace = record.exc_text or ""
        if record.stack_info:
            trace = f"{trace}\n{self.formatStack(record.stack_info)}" if trace else self.formatStack(record.stack_info)
        if trace:
            entry["exception"] = redact(trace, self.secrets)
        return orjson.dumps(entry).decode()

    def _field_value(self, value: str) -> str:
        """A request field, redacted (a request id is a client's header: it could hold anything);
        remembered, since every line of a request repeats the same few values."""
        clean = self._cleaned.get(value)
        if clean is None:
            if len(self._cleaned) >= _CLEANED_MAX:
                self._cleaned.clear()
            clean = self._cleaned[value] = redact(value, self.secrets)
        return clean


def setup_logging(level: str, process: str | None = None) -> None:
    """JSON lines on stderr for this process; ``process`` defaults to the role its command line says."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process=process or process_role(sys.argv[1:])))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
