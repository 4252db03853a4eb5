"""The agent loop with a scripted model: think/act, model mistakes as observations, budgets, confinement."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from autogpt_workers.agent.loop import Agent
from autogpt_workers.agent.types import (
    Budget,
    LLMResponse,
    Message,
    Observation,
    Proposal,
    Spent,
    StepRecord,
    TaskContext,
    ToolCall,
    ToolSchema,
    Usage,
)
from autogpt_workers.commands import Command, CommandContext, CommandResult, Workspace, default_registry
from autogpt_workers.commands.registry import CommandRegistry
from autogpt_workers.errors import BudgetExceeded, UnknownCommand
from autogpt_workers.llm.scripted import ScriptedLLM, text_response, tool_call, tool_response
from tests.unit.test_agent_context import assert_valid_openai_history

NOW = datetime(2025, 1, 1, tzinfo=UTC)
PRICES = (0.001, 0.002)


def _agent(llm: Any, registry: CommandRegistry | None = None, **kwargs: Any) -> Agent:
    return Agent(
        llm,
        registry or default_registry(max_file_bytes=10_000, load_plugins=False),
        lambda _: PRICES,
        **kwargs,
    )


def _ctx(step_index: int = 0, **overrides: Any) -> TaskContext:
    values: dict[str, Any] = {
        "task_id": "task-42",
        "goal": "Write hello.txt, then finish.",
        "step_index": step_index,
    }
    values.update(overrides)
    return TaskContext(**values)


def _run(agent: Agent, workspace: Workspace, max_steps: int = 10, **ctx_fields: Any) -> list[StepRecord]:
    """What the Celery tasks do, minus the ledger: think, act, commit, until a last step."""
    history: list[StepRecord] = []
    spent = Spent(started_at=NOW)
    for index in range(max_steps):
        ctx = _ctx(index, spent=spent, **ctx_fields)
        proposal = agent.think(ctx, history, NOW)
        proposal = Proposal.model_validate_json(proposal.model_dump_json())  # persisted between the phases
        observation = agent.act(ctx, proposal, workspace)
        history.append(StepRecord(index=index, proposal=proposal, observation=observation))
        spent = spent.model_copy(
            update={
                "steps": spent.steps + 1,
                "prompt_tokens": spent.prompt_tokens + proposal.usage.prompt_tokens,
                "completion_tokens": spent.completion_tokens + proposal.usage.completion_tokens,
                "cost_usd": spent.cost_usd + proposal.cost_usd,
            }
        )
        if observation.is_last:
            break
    return history


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws")


def test_three_step_run_writes_files_and_finishes(workspace: Workspace) -> None:
    llm = ScriptedLLM(
        [
            tool_response(
                "write_file", {"path": "out/hello.txt", "content": "hello"}, content="Writing the file."
            ),
            tool_response("read_file", {"path": "out/hello.txt"}),
            tool_response("finish", {"reason": "hello.txt written"}),
        ]
    )
    history = _run(_agent(llm), workspace)

    assert [r.proposal.command for r in history] == ["write_file", "read_file", "finish"]
    assert (workspace.root / "out" / "hello.txt").read_text() == "hello"
    assert history[0].observation.files_written == ["out/hello.txt"]
    assert history[1].observation.output == "hello"
    assert history[2].observation.is_last and history[2].observation.output == "hello.txt written"
    assert all(not r.observation.is_error for r in history)
    # usage and cost: 100 prompt + 20 completion tokens at (0.001, 0.002) per 1k
    assert history[0].proposal.usage == Usage(prompt_tokens=100, completion_tokens=20)
    assert history[0].proposal.cost_usd == pytest.approx(0.1 * 0.001 + 0.02 * 0.002)
    assert history[0].proposal.model == "scripted-demo"

    # what the model saw: tools every time, and its earlier calls answered by tool messages
    assert len(llm.calls) == 3
    messages, tools = llm.calls[2]
    assert {t["function"]["name"] for t in tools} == {
        "write_file", "read_file", "list_files", "execute_python", "execute_shell", "web_fetch", "ask_user", "finish"
    }
    assert messages[1]["content"].startswith("Task id: task-42\nGoal: Write hello.txt, then finish.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "tool"]
    assert messages[5]["content"] == "hello"
    for sent, _ in llm.calls:
        assert_valid_openai_history(sent)


def test_malformed_json_arguments_become_an_error_then_the_model_recovers(workspace: Workspace) -> None:
    llm = ScriptedLLM(
        [
            LLMResponse(tool_calls=[tool_call("write_file", '{"path": "a.txt", "content": "x"')]),
            tool_response("write_file", {"path": "a.txt", "content": "x"}),
            tool_response("finish", {"reason": "done"}),
        ]
    )
    history = _run(_agent(llm), workspace)

    first = history[0]
    assert first.proposal.error is not None and first.proposal.command is None
    assert "not valid JSON" in first.proposal.error and "write_file" in first.proposal.error
    assert first.observation.is_error and first.observation.output == first.proposal.error
    assert not (workspace.root / "a.txt").exists() or history[1].proposal.command == "write_file"
    assert history[1].observation.files_written == ["a.txt"]
    assert history[-1].observation.is_last
    # the error reached the model as the reply to its broken call
    second_call_messages = llm.calls[1][0]
    assert second_call_messages[-1]["role"] == "tool"
    assert "not valid JSON" in second_call_messages[-1]["content"]
    assert_valid_openai_history(second_call_messages)


def test_unknown_command_is_an_error_listing_valid_commands(workspace: Workspace) -> None:
    agent = _agent(ScriptedLLM([tool_response("delete_everything", {})]))
    proposal = agent.think(_ctx(), [], NOW)
    assert proposal.error is not None
    assert "no command named 'delete_everything'" in proposal.error
    for name in ("write_file", "read_file", "list_files", "finish"):
        assert name in proposal.error
    observation = agent.act(_ctx(), proposal, workspace)
    assert observation == Observation(output=proposal.error, is_error=True)


def test_no_tool_call_is_an_error_fed_back_as_a_user_message(workspace: Workspace) -> None:
    llm = ScriptedLLM([text_response("I think I am done."), tool_response("finish", {"reason": "ok"})])
    history = _run(_agent(llm), workspace)
    assert history[0].proposal.error is not None and "did not call any command" in history[0].proposal.error
    assert history[0].proposal.assistant_message == {"role": "assistant", "content": "I think I am done."}
    sent = llm.calls[1][0]
    assert sent[-1] == {"role": "user", "content": history[0].observation.output}
    assert_valid_openai_history(sent)


def test_command_outside_the_allow_list_is_refused(workspace: Workspace) -> None:
    llm = ScriptedLLM([tool_response("write_file", {"path": "a.txt", "content": "x"})])
    agent = _agent(llm)
    ctx = _ctx(allowed_commands=["read_file"])
    proposal = agent.think(ctx, [], NOW)
    assert proposal.error is not None and "'write_file' is not allowed" in proposal.error
    # the model was only offered the allowed commands, plus finish so that it can always end
    assert [t["function"]["name"] for t in llm.calls[0][1]] == ["read_file", "finish"]
    assert agent.act(ctx, proposal, workspace).is_error
    assert not (workspace.root / "a.txt").exists()


def test_allow_list_naming_a_missing_command_fails_loudly() -> None:
    agent = _agent(ScriptedLLM([]))
    with pytest.raises(UnknownCommand, match="send_email"):
        agent.think(_ctx(allowed_commands=["send_email"]), [], NOW)


def test_arguments_failing_validation_explain_the_schema(workspace: Workspace) -> None:
    agent = _agent(ScriptedLLM([tool_response("write_file", {"path": "a.txt"})]))
    proposal = agent.think(_ctx(), [], NOW)
    assert proposal.error is not None
    assert "content: Field required" in proposal.error
    assert '"required":["path","content"]' in proposal.error


def test_arguments_must_be_an_object() -> None:
    agent = _agent(ScriptedLLM([tool_response("write_file", "[1, 2]")]))
    proposal = agent.think(_ctx(), [], NOW)
    assert proposal.error is not None and "must be a JSON object, not list" in proposal.error


def test_empty_argument_text_means_no_arguments(workspace: Workspace) -> None:
    (workspace.create() / "f.txt").write_text("x")
    agent = _agent(ScriptedLLM([tool_response("list_files", "")]))
    proposal = agent.think(_ctx(), [], NOW)
    assert proposal.error is None and proposal.arguments == {"path": "."}
    assert agent.act(_ctx(), proposal, workspace).output == "f.txt"


def test_several_tool_calls_run_only_the_first(workspace: Workspace) -> None:
    reply = LLMResponse(
        tool_calls=[
            tool_call("write_file", {"path": "one.txt", "content": "1"}, call_id="c1"),
            tool_call("write_file", {"path": "two.txt", "content": "2"}, call_id="c2"),
        ]
    )
    llm = ScriptedLLM([reply, tool_response("finish", {"reason": "ok"})])
    history = _run(_agent(llm), workspace)
    assert history[0].proposal.tool_call_id == "c1"
    assert (workspace.root / "one.txt").exists() and not (workspace.root / "two.txt").exists()
    sent = llm.calls[1][0]
    replies = {m["tool_call_id"]: m["content"] for m in sent if m["role"] == "tool"}
    assert replies["c1"].startswith("Wrote 1 bytes")
    assert replies["c2"].startswith("Not executed")
    assert_valid_openai_history(sent)


def test_missing_or_repeated_call_ids_are_made_unique() -> None:
    reply = LLMResponse(
        tool_calls=[
            ToolCall(id="", name="finish", arguments='{"reason": "a"}'),
            ToolCall(id="", name="finish", arguments='{"reason": "b"}'),
        ]
    )
    proposal = _agent(ScriptedLLM([reply])).think(_ctx(step_index=3), [], NOW)
    ids = [c["id"] for c in proposal.assistant_message["tool_calls"]]
    assert ids == ["call_3_0", "call_3_1"] and proposal.tool_call_id == "call_3_0"


@pytest.mark.parametrize("path", ["../escape.txt", "/etc/passwd", "a/../../x", "bad\x00name"])
def test_workspace_escape_is_an_error_observation(workspace: Workspace, path: str) -> None:
    agent = _agent(ScriptedLLM([tool_response("read_file", {"path": path})]))
    proposal = agent.think(_ctx(), [], NOW)
    assert proposal.error is None
    observation = agent.act(_ctx(), proposal, workspace)
    assert observation.is_error
    assert observation.output.startswith("Error: path ")


def test_budget_is_checked_before_the_model_is_called() -> None:
    llm = ScriptedLLM([tool_response("finish", {"reason": "ok"})])
    ctx = _ctx(step_index=3, budget=Budget(max_steps=3), spent=Spent(steps=3))
    with pytest.raises(BudgetExceeded, match="step budget exhausted: 3 of 3 steps used"):
        _agent(llm).think(ctx, [], NOW)
    assert llm.calls == []


def test_observations_are_bounded(workspace: Workspace) -> None:
    (workspace.create() / "big.txt").write_text("x" * 5_000)
    agent = _agent(ScriptedLLM([tool_response("read_file", {"path": "big.txt"})]), max_observation_chars=500)
    observation = agent.act(_ctx(), agent.think(_ctx(), [], NOW), workspace)
    assert len(observation.output) <= 500
    assert "truncated" in observation.output


class _NoArgs(BaseModel):
    pass


class _Broken(Command[_NoArgs]):
    """A command with a bug: its exception must not be disguised as an observation."""

    name = "broken"
    description = "Always crashes."
    Args = _NoArgs

    def run(self, args: _NoArgs, ctx: CommandContext) -> CommandResult:
        raise ZeroDivisionError("our bug")


def test_a_bug_in_a_command_propagates(workspace: Workspace) -> None:
    registry = default_registry(max_file_bytes=100, load_plugins=False)
    registry.register(_Broken())
    agent = _agent(ScriptedLLM([tool_response("broken", {})]), registry)
    proposal = agent.think(_ctx(), [], NOW)
    with pytest.raises(ZeroDivisionError):
        agent.act(_ctx(), proposal, workspace)


def test_llm_errors_propagate() -> None:
    from autogpt_workers.errors import LLMTransientError

    def reply(messages: list[Message], tools: list[ToolSchema]) -> LLMResponse:
        raise LLMTransientError("rate limited", 2.0)

    with pytest.raises(LLMTransientError):
        _agent(ScriptedLLM(reply)).think(_ctx(), [], NOW)


def test_feedback_reaches_the_model() -> None:
    llm = ScriptedLLM([tool_response("finish", {"reason": "ok"})])
    _agent(llm).think(_ctx(feedback="Do not write files."), [], NOW)
    assert llm.calls[0][0][-1] == {"role": "user", "content": "A human reviewer says: Do not write files."}
