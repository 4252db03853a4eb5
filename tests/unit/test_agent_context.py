"""Message building: the history the model sees must be one the OpenAI chat API accepts."""

from __future__ import annotations

import copy
import pickle
import re
from typing import Any

import pytest

from autogpt_workers.agent.context import _step_messages, build_messages
from autogpt_workers.agent.frozen import FrozenMessage, HistoryMessages, messages_json
from autogpt_workers.agent.prompt import load_prompt
from autogpt_workers.agent.tool_json import dumps
from autogpt_workers.agent.types import Budget, Message, Observation, Proposal, Spent, StepRecord, TaskContext
from autogpt_workers.memory.window import fit_to_window, total_tokens

PROMPT = load_prompt()


def assert_valid_openai_history(messages: list[Message]) -> None:
    """The structural rules the chat-completions API enforces on a conversation."""
    assert messages[0]["role"] == "system"
    pending: set[str] = set()
    for position, message in enumerate(messages):
        role = message["role"]
        assert role in ("system", "user", "assistant", "tool"), message
        if role == "tool":
            assert message["tool_call_id"] in pending, f"tool message {position} answers no open call"
            assert isinstance(message["content"], str)
            pending.discard(message["tool_call_id"])
            continue
        assert not pending, f"message {position} ({role}) before every tool call was answered: {pending}"
        if role == "assistant":
            calls = message.get("tool_calls")
            assert calls is None or len(calls) > 0, "an empty tool_calls list is refused"
            if calls:
                ids = [c["id"] for c in calls]
                assert all(ids) and len(set(ids)) == len(ids), ids
                assert all(
                    c["type"] == "function" and isinstance(c["function"]["arguments"], str) for c in calls
                )
                pending = set(ids)
            else:
                assert isinstance(message.get("content"), str), "an assistant message needs content or calls"
        else:
            assert isinstance(message.get("content"), str)
    assert not pending, f"unanswered tool calls at the end: {pending}"


def _call(call_id: str, name: str, arguments: str = "{}") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _ctx(**overrides: Any) -> TaskContext:
    values: dict[str, Any] = {"task_id": "t-1", "goal": "Write a haiku to poem.txt", "step_index": 0}
    values.update(overrides)
    return TaskContext(**values)


def _valid_step(index: int, call_id: str, output: str) -> StepRecord:
    return StepRecord(
        index=index,
        proposal=Proposal(
            assistant_message={
                "role": "assistant",
                "content": "Let me write it.",
                "tool_calls": [_call(call_id, "write_file")],
            },
            tool_call_id=call_id,
            command="write_file",
            arguments={"path": "poem.txt", "content": "..."},
        ),
        observation=Observation(output=output, files_written=["poem.txt"]),
    )


def test_first_step_is_system_then_task_with_task_id_line_then_goal() -> None:
    messages = build_messages(_ctx(), [], PROMPT, [("write_file", "Write a file."), ("finish", "Finish.")])
    assert [m["role"] for m in messages] == ["system", "user"]
    text = messages[1]["content"]
    lines = text.splitlines()
    assert lines[0] == "Task id: t-1"
    assert lines[1] == "Goal: Write a haiku to poem.txt"
    assert "- write_file: Write a file." in text and "- finish: Finish." in text
    match = re.search(r"Task id:\s*(\S+)", text)  # how the fake LLM server keys conversations
    assert match is not None and match.group(1) == "t-1"
    assert_valid_openai_history(messages)


def test_goal_with_braces_is_not_formatted_twice() -> None:
    messages = build_messages(_ctx(goal="print {x} and {{y}}"), [], PROMPT)
    assert "Goal: print {x} and {{y}}" in messages[1]["content"]


def test_valid_step_is_answered_by_a_tool_message() -> None:
    history = [_valid_step(0, "call_a", "Wrote 3 bytes to poem.txt.")]
    messages = build_messages(_ctx(step_index=1), history, PROMPT)
    assert messages[2] == history[0].proposal.assistant_message
    assert messages[3] == {"role": "tool", "tool_call_id": "call_a", "content": "Wrote 3 bytes to poem.txt."}
    assert len(messages) == 4
    assert_valid_openai_history(messages)


