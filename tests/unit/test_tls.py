"""listener.tls: the policy section (control_plane.policy.tls), the SDS secrets and the listener's
TLS context (control_plane.resources.tls), their place in the snapshot, rotation detection
(control_plane.server.TlsFileWatch) and `ccr-gateway certs dev` (ccr_gateway.certs)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import DownstreamTlsContext
from google.protobuf import json_format

from ccr.v1.contract import ENVOY_GROUP
from ccr_gateway.certs import make_dev_certs
from control_plane.policy import load_policy
from control_plane.policy.tls import SanMatcher, TlsSpec
from control_plane.policy.yaml_check import PolicyError
from control_plane.resources import gateway as resources
from control_plane.resources import tls as tls_resources
from control_plane.server import TlsFileWatch
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.rollout import Rollout
from control_plane.xds.snapshot import LISTENER, NAMED_TYPES, SECRET, TYPE_ORDER, Snapshot, consistency_errors
from tests.unit.cp_helpers import policy, provider

BASE = 'providers: [{name: a, api: anthropic, base_url: "http://10.0.0.1:1", models: [m]}]\n'


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory):
    return make_dev_certs(tmp_path_factory.mktemp("certs"), ["localhost", "127.0.0.1"], "ci")


def _load(tls_yaml: str) -> TlsSpec | None:
    return load_policy("listener:\n  tls:\n" + tls_yaml + BASE).tls


def _problems(tls_yaml: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy("listener:\n  tls:\n" + tls_yaml + BASE)
    return [str(p) for p in caught.value.problems]


def _mtls(certs, extra: str = "") -> str:
    return f"    cert: {certs.server_cert}\n    key: {certs.server_key}\n    client_ca: {certs.ca_cert}\n" + extra


# --- the policy section ---------------------------------------------------------------------------


def test_without_the_section_the_listener_is_plain_http():
    assert load_policy(BASE).tls is None


def test_cert_and_key_alone_give_tls_without_client_certificates(certs):
    spec = _load(f"    cert: {certs.server_cert}\n    key: {certs.server_key}\n")
    assert spec == TlsSpec(str(certs.server_cert), str(certs.server_key))
    assert not spec.mtls and not spec.require_client_cert
    assert spec.alpn == ("h2", "http/1.1") and spec.min_version == "TLSv1_2"


def test_a_client_ca_turns_mtls_on_and_requires_a_certificate_by_default(certs):
    spec = _load(_mtls(certs))
    assert spec.mtls and spec.require_client_cert
    assert spec.files == (str(certs.server_cert), str(certs.server_key), str(certs.ca_cert))


def test_client_sans_become_uri_dns_and_ip_matchers(certs):
    spec = _load(_mtls(certs, '    client_sans: [spiffe://acme/ci, "spiffe://acme/*", Build.internal, 10.0.0.7]\n'))
    assert spec.client_sans == (
        SanMatcher("URI", "spiffe://acme/ci"),
        SanMatcher("URI", "spiffe://acme/", prefix=True),
        SanMatcher("DNS", "build.internal"),
        SanMatcher("IP_ADDRESS", "10.0.0.7"),
    )


def test_a_missing_key_file_is_reported_with_its_line_and_path(certs, tmp_path):
    missing = tmp_path / "nope.key"
    problems = _problems(f"    cert: {certs.server_cert}\n    key: {missing}\n")
    assert problems == [f"<policy>:4:10: listener.tls.key: cannot read {missing}: No such file or directory"]


def test_a_file_that_is_not_pem_is_refused(certs, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    problems = _problems(f"    cert: {junk}\n    key: {certs.server_key}\n")
    assert problems == [f"<policy>:3:11: listener.tls.cert: {junk} is not PEM (no -----BEGIN line)"]


def test_a_relative_path_is_read_from_the_policy_files_directory(certs):
    policy_file = certs.ca_cert.parent / "gateway.yaml"
    policy_file.write_text("listener:\n  tls:\n    cert: server.pem\n    key: server.key\n" + BASE)
    from control_plane.policy import load_policy_file

    assert load_policy_file(str(policy_file)).tls.cert_file == str(certs.server_cert)


def test_every_problem_is_reported_with_its_line(certs):
    problems = _problems(
        f"    cert: {certs.server_cert}\n"
        f"    key: {certs.server_key}\n"
        "    require_client_cert: true\n"
        "    client_sans: [not a san]\n"
        "    identities: {spiffe://acme/ci: 'bad tenant!'}\n"
        "    alpn: [h3]\n"
        "    min_version: TLSv1_1\n"
        "    ciphers: [x]\n"
    )
    assert problems == [
        "<policy>:5:26: listener.tls.require_client_cert: needs client_ca (the CA that signs client certificates)",
        "<policy>:6:18: listener.tls.client_sans: needs client_ca (only verified certificates have SANs)",
        "<policy>:6:19: listener.tls.client_sans[0]: 'not a san' is neither a URI (spiffe://trust-domain/workload), "
        "a DNS name nor an IP address",
        "<policy>:7:17: listener.tls.identities: needs client_ca (an identity comes from a verified client certificate)",
        "<policy>:7:36: listener.tls.identities.spiffe://acme/ci: 'bad tenant!' is not a valid tenant name",
        "<policy>:8:12: listener.tls.alpn[0]: must be one of h2, http/1.1, got 'h3'",
        "<policy>:9:18: listener.tls.min_version: must be one of TLSv1_2, TLSv1_3, got 'TLSv1_1'",
        "<policy>:10:5: listener.tls.ciphers: unknown field",
    ]


def test_cert_and_key_are_required():
    assert _problems("    alpn: [h2]\n") == [
        "<policy>:3:5: listener.tls.cert: is required",
        "<policy>:3:5: listener.tls.key: is required",
    ]


def test_identities_map_exact_sans_to_tenants(certs):
    loaded = load_policy(
        "listener:\n  tls:\n"
        + _mtls(certs, "    identities: {spiffe://ccr-gateway/ci: acme, ci.internal: beta}\n")
        + BASE
    )
    assert loaded.tls.identities == (("ci.internal", "beta"), ("spiffe://ccr-gateway/ci", "acme"))
    assert [str(w) for w in loaded.warnings if "identities" in w.path] == []  # enforced (extproc.auth.cert_identity)


# --- Envoy resources ------------------------------------------------------------------------------


def _material(certs) -> tls_resources.TlsMaterial:
    return tls_resources.TlsMaterial(
        certs.server_cert.read_bytes(), certs.server_key.read_bytes(), certs.ca_cert.read_bytes()
    )


def _tls_policy(spec: TlsSpec | None):
    return dataclasses.replace(policy(provider("a")), tls=spec)


def test_the_listener_names_its_certificates_over_sds_never_inline(certs):
    spec = _load(_mtls(certs, "    client_sans: [spiffe://ccr-gateway/ci]\n"))
    listener = resources.listener(_tls_policy(spec))
    socket = listener.filter_chains[0].transport_socket
    context = DownstreamTlsContext()
    assert socket.typed_config.Unpack(context)
    common = json_format.MessageToDict(context, preserving_proto_field_name=True)
    sds = {"ads": {}, "resource_api_version": "V3"}
    assert common == {
        "common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificate_sds_secret_configs": [{"name": "ccr_listener_cert", "sds_config": sds}],
            "validation_context_sds_secret_config": {"name": "ccr_listener_client_ca", "sds_config": sds},
        },
        "require_client_certificate": True,
    }
    assert b"PRIVATE KEY" not in listener.SerializeToString()


def _hcm_of(listener) -> dict:
    (hcm,) = [
        f.typed_config
        for f in listener.filter_chains[0].filters
        if f.name == "envoy.filters.network.http_connection_manager"
    ]
    return json_format.MessageToDict(hcm, preserving_proto_field_name=True)


def test_mtls_sets_the_verified_client_identity_header_and_drops_a_forged_one(certs):
    hcm = _hcm_of(resources.listener(_tls_policy(_load(_mtls(certs)))))
    assert hcm["forward_client_cert_details"] == "SANITIZE_SET"
    assert hcm["set_current_client_cert_details"] == {"subject": True, "uri": True, "dns": True}
    plain = resources.listener(_tls_policy(None))
    assert not plain.filter_chains[0].HasField("transport_socket")
    assert "forward_client_cert_details" not in _hcm_of(plain)


def test_the_secrets_carry_the_files_and_the_san_matchers(certs):
    spec = _load(_mtls(certs, '    client_sans: [spiffe://ccr-gateway/ci, "spiffe://team/*", ci]\n'))
    secrets = dict(tls_resources.secrets(spec, _material(certs)))
    assert set(secrets) == {"ccr_listener_cert", "ccr_listener_client_ca"}
    cert = secrets["ccr_listener_cert"].tls_certificate
    assert cert.certificate_chain.inline_bytes == certs.server_cert.read_bytes()
    assert cert.private_key.inline_bytes == certs.server_key.read_bytes()
    validation = secrets["ccr_listener_client_ca"].validation_context
    assert validation.trusted_ca.inline_bytes == certs.ca_cert.read_bytes()
    matchers = json_format.MessageToDict(validation, preserving_proto_field_name=True)["match_typed_subject_alt_names"]
    assert matchers == [
        {"san_type": "URI", "matcher": {"exact": "spiffe://ccr-gateway/ci"}},
        {"san_type": "URI", "matcher": {"prefix": "spiffe://team/"}},
        {"san_type": "DNS", "matcher": {"exact": "ci"}},
    ]


def test_the_material_never_shows_its_key():
    material = tls_resources.TlsMaterial(b"CERT", b"-----BEGIN PRIVATE KEY-----secret")
    assert "secret" not in repr(material) and "redacted" in repr(material)


def test_secrets_go_before_the_listener_that_names_them_and_are_asked_for_by_name():
    assert TYPE_ORDER.index(SECRET) < TYPE_ORDER.index(LISTENER)
    assert SECRET in NAMED_TYPES


def test_a_listener_naming_a_missing_secret_is_inconsistent(certs):
    spec = _load(_mtls(certs))
    listener = resources.listener(_tls_policy(spec))
    snapshot = Snapshot.build("1", listeners=[("l", listener)], routes=[(resources.ROUTE_CONFIG_NAME, _routes())])
    assert [e for e in consistency_errors(snapshot) if "secret" in e] == [
        "listener 'l' uses secret 'ccr_listener_cert', which is missing",
        "listener 'l' uses secret 'ccr_listener_client_ca', which is missing",
    ]
    complete = Snapshot.build(
        "1",
        listeners=[("l", listener)],
        routes=[(resources.ROUTE_CONFIG_NAME, _routes())],
        secrets=tls_resources.secrets(spec, _material(certs)),
    )
    assert not [e for e in consistency_errors(complete) if "secret" in e]


def _routes():
    return resources.route_configuration(None, resources.provider_routes(provider("a"), False), False)


def test_a_rotation_changes_only_the_secrets_version(certs):
    spec = _load(_mtls(certs))
    rollout = Rollout(SnapshotCache())
    rollout.tls_material = _material(certs)
    rollout.update(_tls_policy(spec))
    before = rollout.cache.get(ENVOY_GROUP)
    assert set(before.get(SECRET).by_name) == {"ccr_listener_cert", "ccr_listener_client_ca"}
    rollout.set_tls_material(dataclasses.replace(_material(certs), cert=b"-----BEGIN CERTIFICATE-----new"))
    after = rollout.cache.get(ENVOY_GROUP)
    assert after.get(SECRET).version != before.get(SECRET).version
    for type_url in TYPE_ORDER:
        if type_url != SECRET:
            assert after.get(type_url).version == before.get(type_url).version


@pytest.mark.skipif(shutil.which("envoy") is None, reason="needs the envoy binary")
def test_envoy_accepts_the_tls_context_and_the_secrets(certs, tmp_path):
    """The listener (with its secrets as static ones) through ``envoy --mode validate``."""
    spec = _load(_mtls(certs, '    client_sans: [spiffe://ccr-gateway/ci, "spiffe://team/*"]\n'))
    listener = json_format.MessageToDict(resources.listener(_tls_policy(spec)), preserving_proto_field_name=True)
    (hcm,) = [
        f["typed_config"]
        for f in listener["filter_chains"][0]["filters"]
        if f["name"] == "envoy.filters.network.http_connection_manager"
    ]
    del hcm["rds"]
    hcm["route_config"] = {**json_format.MessageToDict(_routes(), preserving_proto_field_name=True)}
    hcm["route_config"]["validate_clusters"] = False
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.router"]
    hcm.pop("access_log", None)
    hcm.pop("tracing", None)
    context = listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    # Static secrets stand in for SDS in a validation run (no control plane to ask).
    context["tls_certificate_sds_secret_configs"] = [{"name": "ccr_listener_cert"}]
    context["validation_context_sds_secret_config"] = {"name": "ccr_listener_client_ca"}
    secrets = [
        json_format.MessageToDict(s, preserving_proto_field_name=True)
        for _, s in tls_resources.secrets(spec, _material(certs))
    ]
    config = {"static_resources": {"listeners": [listener], "secrets": secrets}}
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(config))
    result = subprocess.run(
        ["envoy", "--mode", "validate", "-c", str(path), "-l", "error"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- rotation detection ---------------------------------------------------------------------------


def _copy_certs(certs, directory: Path) -> TlsSpec:
    for name in ("server.pem", "server.key", "ca.pem"):
        shutil.copy(certs.ca_cert.parent / name, directory / name)
    return TlsSpec(str(directory / "server.pem"), str(directory / "server.key"), str(directory / "ca.pem"), True)


def _replace(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def test_unchanged_files_are_no_rotation(certs, tmp_path):
    watch = TlsFileWatch()
    spec = _copy_certs(certs, tmp_path)
    first = watch.follow(spec)
    assert first.cert == certs.server_cert.read_bytes()
    assert watch.poll() is None and watch.poll() is None


def test_a_replaced_certificate_is_taken_once_it_has_settled(certs, tmp_path, caplog):
    watch = TlsFileWatch()
    spec = _copy_certs(certs, tmp_path)
    watch.follow(spec)
    other = make_dev_certs(tmp_path / "other", ["localhost"], "x")
    _replace(tmp_path / "server.key", other.server_key.read_bytes())
    _replace(tmp_path / "server.pem", other.server_cert.read_bytes())
    assert watch.poll() is None  # changed: waits one poll for the files to settle
    with caplog.at_level("INFO", logger="ccr.control_plane"):
        material = watch.poll()
    assert material.cert == other.server_cert.read_bytes() and material.key == other.server_key.read_bytes()
    assert watch.poll() is None
    (line,) = [r.getMessage() for r in caplog.records if "rotated" in r.getMessage()]
    assert line.startswith("TLS files rotated (cert, key): pushing certificate sha256:")
    assert "PRIVATE" not in line


def test_a_file_still_changing_is_not_taken(certs, tmp_path):
    watch = TlsFileWatch()
    spec = _copy_certs(certs, tmp_path)
    watch.follow(spec)
    _replace(tmp_path / "server.pem", b"-----BEGIN CERTIFICATE-----\nhalf")
    assert watch.poll() is None
    _replace(tmp_path / "server.pem", certs.client_cert.read_bytes())
    assert watch.poll() is None
    assert watch.poll().cert == certs.client_cert.read_bytes()


def test_a_touch_without_new_content_is_no_rotation(certs, tmp_path):
    watch = TlsFileWatch()
    spec = _copy_certs(certs, tmp_path)
    watch.follow(spec)
    _replace(tmp_path / "ca.pem", (tmp_path / "ca.pem").read_bytes())
    assert watch.poll() is None and watch.poll() is None


def test_a_vanished_file_keeps_the_last_certificate_and_warns_once(certs, tmp_path, caplog):
    watch = TlsFileWatch()
    spec = _copy_certs(certs, tmp_path)
    watch.follow(spec)
    (tmp_path / "server.key").unlink()
    with caplog.at_level("WARNING", logger="ccr.control_plane"):
        assert watch.poll() is None and watch.poll() is None
    assert len([r for r in caplog.records if "unreadable" in r.getMessage()]) == 1


# --- certs dev ------------------------------------------------------------------------------------


def test_certs_dev_writes_private_keys_0600_and_reuses_its_ca(tmp_path):
    first = make_dev_certs(tmp_path, ["localhost", "127.0.0.1"], "ci")
    for key in (first.ca_key, first.server_key, first.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ca = first.ca_cert.read_bytes()
    server = first.server_cert.read_bytes()
    again = make_dev_certs(tmp_path, ["localhost"], "ci")
    assert again.ca_cert.read_bytes() == ca and again.server_cert.read_bytes() != server


def test_certs_dev_names_the_hosts_and_the_client(tmp_path):
    from cryptography import x509

    made = make_dev_certs(tmp_path, ["gw.local", "127.0.0.1"], "ci")
    server = x509.load_pem_x509_certificate(made.server_cert.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["gw.local"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    client = x509.load_pem_x509_certificate(made.client_cert.read_bytes())
    sans = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://ccr-gateway/ci"]
    assert sans.get_values_for_type(x509.DNSName) == ["ci"]
