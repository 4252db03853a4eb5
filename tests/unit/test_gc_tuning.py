"""The garbage collector's settings in a worker and an API process (``gc_tuning``).

Each case runs in a fresh interpreter: freezing the test process's own objects would keep its cyclic garbage for
the rest of the session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, TEST_ENV

REPORT = "import gc, json; print(json.dumps([gc.get_freeze_count(), gc.get_threshold()[0]]))"


def _run(code: str, **env: str) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\n{REPORT}"],
        cwd=REPO_ROOT,
        env={**os.environ, **TEST_ENV, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    frozen, threshold = json.loads(out.stdout.strip().splitlines()[-1])
    return frozen, threshold


def test_tune_freezes_what_the_process_holds_and_raises_the_young_threshold() -> None:
    frozen, threshold = _run("from autogpt_workers.gc_tuning import tune; import celery; tune(50_000)")
    assert threshold == 50_000
    assert frozen > 5_000  # the interpreter's and celery's objects at least


def test_zero_leaves_pythons_collector_alone() -> None:
    assert _run("from autogpt_workers.gc_tuning import tune; tune(0)") == (0, 700)


@pytest.mark.parametrize("signal", ["worker_ready", "worker_process_init"])
def test_a_starting_worker_tunes_its_collector(signal: str) -> None:
    """What Celery sends when a worker is ready (thread pool) or a prefork child starts reaches ``tune``, with the
    setting's value."""
    code = f"from celery import signals; import autogpt_workers.celery_app; signals.{signal}.send(sender=None)"
    frozen, threshold = _run(code, AUTOGPT_GC_YOUNG_THRESHOLD="30000")
    assert threshold == 30_000 and frozen > 10_000
    assert _run(code, AUTOGPT_GC_YOUNG_THRESHOLD="0") == (0, 700)


def test_the_api_factory_uvicorn_calls_tunes_the_collector_and_create_app_does_not() -> None:
    frozen, threshold = _run("from api_shim.app import create_server_app; create_server_app()")
    assert threshold == 100_000 and frozen > 10_000  # the default
    assert _run("from api_shim.app import create_app; create_app()") == (0, 700)


def test_autogpt_workers_api_serves_the_factory_that_tunes() -> None:
    """``autogpt-workers api`` hands uvicorn ``create_server_app``: uvicorn is replaced by a call of the factory it
    was given, in this one process."""
    code = (
        "import importlib, uvicorn\n"
        "def run(app, **_):\n"
        "    module, name = app.split(':')\n"
        "    getattr(importlib.import_module(module), name)()\n"
        "uvicorn.run = run\n"
        "from autogpt_workers.cli import app\n"
        "app(['api'], standalone_mode=False)"
    )
    frozen, threshold = _run(code)
    assert threshold == 100_000 and frozen > 10_000
