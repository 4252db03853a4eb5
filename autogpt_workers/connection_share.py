"""Each API process's share of the client connections, kept near its fair share by closing the extra ones.

``autogpt-workers api --workers N`` gives each process a socket of its own on the shared port (``SO_REUSEPORT``,
``api_processes``), and the kernel picks a socket for each new connection by a hash of its addresses. Clients that
keep their connections (every HTTP/1.1 client does) stay where the hash put them, and the hash splits a few dozen
of them unevenly: 32 connections went 10 / 22 in one run of ``make bench``'s submit figure, 14 / 18 and 13 / 19 in
others, and the clients of the busier process waited longer (p99 61 against 40 ms in that run).

So each process publishes how many connections it holds (uvicorn's own count) in a small array shared by the
processes, and a process holding more than its fair share (the total over N, rounded up) answers one request with
``Connection: close`` (``shed``), at most one per ``interval_s``. The client opens a new connection, which the
kernel places anew; in a few rounds the split is even. A client pays one reconnect (a TCP handshake) per shed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, MutableSequence


class ConnectionShare:
    """One process's view: ``counts[index]`` is its own connection count, the other entries the other processes'."""

    def __init__(
        self,
        counts: MutableSequence[int],
        index: int,
        held: Callable[[], int],
        interval_s: float = 0.05,
    ) -> None:
        self.counts = counts
        self.index = index
        self.held = held  # this process's open client connections
        self.interval_s = interval_s
        self._next_shed = 0.0

    def publish(self) -> int:
        mine = self.held()
        self.counts[self.index] = mine
        return mine

    def fair(self) -> int:
        total, n = sum(self.counts), len(self.counts)
        return -(-total // n)

    def shed(self, now: float | None = None) -> bool:
        """Should this request's answer close its connection? True at most once per ``interval_s``, while this
        process holds more than its fair share."""
        now = time.monotonic() if now is None else now
        if now < self._next_shed:
            return False
        if self.publish() <= self.fair():
            return False
        self._next_shed = now + self.interval_s
        return True

    def keep_published(self, every_s: float = 0.2) -> threading.Thread:
        """A daemon thread that publishes the count every ``every_s`` (an idle process answers no request that
        would publish it; a stale count of its own would make the others keep too many)."""

        def run() -> None:
            while True:
                self.publish()
                time.sleep(every_s)

        thread = threading.Thread(target=run, name="connection-share", daemon=True)
        thread.start()
        return thread


# The share of the API process this interpreter runs (set by ``api_processes`` before uvicorn loads the app); None
# for a single process, where there is nothing to even out.
CURRENT: ConnectionShare | None = None
