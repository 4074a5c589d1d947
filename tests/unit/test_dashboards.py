"""The Grafana dashboards (deploy/observability/grafana/dashboards/*.json): the five of the seed's
list, each with what Grafana needs to load it (uid, title, panels with targets, unique panel ids, the
data source as a variable); every PromQL expression in them parses (`promtool check rules` on all of
them written as recording rules); and every metric, and every label matched or grouped by, is one
the gateway exports: the Python processes' families, found by a static scan of their definitions
(a typo'd name cannot pass), and Envoy's, listed below with where each was seen.

No Grafana runs here (Debian does not package it): the JSON is checked statically;
tests/e2e/test_prometheus_scrape.py runs every expression against a real Prometheus scraping a
running gateway. The helpers at the top are shared with that test.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy/observability/grafana"
DASHBOARDS = GRAFANA / "dashboards"
PROVISIONING = GRAFANA / "provisioning"
RULES = ROOT / "deploy/observability/prometheus/rules"
EXPECTED = ("system-overview", "api-performance", "provider-health", "cache-performance", "queue-metrics")
# Where the processes define their metrics (batches: the lanes and the batch workers).
CODE = ("extproc", "control_plane", "ledger", "ccr_gateway", "audit", "batches")
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# --- the metrics the gateway exports --------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One metric family as defined in the code, with the series names Prometheus gets for it."""

    name: str  # as written (a counter's ``_total`` optional: prometheus_client adds it)
    kind: str  # Counter, Gauge, Histogram, Summary
    labels: frozenset[str]
    where: str  # path:line of the definition
    multiprocess: bool = True  # False: in a registry of its own (`up`'s), which also exports *_created

    def series(self) -> dict[str, frozenset[str]]:
        """Every name this family is scraped as -> the labels it has there."""
        base = self.name.removesuffix("_total") if self.kind == "Counter" else self.name
        created = {} if self.multiprocess or self.kind == "Gauge" else {f"{base}_created": self.labels}
        if self.kind == "Counter":
            return {f"{base}_total": self.labels, **created}
        if self.kind == "Histogram":
            return {
                f"{base}_bucket": self.labels | {"le"},
                f"{base}_sum": self.labels,
                f"{base}_count": self.labels,
                **created,
            }
        if self.kind == "Summary":
            return {
                base: self.labels | {"quantile"},
                f"{base}_sum": self.labels,
                f"{base}_count": self.labels,
                **created,
            }
        return {base: self.labels}