def test_history_is_replayed_in_step_order() -> None:
    history = [_valid_step(1, "call_b", "second"), _valid_step(0, "call_a", "first")]
    messages = build_messages(_ctx(step_index=2), history, PROMPT)
    assert [m["content"] for m in messages if m["role"] == "tool"] == ["first", "second"]


def test_invalid_proposal_with_tool_call_answers_the_call_with_the_error() -> None:
    error = "Your last reply could not be used: the arguments are not valid JSON."
    record = StepRecord(
        index=0,
        proposal=Proposal(
            assistant_message={
                "role": "assistant",
                "content": None,
                "tool_calls": [_call("c1", "write_file", "{oops")],
            },
            tool_call_id="c1",
            error=error,
        ),
        observation=Observation(output=error, is_error=True),
    )
    messages = build_messages(_ctx(step_index=1), [record], PROMPT)
    assert messages[3] == {"role": "tool", "tool_call_id": "c1", "content": error}
    assert_valid_openai_history(messages)


def test_invalid_proposal_without_tool_call_gets_a_user_message() -> None:
    error = "Your last reply could not be used: you did not call any command."
    record = StepRecord(
        index=0,
        proposal=Proposal(assistant_message={"role": "assistant", "content": None}, error=error),
        observation=Observation(output=error, is_error=True),
    )
    messages = build_messages(_ctx(step_index=1), [record], PROMPT)
    assert messages[2] == {"role": "assistant", "content": ""}
    assert messages[3] == {"role": "user", "content": error}
    assert_valid_openai_history(messages)


def test_every_extra_tool_call_gets_a_not_executed_reply() -> None:
    calls = [_call("c1", "write_file"), _call("c2", "read_file"), _call("c3", "finish")]
    record = StepRecord(
        index=0,
        proposal=Proposal(
            assistant_message={"role": "assistant", "content": "", "tool_calls": calls},
            tool_call_id="c1",
            command="write_file",
        ),
        observation=Observation(output="Wrote 1 bytes to a."),
    )
    messages = build_messages(_ctx(step_index=1), [record], PROMPT)
    tool_replies = {m["tool_call_id"]: m["content"] for m in messages if m["role"] == "tool"}
    assert tool_replies["c1"] == "Wrote 1 bytes to a."
    assert "Not executed" in tool_replies["c2"] and "write_file" in tool_replies["c2"]
    assert "Not executed" in tool_replies["c3"]
    assert_valid_openai_history(messages)


def test_feedback_and_budget_note_come_last() -> None:
    ctx = _ctx(step_index=4, budget=Budget(max_steps=5), spent=Spent(steps=4), feedback="Use rhymes.")
    history = [_valid_step(i, f"call_{i}", f"out {i}") for i in range(4)]
    messages = build_messages(ctx, history, PROMPT)
    last = messages[-1]
    assert last["role"] == "user"
    assert "step 5 of at most 5" in last["content"]
    assert last["content"].endswith("A human reviewer says: Use rhymes.")
    assert_valid_openai_history(messages)


def test_no_budget_note_while_plenty_of_steps_remain() -> None:
    messages = build_messages(_ctx(budget=Budget(max_steps=20), spent=Spent(steps=2)), [], PROMPT)
    assert len(messages) == 2


def test_empty_observation_is_shown_as_no_output() -> None:
    record = _valid_step(0, "c1", "")
    messages = build_messages(_ctx(step_index=1), [record], PROMPT)
    assert messages[3]["content"] == "(no output)"


