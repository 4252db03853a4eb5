"""``ask_user``: the model asks a human a question; the task waits for the answer without holding a worker.

The command declares ``awaits_human``: the approval gate parks the step after its proposal (no worker slot is
held while it waits) until a human answers through the API; the answer arrives as the step's human input and
``run`` hands it to the model as the observation. A waiting question expires like any waiting approval.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from autogpt_workers.commands.base import Command, CommandContext, CommandResult
from autogpt_workers.errors import CommandError


class AskUserArgs(BaseModel):
    question: str = Field(
        min_length=1, max_length=4_000, description="The question for the human, with the context they need."
    )


class AskUser(Command[AskUserArgs]):
    """Ask a human; the answer is the observation."""

    name = "ask_user"
    description = (
        "Ask the human who runs this task a question and wait for the answer. Use it only when you cannot "
        "go on without their decision or information."
    )
    Args = AskUserArgs
    side_effect = "read_only"
    idempotent = True
    awaits_human = True

    def run(self, args: AskUserArgs, ctx: CommandContext) -> CommandResult:
        if ctx.human_input is None or not ctx.human_input.strip():
            raise CommandError(
                f"nobody answered the question {args.question!r}; go on without the answer, or finish"
            )
        return CommandResult(output=f"The human answered: {ctx.human_input.strip()}")
