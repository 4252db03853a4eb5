"""Working memory: the chat history the model sees at each step, rebuilt from the committed step records.

The history is what the OpenAI chat API accepts: every assistant message that carries ``tool_calls`` is
followed by one ``tool`` message per call id, before anything else. For each committed step:

- a valid proposal: its assistant message, then the observation as the reply to the call that ran; any extra
  calls in the same message get a "not executed" reply (one command runs per step);
- an invalid proposal (the model's mistake): its assistant message, then the error as the reply to each of
  its tool calls, or as a user message when it made no tool call at all.

At the end: a budget note when few steps are left, and the human's feedback when there is some.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autogpt_workers.agent.prompt import Prompt
from autogpt_workers.agent.types import Message, StepRecord, TaskContext

# Remind the model of its step budget when at most this many steps remain (this one included).
BUDGET_NOTE_STEPS_LEFT = 3


def build_messages(
    ctx: TaskContext,
    history: Sequence[StepRecord],
    prompt: Prompt,
    commands: Sequence[tuple[str, str]] = (),
) -> list[Message]:
    """The messages for the next LLM call; ``commands`` are the allowed ``(name, description)`` pairs."""
    messages: list[Message] = [
        {"role": "system", "content": prompt.system},
        {
            "role": "user",
            "content": prompt.task.format(
                task_id=ctx.task_id, goal=ctx.goal, commands=_listing(ctx, commands)
            ),
        },
    ]
    for record in sorted(history, key=lambda r: r.index):
        messages.extend(_step_messages(record, prompt))
    notes = []
    budget = ctx.budget.max_steps
    if budget is not None and budget - ctx.spent.steps <= BUDGET_NOTE_STEPS_LEFT:
        notes.append(prompt.budget_note.format(step=ctx.spent.steps + 1, max_steps=budget))
    if ctx.feedback:
        notes.append(prompt.feedback.format(feedback=ctx.feedback))
    if notes:
        messages.append({"role": "user", "content": "\n\n".join(notes)})
    return messages


def _listing(ctx: TaskContext, commands: Sequence[tuple[str, str]]) -> str:
    if commands:
        return "\n".join(f"- {name}: {description}" for name, description in commands)
    if ctx.allowed_commands:
        return "\n".join(f"- {name}" for name in ctx.allowed_commands)
    return "(the commands offered as tools)"


def _step_messages(record: StepRecord, prompt: Prompt) -> list[Message]:
    proposal, observation = record.proposal, record.observation
    assistant: dict[str, Any] = {**proposal.assistant_message, "role": "assistant"}
    calls: list[dict[str, Any]] = list(assistant.get("tool_calls") or [])
    if not calls:
        assistant.pop("tool_calls", None)  # the API refuses an empty list
        if not assistant.get("content"):
            assistant["content"] = ""
    messages: list[Message] = [assistant]
    output = observation.output or "(no output)"
    executed = proposal.command or "another command"
    for call in calls:
        call_id = call.get("id")
        if proposal.error is not None or call_id == proposal.tool_call_id:
            content = output
        else:
            content = prompt.extra_tool_call.format(executed=executed)
        messages.append({"role": "tool", "tool_call_id": call_id, "content": content})
    if not calls:
        messages.append({"role": "user", "content": output})
    return messages
