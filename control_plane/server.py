"""The control plane process: policy source -> rollout -> snapshot cache -> ADS gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from prometheus_client import Counter, Gauge, start_http_server

from audit.hooks import PolicyAudit
from ccr.v1.contract import EXTPROC_CLUSTER
from control_plane.admin.settings import AdminSettings
from control_plane.gcp_tokens import TokenRefresher
from control_plane.policy import GatewayPolicy, PolicyError
from control_plane.policy.file_source import FilePolicySource
from control_plane.policy.source import PolicySource
from control_plane.policy.tls import TlsSpec
from control_plane.provider_keys import Change, ProviderKeys
from control_plane.resources.tls import TlsMaterial
from control_plane.xds.ads import AggregatedDiscoveryService
from control_plane.xds.cache import Ack, SnapshotCache
from control_plane.xds.rollout import Rollout
from control_plane.xds.snapshot import Resources

log = logging.getLogger("ccr.control_plane")

POLICY_VERSION = Gauge(
    "ccr_policy_generation", "Generation of the policy currently desired", multiprocess_mode="livemax"
)
POLICY_REJECTED = Counter("ccr_policy_rejected_total", "Policy updates rejected by validation")


@dataclass(frozen=True)
class ControlPlaneConfig:
    policy_path: str = ""  # a local file, or
    consul_address: str = ""  # Consul KV (then the policy lives under consul_prefix)
    consul_prefix: str = "ccr-gateway/"
    consul_token: str | None = None
    xds_address: str = "127.0.0.1:18000"  # host:port or unix:/path
    metrics_port: int = 0  # 0: no metrics endpoint
    # Loopback by default; a pod sets 0.0.0.0 (`control-plane --metrics-address`) so Prometheus can scrape it.
    metrics_address: str = "127.0.0.1"
    grace_seconds: float = 1.0
    poll_interval: float = 0.5
    # Envoy clusters that receive the usage access log (one per ext_proc worker under `up`).
    usage_log_clusters: tuple[str, ...] = (EXTPROC_CLUSTER,)
    # Where to keep the policy's state for `ccr-gateway status` ("": nowhere); see PolicyStatusFile.
    status_file: str = ""
    # mTLS on the xDS port (docs/security-tls.md, "Internal mTLS"): this server's certificate and
    # key, and the CA every client (Envoy, the ext_proc workers) must show a certificate from.
    # All three or none; TCP only (a Unix socket is guarded by its file permissions).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # The region this control plane serves (providers[].endpoints of that region come first);
    # "": no preference. One control plane Deployment per region (docs/deployment.md).
    region: str = ""
    # The Admin API and console on a listener of their own (docs/admin-api.md); None: off.
    admin: AdminSettings | None = None

    def __post_init__(self) -> None:
        given = [bool(self.tls_cert), bool(self.tls_key), bool(self.tls_client_ca)]
        if any(given) and not all(given):
            raise ValueError("--tls-cert, --tls-key and --tls-client-ca go together: give all three or none")
        if all(given) and self.xds_address.startswith("unix:"):
            raise ValueError(f"--tls-cert/--tls-key/--tls-client-ca need a TCP --xds, not {self.xds_address}")

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """Client certificates required (signed by tls_client_ca); None without TLS."""
        if not self.tls_cert:
            return None
        with open(self.tls_cert, "rb") as cert, open(self.tls_key, "rb") as key, open(self.tls_client_ca, "rb") as ca:
            pair = (key.read(), cert.read())
            return grpc.ssl_server_credentials([pair], root_certificates=ca.read(), require_client_auth=True)


class ControlPlane:
    def __init__(self, config: ControlPlaneConfig, *, admin_context: Mapping[Any, Any] | None = None) -> None:
        self.config = config
        # App entries the composition root gives the Admin API (how to read the ledger).
        self.admin_context = dict(admin_context or {})
        self.cache = SnapshotCache()
        self.rollout = Rollout(
            self.cache,
            grace_seconds=config.grace_seconds,
            usage_log_clusters=config.usage_log_clusters,
            region=config.region,
        )
        self.source: PolicySource
        if config.consul_address:
            # Consul's client (aiohttp, py-consul: ~10 MB) loads only for a gateway that uses Consul.
            from control_plane.consul.kv import ConsulPolicySource

            self.source = ConsulPolicySource(config.consul_address, config.consul_prefix, config.consul_token)
        else:
            self.source = FilePolicySource(config.policy_path, interval=config.poll_interval)
        self.last_error: str | None = None
        self.tls_files = TlsFileWatch()
        self.status_file = PolicyStatusFile(config.status_file)
        # What each xDS client ACKed, kept in the status file for the Admin API's GET /status.
        self._caught_up: dict[tuple[str, str], str] = {}  # (group, node) -> last generation fully ACKed
        self.cache.on_ack(self._xds_clients_changed)
        self.audit = PolicyAudit()  # each accepted/rejected policy, hash-chained; never blocks a change (docs/audit.md)
        # Provider keys Envoy injects, read from Vault here (docs/security-vault.md): a re-read that
        # changed one goes to the rollout (a new SDS secret version); a rotation is audited.
        self.provider_keys = ProviderKeys()
        self.provider_keys.on_change = lambda keys, problems: self._keys_changed()
        # Vertex providers' OAuth tokens, obtained and refreshed here (control_plane.gcp_tokens):
        # injected by Envoy the same way, each refresh a new version of the provider's secret.
        self.gcp_tokens = TokenRefresher()
        self.gcp_tokens.on_change = lambda tokens, problems: self._keys_changed()
        self.provider_keys.on_rotation = self._audit_key_rotation
        self._server: grpc.aio.Server | None = None
        self._catalog: dict[str, tuple[str, asyncio.Task[None]]] = {}  # cluster -> (service, watcher)

    async def load_initial(self) -> GatewayPolicy:
        """The first policy must be valid: there is no last good one to fall back to."""
        policy = await self.source.load_once()
        assert policy is not None  # a first read has nothing to compare with: it is always a change
        problem = self._catalog_problem(policy) or self._tls_problem(policy)
        if problem is not None:
            raise problem
        self._apply(policy)
        return policy

    def _catalog_problem(self, policy: GatewayPolicy) -> PolicyError | None:
        needing = [p.name for p in policy.providers if p.consul_service]
        if needing and not self.config.consul_address:
            return PolicyError.single(
                policy.source,
                f"providers {', '.join(needing)} take endpoints from Consul's catalog (consul_service), "
                "but the control plane runs without --consul",
            )
        return None

    def _watch_catalog(self, policy: GatewayPolicy) -> None:
        """One blocking health query per catalog-backed provider; watchers follow policy edits."""
        wanted = {p.cluster: p.consul_service for p in policy.providers if p.consul_service}
        if wanted or self._catalog:
            self._follow_catalog(wanted)

    def _follow_catalog(self, wanted: dict[str, str]) -> None:
        from control_plane.consul.catalog import (
            CatalogWatcher,
            Endpoint,
            is_ip,
            local_region_first,
            to_cluster_load_assignment,
        )

        for cluster, (service, task) in list(self._catalog.items()):
            if wanted.get(cluster) != service:
                task.cancel()
                del self._catalog[cluster]
        for cluster, service in wanted.items():
            if cluster in self._catalog:
                continue
            watcher = CatalogWatcher(self.config.consul_address, service, token=self.config.consul_token)

            def update(endpoints: list[Endpoint], cluster: str = cluster) -> None:
                usable = [e for e in endpoints if is_ip(e.address)]  # EDS takes IP addresses only
                usable = local_region_first(usable, self.config.region)
                self.rollout.set_catalog_endpoints(cluster, to_cluster_load_assignment(cluster, usable))

            self._catalog[cluster] = (service, asyncio.get_running_loop().create_task(watcher.watch(update)))

    def _tls_problem(self, policy: GatewayPolicy) -> PolicyError | None:
        """Read the files ``listener.tls`` names (checked readable when the policy was parsed, but
        they may have gone since): the rollout needs their bytes before the listener names them."""
        try:
            self.rollout.tls_material = self.tls_files.follow(policy.tls)
        except OSError as exc:
            return PolicyError.single(policy.source, f"listener.tls: cannot read {exc.filename}: {exc.strerror}")
        return None

    async def _watch_tls_files(self) -> None:
        """Rotation: certificate files replaced on disk become a new secret version for Envoy."""
        while True:
            await asyncio.sleep(self.tls_files.interval)
            material = self.tls_files.poll()
            if material is not None:
                self.rollout.set_tls_material(material)
                self._audit_rotation(material)

    def _audit_rotation(self, material: TlsMaterial) -> None:
        """A secret rotation is an audited change: which certificate replaced which (fingerprints,
        never key material)."""
        spec = self.tls_files.spec
        details = {"secret": "listener certificate", "certificate_sha256": hashlib.sha256(material.cert).hexdigest()}
        self.audit.record("secret.rotated", spec.cert_file if spec is not None else "", "", details)

    def _audit_key_rotation(self, change: Change, providers: tuple[str, ...]) -> None:
        """A provider key rotated in Vault, seen by a re-read: which version replaced which (never
        the value)."""
        details = {
            "secret": "provider key",
            "providers": list(providers),
            "version": change.version,
            "previous_version": change.previous_version,
        }
        self.audit.record("secret.rotated", str(change.ref), "", details)

    def _injected_values(self) -> tuple[dict[str, str], dict[str, str]]:
        """What Envoy injects (reference -> value) and why some is missing: Vault's provider keys
        and the Vertex tokens, under references that cannot collide (vault: / gcp:)."""
        values = {**self.provider_keys.keys(), **self.gcp_tokens.values()}
        problems = {**self.provider_keys.problems(), **self.gcp_tokens.problems()}
        return values, problems

    def _keys_changed(self) -> None:
        self.rollout.set_provider_keys(*self._injected_values())

    def _apply(self, policy: GatewayPolicy) -> None:
        problem = self._catalog_problem(policy) or self._tls_problem(policy)
        if problem is not None:
            self._reject(problem)
            return
        with contextlib.suppress(RuntimeError):  # no running loop: unit tests drive the rollout directly
            self._watch_catalog(policy)
        # The keys Envoy injects, read before the snapshot that names their secrets is built.
        self.provider_keys.follow(policy)
        with contextlib.suppress(RuntimeError):  # no running loop: unit tests drive the rollout directly
            self.gcp_tokens.follow(policy)
        self.rollout.provider_keys, self.rollout.key_problems = self._injected_values()
        version = self.rollout.update(policy)
        POLICY_VERSION.set(int(version))
        self.last_error = None
        names = ", ".join(p.name for p in policy.providers)
        log.info("policy generation %s accepted from %s (providers: %s)", version, policy.source, names)
        for warning in policy.warnings:
            log.warning("policy warning: %s", warning)
        self.status_file.accepted(
            str(version), policy.source, [p.name for p in policy.providers], sha256=self._source_digest()
        )
        self.audit.accepted(policy.source, str(version), getattr(self.source, "index", None))  # Consul: X-Consul-Index

    def _source_digest(self) -> str | None:
        """The sha256 (hex) of the policy text just accepted, as its source last read it: the file's
        bytes (the version GET /admin/v1/policy reports for a file), or the Consul document's text.
        The sources keep it privately; None if a source does not."""
        digest = getattr(self.source, "_digest", None)  # FilePolicySource: bytes
        if isinstance(digest, bytes):
            return digest.hex()
        good = getattr(self.source, "_good", None)  # ConsulPolicySource: (digest, index)
        return str(good[0]) if isinstance(good, tuple) and good else None

    def _xds_clients_changed(self, _ack: Ack | None) -> None:
        """An ACK (or a node gone: None): each client's ACKed versions into the status file. A
        node's ``generation`` is the last policy generation whose every resource type it ACKed
        (the Envoy snapshot and the ext_proc policy carry the generation as their version)."""
        clients = []
        for group in sorted(self.cache.acks):
            snapshot = self.cache.get(group)
            for node, acked in sorted(self.cache.nodes(group).items()):
                if snapshot is not None and acked and _caught_up(snapshot.resources, acked):
                    self._caught_up[(group, node)] = snapshot.version
                clients.append(
                    {
                        "group": group,
                        "node": node,
                        "generation": self._caught_up.get((group, node)),
                        "acked": {type_url.rsplit(".", 1)[-1]: version for type_url, version in sorted(acked.items())},
                        "nacked": _nacked(self.cache.nacks.get(group, {}).get(node)),
                    }
                )
        connected = {(client["group"], client["node"]) for client in clients}
        self._caught_up = {key: value for key, value in self._caught_up.items() if key in connected}
        self.status_file.xds_clients(clients)

    def _reject(self, error: PolicyError) -> None:
        POLICY_REJECTED.inc()
        message = str(error)
        if message != self.last_error:  # once per distinct error, not every poll
            log.error("policy rejected, keeping the last good one:\n%s", message)
            self.status_file.rejected(message, self.config.policy_path or f"consul:{self.config.consul_prefix}")
            self.audit.rejected(
                self.config.policy_path or f"consul:{self.config.consul_prefix}",
                message,
                getattr(self.source, "index", None),
            )
        self.last_error = message

    async def start(self) -> None:
        server = grpc.aio.server(
            options=[
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(AggregatedDiscoveryService(self.cache), server)
        credentials = self.config.server_credentials()
        if credentials is not None:
            server.add_secure_port(self.config.xds_address, credentials)
        else:
            server.add_insecure_port(self.config.xds_address)
        await server.start()
        self._server = server
        if self.config.metrics_port:
            start_http_server(self.config.metrics_port, addr=self.config.metrics_address)
        log.info("xDS (ADS) listening on %s%s", self.config.xds_address, " (mTLS)" if credentials is not None else "")

    async def run(self) -> None:
        await self.load_initial()
        await self.start()
        watcher = asyncio.create_task(self.source.watch(self._apply, self._reject))
        tls_watcher = asyncio.create_task(self._watch_tls_files())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        admin = self._start_admin(stop)
        config = self.config
        if config.consul_address:
            from control_plane.consul.registration import registered

            async with registered(
                config.consul_address, "ccr-control-plane", config.xds_address, lambda: True, config.consul_token
            ):
                await stop.wait()
        else:
            await stop.wait()
        watcher.cancel()
        tls_watcher.cancel()
        for _, task in self._catalog.values():
            task.cancel()
        self.provider_keys.store.stop()
        self.gcp_tokens.stop()
        await self.stop()
        await self.source.close()
        await self.audit.close()
        if admin is not None:
            await admin  # re-raises why it stopped, if it failed (the process then exits non-zero)

    def _start_admin(self, stop: asyncio.Event) -> asyncio.Task[None] | None:
        """The Admin API beside xDS, stopped with it. aiohttp and the admin code load only when it
        is on. If it cannot serve (its port taken), the whole control plane stops: running without
        the API asked for would hide the problem."""
        if self.config.admin is None:
            return None
        from control_plane.admin.server import serve

        task = asyncio.create_task(serve(self.config.admin, stop, context=self.admin_context))

        def done(finished: asyncio.Task[None]) -> None:
            if not finished.cancelled() and finished.exception() is not None:
                log.error("the Admin API stopped: %s", finished.exception())
                stop.set()

        task.add_done_callback(done)
        return task

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None


def _nacked(rejected: Mapping[str, str] | None) -> str | None:
    """A node's standing NACKs in one line ("<type> <version>: <error>; ..."), None without any."""
    if not rejected:
        return None
    return "; ".join(f"{type_url.rsplit('.', 1)[-1]} {text}" for type_url, text in sorted(rejected.items()))


