"""A real Prometheus scraping a running gateway finds every metric the Grafana dashboards and the
Prometheus rules use (issue 17: "the e2e Prometheus finds every metric the dashboards use").

One gateway with everything that has metrics switched on: the response cache (in the workers'
memory), virtual keys with a budget and Redis-backed limits (Redis behind a proxy the traffic cuts
once), a fallback, the ledger through RabbitMQ to PostgreSQL, two workers. The Debian `prometheus`
scrapes its two targets every second with the jobs of deploy/observability/prometheus/prometheus.yml
(retargeted at this gateway's ports) and loads the rule files beside it. Traffic makes the metrics
appear: a worker killed (`up` restarts it), both client APIs, JSON and streams, a translated
request, a cached request until it hits, an unknown model (404), a provider's 500, an unreachable
provider's fallback, a key spending past its budget's alert fraction and then refused, a keyed
request while Redis is away, an ext_authz Check. Then every metric a dashboard or a rule names must
have a series in Prometheus, every dashboard query must run and return data, and every metric on
the gateway's page must be one the static scan of tests/unit/test_dashboards.py knows.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import asyncpg
import grpc
import pytest
import yaml
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

from ccr_gateway.envoy_bootstrap import worker_sockets
from extproc.auth.key_store import SqliteKeyStore
from extproc.auth.keys import new_key
from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port, http, wait_until
from tests.e2e.supervision import alive, children_of
from tests.tcp_proxy import TcpProxy
from tests.unit.test_dashboards import (
    RULES,
    dashboards,
    exported_families,
    exported_series,
    expressions,
    recorded,
    rule_expressions,
    substitute,
    used,
)

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary (Debian: apt-get install prometheus)")

CONFIG = RULES.parent / "prometheus.yml"
POSTGRES = ("127.0.0.1", 5432)
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS = ("127.0.0.1", 6379)
SCRAPE = "1s"
# The dashboards' interval variables, for a Prometheus that has scraped for seconds, not hours.
INTERVALS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}

# Metrics that only get a series when something rare happens, and why this test does not make it
# happen. Each is still checked to be defined in the code (a typo in a dashboard or rule fails).
EVENT_ONLY = {
    "ccr_xds_nacks_total": "an Envoy rejecting a configuration the control plane validated (an xDS bug)",
    "ccr_consul_errors_total": "a failed Consul request; only with `up --consul` (tests/e2e/test_consul_gateway.py)",
    "ccr_consul_index": "only with `up --consul` (its watches)",
    "ccr_consul_watch_last_answer_timestamp_seconds": "only with `up --consul` (its watches)",
    "ccr_consul_policy_rejected_total": "only with `up --consul` (the KV policy source is not loaded otherwise)",
    "ccr_trace_spans_exported_total": "only with tracing configured (an OTLP collector)",
    "ccr_trace_spans_dropped_total": "only with tracing configured and its collector away",
    "ccr_batch_lane_requeued_total": "a batch item's handler failing (its store away): the message is put back",
    "ccr_batch_lane_dead_lettered_total": "a batch item dead-lettered (expired, too many attempts, unreadable)",
    "ccr_batch_tenant_waiting_items": "only while a tenant's queued items wait for a place in the lane's window",
}


@dataclass
class Scraped:
    gateway: Gateway
    prometheus: str  # its URL
    log: Path


# --- the gateway --------------------------------------------------------------------------------------


async def _admin(*statements: str) -> None:
    connection = await asyncpg.connect(host=POSTGRES[0], port=POSTGRES[1], user="postgres", database="postgres")
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def _delete_queues(queue: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for name in (queue, f"{queue}.dlq"):
            await channel.queue_delete(name)
        for name in (queue, f"{queue}.dlx"):
            await channel.exchange_delete(name)


def _keys(path: Path) -> tuple[str, str]:
    """Two keys of tenant acme: one whose budget one request spends past the alert fraction (the
    next is refused), one with a rate limit only (answered by the local failure policy while Redis
    is away)."""

    async def create() -> tuple[str, str]:
        store = SqliteKeyStore(path)
        try:
            budget, record = new_key("acme", "scrape-budget", time.time(), budget_usd=0.001, budget_period="day")
            await store.create(record)
            rated, record = new_key("acme", "scrape-rpm", time.time(), rpm=1000)
            await store.create(record)
            return budget, rated
        finally:
            await store.close()

    return asyncio.run(create())


def _policy(workdir: Path, fake: FakeProvider, database: str, queue: str, redis: TcpProxy) -> dict:
    policy = base_policy(free_port(), fake)
    policy["providers"][0]["models"][0]["pricing"] = {"input": 3.0, "output": 15.0}
    # The unreachable provider's model falls back to gpt-4o: answered after two attempts.
    policy["fallback"] = {"unreachable,claude-unreachable": ["fake-openai,gpt-4o"]}
    policy["cache"] = {"ttl": "10m", "when": "deterministic"}  # each worker's memory: evictions are counted there
    policy["auth"] = {
        "keys": {"sqlite": str(workdir / "scrape-keys.db")},  # keys optional: anonymous requests too
        "limits": {"redis": f"redis://127.0.0.1:{redis.port}/0", "budget_alert_at": 0.1},  # through a proxy we cut
    }
    # `up` runs the batch API and a batch worker (local SQLite, in-process lanes): the lane metrics.
    policy["batches"] = {"api": f"127.0.0.1:{free_port()}"}
    policy["storage"] = {
        "postgres": {"dsn": f"postgresql://postgres@{POSTGRES[0]}:{POSTGRES[1]}/{database}"},
        "rabbitmq": {"url": AMQP_URL, "queue": queue},
        "spool": {"dir": str(workdir / f"scrape-spool-{database}")},
    }
    return policy


# --- Prometheus --------------------------------------------------------------------------------------


def prometheus_config(gateway: Gateway) -> dict:
    """prometheus.yml's two jobs (their names and relabelling: the rules rely on them) aimed at this
    gateway, every second; its rule files; no Alertmanager."""
    targets = {"/metrics": f"127.0.0.1:{gateway.metrics_port}", "/stats/prometheus": f"127.0.0.1:{gateway.admin_port}"}
    shipped = yaml.safe_load(CONFIG.read_text()) if CONFIG.is_file() else {}
    jobs = shipped.get("scrape_configs") or [
        {"job_name": "ccr-gateway", "metrics_path": "/metrics"},
        {"job_name": "ccr-envoy", "metrics_path": "/stats/prometheus"},
    ]
    scrape_configs = []
    for job in jobs:
        path = job.get("metrics_path", "/metrics")
        if path in targets:
            job = {key: value for key, value in job.items() if not key.endswith("_sd_configs")}
            job.update(static_configs=[{"targets": [targets.pop(path)]}], scrape_interval=SCRAPE, scrape_timeout=SCRAPE)
            scrape_configs.append(job)
    assert not targets, f"{CONFIG} has no job for {sorted(targets)}"
    rule_files = sorted(str(path) for path in RULES.glob("*.y*ml")) if RULES.is_dir() else []
    return {
        "global": {
            "scrape_interval": SCRAPE,
            "evaluation_interval": SCRAPE,
            **{k: v for k, v in shipped.get("global", {}).items() if k == "external_labels"},
        },
        "rule_files": rule_files,
        "scrape_configs": scrape_configs,
    }


def start_prometheus(directory: Path, config: dict) -> tuple[subprocess.Popen[bytes], str, Path]:
    for rules in config["rule_files"]:
        checked = subprocess.run(["promtool", "check", "rules", rules], capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, f"promtool rejects {rules}:\n{checked.stdout}{checked.stderr}"
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log = directory / "prometheus.log"
    process = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=open(log, "wb"),  # noqa: SIM115 (lives as long as the process)
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"prometheus exited ({process.returncode}):\n{log.read_text()}")
        return http("GET", f"{url}/-/ready", timeout=1)[0] == 200

    wait_until(ready, 30, "prometheus ready", interval=0.1)
    return process, url, log


def query(prometheus: str, expr: str) -> list[dict]:
    status, _, body = http("GET", f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}", timeout=10)
    answer = json.loads(body or b"{}")
    assert status == 200 and answer.get("status") == "success", f"{expr}: {status} {body[:500]!r}"
    return answer["data"]["result"]


def present(prometheus: str, names: set[str]) -> set[str]:
    """Which of ``names`` have at least one series in Prometheus now."""
    pattern = "|".join(sorted(map(re.escape, names)))
    return {
        sample["metric"]["__name__"] for sample in query(prometheus, f'count by (__name__) ({{__name__=~"{pattern}"}})')
    }


# --- traffic -----------------------------------------------------------------------------------------

ANTHROPIC = {"content-type": "application/json", "anthropic-version": "2023-06-01"}


def _post(gateway: Gateway, path: str, body: dict, **headers: str) -> tuple[int, dict[str, str]]:
    status, answer_headers, _ = http(
        "POST", gateway.url + path, json.dumps(body).encode(), {**ANTHROPIC, **headers}, 30
    )
    return status, {k.lower(): v for k, v in answer_headers.items()}


def drive(gateway: Gateway, budget_key: str, rpm_key: str, redis: TcpProxy) -> None:
    words = [{"role": "user", "content": f"metrics please {uuid.uuid4().hex}"}]
    sonnet = {"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": words}
    answered = [
        _post(gateway, "/v1/messages", sonnet),  # passthrough JSON
        _post(gateway, "/v1/messages", {**sonnet, "stream": True}),  # passthrough stream: time to first token
        _post(gateway, "/v1/messages", {**sonnet, "model": "gpt-4o", "stream": True}),  # translated stream
        _post(gateway, "/v1/chat/completions", {"model": "gpt-4o", "messages": words}),
        _post(
            gateway,
            "/v1/chat/completions",
            {"model": "gemini-2.5-pro", "messages": words, "stream": True, "stream_options": {"include_usage": True}},
        ),
    ]
    assert [status for status, _ in answered] == [200] * len(answered), answered
    # The same deterministic request until a worker answers it from its cache (each worker has its own).
    cached = {**sonnet, "temperature": 0}
    hits = [_post(gateway, "/v1/messages", cached)[1].get("x-ccr-cache") for _ in range(8)]
    assert "hit" in hits, hits
    assert _post(gateway, "/v1/chat/completions", {"model": "no-such-model", "messages": words})[0] == 404
    assert _post(gateway, "/v1/messages", sonnet, **{"x-fake-status": "500"})[0] == 500
    assert _post(gateway, "/v1/messages", {**sonnet, "model": "claude-unreachable"})[0] == 200  # its fallback
    # The key's budget: the first request spends past the alert fraction, the second is refused.
    assert _post(gateway, "/v1/messages", sonnet, **{"x-api-key": budget_key})[0] == 200
    assert _post(gateway, "/v1/messages", sonnet, **{"x-api-key": budget_key})[0] == 429
    # Redis away: the rate limit is decided by its failure policy (local), and the error counted.
    redis.cut()
    try:
        assert _post(gateway, "/v1/messages", sonnet, **{"x-api-key": rpm_key})[0] == 200
    finally:
        redis.restore()
    run_a_batch(gateway, sonnet)


def run_a_batch(gateway: Gateway, params: dict) -> None:
    """A three-item batch through `up`'s own batch worker: lane depth, publishes, acks, send times."""
    requests = [{"custom_id": f"m{i}", "params": params} for i in range(3)]
    status, _, raw = http("POST", gateway.url + "/v1/messages/batches", json.dumps({"requests": requests}).encode(),
                          ANTHROPIC, 30)  # fmt: skip
    assert status == 200, raw
    batch_id = json.loads(raw)["id"]

    def ended() -> bool:
        answer = http("GET", f"{gateway.url}/v1/messages/batches/{batch_id}", None, ANTHROPIC, 10)
        return json.loads(answer[2])["processing_status"] == "ended"

    wait_until(ended, 60, "the batch run by up's batch worker", interval=0.2)


