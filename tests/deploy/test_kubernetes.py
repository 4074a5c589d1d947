"""k8s/: the kustomize base and overlays and the Helm chart, rendered and checked offline.

Rendered with `kubectl kustomize` and `helm template` (the binaries .ci/run installs), then:
kubernetes-validate --strict (the API schemas it bundles), checkov with the exceptions of
k8s/.checkov.yaml, `helm lint --strict`, and the project's own rules: hardened containers, sized
resources, probes on the real health endpoints, secrets only referenced, policies that validate,
command lines that parse, an Envoy bootstrap that Envoy accepts.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ccr_gateway.envoy_bootstrap import envoy_binary
from tests.deploy.commands import POD_MODULE, check_exec, parse_ccr, parse_pod
from tests.deploy.tools import REPO, explain, run, tool

CHART = REPO / "k8s" / "helm" / "ccr-gateway"
KUSTOMIZE = {"base": "k8s/base", "dev": "k8s/overlays/dev", "prod": "k8s/overlays/prod"}
HELM_VALUES = {
    "helm-default": None,
    "helm-all-backends": "ci/all-backends-values.yaml",
    "helm-redis-cluster": "ci/redis-cluster-values.yaml",
    "helm-vault-tracing": "ci/vault-tracing-values.yaml",
}
RENDERS = [*KUSTOMIZE, *HELM_VALUES]
DEPLOYABLE = [name for name in RENDERS if name != "base"]  # the base alone has no namespace


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each render's manifests in a file of their own."""
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for name, directory in KUSTOMIZE.items():
        result = run([tool("kubectl"), "kustomize", directory])
        assert result.returncode == 0, explain(result)
        files[name] = out / f"{name}.yaml"
        files[name].write_text(result.stdout)
    for name, values in HELM_VALUES.items():
        argv = [tool("helm"), "template", "ccr", str(CHART), "--namespace", "ccr-gateway"]
        result = run([*argv, *(["-f", str(CHART / values)] if values else [])])
        assert result.returncode == 0, explain(result)
        files[name] = out / f"{name}.yaml"
        files[name].write_text(result.stdout)
    return files


@functools.cache
def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def workloads(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in documents(path) if doc["kind"] == "Deployment"]


# The oldest Kubernetes the chart admits (Chart.yaml kubeVersion >=1.25: every API used here is GA
# there) and the newest kubernetes-validate bundles.
@pytest.mark.parametrize("version", ["1.25.0", "1.37.0"])
def test_kubernetes_validate_accepts_every_rendered_manifest(rendered: dict[str, Path], version: str) -> None:
    argv = [tool("kubernetes-validate"), "--strict", "--quiet", "--kubernetes-version", version]
    result = run([*argv, *map(str, rendered.values())])
    assert result.returncode == 0, explain(result)


def test_checkov_passes_with_only_the_documented_exceptions(rendered: dict[str, Path]) -> None:
    files = [arg for name in DEPLOYABLE for arg in ("-f", str(rendered[name]))]
    result = run([tool("checkov"), "--config-file", str(REPO / "k8s" / ".checkov.yaml"), *files], timeout=300)
    assert result.returncode == 0, explain(result)
    assert "Failed checks: 0" in result.stdout, explain(result)


@pytest.mark.parametrize("values", list(HELM_VALUES.values()), ids=list(HELM_VALUES))
def test_helm_lint_is_clean(values: str | None) -> None:
    result = run([tool("helm"), "lint", "--strict", str(CHART), *(["-f", str(CHART / values)] if values else [])])
    assert result.returncode == 0, explain(result)


@pytest.mark.parametrize("name", RENDERS)
def test_every_render_has_the_whole_deployment(rendered: dict[str, Path], name: str) -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"].rsplit("-", 1)[-1]) for doc in documents(rendered[name])}
    for kind, suffix in [
        ("Deployment", "plane"), ("Deployment", "gateway"), ("Service", "plane"), ("Service", "gateway"),
        ("HorizontalPodAutoscaler", "gateway"), ("PodDisruptionBudget", "gateway"), ("ConfigMap", "policy"),
        ("NetworkPolicy", "gateway"),
    ]:  # fmt: skip
        if kind == "ConfigMap" and name == "helm-all-backends":
            continue  # the policy comes from Consul there
        if kind == "HorizontalPodAutoscaler" and name == "helm-redis-cluster":
            continue  # autoscaling off there
        assert (kind, suffix) in kinds, f"{name}: no {kind} *-{suffix}"
    assert "ServiceAccount" in {kind for kind, _ in kinds}, f"{name}: no ServiceAccount"


