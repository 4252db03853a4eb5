"""The publisher's wake-ups on the real broker: the message is the one ``send_task`` publishes (headers, properties,
body, routing, the ``task-sent`` event and the publish signals), and a worker of the project runs them by priority
and at their ETA. Each test has a RabbitMQ vhost of its own, so no worker of the session takes its messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from celery import Celery, signals
from celery.events import get_exchange
from kombu import Connection, Queue

from autogpt_workers.broker import RETRY_POLICY, Publisher
from autogpt_workers.celery_app import declare_topology, make_celery
from autogpt_workers.config import Settings
from autogpt_workers.contracts import PHASE_QUEUES, PHASE_TASKS, THINK_QUEUE, THINK_TASK
from tests.conftest import ARTIFACTS, REPO_ROOT
from tests.integration.conftest import private_vhost

EVENTS = "test.task-events"


@pytest.fixture
def wire(settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with private_vhost(settings.broker_url, "wire") as url:
        yield url


def _phase(task_id: str, step_index: int) -> None:
    """Stands in for a phase's task: only its registration (name, options) matters here."""


def celery_on(settings: Settings, url: str, *, registered: bool) -> Celery:
    """The project's Celery app on ``url``: as in the API (no task registered) or in a worker (the tasks registered,
    so their options, e.g. the time limit, go into the message as ``send_task`` puts them)."""
    app = make_celery(Settings(database_url=settings.database_url, broker_url=url))
    if registered:
        for name in PHASE_TASKS.values():
            app.task(name=name, shared=False)(_phase)
        app.finalize(auto=True)
    declare_topology(app)
    with app.connection_for_write() as conn:  # the task-sent events, kept to be read back
        Queue(EVENTS, get_exchange(conn, name=app.conf.event_exchange), routing_key="task.#",
              durable=False).bind(conn.default_channel).declare()
    return app


def take(conn: Connection, queue: str) -> Any:
    message = conn.default_channel.basic_get(queue, no_ack=True)
    assert message is not None, f"nothing on {queue}"
    return message


def normalised(message: Any, event: Any) -> dict[str, Any]:
    """What a consumer sees of a task message and its task-sent event, with what differs per call (the id, the
    moment) replaced by placeholders, after checking it is well-formed."""
    headers, props = dict(message.headers), dict(message.properties)
    assert props.pop("application_headers") == headers
    task_id = headers.pop("id")
    assert props.pop("correlation_id") == task_id and headers.pop("root_id") == task_id
    assert abs(props.pop("timestamp") - time.time()) < 5  # the project's before_task_publish stamp
    eta = headers.pop("eta")
    body = json.loads(message.body)
    ev = json.loads(event.body)
    assert ev.pop("uuid") == task_id and ev.pop("root_id") == task_id and ev.pop("eta") == eta
    for key in ("timestamp", "clock", "pid", "hostname", "utcoffset"):
        ev.pop(key)
    return {
        "headers": headers, "properties": props, "body": body, "eta": eta and datetime.fromisoformat(eta),
        "delivery": {k: message.delivery_info[k] for k in ("exchange", "routing_key")},
        "event": ev, "event_headers": dict(event.headers), "event_delivery": event.delivery_info["routing_key"],
    }


