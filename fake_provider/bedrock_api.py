"""AWS Bedrock's InvokeModel for Anthropic models (``POST /model/{modelId}/invoke`` and
``/invoke-with-response-stream``): the Anthropic body without ``model`` and ``stream``, with
``anthropic_version: bedrock-2023-05-31``; the answer is the Anthropic Message, the stream AWS
event-stream frames whose ``chunk`` events carry each Anthropic stream event's JSON in base64.

Replies come from the Anthropic planner (anthropic_api), so tests predict them the same way.
``verify_request`` checks SigV4 as Bedrock does (fake_provider.sigv4) when the fake is given
credentials (FakeConfig.aws_credentials), and accepts every request otherwise.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson

from extproc.translate.aws_eventstream import encode_message
from fake_provider import sigv4
from fake_provider.anthropic_api import AnthropicApi
from fake_provider.api import BadRequest
from fake_provider.reply import Conversation, Reply

EVENTSTREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"
BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"
# Bedrock's error type (the x-amzn-ErrorType header) by HTTP status, as InvokeModel documents them.
ERROR_TYPES = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
_CHUNK_HEADERS = {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}
_NOT_IN_BODY = ("model", "stream")  # Bedrock refuses both: the path says them
# Bedrock pads each chunk with a "p" field of varying length (hiding the token lengths on the wire).
_PADDING = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


class BedrockApi:
    name = "anthropic"  # the reply text names the format the model was asked in: Anthropic's
    stream_content_type = EVENTSTREAM_CONTENT_TYPE

    def __init__(self) -> None:
        self._anthropic = AnthropicApi()

    def verify_request(
        self, method: str, path: str, headers: dict[str, str], body: bytes, credentials: str, clock_offset_s: float = 0
    ) -> str | None:
        """Why the request's signature is refused (answered 403 InvalidSignatureException), or None.
        ``credentials``: FakeConfig.aws_credentials, "" accepting every request; ``clock_offset_s``:
        how far ahead of the signer's the fake's clock runs."""
        if not credentials:
            return None
        key_id, secret, token, region = [*credentials.split(","), "", "", ""][:4]
        signer = sigv4.AwsCredentials(key_id, secret, token)
        return sigv4.problem(method, path, headers, body, signer, region, "bedrock", time.time() + clock_offset_s)

    def parse(self, body: Any, body_size: int, path_model: str | None) -> Conversation:
        if not isinstance(body, dict):
            raise BadRequest("Malformed input request, please reformat your input and try again.")
        for key in _NOT_IN_BODY:
            if key in body:
                raise BadRequest(f"Malformed input request: extraneous key [{key}] is not permitted")
        if body.get("anthropic_version") != BEDROCK_ANTHROPIC_VERSION:
            raise BadRequest(f"Malformed input request: anthropic_version must be {BEDROCK_ANTHROPIC_VERSION}")
        betas = body.get("anthropic_beta")
        if betas is not None and not (isinstance(betas, list) and all(isinstance(b, str) for b in betas)):
            raise BadRequest("Malformed input request: anthropic_beta must be a list of strings")
        return self._anthropic.parse({**body, "model": path_model or ""}, body_size, None)

    def wants_stream(self, body: Any) -> bool:
        return False  # the path says it

    def render_json(self, reply: Reply, body: Any = None) -> bytes:
        return self._anthropic.render_json(reply, body)

    def render_stream(self, reply: Reply, body: Any, chunks: int) -> list[bytes]:
        frames = []
        for event in self._anthropic.render_stream(reply, body, chunks):
            data = orjson.loads(event.partition(b"\ndata: ")[2])
            if data["type"] == "ping":
                continue
            if data["type"] == "message_stop":
                data["amazon-bedrock-invocationMetrics"] = {
                    "inputTokenCount": reply.uncached_input_tokens,
                    "outputTokenCount": reply.output_tokens,
                    "invocationLatency": 1,
                    "firstByteLatency": 1,
                }
            frames.append(chunk_frame(orjson.dumps(data), len(frames)))
        return frames

    def error_body(self, status: int, message: str) -> bytes:
        return orjson.dumps({"message": message})

    def error_type(self, status: int) -> str:
        return ERROR_TYPES.get(status, "InternalServerException" if status >= 500 else "ValidationException")

    def stream_error_event(self) -> bytes:
        payload = {"message": "Overloaded", "originalStatusCode": 529, "originalMessage": "Overloaded"}
        headers = {
            ":exception-type": "modelStreamErrorException",
            ":content-type": "application/json",
            ":message-type": "exception",
        }
        return encode_message(headers, orjson.dumps(payload))


def chunk_frame(event_json: bytes, n: int = 0) -> bytes:
    """One ``chunk`` event carrying an Anthropic stream event's JSON."""
    payload = {"bytes": base64.b64encode(event_json).decode(), "p": _PADDING[: 1 + n % len(_PADDING)]}
    return encode_message(_CHUNK_HEADERS, orjson.dumps(payload))
