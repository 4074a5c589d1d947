"""The sidecar injection webhook (control_plane/injector): AdmissionReview JSON in, AdmissionReview
out, checked against the reviews in tests/fixtures/admission/. A patch is applied with the strict
RFC 6902 applier below (an ``add`` under a missing parent fails, as in the API server), and the
injected command lines are parsed by the real `ccr-gateway` CLI, so they cannot drift from it."""

from __future__ import annotations

import base64
import copy
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from ccr_gateway import cli
from ccr_gateway.certs import make_dev_certs
from ccr_gateway.envoy_bootstrap import render_bootstrap, worker_hop_cluster
from ccr_gateway.envoy_bootstrap import worker_sockets as bootstrap_worker_sockets
from control_plane.injector import sidecar
from control_plane.injector.cli import config_of
from control_plane.injector.config import ConfigError, InjectorConfig, config_from_mapping, load_config
from control_plane.injector.patch import decide
from control_plane.injector.server import TlsFiles, start

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "admission"
CONFIG = InjectorConfig(image="registry.example/ccr-gateway:0.1.0", control_plane="ccr-cp.ccr.svc:18000")
INJECTED_NAMES = ["ccr-bootstrap", "ccr-extproc-0", "ccr-envoy"]


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def review_of(name: str) -> dict:
    return json.loads(fixture(name))


