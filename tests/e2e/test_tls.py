"""The listener over TLS with client-certificate mTLS, certificates served by the control plane
over SDS (docs/security-tls.md): the Anthropic SDK with a client certificate gets 200, a client
without one (or with one the policy's SAN matchers refuse) fails its handshake, HTTP/2 comes by
ALPN, and a certificate replaced on disk reaches new connections within seconds with zero failed
requests and without dropping a connection that was open."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx2
import pytest
from cryptography import x509

from ccr_gateway.certs import DevCerts, make_dev_certs
from tests.e2e.gateway import FakeProvider, Gateway, base_policy, free_port, wait_until

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def certs(workdir: Path) -> DevCerts:
    directory = workdir / "tls"
    # A client of the same CA whose SAN the policy does not list, then the one it does.
    other = make_dev_certs(directory, ["localhost", "127.0.0.1"], "stranger")
    made = make_dev_certs(directory, ["localhost", "127.0.0.1"], "ci")
    assert other.ca_cert == made.ca_cert
    return made


@pytest.fixture(scope="module")
def tls_gateway(workdir: Path, fake: FakeProvider, certs: DevCerts) -> Iterator[Gateway]:
    policy = base_policy(free_port(), fake)
    policy["listener"]["tls"] = {
        "cert": str(certs.server_cert),
        "key": str(certs.server_key),
        "client_ca": str(certs.ca_cert),
        "require_client_cert": True,
        "client_sans": [certs.client_uri],
    }
    gateway = Gateway.start(workdir, policy, name="tls-gateway")
    yield gateway
    gateway.stop()
    assert gateway.process.returncode == 0, gateway.log()[-4000:]


def _context(certs: DevCerts, client: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    if client is not None:
        context.load_cert_chain(str(client[0]), str(client[1]))
    return context


def _url(gateway: Gateway) -> str:
    return f"https://127.0.0.1:{gateway.listener_port}"


def _sdk(gateway: Gateway, context: ssl.SSLContext) -> anthropic.Anthropic:
    # The SDK's HTTP client here is httpx2 (anthropic._base_client imports it), not httpx.
    return anthropic.Anthropic(
        base_url=_url(gateway), api_key="k", max_retries=0, http_client=httpx2.Client(verify=context, timeout=10)
    )


def test_the_anthropic_sdk_with_a_client_certificate_gets_200(tls_gateway: Gateway, certs: DevCerts, fake):
    client = _sdk(tls_gateway, _context(certs, (certs.client_cert, certs.client_key)))
    message = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=16, messages=HELLO)
    assert message.status_code == 200
    assert message.parse().content[0].text


def test_without_a_client_certificate_the_handshake_fails(tls_gateway: Gateway, certs: DevCerts):
    client = _sdk(tls_gateway, _context(certs, None))
    with pytest.raises(anthropic.APIConnectionError):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=HELLO)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _get(tls_gateway, _context(certs, None))


def test_a_client_certificate_whose_san_the_policy_does_not_list_is_refused(tls_gateway: Gateway, certs: DevCerts):
    stranger = (certs.ca_cert.parent / "stranger.pem", certs.ca_cert.parent / "stranger.key")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _get(tls_gateway, _context(certs, stranger))


def test_a_client_certificate_of_another_ca_is_refused(tls_gateway: Gateway, certs: DevCerts, tmp_path: Path):
    foreign = make_dev_certs(tmp_path, ["localhost"], "ci")  # same SAN, another CA
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _get(tls_gateway, _context(certs, (foreign.client_cert, foreign.client_key)))


def test_the_client_certificate_header_never_reaches_a_provider_forged_or_verified(
    tls_gateway: Gateway, certs: DevCerts, fake: FakeProvider
):
    """Envoy replaces a client's own x-forwarded-client-cert with the verified identity (which the
    decision path reads: tests of listener.tls.identities), and the provider routes remove it."""
    client = _sdk(tls_gateway, _context(certs, (certs.client_cert, certs.client_key)))
    client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=16,
        messages=HELLO,
        extra_headers={"x-forwarded-client-cert": "URI=spiffe://evil/admin"},
    )
    (seen,) = [r for r in fake.requests() if r.get("path", "").endswith("/messages")][-1:]
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert "x-forwarded-client-cert" not in headers, headers


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_http2_is_negotiated_by_alpn(tls_gateway: Gateway, certs: DevCerts):
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            "--cacert",
            str(certs.ca_cert),
            "--cert",
            str(certs.client_cert),
            "--key",
            str(certs.client_key),
            f"{_url(tls_gateway)}/v1/models",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout == "200 2", result.stdout + result.stderr


def _get(gateway: Gateway, context: ssl.SSLContext, path: str = "/v1/models") -> tuple[int, int]:
    """(status, serial of the certificate the server presented) over a new connection."""
    connection = http.client.HTTPSConnection("127.0.0.1", gateway.listener_port, context=context, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        assert connection.sock is not None
        der = connection.sock.getpeercert(binary_form=True)
        return response.status, x509.load_der_x509_certificate(der).serial_number
    finally:
        connection.close()


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_a_certificate_rotated_on_disk_reaches_new_connections_without_failures(
    tls_gateway: Gateway, certs: DevCerts, workdir: Path
):
    context = _context(certs, (certs.client_cert, certs.client_key))
    old = _serial(certs.server_cert)
    # A connection opened before the rotation stays open and keeps working after it.
    kept = http.client.HTTPSConnection("127.0.0.1", tls_gateway.listener_port, context=context, timeout=10)
    kept.request("GET", "/v1/models")
    assert kept.getresponse().read() and kept.sock is not None
    kept_socket = kept.sock

    results: list[tuple[float, int | str, int]] = []  # (when, status or error, serial)
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                status, serial = _get(tls_gateway, context)
                results.append((time.monotonic(), status, serial))
            except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
                results.append((time.monotonic(), repr(exc), 0))

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    time.sleep(1.0)
    rotated_at = time.monotonic()
    new = make_dev_certs(certs.ca_cert.parent, ["localhost", "127.0.0.1"], "ci")  # new key and cert, same CA
    new_serial = _serial(new.server_cert)
    assert new_serial != old
    time.sleep(5.0)
    stop.set()
    thread.join(timeout=15)

    failures = [r for r in results if r[1] != 200]
    assert not failures, failures[:5]
    first_new = next((when for when, _, serial in results if serial == new_serial), None)
    assert first_new is not None, f"the new certificate never came: {len(results)} requests, all serial {old}"
    delay = first_new - rotated_at
    after = [serial for when, _, serial in results if when > first_new]
    assert after and all(serial == new_serial for serial in after), "a connection after the switch saw the old cert"
    assert delay < 5.0
    print(
        json.dumps(
            {"rotation_seconds": round(delay, 2), "requests": len(results), "failures": len(failures)}, sort_keys=True
        )
    )
    (workdir / "tls-rotation.json").write_text(json.dumps({"rotation_seconds": delay, "requests": len(results)}))

    kept.request("GET", "/v1/models")
    assert kept.getresponse().status == 200
    assert kept.sock is kept_socket, "the connection open across the rotation was replaced"
    kept.close()
    assert "TLS files rotated (cert, key)" in tls_gateway.log()
    assert "PRIVATE KEY" not in tls_gateway.log()


def test_the_listener_is_not_plain_http(tls_gateway: Gateway):
    with socket.create_connection(("127.0.0.1", tls_gateway.listener_port), timeout=5) as plain:
        plain.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = plain.recv(100)
    assert not answer.startswith(b"HTTP/1.1 200")


def _post(gateway: Gateway, context: ssl.SSLContext, body: dict) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of a key-less POST /v1/messages over a new connection."""
    connection = http.client.HTTPSConnection("127.0.0.1", gateway.listener_port, context=context, timeout=10)
    try:
        connection.request("POST", "/v1/messages", json.dumps(body), {"content-type": "application/json"})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read())
    finally:
        connection.close()


