"""AWS Signature Version 4, checked as AWS checks it: the fake provider's Bedrock refuses what real
Bedrock would refuse (tests/unit/test_fake_sigv4.py holds it to botocore's signer).

The receiver recomputes the signature from what arrived: the method, the path as sent (its
canonical form encodes it once more, as every service but S3 does), the query, the headers the
``SignedHeaders`` list names, and the payload hash. A request signed with other credentials, for
another region or service, with a changed signed header or body, or too far from the receiver's
clock (AWS allows 15 minutes) is refused with the reason AWS would give, in a sentence.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW_S = 15 * 60
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


@dataclass(frozen=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str = ""


def problem(
    method: str,
    raw_path: str,
    headers: Mapping[str, str],
    body: bytes,
    credentials: AwsCredentials,
    region: str,
    service: str,
    now: float | None = None,
) -> str | None:
    """Why AWS would refuse this request's signature (None: it would accept it). ``headers``: names
    lower-cased; ``raw_path``: the path and query as they arrived, still percent-encoded."""
    authorization = headers.get("authorization", "")
    if not authorization.startswith(ALGORITHM + " "):
        return "Missing Authentication Token: no AWS4-HMAC-SHA256 Authorization header"
    try:
        parts = dict(item.strip().split("=", 1) for item in authorization[len(ALGORITHM) + 1 :].split(","))
        key_id, date, signed_region, signed_service, terminator = parts["Credential"].split("/")
        signed_headers, signature = parts["SignedHeaders"].split(";"), parts["Signature"]
    except (KeyError, ValueError):
        return "Authorization header requires Credential, SignedHeaders and Signature"
    if key_id != credentials.access_key_id:
        return "The security token included in the request is invalid (unknown access key)"
    if (signed_region, signed_service, terminator) != (region, service, "aws4_request"):
        return f"Credential should be scoped to a valid region and service: {region}/{service}, not {signed_region}/{signed_service}"
    if credentials.session_token and headers.get("x-amz-security-token") != credentials.session_token:
        return "The security token included in the request is invalid (x-amz-security-token)"
    amz_date = headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return "x-amz-date is missing or not a basic ISO 8601 time"
    if amz_date[:8] != date:
        return "The credential's date is not x-amz-date's"
    if abs((time.time() if now is None else now) - signed_at) > MAX_SKEW_S:
        return "Signature expired: the request time is more than 15 minutes from the server's (clock skew)"
    if "host" not in signed_headers or any(name not in headers for name in signed_headers):
        return "The request signature we calculated does not match the signature you provided (signed headers)"
    payload = headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
    if payload != UNSIGNED_PAYLOAD and payload != hashlib.sha256(body).hexdigest():
        return "The provided x-amz-content-sha256 header does not match what was computed"
    canonical = canonical_request(method, raw_path, headers, signed_headers, payload)
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join((ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()))
    expected = hmac.new(signing_key(credentials.secret_access_key, date, region, service), to_sign.encode(), "sha256")
    if not hmac.compare_digest(expected.hexdigest(), signature):
        return "The request signature we calculated does not match the signature you provided"
    return None


def canonical_request(
    method: str, raw_path: str, headers: Mapping[str, str], signed_headers: list[str], payload_hash: str
) -> str:
    path, _, query = raw_path.partition("?")
    pairs = sorted((_encode(k), _encode(v)) for k, v in parse_qsl(query, keep_blank_values=True))
    lines = [
        method.upper(),
        quote(path or "/", safe="/~"),  # the path as sent, encoded once more (not S3)
        "&".join(f"{k}={v}" for k, v in pairs),
        *(f"{name}:{' '.join(headers[name].split())}" for name in signed_headers),
        "",
        ";".join(signed_headers),
        payload_hash,
    ]
    return "\n".join(lines)


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), "sha256").digest()
    return key


def _encode(value: str) -> str:
    return quote(value, safe="-_.~")
