"""End to end: tasks submitted through the HTTP API run on real worker processes (think: thread pool, act:
prefork) over real RabbitMQ and PostgreSQL, against the fake OpenAI-compatible LLM over HTTP."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from autogpt_workers.store.models import Outbox, Step, Task, TaskEvent


def submit(stack, goal: str, **fields: Any) -> str:  # type: ignore[no-untyped-def]
    resp = httpx.post(f"{stack.api_url}/v1/tasks", json={"goal": goal, **fields}, timeout=10)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def wait_terminal(stack, task_id: str, timeout_s: float = 90) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        task: dict[str, Any] = httpx.get(f"{stack.api_url}/v1/tasks/{task_id}", timeout=10).json()
        if task["status"] in ("completed", "failed", "cancelled"):
            return task
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} not terminal after {timeout_s}s: {task}")


def ledger_steps(db, task_id: str) -> list[Step]:  # type: ignore[no-untyped-def]
    with db.session() as s:
        return list(s.scalars(select(Step).where(Step.task_id == uuid.UUID(task_id)).order_by(Step.step_index)))


def event_kinds(db, task_id: str) -> Counter[str]:  # type: ignore[no-untyped-def]
    with db.session() as s:
        return Counter(s.scalars(select(TaskEvent.kind).where(TaskEvent.task_id == uuid.UUID(task_id))))


def ok_calls_per_turn(llm, task_id: str) -> Counter[int]:  # type: ignore[no-untyped-def]
    return Counter(e["turn"] for e in llm.log(task_id) if e["outcome"] == "ok")


def write(path: str, content: str) -> dict[str, Any]:
    return {"tool": "write_file", "arguments": {"path": path, "content": content}, "content": f"I will write {path}."}


FINISH = {"tool": "finish", "arguments": {"reason": "all files written"}, "content": "Done."}


def test_a_five_step_task_runs_to_completed(stack, llm, db, settings) -> None:  # type: ignore[no-untyped-def]
    llm.register_script("five", [write("a.txt", "alpha"), write("b.txt", "beta"), write("dir/c.txt", "gamma"),
                                 {"tool": "read_file", "arguments": {"path": "a.txt"}}, FINISH])
    task_id = submit(stack, "Write three files then finish [[script:five]]", budget={"max_steps": 10})
    task = wait_terminal(stack, task_id)
    assert task["status"] == "completed", task
    steps = ledger_steps(db, task_id)
    assert [s.step_index for s in steps] == [0, 1, 2, 3, 4]
    assert all(s.status == "completed" and s.committed_at is not None for s in steps)
    assert [s.command for s in steps] == ["write_file", "write_file", "write_file", "read_file", "finish"]
    assert steps[3].output is not None and "alpha" in steps[3].output
    assert steps[-1].is_last and not any(s.is_last for s in steps[:-1])
    # the files are in the task's workspace and recorded as artifacts
    workspace = settings.workspace_root / task_id
    assert (workspace / "a.txt").read_text() == "alpha"
    assert (workspace / "dir" / "c.txt").read_text() == "gamma"
    artifacts = httpx.get(f"{stack.api_url}/v1/tasks/{task_id}/artifacts").json()
    assert sorted(a["relative_path"] for a in artifacts) == ["a.txt", "b.txt", "dir/c.txt"]
    # tokens and cost are summed on the task from the steps
    usage = task["usage"]
    assert usage["prompt_tokens"] == sum(s.prompt_tokens for s in steps) > 0
    assert usage["completion_tokens"] == sum(s.completion_tokens for s in steps) > 0
    assert usage["cost_usd"] == pytest.approx(sum(s.cost_usd for s in steps)) and usage["cost_usd"] > 0
    assert task["steps_completed"] == 5
    # each completion was bought once
    assert ok_calls_per_turn(llm, task_id) == Counter({0: 1, 1: 1, 2: 1, 3: 1, 4: 1})
    # the event log has each transition exactly once
    assert event_kinds(db, task_id) == Counter(
        {"task.queued": 1, "task.started": 1, "step.proposed": 5, "step.completed": 5, "artifact.written": 3,
         "task.completed": 1}
    )


def test_sigkill_of_the_think_worker_during_the_llm_call(stack, llm, db) -> None:  # type: ignore[no-untyped-def]
    slow = {**write("slow.txt", "waited"), "latency_s": 4.0}
    llm.register_script("killthink", [write("a.txt", "1"), write("b.txt", "2"), slow, write("d.txt", "4"), FINISH])
    task_id = submit(stack, "Survive a crash [[script:killthink]]")
    deadline = time.monotonic() + 60
    while not any(e["turn"] == 2 for e in llm.log(task_id)):
        assert time.monotonic() < deadline, "turn 2 never reached the LLM"
        time.sleep(0.05)
    stack["think"].kill(9)  # SIGKILL, mid-call
    stack["think"].start()
    task = wait_terminal(stack, task_id, timeout_s=120)
    assert task["status"] == "completed", task
    steps = ledger_steps(db, task_id)
    assert [s.step_index for s in steps] == [0, 1, 2, 3, 4]
    assert all(s.status == "completed" for s in steps)
    assert steps[2].deliveries >= 2  # the killed delivery, then the recovery
    assert event_kinds(db, task_id)["step.completed"] == 5
    calls = ok_calls_per_turn(llm, task_id)
    # only the completion in flight when the worker died may be bought twice
    assert calls[2] <= 2 and all(calls[t] == 1 for t in (0, 1, 3, 4)), calls


def act_deliveries(step: Step) -> int:
    """How many deliveries the step's act phase had (the think phase's count is recorded in the proposal)."""
    think = int((step.proposal or {}).get("think_deliveries") or 0)
    return step.deliveries - think


def wait_acting(db, task_id: str, step_index: int, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
    """Until the act worker holds the step's act phase (status ``acting``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with db.session() as s:
            status = s.scalar(select(Step.status).where(Step.task_id == uuid.UUID(task_id),
                                                       Step.step_index == step_index))
        if status == "acting":
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step_index} of {task_id} never reached the act worker")


