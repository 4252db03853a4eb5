"""Task id, step index, phase and tenant on every log line of a step, Celery's own lines included.

Installed in a worker process group (``install_step_logging``), through Celery signals:

- ``setup_logging``: a receiver tells Celery the logging is configured (``logs.configure_logging``), so it adds
  no handler of its own and redirects nothing: its lines go through the JSON formatter like ours.
- ``task_prerun``: binds ``task_id``, ``step``, ``phase`` (from the wake-up's arguments) and ``tenant`` (from the
  ledger: one primary-key read per task, cached, since a task never changes tenant) into structlog's contextvars.
- ``task_postrun``: unbinds them. Celery logs "Task ... succeeded" (or failed, retry) before ``task_postrun``,
  so those lines carry them too.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from typing import Any

import structlog

from autogpt_workers.contracts import PHASE_TASKS

_PHASE_OF = {name: phase for phase, name in PHASE_TASKS.items()}
STEP_FIELDS = ("task_id", "step", "phase", "tenant")


@functools.lru_cache(maxsize=20_000)
def _tenant_of(task_id: str) -> str | None:
    from sqlalchemy import select

    from autogpt_workers.runtime import get_runner
    from autogpt_workers.store.models import Task

    with get_runner().ledger.db.session() as s:
        tenant = s.execute(select(Task.tenant_id).where(Task.id == uuid.UUID(task_id))).scalar_one_or_none()
    return str(tenant) if tenant is not None else None


def step_fields(task_name: str | None, args: Any) -> dict[str, Any]:
    """The log fields of a step wake-up ``autogpt.think|act(task_id, step_index)``; {} for anything else."""
    phase = _PHASE_OF.get(task_name or "")
    if phase is None or not args:
        return {}
    fields: dict[str, Any] = {"task_id": str(args[0]), "phase": phase}
    if len(args) > 1:
        with contextlib.suppress(TypeError, ValueError):
            fields["step"] = int(args[1])
    return fields


def _tenant(task_id: str) -> str | None:
    try:
        tenant = _tenant_of(task_id)
    except Exception:  # a malformed id or the database away: the step itself will say so
        return None
    if tenant is None:  # not (yet) in the ledger: do not cache the miss
        _tenant_of.cache_clear()
    return tenant


def _bind(sender: Any = None, args: Any = None, **_: Any) -> None:
    fields = step_fields(getattr(sender, "name", None), args)
    if not fields:
        return
    tenant = _tenant(fields["task_id"])
    if tenant is not None:
        fields["tenant"] = tenant
    structlog.contextvars.bind_contextvars(**fields)


def _unbind(**_: Any) -> None:
    structlog.contextvars.unbind_contextvars(*STEP_FIELDS)


def _logging_is_configured(**_: Any) -> bool:
    return True


def install_step_logging() -> None:
    from celery import signals

    signals.setup_logging.connect(_logging_is_configured, weak=False, dispatch_uid="autogpt-log-setup")
    signals.task_prerun.connect(_bind, weak=False, dispatch_uid="autogpt-log-step-bind")
    signals.task_postrun.connect(_unbind, weak=False, dispatch_uid="autogpt-log-step-unbind")
