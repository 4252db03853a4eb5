"""The dispatcher's loops look in the database only when something may have changed (``store/notify.py``), against
real PostgreSQL (a database of the module's own, so only this test's rows notify) and a RabbitMQ vhost of its own.

Every database use of the dispatcher's engine is counted at the pool (``checkout``): a pre-ping, a round's
transaction and a delivery's record all check a connection out."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import event, func, select, text

from autogpt_workers.admission import Admitter, Policy
from autogpt_workers.broker import Publisher
from autogpt_workers.celery_app import declare_topology, make_celery
from autogpt_workers.config import Settings
from autogpt_workers.contracts import TaskSubmission
from autogpt_workers.store.db import Database
from autogpt_workers.store.gateway import WebhookDelivery
from autogpt_workers.store.notify import ADMISSION_CHANNEL, WEBHOOKS_CHANNEL, Listener, Wake
from autogpt_workers.submit import submit_task
from autogpt_workers.webhooks import Result, WebhookDispatcher
from tests.conftest import free_port
from tests.integration.conftest import private_database, private_vhost

ROUND_S = 0.05


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


@pytest.fixture
def wakes(own_db: Database) -> Iterator[dict[str, Wake]]:
    wakes = {ADMISSION_CHANNEL: Wake(max_idle_s=60), WEBHOOKS_CHANNEL: Wake(max_idle_s=60)}
    stop = threading.Event()
    thread = Listener(own_db.engine, wakes, poll_s=0.2, retry_s=0.2).start(stop)
    wait_for(lambda: all(w.listening for w in wakes.values()), "the listener to connect")
    yield wakes
    stop.set()
    thread.join(timeout=5)


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(ROUND_S)


class Checkouts:
    def __init__(self, db: Database) -> None:
        self.count = 0
        event.listen(db.engine.pool, "checkout", self._seen)
        self.db = db

    def _seen(self, *_: object) -> None:
        self.count += 1

    def close(self) -> None:
        event.remove(self.db.engine.pool, "checkout", self._seen)


def test_idle_admission_rounds_leave_the_database_alone_until_a_task_is_held(
    own_db: Database, publisher: Publisher, wakes: dict[str, Wake]
) -> None:
    admitter = Admitter(own_db, publisher, Policy(), wake=wakes[ADMISSION_CHANNEL])
    assert admitter.admit_round() == 0  # the first round looks: nothing waits
    used = Checkouts(own_db)
    try:
        for _ in range(40):
            assert admitter.admit_round() == 0
            time.sleep(ROUND_S / 5)
        assert used.count == 0, "an idle round with nothing notified touches no connection"

        busy = Policy(backlog=lambda: "the workers are busy")
        held = submit_task(own_db, publisher, TaskSubmission(goal="wait for a slot"), policy=busy)
        assert not held.published
        admitted: list[int] = []
        wait_for(lambda: admitted.append(admitter.admit_round()) or sum(admitted), "the held task's admission", 5)
        assert sum(admitted) == 1
        looks = used.count
        for _ in range(20):
            assert admitter.admit_round() == 0
        assert used.count == looks, "idle again once the queue is empty"
    finally:
        used.close()


def test_a_webhook_delivery_notifies_and_its_retry_is_looked_for_when_due(
    own_db: Database, publisher: Publisher, wakes: dict[str, Wake], settings  # type: ignore[no-untyped-def]
) -> None:
    hooks_settings = settings.model_copy(update={"webhook_backoff_base_s": 1.0, "webhook_timeout_s": 2.0})
    hooks = WebhookDispatcher(own_db, hooks_settings, wake=wakes[WEBHOOKS_CHANNEL])
    try:
        while hooks.deliver_round():  # whatever an earlier test left: nothing is due in this database
            pass
        wake = wakes[WEBHOOKS_CHANNEL]
        looks = wake.looks
        for _ in range(20):
            assert hooks.deliver_round() == 0
        assert wake.looks - looks <= 1, "idle rounds do not look"

        dead_url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens: every attempt fails, then is retried
        submission = TaskSubmission(goal="tell me", webhook_url=dead_url, webhook_events=["task.*"])
        task_id = submit_task(own_db, publisher, submission).task_id

        def attempts() -> int:
            with own_db.session() as s:
                return int(
                    s.scalar(select(func.max(WebhookDelivery.attempts)).where(WebhookDelivery.task_id == task_id))
                    or 0
                )

        def round_then(n: int) -> bool:
            hooks.deliver_round()
            return attempts() >= n

        started = time.monotonic()
        looks = wake.looks
        wait_for(lambda: round_then(1), "the first attempt, woken by the trigger's notification", 5)
        assert time.monotonic() - started < 2, "delivered on notification, not on a safety-net look"
        wait_for(lambda: round_then(2), "the retry after its backoff (1 s)", 10)
        # looks: the notification, the end of the first attempt, the retry's due time (and a spare)
        assert wake.looks - looks <= 5, f"{wake.looks - looks} looks for two attempts"
    finally:
        hooks.close()


def test_the_listener_reconnects_and_every_round_looks_meanwhile(
    own_db: Database, publisher: Publisher, wakes: dict[str, Wake]
) -> None:
    wake = wakes[ADMISSION_CHANNEL]
    admitter = Admitter(own_db, publisher, Policy(), wake=wake)
    admitter.admit_round()
    with own_db.session() as s:
        s.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'autogpt-workers-listen' AND datname = current_database()"
            )
        )
    wait_for(lambda: not wake.listening, "the listener to notice", 5)
    wait_for(lambda: wake.listening, "the listener to reconnect", 10)
    admitter.admit_round()  # the look owed for notifications missed while down
    busy = Policy(backlog=lambda: "the workers are busy")
    submit_task(own_db, publisher, TaskSubmission(goal="held after the reconnect"), policy=busy)
    admitted: list[int] = []
    wait_for(lambda: admitted.append(admitter.admit_round()) or sum(admitted), "the admission after reconnecting", 5)


def test_a_delivery_is_recorded_on_a_fresh_connection_when_its_pooled_one_died(
    own_db: Database, publisher: Publisher, settings  # type: ignore[no-untyped-def]
) -> None:
    """The dispatcher runs without pool pre-ping: a delivery's outcome must not be lost (and the POST repeated) for a
    pooled connection PostgreSQL closed since its last use."""
    url = own_db.engine.url.render_as_string(hide_password=False)
    db = Database.from_url(url, pool_size=1, max_overflow=0, pre_ping=False)
    hooks = WebhookDispatcher(db, settings)
    try:
        submission = TaskSubmission(goal="tell me", webhook_url="http://127.0.0.1:9/hook", webhook_events=["task.*"])
        task_id = submit_task(own_db, publisher, submission).task_id
        jobs, _ = hooks._claim(100)
        [job] = [j for j in jobs if j.delivery_id in _deliveries(own_db, task_id)]
        with db.session() as s:  # the pool's one connection, to be killed while it sits in the pool
            pid = s.scalar(text("SELECT pg_backend_pid()"))
        with own_db.session() as s:
            assert s.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        hooks._record(job, Result(job.delivery_id, True, 200, None))
        with own_db.session() as s:
            assert s.get_one(WebhookDelivery, job.delivery_id).status == "delivered"
    finally:
        hooks.close()
        db.dispose()


def _deliveries(db: Database, task_id: object) -> set[int]:
    with db.session() as s:
        return set(s.scalars(select(WebhookDelivery.id).where(WebhookDelivery.task_id == task_id)))
