"""The ext_authz service (extproc.authz) of a running gateway, in front of another Envoy's route.

`ccr-gateway up` runs as usual (one worker; keys required, from a SQLite store made here): ext_authz
needs no process of its own, its worker's socket answers it. A second Envoy, from a static bootstrap
written here, puts the ext_authz HTTP filter (gRPC to that socket, failing closed) before a route to
an upstream that echoes the headers it received, with the caller's identity added to them from the
check's dynamic metadata, and an access log printing that metadata. A second listener's ext_authz
points where nothing listens: the service down.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from ccr_gateway.envoy_bootstrap import envoy_binary, worker_sockets
from extproc.auth.key_store import SqliteKeyStore
from extproc.auth.keys import new_key
from extproc.authz import AUTHZ_METADATA_NAMESPACE
from tests.e2e.gateway import Gateway, free_port, listening, wait_until

HELLO = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
ACCESS_LOG_FORMAT = (
    "%REQ(:PATH)% %RESPONSE_CODE% "
    f"tenant=%DYNAMIC_METADATA({AUTHZ_METADATA_NAMESPACE}:tenant)% "
    f"key_id=%DYNAMIC_METADATA({AUTHZ_METADATA_NAMESPACE}:key_id)% "
    f"details=%DYNAMIC_METADATA({AUTHZ_METADATA_NAMESPACE}:details)%\n"
)


class _Echo(BaseHTTPRequestHandler):
    """The upstream: answers every request with the headers it received."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


