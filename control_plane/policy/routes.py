"""The routing part of the policy: aliases, CCR-style scenario router, fallback chains, tenants.

YAML (CCR users will recognise the Router keys)::

    aliases:
      sonnet: anthropic,claude-sonnet-4-5            # one target: "provider,model"
      mix:                                           # weighted split, stable per session
        - {target: anthropic,claude-sonnet-4-5, weight: 3}
        - {target: openai,gpt-4o, weight: 1}
    router:
      default: sonnet                                # an alias or "provider,model"
      background: anthropic,claude-haiku-4-5         # haiku-class requests
      think: anthropic,claude-opus-4-1               # requests with thinking
      longContext: gemini,gemini-2.5-pro             # over longContextThreshold tokens
      longContextThreshold: 60000
      webSearch: ...                                 # a web_search tool is present
      image: ...                                     # the request carries images
      custom: my_package.routing:choose              # hook: (request, context) -> "provider,model" | None
    fallback:
      anthropic,claude-sonnet-4-5: [openai,gpt-4o, gemini,gemini-2.5-pro]
    tenants:
      - name: team-a
        api_key_sha256: [<hex sha256 of a client key>]
        router: {default: openai,gpt-4o}
        cache: {ttl: 10m}                            # control_plane.policy.cache

"model" in a target is the model's policy name (or its upstream id) within that provider.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from ccr.v1 import policy_pb2
from ccr.v1.contract import DEFAULT_LONG_CONTEXT_THRESHOLD, SCENARIOS
from control_plane.policy.cache import CacheSpec, cache_proto, parse_cache
from control_plane.policy.limit_sets import BudgetSpec, RateLimitSpec, parse_budget, parse_rate_limits
from control_plane.policy.yaml_check import Checker, Located, closest, join, kind_of

MAX_CHAIN = 5
_HOOK = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True, order=True)
class TargetSpec:
    provider: str
    model: str  # the model's policy name

    def __str__(self) -> str:
        return f"{self.provider},{self.model}"

    def to_proto(self) -> policy_pb2.Target:
        return policy_pb2.Target(provider=self.provider, model=self.model)


Choice = tuple[tuple[TargetSpec, int], ...]  # (target, weight); one entry = no split


def choice_to_proto(choice: Choice) -> policy_pb2.Choice:
    return policy_pb2.Choice(options=[policy_pb2.WeightedTarget(target=t.to_proto(), weight=w) for t, w in choice])


@dataclass(frozen=True, slots=True)
class RouterSpec:
    default: Choice = ()
    background: Choice = ()
    think: Choice = ()
    long_context: Choice = ()
    web_search: Choice = ()
    image: Choice = ()
    long_context_threshold: int = DEFAULT_LONG_CONTEXT_THRESHOLD
    custom_hook: str = ""

    def to_proto(self) -> policy_pb2.Router:
        return policy_pb2.Router(
            **{name: choice_to_proto(getattr(self, name)) for name in SCENARIOS.values()},
            long_context_threshold=self.long_context_threshold,
            custom_hook=self.custom_hook,
        )


@dataclass(frozen=True, slots=True)
class FallbackSpec:
    primary: TargetSpec
    then: tuple[TargetSpec, ...]

    @property
    def providers(self) -> tuple[str, ...]:
        return (self.primary.provider, *(t.provider for t in self.then))

    @property
    def cluster(self) -> str:
        """One Envoy cluster per distinct provider sequence (priority i = the i-th provider)."""
        digest = hashlib.sha256(",".join(self.providers).encode()).hexdigest()[:12]
        return f"chain_{digest}"  # chains.CHAIN_CLUSTER_PREFIX


@dataclass(frozen=True, slots=True)
class TenantSpec:
    name: str
    api_key_sha256: tuple[str, ...]
    router: RouterSpec
    # Its virtual keys' shared limits (control_plane.policy.limit_sets); none by default.
    limits: RateLimitSpec = field(default_factory=RateLimitSpec)
    budget: BudgetSpec | None = None
    models: tuple[str, ...] = ()
    key_model_limits: tuple[tuple[str, RateLimitSpec], ...] = ()
    # The response cache for its requests (control_plane.policy.cache); None: the model's applies.
    cache: CacheSpec | None = None

    def to_proto(self) -> policy_pb2.Tenant:
        return policy_pb2.Tenant(
            name=self.name,
            api_key_sha256=self.api_key_sha256,
            router=self.router.to_proto(),
            limits=self.limits.to_proto() if self.limits else None,
            budget=self.budget.to_proto() if self.budget else None,
            models=self.models,
            key_model_limits={model: limits.to_proto() for model, limits in self.key_model_limits},
            cache=cache_proto(self.cache),
        )


@dataclass(frozen=True, slots=True)
class RoutingSpec:
    aliases: tuple[tuple[str, Choice], ...] = ()
    router: RouterSpec = field(default_factory=RouterSpec)
    fallbacks: tuple[FallbackSpec, ...] = ()
    tenants: tuple[TenantSpec, ...] = ()

    def to_proto_fields(self) -> dict:
        return {
            "router": self.router.to_proto(),
            "aliases": {name: choice_to_proto(choice) for name, choice in self.aliases},
            "fallbacks": [
                policy_pb2.FallbackChain(
                    primary=f.primary.to_proto(), then=[t.to_proto() for t in f.then], cluster=f.cluster
                )
                for f in self.fallbacks
            ],
            "tenants": [t.to_proto() for t in self.tenants],
        }


class _Catalog:
    """Which provider serves which model names (and ids), for resolving "provider,model"."""

    def __init__(self, providers: dict[str, dict[str, str]], written: set[str]) -> None:
        self.providers = providers  # provider -> {name or id: policy name}
        self.written = written  # every provider name in the file, including entries with problems

    def knows_model(self, name: str) -> bool:
        """Whether some provider serves a model of this policy name (or id); a provider whose entry
        has problems may be the one, so then nothing is said."""
        if any(name in models for models in self.providers.values()):
            return True
        return len(self.providers) < len(self.written)

    def resolve(self, text: str) -> TargetSpec | str | None:
        """A target, a message saying what is wrong with ``text``, or None when it names a provider
        whose entry has problems of its own (already reported: saying "unknown" would be wrong)."""
        provider, sep, model = text.partition(",")
        provider, model = provider.strip(), model.strip()
        if not sep or not provider or not model:
            return (
                f"{text!r} is not 'provider,model' or an alias "
                '(inside YAML [...] or {...} a comma splits values: quote it, "provider,model")'
            )
        models = self.providers.get(provider)
        if models is None and provider in self.written:
            return None
        if models is None:
            hint = closest(provider, tuple(self.written))
            return f"unknown provider {provider!r} in {text!r}" + (f" (did you mean {hint!r}?)" if hint else "")
        name = models.get(model)
        if name is None:
            return f"provider {provider!r} has no model {model!r}"
        return TargetSpec(provider, name)


def parse_routing(
    check: Checker,
    top: dict[str, Located],
    providers: dict[str, dict[str, str]],
    model_names: set[str],
    written_providers: set[str],
) -> RoutingSpec:
    """``providers``: the valid providers' models; ``written_providers``: every provider name in the
    file (references to one whose entry is invalid are not reported a second time)."""
    catalog = _Catalog(providers, written_providers)
    aliases = _Aliases()
    if "aliases" in top:
        aliases = _aliases(check, top["aliases"], catalog, model_names)
    router = RouterSpec()
    if "router" in top:
        router = _router(check, top["router"], "router", catalog, aliases)
    fallbacks: list[FallbackSpec] = []
    if "fallback" in top:
        fallbacks = _fallbacks(check, top["fallback"], catalog)
    tenants: list[TenantSpec] = []
    if "tenants" in top:
        tenants = _tenants(check, top["tenants"], catalog, aliases)
    return RoutingSpec(tuple(sorted(aliases.valid.items())), router, tuple(fallbacks), tuple(tenants))


@dataclass
class _Aliases:
    valid: dict[str, Choice] = field(default_factory=dict)
    # Every alias name written, valid or not: using an alias whose definition has a problem is not
    # a second problem.
    written: set[str] = field(default_factory=set)


def _aliases(check: Checker, at: Located, catalog: _Catalog, model_names: set[str]) -> _Aliases:
    out = _Aliases()
    if not isinstance(at.value, dict):
        check.problem(at, "aliases", f"must be a mapping of name -> target, got {kind_of(at.value)}")
        return out
    for name, (key_at, value_at) in at.value.items():
        path = join("aliases", name)
        out.written.add(name)
        if name in model_names:
            check.problem(key_at, path, f"{name!r} is already a model name; an alias must not shadow it")
            continue
        if isinstance(value_at.value, str) and value_at.value in at.value:
            check.problem(value_at, path, f"{value_at.value!r} is an alias; an alias names 'provider,model' itself")
            continue
        before = len(check.problems)
        choice = _choice(check, value_at, path, catalog, _Aliases())
        if choice and len(check.problems) == before:
            out.valid[name] = choice
    return out


def _choice(check: Checker, at: Located, path: str, catalog: _Catalog, aliases: _Aliases) -> Choice:
    if isinstance(at.value, str):
        if at.value in aliases.valid:
            return aliases.valid[at.value]
        if at.value in aliases.written:
            return ()
        target = catalog.resolve(at.value)
        if isinstance(target, str):
            hint = closest(at.value, tuple(aliases.written)) if "," not in at.value else None
            check.problem(at, path, target + (f" (did you mean alias {hint!r}?)" if hint else ""))
            return ()
        return () if target is None else ((target, 1),)
    if not isinstance(at.value, list) or not at.value:
        check.problem(
            at, path, f"must be 'provider,model', an alias, or a list of {{target, weight}}, got {kind_of(at.value)}"
        )
        return ()
    options: list[tuple[TargetSpec, int]] = []
    for index, item in enumerate(at.value):
        item_path = join(path, index)
        fields = check.mapping(item, item_path, ("target", "weight"), required=("target",))
        if "target" not in fields:
            continue
        target_at = fields["target"]
        target = catalog.resolve(target_at.value) if isinstance(target_at.value, str) else "must be 'provider,model'"
        weight = check.integer(fields["weight"], join(item_path, "weight"), 1, 1_000_000) if "weight" in fields else 1
        if isinstance(target, str):
            check.problem(target_at, join(item_path, "target"), target)
        elif target is not None and weight is not None:
            options.append((target, weight))
    return tuple(options)


def _router(
    check: Checker, at: Located, path: str, catalog: _Catalog, aliases: _Aliases, inherit: bool = False
) -> RouterSpec:
    """A tenant's router (inherit=True) leaves unset values empty: 0 threshold, no hook, no
    scenario, so that the global router's values apply to them."""
    allowed = (*SCENARIOS, "longContextThreshold", "custom")
    fields = check.mapping(at, path, allowed)
    values: dict = {"long_context_threshold": 0} if inherit else {}
    for key, name in SCENARIOS.items():
        if key in fields:
            values[name] = _choice(check, fields[key], join(path, key), catalog, aliases)
    if "longContextThreshold" in fields:
        threshold = check.integer(fields["longContextThreshold"], join(path, "longContextThreshold"), 1, 100_000_000)
        if threshold is not None:
            values["long_context_threshold"] = threshold
    if "custom" in fields:
        hook = check.string(fields["custom"], join(path, "custom"), _HOOK, "hook ('package.module:function')")
        if hook is not None:
            values["custom_hook"] = hook
    return RouterSpec(**values)


