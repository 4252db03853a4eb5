"""Command plugins through real entry points: a distribution's ``*.dist-info/entry_points.txt`` on ``sys.path``
declares one good plugin and one broken one; the registry loads the good one and reports and skips the broken
one, and a worker says so at start in its log and on ``/metrics``."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from autogpt_workers.commands import CommandContext, Workspace, default_registry
from autogpt_workers.commands.registry import ENTRY_POINT_GROUP
from tests.conftest import Proc, free_port

GOOD = '''
from pydantic import BaseModel, Field

from autogpt_workers.commands import Command, CommandResult


class ShoutArgs(BaseModel):
    text: str = Field(description="What to shout.")


class Shout(Command[ShoutArgs]):
    name = "shout"
    description = "Repeat the text in capitals."
    Args = ShoutArgs
    side_effect = "read_only"
    idempotent = True

    def run(self, args, ctx):
        return CommandResult(output=args.text.upper())
'''
BROKEN = 'raise ImportError("the plugin needs libfoo, which is not installed")\n'


def install_plugins(root: Path) -> tuple[str, str]:
    """A distribution installed into ``root`` the way pip lays one out: its modules and its dist-info directory
    (METADATA, entry_points.txt). Module names are unique per call (imports are cached per process)."""
    suffix = uuid.uuid4().hex[:8]
    good, broken = f"shout_plugin_{suffix}", f"broken_plugin_{suffix}"
    (root / f"{good}.py").write_text(GOOD)
    (root / f"{broken}.py").write_text(BROKEN)
    dist = root / f"autogpt_demo_plugins_{suffix}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: autogpt-demo-plugins-{suffix}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nshout = {good}:Shout\nbroken = {broken}:Nope\n\n[console_scripts]\nx = {good}:y\n"
    )
    return good, broken


def test_the_registry_loads_a_real_entry_point_and_skips_a_broken_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugins(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = default_registry(max_file_bytes=100)
    assert registry.plugins_loaded == ["shout"] and "shout" in registry
    assert registry.plugin_errors == [("broken", "ImportError: the plugin needs libfoo, which is not installed")]
    assert "broken" not in registry and "write_file" in registry  # the built-ins are all there
    workspace = Workspace(tmp_path / "ws")
    ctx = CommandContext(workspace=workspace, task_id="t", step_index=0, max_output_chars=100)
    shout = registry.get("shout")
    assert shout.run(shout.parse_args({"text": "hello"}), ctx).output == "HELLO"
    assert shout.tool_schema()["function"]["name"] == "shout"


def _metric(url: str, line_start: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            for line in httpx.get(url, timeout=2).text.splitlines():
                if line.startswith(line_start):
                    return line
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no {line_start} on {url}")
        time.sleep(0.3)


def test_a_worker_reports_skipped_plugins_in_its_log_and_metrics(stack: Any, tmp_path: Path) -> None:
    install_plugins(tmp_path)
    port = free_port()
    env = {**stack.env, "PYTHONPATH": os.pathsep.join([str(tmp_path), stack.env.get("PYTHONPATH", "")])}
    worker = Proc(f"worker-plugins-{port}", ["worker", "--queue", "act", "--concurrency", "1", "--metrics-port",
                                             str(port), "--hostname", f"act-plugins-{port}@%h"], env)
    start = worker.log_path.stat().st_size if worker.log_path.exists() else 0
    worker.start()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        assert _metric(url, 'autogpt_command_plugins{state="skipped"}').endswith(" 1.0")
        assert _metric(url, 'autogpt_command_plugins{state="loaded"}').endswith(" 1.0")
    finally:
        worker.stop()
    with open(worker.log_path, "rb") as f:
        f.seek(start)
        lines = [json.loads(line) for line in f.read().decode().splitlines() if line.startswith("{")]
    summary = next(e for e in lines if e.get("event") == "command_plugins_skipped")
    assert summary["level"] == "warning" and summary["loaded"] == ["shout"]
    assert summary["skipped"] == ["broken: ImportError: the plugin needs libfoo, which is not installed"]