def _tcp(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _cluster(name: str, address: dict, http2: bool = False) -> dict:
    cluster = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
    if http2:  # gRPC
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def _listener(port: int, authz_cluster: str, access_log: Path) -> dict:
    """A listener whose every request is checked by ext_authz at ``authz_cluster``, then echoed."""
    identity = {
        "x-seen-tenant": f"%DYNAMIC_METADATA({AUTHZ_METADATA_NAMESPACE}:tenant)%",
        "x-seen-key-id": f"%DYNAMIC_METADATA({AUTHZ_METADATA_NAMESPACE}:key_id)%",
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": f"authz_{port}",
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": str(access_log),
                    "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
                },
            }
        ],
        "http_filters": [
            {
                "name": "envoy.filters.http.ext_authz",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                    "transport_api_version": "V3",
                    "failure_mode_allow": False,
                    "status_on_error": {"code": "ServiceUnavailable"},
                    "grpc_service": {"envoy_grpc": {"cluster_name": authz_cluster}, "timeout": "2s"},
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": "echo"},
                            "request_headers_to_add": [
                                {"header": {"key": k, "value": v}, "keep_empty_value": False}
                                for k, v in identity.items()
                            ],
                        }
                    ],
                }
            ]
        },
    }
    return {
        "name": f"listener_{port}",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


async def _create_keys(path: Path) -> dict[str, str]:
    store = SqliteKeyStore(path)
    made: dict[str, str] = {}
    try:
        for name in ("valid", "revoked"):
            presented, record = new_key("acme", name, time.time(), rpm=600)
            await store.create(record)
            made[name] = presented
            if name == "revoked":
                await store.revoke(record.key_id)
    finally:
        await store.close()
    return made


@dataclass
class Stack:
    port: int  # ext_authz at the gateway's worker
    down_port: int  # ext_authz where nothing listens
    keys: dict[str, str]
    access_log: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = Path(tmp_path_factory.mktemp("authz"))
    keys = asyncio.run(_create_keys(directory / "keys.db"))
    policy = {
        "listener": {"address": "127.0.0.1", "port": free_port()},
        "providers": [
            {"name": "up", "api": "anthropic", "base_url": f"http://127.0.0.1:{free_port()}", "models": ["m"]}
        ],
        "auth": {"required": True, "keys": {"sqlite": str(directory / "keys.db")}},
    }
    gateway = Gateway.start(directory, policy, name="authz-gateway", workers=1)
    echo = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    envoy: subprocess.Popen[bytes] | None = None
    try:
        found = re.search(r"Unix sockets in (\S+?)\)", gateway.log())
        assert found, gateway.log()
        (worker_socket,), _ = worker_sockets(found[1], 1)
        listen, down, access_log = free_port(), free_port(), directory / "access.log"
        bootstrap = {
            "static_resources": {
                "listeners": [
                    _listener(listen, "ccr_authz", access_log),
                    _listener(down, "ccr_authz_down", access_log),
                ],
                "clusters": [
                    _cluster("ccr_authz", {"pipe": {"path": worker_socket}}, http2=True),
                    _cluster("ccr_authz_down", _tcp(free_port()), http2=True),  # nothing listens there
                    _cluster("echo", _tcp(echo.server_address[1])),
                ],
            }
        }
        (directory / "envoy.yaml").write_text(yaml.safe_dump(bootstrap))
        argv = [envoy_binary(), "-c", str(directory / "envoy.yaml"), "--base-id", str(listen), "-l", "warning"]
        envoy = subprocess.Popen(
            [*argv, "--file-flush-interval-msec", "100"],  # the access log within the tests' wait
            stdout=open(directory / "envoy.log", "wb"),  # noqa: SIM115 (lives as long as the process)
            stderr=subprocess.STDOUT,
        )

        def up() -> bool:
            if envoy.poll() is not None:
                raise AssertionError("envoy exited:\n" + (directory / "envoy.log").read_text()[-4000:])
            return listening(listen) and listening(down)

        wait_until(up, 20, "the ext_authz Envoy")
        yield Stack(listen, down, keys, access_log)
    finally:
        if envoy is not None:
            envoy.terminate()
            envoy.wait(10)
        echo.shutdown()
        echo.server_close()
        gateway.stop()
    assert gateway.process.returncode == 0, gateway.log()[-4000:]


def _post(port: int, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        sent = {"content-type": "application/json", **{k.replace("_", "-"): v for k, v in headers.items()}}
        connection.request("POST", path, json.dumps(HELLO).encode(), sent)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _logged(stack: Stack, needle: str) -> str:
    """The access log line holding ``needle`` (Envoy flushes its file log within a second)."""

    def find() -> str | None:
        text = stack.access_log.read_text() if stack.access_log.exists() else ""
        return next((line for line in text.splitlines() if needle in line), None)

    return wait_until(find, 5, f"an access log line with {needle!r}")


def key_id(presented: str) -> str:
    return presented[len("sk-ccr-") :].split("_", 1)[0]


def test_a_valid_key_reaches_the_upstream_without_credentials_and_with_its_identity(stack: Stack) -> None:
    valid = stack.keys["valid"]
    status, _, body = _post(stack.port, "/v1/messages?valid", x_api_key=valid, anthropic_version="2023-06-01")
    assert status == 200, body
    seen = json.loads(body)
    assert "x-api-key" not in seen and "authorization" not in seen
    assert (seen["x-seen-tenant"], seen["x-seen-key-id"]) == ("acme", key_id(valid))
    assert f"/v1/messages?valid 200 tenant=acme key_id={key_id(valid)}" in _logged(stack, "?valid ")


def test_an_openai_client_with_a_valid_bearer_key_reaches_the_upstream_without_it(stack: Stack) -> None:
    status, _, body = _post(stack.port, "/v1/chat/completions", authorization="Bearer " + stack.keys["valid"])
    assert status == 200, body
    seen = json.loads(body)
    assert "authorization" not in seen and seen["x-seen-tenant"] == "acme"


def test_a_wrong_key_gets_anthropics_401(stack: Stack) -> None:
    wrong = stack.keys["valid"][:-4] + "AAAA"
    status, headers, body = _post(stack.port, "/v1/messages?wrong", x_api_key=wrong)
    assert status == 401
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid API key"},
    }
    assert headers["request-id"] == headers["x-request-id"] != ""
    assert "details=ccr_auth_invalid_key" in _logged(stack, "?wrong ")


def test_a_revoked_key_on_an_openai_path_gets_openais_401(stack: Stack) -> None:
    status, _, body = _post(stack.port, "/v1/chat/completions", authorization="Bearer " + stack.keys["revoked"])
    assert status == 401
    assert json.loads(body) == {
        "error": {
            "message": "invalid API key: this key has been revoked",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


def test_no_key_while_keys_are_required_is_refused(stack: Stack) -> None:
    status, _, body = _post(stack.port, "/v1/messages")
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"


def test_the_service_down_fails_closed_with_a_503(stack: Stack) -> None:
    status, _, _ = _post(stack.down_port, "/v1/messages", x_api_key=stack.keys["valid"])
    assert status == 503
