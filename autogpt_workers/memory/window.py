"""Working memory within the model's token window: whole steps are kept or summarised, no message is ever cut.

The chat history of a step (see ``agent.context``) is a head (system prompt, task), one group of messages per
earlier step (the assistant's tool call and its replies, which the API requires to stay together), and a tail
(memories, notes). When it all fits ``max_tokens`` nothing changes. Otherwise the newest steps are kept whole as
long as they fit three quarters of what the head and tail leave, and the older ones are replaced by one message
that summarises them a line each (newest lines first to survive when even the summary must shrink, with a count
of the lines left out). The newest step is always kept whole, whatever it costs.

Tokens are estimated, not counted (no tokenizer is bundled for every model the platform may call): about three
characters a token plus a few tokens per message, which overestimates English and JSON a little. That margin is
on purpose; ``AUTOGPT_LLM_CONTEXT_TOKENS`` should name the model's real window.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from autogpt_workers.agent.frozen import FrozenGroup, FrozenMessage

Message = dict[str, Any]

MESSAGE_OVERHEAD_TOKENS = 4
CHARS_PER_TOKEN = 3
SUMMARY_SHARE = 0.25
LINE_ARGS_CHARS = 100
LINE_RESULT_CHARS = 160


def estimate_tokens(message: Message) -> int:
    """A slightly pessimistic token count of one chat message (a ``FrozenMessage`` keeps its own)."""
    if type(message) is FrozenMessage:
        return message.tokens(_estimate)
    return _estimate(message)


def _estimate(message: Message) -> int:
    content = message.get("content")
    if isinstance(content, list):  # content parts
        text = " ".join(str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content)
    else:
        text = content or ""
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        text += str(function.get("name", "")) + str(function.get("arguments", ""))
    return MESSAGE_OVERHEAD_TOKENS + (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def total_tokens(messages: Sequence[Message]) -> int:
    """The estimate of a list of messages (a ``FrozenGroup`` keeps its own total)."""
    if type(messages) is FrozenGroup:
        return messages.tokens(_estimate)
    return sum(estimate_tokens(m) for m in messages)


def fit_to_window(
    head: Sequence[Message],
    steps: Sequence[tuple[int, Sequence[Message]]],
    tail: Sequence[Message],
    max_tokens: int | None,
    summary_template: str = "Summary of {count} earlier steps (shortened to fit the context window):\n{summary}",
) -> tuple[list[Message], int]:
    """The messages to send, and how many steps were summarised. ``steps`` are ``(step index, messages)``,
    oldest first; ``summary_template`` takes ``{count}`` and ``{summary}``."""
    flat = [m for _, group in steps for m in group]
    if max_tokens is None or (
        total_tokens(head) + sum(total_tokens(group) for _, group in steps) + total_tokens(tail) <= max_tokens
    ):
        return [*head, *flat, *tail], 0
    room = max(0, max_tokens - total_tokens(head) - total_tokens(tail))
    keep_budget = int(room * (1 - SUMMARY_SHARE))
    kept: list[tuple[int, Sequence[Message]]] = []
    used = 0
    for index, group in reversed(steps):
        cost = total_tokens(group)
        if kept and used + cost > keep_budget:
            break
        kept.append((index, group))
        used += cost
    kept.reverse()
    dropped = steps[: len(steps) - len(kept)]
    if not dropped:
        return [*head, *flat, *tail], 0
    summary = _summary_message(dropped, max(0, room - used), summary_template)
    return [*head, summary, *(m for _, group in kept for m in group), *tail], len(dropped)


def _summary_message(
    dropped: Sequence[tuple[int, Sequence[Message]]], budget_tokens: int, template: str
) -> Message:
    lines = [_step_line(index, group) for index, group in dropped]
    shown: list[str] = []
    budget_chars = max(0, budget_tokens - MESSAGE_OVERHEAD_TOKENS - 20) * CHARS_PER_TOKEN
    for line in reversed(lines):  # newest first: they matter most
        if sum(len(s) + 1 for s in shown) + len(line) + 1 > budget_chars:
            break
        shown.append(line)
    shown.reverse()
    omitted = len(lines) - len(shown)
    text = "\n".join(shown)
    if omitted:
        text = f"({omitted} older steps not shown)\n" + text if text else f"({omitted} older steps not shown)"
    return {"role": "user", "content": template.format(count=len(dropped), summary=text)}


def _step_line(index: int, group: Sequence[Message]) -> str:
    action = "replied without a command"
    results: list[str] = []
    for message in group:
        if message.get("role") == "assistant":
            calls = message.get("tool_calls") or []
            if calls:
                function = calls[0].get("function") or {}
                arguments = _clip(_compact(function.get("arguments", "")), LINE_ARGS_CHARS)
                action = f"{function.get('name', '?')}({arguments})"
        elif message.get("content"):
            results.append(str(message["content"]))
    result = _clip(" ".join(results[:1]), LINE_RESULT_CHARS) if results else "(no output)"
    return f"- step {index}: {action} -> {result}"


def _compact(arguments: Any) -> str:
    try:
        decoded = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError:
        return str(arguments)
    return json.dumps(decoded, ensure_ascii=False, separators=(",", "=")) if decoded else ""


def _clip(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
