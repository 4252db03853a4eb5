"""The one-statement phase writes (``store.phase_sql``) write what the general path writes, in the same order, and
nothing at all when fenced; as text statements and as server-side prepared statements. Real PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, text, update

from autogpt_workers.store import phase_sql
from autogpt_workers.store.db import Database
from autogpt_workers.store.ledger import ClaimOutcome, FileRecord, Ledger, ProposeOutcome, lock_task
from autogpt_workers.store.models import Artifact, Outbox, Step, Task, TaskEvent
from tests.integration.conftest import counted

PROPOSAL = {
    "assistant_message": {"role": "assistant", "content": "write them"},
    "command": "write_file",
    "arguments": {"path": "a.txt", "content": "x"},
    "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    "cost_usd": 0.25,
    "model": "m",
}


@pytest.fixture(params=["text", "prepared"])
def ledger(request, db, settings) -> Iterator[Ledger]:  # type: ignore[no-untyped-def]
    if request.param == "text":
        yield Ledger(db)
        return
    prepared = Database.from_url(settings.database_url, pool_size=1, max_overflow=0)  # one connection throughout
    phase_sql.prepare_on_connect(prepared)
    try:
        yield Ledger(prepared)
        with prepared.engine.connect() as conn:  # every phase statement is prepared on it, and the claim ran by name
            runs = dict(
                conn.exec_driver_sql("SELECT name, generic_plans + custom_plans FROM pg_prepared_statements").all()
            )
            assert {s.name for s in phase_sql.PHASE_STATEMENTS} <= set(runs)
            assert runs[phase_sql.CLAIM_ALONE["think"].name] > 0
    finally:
        prepared.dispose()


@pytest.fixture
def task_id(ledger: Ledger) -> uuid.UUID:
    with ledger.db.transaction() as s:
        created = ledger.create_task(s, {"goal": "g", "budget": {}, "metadata_": {}, "priority": 7})
    assert created is not None
    return created[0]


def _claim(ledger: Ledger, task_id: uuid.UUID, step: int, phase: str, history_from: int = 0) -> Any:
    c = ledger.claim(task_id, step, phase, "w1", 30.0, 3, history_from=history_from)
    assert c.outcome is ClaimOutcome.claimed and c.token is not None
    return c


def _events(ledger: Ledger, task_id: uuid.UUID) -> list[tuple[str, int | None, dict[str, Any]]]:
    with ledger.db.session() as s:
        rows = s.execute(
            select(TaskEvent.kind, TaskEvent.step_index, TaskEvent.data)
            .where(TaskEvent.task_id == task_id)
            .order_by(TaskEvent.id)
        ).all()
    return [(k, i, d) for k, i, d in rows]


def test_a_step_through_the_act_queue_writes_every_row_and_event_in_order(ledger: Ledger, task_id: uuid.UUID) -> None:
    think = _claim(ledger, task_id, 0, "think")
    assert think.history == [] and think.task.priority == 7
    proposed = ledger.propose(task_id, 0, think.token, PROPOSAL)
    assert proposed.outcome is ProposeOutcome.proposed and proposed.wakeup is not None
    assert (proposed.wakeup.phase, proposed.wakeup.step_index, proposed.wakeup.priority) == ("act", 0, 7)
    act = _claim(ledger, task_id, 0, "act")
    assert act.current.proposal["command"] == "write_file" and act.current.proposal["think_deliveries"] == 1
    files = [FileRecord("b/two.txt", 2, "2" * 64), FileRecord("a.txt", 1, "1" * 64)]
    committed, wakeup = ledger.commit_step(task_id, 0, act.token, "wrote two", False, False, files)
    assert committed and wakeup is not None and (wakeup.phase, wakeup.step_index, wakeup.priority) == ("think", 1, 7)

    assert [(k, i) for k, i, _ in _events(ledger, task_id)] == [
        ("task.queued", None),
        ("task.started", 0),
        ("step.proposed", 0),
        ("step.completed", 0),
        ("artifact.written", 0),
        ("artifact.written", 0),
    ]
    _, _, proposed_data = _events(ledger, task_id)[2]
    assert proposed_data == {
        "command": "write_file", "arguments": {"path": "a.txt", "content": "x"}, "thought": "write them",
        "error": None, "prompt_tokens": 10, "completion_tokens": 5, "cost_usd": 0.25,
    }  # fmt: skip
    assert [d for _, _, d in _events(ledger, task_id)[3:]] == [
        {"output": "wrote two", "is_error": False, "is_last": False},
        {"relative_path": "b/two.txt", "size_bytes": 2},
        {"relative_path": "a.txt", "size_bytes": 1},
    ]
    with ledger.db.session() as s:
        step = s.scalars(select(Step).where(Step.task_id == task_id, Step.step_index == 0)).one()
        assert (step.status, step.output, step.is_error, step.is_last) == ("completed", "wrote two", False, False)
        assert (step.command, step.arguments, step.model) == ("write_file", PROPOSAL["arguments"], "m")
        assert step.llm_calls == 1
        assert (step.prompt_tokens, step.completion_tokens, step.cost_usd) == (10, 5, 0.25)
        assert (step.lease_token, step.lease_owner, step.lease_expires_at) == (None, None, None)
        assert step.deliveries == 2 and step.proposed_at and step.act_started_at and step.committed_at
        task = s.get_one(Task, task_id)
        assert (task.status, task.steps_completed, task.llm_calls) == ("running", 1, 1)
        assert (task.prompt_tokens, task.completion_tokens, task.cost_usd) == (10, 5, 0.25)
        artifacts = s.execute(
            select(Artifact.relative_path, Artifact.step_index, Artifact.size_bytes, Artifact.sha256)
            .where(Artifact.task_id == task_id)
            .order_by(Artifact.relative_path)
        ).all()
        assert artifacts == [("a.txt", 0, 1, "1" * 64), ("b/two.txt", 0, 2, "2" * 64)]
        assert s.scalar(select(Step.status).where(Step.task_id == task_id, Step.step_index == 1)) == "pending"
        outbox = s.execute(
            select(Outbox.step_index, Outbox.phase, Outbox.priority, Outbox.published_at.is_(None))
            .where(Outbox.task_id == task_id)
            .order_by(Outbox.id)
        ).all()
        # each claim marked its own wake-up published; the next one is not yet
        assert outbox == [(0, "think", 7, False), (0, "act", 7, False), (1, "think", 7, True)]


def test_an_inline_step_then_history_and_an_artifact_written_again(ledger: Ledger, task_id: uuid.UUID) -> None:
    for index in range(2):
        think = _claim(ledger, task_id, index, "think")
        result = ledger.propose(task_id, index, think.token, {**PROPOSAL, "error": None}, act_lease_ttl_s=30.0)
        assert result.outcome is ProposeOutcome.acting and result.wakeup is None
        size = index + 1
        committed, wakeup = ledger.commit_step(
            task_id, index, think.token, f"out {index}", index == 1, False, [FileRecord("a.txt", size, "f" * 64)]
        )
        assert committed and wakeup is not None and wakeup.step_index == index + 1
    # the whole history, in order, and from a later index only the rest
    think = _claim(ledger, task_id, 2, "think")
    assert [(h.step_index, h.output, h.is_error) for h in think.history] == [(0, "out 0", False), (1, "out 1", True)]
    assert think.history[0].proposal["command"] == "write_file"
    with ledger.db.transaction() as s:  # hand the lease back so it can be claimed again
        s.execute(update(Step).where(Step.task_id == task_id, Step.step_index == 2).values(lease_expires_at=None))
    again = _claim(ledger, task_id, 2, "think", history_from=1)
    assert [h.step_index for h in again.history] == [1]
    with ledger.db.session() as s:
        assert s.execute(
            select(Artifact.step_index, Artifact.size_bytes).where(Artifact.task_id == task_id)
        ).all() == [(1, 2)]  # one artifact, upserted by the second write
        assert s.get_one(Task, task_id).steps_completed == 2
        # no act wake-up was written for the inline steps
        assert s.scalars(select(Outbox.phase).where(Outbox.task_id == task_id).distinct()).all() == ["think"]


def test_fenced_phase_writes_change_nothing(ledger: Ledger, task_id: uuid.UUID) -> None:
    think = _claim(ledger, task_id, 0, "think")
    stale = uuid.uuid4()
    assert ledger.propose(task_id, 0, stale, PROPOSAL).outcome is ProposeOutcome.fenced
    assert ledger.propose(task_id, 0, stale, PROPOSAL, act_lease_ttl_s=30.0).outcome is ProposeOutcome.fenced
    assert ledger.propose(task_id, 0, think.token, PROPOSAL, act_lease_ttl_s=30.0).outcome is ProposeOutcome.acting
    before = _events(ledger, task_id)
    assert ledger.commit_step(task_id, 0, stale, "zombie", False, False, [FileRecord("z.txt", 1, "0" * 64)]) == (
        False,
        None,
    )
    assert _events(ledger, task_id) == before
    with ledger.db.session() as s:
        task = s.get_one(Task, task_id)
        assert (task.llm_calls, task.prompt_tokens, task.steps_completed) == (1, 10, 0)
        assert s.scalar(select(Artifact.id).where(Artifact.task_id == task_id)) is None
        assert s.scalar(select(Step.id).where(Step.task_id == task_id, Step.step_index == 1)) is None
        assert s.scalars(select(Outbox.phase).where(Outbox.task_id == task_id)).all() == ["think"]


def test_a_command_that_reports_one_path_twice_commits_it_once(ledger: Ledger, task_id: uuid.UUID) -> None:
    think = _claim(ledger, task_id, 0, "think")
    ledger.propose(task_id, 0, think.token, PROPOSAL, act_lease_ttl_s=30.0)
    files = [FileRecord("a.txt", 1, "1" * 64), FileRecord("a.txt", 2, "2" * 64)]
    committed, wakeup = ledger.commit_step(task_id, 0, think.token, "wrote twice", False, False, files)
    assert committed and wakeup is not None and wakeup.step_index == 1
    with ledger.db.session() as s:  # the later record wins, as two upserts in a row would have it
        assert s.execute(select(Artifact.size_bytes).where(Artifact.task_id == task_id)).all() == [(2,)]
    kinds = [k for k, _, _ in _events(ledger, task_id)]
    assert kinds[-3:] == ["step.completed", "artifact.written", "artifact.written"]


def test_a_prepared_statement_on_a_dead_connection_fails_as_a_disconnect_and_the_next_runs_on_a_fresh_one(
    db: Database, settings  # type: ignore[no-untyped-def]
) -> None:
    """Prepared, the phase statements run on the DBAPI cursor (no SQLAlchemy result machinery); an error must still
    reach the callers as SQLAlchemy's, with the connection invalidated, so their database-down retries work
    (``StepRunner._persist``, the Celery glue) and the retry gets a new connection, prepared afresh."""
    from sqlalchemy.exc import OperationalError

    prepared = Database.from_url(settings.database_url, pool_size=1, max_overflow=0, pre_ping=False)
    phase_sql.prepare_on_connect(prepared)
    ledger = Ledger(prepared)
    try:
        with prepared.transaction() as s:
            created = ledger.create_task(s, {"goal": "g", "budget": {}, "metadata_": {}, "priority": 7})
        assert created is not None
        with prepared.session() as s:
            pid = s.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with db.session() as s:
            s.connection().exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        with pytest.raises(OperationalError) as failed:
            ledger.claim(created[0], 0, "think", "w1", 30.0, 3)
        assert failed.value.connection_invalidated
        assert _claim(ledger, created[0], 0, "think").token is not None
    finally:
        prepared.dispose()


FINISH = {**PROPOSAL, "command": "finish", "arguments": {"reason": "done"}}


def test_a_pure_last_step_is_proposed_and_committed_in_one_transaction(ledger: Ledger, task_id: uuid.UUID) -> None:
    think = _claim(ledger, task_id, 0, "think")
    with counted(ledger.db.engine, "commit") as commits:
        result, wakeup = ledger.propose_and_commit(task_id, 0, think.token, FINISH, "done", False, True, 30.0)
    assert result.outcome is ProposeOutcome.acting and wakeup is None
    assert commits[0] == 1
    # what propose (acting) and commit_step would have written, in the same order
    assert [(k, i) for k, i, _ in _events(ledger, task_id)] == [
        ("task.queued", None), ("task.started", 0), ("step.proposed", 0), ("step.completed", 0),
        ("task.completed", 0),
    ]  # fmt: skip
    assert _events(ledger, task_id)[3][2] == {"output": "done", "is_error": False, "is_last": True}
    with ledger.db.session() as s:
        step = s.scalars(select(Step).where(Step.task_id == task_id, Step.step_index == 0)).one()
        assert (step.status, step.output, step.is_last, step.command) == ("completed", "done", True, "finish")
        assert (step.llm_calls, step.prompt_tokens, step.cost_usd) == (1, 10, 0.25)
        assert step.proposed_at and step.act_started_at and step.committed_at and step.lease_token is None
        task = s.get_one(Task, task_id)
        assert (task.status, task.steps_completed, task.llm_calls, task.cost_usd) == ("completed", 1, 1, 0.25)


def test_a_pure_step_that_is_not_the_last_writes_its_successor(ledger: Ledger, task_id: uuid.UUID) -> None:
    think = _claim(ledger, task_id, 0, "think")
    error = {**PROPOSAL, "command": None, "arguments": {}, "error": "you did not call any command."}
    result, wakeup = ledger.propose_and_commit(task_id, 0, think.token, error, "you did not", True, False, 30.0)
    assert result.outcome is ProposeOutcome.acting
    assert wakeup is not None and (wakeup.phase, wakeup.step_index, wakeup.priority) == ("think", 1, 7)
    with ledger.db.session() as s:
        assert s.scalar(select(Step.status).where(Step.task_id == task_id, Step.step_index == 0)) == "completed"
        assert s.scalar(select(Step.status).where(Step.task_id == task_id, Step.step_index == 1)) == "pending"
        assert s.get_one(Task, task_id).status == "running"


def test_a_pure_step_fenced_or_of_a_cancelling_task_commits_no_outcome(ledger: Ledger, task_id: uuid.UUID) -> None:
    think = _claim(ledger, task_id, 0, "think")
    result, wakeup = ledger.propose_and_commit(task_id, 0, uuid.uuid4(), FINISH, "done", False, True, 30.0)
    assert (result.outcome, wakeup) == (ProposeOutcome.fenced, None)
    with ledger.db.transaction() as s:
        s.execute(update(Task).where(Task.id == task_id).values(status="cancelling"))
    result, wakeup = ledger.propose_and_commit(task_id, 0, think.token, FINISH, "done", False, True, 30.0)
    assert (result.outcome, wakeup) == (ProposeOutcome.cancelled, None)
    with ledger.db.session() as s:
        step = s.scalars(select(Step).where(Step.task_id == task_id, Step.step_index == 0)).one()
        assert step.output is None and step.command == "finish"  # the proposal is kept, the outcome is not
        assert s.get_one(Task, task_id).status == "cancelled"
    assert "step.completed" not in [k for k, _, _ in _events(ledger, task_id)]


def test_a_claim_reads_the_tasks_tenant_and_profile(ledger: Ledger, task_id: uuid.UUID) -> None:
    """What the runner keeps per process (``task_facts``), so nothing on the step's path reads them again."""
    with ledger.db.transaction() as s:
        created = ledger.create_task(
            s, {"goal": "g", "budget": {}, "metadata_": {}, "priority": 5},
            options={"source": "native", "base_priority": 5, "profile": "researcher", "webhook_url": None,
                     "webhook_events": [], "additional_input": None},
        )  # fmt: skip
        tenant = s.scalar(select(Task.tenant_id).where(Task.id == task_id))
    assert created is not None
    with_profile = _claim(ledger, created[0], 0, "think").task
    assert (with_profile.tenant_id, with_profile.profile) == (tenant, "researcher")
    without = _claim(ledger, task_id, 0, "think").task  # no task_options row at all
    assert (without.tenant_id, without.profile) == (tenant, None)


