"""The API's Prometheus series and its ``GET /metrics``.

``autogpt_api_requests_total{method,endpoint,status}`` and ``autogpt_api_request_duration_seconds{method,endpoint}``
are recorded by a pure ASGI middleware. ``endpoint`` is the matched route's template (``/v1/tasks/{task_id}``),
never the raw path: ids do not become label values, and a request no route matches counts as ``<unmatched>``.

With several uvicorn worker processes, ``autogpt-workers api`` sets ``PROMETHEUS_MULTIPROC_DIR`` and any process
answers ``/metrics`` for all of them.
"""

from __future__ import annotations

import os
import time
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autogpt_workers.queues import stamp_publish_time

UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

REQUESTS = Counter(
    "autogpt_api_requests", "HTTP requests answered by the API.", ["method", "endpoint", "status"]
)
LATENCY = Histogram(
    "autogpt_api_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["method", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# the group commit's statements (``submit.submit_group``): how many submits each wrote; _sum / _count is the mean
SUBMIT_BATCH = Histogram(
    "autogpt_api_submit_batch_size",
    "Submits written by one statement of the API's group commit.",
    buckets=(1, 2, 4, 8, 16, 32),
)


def endpoint_of(scope: Scope) -> str:
    """The route template the router matched for this request, or ``<unmatched>``."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(path) if path else UNMATCHED


class RequestMetrics:
    """Counts every HTTP request by method, route template and status; times it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception that escapes every handler is answered 500 by the server

        async def _send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            method = str(scope.get("method", "")).upper()
            method = method if method in METHODS else "OTHER"
            endpoint = endpoint_of(scope)
            REQUESTS.labels(method, endpoint, str(status)).inc()
            LATENCY.labels(method, endpoint).observe(time.perf_counter() - started)


def _registry() -> Any:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path)
    return registry


async def metrics_endpoint() -> Response:
    """Prometheus text exposition of the API's series."""
    return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI) -> None:
    """Add the request middleware and ``GET /metrics``; stamp published wake-ups for queue-age readings."""
    app.add_middleware(RequestMetrics)
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False, tags=["ops"])
    stamp_publish_time()
