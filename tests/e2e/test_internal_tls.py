"""`up --internal-tls DIR`: the workers, their decision hops and the control plane on 127.0.0.1 TCP
ports with mutual TLS; a request goes through, and a client without a certificate from DIR's CA is
refused at the handshake on every one of those ports."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

from tests.e2e.gateway import http
from tests.e2e.supervision import ROOT, Up, start_up

MESSAGE = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})


def _argv_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _ports(up: Up) -> dict[str, str]:
    """Every internal TCP address `up` gave its children, read from their command lines."""
    found = {"xds": up.state()["xds"]}
    for index in range(up.workers):
        pid = up.child(f"extproc-{index}")["pid"]  # the orphan guard's, whose argv ends with the worker's
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        found[f"extproc-{index}"] = _argv_value(argv, "--listen")
        found[f"hop-{index}"] = _argv_value(argv, "--hop-listen")
    return found


def _handshake(address: str, ca: str, cert: tuple[str, str] | None) -> bool:
    """Whether a TLS client (with ``cert``, or none) gets an answer: the HTTP/2 server's first frame
    from a gRPC port, a /healthz answer from a hop."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    if cert is not None:
        context.load_cert_chain(*cert)
    try:
        with (
            socket.create_connection((host, int(port)), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as conn,
        ):
            # TLS 1.3: the server checks the client's certificate after the client's side of the
            # handshake is done; its refusal arrives as an alert (or a close) on the first read.
            if conn.selected_alpn_protocol() == "h2":
                conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            else:
                conn.sendall(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            return conn.recv(16) != b""
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return False


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("internal-certs")
    made = subprocess.run(
        [sys.executable, "-m", "ccr_gateway.cli", "certs", "dev", "--internal", "--dir", str(directory)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    return directory


def test_up_with_internal_tls_serves_and_refuses_clients_without_a_certificate(tmp_path: Path, certs: Path):
    up = start_up(tmp_path, workers=2, extra=("--internal-tls", str(certs)))
    try:
        up.wait_ready()
        headers = {"content-type": "application/json", "x-api-key": "any"}
        status, _, body = http("POST", f"{up.url}/v1/messages", MESSAGE.encode(), headers)
        assert status == 200, body
        addresses = _ports(up)
        assert not any(address.startswith("unix:") for address in addresses.values()), addresses
        ca = str(certs / "ca.pem")
        envoy = (str(certs / "envoy.pem"), str(certs / "envoy.key"))
        stranger = tmp_path / "stranger"  # a certificate from another CA is no better than none
        subprocess.run(
            [sys.executable, "-m", "ccr_gateway.cli", "certs", "dev", "--internal", "--dir", str(stranger)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        foreign = (str(stranger / "envoy.pem"), str(stranger / "envoy.key"))
        for name, address in addresses.items():
            assert _handshake(address, ca, envoy), f"{name} {address} refused Envoy's certificate"
            assert not _handshake(address, ca, None), f"{name} {address} accepted a client without a certificate"
            assert not _handshake(address, ca, foreign), f"{name} {address} accepted another CA's certificate"
        # And as gRPC clients see it: the xDS port answers nothing to a channel without a certificate.
        credentials = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.pem").read_bytes())
        with grpc.secure_channel(addresses["xds"], credentials) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                next(iter(stub.StreamAggregatedResources(iter([DiscoveryRequest()]), timeout=5)))
            assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        # Still serving after all those refused handshakes.
        status, _, body = http("POST", f"{up.url}/v1/messages", MESSAGE.encode(), headers)
        assert status == 200, body
    finally:
        code = up.stop(signal.SIGTERM)
    assert code == 0, up.log()[-3000:]
    up.assert_nothing_left()
    assert "Traceback" not in up.log(), up.log()[-3000:]