def test_a_running_tasks_claim_proposal_and_commit_each_run_alone(ledger: Ledger, task_id: uuid.UUID) -> None:
    """Prepared, the claim (the first one starting the task), the proposal and the commit of a running task are each
    one statement in autocommit: no transaction is begun on the engine (BEGIN and COMMIT would be two more round
    trips each); as text, one transaction each."""
    prepared = ledger.db.prepared_statements
    with counted(ledger.db.engine, "begin") as begins:
        think = _claim(ledger, task_id, 0, "think")
        assert think.deliveries == 1 and think.history == [] and think.task.started_at is not None
        assert ledger.propose(task_id, 0, think.token, PROPOSAL, act_lease_ttl_s=30.0).outcome is ProposeOutcome.acting
        committed, wakeup = ledger.commit_step(task_id, 0, think.token, "wrote it", False, False)
        assert committed and wakeup is not None
        assert (wakeup.step_index, wakeup.phase, wakeup.priority) == (1, "think", 7)
        second = _claim(ledger, task_id, 1, "think")
    assert begins[0] == (0 if prepared else 4)
    assert [(h.step_index, h.output) for h in second.history] == [(0, "wrote it")] and second.deliveries == 1
    assert [(k, i) for k, i, _ in _events(ledger, task_id)] == [
        ("task.queued", None), ("task.started", 0), ("step.proposed", 0), ("step.completed", 0),
    ]  # fmt: skip
    with ledger.db.session() as s:
        task = s.get_one(Task, task_id)
        assert task.status == "running" and task.started_at is not None
    fenced = ledger.commit_step(task_id, 0, think.token, "again", False, False)  # committed: the lease is gone
    assert fenced == (False, None)
    # a claim that is not the common case (a live lease) takes the general path, which says why
    assert ledger.claim(task_id, 1, "think", "w2", 30.0, 3).outcome is ClaimOutcome.lease_held


