"""The backlog gate's admission rounds against real PostgreSQL, Redis and a RabbitMQ vhost of its own: while tasks
wait and the think queue is found drained, each round may admit twice as many as the last (so admissions keep up
with workers that take tasks faster than ``scheduler_max_ready`` a round), back to ``max_ready`` on a backlog; the
number still waiting is published beside the flag, where the autoscaler reads it as think-queue demand.

``ready`` (the think queue's ready count) is given by the test, round by round: it is what the dispatcher reads over
AMQP, and the test decides what the workers would have left in the queue. The test has a database of its own
(``<test database>_bl``): a dispatcher of the session's stacks would otherwise admit its tasks between rounds."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from redis import Redis
from sqlalchemy import func, select

from autogpt_workers import lifecycle
from autogpt_workers.admission import Admitter, Policy
from autogpt_workers.backlog import BacklogDemand, BacklogFlag
from autogpt_workers.broker import Publisher
from autogpt_workers.celery_app import declare_topology, make_celery
from autogpt_workers.config import Settings
from autogpt_workers.contracts import TaskSubmission
from autogpt_workers.store.db import Database
from autogpt_workers.store.gateway import AdmissionQueue
from autogpt_workers.submit import submit_task
from tests.integration.conftest import private_database, private_vhost

TASKS = 80
MAX_READY = 8


@pytest.fixture(scope="module")
def own_db(settings) -> Iterator[Database]:  # type: ignore[no-untyped-def]
    with private_database(settings.database_url, "bl") as database:
        yield database


@pytest.fixture(scope="module")
def publisher(settings, own_db: Database) -> Iterator[Publisher]:  # type: ignore[no-untyped-def]
    with private_vhost(settings.broker_url, "bl") as url:
        app = make_celery(Settings(database_url=settings.database_url, broker_url=url))
        declare_topology(app)
        yield Publisher(app)


def test_a_drained_queue_doubles_each_rounds_admissions_and_the_waiting_count_is_published(
    own_db: Database,
    settings,
    publisher: Publisher,  # type: ignore[no-untyped-def]
) -> None:
    db = own_db
    redis = Redis.from_url(settings.redis_url)
    key = f"test:backlog:{uuid.uuid4().hex}"
    flag, demand = BacklogFlag(redis, key, ttl_s=30), BacklogDemand(redis, key)
    busy = Policy(max_ready=MAX_READY, backlog=lambda: "the workers are busy")
    tenant = f"bl-{uuid.uuid4().hex[:8]}"
    mine = [
        submit_task(db, publisher, TaskSubmission(goal=f"held {i}"), tenant_id=tenant, policy=busy).task_id
        for i in range(TASKS)
    ]
    try:
        with db.session() as s:
            held = s.scalar(select(func.count()).where(AdmissionQueue.tenant_id == tenant))
        assert held == TASKS, "every task submitted while the workers are busy waits for admission"

        ready = {"now": 0}
        admitter = Admitter(db, publisher, Policy(max_ready=MAX_READY), ready=lambda: ready["now"], flag=flag)
        rounds = [admitter.admit_round()]
        assert rounds == [MAX_READY], "the first round fills the queue up to max_ready"
        assert demand() == admitter.waiting >= TASKS - MAX_READY, "the waiting count is published with the flag"

        rounds += [admitter.admit_round(), admitter.admit_round()]  # the workers took everything: queue drained
        assert rounds == [MAX_READY, 2 * MAX_READY, 4 * MAX_READY]

        ready["now"] = MAX_READY + 2  # a backlog again: nothing more, and the room falls back to max_ready
        assert admitter.admit_round() == 0
        assert "busy" in (redis.get(key) or b"").decode()
        ready["now"] = 3
        assert admitter.admit_round() == MAX_READY - 3

        ready["now"] = 0
        for _ in range(10):
            if not admitter.waiting:
                break
            admitter.admit_round()
        with db.session() as s:
            left = s.scalar(select(func.count()).where(AdmissionQueue.tenant_id == tenant))
        assert left == 0 and admitter.waiting == 0
        assert demand() == 0 and redis.get(key) is None, "the flag and its count are lowered once nothing waits"
    finally:
        for task_id in mine:
            with contextlib.suppress(lifecycle.LifecycleConflict):
                lifecycle.cancel(db, publisher, task_id)
        redis.delete(key, key + ":waiting")


def test_unreadable_or_missing_demand_counts_as_none(settings) -> None:  # type: ignore[no-untyped-def]
    redis = Redis.from_url(settings.redis_url)
    key = f"test:backlog:{uuid.uuid4().hex}"
    assert BacklogDemand(redis, key)() == 0
    redis.set(key + ":waiting", "not a number", px=5000)
    assert BacklogDemand(redis, key)() == 0
    assert BacklogDemand(Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2), key)() == 0
    redis.delete(key + ":waiting")
