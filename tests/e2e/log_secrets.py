"""The end-to-end run's secret scan: no credential the tests used may appear in any log they captured.

Every gateway (and fake provider, Consul double, hand-run Envoy) an e2e test starts writes its output
under pytest's base temporary directory (``tmp_path``, ``tmp_path_factory``: tests/e2e/gateway.py puts
`up`'s stdout and stderr in ``<dir>/<name>.log``). tests/e2e/conftest.py runs :func:`scan` over all of
them when the session ends, after every gateway stopped, so shutdown lines count too.

What counts as a leak:
- the exact value of a provider key the tests give the gateways (tests/e2e/gateway.py PROVIDER_KEYS,
  any ``CCR_TEST_*_KEY`` of the environment): some have no recognisable shape;
- the secret part of a virtual key (``sk-ccr-<id>_<43 characters>``; the key id alone is fine);
- a signed or unsigned JWT (``eyJ<header>.eyJ<claims>.<signature>``), such as tests/e2e/test_jwt.py's.
Every JSON line that claims to be a log line (it has ``logger``) must also fit the log schema
(deploy/observability/logging/log-line.schema.json).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.gateway import PROVIDER_KEYS

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "deploy/observability/logging/log-line.schema.json"
_SHAPES = {
    "virtual key": re.compile(r"sk-ccr-[a-z2-7]{8}_[A-Za-z0-9_-]{43}"),
    "JWT": re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),
}


@dataclass(frozen=True)
class Finding:
    path: Path
    line_number: int
    what: str
    line: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line_number}: {self.what}: {self.line[:300]}"


@dataclass
class ScanReport:
    files: list[Path] = field(default_factory=list)
    lines: int = 0
    json_log_lines: int = 0
    findings: list[Finding] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.files)} log files, {self.lines} lines ({self.json_log_lines} JSON log lines), "
            f"{len(self.findings)} findings"
        )


def known_secrets(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """value -> name of every provider key given to the gateways under test."""
    secrets = {value: name for name, value in PROVIDER_KEYS.items()}
    secrets.update({value: name for name, value in environ.items() if _is_test_key(name) and len(value) >= 8})
    return secrets


def _is_test_key(name: str) -> bool:
    return name.startswith("CCR_TEST_") and name.endswith("_KEY")


def log_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*.log") if path.is_file())


def scan(paths: Iterable[Path], secrets: Mapping[str, str], schema: dict | None = None) -> ScanReport:
    """Every line of every file, raw and (for JSON lines) decoded, against the secrets and shapes."""
    validator = _validator(schema) if schema is not None else None
    report = ScanReport()
    for path in paths:
        report.files.append(path)
        with path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                report.lines += 1
                _scan_line(report, path, number, line.rstrip("\n"), secrets, validator)
    return report


def _scan_line(report: ScanReport, path: Path, number: int, line: str, secrets: Mapping[str, str], validator) -> None:
    texts = [line]
    entry = _json_object(line)
    found: list[str] = []  # what this line holds, once each (the raw and decoded texts often agree)
    if entry is not None:
        texts.extend(str(value) for value in entry.values())  # \u escapes decoded
        if "logger" in entry:
            report.json_log_lines += 1
            for error in validator.iter_errors(entry) if validator is not None else ():
                found.append(f"not in the log schema ({error.message})")
    for text in texts:
        found.extend(f"the value of {name}" for value, name in secrets.items() if value in text)
        found.extend(f"a {shape}" for shape, pattern in _SHAPES.items() if pattern.search(text))
    report.findings.extend(Finding(path, number, what, line) for what in dict.fromkeys(found))


def _json_object(line: str) -> dict | None:
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _validator(schema: dict):
    import jsonschema

    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
