"""Budgets: checked before every LLM call, so a task stops before it spends, not after."""

from __future__ import annotations

from datetime import UTC, datetime

from autogpt_workers.agent.types import Budget, Spent
from autogpt_workers.errors import BudgetExceeded


def check_budget(budget: Budget, spent: Spent, now: datetime) -> None:
    """Raise ``BudgetExceeded`` naming the first exhausted budget (steps, tokens, cost, wall time).

    A budget is exhausted once what was spent reaches it: with ``max_steps=5`` and 5 steps done, no sixth LLM
    call is made. One call may overshoot the token and cost budgets; the next check stops the task.
    """
    if budget.max_steps is not None and spent.steps >= budget.max_steps:
        raise BudgetExceeded(f"step budget exhausted: {spent.steps} of {budget.max_steps} steps used")
    tokens = spent.prompt_tokens + spent.completion_tokens
    if budget.max_tokens is not None and tokens >= budget.max_tokens:
        raise BudgetExceeded(f"token budget exhausted: {tokens} of {budget.max_tokens} tokens used")
    if budget.max_cost_usd is not None and spent.cost_usd >= budget.max_cost_usd:
        raise BudgetExceeded(f"cost budget exhausted: ${spent.cost_usd:.4f} of ${budget.max_cost_usd:.4f}")
    elapsed = wall_seconds(spent, now)
    if budget.max_wall_seconds is not None and elapsed is not None and elapsed >= budget.max_wall_seconds:
        raise BudgetExceeded(
            f"wall-time budget exhausted: {_seconds(elapsed)} of {_seconds(budget.max_wall_seconds)}"
        )


def wall_seconds(spent: Spent, now: datetime) -> float | None:
    """Seconds since the task started (naive datetimes are taken as UTC); None if it has not started."""
    if spent.started_at is None:
        return None
    return (_aware(now) - _aware(spent.started_at)).total_seconds()


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _seconds(value: float) -> str:
    return f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"
