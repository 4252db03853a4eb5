"""Wake-ups for the dispatcher's loops over PostgreSQL ``LISTEN``/``NOTIFY``, so an idle loop need not look.

A loop (admission, webhooks) runs a round every ``dispatcher_interval_s``; a round that looks in the database is a
transaction (and a pool pre-ping, another). Most rounds of an idle platform find nothing, so a loop looks only when
something may have changed (``Wake.should_look``):

- its channel was notified since it last looked: a task was held for admission (``admission._hold``), a webhook
  delivery was written (the ``task_events`` trigger, migration 0007). ``NOTIFY`` is sent at commit, so the row is
  visible to a look that starts after the notification arrives;
- its last look left work behind (tasks still waiting, deliveries in flight): it looks every round, as before;
- something it knows of falls due (a delivery's retry time);
- the listener is not connected (PostgreSQL restarting): every round looks, as before;
- ``max_idle_s`` passed: a safety net for a notification that never came (another database client writing rows
  without the trigger's help, a connection that died silently).

The event is cleared before the look, so a notification that arrives during a look makes the next round look again.
"""

from __future__ import annotations

import contextlib
import select
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from sqlalchemy import Engine

log = structlog.get_logger(__name__)

ADMISSION_CHANNEL = "autogpt_admission"
WEBHOOKS_CHANNEL = "autogpt_webhooks"


class Wake:
    """Whether one loop should look in the database this round (see the module's docstring)."""

    def __init__(self, max_idle_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_idle_s = max_idle_s
        self.clock = clock
        self.listening = False  # set by the listener while its LISTEN connection is up
        self._notified = threading.Event()
        self._notified.set()  # the first round looks
        self._idle = False
        self._looked_at = -1e18
        self._due_at: float | None = None
        self.looks = 0  # rounds that looked (for tests and logs)

    def notify(self) -> None:
        self._notified.set()

    def should_look(self) -> bool:
        now = self.clock()
        if (
            self._notified.is_set()
            or not self.listening
            or not self._idle
            or now - self._looked_at >= self.max_idle_s
            or (self._due_at is not None and now >= self._due_at)
        ):
            self._notified.clear()
            self._looked_at = now
            self.looks += 1
            return True
        return False

    def looked(self, idle: bool, due_in_s: float | None = None) -> None:
        """What the look found: ``idle`` (nothing left to do until notified), and when known work falls due."""
        self._idle = idle
        self._due_at = None if due_in_s is None else self.clock() + max(0.0, due_in_s)


class Listener:
    """One autocommit connection that ``LISTEN``s on each channel of ``wakes`` and notifies its ``Wake``. Reconnects
    after an error; while it is down every ``Wake`` looks every round (``listening`` is False)."""

    def __init__(self, engine: Engine, wakes: Mapping[str, Wake], poll_s: float = 1.0, retry_s: float = 1.0) -> None:
        self.engine = engine
        self.wakes = dict(wakes)
        self.poll_s = poll_s
        self.retry_s = retry_s
        self._thread: threading.Thread | None = None

    def start(self, stop: threading.Event) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, args=(stop,), name="notify-listener", daemon=True)
        self._thread.start()
        return self._thread

    def run(self, stop: threading.Event) -> None:
        last_error = ""
        while not stop.is_set():
            conn = None
            try:
                conn = self._connect()
                with conn.cursor() as cur:
                    for channel in self.wakes:
                        cur.execute(f"LISTEN {channel}")
                self._set_listening(True)  # and look once: a notification may have been missed while down
                if last_error:
                    log.info("notify_listener_reconnected")
                last_error = ""
                while not stop.is_set():
                    if select.select([conn], [], [], self.poll_s) == ([], [], []):
                        continue
                    conn.poll()
                    for note in conn.notifies:
                        wake = self.wakes.get(note.channel)
                        if wake is not None:
                            wake.notify()
                    conn.notifies.clear()
            except Exception as exc:  # PostgreSQL restarting: the loops poll every round until we are back
                self._set_listening(False)
                error = f"{type(exc).__name__}: {exc}"
                if error != last_error:
                    log.warning("notify_listener_down", error=error)
                last_error = error
                stop.wait(self.retry_s)
            finally:
                self._set_listening(False)
                if conn is not None:
                    with contextlib.suppress(Exception):  # already gone
                        conn.close()

    def _set_listening(self, up: bool) -> None:
        for wake in self.wakes.values():
            wake.listening = up
            wake.notify()

    def _connect(self) -> Any:
        """A DBAPI connection of the engine's dialect (psycopg2), outside its pool: held for the process's life."""
        cargs, cparams = self.engine.dialect.create_connect_args(self.engine.url)
        cparams = {"connect_timeout": 5, "application_name": "autogpt-workers-listen", **cparams}
        conn = self.engine.dialect.loaded_dbapi.connect(*cargs, **cparams)
        conn.autocommit = True
        return conn
