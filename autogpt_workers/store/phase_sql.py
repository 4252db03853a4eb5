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

The proposal and the commit run as ``PROPOSE_ACTING_ALONE`` / ``PROPOSE_WAKE_ALONE`` / ``COMMIT_NEXT_ALONE``:
the same statements with the task's lock (``LOCK_TASK``'s) taken in a first CTE and their writes gated on the task
running, each executed alone in autocommit (``run_alone``): one round trip instead of four (BEGIN, the lock, the
statement, COMMIT). A statement whose task was not running writes nothing and says so (the task's status comes
back); the ledger then takes the general path in a transaction. The plain variants serve a transaction that holds
more (``Ledger.propose_and_commit``, a pure step).

Each is also a server-side prepared statement (``PREPARE`` on every new connection of the workers' engine,
``EXECUTE`` per call; ``Database.from_url(..., prepare=...)``): PostgreSQL plans these CTEs once per connection
instead of per call (about 100 microseconds of its CPU each), and the worker binds six positional values instead
of going through SQLAlchemy's statement cache and bind processors. ``AUTOGPT_DB_PREPARED_STATEMENTS=false``
turns it off (a PgBouncer in transaction pooling mode does not keep a session's prepared statements).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg2.extras import Json
from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    TextClause,
    Uuid,
    bindparam,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.exc import MultipleResultsFound, NoResultFound
from sqlalchemy.types import TypeEngine

from autogpt_workers.store import hot_sql
from autogpt_workers.store.db import Database

_PARAM = re.compile(r"(?<![:\w]):(p_\w+)")
# bind types: (SQLAlchemy's, for the text clause; PostgreSQL's, for PREPARE)
_TYPES: dict[str, tuple[TypeEngine[Any], str]] = {
    "p_task_id": (Uuid(), "uuid"),
    "p_step_index": (Integer(), "integer"),
    "p_history_from": (Integer(), "integer"),
    "p_max_deliveries": (Integer(), "integer"),
    "p_token": (Uuid(), "uuid"),
    "p_expires": (DateTime(timezone=True), "timestamptz"),
    "p_now": (DateTime(timezone=True), "timestamptz"),
    "p_status": (String(), "text"),
    "p_owner": (String(), "text"),
    "p_phase": (String(), "text"),
    "p_proposal": (JSONB(), "jsonb"),
    "p_arguments": (JSONB(), "jsonb"),
    "p_event_data": (JSONB(), "jsonb"),
    "p_command": (String(), "text"),
    "p_model": (String(), "text"),
    "p_prompt_tokens": (Integer(), "integer"),
    "p_completion_tokens": (Integer(), "integer"),
    "p_cost": (Float(), "double precision"),
    "p_priority": (Integer(), "integer"),
    "p_output": (Text(), "text"),
    "p_is_error": (Boolean(), "boolean"),
    "p_paths": (ARRAY(Text()), "text[]"),
    "p_sizes": (ARRAY(BigInteger()), "bigint[]"),
    "p_shas": (ARRAY(Text()), "text[]"),
    # the submit's (``submit_sql``): the task's columns and its options
    "p_id": (Uuid(), "uuid"),
    "p_tenant_id": (String(), "text"),
    "p_goal": (Text(), "text"),
    "p_budget": (JSONB(), "jsonb"),
    "p_allowed_commands": (JSONB(), "jsonb"),
    "p_metadata_": (JSONB(), "jsonb"),
    "p_idempotency_key": (String(), "text"),
    "p_request_hash": (String(), "text"),
    "p_approval": (JSONB(), "jsonb"),
    "p_deadline": (DateTime(timezone=True), "timestamptz"),
    "p_traceparent": (String(), "text"),
    "p_source": (String(), "text"),
    "p_base_priority": (Integer(), "integer"),
    "p_profile": (String(), "text"),
    "p_webhook_url": (Text(), "text"),
    "p_webhook_events": (ARRAY(String()), "text[]"),
    "p_additional_input": (JSONB(), "jsonb"),
    "p_rows": (JSONB(), "jsonb"),  # the group commit's tasks (``submit_sql.CREATE_TASKS_ALONE``)
}


@dataclasses.dataclass(frozen=True)
class PhaseStatement:
    """One statement of the hot path: its SQL (with ``:p_...`` parameters) as a text clause and as a prepared
    statement. Rows come back as the driver's values (psycopg2: UUIDs, dicts for JSONB, datetimes)."""

    name: str
    sql: str
    params: tuple[str, ...] = dataclasses.field(init=False)
    clause: TextClause = dataclasses.field(init=False)
    execute_sql: str = dataclasses.field(init=False)  # built once: it runs on every call
    _json: tuple[bool, ...] = dataclasses.field(init=False)  # per parameter: wrapped as JSON for psycopg2

    def __post_init__(self) -> None:
        names = tuple(dict.fromkeys(_PARAM.findall(self.sql)))
        object.__setattr__(self, "params", names)
        clause = text(self.sql).bindparams(*(bindparam(n, type_=_TYPES[n][0]) for n in names))
        object.__setattr__(self, "clause", clause)
        object.__setattr__(self, "execute_sql", f"EXECUTE {self.name} ({', '.join(['%s'] * len(names))})")
        object.__setattr__(self, "_json", tuple(_TYPES[n][1] == "jsonb" for n in names))

    @property
    def prepare_sql(self) -> str:
        position = {n: f"${i}" for i, n in enumerate(self.params, 1)}
        types = ", ".join(_TYPES[n][1] for n in self.params)
        return f"PREPARE {self.name} ({types}) AS " + _PARAM.sub(lambda m: position[m.group(1)], self.sql)

    def args(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(Json(values[n]) if js else values[n] for n, js in zip(self.params, self._json, strict=True))


def run(
    conn: Connection, statement: PhaseStatement, values: Mapping[str, Any], prepared: bool
) -> Any:  # a CursorResult; its rows are tuples of the driver's values
    """Execute one phase statement on the transaction's connection: its prepared form when the engine prepared it
    on every connection (``prepared``), else its text clause. The prepared form runs on the DBAPI cursor: SQLAlchemy's
    execution context and result metadata for driver SQL cost a fifth of a step's ledger CPU in the worker
    (``bench.ledger_micro``: 1.6 against 1.25 ms per step), and these statements need neither; an error still goes
    through SQLAlchemy's handling, so callers see its exceptions and a dead connection is invalidated."""
    if prepared:
        return _execute_raw(conn, statement.execute_sql, statement.args(values))
    return conn.execute(statement.clause, values)


class _Rows:
    """The rows of a raw execution, with the three accessors the ledger uses of a ``CursorResult``."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows

    def all(self) -> list[Any]:
        return self.rows

    def one(self) -> Any:
        if len(self.rows) != 1:
            raise NoResultFound("expected one row") if not self.rows else MultipleResultsFound("expected one row")
        return self.rows[0]

    def one_or_none(self) -> Any:
        if len(self.rows) > 1:
            raise MultipleResultsFound("expected at most one row")
        return self.rows[0] if self.rows else None


def _execute_raw(conn: Connection, sql: str, args: tuple[Any, ...]) -> _Rows:
    """``EXECUTE`` on the transaction's DBAPI connection; its rows fetched."""
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql, args)
        return _Rows(list(cursor.fetchall()) if cursor.description is not None else [])
    except Exception as exc:
        conn._handle_dbapi_exception(exc, sql, args, cursor, None)  # wraps it, invalidates on a disconnect
        raise
    finally:
        cursor.close()


def run_alone(db: Database, statement: PhaseStatement, values: Mapping[str, Any]) -> _Rows:
    """Execute one statement as a transaction of its own, its rows fetched. Prepared: in autocommit on a pooled
    DBAPI connection, one round trip (a transaction's BEGIN and COMMIT are two more, and the Python around them).
    Otherwise in a transaction of the engine's."""
    if not db.prepared_statements:
        with db.core_transaction() as s:
            return _Rows(list(run(s.connection(), statement, values, False).all()))
    with db.autocommit() as conn:
        return _execute_raw(conn, statement.execute_sql, statement.args(values))


def prepare_all(dbapi_connection: Any, statements: Sequence[PhaseStatement]) -> None:
    """``PREPARE`` every statement on a new DBAPI connection (a pool ``connect`` event). A prepared statement belongs
    to the session, not to the transaction (a rollback keeps it), and writes nothing: the transaction ends with a
    rollback, as a read does, rather than a commit."""
    with dbapi_connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement.prepare_sql)
    dbapi_connection.rollback()


