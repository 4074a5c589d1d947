"""The console's sign-in sessions and the sign-in rate limit. Sans-IO: the clock is injected, no
HTTP here (routes_session.py sets the cookie).

A session id is 32 random bytes (urlsafe base64) held only in an HttpOnly cookie, so page scripts
cannot read it; its CSRF token (another 32 random bytes) is handed to the console in the sign-in
answer and kept in memory there, and every cookie-authenticated change must echo it in
``X-CSRF-Token``. Sessions live in this process: a restarted control plane signs everyone out,
which is fine for an operator console and keeps the ids off disk.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from control_plane.admin.roles import Principal

COOKIE_NAME = "ccr_admin_session"
CSRF_HEADER = "X-CSRF-Token"
MAX_SESSIONS = 10_000  # the oldest goes first beyond this: memory stays bounded whatever signs in
MAX_TRACKED_ADDRESSES = 10_000
WINDOW_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    principal: Principal
    csrf_token: str
    expires_at: float

    def csrf_matches(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf_token.encode())


class SessionStore:
    def __init__(self, ttl_seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl_seconds
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # oldest first

    def create(self, principal: Principal) -> Session:
        session = Session(secrets.token_urlsafe(32), principal, secrets.token_urlsafe(32), self._clock() + self.ttl)
        self._sessions[session.id] = session
        self._expire()
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of that id; None for an unknown or expired one (forgotten then)."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if self._clock() >= session.expires_at:
            del self._sessions[session_id]
            return None
        return session

    def delete(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self) -> None:
        now = self._clock()
        # Every session has the same lifetime, so insertion order is expiry order.
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if now < oldest.expires_at:
                break
            self._sessions.popitem(last=False)


class SignInLimiter:
    """Failed sign-ins per client address in a sliding window of a minute: once ``limit`` failures
    are in the window, further attempts are refused (``retry_after``) until the oldest leaves it.
    Only failures count: an operator signing in often is never locked out. A success does not
    clear them: a holder of one valid key must not earn more guesses at another."""

    def __init__(
        self, limit: int, *, window: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, None when it may now."""
        failures = self._recent(address)
        if failures is None or len(failures) < self.limit:
            return None
        return max(failures[0] + self.window - self._clock(), 0.001)

    def failed(self, address: str) -> None:
        failures = self._recent(address)
        if failures is None:
            failures = self._failures[address] = deque()
        failures.append(self._clock())
        self._failures.move_to_end(address)
        while len(failures) > self.limit:  # only the newest `limit` matter for the answer
            failures.popleft()
        while len(self._failures) > MAX_TRACKED_ADDRESSES:
            self._failures.popitem(last=False)

    def _recent(self, address: str) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        cutoff = self._clock() - self.window
        while failures and failures[0] <= cutoff:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures
