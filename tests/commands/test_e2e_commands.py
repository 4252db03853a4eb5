"""End to end on real worker processes: hostile programs against the act worker's sandbox, ``ask_user`` and
approvals by side-effect class through the gate, approval expiry, profiles, and a workspace that moves between two
act workers ("hosts") through the S3 artifact store (moto's server)."""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import boto3
import httpx
from sqlalchemy import select, update

from autogpt_workers import lifecycle
from autogpt_workers.artifacts.s3 import S3ArtifactStore
from autogpt_workers.broker import Publisher
from autogpt_workers.celery_app import app as celery_app
from autogpt_workers.reaper import Reaper
from autogpt_workers.store.ledger import Ledger
from autogpt_workers.store.models import Step, Task, TaskEvent
from tests.commands.conftest import sandbox_uids_in_use
from tests.conftest import Proc
from tests.e2e.test_durable_run import ledger_steps, submit, wait_terminal


def call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {"tool": tool, "arguments": arguments, "content": f"Calling {tool}."}


def python(code: str) -> dict[str, Any]:
    return call("execute_python", code=code)


FINISH = call("finish", reason="done")


def wait_status(stack: Any, task_id: str, status: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    task: dict[str, Any] = {}
    while time.monotonic() < deadline:
        task = httpx.get(f"{stack.api_url}/v1/tasks/{task_id}", timeout=10).json()
        if task["status"] == status:
            return task
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} not {status} after {timeout_s}s: {task}")


def test_hostile_programs_end_as_clear_errors_and_the_worker_lives_on(stack: Any, llm: Any, db: Any) -> None:
    api_port = urlsplit(stack.api_url).port
    script = [
        python("import os\nwhile True:\n    os.fork()\n"),  # 0 fork bomb
        python("hog = []\nwhile True:\n    hog.append(bytearray(32 * 2**20))\n"),  # 1 memory hog
        python("while True:\n    pass\n"),  # 2 infinite loop
        python("print(open('/etc/passwd').read())"),  # 3 the host's users
        call("read_file", path="../../../../etc/passwd"),  # 4
        call("read_file", path="/etc/passwd"),  # 5
        python("import os\nos.symlink('/etc/passwd', 'users')\nprint('planted')"),  # 6
        call("read_file", path="users"),  # 7 the worker must not follow it
        python(f"import socket\nsocket.create_connection(('127.0.0.1', {api_port}), timeout=3)\n"),  # 8
        python("import os\nprint(sorted(os.environ.items()))"),  # 9 the worker's secrets?
        call("execute_shell", command="cat /proc/1/environ"),  # 10
        FINISH,
    ]
    llm.register_script("hostile", script)
    task_id = submit(stack, "Try to break out [[script:hostile]]", budget={"max_steps": 20})
    task = wait_terminal(stack, task_id, timeout_s=180)
    assert task["status"] == "completed", task
    steps = ledger_steps(db, task_id)
    assert len(steps) == len(script)
    assert all(s.status == "completed" and s.deliveries == 2 for s in steps)  # one think, one act: no redelivery
    out = [s.output or "" for s in steps]
    errors = [s.is_error for s in steps]
    assert errors == [True, True, True, True, True, True, False, True, True, False, True, False]
    assert "Resource temporarily unavailable" in out[0] and "the program failed" in out[0]
    assert "MemoryError" in out[1]
    # CPU time, or wall time when the machine is too busy to give the loop 2 s of CPU within 6 s
    assert "the CPU time limit of 2 s was exceeded" in out[2] or "the wall-clock limit of 6 s" in out[2]
    assert "No such file or directory: '/etc/passwd'" in out[3] and "root:x:0:0" not in out[3]
    assert "leads outside the workspace" in out[4]
    assert "is absolute" in out[5]
    assert "leads outside the workspace" in out[7] and "root:" not in out[7]
    assert "Network is unreachable" in out[8] and "no network access" in out[8]
    assert "test-key" not in out[9] and "AUTOGPT_" not in out[9] and "('PATH', '/usr/local/bin" in out[9]
    assert "Permission denied" in out[10]
    # the act worker is the same process all along, and nothing of the programs survived
    assert stack["act"].popen.poll() is None
    assert sandbox_uids_in_use() == []


