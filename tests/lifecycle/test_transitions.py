"""Lifecycle transitions against real PostgreSQL and RabbitMQ, driving the step protocol by hand (no workers): what
cancel, pause, resume, approve and the deadline do to the ledger, the outbox and the event log."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from autogpt_workers import lifecycle
from autogpt_workers.lifecycle import LifecycleConflict, TaskNotFound, approval_required
from autogpt_workers.reaper import Reaper
from autogpt_workers.store.ledger import ClaimOutcome, Ledger, ProposeOutcome
from autogpt_workers.store.models import Outbox, Step, Task
from tests.lifecycle.conftest import events_of, steps_of, task_row

PROPOSAL: dict[str, Any] = {
    "assistant_message": {
        "role": "assistant",
        "content": "I will write a.txt",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "write_file", "arguments": "{}"}}
        ],
    },
    "tool_call_id": "call_1",
    "command": "write_file",
    "arguments": {"path": "a.txt", "content": "x"},
    "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    "cost_usd": 0.01,
    "model": "m",
}


@pytest.fixture
def ledger(lc_db) -> Ledger:  # type: ignore[no-untyped-def]
    return Ledger(lc_db)


def new_task(ledger: Ledger, tenant: str = "t1", **values: Any) -> uuid.UUID:
    with ledger.db.transaction() as s:
        created = ledger.create_task(
            s, {"goal": "g", "budget": {}, "metadata_": {}, "priority": 4, "tenant_id": tenant, **values}
        )
    assert created is not None
    return created[0]


def claim(ledger: Ledger, task_id: uuid.UUID, step: int, phase: str, ttl: float = 30.0) -> Any:
    return ledger.claim(task_id, step, phase, f"w-{uuid.uuid4().hex[:6]}", ttl, max_deliveries=5)


def kinds(db: Any, task_id: uuid.UUID) -> list[str]:
    return [e.kind for e in events_of(db, task_id)]


def outbox(db: Any, task_id: uuid.UUID) -> list[tuple[int, str, bool]]:
    """(step, phase, published) of the task's outbox rows."""
    with db.session() as s:
        rows = s.execute(
            select(Outbox.step_index, Outbox.phase, Outbox.published_at).where(Outbox.task_id == task_id)
        ).all()
    return sorted((i, p, at is not None) for i, p, at in rows)


def expire_leases(db: Any, task_id: uuid.UUID) -> None:
    with db.transaction() as s:
        s.execute(update(Step).where(Step.task_id == task_id).values(lease_expires_at=Step.created_at))


# -- cancel ------------------------------------------------------------------------------------------------------


def test_cancel_with_nothing_in_flight_is_immediate_and_drops_every_later_delivery(ledger, lc_publisher) -> None:  # type: ignore[no-untyped-def]
    task_id = new_task(ledger)
    assert lifecycle.cancel(ledger.db, lc_publisher, task_id) == "cancelled"
    task = task_row(ledger.db, task_id)
    assert task.status == "cancelled" and task.finished_at is not None
    assert [s.status for s in steps_of(ledger.db, task_id)] == ["cancelled"]
    assert outbox(ledger.db, task_id) == []  # the unpublished wake-up was withdrawn
    assert kinds(ledger.db, task_id) == ["task.queued", "task.cancel_requested", "task.cancelled"]
    # a wake-up still in the broker, or a reaper's, starts nothing
    for phase in ("think", "act"):
        assert claim(ledger, task_id, 0, phase).outcome is ClaimOutcome.task_finished
    assert ledger.due_wakeups(older_than_s=0) == [] or all(w.task_id != task_id for w in ledger.due_wakeups(0))
    # cancelling again changes nothing; the events are not repeated
    assert lifecycle.cancel(ledger.db, lc_publisher, task_id) == "cancelled"
    assert kinds(ledger.db, task_id).count("task.cancelled") == 1


