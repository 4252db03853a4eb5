"""What an LLM call cost, in USD, from token usage and a per-model price table."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from autogpt_workers.agent.types import Usage

Prices = tuple[float, float]  # USD per 1,000 tokens: (prompt, completion)


def cost_usd(usage: Usage, prices_per_1k: Prices) -> float:
    """The cost of ``usage`` at ``(prompt, completion)`` USD per 1,000 tokens."""
    return usage.cost_usd(prices_per_1k)


def price_lookup(table: Mapping[str, Prices], default: Prices) -> Callable[[str], Prices]:
    """A ``model -> prices`` function: exact name first, then the longest table key the name starts with.

    Providers answer with dated names (``gpt-4o-mini-2024-07-18``); the prefix match prices them as
    ``gpt-4o-mini`` rather than ``gpt-4o`` or the default.
    """
    by_length = sorted(table, key=len, reverse=True)

    def prices_for(model: str) -> Prices:
        if model in table:
            return table[model]
        for name in by_length:
            if model.startswith(name + "-"):
                return table[name]
        return default

    return prices_for
