"""JWT verification at the edge: Envoy's ``jwt_authn`` filter checks the tokens of the policy's
``auth.jwt`` issuers, and a header filter after it hands the decision service what it found.

- ``jwt_authn`` verifies every token in a provider's ``from`` headers (signature against the JWKS,
  ``exp``/``nbf``, issuer, audiences) and never answers itself (``allow_missing_or_failed``): a
  request without a token, or with a virtual key where a token could be, goes on as before, and a
  bad token is refused by the decision service in the client's own error format, not with Envoy's
  plain-text 401. A verified token is removed from the request (``forward: false``); its payload
  and, for a failed one, the reason go to dynamic metadata.
- the claims filter then removes every ``x-ccr-jwt-*`` header the client sent and sets them from
  that metadata: the issuer of a verified token, the claims the policy names for the tenant, the
  virtual key and the subject, the reason a token failed, and (constant) the headers tokens are read
  from. Both decision paths read these headers (the decision hop's Lua filter forwards them as set
  here; ext_proc sees them as they are), so the claim mapping lives in one place, this one, and a
  client cannot forge any of them. The filter is in the chain even without ``auth.jwt``: the hop
  forwards ``x-ccr-jwt-*`` headers, so a client's copies must always be gone before it.

A ``uri`` JWKS is fetched by Envoy through a cluster of its own (``jwks_clusters``), at listener
start (``async_fetch``) and again when ``cache_s`` runs out; a ``file`` JWKS goes inline.

The header names are the decision service's too (extproc.auth.jwt_identity; a test holds them equal).
"""

from __future__ import annotations

from typing import Any

import envoy.extensions.filters.http.header_mutation.v3.header_mutation_pb2
import envoy.extensions.filters.http.jwt_authn.v3.config_pb2
import envoy.extensions.transport_sockets.tls.v3.tls_pb2  # noqa: F401  (registers the types for "@type")
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from google.protobuf import json_format

from ccr.v1.contract import INTERNAL_HEADER_PREFIX
from control_plane.policy.jwt import JwtProviderSpec, JwtSpec
from control_plane.resources.resilience import TYPE_PREFIX

JWT_FILTER = "envoy.filters.http.jwt_authn"
CLAIMS_FILTER = "ccr.jwt_claims"
# Where jwt_authn files what it found: its own filter name.
JWT_METADATA_NAMESPACE = JWT_FILTER
JWT_HEADER_PREFIX = INTERNAL_HEADER_PREFIX + "jwt-"
FROM_HEADER = JWT_HEADER_PREFIX + "from"  # the headers tokens are read from (comma-separated): JWT is on
ISSUER_HEADER = JWT_HEADER_PREFIX + "issuer"  # a verified token's iss: only ever set for one that verified
TENANT_HEADER = JWT_HEADER_PREFIX + "tenant"
KEY_HEADER = JWT_HEADER_PREFIX + "key"
SUBJECT_HEADER = JWT_HEADER_PREFIX + "subject"
ERROR_HEADER = JWT_HEADER_PREFIX + "error"  # why a token failed, as Envoy says it ("Jwt is expired")
BEARER_PREFIX = "Bearer "
# The same CA bundle as the providers' clusters (control_plane.resources.gateway.SYSTEM_CA_BUNDLE).
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
JWKS_FETCH_TIMEOUT = "5s"
_OVERWRITE = "OVERWRITE_IF_EXISTS_OR_ADD"


def filters(spec: JwtSpec) -> list[dict[str, Any]]:
    """The HTTP filters, in order, to go before the decision filters (the claims filter alone
    without providers: it only removes what clients sent)."""
    if not spec.providers:
        return [claims_filter(spec)]
    return [jwt_authn_filter(spec), claims_filter(spec)]


def payload_key(provider: JwtProviderSpec) -> str:
    return f"payload/{provider.name}"


def failure_key(provider: JwtProviderSpec) -> str:
    return f"failure/{provider.name}"


