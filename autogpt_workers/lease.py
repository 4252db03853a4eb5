"""Keeps this process's step leases alive while it works on them, and tells the work under each lease when to stop.

One heartbeat thread per process extends every lease the process holds (``Ledger.renew``). The same round trip
returns each lease's task status, so the work under a lease learns within one heartbeat that its task is being
cancelled (``Hold.stop_reason == "cancel"``) or that its lease was taken over (``"lease lost"``). ``drain`` starts a
graceful shutdown: after the grace period every hold is told to stop (``"shutdown"``) and an optional callback
hands back what is still running.

A hold does not interrupt anything by itself: the think phase's LLM call runs under a watch that a stop request
takes over (``supervise``), settling the step at once while the call is left to finish; the act phase hands a
stop probe to the command, so a sandboxed program is killed within a heartbeat, while a command running in Python
code only learns at its next safe point.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import structlog

log = structlog.get_logger(__name__)

STOPPING_STATUSES = ("cancelling", "cancelled")


class Hold:
    """One lease held by this process, and whether the work under it should stop (and why)."""

    def __init__(self, token: uuid.UUID) -> None:
        self.token = token
        self.stop_reason: str | None = None
        self._event = threading.Event()
        # set while a call runs on the worker's own thread under a watch (``supervise.run_watched``): a stop
        # request takes that call over
        self.on_stop: Callable[[str], None] | None = None

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._event.set()
        on_stop = self.on_stop
        if on_stop is not None:
            on_stop(self.stop_reason)

    @property
    def stopped(self) -> bool:
        return self._event.is_set()

    def wake(self) -> None:
        """Wake whoever waits on this hold without asking it to stop (e.g. the awaited call finished)."""
        self._event.set()

    def wait(self, timeout: float | None) -> bool:
        """Block until stop is requested or ``wake`` is called, or ``timeout`` passes."""
        return self._event.wait(timeout)

    def clear_wake(self) -> None:
        if self.stop_reason is None:
            self._event.clear()


RenewResult = Mapping[uuid.UUID, str] | int


class LeaseKeeper:
    def __init__(
        self,
        renew: Callable[[Sequence[uuid.UUID]], RenewResult],
        interval_s: float,
        ttl_s: float | None = None,
    ) -> None:
        self._renew = renew
        self._interval_s = interval_s
        self._ttl_s = ttl_s
        self._last_renewed: float | None = None  # monotonic time of the last successful renewal with leases held
        self.late_renewals = 0  # renewals that came later than half a lease period after the previous one
        self._holds: dict[uuid.UUID, Hold] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid: int | None = None
        self._drain_started: float | None = None
        self._drain_expired = False

    @contextmanager
    def hold(self, token: uuid.UUID) -> Iterator[Hold]:
        self._ensure_thread()
        h = Hold(token)
        with self._lock:
            self._holds[token] = h
            if self._drain_expired:
                h.request_stop("shutdown")
        try:
            yield h
        finally:
            with self._lock:
                self._holds.pop(token, None)

    def held(self) -> list[uuid.UUID]:
        with self._lock:
            return list(self._holds)

    def holds(self) -> list[Hold]:
        with self._lock:
            return list(self._holds.values())

    # -- graceful shutdown -----------------------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self._drain_started is not None

    def drain(self, grace_s: float, on_expired: Callable[[list[Hold]], object] | None = None) -> None:
        """Stop taking work now; ``grace_s`` later, tell every hold to stop and call ``on_expired`` with the holds
        still open (possibly none). Idempotent: a second call keeps the first deadline."""
        with self._lock:
            if self._drain_started is not None:
                return
            self._drain_started = time.monotonic()

        def expire() -> None:
            with self._lock:
                self._drain_expired = True
                open_holds = list(self._holds.values())
            for h in open_holds:
                h.request_stop("shutdown")
            if on_expired is not None:
                on_expired(open_holds)

        timer = threading.Timer(grace_s, expire)
        timer.daemon = True
        timer.name = "lease-drain"
        timer.start()
        log.info("worker_draining", grace_s=grace_s, in_flight=len(self.held()))

    # -- heartbeat -------------------------------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        # a forked child inherits the object but not the thread
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._holds = {}
            threading.Thread(target=self._run, name="lease-heartbeat", daemon=True).start()

    def beat(self) -> None:
        """One heartbeat: extend the leases, and tell holds whose task is stopping or whose lease was lost."""
        tokens = self.held()
        if not tokens:
            self._last_renewed = None
            return
        result = self._renew(tokens)
        self._note_renewal(len(tokens))
        if not isinstance(result, Mapping):
            return
        for token in tokens:
            with self._lock:
                h = self._holds.get(token)
            if h is None:  # finished meanwhile (its lease cleared by the commit)
                continue
            status = result.get(token)
            if status is None:
                h.request_stop("lease lost")
            elif status in STOPPING_STATUSES:
                h.request_stop("cancel")

    def _note_renewal(self, leases: int) -> None:
        """Warn when renewals come late: past half a lease period, one more slow beat lets a lease lapse under a
        live holder (the reaper then re-drives the step and its LLM call is bought again)."""
        now = time.monotonic()
        previous, self._last_renewed = self._last_renewed, now
        if previous is None or self._ttl_s is None:
            return
        gap = now - previous
        if gap > self._ttl_s / 2:
            self.late_renewals += 1
            log.warning("lease_renewal_late", gap_s=round(gap, 2), lease_ttl_s=self._ttl_s, leases=leases)

    def _run(self) -> None:
        while not self._wake.wait(self._interval_s):
            try:
                self.beat()
            except Exception as exc:  # the database may be restarting: the next beat tries again
                log.warning("lease_renew_failed", error=str(exc), leases=len(self.held()))
