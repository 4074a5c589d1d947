"""Who is asking, and may they: the auth step both decision paths (the hop, ext_proc) run.

Two calls per request, because what they need arrives at different times:

- ``authenticate`` (headers only, before the body is read): the virtual key the client presented
  in ``x-api-key`` or ``authorization: Bearer``. No key and ``auth.required`` off: anonymous, as
  before keys existed. A key that looks like ours (``sk-ccr-``) must be valid whether or not keys
  are required (a client that means to use one is told when it is wrong, not silently anonymous).
  With ``required`` on, no key or a foreign key is refused too, unless a client certificate the
  policy maps to a tenant (``listener.tls.identities``) stands for one. Refusals are 401s in the client's
  format, phrased like the real APIs: an unknown key id and a wrong secret get the same answer, and
  only the holder of the right secret learns that a key is revoked or expired.
- after routing, for requests that go to a provider: ``charge`` (the key's model list, 403; what
  the request is checked against: extproc.auth.admission), the admission itself (``admit_local`` in
  this worker, or ``admit_shared`` awaited against Redis when the policy's ``auth.limits.redis`` is
  set), and ``verdict``: the 429 with ``retry-after`` and the client API's rate-limit headers, or,
  for an admitted request, those headers for its answer. ``admit`` is the three in one, in process.
- ``settle``, from the usage log: what the request really used, given back to its limits.

In process, limits are per worker: with N workers each enforces limit / N (``Limit.divided``),
since workers share no state; Envoy balances requests over them, so a key sees about its limit in
total. In Redis they are exact across workers and gateways.

No I/O here: the key lookup is the worker's in-memory ``KeyCache`` (or anything with its two
methods); the shared limiter is passed in (``redis_limits.GuardedLimiter``); time comes from the
limiter's clock.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import orjson

from ccr.v1 import tracing
from ccr.v1.contract import ERROR_TYPE_LABEL, REQUEST_ID_HEADER
from extproc.auth import batch_caller, jwt_identity
from extproc.auth.admission import (
    Charge,
    HeldCharges,
    SharedLimiter,
    Spent,
    admit_local,
    admit_shared,
    budget_of,
    limits_of,
    scoped_budget,
    scoped_limits,
    settle_local,
    settle_shared,
    worst_case_usd,
)
from extproc.auth.cert_identity import cert_caller
from extproc.auth.keys import KEY_PREFIX, VirtualKey
from extproc.auth.limits import BUDGET, PARALLEL, TOKEN_LIMITS, Admission, Budget, Limit, period_window
from extproc.auth.local_limits import LocalLimiter
from extproc.metrics import ADMISSIONS, BUDGET_ALERTS, BUDGET_REMAINING, LIMIT_REMAINING, labelled
from extproc.plan import Chain, Forward
from extproc.request_steps import Endpoint, Reply, error_reply, request_labels
from extproc.routing_table import TenantRules
from extproc.translate.base import Api
from extproc.translate.errors import OPENAI_SHAPED, error_body

# OpenAI answers a wrong key with this code (and type invalid_request_error); its SDK reads the status.
OPENAI_INVALID_KEY_CODE = "invalid_api_key"
_NO_IDENTITIES: Mapping[str, str] = {}
log = logging.getLogger("ccr.auth")
RATE_LIMIT_CODE = "rate_limit_exceeded"  # OpenAI's code of a 429 (its type: "requests" or "tokens")
QUOTA_ERROR = "insufficient_quota"  # OpenAI's type and code for a spent quota
_BEARER = "bearer "


class KeyLookup(Protocol):
    """What the step needs of the worker's key cache (extproc.auth.key_cache.KeyCache)."""

    def lookup(self, presented: str) -> VirtualKey | None: ...

    def why_rejected(self, presented: str) -> str | None: ...

    def by_id(self, key_id: str) -> VirtualKey | None: ...


class NoKeys:
    """The lookup of a worker without a key store: no key is valid, so only anonymous requests
    pass (and none when keys are required)."""

    loaded = True

    def lookup(self, presented: str) -> VirtualKey | None:
        return None

    def why_rejected(self, presented: str) -> str | None:
        return "unknown key"

    def by_id(self, key_id: str) -> VirtualKey | None:
        return None