def _fallbacks(check: Checker, at: Located, catalog: _Catalog) -> list[FallbackSpec]:
    if not isinstance(at.value, dict):
        check.problem(at, "fallback", f"must be a mapping of 'provider,model' -> list, got {kind_of(at.value)}")
        return []
    out = []
    for key, (key_at, value_at) in at.value.items():
        path = join("fallback", key)
        primary = catalog.resolve(key)
        if isinstance(primary, str):
            check.problem(key_at, path, primary)
            continue
        items = check.sequence(value_at, path)
        then: list[TargetSpec] = []
        seen = {primary.provider} if primary is not None else set()
        for index, item in enumerate(items):
            target = catalog.resolve(item.value) if isinstance(item.value, str) else "must be 'provider,model'"
            if target is None:
                continue
            if isinstance(target, str):
                check.problem(item, join(path, index), target)
            elif target.provider in seen:
                check.problem(item, join(path, index), f"provider {target.provider!r} appears twice in this chain")
            else:
                seen.add(target.provider)
                then.append(target)
        if len(then) + 1 > MAX_CHAIN:
            check.problem(value_at, path, f"a chain holds at most {MAX_CHAIN} providers")
        elif then and primary is not None:  # None: its provider's entry has problems of its own
            out.append(FallbackSpec(primary, tuple(then)))
    return out


