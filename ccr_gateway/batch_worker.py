"""`ccr-gateway batch-worker`: one batch worker process, composed from the batches/ adapters.

Each process runs, on one event loop:

- the feeder (``batches.feeder.Feeder``): keeps both lanes topped up from the store, in fair order;
- the dead-letter sweeper (``DeadLetterSweeper``): re-feeds or ends what died on the lanes;
- the consumers (``batches.worker.BatchWorker`` through ``LaneQueues.consume``): at most
  ``--concurrency`` items in flight, each sent through the gateway's own listener (``--gateway``);
- the expiry sweep: every ``EXPIRY_SWEEP_SECONDS``, batches past their 24 h window expire.

N processes are N workers. Every process feeds: the lanes' depth bounds how much each adds, and
the store's published marks keep a restarted (or a second) feeder from publishing again what is
on the broker already, so double publishing is bounded by a window and absorbed by the
idempotent result write. Without ``--amqp`` the lanes are in process (``LocalLanes``): one worker
process only, and its lanes die with it (the feeder then ignores the published marks and
publishes every queued item again on start).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time

from batches.feeder import DeadLetterSweeper, Feeder, FeederConfig, LaneQueues
from batches.lanes import BATCH, INTERACTIVE, RetryPolicy
from batches.store import BatchStore
from ccr_gateway.batch_api import add_store_arguments, default_store_path

log = logging.getLogger("ccr_gateway.batch_worker")

API_KEY_ENV = "CCR_BATCH_API_KEY"
AMQP_ENV = "CCR_BATCH_AMQP"
EXPIRY_SWEEP_SECONDS = 30.0
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_arguments(parser)  # the same store as `batch-api` and `batch` (default: the local file)
    parser.add_argument(
        "--amqp",
        metavar="URL",
        default=os.environ.get(AMQP_ENV) or None,
        help=f"RabbitMQ lanes, e.g. amqp://guest:guest@127.0.0.1:5672/ (default: ${AMQP_ENV}, else in-process "
        "lanes, one worker; the environment keeps the broker's password off the command line)",
    )
    parser.add_argument("--amqp-prefix", default="", help="prefix of every queue and exchange name (tests)")
    parser.add_argument(
        "--gateway",
        default="http://127.0.0.1:8080",
        metavar="URL",
        help="the gateway's own Envoy listener every item is sent through (default %(default)s)",
    )
    parser.add_argument(
        "--api-key-env",
        default=API_KEY_ENV,
        metavar="NAME",
        help="environment variable holding this worker's own API key (default %(default)s; unset: none); with "
        "its key id in the policy's batches.workers, each item is sent for the key that created its batch",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="items in flight at once (default %(default)s)")
    parser.add_argument("--max-attempts", type=int, default=5, help="transient failures per item before it errors")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one item may take (default %(default)s)")
    parser.add_argument(
        "--batch-window",
        type=int,
        default=FeederConfig().windows[BATCH.name],
        help="messages this process's feeder keeps ready on the batch lane (default %(default)s)",
    )
    parser.add_argument("--metrics-port", type=int, default=0, help="serve /metrics on 127.0.0.1:PORT (0: off)")


def run(args: argparse.Namespace) -> int:
    if min(args.concurrency, args.max_attempts, args.batch_window) < 1:
        print(
            "ccr-gateway batch-worker: --concurrency, --max-attempts and --batch-window are at least 1", file=sys.stderr
        )
        return EXIT_USAGE
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr="127.0.0.1")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))
    return 0


def _store(args: argparse.Namespace) -> BatchStore:
    if args.postgres and not args.sqlite:
        from batches.pg_store import PostgresBatchStore

        return PostgresBatchStore(args.postgres, max_connections=max(4, min(args.concurrency, 20)))
    from batches.sqlite_store import SqliteBatchStore

    return SqliteBatchStore(args.sqlite or default_store_path())


def _lanes(args: argparse.Namespace) -> LaneQueues:
    if args.amqp:
        from batches.rabbit_lanes import RabbitLanes, RabbitLanesConfig

        return RabbitLanes(RabbitLanesConfig(args.amqp, prefix=args.amqp_prefix, connection_name="ccr-batch-worker"))
    from batches.local_lanes import LocalLanes

    return LocalLanes()


async def _main(args: argparse.Namespace) -> None:
    from batches.worker import BatchWorker, GatewaySender, WorkerConfig

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    store, lanes = _store(args), _lanes(args)
    sender = GatewaySender(args.gateway, connections=args.concurrency, timeout=args.timeout)
    try:
        await lanes.declare()
        # Durable lanes keep what was published: trust the marks. In-process ones do not.
        windows = {**FeederConfig().windows, BATCH.name: args.batch_window}
        feeder = Feeder(store, lanes, FeederConfig(windows=windows, skip_published=bool(args.amqp)))
        config = WorkerConfig(os.environ.get(args.api_key_env) or None, RetryPolicy(max_attempts=args.max_attempts))
        worker = BatchWorker(store, sender, lambda message, delay: feeder.put_back(message, delay=delay), config)
        log.info(
            "batch worker: store %s, lanes %s, gateway %s, %d in flight",
            store.description,
            "RabbitMQ" if args.amqp else "in process",
            args.gateway,
            args.concurrency,
        )
        tasks = [
            asyncio.create_task(feeder.run(stop), name="feeder"),
            asyncio.create_task(lanes.consume_dead_letters(DeadLetterSweeper(store, feeder), stop), name="sweeper"),
            asyncio.create_task(
                lanes.consume([INTERACTIVE, BATCH], worker, stop, concurrency=args.concurrency), name="consumer"
            ),
            asyncio.create_task(_expire_batches(store, stop), name="expiry"),
        ]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("batch worker: %s failed: %r; stopping", task.get_name(), task.exception())
                stop.set()
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await sender.close()
        await lanes.close()
        await store.close()
    log.info("batch worker stopped")


async def _expire_batches(store: BatchStore, stop: asyncio.Event) -> None:
    """The 24 h window: batches past it have their unfinished items expired; and retention: results
    past it dropped, input files past their expiry deleted. Also a batch whose last item ended in a
    process that died before it settled the batch (PostgreSQL settles after the item's own write)
    is ended here. Idempotent, so every worker process may run it."""
    while not stop.is_set():
        try:
            while await store.expire_due(now=time.time()):
                pass
            for active in await store.active_batches():
                if active.queued == 0:  # maybe all final: settle probes for an unfinished item first
                    await store.settle(active.batch_id, now=time.time())
            purged = await store.purge(now=time.time())
            if purged.archived or purged.deleted_files:
                log.info(
                    "batch retention: results of %d batches dropped, %d files deleted",
                    len(purged.archived),
                    purged.deleted_files,
                )
        except Exception:
            log.exception("batch worker: expiry or retention sweep failed; retrying")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), EXPIRY_SWEEP_SECONDS)