@pytest.mark.parametrize("status", ["paused", "cancelling"])
def test_a_task_that_stopped_running_takes_the_general_path(
    ledger: Ledger, task_id: uuid.UUID, status: str
) -> None:
    """The single statement writes nothing unless the task runs; the general path then does what the state asks:
    a paused task's running step is committed and its successor parked (no wake-up); a cancelling task's step is
    committed and the task cancelled, and a proposal made while it is cancelling ends it."""
    think = _claim(ledger, task_id, 0, "think")
    assert ledger.propose(task_id, 0, think.token, PROPOSAL, act_lease_ttl_s=30.0).outcome is ProposeOutcome.acting
    with ledger.db.transaction() as s:
        s.execute(update(Task).where(Task.id == task_id).values(status=status))
    values = {"p_task_id": task_id, "p_step_index": 0, "p_token": think.token, "p_output": "x", "p_is_error": False,
              "p_event_data": {}, "p_paths": [], "p_sizes": [], "p_shas": []}  # fmt: skip
    gated = phase_sql.run_alone(ledger.db, phase_sql.COMMIT_NEXT_ALONE, values).one()
    assert (gated[0], gated[1], gated[2]) == (None, None, status)  # nothing written, the state says why
    assert ledger.commit_step(task_id, 0, think.token, "wrote it", False, False) == (True, None)
    with ledger.db.session() as s:
        assert s.scalar(select(Step.output).where(Step.task_id == task_id, Step.step_index == 0)) == "wrote it"
        after = s.scalar(select(Task.status).where(Task.id == task_id))
        successor = s.scalar(select(Step.status).where(Step.task_id == task_id, Step.step_index == 1))
    if status == "paused":
        assert (after, successor) == ("paused", "pending")
        return
    assert (after, successor) == ("cancelled", None)
    with ledger.db.transaction() as s:  # another task, cancelling while its model thinks
        other = ledger.create_task(s, {"goal": "g", "budget": {}, "metadata_": {}, "priority": 7})
    assert other is not None
    claim = _claim(ledger, other[0], 0, "think")
    with ledger.db.transaction() as s:
        s.execute(update(Task).where(Task.id == other[0]).values(status="cancelling"))
    assert ledger.propose(other[0], 0, claim.token, PROPOSAL).outcome is ProposeOutcome.cancelled
    with ledger.db.session() as s:
        assert s.scalar(select(Task.status).where(Task.id == other[0])) == "cancelled"


