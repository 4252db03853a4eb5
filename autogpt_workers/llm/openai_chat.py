"""The LLM adapter for any OpenAI-compatible chat-completions endpoint (OpenAI, Azure, vLLM, Ollama).

The only module that imports ``openai``. It keeps two things apart, as pydantic-ai does:

- the *provider*: one authenticated ``openai.OpenAI`` client per process (``make_client``), shared by every
  thread, with the SDK's own retries off and a connection pool large enough for hundreds of waiting threads;
- the *model*: ``OpenAIChatModel``, which implements the loop's ``LLM`` protocol, retries with tenacity and
  translates every openai exception into our error tree.

Retries: exponential backoff with full jitter capped at ``backoff_max_s``, at most ``max_attempts`` attempts,
on 408/409/429/5xx, timeouts, connection errors and replies that are not a readable chat completion. A
``Retry-After`` / ``retry-after-ms`` header sets the minimum wait; one longer than ``backoff_max_s`` is not waited
out in-process: ``LLMRateLimited(message, retry_after)`` at once (the runner hands the step back to run after that
wait). When attempts run out: ``LLMTransientError(message, retry_after)``; a refused request
(400/401/403/404/422, exhausted quota): ``LLMPermanentError`` at once.
"""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import itertools
import json
import math
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, cast

import httpx2
import openai
import structlog
import tenacity

from autogpt_workers.agent.frozen import messages_json
from autogpt_workers.agent.tool_json import dumps, tools_json
from autogpt_workers.agent.types import LLMResponse, Message, ToolCall, ToolSchema, Usage
from autogpt_workers.errors import LLMPermanentError, LLMRateLimited, LLMTransientError
from autogpt_workers.llm.lean_transport import KEEPALIVE_EXPIRY_S, LeanTransport

if TYPE_CHECKING:
    from autogpt_workers.config import Settings

log = structlog.get_logger(__name__)

# Local servers (vLLM, Ollama) accept any key; OpenAI answers 401, which becomes a clear LLMPermanentError.
PLACEHOLDER_API_KEY = "EMPTY"

# the SDK's one default header beyond its platform ones that no server needs (the retry count and read timeout it
# adds per request stay: leaving those out per request saved nothing measurable)
SDK_HEADERS = ("X-Stainless-Async",)

_REFUSED = {
    400: "bad request",
    401: "authentication failed (check OPENAI_API_KEY)",
    403: "permission denied (check the key's access to this model)",
    404: "not found (check the model name and OPENAI_BASE_URL)",
    422: "unprocessable request",
}


@dataclasses.dataclass(frozen=True)
class RetryEvent:
    """Handed to ``on_retry`` before each wait: count it, label it by ``reason``."""

    attempt: int  # the attempt that just failed, from 1
    wait_s: float
    reason: str  # rate_limited | server_error | timeout | connection | bad_response
    message: str


RetryHook = Callable[[RetryEvent], None]


class _Retryable(Exception):
    """One failed attempt worth repeating (internal: becomes LLMTransientError when attempts run out)."""

    def __init__(self, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(reason, message, retry_after)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


def make_client(
    base_url: str | None, api_key: str | None, timeout_s: float, max_connections: int, lean: bool = True
) -> openai.OpenAI:
    """One OpenAI client for the process (create it after fork; it is thread-safe, share it).

    ``max_retries=0``: ``OpenAIChatModel`` retries. The pool allows ``max_connections`` concurrent requests,
    all kept alive (an idle one for ``lean_transport.KEEPALIVE_EXPIRY_S``), and a thread waits for a free
    connection at most ``timeout_s``. ``lean``: under httpx, our HTTP/1.1 transport (``lean_transport``) instead
    of httpcore's, unless the environment names a proxy (httpx's own transport goes through it; ours does not).
    """
    timeout = httpx2.Timeout(timeout_s, connect=min(timeout_s, 10.0))
    if lean and not environment_proxies():
        http_client = openai.DefaultHttpxClient(timeout=timeout, transport=LeanTransport(max_connections))
    else:
        limits = httpx2.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        )
        http_client = openai.DefaultHttpxClient(timeout=timeout, limits=limits)
    client = openai.OpenAI(
        base_url=base_url,
        api_key=api_key or PLACEHOLDER_API_KEY,
        timeout=timeout,
        max_retries=0,
        http_client=http_client,
    )
    # the SDK's telemetry headers (its language, version, OS, architecture, runtime and async flag) left out: no
    # OpenAI-compatible server needs them, and each costs the think worker's CPU on every call (httpx normalises
    # every header several times per request: 496 against 527 us of CPU per call, medians of 24 rotated rounds of
    # ``python -m bench.llm_micro --shapes``). Authorization, Accept, Content-Type and User-Agent stay
    # (``Omit`` drops a default header: the SDK's merge removes it; its signature says ``str`` only)
    left_out = dict.fromkeys([*client.platform_headers(), *SDK_HEADERS], openai.omit)
    return client.with_options(default_headers=cast("Mapping[str, str]", left_out))