def prepare_on_connect(db: Database) -> None:
    """Prepare the phase statements on every connection ``db``'s engine opens from now on (call it before the
    first one), and let the ledger execute them by name."""
    event.listen(db.engine, "connect", lambda connection, _record: prepare_all(connection, PHASE_STATEMENTS))
    db.prepared_statements = True


def prepare_submit_on_connect(db: Database, statements: Sequence[PhaseStatement]) -> None:
    """The same for the submit's statements (``submit_sql.SUBMIT_STATEMENTS``), on the API's engine."""
    event.listen(db.engine, "connect", lambda connection, _record: prepare_all(connection, statements))
    db.prepared_submit = True


_RUN_COLUMNS = [*hot_sql.TASK_STATE_COLUMNS, *hot_sql.RUN_TASK_COLUMNS]

# the task's state (``hot_sql.TASK_STATE_COLUMNS``), locked as ``hot_sql.LOCK_TASK`` locks it (SQLAlchemy's
# ``key_share=True`` is ``FOR NO KEY UPDATE``): the first statement of a proposal's and a commit's transaction. Not
# ``FOR KEY SHARE``: that does not conflict with the API's cancel, which updates the task and then locks its steps,
# so a proposal could lock the step, then wait to update the task row the cancel holds (a deadlock, seen in CI)
LOCK_TASK = PhaseStatement(
    "autogpt_lock_task",
    f"SELECT {', '.join(c.name for c in hot_sql.TASK_STATE_COLUMNS)} FROM tasks WHERE id = :p_task_id "
    "FOR NO KEY UPDATE",
)

