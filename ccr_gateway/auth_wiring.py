"""Virtual keys and limits, from the policy's ``auth`` section to the ext_proc workers.

`up` tells each worker where the keys are (``--auth-keys-sqlite PATH``, or the PostgreSQL DSN in
the environment, never on a command line) and how many workers share each key's limits
(``--auth-workers N``). Whether keys are required is not a start-time setting: it travels in the
policy (ccr.v1.Policy.auth_required), so it can be switched without a restart.

The worker opens the store, loads its ``KeyCache`` on its own event loop and builds the
``Authenticator`` every request reads (extproc.auth.decision).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from control_plane.policy.auth import AuthSpec
from control_plane.policy.auth_limits import DEFAULT_BUDGET_ALERT_AT
from extproc.auth.key_store import default_keys_path, open_key_store

# The worker's side only: `up` and the control plane import this module too, and the decision code
# (with the translators it pulls in) is ~10 MB they have no use for.
if TYPE_CHECKING:
    from extproc.auth.decision import Authenticator
    from extproc.auth.redis_limits import FailurePolicy

AUTH_POSTGRES_ENV = "CCR_AUTH_POSTGRES"
AUTH_REDIS_ENV = "CCR_AUTH_REDIS"
log = logging.getLogger("ccr.auth")


def worker_arguments(auth: AuthSpec, workers: int) -> list[str]:
    arguments = ["--auth-workers", str(workers)]
    if auth.keys_sqlite and not auth.keys_postgres:
        arguments += ["--auth-keys-sqlite", auth.keys_sqlite]
    limits = auth.limits
    if limits.budget_alert_at != DEFAULT_BUDGET_ALERT_AT:
        arguments += ["--auth-budget-alert-at", str(limits.budget_alert_at)]
    if limits.redis:
        arguments += ["--auth-gateways", str(limits.gateways), "--auth-redis-timeout-ms", str(limits.timeout_ms)]
        if limits.on_redis_failure:
            arguments += ["--auth-on-redis-failure", limits.failure_argument()]
    return arguments


def environment(auth: AuthSpec) -> dict[str, str]:
    """For every child: the key store's DSN and the limits' Redis URL, as the policy wrote them
    (never on a command line: they may hold a password)."""
    out = {AUTH_POSTGRES_ENV: auth.keys_postgres} if auth.keys_postgres else {}
    if auth.limits.redis:
        out[AUTH_REDIS_ENV] = auth.limits.redis
    return out


def open_listener_warning(auth: AuthSpec, listener: str, key_count: int | None) -> str | None:
    """The one line `up` prints when anyone who reaches the listener can spend the providers' keys."""
    if auth.required or key_count:
        return None
    return (
        f"WARNING: anyone who can reach {listener} can use your providers' keys: "
        "create virtual keys with `ccr-gateway keys create` and set auth.required"
    )


def count_keys(auth: AuthSpec) -> int | None:
    """How many keys the SQLite store holds (None: unknown, e.g. PostgreSQL; not worth a connection)."""
    if auth.keys_postgres:
        return None
    path = os.path.expanduser(os.path.expandvars(auth.keys_sqlite)) if auth.keys_sqlite else str(default_keys_path())
    if not os.path.exists(path):
        return 0
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            return int(connection.execute("SELECT count(*) FROM virtual_keys").fetchone()[0])
    except sqlite3.Error:
        return None


# --- the worker's side ---------------------------------------------------------------------------


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--auth-keys-sqlite",
        metavar="PATH",
        help="the virtual keys' SQLite file (default $XDG_DATA_HOME/ccr-gateway/keys.db)",
    )
    parser.add_argument(
        "--auth-keys-postgres",
        default=os.environ.get(AUTH_POSTGRES_ENV),
        metavar="DSN",
        help=f"the virtual keys in PostgreSQL (default ${AUTH_POSTGRES_ENV}); ${{VAR}}s expanded",
    )
    parser.add_argument(
        "--auth-workers",
        type=int,
        default=1,
        metavar="N",
        help="how many workers share each key's limits: each enforces limit/N when they are in process (default 1)",
    )
    parser.add_argument(
        "--auth-redis",
        default=os.environ.get(AUTH_REDIS_ENV),
        metavar="URL",
        help=f"count the keys' limits and budgets in this Redis (default ${AUTH_REDIS_ENV}); ${{VAR}}s expanded",
    )
    parser.add_argument(
        "--auth-gateways",
        type=int,
        default=1,
        metavar="N",
        help="gateways sharing that Redis: while it is down, `local` limits are limit / (N x workers)",
    )
    parser.add_argument("--auth-redis-timeout-ms", type=int, default=50, metavar="MS", help="(default 50)")
    parser.add_argument(
        "--auth-budget-alert-at",
        type=float,
        default=DEFAULT_BUDGET_ALERT_AT,
        metavar="FRACTION",
        help="warn once a key has spent this fraction of its budget (default 0.8)",
    )
    parser.add_argument(
        "--auth-on-redis-failure",
        default="",
        metavar="TYPE=POLICY,...",
        help="per limit type (rpm, tpm, parallel, budget, ...): fail_closed, fail_open or local",
    )


@contextlib.asynccontextmanager
async def opened_authenticator(args: argparse.Namespace) -> AsyncIterator[Authenticator]:
    """The worker's Authenticator, its key cache loaded (or retrying: until then every gateway key
    is refused with a 503) on the running loop; closed on the way out."""
    from extproc.auth.decision import Authenticator
    from extproc.auth.key_cache import KeyCache
    from extproc.auth.local_limits import LocalLimiter

    dsn = os.path.expandvars(args.auth_keys_postgres) if args.auth_keys_postgres else None
    sqlite = os.path.expandvars(args.auth_keys_sqlite) if args.auth_keys_sqlite else None
    store = open_key_store(sqlite, dsn)
    cache = KeyCache(store)
    if not await cache.start():
        log.warning("key store not readable yet: gateway keys are refused until it is")
    workers = max(1, args.auth_workers)
    redis_client = None
    shared = None
    if args.auth_redis:
        # Imported only here: redis-py (and what it pulls in) is ~9 MB of every process that loads it.
        from extproc.auth.redis_limits import GuardedLimiter, RedisLimiter, connect_hot

        redis_client = connect_hot(connection_url(args.auth_redis), timeout_s=args.auth_redis_timeout_ms / 1000)
        shared = GuardedLimiter(
            RedisLimiter(redis_client),
            policies=failure_policies(args.auth_on_redis_failure),
            gateways=max(1, args.auth_gateways) * workers,
        )
    try:
        yield Authenticator(
            cache, LocalLimiter(), workers=workers, shared_limiter=shared, budget_alert_at=args.auth_budget_alert_at
        )
    finally:
        await cache.close()
        await store.close()
        if redis_client is not None:
            await redis_client.aclose()


def connection_url(text: str) -> str:
    """A Redis URL as the worker connects with it: ``${VAR}`` from the environment, a whole
    ``vault:`` reference read from Vault (ccr.v1.vault_refs). Read once, when the worker starts: the
    client keeps it for its reconnections (a rotated Redis password needs a worker restart)."""
    from ccr.v1.env_refs import VAULT_PREFIX, expand_env

    return expand_env(text) if text.startswith(VAULT_PREFIX) else os.path.expandvars(text)


def failure_policies(text: str) -> dict[str, FailurePolicy]:
    """``rpm=local,budget=fail_closed`` -> the limiter's policies (the policy file was checked)."""
    from extproc.auth.redis_limits import FailurePolicy

    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {name.strip(): FailurePolicy(policy.strip()) for name, policy in pairs}
