"""``finish``: the model's way to end the task, with a summary of what it achieved (or why it could not)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from autogpt_workers.commands.base import Command, CommandContext, CommandResult


class FinishArgs(BaseModel):
    reason: str = Field(
        min_length=1, description="A short summary of the result, or why the goal cannot be achieved."
    )


class Finish(Command[FinishArgs]):
    """End the task: the step that runs it is the last one."""

    name = "finish"
    description = (
        "Finish the task. Call it once the goal is achieved, or when it cannot be achieved, "
        "with a short summary."
    )
    Args = FinishArgs
    side_effect = "read_only"
    idempotent = True
    runs_inline = True
    pure = True

    def run(self, args: FinishArgs, ctx: CommandContext) -> CommandResult:
        return CommandResult(output=args.reason, is_last=True)
