"""Batches of wake-ups published with one wait for the broker's confirms (``confirm_batch``), on the real broker:
the same messages as ``Publisher.wake``'s, each in its submitter's context; a connection the broker dropped costs
a publish one at a time, not a wake-up; the API's background publisher in batches marks what was confirmed."""

from __future__ import annotations

import contextvars
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import signals
from kombu import Connection

from autogpt_workers.broker import Publisher
from autogpt_workers.confirm_batch import ConfirmBatch, Wake
from autogpt_workers.contracts import THINK_QUEUE
from tests.integration.conftest import drop_connections, private_vhost
from tests.integration.test_publisher import celery_on

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


@pytest.fixture
def wire(settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with private_vhost(settings.broker_url, "batch") as url:
        yield url


@pytest.fixture
def who_header() -> Iterator[None]:
    """A publish signal that writes the publishing context's ``WHO`` into the headers (as the trace context does)."""

    def stamp(headers: Any = None, **kw: Any) -> None:
        headers["who"] = WHO.get()

    signals.before_task_publish.connect(stamp, weak=False, dispatch_uid="test-confirm-batch-who")
    yield
    signals.before_task_publish.disconnect(dispatch_uid="test-confirm-batch-who")


def in_context(name: str) -> contextvars.Context:
    context = contextvars.copy_context()
    context.run(WHO.set, name)
    return context


def drain(conn: Connection, queue: str) -> list[Any]:
    messages = []
    while (message := conn.default_channel.basic_get(queue, no_ack=True)) is not None:
        messages.append(message)
    return messages


def test_a_batch_is_confirmed_and_its_messages_are_the_publishers(settings, wire: str, who_header: None) -> None:  # type: ignore[no-untyped-def]
    app = celery_on(settings, wire, registered=False)
    publisher = Publisher(app)
    batch = ConfirmBatch(publisher)
    wakes = [Wake(uuid.uuid4(), i, "think", 5, in_context(f"submit-{i}")) for i in range(20)]
    assert batch.wake_all(wakes) == [True] * 20
    assert (batch.batches, batch.fallbacks) == (1, 0)
    alone = uuid.uuid4()
    in_context("alone").run(publisher.wake, alone, 0, "think", 5)
    batch.close()
    with app.connection_for_write() as conn:
        messages = drain(conn, THINK_QUEUE)
    assert [json.loads(m.body)[0] for m in messages] == [[str(w.task_id), w.step_index] for w in wakes] + [
        [str(alone), 0]
    ]
    assert [m.headers["who"] for m in messages] == [f"submit-{i}" for i in range(20)] + ["alone"]

    def shape(message: Any) -> dict[str, Any]:  # what differs per call left out
        headers = {k: v for k, v in message.headers.items() if k not in ("id", "root_id", "argsrepr", "who")}
        props = {k: v for k, v in message.properties.items()
                 if k not in ("correlation_id", "timestamp", "application_headers")}
        return {"headers": headers, "properties": props, "delivery": message.delivery_info["routing_key"]}

    assert all(shape(m) == shape(messages[-1]) for m in messages[:-1])


def test_a_dropped_connection_costs_a_publish_one_at_a_time_not_a_wake_up(settings, wire: str) -> None:  # type: ignore[no-untyped-def]
    app = celery_on(settings, wire, registered=False)
    batch = ConfirmBatch(Publisher(app))
    first = [Wake(uuid.uuid4(), 0, "think", 5) for _ in range(3)]
    assert batch.wake_all(first) == [True] * 3
    drop_connections(wire)  # the batch's own connection and the publisher's pool's
    second = [Wake(uuid.uuid4(), 1, "think", 5) for _ in range(4)]
    assert batch.wake_all(second) == [True] * 4
    assert batch.fallbacks == 4  # its connection was dead: each published again through Publisher.wake
    third = [Wake(uuid.uuid4(), 2, "think", 5) for _ in range(2)]
    assert batch.wake_all(third) == [True] * 2
    assert batch.fallbacks == 4  # a new connection of its own
    batch.close()
    with app.connection_for_write() as conn:
        published = {tuple(json.loads(m.body)[0]) for m in drain(conn, THINK_QUEUE)}
    assert published == {(str(w.task_id), w.step_index) for w in [*first, *second, *third]}


def test_the_background_publisher_in_batches_publishes_and_marks_every_wake_up(  # type: ignore[no-untyped-def]
    migrated, settings, wire: str, who_header: None
) -> None:
    from autogpt_workers.store.db import Database
    from autogpt_workers.store.ledger import Wakeup
    from autogpt_workers.submit import BackgroundPublisher, _marks, flush_marks

    app = celery_on(settings, wire, registered=False)
    db = Database.from_url(settings.database_url, pool_size=2)
    marked: list[int] = []
    marks = _marks(db)
    marks._mark = marked.extend  # type: ignore[method-assign]  # the outbox ids it would mark, kept
    background = BackgroundPublisher(db, Publisher(app), threads=2, batch=8)
    wakeups = [Wakeup(i, uuid.uuid4(), 0, "think", 5) for i in range(1, 41)]
    for i, wakeup in enumerate(wakeups):
        assert background.offer(wakeup, in_context(f"submit-{i}"))
    background.close()
    flush_marks(db)
    db.dispose()
    assert sorted(marked) == [w.outbox_id for w in wakeups]
    with app.connection_for_write() as conn:
        messages = drain(conn, THINK_QUEUE)
    who = {json.loads(m.body)[0][0]: m.headers["who"] for m in messages}
    assert who == {str(w.task_id): f"submit-{i}" for i, w in enumerate(wakeups)}
