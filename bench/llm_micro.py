"""``python -m bench.llm_micro``: what one think phase costs the worker's CPU on the LLM side, in one thread.

Runs the agent core (``Agent.think``: budget, prompt, messages, the chat completion through the openai client,
the proposal) against the project's fake LLM over HTTP, as the think worker does, for ``--steps`` steps of the
bench's scripted task per round, and prints this process's CPU per think (``time.process_time``: the fake LLM
is another process). No database and no broker: a profiling aid for the LLM client path, not a figure of
``make bench``. ``--transports``: the HTTP transport under the openai client alone, ours against httpx's;
``--shapes``: the call as ``OpenAIChatModel`` makes it (no SDK telemetry headers, an absolute URL) against the SDK's
headers, its relative path, and both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import openai

from autogpt_workers.agent.loop import Agent
from autogpt_workers.agent.types import Budget, Observation, Spent, StepRecord, TaskContext
from autogpt_workers.commands import Workspace, default_registry
from autogpt_workers.llm.openai_chat import SDK_HEADERS, OpenAIChatModel, completions_url, make_client
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


_BODY = json.dumps({"model": "scripted-demo", "messages": [{"role": "user", "content": "write a file " * 40}]})


def _rotated(cases: dict[str, tuple[openai.OpenAI, str]], rounds: int, calls: int) -> dict[str, list[float]]:
    """CPU per raw chat-completion call (the client's ``post`` of a prepared body to the path) for each case, in
    rounds of ``calls`` calls that rotate the cases' order so that the host's drift falls on all: microseconds per
    call, per round."""
    names = list(cases)
    per_call: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            client, path = cases[name]
            for _ in range(calls // 10):  # warm: connections, caches
                client.post(path, content=_BODY.encode(), cast_to=bytes)
            started = time.process_time()
            for _ in range(calls):
                client.post(path, content=_BODY.encode(), cast_to=bytes)
            per_call[name].append((time.process_time() - started) / calls * 1e6)
    return per_call


def transports(base_url: str, rounds: int, calls: int) -> dict[str, list[float]]:
    """The call as ``OpenAIChatModel`` makes it on each HTTP transport under the openai client, ours and httpx's,
    alternately (lean, httpx, then httpx, lean, ...)."""
    clients = {name: make_client(base_url, None, 10.0, 4, lean=name == "lean") for name in ("lean", "httpx")}
    return _rotated({name: (client, completions_url(client)) for name, client in clients.items()}, rounds, calls)


SHAPES = ("model", "sdk headers", "relative path", "sdk defaults")


def shapes(base_url: str, rounds: int, calls: int) -> dict[str, list[float]]:
    """Four shapes of the same call on our transport: as ``OpenAIChatModel`` makes it (the client of
    ``make_client``, without the SDK's telemetry headers, given the absolute URL), with the SDK's telemetry headers
    back, with the relative path ``/chat/completions`` instead, and with both (the SDK's defaults)."""
    model = make_client(base_url, None, 10.0, 4)
    with_headers = model.with_options(default_headers=model.platform_headers() | dict.fromkeys(SDK_HEADERS, "false"))
    url = completions_url(model)
    cases = {
        "model": (model, url),
        "sdk headers": (with_headers, url),
        "relative path": (model, "/chat/completions"),
        "sdk defaults": (with_headers, "/chat/completions"),
    }
    return _rotated({name: cases[name] for name in SHAPES}, rounds, calls)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.llm_micro", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="steps of the scripted task (default 20)")
    p.add_argument("--rounds", type=int, default=30, help="tasks run one after another (default 30)")
    p.add_argument("--transports", action="store_true",
                   help="instead: CPU per raw call on our HTTP transport and on httpx's, alternately (--rounds of 200)")
    p.add_argument("--shapes", action="store_true",
                   help="instead: CPU per raw call as the model makes it against the SDK's headers and relative path "
                        "(--rounds of 200)")
    args = p.parse_args(argv)
    if args.transports or args.shapes:
        measure = transports if args.transports else shapes
        first, second = ("lean", "httpx") if args.transports else ("model", "sdk defaults")
        with start_fake_llm() as server:
            per_call = measure(server.openai_base_url, args.rounds, 200)
        for name, values in per_call.items():
            median = statistics.median(values)
            print(f"{name}: CPU per call, {args.rounds} rounds of 200 calls: median {median:.0f} us, "
                  f"min {min(values):.0f} us, max {max(values):.0f} us")
        ratio = statistics.median(per_call[first]) / statistics.median(per_call[second])
        print(f"{first} / {second} (medians): {ratio:.2f}")
        return
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
