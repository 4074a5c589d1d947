"""JSON log lines for every process the CLI starts, with secrets taken out of every line.

Redaction happens once, here, in the formatter every logger's records pass through, so a log call
anywhere (a header map in a warning, an exception that quotes a request) cannot leak a key:
- values of the environment's secret variables (names ending in KEY, TOKEN, SECRET or PASSWORD:
  the provider keys the policy names live there);
- credential-shaped tokens: ``Bearer ...``, ``sk-...``, Google ``AIza...`` keys;
- the value after a credential header or field name (authorization, x-api-key, x-goog-api-key,
  api_key, token), in ``name: value``, ``name=value`` and ``'name': 'value'`` forms.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping

MASK = "[redacted]"
_SECRET_VARIABLE = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)$", re.IGNORECASE)
_MIN_SECRET = 8  # shorter values would mask ordinary words
_PATTERNS = (
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"),
    re.compile(
        r"""(?ix)
        (\b(?:authorization|x-api-key|x-goog-api-key|api[_-]?key|access[_-]?token|token|password)
        ['"]?\s*[:=]\s*)        # the name and its separator, kept
        (?:'[^']*'|"[^"]*"|(?:(?:bearer|basic|token)\s+)?[^'"\s,}]+)  # the value, quoted or with its scheme
        """
    ),
)


def secret_values(environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """Values of the environment variables that hold secrets, longest first."""
    values = {v for k, v in environ.items() if _SECRET_VARIABLE.search(k) and len(v) >= _MIN_SECRET}
    return tuple(sorted(values, key=len, reverse=True))


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exception), secrets masked."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        super().__init__()
        self.secrets = secret_values(environ)

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage(), self.secrets),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info), self.secrets)
        return json.dumps(entry)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
