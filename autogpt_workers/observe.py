"""Hooks the runner and the reaper call at each point of a step. The default does nothing; the metrics module
implements them for Prometheus. Keep arguments low-cardinality (never a task id): they become label values."""

from __future__ import annotations


class RunObserver:
    def delivery(self, phase: str, outcome: str, queue_wait_s: float | None) -> None:
        """A wake-up was received; ``outcome`` is the claim's (claimed, committed, lease_held, ...)."""

    def phase_finished(self, phase: str, seconds: float, result: str) -> None:
        """A claimed phase ended: ``result`` is proposed, committed, finished, failed, fenced or retry."""

    def proposal(
        self, model: str, prompt_tokens: int, completion_tokens: int, cost_usd: float, llm_seconds: float
    ) -> None:
        """The model answered and its proposal was persisted."""

    def task_ended(self, status: str, seconds: float | None) -> None:
        """A task reached a terminal state in this process; ``seconds`` since it was submitted."""

    def llm_retry(self, reason: str) -> None:
        """The LLM client is about to retry (rate_limited, server_error, timeout, connection, bad_response)."""

    def error(self, error_type: str) -> None:
        """Something went wrong that an operator should count (poisoned step, unexpected exception, ...)."""

    def reaped(self, expired_leases: int, republished: int) -> None:
        """One reaper round re-drove expired leases and published forgotten wake-ups."""

    def tasks_pruned(self, count: int) -> None:
        """The reaper deleted ``count`` finished tasks past their retention."""
