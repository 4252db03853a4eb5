"""The test harness's processes do not outlive a killed test session: a worker left behind would consume the test
vhost's wake-ups and fail the next session's tests (seen on 2026-12-06, after a pytest run was killed)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import httpx

from tests.conftest import REPO_ROOT, TEST_ENV, free_port


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie has exited
    except (FileNotFoundError, IndexError):
        return False


def _wait_serving(port: int, timeout_s: float = 45.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the API on port {port} did not come up within {timeout_s:.0f}s")


def test_a_proc_gets_sigterm_when_the_session_that_started_it_is_killed() -> None:
    # the API, which touches nothing until asked (a reaper or a worker would act on the shared test database)
    port = free_port()
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import os, time
            from tests.conftest import Proc, TEST_ENV
            proc = Proc("harness-orphan-check", ["api", "--port", "{port}"], {{**os.environ, **TEST_ENV}})
            print(proc.start().popen.pid, flush=True)
            time.sleep(120)
        """)],
        cwd=REPO_ROOT, env={**os.environ, **TEST_ENV}, stdout=subprocess.PIPE, text=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        _wait_serving(port)  # up, not dying of something else: only the parent's death may end it
        assert _alive(child)
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 30  # the API's graceful shutdown
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), f"process {child} outlived the session that started it"
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may end between the look and the kill
            if _alive(child):
                os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait(timeout=10)