class Signals:
    """Receivers of the publish signals: they see the same arguments from both paths, and what
    ``before_task_publish`` adds to the headers (as the trace context does) reaches the wire."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def before(self, sender: Any = None, body: Any = None, headers: Any = None, properties: Any = None,
               declare: Any = None, **kw: Any) -> None:
        headers["traceparent"] = f"00-{'1' * 32}-{'2' * 16}-01"
        props = {k: v for k, v in properties.items() if k not in ("correlation_id", "timestamp")}
        self.seen.append(("before", {"sender": sender, "args": body[0], "header_keys": list(headers),
                                     "properties": props, "declare": [e.name for e in declare], **kw}))

    def after(self, sender: Any = None, body: Any = None, headers: Any = None, **kw: Any) -> None:
        self.seen.append(("after", {"sender": sender, "args": body[0], "traceparent": headers["traceparent"], **kw}))

    def __enter__(self) -> Signals:
        signals.before_task_publish.connect(self.before, weak=False, dispatch_uid="test-publisher-before")
        signals.after_task_publish.connect(self.after, weak=False, dispatch_uid="test-publisher-after")
        return self

    def __exit__(self, *exc: object) -> None:
        signals.before_task_publish.disconnect(dispatch_uid="test-publisher-before")
        signals.after_task_publish.disconnect(dispatch_uid="test-publisher-after")


@pytest.mark.parametrize("registered", [False, True], ids=["api", "worker"])
@pytest.mark.parametrize(("phase", "priority", "countdown"), [("think", 7, None), ("act", 2, 30.0)])
def test_a_wake_up_is_on_the_wire_what_send_task_publishes(  # type: ignore[no-untyped-def]
    settings, wire: str, registered: bool, phase: str, priority: int, countdown: float | None,
) -> None:
    from autogpt_workers.queues import stamp_publish_time

    stamp_publish_time()
    app = celery_on(settings, wire, registered=registered)
    publisher = Publisher(app)
    assert publisher.template(phase) is not None  # the prepared path, not send_task
    task_id, step = str(uuid.uuid4()), 3
    with Signals() as seen:
        app.send_task(PHASE_TASKS[phase], args=[task_id, step], queue=PHASE_QUEUES[phase],
                      routing_key=PHASE_QUEUES[phase], priority=priority, countdown=countdown, retry=True,
                      retry_policy=RETRY_POLICY)
        publisher.wake(uuid.UUID(task_id), step, phase, priority, countdown=countdown)
    with app.connection_for_write() as conn:
        theirs_ = (take(conn, PHASE_QUEUES[phase]), take(conn, EVENTS))  # published first, same priority
        ours_ = (take(conn, PHASE_QUEUES[phase]), take(conn, EVENTS))
    theirs, ours = normalised(*theirs_), normalised(*ours_)
    if countdown:  # both an ETA `countdown` seconds after their publish
        assert abs((ours.pop("eta") - theirs.pop("eta")).total_seconds()) < 2
    assert ours == theirs
    assert ours["properties"]["priority"] == priority and ours["properties"]["delivery_mode"] == 2
    assert ours["body"][0] == [task_id, step] and ours["headers"]["traceparent"].startswith("00-1111")
    assert ours["headers"]["timelimit"][0] == (app.conf.task_annotations[PHASE_TASKS[phase]]["time_limit"]
                                               if registered else None)
    assert seen.seen[:2] == seen.seen[2:] and [s[0] for s in seen.seen] == ["before", "after"] * 2


def test_inside_a_running_task_the_wake_up_is_its_child(settings, wire: str) -> None:  # type: ignore[no-untyped-def]
    """In a worker, ``send_task`` makes the message a child of the task being run (``parent_id``, ``root_id``)."""
    app = celery_on(settings, wire, registered=True)
    publisher, task = Publisher(app), app.tasks[THINK_TASK]
    task.push_request(id="the-running-one", root_id="the-root", called_directly=False)
    from celery._state import _task_stack

    _task_stack.push(task)
    try:
        app.send_task(THINK_TASK, args=["t", 1], queue=THINK_QUEUE, routing_key=THINK_QUEUE, priority=5)
        publisher.wake("t", 1, "think", 5)
    finally:
        _task_stack.pop()
        task.pop_request()
    with app.connection_for_write() as conn:
        theirs, ours = take(conn, THINK_QUEUE), take(conn, THINK_QUEUE)
    for message in (ours, theirs):
        assert (message.headers["parent_id"], message.headers["root_id"]) == ("the-running-one", "the-root")


def test_a_worker_of_the_project_runs_wake_ups_by_priority_and_at_their_eta(migrated, settings, wire: str) -> None:  # type: ignore[no-untyped-def]
    """Queued before the worker starts, the wake-ups are taken highest priority first; the one with a countdown
    runs when it is due, not before; each runs with its args (the runner settles the delivery of the task id and
    step it was given: tasks that are not in the ledger)."""
    app = celery_on(settings, wire, registered=False)
    publisher = Publisher(app)
    ids = {name: uuid.uuid4() for name in ("low", "high", "mid", "later")}
    started = time.time()
    publisher.wake(ids["low"], 0, "think", 1)
    publisher.wake(ids["high"], 1, "think", 9)
    publisher.wake(ids["mid"], 2, "think", 5)
    publisher.wake(ids["later"], 3, "think", 9, countdown=4.0)
    log_path = ARTIFACTS / "logs" / "worker-think-publisher.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # no memory: a gevent worker loads the local embedding model (seconds) before it consumes, and "later" must
    # still be in its countdown when the worker takes its first wake-up
    env = {**os.environ, "AUTOGPT_BROKER_URL": wire, "AUTOGPT_LOG_JSON": "true", "AUTOGPT_MEMORY_BACKEND": "none"}
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "autogpt_workers.cli", "worker", "--queue", "think", "--concurrency", "1",
             "--hostname", "think-publisher@%h"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
            start_new_session=True,
        )
    try:
        runs: dict[str, tuple[float, int]] = {}
        deadline = time.monotonic() + 60
        while len(runs) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.5)
            runs = {}
            for line in log_path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                # the runner settled the delivery of the (unknown) task and step it was given
                if entry.get("event") == "delivery_settled" and entry.get("task_id") in {str(v) for v in ids.values()}:
                    assert entry["outcome"] == "missing" and entry["phase"] == "think"
                    stamp = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
                    runs[entry["task_id"]] = (stamp, entry.get("step"))
        assert len(runs) == len(ids), f"not all ran; see {log_path}"
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=30)
    order = sorted(ids, key=lambda name: runs[str(ids[name])][0])
    # "later" is last unless the worker got to the others only after its countdown (a loaded host's slow start):
    # then it was due, and took its turn by its priority (9); nothing ran after it before it was due
    assert [name for name in order if name != "later"] == ["high", "mid", "low"], order
    after_later = order[order.index("later") + 1 :]
    assert all(runs[str(ids[name])][0] >= started + 4.0 - 0.5 for name in after_later), (order, runs)
    assert [runs[str(ids[name])][1] for name in ("low", "high", "mid", "later")] == [0, 1, 2, 3]
    assert runs[str(ids["later"])][0] >= started + 4.0 - 0.5



def test_a_wake_up_survives_the_broker_dropping_the_publishers_connection(settings, wire: str) -> None:  # type: ignore[no-untyped-def]
    """The kept producer's connection is closed by the broker between two wake-ups: the next one reconnects
    (kombu's ensure, with the retry policy) and is confirmed, not lost and not an error."""
    from tests.integration.conftest import drop_connections

    app = celery_on(settings, wire, registered=False)
    publisher = Publisher(app)
    publisher.wake(uuid.uuid4(), 0, "think", 5)
    drop_connections(wire)
    second = uuid.uuid4()
    publisher.wake(second, 1, "think", 5)
    with app.connection_for_write() as conn:
        take(conn, THINK_QUEUE)
        assert json.loads(take(conn, THINK_QUEUE).body)[0] == [str(second), 1]
