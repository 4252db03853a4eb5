"""``OpenAIChatModel`` against a tiny local HTTP server: parsing, retries, Retry-After, error translation."""

from __future__ import annotations

import gc
import itertools
import json
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import uvicorn

from autogpt_workers.agent.types import LLMResponse, ToolCall, Usage
from autogpt_workers.errors import LLMPermanentError, LLMRateLimited, LLMTransientError
from autogpt_workers.llm.lean_transport import KEEPALIVE_EXPIRY_S, LeanTransport
from autogpt_workers.llm.openai_chat import (
    OpenAIChatModel,
    RetryEvent,
    completions_url,
    make_client,
    make_clients,
    parse_retry_after,
)

MESSAGES = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Task id: t1\nGoal: hi"}]
TOOLS = [
    {"type": "function", "function": {"name": "finish", "parameters": {"type": "object", "properties": {}}}}
]


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict -> JSON; bytes -> sent as is
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    content_type: str = "application/json"


def completion(content: str | None = "ok", tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }


def error_body(message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "error", "param": None, "code": code}}


class StubLLM:
    """Answers ``POST /v1/chat/completions`` from a queue of ``Reply``; records when each request arrived."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.requests: list[tuple[float, dict[str, Any]]] = []
        self.headers: list[dict[str, str]] = []  # of each request, names in lower case
        self.paths: list[str] = []  # of each request
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    stub.requests.append((time.monotonic(), body))
                    stub.headers.append({name.lower(): value for name, value in self.headers.items()})
                    stub.paths.append(self.path)
                    reply = (
                        stub.replies.pop(0) if stub.replies else Reply(500, error_body("stub: no reply left"))
                    )
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def gaps(self) -> list[float]:
        times = [t for t, _ in self.requests]
        return [b - a for a, b in itertools.pairwise(times)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[StubLLM]:
    server = StubLLM()
    yield server
    server.close()


def _model(base_url: str, **kwargs: Any) -> OpenAIChatModel:
    options: dict[str, Any] = {"max_attempts": 3, "backoff_initial_s": 0.001, "backoff_max_s": 0.05}
    options.update(kwargs)
    timeout_s = options.pop("timeout_s", 5.0)
    return OpenAIChatModel(make_client(base_url, "sk-test", timeout_s, 50), "gpt-4o-mini", **options)


def test_success_is_parsed_into_an_llm_response(stub: StubLLM) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "finish", "arguments": '{"reason": "x"'}}
    stub.replies = [Reply(body=completion("Thinking.", [call]))]
    response = _model(stub.base_url).complete(MESSAGES, TOOLS)

    assert response == LLMResponse(
        content="Thinking.",
        tool_calls=[
            ToolCall(id="call_1", name="finish", arguments='{"reason": "x"')
        ],  # raw, even if malformed
        usage=Usage(prompt_tokens=12, completion_tokens=7),
        model="gpt-4o-mini-2024-07-18",
    )
    ((_, sent),) = stub.requests
    assert sent["model"] == "gpt-4o-mini" and sent["messages"] == MESSAGES and sent["tools"] == TOOLS


def test_a_request_draws_no_uuid(stub: StubLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK draws a ``uuid4`` per POST for an idempotency key it does not send; each request brings its own."""
    import openai._base_client

    def no_uuid() -> None:
        raise AssertionError("the SDK drew a uuid4")

    model = _model(stub.base_url)
    monkeypatch.setattr(openai._base_client.uuid, "uuid4", no_uuid)
    stub.replies = [Reply(body=completion("one")), Reply(body=completion("two"))]
    assert [model.complete(MESSAGES, []).content for _ in range(2)] == ["one", "two"]
    assert model._request_key() != model._request_key()


def test_no_tools_means_no_tools_field(stub: StubLLM) -> None:
    stub.replies = [Reply(body=completion("plain"))]
    assert _model(stub.base_url).complete(MESSAGES, []).content == "plain"
    assert "tools" not in stub.requests[0][1]