# the claim's read: the task's state and run columns (``hot_sql.TASK_STATE_COLUMNS`` then ``RUN_TASK_COLUMNS``),
# locked first; then the step's lease columns and its think deliveries, locked after it through the lateral
# subquery, NULL if the step does not exist; last the task's profile (``task_options``, not locked: it never
# changes). No row if the task does not exist.
CLAIM_READ = PhaseStatement(
    "autogpt_claim_read",
    f"""
    WITH t AS (
        SELECT {", ".join(f"{c.name} AS c{i}" for i, c in enumerate(_RUN_COLUMNS))}
        FROM tasks WHERE id = :p_task_id FOR NO KEY UPDATE
    )
    SELECT t.*, s.status, s.lease_token, s.lease_expires_at, s.deliveries,
        CAST(s.proposal ->> '{hot_sql.THINK_DELIVERIES}' AS integer),
        (SELECT profile FROM task_options WHERE task_id = :p_task_id)
    FROM t LEFT JOIN LATERAL (
        SELECT status, lease_token, lease_expires_at, deliveries, proposal FROM steps
        WHERE task_id = :p_task_id AND step_index = :p_step_index FOR UPDATE
    ) s ON true
    """,
)


def _claim_write(phase: str) -> PhaseStatement:
    started = "think_started_at" if phase == "think" else "act_started_at"
    if phase == "think":
        run_rows = """
        LEFT JOIN LATERAL (
            SELECT step_index, proposal, output, is_error, is_last FROM steps
            WHERE task_id = :p_task_id AND step_index < :p_step_index AND step_index >= :p_history_from
              AND status = 'completed'
        ) h ON true
        ORDER BY h.step_index"""
    else:
        run_rows = """
        LEFT JOIN LATERAL (
            SELECT NULL::int AS step_index, proposal, NULL::text AS output, false AS is_error, false AS is_last
            FROM steps WHERE task_id = :p_task_id AND step_index = :p_step_index
        ) h ON true"""
    return PhaseStatement(
        f"autogpt_claim_{phase}",
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
        SELECT (SELECT created_at FROM wakeup) AS queued_at, h.step_index, h.proposal, h.output, h.is_error,
            h.is_last
        FROM (SELECT 1 FROM claimed) c {run_rows}
        """,
    )


# the lease, the wake-up marked published and the run: (queued_at, history step_index, proposal, output, is_error,
# is_last) rows; for think one per committed step from ``p_history_from`` on (or one row of NULLs), for act one row
# holding the step's proposal
CLAIM_WRITE = {"think": _claim_write("think"), "act": _claim_write("act")}


def _claim_alone(phase: str) -> PhaseStatement:
    """``CLAIM_READ`` and ``CLAIM_WRITE[phase]`` in one statement (``run_alone``), for the common case only: a task
    ``running`` or ``queued`` (then started, with its ``task.started`` event), before its deadline, whose step is
    ready for the phase (``pending`` for think, ``proposed`` for act), held by no live lease and under its delivery
    budget. Rows: the task's columns (``CLAIM_READ``'s ``t``, the profile last), then the phase's spent deliveries
    and ``CLAIM_WRITE``'s columns, on each row. No row, and nothing written, when any of that does not hold: the
    ledger then takes the general path, which says why."""
    names = [c.name for c in _RUN_COLUMNS]
    status, deadline = f"c{names.index('status')}", f"c{names.index('deadline')}"
    write = _claim_write(phase).sql
    started = "think_started_at" if phase == "think" else "act_started_at"
    ready = "pending" if phase == "think" else "proposed"
    spent = (
        "deliveries"
        if phase == "think"
        else f"deliveries - coalesce(CAST(proposal ->> '{hot_sql.THINK_DELIVERIES}' AS integer), 0)"
    )
    run_rows = write[write.index("FROM (SELECT 1 FROM claimed) c") + len("FROM (SELECT 1 FROM claimed) c") :]
    return PhaseStatement(
        f"autogpt_claim_{phase}_alone",
        f"""
        WITH t AS (
            SELECT {", ".join(f"{c.name} AS c{i}" for i, c in enumerate(_RUN_COLUMNS))},
                (SELECT profile FROM task_options WHERE task_id = :p_task_id) AS profile
            FROM tasks WHERE id = :p_task_id FOR NO KEY UPDATE
        ), claimed AS (
            UPDATE steps SET status = :p_status, lease_owner = :p_owner, lease_token = :p_token,
                lease_expires_at = :p_expires, deliveries = deliveries + 1, {started} = :p_now
            WHERE task_id = :p_task_id AND step_index = :p_step_index AND status = '{ready}'
              AND (lease_expires_at IS NULL OR lease_expires_at <= :p_now) AND {spent} < :p_max_deliveries
              AND EXISTS (SELECT 1 FROM t WHERE {status} IN ('queued', 'running')
                          AND ({deadline} IS NULL OR {deadline} > :p_now))
            RETURNING id, {spent} AS spent
        ), started AS (
            UPDATE tasks SET status = 'running', started_at = coalesce(started_at, now())
            WHERE id = :p_task_id AND status = 'queued' AND EXISTS (SELECT 1 FROM claimed)
            RETURNING id
        ), started_event AS (
            INSERT INTO task_events (task_id, kind, step_index, data)
            SELECT :p_task_id, 'task.started', :p_step_index, '{{}}'::jsonb FROM started
        ), wakeup AS (
            UPDATE outbox SET published_at = coalesce(published_at, now())
            WHERE task_id = :p_task_id AND step_index = :p_step_index AND phase = :p_phase
              AND EXISTS (SELECT 1 FROM claimed)
            RETURNING created_at
        )
        SELECT t.*, (SELECT spent FROM claimed) AS spent, (SELECT created_at FROM wakeup) AS queued_at,
            h.step_index, h.proposal, h.output, h.is_error, h.is_last
        FROM t CROSS JOIN (SELECT 1 FROM claimed) c {run_rows}
        """,
    )


CLAIM_ALONE = {"think": _claim_alone("think"), "act": _claim_alone("act")}

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
# A statement that runs alone (``run_alone``: its own transaction, no BEGIN and COMMIT round trips) locks the task's
# row itself, as ``LOCK_TASK`` does, in a first CTE: its writes are gated on the task running (the step's are a
# one-time filter above the step's scan, so the task row is locked before the step row, the ledger's lock order),
# and it returns the task's status, so that a caller whose write did not happen because the task was not running
# takes the general path instead. The plain variants run after ``LOCK_TASK`` in the caller's transaction.
_GATE = "t AS (SELECT status, priority FROM tasks WHERE id = :p_task_id FOR NO KEY UPDATE), "
_RUNNING = " AND EXISTS (SELECT 1 FROM t WHERE status IN ('queued', 'running'))"
_STATE = ", (SELECT status FROM t) AS task_status, (SELECT priority FROM t) AS priority"


def _gated(sql: str, gated: bool) -> str:
    """``sql`` with the task's lock and gate (``_GATE``, ``{running}``, ``{state}``) when ``gated``."""
    return sql.format(
        gate=_GATE if gated else "",
        running=_RUNNING if gated else "",
        state=_STATE if gated else "",
        priority="(SELECT priority FROM t)" if gated else ":p_priority",
    )