def _module_lists(tree: ast.Module) -> dict[str, list[str]]:
    """Module-level ``NAME = ["a", "b"]`` (label lists shared by several families)."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
                found[node.targets[0].id] = list(value)
    return found


def _labels(node: ast.expr | None, lists: dict[str, list[str]], where: str) -> list[str]:
    if node is None:
        return []
    if isinstance(node, ast.Name):
        return lists[node.id]
    assert isinstance(node, ast.List | ast.Tuple), f"{where}: label names not a literal list"
    labels: list[str] = []
    for item in node.elts:
        if isinstance(item, ast.Starred) and isinstance(item.value, ast.Name):
            labels += lists[item.value.id]
        else:
            labels.append(ast.literal_eval(item))
    return labels


def exported_families() -> dict[str, Family]:
    """Every Counter/Gauge/Histogram/Summary the gateway's Python code defines, by name."""
    families: dict[str, Family] = {}
    for directory in CODE:
        for path in sorted((ROOT / directory).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            lists = _module_lists(tree)
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute)):
                    continue
                kind = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
                if kind not in ("Counter", "Gauge", "Histogram", "Summary") or not node.args:
                    continue
                if not (isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                    continue
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                keywords = {k.arg: k.value for k in node.keywords}
                labels = set(_labels(node.args[2] if len(node.args) > 2 else keywords.get("labelnames"), lists, where))
                # A gauge's default multiprocess mode ("all") keeps one series per process, by pid.
                if kind == "Gauge" and "multiprocess_mode" not in keywords and "registry" not in keywords:
                    labels.add("pid")
                name = node.args[0].value
                assert name not in families, f"{name} defined twice: {families[name].where} and {where}"
                families[name] = Family(name, kind, frozenset(labels), where, "registry" not in keywords)
    return families


# Envoy's statistics the dashboards and rules may use, as /stats/prometheus names them, with their
# labels. Seen on a running gateway's admin port (tests/e2e/gateway.py, Envoy 1.3x): every cluster
# stat carries envoy_cluster_name (provider_<name> for a provider, ccr_extproc/ccr_hop/ccr_xds for
# the gateway's own), every HTTP connection manager stat envoy_http_conn_manager_prefix (the client
# listener's is "ccr", the admin's "admin"). Add a name here only after seeing it on that page.
_CLUSTER = frozenset({"envoy_cluster_name"})
_HCM = frozenset({"envoy_http_conn_manager_prefix"})
ENVOY: dict[str, frozenset[str]] = {
    # cluster.<name>.upstream_rq_<class>xx: answers by class; upstream_rq_total every request sent
    "envoy_cluster_upstream_rq_xx": _CLUSTER | {"envoy_response_code_class"},
    "envoy_cluster_upstream_rq_total": _CLUSTER,
    "envoy_cluster_upstream_rq_completed": _CLUSTER,
    "envoy_cluster_upstream_rq_active": _CLUSTER,
    "envoy_cluster_upstream_rq_pending_active": _CLUSTER,
    "envoy_cluster_upstream_rq_pending_overflow": _CLUSTER,
    "envoy_cluster_upstream_rq_timeout": _CLUSTER,
    "envoy_cluster_upstream_rq_per_try_timeout": _CLUSTER,
    # retries (the route's retry policy; a fallback chain is retries across priorities)
    "envoy_cluster_upstream_rq_retry": _CLUSTER,
    "envoy_cluster_upstream_rq_retry_success": _CLUSTER,
    "envoy_cluster_upstream_rq_retry_overflow": _CLUSTER,
    "envoy_cluster_upstream_rq_retry_limit_exceeded": _CLUSTER,
    # upstream_rq_time: a histogram in milliseconds
    "envoy_cluster_upstream_rq_time_bucket": _CLUSTER | {"le"},
    "envoy_cluster_upstream_rq_time_sum": _CLUSTER,
    "envoy_cluster_upstream_rq_time_count": _CLUSTER,
    "envoy_cluster_upstream_cx_active": _CLUSTER,
    "envoy_cluster_upstream_cx_total": _CLUSTER,
    "envoy_cluster_upstream_cx_connect_fail": _CLUSTER,
    "envoy_cluster_upstream_cx_connect_timeout": _CLUSTER,
    "envoy_cluster_upstream_cx_none_healthy": _CLUSTER,
    # outlier detection (the providers' clusters eject failing hosts)
    "envoy_cluster_outlier_detection_ejections_active": _CLUSTER,
    "envoy_cluster_outlier_detection_ejections_enforced_total": _CLUSTER,
    "envoy_cluster_outlier_detection_ejections_total": _CLUSTER,
    "envoy_cluster_outlier_detection_ejections_overflow": _CLUSTER,
    "envoy_cluster_outlier_detection_ejections_consecutive_5xx": _CLUSTER,
    # circuit breakers (default priority): 1 while open
    "envoy_cluster_circuit_breakers_default_rq_open": _CLUSTER,
    "envoy_cluster_circuit_breakers_default_rq_pending_open": _CLUSTER,
    "envoy_cluster_circuit_breakers_default_rq_retry_open": _CLUSTER,
    "envoy_cluster_circuit_breakers_default_cx_open": _CLUSTER,
    "envoy_cluster_circuit_breakers_default_remaining_rq": _CLUSTER,
    # membership (EDS / Consul catalog health)
    "envoy_cluster_membership_healthy": _CLUSTER,
    "envoy_cluster_membership_degraded": _CLUSTER,
    "envoy_cluster_membership_total": _CLUSTER,
    "envoy_cluster_lb_healthy_panic": _CLUSTER,
    # the client listener: http.ccr.*
    "envoy_http_downstream_rq_xx": _HCM | {"envoy_response_code_class"},
    "envoy_http_downstream_rq_total": _HCM,
    "envoy_http_downstream_rq_active": _HCM,
    "envoy_http_downstream_rq_timeout": _HCM,
    "envoy_http_downstream_cx_active": _HCM,
    "envoy_http_downstream_cx_total": _HCM,
    "envoy_http_downstream_rq_time_bucket": _HCM | {"le"},
    "envoy_http_downstream_rq_time_sum": _HCM,
    "envoy_http_downstream_rq_time_count": _HCM,
    # the ext_proc filter on the client listener (http.ccr.ext_proc.*)
    "envoy_http_ext_proc_streams_started": _HCM,
    "envoy_http_ext_proc_streams_failed": _HCM,
    "envoy_http_ext_proc_streams_closed": _HCM,
    "envoy_http_ext_proc_message_timeouts": _HCM,
    "envoy_http_ext_proc_failure_mode_allowed": _HCM,
    # the server
    "envoy_server_live": frozenset(),
    "envoy_server_uptime": frozenset(),
    "envoy_server_memory_allocated": frozenset(),
    "envoy_server_memory_heap_size": frozenset(),
    "envoy_server_concurrency": frozenset(),
    "envoy_server_total_connections": frozenset(),
    "envoy_server_days_until_first_cert_expiring": frozenset(),
    "envoy_server_seconds_until_first_ocsp_response_expiring": frozenset(),
    # the xDS subscriptions (control_plane.*: connected_state 1 while the ADS stream is up)
    "envoy_control_plane_connected_state": frozenset(),
    "envoy_cluster_manager_cds_update_rejected": frozenset(),
    "envoy_listener_manager_lds_update_rejected": frozenset(),
    "envoy_http_rds_update_rejected": _HCM | {"envoy_rds_route_config"},  # http.ccr.rds.ccr_routes.*
}
# What Prometheus itself adds to every scrape: `up` and friends, and the target's labels.
PROMETHEUS = {
    "up": frozenset(),
    "scrape_duration_seconds": frozenset(),
    "scrape_samples_scraped": frozenset(),
}
TARGET_LABELS = frozenset({"job", "instance", "gateway"})  # `gateway`: prometheus.yml's relabelling


def exported_series() -> dict[str, frozenset[str]]:
    """Every series name a Prometheus scraping a gateway can have -> its labels (target labels aside)."""
    series: dict[str, frozenset[str]] = {}
    for family in exported_families().values():
        series.update(family.series())
    return {**series, **ENVOY, **PROMETHEUS}


def recorded() -> dict[str, str]:
    """Names the recording rules define (deploy/observability/prometheus/rules/*.yml) -> their expression."""
    names = {}
    for _, group in _rule_groups():
        for rule in group.get("rules", []):
            if "record" in rule:
                names[rule["record"]] = str(rule["expr"])
    return names


def _rule_groups() -> Iterator[tuple[Path, dict]]:
    for path in sorted(RULES.glob("*.y*ml")) if RULES.is_dir() else []:
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            yield path, group


def rule_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every recording and alerting rule."""
    found = []
    for path, group in _rule_groups():
        for rule in group.get("rules", []):
            name = rule.get("record") or rule.get("alert")
            found.append((f"{path.name}:{group.get('name')}:{name}", str(rule["expr"])))
    return found


# --- the dashboards ----------------------------------------------------------------------------------


def dashboards() -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, those inside (collapsed) rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+),\s*)?(?P<label>\w+)\s*\)\s*$")
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.+)\)\s*$")


def variable_query(variable: dict) -> str:
    query = variable.get("query", "")
    return query.get("query", "") if isinstance(query, dict) else query


def expressions(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable (label_values(selector, label):
    the selector and the label, as an expression grouping by it)."""
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable_query(variable)
        if match := _LABEL_VALUES.match(query):
            selector = match["selector"] or "up"
            found.append((f"variable {variable['name']}", f"count by ({match['label']}) ({selector})"))
        elif match := _QUERY_RESULT.match(query):
            found.append((f"variable {variable['name']}", match["expr"]))
        else:
            raise AssertionError(f"variable {variable['name']}: unknown query {query!r}")
    return found


# Grafana's built-in interval variables -> a value PromQL accepts (a real Prometheus run gets shorter ones).
INTERVALS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def substitute(expr: str, intervals: dict[str, str] = INTERVALS, value: str = ".*") -> str:
    """The expression as Prometheus gets it: the interval variables replaced by durations, every
    dashboard variable by ``value`` (the "All" value: they only appear in regex matchers)."""

    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        return intervals.get(name, value)

    return _VARIABLE.sub(replace, expr)


# --- a small PromQL lexer: the metric names and labels an expression uses ------------------------------

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_SELECTOR = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*\"\"\s*")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "start", "end",
}  # fmt: skip