@pytest.mark.parametrize("phase", ["claim", "propose", "commit"])
def test_a_phase_waits_for_a_transaction_holding_the_task_before_it_touches_the_step(
    ledger: Ledger, task_id: uuid.UUID, db: Database, phase: str
) -> None:
    """The API's cancel locks the task (``lock_task``), then the task's steps. A phase must wait at the task, not
    lock the step first and then wait to update the task row (each waiting for the other: a deadlock, seen in CI
    when the phase statements locked the task ``FOR KEY SHARE``, which does not conflict with that lock)."""
    token = None
    if phase != "claim":
        token = _claim(ledger, task_id, 0, "think").token
    if phase == "commit":
        assert ledger.propose(task_id, 0, token, PROPOSAL, act_lease_ttl_s=30.0).outcome is ProposeOutcome.acting
    run = {
        "claim": lambda: ledger.claim(task_id, 0, "think", "w1", 30.0, 3).outcome,
        "propose": lambda: ledger.propose(task_id, 0, token, PROPOSAL).outcome,
        "commit": lambda: ledger.commit_step(task_id, 0, token, "wrote it", False, False)[0],
    }[phase]
    done: list[Any] = []
    with db.transaction() as holder:
        assert lock_task(holder, task_id) is not None  # as lifecycle.cancel does first
        worker = threading.Thread(target=lambda: done.append(run()))
        worker.start()
        time.sleep(0.5)
        assert done == [], f"the {phase} went past a task row another transaction holds"
        # the step is still free: the cancel could go on to lock it without waiting for the phase
        holder.execute(text("SET LOCAL lock_timeout = '1s'"))
        holder.execute(
            select(Step.id).where(Step.task_id == task_id, Step.step_index == 0).with_for_update(nowait=True)
        ).one()
    worker.join(timeout=10)
    expected = {"claim": ClaimOutcome.claimed, "propose": ProposeOutcome.proposed, "commit": True}[phase]
    assert done == [expected]
