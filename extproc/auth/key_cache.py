"""Each worker's copy of the virtual keys, answering "whose key is this?" on the request path
without I/O.

Loaded whole at start, then kept current by asking the store for the rows changed since the
highest version seen: every ``poll_interval`` (SQLite 0.5 s, PostgreSQL 1 s) and, for PostgreSQL,
as soon as a NOTIFY says something changed. While the store cannot be reached the cache keeps
answering from what it last knew (a gateway keeps serving through a database restart; a key
revoked during the outage is revoked when it is back), sets ``ccr_auth_key_store_up`` to 0,
counts each failed read in ``ccr_auth_key_store_errors_total`` and logs once per outage.

Not thread-safe: ``lookup`` and the refresh task run on the worker's event loop, which is what
keeps them from interleaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable

from prometheus_client import Counter, Gauge

from extproc.auth.key_store import COMMAND_TIMEOUT, KeyStore, KeyStoreUnavailable, Listening
from extproc.auth.keys import KeyRecord, VirtualKey, parse_presented

log = logging.getLogger(__name__)

STORE_UP = Gauge(
    "ccr_auth_key_store_up",
    "1 while this worker's key cache can read the key store, 0 while it cannot (it answers from its last copy)",
    multiprocess_mode="livemin",  # under `up`: 0 while any worker cannot
)
STORE_ERRORS = Counter("ccr_auth_key_store_errors_total", "Failed reads of the key store by this worker's key cache")

# How many distinct presented strings one key may have remembered as verified ("Bearer k",
# "k", ...): enough for every honest client, a bound for anyone varying the spelling of a
# key they hold.
MAX_VERIFIED_FORMS_PER_KEY = 8


class KeyCache:
    def __init__(
        self,
        store: KeyStore,
        *,
        poll_interval: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.poll_interval = store.poll_interval if poll_interval is None else poll_interval
        self._clock = clock
        self._records: dict[str, KeyRecord] = {}
        # presented string -> (key, deadline): a verification done once, so the hash is computed
        # once per key per worker. The deadline is when the entry stops being good by itself (the
        # key expires, or the previous secret's grace ends); every other change to a key drops
        # its entries (apply).
        self._verified: dict[str, tuple[VirtualKey, float | None]] = {}
        self._verified_by_key: dict[str, list[str]] = {}
        self.version = 0  # the highest store version applied
        self.loaded = False  # a full load has succeeded: until then every lookup fails (closed)
        self._store_up = True  # as last seen; starts True so the first failure is logged
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listening: Listening | None = None

    # -- the request path ----------------------------------------------------------------------

    def lookup(self, presented: str) -> VirtualKey | None:
        """The key a client presented (the ``x-api-key`` value, or ``Bearer <key>``) if it is
        valid and usable now; None otherwise (``why_rejected`` says why)."""
        entry = self._verified.get(presented)
        if entry is not None:
            key, deadline = entry
            if deadline is None or self._clock() < deadline:
                return key
            return None
        return self._verify(presented)

    def _verify(self, presented: str) -> VirtualKey | None:
        parsed = parse_presented(presented)
        if parsed is None:
            return None
        key_id, secret = parsed
        record = self._records.get(key_id)
        if record is None:
            return None
        now = self._clock()
        key = record.key
        if key.usable_at(now) is not None:
            return None
        deadline = key.expires_at
        if not record.secret.matches(secret):
            if not (record.previous_secret_valid_at(now) and record.previous_secret.matches(secret)):  # type: ignore[union-attr]
                return None
            deadline = min(record.previous_valid_until or math.inf, deadline or math.inf)
        forms = self._verified_by_key.setdefault(key_id, [])
        if len(forms) < MAX_VERIFIED_FORMS_PER_KEY:
            forms.append(presented)
            self._verified[presented] = (key, deadline)
        return key

    def by_id(self, key_id: str) -> VirtualKey | None:
        """The key of this id if it is usable now, for a caller who names it without its secret:
        a verified JWT's key claim (extproc.auth.jwt_identity)."""
        record = self._records.get(key_id)
        if record is None or record.key.usable_at(self._clock()) is not None:
            return None
        return record.key

    def why_rejected(self, presented: str) -> str | None:
        """Why ``lookup`` refuses ``presented``, for logs and error bodies (None: it does not).
        The slow path: never a cached answer."""
        parsed = parse_presented(presented)
        if parsed is None:
            return "not a ccr-gateway key (sk-ccr-...)"
        if not self.loaded:
            return "keys not loaded yet (key store unreachable)"
        record = self._records.get(parsed[0])
        if record is None:
            return "unknown key"
        now = self._clock()
        # The secret first: whether a key id is revoked or expired is told only to its holder.
        if not record.verify(parsed[1], now):
            return "wrong secret"
        return record.key.usable_at(now)

    # -- keeping current (sans-IO part) --------------------------------------------------------

    def apply(self, records: Iterable[KeyRecord]) -> None:
        """Take changed records (from ``changes_since``): each replaces its key's old record and
        forgets its verifications, so a rotation or an edit is seen by the next lookup."""
        for record in records:
            self._records[record.key_id] = record
            for presented in self._verified_by_key.pop(record.key_id, ()):
                self._verified.pop(presented, None)
            self.version = max(self.version, record.version)

    def __len__(self) -> int:
        return len(self._records)

    # -- keeping current (I/O) -----------------------------------------------------------------

    async def start(self) -> bool:
        """Load every key, then keep refreshing in a task of this loop. Returns whether the load
        worked; if not the cache keeps trying, and rejects every key until it has."""
        loaded = await self.refresh()
        self._task = asyncio.create_task(self._keep_current(), name="key-cache-refresh")
        return loaded

    async def refresh(self) -> bool:
        """One incremental reload; False (counted, logged once per outage) if the store failed."""
        try:
            records = await asyncio.wait_for(self._store.changes_since(self.version), COMMAND_TIMEOUT)
        except (KeyStoreUnavailable, TimeoutError) as exc:
            STORE_ERRORS.inc()
            STORE_UP.set(0)
            if self._store_up:
                self._store_up = False
                log.warning("key store unreachable, serving the %d keys last read: %s", len(self._records), exc)
            await self._stop_listening()  # likely dead too; LISTEN again once the store is back
            return False
        self.apply(records)
        self.loaded = True
        STORE_UP.set(1)
        if not self._store_up:
            self._store_up = True
            log.warning("key store reachable again (%d keys)", len(self._records))
        return True

    async def _keep_current(self) -> None:
        while True:
            try:
                if self._store_up and (self._listening is None or not self._listening.alive):
                    await self._listen()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                self._wake.clear()
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop the refreshes: keys would go stale silently
                log.exception("key cache refresh failed")
                await asyncio.sleep(self.poll_interval)

    async def _listen(self) -> None:
        listen = getattr(self._store, "listen", None)  # only stores that push changes have it
        if listen is None:
            return
        await self._stop_listening()
        try:
            self._listening = await listen(self._wake.set)
        except KeyStoreUnavailable as exc:
            log.debug("cannot LISTEN for key changes, polling: %s", exc)
            return
        # Changes committed before the LISTEN took effect sent no notification to us: look once.
        self._wake.set()

    async def _stop_listening(self) -> None:
        if self._listening is not None:
            listening, self._listening = self._listening, None
            await listening.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._stop_listening()
