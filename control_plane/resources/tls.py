"""Envoy's half of the listener's TLS: the SDS secrets and the downstream TLS context naming them.

The certificate, its key and the client CA reach Envoy as ``Secret`` resources over the same ADS
stream as the rest (``sds_config: {ads: {}}``), never inline in the listener: a rotation is a new
version of the secrets alone, so the listener is not rebuilt and its connections are not drained;
Envoy serves the new certificate to new connections. The listener names the secrets and waits for
them (warming), and the ADS server sends secrets before listeners (snapshot.TYPE_ORDER).

Pure builders: the files' bytes come in as a ``TlsMaterial`` read by the control plane
(control_plane.server.TlsFileWatch).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import envoy.extensions.transport_sockets.tls.v3.tls_pb2  # noqa: F401 (registers DownstreamTlsContext for Any)
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from google.protobuf import json_format

from control_plane.policy.tls import TlsSpec

CERT_SECRET = "ccr_listener_cert"
CLIENT_CA_SECRET = "ccr_listener_client_ca"
_TYPE_PREFIX = "type.googleapis.com/"
_SDS_OVER_ADS = {"ads": {}, "resource_api_version": "V3"}


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The bytes of the files a ``TlsSpec`` names, read together. ``repr`` leaves the key out."""

    cert: bytes
    key: bytes
    client_ca: bytes = b""

    def __repr__(self) -> str:
        return f"TlsMaterial(cert={len(self.cert)} bytes, key=<redacted>, client_ca={len(self.client_ca)} bytes)"


def secret_names(spec: TlsSpec | None) -> tuple[str, ...]:
    """The secrets the listener names (each must be in the snapshot before the listener)."""
    if spec is None:
        return ()
    return (CERT_SECRET, CLIENT_CA_SECRET) if spec.mtls else (CERT_SECRET,)


def secrets(spec: TlsSpec | None, material: TlsMaterial | None) -> list[tuple[str, Secret]]:
    """The SDS resources for ``spec``; none without TLS or before the files were read."""
    if spec is None or material is None:
        return []
    certificate = {
        "certificate_chain": {"inline_bytes": material.cert},
        "private_key": {"inline_bytes": material.key},
    }
    out = [(CERT_SECRET, _secret(CERT_SECRET, tls_certificate=certificate))]
    if spec.mtls:
        validation: dict[str, Any] = {"trusted_ca": {"inline_bytes": material.client_ca}}
        if spec.client_sans:
            validation["match_typed_subject_alt_names"] = san_matchers(spec)
        out.append((CLIENT_CA_SECRET, _secret(CLIENT_CA_SECRET, validation_context=validation)))
    return out


def san_matchers(spec: TlsSpec) -> list[dict[str, Any]]:
    """``client_sans`` as Envoy's SubjectAltNameMatchers: a client certificate is accepted when
    any one of them matches one of its SANs."""
    return [{"san_type": m.kind, "matcher": {"prefix" if m.prefix else "exact": m.value}} for m in spec.client_sans]


def listener_transport_socket(spec: TlsSpec | None) -> dict[str, Any] | None:
    """The filter chain's ``transport_socket``; None: plain HTTP."""
    if spec is None:
        return None
    common: dict[str, Any] = {
        "tls_params": {"tls_minimum_protocol_version": spec.min_version},
        "alpn_protocols": list(spec.alpn),
        "tls_certificate_sds_secret_configs": [{"name": CERT_SECRET, "sds_config": _SDS_OVER_ADS}],
    }
    if spec.mtls:
        common["validation_context_sds_secret_config"] = {"name": CLIENT_CA_SECRET, "sds_config": _SDS_OVER_ADS}
    context: dict[str, Any] = {
        "@type": _TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": common,
    }
    if spec.mtls:
        context["require_client_certificate"] = spec.require_client_cert
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def connection_manager_fields(spec: TlsSpec | None) -> dict[str, Any]:
    """With mTLS, the verified client certificate's identity reaches ext_authz, ext_proc and the
    decision hop as ``x-forwarded-client-cert``; whatever a client sent under that name is
    replaced (SANITIZE_SET), so the header can only say what Envoy verified."""
    if spec is None or not spec.mtls:
        return {}
    return {
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"uri": True, "dns": True, "subject": True},
    }


def _secret(name: str, **fields: Any) -> Secret:
    secret = Secret()
    json_format.ParseDict({"name": name, **_json_bytes(fields)}, secret)
    return secret


def _json_bytes(value: Any) -> Any:
    """``inline_bytes`` as proto JSON wants it (base64); the rest unchanged."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _json_bytes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_bytes(v) for v in value]
    return value
