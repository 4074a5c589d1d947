"""A cloud provider's ``credentials:`` (issue 25): where its request signature or token comes from.

Bedrock (``api: bedrock``), Envoy signs with SigV4 from its own credential providers
(control_plane.resources.aws_signing)::

    credentials: env               # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN
    credentials: profile:prod      # a profile of the shared credentials file
    credentials: web_identity      # IRSA: AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN
    (absent)                       # Envoy's default chain

Vertex (``api: vertex``), the control plane obtains an OAuth access token, refreshes it before it
expires and Envoy injects it (control_plane.gcp_tokens)::

    credentials: service_account:/etc/gcp/key.json     # or service_account:${GOOGLE_APPLICATION_CREDENTIALS}
    credentials: metadata                              # GCE / GKE metadata server (workload identity)
    credentials: env:VERTEX_TOKEN                      # a token in a variable (tests, development)
    (absent)                                           # metadata

Never a secret itself: a path, a variable's name, a profile's name.
"""

from __future__ import annotations

import re

AWS_APIS = ("bedrock",)
GCP_APIS = ("vertex",)
_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PROFILE = re.compile(r"^[A-Za-z0-9_.@+-]{1,64}$")
_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
DEFAULT_GCP = "metadata"


def credentials_problem(api: str, text: str) -> str | None:
    """Why ``text`` is not a valid ``credentials:`` for a provider of ``api`` (None: it is)."""
    if api in AWS_APIS:
        if text in ("env", "web_identity"):
            return None
        if text.startswith("profile:") and _PROFILE.match(text.removeprefix("profile:")):
            return None
        return f"must be env, profile:<name> or web_identity (got {text!r})"
    if api in GCP_APIS:
        if text == "metadata":
            return None
        if text.startswith("env:") and _VAR.match(text.removeprefix("env:")):
            return None
        if text.startswith("service_account:"):
            where = text.removeprefix("service_account:")
            if where.startswith("/") or _REFERENCE.match(where):
                return None
            return "service_account: takes an absolute path to the key file or a ${VAR} naming one"
        return f"must be service_account:<path or ${{VAR}}>, metadata or env:<VAR> (got {text!r})"
    return "only bedrock and vertex providers take credentials: (the others use api_key / api_key_env)"


def gcp_source(credentials: str) -> str:
    """The token source a vertex provider names, defaulted."""
    return credentials or DEFAULT_GCP
