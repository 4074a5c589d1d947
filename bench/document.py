"""docs/performance.md: the Markdown report of a run (``--write-docs``), and its hand-written notes.

Pure functions of a ``bench.report.summarize`` summary, like the rest of the presentation.
"""

from __future__ import annotations

from typing import Any

from bench.auth_report import AUTH_PYTHON_CPU_MS_MAX, AUTH_RPS_LOSS_MAX, auth_cost_lines
from bench.cache_report import CACHE_GOALS_TEXT, CACHE_HEADER_ROW, cache_goal_lines, cache_rows
from bench.report import (
    AT_REST_HEADER,
    MAIN_HEADER,
    RATIO_HEADER,
    VARIANT_HEADER,
    at_rest_rows,
    budget_lines,
    main_rows,
    markdown_table,
    ratio_rows,
    run_warnings,
    soak_trend,
    targets_in,
    variant_rows,
)
from bench.targets import (
    GATEWAY,
    GATEWAY_AUTH,
    GATEWAY_AUTH_REDIS,
    GATEWAY_EXTPROC,
    GATEWAY_NO_LEDGER,
    NOT_MET,
    PLAIN,
)

DECISION_PATHS_TEXT = f"""\
## Decision paths

The gateway asks its Python decision service (the ext_proc worker processes: the *ext_proc* and
*Python CPU* columns) what to do with each request, in one of two ways chosen by the policy's
`listener.decision`. Both run in every case, side by side, each as its own `ccr-gateway up`:

- `hop`, the default (target *{GATEWAY}*, the one the budget judges): an Envoy Lua filter makes one
  unary HTTP call per request to the decision service (Envoy cluster `ccr_hop`). A translated
  non-streaming answer makes a second call, which translates the answer; a translated stream is
  decided by the hop and only its response goes through ext_proc, and so is a fallback chain's
  (each attempt's request is rewritten by the chain cluster's upstream ext_proc).
- `ext_proc` (target *{GATEWAY_EXTPROC}*, the previous path, shown for comparison and not judged): a
  gRPC ext_proc stream for every request, carrying its headers and body, and the response's, as
  messages.
- `hop-no-ledger` (target *{GATEWAY_NO_LEDGER}*, only with `--paths ...,hop-no-ledger`): the hop
  gateway run with `up --no-ledger`, which keeps no usage records: the difference from *{GATEWAY}*
  is what the usage ledger costs (*{GATEWAY}* keeps it the default way, in the local SQLite ledger).
- `hop-auth` (target *{GATEWAY_AUTH}*, only with `--paths ...,hop-auth`): the hop gateway with
  `auth: {{required: true, keys: {{sqlite: ...}}}}`, a virtual key made before it starts (rpm and tpm
  limits far above what the run reaches, no budget) and presented by every request in `x-api-key`
  (where the others send a provider key, which *{GATEWAY}* passes on untouched); the key's limits
  counted in process. The difference from *{GATEWAY}* is what keys and limits cost.
- `hop-auth-redis` (target *{GATEWAY_AUTH_REDIS}*, only with `--paths ...,hop-auth-redis`): the same
  with `auth.limits: {{redis: redis://127.0.0.1:6379/0}}`, the limits counted in the machine's Redis
  (skipped when nothing listens there); the Redis server's CPU is shown beside, never counted as the
  gateway's.

*hop calls/req* is Envoy's `cluster.ccr_hop.upstream_rq_total` per request (1 for a passthrough
request or a stream, 2 for a translated non-streaming one on the hop path; 0 on the ext_proc path),
*ext_proc streams/req* `http.ccr.ext_proc.streams_started` per request (1 on the ext_proc path;
on the hop path 1 for a translated stream's response, else 0) and *ext_proc msgs/req*
`http.ccr.ext_proc.stream_msgs_sent` per request.

### Why the hop

Measured while choosing (Envoy 1.40, this kind of machine): one grpc.aio ext_proc stream costs the
Python side ~0.4 ms of CPU however few messages it carries (grpcio 1.85; a bare two-message stream,
`server CPU / streams`), while the decision itself (parse, check, route, translate a 40 KB Claude
Code-shaped body) is ~0.2 ms and an HTTP/1.1 exchange on a kept-alive Unix socket (asyncio +
httptools' parser) a few hundredths of a millisecond. So the gateway keeps one decision core
(`extproc/plan.py`, `extproc/request_steps.py`) and carries it per request kind over the cheapest
transport Envoy offers for what the request needs:

- everything that needs no rewrite of the response chunk by chunk: one unary call from the Lua filter
  (a second, `/respond`, for a translated whole answer);
- translated streams: the hop decides, and ext_proc runs on the response only (a per-route
  processing mode), so the stream carries the response headers and chunks, not the request;
- fallback chains: the hop decides, ext_proc reads the answer of the provider that gave it (response
  only), and the chain cluster's upstream ext_proc rewrites each attempt.

grpcio is pinned to 1.76.0: the aio server of 1.78 and later costs ~33% more CPU per stream (a bare
two-message stream: 0.26 vs 0.39 ms on this machine; in the gateway, translated streams -18% Python
CPU per request), and the streams that remain (translated streams, fallback chains, the usage log)
pay it. Considered and not taken: ext_proc's `http_service` (refused with any body mode by Envoy
1.40); ext_authz (can route and set headers but cannot rewrite the body or see the response); a
synchronous gRPC server (slower). The per-request features to come
(auth, limits, cache lookups, usage publishing) ride the same hop: its request carries the client's
headers (identity in), its answer can reply (a cached answer, a 401 or 429) or label the request
(usage metadata out).
"""