def test_a_mapped_client_certificate_authenticates_a_keyless_request_as_its_tenant(
    workdir: Path, fake: FakeProvider, certs: DevCerts
):
    policy = base_policy(free_port(), fake)
    policy["auth"] = {"required": True}
    policy["listener"]["tls"] = {
        "cert": str(certs.server_cert),
        "key": str(certs.server_key),
        "client_ca": str(certs.ca_cert),
        "identities": {certs.client_uri: "acme"},  # the stranger's SANs are not in the map
    }
    gateway = Gateway.start(workdir, policy, name="tls-identity-gateway")
    try:
        body = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": HELLO}
        status, headers, answer = _post(gateway, _context(certs, (certs.client_cert, certs.client_key)), body)
        assert status == 200, answer
        request_id = headers["request-id"]
        stranger = (certs.ca_cert.parent / "stranger.pem", certs.ca_cert.parent / "stranger.key")
        status, _, refused = _post(gateway, _context(certs, stranger), body)
        assert status == 401, refused
        assert refused["type"] == "error" and refused["error"]["type"] == "authentication_error", refused

        def exported() -> dict[str, dict]:
            command = [sys.executable, "-m", "ccr_gateway.cli", "usage", "export", "--since", "1h"]
            out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout
            return {record["request_id"]: record for record in map(json.loads, out.splitlines())}

        wait_until(lambda: request_id in exported(), 15, "the certificate caller's usage record")
        record = exported()[request_id]
        assert (record["status"], record["tenant"]) == (200, "acme"), record
        assert record["key_id"].startswith("cert:"), record
    finally:
        gateway.stop()
    assert gateway.process.returncode == 0, gateway.log()[-4000:]
