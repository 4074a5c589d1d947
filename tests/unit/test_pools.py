"""A provider's pool across regions (``providers[].endpoints``): the policy's checks, the
locality-aware EDS a control plane in a given region pushes, and the pool's cluster and route.

Every resource goes through resources.parse_resource (json_format into Envoy's protos), so a field
Envoy does not know fails the test that builds it. The failover itself, in a real Envoy under load,
is tests/e2e/test_multi_region.py."""

from __future__ import annotations

import textwrap

import pytest
from envoy.config.route.v3.route_components_pb2 import Route
from hypothesis import given
from hypothesis import strategies as st

from control_plane.policy import GatewayPolicy, ProviderSpec, load_policy
from control_plane.policy.pools import PoolEndpoint
from control_plane.policy.yaml_check import PolicyError
from control_plane.resources import gateway as resources
from control_plane.resources.localities import POOL_RETRY_ON, pool_load_assignment
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.rollout import Rollout

POOL = """\
- {address: 10.0.1.5, region: us-east, zone: us-east-1a}
- {address: 10.0.1.6, port: 8001, region: us-east, zone: us-east-1b, weight: 2}
- {address: 10.1.1.5, region: eu-west, zone: eu-west-1a, weight: 3}
- {address: 10.2.1.5, region: ap-south}
"""


def policy_with(endpoints_yaml: str, extra: str = "") -> GatewayPolicy:
    endpoints = textwrap.indent(endpoints_yaml, "      ")
    return load_policy(
        "providers:\n  - name: vllm\n    api: openai\n    base_url: http://vllm.internal:8000/v1\n"
        f"    models: [m]\n{extra}    endpoints:\n{endpoints}"
    )


def pool(endpoints_yaml: str = POOL) -> ProviderSpec:
    return policy_with(endpoints_yaml).providers[0]


def problems(endpoints_yaml: str, extra: str = "") -> list[str]:
    with pytest.raises(PolicyError) as caught:
        policy_with(endpoints_yaml, extra)
    return [str(p) for p in caught.value.problems]


def test_a_pool_is_parsed_with_the_base_urls_port_as_default():
    provider = pool()
    assert provider.endpoints == (
        PoolEndpoint("10.0.1.5", 8000, "us-east", "us-east-1a", 1),
        PoolEndpoint("10.0.1.6", 8001, "us-east", "us-east-1b", 2),
        PoolEndpoint("10.1.1.5", 8000, "eu-west", "eu-west-1a", 3),
        PoolEndpoint("10.2.1.5", 8000, "ap-south", "", 1),
    )
    assert provider.uses_eds  # though base_url names a host: the pool is what Envoy dials


def test_every_problem_of_a_pool_is_reported_with_its_line():
    found = problems(
        "- {address: vllm-1.internal}\n"
        "- {address: 10.0.0.1, port: 0}\n"
        "- {address: 10.0.0.2, region: 'us east'}\n"
        "- {address: 10.0.0.3, weight: 1000}\n"
        "- {address: 10.0.0.4, rack: r1}\n"
        "- {port: 80}\n"
    )
    assert [p.split(": ", 2)[1] for p in found] == [
        "providers[0].endpoints[0].address",
        "providers[0].endpoints[1].port",
        "providers[0].endpoints[2].region",
        "providers[0].endpoints[3].weight",
        "providers[0].endpoints[4].rack",
        "providers[0].endpoints[5].address",
    ]
    assert "not an IP address" in found[0] and "consul_service" in found[0]
    assert found[0].split(":")[1] == "7"  # the line of the first endpoint in the policy text


def test_a_host_twice_in_a_pool_and_an_empty_pool_are_refused():
    assert "already in this pool" in problems("- {address: 10.0.0.1}\n- {address: 10.0.0.1, port: 8000}\n")[0]
    assert "at least one endpoint" in problems("[]\n")[0]


def test_endpoints_and_consul_service_exclude_each_other():
    found = problems("- {address: 10.0.0.1}\n", extra="    consul_service: vllm\n")
    assert "endpoints or consul_service, not both" in found[0]


