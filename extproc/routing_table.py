"""The routing table ext_proc compiles from each Policy it receives.

Compiling happens once per policy version (off the hot path): model names, "provider,model" strings,
aliases, scenario routers (global and per tenant, already merged), fallback chains and the custom
hook are all resolved to `ModelRoute`s here, so a request's decision (extproc.router.decide) is a
few dict lookups. Provider keys are read from this process's environment at compile time, or from
Vault (``api_key_ref``, kept fresh by extproc.secrets.store: a rotated key is used without a new
policy), and never travel over xDS; a Vault key of a provider outside fallback chains is injected by
Envoy instead (``key_injected_by_envoy``) and never reaches this process. Anything the table cannot honour raises PolicyCompileError, which ext_proc answers
to the control plane as a NACK, keeping the previous table in force.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ccr.v1 import policy_pb2
from ccr.v1.contract import DEFAULT_LONG_CONTEXT_THRESHOLD
from ccr.v1.contract import SCENARIOS as SCENARIO_FIELDS
from ccr.v1.pricing import Prices
from ccr.v1.secret_ref import ReferenceError, parse_reference
from ccr.v1.vault_client import VaultSettings
from ccr.v1.vault_keys import policy_settings
from extproc.cache.rules import WHEN, CacheRules, CacheSetting, resolve
from extproc.mcp.access import Grant
from extproc.mcp.catalog import valid_server_name
from extproc.mcp.session import DEFAULT_IDLE_TTL_S
from extproc.mcp.settings import DEFAULT_API as MCP_DEFAULT_API
from extproc.mcp.settings import DEFAULT_EGRESS as MCP_DEFAULT_EGRESS
from extproc.mcp.settings import DEFAULT_PATH as MCP_DEFAULT_PATH
from extproc.mcp.settings import McpSettings, UpstreamServer
from extproc.secrets.store import KeyHandle, SecretStore, default_store
from extproc.translate.base import Api, Target

_API_OF = {
    policy_pb2.API_ANTHROPIC: Api.ANTHROPIC,
    policy_pb2.API_OPENAI: Api.OPENAI,
    policy_pb2.API_GEMINI: Api.GEMINI,
    policy_pb2.API_RESPONSES: Api.RESPONSES,
    policy_pb2.API_VERTEX: Api.VERTEX,
    policy_pb2.API_BEDROCK: Api.BEDROCK,
}

Hook = Callable[[dict, Any], Any]


class PolicyCompileError(ValueError):
    """The policy cannot be used by this ext_proc (answered to the control plane as a NACK)."""


def auth_headers(api: Api, key: str) -> tuple[tuple[str, str], ...]:
    if api is Api.BEDROCK:  # signed with SigV4 by Envoy: a key header would only confuse AWS
        return ()
    if api is Api.ANTHROPIC:
        return (("x-api-key", key),)
    if api is Api.GEMINI:
        return (("x-goog-api-key", key),)
    return (("authorization", f"Bearer {key}"),)


@dataclass(frozen=True, slots=True)
class ProviderRoute:
    name: str
    api: Api
    cluster: str
    base_path: str
    # The policy's extra headers, and the auth header of a key from the environment.
    static_headers: tuple[tuple[str, str], ...]
    # Set when the provider cannot be used from this process (e.g. its key variable is unset).
    static_unavailable: str | None = None
    forward_count_tokens: bool = False
    # A key read from Vault: its current value, looked up on every request (rotation).
    key: KeyHandle | None = None
    # Envoy adds its credentials (a key or token from an SDS secret, Bedrock's SigV4): a fallback
    # chain's attempt to it names it to Envoy's credential filters (extproc.attempt).
    credentials_by_envoy: bool = False

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """Headers sent to the provider on every request: its auth header and the policy's extras."""
        if self.key is None:
            return self.static_headers
        value = self.key.value
        return auth_headers(self.api, value) + self.static_headers if value else self.static_headers

    @property
    def unavailable(self) -> str | None:
        """Why this provider is answered 503 now; a Vault key not (yet) read fails closed here."""
        if self.static_unavailable is not None or self.key is None or self.key.value:
            return self.static_unavailable
        return f"provider {self.name!r} has no API key: {self.key.problem}"

    def key_rejected(self) -> None:
        """The provider answered 401/403: a Vault key is read again soon (it may have been rotated)."""
        if self.key is not None:
            self.key.rejected()


