"""Task id, step index, phase and tenant on every log line of a step, Celery's own lines included.

Installed in a worker process group (``install_step_logging``), through Celery signals:

- ``setup_logging``: a receiver tells Celery the logging is configured (``logs.configure_logging``), so it adds
  no handler of its own and redirects nothing: its lines go through the JSON formatter like ours.
- ``task_prerun``: binds ``task_id``, ``step``, ``phase`` (from the wake-up's arguments) and ``tenant`` into
  structlog's contextvars. The tenant comes from what this process's claims have read (``task_facts``); on a
  task's first delivery to the process the step runner binds it right after its claim (``bind_tenant``), so
  every line from the claim on carries it, and no line costs a read of the ledger.
- ``task_postrun``: unbinds them. Celery logs "Task ... succeeded" (or failed, retry) before ``task_postrun``,
  so those lines carry them too.
"""

from __future__ import annotations

import contextlib
from typing import Any

import structlog

from autogpt_workers.contracts import PHASE_TASKS

_PHASE_OF = {name: phase for phase, name in PHASE_TASKS.items()}
STEP_FIELDS = ("task_id", "step", "phase", "tenant")


def _tenant_of(task_id: str) -> str | None:
    """The task's tenant if this process has claimed it before (``task_facts``); no read of the ledger here."""
    from autogpt_workers.runtime import get_runner

    facts = get_runner().facts.known(task_id)
    return facts.tenant if facts is not None else None


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
        return _tenant_of(task_id)
    except Exception:  # the runner cannot be built: the step itself will say so
        return None


def bind_tenant(tenant: str) -> None:
    """Add the tenant to the log context of the step phase running in this thread, if one was bound at prerun (a
    task's first delivery to this process: its claim has just read the tenant). Outside a step, nothing."""
    bound = structlog.contextvars.get_contextvars()
    if "task_id" in bound and bound.get("tenant") != tenant:
        structlog.contextvars.bind_contextvars(tenant=tenant)


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
