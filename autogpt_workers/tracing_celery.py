"""Traces through Celery: a wake-up carries its task's context in its headers, and each step phase is a span.

Through Celery signals only, so the glue (``tasks``), the runner and the publisher stay as they are:

- ``before_task_publish``: a wake-up gets the W3C ``traceparent`` (and ``tracestate``) of its task. In a worker
  running a phase of task T that is T's context (never the phase's own span: the trace stays flat); a wake-up for
  another task gets none. In the API only the first wake-up, published in ``autogpt.submit``, gets that span's.
- ``task_prerun`` / ``task_postrun``: ``autogpt.think`` / ``autogpt.act`` spans (CONSUMER) made current for the
  phase, so the LLM call nests under them. A think delivery that runs its command itself (``runs_inline``) ends
  its think span at the proposal and opens the act span beside it (``hand_on``, called by the runner).
  Parent: the message's ``traceparent``, else the one stored with the task (``tasks.traceparent``: re-drives and
  admissions publish without one). Attributes: task id, step index, phase, tenant, and the outcome the runner
  returned (``proposed``, ``committed``, ``finished``, ``skipped``, ``fenced``, ``retry``, ``failed``, ...;
  ``error``/``rejected`` when the phase raised).

Nothing is connected unless tracing is configured (``install`` returns False).
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import re
import uuid
from typing import Any

from celery import signals, states
from opentelemetry import context, propagate, trace
from opentelemetry.propagators.textmap import Getter

from autogpt_workers import tracing
from autogpt_workers.config import Settings
from autogpt_workers.contracts import PHASE_TASKS

_PHASE_OF = {name: phase for phase, name in PHASE_TASKS.items()}
_OUTCOME = re.compile(r"[a-z_]+")


@dataclasses.dataclass
class _Phase:
    task_id: str
    parent: context.Context
    span: trace.Span
    token: contextvars.Token[context.Context]
    attributes: dict[str, Any]


_active: contextvars.ContextVar[_Phase | None] = contextvars.ContextVar("autogpt_trace_phase", default=None)


class _RequestGetter(Getter[Any]):
    """Reads propagation fields from a Celery request (message headers become its attributes)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = getattr(carrier, key, None)
        if value is None and isinstance(getattr(carrier, "headers", None), dict):
            value = carrier.headers.get(key)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Any) -> list[str]:
        return []


@functools.lru_cache(maxsize=20_000)
def _task_row(task_id: str) -> tuple[str | None, str] | None:
    """(traceparent, tenant) of a task, read once per process: neither ever changes."""
    from sqlalchemy import select

    from autogpt_workers.runtime import get_runner
    from autogpt_workers.store.models import Task

    with get_runner().ledger.db.session() as s:
        row = s.execute(select(Task.traceparent, Task.tenant_id).where(Task.id == uuid.UUID(task_id))).one_or_none()
    return (row[0], str(row[1])) if row is not None else None


def _lookup(task_id: str) -> tuple[str | None, str] | None:
    try:
        row = _task_row(task_id)
    except Exception:  # a malformed id or the database away: the phase itself will say so
        return None
    if row is None:  # not (yet) in the ledger: do not cache the miss
        _task_row.cache_clear()
    return row


