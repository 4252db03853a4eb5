"""The transactions-per-step figure: what PostgreSQL's counter holds, and what the figure takes out of it."""

from __future__ import annotations

import time
from urllib.parse import urlparse

import psycopg2
import pytest

from bench.cpu import CpuResult, costs_figure
from bench.env import libpq_url, xact_counts
from bench.rabbit import PublishCounts


def _result(commits: int, sessions: int, steps: int = 1000) -> CpuResult:
    return CpuResult(
        tasks=50, steps_total=steps, window_steps=steps, window_s=5.0, platform_cpu_s=5.0, by_process_cpu_s={},
        infra_cpu_s={}, host_busy=0.9, commits=commits, rollbacks=60, sessions=sessions, harness_statements=200,
        published=PublishCounts(950, {"": 950}), settled=True,
    )  # fmt: skip


def test_connection_startups_are_reported_apart_and_left_out_of_the_verdict() -> None:
    fig = costs_figure(_result(commits=3020, sessions=43))
    assert fig.values["counted_commits_per_step"] == pytest.approx(3.02)
    assert fig.values["connection_startups_per_step"] == pytest.approx(0.043)
    assert fig.values["commits_per_step"] == pytest.approx(2.977)
    assert fig.measured.startswith("2.98 commits (+0.04 connection start-ups, +0.06 read-only)")
    assert fig.verdict == "pass"
    assert "43 connections opened" in fig.note


def test_the_steps_own_commits_still_miss_when_over_three() -> None:
    assert costs_figure(_result(commits=3080, sessions=43)).verdict == "miss"


@pytest.mark.integration
def test_postgresql_counts_one_commit_per_connection_opened(settings) -> None:  # type: ignore[no-untyped-def]
    """The premise of the figure, on this machine's PostgreSQL: opening and closing a connection with no statement
    adds one to ``xact_commit`` and one to ``sessions``. On a database of its own, which nothing else uses (created
    on first use, kept between runs)."""
    url = libpq_url(settings.database_url)
    admin = urlparse(url)._replace(path="/postgres").geturl()
    database = "autogpt_test_pgstats"
    conn = psycopg2.connect(admin)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{database}"')
    conn.close()
    target = urlparse(url)._replace(path=f"/{database}").geturl()
    before = xact_counts(target, database)
    for _ in range(5):
        psycopg2.connect(target).close()
    deadline = time.monotonic() + 10
    while min((after := xact_counts(target, database)).sessions - before.sessions, after.commits - before.commits) < 5:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)  # a backend's counters reach the shared statistics as it exits
    assert (after.sessions - before.sessions, after.commits - before.commits) == (5, 5)