def extproc_sockets(gateway: Gateway) -> list[str]:
    found = re.search(r"Unix sockets in (\S+?)\)", gateway.log())
    assert found, gateway.log()
    return worker_sockets(found[1], gateway.workers)[0]


def _accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as client:
        try:
            client.connect(path)
        except OSError:
            return False
        return True


def authz_check(gateway: Gateway) -> None:
    """One ext_authz Check on a worker's socket (what an Envoy in front of another route would send)."""
    request = CheckRequest()
    request.attributes.request.http.path = "/v1/messages"
    request.attributes.request.http.method = "POST"
    with grpc.insecure_channel(f"unix:{extproc_sockets(gateway)[0]}") as channel:
        external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=10)


def kill_a_worker(gateway: Gateway) -> None:
    """SIGKILL one ext_proc worker: `up` restarts it (ccr_child_restarts_total)."""
    workers = [
        pid for pid in children_of(gateway.process.pid) if b"extproc" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert workers, "no ext_proc worker among up's children"
    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: not alive(workers[0]), 5, "the worker gone")
    wait_until(lambda: "ccr_child_restarts_total{" in gateway.metrics(), 15, "ccr_child_restarts_total on the page")
    wait_until(lambda: all(map(_accepts, extproc_sockets(gateway))), 15, "the new worker serving")