@dataclass(frozen=True, slots=True)
class ModelRoute:
    provider: ProviderRoute
    model: str  # the model's policy name (what clients put in "model")
    target: Target  # the provider's model id and limits (stream flag filled per request)
    context_window: int = 0  # tokens; 0 = unknown (shown by GET /v1/models)
    prices: Prices | None = None  # None: priced nowhere (its usage records cost 0)
    # The model's own limits across every caller: (limit name, value), e.g. ("rpm", 5000).
    limits: tuple[tuple[str, int], ...] = ()
    cache: CacheSetting | None = None  # the model's own `cache:`; None: the policy's default applies

    def __str__(self) -> str:
        return f"{self.provider.name},{self.model}"


@dataclass(frozen=True, slots=True)
class WeightedChoice:
    """One target, or a weighted split between several.

    ``name`` (the scenario or alias) is mixed into the session hash so that one session's splits
    for different scenarios are independent of each other, yet each is stable across its turns.
    """

    name: str
    routes: tuple[ModelRoute, ...]
    cumulative: tuple[int, ...]  # running sums of the weights; the last one is the total

    @property
    def is_split(self) -> bool:
        return len(self.routes) > 1

    def pick(self, session: str | None) -> ModelRoute:
        if len(self.routes) == 1:
            return self.routes[0]
        total = self.cumulative[-1]
        if session:
            # A stable hash (Python's hash() of str is salted per process): the same session lands on
            # the same target in every ext_proc process and after restarts.
            digest = hashlib.blake2b(f"{session}\0{self.name}".encode(), digest_size=8).digest()
            point = int.from_bytes(digest, "big") % total
        else:
            point = int(random.random() * total)
        return self.routes[bisect.bisect_right(self.cumulative, point)]


@dataclass(frozen=True, slots=True)
class ScenarioRouter:
    """CCR's Router section, compiled. An unset scenario is None and does not apply."""

    default: WeightedChoice | None = None
    background: WeightedChoice | None = None
    think: WeightedChoice | None = None
    long_context: WeightedChoice | None = None
    web_search: WeightedChoice | None = None
    image: WeightedChoice | None = None
    long_context_threshold: int = DEFAULT_LONG_CONTEXT_THRESHOLD
    hook: Hook | None = None
    hook_path: str = ""  # "package.module:function", "" without a hook

    def scenarios(self) -> frozenset[str]:
        """The CCR names of the scenarios that are set."""
        return frozenset(name for name, attr in SCENARIO_FIELDS.items() if getattr(self, attr) is not None)


@dataclass(frozen=True, slots=True)
class TenantRouter:
    name: str
    router: ScenarioRouter  # the global router with this tenant's settings laid over it


@dataclass(frozen=True, slots=True)
class TenantRules:
    """What the policy sets for the virtual keys of one tenant (by name): shared limits and budget,
    the models they may use, and each key's limits on one model."""

    name: str
    limits: tuple[tuple[str, int], ...] = ()
    budget: tuple[float, str] | None = None  # (USD, period)
    models: tuple[str, ...] = ()
    key_model_limits: Mapping[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)
    cache: CacheSetting | None = None  # the tenant's `cache:`, over every model's; None: the model's applies


def cert_identities(policy: policy_pb2.Policy) -> dict[str, str]:
    """The policy's SAN -> tenant map as ``authenticate`` looks SANs up (DNS names are not case
    sensitive; URIs are compared exactly)."""
    return {san if "://" in san else san.lower(): tenant for san, tenant in sorted(policy.cert_identities.items())}