def test_the_local_region_is_priority_zero_and_every_other_region_priority_one():
    assignment = resources.provider_endpoints(pool(), "eu-west")
    groups = [
        (g.priority, g.locality.region, g.locality.zone, g.load_balancing_weight.value) for g in assignment.endpoints
    ]
    assert groups == [
        (0, "eu-west", "eu-west-1a", 3),
        (1, "ap-south", "", 1),
        (1, "us-east", "us-east-1a", 1),
        (1, "us-east", "us-east-1b", 2),
    ]
    hosts = [
        (lb.endpoint.address.socket_address.port_value, lb.endpoint.hostname)
        for lb in assignment.endpoints[3].lb_endpoints
    ]
    assert hosts == [(8001, "vllm.internal")]  # auto_host_rewrite sends the base_url's host


def test_without_a_region_or_with_none_of_the_pool_in_it_every_host_is_priority_zero():
    for region in ("", "sa-east"):
        assert {g.priority for g in resources.provider_endpoints(pool(), region).endpoints} == {0}


@given(
    st.lists(
        st.tuples(
            st.integers(1, 250),
            st.sampled_from(["a", "b", "c", ""]),
            st.sampled_from(["", "z1", "z2"]),
            st.integers(1, 5),
        ),
        min_size=1,
        max_size=12,
        unique_by=lambda t: t[0],
    ),
    st.sampled_from(["", "a", "b", "x"]),
)
def test_any_pool_gives_dense_priorities_every_host_once_and_locality_weights_that_add_up(hosts, region):
    endpoints = tuple(PoolEndpoint(f"10.0.0.{octet}", 80, r, z, w) for octet, r, z, w in hosts)
    provider = pool()
    spec = ProviderSpec(**{**{f: getattr(provider, f) for f in provider.__slots__}, "endpoints": endpoints})
    assignment = resources.provider_endpoints(spec, region)
    priorities = sorted({g.priority for g in assignment.endpoints})
    assert priorities == list(range(len(priorities)))  # Envoy: from 0, no gaps
    seen = [lb.endpoint.address.socket_address.address for g in assignment.endpoints for lb in g.lb_endpoints]
    assert sorted(seen) == sorted(e.address for e in endpoints)
    for group in assignment.endpoints:
        assert group.load_balancing_weight.value == sum(lb.load_balancing_weight.value for lb in group.lb_endpoints)
        assert group.priority == (
            1 if region and any(e.region == region for e in endpoints) and group.locality.region != region else 0
        )


def test_a_pool_cluster_weighs_localities_and_its_route_retries_unanswered_attempts_elsewhere():
    provider = pool()
    cluster = resources.provider_cluster(provider)
    assert cluster.type == cluster.EDS and cluster.common_lb_config.HasField("locality_weighted_lb_config")
    retry = resources.provider_route(provider)["route"]["retry_policy"]
    assert retry["retry_on"] == POOL_RETRY_ON == "connect-failure,refused-stream,reset"  # never a 5xx or 429
    assert retry["retry_priority"]["typed_config"]["update_frequency"] == 2
    resources.parse_resource(Route(), resources.provider_route(provider))  # Envoy knows every field


def test_a_provider_without_a_pool_keeps_its_cluster_and_route_as_before():
    plain = load_policy(
        "providers:\n  - name: a\n    api: openai\n    base_url: http://10.0.0.9:8000/v1\n    models: [m]\n"
    )
    provider = plain.providers[0]
    assert not resources.provider_cluster(provider).HasField("common_lb_config")
    assert "retry_policy" not in resources.provider_route(provider)["route"]
    assert pool_load_assignment(pool(), "")["cluster_name"] == "provider_vllm"


def test_the_rollout_builds_endpoints_for_the_region_it_serves():
    rollout = Rollout(SnapshotCache(), region="us-east")
    local = [g.locality.region for g in rollout._endpoints_of(pool()).endpoints if g.priority == 0]
    assert set(local) == {"us-east"}


def test_a_consul_catalog_pool_puts_the_control_planes_region_first_too():
    from control_plane.consul.catalog import Endpoint, local_region_first, to_cluster_load_assignment

    endpoints = [
        Endpoint("10.0.0.1", 80, "HEALTHY", 1, datacenter="dc1", region="us-east"),
        Endpoint("10.0.0.2", 80, "HEALTHY", 1, datacenter="dc1", region="eu-west"),
    ]
    assignment = to_cluster_load_assignment("provider_x", local_region_first(endpoints, "eu-west"))
    assert [(g.priority, g.locality.region) for g in assignment.endpoints] == [(0, "eu-west"), (1, "us-east")]
    assert local_region_first(endpoints, "") == endpoints == local_region_first(endpoints, "ap-south")
