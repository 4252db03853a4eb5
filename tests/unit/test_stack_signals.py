"""``run``'s stop signals: one that lands while a child is being started waits until the child is known, so the
stop reaches it (a SIGTERM inside ``subprocess.Popen`` used to leave the just-started child running, unknown)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from autogpt_workers.stack import _SIGNALS, Stack, _Stop


@pytest.fixture
def handlers() -> Iterator[None]:
    previous = _SIGNALS.install()
    try:
        yield
    finally:
        _SIGNALS.restore(previous)


def test_a_signal_inside_held_waits_for_the_block_to_end(handlers: None) -> None:
    reached_end = False
    with pytest.raises(_Stop), _SIGNALS.held():
        signal.raise_signal(signal.SIGTERM)
        with _SIGNALS.held():  # nested: still held
            signal.raise_signal(signal.SIGINT)  # the first signal is the one raised
        reached_end = True
    assert reached_end
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
        signal.getsignal(signal.SIGINT)  # a bytecode boundary for the handler to run at, should it not have yet


def test_a_stop_signal_during_popen_leaves_the_child_known_to_stop(
    handlers: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_popen = subprocess.Popen

    def popen_then_signal(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        child = real_popen(*args, **kwargs)
        signal.raise_signal(signal.SIGTERM)  # its handler runs here, inside "Popen"
        return child

    monkeypatch.setattr(subprocess, "Popen", popen_then_signal)
    stack = Stack(tmp_path, dict(os.environ), Console(quiet=True))
    with pytest.raises(_Stop):
        stack.start("sleeper", ["sleep", "60"])
    monkeypatch.undo()
    child = stack.procs["sleeper"]
    assert child.poll() is None
    stack.stop(grace_s=5)
    assert child.poll() is not None


def test_run_to_end_says_how_the_child_ended_and_forgets_it(tmp_path: Path) -> None:
    stack = Stack(tmp_path, dict(os.environ), Console(quiet=True))
    assert stack.run_to_end("say", ["sh", "-c", "echo out; echo err >&2; exit 3"]) == (3, "out\nerr\n")
    assert stack.procs == {}
