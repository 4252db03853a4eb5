"""``python -m bench.llm_micro``: what one think phase costs the worker's CPU on the LLM side, in one thread.

Runs the agent core (``Agent.think``: budget, prompt, messages, the chat completion through the openai client,
the proposal) against the project's fake LLM over HTTP, as the think worker does, for ``--steps`` steps of the
bench's scripted task per round, and prints this process's CPU per think (``time.process_time``: the fake LLM
is another process). No database and no broker: a profiling aid for the LLM client path, not a figure of
``make bench``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from autogpt_workers.agent.loop import Agent
from autogpt_workers.agent.types import Budget, Observation, Spent, StepRecord, TaskContext
from autogpt_workers.commands import Workspace, default_registry
from autogpt_workers.llm.openai_chat import OpenAIChatModel, make_client
from autogpt_workers.llm.pricing import price_lookup
from tests.fake_llm.client import start_fake_llm


def one_round(agent: Agent, workspace: Workspace, steps: int) -> tuple[int, float]:
    """Think (and act) through one scripted task of ``steps`` steps; (thinks, CPU seconds spent in think)."""
    task_id = uuid.uuid4().hex
    history: list[StepRecord] = []
    cpu = 0.0
    for index in range(steps + 2):
        ctx = TaskContext(task_id=task_id, goal=f"Bench micro [[steps:{steps}]]", step_index=index,
                          spent=Spent(steps=index), budget=Budget(max_steps=steps + 2))
        started = time.process_time()
        proposal = agent.think(ctx, history, datetime.now(UTC))
        cpu += time.process_time() - started
        observation: Observation = agent.act(ctx, proposal, workspace)
        history.append(StepRecord(index=index, proposal=proposal, observation=observation))
        if observation.is_last:
            return index + 1, cpu
    return steps + 2, cpu


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.llm_micro", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="steps of the scripted task (default 20)")
    p.add_argument("--rounds", type=int, default=30, help="tasks run one after another (default 30)")
    args = p.parse_args(argv)
    with start_fake_llm() as server, tempfile.TemporaryDirectory() as tmp:
        llm = OpenAIChatModel(make_client(server.openai_base_url, None, 10.0, 4), "scripted-demo")
        agent = Agent(llm, default_registry(10_000, load_plugins=False), price_lookup({}, (0.001, 0.002)),
                      context_tokens=8_000)
        workspace = Workspace(Path(tmp) / "ws")
        one_round(agent, workspace, args.steps)  # warm-up: imports, connections, caches
        per_think = []
        for _ in range(args.rounds):
            thinks, cpu = one_round(agent, workspace, args.steps)
            per_think.append(cpu / thinks * 1000)
    print(f"think CPU per step, {args.rounds} rounds of {args.steps} steps: median {statistics.median(per_think):.3f} "
          f"ms, min {min(per_think):.3f} ms, max {max(per_think):.3f} ms")


if __name__ == "__main__":
    main()