METHOD_TEXT = """\
## Method

- Processes: two upstreams, plain Envoy and the gateways run side by side: the fake provider
  (`ccr-gateway fake-provider --no-record`, one Python process) for the streaming cases (it makes the
  SSE chunks and their pacing); the *upstream Envoy*, a static Envoy answering each non-streaming
  case from `direct_response` with a canned, valid provider answer (an OpenAI chat.completion on
  `/v1/chat/completions`, an Anthropic message on `/v1/messages`), so that a Python upstream does
  not cap plain Envoy; plain Envoy; and one `ccr-gateway up` per decision path (control plane,
  ext_proc processes, Envoy), each with its own generated policy and ports. Loads run one at a
  time: per case plain Envoy first, then each gateway, each after a checked request (status and
  answer shape; the canned text for the upstream Envoy's answers) and a warm-up. Components are
  found as children of `ccr-gateway up` by their command lines; CPU and RSS come from
  /proc/<pid>/stat and /proc/<pid>/status. The upstreams' CPU is their own components (`fake
  provider`, `upstream Envoy`), never the gateway's or plain Envoy's.
- Upstream choice: the gateway's policy has an anthropic-format and an openai-format provider on
  each upstream, and the case's model picks one (`bench-openai` / `bench-anthropic` on the fake
  provider, `bench-openai-direct` / `bench-anthropic-direct` on the upstream Envoy). Plain Envoy has
  a cluster per upstream and sends requests carrying `x-bench-upstream: direct` (only the bench's
  plain-side requests of non-streaming cases) to the upstream Envoy, the rest to the fake provider.
- Bodies (`bench/workloads.py`) are generated deterministically: Claude Code-shaped (system prompt,
  tools, tool_use/tool_result history) of exactly 2, 40 and 400 KiB. Translated cases ask for an
  openai-format provider's model (Anthropic -> OpenAI translation); passthrough cases an
  anthropic-format one. The baseline sends the body the gateway's own translator produces.
- Streams: `x-fake-chunks: 60` with the whole stream in one write, and `x-fake-chunks: 200` with
  `x-fake-chunk-delay-ms: 5` (one event at a time). ext_proc CPU per chunk = (ext_proc CPU per
  request of the stream case - that of the same body answered without streaming) / SSE events
  per upstream response; ext_proc messages from Envoy's `http.ccr.ext_proc.stream_msgs_sent`. The
  reference case is answered by the upstream Envoy and the stream by the fake provider: the
  subtraction is of ext_proc CPU, which does not depend on the upstream.
- The paced stream case (requests of about a second) is driven by `bench/loadgen.py` in closed
  loop instead of wrk: wrk abandons the requests in flight when its time is up, which would count
  their CPU and ext_proc messages without counting the requests.
- Max throughput is closed loop (each connection sends its next request when the previous answer
  is complete). Half load: the translated 40 KB case again at half the (hop) gateway's measured
  req/s, on every target, with `bench/loadgen.py` in open loop (Poisson arrivals, same seed on
  every target, latency counted from the scheduled start). wrk cannot hold a rate and h2load's
  `--rps` starts every connection's request at the same instant (bursts).
- Memory at rest: the RSS of each gateway process right after startup, before any load (the
  control plane includes the `ccr-gateway up` supervisor), and the *footprint* of each target's
  processes together (`bench/procfs.py` `footprint_kb`, from `/proc/<pid>/smaps`): their anonymous
  memory plus each file range they map counted once. Every Python process maps the same
  interpreter and extension modules (grpc, protobuf, orjson): a sum of RSS counts those pages once
  per process, which no machine pays. The whole-gateway budget line reads the footprint; the sum
  of RSS is beside it.
- Soak (`--soak N`): the translated 40 KB case through the (hop) gateway, in 10 s windows, until N
  requests are done; RSS of Envoy and of the ext_proc processes (summed) after a warm-up and at
  the end, growth in percent. Without `--soak` the RSS growth budget line says *not measured*.
- Everything shares the machine's CPUs, the load generator and the upstreams included: on a small
  machine the load generator can be what limits plain Envoy, which makes the req/s ratio look
  better than it would be with a faster client. Their CPU is reported (`fake provider`, `upstream
  Envoy`, and `loadgen` in the JSON) so that this is visible.
"""