# --- the fixture -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scraped(workdir: Path, fake: FakeProvider) -> Iterator[Scraped]:
    suffix = uuid.uuid4().hex[:8]
    database, queue = f"ccr_scrape_{suffix}", f"ccr.test.scrape.{suffix}"
    asyncio.run(_admin(f'CREATE DATABASE "{database}"'))
    redis = TcpProxy(*REDIS).start()
    started: list = []
    try:
        keys = _keys(workdir / "scrape-keys.db")
        gateway = Gateway.start(workdir, _policy(workdir, fake, database, queue, redis), name="scrape", workers=2)
        started.append(gateway)
        process, url, log = start_prometheus(workdir / f"prometheus-{suffix}", prometheus_config(gateway))
        started.append(process)
        # First, so that the traffic's live gauges (a key's budget left...) are the new worker's or
        # the other's: a dead worker's are dropped from the page.
        kill_a_worker(gateway)
        drive(gateway, *keys, redis)
        authz_check(gateway)
        yield Scraped(gateway, url, log)
    finally:
        for item in reversed(started):
            if isinstance(item, Gateway):
                item.stop()
            else:
                item.terminate()
                item.wait(timeout=20)
        redis.stop()
        asyncio.run(_delete_queues(queue))
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


def used_metrics() -> dict[str, set[str]]:
    """Every metric the dashboards and rules name -> where (recording rules' outputs included)."""
    where: dict[str, set[str]] = {}
    sources = [(f"{name} {w}", e) for name, board in dashboards().items() for w, e in expressions(board)]
    for label, expr in [*sources, *rule_expressions()]:
        for metric in used(substitute(expr, INTERVALS)).metrics:
            where.setdefault(metric, set()).add(label)
    return where


