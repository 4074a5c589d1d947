"""The batch API behind the listener: its cluster and its route (policy ``batches:``).

The decision (the hop, or ext_proc on the request headers) authenticates a batch request like any
other and names this cluster in x-ccr-cluster (extproc.request_steps.batch_rewrite); the route below
sends it there untouched. The service (`ccr-gateway batch-api`, batches.api_service) speaks HTTP/1.1
and reads the tenant the decision set in x-ccr-tenant, so it must be reachable through the gateway
only.
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster

from ccr.v1.contract import BATCH_API_CLUSTER, CLUSTER_HEADER
from control_plane.policy.batches import BatchesSpec
from control_plane.resources import decision_hop as decision_hop_resources
from control_plane.resources import usage_capture
from control_plane.resources.gateway import CLIENT_CERT_HEADER, TYPE_PREFIX, parse_resource

# A results download of a 100,000-item batch streams for minutes, and an upload of 256 MB on a slow
# link too: no limit on the whole request, but an idle bound (nothing sent either way for this long).
ROUTE_TIMEOUT = "0s"
IDLE_TIMEOUT = "300s"
CONNECT_TIMEOUT = "2s"


def batch_api_cluster(spec: BatchesSpec) -> Cluster:
    """The batch API: an IP or a unix socket (STATIC), else a DNS name (STRICT_DNS); HTTP/1.1."""
    return service_cluster(BATCH_API_CLUSTER, spec.host, spec.port, spec.socket_path, spec.host_is_ip)


def service_cluster(name: str, host: str, port: int, socket_path: str, host_is_ip: bool) -> Cluster:
    """A service of the gateway's own behind the listener (the batch API, the MCP service,
    control_plane.resources.mcp): an IP or a unix socket (STATIC), else a DNS name (STRICT_DNS);
    HTTP/1.1."""
    if socket_path:
        address: dict[str, Any] = {"pipe": {"path": socket_path}}
    else:
        address = {"socket_address": {"address": host, "port_value": port}}
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if socket_path or host_is_ip else "STRICT_DNS",
        "connect_timeout": CONNECT_TIMEOUT,
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": TYPE_PREFIX + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
    if not socket_path and not host_is_ip:
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    return parse_resource(Cluster(), cluster)


def batch_api_route(decision_hop: bool = True) -> dict[str, Any]:
    """Requests the decision sent to the batch API: no body rewrite, no ext_proc on the route (nothing
    to translate; with the hop it was never opened, on the ext_proc path the decision's headers
    answer let the rest pass by), long transfers allowed. x-ccr-tenant, set by the decision, goes
    on; the virtual host removes x-ccr-cluster."""
    return service_route(BATCH_API_CLUSTER, IDLE_TIMEOUT, decision_hop)


def service_route(cluster: str, idle_timeout: str, decision_hop: bool = True) -> dict[str, Any]:
    """The route of a service of the gateway's own (``service_cluster``), picked by the cluster
    header the decision set: no limit on the whole request, ``idle_timeout`` between bytes; with
    the hop, ext_proc off (only then: on the ext_proc path a client's own x-ccr-cluster could pick
    this route before the decision, which must still run)."""
    route: dict[str, Any] = {
        "match": {
            "prefix": "/",
            "headers": [{"name": CLUSTER_HEADER, "string_match": {"exact": cluster}}],
        },
        "route": {"cluster": cluster, "timeout": ROUTE_TIMEOUT, "idle_timeout": idle_timeout},
        # The client's verified certificate (mTLS on the listener) is the gateway's business only.
        "request_headers_to_remove": [CLIENT_CERT_HEADER],
        # Its answers carry no provider's usage: Envoy parses none of them.
        "typed_per_filter_config": usage_capture.usage_filters_off(),
    }
    if decision_hop:
        route["typed_per_filter_config"].update(decision_hop_resources.extproc_off())
    return route