def _caught_up(resources: Mapping[str, Resources], acked: Mapping[str, str]) -> bool:
    """Every type of a snapshot ACKed at its version; an empty type a node never asked for (no
    secrets, no endpoints) does not hold it back, as in the rollout's own readiness check."""
    return all(
        acked.get(type_url) == typed.version
        for type_url, typed in resources.items()
        if typed.by_name or type_url in acked
    )


class TlsFileWatch:
    """The certificate, key and client CA of ``listener.tls``, polled for rotation.

    Polling stat() (mtime, size, inode) rather than inotify for the reasons of the policy file
    (control_plane.policy.file_source): renames, mounted volumes, symlink swaps. A change is taken
    only once the files look the same on two polls in a row, so a certificate written a moment
    before its key is not served with the old key (Envoy would reject the pair). Content that did
    not actually change (a touch) is not a rotation.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.spec: TlsSpec | None = None
        self.material: TlsMaterial | None = None
        self._seen: tuple[tuple[int, int, int], ...] | None = None
        self._pending: tuple[tuple[int, int, int], ...] | None = None
        self._unreadable = ""

    def follow(self, spec: TlsSpec | None) -> TlsMaterial | None:
        """The files of a newly accepted policy, read now (OSError when one is unreadable)."""
        if spec is None:
            self.spec, self.material, self._seen, self._pending = None, None, None, None
            return None
        seen = self._stat(spec)
        material = _read_material(spec)
        self.spec, self.material, self._seen, self._pending = spec, material, seen, None
        return material

    def poll(self) -> TlsMaterial | None:
        """New material when the files changed and settled since the last poll, else None."""
        if self.spec is None:
            return None
        try:
            seen = self._stat(self.spec)
            if seen == self._seen:
                self._pending = None
                return None
            if seen != self._pending:
                self._pending = seen  # changed: taken if it still looks the same next time
                return None
            material = _read_material(self.spec)
        except OSError as exc:
            message = f"{exc.filename}: {exc.strerror}"
            if message != self._unreadable:  # once per distinct problem, not every poll
                log.warning("TLS files unreadable, Envoy keeps the certificate it has: %s", message)
            self._unreadable = message
            return None
        self._unreadable = ""
        self._seen, self._pending = seen, None
        if material == self.material:
            return None
        changed = [
            name
            for name, old, new in (
                ("cert", self.material and self.material.cert, material.cert),
                ("key", self.material and self.material.key, material.key),
                ("client_ca", self.material and self.material.client_ca, material.client_ca),
            )
            if old != new
        ]
        self.material = material
        log.info(
            "TLS files rotated (%s): pushing certificate sha256:%s to Envoy",
            ", ".join(changed),
            hashlib.sha256(material.cert).hexdigest()[:16],
        )
        return material

    @staticmethod
    def _stat(spec: TlsSpec) -> tuple[tuple[int, int, int], ...]:
        out = []
        for file in spec.files:
            info = os.stat(file)
            out.append((info.st_mtime_ns, info.st_size, info.st_ino))
        return tuple(out)


def _read_material(spec: TlsSpec) -> TlsMaterial:
    def read(file: str) -> bytes:
        with open(file, "rb") as handle:
            return handle.read()

    return TlsMaterial(read(spec.cert_file), read(spec.key_file), read(spec.client_ca_file) if spec.mtls else b"")


class PolicyStatusFile:
    """The policy's state as JSON for `ccr-gateway status`, rewritten on every accepted or rejected
    policy: {"version", "source", "accepted_at", "providers", "last_rejected": {"at", "message"} | null}.
    For the Admin API's GET /status and /policy/rejected also: "policy_sha256" (of the accepted
    policy's text), "xds_clients" ([{"group", "node", "generation", "acked": {type: version}}],
    rewritten when an ACK changes them) and the rejection's "source".

    `last_rejected` outlives a later acceptance (its time says whether it is still pending).
    Written to a temporary file and renamed, so a reader never sees half a document. A failed write
    is logged and otherwise ignored: the status must never stop the control plane.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.state: dict[str, Any] = {
            "version": "",
            "source": "",
            "accepted_at": None,
            "providers": [],
            "last_rejected": None,
            "policy_sha256": None,
            "xds_clients": [],
        }

    def accepted(self, version: str, source: str, providers: list[str], sha256: str | None = None) -> None:
        self.state.update(version=version, source=source, accepted_at=_now(), providers=providers)
        self.state["policy_sha256"] = sha256
        self._write()

    def rejected(self, message: str, source: str = "") -> None:
        self.state["last_rejected"] = {"at": _now(), "message": message, **({"source": source} if source else {})}
        self._write()

    def xds_clients(self, clients: list[dict[str, Any]]) -> None:
        if clients == self.state["xds_clients"]:
            return  # an ACK of what the node had ACKed already: no rewrite
        self.state["xds_clients"] = clients
        self._write()

    def _write(self) -> None:
        if not self.path:
            return
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(self.state, handle, indent=2)
                handle.write("\n")
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("cannot write the status file %s: %s", self.path, exc)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
