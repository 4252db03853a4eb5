"""OpenAI-compatible fake LLM server: the only test double the project uses for the LLM.

Start it: ``python -m tests.fake_llm --host 127.0.0.1 --port 8765`` (from the repo root), or in tests
``tests.fake_llm.client.start_fake_llm()``; in-process: ``fastapi.testclient.TestClient(create_app())``.
Point the agent at ``base_url=http://HOST:PORT/v1`` with any api key.

OpenAI API
    ``POST /v1/chat/completions``  standard ``chat.completion`` (tool calls, usage; no streaming)
    ``GET  /v1/models``            "scripted-demo" plus every model requested so far
    ``GET  /healthz``              ``{"ok": true}``
    ``POST /v1/embeddings``        deterministic hashed bag-of-words vectors (see ``embeddings``)

What it answers
    Conversation = ``Task id: <id>`` in the first user message (else a hash of that message);
    turn = number of ``assistant`` messages in ``messages``.
    Goal marker ``[[script:NAME]]`` -> registered script NAME, turn i answers turn number i, past the end
    a ``finish`` tool call ``{"reason": "script ended"}`` (an unregistered NAME finishes at once with
    a reason saying so). ``[[steps:N]]`` -> turns 0..N-2 ``write_file`` ``step_<turn>.txt``, turn N-1
    ``finish``. No marker -> demo script: write_file plan.md, write_file notes.md, list_files ".",
    read_file plan.md, finish.

Control API (JSON)
    ``POST /_scripts/NAME``  ``{"turns": [Turn, ...]}``; Turn fields (all optional): ``tool``,
                             ``arguments`` (dict), ``raw_arguments`` (exact string), ``content``,
                             ``faults`` (list of "429"|"500"|"503"|"timeout"|"garbage"|"disconnect",
                             one per request of this turn of this conversation, before the answer),
                             ``retry_after``, ``timeout_s``, ``latency_s``, ``usage``
                             (``{"prompt_tokens", "completion_tokens"}``). See ``models.Turn``.
    ``GET  /_scripts``       ``{"scripts": [names]}``; ``GET /_scripts/NAME`` the script.
    ``POST /_config``        merge ``{"latency_s", "latency_jitter_s", "fault_rate" (0..1), "fault_kinds",
                             "seed", "timeout_s"}``; a random fault (seeded ``random.Random``) is applied
                             at ``fault_rate`` to requests without a pending scripted fault.
    ``GET  /_config``        the current config.
    ``POST /_reset``         clear scripts, fault counters, the log and the config.
    ``GET  /_log``           ``{"entries": [{"seq", "ts", "done_ts", "conversation", "turn", "outcome",
                             "tool", "model"}]}``, optional ``?conversation=ID``; outcome is "ok" or the
                             fault served. Bounded to 1,000,000 entries.
    ``GET  /_log/summary``   ``{conversation: {turn: {outcome: count}}}``.

Faults
    "429": status 429, ``Retry-After`` header, ``rate_limit_exceeded`` error body (``openai.RateLimitError``).
    "500"/"503": that status with an error body (``openai.InternalServerError``).
    "timeout": sleeps ``timeout_s`` (turn, else config, default 30) then answers normally; the sleep ends
    early when the client goes away.
    "garbage": 200, ``Content-Type: application/json``, body ``<html>oops``; openai 3.x's default
    (non-strict) client then raises ``json.JSONDecodeError`` (a ``ValueError``, NOT an ``openai.APIError``;
    with a non-JSON content type it would silently return the body as a ``str``).
    "disconnect": closes the connection without an answer (``openai.APIConnectionError``); where the
    transport is unreachable (in-process TestClient) it answers 502 instead.
    Every sleep is ``asyncio.sleep``: hundreds of concurrent slow requests are fine.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from tests.fake_llm.embeddings import add_embedding_routes
from tests.fake_llm.models import FaultKind, Script, Turn
from tests.fake_llm.scripts import completion, identify, resolve_turn
from tests.fake_llm.state import FakeLLMState

DEMO_MODEL = "scripted-demo"
GARBAGE_BODY = b"<html>oops, this is not JSON"


def _error(
    status: int, message: str, type_: str, code: str | None, headers: dict[str, str] | None = None
) -> Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class _DisconnectResponse(Response):
    """Closes the client connection without answering (uvicorn); answers 502 where that is impossible."""

    def __init__(self) -> None:
        super().__init__(
            b'{"error": {"message": "fake LLM: injected disconnect"}}', 502, None, "application/json"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = getattr(getattr(receive, "__self__", None), "transport", None)
        if transport is None or not hasattr(transport, "close"):
            await super().__call__(scope, receive, send)
            return
        transport.close()
        try:  # let uvicorn notice the lost connection so that it does not try to answer 500
            async with asyncio.timeout(2):
                while (await receive())["type"] != "http.disconnect":
                    pass
        except TimeoutError:
            pass


async def _sleep(request: Request, seconds: float) -> bool:
    """``asyncio.sleep`` that ends early when the client disconnects; True if it did."""
    if seconds <= 0:
        return False

    async def wait_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            await asyncio.sleep(0.01)

    sleeper = asyncio.ensure_future(asyncio.sleep(seconds))
    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        done, _ = await asyncio.wait({sleeper, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        watcher.cancel()
    return watcher in done


def _fault_response(fault: FaultKind, turn: Turn) -> Response:
    if fault == "429":
        retry_after = turn.retry_after if turn.retry_after is not None else 1
        return _error(
            429,
            "fake LLM: rate limit exceeded (injected)",
            "rate_limit_exceeded",
            "rate_limit_exceeded",
            headers={"Retry-After": f"{retry_after:g}"},
        )
    if fault in ("500", "503"):
        type_ = "server_error" if fault == "500" else "service_unavailable"
        return _error(int(fault), f"fake LLM: injected {fault}", type_, None)
    if fault == "garbage":
        return Response(GARBAGE_BODY, 200, media_type="application/json")
    return _DisconnectResponse()


async def _chat_completions(state: FakeLLMState, request: Request) -> Response:
    arrival = time.time()
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "fake LLM: request body is not JSON", "invalid_request_error", None)
    except ClientDisconnect:  # the caller went away mid-request (a worker killed by the chaos suite): nobody to answer
        return Response(status_code=499)
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return _error(400, "fake LLM: 'messages' must be a list of objects", "invalid_request_error", None)
    model = str(body.get("model") or DEMO_MODEL)
    state.models_seen.add(model)

    conv = identify(messages)
    turn = resolve_turn(conv, state.scripts)
    fault = state.pick_fault(conv.id, conv.turn, turn)
    answered = fault in (None, "timeout")
    entry = state.record(
        ts=arrival,
        conversation=conv.id,
        turn=conv.turn,
        outcome=fault or "ok",
        tool=turn.tool if answered else None,
        model=model,
    )
    try:
        await _sleep(request, state.latency(turn))
        if fault == "timeout":
            timeout_s = turn.timeout_s if turn.timeout_s is not None else state.config.timeout_s
            await _sleep(request, timeout_s)
        if answered:
            return JSONResponse(completion(conv, turn, model, messages))
        assert fault is not None
        return _fault_response(fault, turn)
    finally:
        entry["done_ts"] = time.time()


def create_app(state: FakeLLMState | None = None) -> FastAPI:
    """A fresh fake LLM app with its own in-memory state (``app.state.fake``)."""
    fake = state or FakeLLMState()
    app = FastAPI(title="fake-llm", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.fake = fake

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _chat_completions(fake, request)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        names = [DEMO_MODEL, *sorted(fake.models_seen - {DEMO_MODEL})]
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "fake-llm"} for n in names]
        return {"object": "list", "data": data}

    add_embedding_routes(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/_scripts/{name}")
    async def put_script(name: str, script: Script) -> dict[str, Any]:
        fake.scripts[name] = script
        return {"ok": True, "name": name, "turns": len(script.turns)}

    @app.get("/_scripts")
    async def list_scripts() -> dict[str, list[str]]:
        return {"scripts": sorted(fake.scripts)}

    @app.get("/_scripts/{name}")
    async def get_script(name: str) -> dict[str, Any]:
        if name not in fake.scripts:
            raise HTTPException(404, f"no script {name!r}")
        return fake.scripts[name].model_dump(exclude_defaults=True)

    @app.post("/_config")
    async def post_config(request: Request) -> Response:
        changes = await request.json()
        if not isinstance(changes, dict):
            return _error(422, "config must be a JSON object", "invalid_request_error", None)
        try:
            config = fake.update_config(changes)
        except ValidationError as exc:
            return JSONResponse({"detail": exc.errors(include_url=False, include_context=False)}, 422)
        return JSONResponse(config.model_dump())

    @app.get("/_config")
    async def get_config() -> dict[str, Any]:
        return fake.config.model_dump()

    @app.post("/_reset")
    async def reset() -> dict[str, bool]:
        fake.reset()
        return {"ok": True}

    @app.get("/_log")
    async def get_log(conversation: str | None = None) -> dict[str, Any]:
        return {"entries": fake.entries(conversation)}

    @app.get("/_log/summary")
    async def get_summary() -> dict[str, dict[str, dict[str, int]]]:
        return fake.summary()

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fake_llm", description="OpenAI-compatible fake LLM"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        loop="asyncio",
        # pinned: the fake LLM stays what every figure so far measured against (the API moved to httptools), and its
        # injected disconnect reaches into uvicorn's protocol objects
        http="h11",
        backlog=4096,
        timeout_graceful_shutdown=1,
    )
