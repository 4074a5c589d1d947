"""Builders for the ext_proc messages we send back to Envoy. Nothing here decides anything."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.protobuf.struct_pb2 import Struct

from ccr.v1.contract import METADATA_NAMESPACE
from extproc.request_steps import Reply, error_reply
from extproc.translate.base import Api

_OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

Headers = Iterable[tuple[str, str]]

# Constant answers, built once: most requests need nothing more than these.
CONTINUE_REQUEST_HEADERS = ep.ProcessingResponse(request_headers=ep.HeadersResponse())
CONTINUE_RESPONSE_HEADERS = ep.ProcessingResponse(response_headers=ep.HeadersResponse())
CONTINUE_REQUEST_BODY = ep.ProcessingResponse(request_body=ep.BodyResponse())
CONTINUE_RESPONSE_BODY = ep.ProcessingResponse(response_body=ep.BodyResponse())


def header_mutation(set_headers: Headers = (), remove: Iterable[str] = ()) -> ep.HeaderMutation:
    return ep.HeaderMutation(
        set_headers=[
            HeaderValueOption(header=HeaderValue(key=key, raw_value=value.encode()), append_action=_OVERWRITE)
            for key, value in set_headers
        ],
        remove_headers=list(remove),
    )


def request_body_response(
    body: bytes | None,
    set_headers: Headers,
    remove: Iterable[str],
    metadata: dict[str, dict[str, str]] | None,
    clear_route_cache: bool = True,
) -> ep.ProcessingResponse:
    """Replace the buffered request body (None: keep it) and headers, and re-pick the route
    (x-ccr-cluster). Upstream filters cannot re-route: they pass clear_route_cache=False."""
    common = ep.CommonResponse(
        header_mutation=header_mutation(set_headers, remove), clear_route_cache=clear_route_cache
    )
    if body is not None:
        common.body_mutation.body = body
    response = ep.ProcessingResponse(request_body=ep.BodyResponse(response=common))
    if metadata:
        response.dynamic_metadata.CopyFrom(_struct(metadata))
    return response


# The rest of a request forwarded on its headers alone passes by: its body (however large: never
# buffered for ext_proc) and its response (allow_mode_override is on, extproc_filter).
_PASS_BY = ProcessingMode(
    request_body_mode=ProcessingMode.NONE,
    request_trailer_mode=ProcessingMode.SKIP,
    response_header_mode=ProcessingMode.SKIP,
    response_body_mode=ProcessingMode.NONE,
    response_trailer_mode=ProcessingMode.SKIP,
)


def request_headers_forward(
    set_headers: Headers, remove: Iterable[str], metadata: dict[str, dict[str, str]] | None
) -> ep.ProcessingResponse:
    """Forward the request on its headers (a batch API call): change them, re-pick the route
    (x-ccr-cluster), and see nothing more of the request or its answer."""
    common = ep.CommonResponse(header_mutation=header_mutation(set_headers, remove), clear_route_cache=True)
    response = ep.ProcessingResponse(request_headers=ep.HeadersResponse(response=common), mode_override=_PASS_BY)
    if metadata:
        response.dynamic_metadata.CopyFrom(_struct(metadata))
    return response


def response_headers_response(
    set_headers: Headers = (), remove: Iterable[str] = (), body_mode: int | None = None
) -> ep.ProcessingResponse:
    response = ep.ProcessingResponse(
        response_headers=ep.HeadersResponse(
            response=ep.CommonResponse(header_mutation=header_mutation(set_headers, remove))
        )
    )
    if body_mode is not None:
        response.mode_override.CopyFrom(ProcessingMode(response_body_mode=body_mode))
    return response


def response_body_response(body: bytes, metadata: dict[str, dict[str, int]] | None = None) -> ep.ProcessingResponse:
    response = ep.ProcessingResponse(
        response_body=ep.BodyResponse(response=ep.CommonResponse(body_mutation=ep.BodyMutation(body=body)))
    )
    if metadata:
        response.dynamic_metadata.CopyFrom(_struct(metadata))
    return response


def immediate(
    status: int, body: bytes, content_type: str = "application/json", details: str = "", headers: Headers = ()
) -> ep.ProcessingResponse:
    return ep.ProcessingResponse(
        immediate_response=ep.ImmediateResponse(
            status=HttpStatus(code=status),
            headers=header_mutation([("content-type", content_type), *headers]),
            body=body,
            details=details,
        )
    )


def reply(answer: Reply) -> ep.ProcessingResponse:
    """The gateway's own answer (extproc.request_steps.Reply), sent by Envoy, with its routing
    labels as dynamic metadata (the access log and the usage log read them)."""
    response = immediate(answer.status, answer.body, answer.content_type, answer.details, answer.headers)
    if answer.labels:
        response.dynamic_metadata.CopyFrom(_struct({METADATA_NAMESPACE: dict(answer.labels)}))
    return response


def immediate_error(api: Api, status: int, message: str, details: str) -> ep.ProcessingResponse:
    """An error in the client's own format, answered by Envoy without contacting any provider."""
    reply = error_reply(api, status, message, details)
    return immediate(reply.status, reply.body, details=details)


def _struct(metadata: Mapping[str, Mapping[str, str | int]]) -> Struct:
    struct = Struct()
    struct.update(metadata)
    return struct


STREAMED = ProcessingMode.STREAMED
BUFFERED = ProcessingMode.BUFFERED
