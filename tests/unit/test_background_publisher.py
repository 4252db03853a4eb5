"""The API's background publisher of first wake-ups: publishes in the submitter's context, refuses beyond its bound
(the caller then publishes itself), and publishes what waits when closed."""

from __future__ import annotations

import contextvars
import threading
import uuid
from typing import Any

from autogpt_workers.store.ledger import Wakeup
from autogpt_workers.submit import BackgroundPublisher

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


class FakePublisher:
    """Records (task id, the submitter's context value); fails every publish so no mark is written."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.seen: list[tuple[str, str]] = []
        self.gate = gate

    def wake(self, task_id: Any, step_index: int, phase: str, priority: int) -> None:
        if self.gate is not None:
            self.gate.wait(5)
        self.seen.append((str(task_id), WHO.get()))
        raise ConnectionError("broker down (the reaper publishes it)")


def wakeup() -> Wakeup:
    return Wakeup(1, uuid.uuid4(), 0, "think", 5)


def test_publishes_in_the_submitters_context_and_drains_on_close() -> None:
    fake = FakePublisher()
    bg = BackgroundPublisher(object(), fake, threads=2)  # type: ignore[arg-type]
    sent = []
    for i in range(10):
        w = wakeup()
        sent.append(str(w.task_id))
        WHO.set(f"submit-{i}")
        assert bg.offer(w, contextvars.copy_context())
    bg.close()
    assert sorted(fake.seen) == sorted(zip(sent, [f"submit-{i}" for i in range(10)], strict=True))


def test_beyond_its_bound_the_caller_publishes() -> None:
    gate = threading.Event()
    fake = FakePublisher(gate)
    bg = BackgroundPublisher(object(), fake, threads=1, max_pending=2)  # type: ignore[arg-type]
    taken = [bg.offer(wakeup(), contextvars.copy_context()) for _ in range(6)]
    # at most two waiting and one in the thread (once it took it): the rest refused
    assert taken[:2] == [True, True] and 2 <= taken.count(True) <= 3 and False in taken, taken
    gate.set()
    bg.close()
    assert len(fake.seen) == taken.count(True)
