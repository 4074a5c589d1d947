"""Where Vertex providers' OAuth tokens come from over HTTP (control_plane.gcp_tokens refreshes them):
the JWT-bearer grant with a service-account key, and the GCE/GKE metadata server.

A room of its own so that aiohttp and cryptography load only in a control plane whose policy has a
vertex provider (control_plane.gcp_tokens.source_for imports it then).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

import aiohttp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from control_plane.gcp_tokens import Token, TokenError

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
METADATA_URL = "http://metadata.google.internal"
METADATA_TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JWT_LIFETIME_S = 3600  # the assertion's own life (Google's maximum)
HTTP_TIMEOUT_S = 10.0


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signed_assertion(key: Mapping[str, str], now: float, token_uri: str, scope: str = SCOPE) -> str:
    """The JWT-bearer assertion for a service-account key (RS256, signed with its private key)."""
    private_key = serialization.load_pem_private_key(key["private_key"].encode(), password=None)
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise TokenError("the service-account key is not an RSA key")
    header = {"alg": "RS256", "typ": "JWT"}
    if key.get("private_key_id"):
        header["kid"] = key["private_key_id"]
    claims = {
        "iss": key["client_email"],
        "scope": scope,
        "aud": token_uri,
        "iat": int(now),
        "exp": int(now) + JWT_LIFETIME_S,
    }
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    signature = private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


async def _token_response(response: aiohttp.ClientResponse, now: float, what: str) -> Token:
    if response.status != 200:
        # Google's error bodies name the error ("invalid_grant"), not the credential: kept short anyway.
        text = (await response.text())[:200]
        raise TokenError(f"{what} answered {response.status}: {text}")
    try:
        body = await response.json(content_type=None)
        value, lifetime = str(body["access_token"]), float(body.get("expires_in", 3600))
    except (ValueError, KeyError, TypeError) as exc:
        raise TokenError(f"{what} answered without an access token ({type(exc).__name__})") from None
    if not value or lifetime <= 0:
        raise TokenError(f"{what} answered an empty or expired token")
    return Token(value, now + lifetime, lifetime)


class ServiceAccountSource:
    """The JWT-bearer grant with a service-account key file (read at each fetch: a rotated key file
    is picked up). ``token_uri`` overrides the key's (tests)."""

    def __init__(self, key_path: str, token_uri: str | None = None, scope: str = SCOPE) -> None:
        self.key_path, self.token_uri, self.scope = key_path, token_uri, scope

    def _key(self) -> dict[str, str]:
        try:
            with open(self.key_path, encoding="utf-8") as file:
                key = json.load(file)
        except (OSError, ValueError) as exc:
            raise TokenError(f"cannot read the service-account key {self.key_path}: {type(exc).__name__}") from None
        if not isinstance(key, dict) or not key.get("private_key") or not key.get("client_email"):
            raise TokenError(f"{self.key_path} is not a service-account key (private_key, client_email)")
        return key

    async def fetch(self, now: float) -> Token:
        key = self._key()
        token_uri = self.token_uri or key.get("token_uri") or DEFAULT_TOKEN_URI
        try:
            assertion = signed_assertion(key, now, token_uri, self.scope)
        except (ValueError, TypeError) as exc:
            raise TokenError(f"cannot sign with the key in {self.key_path}: {type(exc).__name__}") from None
        form = {"grant_type": JWT_BEARER, "assertion": assertion}
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as session,
                session.post(token_uri, data=form) as response,
            ):
                return await _token_response(response, now, f"the token endpoint {token_uri}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TokenError(f"the token endpoint {token_uri} is unreachable: {type(exc).__name__}") from None


class MetadataSource:
    """The metadata server of GCE / GKE (workload identity); ``base_url`` overridable (tests)."""

    def __init__(self, base_url: str = METADATA_URL) -> None:
        self.url = base_url.rstrip("/") + METADATA_TOKEN_PATH

    async def fetch(self, now: float) -> Token:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as session,
                session.get(self.url, headers={"Metadata-Flavor": "Google"}) as response,
            ):
                return await _token_response(response, now, "the metadata server")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TokenError(f"the metadata server {self.url} is unreachable: {type(exc).__name__}") from None
