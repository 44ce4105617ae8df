"""TF Serving's REST API over a `Catalog`, on Starlette, served by uvicorn.

    GET  /v1/models/{name}[/versions/{v}]             status of every version (or one)
    GET  /v1/models/{name}[/versions/{v}]/metadata    signatures, inputs and outputs
    POST /v1/models/{name}[/versions/{v}]:predict     `instances` or `inputs` (ensemble.serve.rest)
    GET  /healthz                                     200 while the server runs
    GET  /metrics                                     Prometheus text: requests, latency, loads

Every error is `{"error": message}`: 404 for a model, version or path not served (a malformed
version or verb says so), 400 for a body that is not JSON or does not fit the model (naming the
input and row), 413 for a body over `max_body_bytes` or more rows than `max_rows`, 503 for a
model that cannot be loaded (naming it; the next request retries) and, with `Retry-After`, for
a predict past `max_in_flight` requests at once, and 500, without a trace, for anything else.
An error or status names a model's file by its last part, never the server's directories (the
log has the whole message). A single member answers NaN rows as an ensemble does
(`ensemble.serve.feeds`). Parsing, loading and the model call
run in worker threads, so the event loop never waits on a model and concurrent requests
reach the registry together (its `batch_window_ms` then joins them into one call).

starlette, uvicorn and prometheus-client are the optional extra `serve`
(`pip install -e ".[serve]"`), imported only here.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from ensemble.errors import EnsembleError, ModelLoadError

try:
    import anyio
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.convertors import Convertor, register_url_convertor
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
except ImportError as error:  # the optional extra
    raise EnsembleError(
        f"The HTTP server needs starlette, uvicorn and prometheus-client; {error.name or error} is not "
        'installed. Install the extra: pip install -e ".[serve]"'
    ) from error

from ensemble.serve import limits
from ensemble.serve.catalog import Catalog
from ensemble.serve.metrics import RegistryCollector
from ensemble.serve.public import (
    MAX_VERSION_DIGITS,
    is_invalid_input,
    model_message,
    public_message,
    url_error,
)
from ensemble.serve.rest import RestError, metadata, parse_predict, predict_answer, status

__all__ = ["create_app", "running", "serve"]

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1
_JSON = "application/json"


def create_app(
    catalog: Catalog,
    *,
    max_body_bytes: int = limits.MAX_BODY_BYTES,
    body_timeout_s: float = limits.BODY_TIMEOUT_S,
    max_rows: int | None = limits.MAX_ROWS,
    max_in_flight: int | None = limits.MAX_IN_FLIGHT,
    max_answer_values: int | None = limits.MAX_ANSWER_VALUES,
) -> Starlette:
    """The ASGI app answering TF Serving's REST API for the models of `catalog`; a body larger
    than `max_body_bytes` is a 413, one slower than `body_timeout_s` a 408, a request of more
    than `max_rows` rows a 413; past `max_in_flight` predict requests at once (reading, parsing
    or running) the next is a 503 with Retry-After; an answer of more than `max_answer_values`
    numbers (a wide model's outputs on many rows: each is about 20 bytes of JSON) a 413 naming
    its size, before it is encoded. None: no limit."""
    limits.check_limits(
        max_body_bytes,
        body_timeout_s,
        max_rows=max_rows,
        max_in_flight=max_in_flight,
        max_answer_values=max_answer_values,
    )
    in_flight = [0]  # predict requests admitted and not yet answered (read on the event loop only)
    metrics = CollectorRegistry()
    requests = Counter("ensemble_requests", "Requests answered", ["model", "verb", "code"], registry=metrics)
    latency = Histogram(
        "ensemble_request_seconds", "Time to answer a request", ["model", "verb"], registry=metrics
    )
    metrics.register(RegistryCollector(catalog))

    def endpoint(verb: str, work: Callable[[Request, str, int | None], Awaitable[Response]]) -> Any:
        async def answer(request: Request) -> Response:
            start = time.perf_counter()
            name = request.path_params["name"]
            version = request.path_params.get("version")
            try:
                response = await work(request, name, version)
            except (RestError, ModelLoadError, EnsembleError) as error:
                # RestError: its status; ModelLoadError: 503; others: the registry's checks, 400
                code = error.status if isinstance(error, RestError) else 400
                code = 503 if isinstance(error, ModelLoadError) else code
                response = _error(code, public_message(str(error), catalog.paths()))
                if code == 503:
                    log.warning("%s %s: %s", request.method, request.url.path, error)
            except ClientDisconnect:  # nobody to answer: counted, not logged as a failure
                response = Response(status_code=499)
            except Exception as error:
                if is_invalid_input(error):  # the model's own check of a value, e.g. an id out of range
                    response = _error(
                        400,
                        public_message(
                            f"Model {name!r} cannot compute this input: {model_message(error)}",
                            catalog.paths(),
                        ),
                    )
                else:
                    log.exception("%s %s failed", request.method, request.url.path)
                    response = _error(500, f"Internal error ({type(error).__name__}); the server logged it.")
            label = name if name in catalog.names else ""  # only served names: bounded labels
            requests.labels(label, verb, str(response.status_code)).inc()
            latency.labels(label, verb).observe(time.perf_counter() - start)
            return response

        return answer

    async def model_status(request: Request, name: str, version: int | None) -> Response:
        errors = await run_in_threadpool(catalog.load_errors, name)
        if version is not None:
            if version not in errors:
                raise RestError(404, f"Model {name!r} has no version {version}. Versions: {sorted(errors)}")
            errors = {version: errors[version]}
        paths = catalog.paths()
        return JSONResponse(status({v: e and public_message(e, paths) for v, e in errors.items()}))

    async def model_metadata(request: Request, name: str, version: int | None) -> Response:
        def describe() -> dict[str, Any]:
            _, served, signature = catalog.signature(name, version)
            return metadata(name, served, signature)

        return JSONResponse(await run_in_threadpool(describe))

    async def predict(request: Request, name: str, version: int | None) -> Response:
        if max_in_flight is not None and in_flight[0] >= max_in_flight:
            message = (
                f"Model {name!r}: {in_flight[0]} predict requests are in flight, the limit of this "
                f"server (create_app(max_in_flight=...), serve.max_in_flight); retry after {RETRY_AFTER_S} s."
            )
            headers = {"Retry-After": str(RETRY_AFTER_S)}
            return JSONResponse({"error": message}, status_code=503, headers=headers)
        in_flight[0] += 1
        try:
            return await admitted(request, name, version)
        finally:
            in_flight[0] -= 1

    async def admitted(request: Request, name: str, version: int | None) -> Response:
        try:
            with anyio.fail_after(body_timeout_s):
                body = await _body(request, max_body_bytes)
        except TimeoutError:
            raise RestError(408, f"The request body did not arrive within {body_timeout_s} s.") from None

        def run() -> bytes:
            key, _, signature = catalog.signature(name, version)
            parsed = parse_predict(body, name, signature, max_rows=max_rows)
            outputs = catalog.registry.predict(key, parsed.feeds)
            limits.check_answer_size(name, outputs, max_answer_values)
            return predict_answer(outputs, parsed, signature)

        return Response(await run_in_threadpool(run), media_type=_JSON)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": catalog.names})

    async def prometheus(request: Request) -> Response:
        return Response(await run_in_threadpool(generate_latest, metrics), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, error: Exception) -> Response:  # 404, 405 from routing
        code = error.status_code if isinstance(error, HTTPException) else 500
        detail = error.detail if isinstance(error, HTTPException) else "Internal error"
        path = request.url.path
        hint = url_error(path) if code == 404 else None
        shown = path if len(path) <= 200 else path[:200] + "..."
        return _error(code, f"{detail}: {request.method} {shown}" + (f". {hint}" if hint else ""))

    routes = []
    for prefix in (
        "/v1/models/{name:ensemble_model}",
        "/v1/models/{name:ensemble_model}/versions/{version:ensemble_version}",
    ):
        routes += [
            Route(prefix, endpoint("status", model_status), methods=["GET"]),
            Route(prefix + "/metadata", endpoint("metadata", model_metadata), methods=["GET"]),
            Route(prefix + ":predict", endpoint("predict", predict), methods=["POST"]),
        ]
    routes += [Route("/healthz", healthz, methods=["GET"]), Route("/metrics", prometheus, methods=["GET"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.router.redirect_slashes = False  # a trailing slash is a 404 in JSON, not a bodiless 307
    return app


def serve(
    app: Starlette,
    *,
    host: str = "127.0.0.1",
    port: int = 8501,
    log_level: str = "info",
    **uvicorn_options: Any,
) -> None:
    """Serve `app` with uvicorn until interrupted; on loopback unless `host` says otherwise.
    `uvicorn_options` go to `uvicorn.run` (e.g. `limit_concurrency`, `timeout_keep_alive`);
    past loopback, put a reverse proxy in front, as for any Python server."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, **uvicorn_options)


@contextlib.contextmanager
def running(
    app: Starlette, *, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 30.0
) -> Iterator[str]:
    """Serve `app` in a background thread while the block runs; yields its base URL
    (`port=0`: a free port). The server stops, and its thread ends, when the block ends."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="ensemble-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise EnsembleError(f"The HTTP server did not start on {host}:{port} within {timeout_s} s.")
        time.sleep(0.01)
    bound_host, bound_port = server.servers[0].sockets[0].getsockname()[:2]
    try:
        yield f"http://{bound_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, or a 413 as soon as it passes `limit` bytes (before reading it all)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise RestError(413, f"The request body is {int(length)} bytes, over the limit of {limit}.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RestError(413, f"The request body is over the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


class _ModelName(Convertor[str]):
    """A model name in a path: no '/' and no ':', so `GET .../m:predict` is that route's 405,
    not a status request for a model named 'm:predict'."""

    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class _Version(Convertor[int]):
    """A version in a path: 1 to 18 digits (an int64, as in TF Serving); anything else is no
    route, a JSON 404 that says why (`url_error`), never a 500 from `int()`."""

    regex = f"[0-9]{{1,{MAX_VERSION_DIGITS}}}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("ensemble_model", _ModelName())
register_url_convertor("ensemble_version", _Version())


def _error(code: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=code)
