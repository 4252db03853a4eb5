"""``BacklogSignal``: the API's reading of the dispatcher's backlog flag, on real Redis. ``reason()`` reads it at most
every ``refresh_s``; ``cached()`` (the event loop's question, no I/O) sends one caller to refresh a stale reading
and answers the others with the last one meanwhile."""

from __future__ import annotations

import time
import uuid
from typing import Any

from redis import Redis

from autogpt_workers.backlog import BacklogSignal


def _signal(settings: Any, **kwargs: Any) -> tuple[Redis, BacklogSignal]:
    redis = Redis.from_url(settings.redis_url, socket_timeout=2)
    return redis, BacklogSignal(redis, f"test:backlog:{uuid.uuid4()}", **kwargs)


def test_a_reading_is_fresh_for_refresh_s_then_one_caller_refreshes_it(settings: Any) -> None:
    redis, signal = _signal(settings, refresh_s=0.2, stale_ok_s=5.0)
    try:
        assert signal.cached() == (False, None)  # never read: every caller is sent to read it
        assert signal.reason() is None
        assert signal.cached() == (True, None)
        redis.set(signal.key, "think queue backed up", px=10_000)
        assert signal.reason() is None  # read a moment ago: cached
        time.sleep(0.25)
        assert signal.cached() == (False, None)  # stale: this caller refreshes it
        assert [signal.cached() for _ in range(5)] == [(True, None)] * 5  # the others: the last reading meanwhile
        assert signal.reason() == "think queue backed up"  # the refresh
        assert signal.cached() == (True, "think queue backed up")
        redis.delete(signal.key)
        time.sleep(0.25)
        assert signal.cached() == (False, "think queue backed up")
        assert signal.reason() is None
        assert signal.cached() == (True, None)
    finally:
        redis.delete(signal.key)


def test_a_claim_never_refreshed_lapses_after_stale_ok_s(settings: Any) -> None:
    _, signal = _signal(settings, refresh_s=0.05, stale_ok_s=0.3)
    signal.reason()
    time.sleep(0.1)
    assert signal.cached() == (False, None)  # claimed, and the caller never reads (its hop was lost)
    assert signal.cached() == (True, None)
    time.sleep(0.3)
    assert signal.cached() == (False, None)  # past stale_ok_s: every caller is sent to read
    assert signal.cached() == (False, None)
    signal.reason()
    assert signal.cached() == (True, None)


def test_an_unreachable_redis_reads_as_no_backlog(settings: Any) -> None:
    signal = BacklogSignal(Redis(host="127.0.0.1", port=1, socket_timeout=0.2, socket_connect_timeout=0.2), "k")
    assert signal.reason() is None
    assert signal.cached() == (True, None)
