"""The dispatcher's loops look in the database only when something may have changed (``autogpt_workers/wake.py``),
against real PostgreSQL (a database of the module's own: no other test's tasks or caps) and a RabbitMQ vhost of its
own. Every database use of the dispatcher's engine is counted at the pool (``checkout``): a round's transaction and a
delivery's record each check a connection out."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from redis import Redis
from sqlalchemy import func, select, text

from autogpt_workers import lifecycle
from autogpt_workers.admission import FLAG_GRACE_S, Admitter, Policy
from autogpt_workers.backlog import BacklogFlag
from autogpt_workers.broker import Publisher
from autogpt_workers.celery_app import declare_topology, make_celery
from autogpt_workers.config import Settings
from autogpt_workers.contracts import TaskSubmission
from autogpt_workers.store.db import Database
from autogpt_workers.store.gateway import WebhookDelivery
from autogpt_workers.submit import submit_task
from autogpt_workers.wake import Wake
from autogpt_workers.webhooks import Result, WebhookDispatcher
from tests.conftest import free_port
from tests.integration.conftest import counted, private_database, private_vhost

ROUND_S = 0.05
BUSY = Policy(backlog=lambda: "the workers are busy")  # a submission under it is held for admission


@pytest.fixture(scope="module")
def own_db(settings) -> Iterator[Database]:  # type: ignore[no-untyped-def]
    with private_database(settings.database_url, "wake") as database:
        yield database


@pytest.fixture(scope="module")
def publisher(settings) -> Iterator[Publisher]:  # type: ignore[no-untyped-def]
    with private_vhost(settings.broker_url, "wake") as url:
        app = make_celery(Settings(database_url=settings.database_url, broker_url=url))
        declare_topology(app)
        yield Publisher(app)


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(ROUND_S)


def checkouts(db: Database) -> contextlib.AbstractContextManager[list[int]]:
    """``[n]``: the connections checked out of ``db``'s pool since entering."""
    return counted(db.engine.pool, "checkout")


def test_idle_admission_rounds_leave_the_database_alone_and_a_held_task_waits_at_most_the_idle_look(
    own_db: Database, publisher: Publisher
) -> None:
    admitter = Admitter(own_db, publisher, Policy(), wake=Wake(max_idle_s=1.0))
    assert admitter.admit_round() == 0  # the first round looks: nothing waits, no cap, no flag
    with checkouts(own_db) as used:
        for _ in range(10):
            assert admitter.admit_round() == 0
        assert used[0] == 0, "an idle round touches no connection"
    held = submit_task(own_db, publisher, TaskSubmission(goal="wait for a slot"), policy=BUSY)
    assert not held.published
    started = time.monotonic()
    admitted: list[int] = []
    wait_for(lambda: admitted.append(admitter.admit_round()) or sum(admitted), "the held task's admission", 5)
    assert sum(admitted) == 1 and time.monotonic() - started < 2.0, "admitted by the look after at most 1 s"


def test_a_raised_backlog_flag_or_a_cap_keeps_every_admission_round_looking(
    own_db: Database, publisher: Publisher, settings  # type: ignore[no-untyped-def]
) -> None:
    redis = Redis.from_url(settings.redis_url)
    key = f"test:wake:{uuid.uuid4().hex}"
    ready = {"now": 0}
    gate = Policy(max_ready=8)
    admitter = Admitter(
        own_db, publisher, gate, ready=lambda: ready["now"], flag=BacklogFlag(redis, key, 30), wake=Wake(60)
    )
    try:
        admitter.admit_round()
        with checkouts(own_db) as used:
            assert admitter.admit_round() == 0 and used[0] == 0, "idle: the queue is empty and the flag down"
            ready["now"] = 20  # the workers are all busy: the flag goes up, and the API processes hold new tasks
            admitter.admit_round()
            assert redis.get(key) is not None
            before = used[0]
            for _ in range(3):
                admitter.admit_round()
            assert used[0] - before == 3, "every round looks while the flag is up"
            ready["now"] = 0
            admitter.admit_round()
            assert redis.get(key) is None
            time.sleep(FLAG_GRACE_S)
            admitter.admit_round()  # the grace is over: this look finds nothing to wait for
            before = used[0]
            for _ in range(3):
                admitter.admit_round()
            assert used[0] == before, "idle again once the flag has been down for the grace"
        capped = Admitter(own_db, publisher, Policy(tenant_max_running=5), wake=Wake(60))
        with checkouts(own_db) as used:
            for _ in range(3):
                capped.admit_round()
            assert used[0] == 3, "with a running-task cap, any submission may be held: every round looks"
    finally:
        redis.delete(key, key + ":waiting")


