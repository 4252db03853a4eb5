"""Publishing wake-ups: by task *name*, with publisher confirms, to the priority queue of the phase.

``wake`` publishes exactly what ``app.send_task`` would (the message is prepared once per phase by
``task_message.MessageTemplate``), the way Celery's ``send_task_message`` does it: ``before_task_publish`` (trace
context, the ``timestamp`` property), the publish on a producer of ``app.producer_pool`` (its channel in confirm
mode: the broker's confirm arrives before ``wake`` returns), ``after_task_publish``, then the ``task-sent`` event
when ``task_send_sent_event`` is on. What it saves is Celery's per-call work: execution options, routing, reprs,
and a producer acquired from and released to the pool on each call (the producers stay with the publisher, at
most ``keep_idle`` of them idle).

Connection errors: the first attempt is a plain publish; on a recoverable error it is published again through
kombu's ``ensure`` with the retry policy (reconnect, revive the producer, retry), as ``send_task(retry=True)``
does, and the producer whose connection failed is handed back to the pool to be replaced.
"""

from __future__ import annotations

import collections
import contextlib
import os
import uuid
import weakref
from typing import Any

from celery import Celery, signals
from kombu import Exchange, Producer
from kombu.exceptions import LimitExceeded, OperationalError
from kombu.serialization import dumps

from autogpt_workers.contracts import PHASE_QUEUES, PHASE_TASKS
from autogpt_workers.task_message import Message, MessageTemplate

RETRY_POLICY = {"max_retries": 3, "interval_start": 0.1, "interval_step": 0.3, "interval_max": 1.0}
_NOT_BUILT = object()