def answer(body: bytes, **kwargs) -> dict:
    decision = decide(body, CONFIG, **kwargs)
    assert decision.http_status == 200, decision.body
    reply = decision.body
    assert (reply["apiVersion"], reply["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
    assert reply["response"]["uid"] == json.loads(body)["request"]["uid"]
    return reply["response"]


def patch_of(response: dict) -> list[dict]:
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(response["patch"]))


# --- a strict RFC 6902 applier (add, remove, replace) ---------------------------------------------


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def apply_patch(document: dict, ops: list[dict]) -> dict:
    out = copy.deepcopy(document)
    for op in ops:
        *parents, last = _pointer(op["path"])
        target = out
        for part in parents:  # KeyError / IndexError: the parent does not exist, the patch fails
            target = target[int(part)] if isinstance(target, list) else target[part]
        if op["op"] == "add":
            if isinstance(target, list):
                index = len(target) if last == "-" else int(last)
                if not 0 <= index <= len(target):
                    raise IndexError(op["path"])
                target.insert(index, copy.deepcopy(op["value"]))
            else:
                assert isinstance(target, dict), op["path"]
                target[last] = copy.deepcopy(op["value"])
        elif op["op"] == "replace":
            if isinstance(target, list):
                target[int(last)] = copy.deepcopy(op["value"])
            elif last not in target:
                raise KeyError(op["path"])
            else:
                target[last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del target[int(last) if isinstance(target, list) else last]
        else:
            raise ValueError(op["op"])
    return out


def test_the_applier_is_strict_about_missing_parents() -> None:
    with pytest.raises(KeyError):
        apply_patch({"spec": {}}, [{"op": "add", "path": "/spec/volumes/-", "value": {}}])
    patched = apply_patch({"a": {"b/c": 1}}, [{"op": "replace", "path": "/a/b~1c", "value": 2}])
    assert patched == {"a": {"b/c": 2}}


def injected_pod(name: str, **kwargs) -> dict:
    review = review_of(name)
    return apply_patch(review["request"]["object"], patch_of(answer(fixture(name), **kwargs)))


def containers(pod: dict, key: str = "containers") -> dict[str, dict]:
    return {c["name"]: c for c in pod["spec"].get(key, [])}


# --- the decisions -----------------------------------------------------------------------------------


def test_a_pod_without_the_label_is_allowed_unchanged() -> None:
    response = answer(fixture("unlabelled-pod.json"))
    assert response == {"uid": "3f6c2a10-0002-4c1e-9a1b-000000000002", "allowed": True}


def test_a_labelled_pod_gets_envoy_the_worker_and_the_bootstrap() -> None:
    pod = injected_pod("labelled-pod.json")
    init = [c["name"] for c in pod["spec"]["initContainers"]]
    assert init == ["ccr-bootstrap", "migrate"]  # the bootstrap before the application's own
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app", "ccr-extproc-0", "ccr-envoy"]
    volumes = [v["name"] for v in pod["spec"]["volumes"]]
    assert volumes == ["kube-api-access-x1", "ccr-run", "ccr-tmp", "ccr-data"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["ccr-gateway.io/status"] == "injected"
    assert annotations["kubectl.kubernetes.io/restartedAt"] == "2026-12-01T10:00:00Z"  # kept
    original = review_of("labelled-pod.json")["request"]["object"]
    assert containers(pod)["app"] == original["spec"]["containers"][0]  # the application is not touched


def test_the_status_annotation_key_is_escaped_in_the_patch() -> None:
    ops = patch_of(answer(fixture("labelled-pod.json")))
    assert {"op": "add", "path": "/metadata/annotations/ccr-gateway.io~1status", "value": "injected"} in ops


def test_reinjection_is_a_no_op() -> None:
    review = review_of("labelled-pod.json")
    review["request"]["object"] = injected_pod("labelled-pod.json")
    again = answer(json.dumps(review).encode())
    assert again == {"uid": review["request"]["uid"], "allowed": True}
    assert answer(fixture("already-injected-pod.json")) == {
        "uid": "3f6c2a10-0003-4c1e-9a1b-000000000003",
        "allowed": True,
    }


def test_a_pod_missing_optional_arrays_gets_them_created() -> None:
    ops = patch_of(answer(fixture("minimal-pod.json")))
    paths = [op["path"] for op in ops]
    assert paths == [
        "/spec/initContainers",
        "/spec/containers/-",
        "/spec/containers/-",
        "/spec/volumes",
        "/metadata/annotations",
    ]
    pod = apply_patch(review_of("minimal-pod.json")["request"]["object"], ops)
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["ccr-bootstrap"]
    assert pod["metadata"]["annotations"] == {"ccr-gateway.io/status": "injected"}


def test_a_pod_without_metadata_or_containers_still_gets_a_valid_patch() -> None:
    review = review_of("minimal-pod.json")
    review["request"]["object"] = {"spec": {"containers": None}}
    review["request"]["namespace"] = "shop"
    pod = apply_patch(
        review["request"]["object"], patch_of(answer(json.dumps(review).encode(), namespace_opted_in=True))
    )
    assert [c["name"] for c in pod["spec"]["containers"]] == ["ccr-extproc-0", "ccr-envoy"]
    assert pod["metadata"] == {"annotations": {"ccr-gateway.io/status": "injected"}}


def test_annotations_override_the_control_plane_the_workers_and_the_admin_port() -> None:
    pod = injected_pod("overrides-pod.json")
    running = containers(pod)
    assert {"ccr-extproc-0", "ccr-extproc-1", "ccr-envoy"} <= set(running)
    worker = running["ccr-extproc-1"]["command"]
    assert worker[worker.index("--control-plane") + 1] == "ccr-cp.gateway-eu.svc.cluster.local:18001"
    assert worker[worker.index("--auth-workers") + 1] == "2"
    bootstrap = containers(pod, "initContainers")["ccr-bootstrap"]["command"]
    assert bootstrap[bootstrap.index("--xds") + 1] == "ccr-cp.gateway-eu.svc.cluster.local:18001"
    assert bootstrap[bootstrap.index("--workers") + 1] == "2"
    assert bootstrap[bootstrap.index("--admin-port") + 1] == "15000"
    ready = running["ccr-envoy"]["readinessProbe"]["exec"]["command"]
    assert "http://127.0.0.1:15000/ready" in ready[-1]


def test_the_namespace_path_injects_unlabelled_pods_but_not_those_labelled_false() -> None:
    pod = injected_pod("unlabelled-pod.json", namespace_opted_in=True)
    assert "ccr-envoy" in containers(pod)
    review = review_of("unlabelled-pod.json")
    review["request"]["object"]["metadata"]["labels"]["ccr-gateway.io/inject"] = "false"
    assert "patch" not in answer(json.dumps(review).encode(), namespace_opted_in=True)


def test_only_a_create_is_patched() -> None:
    review = review_of("labelled-pod.json")
    review["request"]["operation"] = "UPDATE"
    assert "patch" not in answer(json.dumps(review).encode())


def refusal(name_or_body: str | bytes) -> str:
    body = fixture(name_or_body) if isinstance(name_or_body, str) else name_or_body
    response = answer(body)
    assert response["allowed"] is False
    status = response["status"]
    assert (status["code"], status["reason"], status["status"]) == (400, "BadRequest", "Failure")
    return status["message"]


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("deployment.json", "only Pods are injected"),
        ("v1beta1-review.json", "not an admission.k8s.io/v1 AdmissionReview"),
        ("bad-annotation-pod.json", "annotation ccr-gateway.io/workers: 'many' is not a whole number within 1..8"),
        ("pod-without-spec.json", "the pod has no spec"),
    ],
)
def test_a_wrong_review_with_a_uid_is_refused_with_a_message(name: str, says: str) -> None:
    assert says in refusal(name)


@pytest.mark.parametrize(
    "value",
    ["127.0.0.1", "cp:99999", "cp:18000; rm -rf /", "$(EVIL):18000", "http://cp:18000", ""],
)
def test_a_control_plane_annotation_that_is_not_host_port_is_refused(value: str) -> None:
    review = review_of("labelled-pod.json")
    review["request"]["object"]["metadata"]["annotations"]["ccr-gateway.io/control-plane"] = value
    assert "annotation ccr-gateway.io/control-plane" in refusal(json.dumps(review).encode())


def test_a_pod_that_already_has_a_container_or_volume_of_that_name_is_refused() -> None:
    review = review_of("labelled-pod.json")
    review["request"]["object"]["spec"]["containers"].append({"name": "ccr-envoy", "image": "envoyproxy/envoy"})
    assert "container name(s) ccr-envoy already taken" in refusal(json.dumps(review).encode())
    review = review_of("labelled-pod.json")
    review["request"]["object"]["spec"]["volumes"].append({"name": "ccr-run", "emptyDir": {}})
    assert "volume name(s) ccr-run already taken" in refusal(json.dumps(review).encode())


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "no request.uid"),
        (fixture("no-uid.json"), "no request.uid"),
        (fixture("not-a-review.json"), "no request.uid"),
    ],
)
def test_a_body_with_no_review_to_answer_is_an_http_400(body: bytes, says: str) -> None:
    decision = decide(body, CONFIG)
    assert decision.http_status == 400
    assert decision.body["kind"] == "Status" and decision.body["code"] == 400
    assert says in decision.body["message"]


