"""The queue reader against the real RabbitMQ management API: depth, unacked and the oldest message's age of
messages published (stamped) by Celery on the ops vhost."""

from __future__ import annotations

import time

import pytest
from kombu import Connection

from autogpt_workers.queues import (
    ManagementAPIError,
    ManagementEndpoint,
    QueueReader,
    ReadyCounter,
    stamp_publish_time,
)

pytestmark = pytest.mark.integration


def _wait(reader: QueueReader, check, timeout_s: float = 20):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        stats = reader.platform()
        if check(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.5)


def test_depth_unacked_and_oldest_age(ops_broker_url: str, migrated) -> None:  # type: ignore[no-untyped-def]
    from autogpt_workers.celery_app import declare_topology, make_celery
    from autogpt_workers.config import Settings

    app = make_celery(Settings(broker_url=ops_broker_url))
    declare_topology(app)
    with Connection(ops_broker_url) as conn:
        for q in ("autogpt.think", "autogpt.act", "autogpt.dead"):
            conn.default_channel.queue_purge(q)
    stamp_publish_time()
    reader = QueueReader.from_settings(ops_broker_url)
    try:
        sent_at = time.time()
        for step in range(3):
            app.send_task("autogpt.act", args=["00000000-0000-0000-0000-000000000000", step],
                          queue="autogpt.act", routing_key="autogpt.act", priority=5)
        # hold one message unacknowledged, as a worker running a step does
        with Connection(ops_broker_url) as conn:
            channel = conn.channel()
            channel.basic_qos(0, 1, False)
            message = channel.basic_get("autogpt.act", no_ack=False)
            assert message is not None and "timestamp" in message.properties, message.properties
            # over AMQP the ready count is exact at once (the management API's lags by its stats interval)
            counter = ReadyCounter(ops_broker_url)
            assert counter(["autogpt.act", "autogpt.think", "no.such.queue"]) == {"autogpt.act": 2, "autogpt.think": 0}
            assert counter(["autogpt.act"]) == {"autogpt.act": 2}, "usable again after a missing queue"
            counter.close()
            stats = _wait(reader, lambda s: s.get("act") is not None and s["act"].unacked == 1
                          and s["act"].ready == 2 and s["act"].oldest_age_s is not None)
            act = stats["act"]
            assert (act.ready, act.unacked, act.depth) == (2, 1, 3)
            assert act.oldest_age_s is not None and 0 <= act.oldest_age_s <= time.time() - sent_at + 2
            assert stats["think"].depth == 0 and stats["dead"].depth == 0
            channel.basic_reject(message.delivery_tag, requeue=False)  # dead-lettered
        stats = _wait(reader, lambda s: s["dead"].depth == 1 and s["act"].unacked == 0)
        assert stats["dead"].depth == 1 and stats["act"].depth == 2
    finally:
        with Connection(ops_broker_url) as conn:
            for q in ("autogpt.think", "autogpt.act", "autogpt.dead"):
                conn.default_channel.queue_purge(q)
        reader.close()
        app.close()


def test_unreachable_or_refused_management_api_is_a_clear_error(ops_broker_url: str) -> None:
    from tests.conftest import free_port

    closed = QueueReader(ManagementEndpoint(f"http://127.0.0.1:{free_port()}", "guest", "guest", "/"), 1.0)
    with pytest.raises(ManagementAPIError, match="cannot reach"):
        closed.read()
    wrong = QueueReader(ManagementEndpoint("http://127.0.0.1:15672", "guest", "not-the-password", "/"), 5.0)
    with pytest.raises(ManagementAPIError, match="401"):
        wrong.read()
