"""Load drivers: wrk, h2load (both from Debian) and the Python generator in ``bench.loadgen``.

Each driver turns a ``LoadSpec`` into a command line and that command's output into a
``LoadResult``; the runner starts the process itself, so that it can sample the driver's CPU next
to the gateway's and stop it on Ctrl-C. For maximum throughput (closed loop) the order of
preference is wrk, h2load, Python. For a fixed rate (open loop) it is always the Python generator:
see ``bench/loadgen.py`` for why.

A cached case sends a pool of requests in turn and counts the values of one response header
(``x-ccr-cache``: hit, miss, bypass) as the answers arrive. wrk does both in its Lua script and the
Python generator natively; h2load can do neither (one body per run, no per-response hook), so such
a case runs on the Python generator when h2load is the driver (``Driver.pools_bodies``).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.loadgen import PERCENTILES, percentile


@dataclass(frozen=True, slots=True)
class LoadSpec:
    url: str
    body_paths: tuple[Path, ...]  # sent in turn (a cached case's pool); usually one
    headers: dict[str, str]
    duration_s: float
    connections: int
    threads: int = 1
    rate: float = 0.0  # requests/s, open loop; 0 = as fast as the server answers (closed loop)
    timeout_s: float = 30.0
    seed: int = 1
    count_header: str = ""  # a response header whose values are counted (LoadResult.header_counts)

    @property
    def body_path(self) -> Path:
        return self.body_paths[0]


@dataclass(frozen=True, slots=True)
class LoadResult:
    tool: str
    requests: int  # completed, error answers included
    duration_s: float
    errors: dict[str, int]  # connect / read / write / timeout / status (HTTP >= 400)
    latency_ms: dict[str, float]  # p50, p75, p90, p99, max, mean
    extra: dict[str, object] = field(default_factory=dict)
    # With LoadSpec.count_header: answers per value of that header ("" for answers without it).
    header_counts: dict[str, int] | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "tool": self.tool,
            "requests": self.requests,
            "duration_s": round(self.duration_s, 3),
            "rps": round(self.rps, 1),
            "errors": self.errors,
            "latency_ms": self.latency_ms,
            **self.extra,
            **({"header_counts": self.header_counts} if self.header_counts is not None else {}),
        }


class LoadError(RuntimeError):
    pass


class Driver:
    name = ""
    pools_bodies = True  # can send a pool of bodies in turn and count a response header's values

    def command(self, spec: LoadSpec, workdir: Path) -> list[str]:
        raise NotImplementedError

    def parse(self, stdout: str, spec: LoadSpec, workdir: Path) -> LoadResult:
        raise NotImplementedError


# --- wrk ---------------------------------------------------------------------------------------

# The done() hook prints the numbers as JSON: no parsing of wrk's human-readable units. The pool
# (several bodies sent in turn) and the header count are optional parts, filled in only when asked
# for: a `request` or `response` function costs wrk a Lua call per request, which a plain case
# should not pay.
_WRK_SCRIPT = """\
wrk.method = "POST"
local f = assert(io.open({body_path}, "rb"))
wrk.body = f:read("*a")
f:close()
{headers}
{pool}
{count}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p99.9":%d,"max":%d,"mean":%.1f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(75), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
  {report_counts}
end
"""
# Every thread sends the pool in turn (requests built once, in init).
_WRK_POOL = """\
local paths = {{ {body_paths} }}
local requests, turn = {{}}, 0
init = function(args)
  for i, path in ipairs(paths) do
    local file = assert(io.open(path, "rb"))
    requests[i] = wrk.format(nil, nil, nil, file:read("*a"))
    file:close()
  end
end
request = function()
  turn = turn % #requests + 1
  return requests[turn]
