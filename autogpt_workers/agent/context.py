"""Working memory: the chat history the model sees at each step, rebuilt from the committed step records.

The history is what the OpenAI chat API accepts: every assistant message that carries ``tool_calls`` is
followed by one ``tool`` message per call id, before anything else. For each committed step:

- a valid proposal: its assistant message, then the observation as the reply to the call that ran; any extra
  calls in the same message get a "not executed" reply (one command runs per step);
- an invalid proposal (the model's mistake): its assistant message, then the error as the reply to each of
  its tool calls, or as a user message when it made no tool call at all.

At the end, in one user message: the long-term memories relevant to this step (``memories``, best first), a
budget note when few steps are left, and the human's feedback when there is some.

The whole is kept within ``max_tokens`` (the model's window less its reply) by ``memory.window``: the oldest steps
are summarised, whole, never cut mid-message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autogpt_workers.agent.frozen import EMPTY_HISTORY, FrozenGroup, History, HistoryMessages
from autogpt_workers.agent.memory import RecalledMemory
from autogpt_workers.agent.prompt import Prompt
from autogpt_workers.agent.types import Message, StepRecord, TaskContext
from autogpt_workers.memory.window import fit_to_window, total_tokens

# Remind the model of its step budget when at most this many steps remain (this one included).
BUDGET_NOTE_STEPS_LEFT = 3


def build_messages(
    ctx: TaskContext,
    history: Sequence[StepRecord],
    prompt: Prompt,
    commands: Sequence[tuple[str, str]] = (),
    memories: Sequence[RecalledMemory] = (),
    max_tokens: int | None = None,
) -> list[Message]:
    """The messages for the next LLM call; ``commands`` are the allowed ``(name, description)`` pairs."""
    head: list[Message] = [
        {"role": "system", "content": prompt.system},
        {
            "role": "user",
            "content": prompt.task.format(
                task_id=ctx.task_id, goal=ctx.goal, commands=_listing(ctx, commands)
            ),
        },
    ]
    past = _history(history, prompt)
    notes = []
    if memories:
        notes.append(prompt.memories.format(memories=_memory_lines(memories)))
    budget = ctx.budget.max_steps
    if budget is not None and budget - ctx.spent.steps <= BUDGET_NOTE_STEPS_LEFT:
        notes.append(prompt.budget_note.format(step=ctx.spent.steps + 1, max_steps=budget))
    if ctx.feedback:
        notes.append(prompt.feedback.format(feedback=ctx.feedback))
    tail: list[Message] = [{"role": "user", "content": "\n\n".join(notes)}] if notes else []
    if max_tokens is None or total_tokens(head) + past.tokens + total_tokens(tail) <= max_tokens:
        return HistoryMessages(head, past, tail)  # everything fits (``fit_to_window``'s first case)
    messages, _ = fit_to_window(head, past.steps, tail, max_tokens, prompt.history_summary)
    return messages


def _history(history: Sequence[StepRecord], prompt: Prompt) -> History:
    """The history's messages in step order, extended from the ``History`` kept on the newest record that has one
    (the think before kept it on its newest), so a think builds only the steps it had not seen; from scratch when
    none matches. Only the newest record keeps one: a task's kept histories take the room of one history. A
    ``History`` lists the records before the one that keeps it, not that one: no reference cycle keeps a dropped
    task's records alive until the collector runs."""
    records = list(history)
    text = prompt.extra_tool_call
    base, start = EMPTY_HISTORY, 0
    for at in range(len(records), 0, -1):
        kept = records[at - 1].kept_history(text)
        if kept is not None and len(kept.before) == at - 1 and records[: at - 1] == kept.before:  # the same records
            base, start = kept, at
            break
    new = records[start:]
    last = records[start - 1].index if start else None
    for record in new:  # in step order after the kept ones (as ``sorted`` would leave them), or from scratch
        if last is not None and record.index < last:
            base, start, new = EMPTY_HISTORY, 0, sorted(records, key=lambda r: r.index)
            break
        last = record.index
    if not new:
        return base
    holder = records[start - 1] if start else None
    steps = [(record.index, _step_group(record, prompt)) for record in new]
    built = base.extended([holder, *new[:-1]] if holder else new[:-1], steps, sum(total_tokens(g) for _, g in steps))
    new[-1].keep_history(text, built)
    if holder is not None:
        holder.drop_history()
    return built


def _memory_lines(memories: Sequence[RecalledMemory]) -> str:
    lines = []
    for memory in memories:
        where = "this task" if memory.same_task else "another task"
        lines.append(f"- [{memory.kind}, {where}, similarity {memory.score:.2f}] {' '.join(memory.text.split())}")
    return "\n".join(lines)


def _listing(ctx: TaskContext, commands: Sequence[tuple[str, str]]) -> str:
    if commands:
        return "\n".join(f"- {name}: {description}" for name, description in commands)
    if ctx.allowed_commands:
        return "\n".join(f"- {name}" for name in ctx.allowed_commands)
    return "(the commands offered as tools)"


def _step_group(record: StepRecord, prompt: Prompt) -> Sequence[Message]:
    """``_step_messages(record, prompt)`` as a ``FrozenGroup``, built once per record: the step runner keeps each
    committed step's record (``runner._Records``), and the messages live as long as it does."""
    kept = record.built_messages(prompt.extra_tool_call)
    if kept is not None:
        return kept
    group = FrozenGroup(_step_messages(record, prompt))
    record.keep_messages(prompt.extra_tool_call, group)
    return group


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
