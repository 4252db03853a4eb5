"""The CLI answers mistakes with a clear message and an exit code, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO_ROOT, free_port


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autogpt_workers.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        timeout=60,
    )


def test_a_worker_refuses_to_start_with_unsafe_settings() -> None:
    out = cli("worker", "--queue", "act", AUTOGPT_ACT_TIME_LIMIT_S="1790")
    assert out.returncode == 2
    assert "consumer_timeout" in out.stderr and "Traceback" not in out.stderr


def test_a_raw_celery_worker_with_unsafe_command_line_options_refuses_to_start() -> None:
    """``celery -A autogpt_workers.celery_app worker ...``, not our CLI: the options are checked at celeryd_init."""
    out = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "autogpt_workers.celery_app", "worker", "-Q", "autogpt.act",
         "-P", "threads", "--prefetch-multiplier", "8", "--time-limit", "7200"],
        capture_output=True, text=True, cwd=REPO_ROOT, env=dict(os.environ), timeout=60,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    for needle in ("--prefetch-multiplier must be 1, not 8", "--time-limit (7200s)", "needs the prefork pool"):
        assert needle in out.stderr, out.stderr


def test_an_unknown_queue_is_a_usage_error() -> None:
    out = cli("worker", "--queue", "nope")
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_a_pool_the_queue_cannot_run_is_a_usage_error() -> None:
    out = cli("worker", "--queue", "think", "--pool", "eventlet")
    assert out.returncode == 2 and "unknown think pool 'eventlet'" in out.stderr and "Traceback" not in out.stderr
    out = cli("worker", "--queue", "act", "--pool", "gevent")
    assert out.returncode == 2 and "prefork pool only" in out.stderr and "Traceback" not in out.stderr


def test_submit_without_an_api_says_where_it_looked() -> None:
    port = free_port()
    out = cli("submit", "hello", "--api-url", f"http://127.0.0.1:{port}")
    assert out.returncode == 1
    assert f"127.0.0.1:{port}" in out.stderr and "Traceback" not in out.stderr


def test_submit_wait_and_status_follow_a_task(stack, llm) -> None:  # type: ignore[no-untyped-def]
    out = cli("submit", "Write things [[steps:3]]", "--wait", "--api-url", stack.api_url)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "step 0: write_file" in out.stdout and "step 2: finish" in out.stdout and "completed" in out.stdout
    task_id = out.stdout.split("submitted task ", 1)[1].split()[0]
    status = cli("status", task_id, "--api-url", stack.api_url)
    assert status.returncode == 0 and "completed" in status.stdout
    missing = cli("status", "00000000-0000-0000-0000-000000000000", "--api-url", stack.api_url)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_submit_with_a_profile_and_an_unknown_profile(stack, llm) -> None:  # type: ignore[no-untyped-def]
    import httpx

    out = cli("submit", "Review [[steps:1]]", "--profile", "governance", "--api-url", stack.api_url)
    assert out.returncode == 0, out.stdout + out.stderr
    task_id = out.stdout.split("submitted task ", 1)[1].split()[0]
    task = httpx.get(f"{stack.api_url}/v1/tasks/{task_id}", timeout=10).json()
    assert task["profile"] == "governance" and task["budget"]["max_steps"] == 15  # the profile's, not the CLI's 20
    unknown = cli("submit", "hello", "--profile", "ceo", "--api-url", stack.api_url)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert "the API refused the task (422): profile: unknown profile 'ceo'; known profiles: capability" in " ".join(
        unknown.stderr.split()
    )
