"""When a dispatcher loop looks in the database: only when something may have changed.

A loop (admission, webhooks) runs a round every ``dispatcher_interval_s``, and a round that looks in the database is
a transaction. Most rounds of an idle platform find nothing, so a loop goes idle when its last look found nothing
that could change without it (see ``Admitter.admit_round`` and ``WebhookDispatcher.deliver_round`` for what each
counts), and then looks only when:

- it was told something changed in this process (``notify``: a webhook delivery in flight ended, another
  dispatcher held the admission lock);
- something it knows of falls due (a delivery's retry time);
- ``max_idle_s`` passed since its last look (``AUTOGPT_DISPATCHER_IDLE_LOOK_S``): what another process writes while
  the loop is idle waits at most that long.

No PostgreSQL ``LISTEN``/``NOTIFY``: a transaction that notifies takes a lock that serializes the commits of every
notifying transaction of the instance (PostgreSQL's ``PreCommit_Notify``), and the writers here would be the step
commits of webhook-subscribed tasks and the submissions of a backlog burst.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Wake:
    """Whether one loop should look in the database this round."""

    def __init__(self, max_idle_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_idle_s = max_idle_s
        self.clock = clock
        self._notified = threading.Event()
        self._notified.set()  # the first round looks
        self._idle = False
        self._looked_at = -1e18
        self._due_at: float | None = None
        self.looks = 0  # rounds that looked (for tests)

    def notify(self) -> None:
        self._notified.set()

    def should_look(self) -> bool:
        now = self.clock()
        if (
            self._notified.is_set()
            or not self._idle
            or now - self._looked_at >= self.max_idle_s
            or (self._due_at is not None and now >= self._due_at)
        ):
            self._notified.clear()  # before the look: a notification during it makes the next round look again
            self._looked_at = now
            self.looks += 1
            return True
        return False

    def looked(self, idle: bool, due_in_s: float | None = None) -> None:
        """What the look found: ``idle`` (nothing can change unseen), and when known work falls due."""
        self._idle = idle
        self._due_at = None if due_in_s is None else self.clock() + max(0.0, due_in_s)
