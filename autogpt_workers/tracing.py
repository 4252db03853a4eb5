"""OpenTelemetry traces when an OTLP endpoint is configured, and nothing at all when none is.

Configuration is the standard variables, read by ``Settings``: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (the full
URL), else ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces``; ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none`` turn it off; ``OTEL_SERVICE_NAME`` overrides the process's service name. The SDK reads
the others itself (``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_HEADERS``, ...). Without an
endpoint ``setup`` returns False: no tracer provider, no exporter thread, no signal handler, and every helper
here is a no-op (one ``is None`` test).

One trace per task, flat however many steps it runs::

    POST /v1/tasks            API (FastAPI instrumentation, SERVER)
      autogpt.submit          API: tenant, task id; its context is stored with the task (tasks.traceparent)
        autogpt.think         think worker (CONSUMER): task id, step index, phase, outcome, tenant
          chat <model>        the LLM call (CLIENT): gen_ai.* model and token usage
        autogpt.act           act worker (CONSUMER)
        autogpt.think         the next step ...

Every phase span's parent is the task's context: the wake-up's ``traceparent`` header, else the task row's
column (a wake-up re-driven by the reaper or admitted by the dispatcher carries none). Spans carry the task id;
metrics never do.

Set up by the API's ``create_app`` and by ``autogpt-workers worker`` (``tracing_celery.install``: the thread pool
at start, each prefork child after the fork).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider

    from autogpt_workers.config import Settings

INSTRUMENTATION = "autogpt_workers"
_W3C = TraceContextTextMapPropagator()
_lock = threading.Lock()
_provider: TracerProvider | None = None
_pid = 0
_submitting: contextvars.ContextVar[Context | None] = contextvars.ContextVar("autogpt_trace_submit", default=None)


def enabled() -> bool:
    return _provider is not None and _pid == os.getpid()


def setup(settings: Settings, service: str) -> bool:
    """Export this process's spans to the configured OTLP endpoint; False (and nothing done) without one.
    Idempotent; call it in the process that makes the spans (after a fork, not before)."""
    global _provider, _pid
    endpoint = settings.otlp_traces_endpoint
    if endpoint is None:
        return False
    with _lock:
        if enabled():
            return True
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create(
            {"service.name": settings.otel_service_name or service, "service.namespace": "autogpt-workers"}
        )
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        if _provider is None:  # the global one can be set once per process (instrumentations default to it)
            trace.set_tracer_provider(provider)
        _provider, _pid = provider, os.getpid()
    return True


def shutdown() -> None:
    """Export what is buffered and stop (a prefork child's exit; the SDK also does it at interpreter exit)."""
    if enabled():
        assert _provider is not None
        _provider.shutdown()


def tracer() -> trace.Tracer:
    if _provider is None:
        return trace.NoOpTracer()
    return _provider.get_tracer(INSTRUMENTATION)


def instrument_fastapi(app: FastAPI) -> None:
    """A SERVER span per request (the official instrumentation), health and metrics scrapes excluded."""
    if not enabled():
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=_provider, excluded_urls="healthz,metrics", exclude_spans=["receive", "send"]
    )


@contextlib.contextmanager
def span(
    name: str,
    *,
    parent: Context | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[trace.Span | None]:
    """A current span (None when tracing is off); an exception escaping it marks it as an error."""
    if not enabled():
        yield None
        return
    with tracer().start_as_current_span(name, context=parent, kind=kind, attributes=attributes) as current:
        yield current


@contextlib.contextmanager
def submit_span(tenant: str) -> Iterator[trace.Span | None]:
    """The API's ``autogpt.submit`` span around ``submit_task``: the context stored with the new task
    (``current_traceparent``) and sent with its first wake-up. Other wake-ups the API publishes (resume, approve,
    an Agent Protocol step) carry no trace headers: their phases stay in the task's trace too."""
    with span("autogpt.submit", attributes={"autogpt.tenant": tenant}) as current:
        token = _submitting.set(otel_context.get_current()) if current is not None else None
        try:
            yield current
        finally:
            if token is not None:
                _submitting.reset(token)


def submit_context() -> Context | None:
    """Inside ``submit_span``: its context (what the wake-up published there carries); None elsewhere."""
    return _submitting.get()


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, to store with a task; None when tracing is off or no span."""
    if not enabled():
        return None
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get("traceparent")


def context_of(traceparent: str | None) -> Context | None:
    """The context a stored ``traceparent`` names (a remote parent), or None if it names none."""
    if not traceparent:
        return None
    ctx = _W3C.extract({"traceparent": traceparent})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None
