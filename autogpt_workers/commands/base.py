"""What a command is: a typed, named action the model may call, run against a task's workspace.

A command declares its arguments as a pydantic model (``Args``); the model's raw JSON is validated against it
before anything runs, and the same model gives the JSON schema the LLM sees (``tool_schema()``).

``side_effect`` and ``idempotent`` tell the worker what a re-run after a crash costs:

- ``read_only``: touches nothing;
- ``workspace``: changes files in the task's own workspace only;
- ``external``: reaches outside (network, other services); use ``CommandContext.idempotency_key``.

``runs_inline`` lets the think worker run the command in its own thread right after the proposal is persisted (one
broker hop and one transaction fewer per step). Only for commands that are quick, run no program, reach nothing
outside the workspace and are idempotent (a step the think worker dies in is re-run on the act queue).
``pure`` goes one further, for a command with no effect at all outside the step's record (``finish``): it runs
before the proposal is persisted, and both are committed in one transaction (one transaction fewer again).

A command reports a failure the model caused (missing file, path escape, too much content) by raising
``errors.CommandError``: the message becomes the observation. Any other exception is a bug: it aborts the
step.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel

from autogpt_workers.commands.workspace import Workspace

SideEffect = Literal["read_only", "workspace", "external"]
SIDE_EFFECTS: tuple[SideEffect, ...] = ("read_only", "workspace", "external")
ArgsT = TypeVar("ArgsT", bound=BaseModel)


@dataclasses.dataclass(frozen=True)
class CommandContext:
    """Everything a command may know about the step it runs in."""

    workspace: Workspace
    task_id: str
    step_index: int
    max_output_chars: int = 8_000
    human_input: str | None = None  # a human's answer to this step's proposal (``ask_user``, approvals)
    # polled by long-running commands: a reason to stop now (the task is being cancelled, the worker is shutting
    # down, the lease was lost), or None to go on
    should_stop: Callable[[], str | None] | None = None

    @property
    def idempotency_key(self) -> str:
        """``task_id:step_index``: the same for every re-run of this step; append ``:n`` per external call."""
        return f"{self.task_id}:{self.step_index}"


@dataclasses.dataclass(frozen=True)
class CommandResult:
    """What a command hands back: the text the model sees next, and what it changed."""

    output: str
    is_last: bool = False
    files_written: list[str] = dataclasses.field(default_factory=list)


class Command(ABC, Generic[ArgsT]):
    """A named, typed action. Subclasses set the class attributes and implement ``run``."""

    name: ClassVar[str]
    description: ClassVar[str]
    Args: type[ArgsT]
    side_effect: ClassVar[SideEffect] = "read_only"
    idempotent: ClassVar[bool] = True
    awaits_human: ClassVar[bool] = False  # the step waits for a human's answer before it runs (``ask_user``)
    # quick, in-process, idempotent and confined to the workspace: the think worker may run it itself right after
    # persisting the proposal, instead of a round trip through the act queue (see ``StepRunner._runs_inline``)
    runs_inline: ClassVar[bool] = False
    # no effect outside the ledger and no I/O: its outcome is a function of its arguments, computed in microseconds.
    # The think worker runs it before anything is written and commits the proposal and the outcome in one
    # transaction (``Ledger.propose_and_commit``); only for a command that also declares ``runs_inline``
    pure: ClassVar[bool] = False

    @abstractmethod
    def run(self, args: ArgsT, ctx: CommandContext) -> CommandResult:
        """Do the work. Raise ``errors.CommandError`` for a failure the model should hear about."""

    def parse_args(self, raw: dict[str, Any]) -> ArgsT:
        """Validate raw arguments (raises ``pydantic.ValidationError``)."""
        return self.Args.model_validate(raw)

    def tool_schema(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry for this command (built once per command: pydantic's JSON schema generation
        costs more than the rest of a think phase; treat the dict as read-only)."""
        key = (self.name, self.description)
        cached = self.__dict__.get("_tool_schema")
        if cached is None or cached[0] != key:
            schema = {
                "type": "function",
                "function": {
                    "name": self.name,
                    "description": self.description,
                    "parameters": clean_schema(self.Args.model_json_schema()),
                },
            }
            cached = self.__dict__["_tool_schema"] = (key, schema)
        return cached[1]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def clean_schema(schema: Any) -> Any:
    """Drop pydantic's ``title`` keys (noise for the model), keeping properties that happen to be named so."""
    if isinstance(schema, list):
        return [clean_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    cleaned: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs") and isinstance(value, dict):
            cleaned[key] = {name: clean_schema(sub) for name, sub in value.items()}
        else:
            cleaned[key] = clean_schema(value)
    return cleaned


def truncate_output(text: str, max_chars: int) -> str:
    """Cut ``text`` to about ``max_chars`` characters, ending with a note that says it was cut."""
    if len(text) <= max_chars:
        return text

    def note(shown: int) -> str:
        return f"\n[output truncated: showing the first {shown} of {len(text)} characters]"

    shown = max(0, max_chars - len(note(max_chars)))
    return text[:shown] + note(shown)
