"""The floor, measured on the same broker in the same run: per-step latency of a raw Celery continuation with as
many hops per step as the platform's steps take (one when the think worker runs the command itself, the platform's
default for the bench's ``write_file`` steps; two through the act queue), the other chain beside it for reference,
and raw Celery no-op tasks/s (with their CPU per task) on a prefork worker like the act worker's."""

from __future__ import annotations

import dataclasses
import itertools
import socket
import sys
import uuid
from pathlib import Path

from bench.env import REPO_ROOT, BenchEnv
from bench.procs import CpuMeter, Proc, wait_until


@dataclasses.dataclass
class FloorResult:
    step_latencies_s: list[float]  # the chain with the platform's hops per step
    noop_tasks: int
    noop_elapsed_s: float
    noop_cpu_s: float
    hops_per_step: int = 2
    other_latencies_s: list[float] = dataclasses.field(default_factory=list)  # the chain with the other count

    @property
    def noop_rate(self) -> float:
        return self.noop_tasks / self.noop_elapsed_s if self.noop_elapsed_s > 0 else 0.0


def _worker(env: BenchEnv, name: str, queue: str, pool: str, concurrency: int) -> Proc:
    argv = [
        sys.executable, "-m", "celery", "-A", "bench.floor_app", "worker",
        f"--queues={queue}", f"--pool={pool}", f"--concurrency={concurrency}",
        f"--hostname={name}@{socket.gethostname()}", "--loglevel=INFO",
        "--task-events", "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    return Proc(name, argv, env.process_env(), REPO_ROOT, env.log_dir)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def _run_chain(out: Path, steps: int, timeout_s: float, hops_per_step: int = 2) -> list[float]:
    """Publish hop 0 of a chain of ``steps`` steps; the ``steps - 1`` intervals between its step boundaries."""
    from bench import floor_app

    chain = uuid.uuid4().hex[:8]
    floor_app.publish_hop(str(out), chain, 0, steps * hops_per_step, hops_per_step)

    def mine() -> list[float]:
        return [float(line.split()[2]) for line in _lines(out) if line.startswith(chain + " ")]

    wait_until(lambda: len(mine()) >= steps, timeout_s, 0.02, f"the floor chain of {steps} steps")
    stamps = sorted(mine())
    return [b - a for a, b in itertools.pairwise(stamps)]


class Floor:
    """Two floor workers shaped like the platform's: "think" (thread pool) and "act" (prefork).

    ``start`` pre-publishes the no-ops and spawns the workers, so their start-up overlaps the platform's.
    ``measure`` runs the chains, then tells the act worker to consume the no-op queue too (Celery's
    ``add_consumer`` remote control) and times the drain from the tasks' own completion times.
    """

    def __init__(self, env: BenchEnv, think_concurrency: int, act_concurrency: int) -> None:
        self.env = env
        self.think_concurrency, self.act_concurrency = think_concurrency, act_concurrency
        out_dir = env.work_dir / "floor"
        out_dir.mkdir(parents=True, exist_ok=True)
        self.tag = uuid.uuid4().hex[:6]
        self.chain_out, self.noop_out = out_dir / f"chain-{self.tag}.txt", out_dir / f"noop-{self.tag}.txt"
        self.workers: list[Proc] = []
        self.noop_tasks = 0

    def start(self, noop_tasks: int) -> None:
        from bench import floor_app

        floor_app.declare_queues()
        for q in (floor_app.THINK_QUEUE, floor_app.ACT_QUEUE, floor_app.NOOP_QUEUE):
            self.env.mgmt.purge(q)
        with floor_app.app.producer_or_acquire() as producer:
            for _ in range(noop_tasks):
                floor_app.noop.apply_async(
                    args=[str(self.noop_out)], queue=floor_app.NOOP_QUEUE, priority=5, producer=producer
                )
        self.noop_tasks = noop_tasks
        think, act = f"floor-think-{self.tag}", f"floor-act-{self.tag}"
        self.workers = [
            _worker(self.env, think, floor_app.THINK_QUEUE, "threads", self.think_concurrency).start(),
            _worker(self.env, act, floor_app.ACT_QUEUE, "prefork", self.act_concurrency).start(),
        ]

    def measure(self, steps: int, hops_per_step: int = 2) -> FloorResult:
        from bench import floor_app

        _run_chain(self.chain_out, 3, timeout_s=120)  # warm-up: both workers up and connected
        latencies = _run_chain(self.chain_out, steps, timeout_s=120, hops_per_step=hops_per_step)
        other = _run_chain(self.chain_out, steps, timeout_s=120, hops_per_step=3 - hops_per_step)
        act = self.workers[1]
        node = f"{act.name}@{socket.gethostname()}"
        meter = CpuMeter([act.pid]).start()
        replies = floor_app.app.control.add_consumer(floor_app.NOOP_QUEUE, destination=[node], reply=True, timeout=10)
        if not replies:
            raise RuntimeError(f"the floor act worker {node} did not answer add_consumer")
        wait_until(lambda: len(_lines(self.noop_out)) >= self.noop_tasks, 300, 0.01, f"{self.noop_tasks} no-ops")
        meter.stop()
        stamps = sorted(float(x) for x in _lines(self.noop_out))
        # tasks/s between the first and the last completion; CPU over the drain, per task
        return FloorResult(
            latencies, len(stamps) - 1, stamps[-1] - stamps[0], meter.seconds * (len(stamps) - 1) / len(stamps),
            hops_per_step, other,
        )  # fmt: skip

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers = []
