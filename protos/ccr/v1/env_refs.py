"""Connection strings that name their secrets instead of holding them.

``amqp://ledger:${RABBITMQ_PASSWORD}@mq:5672/`` is expanded from the environment when the
connection is made, so the password lives in one place (the environment) and never in a policy
file, a command line that ``ps`` shows, or a log line: ``redact_url`` is what gets logged.

Every process that connects somewhere uses these (the ledger, the key store, the audit log), so they
live with the contract. Pure: no I/O, the environment is a parameter; except a whole ``vault:``
reference, which ccr.v1.vault_refs reads from Vault.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

VAULT_PREFIX = "vault:"  # ccr.v1.secret_ref.PREFIX: a whole connection string kept in Vault
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
MASK = "***"


class EnvError(ValueError):
    """A ``${VAR}`` reference to a variable that is not set; the message names it."""


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Every ``${NAME}`` in ``text`` replaced by the variable's value; EnvError names the first
    unset one. Only the braced form is expanded: a bare ``$`` (legal in passwords) is left alone.

    A whole ``vault:<mount>/data/<path>#<field>`` is read from Vault instead (ccr.v1.vault_refs:
    when the connection is made, so a rotated secret is picked up by the next one)."""
    values = os.environ if environ is None else environ
    if text.startswith(VAULT_PREFIX):
        from ccr.v1 import vault_refs  # hvac and its client load only where a reference is used

        try:
            return vault_refs.resolve(text, values)
        except vault_refs.VaultReferenceError as exc:
            raise EnvError(str(exc)) from None

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise EnvError(f"environment variable {name} is not set (referenced as ${{{name}}})")
        return values[name]

    return _REFERENCE.sub(substitute, text)


def redact_url(url: str) -> str:
    """The URL with its password (if any) masked, for log lines and error messages."""
    if url.startswith(VAULT_PREFIX):
        return url  # a reference: where the secret is, not the secret
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
