"""A provider pool's hosts as locality-aware EDS: the local region first, every other region after.

Envoy's priority levels do the failover (control_plane.policy.pools says how a pool is written):

- priority 0: the localities (region, zone) of the region this control plane serves; priority 1:
  those of every other region. Envoy moves load to priority 1 as priority 0's share of healthy
  hosts drops below 100% / overprovisioning factor (1.4), all of it once none is left, and moves it
  back as they recover (outlier ejections expire, active health checks pass again).
- within a priority, each locality gets the share of its weight (the sum of its hosts' weights;
  ``locality_weighted_lb_config`` on the cluster), then round robin among its hosts.
- a request whose attempt failed before any response byte (connection refused, reset) is retried
  once on another host and once more on the next priority (``pool_retry_policy``): the requests in
  flight when a region's pool dies are answered from another region, not failed.

With no region given, or none of the pool's hosts in it, every host is priority 0 (Envoy requires
the priorities to start at 0).
"""

from __future__ import annotations

from typing import Any

# The retry extensions' messages, registered for parsing the route that names them.
import envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2
import envoy.extensions.retry.priority.previous_priorities.v3.previous_priorities_config_pb2  # noqa: F401

from control_plane.policy import ProviderSpec
from control_plane.policy.pools import PoolEndpoint

LOCAL, REMOTE = 0, 1
# Only failures where the provider cannot have produced an answer the client saw; a 5xx or a 429 is
# the provider's answer, passed on (or handled by a fallback chain).
POOL_RETRY_ON = "connect-failure,refused-stream,reset"
_TYPE = "type.googleapis.com/"


def priority_of(endpoint: PoolEndpoint, local_region: str, has_local: bool) -> int:
    return LOCAL if not has_local or endpoint.region == local_region else REMOTE


def pool_load_assignment(provider: ProviderSpec, local_region: str) -> dict[str, Any]:
    """The ClusterLoadAssignment of a pool (as a dict for ``parse_resource``): one group per
    (priority, region, zone), local first; each host named by the base_url's host, which
    ``auto_host_rewrite`` sends as its Host header (and TLS its SNI)."""
    has_local = bool(local_region) and any(e.region == local_region for e in provider.endpoints)
    groups: dict[tuple[int, str, str], list[PoolEndpoint]] = {}
    for endpoint in sorted(provider.endpoints):
        key = (priority_of(endpoint, local_region, has_local), endpoint.region, endpoint.zone)
        groups.setdefault(key, []).append(endpoint)
    return {
        "cluster_name": provider.cluster,
        "endpoints": [
            {
                "locality": {"region": region, "zone": zone},
                "priority": priority,
                "load_balancing_weight": sum(e.weight for e in members),
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {"socket_address": {"address": e.address, "port_value": e.port}},
                            "hostname": provider.host,
                        },
                        "load_balancing_weight": e.weight,
                    }
                    for e in members
                ],
            }
            for (priority, region, zone), members in sorted(groups.items())
        ],
    }


def pool_retry_policy() -> dict[str, Any]:
    """Retries across the pool: the first retry on another host of the same priority
    (previous_hosts), the next two on the next priority (previous_priorities leaves out the
    priorities of every two attempts). The body is replayed from Envoy's buffer (the listener
    buffers up to max_request_bytes). How many retries may run at once is the provider's retry
    budget (resilience.retry_budget): a pool meant to absorb a region's loss needs one that covers
    the requests in flight (docs/deployment.md)."""
    return {
        "retry_on": POOL_RETRY_ON,
        "num_retries": 3,
        "retry_priority": {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {
                "@type": _TYPE + "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                "update_frequency": 2,
            },
        },
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": _TYPE + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 5,
        "retry_back_off": {"base_interval": "0.005s", "max_interval": "0.05s"},
    }
