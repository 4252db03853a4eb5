"""The tenant on every log line of a step (the Celery glue binds task id, step index and phase; the tenant lives
in the ledger). Installed in a worker process group with its metrics hooks; one primary-key read per task,
cached, since a task never changes tenant."""

from __future__ import annotations

import functools
import uuid
from typing import Any

import structlog

from autogpt_workers.contracts import ACT_TASK, THINK_TASK

_STEP_TASKS = frozenset({THINK_TASK, ACT_TASK})


@functools.lru_cache(maxsize=20_000)
def _tenant_of(task_id: str) -> str | None:
    from sqlalchemy import select

    from autogpt_workers.runtime import get_runner
    from autogpt_workers.store.models import Task

    with get_runner().ledger.db.session() as s:
        tenant = s.execute(select(Task.tenant_id).where(Task.id == uuid.UUID(task_id))).scalar_one_or_none()
    return str(tenant) if tenant is not None else None


def _bind(sender: Any = None, args: Any = None, **_: Any) -> None:
    if getattr(sender, "name", None) not in _STEP_TASKS or not args:
        return
    try:
        tenant = _tenant_of(str(args[0]))
    except Exception:  # a malformed id or the database away: the step itself will say so
        return
    if tenant is None:  # not (yet) in the ledger: do not cache the miss
        _tenant_of.cache_clear()
        return
    structlog.contextvars.bind_contextvars(tenant=tenant)


def _unbind(**_: Any) -> None:
    structlog.contextvars.unbind_contextvars("tenant")


def install_tenant_logging() -> None:
    from celery import signals

    signals.task_prerun.connect(_bind, weak=False, dispatch_uid="autogpt-log-tenant-bind")
    signals.task_postrun.connect(_unbind, weak=False, dispatch_uid="autogpt-log-tenant-unbind")
