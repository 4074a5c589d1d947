"""The batch HTTP API as a service of its own: the Anthropic Message Batches API and the OpenAI
Files + Batch API on one aiohttp app over one BatchStore.

    build_app(store, config) -> web.Application     routes: api_anthropic_routes, api_openai_routes
    start(app, host, port)   -> (runner, bound port)

Where it sits: behind the gateway's Envoy, which authenticates the caller and sets the tenant
header (``ServiceConfig.tenant_header``, default ``x-ccr-tenant``) after removing any copy the
client sent. The service believes that header, so it must never be reachable except through the
gateway. A request without it belongs to the anonymous tenant, unless ``require_tenant`` (the
gateway requires keys), when it is a 401.

Every error leaves in the shape of the API its path belongs to (``/v1/messages...`` Anthropic,
anything else OpenAI), the router's 404 and 405 included. State lives in the store; the service
keeps nothing between requests, so any number of them can run beside each other on one store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from batches import api_anthropic_routes, api_openai_routes
from batches.api_common import ApiError
from batches.api_http import (
    CONTEXT_KEY,
    METHOD,
    REQUEST_ID_HEADERS,
    SERVER,
    Context,
    ServiceConfig,
    StreamCut,
    error_reply,
    flavor_of,
    json_reply,
    random_entropy,
    request_id_of,
    tenant,
)
from batches.store import BatchStore, NotInStore

log = logging.getLogger(__name__)
HEALTH_PATH = "/healthz"
# aiohttp's limit for request.read()/post(), which no route calls: routes read bodies themselves,
# each with its API's limit (256 MB, 200 MB, 1 MB), and answer 413 in the API's shape.
CLIENT_MAX_SIZE = 1024 * 1024


def build_app(
    store: BatchStore,
    config: ServiceConfig | None = None,
    *,
    clock: Callable[[], float] = time.time,
    entropy: Callable[[], bytes] = random_entropy,
) -> web.Application:
    """The app; the caller owns ``store`` (opens and closes it). ``clock`` and ``entropy``
    (16 random bytes per id) are for tests."""
    app = web.Application(middlewares=[_middleware], client_max_size=CLIENT_MAX_SIZE)
    app[CONTEXT_KEY] = Context(store, config or ServiceConfig(), clock, entropy)
    app.add_routes([web.get(HEALTH_PATH, _healthz), *api_anthropic_routes.routes(), *api_openai_routes.routes()])
    app.on_response_prepare.append(_add_request_id)
    return app


async def start(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve ``app`` in the running loop; returns the runner (``await runner.cleanup()``) and the
    bound port (the point of ``port=0``)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, runner.addresses[0][1]


@web.middleware
async def _middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    flavor = flavor_of(request.path)
    try:
        if request.path != HEALTH_PATH:
            tenant(request)  # a 401 before anything else when the gateway requires keys
        return await handler(request)
    except ApiError as error:
        return error_reply(error, flavor, request_id=request_id_of(request))
    except NotInStore as exc:  # deleted by another request between our read and our write
        return error_reply(ApiError(404, str(exc), kind="not_found"), flavor, request_id=request_id_of(request))
    except web.HTTPException as exc:
        if exc.status == 404:
            error = ApiError(404, f"Not found: {request.method} {request.path}", kind="not_found")
        elif exc.status == 405:
            error = ApiError(405, f"Method {request.method} is not allowed on {request.path}", kind=METHOD)
        else:
            raise
        return error_reply(error, flavor, request_id=request_id_of(request))
    except StreamCut:
        raise  # the status is sent: nothing to answer, aiohttp drops the connection
    except Exception:
        log.exception("batch API: %s %s failed", request.method, request.path)
        error = ApiError(500, "Internal error in the batch API", kind=SERVER)
        return error_reply(error, flavor, request_id=request_id_of(request))


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Envoy's request id on every answer, under both names (as the gateway's own answers)."""
    request_id = request_id_of(request)
    if request_id:
        for name in REQUEST_ID_HEADERS:
            response.headers.setdefault(name, request_id)


async def _healthz(request: web.Request) -> web.Response:
    return json_reply({"status": "ok", "store": request.app[CONTEXT_KEY].store.description})
