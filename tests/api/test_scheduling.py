"""Scheduling with real workers: the per-tenant rate limit, the per-tenant running-task cap (the rest wait in
priority order), deadline urgency, and fair share across tenants under the platform's cap.

Order is read from the event log (its ids are one global sequence), never from timings."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from autogpt_workers.store.models import TaskEvent
from tests.api.conftest import Gateway, Tenant, cancel_unfinished, wait_terminal

SLOW = [{"tool": "write_file", "arguments": {"path": "slow.txt", "content": "z"}, "latency_s": 1.5}]


def events(db: Any, task_ids: list[str]) -> list[tuple[int, str, str]]:
    """(event id, task id, kind) of these tasks, in commit-sequence order."""
    with db.session() as s:
        rows = s.execute(
            select(TaskEvent.id, TaskEvent.task_id, TaskEvent.kind)
            .where(TaskEvent.task_id.in_([uuid.UUID(t) for t in task_ids]))
            .order_by(TaskEvent.id)
        ).tuples()
        return [(i, str(t), k) for i, t, k in rows]


def slot_order(db: Any, task_ids: list[str]) -> list[str]:
    """Tasks in the order they got a running slot: at acceptance, or on admission if they had to wait."""
    log = events(db, task_ids)
    waited = {t for _, t, kind in log if kind == "task.waiting"}
    return [t for _, t, kind in log if kind == ("task.admitted" if t in waited else "task.queued")]


def max_running(db: Any, task_ids: list[str]) -> int:
    """Most tasks holding a slot at once: from acceptance (or admission, if they waited) to the final event."""
    log = events(db, task_ids)
    waited = {t for _, t, kind in log if kind == "task.waiting"}
    running = peak = 0
    for _, task, kind in log:
        if kind == ("task.admitted" if task in waited else "task.queued"):
            running += 1
        elif kind in ("task.completed", "task.failed", "task.cancelled"):
            running -= 1
        peak = max(peak, running)
    return peak


def submit(client: httpx.Client, goal: str, **fields: Any) -> str:
    resp = client.post("/v1/tasks", json={"goal": goal, **fields})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def test_rate_limit_answers_429_with_retry_after(gateway: Gateway) -> None:
    t = gateway.tenant("rate", rate_per_s=0.5, rate_burst=3)
    other = gateway.tenant("rate-other", rate_per_s=0.5, rate_burst=3)
    with gateway.client(t) as c:
        codes = [c.get("/v1/tasks").status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
        limited = c.get("/ap/v1/agent/tasks")
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert "rate limit" in limited.json()["message"]
    with gateway.client(other) as c:  # one tenant's bucket is its own
        assert c.get("/v1/tasks").status_code == 200


def test_tenant_cap_holds_tasks_and_admits_them_in_priority_order(gateway: Gateway, llm: Any, db: Any) -> None:
    llm.register_script("slowcap", SLOW)
    t = gateway.tenant("cap", max_running=2)
    with gateway.client(t) as c:
        first = [submit(c, "Blocker [[script:slowcap]]") for _ in range(2)]
        waiting = [(p, submit(c, f"Waits [[steps:1]] p{p}", priority=p)) for p in (2, 8, 5, 8)]
        held = c.get(f"/v1/tasks/{waiting[0][1]}").json()
        assert held["status"] == "queued" and held["waiting_for_slot"] is True
        ids = [*first, *(t for _, t in waiting)]
        for task_id in ids:
            assert wait_terminal(c, task_id)["status"] == "completed"
    assert max_running(db, ids) == 2
    priority = {t: p for p, t in waiting}
    assert [priority[t] for t in slot_order(db, list(priority))] == [8, 8, 5, 2]


def test_priority_rises_as_the_deadline_nears(gateway: Gateway, llm: Any, db: Any) -> None:
    """Two waiting tasks of the same priority: the one whose deadline is near starts first, though it came later.
    (The default horizon is an hour: a deadline 5 minutes away earns most of the boost.)"""
    from datetime import UTC, datetime, timedelta

    llm.register_script("slowdl", SLOW)
    t = gateway.tenant("deadline", max_running=1)
    soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    with gateway.client(t) as c:
        blocker = submit(c, "Blocker [[script:slowdl]]")
        relaxed = submit(c, "No hurry [[steps:1]]", priority=4)
        far = submit(c, "Far deadline [[steps:1]]", priority=4, deadline=later)
        urgent = submit(c, "Due soon [[steps:1]]", priority=4, deadline=soon)
        assert c.get(f"/v1/tasks/{urgent}").json()["effective_priority"] > 4
        assert c.get(f"/v1/tasks/{far}").json()["effective_priority"] == 4
        for task_id in (blocker, relaxed, far, urgent):
            assert wait_terminal(c, task_id)["status"] == "completed"
    assert slot_order(db, [relaxed, far, urgent]) == [urgent, relaxed, far]


@pytest.fixture
def platform_cap(gateway: Gateway, db: Any) -> Iterator[Gateway]:
    cancel_unfinished(db)  # the cap counts every tenant's unfinished tasks: start from free slots
    gateway.restart(AUTOGPT_SCHEDULER_MAX_RUNNING="2")
    try:
        yield gateway
    finally:
        gateway.restart()


def test_one_tenants_burst_does_not_starve_another(platform_cap: Gateway, llm: Any, db: Any) -> None:
    """Platform cap 2. Tenant A submits 8 tasks, then tenant B submits 2 of the same priority: B's start as soon as
    slots free (fewest running first within a level), not after A's whole burst."""
    gw = platform_cap
    llm.register_script(
        "burst", [{"tool": "write_file", "arguments": {"path": "b.txt", "content": "b"}, "latency_s": 0.5}]
    )
    a: Tenant = gw.tenant("burst-a")
    b: Tenant = gw.tenant("burst-b")
    with gw.client(a) as ca, gw.client(b) as cb:
        a_ids = [submit(ca, f"A burst [[script:burst]] {i}", priority=3) for i in range(8)]
        b_ids = [submit(cb, f"B work [[script:burst]] {i}", priority=3) for i in range(2)]
        for task_id in a_ids:
            assert wait_terminal(ca, task_id, 180)["status"] == "completed"
        for task_id in b_ids:
            assert wait_terminal(cb, task_id, 180)["status"] == "completed"
    order = slot_order(db, a_ids + b_ids)
    assert max_running(db, a_ids + b_ids) <= 2
    positions = [order.index(t) for t in b_ids]
    # FIFO would start B's tasks 9th and 10th; fair share lets them in while A still has a backlog
    assert max(positions) <= 5, order