# --- what is injected ------------------------------------------------------------------------------


def test_every_injected_container_runs_locked_down_and_sized() -> None:
    pod = injected_pod("overrides-pod.json")
    ours = [c for c in [*pod["spec"]["initContainers"], *pod["spec"]["containers"]] if c["name"].startswith("ccr-")]
    assert len(ours) == 4
    for container in ours:
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert set(container["resources"]) == {"requests", "limits"}
        assert container["image"] == CONFIG.image
        assert {"name": "ccr-run", "mountPath": "/run/ccr"} in container["volumeMounts"]


def test_the_injected_command_lines_are_real_ccr_gateway_command_lines() -> None:
    settings = sidecar.PodSettings.of(CONFIG, {"ccr-gateway.io/workers": "3"})
    parts = sidecar.sidecar_parts(settings)
    (bootstrap,) = parts.init_containers
    command = bootstrap["command"]
    assert command[0] == "ccr-gateway"
    bootstrap_args = cli.build_parser("envoy-bootstrap").parse_args(command[1:])
    assert (bootstrap_args.run_dir, bootstrap_args.workers) == (sidecar.RUN_DIR, 3)
    assert (bootstrap_args.xds, bootstrap_args.output) == ("ccr-cp.ccr.svc:18000", sidecar.BOOTSTRAP_PATH)
    extproc_sockets, hop_sockets = bootstrap_worker_sockets(sidecar.RUN_DIR, 3)
    assert sidecar.worker_sockets(3) == (extproc_sockets, hop_sockets)  # what the bootstrap names
    for index in range(3):
        worker = next(c for c in parts.containers if c["name"] == f"ccr-extproc-{index}")
        assert worker["command"][0] == "ccr-gateway"
        args = cli.build_parser("extproc").parse_args(worker["command"][1:])
        assert args.listen == f"unix:{extproc_sockets[index]}"
        assert args.hop_listen == f"unix:{hop_sockets[index]}"
        assert args.hop_cluster == worker_hop_cluster(index)
        assert (args.control_plane, args.auth_workers) == ("ccr-cp.ccr.svc:18000", 3)
    envoy = next(c for c in parts.containers if c["name"] == "ccr-envoy")
    assert envoy["command"][:3] == ["envoy", "-c", sidecar.BOOTSTRAP_PATH]


