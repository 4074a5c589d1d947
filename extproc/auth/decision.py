"""Who is asking, and may they: the auth step both decision paths (the hop, ext_proc) run.

Two calls per request, because what they need arrives at different times:

- ``authenticate`` (headers only, before the body is read): the virtual key the client presented
  in ``x-api-key`` or ``authorization: Bearer``. No key and ``auth.required`` off: anonymous, as
  before keys existed. A key that looks like ours (``sk-ccr-``) must be valid whether or not keys
  are required (a client that means to use one is told when it is wrong, not silently anonymous).
  With ``required`` on, no key or a foreign key is refused too. Refusals are 401s in the client's
  format, phrased like the real APIs: an unknown key id and a wrong secret get the same answer, and
  only the holder of the right secret learns that a key is revoked or expired.
- ``admit`` (after routing, for requests that go to a provider): the key's model list (403), then
  its rpm and tpm in this worker's ``LocalLimiter`` (429 with ``retry-after`` and the client API's
  rate-limit headers). Tokens are charged the gateway's estimate of the input.

Limits are per worker: with N workers each enforces limit / N (``Limit.divided``), since workers
share no state; Envoy balances requests over them, so a key sees about its limit in total. The
Redis-backed limiter (``redis_limits``) makes them exact across workers and gateways. ``max_parallel``
is not enforced yet: a slot would be released by the usage record, which another worker may count.

No I/O: the key lookup is the worker's in-memory ``KeyCache`` (or anything with its two methods),
the limiter is in process; time comes from the limiter's clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from ccr.v1.contract import ERROR_TYPE_LABEL, REQUEST_ID_HEADER
from extproc.auth.keys import KEY_PREFIX, VirtualKey
from extproc.auth.limits import Admission, Limit
from extproc.auth.local_limits import LocalLimiter
from extproc.plan import Chain, Forward
from extproc.request_steps import Endpoint, Reply, error_reply, request_labels
from extproc.translate.base import Api
from extproc.translate.errors import error_body

# OpenAI answers a wrong key with this code (and type invalid_request_error); its SDK reads the status.
OPENAI_INVALID_KEY_CODE = "invalid_api_key"
_BEARER = "bearer "


class KeyLookup(Protocol):
    """What the step needs of the worker's key cache (extproc.auth.key_cache.KeyCache)."""

    def lookup(self, presented: str) -> VirtualKey | None: ...

    def why_rejected(self, presented: str) -> str | None: ...


class NoKeys:
    """The lookup of a worker without a key store: no key is valid, so only anonymous requests
    pass (and none when keys are required)."""

    loaded = True

    def lookup(self, presented: str) -> VirtualKey | None:
        return None

    def why_rejected(self, presented: str) -> str | None:
        return "unknown key"


@dataclass(slots=True)
class Authenticator:
    """One per worker: the key lookup, the limiter, and this worker's share of every limit."""

    keys: KeyLookup = field(default_factory=NoKeys)
    limiter: LocalLimiter = field(default_factory=LocalLimiter)
    workers: int = 1  # how many workers split each key's limits
    # key id -> (the key the limits were made from, this worker's share): rebuilt when the key changes.
    _limits: dict[str, tuple[VirtualKey, tuple[Limit, ...]]] = field(default_factory=dict)

    def authenticate(
        self, api: Api, path: str, headers: Mapping[str, str], required: bool
    ) -> VirtualKey | Reply | None:
        """The presented key if valid, None for an anonymous request, or the 401 (503 while the
        keys are not loaded) in the client's format."""
        presented = _presented(headers)
        if presented is None:
            if not required:
                return None
            return _unauthorized(api, path, _missing_key_message(api), "ccr_auth_missing_key", code=None)
        key = self.keys.lookup(presented)
        if key is not None:
            return key
        if KEY_PREFIX not in presented:  # a provider's key, or anything else: not ours to judge
            if not required:
                return None
            message = "invalid API key: this gateway takes its own virtual keys (sk-ccr-...)"
            return _unauthorized(api, path, message, "ccr_auth_foreign_key")
        why = self.keys.why_rejected(presented)
        if why is not None and why.startswith("keys not loaded"):
            message = "the gateway cannot check API keys yet (its key store is unreachable); retry shortly"
            return error_reply(api, 503, message, "ccr_auth_store_down", labels=request_labels(api, path))
        if why in ("revoked", "expired"):
            message = "invalid API key: this key " + ("has been revoked" if why == "revoked" else "has expired")
            return _unauthorized(api, path, message, f"ccr_auth_key_{why}")
        return _unauthorized(api, path, "invalid API key", "ccr_auth_invalid_key")

    def admit(
        self, api: Api, endpoint: Endpoint, key: VirtualKey, outcome: Forward | Chain, headers: Mapping[str, str]
    ) -> Reply | None:
        """None if ``key`` may send this routed request now; else its 403 or 429."""
        decision = outcome.decision
        requested = decision.body["model"]
        routed = decision.route.target.model
        if key.models and not (key.allows_model(requested) or key.allows_model(routed)):
            labels = request_labels(api, endpoint.path, decision, key=key)
            message = f"this API key may not use model {requested!r} (it may use: {', '.join(key.models)})"
            return error_reply(api, 403, message, "ccr_auth_model_not_allowed", labels=labels)
        if endpoint.kind != "generate":  # counting tokens is free, as at the providers
            return None
        limits = self.limits_of(key)
        if not limits:
            return None
        request_id = headers.get(REQUEST_ID_HEADER, "")
        admission = self.limiter.admit(limits, request_id, token_estimate=outcome.context.estimate)
        if admission.allowed:
            return None
        labels = request_labels(api, endpoint.path, decision, key=key)
        refused = admission.limit.name if admission.limit is not None else "rpm"
        what = "requests" if refused == "rpm" else "input tokens"
        retry = max(1, math.ceil(admission.retry_after_s))
        message = f"rate limit of this API key exceeded ({what} per minute); retry after {retry} s"
        headers_out = rate_limit_headers(api, key, admission, self.limiter.clock())
        return error_reply(
            api, 429, message, "ccr_auth_rate_limited", (("retry-after", str(retry)), *headers_out), labels
        )

    def limits_of(self, key: VirtualKey) -> tuple[Limit, ...]:
        """This worker's share of ``key``'s rpm and tpm, made once per version of the key."""
        cached = self._limits.get(key.key_id)
        if cached is not None and cached[0] is key:
            return cached[1]
        scope = f"key:{key.key_id}"
        limits = tuple(
            Limit.of(name, scope, value).divided(self.workers)
            for name, value in (("rpm", key.rpm), ("tpm", key.tpm))
            if value is not None
        )
        self._limits[key.key_id] = (key, limits)
        return limits


