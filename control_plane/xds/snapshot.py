"""Versioned, immutable sets of xDS resources, and the consistency check run before serving one.

A snapshot knows nothing about gRPC. Each resource type carries its own version, a hash of its
deterministic serialization: a type whose content did not change keeps its version and is not
pushed again, so Envoy does not rebuild (and drain) clusters that stayed the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.http.credential_injector.v3.credential_injector_pb2 import CredentialInjector
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)
from envoy.extensions.http.injected_credentials.generic.v3.generic_pb2 import Generic
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import DownstreamTlsContext
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions
from google.protobuf.message import Message

from ccr.v1.contract import BATCH_API_CLUSTER, MCP_CLUSTER, MCP_SERVER_CLUSTER_PREFIX, POLICY_TYPE_URL
from ccr.v1.policy_pb2 import Policy

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
POLICY = POLICY_TYPE_URL
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# The order Envoy must receive types in (make-before-break): clusters before the endpoints that
# warm them, both before listeners and routes that might send traffic to them; the SDS secrets a
# listener's TLS context names before that listener (it would otherwise warm until they come), and
# the provider keys a cluster's credential injector names right after the clusters. The
# ext_proc policy type is served to ext_proc nodes only.
TYPE_ORDER = (CLUSTER, ENDPOINT, SECRET, LISTENER, ROUTE, POLICY)
# Types Envoy asks for by resource name; the others are "wildcard" (all resources of the type).
# Envoy subscribes to each secret a transport socket names, by name.
NAMED_TYPES = frozenset({ENDPOINT, ROUTE, SECRET})


@dataclass(frozen=True, slots=True)
class Resources:
    """All resources of one type, by name, with a content version."""

    by_name: Mapping[str, Message]
    version: str

    @classmethod
    def of(cls, messages: Iterable[tuple[str, Message]]) -> Resources:
        items = sorted(messages, key=lambda item: item[0])
        digest = hashlib.sha256()
        for name, message in items:
            digest.update(name.encode())
            digest.update(b"\0")
            digest.update(message.SerializeToString(deterministic=True))
        return cls(MappingProxyType(dict(items)), digest.hexdigest()[:16])


_EMPTY = Resources.of(())


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: str
    resources: Mapping[str, Resources] = field(default_factory=dict)

    def get(self, type_url: str) -> Resources:
        return self.resources.get(type_url, _EMPTY)

    @classmethod
    def build(cls, version: str, **by_type: Iterable[tuple[str, Message]]) -> Snapshot:
        return cls(version, MappingProxyType({_TYPE_KEYS[key]: Resources.of(items) for key, items in by_type.items()}))


_TYPE_KEYS = {
    "clusters": CLUSTER,
    "endpoints": ENDPOINT,
    "secrets": SECRET,
    "listeners": LISTENER,
    "routes": ROUTE,
    "policy": POLICY,
}


def consistency_errors(snapshot: Snapshot, policy: Policy | None = None) -> list[str]:
    """Every dangling name in an Envoy snapshot, and in the ext_proc policy served beside it (whose
    providers must all have a cluster in the snapshot). Empty means consistent."""
    errors: list[str] = []
    clusters = snapshot.get(CLUSTER).by_name
    endpoints = snapshot.get(ENDPOINT).by_name
    eds_names: set[str] = set()
    for name, cluster in clusters.items():
        assert isinstance(cluster, Cluster)
        if cluster.type == Cluster.EDS:
            service = cluster.eds_cluster_config.service_name or name
            eds_names.add(service)
            if service not in endpoints:
                errors.append(f"cluster {name!r} has no endpoints (ClusterLoadAssignment {service!r} missing)")
    errors.extend(f"endpoints {name!r} are not named by any EDS cluster" for name in endpoints if name not in eds_names)
    routes = snapshot.get(ROUTE).by_name
    secrets = snapshot.get(SECRET).by_name
    used_routes: set[str] = set()
    used_secrets: set[str] = set()
    for name, listener in snapshot.get(LISTENER).by_name.items():
        assert isinstance(listener, Listener)
        for route_name in _route_tables_of(listener):
            used_routes.add(route_name)
            if route_name not in routes:
                errors.append(f"listener {name!r} uses route table {route_name!r}, which is missing")
        for secret_name in _secrets_of(listener):
            used_secrets.add(secret_name)
            if secret_name not in secrets:
                errors.append(f"listener {name!r} uses secret {secret_name!r}, which is missing")
    injected_by: dict[str, str] = {}  # cluster -> the key secret its credential injector names
    for name, cluster in clusters.items():
        assert isinstance(cluster, Cluster)
        secret_name = _key_secret_of(cluster)
        if secret_name is None:
            continue
        injected_by[name] = secret_name
        used_secrets.add(secret_name)
        if secret_name not in secrets:
            errors.append(f"cluster {name!r} injects secret {secret_name!r}, which is missing")
    errors.extend(
        f"secret {name!r} is not used by any listener or cluster" for name in secrets if name not in used_secrets
    )
    for name, table in routes.items():
        assert isinstance(table, RouteConfiguration)
        if name not in used_routes:
            errors.append(f"route table {name!r} is not used by any listener")
        for vhost in table.virtual_hosts:
            for route in vhost.routes:
                if route.route.cluster and route.route.cluster not in clusters:
                    errors.append(f"route table {name!r} sends to unknown cluster {route.route.cluster!r}")
    if policy is not None:
        for provider in policy.providers:
            if provider.cluster not in clusters:
                errors.append(
                    f"policy sends provider {provider.name!r} to cluster {provider.cluster!r}, which is missing"
                )
            elif provider.key_injected_by_envoy and provider.cluster not in injected_by:
                # ext_proc would send the provider's requests without a key: Envoy must add it.
                errors.append(
                    f"policy leaves provider {provider.name!r}'s key to cluster {provider.cluster!r}, "
                    "which does not inject one"
                )
        for chain in policy.fallbacks:
            if chain.cluster not in clusters:
                errors.append(f"policy sends a fallback chain to cluster {chain.cluster!r}, which is missing")
        if policy.batch_api and BATCH_API_CLUSTER not in clusters:
            errors.append(f"policy sends the batch API to cluster {BATCH_API_CLUSTER!r}, which is missing")
        if policy.HasField("mcp"):
            if MCP_CLUSTER not in clusters:
                errors.append(f"policy sends the MCP endpoint to cluster {MCP_CLUSTER!r}, which is missing")
            for server in policy.mcp.servers:
                if server.url and MCP_SERVER_CLUSTER_PREFIX + server.name not in clusters:
                    cluster = MCP_SERVER_CLUSTER_PREFIX + server.name
                    errors.append(
                        f"policy reaches MCP server {server.name!r} through cluster {cluster!r}, which is missing"
                    )
    return errors


def _key_secret_of(cluster: Cluster) -> str | None:
    """The generic secret a cluster's credential_injector upstream filter names (provider keys)."""
    packed = cluster.typed_extension_protocol_options.get(_HTTP_OPTIONS)
    options = HttpProtocolOptions()
    if packed is None or not packed.Unpack(options):
        return None
    for upstream_filter in options.http_filters:
        injector, generic = CredentialInjector(), Generic()
        if upstream_filter.typed_config.Unpack(injector) and injector.credential.typed_config.Unpack(generic):
            return generic.credential.name
    return None


def _secrets_of(listener: Listener) -> list[str]:
    """The SDS secrets the listener's downstream TLS contexts name."""
    names = []
    for chain in listener.filter_chains:
        context = DownstreamTlsContext()
        if chain.HasField("transport_socket") and chain.transport_socket.typed_config.Unpack(context):
            common = context.common_tls_context
            names.extend(config.name for config in common.tls_certificate_sds_secret_configs)
            if common.HasField("validation_context_sds_secret_config"):
                names.append(common.validation_context_sds_secret_config.name)
    return names


def _route_tables_of(listener: Listener) -> list[str]:
    names = []
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            hcm = HttpConnectionManager()
            if network_filter.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                names.append(hcm.rds.route_config_name)
    return names