def test_429_twice_honours_retry_after_then_succeeds(stub: StubLLM) -> None:
    limited = error_body("Rate limit reached", "rate_limit_exceeded")
    stub.replies = [
        Reply(429, limited, {"Retry-After": "0.3"}),
        Reply(429, limited, {"retry-after-ms": "400"}),
        Reply(body=completion("finally")),
    ]
    events: list[RetryEvent] = []
    model = _model(stub.base_url, backoff_max_s=5.0, on_retry=events.append)

    assert model.complete(MESSAGES, TOOLS).content == "finally"
    assert len(stub.requests) == 3
    first_gap, second_gap = stub.gaps()
    assert 0.3 <= first_gap < 1.5
    assert 0.4 <= second_gap < 1.5
    assert [(e.attempt, e.reason) for e in events] == [(1, "rate_limited"), (2, "rate_limited")]
    assert events[0].wait_s == pytest.approx(0.3, abs=0.01) and events[1].wait_s == pytest.approx(
        0.4, abs=0.01
    )


def test_retry_after_beyond_the_backoff_cap_is_handed_back_not_waited(stub: StubLLM) -> None:
    """A wait the server asks for that is longer than we wait in-process is not shortened (an early retry would
    only be refused again): no retry here, ``LLMRateLimited`` with the server's wait for the runner to honour."""
    stub.replies = [Reply(429, error_body("slow down"), {"Retry-After": "30"}), Reply(body=completion())]
    waits: list[float] = []
    events: list[RetryEvent] = []
    model = _model(stub.base_url, backoff_max_s=0.2, sleep=waits.append, on_retry=events.append)
    with pytest.raises(LLMRateLimited) as info:
        model.complete(MESSAGES, TOOLS)
    assert len(stub.requests) == 1 and waits == [] and events == []
    assert isinstance(info.value, LLMTransientError) and info.value.retry_after == pytest.approx(30)
    assert "HTTP 429" in str(info.value) and "asked to wait 30.0s" in str(info.value)
    copy = pickle.loads(pickle.dumps(info.value))  # Celery ships it between processes
    assert type(copy) is LLMRateLimited and copy.retry_after == info.value.retry_after


def test_retry_after_within_the_cap_is_waited_in_process(stub: StubLLM) -> None:
    stub.replies = [Reply(503, error_body("busy"), {"Retry-After": "0.2"}), Reply(body=completion())]
    waits: list[float] = []
    assert _model(stub.base_url, backoff_max_s=0.2, sleep=waits.append).complete(MESSAGES, TOOLS).content == "ok"
    assert waits == [pytest.approx(0.2)]


def test_500_then_success(stub: StubLLM) -> None:
    stub.replies = [Reply(500, error_body("boom")), Reply(body=completion("recovered"))]
    events: list[RetryEvent] = []
    assert _model(stub.base_url, on_retry=events.append).complete(MESSAGES, TOOLS).content == "recovered"
    assert [e.reason for e in events] == ["server_error"]


@pytest.mark.parametrize("status", [408, 409, 502])
def test_other_retryable_statuses(stub: StubLLM, status: int) -> None:
    stub.replies = [Reply(status, error_body("try again")), Reply(body=completion())]
    assert _model(stub.base_url).complete(MESSAGES, TOOLS).content == "ok"
    assert len(stub.requests) == 2


def test_401_is_permanent_and_not_retried(stub: StubLLM) -> None:
    stub.replies = [Reply(401, error_body("Incorrect API key provided", "invalid_api_key"))]
    with pytest.raises(LLMPermanentError, match=r"HTTP 401 .*Incorrect API key.*check OPENAI_API_KEY"):
        _model(stub.base_url).complete(MESSAGES, TOOLS)
    assert len(stub.requests) == 1


@pytest.mark.parametrize(
    ("status", "hint"),
    [(400, "bad request"), (403, "permission"), (404, "model name"), (422, "unprocessable")],
)
def test_other_client_errors_are_permanent(stub: StubLLM, status: int, hint: str) -> None:
    stub.replies = [Reply(status, error_body("no"))]
    with pytest.raises(LLMPermanentError, match=hint):
        _model(stub.base_url).complete(MESSAGES, TOOLS)
    assert len(stub.requests) == 1


def test_exhausted_quota_is_permanent(stub: StubLLM) -> None:
    stub.replies = [Reply(429, error_body("You exceeded your current quota", "insufficient_quota"))]
    with pytest.raises(LLMPermanentError, match="quota is exhausted"):
        _model(stub.base_url).complete(MESSAGES, TOOLS)


