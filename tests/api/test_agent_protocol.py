"""Agent Protocol v1 over asynchronous workers: step-at-a-time execution with approval and feedback, no second
step from repeated requests, the wait bound, continuous mode, artifacts in and out, and the response shapes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from autogpt_workers.store.models import Step, TaskEvent
from tests.api.conftest import Gateway, wait_for

TASK_KEYS = {"task_id", "input", "additional_input", "artifacts", "created_at", "modified_at"}
STEP_KEYS = {
    "task_id",
    "step_id",
    "name",
    "status",
    "input",
    "additional_input",
    "output",
    "additional_output",
    "artifacts",
    "is_last",
    "created_at",
    "modified_at",
}
ARTIFACT_KEYS = {"artifact_id", "agent_created", "file_name", "relative_path", "created_at", "modified_at"}


def write(path: str, content: str, **extra: Any) -> dict[str, Any]:
    return {
        "tool": "write_file",
        "arguments": {"path": path, "content": content},
        "content": f"Writing {path}.",
        **extra,
    }


FINISH = {"tool": "finish", "arguments": {"reason": "done"}, "content": "All done."}


def ledger(db: Any, task_id: str) -> dict[int, str]:
    with db.session() as s:
        rows = s.execute(select(Step.step_index, Step.status).where(Step.task_id == uuid.UUID(task_id)))
        return {i: st for i, st in rows}


def events_of(db: Any, task_id: str) -> list[str]:
    with db.session() as s:
        rows = s.scalars(select(TaskEvent.kind).where(TaskEvent.task_id == uuid.UUID(task_id)).order_by(TaskEvent.id))
        return list(rows)


def test_step_by_step_with_approval_and_feedback(gateway: Gateway, llm: Any, db: Any) -> None:
    llm.register_script("ap3", [write("out.txt", "Washington"), write("wrong.txt", "x"), write("b.txt", "b"), FINISH])
    t = gateway.tenant("ap")
    with gateway.client(t) as c:
        created = c.post(
            "/ap/v1/agent/tasks",
            json={"input": "Write the word [[script:ap3]]", "additional_input": {"test_run_id": "123"}},
        )
        assert created.status_code == 200 and set(created.json()) == TASK_KEYS
        task = created.json()
        assert task["additional_input"] == {"test_run_id": "123"} and task["artifacts"] == []
        tid = task["task_id"]
        # nothing runs until a request releases the proposal
        wait_for(lambda: ledger(db, tid).get(0) == "awaiting_approval", 120, "step 0 awaiting approval")
        # the first request repeats the task's input (as the protocol's clients do): it approves step 0
        first = c.post(f"/ap/v1/agent/tasks/{tid}/steps", json={"input": "Write the word [[script:ap3]]"}).json()
        assert set(first) == STEP_KEYS
        assert first["status"] == "completed" and first["name"] == "write_file" and not first["is_last"]
        assert first["additional_output"]["step_index"] == 0 and "out.txt" in first["output"]
        assert [a["file_name"] for a in first["artifacts"]] == ["out.txt"] and first["artifacts"][0]["agent_created"]
        assert set(first["artifacts"][0]) == ARTIFACT_KEYS
        # step 1 now waits for approval, and nothing runs it until asked
        wait_for(lambda: ledger(db, tid).get(1) == "awaiting_approval", 120, "step 1 awaiting approval")
        listed = c.get(f"/ap/v1/agent/tasks/{tid}/steps").json()
        assert listed["steps"][1]["status"] == "created" and "wrong.txt" in listed["steps"][1]["output"]
        assert listed["steps"][1]["additional_output"]["awaiting_approval"] is True
        # any other input is feedback: the proposed command does not run
        answered = c.post(f"/ap/v1/agent/tasks/{tid}/steps", json={"input": "No, not that file"}).json()
        assert answered["additional_output"]["step_index"] == 1 and answered["status"] == "completed"
        assert "No, not that file" in answered["output"] and answered["input"] == "No, not that file"
        assert answered["artifacts"] == []
        second = c.post(f"/ap/v1/agent/tasks/{tid}/steps", json={"input": "y"}).json()
        assert second["additional_output"]["step_index"] == 2 and second["name"] == "write_file"
        last = c.post(f"/ap/v1/agent/tasks/{tid}/steps").json()  # an empty body approves too
        assert last["name"] == "finish" and last["is_last"] is True and last["status"] == "completed"
        again = c.post(f"/ap/v1/agent/tasks/{tid}/steps", json={"input": "y"})
        assert again.status_code == 200 and again.json()["is_last"] is True
        assert again.json()["step_id"] == last["step_id"]
        # reads agree with what the steps answered
        one = c.get(f"/ap/v1/agent/tasks/{tid}/steps/{first['step_id']}").json()
        assert one["step_id"] == first["step_id"] and one["output"] == first["output"]
        assert c.get(f"/ap/v1/agent/tasks/{tid}/steps/{uuid.uuid4()}").status_code == 404
        page = c.get(f"/ap/v1/agent/tasks/{tid}/steps", params={"page_size": 3, "current_page": 2}).json()
        assert page["pagination"] == {"total_items": 4, "total_pages": 2, "current_page": 2, "page_size": 3}
        assert [s["additional_output"]["step_index"] for s in page["steps"]] == [3]
        got = c.get(f"/ap/v1/agent/tasks/{tid}").json()
        assert sorted(a["relative_path"] for a in got["artifacts"]) == ["b.txt", "out.txt"]
    assert not (gateway_workspace(tid) / "wrong.txt").exists()


def test_a_step_request_may_edit_the_proposed_command(gateway: Gateway, llm: Any, db: Any, settings: Any) -> None:
    llm.register_script("apedit", [write("draft.txt", "proposed"), write("other.txt", "x"), FINISH])
    t = gateway.tenant("apedit")
    with gateway.client(t) as c:
        tid = c.post("/ap/v1/agent/tasks", json={"input": "Edit me [[script:apedit]]"}).json()["task_id"]
        wait_for(lambda: ledger(db, tid).get(0) == "awaiting_approval", 120, "step 0 awaiting approval")
        steps_url = f"/ap/v1/agent/tasks/{tid}/steps"
        # malformed edits and an edit with feedback are refused, and release nothing
        bad = c.post(steps_url, json={"additional_input": {"arguments": "not an object"}})
        assert bad.status_code == 422 and "additional_input.arguments must be a JSON object" in bad.json()["message"]
        bad = c.post(steps_url, json={"additional_input": {"command": ""}})
        assert bad.status_code == 422 and "additional_input.command" in bad.json()["message"]
        both = c.post(steps_url, json={"input": "No!", "additional_input": {"command": "list_files"}})
        assert both.status_code == 422 and "not both" in both.json()["message"]
        assert ledger(db, tid) == {0: "awaiting_approval"}
        # new arguments for the proposed command (the task's input repeated approves, as the clients send it)
        edited = c.post(steps_url, json={
            "input": "Edit me [[script:apedit]]",
            "additional_input": {"arguments": {"path": "final.txt", "content": "edited by a human"}},
        }).json()
        assert edited["status"] == "completed" and edited["name"] == "write_file", edited
        assert [a["file_name"] for a in edited["artifacts"]] == ["final.txt"]
        # another command altogether
        wait_for(lambda: ledger(db, tid).get(1) == "awaiting_approval", 120, "step 1 awaiting approval")
        listed = c.post(steps_url, json={"additional_input": {"command": "list_files", "arguments": {}}}).json()
        assert listed["name"] == "list_files" and "final.txt" in listed["output"], listed
        # an edit the task may not run is the step's error, not a 500
        wait_for(lambda: ledger(db, tid).get(2) == "awaiting_approval", 120, "step 2 awaiting approval")
        nope = c.post(steps_url, json={"additional_input": {"command": "no_such_command", "arguments": {}}}).json()
        assert nope["status"] == "completed" and "'no_such_command' is not available to this task" in nope["output"]
        assert c.post(steps_url, json={"input": "y"}).json()["is_last"] is True
        # an edit with no proposal waiting for it is refused, never recorded for a proposal nobody saw, nor dropped
        late = c.post(steps_url, json={"additional_input": {"command": "list_files", "arguments": {}}})
        assert late.status_code == 409 and "no proposed command is waiting" in late.json()["message"], late.text
    workspace = settings.workspace_root / tid
    assert (workspace / "final.txt").read_text() == "edited by a human"
    assert not (workspace / "draft.txt").exists() and not (workspace / "other.txt").exists()
    with db.session() as s:
        rows = list(s.scalars(select(Step).where(Step.task_id == uuid.UUID(tid)).order_by(Step.step_index)))
    assert [r.command for r in rows] == ["write_file", "list_files", "no_such_command", "finish"]


def gateway_workspace(task_id: str) -> Any:
    from autogpt_workers.config import get_settings

    return get_settings().workspace_root / task_id


def test_repeated_requests_never_start_a_second_step(gateway: Gateway, llm: Any, db: Any) -> None:
    """Eight requests race for one proposal while the task is paused (so the step stays in flight as long as we
    like): one releases it, all eight answer that same step, and the next proposal is left waiting."""
    llm.register_script("aprep", [write("a.txt", "a"), write("b.txt", "b"), FINISH])
    t = gateway.tenant("aprep")
    with gateway.client(t) as c:
        tid = c.post("/ap/v1/agent/tasks", json={"input": "Repeat [[script:aprep]]"}).json()["task_id"]
        wait_for(lambda: ledger(db, tid).get(0) == "awaiting_approval", 120, "step 0 proposed")
        assert c.post(f"/v1/tasks/{tid}/pause").status_code == 200

        def post(_: int) -> dict[str, Any]:
            r = httpx.post(
                f"{gateway.url}/ap/v1/agent/tasks/{tid}/steps", json={"input": "y"}, headers=t.headers, timeout=60
            )
            assert r.status_code == 200, r.text
            return dict(r.json())

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(post, i) for i in range(8)]
            wait_for(lambda: ledger(db, tid).get(0) == "proposed", 30, "step 0 released")
            time.sleep(1)  # let every request see the step in flight (ordering, not a timing assertion)
            assert c.post(f"/v1/tasks/{tid}/resume").status_code == 200
            answers = [f.result() for f in futures]
        assert {a["additional_output"]["step_index"] for a in answers} == {0}
        assert {a["step_id"] for a in answers} == {answers[0]["step_id"]}
        assert all(a["status"] == "completed" for a in answers)
        # step 1 was proposed but nobody released it: exactly one step ran
        wait_for(lambda: ledger(db, tid).get(1) == "awaiting_approval", 120, "step 1 proposed")
        assert ledger(db, tid) == {0: "completed", 1: "awaiting_approval"}


@pytest.fixture
def tight(gateway: Gateway) -> Iterator[Gateway]:
    gateway.restart(AUTOGPT_AP_STEP_WAIT_S="1", AUTOGPT_API_MAX_UPLOAD_BYTES="1000")
    try:
        yield gateway
    finally:
        gateway.restart()


def test_a_slow_step_is_answered_running_and_finished_later(tight: Gateway, llm: Any, db: Any) -> None:
    llm.register_script("apslow", [write("s.txt", "s", latency_s=4), FINISH])
    t = tight.tenant("apslow")
    with tight.client(t) as c:
        tid = c.post("/ap/v1/agent/tasks", json={"input": "Slow [[script:apslow]]"}).json()["task_id"]
        # the bound (1 s) runs out before the step is even proposed (the LLM takes 4 s): answered running, and the
        # request's approval is recorded, so the step completes with no further POST
        early = c.post(f"/ap/v1/agent/tasks/{tid}/steps", json={"input": "y"}).json()
        assert early["status"] == "running" and early["is_last"] is False
        assert early["additional_output"]["step_index"] == 0
        assert ledger(db, tid)[0] in ("pending", "thinking")
        listed = c.get(f"/ap/v1/agent/tasks/{tid}/steps").json()["steps"]
        assert [s["status"] for s in listed] == ["running"]

        def step0() -> dict[str, Any] | None:
            r = c.get(f"/ap/v1/agent/tasks/{tid}/steps/{early['step_id']}").json()
            return r if r["status"] == "completed" else None

        done = wait_for(step0, 120, "step 0 done")
        assert done["additional_output"]["step_index"] == 0 and done["input"] == "y"
        approved = [e for e in events_of(db, tid) if e == "step.approved"]
        assert len(approved) == 1
        assert ledger(db, tid)[0] == "completed" and ledger(db, tid).get(1) in (
            None,
            "pending",
            "thinking",
            "awaiting_approval",
        )


def test_uploads_are_sanitised_and_limited(tight: Gateway) -> None:
    t = tight.tenant("apfiles")
    with tight.client(t) as c:
        tid = c.post(
            "/ap/v1/agent/tasks",
            json={"input": "Files [[script:apfiles-none]]", "additional_input": {"mode": "continuous"}},
        ).json()["task_id"]
        url = f"/ap/v1/agent/tasks/{tid}/artifacts"
        form = c.post(url, data={"relative_path": "docs/v1"}, files={"file": ("r.md", b"# r")}).json()
        assert form["relative_path"] == "docs/v1/r.md" and form["file_name"] == "r.md"
        assert form["agent_created"] is False
        query = c.post(url, params={"relative_path": "q/x.txt"}, files={"file": ("x.txt", b"q")}).json()
        assert query["relative_path"] == "q/x.txt"
        browser = c.post(url, files={"file": ("C:\\fakepath\\pic.png", b"\x89PNG")}).json()
        assert browser["relative_path"] == "pic.png"
        for bad in ("/etc", "../up", "a/../../b", "C:/x", "a\\b", "nul\x00byte"):
            r = c.post(url, data={"relative_path": bad}, files={"file": ("f.txt", b"f")})
            assert r.status_code == 422 and "message" in r.json(), (bad, r.text)
        assert c.post(url, files={"file": ("..", b"f")}).status_code == 422
        # names are limited in bytes, as the file system counts them: 200 two-byte characters are 400 bytes
        long_name = c.post(url, files={"file": ("\u00e9" * 200, b"f")})
        assert long_name.status_code == 422 and "255 bytes" in long_name.json()["message"], long_name.text
        long_dir = c.post(url, data={"relative_path": "\u00e9" * 200}, files={"file": ("f.txt", b"f")})
        assert long_dir.status_code == 422 and "255 bytes" in long_dir.json()["message"], long_dir.text
        big = c.post(url, files={"file": ("big.bin", b"x" * 1001)})
        assert big.status_code == 413 and "upload limit" in big.json()["message"]
        assert not (gateway_workspace(tid) / "big.bin").exists()
        download = c.get(f"{url}/{form['artifact_id']}")
        assert download.status_code == 200 and download.content == b"# r"
        assert download.headers["content-type"] == "application/octet-stream"
        assert 'filename="r.md"' in download.headers["content-disposition"]
        listed = c.get(url, params={"page_size": 2}).json()
        assert listed["pagination"] == {"total_items": 3, "total_pages": 2, "current_page": 1, "page_size": 2}
        assert c.get(f"{url}/{uuid.uuid4()}").status_code == 404
        assert c.get(f"{url}/not-an-id").json() == {"message": "artifact 'not-an-id' not found"}


def test_continuous_mode_runs_without_approval(gateway: Gateway, llm: Any) -> None:
    llm.register_script("apcont", [write("c.txt", "c"), FINISH])
    t = gateway.tenant("apcont")
    with gateway.client(t) as c:
        tid = c.post(
            "/ap/v1/agent/tasks", json={"input": "Go [[script:apcont]]", "additional_input": {"mode": "continuous"}}
        ).json()["task_id"]
        wait_for(lambda: c.get(f"/v1/tasks/{tid}").json()["status"] == "completed", 120, "continuous task done")
        last = c.post(f"/ap/v1/agent/tasks/{tid}/steps", json={"input": "y"}).json()
        assert last["is_last"] is True and last["name"] == "finish"
        tasks = c.get("/ap/v1/agent/tasks").json()
        assert tasks["pagination"]["total_items"] == 1 and set(tasks["tasks"][0]) == TASK_KEYS
        assert c.get("/ap/v1/agent/tasks/00000000-0000-0000-0000-000000000000").json()["message"]
