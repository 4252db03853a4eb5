"""The think worker's gevent pool: which command lines patch, and a shutdown waker that does not stall the greenlets."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from autogpt_workers.celery_app import check_worker_options
from autogpt_workers.config import Settings
from autogpt_workers.green import requested_pool
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize(
    ("argv", "environ", "dotenv", "expected"),
    [
        (["autogpt-workers", "worker", "--queue", "think", "--pool", "gevent"], {}, {}, "gevent"),
        (["cli.py", "worker", "--queue=think", "--pool=gevent"], {}, {}, "gevent"),
        (["cli.py", "worker", "--queue", "think"], {"AUTOGPT_THINK_POOL": "gevent"}, {}, "gevent"),
        (["cli.py", "worker", "--queue", "think"], {}, {"AUTOGPT_THINK_POOL": "gevent"}, "gevent"),
        (["cli.py", "worker", "--queue", "think"], {"AUTOGPT_THINK_POOL": "threads"}, {"AUTOGPT_THINK_POOL": "gevent"},
         "threads"),
        (["cli.py", "worker", "--queue", "think", "--pool", "threads"], {"AUTOGPT_THINK_POOL": "gevent"}, {},
         "threads"),
        (["cli.py", "worker", "--queue", "think"], {}, {}, None),
        # only a think worker: the act worker is prefork, every other command is left alone
        (["cli.py", "worker", "--queue", "act"], {"AUTOGPT_THINK_POOL": "gevent"}, {}, None),
        (["cli.py", "api"], {"AUTOGPT_THINK_POOL": "gevent"}, {}, None),
        (["pytest", "tests/unit", "worker", "--queue", "think"], {"AUTOGPT_THINK_POOL": "gevent"}, {}, None),
        (["cli.py"], {"AUTOGPT_THINK_POOL": "gevent"}, {}, None),
    ],
)
def test_the_pool_comes_from_the_command_line_then_the_environment_then_dotenv(
    argv: list[str], environ: dict[str, str], dotenv: dict[str, str | None], expected: str | None
) -> None:
    assert requested_pool(argv, environ, dotenv) == expected


def test_a_gevent_worker_without_the_patch_is_refused() -> None:
    """This test process is not patched: a raw ``celery worker -P gevent`` in such a process would block every
    greenlet on psycopg2 and the pipe reads. Eventlet is refused outright."""
    s = Settings()
    [problem] = check_worker_options({"pool_cls": "gevent", "queues": ["autogpt.think"]}, s)
    assert "patched" in problem
    assert any("eventlet" in p for p in check_worker_options({"pool_cls": "eventlet", "queues": ["autogpt.think"]}, s))


def test_the_signal_waker_lets_the_other_greenlets_run_while_it_waits() -> None:
    """Under gevent, ``os.read`` on the waker's pipe would block the whole process until the signal; the waker
    waits in (patched) ``select`` instead. A ticking greenlet keeps ticking, and the wake still runs the target."""
    script = textwrap.dedent(
        """
        from autogpt_workers.green import patch
        patch()
        import threading, time
        from autogpt_workers.celery_app import SignalWaker
        ran = threading.Event()
        ticks = [0]
        def tick():
            while not ran.is_set():
                ticks[0] += 1
                time.sleep(0.01)
        waker = SignalWaker(ran.set, "test-waker")
        threading.Thread(target=tick, daemon=True).start()
        time.sleep(0.5)
        before = ticks[0]
        waker.wake()
        assert ran.wait(5), "the target did not run"
        print(before)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) >= 10  # about 50 in 0.5 s; 0 if the waker's read held the process


def test_the_cli_patches_a_gevent_think_worker_and_no_other_command() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.argv = ["autogpt-workers", *sys.argv[1:]]
        import autogpt_workers.cli
        import socket
        from autogpt_workers.green import patched
        print(patched(), "gevent" in type(socket.socket).__module__ or "gevent" in socket.socket.__module__)
        """
    )
    for args, expected in ((["worker", "--queue", "think", "--pool", "gevent"], "True True"),
                           (["worker", "--queue", "think", "--pool", "threads"], "False False"),
                           (["api"], "False False")):
        out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO_ROOT,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[-2:] == expected.split(), (args, out.stdout)
