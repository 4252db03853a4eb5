"""End to end on real worker processes with the default memory (embedded store, local model): what one task
concluded is in long-term memory after it completes, and a later task of the same tenant finds it with
``recall``. The fake LLM scripts the model's side; everything else is the real stack."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from autogpt_workers.store.models import Step
from tests.conftest import REPO_ROOT
from tests.memory.conftest import require_local_model


@pytest.fixture(autouse=True, scope="session")
def _local_model() -> None:
    """Before the stack starts (autouse comes first in its scope): its workers could not load the model either."""
    require_local_model()  # skips without the extra; fails instead under AUTOGPT_REQUIRE_TOOLS=1


def _submit(stack: Any, goal: str) -> str:
    resp = httpx.post(f"{stack.api_url}/v1/tasks", json={"goal": goal, "budget": {"max_steps": 5}}, timeout=10)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _wait(stack: Any, task_id: str, timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        task: dict[str, Any] = httpx.get(f"{stack.api_url}/v1/tasks/{task_id}", timeout=10).json()
        if task["status"] in ("completed", "failed", "cancelled"):
            return task
        time.sleep(0.5)
    raise AssertionError(f"task {task_id} not terminal after {timeout_s}s")


def _stored(path: Path, needle: str) -> int:
    import apsw

    if not path.exists():
        return 0
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = conn.execute("SELECT count(*) FROM memories WHERE text LIKE ?", (f"%{needle}%",)).fetchall()
        return int(str(rows[0][0]))
    except apsw.SQLError:  # no table yet
        return 0
    finally:
        conn.close()


def test_a_later_task_recalls_what_an_earlier_one_concluded(stack: Any, llm: Any, db: Any, settings: Any) -> None:
    code = f"vault-{uuid.uuid4().hex[:8]}"
    fact = f"The deploy key for production is stored in the vault at path secret/deploy/{code}."
    llm.register_script("conclude", [{"tool": "finish", "arguments": {"reason": fact}, "content": "Found it."}])
    first = _submit(stack, "Find out where the production deploy key is stored [[script:conclude]]")
    assert _wait(stack, first)["status"] == "completed"

    path = settings.memory_path if settings.memory_path.is_absolute() else REPO_ROOT / settings.memory_path
    deadline = time.monotonic() + 180  # the act worker writes the memory right after the commit
    while _stored(path, code) == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _stored(path, code) == 1

    llm.register_script(
        "ask",
        [
            {"tool": "recall", "arguments": {"query": "where is the production deploy key kept?"}, "content": "."},
            {"tool": "finish", "arguments": {"reason": "recalled"}, "content": "Done."},
        ],
    )
    second = _submit(stack, "Rotate the production deploy key [[script:ask]]")
    assert _wait(stack, second)["status"] == "completed"

    with db.session() as s:
        steps = list(s.scalars(select(Step).where(Step.task_id == uuid.UUID(second)).order_by(Step.step_index)))
    assert steps[0].command == "recall" and not steps[0].is_error, steps[0].output
    assert code in (steps[0].output or "") and "another task" in (steps[0].output or "")
