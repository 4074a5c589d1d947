"""Everything Envoy is served for one state of the rollout, built in one pure function.

The rollout (control_plane.xds.rollout) decides *which* providers and fallback chains Envoy must have
at a moment (the desired policy's, plus those the policy ext_proc still holds may name); this module
turns that into clusters, endpoints, the listener and the route table. Building and checking are
separate steps: the rollout runs snapshot.consistency_errors on the result before serving it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from ccr.v1.contract import BATCH_API_CLUSTER, MCP_CLUSTER
from control_plane.policy import GatewayPolicy, ProviderSpec
from control_plane.policy.batches import BatchesSpec
from control_plane.policy.mcp import McpSpec
from control_plane.policy.routes import FallbackSpec
from control_plane.resources import gateway as resources
from control_plane.resources import mcp as mcp_resources
from control_plane.resources import provider_keys
from control_plane.resources import tls as tls_resources
from control_plane.resources.batches import batch_api_cluster, batch_api_route
from control_plane.resources.chains import chain_cluster, chain_route
from control_plane.resources.decision_hop import response_only_variant
from control_plane.resources.jwt import jwks_clusters
from control_plane.resources.tls import TlsMaterial
from control_plane.resources.tracing import OTLP_CLUSTER, otlp_cluster
from control_plane.xds.snapshot import Snapshot


def envoy_snapshot(
    version: str,
    policy: GatewayPolicy,
    providers: Iterable[ProviderSpec],
    chains: Mapping[str, tuple[FallbackSpec, GatewayPolicy]],
    endpoints_of: Callable[[ProviderSpec], ClusterLoadAssignment],
    usage_log_clusters: tuple[str, ...],
    tls_material: TlsMaterial | None = None,
    injected: frozenset[str] = frozenset(),
    keys: Mapping[str, str] | None = None,
    batches: BatchesSpec | None = None,
    mcp: McpSpec | None = None,
) -> Snapshot:
    """``policy`` gives the listener and the chains' timeouts; ``providers`` every provider cluster
    Envoy must have; ``chains`` every chain cluster, with the policy whose providers it names;
    ``tls_material`` the bytes of the files ``policy.tls`` names (its SDS secrets); ``injected``
    the providers whose key Envoy injects, ``keys`` the keys read so far (reference -> key);
    ``batches`` the batch API's address when Envoy must route to it (the desired policy's, or the
    one ext_proc still holds: control_plane.xds.rollout); ``mcp`` the MCP service's address and
    the url servers Envoy must reach for it (the same, with the servers of both policies).

    A provider's key secret is in the same snapshot as the cluster naming it, and the ADS server
    sends secrets right after clusters and endpoints (snapshot.TYPE_ORDER): the cluster warms only
    until its secret arrives on the same stream."""
    specs = sorted(providers, key=lambda p: p.cluster)
    keyed = [p for p in specs if p.name in injected]
    clusters = [(p.cluster, resources.provider_cluster(p, p.name in injected)) for p in specs]
    clusters += [
        (name, chain_cluster(chain, {p.name: p for p in owner.providers}, os.environ))
        for name, (chain, owner) in chains.items()
    ]
    # The listener's jwt_authn fetches remote JWKS through these (CDS goes before LDS: they exist first).
    clusters += [(cluster.name, cluster) for cluster in jwks_clusters(policy.auth.jwt)]
    if policy.tracing is not None:  # the listener's tracer exports through it
        clusters.append((OTLP_CLUSTER, otlp_cluster(policy.tracing)))
    if batches is not None:  # the hop forwards the batch paths there
        clusters.append((BATCH_API_CLUSTER, batch_api_cluster(batches)))
    if mcp is not None:  # the decision forwards the MCP endpoint there; the MCP service egresses here
        clusters.append((MCP_CLUSTER, mcp_resources.mcp_service_cluster(mcp)))
        clusters += [(cluster.name, cluster) for cluster in mcp_resources.server_clusters(mcp)]
    longest = max((len(chain.providers) for chain, _ in chains.values()), default=0)
    hop = policy.decision_path == "hop"
    chain_routes = None
    if chains:
        route = chain_route(resources.ROUTE_TIMEOUT, longest, policy.attempt_timeout_seconds)
        # With the hop, a chain's answer is read by ext_proc on the response only.
        chain_routes = [response_only_variant(route), route] if hop else [route]
    provider_routes = [route for p in specs for route in resources.provider_routes(p, hop)]
    if batches is not None:
        provider_routes.append(batch_api_route(hop))
    if mcp is not None:
        provider_routes.append(mcp_resources.mcp_service_route(hop))
    routes = resources.route_configuration(chain_routes, provider_routes, hop, cors=policy.cors)
    listeners = [(resources.LISTENER_NAME, resources.listener(policy, usage_log_clusters))]
    route_tables = [(resources.ROUTE_CONFIG_NAME, routes)]
    if mcp is not None:
        listeners.append((mcp_resources.EGRESS_LISTENER_NAME, mcp_resources.egress_listener(mcp)))
        route_tables.append((mcp_resources.EGRESS_ROUTE_CONFIG_NAME, mcp_resources.egress_routes(mcp)))
    return Snapshot.build(
        version,
        clusters=clusters,
        endpoints=[(p.cluster, endpoints_of(p)) for p in specs if p.uses_eds],
        secrets=tls_resources.secrets(policy.tls, tls_material) + provider_keys.key_secrets(keyed, keys or {}),
        listeners=listeners,
        routes=route_tables,
    )
