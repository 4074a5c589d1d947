"""`ccr-gateway injector`: the sidecar injection webhook (docs/sidecar-injection.md).

Loaded by ccr_gateway.cli as a plugin command: ``add_arguments(parser)`` then ``run(args)``.
Settings: the --config file, then the flags given over it.
"""

from __future__ import annotations

import argparse
import signal
import ssl
import sys
import threading

from control_plane.injector.config import ConfigError, InjectorConfig, load_config
from control_plane.injector.server import TlsFiles, log, start

EPILOG = """examples:
  ccr-gateway injector --tls-cert /tls/tls.crt --tls-key /tls/tls.key --config /etc/ccr-injector/config.yaml
  ccr-gateway injector --tls-cert server.pem --tls-key server.key --image ccr-gateway:0.1.0 \\
      --control-plane ccr-control-plane.ccr-gateway.svc.cluster.local:18000
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "A mutating admission webhook adding Envoy, the ext_proc workers and Envoy's bootstrap to pods "
        'labelled ccr-gateway.io/inject: "true" (POST /mutate; /mutate-namespace for labelled namespaces; '
        "GET /healthz)."
    )
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--listen", default=":8443", help="host:port or :port (default :8443)")
    parser.add_argument(
        "--tls-cert", required=True, metavar="PEM", help="the webhook's certificate (reloaded on change)"
    )
    parser.add_argument("--tls-key", required=True, metavar="PEM", help="its private key")
    parser.add_argument(
        "--config", metavar="FILE", help="injector settings, YAML or JSON (control_plane/injector/config.py)"
    )
    parser.add_argument("--image", help="the ccr-gateway image the sidecars run")
    parser.add_argument("--control-plane", help="the control plane's xDS host:port the sidecars use")
    parser.add_argument("--workers", type=int, help="ext_proc workers per pod (default 1)")
    parser.add_argument(
        "--native-sidecars",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="inject Kubernetes >= 1.29 sidecars (init containers with restartPolicy Always)",
    )


def config_of(args: argparse.Namespace) -> InjectorConfig:
    """Raises ConfigError or OSError."""
    config = load_config(args.config) if args.config else InjectorConfig()
    return config.with_overrides(
        image=args.image,
        control_plane=args.control_plane,
        workers=args.workers,
        native_sidecars=args.native_sidecars,
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = config_of(args)
        tls = TlsFiles(args.tls_cert, args.tls_key)
        server, thread = start(args.listen, config, tls)
    except (ConfigError, ValueError) as exc:
        print(f"ccr-gateway injector: {exc}", file=sys.stderr, flush=True)
        return 2
    except (OSError, ssl.SSLError) as exc:
        print(f"ccr-gateway injector: {exc}", file=sys.stderr, flush=True)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    host, port = server.server_address[:2]
    log.info(
        "injector listening on https://%s:%s (image %s, control plane %s)",
        host,
        port,
        config.image,
        config.control_plane,
    )
    while not stop.wait(1.0):
        if not thread.is_alive():
            return 1
    server.shutdown()
    server.server_close()
    return 0