@dataclass(frozen=True, slots=True)
class FallbackRoute:
    cluster: str  # the Envoy cluster holding every provider of the chain, one priority each
    chain: tuple[ModelRoute, ...]  # the primary first, then the fallbacks in order


DEFAULT_RESPONSES_RETENTION_S = 30 * 86_400


@dataclass(frozen=True, slots=True)
class ResponsesSettings:
    """Stored responses of the Responses API (the policy's `responses:`): whether they are kept
    (and previous_response_id served) and for how long."""

    store: bool = True
    retention_s: int = DEFAULT_RESPONSES_RETENTION_S


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """Where this process sends its spans (extproc.tracing_export) and the policy's sampling ratio."""

    otlp: str  # http://host:port or https://host:port
    sample: float
    service_name: str


@dataclass(frozen=True, slots=True)
class RoutingTable:
    version: str
    models: Mapping[str, ModelRoute]  # policy model name -> route
    max_request_bytes: int
    # (provider name, model policy name) -> route
    targets: Mapping[tuple[str, str], ModelRoute] = field(default_factory=dict)
    # "provider,model" as a client may write it (policy name or upstream id; as given and lowercased)
    explicit: Mapping[str, ModelRoute] = field(default_factory=dict)
    providers: Mapping[str, ProviderRoute] = field(default_factory=dict)
    router: ScenarioRouter = field(default_factory=ScenarioRouter)
    aliases: Mapping[str, WeightedChoice] = field(default_factory=dict)
    fallbacks: Mapping[tuple[str, str], FallbackRoute] = field(default_factory=dict)
    tenants: Mapping[str, TenantRouter] = field(default_factory=dict)  # api key sha256 hex -> tenant
    tenants_by_name: Mapping[str, TenantRouter] = field(default_factory=dict)  # a virtual key's tenant -> its router
    tenant_rules: Mapping[str, TenantRules] = field(default_factory=dict)  # tenant name -> its keys' rules
    auth_required: bool = False  # every request needs a virtual key (or a JWT, a certificate identity)
    # Verified client-certificate SANs that identify a tenant (listener.tls.identities: URIs exact,
    # DNS names lowercased); empty unless the listener has mTLS, which makes Envoy's
    # x-forwarded-client-cert trustworthy.
    cert_identities: Mapping[str, str] = field(default_factory=dict)
    batch_api: bool = False  # the batch paths go to the batch API (policy batches:); else 404
    batch_workers: frozenset[str] = frozenset()  # keys whose batch items act for the batch's owner
    cache: CacheSetting | None = None  # the policy's default `cache:`; None: off where nothing else says
    caches: bool = False  # some level (default, model, tenant) has a `cache:`: else nothing to resolve
    tracing: TracingSettings | None = None  # the policy's `tracing:`; None: off
    mcp: McpSettings | None = None  # the policy's `mcp:` (servers and grants); None: no MCP endpoint
    responses: ResponsesSettings = field(default_factory=lambda: ResponsesSettings())  # the policy's `responses:`

    def cache_rules(self, tenant: str | None, route: ModelRoute) -> CacheRules | None:
        """The response cache's rules for ``tenant`` (a virtual key's; None: anonymous) on ``route``:
        the tenant's setting over the model's over the default (extproc.cache.rules.resolve). None:
        not cached."""
        rules = self.tenant_rules.get(tenant) if tenant is not None else None
        if not self.caches:  # the usual policy: no level says a word about the cache
            return None
        return resolve(rules.cache if rules is not None else None, route.cache, self.cache)

    def route(self, model: str) -> ModelRoute | None:
        return self.models.get(model)

    def model_names(self) -> list[str]:
        return sorted(self.models)

    def target(self, provider: str, model: str) -> ModelRoute | None:
        return self.targets.get((provider, model))

    @property
    def long_context_threshold(self) -> int:
        return self.router.long_context_threshold

    @property
    def custom_hook(self) -> str:
        return self.router.hook_path


