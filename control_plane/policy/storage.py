"""The policy's optional ``storage:`` section: where the usage ledger keeps its records.

```yaml
storage:
  postgres: {dsn: "postgresql://ccr:${PGPASSWORD}@db:5432/ccr", pool_min: 2, pool_max: 10}
  rabbitmq: {url: "amqp://ccr:${RABBITMQ_PASSWORD}@mq:5672/", queue: ccr.usage, dead_letter_exchange: ccr.usage.dlx}
  spool: {dir: /var/lib/ccr-gateway/spool, max_bytes: 256MiB}   # while RabbitMQ is away
  retention: 90 days
  compression: true
  sqlite: ~/.local/share/ccr-gateway/ledger.db                  # without postgres and rabbitmq
```

Without ``postgres``/``rabbitmq`` the gateway keeps its ledger in the local SQLite file; with them,
ext_proc publishes to the queue and the writer moves batches into PostgreSQL, so the two go
together. ``${VAR}`` references are kept as written: the process that connects expands them, so a
secret never sits in the policy, a snapshot or a log line. Nothing here echoes a connection string
back in a message, in case one holds a password anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ccr.v1.secret_ref import ReferenceError, is_reference, parse_reference
from control_plane.policy.yaml_check import Checker, Located, join, kind_of

DEFAULT_SQLITE_PATH = "~/.local/share/ccr-gateway/ledger.db"
DEFAULT_SPOOL_DIR = "~/.local/share/ccr-gateway/spool"
DEFAULT_SPOOL_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_QUEUE = "ccr.usage"
DEFAULT_DEAD_LETTER_EXCHANGE = "ccr.usage.dlx"
_FIELDS = ("postgres", "rabbitmq", "spool", "retention", "compression", "sqlite")
_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_AMQP_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")  # queue and exchange names, as RabbitMQ allows them
_RETENTION = re.compile(r"^(\d+)\s*(day|days|week|weeks)$")
_SIZE = re.compile(r"^(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_MAX_POOL = 1000


@dataclass(frozen=True, slots=True)
class PostgresSpec:
    dsn: str  # as written: ${VAR} references unexpanded
    pool_min: int = 2
    pool_max: int = 10


@dataclass(frozen=True, slots=True)
class RabbitMQSpec:
    url: str  # as written: ${VAR} references unexpanded
    queue: str = DEFAULT_QUEUE
    dead_letter_exchange: str = DEFAULT_DEAD_LETTER_EXCHANGE


@dataclass(frozen=True, slots=True)
class SpoolSpec:
    """Where a publisher keeps batches while RabbitMQ is away (one directory per process under it)."""

    dir: str = DEFAULT_SPOOL_DIR
    max_bytes: int = DEFAULT_SPOOL_MAX_BYTES


@dataclass(frozen=True, slots=True)
class StorageSpec:
    postgres: PostgresSpec | None = None  # with rabbitmq, or neither (then the SQLite ledger)
    rabbitmq: RabbitMQSpec | None = None
    spool: SpoolSpec = field(default_factory=SpoolSpec)
    retention_days: int | None = None  # None: records are kept until deleted by hand
    compression: bool = False
    sqlite: str = DEFAULT_SQLITE_PATH  # as written: ~ and ${VAR} unexpanded

    @property
    def uses_broker(self) -> bool:
        """True: RabbitMQ and PostgreSQL; False: the local SQLite ledger."""
        return self.rabbitmq is not None


def parse_storage(check: Checker, at: Located, path: str = "storage") -> StorageSpec | None:
    """``storage:`` checked; None when it has problems (recorded in ``check``)."""
    before = len(check.problems)
    fields = check.mapping(at, path, _FIELDS)
    postgres = _postgres(check, fields["postgres"], join(path, "postgres")) if "postgres" in fields else None
    rabbitmq = _rabbitmq(check, fields["rabbitmq"], join(path, "rabbitmq")) if "rabbitmq" in fields else None
    if ("postgres" in fields) != ("rabbitmq" in fields):
        check.problem(at, path, "postgres and rabbitmq go together: the writer reads the queue")
    spool = _spool(check, fields["spool"], join(path, "spool")) if "spool" in fields else SpoolSpec()
    retention_days = None
    if "retention" in fields:
        retention_days = _retention(check, fields["retention"], join(path, "retention"))
    compression = False
    if "compression" in fields:
        flag = fields["compression"]
        if isinstance(flag.value, bool):
            compression = flag.value
        else:
            check.problem(flag, join(path, "compression"), f"must be true or false, got {kind_of(flag.value)}")
    sqlite = DEFAULT_SQLITE_PATH
    if "sqlite" in fields:
        sqlite = _literal(check, fields["sqlite"], join(path, "sqlite")) or sqlite
    if len(check.problems) > before:
        return None
    return StorageSpec(postgres, rabbitmq, spool or SpoolSpec(), retention_days, compression, sqlite)


def _postgres(check: Checker, at: Located, path: str) -> PostgresSpec | None:
    fields = check.mapping(at, path, ("dsn", "pool_min", "pool_max"), required=("dsn",))
    dsn = _connection(check, fields["dsn"], join(path, "dsn"), ("postgresql", "postgres")) if "dsn" in fields else None
    pool_min = check.integer(fields["pool_min"], join(path, "pool_min"), 0, _MAX_POOL) if "pool_min" in fields else 2
    pool_max = check.integer(fields["pool_max"], join(path, "pool_max"), 1, _MAX_POOL) if "pool_max" in fields else 10
    if pool_min is not None and pool_max is not None and pool_min > pool_max:
        where = fields.get("pool_min", at)
        check.problem(where, join(path, "pool_min"), f"must not exceed pool_max ({pool_max}), got {pool_min}")
        return None
    if dsn is None or pool_min is None or pool_max is None:
        return None
    return PostgresSpec(dsn, pool_min, pool_max)


def _rabbitmq(check: Checker, at: Located, path: str) -> RabbitMQSpec | None:
    fields = check.mapping(at, path, ("url", "queue", "dead_letter_exchange"), required=("url",))
    url = _connection(check, fields["url"], join(path, "url"), ("amqp", "amqps")) if "url" in fields else None
    names = {}
    for key in ("queue", "dead_letter_exchange"):
        if key in fields:
            names[key] = check.string(fields[key], join(path, key), _AMQP_NAME, "RabbitMQ name ([A-Za-z0-9_.:-])")
    if url is None or None in names.values():
        return None
    return RabbitMQSpec(url, **{key: value for key, value in names.items() if value is not None})


def _spool(check: Checker, at: Located, path: str) -> SpoolSpec | None:
    fields = check.mapping(at, path, ("dir", "max_bytes"))
    spool = SpoolSpec()
    if "dir" in fields:
        directory = _literal(check, fields["dir"], join(path, "dir"))
        spool = SpoolSpec(directory or spool.dir, spool.max_bytes)
    if "max_bytes" in fields:
        size = _size(check, fields["max_bytes"], join(path, "max_bytes"))
        spool = SpoolSpec(spool.dir, size or spool.max_bytes)
    return spool


def _connection(check: Checker, at: Located, path: str, schemes: tuple[str, ...]) -> str | None:
    """A connection URL whose scheme is one of ``schemes``, a whole ``${VAR}``, or a whole
    ``vault:<mount>/data/<path>#<field>`` (read when connecting). Messages never repeat the value:
    it may hold a password."""
    text = _literal(check, at, path)
    if text is None:
        return None
    if _REFERENCE.fullmatch(text):  # the whole URL comes from the environment: nothing to check here
        return text
    if is_reference(text):  # the whole URL is kept in Vault (ccr.v1.vault_refs)
        try:
            parse_reference(text)
        except ReferenceError as exc:
            check.problem(at, path, f"{text!r} {exc}")
            return None
        return text
    expected = " or ".join(f"{scheme}://" for scheme in schemes)
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        check.problem(at, path, f"is not a valid URL: expected {expected}... or a ${{VAR}} reference")
        return None
    if parts.scheme not in schemes:
        check.problem(at, path, f"must be a URL starting with {expected}, a ${{VAR}} or a vault: reference")
        return None
    if password and not _REFERENCE.search(password):
        check.warning(at, path, "holds a password: write it as a ${VAR} reference, set in the gateway's environment")
    return text


def _literal(check: Checker, at: Located, path: str) -> str | None:
    """A non-empty string whose ``${...}`` references name valid variables (kept unexpanded)."""
    text = check.string(at, path)
    if text is None:
        return None
    for match in _REFERENCE.finditer(text):
        if not _VARIABLE.match(match.group(1)):
            check.problem(at, path, f"${{{match.group(1)}}} does not name an environment variable")
            return None
    if "${" in _REFERENCE.sub("", text):
        check.problem(at, path, "has a ${ without its closing }")
        return None
    return text


def _retention(check: Checker, at: Located, path: str) -> int | None:
    text = at.value
    match = _RETENTION.match(text.strip()) if isinstance(text, str) else None
    if match is None or int(match[1]) == 0:
        shown = repr(text) if isinstance(text, str) else kind_of(text)
        check.problem(at, path, f"must be a period like '90 days' or '12 weeks', got {shown}")
        return None
    return int(match[1]) * (7 if match[2].startswith("week") else 1)


def _size(check: Checker, at: Located, path: str, low: int = 1024 * 1024, high: int | None = None) -> int | None:
    """A size in bytes: ``268435456``, ``256MiB``, ``1GB``, between ``low`` and ``high``."""
    value = at.value
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.match(value.strip()) if isinstance(value, str) else None
        if match is None:
            shown = repr(value) if isinstance(value, str) else kind_of(value)
            check.problem(at, path, f"must be a size like 268435456, 256MiB or 1GB, got {shown}")
            return None
        size = int(match[1]) * _SIZE_UNITS[match[2]]
    if size < low or (high is not None and size > high):
        bounds = (
            f"at least {_shown_size(low)}" if high is None else f"between {_shown_size(low)} and {_shown_size(high)}"
        )
        check.problem(at, path, f"must be {bounds}, got {size} bytes")
        return None
    return size


def _shown_size(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size} bytes"
