"""The submit's one statement: the task row, its first step, its ``task.queued`` event, its first wake-up (outbox)
and, when given, its options, inserted by one PostgreSQL statement (data-modifying CTEs), built once.

Building the ORM inserts of a submit (and their cache keys) cost more CPU than PostgreSQL spent running them, and
each was a round trip; this statement is compiled once, then only bound (see ``hot_sql`` for the same pattern on
the worker side). It also returns what the API answers with (the row's ``created_at``) and the tenant's own cap
(``tenants.max_running``), so a submit under no cap needs no further query.

The foreign keys of the step, event, outbox and options rows are checked at the end of the statement, when the
task row exists. The webhook trigger on ``task_events`` may not see the options row written by the same statement,
so this variant with options is only used when the task has no webhook (``Ledger.create_task``).

``CREATE_TASK_ALONE`` / ``CREATE_TASK_ALONE_WITH_OPTIONS`` are the same statements for a transaction of their own
(``Ledger.create_task_alone``, executed in autocommit: one round trip instead of three, BEGIN, the statement and
COMMIT), and server-side prepared statements on the API's connections (``phase_sql.PhaseStatement``; in ``python -m
bench.submit_micro`` PostgreSQL's CPU per submit fell from 0.57 to 0.29 ms): their task row is only inserted if the
tenant has no running-task cap of its own, since a capped tenant's submit decides in the same transaction whether the
task waits (``admission.hold_if_capped``). Nothing written and no row means: take the transaction (the tenant has a
cap, or the idempotency key is taken).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import TextClause, bindparam, text

from autogpt_workers.store.gateway import TaskOptions
from autogpt_workers.store.models import Outbox, Task, TaskEvent
from autogpt_workers.store.phase_sql import PhaseStatement

if TYPE_CHECKING:
    from autogpt_workers.store.ledger import Wakeup

# the columns a submit may set, with the value an absent key stands for (the model's own defaults)
TASK_DEFAULTS: dict[str, Any] = {
    "tenant_id": "default",
    "goal": None,
    "priority": 5,
    "budget": {},
    "allowed_commands": None,
    "metadata_": {},
    "idempotency_key": None,
    "request_hash": None,
    "model": None,
    "approval": "never",
    "deadline": None,
    "traceparent": None,
}
OPTION_COLUMNS = ("source", "base_priority", "profile", "webhook_url", "webhook_events", "additional_input")

_task = Task.__table__.c
_options = TaskOptions.__table__.c


# the alone variants insert the task only for a tenant without a cap of its own (INSERT ... SELECT: PostgreSQL types
# the select list's parameters from the target columns, as it does for VALUES)
_ALONE_GATE = " WHERE NOT EXISTS (SELECT 1 FROM tenants WHERE id = :p_tenant_id AND max_running IS NOT NULL)"


def _task_params() -> list[Any]:
    params = [bindparam("p_id", type_=_task.id.type)]
    for key in TASK_DEFAULTS:
        column = _task.metadata if key == "metadata_" else _task[key]
        params.append(bindparam(f"p_{key}", type_=column.type))
    params.append(bindparam("p_event_data", type_=TaskEvent.__table__.c.data.type))
    return params


def _statement(with_options: bool) -> TextClause:
    params = _task_params()
    if with_options:
        params += [bindparam(f"p_{name}", type_=_options[name].type) for name in OPTION_COLUMNS]
    return text(_sql(with_options, alone=False)).bindparams(*params)


def _sql(with_options: bool, alone: bool) -> str:
    options = ""
    if with_options:
        options = (
            ", opt AS (INSERT INTO task_options (task_id, source, base_priority, profile, webhook_url, "
            "webhook_events, additional_input) SELECT id, :p_source, :p_base_priority, :p_profile, :p_webhook_url, "
            ":p_webhook_events, :p_additional_input FROM t)"
        )
    outbox = Outbox.__tablename__
    rows, gate = ("SELECT ", _ALONE_GATE) if alone else ("VALUES (", ")")
    sql = (
        "WITH t AS ("
        "INSERT INTO tasks (id, tenant_id, goal, priority, budget, allowed_commands, metadata, idempotency_key, "
        f"request_hash, model, approval, deadline, traceparent) {rows}:p_id, :p_tenant_id, :p_goal, :p_priority, "
        ":p_budget, :p_allowed_commands, :p_metadata_, :p_idempotency_key, :p_request_hash, :p_model, :p_approval, "
        f":p_deadline, :p_traceparent{gate} "
        # a NULL key never conflicts: without a key this clause changes nothing
        "ON CONFLICT ON CONSTRAINT uq_tasks_tenant_idempotency_key DO NOTHING "
        "RETURNING id, created_at), "
        "s AS (INSERT INTO steps (task_id, step_index) SELECT id, 0 FROM t), "
        "e AS (INSERT INTO task_events (task_id, kind, step_index, data) "
        "SELECT id, 'task.queued', NULL, :p_event_data FROM t), "
        f"o AS (INSERT INTO {outbox} (task_id, step_index, phase, priority) SELECT id, 0, 'think', :p_priority FROM t "
        "ON CONFLICT ON CONSTRAINT uq_outbox_task_step_phase DO UPDATE SET published_at = NULL, created_at = now() "
        f"RETURNING id){options} "
        "SELECT t.id, t.created_at, o.id, (SELECT max_running FROM tenants WHERE tenants.id = :p_tenant_id) "
        "FROM t, o"
    )
    return sql


CREATE_TASK = _statement(with_options=False)
CREATE_TASK_WITH_OPTIONS = _statement(with_options=True)
# the API's: server-side prepared on its connections (``phase_sql.prepare_submit_on_connect``) unless
# ``AUTOGPT_DB_PREPARED_STATEMENTS=false``; PostgreSQL then plans these five CTEs once per connection, not per submit
CREATE_TASK_ALONE = PhaseStatement("autogpt_submit_alone", _sql(with_options=False, alone=True))
CREATE_TASK_ALONE_WITH_OPTIONS = PhaseStatement("autogpt_submit_alone_options", _sql(with_options=True, alone=True))

# the group commit's (``submit.submit_task`` through ``group_commit.GroupCommit``): the tasks of several submits in one
# statement, each as ``CREATE_TASK_ALONE_WITH_OPTIONS`` writes one (the same rows; a tenant with a cap of its own, or a
# taken idempotency key, writes nothing and returns no row), their values as one JSON array (``batch_rows``): one
# parameter, so one prepared statement serves every batch size. ``ord`` is the order the tasks are inserted in (the
# caller sorts them by idempotency key, so two batches that race for the same keys wait in the same order instead of
# deadlocking). ``jsonb_to_recordset`` reads a JSON null as SQL NULL: a JSONB column gets JSON's null back, as the
# one-task statements store a ``None`` there. Tasks with a webhook never come here (the trigger)
_BATCH_COLUMNS = (
    "ord integer, id uuid, tenant_id text, goal text, priority integer, budget jsonb, allowed_commands jsonb, "
    "metadata jsonb, idempotency_key text, request_hash text, model text, approval jsonb, deadline timestamptz, "
    "traceparent text, source text, base_priority integer, profile text, webhook_events text[], additional_input jsonb"
)
_BATCH_SQL = (
    f"WITH i AS (SELECT * FROM jsonb_to_recordset(:p_rows) AS i({_BATCH_COLUMNS})), "
    "t AS ("
    "INSERT INTO tasks (id, tenant_id, goal, priority, budget, allowed_commands, metadata, idempotency_key, "
    "request_hash, model, approval, deadline, traceparent) "
    "SELECT id, tenant_id, goal, priority, COALESCE(budget, 'null'), COALESCE(allowed_commands, 'null'), "
    "COALESCE(metadata, 'null'), idempotency_key, request_hash, model, COALESCE(approval, 'null'), deadline, "
    "traceparent FROM i "
    "WHERE NOT EXISTS (SELECT 1 FROM tenants WHERE tenants.id = i.tenant_id AND max_running IS NOT NULL) "
    "ORDER BY ord "
    "ON CONFLICT ON CONSTRAINT uq_tasks_tenant_idempotency_key DO NOTHING "
    "RETURNING id, created_at, priority), "
    "s AS (INSERT INTO steps (task_id, step_index) SELECT id, 0 FROM t), "
    "e AS (INSERT INTO task_events (task_id, kind, step_index, data) "
    "SELECT id, 'task.queued', NULL, jsonb_build_object('priority', priority) FROM t), "
    f"o AS (INSERT INTO {Outbox.__tablename__} (task_id, step_index, phase, priority) "
    "SELECT id, 0, 'think', priority FROM t "
    "ON CONFLICT ON CONSTRAINT uq_outbox_task_step_phase DO UPDATE SET published_at = NULL, created_at = now() "
    "RETURNING id, task_id), "
    "opt AS (INSERT INTO task_options (task_id, source, base_priority, profile, webhook_url, webhook_events, "
    "additional_input) SELECT i.id, i.source, i.base_priority, i.profile, NULL, i.webhook_events, "
    "COALESCE(i.additional_input, 'null') "
    "FROM t JOIN i ON i.id = t.id) "
    "SELECT t.id, t.created_at, o.id FROM t JOIN o ON o.task_id = t.id"
)
CREATE_TASKS_ALONE = PhaseStatement("autogpt_submit_batch", _BATCH_SQL)
SUBMIT_STATEMENTS = (CREATE_TASK_ALONE, CREATE_TASK_ALONE_WITH_OPTIONS, CREATE_TASKS_ALONE)


def batch_rows(params: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``CREATE_TASKS_ALONE``'s ``p_rows`` for the one-task statements' parameters (``Ledger._create_params``, with
    options), in the order given: JSON values (ids and times as text)."""
    rows = []
    for ord_, p in enumerate(params):
        row: dict[str, Any] = {"ord": ord_}
        for key, value in p.items():
            if key == "p_event_data":  # the statement builds it from the priority
                continue
            if isinstance(value, uuid.UUID):
                value = str(value)
            elif isinstance(value, datetime):
                value = value.isoformat()
            row[key[2:].rstrip("_")] = value  # p_metadata_ -> metadata
        rows.append(row)
    return rows

EXISTING_TASK = text(
    "SELECT id, request_hash FROM tasks WHERE tenant_id = :p_tenant_id AND idempotency_key = :p_idempotency_key"
)


class CreatedTask(NamedTuple):
    """What ``Ledger.create_task`` made: ``[0]`` the task id, ``[1]`` its first wake-up (as before), the row's
    ``created_at`` and the tenant's own running-task cap (``None``: none set, or not read)."""

    task_id: uuid.UUID
    wakeup: Wakeup
    created_at: datetime | None
    tenant_cap: int | None