def test_persistent_503_gives_up_with_a_transient_error(stub: StubLLM) -> None:
    stub.replies = [Reply(503, error_body("overloaded"), {"Retry-After": "0.01"}) for _ in range(5)]
    events: list[RetryEvent] = []
    with pytest.raises(LLMTransientError) as info:
        _model(stub.base_url, max_attempts=4, on_retry=events.append).complete(MESSAGES, TOOLS)
    assert len(stub.requests) == 4 and len(events) == 3
    assert "HTTP 503" in str(info.value) and "gave up after 4 attempts" in str(info.value)
    assert info.value.retry_after == pytest.approx(0.01)
    copy = pickle.loads(pickle.dumps(info.value))  # Celery ships it between processes
    assert str(copy) == str(info.value) and copy.retry_after == info.value.retry_after


@pytest.mark.parametrize(
    "reply",
    [
        Reply(body=b"<html>oops, this is not JSON"),  # JSON content type, garbage body
        Reply(body=b"<html>oops</html>", content_type="text/html"),  # the SDK would return the text as is
        Reply(body={"unexpected": True}),  # JSON, but not a chat completion
        Reply(body={**completion(), "choices": []}),
    ],
)
def test_garbage_replies_are_retried(stub: StubLLM, reply: Reply) -> None:
    stub.replies = [reply, Reply(body=completion("sane"))]
    events: list[RetryEvent] = []
    assert _model(stub.base_url, on_retry=events.append).complete(MESSAGES, TOOLS).content == "sane"
    assert [e.reason for e in events] == ["bad_response"]


def test_timeout_is_retried_then_reported(stub: StubLLM) -> None:
    stub.replies = [Reply(body=completion(), delay_s=1.0), Reply(body=completion(), delay_s=1.0)]
    with pytest.raises(LLMTransientError, match="timed out"):
        _model(stub.base_url, max_attempts=2, timeout_s=0.2).complete(MESSAGES, TOOLS)


def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    events: list[RetryEvent] = []
    with pytest.raises(LLMTransientError, match="cannot reach the LLM"):
        _model(f"http://127.0.0.1:{port}/v1", max_attempts=2, on_retry=events.append).complete(
            MESSAGES, TOOLS
        )
    assert [e.reason for e in events] == ["connection"]


def test_requests_carry_the_key_and_leave_the_sdks_telemetry_headers_out(stub: StubLLM) -> None:
    stub.replies = [Reply(body=completion("ok"))]
    _model(stub.base_url).complete(MESSAGES, TOOLS)
    (sent,) = stub.headers
    assert sent["authorization"] == "Bearer sk-test"
    assert sent["content-type"] == "application/json" and sent["accept"] == "application/json"
    assert sent["user-agent"].startswith("OpenAI/Python")
    # the platform's (language, version, OS, architecture, runtime) and the async flag are gone; the two the SDK
    # sets per request stay
    assert sorted(name for name in sent if name.startswith("x-stainless-")) == [
        "x-stainless-read-timeout", "x-stainless-retry-count",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1/", "https://llm.example/openai/v1", "http://h:1",
     "https://llm.example/v1?api-version=2024-06-01"],
)  # fmt: skip
def test_the_absolute_completions_url_is_the_one_the_client_makes_of_the_path(base_url: str) -> None:
    client = make_client(base_url, "sk-test", 5.0, 4)
    assert completions_url(client) == str(client._prepare_url("/chat/completions"))


def test_requests_go_to_the_base_urls_chat_completions(stub: StubLLM) -> None:
    stub.replies = [Reply(body=completion("ok"))]
    _model(stub.base_url).complete(MESSAGES, TOOLS)
    assert stub.paths == ["/v1/chat/completions"]


def test_arguments_sent_as_an_object_are_encoded(stub: StubLLM) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "finish", "arguments": {"reason": "x"}}}
    stub.replies = [Reply(body=completion(None, [call]))]
    response = _model(stub.base_url).complete(MESSAGES, TOOLS)
    assert json.loads(response.tool_calls[0].arguments) == {"reason": "x"}


