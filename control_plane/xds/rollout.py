"""Make-before-break across the two consumers of a policy: Envoy and ext_proc.

ext_proc names a cluster for every request, so it must never know a cluster that Envoy does not
have, and Envoy must not lose a cluster that ext_proc may still name. A policy change therefore
rolls out in steps, each gated on the consumers' ACKs:

1. Envoy gets the clusters of the new policy *plus* every cluster the policy ext_proc holds still
   names (additions first, nothing removed).
2. Once every connected Envoy has ACKed those clusters and their endpoints, and a short warm-up
   grace has passed, ext_proc is offered the new policy.
3. Once every connected ext_proc has ACKed it, clusters only the old policy named are kept for one
   more grace period (requests decided just before the switch are still in flight to Envoy's
   router), then dropped from Envoy.

Provider keys Envoy injects (control_plane.resources.provider_keys) follow the same order: a
provider's cluster injects its key while the desired, the offered or a retained policy leaves the
key to Envoy, and its secret is in the same snapshot. ext_proc hears that a key is available (the
policy's Provider.key_unavailable cleared, a new generation offered) only after every Envoy ACKed
the secret holding it. A rotated key is a new secret version for Envoy alone.

Everything here is synchronous state transition; timers come from the event loop passed in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from ccr.v1.contract import ENVOY_GROUP, EXTPROC_GROUP, POLICY_RESOURCE_NAME
from control_plane.policy import GatewayPolicy, ProviderSpec
from control_plane.policy.batches import BatchesSpec
from control_plane.policy.mcp import McpSpec
from control_plane.resources import gateway as resources
from control_plane.resources.tls import TlsMaterial
from control_plane.xds.cache import Ack, SnapshotCache
from control_plane.xds.envoy_snapshot import envoy_snapshot
from control_plane.xds.snapshot import CLUSTER, ENDPOINT, POLICY, SECRET, Snapshot, consistency_errors

log = logging.getLogger("ccr.control_plane.xds.rollout")
_UNTIL_EXTPROC_ACKS = float("inf")


@dataclass(frozen=True, slots=True)
class Offer:
    policy: GatewayPolicy
    version: str


class Rollout:
    def __init__(
        self,
        cache: SnapshotCache,
        grace_seconds: float = 1.0,
        usage_log_clusters: tuple[str, ...] = (resources.EXTPROC_CLUSTER,),
        region: str = "",
    ) -> None:
        self.cache = cache
        # The region this control plane serves: its hosts are the first priority of every pool.
        self.region = region
        self.grace = grace_seconds
        self.usage_log_clusters = usage_log_clusters
        self.generation = 0
        self.desired: Offer | None = None
        self.offered: Offer | None = None  # the policy ext_proc is being served
        self._retained: dict[str, tuple[ProviderSpec, float]] = {}  # cluster -> (spec, drop after)
        # Providers whose key Envoy injected for the policy ext_proc held before (its requests may
        # still be in flight without a key) -> keep injecting until this time.
        self._keyed_retained: dict[str, float] = {}
        # The batch API of the policy ext_proc held before one without `batches:` (its hop may still
        # forward there) -> (where, drop after).
        self._batches_retained: tuple[BatchesSpec, float] | None = None
        # The same for the MCP service and the url servers of the policy ext_proc held before one
        # without `mcp:` (its decision may still forward to the service, the service may still call).
        self._mcp_retained: tuple[McpSpec, float] | None = None
        self._warm_since: float | None = None  # when Envoy first ACKed everything `desired` needs
        self._timer: asyncio.TimerHandle | None = None
        self.catalog_endpoints: dict[str, ClusterLoadAssignment] = {}  # cluster -> from Consul
        # The bytes of the files the desired policy's listener.tls names (its SDS secrets).
        self.tls_material: TlsMaterial | None = None
        # Provider keys the control plane read (reference -> key) and why others are missing
        # (reference -> reason): control_plane.provider_keys.
        self.provider_keys: Mapping[str, str] = {}
        self.key_problems: Mapping[str, str] = {}
        self._offered_keys: frozenset[str] = frozenset()  # providers the offered policy says have a key
        cache.on_ack(self._on_ack)

    # --- inputs -----------------------------------------------------------------------------

    def update(self, policy: GatewayPolicy) -> str:
        """A new validated policy from a source. Returns its version."""
        self.generation += 1
        version = f"{self.generation}"
        self.desired = Offer(policy, version)
        self._warm_since = None
        self.reconcile()
        return version

    def set_tls_material(self, material: TlsMaterial | None) -> None:
        """The listener's certificate files changed on disk (a rotation): only the secrets'
        version changes, so Envoy swaps the certificate for new connections and keeps the
        listener (and its open connections) as they are."""
        if material == self.tls_material:
            return
        self.tls_material = material
        self.reconcile()

    def set_provider_keys(self, keys: Mapping[str, str], problems: Mapping[str, str]) -> None:
        """The keys the control plane read changed (a first read, a rotation, a failure). A rotation
        only changes Envoy's secrets; a key that became available is announced to ext_proc by a new
        generation, offered once Envoy ACKed the secret (before that, ext_proc answers 503)."""
        if keys == self.provider_keys and problems == self.key_problems:
            return
        self.provider_keys, self.key_problems = dict(keys), dict(problems)
        desired = self.desired
        if desired is not None and self.offered == desired and self._keyed(desired.policy) != self._offered_keys:
            self.generation += 1
            self.desired = Offer(desired.policy, f"{self.generation}")
            self._warm_since = None
        self.reconcile()

    def _keyed(self, policy: GatewayPolicy) -> frozenset[str]:
        """The providers of ``policy`` whose key Envoy injects and the control plane has."""
        named = {p.name: p.injected_key_ref for p in policy.providers}
        return frozenset(name for name in policy.envoy_injected_keys if named[name] in self.provider_keys)

    def _key_problems(self, policy: GatewayPolicy) -> dict[str, str]:
        """Why a provider whose key Envoy injects has none yet (by provider name)."""
        missing = {p.name: p.injected_key_ref for p in policy.providers if p.name in policy.envoy_injected_keys}
        return {
            name: self.key_problems.get(ref, "not read from Vault by the control plane yet")
            for name, ref in missing.items()
            if ref not in self.provider_keys
        }

    def _on_ack(self, ack: Ack | None) -> None:
        self.reconcile()

    # --- the state machine ------------------------------------------------------------------

    def reconcile(self) -> None:
        if self.desired is None:
            return
        now = time.monotonic()
        envoy = self._envoy_snapshot(now)
        if not self._serve_envoy(envoy):
            return
        if self.offered != self.desired and self._envoy_ready(envoy, now):
            self._offer(self.desired, envoy)
        if self.offered is not None and self._extproc_caught_up():
            self._retire_old_clusters(now)
            self._serve_envoy(self._envoy_snapshot(now))
        self._schedule_next(now)

    def _envoy_snapshot(self, now: float) -> Snapshot:
        """Envoy's half: the desired policy's providers and chains, plus those of the offered
        policy (ext_proc may still name them) and the retained ones (requests still in flight)."""
        assert self.desired is not None
        providers = {p.cluster: p for p in self.desired.policy.providers}
        injected = set(self.desired.policy.envoy_injected_keys)
        if self.offered is not None:
            for provider in self.offered.policy.providers:
                providers.setdefault(provider.cluster, provider)
            injected |= self.offered.policy.envoy_injected_keys
        for cluster, (spec, drop_after) in list(self._retained.items()):
            if drop_after <= now:
                del self._retained[cluster]
            else:
                providers.setdefault(cluster, spec)
        for name, drop_after in list(self._keyed_retained.items()):
            if drop_after <= now:
                del self._keyed_retained[name]
            elif any(p.name == name for p in providers.values()):
                injected.add(name)  # requests ext_proc sent there without a key may be in flight
        policy = self.desired.policy
        chains = {c.cluster: (c, policy) for c in policy.routing.fallbacks}
        if self.offered is not None:
            for chain in self.offered.policy.routing.fallbacks:
                chains.setdefault(chain.cluster, (chain, self.offered.policy))
        return envoy_snapshot(
            self.desired.version,
            policy,
            providers.values(),
            chains,
            self._endpoints_of,
            self.usage_log_clusters,
            self.tls_material,
            frozenset(injected),
            self.provider_keys,
            self._batches(now),
            self._mcp(now),
        )

    def _batches(self, now: float) -> BatchesSpec | None:
        """Where the batch API runs: the desired policy's address; else, while ext_proc may still
        forward there (it holds, or held until a grace ago, a policy with ``batches:``), that one's.
        The cluster goes the way a removed provider's does."""
        assert self.desired is not None
        if self.desired.policy.batches is not None:
            return self.desired.policy.batches
        if self.offered is not None and self.offered.policy.batches is not None:
            return self.offered.policy.batches
        if self._batches_retained is not None:
            spec, drop_after = self._batches_retained
            if drop_after > now:
                return spec
            self._batches_retained = None
        return None

    def _mcp(self, now: float) -> McpSpec | None:
        """The MCP service's address and the url servers Envoy must reach: the desired policy's
        section, with the servers of the offered one too (the MCP service may still call them, as
        ext_proc may still name a removed provider); without either, a retained one, as ``_batches``."""
        assert self.desired is not None
        desired = self.desired.policy.mcp
        offered = self.offered.policy.mcp if self.offered is not None else None
        base = desired or offered
        if base is None:
            if self._mcp_retained is not None:
                spec, drop_after = self._mcp_retained
                if drop_after > now:
                    return spec
                self._mcp_retained = None
            return None
        servers = {server.name: server for server in base.servers}
        for other in (desired, offered):
            for server in other.servers if other is not None else ():
                servers.setdefault(server.name, server)
        return replace(base, servers=tuple(servers.values()))

    def _serve_envoy(self, snapshot: Snapshot) -> bool:
        """Serve ``snapshot`` to Envoy unless it is inconsistent (a bug here, never the user's
        policy): then Envoy keeps what it has, and the log says why."""
        errors = consistency_errors(snapshot)
        if errors:
            log.error("refusing to serve Envoy snapshot %s: %s", snapshot.version, "; ".join(errors))
            return False
        self.cache.set(ENVOY_GROUP, snapshot)
        return True

    def set_catalog_endpoints(self, cluster: str, assignment: ClusterLoadAssignment) -> None:
        """Endpoints of a Consul catalog provider changed (health, weights, instances)."""
        if self.catalog_endpoints.get(cluster) == assignment:
            return
        self.catalog_endpoints[cluster] = assignment
        self.reconcile()

    def _endpoints_of(self, provider: ProviderSpec) -> ClusterLoadAssignment:
        if provider.consul_service:
            # Until the catalog answers, an empty assignment: Envoy has the cluster, no endpoint yet.
            return self.catalog_endpoints.get(provider.cluster) or ClusterLoadAssignment(cluster_name=provider.cluster)
        return resources.provider_endpoints(provider, self.region)

    def _envoy_ready(self, envoy: Snapshot, now: float) -> bool:
        """Every connected Envoy ACKed the clusters and endpoints that `desired` needs, and the
        warm-up grace has passed since. With no Envoy connected, nothing is ready."""
        nodes = self.cache.nodes(ENVOY_GROUP)
        if not nodes:
            self._warm_since = None
            return False
        for acked in nodes.values():
            if acked.get(CLUSTER) != envoy.get(CLUSTER).version:
                self._warm_since = None
                return False
            if envoy.get(ENDPOINT).by_name and acked.get(ENDPOINT) != envoy.get(ENDPOINT).version:
                self._warm_since = None
                return False
            # Provider keys: ext_proc must not be told a key is there before Envoy has it.
            if self._offers_keys(envoy) and acked.get(SECRET) != envoy.get(SECRET).version:
                self._warm_since = None
                return False
        if self._warm_since is None:
            self._warm_since = now
        return now - self._warm_since >= self.grace

    @staticmethod
    def _offers_keys(envoy: Snapshot) -> bool:
        return any(name.startswith("provider_") for name in envoy.get(SECRET).by_name)

    def _offer(self, offer: Offer, envoy: Snapshot) -> None:
        proto = offer.policy.to_proto(offer.version, self._key_problems(offer.policy))
        errors = consistency_errors(envoy, proto)
        if errors:  # a bug in this module, never the user's policy: refuse loudly, keep the old one
            log.error("refusing to offer policy %s to ext_proc: %s", offer.version, "; ".join(errors))
            return
        previous = self.offered
        self.offered = offer
        self._offered_keys = self._keyed(offer.policy)
        if previous is not None:
            kept = {p.cluster for p in offer.policy.providers}
            for provider in previous.policy.providers:
                if provider.cluster not in kept:
                    # Held until ext_proc ACKs the new policy; then the grace clock starts.
                    self._retained[provider.cluster] = (provider, _UNTIL_EXTPROC_ACKS)
            if previous.policy.batches is not None and offer.policy.batches is None:
                self._batches_retained = (previous.policy.batches, _UNTIL_EXTPROC_ACKS)
            if previous.policy.mcp is not None and offer.policy.mcp is None:
                self._mcp_retained = (previous.policy.mcp, _UNTIL_EXTPROC_ACKS)
            for name in previous.policy.envoy_injected_keys - offer.policy.envoy_injected_keys:
                self._keyed_retained[name] = _UNTIL_EXTPROC_ACKS  # the same, for Envoy's injector
        self.cache.set(EXTPROC_GROUP, Snapshot.build(offer.version, policy=[(POLICY_RESOURCE_NAME, proto)]))
        log.info("policy %s offered to ext_proc", offer.version)

    def _extproc_caught_up(self) -> bool:
        assert self.offered is not None
        snapshot = self.cache.get(EXTPROC_GROUP)
        if snapshot is None:
            return False
        version = snapshot.get(POLICY).version
        return all(acked.get(POLICY) == version for acked in self.cache.nodes(EXTPROC_GROUP).values())

    def _retire_old_clusters(self, now: float) -> None:
        for cluster, (spec, drop_after) in list(self._retained.items()):
            if drop_after == _UNTIL_EXTPROC_ACKS:
                self._retained[cluster] = (spec, now + self.grace)
        for name, drop_after in list(self._keyed_retained.items()):
            if drop_after == _UNTIL_EXTPROC_ACKS:
                self._keyed_retained[name] = now + self.grace
        if self._batches_retained is not None and self._batches_retained[1] == _UNTIL_EXTPROC_ACKS:
            self._batches_retained = (self._batches_retained[0], now + self.grace)
        if self._mcp_retained is not None and self._mcp_retained[1] == _UNTIL_EXTPROC_ACKS:
            self._mcp_retained = (self._mcp_retained[0], now + self.grace)

    def _schedule_next(self, now: float) -> None:
        deadlines = [d for _, d in self._retained.values() if d != _UNTIL_EXTPROC_ACKS]
        deadlines += [d for d in self._keyed_retained.values() if d != _UNTIL_EXTPROC_ACKS]
        if self._batches_retained is not None and self._batches_retained[1] != _UNTIL_EXTPROC_ACKS:
            deadlines.append(self._batches_retained[1])
        if self._mcp_retained is not None and self._mcp_retained[1] != _UNTIL_EXTPROC_ACKS:
            deadlines.append(self._mcp_retained[1])
        if self._warm_since is not None and self.offered != self.desired:
            deadlines.append(self._warm_since + self.grace)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadlines:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # driven synchronously (unit tests call reconcile() themselves)
                return
            self._timer = loop.call_later(max(0.0, min(deadlines) - now) + 0.01, self.reconcile)