def markdown(summary: dict[str, Any], command: str) -> str:
    m = summary["machine"]
    s = summary["settings"]
    other = [c[t].get("other_cpu_pct", 0.0) for c in summary.get("cases", []) for t in targets_in(c)]
    lines = [
        "# Performance",
        "",
        "Generated by `ccr-gateway bench` (the `bench/` package); rerun the command below to refresh it.",
        "Every number comes from one run on one machine: compare the gateway with plain Envoy *in the same",
        "run*, not numbers across machines or runs.",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- date: {summary['started']} (took {summary['elapsed_s']:.0f} s)",
        f"- machine: {m['nproc']} CPUs ({m['cpu_model'] or 'unknown model'}), {m['memory_gb']} GB RAM, "
        f"Linux {m['kernel']}, Python {m['python']}"
        + (
            f"; speed yardstick: a pure-Python loop of 10 million additions took {m['python_loop_s']:.2f} s"
            if m.get("python_loop_s")
            else ""
        ),
        f"- Envoy {m['envoy']}; load generator: {m['load_generator']}, {s['connections']} connections, "
        f"{s['threads']} thread(s), {s['duration_s']:g} s per measurement after {s['warmup_s']:g} s of warm-up; "
        f"ext_proc workers per gateway: {s.get('workers') or m['nproc']}",
        f"- load average at start / end: {' '.join(map(str, m['loadavg_at_start']))} / "
        f"{' '.join(map(str, m.get('loadavg_at_end', [])))}; CPU used by other processes during the "
        f"measurements: up to {max(other, default=0):.0f}% of the machine",
        "",
        "## Budget",
        "",
        f"For *{GATEWAY}* (the default decision path, hop), each against plain Envoy in the same run.",
        "",
        *budget_lines(summary, markdown=True),
        "",
        DECISION_PATHS_TEXT,
        "## Results",
        "",
        "CPU is per request, per component (milliseconds of user + system time of the component's",
        f"processes over the measured window, divided by the requests completed in it). *{PLAIN}*",
        "rows are the baseline: Envoy with only the router filter, forwarding the body the gateway",
        "would send upstream to the same upstream (see Method).",
        "",
        markdown_table(MAIN_HEADER, main_rows(summary)),
        "",
        markdown_table(RATIO_HEADER, ratio_rows(summary, summary["derived"])),
        "",
    ]
    if variants := variant_rows(summary, summary["derived"]):
        lines += [
            f"Each variant of the hop gateway against *{GATEWAY}*, in the same run (Python CPU: the ext_proc",
            "workers'; one window each, so a few percent of req/s either way can be noise):",
            "",
            markdown_table(VARIANT_HEADER, variants),
            "",
        ]
    lines += auth_cost_text(summary)
    lines += cache_text(summary)
    if rest := at_rest_rows(summary):
        lines += [
            "RSS (MB) at rest, right after startup and before any load; *footprint*: the memory of the "
            "target's processes together, a page they share (the Python interpreter's and its "
            "extension modules' code) counted once, where *total* counts it once per process:",
            "",
            markdown_table(AT_REST_HEADER, rest),
            "",
        ]
    warnings = run_warnings(summary)
    if warnings:
        lines += ["Warnings from this run:", "", *(f"- {w}" for w in warnings), ""]
    if soak := summary.get("soak"):
        lines += [
            "## Soak",
            "",
            f"{soak['requests']:,} requests of {soak['case']} through the gateway ({soak['errors']} errors).",
            "RSS (MB) at the start (after warm-up) and the end: "
            + ", ".join(f"{k} {soak['rss_mb_start'].get(k)} -> {soak['rss_mb_end'].get(k)}" for k in soak["growth_pct"])
            + ". Trend after the first window (least squares, MB per 100,000 requests): "
            + (", ".join(f"{k} {v:+.2f}" for k, v in soak_trend(soak).items()) or "too few windows")
            + ".",
            "",
            markdown_table(
                ["requests", *(f"RSS MB {k}" for k in soak["growth_pct"])],
                [
                    [f"{p['requests']:,}", *(f"{p['rss_mb'].get(k, 0):.1f}" for k in soak["growth_pct"])]
                    for p in soak["trajectory"]
                ],
                text_columns=0,
            ),
            "",
        ]
    lines.append(METHOD_TEXT)
    return "\n".join(lines)