def _variants(name: str, sql: str) -> tuple[PhaseStatement, PhaseStatement]:
    """The plain statement (after ``LOCK_TASK`` in the caller's transaction) and its ``_alone`` variant (``_gated``)."""
    return PhaseStatement(name, _gated(sql, False)), PhaseStatement(f"{name}_alone", _gated(sql, True))


# the proposal and the act phase claimed at once under the same lease (the think worker runs the command)
PROPOSE_ACTING, PROPOSE_ACTING_ALONE = _variants(
    "autogpt_propose_acting",
    f"""
        WITH {{gate}}proposed AS (
            UPDATE steps SET {_PROPOSAL_SET}, status = 'acting', lease_expires_at = :p_expires,
                deliveries = deliveries + 1, act_started_at = now()
            WHERE task_id = :p_task_id AND step_index = :p_step_index AND lease_token = :p_token
              AND status = 'thinking'{{running}}
            RETURNING id
        ), {_PROPOSAL_REST}
        SELECT (SELECT id FROM proposed) AS step_id, NULL::bigint AS outbox_id{{state}}
        """,
)

# the proposal, the lease released, and the act wake-up (the act queue runs the command)
PROPOSE_WAKE, PROPOSE_WAKE_ALONE = _variants(
    "autogpt_propose_wake",
    f"""
        WITH {{gate}}proposed AS (
            UPDATE steps SET {_PROPOSAL_SET}, status = 'proposed', lease_owner = NULL, lease_token = NULL,
                lease_expires_at = NULL
            WHERE task_id = :p_task_id AND step_index = :p_step_index AND lease_token = :p_token
              AND status = 'thinking'{{running}}
            RETURNING id
        ), {_PROPOSAL_REST}, wakeup AS (
            INSERT INTO outbox (task_id, step_index, phase, priority)
            SELECT :p_task_id, :p_step_index, 'act', {{priority}} FROM proposed
            ON CONFLICT ON CONSTRAINT uq_outbox_task_step_phase DO UPDATE SET published_at = NULL, created_at = now()
            RETURNING id
        )
        SELECT (SELECT id FROM proposed) AS step_id, (SELECT id FROM wakeup) AS outbox_id{{state}}
        """,
)