end
"""
# Each thread counts in its own Lua state; done() (in the main one) adds the threads' counts up.
# Envoy writes header names in lowercase on HTTP/1.1, which is how wrk hands them over.
_WRK_COUNT = """\
header_counts = {{}}
local threads = {{}}
setup = function(thread) threads[#threads + 1] = thread end
response = function(status, headers, body)
  local value = headers[{header}] or ""
  header_counts[value] = (header_counts[value] or 0) + 1
end
"""
_WRK_REPORT_COUNTS = """\
for _, thread in ipairs(threads) do
    for value, count in pairs(thread:get("header_counts")) do
      io.write(string.format("BENCH_HEADER %d %s\\n", count, value))
    end
  end"""


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal for these values


class Wrk(Driver):
    name = "wrk"

    def command(self, spec: LoadSpec, workdir: Path) -> list[str]:
        if spec.rate > 0:
            raise LoadError("wrk cannot hold a fixed rate")
        headers = "\n".join(f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in spec.headers.items())
        pool = ""
        if len(spec.body_paths) > 1:
            pool = _WRK_POOL.format(body_paths=", ".join(_lua_string(str(path)) for path in spec.body_paths))
        count = _WRK_COUNT.format(header=_lua_string(spec.count_header.lower())) if spec.count_header else ""
        script = workdir / "wrk.lua"
        script.write_text(
            _WRK_SCRIPT.format(
                body_path=_lua_string(str(spec.body_path)),
                headers=headers,
                pool=pool,
                count=count,
                report_counts=_WRK_REPORT_COUNTS if spec.count_header else "",
            )
        )
        return [
            "wrk",
            f"-t{spec.threads}",
            f"-c{spec.connections}",
            f"-d{max(1, round(spec.duration_s))}s",
            f"--timeout={max(1, round(spec.timeout_s))}s",
            "-s",
            str(script),
            spec.url,
        ]

    def parse(self, stdout: str, spec: LoadSpec, workdir: Path) -> LoadResult:
        line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if line is None:
            raise LoadError(f"wrk printed no result:\n{stdout[-2000:]}")
        raw = json.loads(line.removeprefix("BENCH_JSON "))
        errors = {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]}
        latency = {f"p{p:g}": raw[f"p{p:g}"] / 1000 for p in PERCENTILES}
        latency |= {"max": raw["max"] / 1000, "mean": round(raw["mean"] / 1000, 3)}
        counts = None
        if spec.count_header:
            counts = {}
            for ln in stdout.splitlines():
                if ln.startswith("BENCH_HEADER "):
                    count, _, value = ln.removeprefix("BENCH_HEADER ").partition(" ")
                    counts[value] = counts.get(value, 0) + int(count)
        return LoadResult("wrk", raw["requests"], raw["duration_us"] / 1e6, errors, latency, header_counts=counts)


# --- h2load ------------------------------------------------------------------------------------


class H2load(Driver):
    name = "h2load"
    pools_bodies = False  # one -d file per run, and no hook per response

    def _log(self, spec: LoadSpec, workdir: Path) -> Path:
        return workdir / "h2load-requests.tsv"

    def command(self, spec: LoadSpec, workdir: Path) -> list[str]:
        if spec.rate > 0:
            raise LoadError("h2load --rps sends bursts; use the Python generator for a fixed rate")
        if len(spec.body_paths) > 1 or spec.count_header:
            raise LoadError("h2load sends one body and counts no header; use the Python generator for a pool")
        log = self._log(spec, workdir)
        log.unlink(missing_ok=True)
        argv = ["h2load", "--h1", f"-c{spec.connections}", f"-t{spec.threads}", f"-D{max(1, round(spec.duration_s))}"]
        argv += [f"-d{spec.body_path}", f"--log-file={log}", f"-N{max(1, round(spec.timeout_s))}"]
        for name, value in spec.headers.items():
            argv += ["-H", f"{name}: {value}"]
        return [*argv, spec.url]

    def parse(self, stdout: str, spec: LoadSpec, workdir: Path) -> LoadResult:
        latencies: list[float] = []
        status_errors = 0
        for row in self._log(spec, workdir).read_text().splitlines():
            parts = row.split("\t")
            if len(parts) < 3:
                continue
            status = int(parts[1])
            if status <= 0 or status >= 400:
                status_errors += 1
            latencies.append(int(parts[2]) / 1e6)
        failed = 0
        for line in stdout.splitlines():
            if line.startswith("requests:"):  # "requests: N total, N started, N done, N succeeded, N failed, ..."
                counts = {w: int(n) for n, w in (p.strip().split(" ", 1) for p in line[9:].split(","))}
                failed = counts.get("errored", 0) + counts.get("timeout", 0)
        latencies.sort()
        latency = {f"p{p:g}": round(percentile(latencies, p) * 1000, 3) for p in PERCENTILES}
        latency |= {
            "max": round(latencies[-1] * 1000, 3) if latencies else 0.0,
            "mean": round(sum(latencies) / len(latencies) * 1000, 3) if latencies else 0.0,
        }
        errors = {k: v for k, v in (("status", status_errors), ("read", failed)) if v}
        return LoadResult("h2load", len(latencies), spec.duration_s, errors, latency)


# --- Python ------------------------------------------------------------------------------------


class PythonLoad(Driver):
    name = "python"

    def command(self, spec: LoadSpec, workdir: Path) -> list[str]:
        # By file path, not "-m": the bench runs it from its work directory, installed or not.
        argv = [sys.executable, str(Path(__file__).with_name("loadgen.py")), spec.url]
        for path in spec.body_paths:
            argv += ["--body", str(path)]
        if spec.count_header:
            argv += ["--count-header", spec.count_header]
        argv += ["--duration", str(spec.duration_s), "--connections", str(spec.connections)]
        argv += ["--rate", str(spec.rate), "--seed", str(spec.seed), "--timeout", str(spec.timeout_s)]
        for name, value in spec.headers.items():
            argv += ["-H", f"{name}: {value}"]
        return argv

    def parse(self, stdout: str, spec: LoadSpec, workdir: Path) -> LoadResult:
        try:
            raw = json.loads(stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError) as exc:
            raise LoadError(f"bench.loadgen printed no result:\n{stdout[-2000:]}") from exc
        extra = {"max_schedule_lag_ms": raw["max_schedule_lag_ms"]} if spec.rate > 0 else {}
        counts = raw.get("header_counts") if spec.count_header else None
        return LoadResult(
            raw["tool"], raw["requests"], raw["duration_s"], raw["errors"], raw["latency_ms"], extra, counts
        )


DRIVERS: dict[str, type[Driver]] = {"wrk": Wrk, "h2load": H2load, "python": PythonLoad}


def pick_driver(preference: str) -> Driver:
    """``auto``: wrk, else h2load, else the Python generator."""
    if preference != "auto":
        if preference != "python" and shutil.which(preference) is None:
            raise LoadError(f"{preference} is not installed (apt-get install -y wrk nghttp2-client)")
        return DRIVERS[preference]()
    for name in ("wrk", "h2load"):
        if shutil.which(name):
            return DRIVERS[name]()
    return PythonLoad()