def test_native_sidecars_are_init_containers_that_keep_running() -> None:
    config = CONFIG.with_overrides(native_sidecars=True)
    decision = decide(fixture("labelled-pod.json"), config)
    pod = apply_patch(review_of("labelled-pod.json")["request"]["object"], patch_of(decision.body["response"]))
    init = pod["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["ccr-bootstrap", "ccr-extproc-0", "ccr-envoy", "migrate"]
    assert [c.get("restartPolicy") for c in init] == [None, "Always", "Always", None]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app"]


def test_the_bootstrap_step_writes_a_bootstrap_envoy_accepts(tmp_path) -> None:
    """The init container's command, run here as the kubelet would run it (but for $(VAR) expansion)."""
    settings = sidecar.PodSettings.of(CONFIG.with_overrides(control_plane="ccr-cp.ccr.svc:18000"), {})
    command = sidecar.sidecar_parts(settings).init_containers[0]["command"]
    out = tmp_path / "envoy.yaml"
    command = [*command[: command.index("--output") + 1], str(out)]
    command[:1] = [str(Path(sys.executable).with_name("ccr-gateway"))]
    if not Path(command[0]).exists():
        command[:1] = [sys.executable, "-m", "ccr_gateway.cli"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    written = yaml.safe_load(out.read_text())
    (xds_cluster,) = [c for c in written["static_resources"]["clusters"] if c["name"] == "ccr_xds"]
    address = xds_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert (xds_cluster["type"], address["socket_address"]["address"]) == ("STRICT_DNS", "ccr-cp.ccr.svc")
    assert written["admin"]["address"]["socket_address"]["port_value"] == 9901
    extproc, hop = sidecar.worker_sockets(1)
    assert out.read_text() == render_bootstrap(written["node"]["id"], 9901, "ccr-cp.ccr.svc:18000", extproc, hop)
    if shutil.which("envoy"):
        checked = subprocess.run(
            ["envoy", "--mode", "validate", "-c", str(out)], capture_output=True, text=True, timeout=60
        )
        assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]


def test_the_worker_probes_tell_waiting_for_a_policy_from_dead(tmp_path) -> None:
    """Readiness wants a 200 from the hop's /healthz; liveness any answer (a worker without its
    first policy answers 503 and must not be restarted for that)."""
    path = str(tmp_path / "hop.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    worker = sidecar.sidecar_parts(sidecar.PodSettings.of(CONFIG, {})).containers[0]

    def exit_code(probe: str, socket_path: str) -> int:
        command = worker[probe]["exec"]["command"]
        assert command[:2] == ["python", "-c"]
        code = command[2].replace(sidecar.worker_sockets(1)[1][0], socket_path)
        return subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2]).returncode

    try:
        assert exit_code("readinessProbe", path) == 1
        assert exit_code("livenessProbe", path) == 0
        assert exit_code("livenessProbe", str(tmp_path / "nothing.sock")) == 1
    finally:
        listener.close()


# --- the injector's settings ---------------------------------------------------------------------------


