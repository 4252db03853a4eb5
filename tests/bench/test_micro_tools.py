"""The profiling aids run (tiny sizes): what they print is what the notes quote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from bench import ledger_batch_micro, llm_micro, prompt_micro, submit_micro
from bench.profile_run import areas


def test_prompt_micro_prints_the_cpu_per_think(capsys: pytest.CaptureFixture[str]) -> None:
    prompt_micro.main(["--steps", "3", "--output-bytes", "100", "--rounds", "2"])
    assert capsys.readouterr().out.startswith("prompt of 3 steps x 100 B: ")


def test_llm_micro_shapes_prints_each_shape_and_the_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    llm_micro.main(["--shapes", "--rounds", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == list(llm_micro.SHAPES)
    assert lines[4].startswith("model / sdk defaults (medians): ")


def _micro_tasks_left(db: Any) -> int:
    with db.session() as s:
        tenant = submit_micro.VALUES["tenant_id"]
        return int(s.scalar(text("SELECT count(*) FROM tasks WHERE tenant_id = :t"), {"t": tenant}))


def test_submit_micro_prints_both_modes_and_leaves_no_task(
    migrated: None, settings: Any, db: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    submit_micro.main(["--database-url", settings.database_url, "--tasks", "5", "--rounds", "1"])
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == ["| text", "| prepared"]
    assert _micro_tasks_left(db) == 0


def test_submit_micro_batch_rows_follow_the_modes_and_leave_no_task(
    migrated: None, settings: Any, db: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    submit_micro.main(
        ["--database-url", settings.database_url, "--tasks", "4", "--rounds", "1", "--mode", "prepared", "--batch", "2"]
    )
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == ["| prepared", "| 2 per statement"]
    assert _micro_tasks_left(db) == 0


def test_ledger_batch_micro_runs_both_sides_to_committed_steps_and_leaves_no_task(
    migrated: None, settings: Any, db: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both sides commit every step (``measure`` raises otherwise) through the ledger's own statements."""
    ledger_batch_micro.main(["--database-url", settings.database_url, "--tasks", "3", "--steps", "4", "--rounds", "1"])
    rows = capsys.readouterr().out.splitlines()[3:]
    assert [row.split(" | ")[0] for row in rows] == ["| one per round trip", "| 3 per round trip"]
    with db.session() as s:
        left = s.scalar(text("SELECT count(*) FROM tasks WHERE tenant_id = :t"), {"t": ledger_batch_micro.TENANT})
    assert left == 0


@pytest.mark.parametrize("value", ["eight", "8,0", "-2"])
def test_submit_micro_refuses_a_bad_batch_size_with_a_message(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        submit_micro.main(["--batch", value])
    assert exit_.value.code == 2
    assert "argument --batch:" in capsys.readouterr().err


def test_profile_areas_take_the_first_area_a_stack_reaches(tmp_path: Path) -> None:
    raw = tmp_path / "think.txt"
    raw.write_text(
        "_run (autogpt_workers/tasks.py:3);OpenAIChatModel.complete (autogpt_workers/llm/openai_chat.py:9);"
        "Logger.info (logging/__init__.py:1) 3\n"
        "_run (autogpt_workers/tasks.py:3);StepRunner._claim (autogpt_workers/runner.py:5) 1\n"
        "Thread.run (threading.py:1) 4\n"
    )
    assert areas([str(raw)]).splitlines() == [
        "8 samples, by area of the step",
        " 50.0% other",
        " 37.5% LLM call (openai client, httpx)",
        " 12.5% claim (ledger)",
    ]
