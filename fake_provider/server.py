"""The aiohttp server: routes, fault injection, request recording, control endpoints and the CLI.

One process serves the Anthropic, OpenAI (Chat Completions and Responses) and Gemini APIs side by
side. Everything an API looks like on the wire lives in its own module; this one only decides *when*
and *how* bytes are sent (delays, errors, hangs, cut streams), which is the part tests and
benchmarks tune.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import errno
import signal
from typing import Any

import orjson
from aiohttp import web

from fake_provider.anthropic_api import AnthropicApi
from fake_provider.api import JSON_CONTENT_TYPE, SSE_CONTENT_TYPE, BadRequest, ProviderApi
from fake_provider.bedrock_api import BedrockApi
from fake_provider.config import FakeConfig, Faults, Midstream, take_faults
from fake_provider.converse_api import ConverseApi
from fake_provider.gemini_api import GeminiApi
from fake_provider.openai_api import OpenAIApi
from fake_provider.reply import plan_reply
from fake_provider.responses_api import ResponsesApi
from fake_provider.vertex_api import COUNT_TOKENS_MODEL, VertexApi, token_problem

RECORDED_REQUESTS = 100
DEFAULT_PORT = 9100
# How often a hanging request checks whether its client has given up.
_HANG_POLL_S = 0.05

_ANTHROPIC = AnthropicApi()
_OPENAI = OpenAIApi()
_GEMINI = GeminiApi()
_RESPONSES = ResponsesApi()
_BEDROCK = BedrockApi()
_CONVERSE = ConverseApi()
_VERTEX = VertexApi()

_JSON_HEADERS = {"Content-Type": JSON_CONTENT_TYPE}
_SSE_HEADERS = {"Content-Type": SSE_CONTENT_TYPE, "Cache-Control": "no-cache"}

_MODELS = (
    ("claude-sonnet-4-5", "Claude Sonnet 4.5"),
    ("claude-haiku-4-5", "Claude Haiku 4.5"),
    ("gpt-4o-mini", "GPT-4o mini"),
    ("gpt-5", "GPT-5"),
    ("gemini-2.5-flash", "Gemini 2.5 Flash"),
    ("gemini-2.5-pro", "Gemini 2.5 Pro"),
)
# One listing both the Anthropic and the OpenAI SDK can read (each ignores the other's keys).
_MODEL_LIST = orjson.dumps(
    {
        "object": "list",
        "data": [
            {
                "id": model_id,
                "object": "model",
                "type": "model",
                "display_name": display_name,
                "created": 1735689600,
                "created_at": "2025-01-01T00:00:00Z",
                "owned_by": "fake-provider",
            }
            for model_id, display_name in _MODELS
        ],
        "has_more": False,
        "first_id": _MODELS[0][0],
        "last_id": _MODELS[-1][0],
    }
)
_GEMINI_MODEL_LIST = orjson.dumps(
    {
        "models": [
            {"name": f"models/{model_id}", "displayName": display_name, "supportedGenerationMethods": []}
            for model_id, display_name in _MODELS
            if model_id.startswith("gemini")
        ]
    }
)

_MALFORMED = object()  # stands for a body that is not JSON; None is a valid JSON body ("null")


class _EarlyAnswer(Exception):  # a control-flow signal, not an error
    """Raised while admitting a request when it is answered before any reply is planned."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response