def test_client_pool_and_retries(no_proxy_env: None) -> None:
    client = make_client("http://127.0.0.1:9/v1", None, 7.0, 321)
    assert client.max_retries == 0
    transport = client._client._transport  # type: ignore[attr-defined]
    assert isinstance(transport, LeanTransport) and transport.max_connections == 321
    pool = make_client("http://127.0.0.1:9/v1", None, 7.0, 321, lean=False)._client._transport._pool  # type: ignore[attr-defined]
    assert pool._max_connections == 321 and pool._max_keepalive_connections == 321
    # both keep an idle connection for less than the 5 s after which uvicorn (vLLM, the fake LLM) closes one
    server_keep_alive = uvicorn.Config(app=None).timeout_keep_alive  # type: ignore[arg-type]
    assert transport.keepalive_expiry_s == pool._keepalive_expiry == KEEPALIVE_EXPIRY_S < server_keep_alive


def test_a_proxy_in_the_environment_keeps_httpx_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our transport does not speak to proxies: with one configured, the client is httpx's own, which does."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    client = make_client("https://llm.example/v1", None, 7.0, 10)
    assert not isinstance(client._client._transport, LeanTransport)  # type: ignore[attr-defined]
    assert any(t is not None for t in client._client._mounts.values())  # type: ignore[attr-defined]


def test_threads_are_dealt_the_clients_in_turn_and_each_keeps_to_its_own(stub: StubLLM, no_proxy_env: None) -> None:
    clients = make_clients(stub.base_url, "sk-test", 5.0, 10, 4)
    transports = [c._client._transport for c in clients]  # type: ignore[attr-defined]
    assert [t.max_connections for t in transports] == [4, 4, 4, 4]  # 10 / 4 rounded up, plus one
    model = OpenAIChatModel(clients, "gpt-4o-mini", max_attempts=1)
    stub.replies = [Reply(body=completion("ok")) for _ in range(16)]
    used: dict[int, list[int]] = {}
    barrier = threading.Barrier(8)

    def call_twice(n: int) -> None:
        barrier.wait()
        for _ in range(2):
            assert model.complete(MESSAGES, TOOLS).content == "ok"
            used.setdefault(n, []).append(clients.index(model._client()))

    threads = [threading.Thread(target=call_twice, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(set(picks)) == 1 for picks in used.values())  # a thread keeps to one client
    assert sorted(picks[0] for picks in used.values()) == [0, 0, 1, 1, 2, 2, 3, 3]  # dealt in turn
    assert len(stub.requests) == 16


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "soon"}, None),
        ({"retry-after-ms": "x", "retry-after": "2"}, 2.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_parse_retry_after_http_date() -> None:
    value = parse_retry_after({"retry-after": formatdate(time.time() + 30, usegmt=True)})
    assert value is not None and 28 <= value <= 31


def test_a_call_leaves_no_reference_cycle_behind(stub: StubLLM) -> None:
    """What a call makes is freed by reference counting: a worker's garbage collector finds none of it."""
    model = _model(stub.base_url)
    stub.replies = [Reply(body=completion("ok")) for _ in range(60)]
    model.complete(MESSAGES, TOOLS)  # warm: the client's connection, the thread's retry state
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable is kept in gc.garbage, to be looked at
    try:
        for _ in range(50):
            assert model.complete(MESSAGES, TOOLS).content == "ok"
        gc.collect()
        found = [type(o) for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    # other tests' leftovers and the stub server's threads may add builtins; nothing may come from the call's code
    # (one Retrying per call left about 15 objects in cycles each, tenacity's among them)
    ours = [t for t in found if t.__module__.split(".")[0] in ("tenacity", "autogpt_workers", "openai", "httpx2")]
    assert ours == []


def test_threads_sharing_a_model_retry_each_on_its_own_count(stub: StubLLM) -> None:
    """One model's retry policy serves every thread at once: each call counts its own attempts."""
    model = _model(stub.base_url, max_attempts=10, backoff_max_s=0.02)  # more attempts than failures
    events: dict[int, list[int]] = {}
    model.on_retry = lambda event: events.setdefault(threading.get_ident(), []).append(event.attempt)
    stub.replies = [Reply(500, error_body("busy")) if n % 2 == 0 else Reply(body=completion("ok")) for n in range(16)]
    barrier = threading.Barrier(8)
    answers: list[str | None] = []

    def call() -> None:
        barrier.wait()
        answers.append(model.complete(MESSAGES, TOOLS).content)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == ["ok"] * 8
    assert len(stub.requests) == 16
    assert all(attempts == list(range(1, len(attempts) + 1)) for attempts in events.values())
    assert sum(len(attempts) for attempts in events.values()) == 8
