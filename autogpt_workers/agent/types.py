"""Typed values the agent loop passes around; every one round-trips to JSON losslessly.

The message format is OpenAI's chat format (``{"role": ..., "content": ..., "tool_calls": ...}``) because
every provider we talk to (OpenAI, Azure, vLLM, Ollama) speaks it; it stays plain dicts so it can be stored as
JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, Field, PrivateAttr

Message = dict[str, Any]
ToolSchema = dict[str, Any]


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def cost_usd(self, prices_per_1k: tuple[float, float]) -> float:
        """What these tokens cost at ``(prompt, completion)`` USD per 1,000 tokens."""
        prompt_price, completion_price = prices_per_1k
        return (self.prompt_tokens * prompt_price + self.completion_tokens * completion_price) / 1000


class ToolCall(BaseModel):
    id: str
    name: str
    arguments: str  # raw JSON text exactly as the model sent it (it may be malformed)


class LLMResponse(BaseModel):
    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    model: str = ""


class LLM(Protocol):
    """The one thing the loop needs from a model."""

    def complete(self, messages: list[Message], tools: list[ToolSchema]) -> LLMResponse: ...


class Budget(BaseModel):
    """Per-task limits, checked before every LLM call. ``None`` means unlimited."""

    max_steps: int | None = Field(default=20, ge=1, le=10_000)
    max_tokens: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_wall_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class Spent(BaseModel):
    """What a task has used so far (summed from the ledger)."""

    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    started_at: datetime | None = None


class Proposal(BaseModel):
    """What the model proposed for one step. Persisted before anything acts on it.

    ``error`` set means the model made a mistake (no tool call, unknown command, bad arguments): no command
    runs and the error is the observation fed back to the model.
    """

    assistant_message: Message
    tool_call_id: str | None = None
    command: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float = 0.0
    model: str = ""


class Observation(BaseModel):
    """The outcome of acting on a proposal: what the model sees next step."""

    output: str
    is_error: bool = False
    is_last: bool = False
    files_written: list[str] = Field(default_factory=list)


class StepRecord(BaseModel):
    """One committed step of history (the episodic memory is the ledger).

    A committed step never changes, so the chat messages built from it are kept on it (``agent.context``), for as
    long as the record itself is kept: (the prompt text they were built with, the messages)."""

    index: int
    proposal: Proposal
    observation: Observation
    _messages: tuple[str, Sequence[Message]] | None = PrivateAttr(default=None)
    _history: tuple[str, Any] | None = PrivateAttr(default=None)

    def built_messages(self, prompt_text: str) -> Sequence[Message] | None:
        """The messages kept on this record, if they were built with ``prompt_text``."""
        # read from pydantic's dict of private attributes: ``self._messages`` goes through ``BaseModel.__getattr__``
        # (about 2 us a read), and every think reads this on each record of its task's history
        private = self.__pydantic_private__
        kept = private.get("_messages") if private else None
        return kept[1] if kept is not None and kept[0] == prompt_text else None

    def keep_messages(self, prompt_text: str, messages: Sequence[Message]) -> None:
        self._messages = (prompt_text, messages)

    def kept_history(self, prompt_text: str) -> Any:
        """The ``agent.frozen.History`` of the steps up to this one that was kept on it, if built with
        ``prompt_text``: only the newest record of a task's history keeps one (``agent.context``)."""
        private = self.__pydantic_private__
        kept = private.get("_history") if private else None
        return kept[1] if kept is not None and kept[0] == prompt_text else None

    def keep_history(self, prompt_text: str, history: Any) -> None:
        self._history = (prompt_text, history)

    def drop_history(self) -> None:
        private = self.__pydantic_private__
        if private:
            private["_history"] = None

    def __eq__(self, other: object) -> bool:  # the kept messages are a cache, not part of the record
        if not isinstance(other, StepRecord):
            return NotImplemented
        return (self.index, self.proposal, self.observation) == (other.index, other.proposal, other.observation)


class TaskContext(BaseModel):
    task_id: str
    goal: str
    step_index: int
    budget: Budget = Field(default_factory=Budget)
    spent: Spent = Field(default_factory=Spent)
    allowed_commands: list[str] | None = None  # None: every registered command
    feedback: str | None = None  # a human's words for this step (approval mode)
