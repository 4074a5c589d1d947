"""The MCP endpoint's Envoy half (policy ``mcp:``): the MCP service behind the listener, and the
egress listener through which it reaches the upstream Streamable HTTP servers.

```
client --/mcp--> ccr_listener --(decision: authenticated, x-ccr-cluster: ccr_mcp)--> ccr_mcp
                                                                         (ccr-gateway mcp-gateway)
ccr-gateway mcp-gateway --http://<mcp.egress><server path>, x-ccr-mcp-server: <name>-->
    ccr_mcp_egress listener --> ccr_mcp_<name> (TLS, circuit breakers) --> the server's url
```

- ``ccr_mcp`` and its route on the gateway's listener: like the batch API's
  (control_plane.resources.batches): the decision names the cluster (extproc.request_steps
  mcp_rewrite), the request goes on untouched. No limit on the whole request (a GET is a
  server-to-client SSE stream that lives as long as the session), a long idle bound; with the
  hop, ext_proc off on the route, so no response phase ever sees (or buffers) a stream; on the
  ext_proc path the decision's headers answer turns off every later phase (mode override).
- The egress listener, on a local address (``mcp.egress``): a connection manager with the router
  only (no ext_proc, no Lua: the MCP service has decided already). One route per url server,
  picked by ``x-ccr-mcp-server``, which goes no further; the Host is the server's own; an unknown
  name gets a 404. Only the MCP service sends here: it sets the server's headers (credentials,
  expanded from the policy's templates) itself, so nothing secret is in Envoy's configuration.
- ``ccr_mcp_<name>``: one cluster per url server, built like a provider's
  (control_plane.resources.gateway.provider_cluster) with the default resilience settings: circuit
  breakers, connect timeout, HTTP/2 by ALPN over TLS with SNI and certificate checks for https.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration

from ccr.v1.contract import MCP_CLUSTER, MCP_SERVER_CLUSTER_PREFIX, MCP_SERVER_HEADER
from control_plane.policy.mcp import McpServerSpec, McpSpec
from control_plane.policy.resilience import Resilience
from control_plane.resources import resilience
from control_plane.resources.batches import service_cluster, service_route
from control_plane.resources.gateway import TYPE_PREFIX, parse_resource, upstream_tls_socket

EGRESS_LISTENER_NAME = "ccr_mcp_egress"
EGRESS_ROUTE_CONFIG_NAME = "ccr_mcp_egress"
# A client's GET stream (server-to-client messages) and an upstream's stay open for the session,
# often silent for minutes: no bound on the whole request, an hour between bytes. The MCP service
# bounds each upstream request by the server's own `timeout` itself.
ROUTE_TIMEOUT = "0s"
IDLE_TIMEOUT = "3600s"
UNKNOWN_SERVER_BODY = "no MCP server of that name"
_SERVER_SETTINGS = Resilience()  # the provider clusters' defaults (the policy has no knob per server yet)


def server_cluster_name(name: str) -> str:
    return MCP_SERVER_CLUSTER_PREFIX + name


def mcp_service_cluster(spec: McpSpec) -> Cluster:
    """The MCP service (`ccr-gateway mcp-gateway`) at ``mcp.api``."""
    return service_cluster(MCP_CLUSTER, spec.api_host, spec.api_port, spec.api_socket_path, spec.api_host_is_ip)


def mcp_service_route(decision_hop: bool = True) -> dict[str, Any]:
    """Requests the decision sent to the MCP service (every method of the endpoint)."""
    return service_route(MCP_CLUSTER, IDLE_TIMEOUT, decision_hop)


def _host_port(server: McpServerSpec) -> tuple[str, int, str]:
    """The url's host, its port (the scheme's by default) and the Host header the server expects."""
    parts = urlsplit(server.url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    shown = f"[{host}]" if ":" in host else host
    authority = f"{shown}:{parts.port}" if parts.port else shown
    return host, port, authority


def server_cluster(server: McpServerSpec) -> Cluster:
    """One upstream Streamable HTTP server: its url's host (DNS, like a provider with a host name)."""
    settings = _SERVER_SETTINGS
    scheme = urlsplit(server.url).scheme
    host, port, _ = _host_port(server)
    name = server_cluster_name(server.name)
    cluster: dict[str, Any] = {
        "name": name,
        "type": "LOGICAL_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": resilience.duration(settings.connect_timeout_ms),
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": resilience.circuit_breakers(settings),
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": resilience.protocol_options(settings, scheme),
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}
            ],
        },
    }
    if scheme == "https":
        cluster["transport_socket"] = upstream_tls_socket(settings.tls, host, resilience.alpn(settings))
    return parse_resource(Cluster(), cluster)


def server_clusters(spec: McpSpec) -> list[Cluster]:
    return [server_cluster(server) for server in spec.http_servers]


def server_route(server: McpServerSpec) -> dict[str, Any]:
    """The MCP service's requests for ``server``: to its cluster, as the server's own host."""
    _, _, authority = _host_port(server)
    return {
        "name": server.name,
        "match": {"prefix": "/", "headers": [{"name": MCP_SERVER_HEADER, "string_match": {"exact": server.name}}]},
        "route": {
            "cluster": server_cluster_name(server.name),
            "timeout": ROUTE_TIMEOUT,
            "idle_timeout": IDLE_TIMEOUT,
            "host_rewrite_literal": authority,
        },
    }


def egress_routes(spec: McpSpec) -> RouteConfiguration:
    """One route per url server, then a 404 for a name the policy does not have (a server removed
    while a request of it was on its way, or a bug: never a request sent anywhere)."""
    return parse_resource(
        RouteConfiguration(),
        {
            "name": EGRESS_ROUTE_CONFIG_NAME,
            "virtual_hosts": [
                {
                    "name": "mcp_servers",
                    "domains": ["*"],
                    "routes": [
                        *(server_route(server) for server in spec.http_servers),
                        {
                            "name": "unknown_server",
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 404, "body": {"inline_string": UNKNOWN_SERVER_BODY}},
                        },
                    ],
                    # The server's name is the gateway's business: the upstream never sees it.
                    "request_headers_to_remove": [MCP_SERVER_HEADER],
                }
            ],
        },
    )


def egress_listener(spec: McpSpec) -> Listener:
    """The MCP service's way to the url servers: HTTP/1.1 from a local process, routed by the
    server's name. The MCP service's own requests and answers pass untouched (no path
    normalization: the server's path is the server's business)."""
    hcm = {
        "@type": TYPE_PREFIX + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ccr_mcp_egress",
        "codec_type": "AUTO",
        "rds": {
            "route_config_name": EGRESS_ROUTE_CONFIG_NAME,
            "config_source": {"ads": {}, "resource_api_version": "V3"},
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": TYPE_PREFIX + "envoy.extensions.filters.http.router.v3.Router",
                    # No x-envoy-* headers of the gateway's own go to someone else's server.
                    "suppress_envoy_headers": True,
                },
            }
        ],
        # The route's idle_timeout governs each stream; none is cut for lasting.
        "request_timeout": "0s",
    }
    return parse_resource(
        Listener(),
        {
            "name": EGRESS_LISTENER_NAME,
            "address": {"socket_address": {"address": spec.egress_host, "port_value": spec.egress_port}},
            "filter_chains": [
                {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
            ],
        },
    )
