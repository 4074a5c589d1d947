"""`ccr-gateway slo report`: availability, error budget and the gateway's latency over a window,
judged against the seed's targets, from what Prometheus scraped of the gateway (the metrics are
defined in extproc/genai_metrics.py; docs/observability.md "SLO report" explains every figure).

- availability: the share of answered requests not answered 5xx. A 4xx counts as served (the
  gateway did its job); a 0xx, the client gone before any answer, counts neither way (nothing was
  answered to judge, and impatient clients must not spend the error budget): it is shown, and a
  hanging gateway still shows in the latency, where a 0xx's overhead is observed like any other.
- latency: ``ccr_gateway_overhead_seconds`` (the request's time minus the provider's). A quantile
  is known to its bucket; histogram_quantile interpolates inside it, so both are reported. A target
  on a bucket bound (50, 100, 200 ms are) is judged exactly, from the share of requests within it.

The core (parse_window, queries, build_report, render_table, to_json) does no I/O;
PrometheusClient is the thin part that asks Prometheus' HTTP API. Exit status: 0 (with --check:
every target met), 1 (--check: a target missed, or an overall figure not measured), 2 (an error:
Prometheus unreachable, nothing in the window, a bad option), said in one line.
"""

from __future__ import annotations

import argparse
import enum
import json
import math
import re
import sys
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

EXIT_OK, EXIT_MISSED, EXIT_ERROR = 0, 1, 2
ALL = "all client APIs"
OVERHEAD = "ccr_gateway_overhead_seconds"
DURATION = "gen_ai_server_request_duration_seconds"
REQUESTS = "ccr_requests_total"

