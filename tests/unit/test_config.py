"""Settings refuse unsafe or inconsistent values; the worker refuses unsafe Celery settings."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.concurrency.thread import TaskPool as ThreadPool

from autogpt_workers.celery_app import check_worker_options, check_worker_settings, make_celery
from autogpt_workers.config import Settings
from autogpt_workers.errors import ConfigError


def make(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]


def test_development_defaults_are_accepted() -> None:
    s = make()
    assert s.env in ("development", "test")
    assert s.lease_heartbeat_s * 2 <= s.lease_ttl_s


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"broker_url": "amqp://guest:guest@rabbit:5672//"}, "guest account"),
        ({"broker_url": "amqp://guest@rabbit//"}, "guest account"),
        ({"broker_url": "amqp://rabbit//"}, "without a user: the client would fall back to RabbitMQ's guest"),
        ({"broker_url": "amqp://app@rabbit//"}, r"AUTOGPT_BROKER_URL \(host rabbit\) without a password"),
        ({"broker_url": "amqp://app:pw@rabbit1//;amqp://guest:guest@rabbit2//"}, r"guest account.*host rabbit2"),
        ({"flower_basic_auth": "admin:admin"}, "Flower credentials"),
        ({"flower_basic_auth": "admin:"}, "FLOWER_BASIC_AUTH without a user and a password"),
        ({"flower_basic_auth": ""}, "FLOWER_BASIC_AUTH without a user and a password"),
        ({"flower_basic_auth": "admin:change-me"}, "default Flower credentials for user 'admin'"),
        ({"openai_api_key": None}, "OPENAI_API_KEY"),
        ({"database_url": "postgresql+psycopg2://postgres@db/autogpt"}, "without a password"),
        ({"database_url": "postgresql://app@db/x"}, r"without a password \(AUTOGPT_DATABASE_URL, host db\)"),
        ({"database_url": "postgresql+psycopg2://app:@db.example.com/x"}, "without a password"),
        ({"database_url": "not a url"}, "AUTOGPT_DATABASE_URL cannot be parsed"),
    ],
)
def test_production_refuses_unsafe_values(overrides: dict[str, Any], needle: str) -> None:
    safe = {
        "env": "production",
        "broker_url": "amqp://app:s3cret@rabbit:5672//",
        "flower_basic_auth": "ops:long-secret",
        "openai_api_key": "sk-x",
        "database_url": "postgresql+psycopg2://app:pw@db/autogpt",
        "api_auth": "required",
    }
    make(**safe)  # the safe set passes
    with pytest.raises(ConfigError, match=needle):
        make(**{**safe, **overrides})


@pytest.mark.parametrize(
    "overrides",
    [
        {"broker_url": "amqps://app:p%40ss@rabbit-1:5671/prod;amqps://app:p%40ss@rabbit-2:5671/prod"},
        {"database_url": "postgresql+psycopg2://app@/autogpt?host=/var/run/postgresql"},  # unix socket, peer auth
        {"database_url": "postgresql+psycopg2://app@127.0.0.1/autogpt"},
        {"flower_basic_auth": "ops:long-secret,auditor:another-secret"},
    ],
)
def test_production_accepts_safe_variants(overrides: dict[str, Any]) -> None:
    safe = {
        "env": "production",
        "broker_url": "amqp://app:s3cret@rabbit:5672//",
        "flower_basic_auth": "ops:long-secret",
        "openai_api_key": "sk-x",
        "database_url": "postgresql+psycopg2://app:pw@db/autogpt",
        "api_auth": "required",
    }
    assert make(**{**safe, **overrides}).env == "production"


def test_time_limits_must_stay_below_the_rabbitmq_consumer_timeout() -> None:
    with pytest.raises(ConfigError, match="consumer_timeout"):
        make(act_time_limit_s=1800)
    with pytest.raises(ConfigError, match="think_time_limit_s"):
        make(llm_timeout_s=200, llm_max_attempts=5, think_time_limit_s=600)
    with pytest.raises(ConfigError, match="llm_retry_after_max_s"):
        make(llm_retry_after_max_s=1790)


def test_a_lease_must_survive_a_missed_heartbeat() -> None:
    with pytest.raises(ConfigError, match="heartbeat"):
        make(lease_ttl_s=10, lease_heartbeat_s=6)


def test_the_platform_celery_settings_pass_the_worker_check() -> None:
    s = make()
    assert check_worker_settings(make_celery(s).conf, s) == []


def test_the_worker_check_names_every_unsafe_setting() -> None:
    s = make()
    conf = SimpleNamespace(
        task_acks_late=False,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=4,
        worker_enable_prefetch_count_reduction=True,
        broker_transport_options={},
        task_annotations={"autogpt.act": {"time_limit": 3600}},
    )
    problems = " ".join(check_worker_settings(conf, s))
    for needle in ("task_acks_late", "reject_on_worker_lost", "prefetch", "confirm_publish", "time_limit",
                   "prefetch_count_reduction"):
        assert needle in problems


def test_the_worker_check_reads_the_command_line_options() -> None:
    """A raw ``celery worker`` command line overrides the configuration: its options (as ``celeryd_init`` gets
    them) are checked too."""
    s = make()
    ours = {"prefetch_multiplier": 1, "concurrency": 2, "pool": PreforkPool, "queues": ["autogpt.act"]}
    assert check_worker_options(ours, s) == []
    assert check_worker_options({**ours, "pool": ThreadPool, "queues": ["autogpt.think"]}, s) == []
    problems = " ".join(check_worker_options(
        {"prefetch_multiplier": 4, "time_limit": 3600.0, "soft_time_limit": 1800.0, "pool": ThreadPool,
         "queues": None}, s))
    for needle in ("--prefetch-multiplier must be 1, not 4", "--time-limit (3600s)", "--soft-time-limit (1800s)",
                   "act queue (autogpt.act) needs the prefork pool (-P prefork), not thread"):
        assert needle in problems, problems
    assert check_worker_options({}, s) == []
