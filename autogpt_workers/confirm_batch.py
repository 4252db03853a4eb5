"""Wake-ups published several at a time, with one wait for the broker's confirms: the API's background publisher.

``Publisher.wake`` waits for RabbitMQ's confirm of each message before the next: a round trip, and four socket reads
and a frame's parsing per message, on a pooled producer whose channel is in confirm mode. A ``ConfirmBatch`` keeps a
connection of its own whose channel it puts in confirm mode itself (kombu's ``confirm_publish`` would wait per
message), sends every message of a batch (the same messages ``wake`` sends: ``Publisher._publish``), then reads the
confirms until each of the batch's delivery tags is acknowledged (RabbitMQ acknowledges several at once with
``multiple``). It counts the channel's delivery tags itself, so any error (a nack, a timeout, a lost connection)
drops the connection and raises: none of the batch counts as confirmed, and the caller publishes them again one by
one (a duplicate wake-up is harmless: the step's lease takes one).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Sequence
from typing import Any

from amqp import spec
from amqp.exceptions import MessageNacked
from kombu import Connection, Producer

from autogpt_workers.broker import Publisher
from autogpt_workers.store.ledger import Wakeup


class NotBatchable(Exception):
    """This wake-up's message cannot be counted on the batch's channel (no template, or task events on: ``wake``
    then publishes a second message)."""


class ConfirmBatch:
    def __init__(self, publisher: Publisher, confirm_timeout_s: float = 10.0) -> None:
        self.publisher = publisher
        self.confirm_timeout_s = confirm_timeout_s
        self._connection: Connection | None = None
        self._channel: Any = None
        self._producer: Producer | None = None
        self._sent = 0  # messages published on the channel since its confirm.select: the last delivery tag

    def publish(self, wakeups: Sequence[Wakeup], contexts: Sequence[contextvars.Context] | None = None) -> None:
        """Publish every wake-up (each in its context: the submitter's trace span), then return once the broker
        confirmed all of them. Raises if it did not; the connection is dropped then, the next call opens another."""
        try:
            producer = self._open()
            first = self._sent + 1
            for i, wakeup in enumerate(wakeups):
                if contexts is None:
                    self._send(producer, wakeup)
                else:
                    contexts[i].run(self._send, producer, wakeup)
            self._confirmed(first, self._sent)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        connection, self._connection, self._channel, self._producer = self._connection, None, None, None
        if connection is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to close cleanly
                connection.close()

    def _open(self) -> Producer:
        if self._producer is None:
            # not the pool's: kombu's confirm_publish would make every publish wait for its own confirm
            connection = self.publisher.app.connection_for_write(transport_options={"confirm_publish": False})
            connection.ensure_connection(max_retries=1)
            channel = connection.channel()
            channel.confirm_select()
            self._connection, self._channel, self._sent = connection, channel, 0
            self._producer = Producer(channel)
        return self._producer

    def _send(self, producer: Producer, wakeup: Wakeup) -> None:
        template = self.publisher.template(wakeup.phase)
        if template is None or template.sent_event is not None:
            raise NotBatchable(wakeup.phase)
        message = template.fill([str(wakeup.task_id), wakeup.step_index], wakeup.priority, None)
        self.publisher._publish(producer, template, message, retry=False)
        self._sent += 1

    def _confirmed(self, first: int, last: int) -> None:
        """Read the broker's acks until every delivery tag from ``first`` to ``last`` is acknowledged."""
        waiting = set(range(first, last + 1))

        def on_confirm(method: Any, delivery_tag: int, multiple: bool, *_: Any) -> None:
            if method == spec.Basic.Nack:
                raise MessageNacked(f"the broker refused delivery tag {delivery_tag}")
            if multiple:
                waiting.difference_update([tag for tag in waiting if tag <= delivery_tag])
            else:
                waiting.discard(delivery_tag)

        while waiting:
            self._channel.wait([spec.Basic.Ack, spec.Basic.Nack], callback=on_confirm, timeout=self.confirm_timeout_s)
