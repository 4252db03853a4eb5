"""Wake-ups published in batches with one wait for their confirms (``confirm_batch``), on the real broker: the
messages are the ones ``Publisher.wake`` sends, each in its submitter's context, and a failed batch is published
again one by one by the background publisher. A RabbitMQ vhost of the test's own."""

from __future__ import annotations

import contextvars
import json
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog.testing
from celery import signals

from autogpt_workers.broker import Publisher
from autogpt_workers.confirm_batch import ConfirmBatch
from autogpt_workers.contracts import THINK_QUEUE
from autogpt_workers.store.ledger import Wakeup
from autogpt_workers.submit import BackgroundPublisher
from tests.integration.conftest import MGMT, management_auth, private_vhost, vhost_of
from tests.integration.test_publisher import celery_on

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


@pytest.fixture
def wire(settings: Any) -> Iterator[str]:
    with private_vhost(settings.broker_url, "batch") as url:
        yield url


def _wakeups(n: int) -> list[Wakeup]:
    return [Wakeup(i + 1, uuid.uuid4(), 0, "think", 1 + i % 9) for i in range(n)]


def _drain(app: Any) -> list[Any]:
    with app.connection_for_write() as conn:
        messages = []
        while (message := conn.default_channel.basic_get(THINK_QUEUE, no_ack=True)) is not None:
            messages.append(message)
        return messages


def test_a_batch_is_on_the_wire_what_wake_publishes_in_each_submitters_context(settings: Any, wire: str) -> None:
    app = celery_on(settings, wire, registered=False)
    app.conf.task_send_sent_event = False
    publisher = Publisher(app)
    seen: list[str] = []

    def before(headers: Any = None, **_: Any) -> None:
        headers["who"] = WHO.get()  # as the trace context does: what the submitter's context says goes on the wire
        seen.append(WHO.get())

    signals.before_task_publish.connect(before, weak=False, dispatch_uid="test-confirm-batch")
    try:
        wakeups = _wakeups(40)
        contexts = []
        for i in range(len(wakeups)):
            WHO.set(f"submit-{i}")
            contexts.append(contextvars.copy_context())
        batch = ConfirmBatch(publisher)
        batch.publish(wakeups[:30], contexts[:30])
        batch.publish(wakeups[30:], contexts[30:])  # the same channel: its delivery tags go on counting
        batch.close()
        publisher.wake(wakeups[0].task_id, 0, "think", wakeups[0].priority)  # the one-by-one path, to compare
    finally:
        signals.before_task_publish.disconnect(dispatch_uid="test-confirm-batch")
    messages = _drain(app)
    assert len(messages) == 41 and seen[:40] == [f"submit-{i}" for i in range(40)]
    by_task = {json.loads(m.body)[0][0]: m for m in messages[:40]}
    assert set(by_task) == {str(w.task_id) for w in wakeups}
    for wakeup, who in zip(wakeups, seen, strict=False):
        message = by_task[str(wakeup.task_id)]
        assert message.headers["who"] == who and message.properties["priority"] == wakeup.priority
    assert _shape(by_task[str(wakeups[0].task_id)]) == _shape(messages[40])


def _shape(message: Any) -> dict[str, Any]:
    """A task message without what differs per call (its id, the moment, the submitter)."""
    per_call = {"id", "root_id", "who"}
    return {
        "headers": {k: v for k, v in message.headers.items() if k not in per_call},
        "properties": {
            k: v for k, v in message.properties.items()
            if k not in ("correlation_id", "timestamp", "application_headers")
        },
        "body": json.loads(message.body)[1:],
        "delivery": {k: message.delivery_info[k] for k in ("exchange", "routing_key")},
    }  # fmt: skip


class Marks:
    def __init__(self) -> None:
        self.ids: list[int] = []

    def add(self, ids: list[int]) -> None:
        self.ids.extend(ids)


@pytest.fixture
def marks(monkeypatch: pytest.MonkeyPatch) -> Marks:
    """The published marks the background publisher makes (instead of its batched writes to the database)."""
    import autogpt_workers.submit as submit

    recorded = Marks()
    monkeypatch.setattr(submit, "_marks", lambda _db: recorded)
    return recorded


def test_the_background_publisher_batches_and_marks_what_was_confirmed(
    settings: Any, wire: str, marks: Marks
) -> None:
    app = celery_on(settings, wire, registered=False)
    app.conf.task_send_sent_event = False
    background = BackgroundPublisher(object(), Publisher(app), threads=2, batch=16)  # type: ignore[arg-type]
    confirms = ConfirmBatch(background.publisher)
    together = _wakeups(20)
    background._publish_all(confirms, [(w, contextvars.copy_context()) for w in together])  # one batch
    confirms.close()
    offered = _wakeups(50)
    for wakeup in offered:  # through its threads: batches of whatever waits
        assert background.offer(wakeup, contextvars.copy_context())
    background.close()
    assert sorted(marks.ids) == sorted(w.outbox_id for w in together + offered)
    got = sorted(json.loads(m.body)[0][0] for m in _drain(app))
    assert got == sorted(str(w.task_id) for w in together + offered)


def test_a_batch_whose_connection_is_dropped_is_published_again_one_by_one(
    settings: Any, wire: str, marks: Marks
) -> None:
    """The broker closes every connection between two batches: the second batch fails, and its wake-ups are
    published one by one (``wake``, which reconnects); none is lost, each is marked once."""
    app = celery_on(settings, wire, registered=False)
    app.conf.task_send_sent_event = False
    background = BackgroundPublisher(object(), Publisher(app), batch=16)  # type: ignore[arg-type]
    confirms = ConfirmBatch(background.publisher)
    first, second = _wakeups(5), _wakeups(5)
    background._publish_all(confirms, [(w, contextvars.copy_context()) for w in first])
    auth = management_auth(wire)
    vhost = urllib.parse.quote(vhost_of(wire), safe="")
    deadline = time.monotonic() + 20
    while not (conns := httpx.get(f"{MGMT}/api/vhosts/{vhost}/connections", auth=auth, timeout=10).json()):
        assert time.monotonic() < deadline, "the management API never listed the connections"
        time.sleep(0.5)
    for conn in conns:
        httpx.delete(f"{MGMT}/api/connections/{urllib.parse.quote(conn['name'], safe='')}", auth=auth, timeout=10)
    time.sleep(0.5)
    with structlog.testing.capture_logs() as logs:
        background._publish_all(confirms, [(w, contextvars.copy_context()) for w in second])
    confirms.close()
    assert [e["wakeups"] for e in logs if e["event"] == "submit_batch_publish_failed"] == [5]
    assert sorted(marks.ids) == sorted(w.outbox_id for w in first + second)
    got = sorted(json.loads(m.body)[0][0] for m in _drain(app))
    assert got == sorted(str(w.task_id) for w in first + second)