def test_ask_user_waits_without_a_worker_and_the_answer_is_the_observation(stack: Any, llm: Any, db: Any) -> None:
    llm.register_script("ask", [call("ask_user", question="Which colour?"), FINISH])
    task_id = submit(stack, "Ask first [[script:ask]]")  # approval "never": asking waits all the same
    wait_status(stack, task_id, "awaiting_approval")
    step = ledger_steps(db, task_id)[0]
    assert step.status == "awaiting_approval" and step.lease_token is None  # no worker holds it
    lifecycle.approve(db, Publisher(celery_app), uuid.UUID(task_id), feedback="Blue, please.")
    assert wait_terminal(stack, task_id)["status"] == "completed"
    first = ledger_steps(db, task_id)[0]
    assert first.output == "The human answered: Blue, please." and not first.is_error


def test_approval_by_side_effect_class(stack: Any, llm: Any, db: Any, http_server: Any) -> None:
    llm.register_script(
        "classes",
        [call("list_files"), call("web_fetch", url=f"{http_server}/data.json"), FINISH],
    )
    task_id = submit(stack, "Fetch with approval [[script:classes]]", approval=["external"])
    wait_status(stack, task_id, "awaiting_approval")
    steps = ledger_steps(db, task_id)
    assert [s.status for s in steps] == ["completed", "awaiting_approval"]  # read_only ran, external waits
    assert steps[1].command == "web_fetch"
    lifecycle.approve(db, Publisher(celery_app), uuid.UUID(task_id))
    assert wait_terminal(stack, task_id)["status"] == "completed"
    fetched = ledger_steps(db, task_id)[1]
    assert '{"answer": 42}' in (fetched.output or "") and not fetched.is_error


def test_a_waiting_approval_expires(stack: Any, llm: Any, db: Any) -> None:
    llm.register_script("expire", [call("ask_user", question="Anyone there?"), FINISH])
    task_id = submit(stack, "Nobody answers [[script:expire]]")
    wait_status(stack, task_id, "awaiting_approval")
    time.sleep(1.5)
    reaper = Reaper(Ledger(db), Publisher(celery_app), outbox_grace_s=10, interval_s=1, approval_timeout_s=1.0)
    report = reaper.run_once()
    assert report.approvals_expired >= 1
    task = wait_terminal(stack, task_id)
    assert task["status"] == "failed"
    assert task["error"] == "approval expired: step 0 waited more than 1 s for a human"
    with db.session() as s:
        failed = s.scalars(
            select(TaskEvent).where(TaskEvent.task_id == uuid.UUID(task_id), TaskEvent.kind == "task.failed")
        ).one()
    assert failed.data["code"] == "approval_expired"


def test_a_profile_sets_the_tasks_commands(stack: Any, llm: Any, db: Any) -> None:
    llm.register_script("gov", [call("write_file", path="x.txt", content="no"), FINISH])
    task_id = submit(stack, "Review [[script:gov]]", profile="governance")
    assert wait_terminal(stack, task_id)["status"] == "completed"
    first = ledger_steps(db, task_id)[0]
    assert first.is_error and "the command 'write_file' is not allowed for this task" in (first.output or "")


def test_a_profiles_approval_classes_make_its_external_commands_wait(
    stack: Any, llm: Any, db: Any, http_server: Any
) -> None:
    llm.register_script("cap", [call("list_files"), call("web_fetch", url=f"{http_server}/data.json"), FINISH])
    task_id = submit(stack, "Research [[script:cap]]", profile="capability")  # approval: [external], from the profile
    wait_status(stack, task_id, "awaiting_approval")
    steps = ledger_steps(db, task_id)
    assert [(s.command, s.status) for s in steps] == [("list_files", "completed"), ("web_fetch", "awaiting_approval")]
    assert steps[1].lease_token is None and steps[1].output is None  # nothing fetched, no worker held
    lifecycle.approve(db, Publisher(celery_app), uuid.UUID(task_id))
    task = wait_terminal(stack, task_id)
    assert task["status"] == "completed" and task["budget"]["max_wall_seconds"] == 1200
    assert '{"answer": 42}' in (ledger_steps(db, task_id)[1].output or "")


