"""A prefork act child asked to stop: idle, it exits at once; running a task, it drains even while it holds no lease
yet (its task may have claimed a step and not registered the hold: exiting then left the step leased until the
reaper saw the lease expire, which CI caught as a step not handed back)."""

from __future__ import annotations

from typing import Any

import pytest

from autogpt_workers import celery_app


class Exited(Exception):
    pass


class Leases:
    def __init__(self) -> None:
        self.drained: list[float] = []

    def held(self) -> list[Any]:
        return []

    def drain(self, grace_s: float, on_expired: Any = None) -> None:
        self.drained.append(grace_s)


class Runner:
    def __init__(self) -> None:
        self.leases = Leases()


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> Runner:
    from autogpt_workers import runtime

    r = Runner()
    monkeypatch.setattr(runtime, "get_runner", lambda: r)

    def exit_now(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(celery_app.os, "_exit", exit_now)
    monkeypatch.setattr(celery_app, "_child_running_task", [False])
    return r


def test_an_idle_child_exits_at_once(runner: Runner) -> None:
    with pytest.raises(Exited):
        celery_app._child_stop()
    assert runner.leases.drained == []


def test_a_child_running_a_task_drains_though_it_holds_no_lease_yet(runner: Runner) -> None:
    celery_app._child_running_task[0] = True
    celery_app._child_stop()  # no exit
    assert runner.leases.drained == [celery_app.get_settings().shutdown_grace_s]


def test_the_running_flag_follows_the_tasks_prerun_and_postrun(runner: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(celery_app, "_pool_child", [celery_app.os.getpid()])
    installed = type("Waker", (), {"pid": celery_app.os.getpid()})()
    monkeypatch.setattr(celery_app, "_wakers", {"child": installed})  # the handler is installed already
    celery_app._install_child_sigterm()
    assert celery_app._child_running_task[0] is True
    celery_app._child_task_done()
    assert celery_app._child_running_task[0] is False