def test_cancel_during_think_waits_for_the_safe_point_then_fences_the_proposal(ledger, lc_publisher) -> None:  # type: ignore[no-untyped-def]
    task_id = new_task(ledger)
    c = claim(ledger, task_id, 0, "think")
    assert lifecycle.cancel(ledger.db, lc_publisher, task_id) == "cancelling"
    assert task_row(ledger.db, task_id).status == "cancelling"
    # the heartbeat tells the holder
    assert ledger.renew([c.token], 30) == {c.token: "cancelling"}
    # a duplicate delivery starts nothing while the holder works
    assert claim(ledger, task_id, 0, "think").outcome is ClaimOutcome.stopping
    # the holder reaches its safe point with the model's answer: kept for the record, nothing acts on it
    assert ledger.propose(task_id, 0, c.token, PROPOSAL).outcome is ProposeOutcome.cancelled
    task = task_row(ledger.db, task_id)
    assert task.status == "cancelled" and task.llm_calls == 1 and task.prompt_tokens == 10
    step = steps_of(ledger.db, task_id)[0]
    assert step.status == "cancelled" and step.lease_token is None and step.command == "write_file"
    assert outbox(ledger.db, task_id) == [(0, "think", True)]  # no act wake-up was written
    assert kinds(ledger.db, task_id)[-3:] == ["task.cancel_requested", "step.proposed", "task.cancelled"]


def test_cancel_during_act_commits_the_command_that_ran_and_starts_no_further_step(ledger, lc_publisher) -> None:  # type: ignore[no-untyped-def]
    task_id = new_task(ledger)
    c = claim(ledger, task_id, 0, "think")
    ledger.propose(task_id, 0, c.token, PROPOSAL)
    a = claim(ledger, task_id, 0, "act")
    assert lifecycle.cancel(ledger.db, lc_publisher, task_id) == "cancelling"
    committed, wakeup = ledger.commit_step(task_id, 0, a.token, "wrote a.txt", False, False)
    assert committed and wakeup is None
    assert task_row(ledger.db, task_id).status == "cancelled"
    assert [s.step_index for s in steps_of(ledger.db, task_id)] == [0]  # no successor step row
    assert Counter(kinds(ledger.db, task_id))["step.completed"] == 1


def test_a_cancel_whose_holder_died_is_finished_by_the_reaper(ledger, lc_publisher) -> None:  # type: ignore[no-untyped-def]
    task_id = new_task(ledger)
    c = claim(ledger, task_id, 0, "think")
    assert lifecycle.cancel(ledger.db, lc_publisher, task_id) == "cancelling"
    expire_leases(ledger.db, task_id)  # the holder died: its lease runs out
    Reaper(ledger, lc_publisher, outbox_grace_s=0, interval_s=1).run_once()
    assert task_row(ledger.db, task_id).status == "cancelled"
    assert ledger.propose(task_id, 0, c.token, PROPOSAL).outcome is ProposeOutcome.fenced  # the zombie is fenced
    assert outbox(ledger.db, task_id) == [(0, "think", True)]  # the reaper re-armed nothing


def test_cancel_a_finished_task_is_a_conflict_and_another_tenants_task_is_not_found(ledger, lc_publisher) -> None:  # type: ignore[no-untyped-def]
    task_id = new_task(ledger, tenant="alice")
    with pytest.raises(TaskNotFound):
        lifecycle.cancel(ledger.db, lc_publisher, task_id, tenant_id="bob")
    with pytest.raises(TaskNotFound):
        lifecycle.pause(ledger.db, lc_publisher, uuid.uuid4())
    c = claim(ledger, task_id, 0, "think")
    ledger.propose(task_id, 0, c.token, PROPOSAL)
    a = claim(ledger, task_id, 0, "act")
    ledger.commit_step(task_id, 0, a.token, "done", False, True)
    with pytest.raises(LifecycleConflict, match="already completed"):
        lifecycle.cancel(ledger.db, lc_publisher, task_id, tenant_id="alice")
    with pytest.raises(LifecycleConflict):
        lifecycle.pause(ledger.db, lc_publisher, task_id)


