"""Marking published wake-ups in batches, off the step's path.

After a wake-up is published (with confirms) its outbox row is marked, so the reaper does not publish it again.
The mark only saves the reaper a duplicate: a wake-up's claim marks its row too, and a duplicate delivery is
harmless (the ledger settles it). So the marks of all steps of a process go to PostgreSQL in one transaction every
``interval_s`` (1 s) from a background thread, instead of one transaction per phase. (At 0.2 s, the marks of
three worker processes were a tenth of a transaction per step in ``make bench``; nearly every one of them is
redundant, as the claim marks its own wake-up.) A process that dies with marks
pending leaves those rows to the reaper (duplicates, settled by the ledger); a database that is down keeps them
pending until the next round (at most ``max_pending``; marks beyond it are dropped, with the same consequence).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence

import structlog

log = structlog.get_logger(__name__)


class PublishMarks:
    def __init__(
        self, mark: Callable[[Sequence[int]], None], interval_s: float = 1.0, max_pending: int = 50_000
    ) -> None:
        self._mark = mark
        self.interval_s = interval_s
        self._pending: collections.deque[int] = collections.deque(maxlen=max_pending)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.flushes = 0

    def add(self, outbox_ids: Sequence[int]) -> None:
        if not outbox_ids:
            return
        with self._lock:
            self._pending.extend(outbox_ids)
            if self._thread is None:  # started on first use: in a prefork child, after the fork
                self._thread = threading.Thread(target=self._run, name="publish-marks", daemon=True)
                self._thread.start()

    def flush(self) -> int:
        """Mark everything pending now; returns how many rows were sent (0 if the database refused)."""
        with self._lock:
            batch = list(self._pending)
            self._pending.clear()
        if not batch:
            return 0
        try:
            self._mark(batch)
        except Exception as exc:  # kept for the next round; the reaper covers a process that never gets there
            log.warning("mark_published_failed", error=str(exc).splitlines()[0], pending=len(batch))
            with self._lock:
                self._pending.extendleft(reversed(batch))
            return 0
        self.flushes += 1
        return len(batch)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval_s)
            self.flush()
