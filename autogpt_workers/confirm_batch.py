"""Publishing several wake-ups, then waiting once for the broker's confirms of all of them.

``Publisher.wake`` publishes on a channel in confirm mode and waits for each message's confirm before the next
(py-amqp's ``basic_publish_confirm``): a round trip to RabbitMQ per message, and a thread blocked for it.
``ConfirmBatch`` owns a connection of its own, whose channel's publishes do not wait: each message is written and
given the next delivery tag (a channel in confirm mode numbers its messages from 1), and ``wake_all`` then reads the
broker's acks (one may confirm many: ``multiple``) until every message of the batch is settled. The messages are
built and published by the same code as ``Publisher.wake``'s (the templates, the publish signals, the ``task-sent``
event), so they are the same messages.

Only a confirmed message counts as published. On a nack, a connection error or no confirm within the timeout, the
connection is dropped (a new one is opened for the next batch) and each wake-up not confirmed is published again
through ``Publisher.wake`` (its retries): the broker may then hold one twice, which the ledger settles (a second
claim of a step is refused).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

import structlog
from amqp import spec
from kombu import Producer

from autogpt_workers.broker import RETRY_POLICY, Publisher

log = structlog.get_logger(__name__)


class Wake(NamedTuple):
    """One wake-up to publish, and the context to publish it in (the submitter's: its trace span)."""

    task_id: uuid.UUID | str
    step_index: int
    phase: str
    priority: int
    context: contextvars.Context | None = None


class ConfirmBatch:
    """Publishes batches of wake-ups on a connection of its own (see the module's docstring). One thread at a time."""

    def __init__(self, publisher: Publisher, confirm_timeout_s: float = 10.0) -> None:
        self.publisher = publisher
        self.confirm_timeout_s = confirm_timeout_s
        self._connection: Any = None
        self._channel: Any = None
        self._producer: Producer | None = None
        self._sent = 0  # messages published on the channel: the last delivery tag
        self._pending: dict[int, int | None] = {}  # delivery tag -> index in the batch (None: a task-sent event)
        self._confirmed: list[bool] = []
        self._index: int | None = None  # the wake-up being published
        self.batches = 0
        self.fallbacks = 0  # wake-ups published again one at a time

    def wake_all(self, wakes: Sequence[Wake]) -> list[bool]:
        """Publish ``wakes``; for each, whether the broker confirmed it (here, or when published again)."""
        self._confirmed = [False] * len(wakes)
        if wakes:
            try:
                self._publish_batch(wakes)
            except Exception as exc:  # the connection, a nack's channel, a timeout: start afresh next time
                log.warning("confirm_batch_failed", error=f"{type(exc).__name__}: {exc}", wakes=len(wakes))
                self.close()
        confirmed = self._confirmed
        for i, wake in enumerate(wakes):
            if not confirmed[i]:
                self.fallbacks += 1
                confirmed[i] = _run(wake.context, self._wake_alone, wake)
        return confirmed

    def close(self) -> None:
        """Drop the connection (a batch opens a new one)."""
        connection, self._connection, self._channel, self._producer = self._connection, None, None, None
        self._pending.clear()
        if connection is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to close cleanly
                connection.close()

    def _publish_batch(self, wakes: Sequence[Wake]) -> None:
        producer = self._ready()
        for i, wake in enumerate(wakes):
            template = self.publisher.template(wake.phase)
            if template is None:  # send_task builds it: published one at a time, below
                continue
            message = template.fill([str(wake.task_id), wake.step_index], wake.priority, None)
            self._index = i
            try:
                _run(wake.context, self.publisher.publish_once, producer, template, message)
            finally:
                self._index = None
            time.sleep(0)  # let the GIL go between messages (an event loop thread may be waiting for it)
        self.batches += 1
        deadline = time.monotonic() + self.confirm_timeout_s
        while self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(self._pending)} messages not confirmed in {self.confirm_timeout_s:g}s")
            self._channel.wait([spec.Basic.Ack, spec.Basic.Nack], timeout=remaining)

    def _ready(self) -> Producer:
        if self._producer is not None:
            return self._producer
        app = self.publisher.app
        connection = app.connection_for_write()
        connection.transport_options.update(app.conf.task_publish_retry_policy, **RETRY_POLICY)  # connecting
        try:
            channel = connection.default_channel  # connects
            channel.confirm_select()
            channel._confirm_selected = True  # py-amqp's flag: its own confirm publish would select again
            channel.events["basic_ack"].add(self._acked)
            channel.events["basic_nack"].add(self._nacked)
            channel.basic_publish = self._publish_unconfirmed  # this channel's publishes: numbered, not awaited
        except Exception:
            connection.close()
            raise
        self._connection, self._channel, self._sent = connection, channel, 0
        self._producer = Producer(channel, auto_declare=False)
        return self._producer

    def _publish_unconfirmed(self, message: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("confirm_timeout", None)
        result = self._channel._basic_publish(message, *args, **kwargs)
        self._sent += 1
        self._pending[self._sent] = self._index
        self._index = None  # what else goes out for this wake-up (its task-sent event) confirms no wake-up
        return result

    def _acked(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple, True)

    def _nacked(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple, False)

    def _settle(self, delivery_tag: int, multiple: bool, ok: bool) -> None:
        tags = [t for t in self._pending if t <= delivery_tag] if multiple else [delivery_tag]
        for tag in tags:
            index = self._pending.pop(tag, None)
            if index is not None and ok:
                self._confirmed[index] = True

    def _wake_alone(self, wake: Wake) -> bool:
        try:
            self.publisher.wake(wake.task_id, wake.step_index, wake.phase, wake.priority)
        except Exception as exc:  # the caller's outbox row stays unpublished: the reaper publishes it
            log.warning("publish_deferred", task_id=str(wake.task_id), error=str(exc))
            return False
        return True


def _run(context: contextvars.Context | None, fn: Any, *args: Any) -> Any:
    return context.run(fn, *args) if context is not None else fn(*args)
