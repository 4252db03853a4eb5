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

from tests.conftest import REPO_ROOT, TEST_ENV, free_port, wait_http


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie has exited
    except (FileNotFoundError, IndexError):
        return False


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
        # up, not dying of something else: only the parent's death may end it
        wait_http(f"http://127.0.0.1:{port}/healthz")
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
