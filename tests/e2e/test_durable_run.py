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

from autogpt_workers.store.models import Step, Task, TaskEvent


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


def test_sigkill_of_the_act_worker_at_random_moments(stack, llm, db) -> None:  # type: ignore[no-untyped-def]
    task_ids = [submit(stack, f"Many steps [[steps:10]] run {i}") for i in range(4)]
    for _ in range(3):
        time.sleep(0.7)
        stack["act"].kill(9)
        stack["act"].start()
    for task_id in task_ids:
        task = wait_terminal(stack, task_id, timeout_s=150)
        assert task["status"] == "completed", task
        steps = ledger_steps(db, task_id)
        assert [s.step_index for s in steps] == list(range(10))
        assert all(s.status == "completed" for s in steps)
        # a proposal is persisted before acting: a crash in act never buys the completion again
        assert all(n == 1 for n in ok_calls_per_turn(llm, task_id).values())


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