def completions_url(client: openai.OpenAI) -> str:
    """The absolute URL the client would make of the path ``/chat/completions`` (its base URL's raw path, which ends
    in a slash, then the path). Given an absolute URL, the client uses it as it is instead of parsing two URLs into a
    third on every call: 496 against 562 us of CPU per call with the path (medians of 24 rotated rounds of ``python
    -m bench.llm_micro --shapes``; 633 us with the SDK's headers too)."""
    base = client.base_url
    return str(base.copy_with(raw_path=base.raw_path + b"chat/completions"))


def environment_proxies() -> bool:
    """Whether ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` (any case) names a proxy: the variables httpx reads,
    through the same ``urllib.request.getproxies``."""
    proxies = urllib.request.getproxies()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))


def make_clients(
    base_url: str | None,
    api_key: str | None,
    timeout_s: float,
    max_connections: int,
    shards: int,
    lean: bool = True,
) -> tuple[openai.OpenAI, ...]:
    """``shards`` clients that share ``max_connections`` between them (each gets its part, rounded up, plus one:
    ``OpenAIChatModel`` deals threads to them in turn, so their counts differ by one at most). An HTTP pool walks
    all its connections on every request; several small pools cost less than one large one."""
    per_shard = -(-max_connections // shards) + (1 if shards > 1 else 0)
    return tuple(make_client(base_url, api_key, timeout_s, per_shard, lean) for _ in range(shards))


@functools.lru_cache(maxsize=4)
def shared_client(
    base_url: str | None, api_key: str | None, timeout_s: float, max_connections: int, lean: bool = True
) -> openai.OpenAI:
    """``make_client``, memoised: every caller in the process with the same settings gets the same client."""
    return make_client(base_url, api_key, timeout_s, max_connections, lean)


class OpenAIChatModel:
    """``LLM`` over chat completions with tool calling."""

    def __init__(
        self,
        provider: openai.OpenAI | Sequence[openai.OpenAI],
        model: str,
        *,
        max_attempts: int = 5,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 20.0,
        temperature: float | None = None,
        on_retry: RetryHook | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        # several clients (``make_clients``): each calling thread keeps to the one it was dealt first
        self.providers = tuple(provider) if isinstance(provider, Sequence) else (provider,)
        if not self.providers:
            raise ValueError("at least one client is needed")
        self.provider = self.providers[0]
        # each client's chat-completions URL, absolute: the client then takes it as it is instead of parsing its
        # base URL and the path into a new URL on every call (``completions_url``)
        self._urls = {id(client): completions_url(client) for client in self.providers}
        self._dealt = threading.local()
        self._deal = itertools.count()
        self._key_prefix = f"autogpt-{uuid.uuid4().hex}"
        self._keys = itertools.count(1)
        self.model = model
        self.max_attempts = max_attempts
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.temperature = temperature
        self.on_retry = on_retry
        self._sleep = sleep
        self._backoff = tenacity.wait_random_exponential(multiplier=backoff_initial_s, max=backoff_max_s)
        # one for the model's life, shared by every calling thread: tenacity keeps a call's state (attempts, the
        # actions of its loop) per thread. A ``Retrying`` made per call was a reference cycle (its state's actions
        # are its own bound methods) that only the garbage collector freed, about 15 objects a call: nearly all
        # of a think worker's cyclic garbage
        self._retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max_attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception(self._waits_in_process),
            before_sleep=self._before_sleep,
            sleep=self._sleep,
            reraise=True,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, provider: openai.OpenAI | None = None, on_retry: RetryHook | None = None
    ) -> OpenAIChatModel:
        """The model the settings describe, on the process's shared client unless ``provider`` is given."""
        api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        client = provider or shared_client(
            settings.openai_base_url,
            api_key,
            settings.llm_timeout_s,
            settings.llm_max_connections,
            settings.llm_http_transport == "lean",
        )
        return cls(
            client,
            settings.llm_model,
            max_attempts=settings.llm_max_attempts,
            backoff_max_s=settings.llm_backoff_max_s,
            on_retry=on_retry,
        )

    def complete(self, messages: list[Message], tools: list[ToolSchema]) -> LLMResponse:
        """One chat completion, retried on transient failures; see the module docstring for the policy."""
        try:
            try:  # the first attempt outside tenacity's loop: nearly every call succeeds at once
                return self._attempt(messages, tools)
            except _Retryable as exc:
                if self.max_attempts == 1 or not self._waits_in_process(exc):
                    raise
                first = exc
            return self._retry(first, messages, tools)
        except _Retryable as exc:
            if exc.retry_after is not None and exc.retry_after > self.backoff_max_s:
                raise LLMRateLimited(
                    f"{exc.message} (the server asked to wait {exc.retry_after:.1f}s, longer than the in-process "
                    f"backoff cap of {self.backoff_max_s:g}s: handed back)",
                    exc.retry_after,
                ) from exc
            attempts = f"{self.max_attempts} attempt{'s' if self.max_attempts > 1 else ''}"
            raise LLMTransientError(f"{exc.message} (gave up after {attempts})", exc.retry_after) from exc

    def _retry(self, first: _Retryable, messages: list[Message], tools: list[ToolSchema]) -> LLMResponse:
        """The retry loop once the first attempt failed with ``first``: tenacity's attempt 1 raises it again (so
        its attempt count, waits and ``before_sleep`` read as if tenacity had made that attempt), then attempts."""
        pending = [first]

        def attempt() -> LLMResponse:
            if pending:
                raise pending.pop()
            return self._attempt(messages, tools)

        return self._retrying(attempt)

    def _attempt(self, messages: list[Message], tools: list[ToolSchema]) -> LLMResponse:
        body = request_body(self.model, messages, tools, self.temperature)
        try:
            # ``post`` is the client's documented call for a raw request: the same request, retries off, errors as
            # ``chat.completions.create``. The body is our JSON text (the tool schemas' text is encoded once per
            # process, see ``tool_json``) and the reply comes back as bytes we decode: the SDK's TypedDict
            # transform, its JSON encoder and its model construction cost more of the think worker's CPU than
            # the rest of the call
            client = self._client()
            raw = client.post(
                self._urls[id(client)], content=body, cast_to=bytes, options={"idempotency_key": self._request_key()}
            )
            completion = json.loads(raw)
        except openai.APITimeoutError as exc:
            raise _Retryable("timeout", f"the LLM request to {self._where()} timed out") from exc
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise _Retryable("connection", f"cannot reach the LLM at {self._where()}: {cause}") from exc
        except openai.APIStatusError as exc:
            raise _translate_status(exc) from exc
        except openai.APIResponseValidationError as exc:
            raise _Retryable("bad_response", f"the LLM sent an unreadable reply: {exc.message}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _Retryable("bad_response", f"the LLM sent a reply that is not valid JSON: {exc}") from exc
        except openai.OpenAIError as exc:
            raise LLMPermanentError(f"the LLM client refused the request: {exc}") from exc
        return _to_response(completion, self.model)

    def _request_key(self) -> str:
        """A key unique to this request: the SDK draws a ``uuid4`` for every POST that has none (and sends it only on
        clients with an idempotency header, which ``openai.OpenAI`` has not); a process prefix and a counter cost a
        fraction of that, and stay unique if a client ever sends it."""
        return f"{self._key_prefix}-{next(self._keys)}"

    def _client(self) -> openai.OpenAI:
        if len(self.providers) == 1:
            return self.provider
        client: openai.OpenAI | None = getattr(self._dealt, "client", None)
        if client is None:
            client = self._dealt.client = self.providers[next(self._deal) % len(self.providers)]
        return client

    def _where(self) -> str:
        return str(self.provider.base_url)

    def _waits_in_process(self, exc: BaseException) -> bool:
        """Retry here: a retryable failure whose server-requested wait (if any) fits under the backoff cap."""
        if not isinstance(exc, _Retryable):
            return False
        return exc.retry_after is None or exc.retry_after <= self.backoff_max_s

    def _wait(self, state: tenacity.RetryCallState) -> float:
        wait = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            wait = max(wait, exc.retry_after)
        return min(wait, self.backoff_max_s)

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if not isinstance(exc, _Retryable):
            return
        wait_s = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "llm call failed, retrying",
            attempt=state.attempt_number,
            max_attempts=self.max_attempts,
            wait_s=round(wait_s, 3),
            reason=exc.reason,
            error=exc.message,
        )
        if self.on_retry is not None:
            self.on_retry(RetryEvent(state.attempt_number, wait_s, exc.reason, exc.message))


def _translate_status(exc: openai.APIStatusError) -> Exception:
    """A 4xx/5xx answer as ``_Retryable`` (worth another attempt) or ``LLMPermanentError``."""
    status = exc.status_code
    headers = exc.response.headers
    detail = f"HTTP {status} from the LLM: {exc.message}"
    should_retry = headers.get("x-should-retry")
    if should_retry == "false":
        return LLMPermanentError(f"{detail} (the server said not to retry)")
    if status == 429 and exc.code == "insufficient_quota":
        return LLMPermanentError(f"{detail} (the account's quota is exhausted; retrying will not help)")
    retry_after = parse_retry_after(headers)
    if status == 429:
        return _Retryable("rate_limited", detail, retry_after)
    if status >= 500 or status in (408, 409) or should_retry == "true":
        return _Retryable("server_error", detail, retry_after)
    reason = _REFUSED.get(status, "request refused")
    return LLMPermanentError(f"{detail} ({reason})")


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait per ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date); None if absent."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError, IndexError):
                continue
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


