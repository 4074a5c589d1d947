"""`ccr-gateway` command line: one entry point, one subcommand per component."""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import os
import sys
from collections.abc import Coroutine
from typing import Any

from ccr_gateway.logs import setup_logging
from control_plane.policy import GatewayPolicy, PolicyError, load_policy_file, unset_key_warnings

EPILOG = """examples:
  ccr-gateway up -c examples/gateway.yaml --with-fake-provider
  ccr-gateway validate -c examples/gateway.yaml
  ccr-gateway doctor -c examples/gateway.yaml
  ccr-gateway status
  ccr-gateway route --explain request.json -c examples/gateway.yaml
  ccr-gateway import-ccr ~/.claude-code-router/config.json -o policy.yaml
  ccr-gateway bench --write-docs docs/performance.md
  ccr-gateway slo report --prometheus http://127.0.0.1:9090 --since 30d
  ccr-gateway fake-provider --port 9100
"""


def _load_or_exit(path: str):
    try:
        return load_policy_file(path)
    except PolicyError as exc:
        print(f"invalid policy:\n{exc}", file=sys.stderr)
        for warning in exc.warnings:
            print(warning, file=sys.stderr)
        raise SystemExit(2) from None


def cmd_up(args: argparse.Namespace) -> int:
    from ccr_gateway import admin_wiring
    from ccr_gateway.supervisor import GatewayProcesses, StartupError, StopRequested

    _require_policy_source(args)
    try:
        admin_api = admin_wiring.up_listen(args.admin_api)
    except ValueError as exc:
        print(f"ccr-gateway up: --admin-api: {exc}", file=sys.stderr, flush=True)
        return 2
    policy = _consul_policy_or_exit(args) if args.consul else _load_or_exit(args.config)
    internal_tls = None
    if args.internal_tls:
        from ccr_gateway.certs import InternalTls

        try:
            internal_tls = InternalTls.load(args.internal_tls)
        except ValueError as exc:
            print(f"ccr-gateway up: {exc}", file=sys.stderr, flush=True)
            return 2
    gateway = GatewayProcesses(
        policy_path=args.config or "",
        consul=(args.consul, args.consul_prefix, args.consul_token) if args.consul else None,
        policy=policy,
        admin_port=args.admin_port,
        admin_api=admin_api,
        xds=args.xds or "",
        # A terminal shows the banner, then warnings and errors; --log-level info shows everything.
        log_level=args.log_level or "warning",
        envoy_log_level=args.envoy_log_level,
        fake_provider_port=args.fake_provider_port if args.with_fake_provider else None,
        metrics_port=args.metrics_port,
        workers=args.workers,
        ledger_on=not args.no_ledger,
        batch_services=not args.no_batch_services,
        mcp_service=not args.no_mcp,
        internal_tls=internal_tls,
        region=args.region,
    )
    try:
        gateway.check_ports()  # before anything starts, and before saying it starts
    except StartupError as exc:
        print(f"ccr-gateway up: {exc}", file=sys.stderr, flush=True)
        return 1
    # Said before anything starts: a provider without its key would answer 503 to every request.
    for warning in [*policy.warnings, *unset_key_warnings(policy)]:
        print(warning, file=sys.stderr, flush=True)
    print("starting ccr-gateway:", flush=True)
    try:
        gateway.start(timeout=args.timeout)
    except StopRequested:
        print("stopped before the gateway was ready", file=sys.stderr, flush=True)
        gateway.stop()
        return 0
    except StartupError as exc:
        print(f"startup failed: {exc}", file=sys.stderr, flush=True)
        gateway.stop()
        return 1
    except BaseException:
        gateway.stop()
        raise
    url = gateway.listener_url
    print(
        f"\nccr-gateway is ready on {url}\n"
        f"  Claude Code:     ANTHROPIC_BASE_URL={url} ANTHROPIC_AUTH_TOKEN=any claude\n"
        f"  Anthropic SDK:   anthropic.Anthropic(base_url='{url}')\n"
        f"  OpenAI SDK:      openai.OpenAI(base_url='{url}/v1')\n"
        f"  models:          curl {url}/v1/models\n"
        + (
            f"  MCP endpoint:    {gateway.mcp_url}  (claude mcp add --transport http ccr {gateway.mcp_url})\n"
            if gateway.mcp_url
            else ""
        )
        + f"  Envoy admin:     http://127.0.0.1:{args.admin_port}/config_dump\n"
        + (
            f"  console:         {admin_wiring.console_url(gateway)} (sign in with `ccr-gateway admin keys create`)\n"
            if gateway.admin_api
            else ""
        )
        + (
            f"  metrics:         {gateway.metrics_url} (every Python process), "
            f"http://127.0.0.1:{args.admin_port}/stats/prometheus (Envoy)\n"
            if gateway.metrics_url
            else ""
        )
        + (
            f"Change routing live: ccr-gateway policy push FILE --consul {args.consul}"
            if args.consul
            else f"Edit {args.config} to change routing live."
        )
        + " Ctrl-C stops everything.",
        flush=True,
    )
    try:
        return gateway.wait()
    finally:
        gateway.stop()