# -- pause / resume ----------------------------------------------------------------------------------------------


def test_pause_keeps_the_phase_in_flight_and_resume_continues_from_it(ledger, lc_publisher) -> None:  # type: ignore[no-untyped-def]
    task_id = new_task(ledger)
    c = claim(ledger, task_id, 0, "think")
    assert lifecycle.pause(ledger.db, lc_publisher, task_id) == "paused"
    assert ledger.renew([c.token], 30) == {c.token: "paused"}  # pause does not abandon the call
    # the answer is persisted (never bought twice) but no act wake-up is written
    assert ledger.propose(task_id, 0, c.token, PROPOSAL).outcome is ProposeOutcome.parked
    assert outbox(ledger.db, task_id) == [(0, "think", True)]
    assert claim(ledger, task_id, 0, "act").outcome is ClaimOutcome.paused  # a stray wake-up starts nothing
    assert lifecycle.resume(ledger.db, lc_publisher, task_id) == "running"
    assert outbox(ledger.db, task_id) == [(0, "act", True), (0, "think", True)]  # re-armed and published
    a = claim(ledger, task_id, 0, "act")
    assert a.outcome is ClaimOutcome.claimed
    # pause during act: the step commits, its successor exists but gets no wake-up until resumed
    assert lifecycle.pause(ledger.db, lc_publisher, task_id) == "paused"
    committed, wakeup = ledger.commit_step(task_id, 0, a.token, "ok", False, False)
    assert committed and wakeup is None
    assert [(s.step_index, s.status) for s in steps_of(ledger.db, task_id)] == [(0, "completed"), (1, "pending")]
    assert claim(ledger, task_id, 1, "think").outcome is ClaimOutcome.paused
    assert lifecycle.resume(ledger.db, lc_publisher, task_id) == "running"
    assert (1, "think", True) in outbox(ledger.db, task_id)
    assert claim(ledger, task_id, 1, "think").outcome is ClaimOutcome.claimed
    assert kinds(ledger.db, task_id).count("task.paused") == 2
    assert kinds(ledger.db, task_id).count("task.resumed") == 2


def test_resume_of_a_task_that_is_not_paused_is_a_conflict(ledger, lc_publisher) -> None:  # type: ignore[no-untyped-def]
    task_id = new_task(ledger)
    with pytest.raises(LifecycleConflict, match="not paused"):
        lifecycle.resume(ledger.db, lc_publisher, task_id)
    assert lifecycle.pause(ledger.db, lc_publisher, task_id) == "paused"
    assert lifecycle.pause(ledger.db, lc_publisher, task_id) == "paused"  # idempotent
    assert lifecycle.resume(ledger.db, lc_publisher, task_id) == "queued"  # it never started


# -- approval ----------------------------------------------------------------------------------------------------


def test_approval_policy() -> None:
    assert not approval_required("never", "write_file")
    assert approval_required("always", "write_file")
    assert not approval_required("always", None)  # a model's mistake runs nothing: nothing to approve
    assert approval_required(["external"], "web_fetch", side_effect="external")
    assert not approval_required(["external"], "read_file", side_effect="read-only")
    assert approval_required(["write_file"], "write_file")  # a command name works too


def park_for_approval(ledger: Ledger, task_id: uuid.UUID, step: int = 0) -> None:
    c = claim(ledger, task_id, step, "think")
    assert ledger.propose(task_id, step, c.token, PROPOSAL, await_approval=True).outcome is (
        ProposeOutcome.awaiting_approval
    )


