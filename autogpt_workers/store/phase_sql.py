"""A step phase's writes in one statement each (data-modifying CTEs), for the common case of a running task.

A step used to cost about seventeen statements over three transactions; each statement is a round trip, a parse
and plan in PostgreSQL and a few hundred microseconds of Python in the worker (``make bench`` found the ledger's
statements to be a third of the think worker's CPU). Here each transaction is one or two statements:

* ``CLAIM_READ``: the task row (locked first, ``FOR NO KEY UPDATE``) and the step row (locked after it, through
  the lateral join: the lock order of ``ledger``'s docstring), in one round trip.
* ``CLAIM_WRITE[phase]``: the lease on the step, the wake-up's outbox row marked published (receiving it proves
  it was), and what the phase needs: for think the committed steps from ``p_history_from`` on, for act the
  step's proposal. One row per history step (or a single row with NULL history columns).
* ``PROPOSE_ACTING`` / ``PROPOSE_WAKE``: the proposal (fenced on the token), the task's token and cost counters,
  the ``step.proposed`` event and either the act phase claimed under the same lease or the act wake-up.
* ``COMMIT_NEXT``: the step's outcome (fenced on the token), the task's step count, the ``step.completed`` and
  ``artifact.written`` events (in that order), the artifacts, the next step and its think wake-up.

A sub-statement that depends on the fenced update reads its ``RETURNING`` rows, so a fenced call changes nothing
and returns NULL. The ledger uses these only where the task's state (read under its lock) makes the outcome
certain: ``running``/``queued``, not the last step, no approval; every other transition takes the general path.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Float, Integer, String, Text, TextualSelect, Uuid, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from autogpt_workers.store import hot_sql

_UUID = Uuid()
_TASK_AT = (bindparam("p_task_id", type_=_UUID), bindparam("p_step_index", type_=Integer))

# the claim's read: the task's state and run columns (``hot_sql.LOCK_TASK_RUN``), then the step's lease columns
# (``hot_sql.CLAIM_READ_STEP``, NULL if the step does not exist); no row if the task does not
CLAIM_READ = hot_sql.claim_read()

_HISTORY_COLUMNS: dict[str, Any] = {
    "queued_at": DateTime(timezone=True),
    "h_step_index": Integer,
    "h_proposal": JSONB,
    "h_output": Text,
    "h_is_error": Boolean,
    "h_is_last": Boolean,
}


def _claim_write(phase: str) -> TextualSelect:
    started = "think_started_at" if phase == "think" else "act_started_at"
    if phase == "think":
        run = """
        LEFT JOIN LATERAL (
            SELECT step_index, proposal, output, is_error, is_last FROM steps
            WHERE task_id = :p_task_id AND step_index < :p_step_index AND step_index >= :p_history_from
              AND status = 'completed'
        ) h ON true
        ORDER BY h.step_index"""
    else:
        run = """
        LEFT JOIN LATERAL (
            SELECT NULL::int AS step_index, proposal, NULL::text AS output, false AS is_error, false AS is_last
            FROM steps WHERE task_id = :p_task_id AND step_index = :p_step_index
        ) h ON true"""
    statement = text(
        f"""
        WITH claimed AS (
            UPDATE steps SET status = :p_status, lease_owner = :p_owner, lease_token = :p_token,
                lease_expires_at = :p_expires, deliveries = deliveries + 1, {started} = :p_now
            WHERE task_id = :p_task_id AND step_index = :p_step_index
            RETURNING id
        ), wakeup AS (
            UPDATE outbox SET published_at = coalesce(published_at, now())
            WHERE task_id = :p_task_id AND step_index = :p_step_index AND phase = :p_phase
              AND EXISTS (SELECT 1 FROM claimed)
            RETURNING created_at
        )
        SELECT (SELECT created_at FROM wakeup) AS queued_at, h.step_index AS h_step_index,
            h.proposal AS h_proposal, h.output AS h_output, h.is_error AS h_is_error, h.is_last AS h_is_last
        FROM (SELECT 1 FROM claimed) c {run}
        """
    )
    return statement.bindparams(
        *_TASK_AT,
        bindparam("p_token", type_=_UUID),
        bindparam("p_expires", type_=DateTime(timezone=True)),
        bindparam("p_now", type_=DateTime(timezone=True)),
        bindparam("p_status", type_=String),
        bindparam("p_owner", type_=String),
        bindparam("p_phase", type_=String),
        *([bindparam("p_history_from", type_=Integer)] if phase == "think" else []),
    ).columns(**_HISTORY_COLUMNS)


CLAIM_WRITE = {"think": _claim_write("think"), "act": _claim_write("act")}

_PROPOSAL_SET = """
    proposal = CAST(:p_proposal AS jsonb) || jsonb_build_object('think_deliveries', deliveries),
    command = :p_command, arguments = CAST(:p_arguments AS jsonb), prompt_tokens = :p_prompt_tokens,
    completion_tokens = :p_completion_tokens, cost_usd = :p_cost, model = :p_model, llm_calls = llm_calls + 1,
    proposed_at = now()"""
_PROPOSAL_REST = """
    spent AS (
        UPDATE tasks SET prompt_tokens = prompt_tokens + :p_prompt_tokens,
            completion_tokens = completion_tokens + :p_completion_tokens, cost_usd = cost_usd + :p_cost,
            llm_calls = llm_calls + 1
        WHERE id = :p_task_id AND EXISTS (SELECT 1 FROM proposed)
    ), event AS (
        INSERT INTO task_events (task_id, kind, step_index, data)
        SELECT :p_task_id, 'step.proposed', :p_step_index, CAST(:p_event_data AS jsonb) FROM proposed
    )"""
_PROPOSAL_PARAMS = (
    *_TASK_AT,
    bindparam("p_token", type_=_UUID),
    bindparam("p_proposal", type_=JSONB),
    bindparam("p_arguments", type_=JSONB),
    bindparam("p_event_data", type_=JSONB),
    bindparam("p_command", type_=String),
    bindparam("p_model", type_=String),
    bindparam("p_prompt_tokens", type_=Integer),
    bindparam("p_completion_tokens", type_=Integer),
    bindparam("p_cost", type_=Float),
)

# the proposal and the act phase claimed at once under the same lease (the think worker runs the command itself)
PROPOSE_ACTING = (
    text(
        f"""
        WITH proposed AS (
            UPDATE steps SET {_PROPOSAL_SET}, status = 'acting', lease_expires_at = :p_expires,
                deliveries = deliveries + 1, act_started_at = now()
            WHERE task_id = :p_task_id AND step_index = :p_step_index AND lease_token = :p_token
              AND status = 'thinking'
            RETURNING id
        ), {_PROPOSAL_REST}
        SELECT (SELECT id FROM proposed) AS step_id, NULL::bigint AS outbox_id
        """
    )
    .bindparams(*_PROPOSAL_PARAMS, bindparam("p_expires", type_=DateTime(timezone=True)))
    .columns(step_id=BigInteger, outbox_id=BigInteger)
)

# the proposal, the lease released, and the act wake-up (the act queue runs the command)
PROPOSE_WAKE = (
    text(
        f"""
        WITH proposed AS (
            UPDATE steps SET {_PROPOSAL_SET}, status = 'proposed', lease_owner = NULL, lease_token = NULL,
                lease_expires_at = NULL
            WHERE task_id = :p_task_id AND step_index = :p_step_index AND lease_token = :p_token
              AND status = 'thinking'
            RETURNING id
        ), {_PROPOSAL_REST}, wakeup AS (
            INSERT INTO outbox (task_id, step_index, phase, priority)
            SELECT :p_task_id, :p_step_index, 'act', :p_priority FROM proposed
            ON CONFLICT ON CONSTRAINT uq_outbox_task_step_phase DO UPDATE SET published_at = NULL, created_at = now()
            RETURNING id
        )
        SELECT (SELECT id FROM proposed) AS step_id, (SELECT id FROM wakeup) AS outbox_id
        """
    )
    .bindparams(*_PROPOSAL_PARAMS, bindparam("p_priority", type_=Integer))
    .columns(step_id=BigInteger, outbox_id=BigInteger)
)

# a step that is not the last one, of a task that goes on: its outcome, its artifacts, the next step's wake-up
COMMIT_NEXT = (
    text(
        """
        WITH done AS (
            UPDATE steps SET status = 'completed', output = :p_output, is_error = :p_is_error, is_last = false,
                committed_at = now(), lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
            WHERE task_id = :p_task_id AND step_index = :p_step_index AND lease_token = :p_token
              AND status = 'acting'
            RETURNING id
        ), counted AS (
            UPDATE tasks SET steps_completed = steps_completed + 1
            WHERE id = :p_task_id AND EXISTS (SELECT 1 FROM done)
        ), files AS (
            SELECT f.path, f.size, f.sha256, f.n
            FROM unnest(CAST(:p_paths AS text[]), CAST(:p_sizes AS bigint[]), CAST(:p_shas AS text[]))
                WITH ORDINALITY AS f(path, size, sha256, n)
            WHERE EXISTS (SELECT 1 FROM done)
        ), events AS (
            INSERT INTO task_events (task_id, kind, step_index, data)
            SELECT :p_task_id, e.kind, :p_step_index, e.data FROM (
                SELECT 0 AS n, 'step.completed' AS kind, CAST(:p_event_data AS jsonb) AS data FROM done
                UNION ALL
                SELECT n, 'artifact.written', jsonb_build_object('relative_path', path, 'size_bytes', size)
                FROM files
            ) e ORDER BY e.n
        ), stored AS (
            INSERT INTO artifacts (id, task_id, step_index, relative_path, size_bytes, sha256)
            SELECT gen_random_uuid(), :p_task_id, :p_step_index, path, size, sha256 FROM files
            ON CONFLICT ON CONSTRAINT uq_artifacts_task_path DO UPDATE SET step_index = excluded.step_index,
                size_bytes = excluded.size_bytes, sha256 = excluded.sha256, modified_at = now()
        ), next_step AS (
            INSERT INTO steps (task_id, step_index) SELECT :p_task_id, :p_step_index + 1 FROM done
            ON CONFLICT DO NOTHING
        ), wakeup AS (
            INSERT INTO outbox (task_id, step_index, phase, priority)
            SELECT :p_task_id, :p_step_index + 1, 'think', :p_priority FROM done
            ON CONFLICT ON CONSTRAINT uq_outbox_task_step_phase DO UPDATE SET published_at = NULL, created_at = now()
            RETURNING id
        )
        SELECT (SELECT id FROM done) AS step_id, (SELECT id FROM wakeup) AS outbox_id
        """
    )
    .bindparams(
        *_TASK_AT,
        bindparam("p_token", type_=_UUID),
        bindparam("p_output", type_=Text),
        bindparam("p_is_error", type_=Boolean),
        bindparam("p_event_data", type_=JSONB),
        bindparam("p_paths", type_=ARRAY(Text)),
        bindparam("p_sizes", type_=ARRAY(BigInteger)),
        bindparam("p_shas", type_=ARRAY(Text)),
        bindparam("p_priority", type_=Integer),
    )
    .columns(step_id=BigInteger, outbox_id=BigInteger)
)