def cmd_control_plane(args: argparse.Namespace) -> int:
    from ccr.v1.contract import EXTPROC_CLUSTER
    from ccr_gateway import admin_wiring
    from control_plane.server import ControlPlane, ControlPlaneConfig

    _require_policy_source(args)
    if not args.consul:
        _load_or_exit(args.config)
    try:
        tls = _tls_files(args.tls_cert, args.tls_key, args.tls_client_ca, "--tls-cert, --tls-key and --tls-client-ca")
        tls_cert, tls_key, tls_client_ca = tls or ("", "", "")
        config = ControlPlaneConfig(
            policy_path=args.config or "",
            consul_address=args.consul or "",
            consul_prefix=args.consul_prefix,
            consul_token=args.consul_token,
            xds_address=args.xds,
            metrics_port=args.metrics_port,
            metrics_address=args.metrics_address,
            usage_log_clusters=tuple(args.usage_log_cluster or [EXTPROC_CLUSTER]),
            status_file=args.status_file or "",
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            region=args.region,
            admin=admin_wiring.settings_from(args),
        )
    except ValueError as exc:
        print(f"ccr-gateway control-plane: {exc}", file=sys.stderr, flush=True)
        return 2
    context = admin_wiring.app_context() if config.admin is not None else {}
    try:
        asyncio.run(ControlPlane(config, admin_context=context).run())
    except PolicyError as exc:
        print(f"invalid policy:\n{exc}", file=sys.stderr)
        return 2
    return 0


def _require_policy_source(args: argparse.Namespace) -> None:
    if bool(args.config) == bool(args.consul):
        raise SystemExit("give exactly one policy source: -c POLICY.yaml or --consul URL")


