"""How the fake LLM picks an answer: conversation identity, turn number and the built-in scripts.

- Conversation id: ``Task id: <id>`` in the first user message, else ``h-<sha1 of that message>``.
- Turn number: the number of ``assistant`` messages already present in ``messages``.
- ``[[script:NAME]]`` in the goal: the registered script NAME (past its end: ``finish`` "script ended").
- ``[[steps:N]]``: turns 0..N-2 ``write_file`` ``step_<turn>.txt``, turn N-1 ``finish``.
- otherwise: the demo script (plan.md, notes.md, list_files, read_file plan.md, finish).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tests.fake_llm.models import Script, Turn

TASK_ID_RE = re.compile(r"Task id:\s*(\S+)")
SCRIPT_RE = re.compile(r"\[\[script:([^\]\s]+)\]\]")
STEPS_RE = re.compile(r"\[\[steps:(\d+)\]\]")
_MARKER_RE = re.compile(r"\[\[(?:script|steps):[^\]]*\]\]")
_GOAL_LINE_RE = re.compile(r"^Goal:[ \t]*(.*?)(?:\n[ \t]*\n|\Z)", re.S | re.M)
_CLAUSE_SPLIT_RE = re.compile(r"[.;:!?\n]+|,\s*|\s+(?:and then|then|and)\s+")

DEMO_TURNS = 5


@dataclass(frozen=True)
class Conversation:
    """Identity of one request: which task, which turn, and the goal text (first user message)."""

    id: str
    turn: int
    goal: str


def message_text(message: Mapping[str, Any]) -> str:
    """Text of a chat message: a plain string content or the text parts of a list content."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def identify(messages: list[Mapping[str, Any]]) -> Conversation:
    goal = next((message_text(m) for m in messages if m.get("role") == "user"), "")
    match = TASK_ID_RE.search(goal)
    conv_id = match.group(1) if match else "h-" + hashlib.sha1(goal.encode()).hexdigest()[:16]
    turn = sum(1 for m in messages if m.get("role") == "assistant")
    return Conversation(id=conv_id, turn=turn, goal=goal)


def prompt_chars(messages: list[Mapping[str, Any]]) -> int:
    """Characters of all message texts plus tool-call names and arguments (for the usage estimate)."""
    total = 0
    for message in messages:
        total += len(message_text(message))
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                total += len(str(function.get("name", ""))) + len(str(function.get("arguments", "")))
    return total


def clean_goal(goal: str) -> str:
    """The goal text: after ``Goal:`` up to a blank line if there is such a line (the project's prompt),
    else the whole message; without the ``Task id:`` line and the markers, whitespace collapsed."""
    match = _GOAL_LINE_RE.search(goal)
    text = match.group(1) if match else goal
    text = TASK_ID_RE.sub(" ", _MARKER_RE.sub(" ", text))
    return " ".join(text.split())


def plan_steps(goal: str) -> list[str]:
    """A short numbered-plan body derived from the goal text (3 to 5 steps)."""
    clauses = [c.strip() for c in _CLAUSE_SPLIT_RE.split(clean_goal(goal)) if len(c.strip()) > 3]
    steps = [c[0].upper() + c[1:] for c in clauses[:3]]
    if not steps:
        steps = ["Clarify what the goal asks for"]
    steps.insert(0, "Write down the plan and the notes in the workspace")
    steps.append("Review the workspace and finish with a summary")
    return steps


def _summary(goal: str, limit: int = 80) -> str:
    text = clean_goal(goal) or "the given goal"
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def demo_turn(goal: str, turn: int) -> Turn:
    summary = _summary(goal)
    if turn == 0:
        steps = plan_steps(goal)
        plan = f"# Plan: {summary}\n\n" + "".join(f"{i}. {s}\n" for i, s in enumerate(steps, 1))
        return Turn(
            content="I will start by writing a short numbered plan for the goal.",
            tool="write_file",
            arguments={"path": "plan.md", "content": plan},
        )
    if turn == 1:
        notes = (
            f"# Notes\n\nGoal: {summary}\n\n- The plan is in plan.md.\n"
            "- Next: check the workspace contents, then review the plan.\n"
        )
        return Turn(
            content="With the plan written, I will record some working notes.",
            tool="write_file",
            arguments={"path": "notes.md", "content": notes},
        )
    if turn == 2:
        return Turn(
            content="Let me check which files are in the workspace now.",
            tool="list_files",
            arguments={"path": "."},
        )
    if turn == 3:
        return Turn(
            content="I will re-read the plan to make sure every step is covered.",
            tool="read_file",
            arguments={"path": "plan.md"},
        )
    step_count = len(plan_steps(goal))
    return Turn(
        content="Everything in the plan is covered, so I am done.",
        tool="finish",
        arguments={
            "reason": f"Wrote plan.md ({step_count} steps) and notes.md for: {summary.rstrip('.!?')}; "
            "checked the workspace and reviewed the plan."
        },
    )


def steps_turn(n: int, conv_id: str, turn: int) -> Turn:
    if turn < n - 1:
        return Turn(
            content=f"Working on step {turn}.",
            tool="write_file",
            arguments={"path": f"step_{turn}.txt", "content": f"step {turn} of task {conv_id}"},
        )
    return Turn(content="All steps are written.", tool="finish", arguments={"reason": f"wrote {n - 1} steps"})


def resolve_turn(conv: Conversation, scripts: Mapping[str, Script]) -> Turn:
    """The turn spec answering this request (before faults)."""
    script_match = SCRIPT_RE.search(conv.goal)
    if script_match and script_match.group(1) in scripts:
        turns = scripts[script_match.group(1)].turns
        if conv.turn < len(turns):
            return turns[conv.turn]
        return Turn(tool="finish", arguments={"reason": "script ended"})
    steps_match = STEPS_RE.search(conv.goal)
    if steps_match:
        return steps_turn(max(1, int(steps_match.group(1))), conv.id, conv.turn)
    if script_match:
        name = script_match.group(1)
        return Turn(
            tool="finish",
            arguments={"reason": f"unknown script {name!r}: register it with POST /_scripts/{name}"},
        )
    return demo_turn(conv.goal, conv.turn)


def tool_arguments(turn: Turn) -> str:
    if turn.raw_arguments is not None:
        return turn.raw_arguments
    return json.dumps(turn.arguments or {})


def completion(
    conv: Conversation, turn: Turn, model: str, messages: list[Mapping[str, Any]]
) -> dict[str, Any]:
    """A standard ``chat.completion`` object for this turn spec."""
    message: dict[str, Any] = {"role": "assistant", "content": turn.content}
    completion_chars = len(turn.content or "")
    if turn.tool is not None:
        arguments = tool_arguments(turn)
        completion_chars += len(arguments)
        call_id = "call_" + hashlib.sha1(f"{conv.id}:{conv.turn}".encode()).hexdigest()[:24]
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": turn.tool, "arguments": arguments}}
        ]
    elif turn.content is None:
        message["content"] = ""
    prompt_tokens = max(1, prompt_chars(messages) // 4)
    completion_tokens = max(1, completion_chars // 4)
    if turn.usage is not None:
        if turn.usage.prompt_tokens is not None:
            prompt_tokens = turn.usage.prompt_tokens
        if turn.usage.completion_tokens is not None:
            completion_tokens = turn.usage.completion_tokens
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if turn.tool is not None else "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