@dataclass(slots=True)
class Authenticator:
    """One per worker: the key lookup, the limiter, and this worker's share of every limit."""

    keys: KeyLookup = field(default_factory=NoKeys)
    limiter: LocalLimiter = field(default_factory=LocalLimiter)
    workers: int = 1  # how many workers split each key's limits (in-process limits only)
    # The cluster-wide limiter (Redis, its failure policy inside); None: limits in this process.
    shared_limiter: SharedLimiter | None = None
    held: HeldCharges = field(default_factory=HeldCharges)  # admitted, not yet settled
    budget_alert_at: float = 0.8  # the fraction of a budget spent that logs a warning (once a period)
    _alerted: set[tuple[str, float]] = field(default_factory=set)  # (key id, period start) alerted
    # scope -> (the tenant or model rules they were made from, the limits): rebuilt with the policy.
    _policy_limits: dict[str, tuple[object, tuple[Limit, ...]]] = field(default_factory=dict)
    # key id -> (the key they were made from, its limits, its budget): rebuilt when the key changes.
    _limits: dict[str, tuple[VirtualKey, tuple[Limit, ...], Budget | None]] = field(default_factory=dict)

    def authenticate(
        self,
        api: Api,
        path: str,
        headers: Mapping[str, str],
        required: bool,
        identities: Mapping[str, str] = _NO_IDENTITIES,
        batch_workers: frozenset[str] = frozenset(),
    ) -> VirtualKey | Reply | None:
        """The presented key if valid, None for an anonymous request, or the 401 (503 while the
        keys are not loaded) in the client's format. A JWT Envoy verified comes first (its caller,
        or the 401/403 of a token that names nobody: ``_jwt_caller``). ``required``: the table's
        ``auth_required``; ``identities``: its ``cert_identities``.

        A verified client certificate the policy maps to a tenant (extproc.auth.cert_identity)
        stands for a key when none of ours is presented: no key, or a foreign one (an SDK needs
        some key, and a provider's key or a placeholder is not ours to judge). A gateway key, valid
        or not, is judged as a key.

        ``batch_workers``: the table's ``batch_workers``, the keys whose batch items are sent for
        the batch's owner (extproc.auth.batch_caller)."""
        caller = self._jwt_caller(api, path, headers)
        if caller is not None:
            return caller
        presented = _presented(headers)
        if presented is None or (KEY_PREFIX not in presented and identities):
            certified = cert_caller(headers, identities)
            if certified is not None:
                return certified
        if presented is None:
            if not required:
                return None
            message = _missing_key_message(api)
            if jwt_identity.FROM_HEADER in headers:
                message += " or a JWT of the gateway's identity provider"
            if identities:
                message += " or a client certificate the gateway maps to a tenant"
            return _unauthorized(api, path, message, "ccr_auth_missing_key", code=None)
        key = self.keys.lookup(presented)
        if key is not None:
            if batch_workers and key.key_id in batch_workers:
                return self._batch_owner(api, path, key, headers, required)
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

    def _batch_owner(
        self, api: Api, path: str, worker: VirtualKey, headers: Mapping[str, str], required: bool
    ) -> VirtualKey | Reply | None:
        """A trusted batch worker's item: the batch's owner (its 401 when the owner's key is gone)."""
        caller = batch_caller.act_for(worker, headers, self.keys.by_id, anonymous_allowed=not required)
        if caller is batch_caller.NOT_A_BATCH:
            return worker
        if isinstance(caller, batch_caller.OwnerRefused):
            return _unauthorized(api, path, caller.message, caller.details)
        return caller  # type: ignore[return-value]  # a BatchCaller, or None: an anonymous batch

    def _jwt_caller(self, api: Api, path: str, headers: Mapping[str, str]) -> VirtualKey | Reply | None:
        """The caller of a verified token (extproc.auth.jwt_identity), the 401 of a token that
        failed, the 403 of one whose claims name nobody; None without a token."""
        claims = jwt_identity.read_claims(headers)
        if claims is None:
            return None
        if isinstance(claims, jwt_identity.VerifiedClaims):
            if claims.key and not getattr(self.keys, "loaded", True):
                message = "the gateway cannot check API keys yet (its key store is unreachable); retry shortly"
                return error_reply(api, 503, message, "ccr_auth_store_down", labels=request_labels(api, path))
            caller = jwt_identity.identity(claims, self.keys.by_id)
            if not isinstance(caller, jwt_identity.JwtRefusal):
                return caller
            refusal = caller
        else:
            refusal = claims
        if refusal.status == 401:
            return _unauthorized(api, path, refusal.message, refusal.details)
        return error_reply(api, refusal.status, refusal.message, refusal.details, labels=request_labels(api, path))

    def gate(self, api: Api, path: str, headers: Mapping[str, str], required: bool, answer: Reply) -> Reply:
        """An answer the gateway gives on its own (the model list, a 200): only to a caller the
        policy lets in; errors go to anyone (they say what is wrong with the request)."""
        if answer.status != 200:
            return answer
        caller = self.authenticate(api, path, headers, required)
        return caller if isinstance(caller, Reply) else answer

    def charge(
        self,
        api: Api,
        endpoint: Endpoint,
        key: VirtualKey,
        outcome: Forward | Chain,
        headers: Mapping[str, str],
        tenant: TenantRules | None = None,
    ) -> Reply | Charge | None:
        """What ``key``'s routed request is checked against (None: nothing, it may go), or its 403
        when the key (or its tenant, by the policy's ``tenant`` rules) may not use the model."""
        decision = outcome.decision
        requested = decision.body["model"]
        route = decision.route
        routed = route.target.model
        for models, whose in ((key.models, "this API key"), (tenant.models if tenant else (), "this API key's tenant")):
            if models and requested not in models and routed not in models and route.model not in models:
                labels = request_labels(api, endpoint.path, decision, key=key)
                message = f"{whose} may not use model {requested!r} (it may use: {', '.join(models)})"
                return error_reply(api, 403, message, "ccr_auth_model_not_allowed", labels=labels)
        if endpoint.kind != "generate":  # counting tokens is free, as at the providers
            return None
        limits, budget = self.limits_of(key)
        budgets = (budget,) if budget is not None else ()
        share = 1 if self.shared_limiter is not None else self.workers
        if tenant is not None:
            limits = limits + self._scoped(tenant, f"tenant:{tenant.name}", tenant.limits, share)
            if tenant.budget is not None:
                budgets += (scoped_budget(f"tenant:{tenant.name}", *tenant.budget, workers=share),)
            if (per_key := tenant.key_model_limits.get(route.model)) is not None:
                limits += scoped_limits(f"key_model:{key.key_id}:{route.model}", per_key, share)
        if route.limits:
            limits += self._scoped(route, f"model:{route.provider.name}/{route.model}", route.limits, share)
        if not limits and not budgets:
            return None
        worst_case = worst_case_usd(outcome, decision.body) if budgets else 0.0
        request_id = headers.get(REQUEST_ID_HEADER, "")
        return Charge(key, request_id, limits, budgets, outcome.context.estimate, worst_case)

    def _scoped(self, owner: object, scope: str, values: tuple[tuple[str, int], ...], share: int) -> tuple[Limit, ...]:
        """The limits the policy sets on a tenant or a model, made once per policy version (the
        owner is the routing table's object, replaced with the table)."""
        cached = self._policy_limits.get(scope)
        if cached is not None and cached[0] is owner:
            return cached[1]
        limits = scoped_limits(scope, values, share)
        self._policy_limits[scope] = (owner, limits)
        return limits

    @property
    def shared(self) -> bool:
        """Whether admission needs a round trip (the limits are in Redis): the caller awaits ``admit_shared``."""
        return self.shared_limiter is not None

    def admit_local(self, charge: Charge) -> Admission:
        return admit_local(self.limiter, charge)

    async def admit_shared(self, charge: Charge) -> Admission:
        assert self.shared_limiter is not None
        with tracing.span("ccr.auth.limits", tracing.CLIENT, {"db.system": "redis"}) as span:
            admission = await admit_shared(self.shared_limiter, charge)
            span.set("ccr.auth.admitted", admission.allowed)
        return admission

    def verdict(
        self, api: Api, endpoint: Endpoint, outcome: Forward | Chain, charge: Charge, admission: Admission
    ) -> Reply | tuple[tuple[str, str], ...]:
        """The refusal for an admission that failed; for one that passed, the charge is held until
        its usage settles it and the rate-limit headers for the client's answer are returned."""
        key = charge.key
        refused = admission.limit
        outcome_label = "degraded" if admission.degraded else "admitted" if admission.allowed else "refused"
        labelled(ADMISSIONS, outcome_label, refused.name if refused is not None else "").inc()
        if admission.allowed:
            if charge.request_id:
                self.held.hold(charge)
            self._watch(charge, admission)
            return rate_limit_headers(api, key, admission, self.clock())
        labels = request_labels(api, endpoint.path, outcome.decision, key=key)
        retry = max(1, math.ceil(admission.retry_after_s))
        # A refusal with no figures is a fail_closed policy's (the store did not answer): a 503. A
        # `local` fallback's refusal counted in this worker and is a real 429, figures and all.
        if admission.degraded and not admission.remaining:
            message = "the gateway cannot check this API key's limits right now (its limit store is unreachable)"
            return error_reply(api, 503, message, "ccr_auth_limits_unavailable", (("retry-after", str(retry)),), labels)
        headers_out = (("retry-after", str(retry)), *rate_limit_headers(api, key, admission, self.clock()))
        if isinstance(refused, Budget):
            owner = "this API key" if refused.scope.startswith("key:") else f"tenant {key.tenant!r}"
            if refused.period == "never":  # no wait will help: no retry-after
                return _quota_reply(api, f"the budget of {owner} is spent", headers_out[1:], labels)
            until = datetime.fromtimestamp(self.clock() + admission.retry_after_s, UTC).strftime("%Y-%m-%d %H:%M UTC")
            message = f"the budget of {owner} is spent (its {refused.period}'s budget is back {until})"
            return _quota_reply(api, message, headers_out, labels)
        what = _LIMIT_WORDS.get(refused.name if refused is not None else "rpm", "requests per minute")
        message = f"rate limit of {_owner(refused, key)} exceeded ({what}); retry after {retry} s"
        reply = error_reply(api, 429, message, "ccr_auth_rate_limited", headers_out, labels)
        if api not in OPENAI_SHAPED:
            return reply
        # As OpenAI writes a 429: type "requests" or "tokens", code "rate_limit_exceeded".
        kind = "tokens" if refused is not None and refused.name in TOKEN_LIMITS else "requests"
        body = orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": RATE_LIMIT_CODE}})
        return Reply(429, body, reply.details, headers=reply.headers, labels={**reply.labels, ERROR_TYPE_LABEL: kind})

    def _watch(self, charge: Charge, admission: Admission) -> None:
        """The headroom gauges, and the soft alert when a budget crosses ``budget_alert_at``."""
        tenant = charge.key.tenant
        for name, remaining in admission.remaining.items():
            labelled(LIMIT_REMAINING, tenant, name).set(remaining)
        budget = charge.budget
        if budget is None or BUDGET not in admission.remaining:
            return
        left = admission.remaining[BUDGET]
        labelled(BUDGET_REMAINING, tenant, charge.key.key_id).set(left)
        if left > budget.limit_usd * (1 - self.budget_alert_at):
            return
        period_start = period_window(budget.period, self.clock())[0]
        if (charge.key.key_id, period_start) in self._alerted:
            return
        self._alerted.add((charge.key.key_id, period_start))
        labelled(BUDGET_ALERTS, tenant, charge.key.key_id).inc()
        log.warning(
            "budget alert: key %s (tenant %s) has %.2f of %.2f USD left this %s (alert at %d%% spent)",
            charge.key.key_id,
            tenant,
            left,
            budget.limit_usd,
            budget.period,
            round(self.budget_alert_at * 100),
        )

    def admit(
        self, api: Api, endpoint: Endpoint, key: VirtualKey, outcome: Forward | Chain, headers: Mapping[str, str]
    ) -> Reply | None:
        """``charge`` + ``admit_local`` + ``verdict``: None if the request may go (in-process limits)."""
        charge = self.charge(api, endpoint, key, outcome, headers)
        if charge is None or isinstance(charge, Reply):
            return charge
        answer = self.verdict(api, endpoint, outcome, charge, self.admit_local(charge))
        return answer if isinstance(answer, Reply) else None

    async def settle(self, request_id: str, spent: Spent) -> bool:
        """Settle the charge this worker holds for ``request_id`` (False: it holds none)."""
        charge = self.held.take(request_id)
        if charge is None:
            return False
        if self.shared_limiter is not None:
            await settle_shared(self.shared_limiter, [(charge, spent)])
        else:
            settle_local(self.limiter, charge, spent)
        return True

    async def settle_many(self, finished: Sequence[tuple[str, Spent]]) -> int:
        """``settle`` for a batch of usage records (one message of Envoy's usage log): against Redis,
        the token corrections of one set of limits are summed into one call. How many were ours."""
        charges = [(charge, spent) for request_id, spent in finished if (charge := self.held.take(request_id))]
        if not charges:
            return 0
        if self.shared_limiter is not None:
            await settle_shared(self.shared_limiter, charges)
        else:
            for charge, spent in charges:
                settle_local(self.limiter, charge, spent)
        return len(charges)

    def clock(self) -> float:
        return self.limiter.clock()

    def limits_of(self, key: VirtualKey) -> tuple[tuple[Limit, ...], Budget | None]:
        """``key``'s limits and budget (this worker's share when they are in process), made once
        per version of the key."""
        if type(key) is batch_caller.BatchCaller and key.owner is not None:
            key = key.owner  # a batch item's caller: its owner's key's limits, made once per version
        cached = self._limits.get(key.key_id)
        if cached is not None and cached[0] is key:
            return cached[1], cached[2]
        share = 1 if self.shared_limiter is not None else self.workers
        limits, budget = limits_of(key, share), budget_of(key, share)
        self._limits[key.key_id] = (key, limits, budget)
        return limits, budget


