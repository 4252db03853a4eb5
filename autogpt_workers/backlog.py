"""The backlog gate: whether new tasks should wait in the admission queue because the workers are all busy.

With no running-task cap configured, a task goes straight to RabbitMQ, where the order within a priority level is
first in, first out: one tenant's burst would fill the queue ahead of everyone else's work, and a wake-up already in
the queue could not gain urgency. So while the think queue is backed up (``scheduler_max_ready`` or more wake-ups
ready in it, i.e. no worker thread free to take them) or admissible tasks already wait, new tasks wait in the
admission queue instead, where fair share and deadline urgency order them, and the dispatcher admits them as the
backlog drains (keeping at most ``scheduler_max_ready`` ready in RabbitMQ). With idle capacity nothing waits.

The dispatcher decides (it reads the queue exactly, over AMQP, every admission round) and raises a flag in Redis
with a short time to live; every API process reads the flag (cached for ``refresh_s``). No dispatcher running, no
flag: tasks are never held for a backlog nobody would admit. The flag's key names the database (whose admission
queue it speaks for), so platforms sharing one Redis do not hold each other's tasks.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time

import structlog
from redis import Redis
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)



WAITING_SUFFIX = ":waiting"


def flag_key(database_url: str) -> str:
    return "autogpt:admission:backlog:" + hashlib.sha256(database_url.encode()).hexdigest()[:16]


class BacklogFlag:
    """The dispatcher's side: raise the flag (with why) for ``ttl_s``, or lower it."""

    def __init__(self, redis: Redis, key: str, ttl_s: float) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = max(1000, int(ttl_s * 1000))
        self._raised = False

    @classmethod
    def from_url(cls, redis_url: str, database_url: str, ttl_s: float) -> BacklogFlag:
        return cls(Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2), flag_key(database_url), ttl_s)

    def set(self, reason: str | None, waiting: int = 0) -> None:
        """Raise the flag with ``reason`` (None: lower it); ``waiting`` is how many admissible tasks wait behind
        it, the demand the autoscaler adds to the think queue's (``BacklogDemand``)."""
        try:
            if reason is not None:
                pipe = self.redis.pipeline(transaction=False)
                pipe.set(self.key, reason, px=self.ttl_ms)
                pipe.set(self.key + WAITING_SUFFIX, waiting, px=self.ttl_ms)
                pipe.execute()
            elif self._raised:
                self.redis.delete(self.key, self.key + WAITING_SUFFIX)
        except RedisError as exc:  # the flag expires on its own; new tasks go straight to the broker meanwhile
            log.warning("backlog_flag_not_written", error=str(exc))
            return
        self._raised = reason is not None


class BacklogSignal:
    """The API's side: why new tasks should wait now (the flag's text), or None; read at most every ``refresh_s``."""

    def __init__(self, redis: Redis, key: str, refresh_s: float = 0.1, stale_ok_s: float = 1.0) -> None:
        self.redis = redis
        self.key = key
        self.refresh_s = refresh_s
        self.stale_ok_s = stale_ok_s  # how old a reading ``cached`` answers with while another caller refreshes it
        self._refresh = threading.Lock()  # claimed by the ``cached`` caller that is to refresh the reading
        self._lock = threading.Lock()
        self._read_at = -1e9
        self._reason: str | None = None
        self._known: tuple[float, str | None] = (-1e9, None)  # (when read, reason) of the last completed reading
        self._failing = False

    def reason(self) -> str | None:
        try:
            return self._read()
        finally:
            if self._refresh.locked():  # a ``cached`` caller's claim is answered: the reading is fresh
                with contextlib.suppress(RuntimeError):  # released meanwhile by another reading
                    self._refresh.release()

    def _read(self) -> str | None:
        with self._lock:
            now = time.monotonic()
            if now - self._read_at < self.refresh_s:
                return self._reason
            self._read_at = now
            try:
                raw = self.redis.get(self.key)
            except RedisError as exc:  # never hold a task on a guess
                if not self._failing:
                    log.warning("backlog_flag_unreadable", error=str(exc))
                self._failing, self._reason = True, None
                self._known = (time.monotonic(), None)
                return None
            self._failing = False
            self._reason = raw.decode() if isinstance(raw, bytes) else raw
            self._known = (time.monotonic(), self._reason)
            return self._reason

    def cached(self) -> tuple[bool, str | None]:
        """``(fresh, reason)`` from the last reading, without reading Redis or waiting for a reading in progress
        (an event loop's question). Once that reading is ``refresh_s`` old, one caller gets ``fresh`` False: it is
        to call ``reason()`` (in a thread), which reads the flag again. Meanwhile the others get the last reading as
        fresh, up to ``stale_ok_s`` old, so a burst of submits makes one read and one thread hop, not one each."""
        read_at, reason = self._known
        age = time.monotonic() - read_at
        if age < self.refresh_s:
            return True, reason
        if self._refresh.acquire(blocking=False):
            return False, reason  # this caller refreshes it
        # another caller is refreshing it; past stale_ok_s its refresh was lost (its hop never ran): every caller reads
        return age < self.stale_ok_s, reason


_signals: dict[str, BacklogSignal] = {}
_signals_lock = threading.Lock()


def backlog_signal(redis_url: str, database_url: str) -> BacklogSignal:
    """The process's signal for this Redis and database (one client, one cache, however many routers ask)."""
    with _signals_lock:
        signal = _signals.get(redis_url + " " + database_url)
        if signal is None:
            client = Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
            signal = _signals[redis_url + " " + database_url] = BacklogSignal(client, flag_key(database_url))
        return signal


class BacklogDemand:
    """The autoscaler's side: how many admissible tasks the dispatcher holds back (0 when the flag is down, unknown
    or unreadable). They are think wake-ups that would wait in RabbitMQ without the gate, so the autoscaler counts
    them as ready messages of the think queue: holding tasks in the database does not hide demand from scaling."""

    def __init__(self, redis: Redis, key: str) -> None:
        self.redis = redis
        self.key = key + WAITING_SUFFIX

    @classmethod
    def from_url(cls, redis_url: str, database_url: str) -> BacklogDemand:
        return cls(Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1), flag_key(database_url))

    def __call__(self) -> int:
        try:
            raw = self.redis.get(self.key)
        except RedisError as exc:
            log.warning("backlog_demand_unreadable", error=str(exc))
            return 0
        try:
            return max(0, int(raw)) if raw is not None else 0
        except (TypeError, ValueError):
            return 0
