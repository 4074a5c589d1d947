"""Provider keys injected by Envoy: one SDS generic secret per provider, and the credential_injector
upstream filter of the provider's cluster that names it.

The control plane reads the ``api_key: vault:`` references (control_plane.provider_keys) and serves
each value as a ``Secret`` (``provider_<name>_key``) over the ADS stream, beside the listener's TLS
secrets; the provider's cluster runs ``envoy.filters.http.credential_injector`` in its upstream
filter chain (``HttpProtocolOptions.http_filters``, before ``upstream_codec``), so the key is added
after the load balancer picked the host and ext_proc never holds it. A rotation is a new version of
the secret alone: the cluster is not rebuilt, its connections are not drained.

The secret holds the whole header value: ``Bearer <key>`` for OpenAI-format providers'
``Authorization``, the bare key for Anthropic's ``x-api-key`` and Gemini's ``x-goog-api-key`` (the
headers extproc.routing_table.auth_headers sends for keys ext_proc injects).

Before the control plane has a key, the secret is served empty: the cluster has its secret (it never
waits for one), ext_proc answers 503 for the provider (Provider.key_unavailable), and a request that
got past that anyway (a policy ext_proc holds for a moment longer than Envoy its old secret) is
refused by Envoy (``allow_request_without_credential: false``) rather than sent to the provider
without the key. Envoy's refusal is a local 401 ("Failed to inject credential."); the listener's
local reply mappers (``missing_key_mapper``) turn it into the 503 ext_proc would give, in the client's
format.

Pure builders: the values come in as a mapping reference (``vault:...``) -> key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import envoy.extensions.filters.http.credential_injector.v3.credential_injector_pb2
import envoy.extensions.filters.http.upstream_codec.v3.upstream_codec_pb2
import envoy.extensions.http.injected_credentials.generic.v3.generic_pb2  # noqa: F401 (typed_config types)
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from google.protobuf import json_format

from ccr.v1.contract import METADATA_NAMESPACE
from control_plane.policy import ProviderSpec

TYPE_PREFIX = "type.googleapis.com/"
MISSING_KEY_DETAILS = "failed_to_inject_credential"  # the injector's response code details
INJECTOR_FILTER = "envoy.filters.http.credential_injector"
_SDS_OVER_ADS = {"ads": {}, "resource_api_version": "V3"}
# api -> (header, prefix of the value): what extproc.routing_table.auth_headers would send.
_HEADERS = {
    "openai": ("Authorization", "Bearer "),
    "anthropic": ("x-api-key", ""),
    "gemini": ("x-goog-api-key", ""),
    "responses": ("Authorization", "Bearer "),
    # The OAuth access token the control plane obtains and refreshes (control_plane.gcp_tokens).
    "vertex": ("Authorization", "Bearer "),
}


def secret_name(provider: ProviderSpec) -> str:
    return f"{provider.cluster}_key"  # provider_<name>_key


def header_value(provider: ProviderSpec, key: str) -> str:
    """The value Envoy puts in the provider's auth header."""
    return _HEADERS[provider.api][1] + key


def key_secret(provider: ProviderSpec, key: str | None) -> Secret:
    """The provider's generic secret; empty while the control plane has no key (Envoy then refuses
    to send the request: ``allow_request_without_credential`` is off)."""
    secret = Secret()
    value = header_value(provider, key) if key else ""
    json_format.ParseDict(
        {"name": secret_name(provider), "generic_secret": {"secret": {"inline_string": value}}}, secret
    )
    return secret


def key_secrets(providers: list[ProviderSpec], keys: Mapping[str, str]) -> list[tuple[str, Secret]]:
    """One secret per provider whose key Envoy injects (``keys``: reference text -> key read)."""
    return [(secret_name(p), key_secret(p, keys.get(p.injected_key_ref))) for p in providers]


def injector_filters(provider: ProviderSpec) -> list[dict[str, Any]]:
    """The cluster's upstream filter chain: the credential injector, then the codec (which must be
    last). ``overwrite``: whatever came with the request under that header is replaced (ext_proc
    already strips the client's credentials; this is the second lock)."""
    header = _HEADERS[provider.api][0]
    return [
        {
            "name": INJECTOR_FILTER,
            "typed_config": {
                "@type": TYPE_PREFIX + "envoy.extensions.filters.http.credential_injector.v3.CredentialInjector",
                "overwrite": True,
                "allow_request_without_credential": False,
                "credential": {
                    "name": "envoy.http.injected_credentials.generic",
                    "typed_config": {
                        "@type": TYPE_PREFIX + "envoy.extensions.http.injected_credentials.generic.v3.Generic",
                        "credential": {"name": secret_name(provider), "sds_config": _SDS_OVER_ADS},
                        "header": header,
                    },
                },
            },
        },
        codec_filter(),
    ]


def codec_filter() -> dict[str, Any]:
    """The upstream codec: the last filter of every cluster's upstream filter chain."""
    return {
        "name": "envoy.filters.http.upstream_codec",
        "typed_config": {"@type": TYPE_PREFIX + "envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"},
    }


def missing_key_bodies() -> dict[str, dict[str, Any]]:
    """The error bodies of Envoy's refusal to send a request without its key, per client format
    (openai, anthropic, bedrock, and "either" when the path was not read), as ext_proc words a missing key."""
    message = (
        f"provider '%DYNAMIC_METADATA({METADATA_NAMESPACE}:provider)%' has no API key: Envoy has not received it "
        "from the control plane (which reads it from Vault, or obtains a Vertex OAuth token) yet; the request "
        "was not sent"
    )
    openai = {"error": {"message": message, "type": "server_error", "param": None, "code": "ccr_provider_unavailable"}}
    anthropic = {"type": "error", "error": {"type": "api_error", "message": message}}
    either = {"type": "error", "error": {**openai["error"], "type": "api_error"}}
    return {"openai": openai, "anthropic": anthropic, "bedrock": {"message": message}, "either": either}