@dataclass(frozen=True)
class Used:
    """What one expression names."""

    metrics: frozenset[str]
    matchers: frozenset[tuple[str, str]]  # (metric, label) of every label matcher
    grouping: frozenset[str]  # labels of by / without / on / ignoring / group_left / group_right


def used(expr: str) -> Used:
    text = _STRING.sub('""', expr)  # strings hold values, never names
    if "__name__" in text:
        raise AssertionError(f"select metrics by name, not by __name__: {expr}")
    metrics, matchers = set(), set()
    for name, body in _SELECTOR.findall(text):
        if not name:
            raise AssertionError(f"a selector without a metric name: {expr}")
        for matcher in filter(str.strip, body.split(",")):
            found = _MATCHER.fullmatch(matcher)
            assert found, f"cannot read the matcher {matcher!r} of {expr}"
            matchers.add((name, found[1]))
    text = _SELECTOR.sub(lambda m: m[1] or "", text)
    text = _RANGE.sub("", text)  # ranges and subqueries: durations
    grouping = set()
    for _, labels in _GROUPING.findall(text):
        grouping |= {label.strip() for label in labels.split(",") if label.strip()}
    text = _GROUPING.sub(" ", text)
    for name, call in _IDENTIFIER.findall(text):
        if not call and name.lower() not in _KEYWORDS:
            metrics.add(name)
    return Used(frozenset(metrics), frozenset(matchers), frozenset(grouping))