def compile_policy(
    policy: policy_pb2.Policy, environ: Mapping[str, str] | None = None, secrets: SecretStore | None = None
) -> RoutingTable:
    """``secrets``: where vault: keys are kept (default: this process's store, used only when the
    policy has one)."""
    env = os.environ if environ is None else environ
    store: SecretStore | None = None
    models: dict[str, ModelRoute] = {}
    targets: dict[tuple[str, str], ModelRoute] = {}
    explicit: dict[str, ModelRoute] = {}
    providers: dict[str, ProviderRoute] = {}
    for provider in policy.providers:
        api = _API_OF.get(provider.api)
        if api is None:
            raise PolicyCompileError(f"provider {provider.name!r}: unsupported api {provider.api}")
        if not provider.cluster:
            raise PolicyCompileError(f"provider {provider.name!r}: no cluster")
        if provider.name in providers:
            raise PolicyCompileError(f"provider {provider.name!r} is defined twice")
        headers = tuple(sorted(provider.headers.items()))
        unavailable = None
        key_handle: KeyHandle | None = None
        if provider.key_injected_by_envoy:
            # Envoy's credential_injector adds the key on the provider's cluster (an SDS secret the
            # control plane reads from Vault): no key here, only whether the control plane has one.
            unavailable = provider.key_unavailable or None
        elif provider.api_key_ref:
            if store is None:
                store = secrets if secrets is not None else default_store()
                store.configure(vault_settings(policy, env), env)
            try:
                key_handle = store.handle(parse_reference(provider.api_key_ref))
            except ReferenceError as exc:
                raise PolicyCompileError(f"provider {provider.name!r}: api_key {exc}") from None
        elif provider.api_key_env:
            key = env.get(provider.api_key_env, "")
            if key:
                headers = auth_headers(api, key) + headers
            else:
                unavailable = (
                    f"provider {provider.name!r} has no API key: environment variable "
                    f"{provider.api_key_env} is not set for the ext_proc service"
                )
        route = ProviderRoute(
            provider.name,
            api,
            provider.cluster,
            provider.base_path,
            headers,
            unavailable,
            provider.forward_count_tokens,
            key_handle,
            credentials_by_envoy=provider.key_injected_by_envoy or api is Api.BEDROCK,
        )
        providers[provider.name] = route
        served: list[ModelRoute] = []
        for model in provider.models:
            if model.name in models:
                raise PolicyCompileError(f"model {model.name!r} is served by two providers")
            target = Target(
                model=model.id or model.name,
                base_path=provider.base_path,
                max_output_tokens=model.max_output_tokens or None,
                capabilities=frozenset(model.capabilities),
            )
            prices = None
            if model.HasField("pricing"):
                pricing = model.pricing
                prices = Prices(pricing.input, pricing.output, pricing.cache_read, pricing.cache_write)
            limits = rate_values(model.limits) if model.HasField("limits") else ()
            cache = cache_setting(model.cache, f"model {model.name!r}") if model.HasField("cache") else None
            model_route = ModelRoute(route, model.name, target, model.context_window, prices, limits, cache)
            models[model.name] = model_route
            targets[(provider.name, model.name)] = model_route
            served.append(model_route)
        # Explicit "provider,model" (Claude Code's `/model provider,model`) by upstream id or policy
        # name, the name winning a clash; each also lowercased, as CCR compares case-insensitively.
        for text, model_route in [(f"{provider.name},{r.target.model}", r) for r in served] + [
            (f"{provider.name},{r.model}", r) for r in served
        ]:
            explicit[text.lower()] = model_route
            explicit[text] = model_route

    def resolve(where: str, target: policy_pb2.Target) -> ModelRoute:
        found = targets.get((target.provider, target.model)) or explicit.get(f"{target.provider},{target.model}")
        if found is None:
            raise PolicyCompileError(f"{where}: no model {target.model!r} at provider {target.provider!r}")
        return found

    def choice(where: str, name: str, message: policy_pb2.Choice) -> WeightedChoice | None:
        if not message.options:
            return None
        routes = tuple(resolve(where, option.target) for option in message.options)
        weights = [option.weight for option in message.options]
        if not any(weights):  # proto3 cannot tell 0 from unset: all unset means an even split
            weights = [1] * len(weights)
        running, cumulative = 0, []
        for weight in weights:
            running += weight
            cumulative.append(running)
        # A zero-weight option gets no traffic (it is drained): leave it out.
        kept = [(r, c) for r, c, w in zip(routes, cumulative, weights, strict=True) if w]
        return WeightedChoice(name, tuple(r for r, _ in kept), tuple(c for _, c in kept))

    hooks: dict[str, Hook] = {}

    def router(where: str, message: policy_pb2.Router, base: ScenarioRouter | None) -> ScenarioRouter:
        values: dict[str, Any] = {}
        for scenario, attr in SCENARIO_FIELDS.items():
            compiled = choice(f"{where}.{scenario}", scenario, getattr(message, attr))
            if compiled is None and base is not None:
                compiled = getattr(base, attr)
            values[attr] = compiled
        threshold = message.long_context_threshold
        if not threshold:
            threshold = base.long_context_threshold if base is not None else DEFAULT_LONG_CONTEXT_THRESHOLD
        hook_path = message.custom_hook or (base.hook_path if base is not None else "")
        hook = None
        if hook_path:
            hook = hooks.get(hook_path)
            if hook is None:
                hook = hooks[hook_path] = import_hook(hook_path, f"{where}.custom")
        return ScenarioRouter(**values, long_context_threshold=threshold, hook=hook, hook_path=hook_path)

    global_router = router("router", policy.router, None)

    aliases: dict[str, WeightedChoice] = {}
    for name in sorted(policy.aliases):
        if name in models:
            raise PolicyCompileError(f"alias {name!r} shadows a model name")
        compiled = choice(f"aliases.{name}", name, policy.aliases[name])
        if compiled is None:
            raise PolicyCompileError(f"aliases.{name}: no target")
        aliases[name] = compiled

    fallbacks: dict[tuple[str, str], FallbackRoute] = {}
    for chain in policy.fallbacks:
        primary = resolve("fallback", chain.primary)
        where = f"fallback {primary}"
        key = (primary.provider.name, primary.model)
        if key in fallbacks:
            raise PolicyCompileError(f"{where}: defined twice")
        if not chain.cluster:
            raise PolicyCompileError(f"{where}: no cluster")
        routes = (primary, *(resolve(where, t) for t in chain.then))
        fallbacks[key] = FallbackRoute(chain.cluster, routes)

    tenants: dict[str, TenantRouter] = {}
    rules: dict[str, TenantRules] = {}
    by_name: dict[str, TenantRouter] = {}
    for tenant in policy.tenants:
        rules[tenant.name] = TenantRules(
            tenant.name,
            rate_values(tenant.limits) if tenant.HasField("limits") else (),
            (tenant.budget.usd, tenant.budget.period or "month") if tenant.HasField("budget") else None,
            tuple(tenant.models),
            {model: rate_values(limits) for model, limits in tenant.key_model_limits.items()},
            cache_setting(tenant.cache, f"tenant {tenant.name!r}") if tenant.HasField("cache") else None,
        )
        compiled_tenant = TenantRouter(
            tenant.name, router(f"tenants.{tenant.name}.router", tenant.router, global_router)
        )
        by_name[tenant.name] = compiled_tenant
        for digest in tenant.api_key_sha256:
            digest = digest.lower()
            if digest in tenants:
                raise PolicyCompileError(
                    f"tenants {tenants[digest].name!r} and {tenant.name!r} share an API key digest"
                )
            tenants[digest] = compiled_tenant

    if store is not None:
        store.read_new()  # a new reference's first read, before the table serves a request

    return RoutingTable(
        policy.version,
        models,
        policy.limits.max_request_bytes,
        targets=targets,
        explicit=explicit,
        providers=providers,
        router=global_router,
        aliases=aliases,
        fallbacks=fallbacks,
        tenants=tenants,
        tenants_by_name=by_name,
        tenant_rules=rules,
        auth_required=policy.auth_required,
        cert_identities=cert_identities(policy),
        batch_api=policy.batch_api,
        batch_workers=frozenset(policy.batch_workers),
        cache=cache_setting(policy.cache, "the default") if policy.HasField("cache") else None,
        caches=policy.HasField("cache")
        or any(route.cache is not None for route in models.values())
        or any(rule.cache is not None for rule in rules.values()),
        tracing=_tracing(policy.tracing) if policy.HasField("tracing") else None,
        mcp=mcp_settings(policy.mcp) if policy.HasField("mcp") else None,
        responses=ResponsesSettings(
            not policy.responses.store_disabled, policy.responses.retention_s or DEFAULT_RESPONSES_RETENTION_S
        ),
    )


