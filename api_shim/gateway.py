"""Puts the front door on the app: the gate (size, key, rate limit), the routers (native ``/v1``, events, Agent
Protocol ``/ap/v1``), error bodies in each API's shape, and an OpenAPI document that says how to authenticate.

``create_app`` calls ``install(app, settings)`` once.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from api_shim import agent_protocol, events, routes
from api_shim.auth import PUBLIC_PATHS, BodyTooLarge, Gate, error_body
from api_shim.fast_submit import FastSubmit
from autogpt_workers.config import Settings

log = structlog.get_logger(__name__)

SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "description": "An API key: autogpt-workers keys create"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
STANDARD_ERRORS = {
    "401": {"description": "No API key, or an unknown or revoked one."},
    "429": {"description": "The tenant's rate limit is exceeded; see Retry-After."},
    "400": {"description": "The body could not be parsed (e.g. not UTF-8)."},
    "413": {"description": "The request body is too large."},
}
BODY_ERRORS = ("400", "413")


class EscapedJSONResponse(JSONResponse):
    """A 422's JSON in ASCII, every other character escaped: the errors echo the client's input, which may hold an
    unpaired surrogate (a ``\\ud800`` escape, or its raw bytes, which ``json.loads`` lets through) that no UTF-8 text
    can carry; ``JSONResponse`` then failed to encode it, a 500."""

    def render(self, content: Any) -> bytes:
        try:
            return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")
        except (ValueError, RecursionError):  # an input JSON cannot carry (NaN, Infinity) or nested past rendering
            return json.dumps(_without_inputs(content), separators=(",", ":")).encode("ascii")


def _without_inputs(content: dict[str, Any]) -> dict[str, Any]:
    """The 422's content (both handlers below give ``detail``, a list of errors) with each error's ``input`` (the
    client's own value, which it has) as null."""
    return {**content, "detail": [{**error, "input": None} for error in content["detail"]]}


def install(app: FastAPI, settings: Settings) -> None:
    if settings.api_auth == "disabled":
        banner = (
            "API AUTHENTICATION IS DISABLED (AUTOGPT_API_AUTH=disabled / --insecure-dev): requests without a key "
            "act as tenant 'default'. Never expose this server."
        )
        print(f"\n{'!' * 100}\n{banner}\n{'!' * 100}\n", file=sys.stderr, flush=True)
        log.warning("api_auth_disabled", detail=banner)
    app.add_middleware(Gate)
    submit = routes.SubmitEndpoint(settings)
    native = routes.make_router(settings, submit)
    app.include_router(native)
    if settings.api_fast_submit:
        route = next(r for r in native.routes if getattr(r, "path", None) == submit.path)
        app.state.fast_submit = FastSubmit(submit, route)
    app.include_router(events.make_router(settings))
    app.include_router(agent_protocol.make_router(settings))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/ap/"):
            return JSONResponse(error_body("/ap/", str(exc.detail)), status_code=exc.status_code, headers=exc.headers)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path.startswith("/ap/"):
            errors = exc.errors()
            first = errors[0] if errors else {}
            where = ".".join(str(p) for p in first.get("loc", ()))
            message = f"invalid request: {where}: {first.get('msg', 'invalid')}"
            content = {"message": message, "detail": jsonable(errors)}
            return EscapedJSONResponse(content, status_code=422)
        # FastAPI's own answer (``request_validation_exception_handler``), escaped
        return EscapedJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> Response:
        return JSONResponse(error_body(request.url.path, str(exc)), status_code=413)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def jsonable(errors: Any) -> Any:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(errors)


def document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the security schemes, the gate's refusals, and no security on public paths."""
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    schema["security"] = [{"bearerAuth": []}, {"apiKeyHeader": []}]
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            if path in PUBLIC_PATHS:
                op["security"] = []
                continue
            responses = op.setdefault("responses", {})
            for code, spec in STANDARD_ERRORS.items():
                if code in BODY_ERRORS and method not in ("post", "put", "patch"):
                    continue
                responses.setdefault(code, spec)
    return schema
