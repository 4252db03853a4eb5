"""The lifecycle end to end: real API, think and act workers and reaper processes on their own database and vhost,
the fake OpenAI-compatible LLM over HTTP. Cancel, pause/resume, the approval gate and the deadline as a user
sees them through ``/v1/tasks/{id}/...``."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from autogpt_workers.store.models import Step
from tests.lifecycle.conftest import events_of, steps_of, task_row, wait_for, wait_status


def write(path: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"tool": "write_file", "arguments": {"path": path, "content": content}, "content": f"write {path}", **extra}


FINISH = {"tool": "finish", "arguments": {"reason": "done"}, "content": "Done."}


def ok_calls(llm, task_id: uuid.UUID) -> Counter[int]:  # type: ignore[no-untyped-def]
    return Counter(e["turn"] for e in llm.log(str(task_id)) if e["outcome"] == "ok")


def live_leases(db, task_id: uuid.UUID) -> list[Step]:  # type: ignore[no-untyped-def]
    return [s for s in steps_of(db, task_id) if s.lease_token is not None]


def awaiting(stack, db, task_id: uuid.UUID, step: int) -> None:  # type: ignore[no-untyped-def]
    def parked() -> bool:
        rows = steps_of(db, task_id)
        return len(rows) > step and rows[step].status == "awaiting_approval"

    wait_for(parked, 60, f"step {step} awaiting approval")
    assert task_row(db, task_id).status == "awaiting_approval"


def test_cancel_abandons_the_llm_call_in_flight_and_nothing_runs_afterwards(lc_stack, lc_db, lc_publisher, llm) -> None:  # type: ignore[no-untyped-def]
    llm.register_script("cancelme", [write("a.txt", "1"), write("b.txt", "2"), write("c.txt", "3", latency_s=8.0),
                                     write("d.txt", "4"), FINISH])
    task_id = lc_stack.submit("Cancel me mid-call [[script:cancelme]]")
    wait_for(lambda: any(e["turn"] == 2 for e in llm.log(str(task_id))), 60, "turn 2 reaching the LLM")
    resp = lc_stack.post(f"/v1/tasks/{task_id}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelling", resp.text
    task = wait_status(lc_db, task_id, ("cancelled",), timeout_s=30)
    # abandoned, not awaited: the model had not answered when the task was cancelled
    call = next(e for e in llm.log(str(task_id)) if e["turn"] == 2)
    assert call["done_ts"] is None or call["done_ts"] > task.finished_at.timestamp()
    # whatever arrives later runs nothing: stray wake-ups for the cancelled step and the next one
    for step, phase in ((2, "think"), (2, "act"), (3, "think")):
        lc_publisher.wake(task_id, step, phase, 5)
    wait_for(lambda: (call2 := next(e for e in llm.log(str(task_id)) if e["turn"] == 2))["done_ts"] is not None
             and call2, 30, "the abandoned call to end")
    time.sleep(1.5)
    steps = steps_of(lc_db, task_id)
    assert [(s.step_index, s.status) for s in steps] == [(0, "completed"), (1, "completed"), (2, "cancelled")]
    assert steps[2].proposal is None and steps[2].act_started_at is None
    assert ok_calls(llm, task_id) == Counter({0: 1, 1: 1, 2: 1})  # no turn after the cancel
    kinds = Counter(e.kind for e in events_of(lc_db, task_id))
    assert kinds["task.cancel_requested"] == 1 and kinds["task.cancelled"] == 1 and kinds["step.completed"] == 2
    assert lc_stack.post(f"/v1/tasks/{task_id}/cancel").json()["status"] == "cancelled"
    assert lc_stack.post(f"/v1/tasks/{task_id}/resume").status_code == 409


def test_cancel_terminates_a_running_sandboxed_command_and_commits_nothing_of_it(lc_stack, lc_db, llm) -> None:  # type: ignore[no-untyped-def]
    code = "import time\nopen('started.txt', 'w').write('yes')\nwhile True:\n    time.sleep(0.1)\n"
    llm.register_script("cancelcmd", [write("a.txt", "1"),
                                      {"tool": "execute_python", "arguments": {"code": code}, "content": "loop"},
                                      write("never.txt", "2"), FINISH])
    task_id = lc_stack.submit("Cancel my command [[script:cancelcmd]]")

    def command_running() -> bool:
        rows = steps_of(lc_db, task_id)
        return len(rows) > 1 and rows[1].status == "acting"

    wait_for(command_running, 60, "step 1's command running")
    time.sleep(1.0)  # well inside the program's loop (its wall-clock limit is far away)
    asked = time.monotonic()
    resp = lc_stack.post(f"/v1/tasks/{task_id}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelling", resp.text
    task = wait_status(lc_db, task_id, ("cancelled", "completed", "failed"), timeout_s=30)
    took = time.monotonic() - asked
    assert task.status == "cancelled"
    # terminated, not waited out: the sandbox's wall-clock limit (30 s by default) is what would end it otherwise
    assert took < 15, f"cancel took {took:.1f} s"
    steps = steps_of(lc_db, task_id)
    assert [(s.step_index, s.status) for s in steps] == [(0, "completed"), (1, "cancelled")]
    assert steps[1].output is None and steps[1].lease_token is None  # nothing of the cut-short command committed
    assert ok_calls(llm, task_id) == Counter({0: 1, 1: 1})


def test_pause_frees_the_worker_and_resume_continues_from_the_last_committed_step(lc_stack, lc_db, llm) -> None:  # type: ignore[no-untyped-def]
    llm.set_config(latency_s=0.4)
    task_id = lc_stack.submit("Pause me [[steps:6]]")
    wait_for(lambda: task_row(lc_db, task_id).steps_completed >= 2, 60, "two committed steps")
    assert lc_stack.post(f"/v1/tasks/{task_id}/pause").json()["status"] == "paused"
    wait_for(lambda: not live_leases(lc_db, task_id), 30, "the phase in flight to finish")
    held_steps = task_row(lc_db, task_id).steps_completed
    held_calls = len(llm.log(str(task_id)))
    time.sleep(2.0)  # nothing moves while paused
    assert task_row(lc_db, task_id).steps_completed == held_steps
    assert len(llm.log(str(task_id))) == held_calls
    assert not live_leases(lc_db, task_id)
    assert lc_stack.post(f"/v1/tasks/{task_id}/resume").json()["status"] == "running"
    task = wait_status(lc_db, task_id)
    assert task.status == "completed"
    assert [s.status for s in steps_of(lc_db, task_id)] == ["completed"] * 6
    assert ok_calls(llm, task_id) == Counter(dict.fromkeys(range(6), 1))  # no completion bought twice
    kinds = Counter(e.kind for e in events_of(lc_db, task_id))
    assert kinds["task.paused"] == 1 and kinds["task.resumed"] == 1 and kinds["step.completed"] == 6


def test_approval_mode_approve_edit_and_feedback_through_the_api(lc_stack, lc_db, llm, settings) -> None:  # type: ignore[no-untyped-def]
    llm.register_script("approve", [write("a.txt", "one"), write("b.txt", "two"), write("c.txt", "three"), FINISH])
    task_id = lc_stack.submit("Ask before acting [[script:approve]]", approval="always")
    workspace = settings.workspace_root / str(task_id)

    awaiting(lc_stack, lc_db, task_id, 0)
    step0 = steps_of(lc_db, task_id)[0]
    assert step0.lease_token is None and step0.act_started_at is None  # no worker slot held, nothing ran
    assert not (workspace / "a.txt").exists()
    assert lc_stack.post(f"/v1/tasks/{task_id}/approve").json()["status"] == "running"

    awaiting(lc_stack, lc_db, task_id, 1)
    assert (workspace / "a.txt").read_text() == "one"
    resp = lc_stack.post(f"/v1/tasks/{task_id}/approve", json={"arguments": {"path": "b.txt", "content": "edited"}})
    assert resp.status_code == 200, resp.text

    awaiting(lc_stack, lc_db, task_id, 2)
    assert (workspace / "b.txt").read_text() == "edited"
    resp = lc_stack.post(f"/v1/tasks/{task_id}/approve", json={"step_index": 2, "feedback": "Skip c.txt, finish."})
    assert resp.status_code == 200, resp.text

    awaiting(lc_stack, lc_db, task_id, 3)
    assert not (workspace / "c.txt").exists()  # the answered step ran nothing
    assert lc_stack.post(f"/v1/tasks/{task_id}/approve", json={}).status_code == 200
    task = wait_status(lc_db, task_id)
    assert task.status == "completed"
    steps = steps_of(lc_db, task_id)
    assert [s.command for s in steps] == ["write_file", "write_file", "write_file", "finish"]
    assert steps[1].arguments == {"path": "b.txt", "content": "edited"}
    assert steps[2].output and "Skip c.txt, finish." in steps[2].output and steps[2].act_started_at is None
    assert ok_calls(llm, task_id) == Counter({0: 1, 1: 1, 2: 1, 3: 1})
    decisions = [e.data["decision"] for e in events_of(lc_db, task_id) if e.kind == "step.approved"]
    assert decisions == ["approved", "edited", "feedback", "approved"]
    assert Counter(e.kind for e in events_of(lc_db, task_id))["step.awaiting_approval"] == 4


def test_lifecycle_routes_answer_404_409_and_422_never_500(lc_stack, lc_db, llm) -> None:  # type: ignore[no-untyped-def]
    unknown = uuid.uuid4()
    for op in ("cancel", "pause", "resume", "approve"):
        assert lc_stack.post(f"/v1/tasks/{unknown}/{op}").status_code == 404
    assert lc_stack.post("/v1/tasks/not-a-uuid/cancel").status_code == 422
    llm.register_script("one", [write("a.txt", "1"), FINISH])
    task_id = lc_stack.submit("Gate me [[script:one]]", approval="always")
    awaiting(lc_stack, lc_db, task_id, 0)
    assert lc_stack.post(f"/v1/tasks/{task_id}/resume").status_code == 409
    both = lc_stack.post(f"/v1/tasks/{task_id}/approve", json={"feedback": "no", "command": "finish"})
    assert both.status_code == 422
    assert lc_stack.post(f"/v1/tasks/{task_id}/approve", json={"step_index": 7}).status_code == 409
    assert lc_stack.post(f"/v1/tasks/{task_id}/approve", json={"surprise": 1}).status_code == 422
    # an edit naming a command the task may not run is observed as an error, not executed
    resp = lc_stack.post(f"/v1/tasks/{task_id}/approve", json={"command": "teleport", "arguments": {}})
    assert resp.status_code == 200
    awaiting(lc_stack, lc_db, task_id, 1)
    step0 = steps_of(lc_db, task_id)[0]
    assert step0.is_error and step0.output and "teleport" in step0.output
    assert lc_stack.post(f"/v1/tasks/{task_id}/cancel").json()["status"] == "cancelled"
    assert lc_stack.post(f"/v1/tasks/{task_id}/approve").status_code == 409


def test_a_task_past_its_deadline_ends_failed_deadline(lc_stack, lc_db, llm) -> None:  # type: ignore[no-untyped-def]
    llm.set_config(latency_s=0.5)
    deadline = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    task_id = lc_stack.submit("Too slow [[steps:20]]", deadline=deadline, budget={"max_steps": 20})
    task = wait_status(lc_db, task_id, timeout_s=60)
    assert task.status == "failed" and task.error.startswith("deadline"), task.error
    assert 0 < task.steps_completed < 20
    failed = [e for e in events_of(lc_db, task_id) if e.kind == "task.failed"]
    assert len(failed) == 1 and failed[0].data.get("code") == "deadline"
    assert all(s.status in ("completed", "failed") for s in steps_of(lc_db, task_id))
    past = lc_stack.post("/v1/tasks", json={"goal": "late", "deadline": "2001-01-01T00:00:00Z"})
    assert past.status_code == 422 and "deadline" in past.text
