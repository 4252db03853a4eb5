"""Keeps this process's step leases alive while it works on them (one heartbeat thread per process)."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import structlog

log = structlog.get_logger(__name__)


class LeaseKeeper:
    def __init__(self, renew: Callable[[Sequence[uuid.UUID]], int], interval_s: float) -> None:
        self._renew = renew
        self._interval_s = interval_s
        self._tokens: set[uuid.UUID] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid: int | None = None

    @contextmanager
    def hold(self, token: uuid.UUID) -> Iterator[None]:
        self._ensure_thread()
        with self._lock:
            self._tokens.add(token)
        try:
            yield
        finally:
            with self._lock:
                self._tokens.discard(token)

    def held(self) -> list[uuid.UUID]:
        with self._lock:
            return list(self._tokens)

    def _ensure_thread(self) -> None:
        # a forked child inherits the object but not the thread
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            threading.Thread(target=self._run, name="lease-heartbeat", daemon=True).start()

    def _run(self) -> None:
        while not self._wake.wait(self._interval_s):
            tokens = self.held()
            if not tokens:
                continue
            try:
                self._renew(tokens)
            except Exception as exc:  # the database may be restarting: the next beat tries again
                log.warning("lease_renew_failed", error=str(exc), leases=len(tokens))
