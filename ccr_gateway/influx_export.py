"""`ccr-gateway influx-export`: the gateway's metrics page, every second, into InfluxDB v2.

A process of its own, run beside `up` (a sidecar): it reads ``/metrics`` like any scraper, so the
gateway neither knows about it nor waits for it, and InfluxDB being slow or away costs the gateway
nothing. Each scrape becomes InfluxDB line protocol, one line per sample, all stamped with the
scrape's second:

    ccr_requests_total,client_api=anthropic,status_class=2xx value=1234.0 1767225600

- the measurement is the sample's Prometheus name (``..._total``, ``..._count``, ``..._sum``, and
  ``..._bucket`` with its ``le`` tag when --buckets asks for them), so a Flux query names what a
  PromQL query names; the labels are the tags (an empty label is no tag: InfluxDB refuses empty
  tag values); the one field is ``value``, always a float (a field's type must never change);
- counters stay cumulative, as Prometheus has them: a rate is Flux's ``derivative(nonNegative:
  true)``, which also absorbs a gateway restart;
- NaN and infinities are skipped (InfluxDB stores neither); ``_created`` samples too.

Lines wait in a bounded buffer and are POSTed in batches to ``/api/v2/write?org=&bucket=&
precision=s`` with ``Authorization: Token ...``, the token read from an environment variable
(never an option: a command line is visible to every user of the machine, and never logged). A
batch leaves the buffer only once InfluxDB took it (2xx); if InfluxDB is away, the batch goes back
and the writer retries with exponential backoff, one log line when the outage starts and one when
it ends (with what was lost); a full buffer drops its oldest lines and counts them. A line sent
twice (InfluxDB took it but the answer was lost) overwrites itself: same series, same second. The
exporter's own counts are lines too (``ccr_influx_export_*``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import logging
import math
import os
import re
import signal
import sys
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("ccr_gateway.influx_export")

DEFAULT_METRICS_URL = "http://127.0.0.1:9464/metrics"
DEFAULT_TOKEN_ENV = "INFLUX_TOKEN"
EXIT_USAGE = 2

# --- line protocol (no I/O) --------------------------------------------------------------------

REPLACEMENT = "\ufffd"
_NONPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")
_MEASUREMENT_SPECIALS = ", "
_KEY_SPECIALS = ",= "  # tag keys, tag values and field keys


def _representable(text: str, specials: str) -> str:
    """What line protocol cannot carry, as U+FFFD: control characters (a newline ends the line),
    and a backslash before a backslash, a special character or the end of the text (parsers
    disagree on those: the v1 parser skips the character after any backslash, the v2 one reads
    ``\\\\`` as one backslash)."""
    text = _NONPRINTABLE.sub(REPLACEMENT, text)
    return re.sub(r"\\(?=[\\" + re.escape(specials) + r"]|$)", REPLACEMENT, text)


def _escaped(text: str, specials: str) -> str:
    text = _representable(text, specials)
    for char in specials:
        text = text.replace(char, "\\" + char)
    return text


def _name(text: str, prefix: str) -> str:
    """Names must not start with ``_`` (InfluxDB's own) nor be ``time``; a measurement must not
    start with ``#`` (the line would be a comment)."""
    if text.startswith(("_", "#")) or text == "time":
        return prefix + ("" if text.startswith("_") else "_") + text
    return text


def escape_measurement(name: str) -> str:
    return _escaped(_name(name, "metric"), _MEASUREMENT_SPECIALS)


def escape_key(key: str) -> str:
    return _escaped(_name(key, "label"), _KEY_SPECIALS)


def escape_tag_value(value: str) -> str:
    return _escaped(value, _KEY_SPECIALS)


def encode_line(measurement: str, tags: Mapping[str, str], value: float, timestamp_s: int) -> str | None:
    """One point with the float field ``value``; None for NaN and infinities. Tags sorted (what
    InfluxDB recommends), empty ones left out (it refuses them)."""
    if not math.isfinite(value):
        return None
    tag_set = "".join(sorted(f",{escape_key(k)}={escape_tag_value(v)}" for k, v in tags.items() if k and v))
    return f"{escape_measurement(measurement)}{tag_set} value={float(value)!r} {timestamp_s}"


def exposition_to_lines(
    text: str, timestamp_s: int, *, buckets: bool = False, static_tags: Mapping[str, str] | None = None
) -> list[str]:
    """Every sample of a Prometheus text page as a line. ``static_tags`` are added to each (a
    metric's own label of the same name wins). Raises ValueError on a page that does not parse."""
    families = list(text_string_to_metric_families(text))
    # prometheus_client writes when each counter or histogram series was created as a gauge
    # family of its own (name_created): a timestamp, not a measurement.
    cumulative = {family.name for family in families if family.type in ("counter", "histogram", "summary")}
    lines = []
    for family in families:
        if family.name.endswith("_created") and family.name.removesuffix("_created") in cumulative:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and family.type == "histogram" and not buckets:
                continue
            line = encode_line(sample.name, {**(static_tags or {}), **sample.labels}, sample.value, timestamp_s)
            if line is not None:
                lines.append(line)
    return lines


# --- buffering and retrying (no I/O) -----------------------------------------------------------


class LineBuffer:
    """Lines waiting for InfluxDB, oldest first, at most ``capacity``: past it the oldest go."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.dropped = 0
        self._lines: deque[str] = deque()

    def __len__(self) -> int:
        return len(self._lines)

    def add(self, lines: Iterable[str]) -> None:
        self._lines.extend(lines)
        self._trim()

    def take(self, at_most: int) -> list[str]:
        """The oldest lines, out of the buffer (give_back returns them if the write fails)."""
        return [self._lines.popleft() for _ in range(min(at_most, len(self._lines)))]

    def give_back(self, batch: list[str]) -> None:
        """A batch that was not written, back in front of what came since."""
        self._lines.extendleft(reversed(batch))
        self._trim()

    def _trim(self) -> None:
        while len(self._lines) > self.capacity:
            self._lines.popleft()
            self.dropped += 1


class Backoff:
    """Delays between failed writes: doubling from ``first`` to ``maximum``, back to none on success."""

    def __init__(self, first: float = 1.0, maximum: float = 60.0) -> None:
        self.first, self.maximum = first, maximum
        self.delay: float | None = None

    def failed(self, retry_after: float | None = None) -> float:
        self.delay = self.first if self.delay is None else min(self.delay * 2, self.maximum)
        if retry_after is not None:  # the server's own wish, within reason
            self.delay = min(max(self.delay, retry_after), self.maximum)
        return self.delay

    def succeeded(self) -> None:
        self.delay = None


@dataclass
class Outage:
    """One log line when something starts failing, one when it works again: not one per try."""

    what: str
    since: float | None = None
    failures: int = 0

    def failed(self, now: float, reason: str) -> str | None:
        self.failures += 1
        if self.since is not None:
            return None
        self.since = now
        return f"{self.what} failing: {reason} (retrying; logged once until it works again)"

    def recovered(self, now: float) -> str | None:
        if self.since is None:
            return None
        message = f"{self.what} works again after {now - self.since:.0f} s and {self.failures} failed tries"
        self.since, self.failures = None, 0
        return message


def retry_after_seconds(header: str | None) -> float | None:
    try:
        return float(header) if header else None
    except ValueError:
        return None  # an HTTP date: rare from InfluxDB; our own backoff will do


def is_refused_data(status: int) -> bool:
    """Statuses that say the lines themselves are bad (malformed, too large, unprocessable):
    sending them again cannot help. Everything else that is not 2xx is retried: 401/403/404 (a
    token's permission or a missing bucket) can be fixed on InfluxDB's side while we hold the data."""
    return status in (400, 413, 422)


# --- the exporter (I/O) ------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportConfig:
    metrics_urls: tuple[str, ...]
    influx_url: str
    org: str
    bucket: str
    token: str = field(repr=False)  # never in a repr, a log line or an error
    interval_s: float = 1.0
    batch_lines: int = 5000
    buffer_lines: int = 200_000
    gzip: bool = False
    buckets: bool = False
    static_tags: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0
    retry_first_s: float = 1.0
    retry_max_s: float = 60.0

    @property
    def write_url(self) -> str:
        query = urllib.parse.urlencode({"org": self.org, "bucket": self.bucket, "precision": "s"})
        return f"{self.influx_url.rstrip('/')}/api/v2/write?{query}"


class InfluxExporter:
    """Scrapes on one task, writes on another: a slow InfluxDB never delays a scrape."""

    def __init__(
        self, config: ExportConfig, session: aiohttp.ClientSession, clock: Callable[[], float] = time.time
    ) -> None:
        """``clock``: the wall clock the points are stamped with (durations use a monotonic one)."""
        self.config = config
        self.session = session
        self.clock = clock
        self.buffer = LineBuffer(config.buffer_lines)
        self.backoff = Backoff(config.retry_first_s, config.retry_max_s)
        self.written_lines = self.refused_lines = self.failed_writes = self.failed_scrapes = 0
        self._write_outage = Outage(f"writing to InfluxDB at {config.influx_url}")
        self._scrape_outages = {url: Outage(f"reading {url}") for url in config.metrics_urls}
        self._dropped_at_outage_start = 0
        self._lines_waiting = asyncio.Event()
        headers = {"Authorization": f"Token {config.token}", "Content-Type": "text/plain; charset=utf-8"}
        if config.gzip:
            headers["Content-Encoding"] = "gzip"
        self._headers = headers

    async def scrape_once(self) -> None:
        """Every metrics page, as lines stamped with this second, then the exporter's own counts."""
        timestamp = int(self.clock())
        for url, outage in self._scrape_outages.items():
            try:
                async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=self.config.timeout_s)) as answer:
                    if answer.status != 200:
                        raise ValueError(f"HTTP {answer.status}")
                    text = await answer.text()
                lines = exposition_to_lines(
                    text, timestamp, buckets=self.config.buckets, static_tags=self.config.static_tags
                )
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                self.failed_scrapes += 1
                if message := outage.failed(time.monotonic(), _reason(exc)):
                    log.warning(message)
                continue
            if message := outage.recovered(time.monotonic()):
                log.warning(message)
            self.buffer.add(lines)
        self.buffer.add(self._own_lines(timestamp))
        self._lines_waiting.set()

    def _own_lines(self, timestamp: int) -> list[str]:
        counts = {
            "written_lines_total": self.written_lines,
            "dropped_lines_total": self.buffer.dropped,
            "refused_lines_total": self.refused_lines,
            "failed_writes_total": self.failed_writes,
            "failed_scrapes_total": self.failed_scrapes,
            "buffered_lines": len(self.buffer),
        }
        lines = (
            encode_line(f"ccr_influx_export_{name}", self.config.static_tags, value, timestamp)
            for name, value in counts.items()
        )
        return [line for line in lines if line]

    async def write_once(self) -> bool:
        """POST the oldest batch; True when InfluxDB took it (or refused its content for good)."""
        batch = self.buffer.take(self.config.batch_lines)
        if not batch:
            return True
        body = ("\n".join(batch) + "\n").encode()
        if self.config.gzip:
            body = gzip.compress(body, compresslevel=6)
        status, detail, retry_after = None, "", None
        try:
            async with self.session.post(
                self.config.write_url,
                data=body,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
            ) as answer:
                status = answer.status
                detail = " ".join((await answer.text()).split())[:300]  # InfluxDB's JSON, on one line
                retry_after = retry_after_seconds(answer.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            detail = _reason(exc)
        except asyncio.CancelledError:  # stopping mid-write: the batch is not lost, the final drain sends it
            self.buffer.give_back(batch)
            raise
        now = time.monotonic()
        if status is not None and (200 <= status < 300 or is_refused_data(status)):
            if 200 <= status < 300:
                self.written_lines += len(batch)
            else:  # a bug of ours, or a line InfluxDB cannot take: say so each time, keep the rest flowing
                self.refused_lines += len(batch)
                log.error("InfluxDB refused %d lines (HTTP %s): %s", len(batch), status, detail)
            self.backoff.succeeded()
            if message := self._write_outage.recovered(now):
                lost = self.buffer.dropped - self._dropped_at_outage_start
                log.warning("%s; %d lines dropped meanwhile (buffer full)", message, lost)
            return True
        self.failed_writes += 1
        if self._write_outage.since is None:
            self._dropped_at_outage_start = self.buffer.dropped
        self.buffer.give_back(batch)
        reason = f"HTTP {status}: {detail}" if status is not None else detail
        if message := self._write_outage.failed(now, reason):
            log.warning(
                "%s; up to %d lines are kept meanwhile, the oldest dropped past that", message, self.buffer.capacity
            )
        await asyncio.sleep(self.backoff.failed(retry_after))
        return False

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set; then one last try (bounded by the timeout) to write what is left."""
        writer = asyncio.create_task(self._write_loop(stop))
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        try:
            while not stop.is_set():
                await self.scrape_once()
                next_tick += self.config.interval_s
                if next_tick < loop.time():  # a slow scrape: skip the seconds it overran
                    next_tick = loop.time() + self.config.interval_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), next_tick - loop.time())
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain(), self.config.timeout_s)
        if self.buffer:
            log.warning("stopped with %d lines not written to InfluxDB", len(self.buffer))

    async def _write_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self.buffer:
                self._lines_waiting.clear()
                await self._lines_waiting.wait()
                continue
            await self.write_once()

    async def _drain(self) -> None:
        while self.buffer and await self.write_once():
            pass


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# --- command line ------------------------------------------------------------------------------


class _RefuseToken(argparse.Action):
    """``--token``: refused without echoing it (argparse would also read it as --token-env)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        parser.error("the token is never an option (any user can read a command line): put it in $INFLUX_TOKEN")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Read the gateway's metrics page every second and write it to InfluxDB v2 in line protocol "
        "(one line per sample; measurement: the sample's name, tags: its labels, field: value). Run it "
        "beside `ccr-gateway up`, e.g. as a sidecar; the token comes from an environment variable. "
        "Buffers (bounded) and retries while InfluxDB is away. docs/observability.md, 'InfluxDB export'."
    )
    parser.add_argument(
        "--metrics",
        metavar="URL",
        action="append",
        help=f"a metrics page to read; repeat for several, e.g. Envoy's :9901/stats/prometheus "
        f"(default {DEFAULT_METRICS_URL}, what `up` serves)",
    )
    parser.add_argument(
        "--influx", metavar="URL", required=True, help="InfluxDB's base URL, e.g. http://127.0.0.1:8086"
    )
    parser.add_argument("--org", required=True, help="InfluxDB organization (name)")
    parser.add_argument(
        "--bucket", required=True, help="bucket of the raw points, e.g. metrics (see the retention docs)"
    )
    parser.add_argument(
        "--token-env",
        metavar="NAME",
        default=DEFAULT_TOKEN_ENV,
        help=f"environment variable holding the write token (default {DEFAULT_TOKEN_ENV}); never an option",
    )
    parser.add_argument("--token", action=_RefuseToken, help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes, at least 1 (default 1)")
    parser.add_argument(
        "--tag", metavar="KEY=VALUE", action="append", default=[], help="a tag on every line, e.g. gateway=gw-1"
    )
    parser.add_argument("--buckets", action="store_true", help="also write histogram buckets (_bucket, tag le)")
    parser.add_argument("--gzip", action="store_true", help="gzip each write (Content-Encoding: gzip)")
    parser.add_argument("--batch-lines", type=int, default=5000, help="lines per write at most (default 5000)")
    parser.add_argument(
        "--buffer-lines",
        type=int,
        default=200_000,
        help="lines kept while InfluxDB is away, the oldest dropped past it (default 200000)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per scrape or write (default 10)")


def config_from(args: argparse.Namespace, environ: Mapping[str, str]) -> ExportConfig:
    """The options checked; ValueError says which one is wrong."""
    token = environ.get(args.token_env, "").strip()  # a token read from a file ends with a newline
    if not token:
        raise ValueError(f"${args.token_env} is not set: export the InfluxDB write token in it")
    urls = tuple(args.metrics or [DEFAULT_METRICS_URL])
    for url in (*urls, args.influx):
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"{url!r} is not an http(s) URL")
    if args.interval < 1:
        raise ValueError("--interval must be at least 1 s (points are written with one-second precision)")
    if args.batch_lines < 1 or args.buffer_lines < args.batch_lines:
        raise ValueError("--batch-lines must be at least 1 and --buffer-lines at least --batch-lines")
    tags = {}
    for item in args.tag:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"--tag {item!r}: expected KEY=VALUE")
        tags[key] = value
    return ExportConfig(
        metrics_urls=urls,
        influx_url=args.influx,
        org=args.org,
        bucket=args.bucket,
        token=token,
        interval_s=args.interval,
        batch_lines=args.batch_lines,
        buffer_lines=args.buffer_lines,
        gzip=args.gzip,
        buckets=args.buckets,
        static_tags=tags,
        timeout_s=args.timeout,
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from(args, os.environ)
    except ValueError as exc:
        print(f"ccr-gateway influx-export: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with aiohttp.ClientSession() as session:
            log.info(
                "exporting %s every %g s to %s (org %s, bucket %s)",
                ", ".join(config.metrics_urls),
                config.interval_s,
                config.influx_url,
                config.org,
                config.bucket,
            )
            await InfluxExporter(config, session).run(stop)

    asyncio.run(main())
    return 0
