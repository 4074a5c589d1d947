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
from control_plane.resources.gateway import CLIENT_CERT_HEADER, TYPE_PREFIX, parse_resource

# A results download of a 100,000-item batch streams for minutes, and an upload of 256 MB on a slow
# link too: no limit on the whole request, but an idle bound (nothing sent either way for this long).
ROUTE_TIMEOUT = "0s"
IDLE_TIMEOUT = "300s"
CONNECT_TIMEOUT = "2s"


def batch_api_cluster(spec: BatchesSpec) -> Cluster:
    """The batch API: an IP or a unix socket (STATIC), else a DNS name (STRICT_DNS); HTTP/1.1."""
    if spec.socket_path:
        address: dict[str, Any] = {"pipe": {"path": spec.socket_path}}
    else:
        address = {"socket_address": {"address": spec.host, "port_value": spec.port}}
    cluster: dict[str, Any] = {
        "name": BATCH_API_CLUSTER,
        "type": "STATIC" if spec.socket_path or spec.host_is_ip else "STRICT_DNS",
        "connect_timeout": CONNECT_TIMEOUT,
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": TYPE_PREFIX + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": BATCH_API_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
    if not spec.socket_path and not spec.host_is_ip:
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    return parse_resource(Cluster(), cluster)


def batch_api_route(decision_hop: bool = True) -> dict[str, Any]:
    """Requests the decision sent to the batch API: no body rewrite, no ext_proc on the route (nothing
    to translate; with the hop it was never opened, on the ext_proc path the decision's headers
    answer let the rest pass by), long transfers allowed. x-ccr-tenant, set by the decision, goes
    on; the virtual host removes x-ccr-cluster."""
    route: dict[str, Any] = {
        "match": {
            "prefix": "/",
            "headers": [{"name": CLUSTER_HEADER, "string_match": {"exact": BATCH_API_CLUSTER}}],
        },
        "route": {"cluster": BATCH_API_CLUSTER, "timeout": ROUTE_TIMEOUT, "idle_timeout": IDLE_TIMEOUT},
        # The client's verified certificate (mTLS on the listener) is the gateway's business only.
        "request_headers_to_remove": [CLIENT_CERT_HEADER],
    }
    if decision_hop:
        route["typed_per_filter_config"] = decision_hop_resources.extproc_off()
    return route