def jwt_authn_filter(spec: JwtSpec) -> dict[str, Any]:
    return {
        "name": JWT_FILTER,
        "typed_config": {
            "@type": TYPE_PREFIX + "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {p.name: _provider(p) for p in spec.providers},
            # Verify what is there, decide nothing: the decision service answers, in the client's format.
            "rules": [{"match": {"prefix": "/"}, "requires": {"allow_missing_or_failed": {}}}],
            "bypass_cors_preflight": True,
        },
    }


def _provider(provider: JwtProviderSpec) -> dict[str, Any]:
    jwks = provider.jwks
    config: dict[str, Any] = {
        "issuer": provider.issuer,
        "audiences": list(provider.audiences),
        "from_headers": [
            {"name": name, "value_prefix": BEARER_PREFIX} if name == "authorization" else {"name": name}
            for name in provider.from_headers
        ],
        "forward": False,  # a verified token never goes upstream
        "payload_in_metadata": payload_key(provider),
        "failed_status_in_metadata": failure_key(provider),
    }
    if jwks.uri:
        config["remote_jwks"] = {
            "http_uri": {"uri": jwks.uri, "cluster": provider.cluster, "timeout": JWKS_FETCH_TIMEOUT},
            "cache_duration": f"{jwks.cache_seconds}s",
            # Fetched when the listener starts (which waits for the first answer) and refetched in
            # the background: no request waits on the issuer.
            "async_fetch": {},
        }
    else:
        config["local_jwks"] = {"inline_string": jwks.inline}
    return config


def claims_filter(spec: JwtSpec) -> dict[str, Any]:
    """Every client-sent ``x-ccr-jwt-*`` header removed, then set from jwt_authn's metadata. A value
    Envoy does not find (no token, a claim the token lacks) sets nothing: only the provider whose
    issuer made the token has a payload, so one provider's headers never mix with another's."""
    mutations: list[dict[str, Any]] = [{"remove_on_match": {"key_matcher": {"prefix": JWT_HEADER_PREFIX}}}]
    if spec.providers:
        mutations.append(_set(FROM_HEADER, ",".join(spec.from_headers)))
    for provider in spec.providers:
        claims = {ISSUER_HEADER: "iss", TENANT_HEADER: provider.tenant_claim, SUBJECT_HEADER: provider.subject_claim}
        if provider.key_claim:
            claims[KEY_HEADER] = provider.key_claim
        for header, claim in claims.items():
            mutations.append(_set(header, _metadata(payload_key(provider), *claim.split("."))))
        mutations.append(_set(ERROR_HEADER, _metadata(failure_key(provider), "message")))
    return {
        "name": CLAIMS_FILTER,
        "typed_config": {
            "@type": TYPE_PREFIX + "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": mutations},
        },
    }


def _metadata(key: str, *path: str) -> str:
    return f"%DYNAMIC_METADATA({JWT_METADATA_NAMESPACE}:{':'.join((key, *path))})%"


def _set(name: str, value: str) -> dict[str, Any]:
    return {"append": {"header": {"key": name, "value": value}, "append_action": _OVERWRITE}}


def jwks_clusters(spec: JwtSpec) -> list[Cluster]:
    """One cluster per provider whose JWKS is a URL: its host, TLS for https (SNI and certificate
    checked against the host name, the system CAs)."""
    return [jwks_cluster(p) for p in spec.providers if p.jwks.uri]


def jwks_cluster(provider: JwtProviderSpec) -> Cluster:
    jwks = provider.jwks
    cluster: dict[str, Any] = {
        "name": provider.cluster,
        "type": "LOGICAL_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": JWKS_FETCH_TIMEOUT,
        "load_assignment": {
            "cluster_name": provider.cluster,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": jwks.host, "port_value": jwks.port}},
                                "hostname": jwks.host,
                            }
                        }
                    ]
                }
            ],
        },
    }
    if jwks.tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": jwks.host,
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"filename": SYSTEM_CA_BUNDLE},
                        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": jwks.host}}],
                    }
                },
            },
        }
    message = Cluster()
    json_format.ParseDict(cluster, message)
    return message
