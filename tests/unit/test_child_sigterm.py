"""A prefork child's SIGTERM handler does no work in the signal context: it wakes a thread that does the stop.
The handler runs in the main thread between two bytecodes, maybe while that thread holds the lease registry's lock
(taking a step's lease); a stop done inside the handler would then wait on its own thread forever (seen once in CI:
an act child that never drained)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import pytest

from autogpt_workers import celery_app


def test_the_stop_runs_in_a_thread_once_the_main_threads_lock_is_free(monkeypatch: pytest.MonkeyPatch) -> None:
    registry_lock = threading.Lock()  # stands for the lease registry's lock, held by the interrupted main thread
    stopped = threading.Event()
    stopped_in: list[str] = []

    def stop() -> None:
        with registry_lock:
            stopped_in.append(threading.current_thread().name)
            stopped.set()

    monkeypatch.setattr(celery_app, "_child_stop", stop)
    read_fd, write_fd = os.pipe()
    monkeypatch.setattr(celery_app, "_child_sigterm_fd", [write_fd])
    watcher = threading.Thread(target=celery_app._watch_child_sigterm, args=(read_fd,), name="child-sigterm",
                               daemon=True)
    watcher.start()
    try:
        with registry_lock:
            celery_app._child_sigterm(signal.SIGTERM, None)  # returns at once although the lock is taken
            assert not stopped.wait(0.2)
        assert stopped.wait(5)
        assert stopped_in == ["child-sigterm"]
        watcher.join(5)
        assert not watcher.is_alive()
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_the_pool_children_of_every_thread_are_found() -> None:
    """A child forked by another thread is listed in that thread's ``children`` file only, while it lives."""
    forked: list[subprocess.Popen[bytes]] = []
    ready, done = threading.Event(), threading.Event()

    def fork_one() -> None:
        forked.append(subprocess.Popen(["sleep", "30"]))
        ready.set()
        done.wait(30)

    thread = threading.Thread(target=fork_one)
    thread.start()
    in_main = subprocess.Popen(["sleep", "30"])
    try:
        assert ready.wait(10)
        children = celery_app._pool_children()
        assert forked[0].pid in children and in_main.pid in children
    finally:
        done.set()
        thread.join()
        for p in (*forked, in_main):
            p.kill()
            p.wait()
