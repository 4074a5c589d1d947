"""Anthropic client -> AWS Bedrock InvokeModel for Anthropic models (and the answer back).

Bedrock's Anthropic body is the Messages body without ``model`` (it is in the path) and ``stream``
(the path says that too), plus ``anthropic_version: bedrock-2023-05-31``; a client's
``anthropic_beta`` list goes on in the body (Bedrock reads no ``anthropic-beta`` header):

    POST {base}/model/{model id, URL-encoded}/invoke                       -> one Anthropic Message (JSON)
    POST {base}/model/{model id, URL-encoded}/invoke-with-response-stream  -> AWS event-stream frames

A stream's ``chunk`` events carry ``{"bytes": base64 of one Anthropic stream event's JSON}``: each is
sent on as that SSE event, unchanged. An ``exception`` frame (throttlingException,
modelStreamErrorException, ...) ends the stream with an Anthropic ``error`` event. A non-2xx answer
is ``{"message": ...}`` (its type is in the x-amzn-ErrorType header, which the response_error phase
does not see: the status says enough) and becomes Anthropic's error shape.

A model that is not Anthropic's (Amazon Nova, Meta Llama, Mistral...: ``uses_converse``) takes no
Anthropic body: its requests go to Bedrock's Converse API instead, through the codec in
extproc.translate.bedrock_converse, which this translator hands the request and the response to.

Requests are signed (SigV4) by Envoy, never here: this translator sets no auth header.
One instance per request; not thread-safe.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from extproc.sse import encode_event
from extproc.translate.anthropic_schema import (
    PING_FRAME,
    block_stop_frame,
    error_frame,
    events_from_message,
    usage_from_anthropic,
)
from extproc.translate.aws_eventstream import EventStreamDecoder, EventStreamError, Message
from extproc.translate.base import (
    Api,
    ResponseContext,
    Target,
    TranslatedBody,
    TranslatedChunk,
    UpstreamProtocolError,
    UpstreamRequest,
    Usage,
)
from extproc.translate.buffering import ResponsePhases
from extproc.translate.client_request import ClientRequest
from extproc.translate.errors import error_body
from extproc.translate.passthrough import _has_unsigned_thinking, _without_unsigned_thinking
from extproc.translate.wire import as_int, error_message, upstream_error_message

if TYPE_CHECKING:
    from extproc.translate.bedrock_converse import AnthropicToConverse

log = logging.getLogger("ccr.extproc.translate")

BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"
EVENTSTREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"
_DROPPED_FIELDS = ("model", "stream")

# Bedrock error type (x-amzn-ErrorType's name, an exception frame's :exception-type, any case) ->
# the HTTP status the client is told. Throttling mid-stream reads as Anthropic's overloaded_error.
_STATUS_BY_ERROR = {
    "throttlingexception": 429,
    "servicequotaexceededexception": 429,
    "modelnotreadyexception": 429,
    "accessdeniedexception": 403,
    # AWS refusing the gateway's own credentials (Envoy's signature), not anything the client did
    # (_CREDENTIAL_ERRORS).
    "unrecognizedclientexception": 502,
    "expiredtokenexception": 502,
    "invalidsignatureexception": 502,
    "incompletesignatureexception": 502,
    "missingauthenticationtokenexception": 502,
    "validationexception": 400,
    "resourcenotfoundexception": 404,
    "modeltimeoutexception": 504,
    "modelerrorexception": 502,
    "modelstreamerrorexception": 502,
    "internalserverexception": 500,
    "serviceunavailableexception": 503,
}
_STREAM_STATUS = {**_STATUS_BY_ERROR, "throttlingexception": 529}
# Bedrock statuses with no Anthropic meaning: 408 is a model timeout, 424 a model error.
_STATUS_BY_STATUS = {408: 504, 424: 502}
# The body of a refusal of the signature (its type is only in x-amzn-ErrorType, which an error's
# translation does not see): AWS's own sentences ("The request signature we calculated does not
# match...", "Signature expired: ...", "The security token included in the request is expired").
_CREDENTIAL_WORDS = ("signature", "security token", "authentication token")


_CREDENTIAL_ERRORS = frozenset(
    (
        "unrecognizedclientexception",
        "expiredtokenexception",
        "invalidsignatureexception",
        "incompletesignatureexception",
        "missingauthenticationtokenexception",
    )
)


def _error_name(error_type: str) -> str:
    return error_type.partition(":")[0].rpartition("#")[2].lower()


def refused_credentials(status: int, message: str) -> bool:
    """Whether a 401/403 from AWS refused the credentials Envoy signed with (a wrong or expired key,
    a clock too far off), rather than what the request asked for (AccessDenied on a model)."""
    return status in (401, 403) and any(word in message.lower() for word in _CREDENTIAL_WORDS)


def bedrock_error_status(error_type: str, status: int, stream: bool = False) -> int:
    """The status for a Bedrock error of ``error_type`` ("ThrottlingException", or the whole
    x-amzn-ErrorType value "ThrottlingException:http://internal.amazon.com/..."), else by
    ``status``. ``stream``: an exception frame, after the 200 (throttling is overloaded there)."""
    name = _error_name(error_type)
    found = (_STREAM_STATUS if stream else _STATUS_BY_ERROR).get(name)
    return found if found is not None else _STATUS_BY_STATUS.get(status, status)


# A Bedrock model id's vendor: ``amazon`` in ``amazon.nova-pro-v1:0``, ``us.amazon.nova-lite-v1:0``
# (a cross-region inference profile) or an ARN ending ``foundation-model/amazon.nova-pro-v1:0``.
_REGIONS = ("us", "eu", "apac", "global", "us-gov", "jp", "au", "ca")  # cross-region profiles' prefixes
_VENDOR = re.compile(r"(?:(?:" + "|".join(_REGIONS) + r")\.)?([a-z][a-z0-9]*)\.[^.]")


def uses_converse(model: str) -> bool:
    """Whether a Bedrock model id names a model of another vendor than Anthropic, which takes no
    Anthropic body and is reached through the Converse API. An id that names no vendor (an
    application inference profile's or a provisioned model's ARN, a test's "m") keeps InvokeModel
    with the Anthropic body, as before Converse was supported."""
    if "anthropic." in model:
        return False
    found = _VENDOR.match(model.rpartition("/")[2])
    return found is not None and found.group(1) not in _REGIONS


def bedrock_path(base_path: str, model: str, stream: bool) -> str:
    action = "invoke-with-response-stream" if stream else "invoke"
    return f"{base_path}/model/{quote(model, safe='')}/{action}"


class AnthropicToBedrock(ResponsePhases):
    client_api = Api.ANTHROPIC
    provider_api = Api.BEDROCK
    rewrites_response = True  # the stream is re-framed; the JSON answer goes on as it came

    def __init__(self) -> None:
        super().__init__()
        self._eventstream = False  # what the provider actually sends, known from its content-type
        self._machine: BedrockStream | None = None
        # The Converse codec, for a model that is not Anthropic's: every phase is then its.
        self._converse: AnthropicToConverse | None = None

    def _converse_for(self, model: str) -> AnthropicToConverse | None:
        # A Bedrock client (BedrockPassthrough) sends InvokeModel's Anthropic body whatever the model.
        if self.client_api is not Api.ANTHROPIC or not uses_converse(model):
            return None
        # Imported here: the codec imports this module's error handling, and only a policy with a
        # non-Anthropic Bedrock model needs it loaded (as the registry loads translators).
        from extproc.translate.bedrock_converse import AnthropicToConverse

        return AnthropicToConverse()

    @property
    def estimate(self) -> int:
        return self._converse.estimate if self._converse is not None else self._estimate

    def request(self, request: ClientRequest, target: Target) -> UpstreamRequest:
        self._converse = self._converse_for(target.model)
        if self._converse is not None:
            return self._converse.request(request, target)  # type: ignore[arg-type]  # an Anthropic client's
        body = request.body
        # A new dict: the parsed body stays intact for a fallback attempt.
        upstream = {key: value for key, value in body.items() if key not in _DROPPED_FIELDS}
        upstream["anthropic_version"] = BEDROCK_ANTHROPIC_VERSION
        messages = body.get("messages")
        if isinstance(messages, list) and _has_unsigned_thinking(messages):
            upstream["messages"] = _without_unsigned_thinking(messages)
        limit, asked = target.max_output_tokens, body.get("max_tokens")
        if limit is not None and isinstance(asked, int) and asked > limit:
            upstream["max_tokens"] = limit
        self._model = target.model
        self._stream = self._eventstream = target.stream
        return UpstreamRequest(
            path=bedrock_path(target.base_path, target.model, target.stream), body=orjson.dumps(upstream)
        )

    def prime(self, context: ResponseContext) -> None:
        self._converse = self._converse_for(context.model)
        if self._converse is not None:
            self._converse.prime(context)
            return
        self._model = context.model
        self._stream = self._eventstream = context.stream
        self._estimate = context.estimate

    # --- response ---------------------------------------------------------------------------

    def response_headers(self, status: int, headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        if self._converse is not None:
            return self._converse.response_headers(status, headers)
        if status >= 300 or not self._stream:
            return (("content-type", "application/json"),)
        # invoke-with-response-stream always frames; a JSON answer is replayed as the stream.
        self._eventstream = "json" not in headers.get("content-type", "").lower()
        return (("content-type", "text/event-stream"), ("cache-control", "no-cache"))

    def response_body(self, chunk: bytes, end_of_stream: bool) -> TranslatedChunk:
        if self._converse is not None:
            return self._converse.response_body(chunk, end_of_stream)
        return super().response_body(chunk, end_of_stream)

    def response_error(self, status: int, body: bytes) -> TranslatedBody:
        return bedrock_error(self.client_api, status, body)  # InvokeModel's and Converse's alike

    def _streaming(self) -> bool:
        return self._stream and self._eventstream

    def _stream_body(self, chunk: bytes, end_of_stream: bool) -> TranslatedChunk:
        if self._machine is None:
            self._machine = BedrockStream()
        return self._machine.feed(chunk, end_of_stream)

    def _whole_body(self, raw: bytes) -> TranslatedChunk:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError(f"invalid JSON from Bedrock: {exc}") from None
        if not isinstance(message, dict):
            raise UpstreamProtocolError("Bedrock's answer is not a JSON object")
        if not self._stream:
            # The answer is the Anthropic Message itself: sent on byte for byte.
            return TranslatedChunk(body=raw, usage=usage_from_anthropic(message.get("usage")))
        try:
            events = events_from_message(message)
        except UpstreamProtocolError as exc:
            return TranslatedChunk(body=error_frame(502, str(exc)))
        frames = [encode_event(orjson.dumps(event), event["type"]) for event in events]
        frames.insert(1, PING_FRAME)  # after message_start, as in Anthropic's own streams
        body = b"".join(frames)
        return TranslatedChunk(body=body, usage=usage_from_anthropic(message.get("usage")))


def bedrock_error(client_api: Api, status: int, body: bytes) -> TranslatedBody:
    """A Bedrock error answer (InvokeModel's or Converse's: ``{"message": ...}``) in the client's
    format, with the status its type means."""
    error_type = ""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        found = parsed.get("__type") or parsed.get("code") or ""
        error_type = found if isinstance(found, str) else ""
    answered = bedrock_error_status(error_type, status)
    message = upstream_error_message(status, body)
    if _error_name(error_type) in _CREDENTIAL_ERRORS or (not error_type and refused_credentials(status, message)):
        answered = 502
        message = f"Bedrock refused the gateway's AWS credentials ({message}); check them and this host's clock"
    return TranslatedBody(status=answered, body=error_body(client_api, answered, message))


class FramedStream:
    """What Bedrock's two streams (InvokeModel's, Converse's) share: the AWS event-stream frames of
    each chunk decoded and handed to ``_frame`` until the stream is done, a corrupt frame failing it
    (``_fail``: an Anthropic ``error`` event, after which nothing more goes out)."""

    __slots__ = ("_decoder", "_done")

    def __init__(self) -> None:
        self._decoder = EventStreamDecoder()
        self._done = False  # message_stop or an error sent: nothing more goes out

    def _decode(self, chunk: bytes, end_of_stream: bool, out: list[bytes]) -> None:
        if self._done:
            return
        try:
            messages = self._decoder.feed(chunk)
            if end_of_stream:
                messages += self._decoder.close()
        except EventStreamError as exc:
            self._fail(out, 502, f"invalid event stream from Bedrock: {exc}")
            return
        for message in messages:
            if self._done:
                break
            self._frame(message, out)

    def _frame(self, message: Message, out: list[bytes]) -> None:
        raise NotImplementedError

    def _fail(self, out: list[bytes], status: int, message: str) -> None:
        raise NotImplementedError


class BedrockStream(FramedStream):
    """InvokeModel's frames in, Anthropic SSE out. The usage is reported once, at the end."""

    __slots__ = ("_open_block", "_started", "_usage")

    def __init__(self) -> None:
        super().__init__()
        self._usage: Usage | None = None
        self._started = False  # message_start sent
        self._open_block: int | None = None  # index of the content block started and not stopped

    def feed(self, chunk: bytes, end_of_stream: bool) -> TranslatedChunk:
        out: list[bytes] = []
        self._decode(chunk, end_of_stream, out)
        if end_of_stream and not self._done:
            self._fail(out, 502, "upstream closed the stream before the message completed")
        usage = self._usage if end_of_stream or self._done else None
        if usage is not None:
            self._usage = None  # reported once
        return TranslatedChunk(body=b"".join(out), usage=usage)

    def _frame(self, message: Message, out: list[bytes]) -> None:
        kind = message.message_type
        if kind == "exception":
            status = bedrock_error_status(message.event_type, 502, stream=True)
            text = payload_message(message.payload) or message.event_type or "Bedrock stream exception"
            self._fail(out, status, text)
        elif kind == "error":
            text = message.headers.get(":error-message")
            self._fail(out, 502, f"Bedrock stream error {message.event_type}: {text}")
        elif message.event_type == "chunk":
            self._chunk(message.payload, out)
        else:
            log.debug("Bedrock stream event %r skipped", message.event_type)

    def _chunk(self, payload: bytes, out: list[bytes]) -> None:
        try:
            wrapper = orjson.loads(payload)
            data = base64.b64decode(wrapper["bytes"], validate=True)
            event = orjson.loads(data)
            kind = event["type"]
        except (orjson.JSONDecodeError, binascii.Error, KeyError, TypeError, ValueError) as exc:
            self._fail(out, 502, f"invalid chunk from Bedrock: {exc!r}")
            return
        if not isinstance(kind, str) or not kind:
            self._fail(out, 502, "invalid chunk from Bedrock: event without a type")
            return
        if kind == "message_start":
            self._started = True
            message = event.get("message")
            self._usage = usage_from_anthropic(message.get("usage") if isinstance(message, dict) else None)
        elif kind == "message_delta":
            self._usage = usage_from_anthropic(event.get("usage"), self._usage)
        elif kind == "content_block_start":
            self._open_block = as_int(event.get("index"))
        elif kind == "content_block_stop":
            self._open_block = None
        elif kind == "message_stop":
            self._done = True
            if self._usage is None:
                self._usage = _invocation_usage(event)
        elif kind == "error":
            self._done = True
        if b"\n" in data or b"\r" in data:  # SSE data must be one line
            data = orjson.dumps(event)
        out.append(encode_event(data, kind))
        if kind == "message_start":
            out.append(PING_FRAME)  # where Anthropic's own stream has one (Bedrock's has none)

    def _fail(self, out: list[bytes], status: int, message: str) -> None:
        if self._open_block is not None:
            out.append(block_stop_frame(self._open_block))
            self._open_block = None
        out.append(error_frame(status, message))
        self._done = True


def payload_message(payload: bytes) -> str | None:
    """The message of an exception frame's JSON payload (``{"message": ...}``)."""
    try:
        return error_message(orjson.loads(payload)) if payload else None
    except orjson.JSONDecodeError:
        return payload.decode("utf-8", "replace")[:2000] or None


def _invocation_usage(event: Mapping[str, Any]) -> Usage | None:
    """Bedrock's own counts on the last chunk, when the stream carried no usage of its own."""
    metrics = event.get("amazon-bedrock-invocationMetrics")
    if not isinstance(metrics, dict):
        return None
    return Usage(
        input_tokens=as_int(metrics.get("inputTokenCount")), output_tokens=as_int(metrics.get("outputTokenCount"))
    )
