"""The child processes of `ccr-gateway up`: how each is started, what its exit means, when it restarts.

Every child runs in its own session (a Ctrl-C in the terminal reaches only `up`, which stops the
children in order) and through ccr_gateway/orphan_guard.py (it dies with `up`, even a SIGKILLed one).
Nothing here decides *whether* a child restarts; the supervisor does, this module only keeps the
clock (Backoff) and the record (Child) that the state file and the metrics show.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

ORPHAN_GUARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "orphan_guard.py")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def describe_exit(returncode: int) -> str:
    """``code 1`` or ``signal 9`` (Popen reports a death by signal N as -N)."""
    return f"signal {-returncode}" if returncode < 0 else f"code {returncode}"


@dataclass
class Backoff:
    """Delay before restarting a child that exited: ``initial`` doubling up to ``ceiling``, back to
    ``initial`` once a run lasted ``reset_after`` seconds (a crash loop slows down, a child that
    dies once a day restarts at once)."""

    initial: float = 0.1
    ceiling: float = 5.0
    reset_after: float = 10.0
    _next: float = 0.0

    def delay(self, ran_for: float) -> float:
        if ran_for >= self.reset_after or self._next == 0.0:
            self._next = self.initial
        delay = self._next
        self._next = min(self._next * 2, self.ceiling)
        return delay


def guarded(argv: list[str]) -> list[str]:
    """``argv`` run through the orphan guard, with this process as the parent it must outlive."""
    return [sys.executable, "-I", "-S", ORPHAN_GUARD, str(os.getpid()), *argv]


@dataclass
class Child:
    """One supervised process and its history; ``argv`` is reused verbatim by every restart (same
    sockets, same ports: Envoy's static clusters and the xDS address must not move)."""

    name: str
    argv: list[str]
    before_start: Callable[[], None] = lambda: None  # e.g. remove a dead worker's stale sockets
    stderr: int | IO[Any] | None = None  # subprocess.PIPE for Envoy (its log filter reads it)
    env: Mapping[str, str] | None = None  # None: this process's environment as it is at each start
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    last_exit: str | None = None
    last_restart: str | None = None
    restart_due: float | None = None  # time.monotonic() at which to start it again
    started_at: float = 0.0
    backoff: Backoff = field(default_factory=Backoff)
    _reported: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def role(self) -> str:
        """``extproc`` for ``extproc-3``: what the child is, whichever instance."""
        stem, _, index = self.name.rpartition("-")
        return stem if index.isdigit() else self.name

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> subprocess.Popen[bytes]:
        self.before_start()
        self.process = subprocess.Popen(guarded(self.argv), start_new_session=True, stderr=self.stderr, env=self.env)
        self.started_at = time.monotonic()
        self.restart_due = None
        return self.process

    def exited(self) -> str | None:
        """How the process ended (``signal 9``), once: None while it runs and after it was reported."""
        process = self.process
        if process is None or process is self._reported or process.poll() is None:
            return None
        self._reported = process
        self.last_exit = describe_exit(process.returncode)
        return self.last_exit

    def schedule_restart(self) -> float:
        delay = self.backoff.delay(time.monotonic() - self.started_at)
        self.restart_due = time.monotonic() + delay
        return delay

    def restart(self) -> None:
        self.restarts += 1
        self.last_restart = utc_now()
        self.start()

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signum)

    def state(self) -> dict[str, Any]:
        """This child's entry in the state file (ccr_gateway/state_file.py)."""
        return {
            "name": self.name,
            "pid": self.pid,
            "restarts": self.restarts,
            "alive": self.alive,
            "last_exit": self.last_exit,
            "last_restart": self.last_restart,
        }
