"""The API's front gate, as one pure ASGI middleware: request size, API key, per-tenant rate limit.

Every request except the public paths (health, metrics, the OpenAPI document and its UIs) must carry a key, as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; the key's tenant is put in ``request.state.tenant_id``
(read it with ``tenant_of``), and every handler scopes its queries to it. With ``AUTOGPT_API_AUTH=disabled`` (or
``autogpt-workers api --insecure-dev``) a request without a key is tenant ``default``; a key, if given, still counts.

Refusals: 401 (no key, unknown or revoked key), 429 with ``Retry-After`` (the tenant's token bucket is empty), 413
(body larger than ``api_max_body_bytes``, or ``api_max_upload_bytes`` for artifact uploads). Agent Protocol paths
(``/ap/``) answer ``{"message": ...}``, the native API ``{"detail": ...}``.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autogpt_workers.config import Settings
from autogpt_workers.ratelimit import RateLimiter
from autogpt_workers.tenants import Authenticator, Principal

log = structlog.get_logger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
UPLOAD_SUFFIX = "/artifacts"
MULTIPART_OVERHEAD = 64 * 1024


class BodyTooLarge(Exception):
    pass


def error_body(path: str, message: str) -> dict[str, Any]:
    return {"message": message} if path.startswith("/ap/") else {"detail": message}


def tenant_of(request: Request) -> str:
    """The calling tenant, set by ``Gate`` (a route outside it is a bug: fail loudly)."""
    tenant: str = request.state.tenant_id
    return tenant


def presented_key(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None


class Gate:
    """Pure ASGI (streams such as SSE pass through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        fastapi_app: FastAPI = scope["app"]
        settings: Settings = fastapi_app.state.settings
        path: str = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}

        limit = settings.api_max_body_bytes
        if scope["method"] == "POST" and path.startswith("/ap/") and path.endswith(UPLOAD_SUFFIX):
            limit = settings.api_max_upload_bytes + MULTIPART_OVERHEAD
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _refuse(send, path, 413, f"request body larger than {limit} bytes")
            return

        principal = await _principal(fastapi_app, settings, headers)
        if principal is None:
            await _refuse(
                send,
                path,
                401,
                "a valid API key is required: send 'Authorization: Bearer <key>' (autogpt-workers keys create)",
                {"WWW-Authenticate": 'Bearer realm="autogpt-workers"'},
            )
            return

        limiter = _limiter(fastapi_app, settings)
        rate = principal.limits.rate_per_s or settings.api_rate_per_s
        burst = principal.limits.rate_burst or settings.api_rate_burst
        decision = await limiter.hit(principal.tenant_id, rate, burst)
        if not decision.allowed:
            await _refuse(
                send,
                path,
                429,
                f"rate limit of {rate:g} requests/s (burst {burst}) exceeded; retry after "
                f"{decision.retry_after_header}s",
                {"Retry-After": decision.retry_after_header},
            )
            return

        scope.setdefault("state", {})
        scope["state"]["tenant_id"] = principal.tenant_id
        scope["state"]["principal"] = principal
        receive, send = _capped(receive, limit), _with_headers(send, int(decision.remaining))
        fast = getattr(fastapi_app.state, "fast_submit", None)  # ``fast_submit``: POST /v1/tasks past the framework
        if fast is not None and fast.handles(scope):
            await fast(scope, receive, send, self.app)
        else:
            await self.app(scope, receive, send)


async def _principal(app: FastAPI, settings: Settings, headers: dict[str, str]) -> Principal | None:
    authenticator: Authenticator | None = getattr(app.state, "authenticator", None)
    if authenticator is None:
        authenticator = app.state.authenticator = Authenticator(app.state.db)
    key = presented_key(headers)
    if key is None and settings.api_auth != "disabled":
        return None
    fresh, principal = authenticator.cached(key)  # answers for ttl_s without a thread or a query
    if fresh:
        return principal
    if key is None:
        return await run_in_threadpool(authenticator.anonymous)
    return await run_in_threadpool(authenticator.authenticate, key)


def _limiter(app: FastAPI, settings: Settings) -> RateLimiter:
    limiter: RateLimiter | None = getattr(app.state, "rate_limiter", None)
    if limiter is None:
        limiter = app.state.rate_limiter = RateLimiter.from_url(settings.redis_url, settings.api_rate_lease_s)
    return limiter


def _capped(receive: Receive, limit: int) -> Receive:
    """A body sent without Content-Length (chunked) is cut off at ``limit`` too."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(f"request body larger than {limit} bytes")
        return message

    return wrapped


def _with_headers(send: Send, remaining: int) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message.setdefault("headers", [])
            message["headers"] = [*message["headers"], (b"x-ratelimit-remaining", str(remaining).encode())]
        await send(message)

    return wrapped


async def _refuse(send: Send, path: str, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(path, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
