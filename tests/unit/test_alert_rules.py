"""The Prometheus and Alertmanager configuration in deploy/observability/: Prometheus' and
Alertmanager's own tools accept it (`promtool check config|rules`, `promtool test rules`, `amtool
check-config`), and every alert carries what an on-call engineer needs (a severity, a summary, a
description, a runbook section that exists) and is proven by a promtool case where it fires and one
where it stays quiet. The tools come from Debian's prometheus and prometheus-alertmanager packages
(.ci/run installs them); without them those tests are skipped, the checks in Python still run."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"
PROMETHEUS = OBSERVABILITY / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yml"))
ALERTMANAGER_CONFIG = OBSERVABILITY / "alertmanager" / "alertmanager.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_PREFIX = "docs/runbooks.md#"
SEVERITIES = {"critical", "warning"}
# level:metric:operations (https://prometheus.io/docs/practices/rules/)
RECORDING_NAME = re.compile(r"^[a-z][a-z0-9_]*:[a-z][a-z0-9_]*:[a-z0-9_]+$")

promtool = shutil.which("promtool")
amtool = shutil.which("amtool")
needs_promtool = pytest.mark.skipif(
    promtool is None, reason="promtool not installed (Debian: apt-get install prometheus; .ci/run installs it)"
)
needs_amtool = pytest.mark.skipif(
    amtool is None, reason="amtool not installed (Debian: apt-get install prometheus-alertmanager; .ci/run installs it)"
)


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules(kind: str) -> list[dict[str, Any]]:
    """Every rule of the rule files with ``kind`` ("alert" or "record") as its key."""
    return [rule for path in RULE_FILES for group in load(path)["groups"] for rule in group["rules"] if kind in rule]


ALERTS = rules("alert")
RECORDINGS = rules("record")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_anchors() -> set[str]:
    text = RUNBOOKS.read_text()
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6} +(.+?) *#*$", text, re.MULTILINE)}


def alert_cases() -> tuple[dict[tuple[str, str], list[dict[str, Any]]], set[str]]:
    """From the promtool tests: the expected firing alerts per (alertname, severity), and the
    alertnames some case expects to stay quiet."""
    firing: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    quiet: set[str] = set()
    for path in TEST_FILES:
        for test in load(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                if not case.get("exp_alerts"):
                    quiet.add(case["alertname"])
                for expected in case.get("exp_alerts") or []:
                    firing[(case["alertname"], expected["exp_labels"].get("severity", ""))].append(expected)
    return firing, quiet


def names_in(expr: str) -> set[str]:
    """The identifiers of a PromQL expression that could be metric or rule names."""
    return set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))


# --- Prometheus' and Alertmanager's own tools ------------------------------------------------


@needs_promtool
def test_prometheus_config_passes_promtool_check_config() -> None:
    result = run(str(promtool), "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rule_files_pass_promtool_check_rules() -> None:
    assert RULE_FILES, "no rule files"
    result = run(str(promtool), "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rule_unit_tests_pass_promtool_test_rules() -> None:
    assert TEST_FILES, "no promtool tests"
    result = run(str(promtool), "test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_amtool
def test_alertmanager_config_passes_amtool_check_config() -> None:
    result = run(str(amtool), "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


# --- what every alert carries ----------------------------------------------------------------


def test_there_are_at_least_ten_alerts() -> None:
    assert len({alert["alert"] for alert in ALERTS}) >= 10


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: f"{a['alert']}-{a.get('labels', {}).get('severity')}")
def test_every_alert_has_a_severity_summary_description_and_runbook(alert: dict[str, Any]) -> None:
    assert alert.get("labels", {}).get("severity") in SEVERITIES
    annotations = alert.get("annotations", {})
    for name in ("summary", "description", "runbook_url"):
        assert annotations.get(name, "").strip(), f"{alert['alert']} has no {name}"
    assert annotations["runbook_url"].startswith(RUNBOOK_PREFIX)


def test_every_runbook_url_names_a_section_of_the_runbooks() -> None:
    anchors = runbook_anchors()
    missing = {
        alert["alert"]: alert["annotations"]["runbook_url"]
        for alert in ALERTS
        if alert["annotations"]["runbook_url"].removeprefix(RUNBOOK_PREFIX) not in anchors
    }
    assert not missing, f"runbook sections missing from {RUNBOOKS.name}: {missing}"


def test_every_alert_fires_in_a_promtool_case_with_its_labels_and_annotations_checked() -> None:
    firing, _ = alert_cases()
    untested = sorted({(a["alert"], a["labels"]["severity"]) for a in ALERTS} - set(firing))
    assert not untested, f"alerts (name, severity) no promtool case expects to fire: {untested}"
    for (name, _severity), expected in firing.items():
        for alert in expected:
            annotations = alert.get("exp_annotations") or {}
            assert {"summary", "description", "runbook_url"} <= set(annotations), f"{name}: annotations unchecked"


def test_every_alert_stays_quiet_in_a_promtool_case() -> None:
    _, quiet = alert_cases()
    untested = sorted({alert["alert"] for alert in ALERTS} - quiet)
    assert not untested, f"alerts no promtool case expects to stay quiet: {untested}"


def test_promtool_cases_name_only_alerts_that_exist() -> None:
    firing, quiet = alert_cases()
    known = {alert["alert"] for alert in ALERTS}
    assert {name for name, _ in firing} | quiet <= known


# --- recording rules -------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RECORDINGS, ids=lambda r: r["record"])
def test_recording_rules_are_named_level_metric_operations(rule: dict[str, Any]) -> None:
    assert RECORDING_NAME.match(rule["record"]), rule["record"]


def test_every_recording_rule_is_tested_directly_or_through_a_tested_rule_or_alert() -> None:
    """A rule is covered when a promql_expr_test evaluates it, or when a covered rule or an alert
    (every alert is tested) reads it."""
    by_name = {rule["record"]: rule for rule in RECORDINGS}
    covered: set[str] = set()
    pending = [name for alert in ALERTS for name in names_in(alert["expr"]) if name in by_name]
    for path in TEST_FILES:
        for test in load(path)["tests"]:
            pending += [n for case in test.get("promql_expr_test", []) for n in names_in(case["expr"]) if n in by_name]
    while pending:
        name = pending.pop()
        if name not in covered:
            covered.add(name)
            pending += [n for n in names_in(by_name[name]["expr"]) if n in by_name]
    assert not sorted(set(by_name) - covered), f"recording rules no test reaches: {sorted(set(by_name) - covered)}"


# --- the wiring between the files ------------------------------------------------------------


def test_prometheus_loads_every_rule_file_and_scrapes_both_targets_of_a_gateway() -> None:
    config = load(PROMETHEUS_CONFIG)
    assert sorted(PROMETHEUS / f for f in config["rule_files"]) == RULE_FILES
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["ccr-gateway"]["metrics_path"] == "/metrics"
    assert jobs["ccr-envoy"]["metrics_path"] == "/stats/prometheus"
    assert jobs["ccr-batch-worker"]["metrics_path"] == "/metrics"  # docs/batches.md "Monitoring"
    for job in jobs.values():  # the inhibition and the rules group by it
        assert any(relabel.get("target_label") == "gateway" for relabel in job["relabel_configs"])
    assert config["alerting"]["alertmanagers"]


def test_gateway_down_watches_both_jobs() -> None:
    (down,) = (alert for alert in ALERTS if alert["alert"] == "CCRGatewayDown")
    assert 'job=~"ccr-gateway|ccr-envoy"' in down["expr"]


def test_every_scrape_job_has_an_alert_on_its_up() -> None:
    """The gateway's two jobs page through CCRGatewayDown; the batch workers' job has its own
    (a batch worker down is not a gateway down, nor worth a page)."""
    watched = {
        job
        for alert in ALERTS
        if alert["alert"] in ("CCRGatewayDown", "CCRBatchWorkerDown")
        for job in re.findall(r'up\{job=~?"([^"]+)"\}', alert["expr"])[0].split("|")
    }
    jobs = {job["job_name"] for job in load(PROMETHEUS_CONFIG)["scrape_configs"]}
    assert jobs == watched == {"ccr-gateway", "ccr-envoy", "ccr-batch-worker"}
    (batch,) = (alert for alert in ALERTS if alert["alert"] == "CCRBatchWorkerDown")
    assert batch["labels"]["severity"] == "warning"


def test_alertmanager_pages_critical_alerts_and_inhibits_by_existing_alert_names() -> None:
    config = load(ALERTMANAGER_CONFIG)
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    routes = {tuple(route["matchers"]): route["receiver"] for route in config["route"]["routes"]}
    pagerduty = receivers[routes[('severity="critical"',)]]["pagerduty_configs"][0]
    assert "routing_key" not in pagerduty and pagerduty["routing_key_file"]  # never a literal key
    assert routes[('severity="warning"',)] == config["route"]["receiver"]
    known = {alert["alert"] for alert in ALERTS}
    named = {
        m.group(1)
        for rule in config["inhibit_rules"]
        for matcher in rule["source_matchers"] + rule["target_matchers"]
        if (m := re.fullmatch(r'alertname!?="(\w+)"', matcher))
    }
    assert named and named <= known, named - known
