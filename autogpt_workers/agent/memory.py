"""What the agent loop needs from memory, as a Protocol: the loop never imports a memory backend.

``relevant`` gives the top-k long-term memories for the task's goal and current step (the prompt of every step
carries them); ``observed`` hands over a committed step's outcome (short-term memory, and long-term memory when it
is important enough). Implementations are best-effort: an unavailable store means no memories, not a failed step.
``autogpt_workers.memory.service.MemoryService`` is the implementation the workers use.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel

from autogpt_workers.agent.types import Observation, Proposal, TaskContext


class RecalledMemory(BaseModel):
    """One memory as the model sees it."""

    text: str
    score: float
    kind: str = "observation"
    task_id: str | None = None
    step_index: int | None = None
    same_task: bool = False


class AgentMemory(Protocol):
    def relevant(self, ctx: TaskContext, k: int) -> list[RecalledMemory]:
        """The ``k`` memories most relevant to ``ctx``'s goal and current step, best first."""
        ...

    def observed(self, ctx: TaskContext, proposal: Proposal, observation: Observation) -> None:
        """A step was committed with this outcome."""
        ...