def rate_limit_headers(api: Api, key: VirtualKey, admission: Admission, now: float) -> tuple[tuple[str, str], ...]:
    """The client API's own rate-limit headers: the key's configured limit, what this worker has
    left of its share, and when that share is whole again."""
    out: list[tuple[str, str]] = []
    for name, configured, kind in (("rpm", key.rpm, "requests"), ("tpm", key.tpm, "tokens")):
        if configured is None or name not in admission.remaining:
            continue
        remaining = str(int(admission.remaining[name]))
        reset_s = admission.reset_after_s.get(name, 0.0)
        if api is Api.OPENAI:
            out += [
                (f"x-ratelimit-limit-{kind}", str(configured)),
                (f"x-ratelimit-remaining-{kind}", remaining),
                (f"x-ratelimit-reset-{kind}", _duration(reset_s)),
            ]
        else:
            reset_at = datetime.fromtimestamp(math.ceil(now + reset_s), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            out += [
                (f"anthropic-ratelimit-{kind}-limit", str(configured)),
                (f"anthropic-ratelimit-{kind}-remaining", remaining),
                (f"anthropic-ratelimit-{kind}-reset", reset_at),
            ]
    return tuple(out)


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``6s``, ``1m30s``, ``250ms``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def _presented(headers: Mapping[str, str]) -> str | None:
    """The key the client sent: ``x-api-key`` (Anthropic's clients), else ``authorization``
    (OpenAI's: ``Bearer <key>``). When both are sent, the one that looks like ours."""
    api_key = headers.get("x-api-key")
    authorization = headers.get("authorization")
    if api_key and authorization and KEY_PREFIX in authorization and KEY_PREFIX not in api_key:
        return authorization
    if api_key:
        return api_key
    if authorization and authorization[: len(_BEARER)].lower() == _BEARER:
        return authorization
    return None


def _missing_key_message(api: Api) -> str:
    if api is Api.OPENAI:
        return "You didn't provide an API key: send a virtual key (sk-ccr-...) as 'Authorization: Bearer <key>'"
    return "x-api-key header is required: send a virtual key (sk-ccr-...)"


def _unauthorized(api: Api, path: str, message: str, details: str, code: str | None = OPENAI_INVALID_KEY_CODE) -> Reply:
    """A 401 as the real API answers it: Anthropic ``authentication_error``; OpenAI
    ``invalid_request_error`` with code ``invalid_api_key``."""
    reply = error_reply(api, 401, message, details, labels=request_labels(api, path))
    if api is not Api.OPENAI:
        return reply
    body = error_body(api, 400, message, code)  # 400's type is invalid_request_error, as OpenAI's 401 says
    labels = {**reply.labels, ERROR_TYPE_LABEL: "invalid_request_error"}
    return Reply(401, body, details, headers=reply.headers, labels=labels)
