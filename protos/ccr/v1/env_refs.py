"""Connection strings that name their secrets instead of holding them.

``amqp://ledger:${RABBITMQ_PASSWORD}@mq:5672/`` is expanded from the environment when the
connection is made, so the password lives in one place (the environment) and never in a policy
file, a command line that ``ps`` shows, or a log line: ``redact_url`` is what gets logged.

Every process that connects somewhere uses these (the ledger, the key store, the audit log), so they
live with the contract. Pure: no I/O; the environment is a parameter.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
MASK = "***"


class EnvError(ValueError):
    """A ``${VAR}`` reference to a variable that is not set; the message names it."""


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Every ``${NAME}`` in ``text`` replaced by the variable's value; EnvError names the first
    unset one. Only the braced form is expanded: a bare ``$`` (legal in passwords) is left alone."""
    values = os.environ if environ is None else environ

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise EnvError(f"environment variable {name} is not set (referenced as ${{{name}}})")
        return values[name]

    return _REFERENCE.sub(substitute, text)


def redact_url(url: str) -> str:
    """The URL with its password (if any) masked, for log lines and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if parts.password is None or _REFERENCE.fullmatch(parts.password):
        return url  # no password, or a ${VAR} reference: a name, not a secret
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    netloc = f"{user}:{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