_LIMIT_WORDS = {
    "rpm": "requests per minute",
    "rph": "requests per hour",
    "rpd": "requests per day",
    "tpm": "tokens per minute",
    "tpd": "tokens per day",
    PARALLEL: "requests at once",
}


def _owner(limit: Limit | Budget | None, key: VirtualKey) -> str:
    """Whose limit refused, in words: the key's own, its tenant's, the model's."""
    scope = limit.scope if limit is not None else "key:"
    if scope.startswith("tenant:"):
        return f"tenant {key.tenant!r}"
    if scope.startswith("model:"):
        return f"model {scope.partition('/')[2]!r} (all callers)"
    if scope.startswith("key_model:"):
        return f"this API key on model {scope.split(':', 2)[2]!r}"
    return "this API key"


def rate_limit_headers(api: Api, key: VirtualKey, admission: Admission, now: float) -> tuple[tuple[str, str], ...]:
    """The client API's own rate-limit headers: the key's configured limit, what this worker has
    left of its share, and when that share is whole again."""
    out: list[tuple[str, str]] = []
    for name, configured, kind in (("rpm", key.rpm, "requests"), ("tpm", key.tpm, "tokens")):
        if configured is None or name not in admission.remaining:
            continue
        remaining = str(int(admission.remaining[name]))
        reset_s = admission.reset_after_s.get(name, 0.0)
        if api in OPENAI_SHAPED:
            out += [
                (f"x-ratelimit-limit-{kind}", str(configured)),
                (f"x-ratelimit-remaining-{kind}", remaining),
                (f"x-ratelimit-reset-{kind}", _duration(reset_s)),
            ]
        else:
            reset_at = _utc_iso(math.ceil(now + reset_s))
            out += [
                (f"anthropic-ratelimit-{kind}-limit", str(configured)),
                (f"anthropic-ratelimit-{kind}-remaining", remaining),
                (f"anthropic-ratelimit-{kind}-reset", reset_at),
            ]
    return tuple(out)


