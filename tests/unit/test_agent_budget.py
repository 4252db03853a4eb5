"""Budgets are checked before each LLM call; the error names the budget and the numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from autogpt_workers.agent.budget import check_budget, wall_seconds
from autogpt_workers.agent.types import Budget, Spent
from autogpt_workers.errors import BudgetExceeded

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def test_within_every_budget_passes() -> None:
    budget = Budget(max_steps=5, max_tokens=1000, max_cost_usd=0.01, max_wall_seconds=60)
    spent = Spent(steps=4, prompt_tokens=500, completion_tokens=499, cost_usd=0.0099, started_at=NOW)
    check_budget(budget, spent, NOW + timedelta(seconds=59))


def test_unlimited_budget_never_trips() -> None:
    budget = Budget(max_steps=None)
    spent = Spent(steps=10**6, prompt_tokens=10**9, cost_usd=10**6, started_at=NOW - timedelta(days=30))
    check_budget(budget, spent, NOW)


@pytest.mark.parametrize(
    ("budget", "spent", "message"),
    [
        (Budget(max_steps=5), Spent(steps=5), "step budget exhausted: 5 of 5 steps used"),
        (Budget(max_steps=5), Spent(steps=7), "step budget exhausted: 7 of 5 steps used"),
        (
            Budget(max_tokens=1000),
            Spent(prompt_tokens=1000, completion_tokens=200),
            "token budget exhausted: 1200 of 1000 tokens used",
        ),
        (Budget(max_cost_usd=0.01), Spent(cost_usd=0.0123), "cost budget exhausted: $0.0123 of $0.0100"),
        (
            Budget(max_wall_seconds=60),
            Spent(started_at=NOW - timedelta(seconds=61)),
            "wall-time budget exhausted: 61s of 60s",
        ),
    ],
)
def test_exhausted_budget_raises_with_a_clear_reason(budget: Budget, spent: Spent, message: str) -> None:
    with pytest.raises(BudgetExceeded) as info:
        check_budget(budget, spent, NOW)
    assert info.value.reason == message
    assert str(info.value) == message


def test_steps_are_checked_first() -> None:
    budget = Budget(max_steps=1, max_tokens=1)
    with pytest.raises(BudgetExceeded, match="step budget"):
        check_budget(budget, Spent(steps=1, prompt_tokens=5), NOW)


def test_wall_time_needs_a_start_and_accepts_naive_datetimes() -> None:
    budget = Budget(max_wall_seconds=10)
    check_budget(budget, Spent(started_at=None), NOW)  # not started: no wall clock yet
    naive_start = (NOW - timedelta(seconds=11)).replace(tzinfo=None)
    assert wall_seconds(Spent(started_at=naive_start), NOW) == pytest.approx(11)
    with pytest.raises(BudgetExceeded, match=r"wall-time budget exhausted: 11s of 10s"):
        check_budget(budget, Spent(started_at=naive_start), NOW)


def test_budget_exceeded_pickles() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(BudgetExceeded("step budget exhausted: 5 of 5 steps used")))
    assert error.reason == "step budget exhausted: 5 of 5 steps used"
