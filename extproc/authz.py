"""The auth step as an Envoy ext_authz gRPC service (unary ``Check``), for deployments that put
ext_authz in front of other routes or sidecars.

A thin adapter over the same core the decision hop and ext_proc run (extproc.auth.decision): it
reads the method, path and headers Envoy sends, picks the client's API from the path as the other
paths do, authenticates against the policy in force, and answers:

- allowed with a virtual key: the client's credential headers are removed (the key's secret never
  reaches an upstream) and the caller's identity (tenant, key id and name, models, limits) goes
  back as dynamic metadata, which Envoy files under the filter's namespace
  (``envoy.filters.http.ext_authz``) for what comes after: access logs, and an ext_proc filter
  Envoy forwards that namespace to;
- allowed anonymously (no key, or a provider's key, while keys are not required): as it came, with
  no identity;
- refused: the ``Reply`` the core made, in the client's own format (Anthropic
  ``authentication_error``, OpenAI ``invalid_request_error``/``invalid_api_key``) with its status
  and headers, plus the request id under both names, as the real APIs send it. Its reason
  (``details``) goes in the dynamic metadata for the access log. No policy yet: 503, fail closed.

The client's ``x-ccr-*`` headers are not read: nothing in an Envoy that only runs ext_authz removes
them, so the verified-JWT headers the gateway's Envoy sets could be forged (``headers_of``).

Only who is calling is checked here. The key's model list, rpm, tpm and budget are enforced where
the routed model and the token estimate are known: by the decision hop, after routing (the
Authenticator's step for that, extproc.auth.decision); this check passes the limits on as metadata
and counts nothing itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.protobuf.struct_pb2 import Struct
from google.rpc import code_pb2, status_pb2

from ccr.v1 import tracing
from ccr.v1.contract import INTERNAL_HEADER_PREFIX, KEY_ID_LABEL, REQUEST_ID_HEADER, REQUEST_ID_HEADERS, TENANT_LABEL
from extproc import models
from extproc.auth.keys import VirtualKey
from extproc.metrics import AUTHZ_DECISIONS, labelled
from extproc.request_steps import (
    CLIENT_CREDENTIALS,
    ENDPOINTS,
    MODEL_ENDPOINTS,
    Reply,
    _guess_api,
    error_reply,
    request_labels,
)
from extproc.state import GatewayState
from extproc.translate.base import Api

# Where Envoy files the dynamic metadata an ext_authz check returns (what access logs name in
# %DYNAMIC_METADATA(envoy.filters.http.ext_authz:tenant)% and ext_proc forwards by namespace).
AUTHZ_METADATA_NAMESPACE = "envoy.filters.http.ext_authz"
KEY_NAME_LABEL = "key_name"
# The gRPC code a refusal carries besides its HTTP status (Envoy denies on any code but OK).
_GRPC_CODES = {401: code_pb2.UNAUTHENTICATED, 429: code_pb2.RESOURCE_EXHAUSTED, 503: code_pb2.UNAVAILABLE}
_OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_ENDPOINTS_BY_PATH = {path: endpoint for (_, path), endpoint in ENDPOINTS.items()}  # one method per path


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):
    """``envoy.service.auth.v3.Authorization`` on the worker's state (the policy in force and its key
    cache): the same answer the decision hop gives the same headers."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state

    async def Check(self, request: CheckRequest, context: grpc.aio.ServicerContext) -> CheckResponse:
        metadata = context.invocation_metadata() or ()
        traceparent = next((item[1] for item in metadata if item[0] == "traceparent"), None)
        opened = tracing.begin("ccr.authz", traceparent)
        try:
            response = check(self.state, request)
            if opened is not None:
                opened[0].set("ccr.authz.allowed", response.status.code == code_pb2.OK)
            return response
        finally:
            tracing.end(opened)


def check(state: GatewayState, request: CheckRequest) -> CheckResponse:
    """The answer to one ``Check``; no I/O (the key lookup is the worker's in-memory cache)."""
    http = request.attributes.request.http
    headers = headers_of(request)
    api, endpoint_path = client_api(http.path, headers)
    if state.table is None:
        message = "the gateway has no routing policy yet; retry shortly"
        labels = request_labels(api, endpoint_path)
        return denied(error_reply(api, 503, message, "ccr_no_policy", labels=labels), headers)
    table = state.table
    key = state.auth.authenticate(
        api, endpoint_path, headers, table.auth_required, table.cert_identities, table.batch_workers
    )
    if isinstance(key, Reply):
        return denied(key, headers)
    if key is None:
        labelled(AUTHZ_DECISIONS, "anonymous", "").inc()
        return CheckResponse(status=status_pb2.Status(code=code_pb2.OK), ok_response=OkHttpResponse())
    labelled(AUTHZ_DECISIONS, "key", "").inc()
    return allowed(api, key, headers)