def auth_cost_text(summary: dict[str, Any]) -> list[str]:
    """ "What auth costs": the auth targets against the hop gateway, judged against the goals of
    issue 15; nothing when no auth target ran."""
    lines = auth_cost_lines(summary, markdown=True)
    if not lines:
        return []
    rows = summary["auth_cost"]
    missed = sum(1 for row in rows if NOT_MET in (row["rps_verdict"], row["python_verdict"]))
    verdict = (
        "Both goals are met in every case measured."
        if not missed
        else f"{missed} of the {len(rows)} lines below miss a goal (one window each: a few percent of req/s "
        "either way can be noise)."
    )
    return [
        "### What auth costs",
        "",
        f"What requiring virtual keys and counting their limits costs the hop gateway, against *{GATEWAY}* in",
        "the same run: the presented key found in the worker's key cache (its salted hash checked once,",
        f"then remembered), the request's rates charged in process (*{GATEWAY_AUTH}*) or with a round trip",
        f"to Redis (*{GATEWAY_AUTH_REDIS}*) and settled from Envoy's usage log, the rate-limit headers added",
        f"to the answer. The goals: at most {AUTH_PYTHON_CPU_MS_MAX:g} ms of Python CPU added per request and at",
        f"most {AUTH_RPS_LOSS_MAX:.0%} of req/s lost.",
        verdict,
        "",
        *lines,
        "",
    ]


CACHE_METHOD_TEXT = """\
A cached case sends a pool of distinct deterministic requests (Claude Code-shaped, temperature 0,
one seed each) in turn, to a model whose policy says `cache: {when: deterministic}`: the first time
a worker sees a request it goes to the provider and its answer is stored (asynchronously, in that
worker's memory), and from then on the decision hop answers it from the cache. The load generator
(wrk's Lua `response` hook, or `bench/loadgen.py`) counts the answers' `x-ccr-cache` values: *hit
rate* is for the measured window, *since empty* adds the check and the warm-up, where the cold
misses are. Plain Envoy is sent the very same requests (the same bytes, in the same order, with
the same counting) and relays each to the same upstream as the gateway's misses, the upstream
Envoy's canned answer (the one the gateway stored and replays) or, for the stream, the fake
provider's 60 chunks (the gateway replays the stored answer as one complete stream): the client gets
the same answer either way, once through Envoy's router and an upstream round trip, once from the
gateway's decision hop (one Lua `httpCall` to a Python worker, no provider). The ext_proc path is
not run on these cases: the cache rides the hop.
"""


def cache_text(summary: dict[str, Any]) -> list[str]:
    """The docs' response cache section; nothing when no cached case ran."""
    rows = cache_rows(summary, summary["derived"])
    if not rows:
        return []
    return [
        "### Response cache",
        "",
        CACHE_METHOD_TEXT,
        markdown_table(CACHE_HEADER_ROW, rows),
        "",
        f"Against issue 16's {CACHE_GOALS_TEXT}:",
        "",
        *cache_goal_lines(summary, markdown=True),
        "",
    ]


# Hand-written notes (e.g. runs with other options) live below this line and survive a rewrite.
NOTES_MARKER = "<!-- notes below this line are kept when ccr-gateway bench rewrites the file -->"


def with_kept_notes(generated: str, previous: str | None) -> str:
    """The new report, followed by the previous file's notes section when it had one."""
    if not previous or NOTES_MARKER not in previous:
        return generated
    return generated.rstrip("\n") + "\n\n" + NOTES_MARKER + previous.split(NOTES_MARKER, 1)[1]
