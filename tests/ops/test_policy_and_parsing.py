"""Pure parts of the operators' code: the scaling policy, management-API addresses, label hygiene, the local
Prometheus config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autogpt_workers.autoscale import ScalePolicy
from autogpt_workers.queues import ManagementEndpoint, QueueStats


def stats(ready: int = 0, unacked: int = 0, age: float | None = None) -> QueueStats:
    return QueueStats("autogpt.act", ready, unacked, 1, age)


POLICY = ScalePolicy(min_workers=1, max_workers=5, target_per_worker=4, max_age_s=30, scale_in_cooldown_s=10)


@pytest.mark.parametrize(
    ("current", "reading", "want"),
    [
        (1, stats(), 1),  # idle: the minimum
        (3, stats(), 1),  # drained: back to the minimum (the caller applies the cooldown)
        (1, stats(ready=9), 3),  # ceil(9 / 4)
        (1, stats(ready=2, unacked=7), 3),  # unacknowledged messages are work in flight: they count
        (2, stats(ready=400), 5),  # clamped to the maximum
        (2, stats(ready=3, age=45.0), 3),  # shallow but old: the backlog is not draining, add one
        (5, stats(ready=3, age=45.0), 5),  # ... never past the maximum
        (2, stats(ready=0, unacked=8, age=45.0), 2),  # age without ready messages means nothing waits
        (1, stats(ready=0, unacked=12), 1),  # all in flight: keep, do not add (nothing to take)
        (3, stats(ready=0, unacked=9), 3),  # ... nor drop what runs
        (4, None, 4),  # no reading: keep what runs
    ],
)
def test_desired_workers(current: int, reading: QueueStats | None, want: int) -> None:
    assert POLICY.desired(current, reading) == want


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        ScalePolicy(3, 2, 4, 30, 10)
    with pytest.raises(ValueError):
        ScalePolicy(1, 2, 0, 30, 10)


@pytest.mark.parametrize(
    ("broker", "mgmt", "expected"),
    [
        ("amqp://guest:guest@127.0.0.1:5672//", None, ("http://127.0.0.1:15672", "guest", "guest", "/")),
        ("amqp://u:p%40ss@rabbit:5672/autogpt_h6", None, ("http://rabbit:15672", "u", "p@ss", "autogpt_h6")),
        ("amqp://u:p@rabbit:5672/v", "https://mq.example:443", ("https://mq.example:443", "u", "p", "v")),
        ("amqp://u:p@rabbit/v", "http://admin:s3@mq:15672/", ("http://mq:15672", "admin", "s3", "v")),
        ("amqp://rabbit", None, ("http://rabbit:15672", "guest", "guest", "/")),
    ],
)
def test_management_endpoint_from_urls(broker: str, mgmt: str | None, expected: tuple[str, ...]) -> None:
    e = ManagementEndpoint.from_urls(broker, mgmt)
    assert (e.base_url, e.username, e.password, e.vhost) == expected


def test_flower_broker_api_form() -> None:
    e = ManagementEndpoint.from_urls("amqp://u:p@ss@rabbit:5672/v")
    assert ManagementEndpoint.from_urls("amqp://guest:guest@127.0.0.1:5672//").api_url_with_credentials == (
        "http://guest:guest@127.0.0.1:15672/api/"
    )
    assert e.api_url_with_credentials.endswith("@rabbit:15672/api/")


def test_management_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        ManagementEndpoint.from_urls("amqp://rabbit", "amqp://rabbit:15672")


def test_queue_depth_counts_unacked() -> None:
    assert stats(ready=3, unacked=2).depth == 5


def test_label_values_stay_few() -> None:
    from autogpt_workers.metrics import OTHER, _LabelCap, _word

    cap = _LabelCap(3)
    assert [cap(m) for m in ("a", "b", "c", "d", "a")] == ["a", "b", "c", OTHER, "a"]
    assert _word("Rate Limited/429") == "rate_limited_429"
    assert _word("") == "unknown"
    assert len(_word("x" * 500)) == 40


def test_local_prometheus_config_keeps_only_local_jobs(tmp_path: Path) -> None:
    from autogpt_workers.metrics_prometheus import local_config

    out = tmp_path / "var" / "prometheus"  # not there yet, as on a fresh checkout
    path = local_config({"autogpt-reaper": "127.0.0.1:9103", "flower": "127.0.0.1:5555"}, out, ("u", "pw"))
    config = yaml.safe_load(path.read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"autogpt-reaper", "flower"}
    assert jobs["autogpt-reaper"]["static_configs"] == [{"targets": ["127.0.0.1:9103"]}]
    assert "dns_sd_configs" not in jobs["autogpt-reaper"]
    assert Path(jobs["flower"]["basic_auth"]["password_file"]).read_text() == "pw"
    assert Path(config["rule_files"][0]).is_file()


class _Reading:
    """The management API's answer for one round: every think wake-up in flight (500 unacked, nothing ready)."""

    def read(self, names: list[str]) -> dict[str, QueueStats]:
        return {n: QueueStats(n, 0, 500 if n == "autogpt.think" else 0, 1, None) for n in names}


def test_tasks_held_by_the_backlog_gate_count_as_think_demand() -> None:
    """While the admission gate holds tasks in the database, RabbitMQ shows only what is in flight: the held count
    (``BacklogDemand``) is added to the think queue's ready messages, so scale-out sees them."""
    import subprocess

    from autogpt_workers.autoscale import Autoscaler

    started: list[subprocess.Popen[bytes]] = []

    def launch(queue: str, hostname: str) -> subprocess.Popen[bytes]:
        started.append(subprocess.Popen(["sleep", "30"]))
        return started[-1]

    policy = ScalePolicy(min_workers=1, max_workers=6, target_per_worker=500, max_age_s=30, scale_in_cooldown_s=60)
    held = {"now": 0}
    scaler = Autoscaler(
        {"think": ("autogpt.think", policy)}, _Reading(), launch, lambda names: {}, held_demand=lambda: held["now"],  # type: ignore[arg-type]
    )
    try:
        scaler.tick()
        assert len(started) == 1, "500 in flight, nothing held: one worker"
        held["now"] = 1200
        (event,) = scaler.tick()
        assert (event.direction, event.after) == ("out", 4), "ceil((500 + 1200) / 500) workers"
    finally:
        for p in started:
            p.kill()
            p.wait()
