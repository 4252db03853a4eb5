"""The dispatcher reports every round of each of its loops, ok or error, so a stalled or failing dispatcher is
visible (``autogpt_dispatcher_rounds_total``); a failing round never stops its loop."""

from __future__ import annotations

import threading
from collections import Counter

from autogpt_workers.dispatcher import Dispatcher
from autogpt_workers.metrics import DISPATCHER_LOOPS


class FlakyAdmitter:
    def __init__(self) -> None:
        self.admits = 0

    def admit_round(self) -> int:
        self.admits += 1
        if self.admits == 2:
            raise ConnectionError("database restarting")
        return 0

    def refresh_priorities(self) -> int:
        raise RuntimeError("no deadlines table")


class Webhooks:
    def __init__(self, stop: threading.Event) -> None:
        self.rounds = 0
        self.stop = stop
        self.closed = False

    def deliver_round(self) -> int:
        self.rounds += 1
        return 0

    def close(self) -> None:
        self.closed = True


def test_each_loop_reports_ok_and_error_rounds_and_keeps_going() -> None:
    stop = threading.Event()
    seen: Counter[tuple[str, str]] = Counter()
    admitter, hooks = FlakyAdmitter(), Webhooks(stop)

    def on_round(loop: str, result: str) -> None:
        seen[(loop, result)] += 1
        if admitter.admits >= 5 and hooks.rounds >= 2:
            stop.set()

    dispatcher = Dispatcher(admitter, hooks, 0.01, on_round=on_round)  # type: ignore[arg-type]
    runner = threading.Thread(target=dispatcher.run_forever, args=(stop,))
    runner.start()
    runner.join(timeout=10)
    assert not runner.is_alive()
    assert seen[("admission", "error")] == 1 and seen[("admission", "ok")] >= 4, seen
    assert seen[("priority_refresh", "error")] >= 1 and seen[("priority_refresh", "ok")] == 0, seen
    assert seen[("webhooks", "ok")] >= 1, seen
    assert {loop for loop, _ in seen} <= set(DISPATCHER_LOOPS)
    assert hooks.closed


def test_the_rounds_counter_counts_by_loop_and_result() -> None:
    from prometheus_client import REGISTRY

    from autogpt_workers.metrics import count_dispatcher_round, touch_dispatcher_series

    def value(loop: str, result: str) -> float:
        got = REGISTRY.get_sample_value("autogpt_dispatcher_rounds_total", {"loop": loop, "result": result})
        return got or 0.0

    touch_dispatcher_series()
    assert REGISTRY.get_sample_value("autogpt_dispatcher_rounds_total", {"loop": "webhooks", "result": "error"}) \
        is not None, "every loop's series exists at zero"
    before = value("admission", "ok")
    count_dispatcher_round("admission", "ok")
    assert value("admission", "ok") == before + 1