def unknown_names(expr: str, known: dict[str, frozenset[str]]) -> list[str]:
    """What an expression names that ``known`` (series name -> labels) lacks: metrics, labels matched
    on a metric without them, labels grouped by that none of its metrics has."""
    use = used(expr)
    problems = [f"metric {name}" for name in sorted(use.metrics - known.keys())]
    for metric, label in sorted(use.matchers):
        if metric in known and label not in known[metric] | TARGET_LABELS:
            problems.append(f"label {label} on {metric} (it has {sorted(known[metric])})")
    # Grouping labels only once every metric is known (an unknown one explains them already).
    if not problems and "label_replace" not in expr and "label_join" not in expr:
        available = set(TARGET_LABELS).union(*(known.get(metric, frozenset()) for metric in use.metrics))
        problems += [f"grouping label {label}" for label in sorted(use.grouping - available)]
    return problems


def known_series() -> dict[str, frozenset[str]]:
    """What a dashboard may name: the gateway's series and the recording rules' outputs (their
    labels: whatever their expression keeps, not checked here)."""
    series = exported_series()
    everything = frozenset().union(*series.values()) | TARGET_LABELS
    return {**series, **dict.fromkeys(recorded(), everything)}


# --- tests ----------------------------------------------------------------------------------------


def test_the_five_dashboards_of_the_seed_are_there():
    assert sorted(dashboards()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_a_dashboard_has_what_grafana_needs_to_load_it(name: str):
    board = dashboards()[name]
    assert re.fullmatch(r"[a-z0-9-]{1,40}", board["uid"]), board["uid"]  # Grafana caps uids at 40 characters
    assert board["title"].strip() and isinstance(board["schemaVersion"], int)
    assert "ccr-gateway" in board["tags"]  # the dashboards' links find each other by it
    all_panels = list(panels(board))
    ids = [panel["id"] for panel in all_panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    for panel in all_panels:
        position = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= position.keys() and position["x"] + position["w"] <= 24, panel["title"]
        assert panel["title"].strip(), panel
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']!r} has no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE and target["expr"].strip(), panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit") or panel["type"] == "heatmap", f"{panel['title']!r}: unit"
        assert panel.get("description", "").strip(), f"{panel['title']!r}: say what it shows"


@pytest.mark.parametrize("name", EXPECTED)
def test_no_two_panels_overlap(name: str):
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboards()[name]["panels"]:  # top level: a collapsed row's panels are laid out when opened
        position = panel["gridPos"]
        for x in range(position["x"], position["x"] + position["w"]):
            for y in range(position["y"], position["y"] + position["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("name", EXPECTED)
def test_the_data_source_is_a_variable_so_provisioning_and_import_both_work(name: str):
    board = dashboards()[name]
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
            # Grafana shows `definition` and runs `query`: one must be the other.
            assert variable.get("definition", variable_query(variable)) == variable_query(variable), variable["name"]
    # A variable a query uses must exist (else Grafana sends "$provider" to Prometheus).
    for where, expr in expressions(board):
        for match in _VARIABLE.finditer(expr):
            variable = match[1] or match[2]
            assert variable in variables or variable in INTERVALS, f"{name} {where}: ${variable} is not defined"


def test_the_dashboards_offer_the_variables_of_the_issue():
    offered = {
        name: {v["name"] for v in board["templating"]["list"] if v["type"] == "query"}
        for name, board in dashboards().items()
    }
    assert set().union(*offered.values()) >= {"provider", "model", "tenant", "client_api"}
    assert {"provider", "model"} <= offered["api-performance"] and "provider" in offered["provider-health"]


def test_variables_appear_only_inside_label_matchers():
    """Substituting a sample value can then never change an expression's syntax."""
    for name, board in dashboards().items():
        for where, expr in expressions(board):
            outside = _STRING.sub('""', _RANGE.sub("[]", expr))
            assert "$" not in outside, f"{name} {where}: a variable outside a string or range: {expr}"


def test_the_seeds_slos_are_drawn_as_thresholds():
    """p95 gateway overhead under 100 ms and 99.99% availability, as the seed sets them."""
    board = dashboards()["system-overview"]
    steps = {
        panel["title"]: [step["value"] for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
        for panel in panels(board)
        if panel["type"] != "row"
    }
    assert 0.9999 in steps["Availability (range)"]
    assert 0.1 in steps["Gateway overhead p95"] and 0.1 in steps["Gateway overhead (p50 / p95 / p99)"]
    overhead = next(p for p in panels(board) if p["title"] == "Gateway overhead (p50 / p95 / p99)")
    assert overhead["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"
    assert [t["legendFormat"] for t in overhead["targets"]] == ["p50", "p95", "p99"]


def test_percentiles_come_from_histogram_buckets_by_le():
    for name, board in dashboards().items():
        for where, expr in expressions(board):
            for match in re.finditer(r"histogram_quantile\(", expr):
                rest = expr[match.end() :]
                assert "_bucket" in rest.split("histogram_quantile(")[0], f"{name} {where}: {expr}"
                assert re.search(r"by \((le\b|[^)]*\ble\b)", rest), f"{name} {where}: not summed by le: {expr}"


def test_every_expression_names_only_metrics_and_labels_the_gateway_exports():
    known = known_series()
    problems = [
        f"{name} {where}: {problem}"
        for name, board in dashboards().items()
        for where, expr in expressions(board)
        for problem in unknown_names(substitute(expr), known)
    ]
    assert not problems, "\n".join(problems)


def test_every_dashboard_expression_parses():
    """promtool parses each expression as the expression of a recording rule (variables substituted)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    rules = [
        {"record": f"check:{name.replace('-', '_')}:{index}", "expr": substitute(expr)}
        for name, board in dashboards().items()
        for index, (_, expr) in enumerate(expressions(board))
    ]
    assert len(rules) > 50
    check_rules(promtool, rules)


def check_rules(promtool: str, rules: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "dashboards.rules.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, sort_keys=False))
        result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_typo_in_a_metric_or_label_is_caught():
    known = known_series()
    good = 'histogram_quantile(0.95, sum by (le, client_api) (rate(ccr_gateway_overhead_seconds_bucket{client_api=~".*"}[5m])))'
    assert unknown_names(good, known) == []
    assert unknown_names(good.replace("overhead_seconds", "overhead_second"), known) == [
        "metric ccr_gateway_overhead_second_bucket"
    ]
    assert unknown_names(good.replace("{client_api", "{clientapi"), known) == [
        "label clientapi on ccr_gateway_overhead_seconds_bucket (it has ['client_api', 'le'])"
    ]
    assert unknown_names(good.replace("le, client_api", "le, provider"), known) == ["grouping label provider"]
    assert unknown_names("sum(rate(ccr_requests[5m]))", known) == ["metric ccr_requests"]  # a counter needs _total


def test_the_lexer_finds_metrics_not_functions_keywords_labels_or_durations():
    expr = (
        '1 - (sum by (envoy_cluster_name) (rate(envoy_cluster_upstream_rq_xx{envoy_cluster_name=~"provider_.*",'
        'envoy_response_code_class="5"}[5m] offset 1h)) or vector(0)) / on (envoy_cluster_name) group_left '
        "sum without (instance) (increase(envoy_cluster_upstream_rq_total[1h:1m])) > bool 1e3 and time() - "
        "max(ccr_consul_watch_last_answer_timestamp_seconds) unless absent(up)"
    )
    use = used(expr)
    assert use.metrics == {
        "envoy_cluster_upstream_rq_xx",
        "envoy_cluster_upstream_rq_total",
        "ccr_consul_watch_last_answer_timestamp_seconds",
        "up",
    }
    assert use.matchers == {
        ("envoy_cluster_upstream_rq_xx", "envoy_cluster_name"),
        ("envoy_cluster_upstream_rq_xx", "envoy_response_code_class"),
    }
    assert use.grouping == {"envoy_cluster_name", "instance"}
    assert used('count by (tenant) (ccr_cost_usd_total{tenant=~"a,b"})').metrics == {"ccr_cost_usd_total"}


def test_the_static_scan_finds_the_families_of_every_process():
    families = exported_families()
    assert families["gen_ai_server_request_duration_seconds"].labels == {
        "gen_ai_operation_name",
        "gen_ai_provider_name",
        "gen_ai_request_model",
        "gen_ai_response_model",
        "error_type",
    }
    series = exported_series()
    for name in (
        "ccr_requests_total",  # extproc/genai_metrics.py
        "ccr_cost_usd_total",  # a counter defined without _total
        "ccr_cache_requests_total",  # extproc/cache
        "ccr_ledger_records_written_total",  # ledger/
        "ccr_xds_nacks_total",  # control_plane/
        "ccr_child_restarts_total",  # ccr_gateway/supervisor.py
        "ccr_batch_lane_depth",  # batches/lane_metrics.py
        "ccr_batch_worker_send_seconds_bucket",  # batches/worker.py
        "ccr_gateway_overhead_seconds_bucket",
    ):
        assert name in series, name


def test_the_queue_dashboard_draws_every_batch_lane_and_worker_metric():
    """docs/batches.md "Monitoring": every family of batches/lane_metrics.py and batches/worker.py
    has a panel, and the send time is drawn as p50 and p99."""
    families = {name for name, family in exported_families().items() if family.where.startswith("batches/")}
    assert families >= {
        "ccr_batch_lane_depth", "ccr_batch_tenant_waiting_items", "ccr_batch_lane_oldest_message_age_seconds",
        "ccr_batch_dead_letter_depth", "ccr_batch_lane_published_total", "ccr_batch_lane_acked_total",
        "ccr_batch_lane_requeued_total", "ccr_batch_lane_dead_lettered_total", "ccr_batch_worker_items_total",
        "ccr_batch_worker_send_seconds",
    }  # fmt: skip
    board = dashboards()["queue-metrics"]
    drawn = set().union(*(used(substitute(expr)).metrics for _, expr in expressions(board)))
    for family in sorted(families):
        assert set(exported_families()[family].series()) & drawn, f"no panel draws {family}"
    send = next(p for p in panels(board) if p["title"] == "Item send time (p50 / p99)")
    assert [t["legendFormat"] for t in send["targets"]] == ["p50", "p99"]


def test_provisioning_points_grafana_at_the_dashboards_and_a_prometheus():
    datasources = yaml.safe_load((PROVISIONING / "datasources/prometheus.yml").read_text())
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] and source["isDefault"] is True
    providers = yaml.safe_load((PROVISIONING / "dashboards/ccr.yml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    # The path is where the dashboards directory is mounted in Grafana's container; the folder name matches.
    assert Path(provider["options"]["path"]).name == DASHBOARDS.name