def test_a_gated_proposal_waits_without_a_lease_or_wakeup_until_approved(ledger, lc_publisher) -> None:  # type: ignore[no-untyped-def]
    task_id = new_task(ledger, approval="always")
    park_for_approval(ledger, task_id)
    assert task_row(ledger.db, task_id).status == "awaiting_approval"
    step = steps_of(ledger.db, task_id)[0]
    assert step.status == "awaiting_approval" and step.lease_token is None
    assert outbox(ledger.db, task_id) == [(0, "think", True)]  # no act wake-up
    assert lifecycle.awaiting_step(ledger.db, task_id) == 0
    assert claim(ledger, task_id, 0, "act").outcome is ClaimOutcome.awaiting_approval
    with pytest.raises(LifecycleConflict, match="step 3"):
        lifecycle.approve(ledger.db, lc_publisher, task_id, step_index=3)
    with pytest.raises(LifecycleConflict, match="not both"):
        lifecycle.approve(ledger.db, lc_publisher, task_id, feedback="no", command="read_file")
    assert lifecycle.approve(ledger.db, lc_publisher, task_id, step_index=0) == "running"
    assert lifecycle.awaiting_step(ledger.db, task_id) is None
    assert outbox(ledger.db, task_id) == [(0, "act", True), (0, "think", True)]
    assert claim(ledger, task_id, 0, "act").outcome is ClaimOutcome.claimed
    with pytest.raises(LifecycleConflict, match="no step awaiting approval"):
        lifecycle.approve(ledger.db, lc_publisher, task_id)
    approved = [e for e in events_of(ledger.db, task_id) if e.kind == "step.approved"]
    assert [e.data["decision"] for e in approved] == ["approved"]
    assert "step.awaiting_approval" in kinds(ledger.db, task_id)


def test_an_edited_approval_replaces_the_command_everywhere_the_agent_reads_it(ledger, lc_publisher) -> None:  # type: ignore[no-untyped-def]
    task_id = new_task(ledger, approval="always")
    park_for_approval(ledger, task_id)
    lifecycle.approve(ledger.db, lc_publisher, task_id, arguments={"path": "b.txt", "content": "edited"})
    step = steps_of(ledger.db, task_id)[0]
    assert step.status == "proposed" and step.command == "write_file"
    assert step.arguments == {"path": "b.txt", "content": "edited"}
    assert step.proposal["arguments"] == step.arguments
    assert step.proposal["edited"]["arguments"] == {"path": "a.txt", "content": "x"}
    call = step.proposal["assistant_message"]["tool_calls"][0]
    assert call["function"]["name"] == "write_file" and "edited" in call["function"]["arguments"]
    approved = [e for e in events_of(ledger.db, task_id) if e.kind == "step.approved"]
    assert approved[0].data["decision"] == "edited"


def test_feedback_completes_the_step_without_its_command_and_starts_the_next(ledger, lc_publisher) -> None:  # type: ignore[no-untyped-def]
    task_id = new_task(ledger, approval="always")
    park_for_approval(ledger, task_id)
    assert lifecycle.approve(ledger.db, lc_publisher, task_id, feedback="Write b.txt instead.") == "running"
    steps = steps_of(ledger.db, task_id)
    assert [(s.step_index, s.status) for s in steps] == [(0, "completed"), (1, "pending")]
    assert steps[0].output is not None and "Write b.txt instead." in steps[0].output
    assert steps[0].act_started_at is None  # the command never ran
    assert task_row(ledger.db, task_id).steps_completed == 1
    assert (1, "think", True) in outbox(ledger.db, task_id)
    assert Counter(kinds(ledger.db, task_id))["step.completed"] == 1
    assert claim(ledger, task_id, 1, "think").outcome is ClaimOutcome.claimed


def test_a_paused_task_can_be_approved_and_runs_the_step_once_resumed(ledger, lc_publisher) -> None:  # type: ignore[no-untyped-def]
    task_id = new_task(ledger, approval="always")
    park_for_approval(ledger, task_id)
    assert lifecycle.pause(ledger.db, lc_publisher, task_id) == "paused"
    assert lifecycle.approve(ledger.db, lc_publisher, task_id) == "paused"
    assert (0, "act", True) not in outbox(ledger.db, task_id)
    assert lifecycle.resume(ledger.db, lc_publisher, task_id) == "running"
    assert (0, "act", True) in outbox(ledger.db, task_id)


