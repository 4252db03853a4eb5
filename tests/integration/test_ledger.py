"""The step protocol against real PostgreSQL: leases, fencing, commits, the outbox and the reaper."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select, text, update

from autogpt_workers.store.ledger import ClaimOutcome, FileRecord, Ledger, ProposeOutcome
from autogpt_workers.store.models import Artifact, Outbox, Step, Task
from tests.integration.conftest import plans_of, private_database

PROPOSAL = {
    "assistant_message": {"role": "assistant", "content": "write it"},
    "command": "write_file",
    "arguments": {"path": "a.txt", "content": "x"},
    "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    "cost_usd": 0.01,
    "model": "m",
}


@pytest.fixture
def ledger(db) -> Ledger:  # type: ignore[no-untyped-def]
    return Ledger(db)


def new_task(ledger: Ledger) -> uuid.UUID:
    with ledger.db.transaction() as s:
        created = ledger.create_task(s, {"goal": "g", "budget": {}, "metadata_": {}, "priority": 3})
    assert created is not None
    return created[0]


@pytest.fixture
def task_id(ledger: Ledger) -> uuid.UUID:
    return new_task(ledger)


def claim(ledger: Ledger, task_id: uuid.UUID, step: int, phase: str, ttl: float = 30.0, owner: str = "w1"):  # type: ignore[no-untyped-def]
    return ledger.claim(task_id, step, phase, owner, ttl, max_deliveries=3)


def test_a_step_runs_think_then_act_then_commits_with_its_successor(ledger: Ledger, task_id: uuid.UUID) -> None:
    c = claim(ledger, task_id, 0, "think")
    assert c.outcome is ClaimOutcome.claimed and c.token
    wake = ledger.record_proposal(task_id, 0, c.token, PROPOSAL)
    assert wake is not None and wake.phase == "act"
    a = claim(ledger, task_id, 0, "act")
    assert a.outcome is ClaimOutcome.claimed and a.token
    committed, nxt = ledger.commit_step(task_id, 0, a.token, "ok", False, False, [FileRecord("a.txt", 1, "ab")])
    assert committed and nxt is not None and (nxt.step_index, nxt.phase) == (1, "think")
    with ledger.db.session() as s:
        task = s.get_one(Task, task_id)
        assert (task.status, task.steps_completed, task.prompt_tokens, task.cost_usd) == ("running", 1, 10, 0.01)
        assert s.scalars(select(Artifact.relative_path).where(Artifact.task_id == task_id)).all() == ["a.txt"]
        assert s.scalar(select(Step.status).where(Step.task_id == task_id, Step.step_index == 1)) == "pending"


def test_a_proposal_the_proposer_acts_on_itself_keeps_the_lease_and_writes_no_wakeup(
    ledger: Ledger, task_id: uuid.UUID
) -> None:
    c = claim(ledger, task_id, 0, "think")
    assert c.token is not None
    result = ledger.propose(task_id, 0, c.token, PROPOSAL, act_lease_ttl_s=30.0)
    assert result.outcome is ProposeOutcome.acting and result.wakeup is None
    with ledger.db.session() as s:
        step = s.scalars(select(Step).where(Step.task_id == task_id)).one()
        assert (step.status, step.lease_token, step.deliveries) == ("acting", c.token, 2)
        assert step.proposal["think_deliveries"] == 1 and step.act_started_at is not None
        assert s.scalars(select(Outbox.phase).where(Outbox.task_id == task_id)).all() == ["think"]
    # another delivery of either phase does not run it while the lease lives
    assert claim(ledger, task_id, 0, "act").outcome is ClaimOutcome.lease_held
    assert claim(ledger, task_id, 0, "think").outcome is ClaimOutcome.advanced
    committed, nxt = ledger.commit_step(task_id, 0, c.token, "ok", False, False)
    assert committed and nxt is not None and (nxt.step_index, nxt.phase) == (1, "think")


def test_the_reaper_hands_an_abandoned_inline_act_phase_to_the_act_queue(ledger: Ledger, task_id: uuid.UUID) -> None:
    c = claim(ledger, task_id, 0, "think")
    assert c.token is not None
    assert ledger.propose(task_id, 0, c.token, PROPOSAL, act_lease_ttl_s=30.0).outcome is ProposeOutcome.acting
    with ledger.db.transaction() as s:  # the proposer died: its lease expires
        s.execute(update(Step).where(Step.task_id == task_id).values(lease_expires_at=Step.created_at))
    wakeups = [w for w in ledger.reap_expired_leases() if w.task_id == task_id]
    assert [(w.step_index, w.phase) for w in wakeups] == [(0, "act")]
    a = claim(ledger, task_id, 0, "act")
    assert a.outcome is ClaimOutcome.claimed and a.deliveries == 2  # the act phase's second delivery
    assert ledger.commit_step(task_id, 0, c.token, "zombie", False, False) == (False, None)
    assert a.token is not None and ledger.commit_step(task_id, 0, a.token, "ok", False, False)[0]


def test_a_paused_task_parks_the_proposal_instead_of_acting_on_it(ledger: Ledger, task_id: uuid.UUID) -> None:
    c = claim(ledger, task_id, 0, "think")
    assert c.token is not None
    with ledger.db.transaction() as s:
        s.execute(update(Task).where(Task.id == task_id).values(status="paused"))
    assert ledger.propose(task_id, 0, c.token, PROPOSAL, act_lease_ttl_s=30.0).outcome is ProposeOutcome.parked
    with ledger.db.session() as s:
        step = s.scalars(select(Step).where(Step.task_id == task_id)).one()
        assert (step.status, step.lease_token) == ("proposed", None)


def test_a_second_delivery_while_the_lease_is_held_does_not_execute(ledger: Ledger, task_id: uuid.UUID) -> None:
    first = claim(ledger, task_id, 0, "think")
    second = claim(ledger, task_id, 0, "think", owner="w2")
    assert first.outcome is ClaimOutcome.claimed
    assert second.outcome is ClaimOutcome.lease_held and 0 < second.retry_in <= 30.5


def test_a_zombie_whose_lease_was_taken_over_commits_nothing(ledger: Ledger, task_id: uuid.UUID) -> None:
    zombie = claim(ledger, task_id, 0, "think", ttl=0.001)
    assert zombie.token
    import time

    time.sleep(0.01)
    taker = claim(ledger, task_id, 0, "think", owner="w2")
    assert taker.outcome is ClaimOutcome.claimed and taker.token != zombie.token
    assert ledger.record_proposal(task_id, 0, zombie.token, PROPOSAL) is None  # fenced
    assert ledger.record_proposal(task_id, 0, taker.token, PROPOSAL) is not None  # type: ignore[arg-type]
    with ledger.db.session() as s:
        assert s.get_one(Task, task_id).llm_calls == 1  # the fenced proposal was not counted


def test_a_delivery_for_a_committed_step_is_recognised(ledger: Ledger, task_id: uuid.UUID) -> None:
    c = claim(ledger, task_id, 0, "think")
    ledger.record_proposal(task_id, 0, c.token, PROPOSAL)  # type: ignore[arg-type]
    assert claim(ledger, task_id, 0, "think").outcome is ClaimOutcome.advanced
    a = claim(ledger, task_id, 0, "act")
    ledger.commit_step(task_id, 0, a.token, "ok", False, True)  # type: ignore[arg-type]
    assert claim(ledger, task_id, 0, "act").outcome is ClaimOutcome.committed
    assert claim(ledger, task_id, 0, "think").outcome is ClaimOutcome.committed
    with ledger.db.session() as s:
        assert s.get_one(Task, task_id).status == "completed"
        # the last step has no successor
        assert s.scalar(select(Step.id).where(Step.task_id == task_id, Step.step_index == 1)) is None


def test_too_many_deliveries_poison_the_step_and_fail_the_task(ledger: Ledger, task_id: uuid.UUID) -> None:
    for _ in range(3):
        c = claim(ledger, task_id, 0, "think", ttl=0.0001)
        assert c.outcome is ClaimOutcome.claimed
    poisoned = claim(ledger, task_id, 0, "think")
    assert poisoned.outcome is ClaimOutcome.poisoned and "poisoned" in (poisoned.reason or "")
    with ledger.db.session() as s:
        task = s.get_one(Task, task_id)
        assert task.status == "failed" and "3 deliveries" in (task.error or "")


def test_the_reaper_breaks_expired_leases_and_rearms_their_wakeups(ledger: Ledger, task_id: uuid.UUID) -> None:
    c = claim(ledger, task_id, 0, "think")
    with ledger.db.transaction() as s:
        s.execute(update(Step).where(Step.task_id == task_id).values(lease_expires_at=Step.created_at))
    wakeups = [w for w in ledger.reap_expired_leases() if w.task_id == task_id]
    assert [(w.step_index, w.phase) for w in wakeups] == [(0, "think")]
    with ledger.db.session() as s:
        step = s.scalars(select(Step).where(Step.task_id == task_id)).one()
        assert step.status == "pending" and step.lease_token is None
        assert s.scalar(select(Outbox.published_at).where(Outbox.id == wakeups[0].outbox_id)) is None
    assert ledger.record_proposal(task_id, 0, c.token, PROPOSAL) is None  # type: ignore[arg-type]
    assert claim(ledger, task_id, 0, "think").outcome is ClaimOutcome.claimed


def test_unpublished_wakeups_become_due_after_the_grace(ledger: Ledger, task_id: uuid.UUID) -> None:
    assert task_id in {w.task_id for w in ledger.due_wakeups(older_than_s=0)}
    assert task_id not in {w.task_id for w in ledger.due_wakeups(older_than_s=3600)}
    ledger.mark_published([w.outbox_id for w in ledger.pending_wakeups(task_id)])
    assert task_id not in {w.task_id for w in ledger.due_wakeups(older_than_s=0)}


def test_a_claim_marks_its_own_wakeup_consumed(ledger: Ledger, task_id: uuid.UUID) -> None:
    assert ledger.pending_wakeups(task_id)
    claim(ledger, task_id, 0, "think")
    assert ledger.pending_wakeups(task_id) == []


def test_release_hands_the_step_back_at_once(ledger: Ledger, task_id: uuid.UUID) -> None:
    c = claim(ledger, task_id, 0, "think")
    wake = ledger.release(task_id, 0, c.token, error="LLM 503")  # type: ignore[arg-type]
    assert wake is not None and wake.phase == "think"
    again = claim(ledger, task_id, 0, "think", owner="w2")
    assert again.outcome is ClaimOutcome.claimed and again.deliveries == 2


@pytest.fixture(scope="module")
def own_ledger(settings) -> Iterator[Ledger]:  # type: ignore[no-untyped-def]
    """A ledger on a database of its own: the reaper's rounds called here act on every task in their database, and
    must not re-arm the wake-ups other tests left behind (another test's stack would publish them)."""
    with private_database(settings.database_url, "plans") as database:
        yield Ledger(database)


@pytest.fixture
def own_task(own_ledger: Ledger) -> uuid.UUID:
    return new_task(own_ledger)


def test_the_lease_heartbeat_finds_its_leases_without_scanning_every_step(
    own_ledger: Ledger, own_task: uuid.UUID
) -> None:
    """Every worker renews its leases every few seconds: the renewal must cost what the steps in flight cost, not what
    the whole history does (a scan of ``steps`` took 31 ms at 300k steps and 107 ms at 1M, ``bench.history_micro``)."""
    c = claim(own_ledger, own_task, 0, "think")
    assert c.token is not None
    [plan] = plans_of(own_ledger.db, lambda: own_ledger.renew([c.token], 30.0))  # type: ignore[list-item]
    assert "Seq Scan on steps" not in plan, plan
    assert "ix_steps_lease_open" in plan, plan
    assert own_ledger.renew([c.token], 30.0) == {c.token: "running"}


@pytest.mark.parametrize("round_", ["reap_expired_leases", "rearm_orphans", "due_wakeups"])
def test_the_reapers_rounds_look_only_at_open_steps_and_unpublished_wakeups(
    own_ledger: Ledger, own_task: uuid.UUID, round_: str
) -> None:
    """The reaper's rounds run every few seconds whatever the load: none of them may read every step or every
    wake-up ever written (both tables grow with each step run)."""
    calls: dict[str, Callable[[], object]] = {
        "reap_expired_leases": own_ledger.reap_expired_leases,
        "rearm_orphans": lambda: own_ledger.rearm_orphans(60.0),
        "due_wakeups": lambda: own_ledger.due_wakeups(60.0),
    }
    plans = plans_of(own_ledger.db, calls[round_])
    assert plans
    for plan in plans:
        assert "Seq Scan on steps" not in plan and "Seq Scan on outbox" not in plan, plan


def test_the_step_a_lease_holds_is_found_through_the_open_steps(own_ledger: Ledger, own_task: uuid.UUID) -> None:
    """A worker handing its steps back at shutdown looks each lease up by its token alone."""
    c = claim(own_ledger, own_task, 0, "think")
    assert c.token is not None
    [plan] = plans_of(own_ledger.db, lambda: own_ledger.held_step(c.token))  # type: ignore[arg-type]
    assert "Seq Scan on steps" not in plan, plan
    assert own_ledger.held_step(c.token) == (own_task, 0)
    assert own_ledger.held_step(uuid.uuid4()) is None


def test_the_stuck_detector_reads_the_last_step_of_each_task_not_all_of_them(
    own_ledger: Ledger, own_task: uuid.UUID
) -> None:
    """Every metrics scrape runs the stuck detector over the unfinished tasks: per task it may read the last step
    (its open one), not the whole run (173 ms a scrape for 200 tasks of 1000 steps, ``bench.history_micro``)."""
    from autogpt_workers.stuck import find_stuck

    with own_ledger.db.engine.begin() as conn:  # 100 running tasks of 300 finished steps and an open one, analysed
        conn.execute(
            text(
                "INSERT INTO tasks (id, goal, status, budget, metadata) "
                "SELECT gen_random_uuid(), 'long run', 'running', '{}', '{}' FROM generate_series(1, 100)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO steps (task_id, step_index, status) SELECT t.id, i, "
                "CASE WHEN i < 300 THEN 'completed' ELSE 'pending' END "
                "FROM tasks t, generate_series(0, 300) i WHERE t.goal = 'long run'"
            )
        )
        conn.execute(text("ANALYZE steps, tasks"))
    plans = plans_of(own_ledger.db, lambda: find_stuck(own_ledger.db, 60.0))
    assert plans
    assert "Index Scan Backward using uq_steps_task_step on steps" in plans[0], plans[0]
    assert "Sort Key: steps.step_index DESC" not in plans[0], plans[0]


def test_the_unfinished_tasks_are_read_from_their_own_index(own_ledger: Ledger, own_task: uuid.UUID) -> None:
    """Each metrics scrape counts the tasks by status and looks for stuck ones; only the unfinished tasks matter, and
    the finished ones (nearly every task ever run) must not be read to find them (``ix_tasks_unfinished``, migration
    0009: at 500k finished tasks the count took 22 ms, 0.04 ms with it)."""
    from autogpt_workers.metrics_platform import PlatformCollector

    plans = plans_of(own_ledger.db, lambda: list(PlatformCollector(own_ledger.db, None, 60.0).collect()))
    on_tasks = [p for p in plans if " on tasks" in p]
    assert len(on_tasks) >= 2, plans  # the count by status and the stuck detector
    for plan in on_tasks:
        assert "ix_tasks_unfinished" in plan, plan