_TENANT_FIELDS = ("name", "api_key_sha256", "router", "limits", "budget", "models", "key_model_limits", "cache")


def _tenant_models(check: Checker, at: Located, path: str, catalog: _Catalog) -> tuple[str, ...]:
    models = []
    for index, model_at in enumerate(check.sequence(at, path)):
        model = check.string(model_at, join(path, index))
        if model is not None and not catalog.knows_model(model):
            check.problem(model_at, join(path, index), f"no provider serves a model {model!r}")
        elif model is not None:
            models.append(model)
    return tuple(models)


def _mapping_items(check: Checker, at: Located, path: str) -> list[tuple[str, Located]]:
    if not isinstance(at.value, dict):
        check.problem(at, path, f"must be a mapping, got {kind_of(at.value)}")
        return []
    return [(str(key), value_at) for key, (_, value_at) in at.value.items()]


def _tenants(check: Checker, at: Located, catalog: _Catalog, aliases: _Aliases) -> list[TenantSpec]:
    out = []
    names: set[str] = set()
    for index, item in enumerate(check.sequence(at, "tenants")):
        path = join("tenants", index)
        fields = check.mapping(item, path, _TENANT_FIELDS, required=("name",))
        name = check.string(fields["name"], join(path, "name")) if "name" in fields else None
        if name in names:
            check.problem(fields["name"], join(path, "name"), f"duplicate tenant {name!r}")
        keys: list[str] = []
        if "api_key_sha256" in fields:
            for key_index, key_at in enumerate(check.sequence(fields["api_key_sha256"], join(path, "api_key_sha256"))):
                if isinstance(key_at.value, str) and _SHA256.match(key_at.value.lower()):
                    keys.append(key_at.value.lower())
                else:
                    check.problem(key_at, join(join(path, "api_key_sha256"), key_index), "must be a hex SHA-256 digest")
        router = (
            _router(check, fields["router"], join(path, "router"), catalog, aliases, inherit=True)
            if "router" in fields
            else RouterSpec(long_context_threshold=0)
        )
        limits = parse_rate_limits(check, fields["limits"], join(path, "limits")) if "limits" in fields else None
        budget = parse_budget(check, fields["budget"], join(path, "budget")) if "budget" in fields else None
        models = _tenant_models(check, fields["models"], join(path, "models"), catalog) if "models" in fields else ()
        key_model: list[tuple[str, RateLimitSpec]] = []
        if "key_model_limits" in fields:
            key_model_path = join(path, "key_model_limits")
            for model, model_at in _mapping_items(check, fields["key_model_limits"], key_model_path):
                if not catalog.knows_model(model):
                    check.problem(model_at, join(key_model_path, model), f"no provider serves a model {model!r}")
                key_model.append((model, parse_rate_limits(check, model_at, join(key_model_path, model))))
        cache = parse_cache(check, fields["cache"], join(path, "cache")) if "cache" in fields else None
        if name is not None:
            names.add(name)
            out.append(
                TenantSpec(
                    name, tuple(keys), router, limits or RateLimitSpec(), budget, models, tuple(key_model), cache
                )
            )
    return out