class Publisher:
    def __init__(self, app: Celery, keep_idle: int = 16) -> None:
        self.app = app
        # kept producers stay checked out of the app's pool: never more than a quarter of it per publisher, so
        # several publishers on one app (tests, a process with an API and a dispatcher) cannot exhaust it
        limit = app.conf.broker_pool_limit
        self.keep_idle = min(keep_idle, max(1, limit // 4)) if limit else keep_idle
        self._templates: dict[tuple[str, Any], MessageTemplate | None] = {}
        self._idle: collections.deque[Producer] = collections.deque()
        self._pid = os.getpid()
        # a publisher dropped without close() gives its kept producers back to the pool
        weakref.finalize(self, _release_all, self._idle, self._pid)

    def close(self) -> None:
        """Give the kept producers back to the app's pool (the publisher still works: it acquires anew)."""
        _release_all(self._idle, os.getpid())

    def wake(
        self, task_id: uuid.UUID | str, step_index: int, phase: str, priority: int, countdown: float | None = None
    ) -> None:
        """Publish "run ``phase`` of step ``step_index`` of ``task_id``"; returns once the broker confirmed it."""
        template = self.template(phase)
        if template is None:
            self.app.send_task(
                PHASE_TASKS[phase], args=[str(task_id), step_index], queue=PHASE_QUEUES[phase],
                routing_key=PHASE_QUEUES[phase], priority=priority, countdown=countdown, retry=True,
                retry_policy=RETRY_POLICY,
            )
            return
        message = template.fill([str(task_id), step_index], priority, countdown)
        producer = self._acquire()
        try:
            self._publish(producer, template, message)
        except BaseException as exc:
            producer.__exit__(type(exc), exc, exc.__traceback__)  # as send_task: the pool replaces its connection
            raise
        self._release(producer)

    def template(self, phase: str) -> MessageTemplate | None:
        """The phase's message template, None if ``send_task`` must build the message. A task registered in this
        process (a worker) lends its options to the message, so the key includes it."""
        name = PHASE_TASKS[phase]
        key = (name, self.app._tasks.get(name))
        template = self._templates.get(key, _NOT_BUILT)
        if template is _NOT_BUILT:
            template = MessageTemplate.build(self.app, name, PHASE_QUEUES[phase], PHASE_QUEUES[phase], RETRY_POLICY)
            self._templates[key] = template
        return template  # type: ignore[return-value]

    def publish_once(self, producer: Producer, t: MessageTemplate, m: Message) -> None:
        """Publish ``m`` as ``wake`` does, on ``producer``, without its retries: a failure is raised at once (for a
        caller with a connection of its own, ``confirm_batch``, which publishes again through ``wake``)."""
        self._publish(producer, t, m, retry=False)

    def _publish(self, producer: Producer, t: MessageTemplate, m: Message, retry: bool = True) -> None:
        declare = list(t.declare)
        signals.before_task_publish.send(
            sender=t.name, body=m.body, exchange=t.exchange, routing_key=t.routing_key, declare=declare,
            headers=m.headers, properties=m.properties, retry_policy=dict(t.retry_policy),
        )
        content_type, content_encoding, payload = dumps(m.body, serializer=t.serializer)
        publish(
            producer, payload, retry=retry, retry_policy=dict(t.retry_policy), exchange=t.exchange,
            routing_key=t.routing_key, delivery_mode=t.delivery_mode, declare=declare, headers=m.headers,
            content_type=content_type, content_encoding=content_encoding, **m.properties,
        )
        signals.after_task_publish.send(
            sender=t.name, body=m.body, headers=m.headers, exchange=t.exchange, routing_key=t.routing_key,
        )
        if signals.task_sent.receivers:  # Celery's deprecated signal, still sent by send_task
            signals.task_sent.send(
                sender=t.name, task_id=m.task_id, task=t.name, args=m.body[0], kwargs=m.body[1],
                eta=m.headers["eta"], taskset=m.headers["group"],
            )
        if m.sent_event is not None:
            m.sent_event.update(
                queue=t.queue_name, exchange=t.exchange.name if isinstance(t.exchange, Exchange) else t.exchange,
                routing_key=t.routing_key,
            )
            self.app.amqp._event_dispatcher.publish(
                "task-sent", m.sent_event, _EventProducer(producer), retry=retry, retry_policy=dict(t.retry_policy)
            )

    def _acquire(self) -> Producer:
        if self._pid != os.getpid():  # a forked child: the parent's connections are not its own
            self._idle.clear()  # dropped, not released: they belong to the parent's pool
            self._pid = os.getpid()
        try:
            return self._idle.pop()
        except IndexError:
            pass
        timeout = self.app.conf.broker_pool_acquire_timeout
        try:
            producer = self.app.producer_pool.acquire(block=True, timeout=timeout)
        except LimitExceeded as exc:
            raise OperationalError(
                f"Timed out waiting for a broker producer after {timeout}s: all {self.app.conf.broker_pool_limit} "
                "producer slots are in use (broker_pool_limit)"
            ) from exc
        # as Producer.publish(retry=True) does: a reconnect of this connection follows the same policy
        producer.connection.transport_options.update(self.app.conf.task_publish_retry_policy, **RETRY_POLICY)
        return producer

    def _release(self, producer: Producer) -> None:
        if len(self._idle) < self.keep_idle and self._pid == os.getpid():
            self._idle.append(producer)
        else:
            producer.release()


def _release_all(idle: collections.deque[Producer], pid: int) -> None:
    """Release ``idle``'s producers to their pool; in another process than ``pid`` (a forked child) only forget
    them: the connections are the parent's."""
    if os.getpid() != pid:
        idle.clear()
        return
    while idle:
        producer = idle.pop()
        with contextlib.suppress(Exception):  # a dead connection: the pool replaces it
            producer.release()


def publish(producer: Producer, body: Any, retry: bool = False, retry_policy: dict[str, Any] | None = None,
            declare: list[Any] | None = None, **options: Any) -> None:
    """``producer.publish(body, retry=..., retry_policy=..., declare=..., **options)`` with the same effect, cheaper
    when nothing fails: the entities this connection has declared already (kombu's ``declared_entities``, cleared
    when it reconnects) are left out, and the first attempt is a plain publish. Only when it fails with a
    recoverable error is it published again through kombu's ``ensure`` (reconnect, revive, retry per the policy).
    """
    conn = producer.connection
    declare = declare or []
    declared = conn.declared_entities
    pending = [e for e in declare if not (e.can_cache_declaration and hash(e) in declared)]
    if not retry:
        producer.publish(body, declare=pending, **options)
        return
    try:
        producer.publish(body, declare=pending, **options)
    except conn.recoverable_connection_errors + conn.recoverable_channel_errors:
        with conn._reraise_as_library_errors():
            producer.publish(body, retry=True, retry_policy=retry_policy, declare=declare, **options)


class _EventProducer:
    """What Celery's event dispatcher publishes through (it calls only ``publish``)."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer

    def publish(self, body: Any, **options: Any) -> None:
        publish(self.producer, body, **options)
