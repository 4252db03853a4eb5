"""``autogpt-workers run``: the whole stack starts, the demo task completes, and nothing it started is left over,
whether it ends after the demo or is stopped in the middle of its start-up.

Every process the stack starts inherits a marker variable; "left over" means a process still carrying it.
Ports: free ones for the API, Flower, the scripted demo model and /metrics; no local Prometheus.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import select

from autogpt_workers.store.models import Task
from tests.conftest import REPO_ROOT, free_port


def _free_run(n: int) -> int:
    """The first of ``n`` consecutive free ports."""
    for _ in range(50):
        first = free_port()
        if first + n > 65535:
            continue
        ok = True
        for port in range(first, first + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return first
    raise RuntimeError("no run of free ports")


def _marked(marker: str) -> list[int]:
    """PIDs of live processes whose environment carries the marker."""
    needle = f"AUTOGPT_RUN_SMOKE={marker}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _run_env(marker: str, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AUTOGPT_RUN_SMOKE=marker,
        AUTOGPT_API_PORT=str(free_port()),
        AUTOGPT_FLOWER_PORT=str(free_port()),
        AUTOGPT_THINK_CONCURRENCY="8",
        AUTOGPT_MEMORY_BACKEND="none",  # no embedding model to load: this is about processes
        AUTOGPT_METRICS_DIR=str(tmp_path / "metrics"),
        AUTOGPT_WORKSPACE_ROOT=str(tmp_path / "workspaces"),
        PYTHONUNBUFFERED="1",
    )
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    return env


def _command() -> list[str]:
    return [sys.executable, "-m", "autogpt_workers.cli", "run", "--exit-after-demo", "--llm-port", str(free_port()),
            "--metrics-port", str(_free_run(4)), "--prometheus-port", "0"]


def _wait_gone(marker: str, timeout_s: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := _marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_run_exit_after_demo_completes_the_demo_and_leaves_nothing_running(db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    marker = uuid.uuid4().hex
    try:
        done = subprocess.run(_command(), env=_run_env(marker, tmp_path), cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=300)
    finally:
        for pid in _marked(marker):  # never leave them to the next test, even when this one fails
            os.kill(pid, signal.SIGKILL)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "scripted demo model" in out and "Stack up." in out and "stack stopped" in out, out
    match = re.search(r"demo task (\S+):", out)
    assert match, out
    with db.session() as s:
        assert s.scalar(select(Task.status).where(Task.id == uuid.UUID(match.group(1)))) == "completed"
    assert _wait_gone(marker, 5) == [], "processes left over by `run`"


def test_run_stopped_during_start_up_stops_what_it_started(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    proc = subprocess.Popen(_command(), env=_run_env(marker, tmp_path), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        # the demo model (and perhaps the migration) started besides `run` itself: the start-up is under way
        deadline = time.monotonic() + 60
        while len([p for p in _marked(marker) if p != proc.pid]) < 1:
            assert time.monotonic() < deadline and proc.poll() is None, "run never started a process"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "stopping" in out and "stack stopped" in out and "Stack up." not in out, out
        assert _wait_gone(marker, 5) == [], "processes left over by an interrupted `run`"
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _marked(marker):
            os.kill(pid, signal.SIGKILL)