_WINDOW = re.compile(r"([1-9][0-9]*)([smhdwy])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


class SloError(Exception):
    """Something the user must fix or know, said in one line (never a traceback)."""


class Verdict(enum.Enum):
    MET = "met"
    MISSED = "missed"
    NO_DATA = "no data"


@dataclass(frozen=True, slots=True)
class Targets:
    """The seed's service levels: 99.99% available; overhead p50 < 50 ms, p95 < 100 ms, p99 < 200 ms."""

    availability: float = 0.9999
    latency: tuple[tuple[float, float], ...] = ((0.5, 0.05), (0.95, 0.1), (0.99, 0.2))  # (quantile, seconds)


SEED_TARGETS = Targets()


@dataclass(frozen=True, slots=True)
class Window:
    text: str  # as PromQL writes a range: 30d
    seconds: int


@dataclass(frozen=True, slots=True)
class Sample:
    """One element of an instant vector."""

    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class Availability:
    answered: float  # 1xx..5xx; 0xx excluded
    failed: float  # 5xx
    client_errors: float  # 4xx
    client_gone: float  # 0xx
    target: float

    @property
    def ratio(self) -> float | None:
        return 1 - self.failed / self.answered if self.answered > 0 else None

    @property
    def budget_allowed(self) -> float:
        """Failed requests the target allows over the window."""
        return (1 - self.target) * self.answered

    @property
    def verdict(self) -> Verdict:
        if self.ratio is None:
            return Verdict.NO_DATA
        return Verdict.MET if self.ratio >= self.target - 1e-12 else Verdict.MISSED  # exactly 99.99% meets it


@dataclass(frozen=True, slots=True)
class Quantile:
    quantile: float
    seconds: float | None  # histogram_quantile's estimate, interpolated inside the bucket
    bucket: tuple[float, float] | None  # (lower, upper] holding the quantile; upper may be +Inf


@dataclass(frozen=True, slots=True)
class LatencyCheck:
    figure: Quantile
    target_s: float
    share_within: float | None  # of the requests, those that took at most target_s (exact on a bucket bound)

    @property
    def verdict(self) -> Verdict:
        if self.share_within is not None:
            # A little slack for the float arithmetic of extrapolated counts.
            return Verdict.MET if self.share_within >= self.figure.quantile - 1e-9 else Verdict.MISSED
        if self.figure.seconds is None:
            return Verdict.NO_DATA
        return Verdict.MET if self.figure.seconds <= self.target_s else Verdict.MISSED


@dataclass(frozen=True, slots=True)
class Scope:
    name: str  # ALL or a client_api
    availability: Availability
    latency: tuple[LatencyCheck, ...]

    def missed(self) -> list[str]:
        out = []
        if self.availability.verdict is Verdict.MISSED:
            out.append(
                f"{self.name}: availability {_percent(self.availability.ratio)} < {_percent(self.availability.target, 2)}"
            )
        for check in self.latency:
            if check.verdict is not Verdict.MISSED:
                continue
            name, target = _quantile_name(check), _duration(check.target_s)
            if check.share_within is not None:
                needed = f"{check.figure.quantile * 100:g}%"
                out.append(
                    f"{self.name}: overhead {name} above {target} "
                    f"({check.share_within:.2%} of requests within it, {needed} needed)"
                )
            else:
                out.append(f"{self.name}: overhead {name} {_describe(check.figure)}, target < {target}")
        return out

    def unmeasured(self) -> list[str]:
        out = ["availability"] if self.availability.verdict is Verdict.NO_DATA else []
        out += [f"overhead {_quantile_name(c)}" for c in self.latency if c.verdict is Verdict.NO_DATA]
        return out


@dataclass(frozen=True, slots=True)
class SloReport:
    window: Window
    at: datetime
    prometheus: str
    scopes: tuple[Scope, ...]  # ALL first, then each client API
    whole_request: tuple[Quantile, ...] = field(default=())  # provider included; no target

    def missed(self) -> list[str]:
        return [line for scope in self.scopes for line in scope.missed()]


# --- input: the window and the queries -------------------------------------------------------


def parse_window(text: str) -> Window:
    """``1h``, ``7d``, ``30d``, ``2w``... (Prometheus' units: s m h d w y)."""
    match = _WINDOW.fullmatch(text.strip())
    if match is None:
        raise SloError(f"--since {text!r}: expected a duration like 1h, 7d, 30d or 2w (units s, m, h, d, w, y)")
    count, unit = int(match.group(1)), match.group(2)
    return Window(f"{count}{unit}", count * _UNIT_SECONDS[unit])


def parse_until(text: str, now: datetime) -> datetime:
    """``now``, an ISO date (its midnight UTC) or date and time (UTC unless it names an offset)."""
    value = text.strip()
    if value == "now":
        return now
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise SloError(
            f"--until {text!r}: expected now, an ISO date like 2026-02-01 or a time like 2026-02-01T12:00"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _increase_of_buckets(metric: str, window: Window, by: str) -> str:
    return f"sum by ({by}) (increase({metric}_bucket[{window.text}]))"


def _quantile_key(metric: str, quantile: float, by_api: bool) -> str:
    return f"{metric} q{quantile}" + (" by client_api" if by_api else "")


def queries(window: Window, targets: Targets = SEED_TARGETS) -> dict[str, str]:
    """Every PromQL query the report needs, by name; each evaluated at the report's end time."""
    out = {
        REQUESTS: f"sum by (client_api, status_class) (increase({REQUESTS}[{window.text}]))",
        f"{OVERHEAD} buckets": _increase_of_buckets(OVERHEAD, window, "client_api, le"),
        f"{DURATION} buckets": _increase_of_buckets(DURATION, window, "le"),
    }
    for quantile, _ in targets.latency:
        for metric, by_api in ((OVERHEAD, True), (OVERHEAD, False), (DURATION, False)):
            by = "client_api, le" if by_api else "le"
            out[_quantile_key(metric, quantile, by_api)] = (
                f"histogram_quantile({quantile}, {_increase_of_buckets(metric, window, by)})"
            )
    return out


def parse_vector(payload: Any) -> list[Sample]:
    """The samples of a ``/api/v1/query`` answer that must be an instant vector."""
    if not isinstance(payload, dict) or payload.get("status") != "success":
        error = payload.get("error") if isinstance(payload, dict) else None
        raise SloError(f"Prometheus answered an error: {error if error else repr(payload)}")
    data = payload.get("data") or {}
    if data.get("resultType") != "vector":
        raise SloError(f"Prometheus answered a {data.get('resultType')!r}, not an instant vector")
    try:
        return [Sample(dict(item["metric"]), float(item["value"][1])) for item in data["result"]]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise SloError(f"Prometheus answered an unexpected vector: {exc!r}") from None


# --- the report, from the answers ------------------------------------------------------------


def build_report(
    answers: Mapping[str, Sequence[Sample]],
    window: Window,
    at: datetime,
    prometheus: str = "",
    targets: Targets = SEED_TARGETS,
) -> SloReport:
    """``answers``: each query of ``queries()`` by name, with its samples (a missing name: no data)."""
    requests = [s for s in answers.get(REQUESTS, ()) if math.isfinite(s.value)]
    if not any(s.value > 0 for s in requests):
        raise SloError(
            f"no requests in the last {window.text} before {_iso(at)}: {REQUESTS} is empty there "
            "(is Prometheus scraping the gateway's /metrics, and is the window right?)"
        )
    buckets = answers.get(f"{OVERHEAD} buckets", ())
    apis = sorted(
        {s.labels.get("client_api", "") for s in requests} | {s.labels.get("client_api", "") for s in buckets}
    )
    scopes = [_scope(ALL, None, answers, targets)]
    scopes += [_scope(api or "(none)", api, answers, targets) for api in apis]
    whole = tuple(
        _quantile(quantile, answers, DURATION, None, _cumulative(answers.get(f"{DURATION} buckets", ()), None))
        for quantile, _ in targets.latency
    )
    return SloReport(window, at, prometheus, tuple(scopes), whole)


def _scope(name: str, api: str | None, answers: Mapping[str, Sequence[Sample]], targets: Targets) -> Scope:
    by_class: dict[str, float] = {}
    for sample in answers.get(REQUESTS, ()):
        if (api is None or sample.labels.get("client_api", "") == api) and math.isfinite(sample.value):
            status_class = sample.labels.get("status_class", "")
            by_class[status_class] = by_class.get(status_class, 0.0) + sample.value
    gone = by_class.pop("0xx", 0.0)
    availability = Availability(
        answered=sum(by_class.values()),
        failed=by_class.get("5xx", 0.0),
        client_errors=by_class.get("4xx", 0.0),
        client_gone=gone,
        target=targets.availability,
    )
    cumulative = _cumulative(answers.get(f"{OVERHEAD} buckets", ()), api)
    latency = tuple(
        LatencyCheck(_quantile(q, answers, OVERHEAD, api, cumulative), target_s, _share_within(cumulative, target_s))
        for q, target_s in targets.latency
    )
    return Scope(name, availability, latency)


def _cumulative(samples: Sequence[Sample], api: str | None) -> list[tuple[float, float]]:
    """(le, requests at most le), ascending, summed over client APIs unless ``api`` names one.
    Made monotonic as histogram_quantile does: extrapolated increases can dip by a hair."""
    by_bound: dict[float, float] = {}
    for sample in samples:
        if api is not None and sample.labels.get("client_api", "") != api:
            continue
        try:
            bound = float(sample.labels["le"])
        except (KeyError, ValueError):
            continue
        if not math.isnan(sample.value):
            by_bound[bound] = by_bound.get(bound, 0.0) + sample.value
    out: list[tuple[float, float]] = []
    for bound in sorted(by_bound):
        out.append((bound, max(by_bound[bound], out[-1][1] if out else 0.0)))
    if not out or out[-1][0] != math.inf or out[-1][1] <= 0:
        return []  # no +Inf bucket, or nothing observed: no quantile can be told
    return out


def _quantile(
    quantile: float,
    answers: Mapping[str, Sequence[Sample]],
    metric: str,
    api: str | None,
    cumulative: list[tuple[float, float]],
) -> Quantile:
    key = _quantile_key(metric, quantile, api is not None)
    estimate = None
    for sample in answers.get(key, ()):
        if (api is None or sample.labels.get("client_api", "") == api) and math.isfinite(sample.value):
            estimate = sample.value
    return Quantile(quantile, estimate, _bucket_holding(cumulative, quantile))


def _bucket_holding(cumulative: list[tuple[float, float]], quantile: float) -> tuple[float, float] | None:
    """The bucket histogram_quantile interpolates in: the first whose count reaches the rank."""
    if not cumulative:
        return None
    rank = quantile * cumulative[-1][1]
    lower = 0.0
    for bound, count in cumulative:
        if count >= rank:
            return (lower, bound)
        lower = bound
    return (lower, math.inf)


def _share_within(cumulative: list[tuple[float, float]], target_s: float) -> float | None:
    """Exact share of requests that took at most ``target_s``, when it is a bucket bound."""
    for bound, count in cumulative:
        if math.isclose(bound, target_s, rel_tol=1e-9):
            return count / cumulative[-1][1]
    return None


# --- output -----------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _percent(ratio: float | None, digits: int = 4) -> str:
    return "n/a" if ratio is None else f"{ratio * 100:.{digits}f}%"


def _count(value: float) -> str:
    return f"{value:,.0f}" if abs(value - round(value)) < 0.05 or value >= 100 else f"{value:,.1f}"


def _duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "+Inf"
    if seconds < 1:
        return f"{seconds * 1000:.4g} ms"
    return f"{seconds:.4g} s"


def _quantile_name(check: LatencyCheck | Quantile) -> str:
    quantile = check.figure.quantile if isinstance(check, LatencyCheck) else check.quantile
    return f"p{quantile * 100:g}"


def _describe(figure: Quantile) -> str:
    if figure.bucket is None:
        return "no data"
    lower, upper = figure.bucket
    if math.isinf(upper):
        return f"> {_duration(lower)} (past the last bucket; histogram_quantile says {_duration(lower)})"
    low, high = _duration(lower), _duration(upper)
    if low.endswith(" ms") == high.endswith(" ms"):  # one unit: "1-2 ms"
        low = low.rsplit(" ", 1)[0]
    bucket = f"the {low}-{high} bucket"
    if figure.seconds is None:
        return f"in {bucket}"
    return f"{_duration(figure.seconds)} (interpolated in {bucket})"


def render_table(report: SloReport) -> str:
    lines = [
        f"SLO report: the {report.window.text} before {_iso(report.at)}"
        + (f" (Prometheus {report.prometheus})" if report.prometheus else ""),
    ]
    for scope in report.scopes:
        a = scope.availability
        lines += [
            "",
            f"{scope.name}: {_count(a.answered)} requests answered ({_count(a.failed)} 5xx, "
            f"{_count(a.client_errors)} 4xx); {_count(a.client_gone)} left before an answer (0xx, not counted)",
            f"  {'availability':<16}{_percent(a.ratio):<48}  target >= {_percent(a.target, 2):<9}{a.verdict.value}",
            f"  {'error rate':<16}{_percent(None if a.ratio is None else 1 - a.ratio)} answered 5xx",
        ]
        if a.answered > 0:
            left = a.budget_allowed - a.failed
            state = (
                f"{_count(left)} left ({left / a.budget_allowed:.0%} of the budget)"
                if left >= 0
                else f"exhausted, {_count(-left)} over"
            )
            lines.append(
                f"  {'error budget':<16}{_count(a.budget_allowed)} failed requests allowed, {_count(a.failed)} failed: {state}"
            )
        for check in scope.latency:
            share = (
                f" ({check.share_within:.2%} within {_duration(check.target_s)})"
                if check.share_within is not None
                else ""
            )
            name = f"overhead {_quantile_name(check)}"
            lines.append(
                f"  {name:<16}{_describe(check.figure):<48}  target < {_duration(check.target_s):<10}"
                f"{check.verdict.value}{share}"
            )
    if report.whole_request:
        lines += ["", "whole requests (provider included, no target):"]
        lines += [f"  {_quantile_name(q):<16}{_describe(q)}" for q in report.whole_request]
    missed = report.missed()
    unmeasured = [f"{s.name}: {', '.join(s.unmeasured())}" for s in report.scopes if s.unmeasured()]
    lines += ["", f"verdict: {len(missed)} target(s) missed:" if missed else "verdict: every target met"]
    lines += [f"  {line}" for line in missed]
    if unmeasured:
        lines.append("not measured (no data): " + "; ".join(unmeasured))
    lines += textwrap.wrap(
        "Quantiles are known to their histogram bucket; the figure inside it is histogram_quantile's "
        "interpolation. Targets on a bucket bound are judged exactly, from the share of requests within "
        "them. Counts come from increase() (extrapolated to the window's edges).",
        width=100,
    )
    return "\n".join(lines)


def _number(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return "+Inf" if value > 0 else "-Inf"


def _quantile_json(figure: Quantile) -> dict[str, Any]:
    return {
        "quantile": figure.quantile,
        "seconds_interpolated": figure.seconds,
        "bucket_seconds": None if figure.bucket is None else [_number(b) for b in figure.bucket],
    }


def to_json(report: SloReport) -> dict[str, Any]:
    scopes = []
    for scope in report.scopes:
        a = scope.availability
        scopes.append(
            {
                "scope": scope.name,
                "requests": {"answered": a.answered, "5xx": a.failed, "4xx": a.client_errors, "0xx": a.client_gone},
                "availability": {"ratio": a.ratio, "target": a.target, "verdict": a.verdict.value},
                "error_rate": None if a.ratio is None else 1 - a.ratio,
                "error_budget": {"allowed_failed": a.budget_allowed, "failed": a.failed},
                "overhead": [
                    {
                        **_quantile_json(check.figure),
                        "target_seconds": check.target_s,
                        "share_within_target": check.share_within,
                        "verdict": check.verdict.value,
                    }
                    for check in scope.latency
                ],
            }
        )
    return {
        "window": report.window.text,
        "window_seconds": report.window.seconds,
        "until": report.at.astimezone(UTC).isoformat(),
        "prometheus": report.prometheus,
        "scopes": scopes,
        "whole_request": [_quantile_json(q) for q in report.whole_request],
        "missed": report.missed(),
        "met": not report.missed(),
    }


def exit_status(report: SloReport, check: bool) -> int:
    """With --check: 1 when a target is missed anywhere, or an overall figure could not be measured."""
    if check and (report.missed() or report.scopes[0].unmeasured()):
        return EXIT_MISSED
    return EXIT_OK


# --- the thin I/O part ------------------------------------------------------------------------


class PrometheusClient:
    """Instant queries (``POST /api/v1/query`` with ``time``), errors as SloError."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str, at: float) -> list[Sample]:
        body = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"}).encode()
        request = urllib.request.Request(f"{self.base_url}/api/v1/query", data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:  # Prometheus says why in JSON; something else does not
            raw = exc.read()
            try:
                reason = json.loads(raw).get("error")
            except (ValueError, AttributeError):
                reason = None
            if reason:
                raise SloError(f"Prometheus rejected {promql!r}: {reason}") from None
            raise SloError(f"{self.base_url} answered HTTP {exc.code} to a query: is it Prometheus?") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SloError(f"Prometheus at {self.base_url} is unreachable: {reason}") from None
        try:
            return parse_vector(json.loads(raw))
        except ValueError:
            raise SloError(f"{self.base_url} answered something other than JSON: is it Prometheus?") from None

    def ask_all(self, named: Mapping[str, str], at: float) -> dict[str, list[Sample]]:
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {name: pool.submit(self.query, promql, at) for name, promql in named.items()}
            return {name: future.result() for name, future in futures.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``report`` under ``parser`` (the `slo` command) and sets func=run."""
    sub = parser.add_subparsers(dest="slo_command", required=True, metavar="ACTION")
    report = sub.add_parser(
        "report",
        help="availability, error budget and the gateway's latency over a window, against the targets",
        description="Availability (share of answered requests not 5xx; 0xx, the client gone, excluded), "
        "error rate, the error budget left, and the gateway's overhead p50/p95/p99 (its time minus the "
        "provider's), per client API and overall, against 99.99% and p50 < 50 ms, p95 < 100 ms, "
        "p99 < 200 ms; the whole request's quantiles (provider included) beside them. Read from "
        "Prometheus, which must scrape the gateway's /metrics.",
        epilog="exit status: 0 ok (with --check: every target met); 1 with --check: a target missed or "
        "not measured; 2 an error (Prometheus unreachable, no data in the window, a bad option)",
    )
    report.add_argument(
        "--prometheus",
        metavar="URL",
        default="http://127.0.0.1:9090",
        help="Prometheus' base URL (default http://127.0.0.1:9090)",
    )
    report.add_argument(
        "--since", default="30d", metavar="DURATION", help="the window: 1h, 7d, 30d, 2w... (default 30d)"
    )
    report.add_argument(
        "--until",
        default="now",
        metavar="TIME",
        help="end of the window: now, an ISO date (midnight UTC) or date and time (default now)",
    )
    report.add_argument("--format", choices=["table", "json"], default="table", help="output format (default table)")
    report.add_argument("--check", action="store_true", help="exit 1 when a target is missed (for CI or cron)")
    report.add_argument("--timeout", type=float, default=30.0, help="seconds per Prometheus query (default 30)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        window = parse_window(args.since)
        at = parse_until(args.until, datetime.now(UTC))
        client = PrometheusClient(args.prometheus, args.timeout)
        answers = client.ask_all(queries(window), at.timestamp())
        report = build_report(answers, window, at, client.base_url)
    except SloError as exc:
        print(f"ccr-gateway slo report: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(to_json(report), indent=2) if args.format == "json" else render_table(report))
    return exit_status(report, args.check)
