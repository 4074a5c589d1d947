"""control_plane.xds.rollout: make-before-break between Envoy and ext_proc, driven by hand.

ACKs are recorded straight into the cache (as the ADS server would) and the clock is a fake one, so
every step is synchronous. A recording cache checks the make-before-break invariant on every single
snapshot the rollout publishes, not just between steps:

- ext_proc is never offered a policy naming a cluster that is missing from the Envoy snapshot, or
  that some connected Envoy has not ACKed (with its endpoints, for EDS clusters);
- Envoy never loses a cluster that the policy offered to ext_proc, or the policy a connected
  ext_proc node last ACKed, still names.
"""

from __future__ import annotations

import asyncio
import functools
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ccr.v1.contract import ENVOY_GROUP, EXTPROC_GROUP
from control_plane.policy import GatewayPolicy, ProviderSpec
from control_plane.resources import gateway as resources
from control_plane.xds import envoy_snapshot as envoy_snapshot_module
from control_plane.xds import rollout as rollout_module
from control_plane.xds.cache import Ack, SnapshotCache
from control_plane.xds.rollout import Rollout
from control_plane.xds.snapshot import CLUSTER, ENDPOINT, POLICY, Snapshot
from tests.unit.cp_helpers import policy, provider

A = provider("a", port=9001)
B = provider("b", port=9002)
C = provider("c", port=9003)
DNS = provider("dns", host="api.example.com", scheme="https", port=443)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class CheckingCache(SnapshotCache):
    """A SnapshotCache that checks make-before-break on every snapshot published to it."""

    def __init__(self) -> None:
        super().__init__()
        self.cds_clusters: dict[str, frozenset[str]] = {}  # CDS version -> cluster names
        self.eds_names: dict[str, frozenset[str]] = {}  # EDS version -> endpoint names
        self.policy_clusters: dict[str, frozenset[str]] = {}  # Policy resource version -> clusters
        self.offered_versions: list[str] = []  # Policy.version of every distinct offer to ext_proc

    def set(self, group: str, snapshot: Snapshot) -> None:
        if group == ENVOY_GROUP:
            clusters = frozenset(snapshot.get(CLUSTER).by_name)
            self.cds_clusters[snapshot.get(CLUSTER).version] = clusters
            self.eds_names[snapshot.get(ENDPOINT).version] = frozenset(snapshot.get(ENDPOINT).by_name)
            for needed in [self.offered_clusters(), *self._acked_policies()]:
                assert needed <= clusters, f"Envoy would lose {sorted(needed - clusters)} still named by ext_proc"
        else:
            policy_resources = snapshot.get(POLICY)
            named = frozenset(p.cluster for p in policy_resources.by_name["policy"].providers)
            if self.get(EXTPROC_GROUP) != snapshot:
                self.offered_versions.append(policy_resources.by_name["policy"].version)
            self.policy_clusters[policy_resources.version] = named
            assert named <= self.envoy_clusters(), f"policy names {sorted(named - self.envoy_clusters())} Envoy lacks"
            for node, acked in self.nodes(ENVOY_GROUP).items():
                assert acked.get(CLUSTER) in self.cds_clusters, f"{node} has not ACKed any clusters"
                assert named <= self.cds_clusters[acked[CLUSTER]], f"{node} has not ACKed every cluster named"
                eds_needed = {c for c in named if c in self.get(ENVOY_GROUP).get(ENDPOINT).by_name}
                assert eds_needed <= self.eds_names.get(acked.get(ENDPOINT, ""), frozenset()), (
                    f"{node} has not ACKed the endpoints of {sorted(eds_needed)}"
                )
        super().set(group, snapshot)

    def envoy_clusters(self) -> frozenset[str]:
        snapshot = self.get(ENVOY_GROUP)
        return frozenset(snapshot.get(CLUSTER).by_name) if snapshot else frozenset()

    def offered_clusters(self) -> frozenset[str]:
        snapshot = self.get(EXTPROC_GROUP)
        if snapshot is None:
            return frozenset()
        return frozenset(p.cluster for p in snapshot.get(POLICY).by_name["policy"].providers)

    def offered_version(self) -> str | None:
        snapshot = self.get(EXTPROC_GROUP)
        return snapshot.get(POLICY).by_name["policy"].version if snapshot else None

    def _acked_policies(self) -> list[frozenset[str]]:
        return [self.policy_clusters[acked[POLICY]] for acked in self.nodes(EXTPROC_GROUP).values() if POLICY in acked]


