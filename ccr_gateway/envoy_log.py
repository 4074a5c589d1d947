"""Envoy's stderr, passed through `up` minus the warnings every start of this gateway prints.

Envoy 1.40 warns once per message type of a work-in-progress API it loads (22 lines for the SSE and
JSON parsers the usage capture uses: sse_to_metadata, content_parsers/json). They are expected; a
user who sees 22 warnings at every start stops reading warnings. So they are dropped and summed up in one line, the
extensions by name. Every other line goes through, unchanged or (given Envoy's pid) rewritten as a
JSON line of the schema every other process logs in (ccr_gateway/logs.py), secrets masked the same
way; ``--log-level debug`` keeps them all.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime
from typing import IO

import orjson

from ccr_gateway.logs import redact, secret_values, utc_time

_WORK_IN_PROGRESS = re.compile(
    r"is contained in proto file 'envoy/extensions/([^']+?)/v\d+[^/]*/[^']*' marked as work-in-progress"
)


def work_in_progress_extension(line: str) -> str | None:
    """``sse_to_metadata`` for a work-in-progress warning about that extension's protos, else None."""
    match = _WORK_IN_PROGRESS.search(line)
    if match is None:
        return None
    parts = match[1].split("/")
    if parts[0] == "filters" and len(parts) > 2:  # filters/http/NAME: the name says it all
        parts = parts[2:]
    return ".".join(parts)


# `up` starts Envoy with --log-format "[%Y-%m-%d %T.%e][envoy][%l] %v" (ccr_gateway/supervisor.py).
_ENVOY_LINE = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\]\[envoy\]\[(\w+)\] ?(.*)")
_ENVOY_LEVELS = {"trace": "debug", "debug": "debug", "info": "info", "warning": "warning", "error": "error"}


class EnvoyJsonLines:
    """Envoy's text lines as JSON lines: ``process`` and ``logger`` ``envoy``, its level and time.

    A line without Envoy's prefix continues the one before (a multi-line message): it keeps that
    line's level and gets the time it was read. Envoy prints its time in local time; the line
    says UTC, like all others."""

    def __init__(self, pid: int, secrets: tuple[str, ...] | None = None) -> None:
        self.pid = pid
        self.secrets = secret_values() if secrets is None else secrets
        self._level = "info"

    def convert(self, raw: bytes) -> bytes:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        match = _ENVOY_LINE.fullmatch(line)
        if match is None:
            return self.line(line, self._level)
        stamp, level, message = match.groups()
        self._level = _ENVOY_LEVELS.get(level, "critical")  # critical, and any level Envoy adds above
        return self.line(message, self._level, _epoch(stamp))

    def line(self, message: str, level: str, created: float | None = None) -> bytes:
        entry = {
            "time": utc_time(time.time() if created is None else created),
            "level": level,
            "logger": "envoy",
            "message": redact(message, self.secrets),
            "process": "envoy",
            "pid": self.pid,
        }
        return orjson.dumps(entry) + b"\n"


def _epoch(local_stamp: str) -> float | None:
    """Seconds since the epoch of ``2026-01-31 12:00:00.123`` in this machine's local time; None
    for a stamp that is no date (the reader thread must not die: Envoy blocks on a full pipe)."""
    try:
        return datetime.strptime(local_stamp, "%Y-%m-%d %H:%M:%S.%f").astimezone(UTC).timestamp()
    except ValueError:
        return None


class EnvoyLogFilter:
    """Reads Envoy's stderr (a pipe) on a thread of its own and forwards it to ``out``.

    The pipe must be drained at all times: Envoy blocks on a full pipe, so the thread never waits on
    anything but the next line."""

    def __init__(
        self, source: IO[bytes], out: IO[bytes], keep_everything: bool = False, json_pid: int | None = None
    ) -> None:
        """``json_pid``: Envoy's pid; given, every line is written as a JSON line (EnvoyJsonLines)."""
        self._source = source
        self._out = out
        self._keep_everything = keep_everything
        self._json = EnvoyJsonLines(json_pid) if json_pid is not None else None
        self._lock = threading.Lock()
        self._extensions: list[str] = []
        self._announced: set[str] = set()
        self._thread = threading.Thread(target=self._forward, name="envoy-stderr", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _forward(self) -> None:
        for raw in iter(self._source.readline, b""):
            if self._keep_everything or not self._expected(raw.decode("utf-8", "replace")):
                self._write(raw if self._json is None else self._json.convert(raw))

    def _expected(self, line: str) -> bool:
        extension = work_in_progress_extension(line)
        with self._lock:
            if extension is not None:
                if extension not in self._extensions:
                    self._extensions.append(extension)
                    if self._announced:  # one loaded by a later listener update: say so then
                        summary = self._summary_locked()
                        self._write(
                            summary.encode() + b"\n" if self._json is None else self._json.line(summary, "info")
                        )
                return True
        return False

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._out.flush()

    def summary(self) -> str | None:
        """The one line standing for the warnings dropped so far (None when there were none); later
        new extensions get a line of their own."""
        with self._lock:
            if not self._extensions:
                return None
            return self._summary_locked()

    def _summary_locked(self) -> str:
        self._announced.update(self._extensions)
        names = ", ".join(self._extensions)
        plural = "s" if len(self._extensions) > 1 else ""
        return (
            f"envoy: {len(self._extensions)} work-in-progress extension{plural} in use ({names}): expected, "
            "warnings hidden (--log-level debug shows them)"
        )