@pytest.fixture
def think_without_inline_act(stack):  # type: ignore[no-untyped-def]
    """The stack's think worker swapped for one with inline act off: every command goes to the act queue."""
    from tests.conftest import Proc

    stack["think"].stop()
    think = Proc("worker-think-no-inline", stack["think"].args, {**stack.env, "AUTOGPT_INLINE_ACT": "false"}).start()
    try:
        yield think
    finally:
        think.stop()
        stack["think"].start()


def test_sigkill_of_the_act_worker_at_random_moments(stack, llm, db, settings, think_without_inline_act) -> None:  # type: ignore[no-untyped-def]
    # one task whose act phase is slow (a sandboxed program sleeping), so one kill lands mid-command for sure
    slow = {"tool": "execute_python", "content": "I will run a slow program.",
            "arguments": {"code": "import time\ntime.sleep(3)\nopen('slow.txt', 'w').write('done')\nprint('ok')"}}
    llm.register_script("killact", [write("a.txt", "1"), slow, write("c.txt", "3"), FINISH])
    slow_id = submit(stack, "Survive an act crash [[script:killact]]")
    task_ids = [submit(stack, f"Many steps [[steps:10]] run {i}") for i in range(4)]
    wait_acting(db, slow_id, 1)
    time.sleep(0.5)  # the program is running in the act worker's sandbox
    stack["act"].kill(9)  # SIGKILL, mid-command
    stack["act"].start()
    for _ in range(3):  # and at random moments while the other tasks' commands flow through the act queue
        time.sleep(0.7)
        stack["act"].kill(9)
        stack["act"].start()
    for task_id, n in [(slow_id, 4)] + [(t, 10) for t in task_ids]:
        task = wait_terminal(stack, task_id, timeout_s=150)
        assert task["status"] == "completed", task
        steps = ledger_steps(db, task_id)
        assert [s.step_index for s in steps] == list(range(n))
        assert all(s.status == "completed" for s in steps)
        # every step committed exactly once, though some act phases ran twice
        assert event_kinds(db, task_id)["step.completed"] == n
        assert task["steps_completed"] == n
        # a proposal is persisted before acting: a crash in act never buys the completion again
        assert all(c == 1 for c in ok_calls_per_turn(llm, task_id).values())
        # the commands went through the act queue (inline act off): each step has an act wake-up in the outbox
        with db.session() as s:
            acts = set(s.scalars(select(Outbox.step_index).where(Outbox.task_id == uuid.UUID(task_id),
                                                                  Outbox.phase == "act")))
        assert acts == set(range(n)), acts
    slow_steps = ledger_steps(db, slow_id)
    # the killed act phase was delivered again and its command re-run to completion by the new worker
    assert act_deliveries(slow_steps[1]) >= 2, slow_steps[1].deliveries
    assert slow_steps[1].command == "execute_python" and not slow_steps[1].is_error, slow_steps[1].output
    assert (settings.workspace_root / slow_id / "slow.txt").read_text() == "done"


def test_an_llm_answering_429_twice_then_succeeding(stack, llm, db) -> None:  # type: ignore[no-untyped-def]
    llm.register_script("ratelimited", [{**write("a.txt", "x"), "faults": ["429", "429"], "retry_after": 0.2}, FINISH])
    task_id = submit(stack, "Rate limited [[script:ratelimited]]")
    task = wait_terminal(stack, task_id)
    assert task["status"] == "completed", task
    outcomes = [e["outcome"] for e in llm.log(task_id) if e["turn"] == 0]
    assert outcomes == ["429", "429", "ok"]
    assert len(ledger_steps(db, task_id)) == 2


def test_malformed_tool_arguments_are_fed_back_and_the_task_completes(stack, llm, db) -> None:  # type: ignore[no-untyped-def]
    llm.register_script(
        "malformed",
        [write("a.txt", "x"), {"tool": "write_file", "raw_arguments": '{"path": "b.txt", "content": '},
         write("b.txt", "fixed"), FINISH],
    )
    task_id = submit(stack, "Recover from a bad reply [[script:malformed]]")
    task = wait_terminal(stack, task_id)
    assert task["status"] == "completed", task
    steps = ledger_steps(db, task_id)
    assert len(steps) == 4
    assert steps[1].is_error and steps[1].output and "JSON" in steps[1].output
    assert not steps[2].is_error


def test_a_task_over_its_step_budget_fails_with_a_clear_reason(stack, llm, db) -> None:  # type: ignore[no-untyped-def]
    task_id = submit(stack, "Too long [[steps:10]]", budget={"max_steps": 3})
    task = wait_terminal(stack, task_id)
    assert task["status"] == "failed"
    assert "step budget" in task["error"] and "3" in task["error"]
    assert task["steps_completed"] == 3
    with db.session() as s:
        assert s.get_one(Task, uuid.UUID(task_id)).finished_at is not None
    assert len(llm.log(task_id)) == 3  # the budget is checked before the LLM call


def test_an_allow_list_naming_an_unknown_command_fails_the_task_clearly(stack, llm) -> None:  # type: ignore[no-untyped-def]
    task_id = submit(stack, "Use a tool we lack [[steps:2]]", allowed_commands=["write_file", "teleport"])
    task = wait_terminal(stack, task_id)
    assert task["status"] == "failed" and "teleport" in task["error"]