def client_api(path: str, headers: Mapping[str, str]) -> tuple[Api, str]:
    """The client's API, chosen as the decision hop chooses it (the endpoint's, else guessed from
    the path and headers), and the gateway endpoint the path names ("" for any other path: ext_authz
    may guard routes the gateway does not serve)."""
    path = path.partition("?")[0]
    endpoint = _ENDPOINTS_BY_PATH.get(path)
    if endpoint is None and models.model_id_of(path) is not None:
        endpoint = MODEL_ENDPOINTS["/v1/models" if path.startswith("/v1/") else "/models"]
    if endpoint is None:
        return _guess_api(path, headers), ""
    return endpoint.api or _guess_api(path, headers), endpoint.path  # GET /v1/models: from the headers


def headers_of(request: CheckRequest) -> dict[str, str]:
    """The client's headers, lowercase names: from ``headers``, or from ``header_map`` when the
    filter sends raw headers (``encode_raw_headers``; repeated names joined with "," as Envoy does).

    Internal headers (``x-ccr-*``) are left out: in the gateway's Envoy they are its own (the
    verified JWT claims among them) and a client's are removed first, but nothing vouches for them
    in an Envoy that only runs ext_authz, so a client could claim a verified token with them."""
    http = request.attributes.request.http
    if http.headers:
        pairs = ((name.lower(), value) for name, value in http.headers.items())
    else:
        raw = http.header_map.headers
        pairs = ((h.key.lower(), h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value) for h in raw)
    out: dict[str, str] = {}
    for name, value in pairs:
        if not name.startswith(INTERNAL_HEADER_PREFIX):
            out[name] = f"{out[name]},{value}" if name in out else value
    return out


def allowed(api: Api, key: VirtualKey, headers: Mapping[str, str]) -> CheckResponse:
    """OK for a virtual key: its credential headers removed, its identity as dynamic metadata."""
    remove = [name for name in CLIENT_CREDENTIALS if name in headers]
    return CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=OkHttpResponse(headers_to_remove=remove),
        dynamic_metadata=_struct(identity(api, key)),
    )


def identity(api: Api, key: VirtualKey) -> dict[str, object]:
    """The caller as the metadata tells it: who (tenant, key id and name; labelled as in the ``ccr``
    namespace) and what the key may use. A limit the key does not have is left out (unlimited);
    no models means any model."""
    out: dict[str, object] = {
        "client_api": api.value,
        TENANT_LABEL: key.tenant,
        KEY_ID_LABEL: key.key_id,
        KEY_NAME_LABEL: key.name,
    }
    if key.models:
        out["models"] = list(key.models)
    for name in ("rpm", "tpm", "max_parallel", "budget_usd", "budget_period"):
        value = getattr(key, name)
        if value is not None:
            out[name] = value
    return out


def denied(reply: Reply, headers: Mapping[str, str]) -> CheckResponse:
    """A refusal as Envoy sends it to the client: the reply's status, headers and body; its labels
    (the reason among them) as dynamic metadata."""
    labelled(AUTHZ_DECISIONS, "denied", reply.details).inc()
    sent = [("content-type", reply.content_type), *reply.headers]
    request_id = headers.get(REQUEST_ID_HEADER)
    if request_id:
        sent += [(name, request_id) for name in REQUEST_ID_HEADERS]
    grpc_code = _GRPC_CODES.get(reply.status, code_pb2.PERMISSION_DENIED)
    return CheckResponse(
        status=status_pb2.Status(code=grpc_code, message=reply.details),
        denied_response=DeniedHttpResponse(
            status=HttpStatus(code=reply.status),  # type: ignore[arg-type]  (an HTTP status is a StatusCode)
            headers=[HeaderValueOption(header=HeaderValue(key=k, value=v), append_action=_OVERWRITE) for k, v in sent],
            body=reply.body.decode(),
        ),
        dynamic_metadata=_struct(dict(reply.labels)),
    )


def _struct(values: Mapping[str, object]) -> Struct:
    out = Struct()
    out.update(values)
    return out