def _consul_policy_or_exit(args: argparse.Namespace) -> GatewayPolicy:
    """The policy currently in Consul (`up` needs its listener address before starting Envoy)."""
    from control_plane.consul.kv import ConsulPolicySource

    async def fetch() -> GatewayPolicy | None:
        source = ConsulPolicySource(args.consul, args.consul_prefix, args.consul_token, write_status=False)
        try:
            return await source.load_once()
        finally:
            await source.close()

    try:
        policy = asyncio.run(fetch())
    except PolicyError as exc:
        print(f"invalid policy in Consul:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as exc:  # unreachable Consul, denied token: say which
        print(f"cannot read the policy from Consul at {args.consul}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if policy is None:
        print(f"no policy under {args.consul_prefix!r} in Consul at {args.consul}", file=sys.stderr)
        raise SystemExit(2)
    return policy


def run(main: Coroutine[Any, Any, None]) -> None:
    """asyncio.run, on uvloop when it is installed (a cheaper event loop for the per-request hops)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def cmd_extproc(args: argparse.Namespace) -> int:
    from ccr_gateway.auth_wiring import opened_authenticator
    from ccr_gateway.cache_wiring import opened_cache
    from ccr_gateway.ledger_wiring import open_sink
    from ccr_gateway.responses_wiring import opened_responses
    from extproc.server import ExtProcConfig, TlsFiles, serve

    try:
        tls = _tls_files(args.tls_cert, args.tls_key, args.tls_client_ca, "--tls-cert, --tls-key and --tls-client-ca")
        control_plane_tls = _tls_files(
            args.control_plane_tls_cert,
            args.control_plane_tls_key,
            args.control_plane_tls_ca,
            "--control-plane-tls-cert, --control-plane-tls-key and --control-plane-tls-ca",
        )
        config = ExtProcConfig(
            listen=args.listen,
            control_plane=args.control_plane,
            metrics_port=args.metrics_port,
            hop_listen=args.hop_listen,
            hop_cluster=args.hop_cluster,
            tls=TlsFiles(*tls) if tls else None,
            control_plane_tls=TlsFiles(*control_plane_tls) if control_plane_tls else None,
        )
    except ValueError as exc:
        print(f"ccr-gateway extproc: {exc}", file=sys.stderr, flush=True)
        return 2
    register: dict[str, Any] = {}
    if args.consul:  # else Consul's client stays unloaded: a worker at rest is small
        from control_plane.consul.registration import registered

        register["register"] = functools.partial(registered, args.consul)

    async def main() -> None:
        # The key cache refreshes on this loop; the sink starts on it.
        async with (
            opened_authenticator(args) as auth,
            opened_cache(args) as (cache, flights),
            opened_responses(args) as responses,
        ):
            await serve(
                config, sink=open_sink(args), auth=auth, cache=cache, flights=flights, responses=responses, **register
            )

    run(main())
    return 0


def _tls_files(cert: str | None, key: str | None, ca: str | None, flags: str) -> tuple[str, str, str] | None:
    """(cert, key, ca) when all three are given, None when none is; each must be a readable file."""
    given = [cert, key, ca]
    if not any(given):
        return None
    if not all(given):
        raise ValueError(f"{flags} go together: give all three or none")
    for path in given:
        if not os.path.isfile(path or ""):
            raise ValueError(f"no such file: {path}")
    return cert or "", key or "", ca or ""


def _tls_server_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--tls-cert", metavar="PEM", help=f"mTLS on {what} (TCP only): this server's certificate")
    parser.add_argument("--tls-key", metavar="PEM", help="its private key")
    parser.add_argument(
        "--tls-client-ca", metavar="PEM", help="the CA clients' certificates must chain to (required, not optional)"
    )


def cmd_fake_provider(args: argparse.Namespace) -> int:
    from fake_provider.server import run

    run(args)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    policy = _load_or_exit(args.config)
    models = sum(len(p.models) for p in policy.providers)
    print(f"{args.config}: valid ({len(policy.providers)} providers, {models} models)")
    # Warnings do not change the exit status: the gateway would run this policy.
    for warning in [*policy.warnings, *unset_key_warnings(policy)]:
        print(warning, file=sys.stderr)
    return 0


class _VersionAction(argparse.Action):
    """--version: computed only when asked (it runs `envoy --version`)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from ccr_gateway.doctor import version_lines

        print("\n".join(version_lines()))
        parser.exit()


def _consul_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--consul",
        metavar="URL",
        help="take the policy from Consul KV instead of a file (e.g. http://127.0.0.1:8500)",
    )
    parser.add_argument(
        "--consul-prefix", default="ccr-gateway/", help="KV prefix of the policy (default ccr-gateway/)"
    )
    parser.add_argument(
        "--consul-token", default=os.environ.get("CONSUL_HTTP_TOKEN"), help="ACL token (default $CONSUL_HTTP_TOKEN)"
    )


# name -> (help, the module with add_arguments(parser), its run function; "" when add_arguments sets it)
PLUGIN_COMMANDS: dict[str, tuple[str, str, str]] = {
    "fake-provider": ("a fake LLM upstream (Anthropic, OpenAI, Gemini APIs)", "fake_provider.server", ""),
    "route": ("show how a request would be routed (--explain), without sending it", "ccr_gateway.explain", "run"),
    "policy": ("the policy in Consul KV: push | get | diff | validate (CAS-safe)", "ccr_gateway.consul_cli", ""),
    "import-ccr": ("convert a Claude Code Router config.json into a policy file", "ccr_gateway.import_ccr", "run"),
    "import-mcp": ("turn Claude Code's .mcp.json into the policy's mcp: section", "ccr_gateway.import_mcp", "run"),
    "bench": ("benchmark the gateway against plain Envoy (req/s, latency, CPU, RSS)", "bench.cli", "run"),
    "status": ("the running gateways: policy, workers, clusters and their health", "ccr_gateway.status", "run"),
    "doctor": ("check a policy, keys, ports, providers and Envoy before `up`", "ccr_gateway.doctor", "run"),
    "usage": ("usage and spend: report (totals per group, UTC) | export (JSON lines)", "ledger.usage_cli", ""),
    "ledger": (
        "the ledger writer (usage queue -> PostgreSQL) and its dead letters: dlq list | replay",
        "ledger.cli",
        "",
    ),
    "db": ("the ledger's PostgreSQL: migrate | import-sqlite", "ledger.db_cli", ""),
    "keys": (
        "virtual keys: create | list | show | update | revoke | rotate (printed once; --admin URL: via the API)",
        "ccr_gateway.keys_command",
        "",
    ),
    "admin": ("the Admin API's own keys: admin keys create | list | revoke (audited)", "ccr_gateway.admin_cli", ""),
    "slo": (
        "service levels from Prometheus: report (availability, error budget, latency vs targets)",
        "ccr_gateway.slo_report",
        "",
    ),
    "influx-export": (
        "send the gateway's metrics to InfluxDB v2 every second (line protocol; token from $INFLUX_TOKEN)",
        "ccr_gateway.influx_export",
        "run",
    ),
    "envoy-bootstrap": (
        "print the Envoy bootstrap for running the pieces by hand",
        "ccr_gateway.envoy_bootstrap",
        "run",
    ),
    "certs": ("dev: a local CA, server and client certificates for trying TLS and mTLS", "ccr_gateway.certs", "run"),
    "audit": ("the tamper-evident audit log: verify | export (JSON lines) | list", "audit.cli", ""),
    "injector": ("the sidecar injection webhook (Kubernetes, HTTPS)", "control_plane.injector.cli", "run"),
    "pod": (
        "container helpers: probe URL (exit 0 on 2xx) | metrics-relay (loopback metrics out)",
        "ccr_gateway.pod",
        "",
    ),
    "batch-worker": ("batch items via the gateway: feeder, dead letters, workers", "ccr_gateway.batch_worker", "run"),
    "batch": ("the batch store: list | show | cancel (audited)", "ccr_gateway.batch_cli", "run"),
    "batch-api": ("the Message Batches HTTP API (Anthropic, OpenAI) behind Envoy", "ccr_gateway.batch_api", "run"),
    "mcp-gateway": ("the MCP endpoint's service (the policy's MCP servers as one)", "ccr_gateway.mcp_gateway", "run"),
}


def _region_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--region",
        default=os.environ.get("CCR_REGION", ""),
        help="the region this gateway runs in: providers' endpoints there are tried first, other "
        "regions' only when they are unhealthy (default: $CCR_REGION, else no preference)",
    )


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """``selected``: the command being run; only its options are loaded from its module (all of
    the built-in ones always are)."""
    parser = argparse.ArgumentParser(
        prog="ccr-gateway",
        description="Claude Code Router as an LLM API gateway on Envoy.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log level (default info; `up` runs its processes at warning unless given, for a quiet terminal)",
    )
    parser.add_argument("--version", action=_VersionAction, help="versions of ccr-gateway, Envoy and Python")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run control plane, ext_proc and Envoy together (Ctrl-C stops all)")
    up.add_argument("-c", "--config", help="policy YAML file (watched for edits)")
    _consul_arguments(up)
    up.add_argument("--admin-port", type=int, default=9901, help="Envoy admin port (default 9901)")
    up.add_argument(
        "--admin-api",
        default=os.environ.get("CCR_ADMIN_API") or "127.0.0.1:9190",
        metavar="HOST:PORT|off",
        help="the Admin API and web console, served by the control plane (default $CCR_ADMIN_API, else "
        "127.0.0.1:9190; off: none)",
    )
    up.add_argument("--xds", help="control plane xDS address host:port (default: a free local port)")
    up.add_argument("--envoy-log-level", default="warning", help="Envoy's own log level (default warning)")
    up.add_argument("--with-fake-provider", action="store_true", help="also start the bundled fake provider")
    up.add_argument("--fake-provider-port", type=int, default=9100, help="port for --with-fake-provider")
    from ccr_gateway.preflight import DEFAULT_METRICS_PORT, METRICS_HELP, positive_int

    up.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT, help=METRICS_HELP)
    up.add_argument(
        "--workers",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="ext_proc worker processes, each on its own Unix socket (default: number of cores)",
    )
    up.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for readiness (default 30)")
    up.add_argument(
        "--no-ledger",
        action="store_true",
        help="keep no usage records (default: the policy's storage, else the local SQLite ledger)",
    )
    up.add_argument(
        "--no-batch-services",
        action="store_true",
        help="with batches: {api: <a local address>}, do not run the batch API and a batch worker: they "
        "run by themselves (batch-api, batch-worker --amqp ...)",
    )
    up.add_argument(
        "--no-mcp",
        action="store_true",
        help="with mcp: {api: <a local address>}, do not run the MCP service (`ccr-gateway mcp-gateway`): "
        "it runs by itself; Envoy still routes the MCP endpoint to mcp.api",
    )
    up.add_argument(
        "--internal-tls",
        metavar="DIR",
        help="run the workers, their decision hops and xDS on 127.0.0.1 TCP ports with mTLS instead of "
        "Unix sockets; DIR from `ccr-gateway certs dev --internal --dir DIR`",
    )
    _region_argument(up)
    up.set_defaults(func=cmd_up)

    cp = sub.add_parser("control-plane", help="run only the xDS control plane")
    cp.add_argument("-c", "--config", help="policy YAML file (watched for edits)")
    _consul_arguments(cp)
    cp.add_argument("--xds", default="127.0.0.1:18000", help="listen address host:port or unix:PATH")
    cp.add_argument("--metrics-port", type=int, default=0, help="Prometheus metrics port (0: off)")
    cp.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="where the metrics port listens (default 127.0.0.1; 0.0.0.0 in a container or pod)",
    )
    cp.add_argument(
        "--usage-log-cluster",
        action="append",
        metavar="CLUSTER",
        help="Envoy cluster that receives the usage access log; repeat for one per ext_proc worker "
        "(default: ccr_extproc, one stream per Envoy thread to any worker)",
    )
    cp.add_argument(
        "--status-file",
        metavar="PATH",
        help="write the policy's state here (JSON: version, source, accepted_at, providers, last_rejected) "
        "on every accepted or rejected policy; `ccr-gateway status` reads it",
    )
    _region_argument(cp)
    _tls_server_arguments(cp, "the xDS port")
    from ccr_gateway import admin_wiring

    admin_wiring.add_control_plane_arguments(cp)
    cp.set_defaults(func=cmd_control_plane)

    ep = sub.add_parser("extproc", help="run only the ext_proc service")
    ep.add_argument("--listen", default="unix:/tmp/ccr-extproc.sock", help="unix:PATH or host:port")
    ep.add_argument(
        "--hop-listen",
        default="",
        metavar="ADDRESS",
        help="also serve the decision hop (HTTP, for Envoy's Lua filter) on unix:PATH or host:port",
    )
    ep.add_argument(
        "--hop-cluster",
        default="",
        metavar="NAME",
        help="the Envoy cluster that reaches this worker's decision hop alone (up: ccr_hop_I): "
        "answers for the response cache come back to the worker that decided them",
    )
    ep.add_argument("--control-plane", default="127.0.0.1:18000", help="xDS address of the control plane")
    _tls_server_arguments(ep, "--listen and --hop-listen")
    # Flags of their own, not the three above again: the control plane's CA and the certificate a
    # worker shows it may differ from Envoy's side (`up --internal-tls` passes the same files).
    ep.add_argument(
        "--control-plane-tls-ca", metavar="PEM", help="TLS to the control plane: the CA its certificate chains to"
    )
    ep.add_argument(
        "--control-plane-tls-cert", metavar="PEM", help="this worker's client certificate for the control plane"
    )
    ep.add_argument("--control-plane-tls-key", metavar="PEM", help="its private key")
    ep.add_argument("--metrics-port", type=int, default=0, help="Prometheus metrics port (0: off)")
    ep.add_argument("--consul", metavar="URL", help="register this worker in Consul's catalog (TTL health check)")
    from ccr_gateway import auth_wiring, cache_wiring
    from ccr_gateway.ledger_wiring import add_worker_arguments

    add_worker_arguments(ep)
    auth_wiring.add_worker_arguments(ep)
    cache_wiring.add_worker_arguments(ep)
    ep.set_defaults(func=cmd_extproc)

    # Commands whose options live with their own code: imported only when that command runs (or
    # shows its --help), so that a worker process does not carry aiohttp, the benchmark or the
    # CCR importer it never uses, and a problem in one of them cannot break the others.
    for name, (help_text, module_name, run_name) in PLUGIN_COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        if name == selected:
            module = importlib.import_module(module_name)
            module.add_arguments(command)
            if run_name:
                command.set_defaults(func=getattr(module, run_name))
    if selected == "fake-provider":
        sub.choices["fake-provider"].set_defaults(func=cmd_fake_provider)

    va = sub.add_parser("validate", help="check a policy file and print every problem with its line")
    va.add_argument("-c", "--config", required=True, help="policy YAML file")
    va.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    selected = next((word for word in argv if word in PLUGIN_COMMANDS), None)
    args = build_parser(selected).parse_args(argv)
    setup_logging(args.log_level or "info")
    raise SystemExit(args.func(args))


if __name__ == "__main__":
    main()
