"""The Admin API wired into the control plane: its `control-plane` options, the settings they
make, what the composition root hands the app (how to reach the virtual keys and the ledger,
which the control plane may not import), and the options `up` passes from what it knows.

Connection strings travel in the environment, never on a command line (`ps` shows those): the
key store's ``$CCR_AUTH_POSTGRES`` and the ledger's ``$CCR_LEDGER_POSTGRES``, which `up` sets for
every child anyway, are the defaults of ``--keys-postgres`` and ``--ledger-postgres``.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING, Any

from control_plane.admin.settings import AdminSettings

if TYPE_CHECKING:
    from ccr_gateway.supervisor import GatewayProcesses

log = logging.getLogger("ccr.admin")
DEFAULT_LISTEN = "127.0.0.1:9190"
ADMIN_POSTGRES_ENV = "CCR_ADMIN_POSTGRES"
KEYS_POSTGRES_ENV = "CCR_AUTH_POSTGRES"
LEDGER_POSTGRES_ENV = "CCR_LEDGER_POSTGRES"


def add_control_plane_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Admin API and web console (docs/admin-api.md)")
    group.add_argument(
        "--admin-listen", metavar="HOST:PORT", help="serve the Admin API and console here (default: off)"
    )
    group.add_argument("--admin-tls-cert", metavar="PEM", help="HTTPS on --admin-listen: the certificate")
    group.add_argument("--admin-tls-key", metavar="PEM", help="its private key")
    group.add_argument(
        "--admin-jwks", metavar="FILE|URL", help="accept JWTs signed by these keys (role claim ccr_role)"
    )
    group.add_argument("--admin-jwt-issuer", default="", help="with --admin-jwks: the issuer tokens must name")
    group.add_argument("--admin-jwt-audience", default="", help="with --admin-jwks: the audience tokens must name")
    group.add_argument(
        "--admin-sqlite", metavar="PATH", help="the admin keys' file (default $XDG_DATA_HOME/ccr-gateway/admin.db)"
    )
    group.add_argument(
        "--admin-postgres",
        metavar="DSN",
        default=os.environ.get(ADMIN_POSTGRES_ENV),
        help=f"the admin keys in PostgreSQL (default ${ADMIN_POSTGRES_ENV}; ${{VAR}}s expanded)",
    )
    group.add_argument("--keys-sqlite", metavar="PATH", help="the virtual keys' SQLite file (default the key CLI's)")
    group.add_argument(
        "--keys-postgres",
        metavar="DSN",
        default=os.environ.get(KEYS_POSTGRES_ENV),
        help=f"the virtual keys in PostgreSQL (default ${KEYS_POSTGRES_ENV})",
    )
    group.add_argument("--ledger-sqlite", metavar="PATH", help="the local usage ledger (default the gateway's)")
    group.add_argument(
        "--ledger-postgres",
        metavar="DSN",
        default=os.environ.get(LEDGER_POSTGRES_ENV),
        help=f"the usage ledger in PostgreSQL (default ${LEDGER_POSTGRES_ENV})",
    )
    group.add_argument(
        "--envoy-admin",
        action="append",
        default=[],
        metavar="URL",
        help="an Envoy admin URL to read clusters from for GET /status (repeat for each Envoy)",
    )


def settings_from(args: argparse.Namespace) -> AdminSettings | None:
    """None without --admin-listen; ValueError for options that do not go together."""
    if not getattr(args, "admin_listen", None):
        return None
    from control_plane.admin.server import listen_address

    listen_address(args.admin_listen)  # ValueError now rather than after the xDS server started
    if bool(args.admin_tls_cert) != bool(args.admin_tls_key):
        raise ValueError("--admin-tls-cert and --admin-tls-key go together")
    for path in (args.admin_tls_cert, args.admin_tls_key):
        if path and not os.path.isfile(path):
            raise ValueError(f"no such file: {path}")
    return AdminSettings(
        listen=args.admin_listen,
        tls_cert=args.admin_tls_cert or "",
        tls_key=args.admin_tls_key or "",
        admin_sqlite=args.admin_sqlite or "",
        admin_postgres=(args.admin_postgres or "") if not args.admin_sqlite else "",
        jwks=args.admin_jwks or "",
        jwt_issuer=args.admin_jwt_issuer,
        jwt_audience=args.admin_jwt_audience,
        keys_sqlite=args.keys_sqlite or "",
        keys_postgres=(args.keys_postgres or "") if not args.keys_sqlite else "",
        ledger_sqlite=args.ledger_sqlite or "",
        ledger_postgres=(args.ledger_postgres or "") if not args.ledger_sqlite else "",
        policy_path=args.config or "",
        consul_address=args.consul or "",
        consul_prefix=args.consul_prefix,
        consul_token=args.consul_token,
        status_file=args.status_file or "",
        envoy_admins=tuple(args.envoy_admin or ()),
    )


def app_context() -> dict[Any, Any]:
    """What the composition root hands the app: how to open the virtual keys' store
    (routes_keys.KEYS) and the ledger (routes_usage.LEDGER), which the control plane may not
    import. Without one, its routes answer 503."""
    context: dict[Any, Any] = {}
    try:
        from ccr_gateway.admin_keys import open_key_admin
        from control_plane.admin.routes_keys import KEYS
    except ModuleNotFoundError as exc:  # the key routes not there: the app skips them too
        log.info("admin API: no key store wiring (%s)", exc.name)
    else:
        context[KEYS] = open_key_admin
    try:
        from ccr_gateway.admin_ledger import open_reader
        from control_plane.admin.routes_usage import LEDGER
    except ModuleNotFoundError as exc:  # the usage routes not there: the app skips them too
        log.info("admin API: no usage ledger wiring (%s)", exc.name)
    else:
        context[LEDGER] = open_reader
    return context


# -- up ------------------------------------------------------------------------------------------


def up_listen(text: str) -> str:
    """`up --admin-api`: HOST:PORT, or "off" ("")."""
    if text.strip().lower() in ("off", "none", "no", ""):
        return ""
    from control_plane.admin.server import listen_address

    listen_address(text)
    return text


def up_arguments(gateway: GatewayProcesses) -> list[str]:
    """`control-plane` options for `up`'s Admin API: where it listens, TLS with --internal-tls
    (the control plane's own certificate), the stores the policy names (file paths here; DSNs in
    the environment `up` sets before the control plane starts), Envoy's admin."""
    if not gateway.admin_api:
        return []
    options = ["--admin-listen", gateway.admin_api, "--envoy-admin", f"http://127.0.0.1:{gateway.admin_port}"]
    if (tls := gateway.internal_tls) is not None:
        options += ["--admin-tls-cert", tls.cert("control-plane"), "--admin-tls-key", tls.key("control-plane")]
    auth = gateway.policy.auth
    if auth.keys_sqlite and not auth.keys_postgres:
        options += ["--keys-sqlite", os.path.expanduser(auth.keys_sqlite)]
    ledger = gateway.ledger
    if ledger.kind == "sqlite" and ledger.sqlite_path:
        options += ["--ledger-sqlite", os.path.expanduser(ledger.sqlite_path)]
    return options


def console_url(gateway: GatewayProcesses) -> str:
    if not gateway.admin_api:
        return ""
    scheme = "https" if gateway.internal_tls is not None else "http"
    return f"{scheme}://{gateway.admin_api}/console/"
