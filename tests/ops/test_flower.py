"""Flower for operators: behind basic auth, fed by task events, with the broker view on the RabbitMQ management API.
While agent tasks run, headless Chromium renders Flower's task list (artifacts/flower.png) and Flower's API shows
our workers and our step tasks with readable names and arguments (task id, step index)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import tempfile
import time
from typing import Any

import httpx
import pytest

from tests.conftest import ARTIFACTS
from tests.ops.conftest import FLOWER_AUTH, OpsStack

pytestmark = pytest.mark.e2e

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--hide-scrollbars", "--window-size=1400,900", "--virtual-time-budget=8000",
]


def _flower(stack: OpsStack, path: str, **params: Any) -> Any:
    resp = httpx.get(f"{stack.flower_url}{path}", params=params, auth=FLOWER_AUTH, timeout=15)
    assert resp.status_code == 200, f"{path}: {resp.status_code} {resp.text[:200]}"
    return resp.json()


def test_flower_refuses_requests_without_credentials(ops_stack: OpsStack) -> None:
    assert httpx.get(f"{ops_stack.flower_url}/api/workers", timeout=10).status_code == 401
    assert httpx.get(f"{ops_stack.flower_url}/", timeout=10).status_code == 401
    wrong = httpx.get(f"{ops_stack.flower_url}/api/workers", auth=("ops", "wrong"), timeout=10)
    assert wrong.status_code == 401


def test_flower_shows_workers_and_step_tasks_while_tasks_run(ops_stack: OpsStack, fake_llm: str) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; `make ops-tools` does it)")
    from tests.fake_llm.client import FakeLLMControl

    llm = FakeLLMControl(fake_llm)
    llm.reset()
    llm.set_config(latency_s=1.5)  # each task takes 6 s or more: still running while Flower is rendered
    try:
        ids = [ops_stack.submit(f"flower run {i} [[steps:4]]") for i in range(6)]
        time.sleep(2.5)
        running = [httpx.get(f"{ops_stack.api_url}/v1/tasks/{t}", timeout=10).json()["status"] for t in ids]
        shot = ARTIFACTS / "flower.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        shot.unlink(missing_ok=True)
        user, password = FLOWER_AUTH
        url = f"http://{user}:{password}@{ops_stack.flower_url.split('//', 1)[1]}/tasks"
        with tempfile.TemporaryDirectory() as profile:
            done = subprocess.run(
                [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", url],
                capture_output=True, text=True, timeout=120,
            )
        assert shot.is_file() and shot.stat().st_size > 20_000, f"no screenshot: {done.stderr[-2000:]}"
        status = ops_stack.wait_terminal(ids)
        assert set(status.values()) == {"completed"}, status
    finally:
        llm.reset()
    assert "running" in running, f"the screenshot was taken while tasks ran: {running}"

    workers = _flower(ops_stack, "/api/workers", refresh="true")
    names = {name.split("@", 1)[0] for name in workers}
    assert {"think-ops", "act-ops"} <= names, sorted(workers)

    tasks: dict[str, dict[str, Any]] = _flower(ops_stack, "/api/tasks", limit=2000)
    ours: dict[tuple[str, int], set[str]] = {}
    for info in tasks.values():
        if info.get("name") not in ("autogpt.think", "autogpt.act"):
            continue
        args = ast.literal_eval(info["args"])  # e.g. "['<task id>', 2]": readable, not a blob
        assert isinstance(args, list | tuple) and len(args) == 2, info["args"]
        ours.setdefault((str(args[0]), int(args[1])), set()).add(info["name"])
    for task_id in ids:
        for step in range(4):
            assert ours.get((task_id, step)) == {"autogpt.think", "autogpt.act"}, (task_id, step)
    succeeded = [i for i in tasks.values() if i.get("name") == "autogpt.act" and i.get("state") == "SUCCESS"]
    assert succeeded and all(i.get("result") for i in succeeded), "step outcomes are shown as results"


def test_flower_broker_view_reads_the_management_api(ops_stack: OpsStack) -> None:
    """/api/queues/length answers only when Flower's broker_api reaches the management API."""
    queues = _flower(ops_stack, "/api/queues/length")
    names = {q["name"] for q in queues["active_queues"]}
    assert {"autogpt.think", "autogpt.act"} <= names, queues
