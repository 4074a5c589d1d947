"""docker-compose.yml: valid for Compose (every profile), every service checked for health, the
gateway started only on healthy backends, mounts that exist, images pinned, commands that parse."""

from __future__ import annotations

import functools
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.commands import check_exec, parse_ccr
from tests.deploy.tools import REPO, explain, run, tool

COMPOSE = REPO / "docker-compose.yml"
PROFILES = ["--profile", "sentinel", "--profile", "cluster"]
ONE_SHOTS = {"gateway-bootstrap", "db-migrate", "redis-cluster-init"}  # restart: "no", run to completion


@functools.cache
def resolved() -> dict[str, Any]:
    """The file as Compose reads it (anchors merged, ${VARS} filled), every profile on."""
    result = run([tool("docker-compose"), "-f", str(COMPOSE), *PROFILES, "config"])
    assert result.returncode == 0, explain(result)
    return yaml.safe_load(result.stdout)


def services() -> dict[str, Any]:
    return resolved()["services"]


@pytest.mark.parametrize("profiles", [[], ["--profile", "sentinel"], ["--profile", "cluster"]], ids=str)
def test_compose_accepts_the_file(profiles: list[str]) -> None:
    result = run([tool("docker-compose"), "-f", str(COMPOSE), *profiles, "config", "-q"])
    assert result.returncode == 0, explain(result)


def test_the_whole_stack_is_there() -> None:
    wanted = {
        "gateway", "extproc", "control-plane", "ledger", "postgres", "redis", "redis-sentinel",
        "redis-cluster-1", "rabbitmq", "consul", "vault", "prometheus", "alertmanager", "grafana",
        "jaeger", "fake-provider", "batch-api", "batch-worker", "batch-metrics-relay",
    }  # fmt: skip
    assert wanted <= set(services())
    assert services()["postgres"]["image"].startswith("timescale/timescaledb:")
    assert services()["rabbitmq"]["image"].endswith("-management")
    assert services()["redis-sentinel"]["profiles"] == ["sentinel"]
    assert services()["redis-cluster-1"]["profiles"] == ["cluster"]


def test_every_long_running_service_has_a_health_check() -> None:
    for name, service in services().items():
        if name in ONE_SHOTS:
            assert service.get("restart") == "no", name
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_the_gateway_starts_only_on_healthy_backends() -> None:
    gateway = services()["gateway"]["depends_on"]
    assert gateway["extproc"]["condition"] == "service_healthy"
    assert gateway["gateway-bootstrap"]["condition"] == "service_completed_successfully"
    worker = services()["extproc"]["depends_on"]
    for backend in ("control-plane", "postgres", "redis", "rabbitmq", "vault", "jaeger"):
        assert worker[backend]["condition"] == "service_healthy", backend
    assert services()["gateway"]["network_mode"] == "service:extproc"  # one network namespace, like a pod


def test_every_image_is_pinned_to_a_tag() -> None:
    for name, service in services().items():
        image = service["image"]
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        assert tag and tag != "latest", f"{name}: {image} is not pinned to a tag"


def test_every_mounted_file_exists() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    mounts = [
        volume.split(":", 1)[0]
        for service in raw["services"].values()
        for volume in service.get("volumes", [])
        if isinstance(volume, str) and volume.startswith("./")
    ]
    assert mounts, "no bind mounts found"
    for mount in mounts:
        assert (REPO / mount).exists(), f"{mount} is mounted but missing"


def test_the_grafana_dashboards_and_the_rules_are_the_ones_in_deploy_observability() -> None:
    raw = COMPOSE.read_text()
    assert "./deploy/observability/grafana/dashboards:" in raw
    assert "./deploy/observability/prometheus/rules:" in raw
    assert "./deploy/observability/alertmanager/alertmanager.yml:" in raw


def test_every_ccr_gateway_command_line_parses() -> None:
    for name, service in services().items():
        image = service["image"]
        if not image.startswith("ccr-gateway:"):
            continue
        entrypoint = service.get("entrypoint")
        command = service.get("command")
        if entrypoint is None:
            parse_ccr(command)
        else:
            assert entrypoint == ["envoy"], name
        test = service["healthcheck"]["test"] if "healthcheck" in service else None
        if test:
            check_exec(test[1:])


def test_the_compose_policy_is_valid() -> None:
    result = run([sys.executable, "-m", "ccr_gateway", "validate", "-c", "deploy/compose/policy.yaml"])
    assert result.returncode == 0, explain(result)
    assert "valid" in result.stdout


def test_prometheus_scrapes_the_jobs_the_rules_rely_on() -> None:
    config = yaml.safe_load((REPO / "deploy/compose/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"ccr-gateway", "ccr-envoy", "ccr-batch-worker"}
    assert jobs["ccr-envoy"]["metrics_path"] == "/stats/prometheus"
    relay = re.findall(r"--route=(/[\w/]+)=", COMPOSE.read_text())
    assert {"/metrics", "/stats/prometheus"} <= set(relay)


def test_the_batch_services_share_the_store_and_their_metrics_are_scraped() -> None:
    """docs/batches.md: the gateway forwards the batch paths to batch-api (policy `batches:`), the
    worker sends items through the gateway's listener; the worker's loopback metrics page is
    relayed from its network namespace to the address Prometheus scrapes."""
    api, worker, relay = (services()[name] for name in ("batch-api", "batch-worker", "batch-metrics-relay"))
    assert api["environment"]["CCR_BATCH_POSTGRES"] == worker["environment"]["CCR_BATCH_POSTGRES"]
    assert "--listen=0.0.0.0:9180" in api["command"] and "ports" not in api  # reachable by the gateway only
    policy = yaml.safe_load((REPO / "deploy/compose/policy.yaml").read_text())
    assert policy["batches"]["api"] == "batch-api:9180"
    assert f"--gateway=http://extproc:{policy['listener']['port']}" in worker["command"]
    assert "@rabbitmq:5672/" in worker["environment"]["CCR_BATCH_AMQP"]  # $CCR_BATCH_AMQP: --amqp's default
    assert not any(arg.startswith("--amqp") for arg in worker["command"])  # its password off the command line
    assert "--metrics-port=9181" in worker["command"]
    assert relay["network_mode"] == "service:batch-worker"
    assert "--route=/metrics=http://127.0.0.1:9181/metrics" in relay["command"]
    config = yaml.safe_load((REPO / "deploy/compose/prometheus.yml").read_text())
    (job,) = (job for job in config["scrape_configs"] if job["job_name"] == "ccr-batch-worker")
    assert job["static_configs"][0]["targets"] == ["batch-worker:9464"]


def test_promtool_accepts_the_compose_prometheus_config(tmp_path: Path) -> None:
    """With the rule files where the container mounts them replaced by the repository's."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus; .ci/run installs it)")
    rules = str(REPO / "deploy/observability/prometheus/rules") + "/"
    config = tmp_path / "prometheus.yml"
    config.write_text((REPO / "deploy/compose/prometheus.yml").read_text().replace("/etc/prometheus/rules/", rules))
    result = run([promtool, "check", "config", str(config)])
    assert result.returncode == 0, explain(result)