def _start(sender: Any = None, task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    phase = _PHASE_OF.get(getattr(sender, "name", ""))
    if phase is None or not args or not tracing.enabled():
        return
    our_task, step = str(args[0]), args[1] if len(args) > 1 else None
    parent = propagate.extract(getattr(task, "request", None), getter=_RequestGetter())
    row = _lookup(our_task)
    if not trace.get_current_span(parent).get_span_context().is_valid:
        parent = tracing.context_of(row[0] if row else None) or context.Context()
    attributes: dict[str, Any] = {"autogpt.task_id": our_task, "autogpt.phase": phase, "messaging.system": "rabbitmq"}
    if isinstance(step, int):
        attributes["autogpt.step_index"] = step
    if row is not None:
        attributes["autogpt.tenant"] = row[1]
    if task_id:
        attributes["messaging.message.id"] = task_id
    _open(our_task, phase, parent, attributes)


def _open(task_id: str, phase: str, parent: context.Context, attributes: dict[str, Any]) -> None:
    span = tracing.tracer().start_span(f"autogpt.{phase}", context=parent, kind=trace.SpanKind.CONSUMER,
                                       attributes=attributes)
    token = context.attach(trace.set_span_in_context(span, parent))
    _active.set(_Phase(task_id, parent, span, token, attributes))


def hand_on(phase: str, outcome: str) -> None:
    """The phase in progress ended with ``outcome`` and ``phase`` goes on in the same delivery (a command the think
    worker runs itself): end its span and open ``phase``'s beside it, under the same parent. A no-op when no
    phase span is open (tracing off)."""
    current = _active.get()
    if current is None:
        return
    current.span.set_attribute("autogpt.outcome", outcome)
    current.span.end()
    context.detach(current.token)
    _open(current.task_id, phase, current.parent, {**current.attributes, "autogpt.phase": phase})


def outcome_of(retval: Any, state: str | None) -> str:
    """The phase's outcome from what the runner returned (``"committed step 3"`` -> ``committed``)."""
    if state == states.RETRY:
        return "retry"
    if state == states.REJECTED:
        return "rejected"
    if isinstance(retval, BaseException) or state == states.FAILURE:
        return "error"
    match = _OUTCOME.match(retval) if isinstance(retval, str) else None
    return match.group(0) if match else "unknown"


def _end(sender: Any = None, retval: Any = None, state: str | None = None, **_: Any) -> None:
    phase = _active.get()
    if phase is None or _PHASE_OF.get(getattr(sender, "name", "")) is None:
        return
    _active.set(None)
    outcome = outcome_of(retval, state)
    phase.span.set_attribute("autogpt.outcome", outcome)
    if isinstance(retval, BaseException):
        phase.span.record_exception(retval)
        phase.span.set_status(trace.StatusCode.ERROR, f"{type(retval).__name__}: {retval}")
    elif outcome == "failed":
        phase.span.set_status(trace.StatusCode.ERROR, str(retval))
    phase.span.end()
    context.detach(phase.token)


def _inject(body: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is None or not tracing.enabled():
        return
    args = body[0] if isinstance(body, tuple | list) and body and isinstance(body[0], list | tuple) else None
    phase = _active.get()
    if phase is None:  # the API: only the first wake-up, published in the submit span
        submitting = tracing.submit_context()
        if submitting is not None:
            propagate.inject(headers, context=submitting)
    elif args and str(args[0]) == phase.task_id:
        propagate.inject(headers, context=phase.parent)


def install_publisher() -> None:
    """Wake-ups published by this process carry their task's trace context."""
    signals.before_task_publish.connect(_inject, weak=False, dispatch_uid="autogpt-trace-inject")


def install(settings: Settings, service: str, prefork: bool) -> bool:
    """A worker process group: spans per phase, exported from each process that runs tasks (a prefork pool's
    children set up after the fork). False, and nothing connected, when tracing is not configured."""
    if settings.otlp_traces_endpoint is None:
        return False
    if prefork:
        signals.worker_process_init.connect(
            lambda **_: tracing.setup(settings, service), weak=False, dispatch_uid="autogpt-trace-setup"
        )
        signals.worker_process_shutdown.connect(
            lambda **_: tracing.shutdown(), weak=False, dispatch_uid="autogpt-trace-shutdown"
        )
    else:
        tracing.setup(settings, service)
        signals.worker_shutdown.connect(lambda **_: tracing.shutdown(), weak=False, dispatch_uid="autogpt-trace-end")
    install_publisher()
    signals.task_prerun.connect(_start, weak=False, dispatch_uid="autogpt-trace-start")
    signals.task_postrun.connect(_end, weak=False, dispatch_uid="autogpt-trace-end-phase")
    return True
