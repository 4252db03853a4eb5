"""Memory in the agent's step: the prompt of every step carries the tenant's relevant memories, committed steps
feed short- and long-term memory, and ``remember``/``recall`` work on purpose, all scoped to the task's tenant.

Real pieces throughout: the embedded store on disk, embeddings over HTTP from the fake LLM server, Redis, the
``Agent`` with the in-repo ``ScriptedLLM`` model.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from autogpt_workers.agent.loop import Agent
from autogpt_workers.agent.types import Observation, Proposal, TaskContext
from autogpt_workers.commands import Workspace, default_registry
from autogpt_workers.commands.memory import memory_commands
from autogpt_workers.llm.scripted import ScriptedLLM, tool_response
from autogpt_workers.memory.base import MemoryFilter, NewMemory
from autogpt_workers.memory.embedded import SqliteVecStore
from autogpt_workers.memory.embeddings import OpenAIEmbedder
from autogpt_workers.memory.longterm import LongTermMemory
from autogpt_workers.memory.service import MemoryService
from autogpt_workers.memory.shortterm import ShortTermMemory
from tests.conftest import free_port
from tests.memory.conftest import FAKE_DIMS, FAKE_MODEL

NOW = datetime(2026, 1, 1, tzinfo=UTC)
TENANTS = {"old-acme": "acme", "new-acme": "acme", "new-globex": "globex"}


@pytest.fixture
def service(tmp_path: Path, embedder: OpenAIEmbedder, redis_client: Any) -> MemoryService:
    longterm = LongTermMemory(SqliteVecStore(tmp_path / "m.sqlite3", FAKE_DIMS, FAKE_MODEL), embedder).start()
    shortterm = ShortTermMemory(redis_client, prefix=f"test:stm:{uuid.uuid4().hex[:8]}")
    return MemoryService(longterm, shortterm, TENANTS.__getitem__, min_score=0.1)


def _agent(llm: ScriptedLLM, service: MemoryService) -> Agent:
    registry = default_registry(max_file_bytes=10_000, load_plugins=False)
    for command in memory_commands(service):
        registry.register(command)
    return Agent(llm, registry, lambda _: (0.0, 0.0), memory=service, memory_top_k=3)


def _ctx(task_id: str, goal: str, step: int = 0) -> TaskContext:
    return TaskContext(task_id=task_id, goal=goal, step_index=step)


def _prompt_text(llm: ScriptedLLM, call: int = 0) -> str:
    return "\n".join(str(m.get("content") or "") for m in llm.calls[call][0])


def test_every_prompt_carries_the_tenants_relevant_memories(service: MemoryService) -> None:
    secret = "the deploy password is kept in vault under secret deploy prod"
    service.longterm.add([NewMemory(tenant_id="acme", task_id="old-acme", text=secret, importance=0.9, kind="note")])
    goal = "find where the deploy password is kept"
    llm = ScriptedLLM([tool_response("finish", {"reason": "done"})] * 2)
    agent = _agent(llm, service)

    agent.think(_ctx("new-acme", goal), [], NOW)
    agent.think(_ctx("new-globex", goal), [], NOW)

    assert secret in _prompt_text(llm, 0)
    assert "another task" in _prompt_text(llm, 0)
    assert secret not in _prompt_text(llm, 1)  # same words, other tenant: nothing


def test_committed_steps_feed_short_and_long_term_memory(service: MemoryService) -> None:
    ctx = _ctx("new-acme", "summarise the quarterly report", step=2)
    look = Proposal(assistant_message={"role": "assistant"}, command="read_file", arguments={"path": "q3.md"})
    service.observed(ctx, look, Observation(output="Quarter three revenue grew by nine percent"))
    finish = Proposal(assistant_message={"role": "assistant"}, command="finish", arguments={"reason": "x"})
    ctx_last = _ctx("new-acme", "summarise the quarterly report", step=3)
    result = Observation(output="Revenue grew nine percent in quarter three", is_last=True)
    service.observed(ctx_last, finish, result)
    service.observed(ctx_last, finish, result)  # a redelivered act after the commit: still one memory

    stm = service.shortterm
    assert stm is not None
    assert [d.step_index for d in stm.recent("acme", "new-acme")] == [3, 2]
    stored = service.longterm.search("acme", "quarterly revenue", 10)
    assert [(h.kind, h.step_index) for h in stored] == [("result", 3)]  # the read-only look stayed short-term
    assert "Goal: summarise the quarterly report" in stored[0].text
    assert service.longterm.search("globex", "quarterly revenue", 10) == []


def test_steps_still_in_the_context_are_not_repeated_as_memories(service: MemoryService) -> None:
    ctx = _ctx("new-acme", "compile the incident timeline", step=1)
    wrote = Proposal(assistant_message={"role": "assistant"}, command="write_file", arguments={"path": "t.md"})
    service.observed(ctx, wrote, Observation(output="Wrote incident timeline draft to t.md"))
    assert service.longterm.count("acme") == 1

    assert service.relevant(_ctx("new-acme", "compile the incident timeline", step=2), 5) == []
    other_task = service.relevant(_ctx("old-acme", "compile the incident timeline"), 5)
    assert [m.step_index for m in other_task] == [1] and not other_task[0].same_task


def test_remember_and_recall_on_purpose(service: MemoryService, tmp_path: Path) -> None:
    llm = ScriptedLLM([])
    agent = _agent(llm, service)
    workspace = Workspace(tmp_path / "ws")

    def run(task_id: str, step: int, command: str, arguments: dict[str, Any]) -> Observation:
        proposal = Proposal(assistant_message={"role": "assistant"}, command=command, arguments=arguments)
        return agent.act(_ctx(task_id, "g", step), proposal, workspace)

    stored = run("old-acme", 4, "remember", {"text": "customer prefers invoices in euros", "importance": 0.9})
    assert stored.output.startswith("Remembered") and not stored.is_error
    again = run("old-acme", 4, "remember", {"text": "customer prefers invoices in euros", "importance": 0.9})
    assert again.output == stored.output  # a re-run of the step writes the same memory
    assert service.longterm.count("acme") == 1

    found = run("new-acme", 0, "recall", {"query": "which currency for invoices", "k": 3})
    assert "customer prefers invoices in euros" in found.output and "[note, another task, step 4]" in found.output
    mine = run("new-acme", 1, "recall", {"query": "invoices euros", "scope": "this_task"})
    assert mine.output == "No memories match."
    assert run("new-globex", 0, "recall", {"query": "invoices in euros"}).output == "No memories match."
    assert service.longterm.search("acme", "invoices", 5, MemoryFilter(kind="note"))[0].importance == 0.9


def test_memory_down_means_no_memories_for_the_step_and_an_error_for_the_command(
    tmp_path: Path, redis_client: Any
) -> None:
    dead = OpenAIEmbedder.connect(f"http://127.0.0.1:{free_port()}/v1", "k", FAKE_MODEL, dims=FAKE_DIMS, max_retries=0)
    longterm = LongTermMemory(SqliteVecStore(tmp_path / "m.sqlite3", FAKE_DIMS, FAKE_MODEL), dead).start()
    service = MemoryService(longterm, ShortTermMemory(redis_client, prefix="test:stm:down"), TENANTS.__getitem__)
    llm = ScriptedLLM([tool_response("finish", {"reason": "done"})])
    agent = _agent(llm, service)

    proposal = agent.think(_ctx("new-acme", "anything"), [], NOW)
    assert proposal.command == "finish"  # the step went on without memories
    service.observed(_ctx("new-acme", "anything"), proposal, Observation(output="finished fine", is_last=True))

    failed = agent.act(
        _ctx("new-acme", "g", 1),
        Proposal(assistant_message={"role": "assistant"}, command="remember", arguments={"text": "x"}),
        Workspace(tmp_path / "ws"),
    )
    assert failed.is_error and "memory is unavailable" in failed.output
