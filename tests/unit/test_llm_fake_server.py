"""The whole agent core on the wire: ``Agent`` + ``OpenAIChatModel`` against the shared fake LLM server.

The fake speaks the real chat-completions protocol and injects faults per turn, so this checks that the
histories we build are ones it (like OpenAI) accepts and that its faults map onto our retries.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from autogpt_workers.agent.loop import Agent
from autogpt_workers.agent.types import Observation, Spent, StepRecord, TaskContext
from autogpt_workers.commands import Workspace, default_registry
from autogpt_workers.llm.openai_chat import OpenAIChatModel, RetryEvent, make_client
from autogpt_workers.llm.pricing import price_lookup

fake_llm = pytest.importorskip("tests.fake_llm.client")


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with fake_llm.start_fake_llm() as running:
        yield running


def _run(server: Any, goal: str, workspace: Workspace, events: list[RetryEvent]) -> list[StepRecord]:
    client = make_client(server.openai_base_url, None, 5.0, 10)
    llm = OpenAIChatModel(
        client, "scripted-demo", backoff_initial_s=0.01, backoff_max_s=0.5, on_retry=events.append
    )
    agent = Agent(llm, default_registry(10_000, load_plugins=False), price_lookup({}, (0.001, 0.002)))
    task_id = uuid.uuid4().hex
    history: list[StepRecord] = []
    for index in range(10):
        ctx = TaskContext(task_id=task_id, goal=goal, step_index=index, spent=Spent(steps=index))
        proposal = agent.think(ctx, history, datetime.now(UTC))
        observation: Observation = agent.act(ctx, proposal, workspace)
        history.append(StepRecord(index=index, proposal=proposal, observation=observation))
        if observation.is_last:
            break
    return history


def test_demo_script_runs_to_finish(server: Any, tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    history = _run(server, "Plan a picnic", workspace, [])
    assert history[-1].observation.is_last
    assert [r.proposal.command for r in history] == [
        "write_file",
        "write_file",
        "list_files",
        "read_file",
        "finish",
    ]
    assert {p.name for p in workspace.root.iterdir()} == {"plan.md", "notes.md"}
    assert all(r.proposal.cost_usd > 0 for r in history)


def test_faults_and_model_mistakes_are_survived(server: Any, tmp_path: Path) -> None:
    name = f"flaky-{uuid.uuid4().hex[:8]}"
    control = fake_llm.FakeLLMControl(server.base_url)
    control.register_script(
        name,
        [
            {
                "faults": ["429", "garbage", "500"],
                "retry_after": 0.1,
                "tool": "write_file",
                "raw_arguments": "{",
            },
            {"tool": "write_file", "arguments": {"path": "x.txt", "content": "hi"}},
            {"faults": ["disconnect"], "tool": "read_file", "arguments": {"path": "../secret"}},
            {"tool": "finish", "arguments": {"reason": "done"}},
        ],
    )
    control.close()
    events: list[RetryEvent] = []
    history = _run(server, f"[[script:{name}]] write x.txt", Workspace(tmp_path / "ws"), events)

    assert [e.reason for e in events] == ["rate_limited", "bad_response", "server_error", "connection"]
    assert events[0].wait_s >= 0.1
    assert history[0].observation.is_error and "not valid JSON" in history[0].observation.output
    assert history[1].observation.files_written == ["x.txt"]
    assert history[2].observation.output.startswith("Error: path '../secret' leads outside")
    assert history[3].observation.is_last and history[3].observation.output == "done"
