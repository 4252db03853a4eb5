"""A pool of reusable daemon threads for calls that may be abandoned (an inline command past its time limit), and
for the takeovers that settle a step whose LLM call is still running (``supervise``).

``concurrent.futures.ThreadPoolExecutor`` joins its threads at interpreter exit, so one abandoned call would hold
a worker's shutdown until it ended; these threads are daemons. A thread is started only when none is idle, and
stays for the next call: the pool grows to the peak number of calls in flight, never starting one per call.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class DaemonThreads:
    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._started = 0

    @property
    def size(self) -> int:
        return self._started

    @property
    def idle(self) -> int:
        return self._idle

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on an idle thread, or a new one; its result and errors are the caller's to collect."""
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                self._started += 1
                threading.Thread(target=self._serve, name=f"{self.name}-{self._started}", daemon=True).start()
        self._jobs.put((fn, args))

    def _serve(self) -> None:
        while True:
            fn, args = self._jobs.get()
            try:
                fn(*args)
            except BaseException as exc:  # pragma: no cover - callers catch their own; never lose the thread
                log.error("daemon_thread_job_failed", pool=self.name, error=repr(exc))
            with self._lock:
                self._idle += 1
