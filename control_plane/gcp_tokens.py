"""OAuth access tokens for Vertex AI providers, obtained and refreshed by the control plane.

Envoy injects the token (``Authorization: Bearer <token>``) exactly as it injects a provider key
read from Vault: an SDS generic secret per provider and the credential injector in the provider
cluster's upstream filter chain (control_plane.resources.provider_keys). A refresh is a new
version of that secret alone: no restart, no drained connection. The client never sends it, ext_proc
never holds it, and nothing here logs it.

Token sources (the provider's ``credentials:``, control_plane.policy.credentials; the HTTP ones in
control_plane.gcp_token_sources):

- ``service_account:<path>``: the OAuth 2.0 JWT-bearer grant (RFC 7523) with the key file's private
  key (RS256), posted to its ``token_uri``;
- ``metadata``: the GCE/GKE metadata server (workload identity on GKE);
- ``env:<VAR>``: a token already in a variable (tests, development), valid for ``lifetime``.

Tokens live about an hour: each is refreshed at 80 % of its life, or 5 minutes before it expires if
that comes first. A failed refresh keeps the last good token until it expires (logged, counted in
``ccr_gcp_token_refresh_failures_total``) and is retried with a backoff; once no good token is
left, the secret goes empty, ext_proc answers 503 for the provider (Provider.key_unavailable) and
Envoy's refusal to send without a credential becomes the same 503 in the client's format.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter

from control_plane.policy import GatewayPolicy, ProviderSpec
from control_plane.policy.credentials import GCP_APIS, gcp_source

log = logging.getLogger("ccr.control_plane.gcp_tokens")

REFRESH_FAILURES = Counter(
    "ccr_gcp_token_refresh_failures_total", "Failed OAuth token refreshes for Vertex providers", ["provider"]
)
REFRESHES = Counter("ccr_gcp_token_refreshes_total", "OAuth tokens obtained for Vertex providers", ["provider"])

REFRESH_AT_FRACTION = 0.8
REFRESH_MARGIN_S = 300.0
RETRY_MIN_S, RETRY_MAX_S = 1.0, 60.0
REF_PREFIX = "gcp:"  # the reference text a vertex provider's token is kept under (ProviderSpec.injected_key_ref)


class TokenError(Exception):
    """A token could not be obtained; the message never holds a secret."""


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    expires_at: float  # on the refresher's clock (time.time by default)
    lifetime_s: float

    def __repr__(self) -> str:  # never the value
        return f"Token(expires_at={self.expires_at:.0f}, lifetime_s={self.lifetime_s:.0f})"


class TokenSource(Protocol):
    async def fetch(self, now: float) -> Token: ...


def refresh_delay(token: Token, now: float) -> float:
    """Seconds from ``now`` until ``token`` is refreshed: at 80 % of its life, or 5 minutes before
    it expires, whichever comes first; never before half its life (a token shorter than 10 minutes
    would otherwise be refreshed in a loop), never negative."""
    life = token.lifetime_s
    issued = token.expires_at - life
    at = issued + min(REFRESH_AT_FRACTION * life, max(life / 2, life - REFRESH_MARGIN_S))
    return max(0.0, at - now)


class EnvTokenSource:
    """A token already in a variable (tests, development): re-read at each refresh."""

    def __init__(self, var: str, environ: Mapping[str, str] | None = None, lifetime_s: float = 3600.0) -> None:
        self.var, self.environ, self.lifetime_s = var, environ, lifetime_s

    async def fetch(self, now: float) -> Token:
        value = (os.environ if self.environ is None else self.environ).get(self.var, "")
        if not value:
            raise TokenError(f"the variable {self.var} is not set")
        return Token(value, now + self.lifetime_s, self.lifetime_s)


def source_for(credentials: str, environ: Mapping[str, str] | None = None) -> TokenSource:
    """The token source a vertex provider's ``credentials:`` names (validated by the policy parser);
    ``${VAR}`` in a key path is read from ``environ``. Environment overrides for tests and local
    fakes: CCR_GCP_TOKEN_URI (the token endpoint), GCE_METADATA_HOST (as Google's libraries)."""
    env = os.environ if environ is None else environ
    text = gcp_source(credentials)
    if text.startswith("env:"):
        return EnvTokenSource(text.removeprefix("env:"), env)
    # The HTTP and signing sources load only now, for a policy with a vertex provider: aiohttp and
    # cryptography are ~16 MB of every control plane's memory otherwise (docs/performance.md).
    from control_plane.gcp_token_sources import METADATA_URL, MetadataSource, ServiceAccountSource

    if text == "metadata":
        host = env.get("GCE_METADATA_HOST", "")
        return MetadataSource(f"http://{host}" if host else METADATA_URL)
    where = text.removeprefix("service_account:")
    if where.startswith("${") and where.endswith("}"):
        where = env.get(where[2:-1], "")
    return ServiceAccountSource(where, env.get("CCR_GCP_TOKEN_URI") or None)


def token_ref(provider: ProviderSpec) -> str:
    """The reference text a vertex provider's token is kept under (the rollout's key mapping)."""
    return REF_PREFIX + gcp_source(provider.credentials)


class TokenRefresher:
    """One refresh task per token source the policy's vertex providers name. ``on_change(tokens,
    problems)``: reference text -> token value, reference text -> why there is none; called on the
    event loop at every change (a new token, a failure, an expiry)."""

    def __init__(
        self,
        source_factory: Callable[[str], TokenSource] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self.source_factory = source_factory or source_for
        self.clock = clock
        self.sleep = sleep or asyncio.sleep
        self.tokens: dict[str, Token] = {}
        self._problems: dict[str, str] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.providers: dict[str, tuple[str, ...]] = {}  # reference -> provider names (metrics, logs)
        self.on_change: Callable[[dict[str, str], dict[str, str]], None] | None = None

    def follow(self, policy: GatewayPolicy) -> None:
        """The token sources of a newly accepted policy: new ones start, dropped ones stop."""
        by_ref: dict[str, list[str]] = {}
        for provider in policy.providers:
            if provider.api in GCP_APIS:
                by_ref.setdefault(token_ref(provider), []).append(provider.name)
        self.providers = {ref: tuple(names) for ref, names in by_ref.items()}
        for ref in list(self._tasks):
            if ref not in by_ref:
                self._tasks.pop(ref).cancel()
                self.tokens.pop(ref, None)
                self._problems.pop(ref, None)
        for ref in by_ref:
            if ref not in self._tasks:
                self._problems.setdefault(ref, "no OAuth token obtained by the control plane yet")
                self._tasks[ref] = asyncio.get_running_loop().create_task(self._run(ref))

    def values(self) -> dict[str, str]:
        now = self.clock()
        return {ref: token.value for ref, token in self.tokens.items() if token.expires_at > now}

    def problems(self) -> dict[str, str]:
        return {ref: problem for ref, problem in self._problems.items() if ref not in self.values()}

    async def refresh(self, ref: str, source: TokenSource) -> float:
        """One attempt; returns how long to wait before the next."""
        names = ",".join(self.providers.get(ref, ()))
        now = self.clock()
        try:
            token = await source.fetch(now)
        except TokenError as exc:
            REFRESH_FAILURES.labels(names).inc()
            last = self.tokens.get(ref)
            if last is not None and last.expires_at > now:
                log.warning(
                    "Vertex token for %s: refresh failed (%s); the last one is kept until it expires", names, exc
                )
                wait = min(RETRY_MAX_S, max(RETRY_MIN_S, (last.expires_at - now) / 10))
                return min(wait, last.expires_at - now)
            log.error("Vertex token for %s: %s", names, exc)
            self.tokens.pop(ref, None)
            self._problems[ref] = f"no OAuth token: {exc}"
            self._changed()
            return RETRY_MIN_S if last is None else RETRY_MAX_S / 4
        REFRESHES.labels(names).inc()
        self.tokens[ref] = token
        self._problems.pop(ref, None)
        log.info("Vertex token for %s obtained (expires in %.0f s)", names, token.expires_at - now)
        self._changed()
        return refresh_delay(token, now)

    async def _run(self, ref: str) -> None:
        source = self.source_factory(ref.removeprefix(REF_PREFIX))
        failures = 0
        while True:
            wait = await self.refresh(ref, source)
            failures = failures + 1 if ref in self._problems else 0
            if failures:  # no token at all: back off, up to a minute
                wait = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** min(failures - 1, 6))
            token = self.tokens.get(ref)
            if token is not None:  # wake at expiry at the latest, to empty the secret
                wait = min(wait, max(0.0, token.expires_at - self.clock()) + 0.001)
                if token.expires_at <= self.clock():
                    self.tokens.pop(ref)
                    self._problems[ref] = "the OAuth token expired and could not be refreshed"
                    self._changed()
            await self.sleep(wait)  # type: ignore[misc]

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.values(), self.problems())

    def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