def vault_settings(policy: policy_pb2.Policy, environ: Mapping[str, str]) -> VaultSettings:
    """How this process reaches Vault (ccr.v1.vault_keys.policy_settings, shared with the control plane)."""
    try:
        return policy_settings(policy.vault, environ)
    except ValueError as exc:
        message = str(exc).replace("VAULT_ADDR)", "VAULT_ADDR for ext_proc)")
        raise PolicyCompileError(message if message.startswith("vault") else f"vault: {message}") from None


def _tracing(message: policy_pb2.Tracing) -> TracingSettings:
    if not message.otlp.startswith(("http://", "https://")) or not 0 <= message.sample <= 1:
        raise PolicyCompileError(f"tracing: otlp {message.otlp!r} / sample {message.sample} cannot be followed")
    return TracingSettings(message.otlp, message.sample, message.service_name or "ccr-gateway")


def mcp_settings(message: policy_pb2.Mcp) -> McpSettings:
    """The policy's ``mcp:`` in the MCP core's terms (extproc.mcp.settings, extproc.mcp.access.Grant).
    Header and environment templates are kept as they are: expanded where a server is called or
    launched. What the core could not follow (a server name outside its rule) is refused here."""
    servers: list[UpstreamServer] = []
    for server in message.servers:
        where = f"mcp server {server.name!r}"
        if not valid_server_name(server.name):
            raise PolicyCompileError(f"{where}: not a valid MCP server name")
        if any(s.name == server.name for s in servers):
            raise PolicyCompileError(f"{where} is defined twice")
        if bool(server.url) == bool(server.command):
            raise PolicyCompileError(f"{where}: needs a url or a command, not both or neither")
        if not 0 < server.timeout_s < float("inf"):
            raise PolicyCompileError(f"{where}: timeout_s must be a number of seconds > 0, got {server.timeout_s}")
        servers.append(
            UpstreamServer(
                server.name,
                server.url,
                tuple(server.command),
                tuple(sorted(server.env.items())),
                tuple(sorted(server.headers.items())),
                server.timeout_s,
            )
        )
    tenant_grants: dict[str, Grant] = {}
    key_grants: dict[str, Grant] = {}
    tenant_calls: dict[str, int] = {}
    key_calls: dict[str, int] = {}
    for grant in message.grants:
        if bool(grant.tenant) == bool(grant.key_id):
            raise PolicyCompileError("mcp grant: names a tenant or a key, one of them")
        grants, calls, who = (
            (tenant_grants, tenant_calls, grant.tenant) if grant.tenant else (key_grants, key_calls, grant.key_id)
        )
        if who in grants:
            raise PolicyCompileError(f"mcp grant for {who!r} is defined twice")
        if grant.inherit_allow and grant.tenant:
            raise PolicyCompileError(f"mcp grant for tenant {who!r}: a tenant cannot inherit an allow list")
        allow = None if grant.inherit_allow else tuple(grant.allow)
        grants[who] = Grant(allow=allow, deny=tuple(grant.deny))
        if grant.calls_per_minute:
            calls[who] = grant.calls_per_minute
    if message.path and not message.path.startswith("/"):
        raise PolicyCompileError(f"mcp path {message.path!r} is not a URL path")
    for url in message.authorization_servers:
        if not url.startswith(("https://", "http://")):
            raise PolicyCompileError(f"mcp authorization server {url!r} is not an http(s) URL")
    if not 0 <= message.session_ttl_s < float("inf"):
        raise PolicyCompileError(f"mcp session_ttl_s must be a number of seconds, got {message.session_ttl_s}")
    return McpSettings(
        path=message.path or MCP_DEFAULT_PATH,
        idle_ttl_s=message.session_ttl_s or DEFAULT_IDLE_TTL_S,
        servers=tuple(servers),
        tenant_grants=tenant_grants,
        key_grants=key_grants,
        tenant_calls_per_minute=tenant_calls,
        key_calls_per_minute=key_calls,
        api=message.api or MCP_DEFAULT_API,
        egress=message.egress or MCP_DEFAULT_EGRESS,
        authorization_servers=tuple(message.authorization_servers),
    )