def test_a_paused_task_waiting_for_approval_resumes_to_waiting(ledger, lc_publisher) -> None:  # type: ignore[no-untyped-def]
    task_id = new_task(ledger, approval="always")
    park_for_approval(ledger, task_id)
    lifecycle.pause(ledger.db, lc_publisher, task_id)
    assert lifecycle.resume(ledger.db, lc_publisher, task_id) == "awaiting_approval"
    assert lifecycle.cancel(ledger.db, lc_publisher, task_id) == "cancelled"  # nothing in flight
    assert [s.status for s in steps_of(ledger.db, task_id)] == ["cancelled"]


# -- deadline ----------------------------------------------------------------------------------------------------


def test_a_task_past_its_deadline_fails_at_the_next_step_boundary(ledger) -> None:  # type: ignore[no-untyped-def]
    task_id = new_task(ledger, deadline=datetime.now(UTC) + timedelta(seconds=1))
    c = claim(ledger, task_id, 0, "think")
    ledger.propose(task_id, 0, c.token, PROPOSAL)
    time.sleep(1.2)
    result = claim(ledger, task_id, 0, "act")
    assert result.outcome is ClaimOutcome.deadline and result.reason and result.reason.startswith("deadline")
    task = task_row(ledger.db, task_id)
    assert task.status == "failed" and task.error.startswith("deadline")
    failed = [e for e in events_of(ledger.db, task_id) if e.kind == "task.failed"]
    assert len(failed) == 1 and failed[0].data["code"] == "deadline"


def test_the_reaper_fails_an_idle_task_past_its_deadline(ledger, lc_publisher) -> None:  # type: ignore[no-untyped-def]
    task_id = new_task(ledger, deadline=datetime.now(UTC) + timedelta(seconds=1))
    lifecycle.pause(ledger.db, lc_publisher, task_id)
    busy = new_task(ledger, deadline=datetime.now(UTC) + timedelta(seconds=1))
    claim(ledger, busy, 0, "think")  # a worker is on it: it fails at its boundary, not under its feet
    time.sleep(1.2)
    report = Reaper(ledger, lc_publisher, outbox_grace_s=3600, interval_s=1).run_once()
    assert report.deadlines_expired >= 1
    task = task_row(ledger.db, task_id)
    assert task.status == "failed" and "while it was paused" in (task.error or "")
    assert task_row(ledger.db, busy).status == "running"


# -- the stuck detector ------------------------------------------------------------------------------------------


def test_the_stuck_detector_names_why_nothing_moves(ledger, lc_publisher) -> None:  # type: ignore[no-untyped-def]
    from autogpt_workers.stuck import count_stuck, find_stuck

    expired = new_task(ledger)
    claim(ledger, expired, 0, "think")
    expire_leases(ledger.db, expired)
    unpublished = new_task(ledger)  # its first wake-up was never published
    waiting = new_task(ledger, approval="always")
    park_for_approval(ledger, waiting)
    paused = new_task(ledger)
    lifecycle.pause(ledger.db, lc_publisher, paused)
    consumed = new_task(ledger)
    ledger.mark_published([w.outbox_id for w in ledger.pending_wakeups(consumed)])
    live = new_task(ledger)
    claim(ledger, live, 0, "think", ttl=600)
    later = datetime.now(UTC) + timedelta(seconds=120)
    found = {t.task_id: t for t in find_stuck(ledger.db, 60, now=later)}
    assert found[expired].reason == "lease_expired"
    assert found[unpublished].reason == "wakeup_unpublished"
    assert found[waiting].reason == "awaiting_approval"
    assert found[paused].reason == "paused"
    assert found[consumed].reason == "wakeup_not_consumed"
    assert found[live].reason == "phase_running_long"
    assert all(t.idle_s >= 60 for t in found.values())
    assert expired not in {t.task_id for t in find_stuck(ledger.db, 60)}  # not idle long enough yet
    assert count_stuck(ledger.db, 0) >= 6


