"""The peer: the same scripted agent on LangGraph with its Postgres checkpointer, K runs at once in one asyncio
process (how a LangGraph user runs many agents without the hosted server), against the same fake LLM.

The agent is the platform's, minus the platform: the same prompt (``autogpt_workers.prompts``), the same tool
schemas and the same command implementations (``default_registry``), a ``think`` node that asks the model for
one command (openai's async client) and an ``act`` node that runs it, each superstep checkpointed to PostgreSQL
(``AsyncPostgresSaver`` on a ``psycopg_pool`` pool, LangGraph's default durability).

Run by ``bench.peer``: ``python -m bench.peer_langgraph --base-url ... --database-url ... --tasks 200 ...``;
prints one JSON line with the steps counted in the window, the process's CPU and a per-second timeline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import operator
import os
import time
import uuid
from collections import Counter
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any, TypedDict

import httpx2
import openai
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph import END, START, StateGraph
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from autogpt_workers.agent.prompt import load_prompt
from autogpt_workers.commands import CommandContext, Workspace, default_registry
from bench.env import libpq_url
from bench.procs import cpu_seconds
from bench.stack import steps_goal

MODEL = "scripted-demo"


class AgentState(TypedDict):
    task_id: str
    messages: Annotated[list[dict[str, Any]], operator.add]
    steps: int
    done: bool


class PeerAgent:
    def __init__(self, client: openai.AsyncOpenAI, workspace_root: Path) -> None:
        self.client = client
        self.root = workspace_root
        self.registry = default_registry(max_file_bytes=1_000_000)
        self.commands = self.registry.select(None)
        self.tools: Any = [c.tool_schema() for c in self.commands]
        self.prompt = load_prompt()
        self.step_times: list[float] = []

    def first_messages(self, task_id: str, goal: str) -> list[dict[str, Any]]:
        listing = "\n".join(f"- {c.name}: {c.description}" for c in self.commands)
        return [
            {"role": "system", "content": self.prompt.system},
            {"role": "user", "content": self.prompt.task.format(task_id=task_id, goal=goal, commands=listing)},
        ]

    async def think(self, state: AgentState) -> dict[str, Any]:
        messages: Any = state["messages"]
        reply = await self.client.chat.completions.create(model=MODEL, messages=messages, tools=self.tools)
        message = reply.choices[0].message
        calls = [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in (message.tool_calls or [])
            if c.type == "function"
        ]
        assistant: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
        if calls:
            assistant["tool_calls"] = calls
        return {"messages": [assistant]}

    async def act(self, state: AgentState) -> dict[str, Any]:
        calls = state["messages"][-1].get("tool_calls") or []
        if not calls:
            return {"messages": [{"role": "user", "content": "Call exactly one command."}], "steps": state["steps"] + 1}
        call = calls[0]
        command = self.registry.get(call["function"]["name"])
        args = command.parse_args(json.loads(call["function"]["arguments"] or "{}"))
        workspace = Workspace(self.root / state["task_id"])
        workspace.create()
        ctx = CommandContext(workspace=workspace, task_id=state["task_id"], step_index=state["steps"])
        result = command.run(args, ctx)
        self.step_times.append(time.time())
        tool_message = {"role": "tool", "tool_call_id": call["id"], "content": result.output}
        return {"messages": [tool_message], "steps": state["steps"] + 1, "done": result.is_last}

    @staticmethod
    def route(state: AgentState) -> str:
        return END if state["done"] else "think"


def build_graph(agent: PeerAgent, saver: AsyncPostgresSaver) -> Any:
    graph = StateGraph(AgentState)
    graph.add_node("think", agent.think)
    graph.add_node("act", agent.act)
    graph.add_edge(START, "think")
    graph.add_edge("think", "act")
    graph.add_conditional_edges("act", agent.route, ["think", END])
    return graph.compile(checkpointer=saver)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    limits = httpx2.Limits(max_connections=args.tasks + 10, max_keepalive_connections=args.tasks + 10)
    client = openai.AsyncOpenAI(
        base_url=args.base_url,
        api_key="bench",
        max_retries=0,
        timeout=60,
        http_client=openai.DefaultAsyncHttpxClient(limits=limits, timeout=60),
    )
    agent = PeerAgent(client, Path(args.workspace))
    pool = AsyncConnectionPool(
        libpq_url(args.database_url),
        max_size=args.pool_size,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        open=False,
    )
    await pool.open()
    try:
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type,unused-ignore]
        await saver.setup()
        graph = build_graph(agent, saver)
        started = time.time()
        goal = steps_goal(args.steps, "peer")
        runs = []
        for _ in range(args.tasks):
            task_id = str(uuid.uuid4())
            state = {"task_id": task_id, "messages": agent.first_messages(task_id, goal), "steps": 0, "done": False}
            config = {"configurable": {"thread_id": task_id}, "recursion_limit": 4 * args.steps + 10}
            runs.append(asyncio.create_task(graph.ainvoke(state, config)))
        await asyncio.sleep(max(0.0, args.warmup - (time.time() - started)))
        c0, cpu0, t0 = len(agent.step_times), cpu_seconds(os.getpid()), time.perf_counter()
        await asyncio.sleep(args.window)
        c1, cpu1, t1 = len(agent.step_times), cpu_seconds(os.getpid()), time.perf_counter()
        failed = [r for r in runs if r.done() and not r.cancelled() and r.exception() is not None]
        for r in runs:
            r.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        timeline = Counter(int(t - started) for t in agent.step_times)
        return {
            "tasks": args.tasks,
            "window_steps": c1 - c0,
            "window_s": t1 - t0,
            "cpu_s": cpu1 - cpu0,
            "failed_runs": len(failed),
            "first_error": repr(failed[0].exception()) if failed else None,
            "timeline": sorted(timeline.items()),
            "versions": {p: version(p) for p in ("langgraph", "langgraph-checkpoint-postgres", "psycopg")},
        }
    finally:
        await pool.close()
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peer_langgraph", description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="the fake LLM's OpenAI base URL (…/v1)")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=float, default=6.0)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--pool-size", type=int, default=30)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
