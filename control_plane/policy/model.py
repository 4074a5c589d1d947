"""The gateway policy as the control plane holds it: immutable specs, and their proto form for ext_proc.

control_plane.policy.parse builds them from YAML (with line-precise errors); nothing else does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from ccr.v1 import policy_pb2
from ccr.v1.pricing import Prices
from control_plane.policy.auth import AuthSpec
from control_plane.policy.batches import BatchesSpec
from control_plane.policy.cache import CacheSpec, cache_proto, longest_dedup_wait_s
from control_plane.policy.cors import CorsSpec
from control_plane.policy.edge_limits import PerIpLimits
from control_plane.policy.hardening import HardeningSpec
from control_plane.policy.limit_sets import RateLimitSpec
from control_plane.policy.mcp import McpSpec
from control_plane.policy.pools import PoolEndpoint
from control_plane.policy.resilience import DEFAULT as DEFAULT_RESILIENCE
from control_plane.policy.resilience import Resilience
from control_plane.policy.responses import ResponsesSpec
from control_plane.policy.routes import RoutingSpec
from control_plane.policy.storage import StorageSpec
from control_plane.policy.tls import TlsSpec
from control_plane.policy.tracing import TracingSpec
from control_plane.policy.vault import VaultSpec
from control_plane.policy.yaml_check import Problem

API_NAMES = ("anthropic", "openai", "gemini", "responses", "vertex", "bedrock")
_PROTO_API = {
    "anthropic": policy_pb2.API_ANTHROPIC,
    "openai": policy_pb2.API_OPENAI,
    "gemini": policy_pb2.API_GEMINI,
    "responses": policy_pb2.API_RESPONSES,
    "vertex": policy_pb2.API_VERTEX,
    "bedrock": policy_pb2.API_BEDROCK,
}
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
DECISION_PATHS = ("hop", "ext_proc")  # GatewayPolicy.decision_path, the default first


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    id: str
    max_output_tokens: int = 0
    context_window: int = 0
    capabilities: tuple[str, ...] = ()
    # USD per million tokens: the entry's own pricing, else the bundled table's for its id
    # (control_plane.policy.pricing); None: priced nowhere (recorded at cost 0, with a warning).
    pricing: Prices | None = None
    # Across every caller (control_plane.policy.limit_sets); none by default.
    limits: RateLimitSpec = field(default_factory=RateLimitSpec)
    # The response cache for this model (control_plane.policy.cache); None: the policy's default.
    cache: CacheSpec | None = None


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    api: str
    scheme: str  # "http" | "https"
    host: str
    port: int
    base_path: str
    api_key_env: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    models: tuple[ModelSpec, ...] = ()
    forward_count_tokens: bool = False
    resilience: Resilience = DEFAULT_RESILIENCE  # Envoy-only: limits, passive/active health, TLS
    # Endpoints come from Consul's catalog (health, weights, locality) instead of base_url's host.
    consul_service: str = ""
    # The key as a Vault reference ("vault:secret/data/providers/openai#key"), exclusive with
    # api_key_env. Never the key (control_plane.policy.vault). Read by the control plane and
    # injected by Envoy (GatewayPolicy.envoy_injected_keys), else read by ext_proc.
    api_key_ref: str = ""
    # Its own hosts across regions and zones instead of base_url's host (control_plane.policy.pools).
    endpoints: tuple[PoolEndpoint, ...] = ()
    # A cloud provider's credentials (bedrock: how Envoy signs; vertex: where the control plane
    # gets its OAuth token): control_plane.policy.credentials. Never a secret; "" the default.
    credentials: str = ""
    # A bedrock provider's AWS region (SigV4's, control_plane.policy.bedrock): its ``region:``, else
    # read from a bedrock-runtime.<region>.amazonaws.com base_url; "" for other providers.
    region: str = ""
    # A vertex provider's publisher (control_plane.policy.vertex): "anthropic" (Claude, rawPredict)
    # or "google" (Gemini, generateContent: translated as a Gemini provider is); "" for the others.
    publisher: str = ""

    @property
    def cluster(self) -> str:
        return f"provider_{self.name}"

    @property
    def injected_key_ref(self) -> str:
        """What Envoy injects is kept under this reference: the Vault reference of ``api_key``, or
        for a vertex provider its OAuth token's source (control_plane.gcp_tokens.token_ref)."""
        if self.api == "vertex":
            return "gcp:" + (self.credentials or "metadata")
        return self.api_key_ref

    @property
    def uses_eds(self) -> bool:
        """Endpoints pushed over EDS: IP hosts, pools and Consul catalog pools (EDS needs IP
        addresses; host names go to a DNS cluster instead)."""
        return self.host_is_ip or bool(self.consul_service) or bool(self.endpoints)

    @property
    def host_is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class GatewayPolicy:
    listener_address: str = "127.0.0.1"
    listener_port: int = 8080
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    providers: tuple[ProviderSpec, ...] = ()
    source: str = "<policy>"
    routing: RoutingSpec = field(default_factory=RoutingSpec)
    # How long one attempt of a fallback chain may wait for response headers (0: no limit).
    attempt_timeout_seconds: float = 0.0
    # How Envoy asks for each request's decision (DECISION_PATHS): "hop", one unary HTTP call from
    # a Lua filter (ext_proc only for translated streams and fallback chains); "ext_proc", a gRPC
    # ext_proc stream for every request.
    decision_path: str = "hop"
    # Browser clients: preflights answered by Envoy (listener.cors); None: no CORS headers at all.
    cors: CorsSpec | None = None
    # Requests per client address, counted and refused (429) by Envoy before any decision
    # (listener.per_ip_limits); None: not limited.
    per_ip_limits: PerIpLimits | None = None
    # Where the usage ledger keeps its records (None: not written; the local SQLite ledger).
    storage: StorageSpec | None = None
    # Virtual keys: whether every request needs one, and where they are kept.
    auth: AuthSpec = field(default_factory=AuthSpec)
    # The response cache's default (control_plane.policy.cache); None: off unless a model or a
    # tenant turns it on.
    cache: CacheSpec | None = None
    # Distributed tracing (control_plane.policy.tracing); None: off.
    tracing: TracingSpec | None = None
    # Where vault: references are read and how ext_proc logs in (control_plane.policy.vault).
    vault: VaultSpec | None = None
    # TLS on the listener (listener.tls); None: plain HTTP.
    tls: TlsSpec | None = None
    # Edge hardening knobs (listener.hardening), Envoy's edge best practices by default.
    hardening: HardeningSpec = field(default_factory=HardeningSpec)
    # Where the batch API runs (batches:); None: the batch paths are unknown endpoints.
    batches: BatchesSpec | None = None
    # The MCP servers the gateway fronts and their grants (mcp:); None: no MCP endpoint.
    mcp: McpSpec | None = None
    # Stored responses of the Responses API (responses:): on by default, kept 30 days.
    responses: ResponsesSpec = field(default_factory=ResponsesSpec)
    # What parsing found suspicious but not wrong (an OpenAI base_url without a version): shown by
    # `validate` and logged, never a reason to reject. Not part of what the policy means.
    warnings: tuple[Problem, ...] = field(default=(), compare=False)

    def provider(self, name: str) -> ProviderSpec | None:
        return next((p for p in self.providers if p.name == name), None)

    @property
    def longest_dedup_wait_s(self) -> float:
        """The longest a request may wait for an identical one in flight (the response cache's
        in-flight deduplication), at any level of the policy: its decision call may take that long."""
        levels = [self.cache, *(m.cache for p in self.providers for m in p.models)]
        levels += [t.cache for t in self.routing.tenants]
        return longest_dedup_wait_s(levels)

    @property
    def envoy_injected_keys(self) -> frozenset[str]:
        """The providers whose key Envoy injects (credential_injector on their cluster, an SDS
        secret read from Vault by the control plane): every ``api_key: vault:`` provider that no
        fallback chain names. A chain's cluster mixes providers, one upstream filter chain for all,
        so its attempts are rewritten, key included, by ext_proc (extproc.attempt); such a provider
        keeps its key in ext_proc for its own cluster too (one path per key). Keys from the
        environment (api_key_env) stay with ext_proc (docs/security-vault.md)."""
        chained = {name for chain in self.routing.fallbacks for name in chain.providers}
        # A vertex provider's OAuth token, refreshed by the control plane, goes the same way
        # (control_plane.gcp_tokens), chained or not: ext_proc never holds it, so a chain's attempt
        # to it gets it from Envoy too (control_plane.resources.attempt_credentials).
        return frozenset(
            p.name for p in self.providers if p.injected_key_ref and (p.name not in chained or p.api == "vertex")
        )

    def to_proto(self, version: str, key_problems: Mapping[str, str] | None = None) -> policy_pb2.Policy:
        """The ext_proc-facing contract (no listener details, no secrets). ``key_problems``: why
        the control plane has no key yet for a provider whose key Envoy injects (by name)."""
        injected = self.envoy_injected_keys
        problems = key_problems or {}
        return policy_pb2.Policy(
            version=version,
            auth_required=self.auth.required,
            batch_api=self.batches is not None,
            batch_workers=list(self.batches.workers) if self.batches is not None else [],
            # listener.tls.identities (parse_listener_tls refuses them without client_ca: mTLS).
            cert_identities=dict(self.tls.identities) if self.tls is not None else {},
            limits=policy_pb2.Limits(max_request_bytes=self.max_request_bytes),
            providers=[
                policy_pb2.Provider(
                    name=p.name,
                    # Gemini on Vertex is a Gemini provider to ext_proc, its token injected by Envoy.
                    api=policy_pb2.API_GEMINI if p.publisher == "google" else _PROTO_API[p.api],
                    cluster=p.cluster,
                    base_path=p.base_path,
                    api_key_env=p.api_key_env,
                    # Envoy injects it: ext_proc is not told where the key is.
                    api_key_ref="" if p.name in injected else p.api_key_ref,
                    key_injected_by_envoy=p.name in injected,
                    key_unavailable=_key_unavailable(p.name, problems) if p.name in injected else "",
                    headers=dict(p.headers),
                    forward_count_tokens=p.forward_count_tokens,
                    models=[
                        policy_pb2.Model(
                            name=m.name,
                            id=m.id,
                            max_output_tokens=m.max_output_tokens,
                            context_window=m.context_window,
                            capabilities=m.capabilities,
                            pricing=_pricing_proto(m.pricing),
                            limits=m.limits.to_proto() if m.limits else None,
                            cache=cache_proto(m.cache),
                        )
                        for m in p.models
                    ],
                )
                for p in self.providers
            ],
            cache=cache_proto(self.cache),
            tracing=self.tracing.to_proto() if self.tracing is not None else None,
            vault=self.vault.to_proto() if self.vault is not None else None,
            # Templates and references only: ext_proc reads the values from its environment or Vault.
            mcp=self.mcp.to_proto() if self.mcp is not None else None,
            responses=self.responses.to_proto(),
            **self.routing.to_proto_fields(),
        )


def _key_unavailable(provider: str, problems: Mapping[str, str]) -> str:
    problem = problems.get(provider)
    return f"provider {provider!r} has no API key: {problem}" if problem else ""


def _pricing_proto(prices: Prices | None) -> policy_pb2.Pricing | None:
    if prices is None:
        return None
    return policy_pb2.Pricing(
        input=prices.input, output=prices.output, cache_read=prices.cache_read, cache_write=prices.cache_write
    )
