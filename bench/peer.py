"""The peer figure: the LangGraph agent (``peer_langgraph``) run as its own process at K tasks and LLM latency L,
against the limit K/L and against the platform's own steps/s at the same K and L from the same run."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
from typing import Any

from bench.env import REPO_ROOT, BenchEnv, Sql
from bench.figure import Figure, Unavailable, judge
from bench.stack import Platform

KEY = "peer"


class PeerUnavailable(Unavailable):
    """The peer cannot run here (its packages are missing)."""


@dataclasses.dataclass
class PeerResult:
    tasks: int
    llm_latency_s: float
    window_steps: int
    window_s: float
    cpu_s: float
    raw: dict[str, Any]

    @property
    def steps_per_s(self) -> float:
        return self.window_steps / self.window_s if self.window_s > 0 else 0.0

    @property
    def limit(self) -> float:
        return self.tasks / self.llm_latency_s


def measure_peer(
    platform: Platform, env: BenchEnv, db: Sql, tasks: int, llm_latency_s: float, warmup_s: float, window_s: float
) -> PeerResult:
    missing = [m for m in ("langgraph", "langgraph.checkpoint.postgres", "psycopg_pool") if not _importable(m)]
    if missing:
        raise PeerUnavailable(f"{', '.join(missing)} not installed (pip install -e '.[bench]'; make bench does it)")
    platform.stop_workers()  # the peer gets the machine to itself, as the platform did
    platform.set_llm_latency(llm_latency_s)
    env.truncate(db)
    assert platform.fake is not None
    argv = [
        sys.executable, "-m", "bench.peer_langgraph",
        "--base-url", platform.fake.openai_base_url,
        "--database-url", env.database_url,
        "--workspace", str(env.work_dir / "peer-workspaces"),
        "--tasks", str(tasks),
        "--steps", str(math.ceil((warmup_s + window_s) / llm_latency_s) + 5),
        "--warmup", str(warmup_s),
        "--window", str(window_s),
    ]  # fmt: skip
    done = subprocess.run(
        argv, env=env.process_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=warmup_s + window_s + 120
    )
    (env.log_dir / "peer.log").write_text(done.stdout + done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-5:])
        raise RuntimeError(f"the LangGraph peer failed (exit {done.returncode}): {tail}")
    raw = json.loads(lines[-1])
    env.truncate(db)
    return PeerResult(tasks, llm_latency_s, raw["window_steps"], raw["window_s"], raw["cpu_s"], raw)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def peer_figure(r: PeerResult, ours_steps_per_s: float | None) -> Figure:
    title = f"peer: same agent on LangGraph + Postgres checkpointer, K = {r.tasks}, L = {r.llm_latency_s:g} s"
    fig = Figure(KEY, title, goal="platform ahead of the peer")
    share = r.steps_per_s / r.limit if r.limit else 0.0
    fig.measured = f"peer {r.steps_per_s:.1f} steps/s ({share:.0%} of K/L)"
    fig.reference = f"limit K/L = {r.limit:.0f} steps/s"
    cpu_per_step = r.cpu_s / r.window_steps if r.window_steps else float("nan")
    fig.values = {
        "tasks": r.tasks,
        "steps_per_s": r.steps_per_s,
        "limit": r.limit,
        "share_of_limit": share,
        "cpu_per_step_s": cpu_per_step,
        "ours_steps_per_s": ours_steps_per_s,
        "failed_runs": r.raw.get("failed_runs"),
        "versions": r.raw.get("versions"),
        "timeline": r.raw.get("timeline"),
    }
    notes = [f"peer CPU {cpu_per_step * 1000:.1f} ms/step in one asyncio process"]
    if r.raw.get("failed_runs"):
        notes.append(f"{r.raw['failed_runs']} peer runs failed: {r.raw.get('first_error')}")
    if ours_steps_per_s is None:
        fig.verdict = "n/a"
        notes.append(f"the platform's steps/s at K = {r.tasks} was not measured in this run")
    else:
        fig.reference += f"; platform {ours_steps_per_s:.1f} steps/s"
        fig.verdict = judge(ours_steps_per_s > r.steps_per_s)
    fig.note = "; ".join(notes)
    return fig
