"""control_plane.xds.ads (SotW ADS over grpc.aio) and extproc.policy_client, in process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.base_pb2 import Node
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from prometheus_client import REGISTRY

from ccr.v1 import policy_pb2
from ccr.v1.contract import ENVOY_GROUP, EXTPROC_GROUP
from control_plane.policy import GatewayPolicy
from control_plane.resources import gateway as resources
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, POLICY, ROUTE, Snapshot
from extproc.policy_client import PolicySubscriber
from extproc.routing_table import RoutingTable
from tests.unit.cp_helpers import AdsClient, ads_server, eventually, names_in, policy, provider

A = provider("a", port=9001, models=["model-a"])
B = provider("b", port=9002, models=["model-b"])
DNS = provider("dns", host="api.example.com", scheme="https", port=443, models=["model-dns"])
ENVOY = Node(id="envoy-1", cluster=ENVOY_GROUP)
EXTPROC = Node(id="extproc-1", cluster=EXTPROC_GROUP)


def envoy_snapshot(*specs, version="1", routes=None, port=8080):
    gateway = GatewayPolicy(listener_port=port, providers=specs)
    return Snapshot.build(
        version,
        clusters=[(p.cluster, resources.provider_cluster(p)) for p in specs],
        endpoints=[(p.cluster, resources.provider_endpoints(p)) for p in specs if p.host_is_ip],
        listeners=[(resources.LISTENER_NAME, resources.listener(gateway))],
        routes=[(resources.ROUTE_CONFIG_NAME, routes or resources.route_configuration())],
    )


def extproc_snapshot(proto: policy_pb2.Policy, version: str = "1") -> Snapshot:
    return Snapshot.build(version, policy=[("policy", proto)])


@pytest.fixture
async def cache() -> SnapshotCache:
    return SnapshotCache()


@pytest.fixture
async def target(cache: SnapshotCache) -> AsyncIterator[str]:
    async with ads_server(cache) as address:
        yield address


def client(target: str, node: Node = ENVOY) -> AdsClient:
    return AdsClient(target, node)


def nacks(group: str, short_type: str) -> float:
    return REGISTRY.get_sample_value("ccr_xds_nacks_total", {"group": group, "type": short_type}) or 0.0


# --- first request, ACK, connection ----------------------------------------------------------------


async def test_the_first_request_gets_the_current_resources(cache, target):
    snapshot = envoy_snapshot(A, DNS)
    cache.set(ENVOY_GROUP, snapshot)
    async with client(target) as envoy:
        envoy.send(CLUSTER)
        response = await envoy.recv()
    assert response.type_url == CLUSTER
    assert response.version_info == snapshot.get(CLUSTER).version
    assert response.nonce
    assert sorted(names_in(response, Cluster)) == ["provider_a", "provider_dns"]


async def test_a_node_is_connected_while_its_stream_is_open_and_forgotten_after(cache, target):
    cache.set(ENVOY_GROUP, envoy_snapshot(A))
    async with client(target) as envoy:
        envoy.send(CLUSTER)
        await envoy.recv()
        assert "envoy-1" in cache.nodes(ENVOY_GROUP)
    await eventually(lambda: "envoy-1" not in cache.nodes(ENVOY_GROUP), what="the node to be forgotten")


async def test_an_ack_is_recorded_in_the_cache_and_not_answered(cache, target):
    cache.set(ENVOY_GROUP, envoy_snapshot(A))
    async with client(target) as envoy:
        envoy.send(CLUSTER)
        response = await envoy.recv()
        envoy.ack(response)
        await eventually(lambda: cache.nodes(ENVOY_GROUP).get("envoy-1", {}).get(CLUSTER) == response.version_info)
        await envoy.expect_silence()


async def test_a_node_without_a_cluster_is_served_as_an_envoy(cache, target):
    cache.set(ENVOY_GROUP, envoy_snapshot(A))
    async with client(target, Node(id="bare")) as envoy:
        envoy.send(CLUSTER)
        assert names_in(await envoy.recv(), Cluster) == ["provider_a"]
        assert "bare" in cache.nodes(ENVOY_GROUP)


async def test_a_node_waits_until_its_group_has_a_snapshot(cache, target):
    async with client(target) as envoy:
        envoy.send(CLUSTER)
        await envoy.expect_silence(0.1)
        cache.set(ENVOY_GROUP, envoy_snapshot(A))
        assert names_in(await envoy.recv(), Cluster) == ["provider_a"]


async def test_a_new_snapshot_is_pushed_to_a_subscribed_node(cache, target):
    cache.set(ENVOY_GROUP, envoy_snapshot(A))
    async with client(target) as envoy:
        envoy.send(CLUSTER)
        envoy.ack(await envoy.recv())
        cache.set(ENVOY_GROUP, envoy_snapshot(A, B, version="2"))
        pushed = await envoy.recv()
    assert pushed.type_url == CLUSTER
    assert sorted(names_in(pushed, Cluster)) == ["provider_a", "provider_b"]


async def test_each_response_has_a_fresh_nonce(cache, target):
    cache.set(ENVOY_GROUP, envoy_snapshot(A))
    async with client(target) as envoy:
        envoy.send(CLUSTER)
        first = await envoy.recv()
        envoy.ack(first)
        cache.set(ENVOY_GROUP, envoy_snapshot(B, version="2"))
        second = await envoy.recv()
    assert first.nonce != second.nonce


# --- NACK and stale nonces -----------------------------------------------------------------------


async def test_a_nack_is_not_answered_with_the_same_version_but_the_next_snapshot_is_sent(cache, target):
    cache.set(ENVOY_GROUP, envoy_snapshot(A))
    before = nacks(ENVOY_GROUP, "Cluster")
    async with client(target) as envoy:
        envoy.send(CLUSTER)
        rejected = await envoy.recv()
        envoy.send(CLUSTER, version="", nonce=rejected.nonce, error="cluster provider_a: bad TLS context")
        await envoy.expect_silence()
        assert nacks(ENVOY_GROUP, "Cluster") == before + 1
        assert CLUSTER not in cache.nodes(ENVOY_GROUP)["envoy-1"], "a NACK is not an ACK"
        standing = cache.nacks[ENVOY_GROUP]["envoy-1"][CLUSTER]  # for `status` and the Admin API
        assert standing == f"{rejected.version_info}: cluster provider_a: bad TLS context"
        cache.set(ENVOY_GROUP, envoy_snapshot(A, B, version="2"))
        fixed = await envoy.recv()
    assert fixed.version_info != rejected.version_info
    assert sorted(names_in(fixed, Cluster)) == ["provider_a", "provider_b"]


async def test_a_nack_is_logged_with_its_reason(cache, target, caplog):
    cache.set(ENVOY_GROUP, envoy_snapshot(A))
    with caplog.at_level(logging.ERROR, logger="ccr.control_plane.xds.ads"):
        async with client(target) as envoy:
            envoy.send(CLUSTER)
            response = await envoy.recv()
            envoy.send(CLUSTER, nonce=response.nonce, error="no such cluster type")
            await eventually(lambda: "no such cluster type" in caplog.text, what="the NACK to be logged")
    assert f"envoy-1 rejected Cluster version {response.version_info}" in caplog.text


async def test_an_unrelated_change_does_not_resend_a_nacked_version(cache, target):
    cache.set(ENVOY_GROUP, envoy_snapshot(A))
    async with client(target) as envoy:
        envoy.send(CLUSTER)
        envoy.send(LISTENER)
        responses = {r.type_url: r for r in [await envoy.recv(), await envoy.recv()]}
        envoy.send(CLUSTER, nonce=responses[CLUSTER].nonce, error="rejected")
        envoy.ack(responses[LISTENER])
        cache.set(ENVOY_GROUP, envoy_snapshot(A, version="2", port=9999))  # only the listener changed
        changed = await envoy.recv()
        assert changed.type_url == LISTENER
        await envoy.expect_silence()


async def test_a_request_with_a_stale_nonce_is_ignored(cache, target):
    cache.set(ENVOY_GROUP, envoy_snapshot(A, B))
    async with client(target) as envoy:
        envoy.send(ENDPOINT, names=["provider_a"])
        first = await envoy.recv()
        cache.set(ENVOY_GROUP, envoy_snapshot(A, provider("b", port=9999), version="2"))
        second = await envoy.recv()  # endpoints changed: pushed with a new nonce
        assert second.nonce != first.nonce
        # An answer to the first response arrives late: it neither ACKs nor changes the names.
        envoy.send(ENDPOINT, names=["provider_a", "provider_b"], version=first.version_info, nonce=first.nonce)
        await envoy.expect_silence()
        assert ENDPOINT not in cache.nodes(ENVOY_GROUP)["envoy-1"]
        # The same request with the current nonce is taken.
        envoy.send(ENDPOINT, names=["provider_a", "provider_b"], version=second.version_info, nonce=second.nonce)
        both = await envoy.recv()
    assert sorted(names_in(both, ClusterLoadAssignment)) == ["provider_a", "provider_b"]


async def test_a_nonce_for_a_type_never_sent_is_stale(cache, target):
    cache.set(ENVOY_GROUP, envoy_snapshot(A))
    async with client(target) as envoy:
        envoy.send(CLUSTER, version="old", nonce="12345")  # e.g. from a previous control plane
        await envoy.expect_silence()
        envoy.send(CLUSTER)
        assert names_in(await envoy.recv(), Cluster) == ["provider_a"]


# --- ordering and EDS after CDS ------------------------------------------------------------------


async def test_eds_is_resent_after_a_cds_change_even_when_endpoints_did_not_change(cache, target):
    before = envoy_snapshot(A, B)
    after = envoy_snapshot(A, provider("b", port=9002, scheme="https"), version="2")  # TLS: new cluster
    assert after.get(ENDPOINT).version == before.get(ENDPOINT).version
    cache.set(ENVOY_GROUP, before)
    async with client(target) as envoy:
        envoy.send(CLUSTER)
        cds = await envoy.recv()
        envoy.send(ENDPOINT, names=["provider_a", "provider_b"])
        eds = await envoy.recv()
        envoy.ack(cds)
        envoy.ack(eds, names=["provider_a", "provider_b"])
        await envoy.expect_silence(0.1)
        cache.set(ENVOY_GROUP, after)
        new_cds, new_eds = await envoy.recv(), await envoy.recv()
    assert (new_cds.type_url, new_eds.type_url) == (CLUSTER, ENDPOINT)
    assert new_cds.version_info == after.get(CLUSTER).version
    assert new_eds.version_info == eds.version_info
    assert new_eds.nonce != eds.nonce
    assert sorted(names_in(new_eds, ClusterLoadAssignment)) == ["provider_a", "provider_b"]


async def test_types_that_did_not_change_are_not_resent(cache, target):
    cache.set(ENVOY_GROUP, envoy_snapshot(A))
    async with client(target) as envoy:
        for type_url in (CLUSTER, LISTENER, ROUTE):
            envoy.send(type_url, names=["ccr_routes"] if type_url == ROUTE else ())
            envoy.ack(await envoy.recv(), names=["ccr_routes"] if type_url == ROUTE else ())
        cache.set(ENVOY_GROUP, envoy_snapshot(A, B, version="2"))  # clusters only (no EDS subscription)
        assert (await envoy.recv()).type_url == CLUSTER
        await envoy.expect_silence()


async def test_several_changed_types_go_out_in_make_before_break_order(cache, target):
    cache.set(ENVOY_GROUP, envoy_snapshot(A))
    subscriptions = {ROUTE: ["ccr_routes"], LISTENER: [], ENDPOINT: ["provider_a", "provider_b"], CLUSTER: []}
    async with client(target) as envoy:
        for type_url, names in subscriptions.items():  # subscribed in reverse order
            envoy.send(type_url, names=names)
            envoy.ack(await envoy.recv(), names=names)
        resent = await envoy.recv()  # every CDS response is followed by EDS
        assert resent.type_url == ENDPOINT
        envoy.ack(resent, names=subscriptions[ENDPOINT])
        await envoy.expect_silence(0.1)
        routes = resources.route_configuration()
        routes.virtual_hosts[0].routes[1].direct_response.status = 403
        cache.set(ENVOY_GROUP, envoy_snapshot(A, B, version="2", port=9999, routes=routes))  # all four change
        order = [(await envoy.recv()).type_url for _ in range(4)]
    assert order == [CLUSTER, ENDPOINT, LISTENER, ROUTE]


# --- resource names ------------------------------------------------------------------------------


async def test_endpoints_are_filtered_to_the_requested_names(cache, target):
    cache.set(ENVOY_GROUP, envoy_snapshot(A, B))
    async with client(target) as envoy:
        envoy.send(ENDPOINT, names=["provider_b"])
        assert names_in(await envoy.recv(), ClusterLoadAssignment) == ["provider_b"]


async def test_route_tables_are_filtered_to_the_requested_names(cache, target):
    cache.set(ENVOY_GROUP, envoy_snapshot(A))
    async with client(target) as envoy:
        envoy.send(ROUTE, names=["some_other_table"])
        assert names_in(await envoy.recv(), RouteConfiguration) == []
        envoy.send(ROUTE, names=["ccr_routes"])
        assert names_in(await envoy.recv(), RouteConfiguration) == ["ccr_routes"]


async def test_changing_the_requested_names_gets_a_new_response_of_the_same_version(cache, target):
    cache.set(ENVOY_GROUP, envoy_snapshot(A, B))
    async with client(target) as envoy:
        envoy.send(ENDPOINT, names=["provider_a"])
        first = await envoy.recv()
        envoy.ack(first, names=["provider_a", "provider_b"])
        second = await envoy.recv()
    assert second.version_info == first.version_info
    assert sorted(names_in(second, ClusterLoadAssignment)) == ["provider_a", "provider_b"]


async def test_wildcard_types_are_sent_whole(cache, target):
    cache.set(ENVOY_GROUP, envoy_snapshot(A, B))
    async with client(target) as envoy:
        envoy.send(CLUSTER)
        envoy.send(LISTENER)
        responses = {r.type_url: r for r in [await envoy.recv(), await envoy.recv()]}
    assert sorted(names_in(responses[CLUSTER], Cluster)) == ["provider_a", "provider_b"]
    assert names_in(responses[LISTENER], Listener) == ["ccr_listener"]


# --- the Policy resource -------------------------------------------------------------------------


async def test_the_policy_is_served_only_to_ext_proc_nodes(cache, target):
    proto = policy(A).to_proto("1")
    cache.set(ENVOY_GROUP, envoy_snapshot(A))
    cache.set(EXTPROC_GROUP, extproc_snapshot(proto))
    async with client(target, EXTPROC) as extproc, client(target, ENVOY) as envoy:
        extproc.send(POLICY, names=["policy"])
        served = await extproc.recv()
        envoy.send(POLICY, names=["policy"])
        with contextlib.suppress(TimeoutError):  # an empty answer or none at all: either way no Policy
            to_envoy = await envoy.recv(timeout=0.3)
            assert list(to_envoy.resources) == []
        extproc.send(CLUSTER)
        with contextlib.suppress(TimeoutError):
            assert list((await extproc.recv(timeout=0.3)).resources) == []
    unpacked = policy_pb2.Policy()
    (packed,) = served.resources
    assert packed.Unpack(unpacked)
    assert unpacked == proto
    assert served.type_url == POLICY


# --- the same node on two streams ------------------------------------------------------------------


async def test_an_old_stream_closing_does_not_forget_a_node_that_reconnected(cache, target):
    cache.set(EXTPROC_GROUP, extproc_snapshot(policy(A).to_proto("1")))
    async with client(target, EXTPROC) as old:
        old.send(POLICY, names=["policy"])
        old.ack(await old.recv(), names=["policy"])
        # The old stream goes quiet (a dead connection not yet noticed); the node reconnects.
        second = extproc_snapshot(policy(A, B).to_proto("2"), version="2")
        cache.set(EXTPROC_GROUP, second)
        async with client(target, EXTPROC) as new:
            new.send(POLICY, names=["policy"])
            response = await new.recv()
            assert response.version_info == second.get(POLICY).version
            new.ack(response, names=["policy"])
            await eventually(
                lambda: cache.nodes(EXTPROC_GROUP).get("extproc-1", {}).get(POLICY) == response.version_info
            )
            await old.__aexit__(None, None, None)  # ...and the server finally notices the old one closed
            await asyncio.sleep(0.2)
            assert cache.nodes(EXTPROC_GROUP).get("extproc-1", {}).get(POLICY) == response.version_info


# --- extproc.policy_client against the real server -------------------------------------------------


@contextlib.asynccontextmanager
async def subscriber(target: str) -> AsyncIterator[tuple[PolicySubscriber, list[RoutingTable]]]:
    tables: list[RoutingTable] = []
    sub = PolicySubscriber(target, tables.append, node_id="extproc-test")
    task = asyncio.create_task(sub.run())
    try:
        yield sub, tables
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def acked_policy(cache: SnapshotCache) -> str | None:
    return cache.nodes(EXTPROC_GROUP).get("extproc-test", {}).get(POLICY)


async def test_the_policy_subscriber_installs_the_table_and_acks(cache, target):
    snapshot = extproc_snapshot(policy(A, DNS).to_proto("7"))
    cache.set(EXTPROC_GROUP, snapshot)
    async with subscriber(target) as (sub, tables):
        await eventually(lambda: acked_policy(cache) == snapshot.get(POLICY).version, what="the ACK")
        assert len(tables) == 1
        assert tables[0].version == "7"
        assert tables[0].model_names() == ["model-a", "model-dns"]
        assert tables[0].route("model-a").provider.cluster == "provider_a"
        assert sub.acked_version == snapshot.get(POLICY).version
        assert sub.node.cluster == EXTPROC_GROUP


async def test_the_policy_subscriber_follows_a_new_policy(cache, target):
    cache.set(EXTPROC_GROUP, extproc_snapshot(policy(A).to_proto("1")))
    async with subscriber(target) as (_, tables):
        await eventually(lambda: len(tables) == 1)
        second = extproc_snapshot(policy(A, B).to_proto("2"), version="2")
        cache.set(EXTPROC_GROUP, second)
        await eventually(lambda: acked_policy(cache) == second.get(POLICY).version, what="the second ACK")
    assert [t.version for t in tables] == ["1", "2"]
    assert tables[1].model_names() == ["model-a", "model-b"]


async def test_a_policy_the_subscriber_cannot_compile_is_nacked_and_the_previous_table_stays(cache, target, caplog):
    good = extproc_snapshot(policy(A).to_proto("1"))
    cache.set(EXTPROC_GROUP, good)
    bad_proto = policy(A).to_proto("2")
    bad_proto.providers[0].api = 99  # an API this ext_proc does not know
    nacked_before = nacks(EXTPROC_GROUP, "Policy")
    with caplog.at_level(logging.ERROR, logger="ccr.control_plane.xds.ads"):
        async with subscriber(target) as (sub, tables):
            await eventually(lambda: acked_policy(cache) == good.get(POLICY).version)
            cache.set(EXTPROC_GROUP, extproc_snapshot(bad_proto, version="2"))
            await eventually(lambda: nacks(EXTPROC_GROUP, "Policy") == nacked_before + 1, what="the NACK")
            assert "provider 'a': unsupported api 99" in caplog.text
            assert [t.version for t in tables] == ["1"]
            assert acked_policy(cache) == good.get(POLICY).version
            assert sub.acked_version == good.get(POLICY).version
            # The next good policy is installed as usual.
            fixed = extproc_snapshot(policy(A, B).to_proto("3"), version="3")
            cache.set(EXTPROC_GROUP, fixed)
            await eventually(lambda: acked_policy(cache) == fixed.get(POLICY).version, what="the ACK after the NACK")
    assert [t.version for t in tables] == ["1", "3"]


@pytest.mark.parametrize(
    ("resources", "reason"),
    [
        ([("policy", policy(A).to_proto("1")), ("second", policy(B).to_proto("1"))], "got 2"),
        ([("policy", resources.provider_cluster(A))], "not a ccr.v1.Policy"),
    ],
    ids=["two_resources", "wrong_type"],
)
async def test_a_malformed_policy_response_is_nacked(cache, target, caplog, resources, reason):
    nacked_before = nacks(EXTPROC_GROUP, "Policy")
    cache.set(EXTPROC_GROUP, Snapshot.build("1", policy=resources))
    with caplog.at_level(logging.ERROR, logger="ccr.control_plane.xds.ads"):
        async with subscriber(target) as (sub, tables):
            await eventually(lambda: nacks(EXTPROC_GROUP, "Policy") == nacked_before + 1, what="the NACK")
            assert tables == []
            assert sub.acked_version == ""
    assert reason in caplog.text


async def test_the_policy_subscriber_waits_for_a_policy_and_reconnects(cache):
    async with ads_server(cache) as address, subscriber(address) as (sub, tables):
        await asyncio.wait_for(sub.connected.wait(), 5)
        await asyncio.sleep(0.05)
        assert tables == []
        snapshot = extproc_snapshot(policy(A).to_proto("1"))
        cache.set(EXTPROC_GROUP, snapshot)
        await eventually(lambda: acked_policy(cache) == snapshot.get(POLICY).version)
    assert [t.version for t in tables] == ["1"]
