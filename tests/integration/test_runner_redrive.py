"""The step runner in-process against real PostgreSQL, a RabbitMQ vhost of its own and the fake LLM over HTTP:
what a redelivery of a committed step does, a Retry-After longer than the in-process backoff cap, and the
transactions of a pure step (``finish``, a model error).

The vhost (``<test vhost>_rd``) has no consumer, so the wake-ups the runner publishes stay on its queues to be read
back; it is created through the management API and deleted at the end.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
import structlog.testing
from kombu import Connection
from sqlalchemy import select

from autogpt_workers import runner as runner_module
from autogpt_workers.agent.loop import Agent
from autogpt_workers.broker import Publisher
from autogpt_workers.celery_app import declare_topology, make_celery
from autogpt_workers.commands import default_registry
from autogpt_workers.config import Settings
from autogpt_workers.contracts import ACT_QUEUE, THINK_QUEUE
from autogpt_workers.lease import LeaseKeeper
from autogpt_workers.llm.openai_chat import OpenAIChatModel, make_client
from autogpt_workers.runner import StepRunner
from autogpt_workers.runtime import facts_reader
from autogpt_workers.store.ledger import ClaimOutcome, Ledger
from autogpt_workers.store.models import Outbox, Step, Task
from autogpt_workers.task_facts import Facts, TaskFacts
from tests.integration.conftest import counted, private_vhost

PROPOSAL = {
    "assistant_message": {"role": "assistant", "content": "write it"},
    "command": "write_file",
    "arguments": {"path": "a.txt", "content": "x"},
    "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    "cost_usd": 0.01,
    "model": "m",
}


@pytest.fixture(scope="module")
def broker_url(settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with private_vhost(settings.broker_url, "rd") as url:
        yield url


@pytest.fixture(scope="module")
def run_settings(settings, broker_url: str) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(database_url=settings.database_url, broker_url=broker_url, workspace_root=settings.workspace_root)


@pytest.fixture
def runner(db, run_settings: Settings, fake_llm: str) -> Iterator[StepRunner]:  # type: ignore[no-untyped-def]
    app = make_celery(run_settings)
    declare_topology(app)
    ledger = Ledger(db)
    llm = OpenAIChatModel(make_client(f"{fake_llm}/v1", "test-key", 10.0, 10), "scripted-demo", max_attempts=3,
                          backoff_max_s=run_settings.llm_backoff_max_s)
    registry = default_registry(run_settings.max_file_bytes, load_plugins=False)
    facts = TaskFacts(facts_reader(db))  # as the worker wires them: the agent's profile lookup reads the facts
    agent = Agent(llm, registry, run_settings.price_per_1k, profile_of=facts.profile_of)
    leases = LeaseKeeper(lambda tokens: ledger.renew(tokens, run_settings.lease_ttl_s),
                         run_settings.lease_heartbeat_s, run_settings.lease_ttl_s)
    yield StepRunner(ledger, Publisher(app), agent, run_settings, "test-runner", leases, facts=facts)
    with Connection(run_settings.broker_url) as conn:
        for q in (THINK_QUEUE, ACT_QUEUE):
            conn.default_channel.queue_purge(q)


def queued(broker_url: str, queue: str) -> list[tuple[dict[str, Any], list[Any]]]:
    """Take every message off ``queue``: (headers, args) of each Celery wake-up."""
    out = []
    with Connection(broker_url) as conn:
        channel = conn.default_channel
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            args, _kwargs, _embed = json.loads(message.body)
            out.append((dict(message.headers), args))
    return out


def new_task(ledger: Ledger, goal: str) -> uuid.UUID:
    with ledger.db.transaction() as s:
        created = ledger.create_task(s, {"goal": goal, "budget": {}, "metadata_": {}, "priority": 3})
    assert created is not None
    return created[0]


def commit(ledger: Ledger, task_id: uuid.UUID, step: int) -> None:
    """Step ``step`` through think and act to committed, by the ledger alone (no publish)."""
    c = ledger.claim(task_id, step, "think", "w1", 30.0, 5)
    assert c.token is not None
    ledger.record_proposal(task_id, step, c.token, PROPOSAL)
    a = ledger.claim(task_id, step, "act", "w1", 30.0, 5)
    assert a.token is not None
    committed, _ = ledger.commit_step(task_id, step, a.token, f"wrote step {step}", False, False)
    assert committed


def step_row(ledger: Ledger, task_id: uuid.UUID, index: int) -> dict[str, Any]:
    with ledger.db.session() as s:
        step = s.scalars(select(Step).where(Step.task_id == task_id, Step.step_index == index)).one()
        return {c: getattr(step, c) for c in ("status", "deliveries", "output", "committed_at", "llm_calls", "error")}


def test_a_redelivered_committed_step_is_not_run_again_and_rearms_its_successor(
    runner: StepRunner, broker_url: str, llm: Any
) -> None:
    ledger = runner.ledger
    task_id = new_task(ledger, "Redrive me")
    commit(ledger, task_id, 0)
    commit(ledger, task_id, 1)  # step 1 (not the last) committed; the process died before publishing step 2
    ledger.mark_published([w.outbox_id for w in ledger.pending_wakeups(task_id) if w.step_index < 2])
    assert [(w.step_index, w.phase) for w in ledger.pending_wakeups(task_id)] == [(2, "think")]
    before = step_row(ledger, task_id, 1)

    # the broker redelivers step 1's think and act wake-ups
    assert runner.think(task_id, 1) == "skipped: committed"
    assert runner.act(task_id, 1) == "skipped: committed"

    assert step_row(ledger, task_id, 1) == before  # not claimed, not run, nothing rewritten
    assert llm.log(str(task_id)) == []  # no completion bought
    # step 2's wake-up is on the think queue (once per redelivery: a duplicate is settled by the claim)
    messages = queued(broker_url, THINK_QUEUE)
    assert messages and all(args == [str(task_id), 2] for _, args in messages), messages
    assert all(headers["task"] == "autogpt.think" for headers, _ in messages)
    assert queued(broker_url, ACT_QUEUE) == []
    runner.marks.flush()
    assert ledger.pending_wakeups(task_id) == []  # marked published: the reaper will not send it again
    # and step 2 runs from it
    assert ledger.claim(task_id, 2, "think", "w2", 30.0, 5).outcome is ClaimOutcome.claimed


def test_a_retry_after_beyond_the_backoff_cap_hands_the_step_back_for_that_long(
    runner: StepRunner, broker_url: str, llm: Any, db: Any
) -> None:
    wait_s = 40.0
    assert wait_s > runner.settings.llm_backoff_max_s
    llm.register_script("slowdown", [{"tool": "finish", "arguments": {"reason": "x"}, "faults": ["429"],
                                      "retry_after": wait_s}])
    task_id = new_task(runner.ledger, "Be patient [[script:slowdown]]")
    started = time.monotonic()
    outcome = runner.think(task_id, 0)
    assert time.monotonic() - started < 5, "the server's wait was not spent in the worker"
    assert outcome.startswith("retry in 4"), outcome
    # one request: no in-process retry of a request the server told us to hold back
    assert [e["outcome"] for e in llm.log(str(task_id))] == ["429"]
    row = step_row(runner.ledger, task_id, 0)
    assert row["status"] == "pending" and row["deliveries"] == 0  # handed back; not a failed delivery
    assert "asked to wait 40.0s" in row["error"]
    # the wake-up is back on the think queue, due after the server's wait
    ((headers, args),) = queued(broker_url, THINK_QUEUE)
    assert args == [str(task_id), 0]
    due_in = (datetime.fromisoformat(headers["eta"]) - datetime.now(UTC)).total_seconds()
    assert wait_s - 2 <= due_in <= wait_s + 1, due_in
    with db.session() as s:
        assert s.scalar(select(Outbox.published_at).where(Outbox.task_id == task_id, Outbox.step_index == 0))


def test_a_think_past_its_time_limit_is_handed_back_while_its_call_runs_on(
    runner: StepRunner, broker_url: str, llm: Any
) -> None:
    """The LLM call runs on the delivery's own thread; the supervisor takes it over at the think time limit (less
    its 5 s margin): the step is handed back at once, and the late answer is dropped when the call returns."""
    runner.settings = runner.settings.model_copy(update={"think_time_limit_s": 6.0})  # a 1 s limit
    llm.register_script("slowpoke", [{"tool": "finish", "arguments": {"reason": "x"}, "latency_s": 8.0}])
    task_id = new_task(runner.ledger, "Take your time [[script:slowpoke]]")
    outcome: list[str] = []
    delivery = threading.Thread(target=lambda: outcome.append(runner.think(task_id, 0)), name="delivery")
    delivery.start()
    deadline = time.monotonic() + 7
    while step_row(runner.ledger, task_id, 0)["error"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    row = step_row(runner.ledger, task_id, 0)
    assert delivery.is_alive(), "the step should be handed back while the call still runs"
    assert [e["done_ts"] for e in llm.log(str(task_id))] == [None]  # the model has not answered yet
    assert row["status"] == "pending" and row["error"] == "handed back: think time limit", row
    wakeups = queued(broker_url, THINK_QUEUE)  # its wake-up is back for another worker (published after the commit)
    while not wakeups and time.monotonic() < deadline:
        time.sleep(0.05)
        wakeups = queued(broker_url, THINK_QUEUE)
    assert [args for _headers, args in wakeups] == [[str(task_id), 0]]
    delivery.join(15)
    assert not delivery.is_alive() and outcome and outcome[0].startswith("retry"), outcome
    # the late answer changed nothing: no proposal, no cost, nothing more queued
    assert step_row(runner.ledger, task_id, 0) == row
    assert queued(broker_url, THINK_QUEUE) == [] and queued(broker_url, ACT_QUEUE) == []


def test_the_hand_back_delay_is_bounded(run_settings: Settings, runner: StepRunner) -> None:
    bound = min(run_settings.llm_retry_after_max_s, 0.9 * run_settings.redrive_after_s)
    assert runner._retry_after(10_000) == bound
    assert runner._retry_after(None) == 0.0 and runner._retry_after(12.5) == 12.5


def test_a_finish_step_takes_two_transactions_and_a_model_error_step_hands_on(
    runner: StepRunner, broker_url: str, llm: Any
) -> None:
    """``finish`` and a model error are pure: the think phase runs them and commits the proposal with the outcome
    (claim, then one transaction), and a step that is not the last publishes its successor's think wake-up."""
    llm.register_script("pure", [{"content": "no tool call"}, {"tool": "finish", "arguments": {"reason": "all done"}}])
    task_id = new_task(runner.ledger, "Be quick [[script:pure]]")
    with counted(runner.ledger.db.engine, "commit") as commits:
        assert runner.think(task_id, 0) == "committed step 0"
        assert commits[0] == 2, commits  # the claim, then the proposal with the outcome
        assert [args for _, args in queued(broker_url, THINK_QUEUE)] == [[str(task_id), 1]]
        assert runner.think(task_id, 1) == "finished"
        assert commits[0] == 4, commits
    first, last = step_row(runner.ledger, task_id, 0), step_row(runner.ledger, task_id, 1)
    assert (first["status"], first["llm_calls"]) == ("completed", 1) and "did not call any command" in first["output"]
    assert (last["status"], last["output"], last["llm_calls"]) == ("completed", "all done", 1)
    assert queued(broker_url, ACT_QUEUE) == []
    with runner.ledger.db.session() as s:
        assert s.scalar(select(Task.status).where(Task.id == task_id)) == "completed"