class FakeProvider:
    """The live state of one server: its config (editable at runtime) and the recent requests."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.defaults = config.copy()
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECORDED_REQUESTS)

    # --- API endpoints -------------------------------------------------------------------------

    async def anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, _ANTHROPIC, path_model=None, stream=None)

    async def anthropic_count_tokens(self, request: web.Request) -> web.StreamResponse:
        return await self._count_tokens(request, _ANTHROPIC)

    async def openai_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, _OPENAI, path_model=None, stream=None)

    async def openai_responses(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, _RESPONSES, path_model=None, stream=None)

    async def gemini(self, request: web.Request) -> web.StreamResponse:
        # aiohttp cannot split "{model}:{method}" in a route, so the last ":" separates them here.
        model, _, method = request.match_info["target"].rpartition(":")
        if method == "generateContent":
            return await self._generate(request, _GEMINI, path_model=model, stream=False)
        if method == "streamGenerateContent":
            return await self._generate(request, _GEMINI, path_model=model, stream=True)
        if method == "countTokens":
            return await self._count_tokens(request, _GEMINI)
        return _error(_GEMINI, 404, f"method {method!r} is not found for model {model!r}")

    async def vertex(self, request: web.Request) -> web.StreamResponse:
        """Claude on Vertex AI: rawPredict, streamRawPredict and count-tokens, behind a bearer token."""
        model, _, method = request.match_info["target"].rpartition(":")
        problem = token_problem(request.headers, self.config.vertex_token)
        if problem is not None:
            if self.config.record_requests:  # refused requests are recorded too: tests read their headers
                raw = await request.read()
                try:
                    self._record(request, orjson.loads(raw), len(raw))
                except orjson.JSONDecodeError:
                    self._record(request, _MALFORMED, len(raw))
            return _error(_VERTEX, 401, problem)
        if model == COUNT_TOKENS_MODEL and method == "rawPredict":
            return await self._count_tokens(request, _VERTEX)
        if method == "rawPredict":
            return await self._generate(request, _VERTEX, path_model=model, stream=False)
        if method == "streamRawPredict":
            return await self._generate(request, _VERTEX, path_model=model, stream=True)
        return _error(_VERTEX, 404, f"method {method!r} is not found for publisher model {model!r}")

    async def vertex_gemini(self, request: web.Request) -> web.StreamResponse:
        """Gemini on Vertex AI: Gemini's own generateContent, behind the same bearer token as Claude's."""
        problem = token_problem(request.headers, self.config.vertex_token)
        if problem is not None:
            return _error(_GEMINI, 401, problem)
        return await self.gemini(request)

    async def bedrock_invoke(self, request: web.Request) -> web.StreamResponse:
        return await self._bedrock(request, stream=False)

    async def bedrock_invoke_stream(self, request: web.Request) -> web.StreamResponse:
        return await self._bedrock(request, stream=True)

    async def bedrock_converse(self, request: web.Request) -> web.StreamResponse:
        return await self._bedrock(request, stream=False, api=_CONVERSE)

    async def bedrock_converse_stream(self, request: web.Request) -> web.StreamResponse:
        return await self._bedrock(request, stream=True, api=_CONVERSE)

    async def _bedrock(self, request: web.Request, *, stream: bool, api: BedrockApi = _BEDROCK) -> web.StreamResponse:
        """Bedrock InvokeModel for Anthropic models, or Converse (``api``) for any model; every error
        says its type in x-amzn-ErrorType."""
        raw = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        config = self.config
        problem = api.verify_request(
            request.method, request.raw_path, headers, raw, config.aws_credentials, config.aws_clock_offset_s
        )
        if problem is not None:
            if self.config.record_requests:  # refused requests are recorded too: tests read their headers
                try:
                    self._record(request, orjson.loads(raw), len(raw))
                except orjson.JSONDecodeError:
                    self._record(request, _MALFORMED, len(raw))
            response = _error(api, 403, problem)
            response.headers["x-amzn-ErrorType"] = "InvalidSignatureException"
            return response
        response = await self._generate(request, api, path_model=request.match_info["model_id"], stream=stream)
        if response.status >= 400:
            response.headers["x-amzn-ErrorType"] = api.error_type(response.status)
        return response

    async def _generate(
        self, request: web.Request, api: ProviderApi, *, path_model: str | None, stream: bool | None
    ) -> web.StreamResponse:
        try:
            body, size, faults = await self._admit(request, api)
            conversation = api.parse(body, size, path_model)
        except _EarlyAnswer as answer:
            return answer.response
        except BadRequest as error:
            return _error(api, 400, str(error))
        reply = plan_reply(
            api.name, conversation, force_tool_call=faults.force_tool_call, cached_tokens=faults.cached_tokens
        )
        if not (api.wants_stream(body) if stream is None else stream):
            return _json(api.render_json(reply, body))
        events = api.render_stream(reply, body, faults.chunks)
        if api is _GEMINI and request.query.get("alt") != "sse":
            # Without alt=sse Gemini streams one JSON array; "data: " and the blank line come off.
            return _json(b"[" + b",".join(event[6:-2] for event in events) + b"]")
        return await _send_events(request, api, events, faults)

    async def _count_tokens(self, request: web.Request, api: AnthropicApi | GeminiApi) -> web.StreamResponse:
        # Faults apply here too: a gateway that counts tokens first must cope with that failing.
        try:
            body, size, _ = await self._admit(request, api)
            return _json(api.count_tokens(body, size))
        except _EarlyAnswer as answer:
            return answer.response
        except BadRequest as error:
            return _error(api, 400, str(error))

    async def _admit(self, request: web.Request, api: ProviderApi) -> tuple[Any, int, Faults]:
        """Read, record and parse a request and apply its latency and faults; raises _EarlyAnswer
        when the request ends here (injected error, hang, bad JSON or bad fault header)."""
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = _MALFORMED
        if self.config.record_requests:
            self._record(request, body, len(raw))
        try:
            faults = take_faults(self.config, request.headers)
        except ValueError as error:
            raise _EarlyAnswer(_error(api, 400, str(error))) from None
        if faults.latency_ms > 0:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.hang:
            await _wait_for_disconnect(request)
            raise _EarlyAnswer(_error(api, 504, "fake provider hung on request"))
        if faults.status >= 400:
            raise _EarlyAnswer(
                _error(api, faults.status, f"fake provider injected HTTP {faults.status}", faults.retry_after_s)
            )
        if body is _MALFORMED:
            raise _EarlyAnswer(_error(api, 400, "request body is not valid JSON"))
        return body, len(raw), faults

    def _record(self, request: web.Request, body: Any, size: int) -> None:
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": {name.lower(): value for name, value in request.headers.items()},
                "body": None if body is _MALFORMED else body,
                # The raw byte count the token estimate comes from, so a test can compute the input
                # tokens this provider reported without re-encoding the body.
                "size": size,
            }
        )

    # --- control endpoints ---------------------------------------------------------------------

    async def get_config(self, request: web.Request) -> web.Response:
        return _json(orjson.dumps(self.config.as_dict()))

    async def update_config(self, request: web.Request) -> web.Response:
        """Partial update; ``"reset": true`` first restores the startup defaults."""
        try:
            changes = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _json(orjson.dumps({"error": "body is not valid JSON"}), status=400)
        if not isinstance(changes, dict):
            return _json(orjson.dumps({"error": "body must be a JSON object"}), status=400)
        updated = self.defaults.copy() if changes.pop("reset", False) else self.config.copy()
        try:
            updated.update(changes)
        except ValueError as error:
            return _json(orjson.dumps({"error": str(error)}), status=400)
        self.config = updated
        return _json(orjson.dumps(self.config.as_dict()))

    async def reset_config(self, request: web.Request) -> web.Response:
        self.config = self.defaults.copy()
        return _json(orjson.dumps(self.config.as_dict()))

    async def get_requests(self, request: web.Request) -> web.Response:
        return _json(orjson.dumps(list(self.requests)))

    async def clear_requests(self, request: web.Request) -> web.Response:
        cleared = len(self.requests)
        self.requests.clear()
        return _json(orjson.dumps({"cleared": cleared}))


async def _send_events(
    request: web.Request, api: ProviderApi, events: list[bytes], faults: Faults
) -> web.StreamResponse:
    if faults.midstream is not None:
        # Cut after about half the events: the stream has visibly begun (a message/first chunk
        # has been sent) and has not finished.
        events = events[: max(2, len(events) // 2)]
        if faults.midstream is Midstream.ERROR:
            events.append(api.stream_error_event())
    # Bedrock streams AWS event-stream frames, every other API SSE.
    content_type = getattr(api, "stream_content_type", None)
    headers = {"Content-Type": content_type} if content_type is not None else _SSE_HEADERS
    if faults.chunk_delay_ms <= 0 and faults.midstream is not Midstream.ABORT:
        # The fast path: the whole stream in one write (and one Content-Length response).
        return web.Response(body=b"".join(events), headers=headers)
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    delay_s = faults.chunk_delay_ms / 1000
    for index, event in enumerate(events):
        if index and delay_s > 0:
            await asyncio.sleep(delay_s)
        await response.write(event)
    if faults.midstream is Midstream.ABORT:
        # Closing without the final chunk of the chunked body: the client sees a broken stream.
        if (transport := request.transport) is not None:
            transport.close()
        raise asyncio.CancelledError  # tells aiohttp the handler is gone; nothing more is written
    return response


async def _wait_for_disconnect(request: web.Request) -> None:
    while (transport := request.transport) is not None and not transport.is_closing():
        await asyncio.sleep(_HANG_POLL_S)


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, headers=_JSON_HEADERS)


def _error(api: ProviderApi, status: int, message: str, retry_after_s: int | None = None) -> web.Response:
    response = _json(api.error_body(status, message), status=status)
    if status == 429 and retry_after_s is not None:
        response.headers["Retry-After"] = str(retry_after_s)
    return response


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _models(request: web.Request) -> web.Response:
    return _json(_MODEL_LIST)


async def _gemini_models(request: web.Request) -> web.Response:
    return _json(_GEMINI_MODEL_LIST)


PROVIDER_KEY = web.AppKey("fake_provider", FakeProvider)


def build_app(config: FakeConfig) -> web.Application:
    provider = FakeProvider(config)
    app = web.Application(client_max_size=64 * 1024 * 1024)  # agents send large contexts
    app[PROVIDER_KEY] = provider
    routes = [
        web.post("/v1/messages", provider.anthropic_messages),
        web.post("/v1/messages/count_tokens", provider.anthropic_count_tokens),
        web.post("/v1/chat/completions", provider.openai_chat),
        web.post("/chat/completions", provider.openai_chat),
        web.post("/v1/responses", provider.openai_responses),
        web.post("/responses", provider.openai_responses),
        web.get("/v1/models", _models),
        web.get("/models", _models),
        web.get("/v1beta/models", _gemini_models),
        web.get("/healthz", _healthz),
        web.get("/_fake/config", provider.get_config),
        web.post("/_fake/config", provider.update_config),
        web.delete("/_fake/config", provider.reset_config),
        web.get("/_fake/requests", provider.get_requests),
        web.delete("/_fake/requests", provider.clear_requests),
    ]
    # Gemini's stable (v1), beta and prefix-less paths all lead to the same handler.
    routes += [web.post(f"{prefix}/models/{{target}}", provider.gemini) for prefix in ("/v1beta", "/v1", "")]
    # Vertex AI's publisher models (Claude): "{model}:{method}" split in the handler, as Gemini's.
    routes.append(
        web.post("/v1/projects/{project}/locations/{region}/publishers/anthropic/models/{target}", provider.vertex)
    )
    # And Gemini's (publisher google): Gemini's API under Vertex's path and token.
    routes.append(
        web.post("/v1/projects/{project}/locations/{region}/publishers/google/models/{target}", provider.vertex_gemini)
    )
    # Bedrock InvokeModel: a model id may be an inference profile's ARN, slashes and all.
    routes += [
        web.post("/model/{model_id:.+}/invoke", provider.bedrock_invoke),
        web.post("/model/{model_id:.+}/invoke-with-response-stream", provider.bedrock_invoke_stream),
        # Converse, Bedrock's one body for every vendor's models (fake_provider.converse_api).
        web.post("/model/{model_id:.+}/converse", provider.bedrock_converse),
        web.post("/model/{model_id:.+}/converse-stream", provider.bedrock_converse_stream),
    ]
    app.add_routes(routes)
    return app


async def start(
    config: FakeConfig, host: str = "127.0.0.1", port: int = 0, *, shutdown_timeout: float = 1.0
) -> tuple[web.AppRunner, int]:
    """Start serving in the running loop; returns the runner (``await runner.cleanup()`` to stop)
    and the bound port, which is the point of passing ``port=0``."""
    # No access log: at thousands of requests per second it would cost more than the answers.
    runner = web.AppRunner(build_app(config), access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    await site.start()
    return runner, runner.addresses[0][1]


def provider_of(runner: web.AppRunner) -> FakeProvider:
    """The live state behind a runner from ``start``, for in-process tests."""
    return runner.app[PROVIDER_KEY]


# --- command line ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = FakeConfig()
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port (default: %(default)s)")
    parser.add_argument("--latency-ms", type=float, default=defaults.latency_ms, help="delay before the first byte")
    parser.add_argument("--chunks", type=int, default=defaults.chunks, help="pieces a streamed text is cut into")
    parser.add_argument(
        "--chunk-delay-ms",
        type=float,
        default=defaults.chunk_delay_ms,
        help="gap between streamed events; 0 = one write",
    )
    parser.add_argument("--status", type=int, default=defaults.status, help="answer requests with this HTTP error")
    parser.add_argument(
        "--fail-count", type=int, default=defaults.fail_count, help="with --status: fail only this many requests"
    )
    parser.add_argument("--retry-after", type=int, default=defaults.retry_after_s, help="retry-after seconds on 429")
    parser.add_argument(
        "--cached-tokens", type=int, default=defaults.cached_tokens, help="prompt tokens to report as cache reads"
    )
    parser.add_argument("--no-record", action="store_true", help="do not keep the last requests (benchmarks)")


def config_from_args(args: argparse.Namespace) -> FakeConfig:
    return FakeConfig(
        latency_ms=args.latency_ms,
        chunks=args.chunks,
        chunk_delay_ms=args.chunk_delay_ms,
        status=args.status,
        fail_count=args.fail_count,
        retry_after_s=args.retry_after,
        cached_tokens=args.cached_tokens,
        record_requests=not args.no_record,
    )


def run(args: argparse.Namespace) -> None:
    """Serve until SIGINT or SIGTERM (blocking)."""
    config = config_from_args(args)
    try:
        import uvloop  # optional: roughly doubles requests per second
    except ImportError:
        asyncio.run(_serve_until_signalled(config, args.host, args.port))
    else:
        uvloop.run(_serve_until_signalled(config, args.host, args.port))


async def _serve_until_signalled(config: FakeConfig, host: str, port: int) -> None:
    try:
        runner, bound_port = await start(config, host, port)
    except OSError as exc:  # most often the port is taken: one line, not aiohttp's traceback
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise SystemExit(f"fake provider: cannot listen on {host}:{port}: {reason}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"fake provider listening on http://{host}:{bound_port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
