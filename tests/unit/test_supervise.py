"""A call on its caller's thread, taken over when its hold is told to stop or its time is up (``supervise``)."""

from __future__ import annotations

import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from autogpt_workers.daemon_threads import DaemonThreads
from autogpt_workers.lease import Hold
from autogpt_workers.runner import StepRunner
from autogpt_workers.supervise import Supervisor, TakenOver, run_watched


class Settler:
    """Records each takeover: its reason, its thread, and whether the call was still running then."""

    def __init__(self, call_running: threading.Event | None = None) -> None:
        self.calls: list[tuple[str, str, bool]] = []
        self.call_running = call_running
        self.done = threading.Event()

    def __call__(self, reason: str) -> str:
        running = self.call_running.is_set() if self.call_running is not None else False
        self.calls.append((reason, threading.current_thread().name, running))
        self.done.set()
        return f"settled: {reason}"


def supervisor(tick_s: float = 3600) -> Supervisor:
    """A supervisor whose thread (one per supervisor, for the life of the test process) looks only every ``tick_s``."""
    return Supervisor(DaemonThreads("test-takeover").submit, tick_s=tick_s)


def test_a_call_that_returns_is_its_callers_and_nothing_is_settled() -> None:
    sup, hold, settle = supervisor(), Hold(uuid.uuid4()), Settler()
    caller = threading.current_thread().name
    seen: list[str] = []
    assert run_watched(sup, hold, lambda: seen.append(threading.current_thread().name) or 42, settle, 60, "limit") == 42
    assert seen == [caller]  # made on the caller's own thread
    assert settle.calls == [] and hold.on_stop is None and sup.stuck() == []
    hold.request_stop("cancel")  # after the call: nothing to take over
    time.sleep(0.05)
    assert settle.calls == []


def test_a_stop_during_the_call_settles_the_step_at_once_on_another_thread() -> None:
    sup, hold = supervisor(), Hold(uuid.uuid4())
    running, release = threading.Event(), threading.Event()
    settle = Settler(running)

    def slow_call() -> str:
        running.set()
        release.wait(10)
        return "the model's late answer"

    outcome: list[Any] = []

    def caller() -> None:
        try:
            outcome.append(run_watched(sup, hold, slow_call, settle, 60, "limit"))
        except TakenOver as exc:
            outcome.append(exc)

    t = threading.Thread(target=caller, name="delivery")
    t.start()
    assert running.wait(5)
    hold.request_stop("cancel")
    assert settle.done.wait(5), "the takeover should not wait for the call"
    assert settle.calls[0][0] == "cancel" and settle.calls[0][1] != "delivery" and settle.calls[0][2]
    assert [w.taken for w in sup.stuck()] == [True]  # the call still runs: its thread has not come back
    release.set()
    t.join(5)
    assert isinstance(outcome[0], TakenOver) and outcome[0].outcome == "settled: cancel"  # the answer is dropped
    assert len(settle.calls) == 1 and sup.stuck() == [] and hold.on_stop is None


def test_past_its_deadline_the_call_is_taken_over_for_the_limit() -> None:
    sup, hold = supervisor(tick_s=0.02), Hold(uuid.uuid4())
    settle = Settler()
    started = time.monotonic()
    with pytest.raises(TakenOver) as caught:  # the call ends only once the supervisor's thread has taken it over
        run_watched(sup, hold, lambda: settle.done.wait(10), settle, 0.1, "think time limit")
    assert caught.value.outcome == "settled: think time limit"
    assert settle.calls[0][0] == "think time limit"
    assert settle.done.is_set() and time.monotonic() - started >= 0.1


def test_an_error_of_a_call_taken_over_is_dropped_and_one_not_taken_over_is_raised() -> None:
    sup, hold = supervisor(), Hold(uuid.uuid4())
    settle = Settler()

    def fails_after_stop() -> None:
        hold.request_stop("lease lost")
        assert settle.done.wait(5)
        raise RuntimeError("the call failed after all")

    with pytest.raises(TakenOver) as caught:
        run_watched(sup, hold, fails_after_stop, settle, 60, "limit")
    assert caught.value.outcome == "settled: lease lost"

    def fails() -> None:
        raise ValueError("the model's reply")

    with pytest.raises(ValueError, match="the model's reply"):
        run_watched(supervisor(), Hold(uuid.uuid4()), fails, Settler(), 60, "limit")


