"""Shutdown signals do no work in the signal handler: it wakes a thread that does it (``celery_app.SignalWaker``).
A handler runs in the main thread between two bytecodes, maybe while that thread holds the lease registry's lock
(taking a step's lease); a stop done inside the handler would then wait on its own thread forever (seen once in CI:
an act child that never drained)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import pytest

from autogpt_workers import celery_app


def test_the_work_runs_on_its_thread_once_the_main_threads_lock_is_free() -> None:
    registry_lock = threading.Lock()  # stands for the lease registry's lock, held by the interrupted main thread
    done = threading.Event()
    ran_on: list[str] = []

    def stop() -> None:
        with registry_lock:
            ran_on.append(threading.current_thread().name)
            done.set()

    waker = celery_app.SignalWaker(stop, "child-sigterm")
    with registry_lock:
        waker.wake()  # returns at once although the lock is taken
        assert not done.wait(0.2)
    assert done.wait(5)
    assert ran_on == ["child-sigterm"]


def test_a_childs_sigterm_handler_only_wakes_its_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    woken = threading.Event()
    ran_on: list[str] = []

    def stop() -> None:
        ran_on.append(threading.current_thread().name)
        woken.set()

    monkeypatch.setattr(celery_app, "_wakers", {"child": celery_app.SignalWaker(stop, "child-sigterm")})
    celery_app._child_sigterm(signal.SIGTERM, None)
    assert woken.wait(5)
    assert ran_on == ["child-sigterm"]  # not on the thread the handler ran on


def test_a_waker_of_another_process_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forked child inherits its parent's wakers (and their pipes), not their threads."""
    waker = celery_app.SignalWaker(lambda: None, "drain")
    waker.pid = os.getpid() + 1
    monkeypatch.setattr(celery_app, "_wakers", {"drain": waker})
    assert celery_app._waker("drain") is None


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
