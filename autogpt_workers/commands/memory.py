"""``remember`` and ``recall``: the agent's deliberate use of long-term memory.

The commands talk to memory through ``MemoryAccess`` (implemented by ``memory.service.MemoryService``), so this
package imports no memory backend. The tenant is resolved from the task by the memory service, never taken from
the model's arguments: a task reads and writes only its own tenant's memories. An unavailable store becomes a
``CommandError`` the model reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from pydantic import BaseModel, Field

from autogpt_workers.commands.base import Command, CommandContext, CommandResult
from autogpt_workers.errors import CommandError, RunError


class Recalled(Protocol):
    text: str
    score: float
    kind: str
    step_index: int | None
    same_task: bool


class MemoryAccess(Protocol):
    def remember(self, task_id: str, step_index: int, text: str, importance: float) -> str: ...

    def recall(self, task_id: str, query: str, k: int, this_task_only: bool = False) -> Sequence[Recalled]: ...


class RememberArgs(BaseModel):
    text: str = Field(
        min_length=1, max_length=4_000, description="The fact, decision or lesson to keep, in a self-contained way."
    )
    importance: float = Field(default=0.8, ge=0.0, le=1.0, description="0 (trivia) to 1 (essential).")


class RecallArgs(BaseModel):
    query: str = Field(min_length=1, max_length=1_000, description="What you want to remember, in plain words.")
    k: int = Field(default=5, ge=1, le=20, description="How many memories to return at most.")
    scope: Literal["all_tasks", "this_task"] = Field(
        default="all_tasks", description="Search everything you remember, or only what this task stored."
    )


class Remember(Command[RememberArgs]):
    name = "remember"
    description = (
        "Store a fact, decision or lesson in long-term memory, to be found again by later steps and later tasks."
    )
    Args = RememberArgs
    side_effect = "external"
    idempotent = True  # the memory's id is derived from the task and step: a re-run replaces it

    def __init__(self, memory: MemoryAccess) -> None:
        self.memory = memory

    def run(self, args: RememberArgs, ctx: CommandContext) -> CommandResult:
        try:
            memory_id = self.memory.remember(ctx.task_id, ctx.step_index, args.text, args.importance)
        except RunError as exc:
            raise CommandError(f"memory is unavailable right now: {exc}") from exc
        return CommandResult(output=f"Remembered (memory {memory_id}).")


class Recall(Command[RecallArgs]):
    name = "recall"
    description = "Search long-term memory for what earlier steps and tasks stored; returns the closest memories."
    Args = RecallArgs
    side_effect = "read_only"
    idempotent = True

    def __init__(self, memory: MemoryAccess) -> None:
        self.memory = memory

    def run(self, args: RecallArgs, ctx: CommandContext) -> CommandResult:
        try:
            found = self.memory.recall(ctx.task_id, args.query, args.k, args.scope == "this_task")
        except RunError as exc:
            raise CommandError(f"memory is unavailable right now: {exc}") from exc
        if not found:
            return CommandResult(output="No memories match.")
        lines = [f"{i}. {_source(m)} (similarity {m.score:.2f}): {m.text}" for i, m in enumerate(found, 1)]
        return CommandResult(output="\n".join(lines))


def memory_commands(memory: MemoryAccess) -> list[Command[BaseModel]]:
    """The memory commands, bound to ``memory``."""
    return [Remember(memory), Recall(memory)]  # type: ignore[list-item]


def _source(memory: Recalled) -> str:
    where = "this task" if memory.same_task else "another task"
    step = f", step {memory.step_index}" if memory.step_index is not None else ""
    return f"[{memory.kind}, {where}{step}]"
