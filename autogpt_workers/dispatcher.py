"""The dispatcher process: admits waiting tasks as running slots free, raises priorities as deadlines near, and
delivers webhooks. ``autogpt-workers dispatcher``; ``autogpt-workers run`` starts one.

Two loops on two threads, so a round of slow webhook receivers never delays admission. Several dispatchers may
run: admission rounds take an advisory lock (one at a time), deliveries are claimed with ``SKIP LOCKED`` leases.
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


def _loop(name: str, stop: threading.Event, interval_s: float, work: Callable[[], int]) -> None:
    last_error, last_logged = "", 0.0
    while not stop.is_set():
        try:
            busy = work()
        except Exception as exc:  # the database may be restarting: try again next round
            busy = 0
            error = f"{type(exc).__name__}: {exc}"
            if error != last_error or time.monotonic() - last_logged > 30:  # not one line per round
                log.warning("dispatcher_round_failed", loop=name, error=error, exc_info=error != last_error)
                last_error, last_logged = error, time.monotonic()
        if not busy:
            stop.wait(interval_s)


class Dispatcher:
    def __init__(self, admitter: Admitter, webhooks: WebhookDispatcher, interval_s: float) -> None:
        self.admitter = admitter
        self.webhooks = webhooks
        self.interval_s = interval_s
        self._last_refresh = 0.0

    def admission_round(self) -> int:
        if time.monotonic() - self._last_refresh >= PRIORITY_REFRESH_S:
            self._last_refresh = time.monotonic()
            self.admitter.refresh_priorities()
        return self.admitter.admit_round()

    def run_forever(self, stop: threading.Event) -> None:
        log.info("dispatcher_started", interval_s=self.interval_s)
        hooks = threading.Thread(
            target=_loop, args=("webhooks", stop, self.interval_s, self.webhooks.deliver_round), daemon=True
        )
        hooks.start()
        _loop("admission", stop, self.interval_s, self.admission_round)
        hooks.join()
        self.webhooks.close()
        log.info("dispatcher_stopped")
