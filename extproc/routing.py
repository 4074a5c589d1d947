"""The routing table ext_proc compiles from each Policy it receives, and the pure decision on it.

Compiling happens once per policy version (off the hot path); a request's decision is one dict
lookup. Provider keys are read from this process's environment at compile time and never travel
over xDS.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ccr.v1 import policy_pb2
from extproc.translate.base import Api, Target

_API_OF = {
    policy_pb2.API_ANTHROPIC: Api.ANTHROPIC,
    policy_pb2.API_OPENAI: Api.OPENAI,
    policy_pb2.API_GEMINI: Api.GEMINI,
}


class PolicyCompileError(ValueError):
    """The policy cannot be used by this ext_proc (answered to the control plane as a NACK)."""


def auth_headers(api: Api, key: str) -> tuple[tuple[str, str], ...]:
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
    # Headers sent to the provider on every request: its auth header and the policy's extras.
    headers: tuple[tuple[str, str], ...]
    # Set when the provider cannot be used from this process (e.g. its key variable is unset).
    unavailable: str | None = None
    forward_count_tokens: bool = False


@dataclass(frozen=True, slots=True)
class ModelRoute:
    provider: ProviderRoute
    model: str  # the name the client asked for
    target: Target  # the provider's model id and limits (stream flag filled per request)


@dataclass(frozen=True, slots=True)
class RoutingTable:
    version: str
    models: Mapping[str, ModelRoute]
    max_request_bytes: int

    def route(self, model: str) -> ModelRoute | None:
        return self.models.get(model)

    def model_names(self) -> list[str]:
        return sorted(self.models)


def compile_policy(policy: policy_pb2.Policy, environ: Mapping[str, str] | None = None) -> RoutingTable:
    env = os.environ if environ is None else environ
    models: dict[str, ModelRoute] = {}
    for provider in policy.providers:
        api = _API_OF.get(provider.api)
        if api is None:
            raise PolicyCompileError(f"provider {provider.name!r}: unsupported api {provider.api}")
        if not provider.cluster:
            raise PolicyCompileError(f"provider {provider.name!r}: no cluster")
        headers = tuple(sorted(provider.headers.items()))
        unavailable = None
        if provider.api_key_env:
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
        )
        for model in provider.models:
            if model.name in models:
                raise PolicyCompileError(f"model {model.name!r} is served by two providers")
            target = Target(
                model=model.id or model.name,
                base_path=provider.base_path,
                max_output_tokens=model.max_output_tokens or None,
                capabilities=frozenset(model.capabilities),
            )
            models[model.name] = ModelRoute(route, model.name, target)
    return RoutingTable(policy.version, models, policy.limits.max_request_bytes)