class Harness:
    def __init__(self, clock: FakeClock, grace: float = 0.0) -> None:
        self.clock = clock
        self.cache = CheckingCache()
        self.rollout = Rollout(self.cache, grace_seconds=grace)

    # Envoy side
    def envoy_connects(self, node: str = "envoy-1") -> None:
        self.cache.connect_node(ENVOY_GROUP, node)

    def envoy_acks(self, node: str = "envoy-1", types: tuple[str, ...] = (CLUSTER, ENDPOINT)) -> None:
        snapshot = self.cache.get(ENVOY_GROUP)
        assert snapshot is not None
        for type_url in types:
            self.cache.record_ack(Ack(ENVOY_GROUP, node, type_url, snapshot.get(type_url).version))

    # ext_proc side
    def extproc_connects(self, node: str = "extproc-1") -> None:
        self.cache.connect_node(EXTPROC_GROUP, node)

    def extproc_acks(self, node: str = "extproc-1") -> None:
        snapshot = self.cache.get(EXTPROC_GROUP)
        assert snapshot is not None
        self.cache.record_ack(Ack(EXTPROC_GROUP, node, POLICY, snapshot.get(POLICY).version))

    def disconnects(self, group: str, node: str) -> None:
        self.cache.forget_node(group, node)

    def tick(self, seconds: float) -> None:
        self.clock.now += seconds
        self.rollout.reconcile()

    # views
    def envoy(self) -> set[str]:
        return set(self.cache.envoy_clusters())

    def extproc(self) -> set[str] | None:
        return set(self.cache.offered_clusters()) if self.cache.get(EXTPROC_GROUP) else None


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(rollout_module, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


@pytest.fixture
def h(fake_clock: FakeClock) -> Harness:
    return Harness(fake_clock, grace=0.0)


@pytest.fixture
def slow(fake_clock: FakeClock) -> Harness:
    """A harness with a 5 s grace period on the fake clock."""
    return Harness(fake_clock, grace=5.0)


def live(h: Harness, *providers: ProviderSpec) -> None:
    """Bring the harness to a steady state: Envoy and ext_proc both hold `providers`."""
    h.rollout.update(policy(*providers))
    h.envoy_connects()
    h.extproc_connects()
    h.envoy_acks()
    h.extproc_acks()
    assert h.envoy() == h.extproc() == {p.cluster for p in providers}


# --- first policy --------------------------------------------------------------------------------


def test_versions_count_the_updates(h):
    assert h.rollout.update(policy(A)) == "1"
    assert h.rollout.update(policy(B)) == "2"


def test_with_no_envoy_connected_ext_proc_is_offered_nothing(h):
    h.rollout.update(policy(A))
    assert h.envoy() == {"provider_a"}
    assert h.extproc() is None


def test_a_connected_envoy_that_has_not_acked_holds_the_policy_back(h):
    h.rollout.update(policy(A))
    h.envoy_connects()
    h.rollout.reconcile()
    assert h.extproc() is None


def test_envoy_acking_clusters_but_not_their_endpoints_holds_the_policy_back(h):
    h.rollout.update(policy(A))
    h.envoy_connects()
    h.envoy_acks(types=(CLUSTER,))
    assert h.extproc() is None
    h.envoy_acks(types=(ENDPOINT,))
    assert h.extproc() == {"provider_a"}


def test_envoy_acking_clusters_and_endpoints_offers_the_policy_to_ext_proc(h):
    h.rollout.update(policy(A, DNS))
    h.envoy_connects()
    h.envoy_acks()
    assert h.extproc() == {"provider_a", "provider_dns"}
    assert h.cache.offered_version() == "1"
    assert h.rollout.offered == h.rollout.desired


def test_dns_only_policies_need_no_endpoint_ack(h):
    h.rollout.update(policy(DNS))
    h.envoy_connects()
    h.envoy_acks(types=(CLUSTER,))
    assert h.extproc() == {"provider_dns"}


def test_an_ack_of_an_older_cluster_version_does_not_count(h):
    h.rollout.update(policy(A))
    h.envoy_connects()
    h.envoy_acks(types=(ENDPOINT,))
    h.cache.record_ack(Ack(ENVOY_GROUP, "envoy-1", CLUSTER, "some-old-version"))
    assert h.extproc() is None


def test_every_connected_envoy_must_ack_before_ext_proc_is_offered(h):
    h.rollout.update(policy(A))
    h.envoy_connects("envoy-1")
    h.envoy_connects("envoy-2")
    h.envoy_acks("envoy-1")
    assert h.extproc() is None
    h.envoy_acks("envoy-2")
    assert h.extproc() == {"provider_a"}


def test_an_envoy_disconnecting_does_not_block_the_rollout(h):
    h.rollout.update(policy(A))
    h.envoy_connects("envoy-1")
    h.envoy_connects("envoy-2")
    h.envoy_acks("envoy-1")
    assert h.extproc() is None
    h.disconnects(ENVOY_GROUP, "envoy-2")
    assert h.extproc() == {"provider_a"}


def test_the_last_envoy_disconnecting_holds_the_next_policy_back(h):
    live(h, A)
    h.disconnects(ENVOY_GROUP, "envoy-1")
    h.rollout.update(policy(A, B))
    assert h.extproc() == {"provider_a"}
    assert h.envoy() == {"provider_a", "provider_b"}


# --- adding a provider ---------------------------------------------------------------------------


def test_an_added_provider_reaches_envoy_first_and_ext_proc_only_after_envoy_acks(h):
    live(h, A)
    h.rollout.update(policy(A, B))
    assert h.envoy() == {"provider_a", "provider_b"}
    assert h.extproc() == {"provider_a"}
    h.envoy_acks(types=(CLUSTER,))
    assert h.extproc() == {"provider_a"}, "the new cluster's endpoints are not ACKed yet"
    h.envoy_acks(types=(ENDPOINT,))
    assert h.extproc() == {"provider_a", "provider_b"}
    assert h.cache.offered_version() == "2"


def test_a_policy_withdrawn_before_envoy_acked_never_reaches_ext_proc(h):
    live(h, A)
    h.rollout.update(policy(A, B))
    h.rollout.update(policy(A))
    # Envoy already ACKed exactly these clusters, so policy 3 goes out at once; 2 never does.
    assert h.envoy() == {"provider_a"}
    assert h.extproc() == {"provider_a"}
    assert h.cache.offered_versions == ["1", "3"]


def test_a_changed_provider_is_offered_once_envoy_acked_the_rebuilt_cluster(h):
    live(h, A)
    h.rollout.update(policy(provider("a", port=9001, scheme="https")))
    assert h.cache.offered_version() == "1"
    h.envoy_acks()
    assert h.cache.offered_version() == "2"


def test_the_listener_follows_the_desired_policy_at_once(h):
    live(h, A)
    h.rollout.update(GatewayPolicy(listener_port=9999, providers=(A,)))
    listener = h.cache.get(ENVOY_GROUP).get("type.googleapis.com/envoy.config.listener.v3.Listener")
    assert listener.by_name["ccr_listener"].address.socket_address.port_value == 9999


# --- removing a provider -------------------------------------------------------------------------


def test_a_removed_provider_leaves_ext_proc_first_and_envoy_once_ext_proc_acks(h):
    live(h, A, B)
    h.rollout.update(policy(A))
    # The Envoy clusters did not change, so the new policy goes to ext_proc at once...
    assert h.extproc() == {"provider_a"}
    # ...while Envoy keeps provider_b for requests ext_proc routed under the old policy.
    assert h.envoy() == {"provider_a", "provider_b"}
    h.extproc_acks()
    assert h.envoy() == {"provider_a"}


def test_envoy_keeps_a_removed_cluster_until_every_ext_proc_node_acks(h):
    live(h, A, B)
    h.extproc_connects("extproc-2")
    h.extproc_acks("extproc-2")
    h.rollout.update(policy(A))
    h.extproc_acks("extproc-1")
    assert h.envoy() == {"provider_a", "provider_b"}
    h.extproc_acks("extproc-2")
    assert h.envoy() == {"provider_a"}


def test_an_ext_proc_node_that_never_acks_keeps_the_old_cluster_in_envoy(h):
    live(h, A, B)
    h.rollout.update(policy(A))
    h.tick(3600)
    assert h.envoy() == {"provider_a", "provider_b"}


def test_an_ext_proc_node_disconnecting_does_not_block_the_removal(h):
    live(h, A, B)
    h.extproc_connects("extproc-2")
    h.rollout.update(policy(A))
    h.extproc_acks("extproc-1")
    assert h.envoy() == {"provider_a", "provider_b"}
    h.disconnects(EXTPROC_GROUP, "extproc-2")
    assert h.envoy() == {"provider_a"}


def test_replacing_a_provider_adds_the_new_cluster_before_removing_the_old(h):
    live(h, A)
    h.rollout.update(policy(B))
    assert (h.envoy(), h.extproc()) == ({"provider_a", "provider_b"}, {"provider_a"})
    h.envoy_acks()
    assert (h.envoy(), h.extproc()) == ({"provider_a", "provider_b"}, {"provider_b"})
    h.extproc_acks()
    assert (h.envoy(), h.extproc()) == ({"provider_b"}, {"provider_b"})


def test_a_second_replacement_before_ext_proc_acks_keeps_every_cluster_it_may_name(h):
    live(h, A)
    h.rollout.update(policy(B))
    h.envoy_acks()
    h.rollout.update(policy(C))  # ext_proc has not ACKed B yet: it may still route to A or B
    assert h.envoy() == {"provider_a", "provider_b", "provider_c"}
    h.envoy_acks()
    assert h.extproc() == {"provider_c"}
    assert h.envoy() == {"provider_a", "provider_b", "provider_c"}
    h.extproc_acks()
    assert h.envoy() == {"provider_c"}


def test_reverting_to_a_removed_provider_keeps_its_cluster(h):
    live(h, A, B)
    h.rollout.update(policy(A))
    h.extproc_acks()
    h.rollout.update(policy(A, B))
    assert h.envoy() == {"provider_a", "provider_b"}
    h.envoy_acks()
    assert h.extproc() == {"provider_a", "provider_b"}


# --- grace periods -------------------------------------------------------------------------------


def test_ext_proc_is_offered_the_policy_only_after_the_warm_up_grace(slow):
    slow.rollout.update(policy(A))
    slow.envoy_connects()
    slow.envoy_acks()
    assert slow.extproc() is None
    slow.tick(4.9)
    assert slow.extproc() is None
    slow.tick(0.2)
    assert slow.extproc() == {"provider_a"}


def test_a_new_policy_restarts_the_warm_up_grace(slow):
    slow.rollout.update(policy(A))
    slow.envoy_connects()
    slow.envoy_acks()
    slow.tick(4)
    slow.rollout.update(policy(A, DNS))
    slow.envoy_acks()
    slow.tick(4)
    assert slow.extproc() is None
    slow.tick(1.1)
    assert slow.extproc() == {"provider_a", "provider_dns"}


def test_a_removed_cluster_stays_in_envoy_for_the_grace_after_ext_proc_acks(slow):
    slow.rollout.update(policy(A, B))
    slow.envoy_connects()
    slow.extproc_connects()
    slow.envoy_acks()
    slow.tick(5)
    slow.extproc_acks()
    slow.rollout.update(policy(A))
    slow.tick(5)
    assert slow.extproc() == {"provider_a"}
    slow.tick(60)
    assert slow.envoy() == {"provider_a", "provider_b"}, "ext_proc has not ACKed yet"
    slow.extproc_acks()
    assert slow.envoy() == {"provider_a", "provider_b"}
    slow.tick(4.9)
    assert slow.envoy() == {"provider_a", "provider_b"}
    slow.tick(0.2)
    assert slow.envoy() == {"provider_a"}


def test_without_a_running_loop_no_timer_is_scheduled(slow):
    slow.rollout.update(policy(A))
    slow.envoy_connects()
    slow.envoy_acks()
    assert slow.rollout._timer is None


async def test_with_a_running_loop_the_grace_timer_offers_the_policy_by_itself():
    cache = SnapshotCache()
    rollout = Rollout(cache, grace_seconds=0.05)
    rollout.update(policy(A))
    cache.connect_node(ENVOY_GROUP, "envoy-1")
    envoy = cache.get(ENVOY_GROUP)
    for type_url in (CLUSTER, ENDPOINT):
        cache.record_ack(Ack(ENVOY_GROUP, "envoy-1", type_url, envoy.get(type_url).version))
    assert cache.get(EXTPROC_GROUP) is None
    for _ in range(100):
        await asyncio.sleep(0.01)
        if cache.get(EXTPROC_GROUP) is not None:
            break
    assert cache.get(EXTPROC_GROUP) is not None
    assert rollout.offered == rollout.desired


# --- every interleaving --------------------------------------------------------------------------

# The builders are pure and parsing their dicts into protos dominates a step: memoize them here.
MEMO_RESOURCES = SimpleNamespace(
    LISTENER_NAME=resources.LISTENER_NAME,
    ROUTE_CONFIG_NAME=resources.ROUTE_CONFIG_NAME,
    provider_cluster=functools.cache(resources.provider_cluster),
    provider_endpoints=functools.cache(resources.provider_endpoints),
    listener=functools.cache(resources.listener),
    route_configuration=resources.route_configuration,  # takes lists: not memoizable
    provider_routes=resources.provider_routes,
    ROUTE_TIMEOUT=resources.ROUTE_TIMEOUT,
)
POOL = (A, B, DNS, provider("b", port=9002, scheme="https"))
ENVOYS = ("envoy-1", "envoy-2")
EXTPROCS = ("extproc-1", "extproc-2")


class RolloutMachine(RuleBasedStateMachine):
    """Random policy updates, ACKs, (dis)connections and clock ticks; CheckingCache asserts the
    make-before-break invariant on every snapshot published in between."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self._saved_time = rollout_module.time
        rollout_module.time = SimpleNamespace(monotonic=self.clock.monotonic)  # type: ignore[assignment]
        self._saved_resources = envoy_snapshot_module.resources
        envoy_snapshot_module.resources = MEMO_RESOURCES  # type: ignore[assignment]
        self.h = Harness(self.clock, grace=1.0)

    def teardown(self) -> None:
        rollout_module.time = self._saved_time
        envoy_snapshot_module.resources = self._saved_resources

    @initialize(choice=st.sets(st.integers(0, len(POOL) - 1), min_size=1))
    def first_policy(self, choice: set[int]) -> None:
        self.h.envoy_connects(ENVOYS[0])
        self.h.extproc_connects(EXTPROCS[0])
        self._update(choice)

    def _update(self, choice: set[int]) -> None:
        by_name = {POOL[i].name: POOL[i] for i in sorted(choice)}  # one spec per provider name
        self.h.rollout.update(policy(*by_name.values()))

    @rule(choice=st.sets(st.integers(0, len(POOL) - 1), min_size=1))
    def new_policy(self, choice: set[int]) -> None:
        self._update(choice)

    @rule(node=st.sampled_from(ENVOYS))
    def envoy_connects(self, node: str) -> None:
        self.h.envoy_connects(node)

    @rule(node=st.sampled_from(ENVOYS))
    def envoy_acks(self, node: str) -> None:
        if node in self.h.cache.nodes(ENVOY_GROUP):
            self.h.envoy_acks(node)

    @rule(node=st.sampled_from(ENVOYS), type_url=st.sampled_from([CLUSTER, ENDPOINT]))
    def envoy_acks_one_type(self, node: str, type_url: str) -> None:
        if node in self.h.cache.nodes(ENVOY_GROUP):
            self.h.envoy_acks(node, (type_url,))

    @rule(node=st.sampled_from(ENVOYS))
    def envoy_disconnects(self, node: str) -> None:
        self.h.disconnects(ENVOY_GROUP, node)

    @rule(node=st.sampled_from(EXTPROCS))
    def extproc_connects(self, node: str) -> None:
        self.h.extproc_connects(node)

    @rule(node=st.sampled_from(EXTPROCS))
    def extproc_acks(self, node: str) -> None:
        if node in self.h.cache.nodes(EXTPROC_GROUP) and self.h.cache.get(EXTPROC_GROUP) is not None:
            self.h.extproc_acks(node)

    @rule(node=st.sampled_from(EXTPROCS))
    def extproc_disconnects(self, node: str) -> None:
        self.h.disconnects(EXTPROC_GROUP, node)

    @rule(seconds=st.sampled_from([0.5, 1.5]))
    def tick(self, seconds: float) -> None:
        self.h.tick(seconds)

    @precondition(lambda self: bool(self.h.cache.nodes(ENVOY_GROUP)))
    @rule()
    def everyone_catches_up(self) -> None:
        """With an Envoy connected and everybody ACKing, the rollout converges on the desired policy."""
        for _ in range(4):
            for node in list(self.h.cache.nodes(ENVOY_GROUP)):
                self.h.envoy_acks(node)
            if self.h.cache.get(EXTPROC_GROUP) is not None:
                for node in list(self.h.cache.nodes(EXTPROC_GROUP)):
                    self.h.extproc_acks(node)
            self.h.tick(1.5)
        desired = {p.cluster for p in self.h.rollout.desired.policy.providers}
        assert self.h.cache.offered_version() == self.h.rollout.desired.version
        assert self.h.extproc() == desired
        assert self.h.envoy() == desired

    @invariant()
    def ext_proc_names_only_clusters_envoy_has(self) -> None:
        assert self.h.cache.offered_clusters() <= self.h.cache.envoy_clusters()


TestRolloutInterleavings = RolloutMachine.TestCase
TestRolloutInterleavings.settings = settings(
    max_examples=120, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