# a step that is not the last one, of a task that goes on: its outcome, its artifacts, the next step's wake-up
COMMIT_NEXT, COMMIT_NEXT_ALONE = _variants(
    "autogpt_commit_next",
    """
        WITH {gate}done AS (
            UPDATE steps SET status = 'completed', output = :p_output, is_error = :p_is_error, is_last = false,
                committed_at = now(), lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
            WHERE task_id = :p_task_id AND step_index = :p_step_index AND lease_token = :p_token
              AND status = 'acting'{running}
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
            -- a path the command reported twice is stored once, as its last record (one INSERT ... ON CONFLICT
            -- cannot update a row twice); its events above stay one per record
            INSERT INTO artifacts (id, task_id, step_index, relative_path, size_bytes, sha256)
            SELECT gen_random_uuid(), :p_task_id, :p_step_index, path, size, sha256
            FROM (SELECT DISTINCT ON (path) path, size, sha256 FROM files ORDER BY path, n DESC) last_records
            ON CONFLICT ON CONSTRAINT uq_artifacts_task_path DO UPDATE SET step_index = excluded.step_index,
                size_bytes = excluded.size_bytes, sha256 = excluded.sha256, modified_at = now()
        ), next_step AS (
            INSERT INTO steps (task_id, step_index) SELECT :p_task_id, :p_step_index + 1 FROM done
            ON CONFLICT DO NOTHING
        ), wakeup AS (
            INSERT INTO outbox (task_id, step_index, phase, priority)
            SELECT :p_task_id, :p_step_index + 1, 'think', {priority} FROM done
            ON CONFLICT ON CONSTRAINT uq_outbox_task_step_phase DO UPDATE SET published_at = NULL, created_at = now()
            RETURNING id
        )
        SELECT (SELECT id FROM done) AS step_id, (SELECT id FROM wakeup) AS outbox_id{state}
    """,
)


PHASE_STATEMENTS = (
    LOCK_TASK, CLAIM_READ, *CLAIM_WRITE.values(), PROPOSE_ACTING, PROPOSE_WAKE, COMMIT_NEXT,
    *CLAIM_ALONE.values(), PROPOSE_ACTING_ALONE, PROPOSE_WAKE_ALONE, COMMIT_NEXT_ALONE,
)