def test_the_reaper_rearms_a_wakeup_that_was_published_but_never_consumed(ledger, lc_publisher) -> None:  # type: ignore[no-untyped-def]
    task_id = new_task(ledger)
    ledger.mark_published([w.outbox_id for w in ledger.pending_wakeups(task_id)])  # then the message was lost
    with ledger.db.transaction() as s:
        s.execute(update(Outbox).where(Outbox.task_id == task_id).values(published_at=Outbox.created_at))
    time.sleep(0.2)
    rearmed = [w for w in ledger.rearm_orphans(older_than_s=0.1) if w.task_id == task_id]
    assert [(w.step_index, w.phase) for w in rearmed] == [(0, "think")]
    assert claim(ledger, task_id, 0, "think").outcome is ClaimOutcome.claimed
    assert [w for w in ledger.rearm_orphans(older_than_s=0.1) if w.task_id == task_id] == []  # claimed since
    with ledger.db.session() as s:
        assert s.get_one(Task, task_id).status == "running"


def test_the_stuck_command_lists_them_and_exits_1(ledger, lc_urls) -> None:  # type: ignore[no-untyped-def]
    import json
    import os
    import subprocess
    import sys

    task_id = new_task(ledger)
    claim(ledger, task_id, 0, "think")
    expire_leases(ledger.db, task_id)
    env = {**os.environ, "AUTOGPT_DATABASE_URL": lc_urls[0], "AUTOGPT_BROKER_URL": lc_urls[1]}
    cli = [sys.executable, "-m", "autogpt_workers.cli", "stuck"]
    found = subprocess.run([*cli, "--older-than", "0", "--json", "--limit", "1000"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert found.returncode == 1, found.stderr
    rows = {r["task_id"]: r for r in map(json.loads, found.stdout.splitlines())}
    assert rows[str(task_id)]["reason"] == "lease_expired" and "reaper" in rows[str(task_id)]["detail"]
    none = subprocess.run([*cli, "--older-than", "86400"], env=env, capture_output=True, text=True, timeout=120)
    assert none.returncode == 0 and "no task idle" in none.stdout


def test_each_phase_has_its_own_redelivery_budget(ledger) -> None:  # type: ignore[no-untyped-def]
    """A think phase that needed several deliveries (its workers were killed) does not poison the act phase."""
    task_id = new_task(ledger)
    for _ in range(4):  # four think deliveries lost (lease expired each time), the fifth proposes
        assert ledger.claim(task_id, 0, "think", "w", 0.001, max_deliveries=5).outcome is ClaimOutcome.claimed
        time.sleep(0.01)
    c = ledger.claim(task_id, 0, "think", "w", 30, max_deliveries=5)
    assert c.outcome is ClaimOutcome.claimed and c.deliveries == 5
    ledger.propose(task_id, 0, c.token, PROPOSAL)
    assert steps_of(ledger.db, task_id)[0].proposal["think_deliveries"] == 5
    for attempt in range(1, 6):  # the act phase starts afresh: five deliveries, then poisoned
        a = ledger.claim(task_id, 0, "act", "w", 0.001, max_deliveries=5)
        assert a.outcome is ClaimOutcome.claimed and a.deliveries == attempt
        time.sleep(0.01)
    poisoned = ledger.claim(task_id, 0, "act", "w", 30, max_deliveries=5)
    assert poisoned.outcome is ClaimOutcome.poisoned
    assert "5 deliveries of its act phase" in (poisoned.reason or "")
    assert task_row(ledger.db, task_id).status == "failed"
