"""A local "Bedrock" that checks SigV4 as AWS would, with botocore's signer as the reference: shared
by the tests of Envoy's signing (tests/e2e/test_bedrock_signing.py) and of a fallback chain's
attempts and its other cloud cases (tests/e2e/test_cloud_providers.py).

It recomputes the signature of every request it receives (SigV4Auth over an AWSRequest holding the
headers Envoy says it signed, the same credentials) and answers 403 on any difference; the body
hash is checked against the body received.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

botocore = pytest.importorskip("botocore", reason="botocore (dev extra) is the SigV4 reference")
from botocore.auth import SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

REGION = "eu-west-3"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    "AWS_SESSION_TOKEN": "session-token-example",
}


def verify(method: str, path: str, headers: dict[str, str], body: bytes) -> str | None:
    """Why the request's SigV4 signature is wrong (None: it is right), recomputed by botocore."""
    auth = headers.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return f"no SigV4 Authorization header: {auth[:40]!r}"
    parts = dict(item.strip().split("=", 1) for item in auth.removeprefix("AWS4-HMAC-SHA256 ").split(","))
    key_id, date, region, service, _ = parts["Credential"].split("/")
    if date != headers.get("x-amz-date", "")[:8]:
        return "the credential scope's date is not x-amz-date's"
    if (key_id, region, service) != (CREDENTIALS["AWS_ACCESS_KEY_ID"], REGION, "bedrock"):
        return f"signed for {key_id}/{region}/{service}"
    if headers.get("x-amz-security-token") != CREDENTIALS["AWS_SESSION_TOKEN"]:
        return "the session token is not sent"
    if headers.get("x-amz-content-sha256") != hashlib.sha256(body).hexdigest():
        return "the payload hash is not the body's"
    signed = parts["SignedHeaders"].split(";")
    request = AWSRequest(method=method, url=f"http://{headers['host']}{path}", data=body)
    for name in signed:
        request.headers[name] = headers[name]
    request.context["timestamp"] = headers["x-amz-date"]
    signer = SigV4Auth(
        Credentials(
            CREDENTIALS["AWS_ACCESS_KEY_ID"], CREDENTIALS["AWS_SECRET_ACCESS_KEY"], CREDENTIALS["AWS_SESSION_TOKEN"]
        ),
        "bedrock",
        REGION,
    )
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if expected != parts["Signature"]:
        return f"signature mismatch; botocore's canonical request:\n{canonical}"
    return None


class FakeBedrock(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        problem = verify("POST", self.path, headers, body)
        FakeBedrock.seen.append({"path": self.path, "headers": headers, "problem": problem})
        answer = json.dumps({"ok": problem is None, "problem": problem}).encode()
        self.send_response(200 if problem is None else 403)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


ANSWER = {
    "id": "msg_bedrock",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "signed and verified"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 5, "output_tokens": 3},
}


class FakeBedrockInvoke(FakeBedrock):
    """InvokeModel's answer for an Anthropic model when the signature is right."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        problem = verify("POST", self.path, headers, body)
        FakeBedrock.seen.append({"path": self.path, "headers": headers, "problem": problem})
        answer = json.dumps(ANSWER if problem is None else {"message": problem}).encode()
        self.send_response(200 if problem is None else 403)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """``handler`` on a free local port, for the block's duration."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