def test_an_edited_command_must_be_on_the_profiles_allow_list(stack: Any, llm: Any, db: Any, settings: Any) -> None:
    llm.register_script("edit", [call("read_file", path="a.txt"), call("read_file", path="b.txt"), FINISH])
    task_id = submit(stack, "Review, edited [[script:edit]]", profile="governance", approval="always")
    # a row without an allow-list (as submitted before profiles applied at submit): the profile's list applies
    with db.transaction() as s:
        s.execute(update(Task).where(Task.id == uuid.UUID(task_id)).values(allowed_commands=None))
    wait_status(stack, task_id, "awaiting_approval")
    publisher = Publisher(celery_app)
    lifecycle.approve(db, publisher, uuid.UUID(task_id), step_index=0, command="write_file",
                      arguments={"path": "x.txt", "content": "governance never writes"})
    wait_status(stack, task_id, "awaiting_approval")
    lifecycle.approve(db, publisher, uuid.UUID(task_id), step_index=1, command="list_files", arguments={})
    wait_status(stack, task_id, "awaiting_approval")
    lifecycle.approve(db, publisher, uuid.UUID(task_id), step_index=2)
    assert wait_terminal(stack, task_id)["status"] == "completed"
    steps = ledger_steps(db, task_id)
    assert steps[0].is_error and steps[0].output == (
        "Error: the approved command 'write_file' is not available to this task"
    )
    assert not steps[1].is_error and steps[1].command == "list_files"  # on the profile's list: it ran
    assert not (settings.workspace_root / task_id / "x.txt").exists()


def test_a_workspace_moves_between_hosts_through_s3(stack: Any, llm: Any, db: Any, moto_s3: Any, tmp_path: Any) -> None:
    bucket = f"ws-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket=bucket)
    s3_env = {
        "AUTOGPT_ARTIFACT_STORE": "s3", "AUTOGPT_ARTIFACT_S3_BUCKET": bucket,
        "AUTOGPT_ARTIFACT_S3_ENDPOINT_URL": moto_s3, "AUTOGPT_ARTIFACT_S3_REGION": "us-east-1",
        "AUTOGPT_ARTIFACT_S3_ACCESS_KEY_ID": "test", "AUTOGPT_ARTIFACT_S3_SECRET_ACCESS_KEY": "test",
    }

    def host(name: str) -> Proc:
        env = {**stack.env, **s3_env, "AUTOGPT_ARTIFACT_SCRATCH_DIR": str(tmp_path / name)}
        return Proc(f"worker-act-{name}", ["worker", "--queue", "act", "--concurrency", "1",
                                           "--hostname", f"act-{name}@%h"], env)

    script = [
        call("write_file", path="a.txt", content="written on host A"),  # 0 on A
        python("open('b.txt', 'w').write(open('a.txt').read().upper())\nprint('ok')"),  # 1 on B
        call("read_file", path="b.txt"),  # 2 on A again
        FINISH,
    ]
    llm.register_script("hosts", script)
    a, b = host("a"), host("b")
    stack["act"].stop()  # only our two "hosts" act now
    try:
        task_id = submit(stack, "Across hosts [[script:hosts]]", approval="always")
        for index, runner in enumerate([a, b, a, a]):
            wait_status(stack, task_id, "awaiting_approval")
            runner.start()
            lifecycle.approve(db, Publisher(celery_app), uuid.UUID(task_id), step_index=index)
            deadline = time.monotonic() + 60
            while ledger_steps(db, task_id)[index].status != "completed":
                assert time.monotonic() < deadline, f"step {index} did not complete"
                time.sleep(0.2)
            runner.stop()
        assert wait_terminal(stack, task_id)["status"] == "completed"
    finally:
        for proc in (a, b):
            proc.stop()
        stack["act"].start()
    steps = ledger_steps(db, task_id)
    assert not any(s.is_error for s in steps), [s.output for s in steps]
    assert steps[2].output == "WRITTEN ON HOST A"  # B's change, read back on A
    assert (tmp_path / "a" / task_id / "b.txt").read_text() == "WRITTEN ON HOST A"  # materialised on A
    store = S3ArtifactStore(bucket, client=client)
    assert store.list(task_id) == ["a.txt", "b.txt"]
    with store.open(task_id, "b.txt") as f:
        assert f.read() == b"WRITTEN ON HOST A"
    with db.session() as s:
        assert s.get(Task, uuid.UUID(task_id)) is not None
        assert {st.command for st in s.scalars(select(Step).where(Step.task_id == uuid.UUID(task_id)))} == {
            "write_file", "execute_python", "read_file", "finish"
        }
