"""Calls that run on their caller's thread, and that another thread takes over when their step must stop.

The think phase's LLM call used to run on a helper thread while the delivery's thread waited beside it, so that a
cancel, a shutdown or the time limit could abandon the call at once. That is two thread switches each way for
every step. Now the delivery's thread makes the call itself, under a ``Watch``. If the call's hold is told to stop
(``Hold.request_stop``) or its deadline passes first, the watch is *taken over*: the step is settled (cancelled,
handed back, or left fenced) on another thread, at once, as the waiting thread used to do; when the call returns
at last, its result is dropped and its thread ends the delivery with the takeover's outcome.

A watch is settled exactly once: by its caller when the call returns (``Watch.release``), or by a takeover
(``Watch.take_over``), whichever comes first under its lock.

``Supervisor`` keeps the watches of one process: it fires those whose deadline passed (a daemon thread looks once
a ``tick_s``), and at shutdown says which calls were taken over and have not come back (``stuck``).
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)

_RUNNING, _RELEASED, _TAKEN = 0, 1, 2


class TakenOver(Exception):
    """The call's step was settled by a takeover; ``outcome`` is what the takeover returned."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class Watch:
    """One call in flight on its caller's thread, which ``take_over`` may settle instead of the caller."""

    def __init__(
        self,
        settle: Callable[[str], str],
        deadline: float,
        limit_reason: str,
        spawn: Callable[..., None],
    ) -> None:
        self._settle = settle
        self.deadline = deadline
        self.limit_reason = limit_reason
        self._spawn = spawn
        self._context = contextvars.copy_context()  # the log context (task, step) follows the takeover
        self._lock = threading.Lock()
        self._state = _RUNNING
        self._done: threading.Event | None = None  # made only by a takeover: most calls come back first
        self._outcome = "abandoned"

    @property
    def taken(self) -> bool:
        return self._state == _TAKEN

    def fire(self, reason: str) -> None:
        """Take the call over on a helper thread (the caller of ``fire`` may be a heartbeat that must not wait)."""
        if self._state == _RUNNING:  # a copy each time: two fires (a cancel, the deadline) may race, and one
            # context cannot be entered by two threads at once
            self._spawn(self._context.copy().run, self.take_over, reason)

    def take_over(self, reason: str) -> bool:
        """Settle the step for ``reason`` unless the caller already released the watch; True if this did."""
        with self._lock:
            if self._state != _RUNNING:
                return False
            self._state = _TAKEN
            done = self._done = threading.Event()
        try:
            self._outcome = self._settle(reason)
        except Exception as exc:  # e.g. the database is down: the lease lapses and the reaper re-drives the step
            log.error("takeover_failed", reason=reason, error=repr(exc))
            self._outcome = f"abandoned: {reason}"
        finally:
            done.set()
        return True

    def release(self) -> bool:
        """The call came back: True if the step is still the caller's, False if a takeover settled it."""
        with self._lock:
            if self._state == _RUNNING:
                self._state = _RELEASED
                return True
        return False

    def outcome(self, timeout: float | None = None) -> str:
        """The takeover's outcome, once it has settled the step (only after ``release`` said it was taken)."""
        self.settled(timeout)
        return self._outcome

    def settled(self, timeout: float | None = None) -> bool:
        """Has a takeover settled the step (waiting up to ``timeout`` for one under way)?"""
        done = self._done
        return done is not None and done.wait(timeout)


class Supervisor:
    """The watches of one process; a daemon thread fires those past their deadline."""

    def __init__(self, spawn: Callable[..., None], tick_s: float = 1.0) -> None:
        self._spawn = spawn
        self.tick_s = tick_s
        self._watches: dict[int, Watch] = {}
        self._lock = threading.Lock()
        self._pid: int | None = None

    def watch(self, settle: Callable[[str], str], limit_s: float, limit_reason: str) -> Watch:
        self._ensure_thread()
        w = Watch(settle, time.monotonic() + limit_s, limit_reason, self._spawn)
        with self._lock:
            self._watches[id(w)] = w
        return w

    def forget(self, w: Watch) -> None:
        """The caller is done with ``w`` (returned, or raised ``TakenOver``)."""
        with self._lock:
            self._watches.pop(id(w), None)

    def stuck(self) -> list[Watch]:
        """Watches taken over whose callers have not come back (their calls still run)."""
        with self._lock:
            return [w for w in self._watches.values() if w.taken]

    def check(self, now: float | None = None) -> int:
        """Fire every running watch past its deadline; how many were fired."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [w for w in self._watches.values() if w.deadline <= now and not w.taken]
        for w in due:
            w.fire(w.limit_reason)
        return len(due)

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid():  # a forked child inherits the object but not the thread
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._watches = {}
            threading.Thread(target=self._run, name="call-supervisor", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self.tick_s)
            try:
                self.check()
            except Exception as exc:  # pragma: no cover - never lose the thread
                log.error("supervisor_check_failed", error=repr(exc))


def run_watched(
    supervisor: Supervisor,
    hold: Any,
    call: Callable[[], Any],
    settle: Callable[[str], str],
    limit_s: float,
    limit_reason: str,
) -> Any:
    """Run ``call`` here under a watch on ``hold``; return its result, or raise ``TakenOver`` with the outcome of
    the takeover that settled the step meanwhile (``settle(reason)``, on another thread, as soon as the hold is told
    to stop or ``limit_s`` has passed). A hold already told to stop is settled here, without making the call."""
    w = supervisor.watch(settle, limit_s, limit_reason)
    hold.on_stop = w.fire
    try:
        reason = hold.stop_reason
        if reason is not None:  # told to stop before the watch was on it: no call is made
            w.take_over(reason)
            raise TakenOver(w.outcome())
        try:
            value = call()
        except BaseException:
            if w.release():
                raise
            raise TakenOver(w.outcome()) from None
        if not w.release():
            raise TakenOver(w.outcome())
        return value
    finally:
        hold.on_stop = None
        supervisor.forget(w)