def test_settings_come_from_a_file_then_from_flags(tmp_path) -> None:
    path = tmp_path / "injector.yaml"
    path.write_text(
        "image: registry.example/ccr-gateway:1.2\n"
        "control_plane: cp.example:18000\n"
        "workers: 2\n"
        "resources:\n  envoy: {requests: {cpu: 200m, memory: 128Mi}, limits: {cpu: '2', memory: 512Mi}}\n"
        "extproc_env:\n  - {name: CCR_CACHE_REDIS, valueFrom: {secretKeyRef: {name: redis, key: url}}}\n"
    )
    loaded = load_config(path)
    assert (loaded.image, loaded.workers) == ("registry.example/ccr-gateway:1.2", 2)
    assert loaded.resources["envoy"]["limits"]["memory"] == "512Mi"
    assert loaded.resources["extproc"] == InjectorConfig().resources["extproc"]  # the others keep their defaults
    args = cli.build_parser("injector").parse_args(
        ["injector", "--tls-cert", "c", "--tls-key", "k", "--config", str(path), "--control-plane", "other:18000"]
    )
    assert args.func.__module__ == "control_plane.injector.cli"
    configured = config_of(args)
    assert (configured.control_plane, configured.image, configured.workers) == ("other:18000", loaded.image, 2)
    worker = sidecar.sidecar_parts(sidecar.PodSettings.of(configured, {})).containers[0]
    assert {"name": "CCR_CACHE_REDIS", "valueFrom": {"secretKeyRef": {"name": "redis", "key": "url"}}} in worker["env"]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"imag": "x"}, "unknown settings imag"),
        ({"workers": 9}, "workers: 9 is not within 1..max_workers (8)"),
        ({"control_plane": "cp"}, "control_plane: 'cp' is not host:port"),
        ({"run_as_user": 0}, "never run as root"),
        ({"resources": {"envoy": {"limits": {"memory": "lots"}}}}, "resources.envoy.limits.memory"),
        ("image: x", "a mapping of settings"),
    ],
)
def test_wrong_settings_are_refused_with_every_problem(data, says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        config_from_mapping(data)


# --- the HTTPS adapter -----------------------------------------------------------------------------------


def _post(port: int, ca: str, path: str, body: bytes) -> tuple[int, dict, str]:
    context = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"content-type": "application/json"})
        response = conn.getresponse()
        data = json.loads(response.read())
        serial = conn.sock.getpeercert()["serialNumber"]
        return response.status, data, serial
    finally:
        conn.close()


