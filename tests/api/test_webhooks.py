"""Webhooks: signed with the tenant's secret, retried with backoff from the outbox while the receiver is down, and
never in the way of the task."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import select

from autogpt_workers.store.gateway import WebhookDelivery
from autogpt_workers.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
    verify_signature,
)
from tests.api.conftest import Gateway, Receiver, wait_for, wait_terminal
from tests.conftest import free_port


def test_signature_round_trip_and_refusals() -> None:
    now = int(time.time())
    body = b'{"id":"evt_1"}'
    sig = signature("whsec_x", now, body)
    assert sig.startswith("v1=") and verify_signature("whsec_x", str(now), body, sig)
    assert not verify_signature("whsec_other", str(now), body, sig)  # wrong secret
    assert not verify_signature("whsec_x", str(now), body + b" ", sig)  # body changed
    assert not verify_signature("whsec_x", str(now - 3600), body, signature("whsec_x", now - 3600, body))  # replay
    assert not verify_signature("whsec_x", "soon", body, sig)


def test_terminal_event_is_delivered_signed(gateway: Gateway, receiver: Receiver) -> None:
    t = gateway.tenant("hook")
    with gateway.client(t) as c:
        task_id = c.post(
            "/v1/tasks",
            json={"goal": "Write things [[steps:2]]", "webhook_url": receiver.url, "metadata": {"order": 9}},
        ).json()["id"]
        assert wait_terminal(c, task_id)["status"] == "completed"
    hit = wait_for(lambda: receiver.received, 30, "webhook delivered")[0]
    assert verify_signature(
        t.webhook_secret, hit.headers[TIMESTAMP_HEADER.lower()], hit.body, hit.headers[SIGNATURE_HEADER.lower()]
    )
    payload = hit.json()
    assert payload["type"] == "task.completed" == hit.headers[EVENT_HEADER.lower()]
    assert payload["task_id"] == task_id and payload["task"]["status"] == "completed"
    assert payload["task"]["metadata"] == {"order": 9} and payload["id"].startswith("evt_")
    assert hit.headers[DELIVERY_HEADER.lower()].isdigit()
    time.sleep(1)
    assert len(receiver.received) == 1  # only the terminal event by default, delivered once


def test_receiver_down_for_a_while_gets_every_event_later(gateway: Gateway, db: Any) -> None:
    """Nothing listens on the port at first (connection refused), then a receiver answering 500, then a good one:
    the task finishes regardless, and every subscribed event arrives, signed, once the receiver is back."""
    t = gateway.tenant("down")
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    with gateway.client(t) as c:
        task_id = c.post(
            "/v1/tasks",
            json={
                "goal": "Write things [[steps:3]]",
                "webhook_url": url,
                "webhook_events": ["step.completed", "task.*"],
            },
        ).json()["id"]
        assert wait_terminal(c, task_id)["status"] == "completed"  # the dead receiver did not hold the task up

    def deliveries() -> list[WebhookDelivery]:
        with db.session() as s:
            return list(s.scalars(select(WebhookDelivery).where(WebhookDelivery.task_id == uuid.UUID(task_id))))

    def all_rows(check: Any) -> bool:
        rows = deliveries()
        return bool(rows) and all(check(d) for d in rows)

    wait_for(lambda: all_rows(lambda d: d.attempts >= 2), 30, "retries against the closed port")
    failing = Receiver(port, status=500).start()
    try:
        wait_for(lambda: len(failing.received) >= 2, 30, "retries against the failing receiver")
    finally:
        failing.stop()
    assert all(d.status == "pending" for d in deliveries())
    good = Receiver(port).start()
    try:
        wait_for(lambda: all_rows(lambda d: d.status == "delivered"), 60, "delivery after recovery")
    finally:
        good.stop()
    rows = deliveries()
    kinds = sorted(h.json()["type"] for h in good.received)
    # task.queued, task.started, 3x step.completed, task.completed: each delivered exactly once to the good one
    assert kinds == sorted(["task.queued", "task.started", *["step.completed"] * 3, "task.completed"])
    assert len(rows) == 6 and all(d.attempts >= 3 and d.last_status in (200, 204) for d in rows)
    for hit in good.received:
        assert verify_signature(
            t.webhook_secret, hit.headers["x-autogpt-timestamp"], hit.body, hit.headers["x-autogpt-signature"]
        )
    # a retried delivery sends the same body as the first attempt did
    first_bodies = {h.headers[DELIVERY_HEADER.lower()]: h.body for h in failing.received}
    for hit in good.received:
        delivery = hit.headers[DELIVERY_HEADER.lower()]
        assert first_bodies.get(delivery, hit.body) == hit.body