_RATE_FIELDS = (
    ("rpm", "rpm"),
    ("rph", "rph"),
    ("rpd", "rpd"),
    ("tpm", "tpm"),
    ("tpd", "tpd"),
    ("max_parallel", "parallel"),
)


def rate_values(limits: policy_pb2.RateLimits) -> tuple[tuple[str, int], ...]:
    """The limits set (non-zero), by the limiter's names (max_parallel is "parallel")."""
    return tuple((name, value) for field_name, name in _RATE_FIELDS if (value := getattr(limits, field_name)))


def cache_setting(message: policy_pb2.CacheRules, where: str = "the default") -> CacheSetting:
    """One level's ``cache:``; 0 and "" are unset (inherited). A ``when`` this ext_proc does not
    know is refused: caching every answer where the policy meant fewer would be wrong."""
    if message.off:
        return CacheSetting(off=True)
    if message.when and message.when not in WHEN:
        raise PolicyCompileError(f"{where}: cache.when {message.when!r} is not one of {', '.join(WHEN)}")
    if not 0 <= message.ttl_s < float("inf"):  # negative, infinite or NaN
        raise PolicyCompileError(f"{where}: cache.ttl_s must be a number of seconds > 0, got {message.ttl_s}")
    dedup_wait_s = message.dedup_wait_s if message.HasField("dedup_wait_s") else None
    if dedup_wait_s is not None and not 0 <= dedup_wait_s < float("inf"):
        raise PolicyCompileError(f"{where}: cache.dedup_wait_s must be a number of seconds >= 0, got {dedup_wait_s}")
    return CacheSetting(
        ttl_s=message.ttl_s or None,
        max_entry_bytes=message.max_entry_bytes or None,
        when=message.when or None,
        dedup_wait_s=dedup_wait_s,
    )


def import_hook(path: str, where: str = "router.custom") -> Hook:
    """Import "package.module:function"; any failure is a PolicyCompileError saying why."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise PolicyCompileError(f"{where}: {path!r} is not 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may raise anything while importing
        raise PolicyCompileError(f"{where}: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    hook = getattr(module, attr, None)
    if hook is None:
        raise PolicyCompileError(f"{where}: module {module_name!r} has no attribute {attr!r}")
    if not callable(hook):
        raise PolicyCompileError(f"{where}: {path!r} is not callable")
    return hook