def test_a_committed_steps_messages_are_built_once_and_stay_what_a_fresh_build_gives() -> None:
    history = [_valid_step(0, "c0", "wrote it"), _valid_step(1, "c1", "wrote it again")]
    first = build_messages(_ctx(step_index=2), history, PROMPT)
    again = build_messages(_ctx(step_index=3), [*history, _valid_step(2, "c2", "third")], PROMPT)
    assert all(a is b for a, b in zip(first[2:6], again[2:6], strict=True))  # steps 0 and 1: the same objects
    fresh = [_valid_step(0, "c0", "wrote it"), _valid_step(1, "c1", "wrote it again"), _valid_step(2, "c2", "third")]
    rebuilt = build_messages(_ctx(step_index=3), fresh, PROMPT)  # new records: built afresh, equal
    assert rebuilt == again and all(a is not b for a, b in zip(rebuilt[2:], again[2:], strict=True))
    assert history[0] == _valid_step(0, "c0", "wrote it") != _valid_step(0, "c0", "other")  # the cache is no field
    assert_valid_openai_history(again)
    # a prompt whose reply text for extra calls differs does not get the messages built with another one
    other = PROMPT.model_copy(update={"extra_tool_call": "skipped, {executed} ran"})
    assert build_messages(_ctx(step_index=2), history, other)[3] is not first[3]


def _reference(ctx: TaskContext, history: list[StepRecord], max_tokens: int | None = None) -> list[Message]:
    """What the messages are, built as they were before a think extended the history kept from the one before:
    every step's messages afresh as plain dicts, in step order, through the window."""
    head = [dict(m) for m in build_messages(ctx, [], PROMPT)[:2]]
    steps = [(r.index, _step_messages(r, PROMPT)) for r in sorted(history, key=lambda r: r.index)]
    messages, _ = fit_to_window(head, steps, [], max_tokens, PROMPT.history_summary)
    return messages


def _kept(records: list[StepRecord]) -> list[int]:
    return [r.index for r in records if r.kept_history(PROMPT.extra_tool_call) is not None]


def test_a_think_extends_the_history_kept_from_the_one_before_and_sends_what_a_fresh_build_would() -> None:
    records: list[StepRecord] = []
    for i in range(25):
        records.append(_valid_step(i, f"c{i}", f"output {i} " * (i % 4)))
        ctx = _ctx(step_index=i + 1)
        got = build_messages(ctx, list(records), PROMPT)
        assert got == _reference(ctx, records)
        assert messages_json(got) == dumps(list(got))  # the request's JSON, the history's part from what was kept
        assert _kept(records) == [i]  # only the newest record keeps the history: one history's room per task
        kept = records[-1].kept_history(PROMPT.extra_tool_call)
        assert kept.before == records[:-1] and all(r is not records[-1] for r in kept.before)  # no cycle through it
        again = build_messages(ctx, list(records), PROMPT)  # the same think again (a retried LLM call)
        assert again == got and all(a is b for a, b in zip(again, got, strict=True) if type(a) is FrozenMessage)
    # three new steps at once (the others ran in another worker process), then the steps out of order
    records += [_valid_step(i, f"c{i}", f"late {i}") for i in range(25, 28)]
    got = build_messages(_ctx(step_index=28), list(records), PROMPT)
    assert got == _reference(_ctx(step_index=28), records) and _kept(records) == [27]
    shuffled = [*records[10:], *records[:10]]
    assert build_messages(_ctx(step_index=28), shuffled, PROMPT) == got
    # a window the history no longer fits: the oldest steps summarised, as before
    small = total_tokens(got) - 200
    assert build_messages(_ctx(step_index=28), list(records), PROMPT, max_tokens=small) == _reference(
        _ctx(step_index=28), records, small
    )
    # the same steps as other, equal records (the worker read them again): the same messages
    fresh = [StepRecord.model_validate(r.model_dump()) for r in records]
    assert build_messages(_ctx(step_index=28), fresh, PROMPT) == got


def test_a_thinks_messages_cannot_be_changed_and_copy_as_plain_lists() -> None:
    history = [_valid_step(0, "c0", "wrote it"), _valid_step(1, "c1", "again")]
    messages = build_messages(_ctx(step_index=2), history, PROMPT)
    assert type(messages) is HistoryMessages
    with pytest.raises(TypeError, match="cannot be changed"):
        messages.append({"role": "user", "content": "more"})
    for copied in (copy.copy(messages), copy.deepcopy(messages), pickle.loads(pickle.dumps(messages))):
        assert type(copied) is list and copied == messages
        copied.append({"role": "user", "content": "more"})  # a copy is the caller's own
    assert messages_json([*messages]) == messages_json(messages) == dumps(list(messages))
