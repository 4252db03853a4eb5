"""When an idle dispatcher loop looks in the database (``autogpt_workers.wake.Wake``), on a clock the test moves."""

from __future__ import annotations

from autogpt_workers.wake import Wake


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def idle_wake(clock: Clock, max_idle_s: float = 5.0) -> Wake:
    wake = Wake(max_idle_s, clock)
    assert wake.should_look(), "the first round looks"
    wake.looked(idle=True)
    return wake


def test_an_idle_loop_looks_only_when_notified_or_after_max_idle() -> None:
    clock = Clock()
    wake = idle_wake(clock)
    assert not any(wake.should_look() for _ in range(10))
    wake.notify()
    assert wake.should_look() and not wake.should_look(), "one notification, one look"
    wake.looked(idle=True)
    clock.now += 4.9
    assert not wake.should_look()
    clock.now += 0.2
    assert wake.should_look(), "the safety net: a look every max_idle_s"


def test_a_notification_during_a_look_makes_the_next_round_look_again() -> None:
    wake = idle_wake(Clock())
    wake.notify()
    assert wake.should_look()
    wake.notify()  # a row committed while the look ran: the look may not have seen it
    wake.looked(idle=True)
    assert wake.should_look()


def test_work_left_behind_keeps_every_round_looking() -> None:
    wake = idle_wake(Clock())
    wake.notify()
    assert wake.should_look()
    wake.looked(idle=False)
    assert all(wake.should_look() for _ in range(5))


def test_a_known_due_time_makes_a_round_look_when_it_comes() -> None:
    clock = Clock()
    wake = idle_wake(clock, max_idle_s=60)
    wake.notify()
    assert wake.should_look()
    wake.looked(idle=True, due_in_s=2.0)
    clock.now += 1.9
    assert not wake.should_look()
    clock.now += 0.2
    assert wake.should_look()
