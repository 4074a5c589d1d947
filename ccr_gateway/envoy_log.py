"""Envoy's stderr, passed through `up` minus the warnings every start of this gateway prints.

Envoy 1.40 warns once per message type of a work-in-progress API it loads (22 lines for the SSE and
JSON parsers the usage capture uses: sse_to_metadata, content_parsers/json). They are expected; a
user who sees 22 warnings at every start stops reading warnings. So they are dropped and summed up in one line, the
extensions by name. Every other line goes through unchanged; ``--log-level debug`` keeps them all.
"""

from __future__ import annotations

import re
import threading
from typing import IO

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


class EnvoyLogFilter:
    """Reads Envoy's stderr (a pipe) on a thread of its own and forwards it to ``out``.

    The pipe must be drained at all times: Envoy blocks on a full pipe, so the thread never waits on
    anything but the next line."""

    def __init__(self, source: IO[bytes], out: IO[bytes], keep_everything: bool = False) -> None:
        self._source = source
        self._out = out
        self._keep_everything = keep_everything
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
                self._write(raw)

    def _expected(self, line: str) -> bool:
        extension = work_in_progress_extension(line)
        with self._lock:
            if extension is not None:
                if extension not in self._extensions:
                    self._extensions.append(extension)
                    if self._announced:  # one loaded by a later listener update: say so then
                        self._write(self._summary_locked().encode() + b"\n")
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
