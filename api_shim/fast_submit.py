"""``POST /v1/tasks`` answered by the gate itself, past FastAPI's routing and request handling, when the request is
an ordinary one: a JSON body that is a valid ``TaskSubmission`` within the platform's limits, no profile. The
answer comes from the route's own ``SubmitEndpoint``; its errors go to the app's exception handlers, as the route's
do. Anything else (a body that does not parse or validate, another content type, an over-long idempotency key) is
handed to FastAPI with its body replayed, before anything is written, so every refusal is the route's own, word for
word. ``autogpt_api_requests_total`` counts it under the route's template, as before.

Why: in py-spy samples of the API under 32 submitting clients, the layers between the gate and the route's function
(routing, FastAPI's request handler and dependency solving, the response's pass back through the middlewares) were
more of the event loop's time than the submit itself."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_shim import storable
from api_shim.routes import MAX_IDEMPOTENCY_KEY, SubmitEndpoint
from autogpt_workers.contracts import TaskSubmission


class FastSubmit:
    def __init__(self, endpoint: SubmitEndpoint, route: Any) -> None:
        self.endpoint = endpoint
        self.route = route  # the FastAPI route it stands in for (the request metrics read its template)

    def handles(self, scope: Scope) -> bool:
        return scope["method"] == "POST" and scope["path"] == self.endpoint.path

    async def __call__(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        """Answer the request, or hand it to ``app`` (the rest of the stack) unchanged."""
        fastapi_app: FastAPI = scope["app"]
        scope["route"] = self.route
        try:
            body, more = await _read_body(receive)  # a body past the gate's limit raises BodyTooLarge (a 413)
        except Exception as exc:
            await _answer_error(fastapi_app, exc, scope, receive, send)
            return
        replay = _replayed(body, more, receive)
        submission, key = self._parse(scope, body) if not more else (None, None)
        if submission is None:
            await app(scope, replay, send)
            return
        tenant: str = scope["state"]["tenant_id"]
        try:
            response = await self.endpoint.answer(fastapi_app.state, submission, tenant, key)
        except Exception as exc:
            await _answer_error(fastapi_app, exc, scope, replay, send)
            return
        await response(scope, replay, send)

    def _parse(self, scope: Scope, body: bytes) -> tuple[TaskSubmission | None, str | None]:
        """The submission and its idempotency key, or ``(None, None)``: FastAPI's to answer."""
        content_type, key = None, None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"idempotency-key":
                if key is not None:  # said twice: the route's rules
                    return None, None
                key = value.decode("latin-1")
        json_body = content_type is not None and content_type.split(b";", 1)[0].strip() == b"application/json"
        if not json_body or (key is not None and len(key) > MAX_IDEMPOTENCY_KEY):
            return None, None
        try:
            submission = TaskSubmission.model_validate(storable.loads(body))  # NaN & co: FastAPI's route, a 422
            if submission.profile is not None:
                return None, None
            self.endpoint.check(submission, body)
        except (ValueError, ValidationError, RequestValidationError, HTTPException):  # json's are ValueErrors
            return None, None
        return submission, key


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole body; ``more`` True if the client went away before its end (FastAPI's to answer)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replayed(body: bytes, more: bool, receive: Receive) -> Receive:
    """``receive`` as if nothing had been read: the body first (unless the client left), then what comes next."""
    pending = not more

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer_error(app: FastAPI, exc: Exception, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer ``exc`` as the app's exception handlers would have from the route; without one, raise it (a 500)."""
    handler = _handler_for(app, exc)
    if handler is None:
        raise exc
    response = await handler(Request(scope, receive), exc)
    await response(scope, receive, send)


def _handler_for(app: FastAPI, exc: Exception) -> Any:
    """The app's exception handler for ``exc``, looked up along its class's MRO as Starlette does; None if none."""
    for cls in type(exc).__mro__:
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            return handler
    return None