@pytest.mark.parametrize("name", RENDERS)
def test_secrets_are_only_referenced(rendered: dict[str, Path], name: str) -> None:
    assert not [doc for doc in documents(rendered[name]) if doc["kind"] == "Secret"]
    for workload in workloads(rendered[name]):
        spec = workload["spec"]["template"]["spec"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            for env in container.get("env", []):
                value = env.get("value", "")
                if "@" in value and "://" in value:  # a URL with credentials: the password is a $(VAR)
                    credentials = value.split("://", 1)[1].split("@", 1)[0]
                    assert ":" not in credentials or "$(" in credentials, f"{name}: {env['name']} holds a password"


@pytest.mark.parametrize("name", RENDERS)
def test_every_container_is_hardened_and_sized(rendered: dict[str, Path], name: str) -> None:
    for workload in workloads(rendered[name]):
        spec = workload["spec"]["template"]["spec"]
        where = f"{name}: {workload['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, (where, container["name"])
            assert security["readOnlyRootFilesystem"] is True, (where, container["name"])
            assert security["capabilities"] == {"drop": ["ALL"]}, (where, container["name"])
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, (where, container["name"], kind)
            assert ":" in container["image"] or "@sha256:" in container["image"], container["image"]
            assert not container["image"].endswith(":latest"), container["image"]


@pytest.mark.parametrize("name", RENDERS)
def test_long_running_containers_have_probes_and_pods_spread_over_zones(rendered: dict[str, Path], name: str) -> None:
    for workload in workloads(rendered[name]):
        spec = workload["spec"]["template"]["spec"]
        for container in spec["containers"]:
            assert "readinessProbe" in container and "livenessProbe" in container, (name, container["name"])
            if container["name"] in ("envoy", "extproc", "control-plane"):
                assert "startupProbe" in container, (name, container["name"])
        if "fake-provider" not in workload["metadata"]["name"]:
            keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
            assert "topology.kubernetes.io/zone" in keys, (name, workload["metadata"]["name"])


def test_prod_spreads_over_zones_as_a_hard_constraint(rendered: dict[str, Path]) -> None:
    for workload in workloads(rendered["prod"]):
        if workload["metadata"]["name"] in ("ccr-gateway", "ccr-control-plane"):
            zone = workload["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
            assert zone["whenUnsatisfiable"] == "DoNotSchedule"


@pytest.mark.parametrize("name", RENDERS)
def test_the_probes_ask_the_real_health_endpoints(rendered: dict[str, Path], name: str) -> None:
    for workload in workloads(rendered[name]):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            probes = {kind: container.get(kind) for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
            if container["name"] == "envoy":
                commands = [probe["exec"]["command"] for probe in probes.values()]
                assert [c[-1] for c in commands] == [
                    "http://127.0.0.1:9901/ready", "http://127.0.0.1:9901/ready", "http://127.0.0.1:9901/server_info"
                ]  # fmt: skip
            if container["name"] == "extproc":
                assert {probe["exec"]["command"][-1] for probe in probes.values()} == {"unix:/run/ccr/hop-0.sock"}
            if container["name"] == "control-plane":
                assert probes["readinessProbe"]["tcpSocket"]["port"] == "grpc-xds"
                assert probes["livenessProbe"]["httpGet"]["path"] == "/metrics"


def test_the_batches_are_optional_and_their_workers_metrics_relayed(rendered: dict[str, Path]) -> None:
    """values batches.enabled (off by default): the batch API (reached by the gateway pods only, named
    in the policy's batches:) and the batch workers, whose loopback metrics page is relayed on 9464."""
    assert not [w for w in workloads(rendered["helm-default"]) if "batch" in w["metadata"]["name"]]
    assert "batches:" not in policies(rendered)["helm-default"]
    assert yaml.safe_load(policies(rendered)["helm-vault-tracing"])["batches"] == {"api": "ccr-batch-api:9180"}
    for name in ("helm-all-backends", "helm-vault-tracing"):
        found = {w["metadata"]["name"]: w["spec"]["template"] for w in workloads(rendered[name])}
        api = found["ccr-batch-api"]["spec"]["containers"][0]
        assert api["args"][:2] == ["batch-api", "--listen=0.0.0.0:9180"]
        assert api["readinessProbe"]["httpGet"]["path"] == "/healthz"
        worker = found["ccr-batch-worker"]
        assert worker["metadata"]["annotations"]["prometheus.io/port"] == "9464"
        batch_worker, relay = worker["spec"]["containers"]
        assert {"--metrics-port=9181", "--gateway=http://ccr-gateway:8080"} <= set(batch_worker["args"])
        assert any(arg.startswith("--amqp=amqp://ccr:$(CCR_RABBITMQ_PASSWORD)@") for arg in batch_worker["args"])
        assert batch_worker["livenessProbe"]["exec"]["command"][-1] == "http://127.0.0.1:9181/metrics"
        assert "--route=/metrics=http://127.0.0.1:9181/metrics" in relay["args"]
        assert relay["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
        for component in ("ccr-batch-api", "ccr-batch-worker"):
            env = {e["name"]: e for c in found[component]["spec"]["containers"] for e in c.get("env", [])}
            assert env["CCR_BATCH_POSTGRES"]["value"].startswith("postgresql://ccr:$(CCR_POSTGRES_PASSWORD)@")
        allowed = {
            doc["metadata"]["name"]: doc["spec"].get("ingress", [])
            for doc in documents(rendered[name])
            if doc["kind"] == "NetworkPolicy"
        }
        (from_gateway,) = allowed["ccr-batch-api"]
        assert from_gateway["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "ccr-gateway"
        assert allowed["ccr-batch-worker"][0]["ports"] == [{"port": 9464, "protocol": "TCP"}]


def test_the_hpa_scales_on_cpu_and_on_requests_in_flight(rendered: dict[str, Path]) -> None:
    for name in ("prod", "helm-default"):
        hpa = next(doc for doc in documents(rendered[name]) if doc["kind"] == "HorizontalPodAutoscaler")
        types = {metric["type"]: metric for metric in hpa["spec"]["metrics"]}
        assert types["Resource"]["resource"]["name"] == "cpu"
        assert types["Pods"]["pods"]["metric"]["name"] == "ccr_gateway_downstream_rq_active"
    adapter = yaml.safe_load((REPO / "k8s/prometheus-adapter/values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == "ccr_gateway_downstream_rq_active"
    assert 'envoy_http_conn_manager_prefix="ccr"' in rule["metricsQuery"]  # control_plane/resources/gateway.py


@pytest.mark.parametrize("name", RENDERS)
def test_every_command_line_parses(rendered: dict[str, Path], name: str) -> None:
    for workload in workloads(rendered[name]):
        spec = workload["spec"]["template"]["spec"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            command, args = container.get("command"), container.get("args", [])
            if command is None:
                parse_ccr(args)
            elif command == POD_MODULE:
                parse_pod(args)
            else:
                assert command == ["envoy"], (name, container["name"], command)
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(kind) or {}
                if "exec" in probe:
                    check_exec(probe["exec"]["command"])


def policies(rendered: dict[str, Path]) -> dict[str, str]:
    found = {"k8s/base/policy.yaml": (REPO / "k8s/base/policy.yaml").read_text()}
    found["k8s/overlays/dev/policy.yaml"] = (REPO / "k8s/overlays/dev/policy.yaml").read_text()
    for name in HELM_VALUES:
        for doc in documents(rendered[name]):
            if doc["kind"] == "ConfigMap" and "policy.yaml" in doc.get("data", {}):
                found[name] = doc["data"]["policy.yaml"]
    return found


def test_every_policy_validates(rendered: dict[str, Path], tmp_path: Path) -> None:
    found = policies(rendered)
    assert "tracing:" in found["helm-vault-tracing"] and "vault:" in found["helm-vault-tracing"]
    for name, text in found.items():
        path = tmp_path / (name.replace("/", "_") + ".yaml")
        path.write_text(text)
        result = run([sys.executable, "-m", "ccr_gateway", "validate", "-c", str(path)])
        assert result.returncode == 0, f"{name}\n{explain(result)}"


def test_envoy_accepts_the_bootstrap_the_init_container_writes(rendered: dict[str, Path], tmp_path: Path) -> None:
    gateway = next(w for w in workloads(rendered["prod"]) if w["metadata"]["name"] == "ccr-gateway")
    init = gateway["spec"]["template"]["spec"]["initContainers"][0]
    bootstrap = tmp_path / "bootstrap.yaml"
    argv = [word.replace("$(POD_NAME)", "pod-0") for word in init["args"]]
    argv = [f"--output={bootstrap}" if word.startswith("--output=") else word for word in argv]
    assert "--output=/run/ccr/bootstrap.yaml" in init["args"]
    result = run([sys.executable, "-m", "ccr_gateway", *argv])
    assert result.returncode == 0, explain(result)
    envoy = gateway["spec"]["template"]["spec"]["containers"][0]
    assert envoy["args"][:2] == ["-c", "/run/ccr/bootstrap.yaml"]
    validated = run([envoy_binary(), "--mode", "validate", "-c", str(bootstrap), *envoy["args"][2:]], timeout=60)
    assert validated.returncode == 0, explain(validated)