def request_body(model: str, messages: list[Message], tools: list[ToolSchema], temperature: float | None) -> bytes:
    """The chat-completions request as JSON bytes, as the SDK would encode it (compact, UTF-8)."""
    parts = ['{"model":', dumps(model), ',"messages":', messages_json(messages)]
    if tools:
        parts += [',"tools":', tools_json(tools)]
    if temperature is not None:
        parts += [',"temperature":', dumps(temperature)]
    parts.append("}")
    return "".join(parts).encode()


def _to_response(completion: object, model: str) -> LLMResponse:
    """Our ``LLMResponse`` from the decoded chat completion; anything unreadable is a ``bad_response`` to retry."""
    if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
        raise _Retryable(
            "bad_response", f"the LLM sent something other than a chat completion: {completion!r:.200}"
        )
    try:
        message = completion["choices"][0]["message"]
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise TypeError(f"message content is {type(content).__name__}, not text")
        tool_calls = []
        for call in message.get("tool_calls") or []:
            function = call.get("function")
            if function is None:  # a custom (non-function) tool call: we never offer those
                continue
            arguments = function.get("arguments")
            if not isinstance(arguments, str):  # some servers send an object instead of JSON text
                arguments = json.dumps(arguments)
            tool_calls.append(ToolCall(id=call.get("id") or "", name=function.get("name") or "", arguments=arguments))
        usage = completion.get("usage") or {}
        return LLMResponse(
            content=content,
            tool_calls=tool_calls,
            usage=Usage(
                prompt_tokens=usage.get("prompt_tokens") or 0,
                completion_tokens=usage.get("completion_tokens") or 0,
            ),
            model=completion.get("model") or model,
        )
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise _Retryable("bad_response", f"the LLM sent a malformed chat completion: {exc}") from exc
