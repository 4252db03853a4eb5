"""The working context stays within the token window: old steps are summarised whole, no message is cut, and the
tool-call pairing the chat API requires survives."""

from __future__ import annotations

import json
from typing import Any

from autogpt_workers.agent.context import build_messages
from autogpt_workers.agent.frozen import FrozenGroup
from autogpt_workers.agent.memory import RecalledMemory
from autogpt_workers.agent.prompt import load_prompt
from autogpt_workers.agent.types import Observation, Proposal, StepRecord, TaskContext
from autogpt_workers.memory.window import estimate_tokens, fit_to_window, total_tokens


def _record(index: int, output: str) -> StepRecord:
    call_id = f"call_{index}"
    arguments = json.dumps({"path": f"notes_{index}.md", "content": "x" * 50})
    proposal = Proposal(
        assistant_message={
            "role": "assistant",
            "content": f"thinking about step {index}",
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "write_file", "arguments": arguments}}
            ],
        },
        tool_call_id=call_id,
        command="write_file",
        arguments=json.loads(arguments),
    )
    return StepRecord(index=index, proposal=proposal, observation=Observation(output=output))


def _ctx() -> TaskContext:
    return TaskContext(task_id="t-1", goal="write the notes", step_index=40)


def _assert_pairs_intact(messages: list[dict[str, Any]]) -> None:
    for i, message in enumerate(messages):
        if message["role"] == "assistant" and message.get("tool_calls"):
            ids = [c["id"] for c in message["tool_calls"]]
            replies = messages[i + 1 : i + 1 + len(ids)]
            assert [r.get("tool_call_id") for r in replies] == ids
        if message["role"] == "tool":
            assert messages[i - 1]["role"] in ("assistant", "tool")


def test_a_history_that_fits_is_untouched() -> None:
    history = [_record(i, f"Wrote notes_{i}.md") for i in range(5)]
    full = build_messages(_ctx(), history, load_prompt())
    assert build_messages(_ctx(), history, load_prompt(), max_tokens=100_000) == full


def test_old_steps_are_summarised_whole_and_the_result_fits() -> None:
    history = [_record(i, f"Wrote notes_{i}.md; " + "detail " * 120) for i in range(40)]
    full = build_messages(_ctx(), history, load_prompt())
    budget = total_tokens(full) // 3

    messages = build_messages(_ctx(), history, load_prompt(), max_tokens=budget)

    assert total_tokens(messages) <= budget
    summary = messages[2]
    assert summary["role"] == "user" and "earlier steps" in summary["content"]
    assert "- step 0:" in summary["content"] or "older steps not shown" in summary["content"]
    kept_outputs = [m["content"] for m in messages if m["role"] == "tool"]
    originals = {m["content"] for m in full if m["role"] == "tool"}
    assert kept_outputs and all(o in originals for o in kept_outputs)  # kept messages are whole, never cut
    assert kept_outputs[-1] == full[-1]["content"]  # the newest step is kept
    _assert_pairs_intact(messages)
    assert messages[:2] == full[:2]  # system prompt and task stay


def test_the_newest_step_is_kept_whole_even_when_it_alone_is_too_big() -> None:
    history = [_record(0, "small"), _record(1, "huge " * 5_000)]
    head = [{"role": "system", "content": "s"}, {"role": "user", "content": "Task id: t\nGoal: g"}]
    steps = [(r.index, build_messages(_ctx(), [r], load_prompt())[2:]) for r in history]

    messages, summarised = fit_to_window(head, steps, [], max_tokens=500)

    assert summarised == 1
    assert messages[-1]["content"] == "huge " * 5_000
    _assert_pairs_intact(messages)


def test_memories_ride_in_the_last_user_message() -> None:
    memories = [RecalledMemory(text="the api key lives in vault", score=0.81, kind="note", task_id="x")]
    messages = build_messages(_ctx(), [_record(0, "ok")], load_prompt(), memories=memories)
    last = messages[-1]
    assert last["role"] == "user"
    assert "[note, another task, similarity 0.81] the api key lives in vault" in last["content"]
    assert estimate_tokens(last) > 10


def test_kept_step_groups_decide_the_window_as_plain_messages_do() -> None:
    """A committed step's messages are kept as a ``FrozenGroup`` with its tokens' total worked out once; around the
    budget where the history stops fitting, the window decides as it does from plain lists of the same messages."""
    prompt = load_prompt()
    history = [_record(i, "detail " * (10 * i)) for i in range(12)]
    full = build_messages(_ctx(), history, prompt)  # builds each record's group and keeps it
    groups = [r.built_messages(prompt.extra_tool_call) for r in history]
    assert all(type(g) is FrozenGroup for g in groups)
    plain_steps = [(r.index, [dict(m) for m in g or ()]) for r, g in zip(history, groups, strict=True)]
    size = total_tokens(full)
    decided = set()
    for budget in range(size - 60, size + 20, 3):
        kept = build_messages(_ctx(), history, prompt, max_tokens=budget)
        plain, summarised = fit_to_window(full[:2], plain_steps, [], budget, prompt.history_summary)
        assert kept == plain
        decided.add(summarised > 0)
    assert decided == {True, False}  # the budgets straddled the point where it stops fitting
