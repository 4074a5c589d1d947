"""fake_provider.sigv4 accepts exactly what botocore signs, and refuses what AWS refuses."""

from __future__ import annotations

import hashlib
import time

import pytest

from fake_provider.sigv4 import AwsCredentials, problem

botocore = pytest.importorskip("botocore", reason="botocore (dev extra) is the SigV4 reference")
from botocore.auth import SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

CREDENTIALS = AwsCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token")
REGION = "us-west-2"
HOST = "bedrock-runtime.us-west-2.amazonaws.com"


def signed(
    path: str, body: bytes = b'{"a":1}', credentials: AwsCredentials = CREDENTIALS, region: str = REGION, **extra: str
) -> dict[str, str]:
    """The headers botocore sends for a POST of ``body`` to ``path`` (path and query as on the wire)."""
    request = AWSRequest(method="POST", url=f"https://{HOST}{path}", data=body, headers={"host": HOST, **extra})
    request.headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
    SigV4Auth(
        Credentials(credentials.access_key_id, credentials.secret_access_key, credentials.session_token),
        "bedrock",
        region,
    ).add_auth(request)
    return {name.lower(): value for name, value in request.headers.items()}


@pytest.mark.parametrize(
    "path",
    [
        "/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke",
        "/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/invoke-with-response-stream",
        "/model/m/invoke?b=2&a=1&c=",
        "/model/arn%3Aaws%3Abedrock%3Aus-west-2%3A1%3Ainference-profile%2Fx/invoke",
    ],
)
def test_what_botocore_signs_is_accepted(path: str) -> None:
    headers = signed(path, **{"content-type": "application/json", "anthropic-beta": "a,  b"})
    assert problem("POST", path, headers, b'{"a":1}', CREDENTIALS, REGION, "bedrock") is None


def test_a_changed_body_is_refused() -> None:
    headers = signed("/model/m/invoke")
    assert "x-amz-content-sha256" in str(
        problem("POST", "/model/m/invoke", headers, b'{"a":2}', CREDENTIALS, REGION, "bedrock")
    )


def test_a_changed_signed_header_or_path_is_refused() -> None:
    headers = signed("/model/m/invoke", **{"content-type": "application/json"})
    changed = {**headers, "content-type": "text/plain"}
    assert "does not match" in str(
        problem("POST", "/model/m/invoke", changed, b'{"a":1}', CREDENTIALS, REGION, "bedrock")
    )
    assert "does not match" in str(
        problem("POST", "/model/n/invoke", headers, b'{"a":1}', CREDENTIALS, REGION, "bedrock")
    )


@pytest.mark.parametrize(
    ("credentials", "region", "reason"),
    [
        (AwsCredentials("AKIDOTHER", CREDENTIALS.secret_access_key, "session-token"), REGION, "unknown access key"),
        (AwsCredentials("AKIDEXAMPLE", "another-secret", "session-token"), REGION, "does not match"),
        (CREDENTIALS, "eu-west-1", "scoped"),
        (AwsCredentials("AKIDEXAMPLE", CREDENTIALS.secret_access_key, "other-token"), REGION, "x-amz-security-token"),
    ],
    ids=["access-key", "secret", "region", "session-token"],
)
def test_other_credentials_or_another_region_are_refused(credentials: AwsCredentials, region: str, reason: str) -> None:
    headers = signed("/model/m/invoke", credentials=credentials, region=region)
    assert reason in str(problem("POST", "/model/m/invoke", headers, b'{"a":1}', CREDENTIALS, REGION, "bedrock"))


def test_a_request_signed_too_far_from_the_servers_clock_is_refused() -> None:
    headers = signed("/model/m/invoke")
    later = time.time() + 16 * 60
    assert "clock skew" in str(
        problem("POST", "/model/m/invoke", headers, b'{"a":1}', CREDENTIALS, REGION, "bedrock", now=later)
    )
    assert (
        problem("POST", "/model/m/invoke", headers, b'{"a":1}', CREDENTIALS, REGION, "bedrock", now=time.time() + 60)
        is None
    )


def test_an_unsigned_request_is_refused() -> None:
    assert "Missing Authentication Token" in str(
        problem("POST", "/model/m/invoke", {"host": HOST}, b"", CREDENTIALS, REGION, "bedrock")
    )
