"""SigV4 for Bedrock providers, done by Envoy: the AWS request signing filter in the provider
cluster's upstream filter chain (``HttpProtocolOptions.http_filters``, before ``upstream_codec``).

Why upstream and not on the listener: an upstream filter runs after the load balancer picked the
host, once per attempt, so every attempt (a pool retry, a fallback chain's next provider) is signed
for the cluster it goes to, with the headers and body that attempt actually carries; a signature
made before a rewrite would be wrong after it.

The body is signed (``use_unsigned_payload: false``): Bedrock's InvokeModel wants the payload hash.
The filter then buffers the whole request body before it sends anything; the listener's
``per_connection_buffer_limit_bytes`` (the policy's max_request_bytes) already bounds it.

Headers that change in flight (the request id, Envoy's own x-envoy-* added by the router on each
attempt, the gateway's x-ccr-*, forwarding and tracing headers) are left out of the signature
(``match_excluded_headers``): a signed header changed by a hop after signing would break it.

Credentials are Envoy's own (never the control plane's, never ext_proc's), per the provider's
``credentials:``: ``env`` (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN in Envoy's
environment), ``profile:<name>`` (the shared credentials file, AWS_SHARED_CREDENTIALS_FILE or
~/.aws/credentials), ``web_identity`` (IRSA: AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN), or nothing
for Envoy's default chain (environment, profile, container, instance metadata, web identity).

Pure builders, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import envoy.extensions.common.aws.v3.credential_provider_pb2
import envoy.extensions.filters.http.aws_request_signing.v3.aws_request_signing_pb2  # noqa: F401 (typed_config)

from control_plane.policy import ProviderSpec
from control_plane.resources.provider_keys import TYPE_PREFIX

SIGNING_FILTER = "envoy.filters.http.aws_request_signing"
BEDROCK_SERVICE = "bedrock"
# Where EKS mounts the projected service-account token (IRSA) when the pod does not say otherwise.
IRSA_TOKEN_FILE = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"
# Headers a hop may add or change after the signature is made: never signed.
EXCLUDED_HEADERS: tuple[dict[str, str], ...] = (
    {"exact": "x-request-id"},
    {"prefix": "x-envoy-"},
    {"prefix": "x-ccr-"},
    {"prefix": "x-forwarded-"},
    {"exact": "x-amzn-trace-id"},
    {"exact": "traceparent"},
    {"exact": "tracestate"},
    {"prefix": "x-b3-"},
    {"exact": "b3"},
    {"exact": "user-agent"},
)
_REGION_IN_HOST = re.compile(r"^bedrock(?:-runtime)?(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


def is_signed(provider: ProviderSpec) -> bool:
    return provider.api == "bedrock"


def region_of(provider: ProviderSpec) -> str:
    """The provider's AWS region: its ``region:`` field (the Bedrock provider's policy field, added
    beside this module), else read from a bedrock-runtime.<region>.amazonaws.com host, else
    us-east-1. An accessor so that this module does not depend on how the field is spelled."""
    region = getattr(provider, "region", "") or ""
    if region:
        return str(region)
    found = _REGION_IN_HOST.match(provider.host)
    return found.group(1) if found else "us-east-1"


def credentials_of(provider: ProviderSpec) -> str:
    return getattr(provider, "credentials", "") or ""


def credential_provider(credentials: str, environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The filter's ``credential_provider`` for the policy's ``credentials:`` (None: Envoy's
    default chain). ``environ``: the control plane's environment, read for web identity's role and
    token file (on EKS, IRSA puts the same variables in every container of the pod)."""
    env = environ or {}
    if not credentials:
        return None
    if credentials == "env":
        return {"custom_credential_provider_chain": True, "environment_credential_provider": {}}
    if credentials.startswith("profile:"):
        return {
            "custom_credential_provider_chain": True,
            "credentials_file_provider": {"profile": credentials.removeprefix("profile:")},
        }
    if credentials == "web_identity":
        role_arn = env.get("AWS_ROLE_ARN", "")
        if not role_arn:
            # Without the role here, Envoy's default chain still tries web identity from its own
            # environment (AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN), and nothing else first that
            # could succeed on EKS with IRSA.
            return None
        provider: dict[str, Any] = {
            "web_identity_token_data_source": {
                "filename": env.get("AWS_WEB_IDENTITY_TOKEN_FILE") or IRSA_TOKEN_FILE,
            },
            "role_arn": role_arn,
        }
        if env.get("AWS_ROLE_SESSION_NAME"):
            provider["role_session_name"] = env["AWS_ROLE_SESSION_NAME"]
        return {"custom_credential_provider_chain": True, "assume_role_with_web_identity_provider": provider}
    raise ValueError(f"unknown AWS credentials {credentials!r} (env, profile:<name>, web_identity)")


def signing_filter(provider: ProviderSpec, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The AWS request signing filter for a Bedrock provider."""
    config: dict[str, Any] = {
        "@type": TYPE_PREFIX + "envoy.extensions.filters.http.aws_request_signing.v3.AwsRequestSigning",
        "service_name": BEDROCK_SERVICE,
        "region": region_of(provider),
        # The host is signed as the filter rewrites it, not as the route's auto_host_rewrite will: that
        # rewrite happens when the connection is ready, before or after the filter signed (it signs
        # once the whole body is in): seen here, one request in two signed the client's Host
        # (tests/e2e/test_bedrock_signing.py). Both write the endpoint's host name, so they agree.
        "host_rewrite": provider.host,
        "use_unsigned_payload": False,
        "match_excluded_headers": [dict(m) for m in EXCLUDED_HEADERS],
    }
    chain = credential_provider(credentials_of(provider), environ)
    if chain is not None:
        config["credential_provider"] = chain
    return {"name": SIGNING_FILTER, "typed_config": config}
