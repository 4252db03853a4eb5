"""The dispatcher process: admits waiting tasks as running slots free, raises priorities as deadlines near, and
delivers webhooks. ``autogpt-workers dispatcher``; ``autogpt-workers run`` starts one.

Two loops on two threads, so a round of slow webhook receivers never delays admission: ``admission`` (with a
``priority_refresh`` round every ``PRIORITY_REFRESH_S``) and ``webhooks``. Every round is reported to
``on_round(loop, result)`` (result ``ok`` or ``error``; the CLI counts them in
``autogpt_dispatcher_rounds_total``), so a stalled or failing dispatcher shows. Several dispatchers may run:
admission rounds take an advisory lock (one at a time), deliveries are claimed with ``SKIP LOCKED`` leases.

Given a ``Wake`` each (the CLI's), the admission and webhook rounds look in the database only when something may have
changed (``autogpt_workers/wake.py``): an idle dispatcher makes a transaction every ``dispatcher_idle_look_s`` per
loop instead of two per ``dispatcher_interval_s`` (a round and its pool pre-ping, before 2026-12-05).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from autogpt_workers.admission import Admitter
from autogpt_workers.webhooks import WebhookDispatcher

log = structlog.get_logger(__name__)

PRIORITY_REFRESH_S = 5.0

RoundObserver = Callable[[str, str], None]


def _ignore(loop: str, result: str) -> None:
    pass


class _Round:
    """One loop's rounds: run the work, report ok/error, log a failure once per kind (or every 30 s)."""

    def __init__(self, name: str, work: Callable[[], int], on_round: RoundObserver) -> None:
        self.name = name
        self.work = work
        self.on_round = on_round
        self._last_error, self._last_logged = "", 0.0

    def __call__(self) -> int:
        try:
            busy = self.work()
        except Exception as exc:  # the database may be restarting: try again next round
            self.on_round(self.name, "error")
            error = f"{type(exc).__name__}: {exc}"
            if error != self._last_error or time.monotonic() - self._last_logged > 30:  # not one line per round
                log.warning("dispatcher_round_failed", loop=self.name, error=error,
                            exc_info=error != self._last_error)
                self._last_error, self._last_logged = error, time.monotonic()
            return 0
        self.on_round(self.name, "ok")
        return busy


def _loop(stop: threading.Event, interval_s: float, work: Callable[[], int]) -> None:
    while not stop.is_set():
        if not work():
            stop.wait(interval_s)


class Dispatcher:
    def __init__(
        self, admitter: Admitter, webhooks: WebhookDispatcher, interval_s: float, on_round: RoundObserver = _ignore
    ) -> None:
        self.admitter = admitter
        self.webhooks = webhooks
        self.interval_s = interval_s
        self._admit = _Round("admission", admitter.admit_round, on_round)
        self._refresh = _Round("priority_refresh", admitter.refresh_priorities, on_round)
        self._deliver = _Round("webhooks", webhooks.deliver_round, on_round)
        self._last_refresh = 0.0

    def admission_round(self) -> int:
        if time.monotonic() - self._last_refresh >= PRIORITY_REFRESH_S:
            self._last_refresh = time.monotonic()
            self._refresh()
        return self._admit()

    def run_forever(self, stop: threading.Event) -> None:
        log.info("dispatcher_started", interval_s=self.interval_s)
        hooks = threading.Thread(target=_loop, args=(stop, self.interval_s, self._deliver), daemon=True)
        hooks.start()
        _loop(stop, self.interval_s, self.admission_round)
        hooks.join()
        self.webhooks.close()
        log.info("dispatcher_stopped")
