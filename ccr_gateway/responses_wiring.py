"""Where the ext_proc workers keep stored responses (the Responses API's ``store`` and
``previous_response_id``; docs/responses.md, "Stored responses").

- ``$CCR_RESPONSES_POSTGRES``, else the ledger's ``$CCR_LEDGER_POSTGRES`` (set for every worker when
  the policy's storage has PostgreSQL): PostgreSQL, the table migrated when the worker starts;
- otherwise an SQLite file beside the local ledger (``responses.db`` in the folder of
  ``--ledger-sqlite``, by default $XDG_DATA_HOME/ccr-gateway/), shared by the workers of one `up`.

Whether anything is kept is the policy's (``responses.store``), read per request; the store is
opened when the worker starts and costs nothing until a response is stored. A store that cannot be
opened is logged, and the worker keeps none (previous_response_id then gets a 400 saying so).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ccr_gateway.ledger_wiring import POSTGRES_ENV

if TYPE_CHECKING:
    from extproc.responses_store import ResponseStore

RESPONSES_POSTGRES_ENV = "CCR_RESPONSES_POSTGRES"
log = logging.getLogger("ccr.responses")


def postgres_dsn(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get(RESPONSES_POSTGRES_ENV) or environ.get(POSTGRES_ENV) or ""


def sqlite_path(ledger_sqlite: str | None) -> Path:
    from extproc.responses_store import FILE_NAME
    from ledger.local import default_ledger_path

    ledger = Path(ledger_sqlite).expanduser() if ledger_sqlite else default_ledger_path()
    return ledger.parent / FILE_NAME


@contextlib.asynccontextmanager
async def opened_responses(args: argparse.Namespace) -> AsyncIterator[ResponseStore | None]:
    store: ResponseStore | None = None
    dsn = postgres_dsn()
    try:
        if dsn:
            from ccr.v1.env_refs import expand_env
            from extproc.responses_store_pg import PostgresResponseStore

            store = await PostgresResponseStore.open(expand_env(dsn))
        else:
            from extproc.responses_store import SqliteResponseStore

            store = SqliteResponseStore(sqlite_path(getattr(args, "ledger_sqlite", None)))
    except Exception as exc:
        log.error("stored responses are off on this worker: the store cannot be opened: %s", exc)
        store = None
    try:
        yield store
    finally:
        if store is not None:
            await store.close()