def test_the_https_adapter_answers_reviews_and_takes_a_renewed_certificate(tmp_path) -> None:
    made = make_dev_certs(tmp_path, ["localhost", "127.0.0.1"], "dev-client")
    tls = TlsFiles(str(made.server_cert), str(made.server_key), check_every=0.0)
    server, thread = start("127.0.0.1:0", CONFIG, tls)
    port = server.server_address[1]
    try:
        status, body, first_serial = _post(port, str(made.ca_cert), "/mutate", fixture("labelled-pod.json"))
        assert status == 200 and body["response"]["allowed"] is True and body["response"]["patchType"] == "JSONPatch"
        status, body, _ = _post(port, str(made.ca_cert), "/mutate-namespace", fixture("unlabelled-pod.json"))
        assert status == 200 and "patch" in body["response"]
        status, body, _ = _post(port, str(made.ca_cert), "/mutate", b"{not json")
        assert status == 400 and "not JSON" in body["message"]

        conn = http.client.HTTPSConnection(
            "localhost", port, context=ssl.create_default_context(cafile=str(made.ca_cert))
        )
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()

        make_dev_certs(tmp_path, ["localhost", "127.0.0.1"], "dev-client")  # a renewal: same CA, new leaf
        stat = os.stat(made.server_cert)
        os.utime(made.server_cert, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # coarse clocks
        _, _, renewed_serial = _post(port, str(made.ca_cert), "/mutate", fixture("unlabelled-pod.json"))
        assert renewed_serial != first_serial
        assert server.counts == {"injected": 2, "bad_request": 1, "skipped": 1}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- k8s/webhook ---------------------------------------------------------------------------------------

WEBHOOK_DIR = Path(__file__).resolve().parents[2] / "k8s" / "webhook"


def manifests() -> dict[tuple[str, str], dict]:
    found = {}
    for path in sorted(WEBHOOK_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            found[(document["kind"], document["metadata"]["name"])] = document
    return found


def test_the_webhook_manifests_agree_with_each_other_and_with_the_injector() -> None:
    found = manifests()
    namespace = yaml.safe_load((WEBHOOK_DIR / "kustomization.yaml").read_text())["namespace"]
    service = found[("Service", "ccr-injector")]
    deployment = found[("Deployment", "ccr-injector")]
    webhook = found[("MutatingWebhookConfiguration", "ccr-gateway-sidecar-injector")]
    certificate = found[("Certificate", "ccr-injector")]
    assert webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{namespace}/ccr-injector"
    assert f"ccr-injector.{namespace}.svc" in certificate["spec"]["dnsNames"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == certificate["spec"]["secretName"]
    args = cli.build_parser("injector").parse_args(container["args"])
    config = config_from_mapping(yaml.safe_load(found[("ConfigMap", "ccr-injector-config")]["data"]["config.yaml"]))
    assert config.image == container["image"]
    assert config.control_plane.startswith(f"ccr-control-plane.{namespace}.svc")  # k8s/base/control-plane.yaml
    assert args.listen.endswith(":8443") and service["spec"]["ports"][0]["targetPort"] == "https"
    paths = set()
    for hook in webhook["webhooks"]:
        assert (hook["failurePolicy"], hook["sideEffects"], hook["admissionReviewVersions"]) == ("Fail", "None", ["v1"])
        client = hook["clientConfig"]["service"]
        assert (client["name"], client["namespace"], client["port"]) == ("ccr-injector", namespace, 443)
        paths.add(client["path"])
        assert hook["rules"] == [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ]
        (excluded,) = hook["namespaceSelector"]["matchExpressions"]
        assert {"kube-system", namespace} <= set(excluded["values"])  # never the injector's own pods
    assert paths == {"/mutate", "/mutate-namespace"}


def test_the_webhook_manifests_and_an_injected_pod_validate_against_the_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = "1.30"
    checked = 0
    for document in manifests().values():
        if document["apiVersion"].startswith("cert-manager.io/"):
            continue  # no schema for cert-manager's CRDs; test above checks their references
        kubernetes_validate.validate(document, version, strict=True)
        checked += 1
    assert checked == 7
    for native in (False, True):
        config = CONFIG.with_overrides(native_sidecars=native)
        decision = decide(fixture("overrides-pod.json"), config)
        pod = apply_patch(review_of("overrides-pod.json")["request"]["object"], patch_of(decision.body["response"]))
        pod["metadata"]["name"] = "agent-7d9f8b6c5-x2x9q"
        kubernetes_validate.validate(pod, version, strict=True)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="manual-certs.sh needs openssl")
def test_manual_certs_make_a_certificate_the_api_server_would_accept(tmp_path) -> None:
    """The API server calls https://ccr-injector.ccr-gateway.svc and verifies against caBundle."""
    certs = tmp_path / "certs"
    subprocess.run(["sh", str(WEBHOOK_DIR / "manual-certs.sh"), str(certs)], check=True, capture_output=True)
    ca_before = (certs / "ca.crt").read_bytes()
    subprocess.run(["sh", str(WEBHOOK_DIR / "manual-certs.sh"), str(certs)], check=True, capture_output=True)
    assert (certs / "ca.crt").read_bytes() == ca_before  # a renewal keeps the caBundle
    server, thread = start("127.0.0.1:0", CONFIG, TlsFiles(str(certs / "tls.crt"), str(certs / "tls.key")))
    try:
        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        raw = socket.create_connection(server.server_address[:2], timeout=10)
        with context.wrap_socket(raw, server_hostname="ccr-injector.ccr-gateway.svc") as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nhost: ccr-injector.ccr-gateway.svc\r\nconnection: close\r\n\r\n")
            assert conn.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