def test_a_hold_told_to_stop_before_the_call_makes_no_call() -> None:
    sup, hold, settle = supervisor(), Hold(uuid.uuid4()), Settler()
    hold.request_stop("shutdown")
    made: list[int] = []
    with pytest.raises(TakenOver) as caught:
        run_watched(sup, hold, lambda: made.append(1), settle, 60, "limit")
    assert made == [] and caught.value.outcome == "settled: shutdown"
    assert [c[0] for c in settle.calls] == ["shutdown"]


def test_a_stop_racing_the_calls_return_settles_the_step_exactly_once() -> None:
    sup = supervisor()
    for _ in range(200):
        hold, settle = Hold(uuid.uuid4()), Settler()
        stopper = threading.Thread(target=hold.request_stop, args=("cancel",))

        def call(stopper: threading.Thread = stopper) -> str:
            stopper.start()
            return "answer"

        try:
            result: Any = run_watched(sup, hold, call, settle, 60, "limit")
        except TakenOver as exc:
            result = exc
        stopper.join(5)
        time.sleep(0.002)
        if isinstance(result, TakenOver):
            assert [c[0] for c in settle.calls] == ["cancel"]
        else:
            assert result == "answer" and settle.calls == []


def test_a_failed_takeover_is_logged_and_ends_the_delivery() -> None:
    sup, hold = supervisor(), Hold(uuid.uuid4())

    def settle(reason: str) -> str:
        raise ConnectionError("database down")

    with pytest.raises(TakenOver) as caught:
        run_watched(sup, hold, lambda: (hold.request_stop("cancel"), time.sleep(0.1)), settle, 60, "limit")
    assert caught.value.outcome == "abandoned: cancel"  # the lease lapses; the reaper re-drives the step


def test_past_the_grace_a_worker_exits_once_only_taken_over_calls_are_left() -> None:
    sup, release = supervisor(), threading.Event()
    holds = [Hold(uuid.uuid4()) for _ in range(3)]
    open_holds = set(range(3))
    runner: Any = SimpleNamespace(supervisor=sup, leases=SimpleNamespace(held=lambda: list(open_holds)))
    settles = [Settler() for _ in holds]

    def delivery(i: int) -> None:
        try:
            wait = 10 if i < 2 else 0.2  # two calls hang, one ends soon after the grace
            run_watched(sup, holds[i], lambda: release.wait(wait), settles[i], 60, "limit")
        except TakenOver:
            pass
        finally:
            if i == 2:
                open_holds.discard(i)

    threads = [threading.Thread(target=delivery, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    exits: list[int] = []
    for h in holds[:2]:
        h.request_stop("shutdown")
    assert StepRunner.exit_once_only_stuck(runner, wait_s=5, exit=exits.append) is True
    assert exits == [0] and 2 not in open_holds  # it waited for the step that was not stuck
    assert all(s.done.is_set() for s in settles[:2])  # both stuck steps were handed back first
    release.set()
    for t in threads:
        t.join(5)
    # nothing stuck: the warm shutdown goes on by itself
    assert StepRunner.exit_once_only_stuck(
        SimpleNamespace(supervisor=supervisor(), leases=SimpleNamespace(held=list)), wait_s=1, exit=exits.append
    ) is False
    assert exits == [0]


def test_a_cancel_and_the_deadline_racing_settle_the_step_once_and_quietly() -> None:
    jobs: list[tuple[Any, tuple[Any, ...]]] = []
    sup, hold = Supervisor(lambda fn, *args: jobs.append((fn, args)), tick_s=3600), Hold(uuid.uuid4())
    settles: list[str] = []

    def settle(reason: str) -> str:
        settles.append(reason)
        time.sleep(0.1)  # the first takeover is still settling when the others start
        return f"settled: {reason}"

    errors: list[BaseException] = []

    def run(fn: Any, args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except BaseException as exc:
            errors.append(exc)

    def call() -> None:
        hold.request_stop("cancel")  # the heartbeat's side
        sup.check(now=float("inf"))  # the supervisor's, before either takeover has started
        threads = [threading.Thread(target=run, args=job) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)

    with pytest.raises(TakenOver) as caught:
        run_watched(sup, hold, call, settle, 60, "think time limit")
    assert len(jobs) == 2 and errors == [] and len(settles) == 1
    assert caught.value.outcome == f"settled: {settles[0]}"
