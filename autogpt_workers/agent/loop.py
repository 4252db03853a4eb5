"""The agent loop, one step at a time: ``think`` (ask the model for the next command) and ``act`` (run it).

The two halves are separate because the worker persists the proposal between them: a crash after ``think``
never pays for the same completion twice. Neither half knows about Celery or the database; the caller loads
the history, calls one half, and commits what it returns.

Failure families stay apart (as in smolagents):

- the model's mistakes (no tool call, unknown or forbidden command, arguments that are not JSON or do not fit
  the schema) become a ``Proposal`` with ``error`` set; ``act`` turns it into an error observation the model
  reads next step. ``think`` never raises for them;
- a command's failure the model caused (``CommandError``, e.g. a path escape) becomes an error observation;
- budgets (``BudgetExceeded``), LLM failures (``LLMTransientError``/``LLMPermanentError``) and our own bugs
  propagate to the caller.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from autogpt_workers.agent.budget import check_budget
from autogpt_workers.agent.context import build_messages
from autogpt_workers.agent.memory import AgentMemory
from autogpt_workers.agent.prompt import Prompt, load_prompt
from autogpt_workers.agent.tool_json import tools_json
from autogpt_workers.agent.types import (
    LLM,
    LLMResponse,
    Message,
    Observation,
    Proposal,
    StepRecord,
    TaskContext,
    ToolCall,
    ToolSchema,
)
from autogpt_workers.commands import Command, CommandContext, CommandRegistry, Workspace, truncate_output
from autogpt_workers.errors import CommandError, UsageError
from autogpt_workers.profiles import Profile, ProfileCatalog

# Commands a task may always use, whatever its allow-list says: without `finish` it could not end.
ALWAYS_ALLOWED = ("finish",)


class Agent:
    """Plans with an ``LLM``, acts with the commands of a ``CommandRegistry``. Stateless between calls."""

    def __init__(
        self,
        llm: LLM,
        registry: CommandRegistry,
        prices_per_1k: Callable[[str], tuple[float, float]],
        prompt: Prompt | None = None,
        *,
        max_observation_chars: int = 8_000,
        profiles: ProfileCatalog | None = None,
        profile_of: Callable[[str], str | None] | None = None,
        memory: AgentMemory | None = None,
        memory_top_k: int = 5,
        context_tokens: int | None = None,
    ) -> None:
        self.llm = llm
        self.registry = registry
        self.prices_per_1k = prices_per_1k
        self.prompt = prompt or load_prompt()
        self.max_observation_chars = max_observation_chars
        self.profiles = profiles or ProfileCatalog()
        self.profile_of = profile_of  # task id -> its profile's name (None: no profile)
        self.memory = memory  # long-term recall in every prompt; None: no memory
        self.memory_top_k = memory_top_k
        self.context_tokens = context_tokens  # what the prompt may use of the model's window; None: no limit

    def profile(self, ctx: TaskContext) -> Profile | None:
        """The task's profile, if it has one (raises ``UnknownProfile`` for a name nobody defines)."""
        name = self.profile_of(ctx.task_id) if self.profile_of is not None else None
        return self.profiles.get(name) if name else None

    def prompt_for(self, profile: Profile | None) -> Prompt:
        """The prompt set with the profile's role put before the shipped system prompt's general rules."""
        if profile is None:
            return self.prompt
        return self.prompt.model_copy(update={"system": f"{profile.system.strip()}\n\n{self.prompt.system}"})

    def allowed_commands(self, ctx: TaskContext, profile: Profile | None = None) -> list[Command[Any]]:
        """The commands this task may call: its allow-list (else its profile's) plus ``ALWAYS_ALLOWED``, or all.

        Raises ``UnknownCommand`` if the allow-list names a command this worker does not have.
        """
        allowed = ctx.allowed_commands
        if allowed is None and profile is not None:
            allowed = profile.allowed_commands
        if allowed is None:
            return self.registry.select(None)
        extra = [name for name in ALWAYS_ALLOWED if name in self.registry]
        return self.registry.select([*allowed, *extra])

    def think(self, ctx: TaskContext, history: list[StepRecord], now: datetime) -> Proposal:
        """Check the budget, ask the model for one command, and validate what it proposed."""
        check_budget(ctx.budget, ctx.spent, now)
        profile = self.profile(ctx)
        commands = self.allowed_commands(ctx, profile)
        prompt = self.prompt_for(profile)
        tools = [c.tool_schema() for c in commands]
        memories = self.memory.relevant(ctx, self.memory_top_k) if self.memory and self.memory_top_k else []
        messages = build_messages(
            ctx, history, prompt, [(c.name, c.description) for c in commands], memories, self._window(tools)
        )
        response = self.llm.complete(messages, tools)
        return self._proposal(ctx, response, commands)

    def observed(self, ctx: TaskContext, proposal: Proposal, observation: Observation) -> None:
        """Tell memory about a committed step (short-term always, long-term if important enough)."""
        if self.memory is not None:
            self.memory.observed(ctx, proposal, observation)

    def _window(self, tools: list[ToolSchema]) -> int | None:
        """Tokens the messages may use: the window less what the tool schemas take (estimated, 3 chars/token)."""
        if self.context_tokens is None:
            return None
        return max(1_000, self.context_tokens - len(tools_json(tools)) // 3)

    def act(
        self,
        ctx: TaskContext,
        proposal: Proposal,
        workspace: Workspace,
        should_stop: Callable[[], str | None] | None = None,
    ) -> Observation:
        """Run the proposed command in ``workspace``; a model's mistake or a ``CommandError`` is observed.
        ``should_stop`` is handed to the command (a sandboxed program is ended when it gives a reason)."""
        if proposal.error is not None:
            return Observation(
                output=truncate_output(proposal.error, self.max_observation_chars), is_error=True
            )
        if proposal.command is None:
            raise UsageError("a proposal without an error must name a command")
        command = self.registry.get(proposal.command)
        args = command.parse_args(proposal.arguments)  # validated by think: failing here is a bug
        workspace.create()
        command_ctx = CommandContext(
            workspace=workspace,
            task_id=ctx.task_id,
            step_index=ctx.step_index,
            max_output_chars=self.max_observation_chars,
            human_input=ctx.feedback,
            should_stop=should_stop,
        )
        try:
            result = command.run(args, command_ctx)
        except CommandError as exc:
            return Observation(
                output=truncate_output(f"Error: {exc}", self.max_observation_chars), is_error=True
            )
        return Observation(
            output=truncate_output(result.output, self.max_observation_chars),
            is_last=result.is_last,
            files_written=list(result.files_written),
        )

    def _proposal(
        self, ctx: TaskContext, response: LLMResponse, commands: Sequence[Command[Any]]
    ) -> Proposal:
        calls = _with_unique_ids(response.tool_calls, ctx.step_index)
        proposal = Proposal(
            assistant_message=_assistant_message(response.content, calls),
            usage=response.usage,
            cost_usd=response.usage.cost_usd(self.prices_per_1k(response.model)),
            model=response.model,
        )
        allowed = {c.name: c for c in commands}
        if not calls:
            return self._invalid(proposal, "you did not call any command.", allowed)
        call = calls[0]
        proposal.tool_call_id = call.id
        if call.name not in self.registry:
            return self._invalid(proposal, f"there is no command named {call.name!r}.", allowed)
        command = allowed.get(call.name)
        if command is None:
            return self._invalid(
                proposal, f"the command {call.name!r} is not allowed for this task.", allowed
            )
        problem, arguments = _parse_arguments(command, call.arguments)
        if problem is not None:
            return self._invalid(proposal, problem, allowed)
        proposal.command = call.name
        proposal.arguments = arguments
        return proposal

    def _invalid(self, proposal: Proposal, problem: str, allowed: dict[str, Command[Any]]) -> Proposal:
        proposal.error = self.prompt.invalid_reply.format(problem=problem, commands=", ".join(allowed))
        return proposal


def _parse_arguments(command: Command[Any], raw: str) -> tuple[str | None, dict[str, Any]]:
    """``(problem, {})`` when the model's argument text is unusable, else ``(None, validated arguments)``."""
    name = command.name
    try:
        decoded = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        return f"the arguments for {name!r} are not valid JSON ({exc.msg} at column {exc.colno}).", {}
    if not isinstance(decoded, dict):
        return f"the arguments for {name!r} must be a JSON object, not {type(decoded).__name__}.", {}
    try:
        args = command.parse_args(decoded)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or 'arguments'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        schema = json.dumps(command.tool_schema()["function"]["parameters"], separators=(",", ":"))
        return f"the arguments for {name!r} do not fit its schema ({details}). Its schema: {schema}", {}
    return None, args.model_dump(mode="json")


def _with_unique_ids(calls: Sequence[ToolCall], step_index: int) -> list[ToolCall]:
    """Tool calls with non-empty, distinct ids (some servers send none or repeat them): replies need them."""
    seen: set[str] = set()
    fixed = []
    for position, call in enumerate(calls):
        call_id = call.id
        if not call_id or call_id in seen:
            call_id = f"call_{step_index}_{position}"
        seen.add(call_id)
        fixed.append(call if call_id == call.id else call.model_copy(update={"id": call_id}))
    return fixed


def _assistant_message(content: str | None, calls: Sequence[ToolCall]) -> Message:
    """The model's reply in OpenAI chat format, as stored in the ledger and replayed in later steps."""
    message: Message = {"role": "assistant", "content": content if content or calls else ""}
    if calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ]
    return message
