"""SigV4 signed by the real Envoy for a Bedrock provider, verified with botocore's signer.

Envoy runs the provider cluster exactly as the control plane builds it
(control_plane.resources.aws_signing: the AWS request signing filter in the cluster's upstream
filter chain), with credentials from its environment (``credentials: env``); a tiny local
"Bedrock" recomputes the signature of every request it receives with botocore (SigV4Auth over an
AWSRequest holding the headers Envoy says it signed, the same credentials) and answers 403 on any
difference, as Bedrock would. The body hash is checked against the body received.

Envoy runs here from a static bootstrap holding that one cluster (its EDS endpoints made static),
so the test needs neither the Bedrock translator nor the rest of the gateway.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from dataclasses import replace
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from google.protobuf import json_format

from control_plane.resources import gateway as resources
from tests.e2e.bedrock_support import CREDENTIALS, REGION, FakeBedrock, FakeBedrockInvoke, verify
from tests.e2e.gateway import free_port, http, listening, wait_until
from tests.unit.cp_helpers import provider


@pytest.fixture(scope="module")
def fake_bedrock():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeBedrock)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def bootstrap(listener_port: int, upstream_port: int) -> dict:
    spec = provider("bedrock", api="bedrock", host="127.0.0.1", port=upstream_port)
    spec = replace(spec, credentials="env", region=REGION)
    cluster = json_format.MessageToDict(resources.provider_cluster(spec), preserving_proto_field_name=True)
    # Static endpoints instead of EDS (no control plane here).
    del cluster["eds_cluster_config"]
    cluster["type"] = "STATIC"
    cluster["load_assignment"] = json_format.MessageToDict(
        resources.provider_endpoints(spec), preserving_proto_field_name=True
    )
    route = {"prefix": "/"}
    hcm = {
        "@type": resources.TYPE_PREFIX
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "t",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": route, "route": {"cluster": cluster["name"], "auto_host_rewrite": True}}],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": resources.TYPE_PREFIX + "envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": [cluster],
        },
    }


@pytest.fixture(scope="module")
def envoy(fake_bedrock, tmp_path_factory):
    directory: Path = tmp_path_factory.mktemp("bedrock_signing")
    port = free_port()
    config = directory / "envoy.json"
    config.write_text(json.dumps(bootstrap(port, fake_bedrock)))
    log = directory / "envoy.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | CREDENTIALS
    process = subprocess.Popen(
        ["envoy", "-c", str(config), "-l", "warning", "--base-id", str(port)],
        stdout=open(log, "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_until(lambda: listening(port) or process.poll() is not None, 30, "envoy")
        assert process.poll() is None, log.read_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.mark.parametrize(
    "path",
    [
        "/model/anthropic.claude-sonnet-4-5-20250929-v1:0/invoke",
        "/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream",
        "/model/us.anthropic.claude-haiku-4-5-20251001-v1:0/invoke?x=1&a=b",
    ],
)
def test_envoy_signs_what_it_sends_and_botocore_agrees(envoy, path):
    FakeBedrock.seen.clear()
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 16, "messages": []}).encode()
    headers = {
        "content-type": "application/json",
        "x-request-id": "changes-in-flight",
        "x-ccr-cluster": "provider_bedrock",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    status, _, answer = http("POST", envoy + path, body, headers)
    assert status == 200, answer.decode()
    (seen,) = FakeBedrock.seen
    signed = seen["headers"]["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert "host" in signed and "x-amz-content-sha256" in signed and "x-amz-date" in signed
    assert not {"x-request-id", "x-ccr-cluster", "traceparent"} & set(signed)  # excluded: they change in flight
    assert not any(name.startswith("x-envoy-") for name in signed)


def test_a_body_changed_after_signing_is_refused(envoy):
    """The fake is honest: the same check refuses a body that is not what was signed."""
    FakeBedrock.seen.clear()
    http("POST", envoy + "/model/m/invoke", b'{"a":1}', {"content-type": "application/json"})
    (seen,) = FakeBedrock.seen
    assert seen["problem"] is None
    assert verify("POST", seen["path"], seen["headers"], b'{"a":2}') == "the payload hash is not the body's"


# --- through the whole gateway (`ccr-gateway up`): a Bedrock provider behind a fallback-free route --


def test_claude_through_the_gateway_reaches_bedrock_signed_by_envoy(tmp_path, monkeypatch):
    pytest.importorskip("extproc.translate.anthropic_bedrock", reason="the Bedrock translator is not there yet")
    from control_plane.policy import PolicyError, load_policy
    from tests.e2e.gateway import Gateway

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeBedrockInvoke)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    policy = {
        "listener": {"address": "127.0.0.1", "port": free_port()},
        "providers": [
            {
                "name": "bedrock",
                "api": "bedrock",
                "base_url": f"http://127.0.0.1:{server.server_address[1]}",
                "region": REGION,
                "credentials": "env",
                "models": [{"name": "claude-sonnet-4-5", "id": "anthropic.claude-sonnet-4-5-20250929-v1:0"}],
            }
        ],
    }
    try:
        load_policy(json.dumps(policy))
    except PolicyError as exc:
        pytest.skip(f"the policy parser does not take this Bedrock provider yet: {exc}")
    for name, value in CREDENTIALS.items():  # Envoy's environment (credentials: env)
        monkeypatch.setenv(name, value)
    FakeBedrock.seen.clear()
    gateway = Gateway.start(tmp_path, policy, name="bedrock", workers=1)
    try:
        request = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
        status, _, body = wait_until(
            lambda: (
                (
                    r := http(
                        "POST",
                        gateway.url + "/v1/messages",
                        json.dumps(request).encode(),
                        {"content-type": "application/json", "anthropic-version": "2023-06-01"},
                    )
                )
                and r[0] != 503
                and r
            ),
            30,
            "the Bedrock provider",
        )
        assert status == 200, body.decode()
        assert json.loads(body)["content"][0]["text"] == "signed and verified"
        (seen,) = FakeBedrock.seen
        assert seen["problem"] is None
        assert seen["path"].startswith("/model/anthropic.claude-sonnet-4-5-20250929-v1")
        assert "x-api-key" not in seen["headers"]  # no client credential travels to AWS
    finally:
        gateway.stop()
        server.shutdown()
