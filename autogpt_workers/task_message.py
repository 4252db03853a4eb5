"""A wake-up's Celery task message (protocol v2), prepared once per task name and filled per call.

``Celery.send_task`` rebuilds everything on each call: the task's execution options, the route, the headers and
both reprs, the exchange and delivery mode, the merged retry policy. A wake-up always has the same shape (task
name, queue and options fixed per phase; args ``[task_id, step_index]``), so ``MessageTemplate.build`` runs
Celery's own builders once (``router.route``, ``amqp.create_task_message``) and resolves the destination the way
Celery's ``send_task_message`` does. ``fill`` then sets only what changes per call: the message id (also the
``correlation_id``), ``root_id``/``parent_id`` (from the worker task being run, as ``send_task`` does), the args
and their repr, the priority, the ETA of a countdown, the per-thread ``reply_to`` and the per-process ``origin``.

``build`` returns None where a wake-up would need what the template does not do (task protocol 1, a routing
function, compression, an expiry, quorum queues): the caller then uses ``send_task``.
``tests/unit/test_task_message.py`` compares the messages with ``send_task``'s on the broker.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from celery import Celery
from celery.app.routes import MapRoute
from celery.utils.nodenames import anon_nodename
from celery.utils.quorum_queues import detect_quorum_queues
from celery.utils.time import add_seconds_to_datetime, maybe_make_aware
from kombu.common import Broadcast
from kombu.utils.uuid import uuid

# The keyword parameters of Celery's ``send_task_message``; every other routed option becomes a message property.
_SENDER_PARAMS = frozenset({
    "exchange", "routing_key", "queue", "event_dispatcher", "retry", "retry_policy", "serializer",
    "delivery_mode", "compression", "declare", "headers", "exchange_type", "timeout", "confirm_timeout",
})
_PLACEHOLDER = "0" * 36


@dataclasses.dataclass
class Message:
    """One task message, as ``send_task_message`` hands it to the producer and to the publish signals."""

    task_id: str
    body: tuple[list[Any], dict[str, Any], dict[str, Any]]
    headers: dict[str, Any]
    properties: dict[str, Any]
    sent_event: dict[str, Any] | None


@dataclasses.dataclass
class MessageTemplate:
    app: Celery
    name: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    embed: dict[str, Any]
    sent_event: dict[str, Any] | None
    queue_name: str
    exchange: Any
    routing_key: str
    declare: list[Any]
    delivery_mode: Any
    serializer: str
    retry_policy: dict[str, Any]
    _origin: tuple[int, str] = (0, "")
    _mutable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self._mutable = tuple(k for k, v in self.headers.items() if isinstance(v, list | dict))

    @classmethod
    def build(cls, app: Celery, name: str, queue: str, routing_key: str,
              retry_policy: Mapping[str, Any]) -> MessageTemplate | None:
        """The template of ``app.send_task(name, queue=queue, routing_key=routing_key, priority=..., retry=True,
        retry_policy=retry_policy)``, or None if it cannot be prepared once (the caller uses ``send_task``)."""
        conf, amqp = app.conf, app.amqp
        if conf.task_protocol != 2 or conf.task_compression or not all(isinstance(r, MapRoute) for r in amqp.routes):
            return None
        task_type = app._tasks.get(name)  # as send_task: a task registered here lends its execution options
        options: dict[str, Any] = {"queue": queue, "routing_key": routing_key, "priority": 0}
        if task_type is not None:
            exec_options = {k: v for k, v in task_type._get_exec_options().items() if v is not None}
            options = dict(exec_options, **options)
        time_limit = options.pop("time_limit", None)
        soft_time_limit = options.pop("soft_time_limit", None)
        expires = options.pop("expires", None)
        ignore_result = options.pop("ignore_result", None)
        if expires is not None:
            return None
        options = amqp.router.route(options, name, (), {}, task_type)
        driver_type = app.producer_pool.connections.connection.transport.driver_type
        if detect_quorum_queues(app, driver_type)[0]:
            return None
        headers, properties, body, sent_event = amqp.create_task_message(
            _PLACEHOLDER, name, [], {}, None, None, None, None, None, 0, None, None, None, _PLACEHOLDER,
            time_limit, soft_time_limit, conf.task_send_sent_event, None, None, None, None,
            ignore_result=ignore_result, replaced_task_nesting=0, **options,
        )
        if headers.get("stamped_headers") or options.pop("stamped_headers", None):
            return None
        sender = {k: options.pop(k) for k in list(options) if k in _SENDER_PARAMS}
        properties.update(options)  # e.g. priority: send_task_message's **kwargs
        # -- the destination, as send_task_message resolves it
        target, exchange, key = sender.get("queue"), sender.get("exchange"), sender.get("routing_key")
        qname = target
        if target is None and exchange is None:
            target = amqp.default_queue
        if target is None:  # an exchange without a queue: not a wake-up's route
            return None
        if isinstance(target, str):
            qname, target = target, amqp.queues[target]
        else:
            qname = target.name
        delivery_mode = sender.get("delivery_mode")
        if delivery_mode is None:
            delivery_mode = getattr(getattr(target, "exchange", None), "delivery_mode", None)
            delivery_mode = delivery_mode or conf.task_default_delivery_mode
        exchange_type = sender.get("exchange_type")
        if exchange_type is None:
            exchange_type = getattr(getattr(target, "exchange", None), "type", "direct")
        if (not exchange or not key) and exchange_type == "direct":
            exchange, key = "", qname
        elif exchange is None:
            exchange = target.exchange.name or amqp.default_exchange
            key = key or target.routing_key or conf.task_default_routing_key
        declare = sender.get("declare")
        if declare is None:
            declare = [target] if not isinstance(target, Broadcast) else []
        return cls(
            app=app, name=name, headers=headers, properties=properties, embed=body[2], sent_event=sent_event,
            queue_name=str(qname), exchange=exchange, routing_key=str(key), declare=list(declare),
            delivery_mode=delivery_mode, serializer=sender.get("serializer") or conf.task_serializer,
            retry_policy=dict(conf.task_publish_retry_policy, **retry_policy),
        )

    def origin(self) -> str:
        """``anon_nodename()``: its pid changes in a forked child."""
        pid = os.getpid()
        if self._origin[0] != pid:
            self._origin = (pid, anon_nodename())
        return self._origin[1]

    def fill(self, args: list[Any], priority: int, countdown: float | None) -> Message:
        """The message of one call; ``args`` are ``[str, int]``, whose ``repr`` is Celery's ``saferepr``."""
        app = self.app
        task_id = uuid()
        root_id, parent_id = task_id, None
        parent = app.current_worker_task
        if parent:
            root_id = parent.request.root_id or parent.request.id
            parent_id = parent.request.id
        eta = None
        if countdown:
            app.amqp._verify_seconds(countdown, "countdown")
            eta = maybe_make_aware(add_seconds_to_datetime(app.now(), countdown), tz=app.timezone).isoformat()
        argsrepr = repr(args)
        headers = dict(self.headers)
        for key in self._mutable:  # e.g. timelimit, stamps: a publish signal may change them
            headers[key] = headers[key].copy()
        headers["id"] = task_id
        headers["root_id"] = root_id
        headers["parent_id"] = parent_id
        headers["eta"] = eta
        headers["argsrepr"] = argsrepr
        headers["origin"] = self.origin()
        properties = dict(self.properties)
        properties["correlation_id"] = task_id
        properties["reply_to"] = app.thread_oid
        properties["priority"] = priority
        sent_event = None
        if self.sent_event is not None:
            sent_event = dict(self.sent_event, uuid=task_id, root_id=root_id, parent_id=parent_id, args=argsrepr,
                              eta=eta)
        return Message(task_id, (args, {}, dict(self.embed)), headers, properties, sent_event)
