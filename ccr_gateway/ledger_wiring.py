"""Where each request's usage record goes, from the policy's ``storage`` section to the processes.

- ``rabbitmq`` + ``postgres`` configured: every ext_proc worker publishes to RabbitMQ (its own spool
  while the broker is away) and `up` runs the ledger writer (queue -> PostgreSQL, which migrates
  the schema when it starts);
- nothing configured: every worker writes the local SQLite ledger (``storage.sqlite``, by default
  $XDG_DATA_HOME/ccr-gateway/ledger.db, i.e. ~/.local/share/...), which ``usage report`` reads.

Connection strings go to the children in environment variables, as written in the policy (``${VAR}``
references expanded by the process that connects): never on a command line, where `ps` shows them.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from control_plane.policy import StorageSpec
from control_plane.policy.storage import DEFAULT_SPOOL_DIR
from extproc.usage_sink import NullSink, UsageSink

AMQP_ENV = "CCR_LEDGER_AMQP"
POSTGRES_ENV = "CCR_LEDGER_POSTGRES"
LEDGER_KINDS = ("none", "sqlite", "rabbitmq")


@dataclass(frozen=True)
class LedgerPlan:
    kind: str  # sqlite | rabbitmq | none (up --no-ledger)
    sqlite_path: str | None = None  # None: the local ledger's default (ledger.local.default_ledger_path)
    amqp: str | None = None
    postgres: str | None = None
    queue: str = "ccr.usage"
    spool_dir: str = DEFAULT_SPOOL_DIR
    spool_max_bytes: int = 256 * 1024 * 1024
    retention_days: int | None = None
    pool_min: int = 2
    pool_max: int = 10

    @property
    def uses_broker(self) -> bool:
        return self.kind == "rabbitmq"

    def environment(self) -> dict[str, str]:
        """For every child: the connection strings, as the policy wrote them."""
        if not self.uses_broker:
            return {}
        assert self.amqp is not None and self.postgres is not None
        return {AMQP_ENV: self.amqp, POSTGRES_ENV: self.postgres}

    def worker_arguments(self, index: int) -> list[str]:
        if self.kind == "none":
            return []
        if not self.uses_broker:
            return ["--ledger", "sqlite", *(["--ledger-sqlite", self.sqlite_path] if self.sqlite_path else [])]
        spool = os.path.join(os.path.expanduser(self.spool_dir), f"extproc-{index}")
        return [
            "--ledger",
            "rabbitmq",
            "--ledger-queue",
            self.queue,
            "--ledger-spool",
            spool,
            "--ledger-spool-max-bytes",
            str(self.spool_max_bytes),
        ]

    def writer_arguments(self) -> list[str]:
        retention = ["--retention", f"{self.retention_days} days"] if self.retention_days else []
        pool = ["--pool-min", str(self.pool_min), "--pool-max", str(self.pool_max)]
        return ["ledger", "--queue", self.queue, *pool, *retention]


def plan_for(storage: StorageSpec | None) -> LedgerPlan:
    if storage is None:
        return LedgerPlan("sqlite")
    if not storage.uses_broker:
        return LedgerPlan("sqlite", sqlite_path=storage.sqlite)
    assert storage.rabbitmq is not None and storage.postgres is not None
    return LedgerPlan(
        "rabbitmq",
        sqlite_path=storage.sqlite,
        amqp=storage.rabbitmq.url,
        postgres=storage.postgres.dsn,
        queue=storage.rabbitmq.queue,
        spool_dir=storage.spool.dir,
        spool_max_bytes=storage.spool.max_bytes,
        retention_days=storage.retention_days,
        pool_min=storage.postgres.pool_min,
        pool_max=storage.postgres.pool_max,
    )


# --- the worker's side ---------------------------------------------------------------------------


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ledger",
        choices=LEDGER_KINDS,
        default="none",
        help="where this worker's usage records go: the local SQLite ledger, RabbitMQ (then the "
        "ledger writer stores them in PostgreSQL), or nowhere (default none; `up` chooses from the "
        "policy's storage section)",
    )
    parser.add_argument(
        "--ledger-sqlite", metavar="PATH", help="the local ledger's file (default $XDG_DATA_HOME/ccr-gateway/ledger.db)"
    )
    parser.add_argument(
        "--ledger-amqp",
        default=os.environ.get(AMQP_ENV),
        metavar="URL",
        help=f"RabbitMQ URL (default ${AMQP_ENV}); ${{VAR}}s expanded",
    )
    parser.add_argument("--ledger-queue", default="ccr.usage", help="the usage queue (default ccr.usage)")
    parser.add_argument(
        "--ledger-spool", metavar="DIR", help="this worker's spool while RabbitMQ is away (one per worker)"
    )
    parser.add_argument("--ledger-spool-max-bytes", type=int, default=256 * 1024 * 1024, help="the spool's bound")


def open_sink(args: argparse.Namespace) -> UsageSink:
    """The sink the worker's arguments name; call it on the running event loop (the publisher
    starts its task there)."""
    if args.ledger == "sqlite":
        from ledger.local import SqliteSink

        return SqliteSink(os.path.expanduser(args.ledger_sqlite) if args.ledger_sqlite else None)
    if args.ledger == "rabbitmq":
        from ledger.publisher import PublisherConfig, RabbitPublisher
        from ledger.topology import QueueNames

        if not args.ledger_amqp:
            raise SystemExit(f"ccr-gateway extproc: --ledger rabbitmq needs --ledger-amqp or ${AMQP_ENV}")
        if not args.ledger_spool:
            raise SystemExit("ccr-gateway extproc: --ledger rabbitmq needs --ledger-spool DIR")
        config = PublisherConfig(
            url=args.ledger_amqp,
            spool_dir=os.path.expanduser(args.ledger_spool),
            names=QueueNames.for_queue(args.ledger_queue),
            spool_max_bytes=args.ledger_spool_max_bytes,
        )
        publisher = RabbitPublisher(config)
        publisher.start()
        return publisher
    return NullSink()