def test_a_tasks_tenant_and_profile_come_with_its_claim(runner: StepRunner, llm: Any) -> None:
    """The agent looks the task's profile up on every think; the claim already read it (and the tenant), so a
    step reads neither on its own: no read-only transaction besides the step's own."""
    llm.register_script("facts", [{"content": "no tool call"}, {"tool": "finish", "arguments": {"reason": "done"}}])
    task_id = new_task(runner.ledger, "Know me [[script:facts]]")
    with counted(runner.ledger.db.engine, "rollback") as reads:
        assert runner.think(task_id, 0) == "committed step 0"
        assert runner.think(task_id, 1) == "finished"
    assert reads[0] == 0, reads
    with runner.ledger.db.session() as s:
        tenant = s.scalar(select(Task.tenant_id).where(Task.id == task_id))
    assert runner.facts.known(str(task_id)) == Facts(tenant, None) and runner.facts.reads == 0
    other = new_task(runner.ledger, "Never claimed here")
    assert runner.facts.profile_of(str(other)) is None and runner.facts.reads == 1  # read once, then kept
    assert runner.facts.tenant_of(str(other)) == tenant and runner.facts.reads == 1


@pytest.fixture
def runner_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """The step runner's structlog events. Another test of the session may have configured structlog (the CLI run
    in-process) with loggers cached on first use, which ``capture_logs`` cannot see into: the runner gets a fresh
    logger on the default configuration for the test, and the configuration is restored after."""
    old = structlog.get_config()
    structlog.reset_defaults()
    try:
        with structlog.testing.capture_logs() as logs:
            monkeypatch.setattr(runner_module, "log", structlog.get_logger(runner_module.__name__))
            yield logs
    finally:
        structlog.configure(**old)


def test_a_step_run_through_in_one_worker_logs_one_line(
    runner: StepRunner, llm: Any, runner_logs: list[dict[str, Any]]
) -> None:
    """When the act phase goes on in the think worker (inline ``write_file``, pure ``finish``), the step logs one
    ``step_committed`` line that carries the proposal's facts, and no ``step_proposed`` line before it."""
    llm.register_script("one-line", [
        {"tool": "write_file", "arguments": {"path": "a.txt", "content": "x"}},
        {"tool": "finish", "arguments": {"reason": "done"}},
    ])  # fmt: skip
    task_id = new_task(runner.ledger, "Write a file [[script:one-line]]")
    assert runner.think(task_id, 0) == "committed step 0"
    assert runner.think(task_id, 1) == "finished"
    lines = [(e["event"], e.get("step"), e.get("inline"), e.get("command")) for e in runner_logs
             if e["event"] in ("step_proposed", "step_committed")]  # fmt: skip
    assert lines == [("step_committed", 0, True, "write_file"), ("step_committed", 1, True, "finish")]
    assert all(isinstance(e.get("tokens"), int) for e in runner_logs if e["event"] == "step_committed")