@functools.lru_cache(maxsize=256)
def _utc_iso(epoch_seconds: int) -> str:
    """RFC 3339 in UTC, once per second (strftime is most of a header set's cost)."""
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    if api in OPENAI_SHAPED:  # the openai SDKs and the Codex CLI send a Bearer token
        return "You didn't provide an API key: send a virtual key (sk-ccr-...) as 'Authorization: Bearer <key>'"
    if api is Api.BEDROCK:  # a SigV4 signature is no key: Bedrock clients send one in a header of their own
        return (
            "no gateway key: send a virtual key (sk-ccr-...) as 'x-api-key: <key>' or "
            "'Authorization: Bearer <key>' (Claude Code: ANTHROPIC_CUSTOM_HEADERS or AWS_BEARER_TOKEN_BEDROCK)"
        )
    return "x-api-key header is required: send a virtual key (sk-ccr-...)"


def _unauthorized(api: Api, path: str, message: str, details: str, code: str | None = OPENAI_INVALID_KEY_CODE) -> Reply:
    """A 401 as the real API answers it: Anthropic ``authentication_error``; OpenAI
    ``invalid_request_error`` with code ``invalid_api_key`` (Chat Completions and Responses alike)."""
    reply = error_reply(api, 401, message, details, labels=request_labels(api, path))
    if api not in OPENAI_SHAPED:
        return reply
    # 400's type is invalid_request_error, as OpenAI's 401 says; no request field is at fault.
    body = error_body(Api.OPENAI, 400, message, code)
    labels = {**reply.labels, ERROR_TYPE_LABEL: "invalid_request_error"}
    return Reply(401, body, details, headers=reply.headers, labels=labels)


def _quota_reply(api: Api, message: str, headers: tuple[tuple[str, str], ...], labels: Mapping[str, str]) -> Reply:
    """A spent budget: 429 as OpenAI answers an exhausted quota (type and code ``insufficient_quota``);
    Anthropic's ``rate_limit_error``."""
    reply = error_reply(api, 429, message, "ccr_auth_budget_spent", headers, labels)
    if api not in OPENAI_SHAPED:
        return reply
    body = orjson.dumps({"error": {"message": message, "type": QUOTA_ERROR, "param": None, "code": QUOTA_ERROR}})
    return Reply(
        429, body, reply.details, headers=reply.headers, labels={**reply.labels, ERROR_TYPE_LABEL: QUOTA_ERROR}
    )