def test_webhook_rounds_look_while_a_task_with_a_webhook_is_unfinished(
    own_db: Database, publisher: Publisher, settings  # type: ignore[no-untyped-def]
) -> None:
    hooks_settings = settings.model_copy(update={"webhook_backoff_base_s": 1.0, "webhook_timeout_s": 2.0})
    wake = Wake(max_idle_s=1.0)
    hooks = WebhookDispatcher(own_db, hooks_settings, wake=wake)
    try:
        while hooks.deliver_round():  # whatever an earlier test left
            pass
        looks = wake.looks
        for _ in range(10):
            assert hooks.deliver_round() == 0
        assert wake.looks - looks <= 1, "no task has a webhook: idle rounds do not look"

        dead_url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens: every attempt fails, then is retried
        submission = TaskSubmission(goal="tell me", webhook_url=dead_url, webhook_events=["task.*"])
        task_id = submit_task(own_db, publisher, submission).task_id

        def attempts() -> int:
            with own_db.session() as s:
                n = s.scalar(select(func.max(WebhookDelivery.attempts)).where(WebhookDelivery.task_id == task_id))
                return int(n or 0)

        def round_then(n: int) -> bool:
            hooks.deliver_round()
            return attempts() >= n

        wait_for(lambda: round_then(1), "the first attempt, at the next look (at most 1 s)", 5)
        looks = wake.looks
        for _ in range(5):
            hooks.deliver_round()
        assert wake.looks - looks == 5, "the task is unfinished, so its steps may write deliveries: every round looks"
        wait_for(lambda: round_then(2), "the retry after its backoff (1 s)", 10)

        lifecycle.cancel(own_db, publisher, task_id)  # finished: only its pending deliveries' retry times remain
        hooks.deliver_round()
        wait_for(lambda: hooks.in_flight() == 0, "the cancel's delivery attempt to end")
        hooks.deliver_round()  # the look after it: nothing unfinished, the next retry seconds away
        looks = wake.looks
        for _ in range(5):
            hooks.deliver_round()
        assert wake.looks == looks, "idle until the next retry falls due"
    finally:
        hooks.close()


def test_a_delivery_is_recorded_on_a_fresh_connection_when_its_pooled_one_died(
    own_db: Database, publisher: Publisher, settings  # type: ignore[no-untyped-def]
) -> None:
    """The dispatcher runs without pool pre-ping: a delivery's outcome must not be lost (and the POST repeated) for a
    pooled connection PostgreSQL closed since its last use."""
    url = own_db.engine.url.render_as_string(hide_password=False)
    db = Database.from_url(url, pool_size=1, max_overflow=0, pre_ping=False)
    hooks = WebhookDispatcher(db, settings)
    submission = TaskSubmission(goal="tell me", webhook_url="http://127.0.0.1:9/hook", webhook_events=["task.*"])
    task_id = submit_task(own_db, publisher, submission).task_id
    try:
        jobs, _, _ = hooks._claim(100)
        [job] = [j for j in jobs if j.delivery_id in _deliveries(own_db, task_id)]
        with db.session() as s:  # the pool's one connection, to be killed while it sits in the pool
            pid = s.scalar(text("SELECT pg_backend_pid()"))
        with own_db.session() as s:
            assert s.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        hooks._record(job, Result(job.delivery_id, True, 200, None))
        with own_db.session() as s:
            assert s.get_one(WebhookDelivery, job.delivery_id).status == "delivered"
    finally:
        with contextlib.suppress(lifecycle.LifecycleConflict):
            lifecycle.cancel(own_db, publisher, task_id)
        hooks.close()
        db.dispose()


def _deliveries(db: Database, task_id: object) -> set[int]:
    with db.session() as s:
        return set(s.scalars(select(WebhookDelivery.id).where(WebhookDelivery.task_id == task_id)))


def test_a_tenants_own_cap_of_zero_holds_its_tasks_through_admission(own_db: Database, publisher: Publisher) -> None:
    """The submit and the dispatcher read a tenant's cap alike: 0 is a cap (none may run), not "no cap"."""
    tenant = f"zero-{uuid.uuid4().hex[:8]}"
    with own_db.transaction() as s:
        s.execute(text("INSERT INTO tenants (id, webhook_secret, max_running) VALUES (:id, 'x', 0)"), {"id": tenant})
    held = submit_task(own_db, publisher, TaskSubmission(goal="a suspended tenant"), tenant_id=tenant, policy=Policy())
    assert held.view is not None and held.view.waiting_for_slot
    admitter = Admitter(own_db, publisher, Policy())
    waiting = text("SELECT count(*) FROM admission_queue WHERE task_id = :t")
    for _ in range(3):
        admitter.admit_round()
    with own_db.session() as s:
        assert s.scalar(waiting, {"t": held.task_id}) == 1
    with own_db.transaction() as s:
        s.execute(text("UPDATE tenants SET max_running = 1 WHERE id = :id"), {"id": tenant})
    admitter.admit_round()
    with own_db.session() as s:
        assert s.scalar(waiting, {"t": held.task_id}) == 0
