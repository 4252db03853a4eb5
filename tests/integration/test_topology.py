"""What the platform declares is what the real services hold: the queues' arguments on RabbitMQ (priority, dead
letter), and the SQLAlchemy models against the schema the Alembic migrations build."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from kombu import Connection, Exchange, Producer
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from autogpt_workers.celery_app import declare_topology, make_celery
from autogpt_workers.config import Settings
from autogpt_workers.contracts import ACT_QUEUE, DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, MAX_PRIORITY, THINK_QUEUE
from autogpt_workers.store.migrate import upgrade
from autogpt_workers.store.schema import metadata
from tests.integration.conftest import MGMT, management_auth, private_vhost, vhost_of


def queue_info(broker_url: str, name: str) -> dict[str, Any]:
    vhost = urllib.parse.quote(vhost_of(broker_url), safe="")
    resp = httpx.get(f"{MGMT}/api/queues/{vhost}/{urllib.parse.quote(name, safe='')}",
                     auth=management_auth(broker_url), timeout=10)
    resp.raise_for_status()
    info: dict[str, Any] = resp.json()
    return info


@pytest.mark.parametrize("name", [THINK_QUEUE, ACT_QUEUE])
def test_the_work_queues_on_the_broker_carry_priority_and_dead_letter_arguments(migrated, settings, name: str) -> None:  # type: ignore[no-untyped-def]
    info = queue_info(settings.broker_url, name)  # as `migrate` (and every worker at start-up) declared them
    assert info["durable"] is True and info["auto_delete"] is False
    assert info["arguments"] == {
        "x-max-priority": MAX_PRIORITY + 1,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": DEAD_LETTER_QUEUE,
    }


def test_the_dead_letter_queue_is_durable_and_bound_to_the_dead_letter_exchange(migrated, settings) -> None:  # type: ignore[no-untyped-def]
    info = queue_info(settings.broker_url, DEAD_LETTER_QUEUE)
    assert info["durable"] is True and "x-dead-letter-exchange" not in info["arguments"]
    vhost = urllib.parse.quote(vhost_of(settings.broker_url), safe="")
    bindings = httpx.get(f"{MGMT}/api/bindings/{vhost}/e/{DEAD_LETTER_EXCHANGE}/q/{DEAD_LETTER_QUEUE}",
                         auth=management_auth(settings.broker_url), timeout=10).json()
    assert [b["routing_key"] for b in bindings] == [DEAD_LETTER_QUEUE]


@pytest.fixture(scope="module")
def topology_broker(settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with private_vhost(settings.broker_url, "topo") as url:
        declare_topology(make_celery(Settings(database_url=settings.database_url, broker_url=url)))
        yield url


def test_the_arguments_work_a_rejected_message_is_dead_lettered_and_priority_orders_delivery(
    topology_broker: str,
) -> None:
    with Connection(topology_broker) as conn:
        channel = conn.default_channel
        producer = Producer(channel, exchange=Exchange("autogpt", type="direct", durable=True))
        for priority in (1, 9, 5):
            producer.publish({"p": priority}, routing_key=ACT_QUEUE, priority=priority, serializer="json")
        got = []
        while (message := channel.basic_get(ACT_QUEUE)) is not None:
            got.append(json.loads(message.body)["p"])
            channel.basic_reject(message.delivery_tag, requeue=False)  # what a poisoned step's delivery gets
        assert got == [9, 5, 1]
        dead = []
        while (message := channel.basic_get(DEAD_LETTER_QUEUE, no_ack=True)) is not None:
            dead.append(json.loads(message.body)["p"])
        assert dead == [9, 5, 1]


@pytest.fixture(scope="module")
def fresh_database(settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """An empty database of its own (``<test db>_schema``), dropped at the end."""
    url = make_url(settings.database_url)
    name = f"{url.database}_schema"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def schema_diff(database_url: str) -> list[Any]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def test_the_models_match_the_migrations(fresh_database: str) -> None:
    upgrade(fresh_database)
    assert schema_diff(fresh_database) == []
    # the comparison sees a difference when there is one
    engine = create_engine(fresh_database)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE tasks DROP COLUMN traceparent"))
    engine.dispose()
    assert [d[:2] for d in schema_diff(fresh_database)] == [("add_column", None)]