# --- tests -------------------------------------------------------------------------------------------


def test_the_event_only_metrics_are_defined_in_the_code():
    """The allowlist cannot hide a typo: each name is a series of a family the code defines."""
    series = exported_series()
    assert not [name for name in EVENT_ONLY if name not in series]
    assert {family.kind for name, family in exported_families().items() if name in EVENT_ONLY} <= {"Counter", "Gauge"}


def test_prometheus_finds_every_metric_the_dashboards_and_rules_use(scraped: Scraped):
    wanted = used_metrics()
    unknown = sorted(set(wanted) - exported_series().keys() - recorded().keys())
    assert not unknown, f"named by a dashboard or rule, exported by nothing: {unknown}"
    required = set(wanted) - EVENT_ONLY.keys()

    def all_there() -> bool:  # the first scrapes come within seconds (Prometheus syncs new targets every 5 s)
        return present(scraped.prometheus, required) == required

    try:
        wait_until(all_there, 30, "every metric in Prometheus", interval=1)
    except AssertionError:
        missing = sorted(required - present(scraped.prometheus, required))
        details = "\n".join(f"  {name}: used by {sorted(wanted[name])[:3]}" for name in missing)
        raise AssertionError(f"no series in Prometheus for:\n{details}\n{scraped.log.read_text()[-2000:]}") from None


def test_every_dashboard_query_runs_and_returns_data(scraped: Scraped):
    """Against the real engine: each query runs (an error fails) and returns something, unless it
    names an event-only metric (a query about a restart that may not happen ends `or vector(0)`)."""
    wait_until(
        lambda: query(scraped.prometheus, "sum(ccr_authz_decisions_total)"), 30, "the last traffic scraped", interval=1
    )
    time.sleep(2)  # a couple more scrapes: rate() needs two samples of the newest series
    empty = []
    for name, board in dashboards().items():
        for where, expr in expressions(board):
            concrete = substitute(expr, INTERVALS)
            if not query(scraped.prometheus, concrete) and not (used(concrete).metrics & EVENT_ONLY.keys()):
                empty.append(f"{name} {where}: {concrete}")
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_every_metric_on_the_gateways_page_is_known_to_the_static_scan(scraped: Scraped):
    """The scan the dashboard test trusts misses nothing the processes really export."""
    page = scraped.gateway.metrics().splitlines()
    names = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in page if line and not line.startswith("#")}
    assert len(names) > 50, page
    assert not sorted(names - exported_series().keys())
